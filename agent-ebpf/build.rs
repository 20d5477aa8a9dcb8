//! Rebuild the eBPF object when bpf-linker changes: cargo cannot see that dependency itself.
//! Declares `bpf_target_arch`, which aya-build passes to the BPF build (the architecture whose
//! registers and syscall numbers the programs read).
fn main() {
    println!(
        "cargo::rustc-check-cfg=cfg(bpf_target_arch, values(\"x86_64\", \"aarch64\", \"arm\", \"riscv64\", \"powerpc64\", \"s390x\", \"mips\", \"loongarch64\"))"
    );
    if let Ok(linker) = which::which("bpf-linker") {
        println!("cargo:rerun-if-changed={}", linker.display());
    }
}

//! Builds the eBPF programs (crate `agent-ebpf`) with aya-build and leaves the object in
//! `OUT_DIR/agent-ebpf`, where `probes` embeds it.
//!
//! The BPF target is compiled by Debian's rustc (linked into rustup as the toolchain
//! `sockspan-bpf`) with its prebuilt `core`, and linked by bpf-linker; `cargo xtask setup`
//! installs all three. See docs/toolchain.md for why.

use std::{path::PathBuf, process::Command};

/// The rustup name `cargo xtask setup` gives Debian's toolchain.
const BPF_TOOLCHAIN: &str = "sockspan-bpf";

fn toolchain_ready() -> Result<(), String> {
    let rustc = Command::new("rustup")
        .args(["run", BPF_TOOLCHAIN, "rustc", "--print", "sysroot"])
        .output()
        .map_err(|e| format!("rustup is not runnable: {e}"))?;
    if !rustc.status.success() {
        return Err(format!("the rustup toolchain `{BPF_TOOLCHAIN}` is missing"));
    }
    let sysroot = String::from_utf8_lossy(&rustc.stdout).trim().to_string();
    if !PathBuf::from(&sysroot)
        .join("lib/rustlib/bpfel-unknown-none")
        .is_dir()
    {
        return Err(format!(
            "{sysroot} has no prebuilt core for bpfel-unknown-none"
        ));
    }
    which_bpf_linker().ok_or_else(|| "bpf-linker is not on PATH".to_string())?;
    Ok(())
}

fn which_bpf_linker() -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join("bpf-linker"))
            .find(|p| p.is_file())
    })
}

fn main() -> anyhow::Result<()> {
    println!("cargo:rerun-if-env-changed=PATH");
    if let Err(missing) = toolchain_ready() {
        anyhow::bail!(
            "cannot build sockspan's eBPF programs: {missing}. Run `cargo xtask setup` once \
             (it installs Debian's rustc-web, the BPF core library and bpf-linker)."
        );
    }
    // `cargo fuzz` needs RUSTC_BOOTSTRAP=1 for its sanitizer flags; aya-build reads that as
    // "rebuild core from source", which Debian's toolchain cannot (it ships no rust-src, only the
    // prebuilt BPF core). The BPF build only needs the switch for aya-ebpf and the programs.
    if std::env::var_os("RUSTC_BOOTSTRAP").is_some_and(|v| v == "1") {
        // SAFETY: a build script is single-threaded here; nothing reads the environment
        // concurrently.
        unsafe { std::env::set_var("RUSTC_BOOTSTRAP", "aya_ebpf,agent_ebpf") };
    }
    let manifest_dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?);
    let root_dir = manifest_dir
        .parent()
        .ok_or_else(|| anyhow::anyhow!("agent crate has no parent directory"))?
        .join("agent-ebpf");
    let root_dir = root_dir
        .to_str()
        .ok_or_else(|| anyhow::anyhow!("non-UTF-8 path {}", root_dir.display()))?;
    // The benchmark's extra programs only in builds that carry the bench commands.
    let features: &[&str] = if std::env::var_os("CARGO_FEATURE_BENCH").is_some() {
        &["bench"]
    } else {
        &[]
    };
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "agent-ebpf",
            root_dir,
            features,
            ..Default::default()
        }],
        aya_build::Toolchain::Custom(BPF_TOOLCHAIN),
    )
}

//! The gates the code is kept to, as CI runs them: formatting, pedantic clippy with every
//! warning an error on the host crates, and the same clippy on the eBPF crate for its own target
//! (its modules are `cfg(target_arch = "bpf")`, so a host clippy sees almost nothing of them).

use std::process::Command;

use anyhow::Result;

use crate::{
    setup::BPF_TOOLCHAIN,
    util::{cargo, run, target_dir, workspace_root},
};

pub fn lint() -> Result<()> {
    if !crate::setup::is_ready() {
        crate::setup::setup()?;
    }
    run(cargo()
        .current_dir(workspace_root())
        .args(["fmt", "--all", "--check"]))?;
    run(cargo().current_dir(workspace_root()).args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--all-features",
        "--quiet",
        "--",
        "-D",
        "warnings",
    ]))?;
    run(&mut bpf_clippy())
}

/// Clippy over `agent-ebpf` for `bpfel-unknown-none`, with the toolchain and the `cfg` the
/// agent's build script gives aya-build (docs/toolchain.md), in a target folder of its own so it
/// never invalidates the embedded object.
fn bpf_clippy() -> Command {
    let mut cmd = Command::new("rustup");
    cmd.current_dir(workspace_root())
        .args(["run", BPF_TOOLCHAIN, "cargo", "clippy", "--quiet"])
        .args(["--package", "agent-ebpf", "--target", "bpfel-unknown-none"])
        .args(["--features", "bench"])
        .args(["--release", "--", "-D", "warnings"])
        .env("CARGO_TARGET_DIR", target_dir().join("bpf-clippy"))
        // aya-build passes the architecture whose syscall ABI the programs read.
        .env(
            "CARGO_ENCODED_RUSTFLAGS",
            "--cfg=bpf_target_arch=\"x86_64\"",
        )
        // The outer cargo's choices are not this toolchain's.
        .env_remove("RUSTUP_TOOLCHAIN")
        .env_remove("RUSTC")
        .env_remove("RUSTC_WRAPPER")
        .env_remove("RUSTFLAGS");
    cmd
}

//! Running commands with errors that name the command.

use std::process::Command;

use anyhow::{Context as _, Result, bail};

/// Runs `cmd`, inheriting stdio; fails unless it exits 0.
pub fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd
        .status()
        .with_context(|| format!("cannot start {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed: {status}");
    }
    Ok(())
}

/// Runs `cmd` and returns its stdout; fails unless it exits 0.
pub fn output_of(cmd: &mut Command) -> Result<String> {
    let out = cmd
        .output()
        .with_context(|| format!("cannot start {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Whether `cmd` runs and exits 0 (output discarded).
pub fn command_ok(cmd: &mut Command) -> bool {
    cmd.stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// `cargo`, as the one that runs this xtask.
pub fn cargo() -> Command {
    Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
}

/// The workspace root (xtask lives one level below it).
pub fn workspace_root() -> std::path::PathBuf {
    let here = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    here.parent()
        .map_or(here.clone(), std::path::Path::to_path_buf)
}

/// Cargo's target folder (`CARGO_TARGET_DIR` honoured), shared with the tests' helpers.
pub fn target_dir() -> std::path::PathBuf {
    sockspan_tests::target_dir()
}

/// Whether this process runs as root.
pub fn is_root() -> bool {
    output_of(Command::new("id").arg("-u")).is_ok_and(|s| s.trim() == "0")
}

/// Installs the toolchain if missing, builds the release agent, and returns its path.
pub fn release_agent() -> Result<std::path::PathBuf> {
    build_release_agent(&[])
}

/// As [`release_agent`], with the hidden benchmark commands and programs (feature `bench`).
/// The agent the benchmarks run: this tree's release build, or the binary named by
/// `SOCKSPAN_BENCH_BIN` (a build of an earlier commit, for a before/after on one machine).
pub fn release_bench_agent() -> Result<std::path::PathBuf> {
    if let Some(bin) = std::env::var_os("SOCKSPAN_BENCH_BIN") {
        return Ok(bin.into());
    }
    build_release_agent(&["--features", "bench"])
}

fn build_release_agent(extra: &[&str]) -> Result<std::path::PathBuf> {
    if !crate::setup::is_ready() {
        crate::setup::setup()?;
    }
    run(cargo()
        .current_dir(workspace_root())
        .args([
            "build",
            "--release",
            "--package",
            "agent",
            "--bin",
            "sockspan",
        ])
        .args(extra))?;
    Ok(target_dir().join("release/sockspan"))
}

/// Replaces the text between `<!-- name:begin -->` and `<!-- name:end -->` in `path` with `body`
/// (appending the section when it is missing), so several tasks can each own part of one file.
pub fn write_section(path: &std::path::Path, name: &str, body: &str) -> Result<()> {
    let begin = format!("<!-- {name}:begin -->");
    let end = format!("<!-- {name}:end -->");
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let section = format!("{begin}\n{body}{end}");
    let updated = match (text.find(&begin), text.find(&end)) {
        (Some(b), Some(e)) if b < e => {
            format!("{}{section}{}", &text[..b], &text[e + end.len()..])
        }
        _ => format!("{}\n{section}\n", text.trim_end()),
    };
    std::fs::write(path, updated).with_context(|| format!("cannot write {}", path.display()))
}

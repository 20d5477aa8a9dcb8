//! `cargo xtask fuzz`: builds the cargo-fuzz targets in `fuzz/` and runs each for a while.
//!
//! Each run starts from the committed seeds (`fuzz/seeds/<target>`) plus the corpus earlier runs
//! grew (`fuzz/corpus/<target>`, not committed). A crash is copied to
//! `fuzz/regressions/<target>/`, where the agent's unit tests replay it from then on, and the
//! task fails naming it. Figures go to HARDENING.md.

use std::{
    fmt::Write as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context as _, Result, bail};

use crate::util::{cargo, command_ok, workspace_root, write_section};

/// The targets, as `fuzz/Cargo.toml` names them (and `sockspan::fuzz::TARGETS`).
const TARGETS: [&str; 20] = [
    "http1_connection",
    "http1_resplit",
    "http1_head",
    "ring_record",
    "btf",
    "trace_context",
    "redaction",
    "pipeline",
    "http2_connection",
    "hpack",
    "go_executable",
    "dns_connection",
    "redis_connection",
    "memcached_connection",
    "postgres_connection",
    "mysql_connection",
    "sql_sanitise",
    "python_module",
    "peer_message",
    "store_frame",
];

/// The cargo-fuzz release this task drives.
const CARGO_FUZZ_VERSION: &str = "0.13.2";

/// What libFuzzer reported for one target.
struct Outcome {
    target: &'static str,
    executions: u64,
    per_second: u64,
    peak_rss_mb: u64,
    coverage: u64,
    crash: Option<PathBuf>,
}

fn ensure_cargo_fuzz() -> Result<()> {
    if command_ok(cargo().args(["fuzz", "--version"])) {
        return Ok(());
    }
    eprintln!("xtask fuzz: installing cargo-fuzz {CARGO_FUZZ_VERSION} from crates.io");
    crate::util::run(cargo().args([
        "install",
        "cargo-fuzz",
        "--locked",
        "--version",
        CARGO_FUZZ_VERSION,
    ]))
}

/// `cargo fuzz` with the switch that lets the stable compiler take the sanitizer flags.
fn cargo_fuzz() -> Command {
    let mut cmd = cargo();
    cmd.current_dir(workspace_root())
        .arg("fuzz")
        .env("RUSTC_BOOTSTRAP", "1");
    cmd
}

/// The last value libFuzzer printed for `key` (`stat::key: N` or `cov: N`).
fn stat(log: &str, key: &str) -> u64 {
    log.lines()
        .rev()
        .find_map(|line| {
            let rest = line.trim().strip_prefix(key)?;
            rest.trim_start_matches(':')
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .unwrap_or(0)
}

/// Coverage from the last status line (`#N ... cov: C ft: ...`).
fn coverage(log: &str) -> u64 {
    log.lines()
        .rev()
        .find_map(|line| {
            let at = line.find("cov: ")?;
            line[at + 5..].split_whitespace().next()?.parse().ok()
        })
        .unwrap_or(0)
}

/// The newest crash/leak/timeout/oom artifact libFuzzer left for `target`, if any.
fn newest_artifact(root: &Path, target: &str) -> Option<PathBuf> {
    let dir = root.join("fuzz/artifacts").join(target);
    std::fs::read_dir(dir)
        .ok()?
        .flatten()
        .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
        .max()
        .map(|(_, path)| path)
}

fn run_target(target: &'static str, seconds: u64) -> Result<Outcome> {
    let root = workspace_root();
    let corpus = root.join("fuzz/corpus").join(target);
    let seeds = root.join("fuzz/seeds").join(target);
    std::fs::create_dir_all(&corpus)?;
    let before = newest_artifact(&root, target);
    let mut cmd = cargo_fuzz();
    cmd.args(["run", "-O", target])
        .arg(&corpus)
        .arg(&seeds)
        .arg("--")
        .arg(format!("-max_total_time={seconds}"))
        // A parser that hangs on one input is a finding too; 2 GiB bounds what one input may use.
        .args(["-timeout=10", "-rss_limit_mb=2048", "-print_final_stats=1"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    eprintln!("xtask fuzz: {target} for {seconds} s");
    let output = cmd
        .output()
        .with_context(|| format!("cannot run cargo fuzz for {target}"))?;
    let log = String::from_utf8_lossy(&output.stderr);
    let after = newest_artifact(&root, target);
    let crash = if output.status.success() {
        None
    } else {
        eprintln!("{log}");
        let found = after
            .filter(|a| Some(a) != before.as_ref())
            .with_context(|| {
                format!("cargo fuzz run {target} failed without leaving an input in fuzz/artifacts")
            })?;
        let keep = root.join("fuzz/regressions").join(target);
        std::fs::create_dir_all(&keep)?;
        let name = found
            .file_name()
            .map_or_else(|| "crash".into(), |n| n.to_string_lossy().into_owned());
        let kept = keep.join(name);
        std::fs::copy(&found, &kept)?;
        Some(kept)
    };
    Ok(Outcome {
        target,
        executions: stat(&log, "stat::number_of_executed_units"),
        per_second: stat(&log, "stat::average_exec_per_sec"),
        peak_rss_mb: stat(&log, "stat::peak_rss_mb"),
        coverage: coverage(&log),
        crash,
    })
}

pub fn fuzz(seconds: u64, only: Option<&str>) -> Result<()> {
    let targets: Vec<&'static str> = match only {
        Some(name) => vec![*TARGETS.iter().find(|t| **t == name).with_context(|| {
            format!(
                "--target: no fuzz target `{name}`; the targets are {}",
                TARGETS.join(", ")
            )
        })?],
        None => TARGETS.to_vec(),
    };
    // HARDENING.md's table covers every target; a run of one would replace it with one row.
    run_targets(seconds, &targets, only.is_none())
}

/// The short pass `cargo xtask test` runs before the tests: every target for `seconds`, a crash
/// failing it; HARDENING.md (the figures of a longer run) is left as it is.
pub fn gate(seconds: u64) -> Result<()> {
    run_targets(seconds, &TARGETS, false)
}

/// Builds the targets and runs each of `targets` for `seconds`; the table goes to HARDENING.md
/// when `record`.
fn run_targets(seconds: u64, targets: &[&'static str], record: bool) -> Result<()> {
    ensure_cargo_fuzz()?;
    crate::util::run(cargo_fuzz().args(["build", "-O"]))?;
    let mut outcomes = Vec::new();
    for &target in targets {
        outcomes.push(run_target(target, seconds)?);
    }
    let mut table = format!(
        "Last `cargo xtask fuzz --seconds {seconds}` (libFuzzer with AddressSanitizer, one core, \
         seeds from `fuzz/seeds` plus the local corpus):\n\n\
         | target | executions | per second | coverage (edges) | peak RSS | result |\n\
         |---|---:|---:|---:|---:|---|\n"
    );
    for o in &outcomes {
        let result = o.crash.as_ref().map_or_else(
            || "no crash".to_string(),
            |p| {
                format!(
                    "**crash** kept as `{}`",
                    p.strip_prefix(workspace_root()).unwrap_or(p).display()
                )
            },
        );
        let _ = writeln!(
            table,
            "| {} | {} | {} | {} | {} MB | {} |",
            o.target, o.executions, o.per_second, o.coverage, o.peak_rss_mb, result
        );
    }
    print!("{table}");
    if record {
        write_section(&workspace_root().join("HARDENING.md"), "fuzz", &table)?;
    }
    let crashed: Vec<&str> = outcomes
        .iter()
        .filter(|o| o.crash.is_some())
        .map(|o| o.target)
        .collect();
    if !crashed.is_empty() {
        bail!(
            "fuzzing found inputs that break {}: kept in fuzz/regressions (the unit tests replay them)",
            crashed.join(", ")
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_libfuzzer_final_stats() {
        let log = "#1024\tpulse  cov: 311 ft: 420 corp: 12/1b exec/s: 512 rss: 40Mb\n\
                   #2048\tDONE   cov: 333 ft: 450 corp: 14/2b exec/s: 1000 rss: 41Mb\n\
                   stat::number_of_executed_units: 20480\n\
                   stat::average_exec_per_sec:     1000\n\
                   stat::peak_rss_mb:              41\n";
        assert_eq!(stat(log, "stat::number_of_executed_units"), 20480);
        assert_eq!(stat(log, "stat::average_exec_per_sec"), 1000);
        assert_eq!(stat(log, "stat::peak_rss_mb"), 41);
        assert_eq!(coverage(log), 333);
    }

    #[test]
    fn targets_match_the_fuzz_crate() {
        let manifest = std::fs::read_to_string(workspace_root().join("fuzz/Cargo.toml"))
            .expect("fuzz/Cargo.toml");
        for target in TARGETS {
            assert!(
                manifest.contains(&format!("name = \"{target}\"")),
                "{target}"
            );
        }
        assert_eq!(manifest.matches("[[bin]]").count(), TARGETS.len());
    }
}

//! `cargo xtask test`: unit tests, then the root integration tests against the real kernel.

use std::{
    io::{BufRead as _, BufReader},
    process::Stdio,
};

use anyhow::{Result, bail};

use crate::{
    setup,
    util::{cargo, is_root, run, target_dir, workspace_root},
};

/// Passed and failed counts read from `test result:` lines, and what each failing test said.
#[derive(Default)]
struct Tally {
    passed: u64,
    failed: u64,
    /// "test name: panic message" for each failure, repeated just above the summary: CI keeps
    /// only the head and the tail of a long run, and a backtrace or a server's output can push a
    /// failure's own message out of both.
    failures: Vec<String>,
    /// The test whose captured output (`---- name stdout ----`) is being read.
    reading: Option<String>,
    /// The next line is the message of a panic in `reading`.
    message_next: bool,
}

impl Tally {
    fn read(&mut self, line: &str) {
        self.read_failure(line);
        // "test result: ok. 12 passed; 0 failed; 0 ignored; ..."
        let Some(rest) = line.trim().strip_prefix("test result: ") else {
            return;
        };
        for part in rest.split(';') {
            let mut words = part.split_whitespace().rev();
            let (Some(label), Some(n)) = (words.next(), words.next()) else {
                continue;
            };
            let n: u64 = n
                .trim_start_matches("ok.")
                .trim_start_matches("FAILED.")
                .trim()
                .parse()
                .unwrap_or(0);
            match label {
                "passed" => self.passed += n,
                "failed" => self.failed += n,
                _ => {}
            }
        }
    }

    /// Notes the first panic message in each failing test's captured output.
    fn read_failure(&mut self, line: &str) {
        if let Some(name) = line
            .strip_prefix("---- ")
            .and_then(|rest| rest.strip_suffix(" stdout ----"))
        {
            self.reading = Some(name.to_owned());
            self.message_next = false;
            return;
        }
        let Some(name) = &self.reading else {
            return;
        };
        if self.message_next {
            self.failures.push(format!("{name}: {}", line.trim()));
            self.reading = None;
            self.message_next = false;
        } else if line.starts_with("thread '") && line.contains(" panicked at ") {
            // "thread 'name' (9786) panicked at tests/budget.rs:296:5:" (the id since Rust
            // 1.91), then the message's first line.
            self.message_next = true;
        } else if line.starts_with("failures:") || line.starts_with("test result: ") {
            self.reading = None;
        }
    }
}

/// Runs a cargo test command, echoing its output and tallying results.
fn cargo_test(args: &[&str], envs: &[(&str, String)], tally: &mut Tally) -> Result<bool> {
    let mut cmd = cargo();
    cmd.current_dir(workspace_root())
        .arg("test")
        .args(args)
        .stdout(Stdio::piped());
    for (k, v) in envs {
        cmd.env(k, v);
    }
    eprintln!("xtask test: {cmd:?}");
    let mut child = cmd.spawn()?;
    if let Some(stdout) = child.stdout.take() {
        for line in BufReader::new(stdout).lines() {
            let line = line?;
            println!("{line}");
            tally.read(&line);
        }
    }
    Ok(child.wait()?.success())
}

/// The capability set deploy/ grants the agent (measured; deploy/README.md says why each).
pub const AGENT_CAPABILITIES: &[&str] = &["bpf", "perfmon", "sys_ptrace", "sys_admin"];

/// A script that runs the agent with exactly [`AGENT_CAPABILITIES`] when started as root (the
/// bounding set is all a uid-0 exec keeps), and as-is otherwise. The integration tests start
/// every agent through it, so they prove the deployed set, not full root, is enough.
fn least_privilege_wrapper(agent: &std::path::Path) -> Result<std::path::PathBuf> {
    let caps: Vec<String> = AGENT_CAPABILITIES.iter().map(|c| format!("+{c}")).collect();
    let script = format!(
        "#!/bin/sh\n# Written by `cargo xtask test`: the agent under deploy/'s capability set.\n\
         if [ \"$(id -u)\" = 0 ]; then\n  \
         exec setpriv --inh-caps=-all --bounding-set=-all,{} -- {} \"$@\"\nfi\n\
         exec {} \"$@\"\n",
        caps.join(","),
        agent.display(),
        agent.display()
    );
    let path = target_dir().join("debug/sockspan-least-privilege");
    std::fs::write(&path, script)?;
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
    Ok(path)
}

/// Seconds per fuzz target in the pass before a whole test run.
const GATE_FUZZ_SECONDS: u64 = 10;

pub fn test(filter: Option<&str>, unit_only: bool) -> Result<()> {
    if !setup::is_ready() {
        setup::setup()?;
    }
    setup::test_dependencies()?;
    // The whole run (what CI runs) keeps the gates too: formatting and clippy, then a short
    // fuzzing pass; a run of some tests only goes straight to them.
    if filter.is_none() && !unit_only {
        crate::lint::lint()?;
        crate::fuzz::gate(GATE_FUZZ_SECONDS)?;
    }
    let mut tally = Tally::default();
    let mut ok = cargo_test(
        &[
            "--workspace",
            "--exclude",
            "agent-ebpf",
            "--exclude",
            "sockspan-tests",
            // The benchmark and fuzz helpers are tested too, though the product leaves them out.
            "--features",
            "agent/bench,agent/fuzz",
        ],
        &[],
        &mut tally,
    )?;
    if !unit_only {
        if !is_root() {
            bail!(
                "the integration tests load eBPF programs: run `cargo xtask test` as root (or `--unit` for unit tests only)"
            );
        }
        run(cargo().current_dir(workspace_root()).args([
            "build",
            "--package",
            "agent",
            "--bin",
            "sockspan",
        ]))?;
        let bin = least_privilege_wrapper(&target_dir().join("debug/sockspan"))?;
        let mut args = vec!["--package", "sockspan-tests", "--"];
        if let Some(f) = filter {
            args.push(f);
        }
        // One at a time: each test attaches programs and reads system-wide traffic.
        args.push("--test-threads=1");
        ok &= cargo_test(
            &args,
            &[("SOCKSPAN_BIN", bin.display().to_string())],
            &mut tally,
        )?;
    }
    for failure in &tally.failures {
        println!("failed: {failure}");
    }
    println!("tests: {} passed, {} failed", tally.passed, tally.failed);
    if !ok {
        bail!("tests failed");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tallies_cargo_summaries() {
        let mut t = Tally::default();
        t.read("test result: ok. 12 passed; 0 failed; 1 ignored; 0 measured; 0 filtered out; finished in 0.01s");
        t.read("test result: FAILED. 3 passed; 2 failed; 0 ignored; 0 measured; 0 filtered out");
        t.read("running 5 tests");
        assert_eq!((t.passed, t.failed), (15, 2));
    }

    #[test]
    fn keeps_each_failing_tests_panic_message() {
        let mut t = Tally::default();
        for line in [
            "failures:",
            "",
            "---- budget_holds stdout ----",
            "agent 0.104 cores during wrk",
            "",
            "thread 'budget_holds' (9786) panicked at tests/budget.rs:296:5:",
            "few whole traces kept: Shapes { whole: 3 }",
            "stack backtrace:",
            "   0: std::panicking::begin_panic",
            "---- quiet_failure stdout ----",
            "failures:",
            "    budget_holds",
        ] {
            t.read(line);
        }
        assert_eq!(
            t.failures,
            ["budget_holds: few whole traces kept: Shapes { whole: 3 }"]
        );
    }
}

//! `cargo xtask compare A B`: two agent builds' CPU per request, paired. Both agents trace the
//! same wrk traffic against nginx at the same time (each with its own lock file, store and UI
//! port), so both see every request under the same machine conditions: on a shared VM, one
//! build at a time spreads ±25 % from run to run, while the ratio of two measured together
//! holds to about ±1.5 %. Each round runs both ways round (the agent started first costs about
//! 1 % more). The figures are by hand, for BENCHMARKS.md's optimisation log; nothing asserts on
//! them.

use std::{
    io::{BufRead as _, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use crate::{bench::proc_cpu_seconds, bench_http, util};

/// One agent under measurement, and the folder of its lock, store and ready file.
struct Agent {
    child: Child,
    files: sockspan_tests::ScratchDir,
}

impl Agent {
    fn start(bin: &Path, ui_port: u16) -> Result<Self> {
        let files = sockspan_tests::ScratchDir::new("sockspan-compare");
        let ready = files.path().join("ready.json");
        let store = files.path().join("store.redb");
        let mut child = Command::new(bin)
            .args(["run", "--store"])
            .arg(&store)
            .args(["--ui", &format!("127.0.0.1:{ui_port}"), "--ready-file"])
            .arg(&ready)
            .env("SOCKSPAN_LOCK_FILE", files.path().join("agent.lock"))
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("cannot start {}", bin.display()))?;
        let deadline = Instant::now() + Duration::from_mins(1);
        while !ready.exists() {
            if child.try_wait()?.is_some() || Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                let log: Vec<String> = child.stderr.take().map_or_else(Vec::new, |e| {
                    BufReader::new(e).lines().map_while(Result::ok).collect()
                });
                let log = log.join("\n");
                bail!("{} did not get ready within 60 s:\n{log}", bin.display());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(Self { child, files })
    }

    fn cpu_seconds(&self) -> f64 {
        proc_cpu_seconds(self.child.id())
    }

    fn stop(mut self) -> Result<()> {
        util::run(Command::new("kill").args(["-INT", &self.child.id().to_string()]))?;
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.child.try_wait()?.is_none() {
            if Instant::now() > deadline {
                let _ = self.child.kill();
                bail!("agent did not stop within 30 s");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        drop(self.files);
        Ok(())
    }
}

/// One run: `first` and `second` started in that order, wrk for `seconds`; each agent's CPU µs
/// per request.
fn paired_run(first: &Path, second: &Path, port: u16, seconds: u64) -> Result<(f64, f64)> {
    let a = Agent::start(first, 16_781)?;
    let b = Agent::start(second, 16_782)?;
    // Start-up work (BTF, the process scan) is over before the traffic starts.
    std::thread::sleep(Duration::from_secs(2));
    let (a0, b0) = (a.cpu_seconds(), b.cpu_seconds());
    let (_, requests) = bench_http::wrk(port, seconds)?;
    let (a1, b1) = (a.cpu_seconds(), b.cpu_seconds());
    a.stop()?;
    b.stop()?;
    if requests == 0 {
        bail!("wrk completed no request");
    }
    let per_request = |cpu: f64| cpu * 1e6 / requests as f64;
    Ok((per_request(a1 - a0), per_request(b1 - b0)))
}

/// Runs `rounds` rounds of two paired runs (A first, then B first) and prints each run and the
/// median ratio B / A.
pub fn compare(a: &Path, b: &Path, rounds: usize, seconds: u64) -> Result<()> {
    bench_http::ensure_installed()?;
    let (a, b): (PathBuf, PathBuf) = (a.canonicalize()?, b.canonicalize()?);
    let nginx = bench_http::start_nginx();
    let mut ratios = Vec::new();
    println!("agent CPU µs per request, both agents tracing the same traffic");
    println!("| run | A | B | B / A |\n|---|---|---|---|");
    for round in 0..rounds {
        let (a_us, b_us) = paired_run(&a, &b, nginx.port, seconds)?;
        let (b_us2, a_us2) = paired_run(&b, &a, nginx.port, seconds)?;
        for (order, a_us, b_us) in [("A first", a_us, b_us), ("B first", a_us2, b_us2)] {
            let ratio = b_us / a_us;
            ratios.push(ratio);
            println!(
                "| {} {order} | {a_us:.2} | {b_us:.2} | {ratio:.3} |",
                round + 1
            );
        }
    }
    ratios.sort_by(f64::total_cmp);
    let median = ratios[ratios.len() / 2];
    println!(
        "A = {}\nB = {}\nB / A: median {median:.3}, range {:.3}–{:.3} over {} runs",
        a.display(),
        b.display(),
        ratios[0],
        ratios[ratios.len() - 1],
        ratios.len()
    );
    Ok(())
}

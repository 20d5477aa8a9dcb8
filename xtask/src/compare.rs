//! `cargo xtask compare A B`: two agent builds' CPU per request, paired. Both agents trace the
//! same wrk traffic against nginx at the same time (each with its own lock file, store and UI
//! port), so both see every request under the same machine conditions: on a shared VM, one
//! build at a time spreads ±25 % from run to run, while the ratio of two measured together
//! holds to about ±1.5 %. Each round runs both ways round (the agent started first has cost
//! about 1 % more in some runs). `--a-args`/`--b-args` give either agent flags of its own, so
//! one build can be measured against itself with a setting changed, and `--a-env`/`--b-env` a
//! one-off switch read from the environment.
//!
//! Each agent's CPU is the scheduler's run time of its threads (`/proc/PID/task/*/schedstat`,
//! nanoseconds) rather than `/proc/PID/stat`'s utime and stime (10 ms units). A build against
//! itself measured 0.985–1.012 this way, about the spread the 10 ms units had: what is left is
//! the machine's. The threads must be the same ones at both readings (a thread's run time
//! leaves the sum when it ends). The figures are by hand, for BENCHMARKS.md's optimisation log;
//! nothing asserts on them.

use std::{
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use crate::bench_http;

/// One build under measurement: its binary, the flags and the environment it runs with.
pub struct Build {
    pub bin: PathBuf,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
}

impl Build {
    fn describe(&self) -> String {
        let env: Vec<String> = self.env.iter().map(|(k, v)| format!("{k}={v} ")).collect();
        format!(
            "{}{} {}",
            env.concat(),
            self.bin.display(),
            self.args.join(" ")
        )
    }
}

/// The run time so far of every thread of `pid`, in seconds (the scheduler's nanoseconds: the
/// first field of each thread's `schedstat`), and the threads' ids, sorted.
fn run_time(pid: u32) -> Result<(f64, Vec<u32>)> {
    let dir = format!("/proc/{pid}/task");
    let mut total_ns = 0u64;
    let mut threads = Vec::new();
    for task in std::fs::read_dir(&dir).with_context(|| dir.clone())? {
        let task = task.with_context(|| dir.clone())?;
        let Some(tid) = task
            .file_name()
            .to_str()
            .and_then(|t| t.parse::<u32>().ok())
        else {
            continue;
        };
        let path = task.path().join("schedstat");
        // A thread that ended since the listing: the comparison of the thread sets catches it.
        let Ok(text) = std::fs::read_to_string(&path) else {
            continue;
        };
        let ns = text
            .split_whitespace()
            .next()
            .and_then(|v| v.parse::<u64>().ok())
            .with_context(|| format!("{}: {text:?}", path.display()))?;
        total_ns += ns;
        threads.push(tid);
    }
    threads.sort_unstable();
    Ok((total_ns as f64 / 1e9, threads))
}

/// One agent under measurement, and the folder of its lock, store, ready file and log. Killed
/// on drop if it was not stopped: an error on the way must not leave a privileged agent, its
/// programs attached, behind.
struct Agent {
    child: Child,
    files: sockspan_tests::ScratchDir,
}

impl Agent {
    fn start(build: &Build) -> Result<Self> {
        let files = sockspan_tests::ScratchDir::new("sockspan-compare");
        let ready = files.path().join("ready.json");
        let log = files.path().join("agent.log");
        let mut child = Command::new(&build.bin)
            .args(["run", "--store"])
            .arg(files.path().join("store.redb"))
            .args(["--ui", "127.0.0.1:0", "--ready-file"])
            .arg(&ready)
            .args(&build.args)
            .env("SOCKSPAN_LOCK_FILE", files.path().join("agent.lock"))
            .env("RUST_LOG", "warn")
            // Last, so a build's own environment wins (`RUST_LOG`, say).
            .envs(build.env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::null())
            // A file, not a pipe nobody reads: a full pipe would stall the agent mid-run.
            .stderr(std::fs::File::create(&log)?)
            .spawn()
            .with_context(|| format!("cannot start {}", build.bin.display()))?;
        let deadline = Instant::now() + Duration::from_mins(1);
        while !ready.exists() {
            let exited = child.try_wait()?;
            if exited.is_some() || Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                let log = std::fs::read_to_string(&log).unwrap_or_default();
                match exited {
                    Some(status) => bail!("{} exited ({status}):\n{log}", build.bin.display()),
                    None => bail!("{} not ready within 60 s:\n{log}", build.bin.display()),
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(Self { child, files })
    }

    /// CPU seconds so far and the threads' ids; an error if the agent is gone (its figures
    /// would be meaningless).
    fn cpu_seconds(&mut self) -> Result<(f64, Vec<u32>)> {
        if let Some(status) = self.child.try_wait()? {
            let log = std::fs::read_to_string(self.files.path().join("agent.log"));
            bail!(
                "an agent exited mid-run ({status}):\n{}",
                log.unwrap_or_default()
            );
        }
        run_time(self.child.id())
    }

    fn stop(mut self) -> Result<()> {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-INT", &pid]).status();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait()? {
                if !status.success() {
                    bail!("an agent stopped with {status}");
                }
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("agent did not stop within 30 s");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// One run: `first` and `second` started in that order, wrk for `seconds`; each agent's CPU µs
/// per request.
fn paired_run(first: &Build, second: &Build, port: u16, seconds: u64) -> Result<(f64, f64)> {
    let mut a = Agent::start(first)?;
    let mut b = Agent::start(second)?;
    // Start-up work (BTF, the process scan) is over before the traffic starts.
    std::thread::sleep(Duration::from_secs(2));
    let ((a0, a_threads), (b0, b_threads)) = (a.cpu_seconds()?, b.cpu_seconds()?);
    let (_, requests) = bench_http::wrk(port, seconds)?;
    let ((a1, a_threads1), (b1, b_threads1)) = (a.cpu_seconds()?, b.cpu_seconds()?);
    let (stopped_a, stopped_b) = (a.stop(), b.stop());
    stopped_a?;
    stopped_b?;
    // A thread that ended mid-run took its run time out of the sum.
    if a_threads != a_threads1 || b_threads != b_threads1 {
        bail!(
            "an agent's threads changed mid-run ({a_threads:?} -> {a_threads1:?}, \
             {b_threads:?} -> {b_threads1:?}): its CPU cannot be summed"
        );
    }
    if requests == 0 || a1 <= a0 || b1 <= b0 {
        bail!("nothing measured: {requests} requests, CPU {a0}->{a1} s and {b0}->{b1} s");
    }
    let per_request = |cpu: f64| cpu * 1e6 / requests as f64;
    Ok((per_request(a1 - a0), per_request(b1 - b0)))
}

fn median(sorted: &[f64]) -> f64 {
    let n = sorted.len();
    if n.is_multiple_of(2) {
        f64::midpoint(sorted[n / 2 - 1], sorted[n / 2])
    } else {
        sorted[n / 2]
    }
}

/// Runs `rounds` rounds of two paired runs (A first, then B first) and prints each run and the
/// median ratio B / A.
pub fn compare(a: &Build, b: &Build, rounds: usize, seconds: u64) -> Result<()> {
    bench_http::ensure_installed()?;
    let absolute = |build: &Build| -> Result<Build> {
        Ok(Build {
            bin: build
                .bin
                .canonicalize()
                .with_context(|| format!("{}", build.bin.display()))?,
            args: build.args.clone(),
            env: build.env.clone(),
        })
    };
    let (a, b) = (absolute(a)?, absolute(b)?);
    let nginx = bench_http::start_nginx();
    let mut ratios = Vec::new();
    println!("agent CPU µs per request, both agents tracing the same traffic");
    println!("| run | A | B | B / A |\n|---|---|---|---|");
    for round in 1..=rounds {
        let (a_us, b_us) = paired_run(&a, &b, nginx.port, seconds)?;
        let (b_us2, a_us2) = paired_run(&b, &a, nginx.port, seconds)?;
        for (order, a_us, b_us) in [("A first", a_us, b_us), ("B first", a_us2, b_us2)] {
            let ratio = b_us / a_us;
            ratios.push(ratio);
            println!("| {round} {order} | {a_us:.2} | {b_us:.2} | {ratio:.3} |");
        }
    }
    ratios.sort_by(f64::total_cmp);
    println!(
        "A = {}\nB = {}\nB / A: median {:.3}, range {:.3}–{:.3} over {} runs",
        a.describe(),
        b.describe(),
        median(&ratios),
        ratios[0],
        ratios[ratios.len() - 1],
        ratios.len()
    );
    Ok(())
}

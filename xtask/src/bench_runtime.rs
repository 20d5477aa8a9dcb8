//! The runtime probes' cost: a front calling two leaves (the causality tests' `go` chain for the
//! Go probes, `node` for the Node.js ones, tasks created for the asyncio ones; leaves answering
//! at once), sequential requests,
//! the front's CPU time per request with the agent's runtime probes attached and with them
//! refused (the same agent without `CAP_SYS_ADMIN`, which the kernel requires for uprobes): the
//! difference is what the probes cost the traced program.

use std::{
    fmt::Write as _,
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use sockspan_tests::{
    Agent, Output,
    chains::{Chain, chain_named},
    fixture, run_ok,
};

/// Which runtime probes are measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Probed {
    Go,
    Asyncio,
    Node,
}

impl Probed {
    /// The agent's counter of processes whose probes of this kind were attached.
    fn followed(self) -> &'static str {
        match self {
            Self::Go => "go_processes_followed",
            Self::Asyncio => "asyncio_processes_followed",
            Self::Node => "node_processes_followed",
        }
    }

    /// Whether the probes of this kind were attached to some process during the phase.
    fn attached(self, out: &Output) -> bool {
        out.counter(self.followed()) > 0
    }

    /// Uprobe hits in a phase, from the agent's final counters.
    fn hits(self, out: &Output) -> u64 {
        match self {
            Self::Go => {
                out.counter("go_spawns")
                    + out.counter("go_spawns_unpaired")
                    + 2 * out.counter("go_handoffs")
                    + out.counter("go_handoffs_unpaired")
            }
            // An entry and a return per task made.
            Self::Asyncio => 2 * out.counter("task_spawns"),
            // The callback probes send nothing: their hits are not counted.
            Self::Node => 0,
        }
    }
}

/// One measured phase.
#[derive(Debug, Clone, Copy)]
pub struct ProbeSample {
    pub probes: bool,
    pub requests: u64,
    /// The Go front's CPU (user + system) per request, µs.
    pub front_cpu_us: f64,
    /// Wall time per request as the driver saw it, µs.
    pub wall_us: f64,
    /// Uprobe hits per request in all three Go processes (two per spawn, two per hand-off).
    pub hits_per_request: f64,
}

/// User + system CPU of `pid` so far, in µs.
fn cpu_us(pid: u32) -> f64 {
    crate::bench::proc_cpu_seconds(pid) * 1e6
}

fn agent(bin: &Path, probes: bool) -> Agent {
    let mut cmd = Command::new("setpriv");
    let caps = if probes {
        "--bounding-set=-all,+bpf,+perfmon,+sys_ptrace,+sys_admin"
    } else {
        "--bounding-set=-all,+bpf,+perfmon,+sys_ptrace"
    };
    cmd.args(["--inh-caps=-all", caps, "--"])
        .arg(bin)
        .args(["run", "--output", "jsonl"]);
    Agent::spawn(cmd)
}

fn phase(
    bin: &Path,
    which: Probed,
    chain: &Chain,
    probes: bool,
    requests: u64,
) -> Result<ProbeSample> {
    let front = chain
        .pids
        .iter()
        .find(|(s, _)| *s == "front")
        .map(|(_, p)| *p)
        .context("front pid")?;
    let agent = agent(bin, probes);
    let before = cpu_us(front);
    let started = Instant::now();
    let _ = run_ok(
        Command::new("python3")
            .arg(fixture("chains/driver.py"))
            .args([
                &chain.port.to_string(),
                "front",
                &requests.to_string(),
                "0",
                "0",
            ]),
        Duration::from_mins(10),
    );
    let wall = started.elapsed().as_secs_f64() * 1e6;
    let cpu = cpu_us(front) - before;
    let out = agent.stop();
    if !out.status.success() {
        bail!("the agent failed: {}", out.stderr);
    }
    let attached = which.attached(&out);
    if attached != probes {
        bail!(
            "probes attached: {attached}, wanted {probes}: {}",
            out.stderr
        );
    }
    let hits = which.hits(&out);
    let n = requests as f64;
    Ok(ProbeSample {
        probes,
        requests,
        front_cpu_us: cpu / n,
        wall_us: wall / n,
        hits_per_request: hits as f64 / n,
    })
}

/// Interleaved rounds of both phases on one chain.
pub fn rounds(bin: &Path, quick: bool, which: Probed) -> Result<Vec<ProbeSample>> {
    if which == Probed::Asyncio {
        return task_rounds(bin, quick);
    }
    let (requests, rounds) = if quick { (1_000, 1) } else { (3_000, 3) };
    // SAFETY: set before the chain's processes start; nothing else reads it concurrently.
    unsafe { std::env::set_var("LEAF_MS", "0") };
    // SAFETY: as above.
    unsafe { std::env::set_var("BACKGROUND_MS", "0") };
    let chain = Chain::start(chain_named(match which {
        Probed::Node => "node",
        _ => "go",
    }));
    let mut samples = Vec::new();
    for probes in crate::bench::probe_phases("runtime probes", rounds, "refused") {
        samples.push(phase(bin, which, &chain, probes, requests)?);
    }
    Ok(samples)
}

/// The asyncio probes per task created: `bench_asyncio_tasks.py` under the agent with the
/// probes and with them refused, interleaved; `requests` holds the tasks, `front_cpu_us` the CPU
/// µs per task (the median of three runs), `hits_per_request` the hits per task.
fn task_rounds(bin: &Path, quick: bool) -> Result<Vec<ProbeSample>> {
    let (tasks, rounds) = if quick { (100_000u64, 1) } else { (200_000, 3) };
    let mut samples = Vec::new();
    for probes in crate::bench::probe_phases("asyncio probes", rounds, "refused") {
        let agent = agent(bin, probes);
        let mut per_task: Vec<f64> = (0..3)
            .map(|_| {
                let out = run_ok(
                    Command::new("python3")
                        .arg(fixture("bench_asyncio_tasks.py"))
                        .arg(tasks.to_string()),
                    Duration::from_mins(5),
                );
                String::from_utf8_lossy(&out.stdout)
                    .trim()
                    .parse()
                    .unwrap_or(f64::NAN)
            })
            .collect();
        per_task.sort_by(f64::total_cmp);
        let out = agent.stop();
        if !out.status.success() {
            bail!("the agent failed: {}", out.stderr);
        }
        let attached = Probed::Asyncio.attached(&out);
        if attached != probes {
            bail!(
                "probes attached: {attached}, wanted {probes}: {}",
                out.stderr
            );
        }
        samples.push(ProbeSample {
            probes,
            requests: tasks,
            front_cpu_us: per_task[1],
            wall_us: 0.0,
            hits_per_request: Probed::Asyncio.hits(&out) as f64 / (3 * tasks) as f64,
        });
    }
    Ok(samples)
}

pub fn section(
    out: &mut String,
    which: Probed,
    samples: &[ProbeSample],
    summary: impl Fn(&[f64], usize) -> (f64, String),
) {
    let of = |probes: bool, f: fn(&ProbeSample) -> f64| -> Vec<f64> {
        samples
            .iter()
            .filter(|s| s.probes == probes)
            .map(f)
            .collect()
    };
    let requests = samples.first().map_or(0, |s| s.requests);
    match which {
        Probed::Go => {
            let _ = writeln!(out, "\n## 5. Runtime probes (Go goroutine causality)\n");
            let _ = writeln!(
                out,
                "Method: the causality tests' `go` chain (a Go 1.19 front calling two Go leaves in \
                 parallel through one keep-alive `http.Client`, leaves answering at once), \
                 {requests} sequential requests per phase from a Python client; the front's CPU \
                 time (user + system, `/proc/PID/stat`) per request under `sockspan run` with the \
                 Go runtime probes attached, and under the same agent without `CAP_SYS_ADMIN`, \
                 where the kernel refuses the uprobes and everything else is the same. Uprobe hits \
                 are counted from the agent's `--stats-file` counters (one per goroutine spawn, two per \
                 `net/http` hand-off) over all three Go processes.\n"
            );
        }
        Probed::Asyncio => {
            asyncio_section(out, requests, &of, summary);
            return;
        }
        Probed::Node => {
            node_section(out, requests, &of, summary);
            return;
        }
    }
    let _ = writeln!(
        out,
        "| phase | front CPU µs per request | wall µs per request | uprobe hits per request |\n|---|---|---|---|"
    );
    let medians = crate::bench::probe_phase_rows(
        out,
        "refused",
        &[
            (&|p| of(p, |s| s.front_cpu_us), 1),
            (&|p| of(p, |s| s.wall_us), 0),
            (&|p| of(p, |s| s.hits_per_request), 1),
        ],
        &summary,
    );
    let (hits, _) = summary(&of(true, |s| s.hits_per_request), 1);
    let extra = medians[0] - medians[1];
    let _ = writeln!(
        out,
        "\nThe probes cost the front **{extra:.1} µs of CPU per request** (difference of the \
         medians), with {hits:.1} uprobe hits per request over the chain's three processes (each \
         hit is a trap into the kernel and a run of the program)."
    );
}

/// Section 7: the asyncio probes per task created (see [`task_rounds`]).
fn asyncio_section(
    out: &mut String,
    tasks: u64,
    of: &dyn Fn(bool, fn(&ProbeSample) -> f64) -> Vec<f64>,
    summary: impl Fn(&[f64], usize) -> (f64, String),
) {
    let _ = writeln!(
        out,
        "\n## 7. Runtime probes (Python asyncio task causality)\n"
    );
    let _ = writeln!(
        out,
        "Method: `tests/fixtures/bench_asyncio_tasks.py` (the CPython on `PATH`) creates {tasks} \
         trivial tasks (`asyncio.gather` of 1 000 at a time) in a process the agent follows, \
         three runs per phase (the median kept), under `sockspan run` with the asyncio probes \
         attached and without `CAP_SYS_ADMIN` (uprobes refused); the figure is the process's CPU \
         time (user + system: a trap is charged to it) per task. Two hits per task: \
         `Task.__init__`'s entry (a uprobe on its first instruction, which the kernel emulates \
         without single-stepping, unlike the Go probes' `RET`s and stack checks) and its return (a \
         uretprobe). The context read at each data syscall adds a few user-memory reads to the \
         syscall program and no trap. Measured per request on the `fastapi` chain instead, the \
         difference was lost in the front's 3 ms of CPU per request.\n"
    );
    let _ = writeln!(
        out,
        "| phase | CPU µs per task | uprobe hits per task |\n|---|---|---|"
    );
    let medians = crate::bench::probe_phase_rows(
        out,
        "refused",
        &[
            (&|p| of(p, |s| s.front_cpu_us), 2),
            (&|p| of(p, |s| s.hits_per_request), 2),
        ],
        &summary,
    );
    let _ = writeln!(
        out,
        "\nThe probes cost **{:.2} µs of CPU per task created** (difference of the medians); a \
         uvicorn request that gathers two calls makes three tasks.",
        medians[0] - medians[1]
    );
}

/// Section 8: the Node.js callback probes per request on the `node` chain.
fn node_section(
    out: &mut String,
    requests: u64,
    of: &dyn Fn(bool, fn(&ProbeSample) -> f64) -> Vec<f64>,
    summary: impl Fn(&[f64], usize) -> (f64, String),
) {
    let _ = writeln!(out, "\n## 8. Runtime probes (Node.js callback causality)\n");
    let _ = writeln!(
        out,
        "Method: the causality tests' `node` chain (a Node.js 20 front calling two Node.js leaves \
         in parallel through a keep-alive `http.Agent`, leaves answering at once, no background \
         calls), {requests} sequential requests per phase from a Python client; the front's CPU \
         time (user + system) per request under `sockspan run` with the callback probes \
         attached, and under the same agent without `CAP_SYS_ADMIN` (uprobes refused). The \
         probes are a uprobe and a uretprobe at libuv's `uv__stream_io`, two hits per stream \
         callback; they send no record, so hits are not counted here (`bpftool prog show` run \
         counts, taken apart: 7.0 callbacks per request over the chain's three Node.js \
         processes, about four of them the front's: its request's read, the two responses and \
         its client's close; ≈ 0.7 µs of program time per hit, the rest is the trap). The \
         callback read at each data syscall adds one hash lookup to the syscall program and no \
         trap.\n"
    );
    let _ = writeln!(
        out,
        "| phase | front CPU µs per request | wall µs per request |\n|---|---|---|"
    );
    let medians = crate::bench::probe_phase_rows(
        out,
        "refused",
        &[
            (&|p| of(p, |s| s.front_cpu_us), 1),
            (&|p| of(p, |s| s.wall_us), 0),
        ],
        &summary,
    );
    let _ = writeln!(
        out,
        "\nThe probes cost the front **{:.1} µs of CPU per request** (difference of the medians).",
        medians[0] - medians[1]
    );
}

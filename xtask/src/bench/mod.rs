//! `cargo xtask bench`: per-syscall cost of sockspan over no programs and over empty programs
//! (the floor), the programs' own run time from the kernel's BPF statistics, the agent's CPU and
//! memory meanwhile, and the user-space pipeline's throughput. Writes BENCHMARKS.md.
//!
//! Variants run interleaved and in rotating order (A B C, B C A, C A B, …) so drift on a noisy
//! machine spreads over all of them; every figure is a median with its min–max.

mod flask;
mod report;

use report::{http_section, report};
pub use report::{probe_phase_rows, summary};

use std::{
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::{TcpListener, TcpStream},
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use crate::bench_runtime::Probed;
use crate::bench_tls::TlsServer;
use anyhow::{Context as _, Result, bail};

use crate::util::{is_root, output_of, run, workspace_root};

/// The CPU budget of variant (f), in cores: about half of what the agent takes at nginx's
/// saturation here without one.
const BUDGET_CORES: &str = "0.25";
/// The CPU budget of variant (h), in cores: a twentieth of what the agent takes at nginx's
/// saturation without one, where nearly every edge is shed and the host pays the shed path.
const TIGHT_BUDGET_CORES: &str = "0.05";
/// Seconds of load a budget variant takes before its rate or latency is measured.
const BUDGET_SETTLING_S: u64 = 3;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Variant {
    Untraced,
    Floor,
    /// Empty programs on the socket layer's send and receive tracepoints instead: the floor of
    /// capturing there (`bench-floor --hooks socket`).
    FloorSocket,
    Sockspan,
    /// The agent, with the ping-pong carrying bytes that are not HTTP (section 1 only).
    SockspanOpaque,
    /// The agent as `sockspan run` starts it by default: spans into the embedded store, query
    /// API and UI up (section 4 only).
    SockspanStore,
    /// As `SockspanStore`, held to a CPU budget of [`BUDGET_CORES`] (section 4 only).
    SockspanBudget,
    /// As `SockspanStore`, held to a CPU budget of [`TIGHT_BUDGET_CORES`] (section 4 only).
    SockspanTightBudget,
    /// As `Sockspan`, in the in-band cross-host mode (section 1 only): every request's first
    /// segment carries its context in a TCP header option, and the other end adopts it.
    SockspanInband,
    /// As `Sockspan`, capturing at the socket layer (`--capture-hooks socket`; section 1).
    SockspanSocket,
    /// As `SockspanStore`, capturing at the socket layer (section 4).
    SockspanSocketStore,
    /// As `SockspanTightBudget`, capturing at the socket layer (section 4).
    SockspanSocketTightBudget,
    /// The capture `sys_enter` with an exit program that stops after the connection lookup,
    /// after the timestamps, after the payload copy (section 1's breakdown only).
    StageLookup,
    StageClock,
    StageCopy,
}

impl Variant {
    /// The end-to-end variants (section 4).
    const ALL: [Self; 9] = [
        Self::Untraced,
        Self::Floor,
        Self::FloorSocket,
        Self::Sockspan,
        Self::SockspanStore,
        Self::SockspanBudget,
        Self::SockspanTightBudget,
        Self::SockspanSocketStore,
        Self::SockspanSocketTightBudget,
    ];
    /// The ping-pong variants (section 1).
    const PING_PONG: [Self; 7] = [
        Self::Untraced,
        Self::Floor,
        Self::FloorSocket,
        Self::Sockspan,
        Self::SockspanOpaque,
        Self::SockspanInband,
        Self::SockspanSocket,
    ];

    /// The breakdown variants (section 1), each ending one step later than the one before.
    const STAGES: [Self; 3] = [Self::StageLookup, Self::StageClock, Self::StageCopy];

    fn label(self) -> &'static str {
        match self {
            Self::StageLookup => "exit program stopped after the connection lookup",
            Self::StageClock => "… and after the timestamps",
            Self::StageCopy => "… and after the payload copy (no ring output)",
            Self::Untraced => "(a) no programs",
            Self::Floor => "(b) empty programs (floor)",
            Self::FloorSocket => "(i) empty programs on the socket layer's tracepoints",
            Self::Sockspan => "(c) sockspan run, on the syscall tracepoints",
            Self::SockspanOpaque => "(d) sockspan run, bytes that are not HTTP",
            Self::SockspanStore => {
                "(e) sockspan run, default output (embedded store and UI), on the syscall tracepoints"
            }
            Self::SockspanBudget => "(f) as (e), with a CPU budget (`--max-cpu 0.25`)",
            Self::SockspanTightBudget => "(h) as (e), with a tight CPU budget (`--max-cpu 0.05`)",
            Self::SockspanInband => "(g) as (c), in the in-band mode (`--in-band`)",
            Self::SockspanSocket => "(j) as (c), at the socket layer (`--capture-hooks socket`)",
            Self::SockspanSocketStore => "(k) as (e), at the socket layer: the defaults",
            Self::SockspanSocketTightBudget => "(l) as (h), at the socket layer",
        }
    }

    /// `variants` without those this kernel cannot run: variants (i), (j), (k) and (l) need the
    /// socket layer's tracepoints (kernels from 2023 on), looked up once in the kernel's BTF.
    fn runnable(variants: &[Self]) -> Vec<Self> {
        static SOCKET_TRACEPOINTS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        let socket = *SOCKET_TRACEPOINTS.get_or_init(|| {
            let name = b"btf_trace_sock_send_length";
            let found = std::fs::read("/sys/kernel/btf/vmlinux")
                .is_ok_and(|btf| btf.windows(name.len()).any(|w| w == name));
            if !found {
                eprintln!(
                    "xtask bench: this kernel has no socket-layer tracepoints \
                     (`sock_send_length`): variants (i), (j), (k) and (l) are left out"
                );
            }
            found
        });
        variants
            .iter()
            .copied()
            .filter(|v| !v.at_socket_layer() || socket)
            .collect()
    }

    /// The capture programs on the raw syscall tracepoints, asked for by name: every agent and
    /// breakdown variant not at the socket layer.
    fn on_syscall_hooks(self) -> bool {
        (self.is_agent() || Self::STAGES.contains(&self)) && !self.at_socket_layer()
    }

    /// The agent as `sockspan run` starts it by default, with its store and UI: at the socket
    /// layer where this kernel has it, else on the syscall tracepoints.
    pub(super) fn default_store() -> Self {
        if Self::runnable(&[Self::SockspanSocketStore]).is_empty() {
            Self::SockspanStore
        } else {
            Self::SockspanSocketStore
        }
    }

    /// Hooked at the socket layer's tracepoints.
    fn at_socket_layer(self) -> bool {
        matches!(
            self,
            Self::FloorSocket
                | Self::SockspanSocket
                | Self::SockspanSocketStore
                | Self::SockspanSocketTightBudget
        )
    }

    /// Held to a CPU budget.
    fn is_budget(self) -> bool {
        matches!(
            self,
            Self::SockspanBudget | Self::SockspanTightBudget | Self::SockspanSocketTightBudget
        )
    }

    fn is_agent(self) -> bool {
        matches!(
            self,
            Self::Sockspan
                | Self::SockspanOpaque
                | Self::SockspanStore
                | Self::SockspanBudget
                | Self::SockspanTightBudget
                | Self::SockspanInband
                | Self::SockspanSocket
                | Self::SockspanSocketStore
                | Self::SockspanSocketTightBudget
        )
    }
}

/// A 64-byte HTTP/1.1 request and response (padded in a header), so that the ping-pong takes the
/// capture path: every syscall's payload copied and sent, every exchange a pair of spans.
const PING_REQUEST: &[u8; 64] =
    b"GET /ping HTTP/1.1\r\nHost: bench\r\nX-Pad: 0123456789abcdefghij\r\n\r\n";
const PING_RESPONSE: &[u8; 64] =
    b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nX-Pad: 0123456789abcdefg\r\n\r\n";
/// 64 bytes no HTTP request starts with: the programs give up on the connection after its
/// first 8 data syscalls and send nothing more.
const PING_OPAQUE: &[u8; 64] = &[7; 64];

/// One measured run.
#[derive(Debug, Default, Clone)]
struct Sample {
    ns_per_syscall: f64,
    /// ns per `getppid`: a syscall sockspan never traces.
    ns_per_other_syscall: f64,
    /// (program name, `run_time_ns`, `run_cnt`) deltas over the statistics pass.
    programs: Vec<(String, u64, u64)>,
    /// Ping-pong syscalls in the statistics pass.
    stats_syscalls: f64,
    agent_cpu_s: f64,
    agent_peak_rss_kb: u64,
}

/// A loopback TCP ping-pong in one thread: write a 64-byte request, read it on the other end,
/// write a 64-byte response, read it: four socket syscalls per round trip, no wake-ups. Returns
/// ns per syscall.
fn ping_pong(round_trips: u64, request: &[u8; 64], response: &[u8; 64]) -> Result<f64> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let mut client = TcpStream::connect(listener.local_addr()?)?;
    let (mut server, _) = listener.accept()?;
    client.set_nodelay(true)?;
    server.set_nodelay(true)?;
    let mut buf = [0u8; 64];
    let started = Instant::now();
    for _ in 0..round_trips {
        client.write_all(request)?;
        server.read_exact(&mut buf)?;
        server.write_all(response)?;
        client.read_exact(&mut buf)?;
    }
    Ok(started.elapsed().as_nanos() as f64 / (round_trips as f64 * 4.0))
}

/// `getppid` calls timed in one thread: ns per call. No traced syscall's hook does anything
/// for it, so what is added over no programs is what the hooks cost every other syscall of
/// every process (`epoll_wait`, `futex`, file I/O, …).
fn other_syscalls(calls: u64) -> f64 {
    let started = Instant::now();
    for _ in 0..calls {
        // SAFETY: `getppid` takes no arguments and cannot fail.
        std::hint::black_box(unsafe { libc::syscall(libc::SYS_getppid) });
    }
    started.elapsed().as_nanos() as f64 / calls as f64
}

/// `run_time_ns` and `run_cnt` of every loaded tracepoint program, by name.
fn program_stats() -> Result<Vec<(String, u64, u64)>> {
    let text = output_of(Command::new("bpftool").args(["prog", "show", "--json"]))?;
    let progs: serde_json::Value = serde_json::from_str(&text).context("bpftool JSON")?;
    Ok(progs
        .as_array()
        .into_iter()
        .flatten()
        // sockspan's programs and the floor's are BTF raw tracepoints: tracing programs.
        .filter(|p| p["type"] == "tracing")
        .map(|p| {
            (
                p["name"].as_str().unwrap_or("?").to_string(),
                p["run_time_ns"].as_u64().unwrap_or(0),
                p["run_cnt"].as_u64().unwrap_or(0),
            )
        })
        .collect())
}

/// User + system CPU seconds of `pid` so far (`/proc/PID/stat`, 100 Hz clock ticks).
pub fn proc_cpu_seconds(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    let after_comm = stat.rsplit(')').next().unwrap_or("");
    let fields: Vec<&str> = after_comm.split_whitespace().collect();
    // Fields 14 and 15 of stat (utime, stime) are 11 and 12 after the comm.
    let ticks: u64 = fields
        .get(11..13)
        .map_or(0, |f| f.iter().filter_map(|v| v.parse::<u64>().ok()).sum());
    ticks as f64 / 100.0
}

fn proc_peak_rss_kb(pid: u32) -> u64 {
    sockspan_tests::proc_status_kib(pid, "VmHWM").unwrap_or(0)
}

/// A started agent (or floor), the reader of its stderr, and the folder of its report files.
struct Running {
    child: Child,
    /// All stderr lines, once the process has exited (shown when it fails).
    stderr: std::thread::JoinHandle<Vec<String>>,
    /// Holds `ready.json` (`--ready-file`) and, for the agent, `stats.json` (`--stats-file`).
    files: sockspan_tests::ScratchDir,
}

impl Running {
    fn pid(&self) -> u32 {
        self.child.id()
    }
}

/// The command line of `variant` (`None`: untraced); a store variant's store at `store` is
/// emptied first.
fn variant_args(variant: Variant, store: Option<&Path>) -> Option<Vec<String>> {
    let store_arg = store.map(|path| path.display().to_string());
    let mut args: Vec<&str> = match variant {
        Variant::Untraced => return None,
        Variant::Floor => vec!["bench-floor"],
        Variant::FloorSocket => vec!["bench-floor", "--hooks", "socket"],
        Variant::StageLookup => vec!["bench-floor", "--stage", "lookup"],
        Variant::StageClock => vec!["bench-floor", "--stage", "clock"],
        Variant::StageCopy => vec!["bench-floor", "--stage", "copy"],
        Variant::Sockspan | Variant::SockspanOpaque | Variant::SockspanSocket => {
            vec!["run", "--output", "jsonl"]
        }
        Variant::SockspanInband => vec!["run", "--output", "jsonl", "--in-band"],
        Variant::SockspanStore
        | Variant::SockspanSocketStore
        | Variant::SockspanBudget
        | Variant::SockspanTightBudget
        | Variant::SockspanSocketTightBudget => {
            if let Some(path) = store {
                remove_store(path);
            }
            let mut args = vec!["run", "--ui", "127.0.0.1:0"];
            if let Some(path) = &store_arg {
                args.extend(["--store", path.as_str()]);
            }
            args
        }
    };
    match variant {
        Variant::SockspanBudget => args.extend(["--max-cpu", BUDGET_CORES]),
        Variant::SockspanTightBudget | Variant::SockspanSocketTightBudget => {
            args.extend(["--max-cpu", TIGHT_BUDGET_CORES]);
        }
        _ => {}
    }
    if variant.at_socket_layer() && variant.is_agent() {
        args.extend(["--capture-hooks", "socket"]);
    } else if variant.on_syscall_hooks() {
        // The default is the socket layer where the kernel has it (`--capture-hooks auto`).
        args.extend(["--capture-hooks", "syscalls"]);
    }
    Some(args.into_iter().map(String::from).collect())
}

/// Starts the agent (or the floor) and waits until its programs are attached; the agent's
/// stdout (spans as JSON lines) goes to `spans` when given, and (e) stores its spans in a new
/// store beside it ([`store_path`]).
fn start_variant(bin: &Path, variant: Variant, spans: Option<&Path>) -> Result<Option<Running>> {
    let Some(args) = variant_args(variant, spans.map(store_path).as_deref()) else {
        return Ok(None);
    };
    let stdout = match spans {
        Some(path) => Stdio::from(std::fs::File::create(path)?),
        None => Stdio::null(),
    };
    let files = sockspan_tests::ScratchDir::new("sockspan-bench");
    let ready = files.path().join("ready.json");
    let mut cmd = Command::new(bin);
    cmd.args(&args).arg("--ready-file").arg(&ready);
    if variant.is_agent() {
        cmd.arg("--stats-file").arg(files.path().join("stats.json"));
    }
    let mut child = cmd
        .env("RUST_LOG", "info")
        .stdout(stdout)
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot start {}", bin.display()))?;
    let stderr = child.stderr.take().context("stderr")?;
    let reader = std::thread::spawn(move || {
        BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
            .collect::<Vec<_>>()
    });
    let deadline = Instant::now() + Duration::from_mins(1);
    while !ready.exists() {
        if child.try_wait()?.is_some() || Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            let log = reader.join().unwrap_or_default().join("\n");
            bail!(
                "{} {args:?} did not get ready within 60 s:\n{log}",
                bin.display()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(Some(Running {
        child,
        stderr: reader,
        files,
    }))
}

/// Deletes a store: its redb file and its frame log (`<file>.frames/`).
fn remove_store(path: &Path) {
    let _ = std::fs::remove_file(path);
    let mut log = path.as_os_str().to_os_string();
    log.push(".frames");
    let _ = std::fs::remove_dir_all(log);
}

/// Where (e) keeps its store: beside the span file of the other variants.
fn store_path(spans: &Path) -> std::path::PathBuf {
    spans.with_extension("redb")
}

/// Stops a started variant with SIGINT; returns its final counters (`--stats-file`; `Null` for
/// the floor).
fn stop(mut running: Running) -> Result<serde_json::Value> {
    run(Command::new("kill").args(["-INT", &running.child.id().to_string()]))?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while running.child.try_wait()?.is_none() {
        if Instant::now() > deadline {
            let _ = running.child.kill();
            bail!("agent did not stop within 30 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let log = running.stderr.join().unwrap_or_default();
    let stats = running.files.path().join("stats.json");
    match std::fs::read_to_string(&stats) {
        Ok(text) => serde_json::from_str(&text).context("the agent's --stats-file"),
        Err(_) if !stats.exists() => Ok(serde_json::Value::Null),
        Err(e) => bail!("{}: {e}\n{}", stats.display(), log.join("\n")),
    }
}

/// `kernel.bpf_stats_enabled` as it was when saved, written back on drop: on every way out of the
/// benchmark, errors included.
struct BpfStatsRestored(String);

impl BpfStatsRestored {
    fn save() -> Self {
        Self(std::fs::read_to_string(BPF_STATS).unwrap_or_else(|_| "0".to_string()))
    }
}

impl Drop for BpfStatsRestored {
    fn drop(&mut self) {
        let _ = std::fs::write(BPF_STATS, self.0.trim());
    }
}

const BPF_STATS: &str = "/proc/sys/kernel/bpf_stats_enabled";

/// Turns the kernel's BPF run-time statistics on or off.
fn bpf_stats(on: bool) -> Result<()> {
    std::fs::write(BPF_STATS, if on { "1" } else { "0" }).context("set kernel.bpf_stats_enabled")
}

/// Round trips of the pass that reads the programs' run times, per timed round trip.
const STATS_PASS_DIVISOR: u64 = 4;

/// One ping-pong round of a variant: a timed pass with the BPF statistics off (they cost ~100 ns
/// per syscall themselves: two `sched_clock` reads per program run), then a shorter pass with
/// them on for the programs' run times.
fn measure(bin: &Path, variant: Variant, round_trips: u64) -> Result<Sample> {
    let (request, response) = if variant == Variant::SockspanOpaque {
        (PING_OPAQUE, PING_OPAQUE)
    } else {
        (PING_REQUEST, PING_RESPONSE)
    };
    let child = start_variant(bin, variant, None)?;
    let pid = child.as_ref().map(Running::pid);
    bpf_stats(false)?;
    let cpu_before = pid.map_or(0.0, proc_cpu_seconds);
    let ns = ping_pong(round_trips, request, response)?;
    let cpu_after = pid.map_or(0.0, proc_cpu_seconds);
    let other_ns = other_syscalls(round_trips * 4);
    let peak = pid.map_or(0, proc_peak_rss_kb);
    bpf_stats(true)?;
    let before = program_stats()?;
    let stats_round_trips = round_trips / STATS_PASS_DIVISOR;
    ping_pong(stats_round_trips, request, response)?;
    let after = program_stats()?;
    bpf_stats(false)?;
    if let Some(child) = child {
        stop(child)?;
    }
    let programs = after
        .into_iter()
        .filter_map(|(name, time, count)| {
            let (t0, c0) = before
                .iter()
                .find(|(n, ..)| *n == name)
                .map_or((0, 0), |(_, t, c)| (*t, *c));
            (count > c0).then(|| (name, time - t0, count - c0))
        })
        .collect();
    Ok(Sample {
        ns_per_syscall: ns,
        ns_per_other_syscall: other_ns,
        programs,
        stats_syscalls: stats_round_trips as f64 * 4.0,
        agent_cpu_s: cpu_after - cpu_before,
        agent_peak_rss_kb: peak,
    })
}

/// `rounds` rounds of `variants`, each round starting one variant later (A B C, B C A, C A B,
/// …), with the round's number.
fn rotating(variants: &[Variant], rounds: usize) -> impl Iterator<Item = (usize, Variant)> + '_ {
    (0..rounds).flat_map(move |round| {
        (0..variants.len()).map(move |k| (round, variants[(round + k) % variants.len()]))
    })
}

/// One run of `sockspan bench-pipeline`.
#[derive(Debug, Clone, Copy)]
struct PipelineRun {
    events_per_s: f64,
    exchanges_per_s: f64,
    /// With the store: its file's bytes per span, and microseconds to read a trace back.
    store_bytes_per_span: f64,
    lookup_us: f64,
}

/// What `bench-pipeline` synthesizes (its `--protocol`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Synthesized {
    Http1,
    /// HTTP/1.1 with every head its own (no head repeats but at a connection's two ends).
    Http1Distinct,
    Grpc,
    Redis,
}

/// Every `bench-pipeline` run of a benchmark, by what it synthesized.
#[derive(Default)]
struct PipelineRuns {
    http: Vec<PipelineRun>,
    /// HTTP/1.1, every head its own.
    distinct: Vec<PipelineRun>,
    /// HTTP/1.1 into the embedded store.
    stored: Vec<PipelineRun>,
    grpc: Vec<PipelineRun>,
    redis: Vec<PipelineRun>,
}

fn pipeline_run(
    bin: &Path,
    exchanges: u64,
    store: Option<&Path>,
    protocol: Synthesized,
) -> Result<PipelineRun> {
    let mut command = Command::new(bin);
    command.args(["bench-pipeline", "--exchanges", &exchanges.to_string()]);
    match protocol {
        Synthesized::Http1 => {}
        Synthesized::Http1Distinct => {
            command.args(["--protocol", "http1-distinct"]);
        }
        Synthesized::Grpc => {
            command.args(["--protocol", "http2"]);
        }
        Synthesized::Redis => {
            command.args(["--protocol", "redis"]);
        }
    }
    if let Some(path) = store {
        command.arg("--store").arg(path);
    }
    let text = output_of(&mut command)?;
    if let Some(path) = store {
        remove_store(path);
    }
    let v: serde_json::Value =
        serde_json::from_str(text.trim()).context("bench-pipeline output")?;
    let number = |key: &str| v[key].as_f64().unwrap_or(0.0);
    Ok(PipelineRun {
        events_per_s: number("events_per_second"),
        exchanges_per_s: number("exchanges_per_second"),
        store_bytes_per_span: number("store_bytes") / number("spans").max(1.0),
        lookup_us: number("trace_lookup_us"),
    })
}

/// `--flask-only` (`flask`) or `--runtime-probes-only`: that section alone, printed.
fn one_section(quick: bool, flask: bool) -> Result<()> {
    crate::setup::test_dependencies()?;
    let bin = crate::util::release_bench_agent()?;
    let mut out = String::new();
    if flask {
        crate::bench_http::ensure_installed()?;
        flask::section(&mut out, &flask::rounds(&bin, quick)?);
    } else {
        let node = crate::bench_runtime::rounds(&bin, quick, Probed::Node)?;
        let asyncio = crate::bench_runtime::rounds(&bin, quick, Probed::Asyncio)?;
        let probes = crate::bench_runtime::rounds(&bin, quick, Probed::Go)?;
        let tls = crate::bench_tls::rounds(&bin, quick, TlsServer::OpenSsl)?;
        let go_tls = crate::bench_tls::rounds(&bin, quick, TlsServer::GoCryptoTls)?;
        crate::bench_runtime::section(&mut out, Probed::Go, &probes, summary);
        crate::bench_tls::section(&mut out, TlsServer::OpenSsl, &tls, summary);
        crate::bench_runtime::section(&mut out, Probed::Asyncio, &asyncio, summary);
        crate::bench_runtime::section(&mut out, Probed::Node, &node, summary);
        crate::bench_tls::section(&mut out, TlsServer::GoCryptoTls, &go_tls, summary);
    }
    println!("{out}");
    Ok(())
}

/// Which part of the benchmark runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    /// Everything; BENCHMARKS.md is written.
    All,
    /// The runtime probes' section, printed.
    RuntimeProbes,
    /// The Flask chain's section, printed.
    Flask,
    /// Section 1 (the ping-pong and its breakdown), printed.
    PingPong,
    /// The nginx section alone, printed.
    Nginx,
}

pub fn bench(quick: bool, part: Part) -> Result<()> {
    if !is_root() {
        bail!("benchmarks attach eBPF programs: run `cargo xtask bench` as root");
    }
    if matches!(part, Part::Flask | Part::RuntimeProbes) {
        return one_section(quick, part == Part::Flask);
    }
    if !crate::util::command_ok(Command::new("bpftool").arg("version")) {
        run(Command::new("apt-get").args([
            "install",
            "-y",
            "-qq",
            "--no-install-recommends",
            "bpftool",
        ]))?;
    }
    let bin = crate::util::release_bench_agent()?;
    if part == Part::Nginx {
        let mut out = String::new();
        http_section(&mut out, &http_rounds(&bin, quick)?);
        println!("{out}");
        return Ok(());
    }
    let (round_trips, rounds, exchanges, pipeline_rounds) = if quick {
        (100_000u64, 2usize, 200_000u64, 3usize)
    } else {
        (1_000_000, 3, 1_000_000, 5)
    };
    // Put back as it was however this function ends (an error half-way included).
    let restore = BpfStatsRestored::save();
    bpf_stats(false)?;
    let mut samples: Vec<(Variant, Sample)> = Vec::new();
    for (round, variant) in rotating(&Variant::runnable(&Variant::PING_PONG), rounds) {
        eprintln!(
            "xtask bench: round {} of {rounds}: {} ({round_trips} round trips)",
            round + 1,
            variant.label()
        );
        samples.push((variant, measure(&bin, variant, round_trips)?));
    }
    // The breakdown reads only the programs' run times, so a shorter ping-pong does.
    for (round, variant) in rotating(&Variant::STAGES, rounds) {
        eprintln!(
            "xtask bench: breakdown round {} of {rounds}: {}",
            round + 1,
            variant.label()
        );
        samples.push((variant, measure(&bin, variant, round_trips / 4)?));
    }
    drop(restore);
    if part == Part::PingPong {
        let mut out = String::new();
        report::syscall_section(&mut out, &samples, round_trips);
        println!("{out}");
        return Ok(());
    }
    let http = http_rounds(&bin, quick)?;
    crate::setup::test_dependencies()?;
    let probes = crate::bench_runtime::rounds(&bin, quick, Probed::Go)?;
    let tls = crate::bench_tls::rounds(&bin, quick, TlsServer::OpenSsl)?;
    let go_tls = crate::bench_tls::rounds(&bin, quick, TlsServer::GoCryptoTls)?;
    let asyncio = crate::bench_runtime::rounds(&bin, quick, Probed::Asyncio)?;
    let node = crate::bench_runtime::rounds(&bin, quick, Probed::Node)?;
    let flask = flask::rounds(&bin, quick)?;
    let mut runs = PipelineRuns::default();
    let store = std::env::temp_dir().join("sockspan-bench-pipeline.redb");
    for _ in 0..pipeline_rounds {
        runs.http
            .push(pipeline_run(&bin, exchanges, None, Synthesized::Http1)?);
        runs.distinct.push(pipeline_run(
            &bin,
            exchanges,
            None,
            Synthesized::Http1Distinct,
        )?);
        runs.stored.push(pipeline_run(
            &bin,
            exchanges,
            Some(&store),
            Synthesized::Http1,
        )?);
        runs.grpc
            .push(pipeline_run(&bin, exchanges, None, Synthesized::Grpc)?);
        runs.redis
            .push(pipeline_run(&bin, exchanges, None, Synthesized::Redis)?);
    }
    let mut report = report(&samples, &runs, round_trips, rounds, exchanges, quick);
    http_section(&mut report, &http);
    crate::bench_runtime::section(&mut report, Probed::Go, &probes, summary);
    crate::bench_tls::section(&mut report, TlsServer::OpenSsl, &tls, summary);
    crate::bench_runtime::section(&mut report, Probed::Asyncio, &asyncio, summary);
    crate::bench_runtime::section(&mut report, Probed::Node, &node, summary);
    flask::section(&mut report, &flask);
    crate::bench_tls::section(&mut report, TlsServer::GoCryptoTls, &go_tls, summary);
    if let Ok(history) = std::fs::read_to_string(workspace_root().join("bench/HISTORY.md")) {
        report.push('\n');
        report.push_str(&history);
    }
    std::fs::write(workspace_root().join("BENCHMARKS.md"), &report)?;
    println!("{report}");
    Ok(())
}

/// What the agent did during one phase of an end-to-end run (zeros for (a), (b) and (i)).
#[derive(Debug, Clone, Copy, Default)]
struct AgentPhase {
    requests: u64,
    nginx_spans: u64,
    ring_drops: u64,
    cpu_s: f64,
    peak_rss_kb: u64,
}

impl AgentPhase {
    fn coverage_pct(&self) -> f64 {
        100.0 * self.nginx_spans as f64 / self.requests.max(1) as f64
    }

    fn cpu_per_100k(&self) -> f64 {
        self.cpu_s * 100_000.0 / self.requests.max(1) as f64
    }

    fn rss_mib(&self) -> f64 {
        self.peak_rss_kb as f64 / 1024.0
    }
}

/// One end-to-end round of a variant against nginx.
#[derive(Debug, Clone)]
struct HttpSample {
    variant: Variant,
    saturation_rps: f64,
    fixed_rate: f64,
    p50_us: u64,
    p99_us: u64,
    saturation: AgentPhase,
    fixed: AgentPhase,
}

/// Runs `load` (returning the requests it made) with the variant attached; a fresh agent per
/// phase, so each phase's spans, drops, CPU and peak memory are its own.
fn phase(
    bin: &Path,
    variant: Variant,
    spans_file: &Path,
    load: impl FnOnce() -> Result<u64>,
) -> Result<AgentPhase> {
    let child = start_variant(bin, variant, Some(spans_file))?;
    let pid = child.as_ref().map(Running::pid);
    let cpu_before = pid.map_or(0.0, proc_cpu_seconds);
    let requests = load()?;
    let cpu_after = pid.map_or(0.0, proc_cpu_seconds);
    let peak_rss_kb = pid.map_or(0, proc_peak_rss_kb);
    let counters = child.map(stop).transpose()?;
    // Only the agent has spans, drops and a cost to report; (a), (b) and (i) just count requests.
    let Some(counters) = counters.filter(|_| variant.is_agent()) else {
        return Ok(AgentPhase {
            requests,
            ..AgentPhase::default()
        });
    };
    let nginx_spans = if matches!(
        variant,
        Variant::SockspanStore | Variant::SockspanSocketStore
    ) || variant.is_budget()
    {
        let store = store_path(spans_file);
        let count = output_of(Command::new(bin).args([
            "bench-store-count",
            "--store",
            &store.display().to_string(),
            "--service",
            "nginx",
        ]))?;
        remove_store(&store);
        count.trim().parse().context("bench-store-count output")?
    } else {
        crate::bench_http::nginx_server_spans(spans_file)
    };
    Ok(AgentPhase {
        requests,
        nginx_spans,
        ring_drops: counters["ring_full_drops"]
            .as_u64()
            .context("no ring_full_drops in the agent's --stats-file")?,
        cpu_s: cpu_after - cpu_before,
        peak_rss_kb,
    })
}

/// Interleaved rounds of: wrk at saturation, then the constant-rate client at half the untraced
/// saturation rate (calibrated once before the rounds).
fn http_rounds(bin: &Path, quick: bool) -> Result<Vec<HttpSample>> {
    crate::bench_http::ensure_installed()?;
    let nginx = crate::bench_http::start_nginx();
    let (seconds, rounds) = if quick { (4, 1) } else { (8, 3) };
    let (calibration, _) = crate::bench_http::wrk(nginx.port, seconds)?;
    let fixed_rate = (calibration * 0.5).min(crate::bench_http::CLIENT_MAX_RATE);
    let spans_file = std::env::temp_dir().join("sockspan-bench-spans.jsonl");
    let mut out = Vec::new();
    for (round, variant) in rotating(&Variant::runnable(&Variant::ALL), rounds) {
        eprintln!(
            "xtask bench: nginx round {} of {rounds}: {}",
            round + 1,
            variant.label()
        );
        let mut saturation_rps = 0.0;
        let saturation = phase(bin, variant, &spans_file, || {
            // A budget settles over its first looks (half a second apart, from full capture):
            // the rate is measured after it did; coverage and CPU include the settling.
            let settling = if variant.is_budget() {
                crate::bench_http::wrk(nginx.port, BUDGET_SETTLING_S)?.1
            } else {
                0
            };
            let (rps, requests) = crate::bench_http::wrk(nginx.port, seconds)?;
            saturation_rps = rps;
            Ok(settling + requests)
        })?;
        let mut latencies = Vec::new();
        let fixed = phase(bin, variant, &spans_file, || {
            // As at saturation: a budget's first looks start from full capture, and a queue
            // built then would be counted against every later request's latency.
            let settling = if variant.is_budget() {
                crate::bench_http::constant_rate(nginx.port, fixed_rate, BUDGET_SETTLING_S)?.0
            } else {
                0
            };
            let (requests, sorted) =
                crate::bench_http::constant_rate(nginx.port, fixed_rate, seconds)?;
            latencies = sorted;
            Ok(settling + requests)
        })?;
        let pick = |q: f64| {
            latencies
                .get(((latencies.len().saturating_sub(1)) as f64 * q) as usize)
                .copied()
                .unwrap_or(0)
        };
        out.push(HttpSample {
            variant,
            saturation_rps,
            fixed_rate,
            p50_us: pick(0.5),
            p99_us: pick(0.99),
            saturation,
            fixed,
        });
    }
    let _ = std::fs::remove_file(&spans_file);
    Ok(out)
}

const BODY_LEN: usize = 31;

/// The phases of `rounds` interleaved rounds comparing an agent with runtime probes and
/// without, alternating which goes first (drift on a noisy machine falls on both): whether each
/// phase has the probes, in order, each announced on stderr as `what` round N of M.
pub fn probe_phases(
    what: &'static str,
    rounds: usize,
    off: &'static str,
) -> impl Iterator<Item = bool> {
    (0..rounds).flat_map(move |round| {
        let order = if round % 2 == 0 {
            [true, false]
        } else {
            [false, true]
        };
        order.into_iter().inspect(move |&probes| {
            eprintln!(
                "xtask bench: {what} round {} of {rounds}: probes {}",
                round + 1,
                if probes { "on" } else { off }
            );
        })
    })
}

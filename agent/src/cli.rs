//! Command-line interface.

use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::{
    conntrack::ConntrackConfig,
    probes::{CaptureHooks, ProbesConfig},
    trace::{TraceConfig, resource::ServiceNameRule},
};

#[derive(Debug, Parser)]
#[command(
    name = "sockspan",
    version,
    about = "Zero-code distributed tracing from socket syscalls (eBPF)",
    long_about = "sockspan watches the socket syscalls of every process on this host with eBPF \
                  tracepoints and turns the traffic into traces, with nothing to instrument.",
    after_help = "Examples:\n  \
        sudo sockspan check                          # what this kernel offers sockspan\n  \
        sudo sockspan events --port 8080             # raw connection and data events as JSON lines\n  \
        sudo sockspan events --comm nginx --duration 10\n  \
        sudo sockspan run --output jsonl             # linked HTTP spans, one per line\n\n\
        Log level: RUST_LOG (e.g. RUST_LOG=sockspan=debug)."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Report what this kernel offers (BTF, raw syscall tracepoints, ring buffer, uprobes, …), what
    /// sockspan uses each for, and whether the capture path works (exit 0) or not (exit 1).
    #[command(after_help = "Example:\n  sudo sockspan check")]
    Check,
    /// Stream raw connection and data events as JSON lines on stdout (the debugging view).
    ///
    /// One object per line, with "type" = "open", "data", "close", and a final "stats" line.
    /// Fields are described in docs/events.md.
    #[command(after_help = "Examples:\n  \
        sudo sockspan events --port 8080 --duration 30\n  \
        sudo sockspan events --pid 1234 --pid 5678\n  \
        sudo sockspan events --comm curl --capture-bytes 256 | jq -c 'select(.type == \"data\")'")]
    Events(EventsArgs),
    /// Trace: turn captured traffic (HTTP/1, HTTP/2 and gRPC, the datastores, DNS, TLS plaintext) into linked spans and export them.
    ///
    /// Spans are linked by W3C traceparent / B3 headers, by same-thread causality inside a
    /// process, and across the two ends of local connections. With `--output jsonl`, one span
    /// per line on stdout (fields in docs/spans.md).
    #[command(after_help = "Examples:\n  \
        sudo sockspan run                            # store + query API on http://127.0.0.1:16686/api/services\n  \
        sudo sockspan run --output jsonl\n  \
        sudo sockspan run --output jsonl --service-name cmdline --duration 60 > spans.jsonl\n  \
        sudo sockspan run --output otlp --otlp-endpoint http://127.0.0.1:4318\n  \
        sudo OTEL_EXPORTER_OTLP_PROTOCOL=grpc OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:4317 sockspan run --output otlp")]
    Run(Box<RunArgs>),
    /// Why is an endpoint slow: the share of its latency each service and network hop owns on
    /// the critical path, at a percentile, over recent traces (asks the running agent).
    #[command(
        after_help = "Example:\n  sockspan blame --service frontend --operation 'GET /predict/{id}' --percentile 99"
    )]
    Blame(BlameArgs),
    /// Print every span of a store as JSON lines (the `--output jsonl` objects), oldest first:
    /// to read a store with other tools, or keep it elsewhere. The agent must not be running on
    /// the same store.
    #[command(after_help = "Example:\n  sudo sockspan dump | jq -c 'select(.kind == \"SERVER\")'")]
    Dump {
        /// The store's file (its frames are in the folder `PATH.frames` beside it).
        #[arg(
            long,
            value_name = "PATH",
            default_value = "/var/lib/sockspan/traces.redb"
        )]
        store: std::path::PathBuf,
    },
    /// The benchmark helpers `cargo xtask bench` drives (hidden; only in builds with the
    /// `bench` feature).
    #[cfg(feature = "bench")]
    #[command(flatten)]
    Bench(crate::commands::bench::BenchCommand),
}

#[derive(Debug, Args)]
pub struct BlameArgs {
    /// The service whose endpoint is slow (as in `/api/services`).
    #[arg(long)]
    pub service: String,
    /// The endpoint, a span name such as `GET /predict/{id}`.
    #[arg(long)]
    pub operation: String,
    /// Which requests to explain: 99 = the slowest tail, 50 = the typical request.
    #[arg(long, default_value_t = 99.0)]
    pub percentile: f64,
    /// How far back to look.
    #[arg(long, value_name = "MINUTES", default_value_t = 60)]
    pub lookback_minutes: u64,
    /// The running agent's API.
    #[arg(long, value_name = "URL", default_value = "http://127.0.0.1:16686")]
    pub api: String,
}

/// How finished spans leave the agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    /// The embedded store (`--store`), queried through the Jaeger-compatible API on `--ui`.
    Store,
    /// One JSON object per span on stdout.
    Jsonl,
    /// OTLP to a collector, Jaeger or Tempo: `--otlp-endpoint` or the `OTEL_EXPORTER_OTLP_*`
    /// variables (protocol `http/protobuf` by default, or `grpc`).
    Otlp,
}

/// A runtime whose probes `--no-runtime-probes` can leave off.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum RuntimeProbe {
    Go,
    /// The OpenSSL probes: TLS plaintext.
    Tls,
    /// The Python asyncio probes: task causality in event-loop services.
    Asyncio,
    /// The Node.js callback probes: event-loop causality in Node.js services.
    Node,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Where spans go.
    #[arg(long, value_enum, default_value_t = Output::Store)]
    pub output: Output,
    /// Span store file (`--output store`); its frames go to the folder `PATH.frames` beside it.
    #[arg(
        long,
        value_name = "PATH",
        default_value = "/var/lib/sockspan/traces.redb"
    )]
    pub store: std::path::PathBuf,
    /// Address of the query API and web UI (`--output store`). Any address other than loopback
    /// needs `--ui-token-file`.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:16686")]
    pub ui: std::net::SocketAddr,
    /// File holding the bearer token the API then requires of every request (`Authorization:
    /// Bearer <token>`; at least 16 characters). A file, not a flag, so the token stays out of
    /// process listings.
    #[arg(long, value_name = "PATH", env = "SOCKSPAN_UI_TOKEN_FILE")]
    pub ui_token_file: Option<std::path::PathBuf>,
    /// Hours spans are kept in the store.
    #[arg(long, value_name = "HOURS", default_value_t = 24)]
    pub retention_hours: u64,
    /// Most spans kept in the store; the oldest go first.
    #[arg(long, value_name = "N", default_value_t = 5_000_000)]
    pub store_max_spans: u64,
    /// OTLP endpoint (base URL, e.g. `http://127.0.0.1:4318`) of spans and metrics; overrides
    /// `OTEL_EXPORTER_OTLP_ENDPOINT` and the `…_TRACES_ENDPOINT` / `…_METRICS_ENDPOINT` ones.
    #[arg(long, value_name = "URL")]
    pub otlp_endpoint: Option<String>,
    /// How `service.name` is chosen: auto (`OTEL_SERVICE_NAME` of the process, else its
    /// Kubernetes workload, systemd unit, container name, the application an interpreter or app
    /// server runs, else its executable; docs/spans.md), exe, comm, cmdline (the application),
    /// container (its name, else its id).
    #[arg(long, value_name = "RULE", default_value = "auto")]
    pub service_name: ServiceNameRule,
    /// Pods' service names from their labels and owners (`app.kubernetes.io/name`, `app`, the
    /// owning Deployment), read from the Kubernetes API server: auto (when the agent runs in a
    /// pod with a service account allowed to list pods), off (from the pods' names only).
    #[arg(long, value_name = "WHEN", default_value = "auto")]
    pub kube_api: crate::kube::KubeApi,
    /// Milliseconds a finished span waits for late linking evidence before export.
    #[arg(long, value_name = "MS", default_value_t = 500)]
    pub link_delay_ms: u64,
    /// Stop by itself after this many seconds, exporting every finished span first.
    #[arg(long, value_name = "SECS")]
    pub duration: Option<u64>,
    /// Headers to record on spans (comma-separated, repeatable) as `http.request.header.<name>`
    /// and `http.response.header.<name>`. None by default; a listed header is recorded whatever
    /// it holds, credentials included: this is the explicit opt-in.
    #[arg(long, value_name = "NAMES")]
    pub record_headers: Vec<String>,
    /// Query parameters whose values are kept in `url.query` (comma-separated, repeatable);
    /// every other value is recorded as `REDACTED`.
    #[arg(long, value_name = "NAMES")]
    pub record_query_values: Vec<String>,
    /// Runtime probes to leave off (comma-separated, repeatable): `go` (goroutine causality:
    /// uprobes on each Go executable), `tls` (TLS plaintext: uprobes on each libssl),
    /// `asyncio` (Python task causality: uprobes on each `_asyncio` module). Every
    /// probe hit traps into the kernel, see BENCHMARKS.md.
    #[arg(long, value_name = "RUNTIMES", value_delimiter = ',')]
    pub no_runtime_probes: Vec<RuntimeProbe>,
    /// Trace the connections to the agent's own UI, API and `/metrics` too (its viewers: the
    /// browser, `sockspan blame`, Prometheus); off by default, for debugging.
    #[arg(long)]
    pub trace_own_traffic: bool,
    /// Link traces across hosts: the agents of a client's host and of its server's host tell
    /// each other which CLIENT span wrote each request, over UDP on this port (the same on
    /// every host; docs/cross-host.md). Needs `--peer-secret-file`.
    #[arg(long, value_name = "PORT", requires = "peer_secret_file")]
    pub peer_port: Option<u16>,
    /// The secret the agents share to authenticate each other (at least 16 bytes; the same
    /// file on every host).
    #[arg(long, value_name = "PATH", requires = "peer_port")]
    pub peer_secret_file: Option<std::path::PathBuf>,
    /// This agent's address as the other hosts' agents reach it (e.g. the node's IP, in a
    /// Kubernetes daemon set). With `--in-band`, a request whose trace the kernel programs cannot tell (an
    /// event loop, goroutines) carries it, and the server's agent asks it for the trace.
    /// Default: this host's first global address (logged at start).
    #[arg(long, value_name = "IP", requires = "peer_port")]
    pub peer_address: Option<std::net::IpAddr>,
    /// CPU the agent may use, in cores (`0.5` = half of one core's time), or `off`. Over it,
    /// the agent sheds connections that start traces on this host, in the kernel first, and
    /// keeps whole traces of the rest; full capture resumes when the load falls
    /// (docs/overhead.md).
    #[arg(long, value_name = "CORES", default_value = "1", value_parser = crate::budget::config::parse_cpu)]
    pub max_cpu: crate::budget::Limit<f64>,
    /// Resident memory the agent may use (`512M`, `2G`), or `off`; over it, it sheds as for
    /// `--max-cpu`.
    #[arg(long, value_name = "SIZE", default_value = "1G", value_parser = crate::budget::config::parse_memory)]
    pub max_memory: crate::budget::Limit<u64>,
    #[command(flatten)]
    pub report: ReportArgs,
    #[command(flatten)]
    pub capture: CaptureArgs,
}

impl RunArgs {
    #[must_use]
    pub fn budget(&self) -> crate::budget::BudgetConfig {
        crate::budget::BudgetConfig {
            max_cpu: self.max_cpu,
            max_memory: self.max_memory,
        }
    }

    #[must_use]
    pub fn store_config(&self) -> crate::store::StoreConfig {
        crate::store::StoreConfig {
            path: self.store.clone(),
            retention: Duration::from_hours(self.retention_hours),
            max_spans: self.store_max_spans,
        }
    }

    /// Cross-host linking, when asked for.
    #[must_use]
    pub fn peers(&self) -> Option<crate::peers::PeersConfig> {
        Some(crate::peers::PeersConfig {
            port: self.peer_port?,
            secret_file: self.peer_secret_file.clone()?,
            address: self.peer_address,
        })
    }

    #[must_use]
    pub fn trace(&self) -> TraceConfig {
        TraceConfig {
            link_delay: Duration::from_millis(self.link_delay_ms),
            ..TraceConfig::default()
        }
    }
}

#[derive(Debug, Args)]
pub struct EventsArgs {
    /// Only events of this process id (repeatable).
    #[arg(long = "pid", value_name = "PID")]
    pub pids: Vec<u32>,
    /// Only events of processes or threads with this comm, as in /proc/PID/comm (repeatable).
    #[arg(long = "comm", value_name = "NAME")]
    pub comms: Vec<String>,
    /// Only connections with this local or remote port (repeatable).
    #[arg(long = "port", value_name = "PORT")]
    pub ports: Vec<u16>,
    /// Stop by itself after this many seconds (default: run until SIGINT/SIGTERM).
    #[arg(long, value_name = "SECS")]
    pub duration: Option<u64>,
    #[command(flatten)]
    pub report: ReportArgs,
    #[command(flatten)]
    pub capture: CaptureArgs,
}

/// The files tools and tests read instead of the log.
#[derive(Debug, Args, Clone, Default)]
pub struct ReportArgs {
    /// Written once the agent traces (capture attached, runtime probes on the processes running
    /// then): one JSON line `{"pid":…,"ui":…}`; removed when it stops. Tools and tests wait for
    /// it instead of reading the log (`/ready` on the API says the same).
    #[arg(long, value_name = "PATH")]
    pub ready_file: Option<std::path::PathBuf>,
    /// Written as the agent stops: every stage's final counters as one JSON object (the same as
    /// the final `stopped` log line, docs/metrics.md).
    #[arg(long, value_name = "PATH")]
    pub stats_file: Option<std::path::PathBuf>,
}

impl ReportArgs {
    /// Each file with the flag that names it.
    #[must_use]
    pub fn files(&self) -> [(&'static str, Option<&std::path::Path>); 2] {
        [
            ("--ready-file", self.ready_file.as_deref()),
            ("--stats-file", self.stats_file.as_deref()),
        ]
    }
}

/// Options of the capture path, shared by the commands that run it.
#[derive(Debug, Args, Clone)]
pub struct CaptureArgs {
    /// Payload bytes captured per syscall (1 to 8192).
    #[arg(long, value_name = "BYTES", default_value_t = agent_common::DEFAULT_CAPTURE_BYTES)]
    pub capture_bytes: u32,
    /// Size of the kernel→agent event ring in bytes (a power of two, at least 4096).
    #[arg(long, value_name = "BYTES", default_value_t = agent_common::DEFAULT_RING_BYTES)]
    pub ring_bytes: u32,
    /// Bound on tracked connections, in the kernel and in the agent.
    #[arg(long, value_name = "N", default_value_t = agent_common::DEFAULT_MAX_CONNS)]
    pub max_conns: u32,
    /// Forget a connection after this many seconds without traffic.
    #[arg(long, value_name = "SECS", default_value_t = 300)]
    pub idle_timeout: u64,
    /// Trace only the sockets of the network namespace the agent runs in, as the agent of one
    /// host among several on a machine (a namespace per host, or per pod network); the one-agent
    /// lock is then per namespace.
    #[arg(long)]
    pub netns_only: bool,
    /// Carry each request's trace context to the server's host in a TCP header option (the
    /// in-band mode, docs/cross-host.md): the agent there, started with this flag too, makes
    /// its SERVER span the child of this host's CLIENT span. Attaches a `sock_ops` program to the
    /// root cgroup; off by default.
    #[arg(long)]
    pub in_band: bool,
    /// The cgroup v2 directory the in-band mode attaches to (its sockets and its descendants'
    /// carry contexts): by default the hierarchy's root as mounted here. In a container, mount
    /// the host's and name it (deploy/daemonset.yaml).
    #[arg(long, value_name = "PATH", requires = "in_band")]
    pub in_band_cgroup: Option<std::path::PathBuf>,
    /// Where capture hooks into the kernel: `socket` (only socket sends and receives run the
    /// programs, every other syscall keeps its fast path; Linux 6.3+, no `--in-band`, `recvmmsg`
    /// skipped), `syscalls` (every syscall of the host runs them; any kernel from 5.5 on), or
    /// `auto`: `socket` where the kernel has it and `--in-band` is off (docs/overhead.md).
    /// `sockspan check` says which this kernel gets.
    #[arg(long, value_enum, value_name = "HOOKS", default_value_t = CaptureHooks::Auto)]
    pub capture_hooks: CaptureHooks,
}

impl CaptureArgs {
    #[must_use]
    pub fn probes(&self) -> ProbesConfig {
        ProbesConfig {
            capture_bytes: self.capture_bytes,
            ring_bytes: self.ring_bytes,
            max_conns: self.max_conns,
            skip_opaque: true,
            netns: self
                .netns()
                .map_or(0, |inum| u32::try_from(inum).unwrap_or(0)),
            inband: self.in_band,
            inband_cgroup: self.in_band_cgroup.clone(),
            inband_starts_traces: true,
            inband_return_addr: None,
            hooks: self.capture_hooks,
        }
    }

    /// The network namespace traced alone (`--netns-only`): the agent's own, by inode number.
    #[must_use]
    pub fn netns(&self) -> Option<u64> {
        self.netns_only
            .then(|| crate::conntrack::discovery::netns_of(std::process::id()))
            .flatten()
    }

    #[must_use]
    pub fn conntrack(&self) -> ConntrackConfig {
        ConntrackConfig {
            max_conns: self.max_conns as usize,
            idle_timeout: Duration::from_secs(self.idle_timeout),
        }
    }
}

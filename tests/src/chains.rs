//! Runtime chains: real services of one runtime (or a mix) calling each other over keep-alive
//! connections, driven by sequential requests and waves of concurrent ones, and the score of the
//! trees the agent exported against the truth the request ids give.
//!
//! Every service `S` answers `GET /S/<id>` after calling each of its downstreams `D` with
//! `GET /D/<id>`, so every span of one request carries the request's id in its path and the
//! expected tree follows from the chain's shape: nothing in the traffic tells the agent which
//! request a call belongs to.

use std::{
    collections::{HashMap, HashSet},
    fmt::Write as _,
    path::PathBuf,
    process::Command,
    sync::OnceLock,
    time::Duration,
};

use serde_json::{Value, json};

use crate::{Nginx, Proc, Talking, fixture, free_port, run_ok};

/// Debian's CPython (`apt install python3`).
pub const DEBIAN_PYTHON: &str = "/usr/bin/python3.11";
/// Other CPython releases, where the machine has them (pyenv builds).
pub const PYTHON_3_12: &str = "/root/.pyenv/versions/3.12.1/bin/python3.12";
pub const PYTHON_3_13: &str = "/root/.pyenv/versions/3.13.0/bin/python3.13";

/// How a service of a chain is built.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Python `ThreadingHTTPServer`, `http.client` pools: a thread per request.
    Threaded,
    /// As `Threaded`, served by a fixed pool of 8 threads (one thread, many requests in turn).
    ThreadPool,
    /// grpcio server (thread pool) serving `/chain.Svc/<segment>`; calls its downstreams over
    /// gRPC. Callers reach it over gRPC too, the request id in the metadata `x-request-id`.
    Grpc,
    /// aiohttp server and `ClientSession`, `asyncio.gather`; on uvloop when `uvloop`.
    Aiohttp { uvloop: bool },
    /// uvicorn (uvloop, httptools) + `FastAPI` + `httpx.AsyncClient`.
    Fastapi,
    /// The standard library's asyncio streams (a task per connection, its requests one after
    /// the other), under the interpreter at `python` (`python3`: the one on `PATH`).
    Asyncio { python: &'static str },
    /// Node.js `http` server and keep-alive `http.Agent`, `Promise.all`.
    Node,
    /// Node.js `http` server and the global `fetch` (undici, keep-alive), the calls one after
    /// the other (each made on the previous one's response).
    NodeFetch,
    /// As `Node`, its `http.Agent` limited to 2 sockets per server: requests queue for one.
    NodeLimited,
    /// Go `net/http` server and `http.Client`, a goroutine per call.
    Go,
    /// As `Go`, the calls one after the other in the handler's goroutine.
    GoSequential,
    /// As `Go`, built with `-ldflags=-s -w` (no `.symtab`, no DWARF).
    GoStripped,
    /// nginx reverse proxy with upstream keep-alive (its one downstream gets the same path).
    Nginx,
}

/// One service of a chain and the services it calls.
#[derive(Debug, Clone)]
pub struct Hop {
    pub kind: Kind,
    /// The `service.name` its spans carry.
    pub service: &'static str,
    /// The first path segment of the requests it serves.
    pub segment: &'static str,
    pub calls: Vec<Hop>,
    /// Served over HTTPS (aiohttp and Node.js only), with the test's self-signed certificate:
    /// its caller's calls are TLS (a caller's downstreams are all TLS or none).
    pub tls: bool,
}

impl Hop {
    #[must_use]
    pub fn leaf(kind: Kind, segment: &'static str) -> Self {
        Self {
            kind,
            service: segment,
            segment,
            calls: Vec::new(),
            tls: false,
        }
    }

    #[must_use]
    pub fn calling(kind: Kind, segment: &'static str, calls: Vec<Hop>) -> Self {
        Self {
            kind,
            service: segment,
            segment,
            calls,
            tls: false,
        }
    }

    /// The same service, served over HTTPS.
    #[must_use]
    pub fn over_tls(self) -> Self {
        Self { tls: true, ..self }
    }
}

/// The chains measured, by name: a front calling two downstreams, per runtime; nginx in front of
/// a threaded chain; and a mixed chain (Go front → asyncio → threaded).
#[must_use]
pub fn chain_named(name: &str) -> Hop {
    let two_leaves = |kind| {
        Hop::calling(
            kind,
            "front",
            vec![Hop::leaf(kind, "a"), Hop::leaf(kind, "b")],
        )
    };
    let grpc_front = |kind| Hop::calling(kind, "front", vec![Hop::leaf(Kind::Grpc, "model")]);
    match name {
        "threaded" => two_leaves(Kind::Threaded),
        "aiohttp" => two_leaves(Kind::Aiohttp { uvloop: false }),
        "aiohttp-uvloop" => two_leaves(Kind::Aiohttp { uvloop: true }),
        "fastapi" => two_leaves(Kind::Fastapi),
        "asyncio" => two_leaves(Kind::Asyncio { python: "python3" }),
        // Debian's own interpreter: statically linked, its `_asyncio` module stripped.
        "asyncio-debian" => two_leaves(Kind::Asyncio {
            python: DEBIAN_PYTHON,
        }),
        "asyncio-3.12" => two_leaves(Kind::Asyncio {
            python: PYTHON_3_12,
        }),
        "asyncio-3.13" => two_leaves(Kind::Asyncio {
            python: PYTHON_3_13,
        }),
        "node" => two_leaves(Kind::Node),
        "node-fetch" => two_leaves(Kind::NodeFetch),
        "node-limited" => two_leaves(Kind::NodeLimited),
        "go" => two_leaves(Kind::Go),
        // An HTTP front calling a gRPC model server: the caller → gRPC client link.
        "grpc" => grpc_front(Kind::Threaded),
        "grpc-pool" => grpc_front(Kind::ThreadPool),
        // The chain: HTTP front → gRPC model → gRPC feature server.
        "grpc-chain" => Hop::calling(
            Kind::Threaded,
            "front",
            vec![Hop::calling(
                Kind::Grpc,
                "model",
                vec![Hop::leaf(Kind::Grpc, "feature")],
            )],
        ),
        "go-sequential" => two_leaves(Kind::GoSequential),
        "go-stripped" => two_leaves(Kind::GoStripped),
        // Go in the middle: a threaded front's keep-alive pool into it, goroutines out of it.
        "go-middle" => Hop::calling(
            Kind::Threaded,
            "front",
            vec![Hop::calling(
                Kind::Go,
                "mid",
                vec![
                    Hop::leaf(Kind::Threaded, "a"),
                    Hop::leaf(Kind::Threaded, "b"),
                ],
            )],
        ),
        // Node.js in the middle: a threaded front's keep-alive pool into it (its server sockets
        // carry one request after another), the Node.js fetch chain's calls out of it.
        "node-middle" => Hop::calling(
            Kind::Threaded,
            "front",
            vec![Hop::calling(
                Kind::NodeFetch,
                "mid",
                vec![
                    Hop::leaf(Kind::Threaded, "a"),
                    Hop::leaf(Kind::Threaded, "b"),
                ],
            )],
        ),
        "nginx" => Hop {
            kind: Kind::Nginx,
            service: "nginx",
            segment: "front",
            calls: vec![Hop {
                segment: "front",
                ..two_leaves(Kind::Threaded)
            }],
            tls: false,
        },
        "mixed" => Hop::calling(
            Kind::Go,
            "front",
            vec![
                Hop::calling(
                    Kind::Aiohttp { uvloop: false },
                    "a",
                    vec![Hop::leaf(Kind::Threaded, "c")],
                ),
                Hop::leaf(Kind::Threaded, "b"),
            ],
        ),
        "aiohttp-tls" => tls_chain(Kind::Aiohttp { uvloop: false }),
        "node-tls" => tls_chain(Kind::Node),
        other => panic!("no chain named {other}"),
    }
}

/// A front of `kind` calling an aiohttp and a Node.js leaf over HTTPS: asyncio's and Node.js's
/// TLS run on OpenSSL memory BIOs (no syscall inside an OpenSSL call).
fn tls_chain(kind: Kind) -> Hop {
    Hop::calling(
        kind,
        "front",
        vec![
            Hop::leaf(Kind::Aiohttp { uvloop: false }, "a").over_tls(),
            Hop::leaf(Kind::Node, "b").over_tls(),
        ],
    )
}

/// Every chain [`chain_named`] knows, in table order.
pub const CHAINS: [&str; 21] = [
    "threaded",
    "nginx",
    "aiohttp",
    "aiohttp-uvloop",
    "fastapi",
    "asyncio",
    "asyncio-debian",
    "node",
    "node-fetch",
    "node-middle",
    "node-limited",
    "go",
    "go-sequential",
    "go-stripped",
    "go-middle",
    "mixed",
    "grpc",
    "grpc-pool",
    "grpc-chain",
    "aiohttp-tls",
    "node-tls",
];

/// The Go service, built once per test process into `chains/` of the target folder from the fixture's
/// sources (standard library only, so no network); `stripped` without `.symtab` and DWARF.
#[must_use]
pub fn go_service(stripped: bool) -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    static STRIPPED: OnceLock<PathBuf> = OnceLock::new();
    let (cell, name, flags) = if stripped {
        (&STRIPPED, "go_service_stripped", "-ldflags=-s -w")
    } else {
        (&BUILT, "go_service", "-ldflags=")
    };
    cell.get_or_init(|| {
        let out = crate::target_dir().join(format!("chains/{name}"));
        let _ = run_ok(
            Command::new("go")
                .args(["build", flags, "-o"])
                .arg(&out)
                .arg(".")
                .current_dir(fixture("chains/go_service")),
            Duration::from_mins(3),
        );
        out
    })
    .clone()
}

/// Starts `cmd` and waits (at most 30 s) for the `ready` line it prints once listening.
#[must_use]
pub fn start_ready(cmd: Command, what: &str) -> Proc {
    Talking::spawn(cmd, what).ready(what, Duration::from_secs(30))
}

/// Extra `sockspan run` flags a chain needs: gRPC hops carry the request id in the metadata
/// `x-request-id`, which the agent records only when asked by name.
#[must_use]
pub fn agent_flags(root: &Hop) -> Vec<&'static str> {
    fn has_grpc(hop: &Hop) -> bool {
        hop.kind == Kind::Grpc || hop.calls.iter().any(has_grpc)
    }
    if has_grpc(root) {
        vec!["--record-headers", "x-request-id"]
    } else {
        Vec::new()
    }
}

/// A running chain; its processes stop when it is dropped.
pub struct Chain {
    pub root: Hop,
    /// Where the driver sends its requests.
    pub port: u16,
    /// The file whose creation lets TLS callers' background calls begin
    /// ([`Chain::release_background`]).
    background_gate: PathBuf,
    /// The pid of each service started (nginx's master for nginx), by segment.
    pub pids: Vec<(&'static str, u32)>,
    _procs: Vec<Proc>,
    _nginx: Vec<Nginx>,
}

impl Chain {
    /// Starts the chain's services, leaves first.
    #[must_use]
    pub fn start(root: Hop) -> Self {
        let mut procs = Vec::new();
        let mut nginx = Vec::new();
        let mut pids = Vec::new();
        let background_gate = crate::target_dir().join(format!(
            "chains/background-{}-{}",
            std::process::id(),
            free_port()
        ));
        let port = start_hop(&root, &background_gate, &mut procs, &mut nginx, &mut pids);
        Self {
            root,
            port,
            background_gate,
            pids,
            _procs: procs,
            _nginx: nginx,
        }
    }

    /// Lets the background calls of services that call over TLS begin: they wait until the agent
    /// runs, so that their connections' handshakes are seen (a TLS connection on memory BIOs
    /// open before the agent is not traced). No-op for other chains.
    pub fn release_background(&self) {
        let _ = std::fs::write(&self.background_gate, b"");
    }

    /// Runs the driver to completion: `sequential` requests one after another, then `waves`
    /// waves of `width` concurrent ones. Returns the request ids.
    #[must_use]
    pub fn drive(&self, sequential: usize, waves: usize, width: usize) -> Vec<String> {
        let out = run_ok(
            Command::new("python3")
                .arg(fixture("chains/driver.py"))
                .args([
                    self.port.to_string(),
                    self.root.segment.to_string(),
                    sequential.to_string(),
                    waves.to_string(),
                    width.to_string(),
                ])
                .env("OTEL_SERVICE_NAME", "driver"),
            Duration::from_mins(3),
        );
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains("failed 0"),
            "every request through the chain succeeds: {text}"
        );
        let mut ids: Vec<String> = (0..sequential).map(|i| format!("s{i}")).collect();
        for wave in 0..waves {
            ids.extend((0..width).map(|i| format!("w{wave}x{i}")));
        }
        ids
    }
}

/// Starts `hop` and what it calls; returns its port.
fn start_hop(
    hop: &Hop,
    background_gate: &PathBuf,
    procs: &mut Vec<Proc>,
    nginx: &mut Vec<Nginx>,
    pids: &mut Vec<(&'static str, u32)>,
) -> u16 {
    let downstream: Vec<String> = hop
        .calls
        .iter()
        .map(|d| {
            let port = start_hop(d, background_gate, procs, nginx, pids);
            // An HTTP service calls a gRPC one through its gRPC client.
            if d.kind == Kind::Grpc && hop.kind != Kind::Grpc {
                format!("grpc:{}={port}", d.segment)
            } else {
                format!("{}={port}", d.segment)
            }
        })
        .collect();
    if hop.kind == Kind::Nginx {
        let [upstream] = downstream.as_slice() else {
            panic!("nginx proxies to exactly one service")
        };
        let port = upstream
            .split('=')
            .nth(1)
            .and_then(|p| p.parse().ok())
            .expect("port");
        let proxy = Nginx::proxy(port);
        let port = proxy.port;
        pids.push((hop.segment, proxy.pid()));
        nginx.push(proxy);
        return port;
    }
    let port = free_port();
    let mut cmd = match hop.kind {
        Kind::Threaded | Kind::ThreadPool => python("threaded.py"),
        Kind::Grpc => python("grpc_chain.py"),
        Kind::Aiohttp { .. } => python("aiohttp_service.py"),
        Kind::Fastapi => python("fastapi_service.py"),
        Kind::Asyncio { python } => {
            let mut cmd = Command::new(python);
            cmd.arg(fixture("chains/asyncio_service.py"));
            cmd
        }
        Kind::Node | Kind::NodeFetch | Kind::NodeLimited => {
            let mut cmd = Command::new("node");
            cmd.arg(fixture("chains/node_service.js"));
            cmd
        }
        Kind::Go | Kind::GoSequential => Command::new(go_service(false)),
        Kind::GoStripped => Command::new(go_service(true)),
        Kind::Nginx => unreachable!("handled above"),
    };
    cmd.arg(hop.segment)
        .arg(port.to_string())
        .args(&downstream)
        .env("OTEL_SERVICE_NAME", hop.service);
    if hop.kind == (Kind::Aiohttp { uvloop: true }) {
        cmd.env("USE_UVLOOP", "1");
    }
    if matches!(
        hop.kind,
        Kind::Aiohttp { .. }
            | Kind::Fastapi
            | Kind::Asyncio { .. }
            | Kind::Node
            | Kind::NodeFetch
            | Kind::NodeLimited
    ) {
        // Calls of a task of the service's own, through the pool the requests use, while
        // requests are in flight: the task rule must never give them a request as parent.
        // (BACKGROUND_MS set for the run, 0 say, replaces the default.)
        cmd.env(
            "BACKGROUND_MS",
            std::env::var("BACKGROUND_MS").unwrap_or_else(|_| "7".into()),
        );
    }
    if hop.tls {
        assert!(
            matches!(hop.kind, Kind::Aiohttp { .. } | Kind::Node),
            "only aiohttp and Node.js services serve HTTPS"
        );
        let (cert, key) = chain_certificate();
        cmd.env("TLS_CERT", cert).env("TLS_KEY", key);
    }
    if hop.calls.iter().any(|d| d.tls) {
        assert!(
            hop.calls.iter().all(|d| d.tls),
            "a service's downstreams are all TLS or none"
        );
        cmd.env("DOWNSTREAM_TLS", "1")
            .env("BACKGROUND_AFTER", background_gate);
    }
    if hop.kind == Kind::GoSequential {
        cmd.env("GO_SEQUENTIAL", "1");
    }
    if hop.kind == Kind::NodeFetch {
        cmd.env("NODE_CLIENT", "fetch");
    }
    if hop.kind == Kind::NodeLimited {
        cmd.env("MAX_SOCKETS", "2");
    }
    if hop.kind == Kind::ThreadPool {
        cmd.env("POOL", "8");
    }
    let proc = start_ready(cmd, hop.service);
    pids.push((hop.segment, proc.pid()));
    procs.push(proc);
    port
}

/// The self-signed certificate and key HTTPS services of chains serve, made once per test
/// process.
fn chain_certificate() -> &'static (PathBuf, PathBuf) {
    static MADE: OnceLock<(PathBuf, PathBuf)> = OnceLock::new();
    MADE.get_or_init(|| {
        crate::self_signed_certificate(
            &crate::target_dir().join(format!("chains/tls-{}", std::process::id())),
        )
    })
}

fn python(script: &str) -> Command {
    let mut cmd = Command::new("python3");
    cmd.arg(fixture(&format!("chains/{script}")));
    cmd
}

/// A span the chain should produce: who exports it, its kind, its path.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Expected {
    service: &'static str,
    kind: &'static str,
    path: String,
}

/// The spans of request `id` through `hop`, each with the one it should have as parent.
fn expected_spans(hop: &Hop, id: &str, caller: &Expected, out: &mut Vec<(Expected, Expected)>) {
    let server = Expected {
        service: hop.service,
        kind: "SERVER",
        path: format!("/{}/{id}", hop.segment),
    };
    out.push((server.clone(), caller.clone()));
    for down in &hop.calls {
        let client = Expected {
            service: hop.service,
            kind: "CLIENT",
            path: format!("/{}/{id}", down.segment),
        };
        out.push((client.clone(), server.clone()));
        expected_spans(down, id, &client, out);
    }
}

/// How well the exported spans match the chain's trees.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Score {
    pub chain: String,
    pub requests: usize,
    /// Spans the trees should have (the driver's roots included), and how many were exported.
    pub expected_spans: usize,
    pub present_spans: usize,
    /// Parent links the trees should have; exported right, exported pointing elsewhere.
    pub expected_links: usize,
    pub right_links: usize,
    pub wrong_links: usize,
    /// Requests whose whole tree is right: every span, every parent, one trace, each child
    /// inside its parent's time.
    pub whole_traces: usize,
    /// The sequential requests (ids `s<n>`, one in flight at a time), and how many were whole.
    pub sequential: usize,
    pub sequential_whole: usize,
    /// Spans exported with no parent where the tree expects one; how many of them carry a span
    /// link to the expected parent (a rule that saw candidates and named none), and how many
    /// carry links none of which is it.
    pub orphans: usize,
    pub orphans_linked_right: usize,
    pub orphans_linked_wrong: usize,
    /// Evidence of the right links, counted (`thread`, `connection`, …).
    pub evidence: HashMap<String, usize>,
    /// The first few problems, for the test's message.
    pub problems: Vec<String>,
}

fn ratio(part: usize, whole: usize) -> f64 {
    if whole == 0 {
        1.0
    } else {
        part as f64 / whole as f64
    }
}

impl Score {
    #[must_use]
    pub fn completeness(&self) -> f64 {
        ratio(self.present_spans, self.expected_spans)
    }

    /// Right links over all links exported among the chain's spans.
    #[must_use]
    pub fn precision(&self) -> f64 {
        ratio(self.right_links, self.right_links + self.wrong_links)
    }

    #[must_use]
    pub fn recall(&self) -> f64 {
        ratio(self.right_links, self.expected_links)
    }

    #[must_use]
    pub fn whole_trace(&self) -> f64 {
        ratio(self.whole_traces, self.requests)
    }

    #[must_use]
    pub fn to_json(&self) -> Value {
        json!({
            "chain": self.chain,
            "requests": self.requests,
            "expected_spans": self.expected_spans,
            "present_spans": self.present_spans,
            "expected_links": self.expected_links,
            "right_links": self.right_links,
            "wrong_links": self.wrong_links,
            "whole_traces": self.whole_traces,
            "sequential": self.sequential,
            "sequential_whole": self.sequential_whole,
            "orphans": self.orphans,
            "orphans_linked_right": self.orphans_linked_right,
            "orphans_linked_wrong": self.orphans_linked_wrong,
            "evidence": self.evidence,
            "problems": self.problems,
        })
    }

    /// One line for a test's output.
    #[must_use]
    pub fn line(&self) -> String {
        format!(
            "{}: {} requests, completeness {:.1} %, precision {:.1} % ({} wrong), recall {:.1} %, \
             whole-trace {:.1} % (sequential {} of {}), no parent {} (linked to it {}, linked \
             elsewhere {}), evidence {:?}",
            self.chain,
            self.requests,
            100.0 * self.completeness(),
            100.0 * self.precision(),
            self.wrong_links,
            100.0 * self.recall(),
            100.0 * self.whole_trace(),
            self.sequential_whole,
            self.sequential,
            self.orphans,
            self.orphans_linked_right,
            self.orphans_linked_wrong,
            self.evidence,
        )
    }

    /// Counts span `child`, exported with no parent where `parent` was expected, and whether
    /// its span links name that parent.
    fn orphan(&mut self, child: &Value, parent: Option<&Value>) {
        self.orphans += 1;
        let links = child["links"].as_array().map_or(&[][..], Vec::as_slice);
        if links.is_empty() {
            return;
        }
        // A missing (or doubled) expected parent is a completeness problem, counted as such.
        let Some(expected) = parent.map(|p| str_of(p, "/span_id")) else {
            return;
        };
        if links.iter().any(|l| str_of(l, "/span_id") == expected) {
            self.orphans_linked_right += 1;
        } else {
            self.orphans_linked_wrong += 1;
            self.problem(format!(
                "WRONG links of a span with no parent: {} {}",
                str_of(child, "/resource/service.name"),
                path_of(child).unwrap_or_default()
            ));
        }
    }

    /// Keeps the first dozen problems, and every wrong parent up to fifty.
    fn problem(&mut self, text: String) {
        let limit = if text.contains("WRONG") { 50 } else { 12 };
        if self.problems.len() < limit {
            self.problems.push(text);
        }
    }
}

/// A span's path as the chain's truth names it: `url.path` for HTTP; for gRPC (no path, the
/// method names the service's segment) `/<method>/<x-request-id>`.
fn path_of(span: &Value) -> Option<String> {
    if let Some(path) = span.pointer("/attributes/url.path").and_then(Value::as_str) {
        return Some(path.to_string());
    }
    // `rpc.method` is `service/method` (`chain.Svc/model`).
    let full = span
        .pointer("/attributes/rpc.method")
        .and_then(Value::as_str)?;
    let method = full.rsplit('/').next().unwrap_or(full);
    let id = span
        .pointer("/attributes/http.request.header.x-request-id")
        .and_then(Value::as_str)?;
    Some(format!("/{method}/{id}"))
}

fn str_of<'a>(span: &'a Value, pointer: &str) -> &'a str {
    span.pointer(pointer).and_then(Value::as_str).unwrap_or("")
}

fn time(span: &Value, key: &str) -> u64 {
    span[key].as_u64().unwrap_or(0)
}

/// Scores `spans` (as `sockspan run --output jsonl` printed them) against the trees of requests
/// `ids` through `root`.
#[must_use]
pub fn score(chain: &str, root: &Hop, ids: &[String], spans: &[Value]) -> Score {
    let mut by_identity: HashMap<Expected, Vec<&Value>> = HashMap::new();
    for span in spans {
        let Some(path) = path_of(span) else {
            continue;
        };
        let Some(service) = [root.service, "driver"]
            .into_iter()
            .chain(services(root))
            .find(|s| *s == str_of(span, "/resource/service.name"))
        else {
            continue;
        };
        let kind = if str_of(span, "/kind") == "SERVER" {
            "SERVER"
        } else {
            "CLIENT"
        };
        by_identity
            .entry(Expected {
                service,
                kind,
                path,
            })
            .or_default()
            .push(span);
    }
    let mut score = Score {
        chain: chain.to_string(),
        requests: ids.len(),
        ..Score::default()
    };
    // Span ids of every span found where a scored request's tree expects one.
    let mut expected_children = HashSet::new();
    for id in ids {
        score_request(&mut score, root, id, &by_identity, &mut expected_children);
    }
    // A span that is no expected child of a scored span but names one as its parent (a call a
    // service made of its own accord, adopted by a request) is a wrong link too.
    for span in spans {
        let parent = str_of(span, "/parent_span_id");
        let id = str_of(span, "/span_id");
        if !parent.is_empty()
            && expected_children.contains(parent)
            && !expected_children.contains(id)
        {
            score.wrong_links += 1;
            score.problem(format!(
                "WRONG parent of a span no request made: {} {} ({})",
                str_of(span, "/resource/service.name"),
                path_of(span).unwrap_or_default(),
                str_of(span, "/attributes/sockspan.parent.evidence")
            ));
        }
    }
    score
}

/// Adds request `id`'s tree to `score`.
fn score_request(
    score: &mut Score,
    root: &Hop,
    id: &str,
    by_identity: &HashMap<Expected, Vec<&Value>>,
    expected_children: &mut HashSet<String>,
) {
    let driver = Expected {
        service: "driver",
        kind: "CLIENT",
        path: format!("/{}/{id}", root.segment),
    };
    let mut edges = Vec::new();
    expected_spans(root, id, &driver, &mut edges);
    let find = |e: &Expected| -> Option<&Value> {
        match by_identity.get(e).map(Vec::as_slice) {
            Some([one]) => Some(*one),
            _ => None,
        }
    };
    score.expected_spans += edges.len() + 1;
    score.expected_links += edges.len();
    let mut whole = true;
    let root_span = find(&driver);
    if let Some(root_span) = root_span {
        score.present_spans += 1;
        if !root_span["parent_span_id"].is_null() {
            whole = false;
            score.problem(format!("{id}: the driver's span has a parent"));
        }
    } else {
        whole = false;
        score.problem(format!("{id}: no (single) driver span"));
    }
    if let Some(root_span) = root_span {
        expected_children.insert(str_of(root_span, "/span_id").to_string());
    }
    let trace = root_span.map(|s| str_of(s, "/trace_id"));
    for (child, parent) in &edges {
        let Some(c) = find(child) else {
            whole = false;
            let n = by_identity.get(child).map_or(0, Vec::len);
            score.problem(format!("{id}: {n} spans for {child:?}"));
            continue;
        };
        score.present_spans += 1;
        expected_children.insert(str_of(c, "/span_id").to_string());
        let p = find(parent);
        let got = str_of(c, "/parent_span_id");
        if got.is_empty() {
            whole = false;
            score.orphan(c, p);
            score.problem(format!("{id}: {child:?} has no parent"));
            continue;
        }
        if p.is_some_and(|p| str_of(p, "/span_id") == got) {
            score.right_links += 1;
            *score
                .evidence
                .entry(str_of(c, "/attributes/sockspan.parent.evidence").to_string())
                .or_default() += 1;
        } else {
            score.wrong_links += 1;
            whole = false;
            score.problem(format!(
                "{id}: WRONG parent of {child:?} ({})",
                str_of(c, "/attributes/sockspan.parent.evidence")
            ));
            continue;
        }
        let p = p.expect("found above");
        if Some(str_of(c, "/trace_id")) != trace {
            whole = false;
            score.problem(format!("{id}: {child:?} in another trace"));
        }
        if time(c, "start_time_unix_nano") < time(p, "start_time_unix_nano")
            || time(c, "end_time_unix_nano") > time(p, "end_time_unix_nano")
        {
            whole = false;
            score.problem(format!("{id}: {child:?} outside its parent's time"));
        }
    }
    if whole {
        score.whole_traces += 1;
    }
    if id.starts_with('s') {
        score.sequential += 1;
        score.sequential_whole += usize::from(whole);
    }
}

fn services(hop: &Hop) -> Vec<&'static str> {
    let mut out = vec![hop.service];
    for down in &hop.calls {
        out.extend(services(down));
    }
    out
}

/// Writes `score` to `$SOCKSPAN_SCORES/<chain>.json` when that variable names a directory
/// (`cargo xtask causality` sets it and renders the table from the files).
pub fn save(score: &Score) {
    let Some(dir) = std::env::var_os("SOCKSPAN_SCORES") else {
        return;
    };
    let dir = PathBuf::from(dir);
    std::fs::create_dir_all(&dir).expect("scores dir");
    let mut text = serde_json::to_string_pretty(&score.to_json()).expect("json");
    let _ = writeln!(text);
    std::fs::write(dir.join(format!("{}.json", score.chain)), text).expect("write score");
}

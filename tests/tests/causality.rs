//! Root integration tests of causality across runtimes: a chain of real services per runtime
//! (thread per request, nginx as a proxy, asyncio on aiohttp and uvicorn, Node.js, Go, and a mix),
//! sequential requests and waves of concurrent ones, every request's tree checked against the
//! ids in its paths (`sockspan_tests::chains`). `cargo xtask causality` runs these and writes the
//! score table to docs/causality.md.

use std::process::Command;

use sockspan_tests::{
    Agent,
    chains::{Chain, Score, agent_flags, chain_named, save, score},
    sockspan_unwrapped_bin,
};

/// Requests per run: sequential, then waves × width concurrent.
const SEQUENTIAL: usize = 10;
const WAVES: usize = 3;
const WIDTH: usize = 10;

/// The load: the constants above, or `SOCKSPAN_CAUSALITY_LOAD=sequential,waves,width` for a
/// heavier measurement by hand.
fn load() -> (usize, usize, usize) {
    let Ok(spec) = std::env::var("SOCKSPAN_CAUSALITY_LOAD") else {
        return (SEQUENTIAL, WAVES, WIDTH);
    };
    let n: Vec<usize> = spec
        .split(',')
        .map(|v| v.trim().parse().expect("SOCKSPAN_CAUSALITY_LOAD: numbers"))
        .collect();
    let [sequential, waves, width] = n[..] else {
        panic!("SOCKSPAN_CAUSALITY_LOAD is sequential,waves,width");
    };
    (sequential, waves, width)
}

fn measure(name: &str) -> Score {
    measure_with_log(name).0
}

/// The score, and what the agent logged.
fn measure_with_log(name: &str) -> (Score, String) {
    let (score, out) = measure_with_output(name);
    (score, out.stderr)
}

/// The score, and all the agent wrote.
fn measure_with_output(name: &str) -> (Score, sockspan_tests::Output) {
    let chain = Chain::start(chain_named(name));
    let mut flags = vec!["--output", "jsonl"];
    flags.extend(agent_flags(&chain.root));
    let agent = Agent::start_command("run", &flags);
    chain.release_background();
    let (sequential, waves, width) = load();
    let ids = chain.drive(sequential, waves, width);
    let out = agent.stop();
    assert!(out.status.success(), "{}", out.stderr);
    let result = score(name, &chain.root, &ids, &out.events);
    save(&result);
    eprintln!("{}", result.line());
    if !result.problems.is_empty() {
        // The agent's own counters, for whoever reads a failure: which rule ran, what it missed.
        eprintln!("agent: {}", out.counters);
    }
    (result, out)
}

/// No rule may name a parent it is not sure of, on any runtime.
fn assert_precise(score: &Score) {
    assert!(
        score.precision() >= 0.99,
        "link precision below 99 %: {}\n{:#?}",
        score.line(),
        score.problems
    );
}

/// A runtime whose causality sockspan recovers: (nearly) every request's whole tree.
fn assert_whole(score: &Score) {
    assert_whole_at(score, 0.95);
}

/// Precise, and whole for at least `share` of the requests.
fn assert_whole_at(score: &Score, share: f64) {
    assert_precise(score);
    assert!(
        score.whole_trace() >= share,
        "whole-trace below {:.0} %: {}\n{:#?}",
        share * 100.0,
        score.line(),
        score.problems
    );
}

#[test]
fn threaded_chain_is_whole() {
    assert_whole(&measure("threaded"));
}

/// The proxy rule: nginx's forwarded request asks what the incoming one asked.
#[test]
fn nginx_chain_is_whole() {
    let score = measure("nginx");
    assert_whole(&score);
    assert!(
        score.evidence.get("proxy").copied().unwrap_or(0) > 0,
        "{}",
        score.line()
    );
}

/// asyncio: the task rule (the running task's context at each syscall, task creation from
/// uprobes on `_asyncio.Task.__init__`); the services' own background task calls through the
/// same pools and must never be adopted by a request.
fn assert_task_rule(score: &Score) {
    assert_whole(score);
    assert!(
        score.evidence.get("task").copied().unwrap_or(0) > 0,
        "{}",
        score.line()
    );
}

/// aiohttp: a task per request, made by the connection's task.
#[test]
fn aiohttp_chain_is_whole() {
    assert_task_rule(&measure("aiohttp"));
}

#[test]
fn aiohttp_uvloop_chain_is_whole() {
    assert_task_rule(&measure("aiohttp-uvloop"));
}

/// uvicorn (uvloop, httptools): a task per request, made in the callback that read it.
#[test]
fn fastapi_chain_is_whole() {
    assert_task_rule(&measure("fastapi"));
}

/// The standard library's streams: one task per connection answers its requests in turn.
#[test]
fn asyncio_streams_chain_is_whole() {
    assert_task_rule(&measure("asyncio"));
}

/// Debian's python3: `_PyRuntime` in a non-PIE executable, `Task.__init__` found through the
/// type's `tp_init` slot (the module has no symbols).
#[test]
fn asyncio_on_debian_python_is_whole() {
    assert_task_rule(&measure("asyncio-debian"));
}

/// The 3.12 and 3.13 layouts, end to end, where the machine has those interpreters.
#[test]
fn asyncio_on_python_3_12_and_3_13_is_whole() {
    for (chain, python) in [
        ("asyncio-3.12", sockspan_tests::chains::PYTHON_3_12),
        ("asyncio-3.13", sockspan_tests::chains::PYTHON_3_13),
    ] {
        if std::path::Path::new(python).exists() {
            assert_task_rule(&measure(chain));
        } else {
            eprintln!("{chain}: {python} is not on this machine; not measured");
        }
    }
}

/// `--no-runtime-probes asyncio`: no task links, and no wrong parent either. The loop's thread
/// serves every request and runs the front's own background calls: in a process running
/// asyncio with the probes off, the thread rule gives links, never a parent, from the first
/// request on (it adopted 2–3 background calls of 16 requests when it waited to see the thread
/// serve two requests at once). The calls made for a request carry a link to it.
#[test]
fn asyncio_probes_can_be_turned_off() {
    let chain = Chain::start(chain_named("fastapi"));
    let agent = Agent::start_command(
        "run",
        &["--output", "jsonl", "--no-runtime-probes", "asyncio"],
    );
    let ids = chain.drive(4, 2, 6);
    let out = agent.stop();
    assert!(out.status.success(), "{}", out.stderr);
    let result = score("fastapi-probes-off", &chain.root, &ids, &out.events);
    eprintln!("{}", result.line());
    assert_eq!(result.evidence.get("task"), None, "{}", result.line());
    assert_eq!(
        result.wrong_links,
        0,
        "{}\n{:#?}",
        result.line(),
        result.problems
    );
    assert_eq!(result.evidence.get("thread"), None, "{}", result.line());
    // Every call made for a request (two per request) carries a link to it.
    assert!(
        result.orphans_linked_right >= 2 * result.requests && result.orphans_linked_wrong == 0,
        "{}",
        result.line()
    );
    assert!(
        out.stderr.contains("Python asyncio probes off")
            && out.counter("asyncio_processes_followed") == 0
            && out.counter("asyncio_processes_unfollowed") > 0,
        "{}",
        out.stderr
    );
}

/// Node.js: one thread runs every callback, its own timers' included, so the thread rule is off
/// there; the callback rule links a call to the request whose socket's libuv callback made it
/// (uprobes at `uv__stream_io`), and never gives one to the service's timer calls.
#[test]
fn node_chain_is_whole() {
    let (score, log) = measure_with_log("node");
    assert_whole(&score);
    assert_node_callback_rule(&score, &log);
}

/// The same with `fetch` (undici's pool), each call made when the previous one's response is
/// read: the rule follows a response's callback back to the request its call was made for.
#[test]
fn node_fetch_chain_is_whole() {
    let (score, log) = measure_with_log("node-fetch");
    assert_whole(&score);
    assert_node_callback_rule(&score, &log);
}

fn assert_node_callback_rule(score: &Score, log: &str) {
    assert!(
        score.evidence.get("callback").copied().unwrap_or(0) > 0,
        "{}",
        score.line()
    );
    assert_eq!(score.evidence.get("thread"), None, "{}", score.line());
    assert!(
        log.contains("a Node.js program: same-thread causality is off")
            && log.contains("Node.js callback probes attached"),
        "{log}"
    );
}

/// Node.js between a threaded front's keep-alive pool and two threaded leaves.
#[test]
fn node_middle_chain_is_whole() {
    let (score, log) = measure_with_log("node-middle");
    assert_whole(&score);
    assert!(
        score.evidence.get("callback").copied().unwrap_or(0) > 0
            && log.contains("Node.js callback probes attached"),
        "{}",
        score.line()
    );
}

/// A connection-limited `http.Agent`: requests queue for a socket and are written in the freed
/// socket's callback, which names no parent; none may get a wrong one.
#[test]
fn node_with_a_connection_limit_names_no_wrong_parent() {
    let (score, log) = measure_with_log("node-limited");
    assert_precise(&score);
    assert_node_callback_rule(&score, &log);
}

/// The calls to the leaves over HTTPS, from asyncio (aiohttp's `ClientSession`) or Node.js
/// (`https.request`), to an aiohttp and a Node.js HTTPS server: both runtimes run OpenSSL on
/// memory BIOs, so no syscall happens inside an OpenSSL call; each `SSL *` is tied to its socket
/// by the handshake read just before one of its calls and the write just after one. Every tree
/// whole, each TLS span from plaintext, the task and callback rules on TLS calls as on
/// cleartext ones; the services' background calls through the same pools (begun once the agent
/// runs) never adopted.
fn assert_memory_bio_chain(name: &str, rule: &str) {
    let (score, out) = measure_with_output(name);
    assert_whole(&score);
    for evidence in [rule, "connection"] {
        assert!(
            score.evidence.get(evidence).copied().unwrap_or(0) > 0,
            "{evidence}: {}",
            score.line()
        );
    }
    assert!(out.counter("tls_tied_by_adjacency") > 0, "{}", out.counters);
    let leaf_spans: Vec<&serde_json::Value> = out
        .events
        .iter()
        .filter(|s| ["a", "b"].contains(&s["resource"]["service.name"].as_str().unwrap_or("")))
        .collect();
    assert!(!leaf_spans.is_empty());
    for span in leaf_spans {
        assert_eq!(span["attributes"]["tls.protocol.name"], "tls", "{span:#}");
        assert_eq!(span["attributes"]["url.scheme"], "https", "{span:#}");
    }
}

#[test]
fn aiohttp_chain_over_tls_is_whole() {
    assert_memory_bio_chain("aiohttp-tls", "task");
}

#[test]
fn node_chain_over_tls_is_whole() {
    assert_memory_bio_chain("node-tls", "callback");
}

/// `--no-runtime-probes node`: no callback links, and no wrong parent either.
#[test]
fn node_probes_can_be_turned_off() {
    let chain = Chain::start(chain_named("node"));
    let agent = Agent::start_command("run", &["--output", "jsonl", "--no-runtime-probes", "node"]);
    let ids = chain.drive(4, 2, 6);
    let out = agent.stop();
    assert!(out.status.success(), "{}", out.stderr);
    let result = score("node-probes-off", &chain.root, &ids, &out.events);
    eprintln!("{}", result.line());
    assert_precise(&result);
    assert_eq!(result.evidence.get("callback"), None, "{}", result.line());
    assert!(
        out.stderr.contains("Node.js callback probes off")
            && out.counter("node_processes_followed") == 0,
        "{}",
        out.stderr
    );
}

/// Go's goroutines move between threads: same-thread causality named wrong parents there. The
/// agent recognises Go programs, keeps them out of it, and follows goroutines instead (spawns,
/// and net/http's hand-off of a request to the connection's write loop).
#[test]
fn go_chain_is_whole() {
    let (score, log) = measure_with_log("go");
    assert_whole(&score);
    assert!(
        log.contains("a Go program: same-thread causality is off")
            && log.contains("Go runtime probes attached"),
        "the Go service is recognised and probed: {log}"
    );
    assert_eq!(score.evidence.get("thread"), None, "{}", score.line());
    assert!(
        score.evidence.get("goroutine").copied().unwrap_or(0) > 0,
        "{}",
        score.line()
    );
}

/// The hand-off alone: the handler's own goroutine calls, one call after the other.
#[test]
fn go_sequential_chain_is_whole() {
    assert_whole(&measure("go-sequential"));
}

/// A Go program without `.symtab`: the probes find their functions in `.gopclntab`.
#[test]
fn go_stripped_chain_is_whole() {
    assert_whole(&measure("go-stripped"));
}

/// Go behind a threaded front's keep-alive pool: requests reach its `conn.serve` goroutines over
/// reused connections.
#[test]
fn go_middle_chain_is_whole() {
    assert_whole(&measure("go-middle"));
}

/// Go front → aiohttp → threaded: goroutine, task and thread rules in one trace.
#[test]
fn mixed_chain_is_whole() {
    assert_whole(&measure("mixed"));
}

/// The Go chain under an agent without its runtime probes (started by `agent`): every span is
/// there, no goroutine link (so no wrong one); returns what the agent logged.
fn go_chain_without_probes(name: &str, agent: impl FnOnce() -> Agent) -> String {
    let chain = Chain::start(chain_named("go"));
    let agent = agent();
    let ids = chain.drive(4, 1, 4);
    let out = agent.stop();
    assert!(out.status.success(), "{}", out.stderr);
    let result = score(name, &chain.root, &ids, &out.events);
    eprintln!("{}", result.line());
    assert_precise(&result);
    assert!(
        (result.completeness() - 1.0).abs() < f64::EPSILON,
        "{}",
        result.line()
    );
    assert_eq!(result.evidence.get("goroutine"), None, "{}", result.line());
    out.stderr
}

/// Without `CAP_SYS_ADMIN` the kernel refuses uprobes: the agent traces the Go chain on, with no
/// goroutine links (so no wrong ones), and says why.
#[test]
fn go_without_cap_sys_admin_traces_on_and_says_why() {
    let log = go_chain_without_probes("go-without-cap-sys-admin", || {
        let mut cmd = Command::new("setpriv");
        cmd.args([
            "--inh-caps=-all",
            "--bounding-set=-all,+bpf,+perfmon,+sys_ptrace",
            "--",
        ])
        .arg(sockspan_unwrapped_bin())
        .args(["run", "--output", "jsonl"]);
        // Ready once the attaching is over: the chain is driven after it (a process seen while
        // the agent was still busy may have exited before it was named).
        Agent::spawn(cmd)
    });
    assert!(
        log.contains("no goroutine causality for this Go program")
            && log.contains("without CAP_SYS_ADMIN"),
        "the log says why: {log}"
    );
}

/// `--no-runtime-probes go` leaves the Go probes off: traced on, no goroutine links, said so.
#[test]
fn go_runtime_probes_can_be_turned_off() {
    let log = go_chain_without_probes("go-probes-off", || {
        Agent::start_command("run", &["--output", "jsonl", "--no-runtime-probes", "go"])
    });
    assert!(
        log.contains("Go runtime probes off") && !log.contains("Go runtime probes attached"),
        "{log}"
    );
}

/// A gRPC client's call gets its parent from the thread rule only when the write that opened its
/// stream carried that stream alone: grpc-core may flush several callers' queued HEADERS in one
/// write from any of their threads, and such a write names no parent (a root, never a wrong one).
/// How often that happens depends on the machine's load: no flush over 1 720 requests measured
/// here (`docs/causality.md`), 3 calls of 40 once in a CI run under load. Precision is held
/// strictly; whole trees at ≥ 90 %.
fn assert_grpc_front(score: &Score) {
    assert_whole_at(score, 0.90);
}

/// An HTTP front (a thread per request) calling a grpcio model server: the thread rule for a
/// write that opens one HTTP/2 stream alone (grpcio's calling thread writes its own HEADERS).
#[test]
fn grpc_chain_from_a_threaded_front_is_whole() {
    let score = measure("grpc");
    assert_grpc_front(&score);
    assert!(
        score.evidence.get("thread").copied().unwrap_or(0) > 0,
        "{}",
        score.line()
    );
}

/// The same from a fixed pool of threads, where one thread serves many requests in turn (the
/// case where grpc-core could flush another caller's stream from a thread serving a request).
#[test]
fn grpc_chain_from_a_thread_pool_is_whole() {
    assert_grpc_front(&measure("grpc-pool"));
}

/// HTTP front → gRPC model → gRPC feature server: the model's handler runs on grpcio's pool
/// thread, not the thread that read the call; the worker rule links its call to the feature
/// server through the stream that thread answers next. When grpc-core's I/O thread wrote several
/// workers' answers and either could have been either's, the call gets span links to the
/// candidates and no parent. How often that happens depends on the machine's load (release
/// builds: 88.6–100 % of trees whole, mean 96.6 %, over 20 runs, `docs/causality.md`; debug
/// builds in CI runs on a slower machine: 77.5 % whole, the worker rule parenting 31 of 40 calls
/// and linking the other 9 to candidates that included the right one). So what is asserted is
/// what holds at any load:
/// - no wrong parent, and no span whose links leave out its real parent;
/// - the sequential requests (one answer in flight at a time) whole, bar one;
/// - ≥ 90 % of the model's calls parented by the worker rule or linked to their real parent
///   (only the worker rule gives links in this chain), ≥ 60 % parented by it.
#[test]
fn grpc_chain_of_three() {
    let score = measure("grpc-chain");
    assert_eq!(
        score.wrong_links,
        0,
        "{}\n{:#?}",
        score.line(),
        score.problems
    );
    assert_eq!(score.orphans_linked_wrong, 0, "{}", score.line());
    assert!(
        score.sequential_whole + 1 >= score.sequential,
        "more than one sequential request's tree was not whole: {}",
        score.line()
    );
    let by_worker = score.evidence.get("worker").copied().unwrap_or(0);
    assert!(
        (by_worker + score.orphans_linked_right) * 10 >= score.requests * 9,
        "fewer than 90 % of the model's calls were parented or linked to their parent: {}",
        score.line()
    );
    assert!(
        by_worker * 10 >= score.requests * 6,
        "the worker rule parented fewer than 60 % of the model's calls: {}",
        score.line()
    );
}

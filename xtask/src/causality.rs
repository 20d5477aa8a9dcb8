//! `cargo xtask causality`: runs every runtime chain (`sockspan_tests::chains`) under the release
//! agent, scores each request's tree, and writes the table to docs/causality.md.

use std::{fmt::Write as _, process::Command, time::Duration};

use anyhow::{Result, bail};
use sockspan_tests::{
    Agent,
    chains::{CHAINS, Chain, Score, agent_flags, chain_named, score},
};

use crate::util::{release_agent, workspace_root, write_section};

/// Requests per chain: sequential, then waves × width concurrent (more than the tests send).
const SEQUENTIAL: usize = 20;
const WAVES: usize = 5;
const WIDTH: usize = 10;

/// Runs of a chain summed into its row: grpc-chain's trees vary with how grpc-core happens to
/// flush its workers' answers (85–100 % whole from one run to the next), so one run says
/// little.
fn rounds(chain: &str) -> usize {
    if chain == "grpc-chain" { 10 } else { 1 }
}

/// `more`'s counts added to `into`'s (the same chain, another run).
fn add_run(into: &mut Score, more: Score) {
    into.requests += more.requests;
    into.expected_spans += more.expected_spans;
    into.present_spans += more.present_spans;
    into.expected_links += more.expected_links;
    into.right_links += more.right_links;
    into.wrong_links += more.wrong_links;
    into.whole_traces += more.whole_traces;
    into.sequential += more.sequential;
    into.sequential_whole += more.sequential_whole;
    into.orphans += more.orphans;
    into.orphans_linked_right += more.orphans_linked_right;
    into.orphans_linked_wrong += more.orphans_linked_wrong;
    for (evidence, n) in more.evidence {
        *into.evidence.entry(evidence).or_default() += n;
    }
    into.problems.extend(more.problems);
}

/// Why a chain scores as it does, and what comes next; kept beside the figures it explains.
fn reason(chain: &str) -> &'static str {
    match chain {
        "threaded" => "A thread serves one request at a time: the thread rule holds.",
        "nginx" => {
            "The proxy rule: nginx's upstream request asks what the incoming one asked, while it \
             is in flight in the worker; the thread rule covers the threaded chain behind it."
        }
        "aiohttp" | "aiohttp-uvloop" => {
            "Task rule: each syscall of the loop's thread carries the running task's \
             `contextvars.Context` (read from the thread state), task creation comes from \
             uprobes on `_asyncio.Task.__init__`; a call belongs to the request whose response \
             its task, or the task that created it, wrote (aiohttp makes a task per request). \
             The services' own background task calls through the same pools all along and is \
             never adopted (a stray adoption counts as a wrong link)."
        }
        "fastapi" => {
            "Task rule, uvicorn (uvloop, httptools) making a task per request in the callback \
             that read it; httpx's calls from `asyncio.gather`'s tasks."
        }
        "asyncio" | "asyncio-debian" => {
            "Task rule for a connection's task (asyncio streams: one task answers its \
             connection's requests in turn); `asyncio-debian` runs Debian's python3, whose \
             `_asyncio` module is stripped (`Task.__init__` found through the type's `tp_init` \
             slot) and whose `_PyRuntime` is in a non-PIE executable."
        }
        "node" => {
            "Callback rule: uprobes at libuv's `uv__stream_io` tell which socket's callback a \
             syscall ran in; a call written (or its socket opened) in a server socket's \
             callback is the child of the one request that socket serves. The thread rule is \
             off for Node.js (one thread runs every callback; it named wrong parents for the \
             timer's background calls, which the callback rule leaves alone: made outside any \
             callback). Calls over a new connection to a server named by host name (not an IP) \
             lose their parent: the connect runs in the DNS lookup's completion, outside any \
             stream callback."
        }
        "node-fetch" => {
            "Callback rule with `fetch` (undici), the calls one after the other: the second \
             call is written in the first call's response callback, and takes what that call \
             was made for."
        }
        "node-limited" => {
            "As node, its `http.Agent` limited to 2 sockets per server, so requests queue for \
             one: a queued request is written in the freed socket's callback and gets no parent \
             (never a wrong one). Next: follow a queued request from the callback that queued \
             it."
        }
        "node-middle" => {
            "Callback rule behind a threaded front's keep-alive pool (the Node.js service's \
             server sockets carry one request after another), `fetch` out of it; thread rule \
             in the front."
        }
        "go" => {
            "Goroutine rule: the running `g` (R14) on every syscall, spawns from \
             `runtime.newproc1`, and `net/http`'s hand-off of a request from `roundTrip` to the \
             connection's write loop (uprobes; `CAP_SYS_ADMIN`). The thread rule is off for Go: \
             goroutines change threads, and it named wrong parents."
        }
        "go-sequential" => {
            "Goroutine rule, the `net/http` hand-off alone: the handler's own goroutine calls."
        }
        "go-stripped" => {
            "As go, built with `-ldflags=-s -w`: the probes find their functions in `.gopclntab`."
        }
        "go-middle" => {
            "Goroutine rule behind a threaded front's keep-alive pool (requests reach Go's \
             `conn.serve` goroutines over reused connections); thread rule in the front."
        }
        "grpc" | "grpc-pool" => {
            "Thread rule for HTTP/2 clients, only for a write that opens one stream alone: \
             grpcio's calling thread writes its own HEADERS (a write carrying several streams \
             may be a flush of other callers' and is never used). Measured with no wrong link \
             over 1 720 requests at up to 60 concurrent, from a thread per request and from a \
             pool of 8 threads."
        }
        "grpc-chain" => {
            "The front → model hop as grpc; the model's handler runs on grpcio's thread pool, \
             not the thread that read the call: the worker rule gives its call to the feature \
             server the stream that pool thread answers next (its response, written alone by \
             that thread), or the one answer in between that named no worker, once the streams \
             other pool threads' candidates must cover are set aside; a pool thread that writes \
             nothing more is decided once every stream begun before its call has ended. When \
             grpc-core's I/O thread wrote two workers' answers and either could have been \
             either's, the call gets span links to each, no parent (never a guessed one). \
             88.6–100 % whole over 20 runs of this load alone (mean 96.6 %), 94.4 % in the 10 of \
             this table, run after the other chains; no wrong link in 2 100 requests."
        }
        "mixed" => {
            "Go front (goroutine rule) → aiohttp middle (task rule) → threaded leaf (thread \
             rule): three rules in one trace."
        }
        "aiohttp-tls" | "node-tls" => {
            "The front (aiohttp, Node.js) calls an aiohttp and a Node.js leaf over HTTPS. Both \
             runtimes run OpenSSL on memory BIOs (no syscall inside an OpenSSL call): an `SSL *` \
             is tied to its socket when the handshake record its thread read just before one of \
             its calls and the write just after one name the same connection; its plaintext \
             records carry the task or callback the call ran in, so the task and callback rules \
             hold over TLS. The background calls begin once the agent runs (a memory-BIO \
             connection whose handshake the agent missed is not traced)."
        }
        _ => "",
    }
}

fn percent(x: f64) -> String {
    format!("{:.1} %", 100.0 * x)
}

fn render(scores: &[Score], started: &str) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "Written by `cargo xtask causality` ({started}; kernel {}). Each chain: a front calling \
         two downstreams over keep-alive connections (in parallel where the runtime does so \
         naturally), one warm-up request (not scored: connections and gRPC channels open; grpcio \
         writes a new channel's first call from its own thread), {SEQUENTIAL} sequential \
         requests then {WAVES} waves of {WIDTH} concurrent ones (grpc-chain, whose trees vary \
         from run to run, {grpc_rounds} times, its row summing the runs); every span's expected parent \
         follows from the request id in its path (`tests/src/chains.rs`). The asyncio and \
         Node.js fronts also call their downstreams every 7 ms from a task or timer of their own, \
         through the same pools, all along: a span that a request adopts without having made it \
         counts as a wrong link. Targets: whole-trace ≥ 95 %, link precision ≥ 99 %.\n",
        kernel(),
        grpc_rounds = rounds("grpc-chain"),
    );
    let _ = writeln!(
        out,
        "| chain | requests | completeness | link precision (wrong) | recall | whole-trace | evidence of right links | target met |\n|---|---|---|---|---|---|---|---|"
    );
    for s in scores {
        let mut evidence: Vec<_> = s.evidence.iter().collect();
        evidence.sort();
        let evidence = evidence
            .iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect::<Vec<_>>()
            .join(", ");
        let met = s.precision() >= 0.99 && s.whole_trace() >= 0.95;
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} ({}) | {} | {} | {} | {} |",
            s.chain,
            s.requests,
            percent(s.completeness()),
            percent(s.precision()),
            s.wrong_links,
            percent(s.recall()),
            percent(s.whole_trace()),
            evidence,
            if met { "yes" } else { "**no**" }
        );
    }
    let _ = writeln!(out, "\nWhy, and what is next:\n");
    for s in scores {
        let _ = writeln!(out, "- **{}**: {}", s.chain, reason(&s.chain));
    }
    out
}

fn kernel() -> String {
    Command::new("uname")
        .arg("-r")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

pub fn causality(only: Option<&str>) -> Result<()> {
    if !crate::util::is_root() {
        bail!("causality loads eBPF programs: run it as root");
    }
    if let Some(name) = only
        && !CHAINS.contains(&name)
    {
        bail!("no chain named `{name}`; known: {}", CHAINS.join(", "));
    }
    crate::setup::test_dependencies()?;
    let bin = release_agent()?;
    // The test helpers start the agent from SOCKSPAN_BIN.
    // SAFETY: set before any thread of ours reads the environment.
    unsafe { std::env::set_var("SOCKSPAN_BIN", &bin) };
    let started = String::from_utf8_lossy(
        &Command::new("date")
            .args(["-u", "+%Y-%m-%d %H:%M UTC"])
            .output()?
            .stdout,
    )
    .trim()
    .to_string();
    // A heavier load for one chain by hand (`--chain`): CAUSALITY_WAVES, CAUSALITY_WIDTH;
    // CAUSALITY_KEEP=<folder> keeps each chain's spans and agent log there.
    let env_or = |key: &str, default: usize| {
        std::env::var(key)
            .ok()
            .and_then(|v| v.parse().ok())
            .filter(|_| only.is_some())
            .unwrap_or(default)
    };
    let (waves, width) = (
        env_or("CAUSALITY_WAVES", WAVES),
        env_or("CAUSALITY_WIDTH", WIDTH),
    );
    let mut scores = Vec::new();
    for name in CHAINS.iter().filter(|c| only.is_none_or(|o| o == **c)) {
        let mut summed: Option<Score> = None;
        for round in 0..rounds(name) {
            let result = run_chain(name, round, (waves, width))?;
            match &mut summed {
                Some(sum) => add_run(sum, result),
                None => summed = Some(result),
            }
        }
        if let Some(sum) = summed {
            if rounds(name) > 1 {
                eprintln!(
                    "xtask causality: {} runs summed: {}",
                    rounds(name),
                    sum.line()
                );
            }
            scores.push(sum);
        }
    }
    if only.is_some() {
        eprintln!("xtask causality: one chain only; docs/causality.md left as it was");
        return Ok(());
    }
    let path = workspace_root().join("docs/causality.md");
    if !path.exists() {
        std::fs::write(
            &path,
            "# Causality per runtime\n\nHow often sockspan gets a request's whole call tree right, \
             per runtime, measured on real services. See docs/spans.md (Linking) for the rules.\n\n",
        )?;
    }
    write_section(&path, "scores", &render(&scores, &started))?;
    eprintln!("xtask causality: wrote {}", path.display());
    Ok(())
}

/// One run (`round`) of chain `name` under the release agent, scored.
fn run_chain(name: &str, round: usize, (waves, width): (usize, usize)) -> Result<Score> {
    eprintln!("xtask causality: {name}");
    let chain = Chain::start(chain_named(name));
    let mut flags = vec!["--output", "jsonl"];
    flags.extend(agent_flags(&chain.root));
    let agent = Agent::start_command("run", &flags);
    chain.release_background();
    let ids = chain.drive(SEQUENTIAL, waves, width);
    let out = agent.stop();
    if !out.status.success() {
        bail!("the agent failed on {name}: {}", out.stderr);
    }
    // What the agent exported and logged, kept for a look at the misses by hand.
    if let Ok(dir) = std::env::var("CAUSALITY_KEEP") {
        let lines: Vec<String> = out.events.iter().map(ToString::to_string).collect();
        std::fs::write(format!("{dir}/{name}.{round}.jsonl"), lines.join("\n"))?;
        std::fs::write(format!("{dir}/{name}.{round}.stderr"), &out.stderr)?;
    }
    let result = score(name, &chain.root, &ids, &out.events);
    eprintln!("xtask causality: {}", result.line());
    for problem in result.problems.iter().filter(|p| p.contains("WRONG")) {
        eprintln!("xtask causality:   {problem}");
    }
    drop(chain);
    std::thread::sleep(Duration::from_millis(200));
    Ok(result)
}

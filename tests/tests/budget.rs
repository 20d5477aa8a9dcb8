//! Root integration tests of the CPU and memory budget (`--max-cpu`, `--max-memory`): a real
//! load generator (wrk) against an uninstrumented Python chain, the agent's exported spans and
//! its counters.

use std::{
    collections::HashMap,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use serde_json::Value;
use sockspan_tests::{Agent, Nginx, Proc, fixture, free_port, python_fixture};

/// wrk's connections: at most one request each is cut when wrk stops.
const WRK_CONNECTIONS: usize = 16;

/// frontend → features, model (`tests/fixtures/chain.py`): a request from outside gives six
/// spans (wrk's CLIENT, the frontend's SERVER, two CLIENT/SERVER pairs below it).
struct Chain {
    frontend: u16,
    _procs: Vec<Proc>,
}

impl Chain {
    fn start() -> Self {
        let (frontend, features, model) = (free_port(), free_port(), free_port());
        let (f, m) = (features.to_string(), model.to_string());
        let procs = vec![
            python_fixture("chain.py", &["model", &m], &[]),
            python_fixture("chain.py", &["features", &f], &[]),
            python_fixture(
                "chain.py",
                &["frontend", &frontend.to_string(), &f, &m],
                &[],
            ),
        ];
        Self {
            frontend,
            _procs: procs,
        }
    }
}

/// CPU seconds process `pid` used so far (user + system, every thread).
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
    // After the command name (in parentheses, may hold spaces): fields 14 and 15 are utime and
    // stime, in clock ticks.
    let rest = &stat[stat.rfind(')').expect("comm") + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let tick = |i: usize| fields[i].parse::<f64>().expect("a tick count");
    let ticks = tick(11) + tick(12);
    // SAFETY: sysconf has no preconditions.
    ticks / unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64
}

/// How the exported traces hang together.
#[derive(Debug, Default)]
struct Shapes {
    /// Whole: the load generator's CLIENT span and every span below it, every parent present.
    whole: usize,
    /// Some span's parent is not in its trace.
    dangling: usize,
    /// Every parent present, but not the spans of a whole request from outside.
    other: Vec<String>,
}

fn parent(s: &Value) -> Option<&str> {
    s["parent_span_id"].as_str().filter(|p| !p.is_empty())
}

/// The traces of `spans`, judged against requests of `whole` spans each, made by `root_exe`.
fn shapes(spans: &[&Value], root_exe: &str, whole: usize) -> Shapes {
    let mut traces: HashMap<&str, Vec<&Value>> = HashMap::new();
    for span in spans {
        traces
            .entry(span["trace_id"].as_str().expect("trace id"))
            .or_default()
            .push(span);
    }
    let mut shapes = Shapes::default();
    for spans in traces.values() {
        let ids: Vec<&str> = spans.iter().filter_map(|s| s["span_id"].as_str()).collect();
        if spans
            .iter()
            .any(|s| parent(s).is_some_and(|p| !ids.contains(&p)))
        {
            shapes.dangling += 1;
            continue;
        }
        let root: Vec<_> = spans.iter().filter(|s| parent(s).is_none()).collect();
        let root_ok = root.len() == 1
            && root[0]["resource"]["process.executable.name"] == root_exe
            && root[0]["kind"] == "CLIENT";
        if root_ok && spans.len() == whole {
            shapes.whole += 1;
        } else {
            let mut names: Vec<String> = spans
                .iter()
                .map(|s| format!("{} {}", s["kind"], s["name"]))
                .collect();
            names.sort();
            shapes.other.push(names.join(", "));
        }
    }
    shapes
}

/// Under wrk, an agent held to a small CPU budget sheds connections in the kernel, keeps whole
/// traces only (no trace cut above or below what it kept), stays near its budget, and goes back
/// to full capture when the load stops. Thread-per-request services (the thread rule).
#[test]
fn under_wrk_the_budget_sheds_and_keeps_whole_traces() {
    let chain = Chain::start();
    budget_holds(chain.frontend, 6, Load::KeepAlive);
}

/// The same with nginx, an event loop, proxying in front of the chain over pooled keep-alive
/// connections: its worker reads shed and kept requests on one thread (the proxy rule, and the
/// hidden-work flag that refuses it).
#[test]
fn behind_an_nginx_proxy_the_budget_keeps_whole_traces() {
    let chain = Chain::start();
    let nginx = Nginx::proxy(chain.frontend);
    budget_holds(nginx.port, 8, Load::KeepAlive);
}

/// One request per connection (`Connection: close`) against nginx: no connection carries the
/// requests an edge is learnt from, so the budget sheds new connections of wrk, a process that
/// starts every trace it is in, from their opening (both ends: nginx's too), holds the agent
/// near its budget, keeps whole traces only, and traces new processes in full after the load.
/// Before, the agent ran at 2 to 3 times its budget here and shed nothing.
#[test]
fn connection_churn_is_shed_from_the_opening_and_kept_traces_are_whole() {
    let nginx = Nginx::serving("ok");
    budget_holds(nginx.port, 2, Load::ConnectionPerRequest);
}

/// An agent whose ring cannot hold the load (64 KiB, wrk against nginx) is as far behind as a
/// budget allows even far under its CPU limit: as the ring fills it sheds edges in the kernel
/// and keeps whole traces, instead of losing records at random (which cuts traces anywhere).
#[test]
fn a_ring_that_cannot_keep_up_sheds_edges_and_keeps_whole_traces() {
    let nginx = Nginx::serving("ok");
    let agent = Agent::start_command(
        "run",
        &[
            "--output",
            "jsonl",
            "--max-cpu",
            "4",
            "--max-memory",
            "off",
            "--ring-bytes",
            "65536",
        ],
    );
    let wrk = Command::new("wrk")
        .args(["-t1", &format!("-c{WRK_CONNECTIONS}"), "-d8s"])
        .arg(format!("http://127.0.0.1:{}/", nginx.port))
        .stdout(Stdio::piped())
        .output()
        .expect("run wrk");
    let report = String::from_utf8_lossy(&wrk.stdout);
    assert!(wrk.status.success(), "wrk failed: {report}");
    let out = agent.stop();
    assert!(out.status.success(), "{}", out.stderr);
    let spans: Vec<&Value> = out.events.iter().collect();
    let wrk_shapes = shapes(&spans, "wrk", 2);
    let counters = (
        out.counter("budget_ring_cuts"),
        out.counter("connections_shed"),
        out.counter("ring_full_drops"),
    );
    let broken = wrk_shapes.other.len() + wrk_shapes.dangling;
    eprintln!(
        "whole {}, broken {broken}, (ring cuts, ends shed, records dropped) {counters:?}; wrk: \
         {report}",
        wrk_shapes.whole
    );
    assert!(
        counters.0 > 0 && counters.1 > 0,
        "the ring shed nothing: {counters:?}"
    );
    assert!(
        wrk_shapes.whole > 1000,
        "few whole traces: {}",
        wrk_shapes.whole
    );
    // Drops still cut some traces (the debug agent is far slower than the release one, and a
    // wake-up that comes late overflows a ring this small within milliseconds), but most of
    // what is kept is whole: 10 runs here cut 0.01 to 0.18 traces per whole one. Before the
    // programs looked at the backlog often enough for a small ring (one look per 32 KiB per
    // CPU: the ring filled between looks, read only on the 10 ms timer) and announced again the
    // connections whose opening the ring dropped (left unknown, never shed), 3 of 8 runs cut
    // over a third, up to 1.35 per whole one.
    assert!(
        wrk_shapes.whole >= 3 * broken,
        "whole {}, broken {broken}: the drops cut too many traces",
        wrk_shapes.whole
    );
}

/// How wrk loads the service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Load {
    /// Each connection carries requests until wrk stops.
    KeepAlive,
    /// Each connection carries one request (`Connection: close`).
    ConnectionPerRequest,
}

/// The CPU budget of [`budget_holds`], in cores. The debug agent the tests run spends 33 to 45
/// millicores idle (its 10 ms drain timer and housekeeping, unoptimised), and the share grows
/// back only under 0.7 of the budget: at 0.05 cores the idle agent sat at that edge, took from
/// 8 to over 60 seconds to return to full capture, and did not in session 37's CI run. At 0.08
/// an idle agent is near half its budget, while wrk still drives it to twice that and more.
const BUDGET_CORES: &str = "0.08";

/// Drives `port` with wrk under a [`BUDGET_CORES`] budget and checks what was kept: every
/// request from outside is `spans` spans when whole.
fn budget_holds(port: u16, spans_per_request: usize, load: Load) {
    assert!(
        Command::new("wrk").arg("--version").output().is_ok(),
        "wrk is not installed (cargo xtask setup installs it)"
    );
    let budget: f64 = BUDGET_CORES.parse().expect("a number");
    let mut agent = Agent::start_command(
        "run",
        &[
            "--output",
            "jsonl",
            "--max-cpu",
            BUDGET_CORES,
            "--max-memory",
            "off",
        ],
    );
    let url = format!("http://127.0.0.1:{port}/predict/7");
    let (cpu_before, wall) = (cpu_seconds(agent.pid()), Instant::now());
    let mut wrk = Command::new("wrk");
    wrk.args(["-t2", &format!("-c{WRK_CONNECTIONS}"), "-d12s", "-s"])
        .arg(fixture("wrk_distinct_paths.lua"));
    if load == Load::ConnectionPerRequest {
        // Paced (about 1.8 k connections a second): the debug build the tests run needs 0.22
        // cores to trace them all, three times the limit that shedding at the opening keeps
        // it under (0.09), and it follows that load without losing records.
        wrk.env("PACE_MS", "8").args(["-H", "Connection: close"]);
    }
    let wrk = wrk
        .arg(&url)
        .stdout(Stdio::piped())
        .output()
        .expect("run wrk");
    let cores = (cpu_seconds(agent.pid()) - cpu_before) / wall.elapsed().as_secs_f64();
    let report = String::from_utf8_lossy(&wrk.stdout);
    assert!(wrk.status.success(), "wrk failed: {report}");
    // Load gone: the share recovers over a few looks (one each half second; how many depends on
    // how long the agent takes to drain what wrk left on a loaded machine); then new
    // connections (curl's) are traced in full again.
    agent.wait_for_stderr("budget: full capture again", Duration::from_mins(1));
    let curls = curls_under_full_capture(&mut agent, &url);
    let out = agent.stop();
    assert!(out.status.success(), "{}", out.stderr);
    let spans: Vec<&Value> = out.events.iter().collect();
    let is_curl = |s: &Value| s["resource"]["process.executable.name"] == "curl";
    let curl_trace_ids: Vec<&Value> = spans
        .iter()
        .filter(|s| is_curl(s))
        .map(|s| &s["trace_id"])
        .collect();
    let wrk_spans: Vec<&Value> = spans
        .iter()
        .copied()
        .filter(|s| !curl_trace_ids.contains(&&s["trace_id"]))
        .collect();
    let wrk_shapes = shapes(&wrk_spans, "wrk", spans_per_request);
    let counters = (
        out.counter("connections_shed"),
        out.counter("shed_syscalls"),
        out.counter("spans_shed"),
        out.counter("openings_shed"),
    );
    eprintln!(
        "agent {cores:.3} cores during wrk (budget {budget}), {wrk_shapes:?}, shed (ends, \
         syscalls, spans, ends at their opening) {counters:?}, resumed {}, peak {} millicores; \
         wrk: {report}",
        out.counter("connections_resumed"),
        out.counter("budget_cpu_millicores_peak"),
    );
    match load {
        // Edges switch at a request's start: some requests are half seen, their spans shed.
        Load::KeepAlive => assert!(
            counters.0 > 0 && counters.1 > 0 && counters.2 > 0,
            "nothing was shed"
        ),
        // Most of the shed ends are shed from their opening, both ends of a pair.
        Load::ConnectionPerRequest => assert!(
            counters.1 > 0 && counters.3 > counters.0 / 2 && counters.3 > 1000,
            "connections were not shed at their opening"
        ),
    }
    assert!(
        wrk_shapes.whole > 50,
        "few whole traces kept: {wrk_shapes:?}"
    );
    assert!(
        wrk_shapes.other.is_empty(),
        "traces cut by the shedding: {:?}",
        wrk_shapes.other
    );
    // wrk stops with a request in flight on each connection: those CLIENT spans never end.
    assert!(
        wrk_shapes.dangling <= WRK_CONNECTIONS,
        "{} traces lost a parent",
        wrk_shapes.dangling
    );
    // Within a generous factor: the budget acts every half second on a debug build, and
    // shedding the edges leaves the downstream hops of hidden requests to parse.
    assert!(
        cores < budget * 3.0,
        "the agent used {cores:.3} cores against a budget of {budget}"
    );
    assert_full_capture_again(&spans, curls, spans_per_request);
}

/// curl against `url` for two seconds once the budget is back to full capture, again (up to
/// five rounds) when a look cut the share once more meanwhile: the agent drains what the load
/// left and announces the connections it resumes, and on a busy machine a look may find it
/// over its limit (session 37's rehearsal: 366 millicores at the peak against ~100 in quiet
/// runs, and a last curl exported under a share of 878). The last curls run with no cut since
/// full capture came back; a budget that cuts again in every round fails here, by name.
/// Returns how many requests were made.
fn curls_under_full_capture(agent: &mut Agent, url: &str) -> usize {
    const ROUNDS: usize = 5;
    let mut curls = 0;
    for _ in 0..ROUNDS {
        curls += curl_for(url, Duration::from_secs(2));
        // The last curl's spans are exported by now (the agent settles within a second).
        std::thread::sleep(Duration::from_secs(1));
        let seen = agent.stderr_now();
        let last = |needle: &str| seen.iter().rposition(|l| l.contains(needle));
        let (full, cut) = (
            last("budget: full capture again"),
            last("budget: over the limit"),
        );
        if cut < full {
            return curls;
        }
        let from = cut.map_or(0, |at| at + 1);
        agent.wait_for_stderr_from("budget: full capture again", from, Duration::from_mins(1));
    }
    panic!("the budget cut the share again in each of {ROUNDS} rounds of curls after the load");
}

/// curl against `url` every half second for `how_long`; returns how many requests it made.
fn curl_for(url: &str, how_long: Duration) -> usize {
    let mut curls = 0;
    let deadline = Instant::now() + how_long;
    while Instant::now() < deadline {
        let ok = Command::new("curl")
            .args(["-s", "-o", "/dev/null", "-f", url])
            .status()
            .expect("curl");
        assert!(ok.success());
        curls += 1;
        std::thread::sleep(Duration::from_millis(500));
    }
    curls
}

/// The last of `curls` curl requests is traced whole, without the budget's share: full
/// capture again.
fn assert_full_capture_again(spans: &[&Value], curls: usize, spans_per_request: usize) {
    let is_curl = |s: &Value| s["resource"]["process.executable.name"] == "curl";
    // Full capture again: the last curl requests are whole, without the budget's share.
    let curl_traces: Vec<&Value> = spans.iter().copied().filter(|s| is_curl(s)).collect();
    assert!(
        curl_traces.len() >= 2,
        "{curls} curl requests, {} traced",
        curl_traces.len()
    );
    let last = curl_traces
        .iter()
        .max_by_key(|s| s["start_time_unix_nano"].as_u64())
        .expect("a curl span");
    let last_trace: Vec<&Value> = spans
        .iter()
        .copied()
        .filter(|s| s["trace_id"] == last["trace_id"])
        .collect();
    let last_shape = shapes(&last_trace, "curl", spans_per_request);
    assert_eq!(last_shape.whole, 1, "{last_shape:?}");
    assert!(
        last_trace
            .iter()
            .all(|s| s["attributes"]["sockspan.capture.keep_permille"].is_null()),
        "the budget still sheds after the load: {last_trace:?}"
    );
}

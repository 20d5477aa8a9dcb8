//! Root integration tests of causality across runtimes: a chain of real services per runtime
//! (thread per request, nginx as a proxy, asyncio on aiohttp and uvicorn, Node.js, Go, and a mix),
//! sequential requests and waves of concurrent ones, every request's tree checked against the
//! ids in its paths (`sockspan_tests::chains`). `cargo xtask causality` runs these and writes the
//! score table to docs/causality.md.

use sockspan_tests::{
    Agent,
    chains::{Chain, Score, chain_named, save, score},
};

/// Requests per run: sequential, then waves × width concurrent.
const SEQUENTIAL: usize = 10;
const WAVES: usize = 3;
const WIDTH: usize = 10;

fn measure(name: &str) -> Score {
    measure_with_log(name).0
}

/// The score, and what the agent logged.
fn measure_with_log(name: &str) -> (Score, String) {
    let chain = Chain::start(chain_named(name));
    let agent = Agent::start_command("run", &["--output", "jsonl"]);
    let ids = chain.drive(SEQUENTIAL, WAVES, WIDTH);
    let out = agent.stop();
    assert!(out.status.success(), "{}", out.stderr);
    let result = score(name, &chain.root, &ids, &out.events);
    save(&result);
    eprintln!("{}", result.line());
    (result, out.stderr)
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
    assert_precise(score);
    assert!(
        score.whole_trace() >= 0.95,
        "whole-trace below 95 %: {}\n{:#?}",
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

#[test]
fn aiohttp_chain() {
    assert_precise(&measure("aiohttp"));
}

#[test]
fn aiohttp_uvloop_chain() {
    assert_precise(&measure("aiohttp-uvloop"));
}

#[test]
fn fastapi_chain() {
    assert_precise(&measure("fastapi"));
}

#[test]
fn node_chain() {
    assert_precise(&measure("node"));
}

/// Go's goroutines move between threads: same-thread causality named wrong parents there, so
/// the agent recognises Go programs and keeps them out of it.
#[test]
fn go_chain() {
    let (score, log) = measure_with_log("go");
    assert_precise(&score);
    assert!(
        log.contains("a Go program: same-thread causality is off"),
        "the Go service is recognised: {log}"
    );
    assert_eq!(score.evidence.get("thread"), None, "{}", score.line());
}

#[test]
fn mixed_chain() {
    assert_precise(&measure("mixed"));
}

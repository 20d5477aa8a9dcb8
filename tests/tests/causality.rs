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
    let chain = Chain::start(chain_named(name));
    let agent = Agent::start_command("run", &["--output", "jsonl"]);
    let ids = chain.drive(SEQUENTIAL, WAVES, WIDTH);
    let out = agent.stop();
    assert!(out.status.success(), "{}", out.stderr);
    let result = score(name, &chain.root, &ids, &out.events);
    save(&result);
    eprintln!("{}", result.line());
    result
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

#[test]
fn nginx_chain() {
    assert_precise(&measure("nginx"));
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

#[test]
fn go_chain() {
    assert_precise(&measure("go"));
}

#[test]
fn mixed_chain() {
    assert_precise(&measure("mixed"));
}

//! Root integration tests of the agent under faults it does not control: an OTLP back end that
//! is down, refusing, slow and failing, and hostile traffic through traced sockets.

use std::{process::Command, time::Duration};

use serde_json::Value;
use sockspan_tests::{Agent, Nginx, Talking, free_port, http_server, run_ok};

/// The OTLP back end goes through every bad state (nothing listening, 503s, answers slower
/// than the export timeout, 400s) and comes back. Traffic never stops meanwhile: every request
/// still becomes spans (the capture path is never blocked by export), the ring drops nothing,
/// what could not be delivered is counted, the agent keeps running, and spans of requests made
/// after the back end returned reach it.
#[test]
fn otlp_outage_is_counted_survived_and_recovered() {
    let (otlp_port, web_port) = (free_port(), free_port());
    let _web = http_server("127.0.0.1", web_port);
    let receiver = Talking::start(
        "otlp_faulty.py",
        &[
            &otlp_port.to_string(),
            "down:6,unavailable:6,slow:6,error:6,up:0",
        ],
    );
    let _ = receiver.line("ready", Duration::from_secs(20));
    let endpoint = format!("http://127.0.0.1:{otlp_port}");
    let agent = Agent::start_with_env(
        "run",
        &["--output", "otlp", "--otlp-endpoint", &endpoint],
        &[("OTEL_EXPORTER_OTLP_TIMEOUT", "1000")],
    );
    // 20 requests/s through the four bad phases and 10 s after the back end returns.
    let client = Talking::start("steady_client.py", &[&web_port.to_string(), "20", "34"]);
    let requests: u64 = client
        .line("requests", Duration::from_mins(1))
        .trim_start_matches("requests ")
        .parse()
        .expect("request count");
    // What the agent still holds goes out in its shutdown's drain.
    let out = agent.stop();
    let report: Value = serde_json::from_str(&receiver.stop("{")).expect("receiver report is JSON");
    assert!(out.status.success(), "{}", out.stderr);

    let phases = &report["phases"];
    for bad in ["unavailable", "slow", "error"] {
        assert!(
            phases[bad]["requests"].as_u64() > Some(0),
            "the agent kept trying through `{bad}`: {report}"
        );
    }
    assert!(requests > 500, "the client ran: {requests} requests");
    // Python's client and server are both traced: two spans a request, outage or not.
    let started = out.counter("spans_started");
    assert!(
        started >= 2 * requests,
        "{started} spans for {requests} requests"
    );
    assert_eq!(out.counter("ring_full_drops"), 0);
    assert_eq!(out.counter("undecodable_records"), 0);
    assert_eq!(out.counter("ring_resyncs"), 0);
    let failed = out.counter("export_failed");
    let exported = out.counter("spans_exported");
    assert!(failed > 0, "undeliverable spans are counted");
    assert_eq!(
        phases["up"]["spans"].as_u64(),
        Some(exported),
        "the back end got what the agent says it delivered: {report}"
    );
    let up_since_ns = (report["up_since"].as_f64().expect("up_since") * 1e9) as u64;
    assert!(
        report["last_span_start_ns"].as_u64() > Some(up_since_ns + 2_000_000_000),
        "spans of requests made after recovery were delivered: {report}"
    );
}

/// Hostile traffic through a traced nginx, with the connection table bounded at 4096: random
/// bytes, a 1 MiB header, a truncated request, a reset mid-body, a response nobody asked for,
/// 5000 connections each holding 2 KiB of an unfinished head (10 000 sockets traced, both ends),
/// and 20 000 short connections. The agent keeps running and tracing, the table never passes its
/// bound (evictions counted), memory stays bounded, and every short request became two spans
/// unless the ring said it dropped events or the agent said it saw a connection first in use.
#[test]
fn hostile_traffic_keeps_the_agent_bounded_and_tracing() {
    let nginx = Nginx::start();
    let port = nginx.port.to_string();
    let agent = Agent::start_command("run", &["--output", "jsonl", "--max-conns", "4096"]);
    let mix = Talking::start("hostile.py", &["mix", &port]);
    let _ = mix.line("done", Duration::from_mins(1));
    let mut idle = Talking::start("hostile.py", &["idle", &port, "5000", "2048"]);
    let _ = idle.line("holding 5000", Duration::from_mins(2));
    let churn = Talking::start("hostile.py", &["churn", &port, "20000"]);
    let churned: u64 = churn
        .line("churned", Duration::from_mins(3))
        .trim_start_matches("churned ")
        .parse()
        .expect("churn count");
    // Still tracing after all that.
    let _ = run_ok(
        Command::new("curl")
            .args(["-sf", "-o", "/dev/null"])
            .arg(format!("http://127.0.0.1:{port}/after-the-storm")),
        Duration::from_secs(10),
    );
    // The holder resets its connections and exits once its stdin closes: wait for that, so the
    // agent sees every reset before it stops.
    idle.close_stdin();
    idle.wait_for_exit(Duration::from_secs(30));
    let out = agent.stop();
    assert!(out.status.success(), "{}", out.stderr);

    let peak = out.counter("conns_peak");
    assert!(peak <= 4096, "table bound held: peak {peak}");
    assert!(
        out.counter("conns_evicted_full") > 0,
        "10 000 held sockets past a 4096 bound are evicted, and counted"
    );
    let rss_mib = out.counter("peak_rss_kib") / 1024;
    assert!(rss_mib < 160, "peak RSS {rss_mib} MiB");

    let spans: Vec<&Value> = out
        .events
        .iter()
        .filter(|e| e["span_id"].is_string())
        .collect();
    let after: Vec<&&Value> = spans
        .iter()
        .filter(|s| s["attributes"]["url.path"] == "/after-the-storm")
        .collect();
    assert_eq!(after.len(), 2, "curl's and nginx's spans: {after:?}");
    assert!(
        after
            .iter()
            .all(|s| s["attributes"]["http.response.status_code"] == 200)
    );
    assert!(churned > 19_000, "the churn ran: {churned}");
    let short = spans
        .iter()
        .filter(|s| s["attributes"]["url.path"] == "/c")
        .count() as u64;
    eprintln!(
        "{short} short spans for {churned} connections; first seen in use {}, refused by the \
         programs' table {}, records dropped {}",
        out.counter("conns_seen_in_use"),
        out.counter("conn_table_full"),
        out.counter("ring_full_drops")
    );
    if out.counter("ring_full_drops") == 0 {
        // Unless the agent says it missed a connection's start: the programs' table (bounded
        // at 4096 too) sometimes lost an accepted connection of nginx before its request was
        // read, and announced it at its response's write: 2 of 13 runs of session 36's agent
        // here, 3 of 13 of session 37's, whenever spans are exported. Each such connection
        // costs one span at most, and the agent counts it.
        let seen_in_use = out.counter("conns_seen_in_use");
        assert!(
            short <= 2 * churned && 2 * churned - short <= seen_in_use,
            "two spans per short connection: {short} for {churned} connections, {seen_in_use} \
             connections first seen in use"
        );
    } else {
        assert!(short > 0);
    }
}

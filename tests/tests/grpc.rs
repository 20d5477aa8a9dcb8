//! Root integration tests of HTTP/2 and gRPC: real grpcio and Node.js `http2` servers and
//! clients on loopback, no tracing library loaded, assertions on the spans `sockspan run`
//! exported.

use std::{
    collections::{HashMap, HashSet},
    process::Command,
    time::Duration,
};

use serde_json::Value;
use sockspan_tests::{Agent, Proc, Talking, fixture, free_port, python_fixture, run_ok};

fn grpc_server() -> (Proc, u16) {
    let port = free_port();
    let server = python_fixture("grpc_service.py", &["server", &port.to_string()], &[]);
    (server, port)
}

/// Runs the grpcio client's SCRIPT to completion on one channel; returns its output lines.
fn grpc_client(port: u16, script: &str) -> Vec<String> {
    let out = run_ok(
        Command::new("python3")
            .arg(fixture("grpc_service.py"))
            .args(["client", &port.to_string(), script]),
        Duration::from_mins(1),
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}

fn node(args: &[&str]) -> Command {
    let mut cmd = Command::new("node");
    cmd.arg(fixture("node_http2.js")).args(args);
    cmd
}

fn attr<'a>(span: &'a Value, key: &str) -> &'a Value {
    &span["attributes"][key]
}

fn kind(span: &Value) -> &str {
    span["kind"].as_str().expect("kind")
}

fn name(span: &Value) -> &str {
    span["name"].as_str().expect("name")
}

fn time(span: &Value, key: &str) -> u64 {
    span[key].as_u64().expect("time")
}

/// The spans of connections to or from `port`.
fn on_port(spans: &[Value], port: u16) -> Vec<&Value> {
    spans
        .iter()
        .filter(|s| {
            let server_port = attr(s, "server.port").as_i64();
            server_port == Some(i64::from(port))
        })
        .collect()
}

/// Checks that every SERVER span among `spans` is the child of a CLIENT span among them: the
/// same trace, the same name, the client's local port as the server's peer port, and inside the
/// client's time. Returns (client, server) pairs.
fn pairs<'a>(spans: &[&'a Value]) -> Vec<(&'a Value, &'a Value)> {
    pairs_named(spans, |server, client| name(server) == name(client))
}

/// As [`pairs`], the names compared by `same_call`.
fn pairs_named<'a>(
    spans: &[&'a Value],
    same_call: impl Fn(&Value, &Value) -> bool,
) -> Vec<(&'a Value, &'a Value)> {
    let clients: HashMap<&str, &Value> = spans
        .iter()
        .filter(|s| kind(s) == "CLIENT")
        .map(|s| (s["span_id"].as_str().expect("id"), *s))
        .collect();
    let mut found = Vec::new();
    for server in spans.iter().filter(|s| kind(s) == "SERVER") {
        let parent = server["parent_span_id"]
            .as_str()
            .unwrap_or_else(|| panic!("server span without a parent: {server:#}"));
        let client = clients
            .get(parent)
            .unwrap_or_else(|| panic!("parent {parent} is not a client span here: {server:#}"));
        assert_eq!(server["trace_id"], client["trace_id"], "one trace");
        assert!(
            same_call(server, client),
            "the same call at both ends: {} and {}",
            name(server),
            name(client)
        );
        assert_eq!(attr(server, "sockspan.parent.evidence"), "connection");
        // The request left the client before the server read it, and the response came back
        // after the server wrote it.
        assert!(
            time(server, "start_time_unix_nano") >= time(client, "start_time_unix_nano"),
            "server starts after its client: {server:#} {client:#}"
        );
        assert!(
            time(server, "end_time_unix_nano") <= time(client, "end_time_unix_nano"),
            "server ends before its client: {server:#} {client:#}"
        );
        found.push((*client, *server));
    }
    found
}

#[test]
fn grpcio_calls_are_spans_at_both_ends_with_method_and_status() {
    let (_server, port) = grpc_server();
    let agent = Agent::start_command("run", &["--output", "jsonl"]);
    let lines = grpc_client(port, "predict,stream,chat,fail,secret");
    assert_eq!(
        lines,
        [
            "predict OK",
            "stream OK",
            "chat OK",
            "fail NOT_FOUND",
            "secret NOT_FOUND",
            "done"
        ]
    );
    let out = agent.stop();
    assert!(out.status.success(), "{}", out.stderr);
    // Metadata credentials and what the application put in grpc-message reach no output.
    let text = serde_json::to_string(&out.events).expect("json");
    for secret in ["grpc-s3cret-token", "k3y-grpc-42", "4111111111111111"] {
        assert!(!text.contains(secret), "{secret} in the spans");
        assert!(!out.stderr.contains(secret), "{secret} in the log");
    }
    let spans = on_port(&out.events, port);
    let found = pairs(&spans);
    let mut names: Vec<&str> = found.iter().map(|(c, _)| name(c)).collect();
    names.sort_unstable();
    assert_eq!(
        names,
        [
            "demo.Model/Chat",
            "demo.Model/Fail",
            "demo.Model/Fail",
            "demo.Model/Predict",
            "demo.Model/Stream"
        ],
        "unary, server streaming, bidirectional streaming and two failing calls, each one span \
         per end: {spans:#?}"
    );
    assert_eq!(spans.len(), 10, "{spans:#?}");
    for span in &spans {
        assert_eq!(attr(span, "rpc.system.name"), "grpc");
        assert_eq!(attr(span, "network.protocol.version"), "2");
        let method = attr(span, "rpc.method").as_str().expect("rpc.method");
        assert_eq!(method, name(span));
        assert_eq!(attr(span, "rpc.service"), "demo.Model");
        if name(span) == "demo.Model/Fail" {
            assert_eq!(attr(span, "rpc.response.status_code"), "NOT_FOUND");
            assert_eq!(attr(span, "rpc.grpc.status_code"), 5);
            assert_eq!(span["status"]["code"], "ERROR", "{span:#}");
        } else {
            assert_eq!(attr(span, "rpc.response.status_code"), "OK");
            assert_eq!(span["status"]["code"], "UNSET", "{span:#}");
        }
    }
    assert_eq!(
        out.counters["protocol_connections"]["http2"], 2,
        "both ends recognised: {}",
        out.counters
    );
}

#[test]
fn concurrent_calls_on_one_connection_pair_by_stream() {
    let (_server, port) = grpc_server();
    let agent = Agent::start_command("run", &["--output", "jsonl"]);
    // Ten calls in flight at once on one channel, three times; and three channels at once.
    let lines = grpc_client(port, "par10,par10,par10");
    assert_eq!(lines, ["par10 OK", "par10 OK", "par10 OK", "done"]);
    let clients: Vec<_> = (0..3)
        .map(|_| {
            Command::new("python3")
                .arg(fixture("grpc_service.py"))
                .args(["client", &port.to_string(), "par10,predict"])
                .stdout(std::process::Stdio::null())
                .spawn()
                .expect("grpc client")
        })
        .collect();
    for client in clients {
        let status = client.wait_with_output().expect("client ran").status;
        assert!(status.success());
    }
    let out = agent.stop();
    let spans = on_port(&out.events, port);
    let found = pairs(&spans);
    assert_eq!(
        found.len(),
        30 + 3 * 11,
        "every call linked: {}",
        spans.len()
    );
    assert_eq!(spans.len(), 2 * found.len());
    let ids: HashSet<&str> = found
        .iter()
        .map(|(c, _)| c["span_id"].as_str().expect("id"))
        .collect();
    assert_eq!(
        ids.len(),
        found.len(),
        "no client span is the parent of two"
    );
}

#[test]
fn an_agent_started_mid_connection_names_later_calls_rightly_or_not_at_all() {
    let (_server, port) = grpc_server();
    // The channel is open and has made a call before the agent starts.
    let mut client = Talking::start(
        "grpc_service.py",
        &[
            "client",
            &port.to_string(),
            "predict,stream,wait,predict,stream,chat,fail,chat",
        ],
    );
    let _ = client.line("waiting", Duration::from_secs(30));
    let agent = Agent::start_command("run", &["--output", "jsonl"]);
    client.close_stdin();
    assert_eq!(
        client.line("fail", Duration::from_secs(30)),
        "fail NOT_FOUND"
    );
    let _ = client.line("done", Duration::from_secs(30));
    let out = agent.stop();
    let spans = on_port(&out.events, port);
    // Five calls after the attach, each seen at both ends, each linked by its stream id. An end
    // whose HPACK table lacks the `content-type` entry (inserted before the attach) sees an
    // HTTP/2 call to the path, not a gRPC one: less known, never another call.
    let found = pairs_named(&spans, |server, client| {
        let (a, b) = (name(server), name(client));
        a == b || a == format!("POST /{b}") || b == format!("POST /{a}")
    });
    assert_eq!(found.len(), 5, "{spans:#?}");
    let real = HashSet::from([
        "demo.Model/Predict",
        "demo.Model/Stream",
        "demo.Model/Chat",
        "demo.Model/Fail",
    ]);
    let mut named = 0;
    for span in &spans {
        let n = name(span);
        // A method whose :path entry went into the HPACK table before the attach cannot be
        // known; it is reported as unknown, never as another method.
        if n == "grpc" {
            assert!(
                attr(span, "sockspan.hpack.unknown_fields").as_i64() > Some(0),
                "{span:#}"
            );
        } else {
            let method = n.strip_prefix("POST /").unwrap_or(n);
            assert!(
                real.contains(method),
                "a method that was never called: {span:#}"
            );
            named += 1;
        }
    }
    // Chat and Fail were first called after the attach: their paths were inserted in view.
    for method in ["demo.Model/Chat", "demo.Model/Fail"] {
        assert!(
            spans
                .iter()
                .filter(|s| name(s).strip_prefix("POST /").unwrap_or(name(s)) == method)
                .count()
                >= 2,
            "{method} at both ends: {spans:#?}"
        );
    }
    assert!(named >= 6, "{named} of {} spans named", spans.len());
}

#[test]
fn node_http2_requests_and_a_node_grpc_client_are_spans_too() {
    let port = free_port();
    let mut server = node(&["server", &port.to_string()]);
    let server = Proc(
        server
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("node server"),
    );
    sockspan_tests::wait_listening(&format!("127.0.0.1:{port}"), Duration::from_secs(20));
    let (_grpc, grpc_port) = grpc_server();
    let agent = Agent::start_command("run", &["--output", "jsonl"]);
    let out = run_ok(
        &mut node(&["client", &port.to_string(), "3"]),
        Duration::from_secs(30),
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("/missing 404"));
    let out = run_ok(
        &mut node(&["grpc", &grpc_port.to_string(), "2"]),
        Duration::from_secs(30),
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("/demo.Model/Predict 0"));
    let out = agent.stop();
    drop(server);

    let spans = on_port(&out.events, port);
    let found = pairs(&spans);
    assert_eq!(found.len(), 4, "{spans:#?}");
    for (client, server) in &found {
        assert_eq!(attr(client, "network.protocol.version"), "2");
        assert_eq!(attr(client, "http.request.method"), "GET");
        if name(client) == "GET /missing" {
            assert_eq!(attr(client, "http.response.status_code"), 404);
            assert_eq!(client["status"]["code"], "ERROR");
            assert_eq!(
                server["status"]["code"], "UNSET",
                "a 404 is the client's error"
            );
        } else {
            assert_eq!(name(client), "GET /items/{id}");
            assert_eq!(attr(server, "http.route"), "/items/{id}");
            assert_eq!(attr(client, "http.response.status_code"), 200);
        }
    }
    // Node's HPACK encoder talking to grpcio's decoder, and back.
    let spans = on_port(&out.events, grpc_port);
    let found = pairs(&spans);
    assert_eq!(found.len(), 2, "{spans:#?}");
    for (client, _) in &found {
        assert_eq!(name(client), "demo.Model/Predict");
        assert_eq!(attr(client, "rpc.response.status_code"), "OK");
    }
}

#[test]
fn bytes_that_only_start_like_http2_are_given_up_and_stop_costing() {
    const MESSAGES: usize = 2000;
    let port = free_port();
    let _echo = python_fixture("echo_server.py", &["127.0.0.1", &port.to_string()], &[]);
    let agent = Agent::start_command("run", &["--output", "jsonl"]);
    // An empty SETTINGS frame first (what the programs and the agent take for HTTP/2 seen
    // mid-connection), then bytes that frame nothing; a pause after the first 50, so that the
    // count below measures what giving up saves, not how fast the agent got round to it (on a
    // busy CI machine, 20 ms of lag are 1 000 records of this ping-pong).
    sockspan_tests::binary_ping_pong_pausing(port, &[0, 0, 0, 4, 0, 0, 0, 0, 0], MESSAGES, 50);
    let out = agent.stop();
    let given_up = out.counter("protocol_given_up");
    let marked = out.counter("marked_opaque");
    let sent = out.counter("events_sent");
    // Both ends (other traffic on the host may add to the counts).
    assert!(given_up >= 2, "both ends given up: {}", out.stderr);
    assert!(marked >= 2, "and the programs told so: {}", out.stderr);
    assert!(
        sent < 1000,
        "{sent} records sent for {MESSAGES} round trips after giving up"
    );
    assert!(on_port(&out.events, port).is_empty());
}

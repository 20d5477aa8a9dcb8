//! Root integration tests of `sockspan run`: uninstrumented Python services on loopback, real
//! curl and OpenTelemetry SDK clients, assertions on the spans the agent exported.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    process::{Command, Stdio},
    time::Duration,
};

use serde_json::Value;
use sockspan_tests::{
    Agent, Proc, Talking, every_output, fixture, free_port, http_server, python_fixture, run_ok,
};

/// The three services of the chain, each named through `OTEL_SERVICE_NAME`.
struct Chain {
    frontend: u16,
    model: u16,
    _procs: Vec<Proc>,
}

fn start_service(name: &str, args: &[String]) -> Proc {
    let mut all = vec![name];
    all.extend(args.iter().map(String::as_str));
    python_fixture("chain.py", &all, &[("OTEL_SERVICE_NAME", name)])
}

impl Chain {
    fn start() -> Self {
        let (frontend, features, model) = (free_port(), free_port(), free_port());
        let model_proc = start_service("model", &[model.to_string()]);
        let features_proc = start_service("features", &[features.to_string()]);
        let frontend_proc = start_service(
            "frontend",
            &[
                frontend.to_string(),
                features.to_string(),
                model.to_string(),
            ],
        );
        Self {
            frontend,
            model,
            _procs: vec![model_proc, features_proc, frontend_proc],
        }
    }
}

fn attr<'a>(span: &'a Value, key: &str) -> &'a Value {
    &span["attributes"][key]
}

fn service(span: &Value) -> &str {
    span["resource"]["service.name"]
        .as_str()
        .expect("service.name")
}

fn kind(span: &Value) -> &str {
    span["kind"].as_str().expect("kind")
}

fn time(span: &Value, key: &str) -> u64 {
    span[key].as_u64().expect("time")
}

/// Spans grouped by trace id.
fn traces(spans: &[Value]) -> BTreeMap<String, Vec<&Value>> {
    let mut by_trace: BTreeMap<String, Vec<&Value>> = BTreeMap::new();
    for s in spans {
        by_trace
            .entry(s["trace_id"].as_str().expect("trace_id").to_string())
            .or_default()
            .push(s);
    }
    by_trace
}

/// The traces that pass through the frontend (the chain's), leaving out unrelated traffic.
fn through_frontend<'a>(by_trace: &'a BTreeMap<String, Vec<&'a Value>>) -> Vec<&'a Vec<&'a Value>> {
    by_trace
        .values()
        .filter(|t| t.iter().any(|s| service(s) == "frontend"))
        .collect()
}

/// Checks one request's trace through the chain: six spans, the right tree, children inside
/// their parents' time. Returns the item id the request asked for.
fn check_chain_trace(trace: &[&Value]) -> String {
    let find = |service_name: &str, span_kind: &str, path_prefix: &str| -> &Value {
        let found: Vec<&&Value> = trace
            .iter()
            .filter(|s| {
                service(s) == service_name
                    && kind(s) == span_kind
                    && attr(s, "url.path")
                        .as_str()
                        .is_some_and(|p| p.starts_with(path_prefix))
            })
            .collect();
        assert_eq!(
            found.len(),
            1,
            "one {span_kind} span of {service_name} {path_prefix} in {trace:#?}"
        );
        found[0]
    };
    assert_eq!(trace.len(), 6, "six spans in the trace: {trace:#?}");
    let curl = find("curl", "CLIENT", "/predict/");
    let front = find("frontend", "SERVER", "/predict/");
    let front_features = find("frontend", "CLIENT", "/features/");
    let features = find("features", "SERVER", "/features/");
    let front_model = find("frontend", "CLIENT", "/score");
    let model = find("model", "SERVER", "/score");
    assert!(
        curl["parent_span_id"].is_null(),
        "curl's span is the root: {curl}"
    );
    for (child, parent) in [
        (front, curl),
        (front_features, front),
        (features, front_features),
        (front_model, front),
        (model, front_model),
    ] {
        assert_eq!(
            child["parent_span_id"], parent["span_id"],
            "parent of {child} should be {parent}"
        );
        assert!(
            time(child, "start_time_unix_nano") >= time(parent, "start_time_unix_nano")
                && time(child, "end_time_unix_nano") <= time(parent, "end_time_unix_nano"),
            "child {} [{}, {}] inside parent {} [{}, {}]",
            child["name"],
            time(child, "start_time_unix_nano"),
            time(child, "end_time_unix_nano"),
            parent["name"],
            time(parent, "start_time_unix_nano"),
            time(parent, "end_time_unix_nano")
        );
    }
    assert_eq!(front["name"], "GET /predict/{id}");
    assert_eq!(model["name"], "POST /score");
    assert_eq!(attr(front, "http.request.method"), "GET");
    assert_eq!(attr(front, "http.response.status_code"), 200);
    assert_eq!(attr(front, "http.route"), "/predict/{id}");
    assert_eq!(attr(front_model, "server.address"), "127.0.0.1");
    assert_eq!(attr(front_model, "http.request.method"), "POST");
    assert!(
        attr(curl, "user_agent.original")
            .as_str()
            .is_some_and(|ua| ua.starts_with("curl/"))
    );
    assert_eq!(front["status"]["code"], "UNSET");
    assert_eq!(
        front["resource"]["process.executable.name"]
            .as_str()
            .map(|s| s.starts_with("python")),
        Some(true)
    );
    // The item asked of the frontend is the one it asked of features: no cross-talk.
    let item = attr(front, "url.path")
        .as_str()
        .expect("path")
        .trim_start_matches("/predict/")
        .to_string();
    assert_eq!(
        attr(features, "url.path").as_str(),
        Some(format!("/features/{item}").as_str())
    );
    assert_eq!(
        attr(curl, "url.path").as_str(),
        Some(format!("/predict/{item}").as_str())
    );
    item
}

fn curl(port: u16, item: u32) -> Command {
    let mut cmd = Command::new("curl");
    cmd.args(["-sf", "--max-time", "20"])
        .arg(format!("http://127.0.0.1:{port}/predict/{item}"))
        .stdout(Stdio::null());
    cmd
}

#[test]
fn chain_of_three_uninstrumented_services_is_one_trace() {
    let chain = Chain::start();
    let agent = Agent::start_command("run", &["--output", "jsonl"]);
    let _ = run_ok(&mut curl(chain.frontend, 7), Duration::from_secs(30));
    let out = agent.stop();
    assert!(out.status.success(), "{}", out.stderr);
    let by_trace = traces(&out.events);
    let chain_traces = through_frontend(&by_trace);
    assert_eq!(
        chain_traces.len(),
        1,
        "one trace for one request: {by_trace:#?}"
    );
    assert_eq!(check_chain_trace(chain_traces[0]), "7");
}

#[test]
fn twenty_concurrent_requests_are_twenty_traces() {
    let chain = Chain::start();
    let agent = Agent::start_command("run", &["--output", "jsonl"]);
    let clients: Vec<_> = (100..120)
        .map(|item| curl(chain.frontend, item).spawn().expect("curl"))
        .collect();
    for c in clients {
        let status = c.wait_with_output().expect("curl ran").status;
        assert!(status.success(), "curl failed: {status}");
    }
    let out = agent.stop();
    let by_trace = traces(&out.events);
    let chain_traces = through_frontend(&by_trace);
    assert_eq!(chain_traces.len(), 20, "twenty traces: {by_trace:#?}");
    let items: HashSet<String> = chain_traces.iter().map(|t| check_chain_trace(t)).collect();
    let expected: HashSet<String> = (100..120).map(|i| i.to_string()).collect();
    assert_eq!(items, expected, "each request is its own trace");
}

#[test]
fn keep_alive_connections_between_services_link_every_request() {
    let chain = Chain::start();
    let agent = Agent::start_command("run", &["--output", "jsonl"]);
    for item in 1..=5 {
        let _ = run_ok(&mut curl(chain.frontend, item), Duration::from_secs(30));
    }
    let out = agent.stop();
    let by_trace = traces(&out.events);
    let chain_traces = through_frontend(&by_trace);
    assert_eq!(chain_traces.len(), 5);
    for t in &chain_traces {
        check_chain_trace(t);
    }
    // Sequential requests reuse one pooled connection per downstream: the features server saw
    // every request come from the same client port.
    let peer_ports: HashSet<i64> = out
        .events
        .iter()
        .filter(|s| service(s) == "features" && kind(s) == "SERVER")
        .map(|s| attr(s, "network.peer.port").as_i64().expect("port"))
        .collect();
    assert_eq!(peer_ports.len(), 1, "one reused connection: {peer_ports:?}");
}

/// A keep-alive connection whose first request was in flight when the agent started: the
/// client's write came before, the server's read after. Each end's agent-side count of the
/// stream would begin at a different byte; the TCP sequence numbers in each record make them
/// agree, so every later request still links to its client.
#[test]
fn a_connection_caught_mid_request_still_links_its_later_requests() {
    let mut server = Talking::start("midstream_keepalive.py", &["server"]);
    let port = server.line("port ", Duration::from_secs(10));
    let port = port.trim_start_matches("port ").to_string();
    let mut client = Talking::start("midstream_keepalive.py", &["client", &port]);
    let _ = client.line("sent", Duration::from_secs(10));
    let agent = Agent::start_command("run", &["--output", "jsonl"]);
    server.say("go");
    client.say("go");
    let _ = client.line("done", Duration::from_secs(20));
    let _ = server.line("done", Duration::from_secs(20));
    let out = agent.stop();
    assert_later_requests_linked(&out.events);
    // The first request's server end was seen, its client end (written before) was not.
    assert!(span_for(&out.events, "SERVER", "/first")["parent_span_id"].is_null());
}

/// The span of `kind_` for the request to `path`.
fn span_for<'a>(spans: &'a [Value], kind_: &str, path: &str) -> &'a Value {
    spans
        .iter()
        .find(|s| kind(s) == kind_ && attr(s, "url.path") == path)
        .unwrap_or_else(|| panic!("a {kind_} span for {path}: {spans:#?}"))
}

/// `midstream_keepalive.py`'s requests after the first: each SERVER span the child of its
/// CLIENT span, by the connection.
fn assert_later_requests_linked(spans: &[Value]) {
    for path in ["/second", "/third"] {
        let (client_span, server_span) = (
            span_for(spans, "CLIENT", path),
            span_for(spans, "SERVER", path),
        );
        assert_eq!(
            server_span["parent_span_id"], client_span["span_id"],
            "{path}: the server's span is the client's child\n{server_span:#}\n{client_span:#}"
        );
        assert_eq!(attr(server_span, "sockspan.parent.evidence"), "connection");
        assert_eq!(server_span["trace_id"], client_span["trace_id"]);
    }
}

/// A keep-alive connection the agent forgot (here idle past `--idle-timeout`; under load, its
/// opening dropped by a full ring) while the programs still follow it: its next records tell
/// the agent of a connection it does not know, the programs are told to forget it too, and at
/// its next syscall they announce it again. The requests after that are traced and linked,
/// instead of every record of the connection being discarded until it closes.
#[test]
fn a_connection_the_agent_forgot_is_announced_again() {
    // On the syscall tracepoints: the socket layer announces a connection at its first data, and
    // the server end here moves none before the pause (nothing of it to forget).
    let agent = Agent::start_command(
        "run",
        &[
            "--output",
            "jsonl",
            "--idle-timeout",
            "1",
            "--capture-hooks",
            "syscalls",
        ],
    );
    let mut server = Talking::start("midstream_keepalive.py", &["server"]);
    let port = server.line("port ", Duration::from_secs(10));
    let port = port.trim_start_matches("port ").to_string();
    // A pause after each answer: the agent acts on what it reads from the ring some
    // milliseconds later, by when a client that asks at once has finished.
    let mut client = Talking::start("midstream_keepalive.py", &["client", &port, "0.5"]);
    let _ = client.line("sent", Duration::from_secs(10));
    // Idle past the timeout and a sweep (every 2 s): the agent forgets both ends.
    std::thread::sleep(Duration::from_secs(5));
    server.say("go");
    client.say("go");
    let _ = client.line("done", Duration::from_secs(20));
    let _ = server.line("done", Duration::from_secs(20));
    let out = agent.stop();
    assert!(
        out.counter("conns_evicted_idle") >= 2,
        "both ends forgotten: {}",
        out.counters
    );
    assert!(
        out.counter("conns_rediscovered") >= 2,
        "both ends announced again: {}",
        out.counters
    );
    // The request under way when the agent forgot the connection is lost at one end or both;
    // the ones after it are whole.
    assert_later_requests_linked(&out.events);
}

#[test]
fn traceparent_from_an_instrumented_client_is_adopted() {
    let chain = Chain::start();
    let agent = Agent::start_command("run", &["--output", "jsonl"]);
    let client = run_ok(
        Command::new("python3")
            .arg(fixture("otel_client.py"))
            .arg(chain.model.to_string()),
        Duration::from_secs(30),
    );
    let sdk: Value = serde_json::from_slice(&client.stdout).expect("client json");
    assert_eq!(sdk["status"], 200);
    // A plain request right after: it must not inherit the header's trace.
    let plain = run_ok(
        Command::new("curl")
            .args([
                "-sf",
                "--max-time",
                "10",
                "-X",
                "POST",
                "-d",
                r#"{"f":[1]}"#,
            ])
            .arg(format!("http://127.0.0.1:{}/score", chain.model)),
        Duration::from_secs(30),
    );
    assert!(!plain.stdout.is_empty());
    let out = agent.stop();
    let model_spans: Vec<&Value> = out
        .events
        .iter()
        .filter(|s| service(s) == "model" && kind(s) == "SERVER")
        .collect();
    assert_eq!(model_spans.len(), 2, "{model_spans:#?}");
    let joined: Vec<&&Value> = model_spans
        .iter()
        .filter(|s| s["trace_id"] == sdk["trace_id"])
        .collect();
    assert_eq!(joined.len(), 1, "exactly the SDK's request joins its trace");
    assert_eq!(joined[0]["parent_span_id"], sdk["span_id"]);
    assert_eq!(attr(joined[0], "sockspan.parent.evidence"), "w3c");
    let other = model_spans
        .iter()
        .find(|s| s["trace_id"] != sdk["trace_id"])
        .expect("plain request");
    assert_ne!(other["parent_span_id"], sdk["span_id"]);
    // The SDK client's own socket calls are traced too, in the SDK's trace.
    let client_spans: Vec<&Value> = out
        .events
        .iter()
        .filter(|s| kind(s) == "CLIENT" && s["trace_id"] == sdk["trace_id"])
        .collect();
    assert_eq!(client_spans.len(), 1);
    let mut by_kind: HashMap<&str, usize> = HashMap::new();
    for s in &out.events {
        *by_kind.entry(kind(s)).or_default() += 1;
    }
    assert_eq!(by_kind.get("SERVER"), Some(&2), "{by_kind:?}");
}

/// The chain's trace sent over OTLP (`protocol` as in `OTEL_EXPORTER_OTLP_PROTOCOL`) to a
/// receiver built on the official `opentelemetry-proto` package, which refuses the first request
/// as retryable.
fn otlp_chain(protocol: &str) {
    let chain = Chain::start();
    let port = free_port();
    let spans_file = std::env::temp_dir()
        .join(format!("sockspan-otlp-{protocol}-{port}.jsonl").replace('/', "-"));
    let _ = std::fs::remove_file(&spans_file);
    let mode = if protocol == "grpc" { "grpc" } else { "http" };
    let spans_path = spans_file.display().to_string();
    let _receiver = python_fixture(
        "otlp_receiver.py",
        &[mode, &port.to_string(), &spans_path, "1"],
        &[],
    );
    let endpoint = format!("http://127.0.0.1:{port}");
    let agent = Agent::start_with_env(
        "run",
        &["--output", "otlp", "--otlp-endpoint", &endpoint],
        &[
            ("OTEL_EXPORTER_OTLP_PROTOCOL", protocol),
            ("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment=test"),
            ("OTEL_EXPORTER_OTLP_HEADERS", "x-tenant=sockspan"),
        ],
    );
    let _ = run_ok(&mut curl(chain.frontend, 9), Duration::from_secs(30));
    let out = agent.stop();
    assert!(out.status.success(), "{}", out.stderr);
    let text = std::fs::read_to_string(&spans_file).unwrap_or_default();
    let spans: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).expect("receiver json"))
        .collect();
    let by_trace = traces(&spans);
    let chain_traces = through_frontend(&by_trace);
    assert_eq!(
        chain_traces.len(),
        1,
        "one trace received over {protocol}:\n{text}\nagent:\n{}",
        out.stderr
    );
    assert_eq!(check_chain_trace(chain_traces[0]), "9");
    for s in chain_traces[0] {
        assert_eq!(
            s["resource"]["deployment.environment"], "test",
            "OTEL_RESOURCE_ATTRIBUTES applied"
        );
        assert_eq!(s["scope"], "sockspan");
    }
}

#[test]
fn otlp_over_grpc_reaches_an_official_receiver() {
    otlp_chain("grpc");
}

#[test]
fn otlp_over_http_protobuf_reaches_an_official_receiver() {
    otlp_chain("http/protobuf");
}

/// Sends credentials every way a client might through the chain: headers, a query string, a
/// request body. The request to the frontend also carries an `X-Request-Id` and a `page`
/// parameter, which the allowlist test opts into.
fn send_secrets(chain: &Chain) {
    let _ = run_ok(
        Command::new("curl")
            .args(["-sf", "-o", "/dev/null", "--max-time", "20"])
            .args(["-H", "Authorization: Bearer SECRET-BEARER-7f3a"])
            .args(["-H", "Cookie: session=SECRET-COOKIE-91c2"])
            .args(["-H", "X-Api-Key: SECRET-APIKEY-55d0"])
            .args(["-H", "X-Request-Id: rid-42"])
            .arg(format!(
                "http://127.0.0.1:{}/predict/3?page=7&token=SECRET-QUERY-0b1e",
                chain.frontend
            )),
        Duration::from_secs(30),
    );
    let _ = run_ok(
        Command::new("curl")
            .args(["-sf", "-o", "/dev/null", "--max-time", "20", "-X", "POST"])
            .args(["-d", r#"{"f":[1],"password":"SECRET-BODY-3e77"}"#])
            .arg(format!("http://127.0.0.1:{}/score", chain.model)),
        Duration::from_secs(30),
    );
}

fn frontend_server_span(spans: &[Value]) -> &Value {
    spans
        .iter()
        .find(|s| service(s) == "frontend" && kind(s) == "SERVER")
        .expect("frontend span")
}

fn assert_no_secret(output: &str, what: &str) {
    assert!(output.len() > 200, "{what} produced output: {output}");
    assert!(
        !output.contains("SECRET-"),
        "a secret leaked into {what}: {output}"
    );
}

/// Credentials in headers, query strings and bodies reach none of the outputs: JSON lines, OTLP
/// (as an official receiver decodes it), the store's file, and the query API the UI reads.
#[test]
fn secrets_in_traced_traffic_never_reach_any_output() {
    let chain = Chain::start();

    let agent = Agent::start_command("run", &["--output", "jsonl"]);
    send_secrets(&chain);
    let out = agent.stop();
    assert!(out.events.len() >= 7, "spans: {}", out.events.len());
    assert_no_secret(&serde_json::to_string(&out.events).expect("json"), "jsonl");
    let front = frontend_server_span(&out.events);
    assert_eq!(attr(front, "url.path"), "/predict/3");
    assert_eq!(attr(front, "url.query"), "page=REDACTED&token=REDACTED");
    assert!(attr(front, "http.request.header.x-request-id").is_null());

    let outputs = every_output(
        || send_secrets(&chain),
        &[
            "/api/services",
            "/api/traces?service=frontend&limit=50",
            "/api/traces?service=model&limit=50",
            "/api/dependencies",
        ],
    );
    assert_no_secret(&outputs.otlp, "OTLP");
    assert!(
        outputs.api.contains("page=REDACTED"),
        "the API shows the redacted query: {}",
        outputs.api
    );
    assert_no_secret(&outputs.api, "the query API");
    assert!(
        !outputs.store_file.windows(7).any(|w| w == b"SECRET-"),
        "a secret leaked into the store file"
    );
    assert!(
        outputs.dump.contains("page=REDACTED"),
        "the dump holds the spans: {}",
        outputs.dump
    );
    assert_no_secret(&outputs.dump, "the store's spans");
}

/// The allowlists are the explicit opt-in: a listed header is recorded, a listed query
/// parameter keeps its value, and nothing else changes.
#[test]
fn allowlisted_headers_and_query_values_are_recorded() {
    let chain = Chain::start();
    let agent = Agent::start_command(
        "run",
        &[
            "--output",
            "jsonl",
            "--record-headers",
            "X-Request-Id,content-type",
            "--record-query-values",
            "page",
        ],
    );
    send_secrets(&chain);
    let out = agent.stop();
    let front = frontend_server_span(&out.events);
    assert_eq!(attr(front, "http.request.header.x-request-id"), "rid-42");
    assert_eq!(attr(front, "url.query"), "page=7&token=REDACTED");
    assert!(
        attr(front, "http.response.header.content-type").is_string(),
        "{front}"
    );
    assert_no_secret(&serde_json::to_string(&out.events).expect("json"), "jsonl");
}

/// Sends `messages` 64-byte binary messages through the echo server on `port`, one at a time.
fn binary_ping_pong(port: u16, messages: usize) {
    sockspan_tests::binary_ping_pong(port, &[], messages);
}

/// Traffic that never starts an HTTP request costs the ring nothing after its first data
/// syscalls: the programs decide in the kernel that the connection is opaque. The raw view
/// (`sockspan events`) still sees every syscall, and HTTP next to it is still traced.
#[test]
fn opaque_connections_stop_sending_records() {
    const MESSAGES: usize = 2000;
    let echo_port = free_port();
    let _echo = python_fixture(
        "echo_server.py",
        &["127.0.0.1", &echo_port.to_string()],
        &[],
    );

    let raw = Agent::start(&["--port", &echo_port.to_string()]);
    binary_ping_pong(echo_port, MESSAGES);
    let raw_out = raw.stop();
    let raw_records = raw_out.of_type("data").count();
    assert!(
        raw_records >= 3 * MESSAGES,
        "the raw view sends every send and recv of both ends: {raw_records} records"
    );

    let http_port = free_port();
    let _http = http_server("127.0.0.1", http_port);
    let agent = Agent::start_command("run", &["--output", "jsonl"]);
    binary_ping_pong(echo_port, MESSAGES);
    let _ = run_ok(
        Command::new("curl")
            .args(["-s", "-o", "/dev/null"])
            .arg(format!("http://127.0.0.1:{http_port}/opaque-neighbour")),
        Duration::from_secs(20),
    );
    let out = agent.stop();
    // Both ends of the echo connection send at most 8 data records each before the programs
    // give up on it, against 4 × MESSAGES without inference; the margin is for whatever else
    // the host does meanwhile.
    let sent = out.counter("events_sent");
    assert!(
        sent < 1000,
        "{sent} records sent for {MESSAGES} opaque round trips; the raw view needed {raw_records}"
    );
    assert!(
        out.events
            .iter()
            .any(|s| attr(s, "url.path") == "/opaque-neighbour" && kind(s) == "SERVER"),
        "HTTP next to the opaque traffic is traced: {:#?}",
        out.events
    );
}

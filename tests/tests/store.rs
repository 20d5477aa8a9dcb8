//! Root integration tests of the embedded store and its Jaeger-compatible query API: traces
//! made by real traffic through uninstrumented services, read back over HTTP the way Grafana's
//! Jaeger data source and the Jaeger UI read them.

use std::{
    path::PathBuf,
    process::Command,
    time::{Duration, Instant},
};

use serde_json::Value;
use sockspan_tests::{Agent, Proc, free_port, python_fixture, run_ok};

fn get(url: &str) -> (u16, Value) {
    let out = run_ok(
        Command::new("curl")
            .args(["-s", "-w", "\n%{http_code}", "--max-time", "10"])
            .arg(url),
        Duration::from_secs(20),
    );
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (body, code) = text.rsplit_once('\n').expect("status line");
    (
        code.trim().parse().expect("code"),
        serde_json::from_str(body).unwrap_or(Value::Null),
    )
}

fn start_chain() -> (u16, Vec<Proc>) {
    start_chain_with_model_delay(5)
}

/// The chain, with the model taking `model_ms` per request.
fn start_chain_with_model_delay(model_ms: u32) -> (u16, Vec<Proc>) {
    let (frontend, features, model) = (free_port(), free_port(), free_port());
    let delay = model_ms.to_string();
    let procs = vec![
        python_fixture(
            "chain.py",
            &["model", &model.to_string()],
            &[("OTEL_SERVICE_NAME", "model"), ("MODEL_DELAY_MS", &delay)],
        ),
        python_fixture(
            "chain.py",
            &["features", &features.to_string()],
            &[("OTEL_SERVICE_NAME", "features")],
        ),
        python_fixture(
            "chain.py",
            &[
                "frontend",
                &frontend.to_string(),
                &features.to_string(),
                &model.to_string(),
            ],
            &[("OTEL_SERVICE_NAME", "frontend")],
        ),
    ];
    (frontend, procs)
}

fn store_path() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("sockspan-store-{}", free_port()));
    let _ = std::fs::remove_dir_all(&dir);
    dir.join("traces.redb")
}

/// Polls `url` until `done` holds for its body (at most 15 s).
fn wait_for(url: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (_, body) = get(url);
        if done(&body) {
            return body;
        }
        assert!(
            Instant::now() < deadline,
            "{url} never satisfied the condition; last: {body}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The test's many curl calls to the API are the agent's viewers: none of them became a span
/// (curl's calls to the chain did).
fn check_own_traffic_untraced(base: &str, ui: &str) {
    let api_port: i64 = ui
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .expect("port");
    let (code, curl) = get(&format!("{base}/api/traces?service=curl&limit=100"));
    assert_eq!(code, 200);
    let spans: Vec<&Value> = curl["data"]
        .as_array()
        .expect("traces")
        .iter()
        .flat_map(|t| t["spans"].as_array().expect("spans"))
        .collect();
    assert!(!spans.is_empty(), "curl's calls to the chain are traced");
    for span in spans {
        let port = span["tags"]
            .as_array()
            .expect("tags")
            .iter()
            .find(|t| t["key"] == "server.port")
            .map(|t| t["value"].as_i64().expect("port"));
        assert_ne!(
            port,
            Some(api_port),
            "a call to the agent's own API: {span}"
        );
    }
}

/// Services, operations, and Jaeger's trace model: six spans, five `CHILD_OF` references inside
/// the trace, a process for each span.
fn check_listings_and_model(base: &str, trace: &Value) {
    let (code, services) = get(&format!("{base}/api/services"));
    assert_eq!(code, 200);
    for s in ["curl", "frontend", "features", "model"] {
        assert!(
            services["data"]
                .as_array()
                .expect("list")
                .contains(&Value::from(s)),
            "{services}"
        );
    }
    let (_, ops) = get(&format!("{base}/api/services/frontend/operations"));
    assert!(
        ops["data"]
            .as_array()
            .expect("ops")
            .contains(&Value::from("GET /predict/{id}")),
        "{ops}"
    );
    let (_, kinds) = get(&format!(
        "{base}/api/operations?service=model&spanKind=server"
    ));
    assert_eq!(
        kinds["data"][0],
        serde_json::json!({"name": "POST /score", "spanKind": "server"})
    );

    let spans = trace["spans"].as_array().expect("spans");
    assert_eq!(spans.len(), 6, "{trace}");
    let ids: Vec<&Value> = spans.iter().map(|s| &s["spanID"]).collect();
    let child_of: Vec<&Value> = spans
        .iter()
        .flat_map(|s| s["references"].as_array().expect("refs").iter())
        .filter(|r| r["refType"] == "CHILD_OF")
        .collect();
    assert_eq!(child_of.len(), 5);
    assert!(
        child_of
            .iter()
            .all(|r| ids.contains(&&r["spanID"]) && r["traceID"] == trace["traceID"])
    );
    for s in spans {
        assert!(s["startTime"].as_u64().is_some() && s["duration"].as_u64().is_some());
        let process = &trace["processes"][s["processID"].as_str().expect("pid")];
        assert!(process["serviceName"].is_string(), "{process}");
        assert!(
            s["tags"]
                .as_array()
                .expect("tags")
                .iter()
                .any(|t| t["key"] == "span.kind")
        );
    }
}

fn check_search_filters(base: &str, search: &str) {
    let n = |url: String| get(&url).1["data"].as_array().map_or(0, Vec::len);
    assert_eq!(n(format!("{search}&operation=GET%20/predict/%7Bid%7D")), 2);
    // The frontend's client call to the model is one of its operations too.
    assert_eq!(n(format!("{search}&operation=POST%20/score")), 2);
    assert_eq!(n(format!("{search}&operation=GET%20/nothing")), 0);
    assert_eq!(n(format!("{search}&minDuration=1us&maxDuration=1h")), 2);
    assert_eq!(n(format!("{search}&minDuration=1h")), 0);
    assert_eq!(
        n(format!(
            "{search}&tags=%7B%22url.path%22%3A%22/predict/11%22%7D"
        )),
        1
    );
    // Jaeger's repeated `tag=key:value`, all applied.
    assert_eq!(
        n(format!(
            "{search}&tag=url.path:/predict/11&tag=http.request.method:GET"
        )),
        1
    );
    assert_eq!(
        n(format!("{search}&tag=url.path:/predict/11&tag=url.path:/x")),
        0,
        "a repeated key keeps its last value"
    );
    // Several trace ids at once.
    let (_, all) = get(search);
    let ids: Vec<&str> = all["data"]
        .as_array()
        .expect("traces")
        .iter()
        .filter_map(|t| t["traceID"].as_str())
        .collect();
    assert_eq!(
        n(format!(
            "{base}/api/traces?traceID={}&traceID={}",
            ids[0], ids[1]
        )),
        2
    );
    // Every refusal comes in the JSON envelope, naming what was wrong.
    for (url, code, named) in [
        (format!("{search}&limit=ten"), 400, "limit"),
        (format!("{base}/api/nothing/here"), 404, "/api/nothing/here"),
        (
            format!("{base}/api/sockspan/blame?service=frontend"),
            400,
            "operation",
        ),
        (
            format!("{base}/api/sockspan/service-map?lookback=-1"),
            400,
            "lookback",
        ),
    ] {
        let (got, body) = get(&url);
        assert_eq!(got, code, "{url}: {body}");
        assert!(
            body["errors"][0]["msg"]
                .as_str()
                .is_some_and(|m| m.contains(named)),
            "{url}: {body}"
        );
    }
    let (code, bad) = get(&format!(
        "{base}/api/traces?service=frontend&minDuration=soon"
    ));
    assert_eq!(code, 400);
    assert!(
        bad["errors"][0]["msg"]
            .as_str()
            .is_some_and(|m| m.contains("minDuration")),
        "{bad}"
    );
}

/// A trace's spans as stored, for the UI's details: the parent's evidence and link reasons.
fn check_stored_spans(base: &str, trace_id: &str) {
    let (code, stored) = get(&format!("{base}/api/sockspan/traces/{trace_id}"));
    assert_eq!(code, 200, "{stored}");
    let spans = stored["data"].as_array().expect("spans");
    assert_eq!(spans.len(), 6);
    assert!(
        spans
            .iter()
            .filter(|s| s["kind"] == "SERVER")
            .all(|s| s["attributes"]["sockspan.parent.evidence"] == "connection"),
        "{stored}"
    );
    assert_eq!(
        get(&format!(
            "{base}/api/sockspan/traces/00000000000000000000000000000abc"
        ))
        .0,
        404
    );
}

fn check_service_map(base: &str) {
    let (_, deps) = get(&format!(
        "{base}/api/dependencies?endTs=99999999999999&lookback=99999999999999"
    ));
    let edges: Vec<(String, String, u64)> = deps["data"]
        .as_array()
        .expect("deps")
        .iter()
        .map(|d| {
            (
                d["parent"].as_str().unwrap_or("").to_string(),
                d["child"].as_str().unwrap_or("").to_string(),
                d["callCount"].as_u64().unwrap_or(0),
            )
        })
        .collect();
    for (parent, child) in [
        ("curl", "frontend"),
        ("frontend", "features"),
        ("frontend", "model"),
    ] {
        assert!(
            edges.contains(&(parent.to_string(), child.to_string(), 2)),
            "{parent}->{child} twice: {edges:?}"
        );
    }
}

#[test]
fn jaeger_api_serves_traces_of_real_traffic_and_survives_a_restart() {
    let (frontend, _procs) = start_chain();
    let store = store_path();
    let store_arg = store.display().to_string();
    let ui = format!("127.0.0.1:{}", free_port());
    let base = format!("http://{ui}");
    let agent = Agent::start_command("run", &["--store", &store_arg, "--ui", &ui]);
    for item in [11, 12] {
        let _ = run_ok(
            Command::new("curl")
                .args(["-sf", "-o", "/dev/null"])
                .arg(format!("http://127.0.0.1:{frontend}/predict/{item}")),
            Duration::from_secs(20),
        );
    }
    let search = format!("{base}/api/traces?service=frontend&limit=20");
    // Both traces whole: a trace's spans reach the store as each settles, not all at once.
    let found = wait_for(&search, |b| {
        b["data"].as_array().is_some_and(|d| {
            d.len() == 2
                && d.iter()
                    .all(|t| t["spans"].as_array().map(Vec::len) == Some(6))
        })
    });
    assert_eq!(found["errors"], Value::Null);
    assert_eq!(found["total"], 2);

    // One trace by id; unknown and malformed ids.
    let trace = &found["data"][0];
    let trace_id = trace["traceID"].as_str().expect("id").to_string();
    let (code, one) = get(&format!("{base}/api/traces/{trace_id}"));
    assert_eq!(
        (code, one["data"][0]["spans"].as_array().map(Vec::len)),
        (200, Some(6))
    );
    assert_eq!(
        get(&format!(
            "{base}/api/traces/00000000000000000000000000000abc"
        ))
        .0,
        404
    );
    assert_eq!(get(&format!("{base}/api/traces/not-hex")).0, 400);

    check_listings_and_model(&base, &found["data"][0]);
    check_search_filters(&base, &search);
    check_stored_spans(&base, &trace_id);
    check_service_map(&base);
    check_own_traffic_untraced(&base, &ui);
    let out = agent.stop();
    assert!(out.status.success(), "{}", out.stderr);
    assert!(
        out.counter("own_connections_ignored") >= 10,
        "every curl to the API was one of the agent's own connections"
    );
    // A new agent on the same store still answers for the trace.
    let agent = Agent::start_command("run", &["--store", &store_arg, "--ui", &ui]);
    let (code, again) = get(&format!("{base}/api/traces/{trace_id}"));
    assert_eq!(code, 200, "{again}");
    assert_eq!(again["data"][0]["spans"].as_array().map(Vec::len), Some(6));
    let _ = agent.stop();
    if let Some(dir) = store.parent() {
        let _ = std::fs::remove_dir_all(dir);
    }
}

#[test]
fn the_api_refuses_non_loopback_addresses() {
    let (code, stderr) = refusal_of(&[
        "run",
        "--ui",
        "0.0.0.0:16686",
        "--store",
        "/tmp/sockspan-never.redb",
        "--duration",
        "1",
    ]);
    assert_eq!(code, Some(1));
    assert!(
        stderr.contains("--ui 0.0.0.0:16686") && stderr.contains("loopback"),
        "{stderr}"
    );
}

/// The service map: three edges, ten calls each, the model edge slow with network time measured;
/// and the `OpenAPI` document.
fn check_service_map_edges(base: &str) {
    let (code, map) = get(&format!("{base}/api/sockspan/service-map?lookback=600"));
    assert_eq!(code, 200, "{map}");
    let edge = |client: &str, server: &str| -> Value {
        map["edges"]
            .as_array()
            .expect("edges")
            .iter()
            .find(|e| e["client"] == client && e["server"] == server)
            .cloned()
            .unwrap_or_else(|| panic!("no edge {client} -> {server} in {map}"))
    };
    for (client, server) in [
        ("curl", "frontend"),
        ("frontend", "features"),
        ("frontend", "model"),
    ] {
        let e = edge(client, server);
        assert_eq!(e["calls"], 10, "{e}");
        assert_eq!(e["errors"], 0, "{e}");
    }
    let model = edge("frontend", "model");
    assert!(model["p50_ms"].as_f64().expect("p50") >= 40.0, "{model}");
    assert!(model["network_p50_ms"].as_f64().is_some(), "{model}");
    let (code, openapi) = get(&format!("{base}/api/openapi.json"));
    assert_eq!(code, 200);
    assert!(
        openapi["paths"]["/api/sockspan/blame"].is_object(),
        "{openapi}"
    );
}

/// An endpoint with no requests is an error, not an empty table a script reads as fine.
fn check_blame_without_requests_fails(base: &str) {
    let none = Command::new(sockspan_tests::sockspan_bin())
        .args([
            "blame",
            "--service",
            "frontend",
            "--operation",
            "GET /nothing",
            "--api",
            base,
        ])
        .output()
        .expect("run blame");
    assert!(!none.status.success());
    assert!(
        String::from_utf8_lossy(&none.stderr).contains("no request of frontend \"GET /nothing\""),
        "{}",
        String::from_utf8_lossy(&none.stderr)
    );
}

#[test]
fn blame_names_the_slow_service_and_the_critical_path_covers_the_request() {
    let (frontend, _procs) = start_chain_with_model_delay(40);
    let store = store_path();
    let store_arg = store.display().to_string();
    let ui = format!("127.0.0.1:{}", free_port());
    let base = format!("http://{ui}");
    let agent = Agent::start_command("run", &["--store", &store_arg, "--ui", &ui]);
    for item in 0..10 {
        let _ = run_ok(
            Command::new("curl")
                .args(["-sf", "-o", "/dev/null"])
                .arg(format!("http://127.0.0.1:{frontend}/predict/{item}")),
            Duration::from_secs(20),
        );
    }
    // Complete traces only: a server span ends after its children, so it is exported last.
    let found = wait_for(
        &format!("{base}/api/traces?service=frontend&limit=20"),
        |b| {
            b["data"].as_array().is_some_and(|d| {
                d.len() == 10
                    && d.iter()
                        .all(|t| t["spans"].as_array().map(Vec::len) == Some(6))
            })
        },
    );

    // The model sleeps 40 ms, and its two-write responses meet Nagle and delayed ACKs on the
    // frontend's keep-alive connection: another ~40 ms that belong to the hop, not the model
    // (measured without sockspan too: 42 ms for the first request on a connection, 84 ms after).
    // At the median and in the tail, the path through the model owns the latency, and the two
    // top rows are the model and the hop to it.
    for percentile in ["50", "99"] {
        let out = run_ok(
            Command::new(sockspan_tests::sockspan_bin()).args([
                "blame",
                "--service",
                "frontend",
                "--operation",
                "GET /predict/{id}",
                "--percentile",
                percentile,
                "--api",
                &base,
            ]),
            Duration::from_secs(20),
        );
        let table = String::from_utf8_lossy(&out.stdout);
        assert!(table.contains("of 10 requests analysed"), "{table}");
        let share_of = |owner: &str| -> f64 {
            table
                .lines()
                .find(|l| l.ends_with(owner))
                .and_then(|l| l.trim().split('%').next()?.trim().parse().ok())
                .unwrap_or(0.0)
        };
        let model_path = share_of("service model") + share_of("hop frontend → model");
        assert!(
            model_path > 80.0,
            "p{percentile}: the model's path owns the latency:\n{table}"
        );
        let top_two: Vec<&str> = table.lines().skip(2).take(2).collect();
        assert!(
            top_two.iter().any(|l| l.ends_with("service model"))
                && top_two.iter().any(|l| l.ends_with("hop frontend → model")),
            "p{percentile}:\n{table}"
        );
    }

    check_blame_without_requests_fails(&base);
    check_service_map_edges(&base);
    // The critical path of one trace covers its root span exactly and runs through the model.
    let trace_id = found["data"][0]["traceID"]
        .as_str()
        .expect("id")
        .to_string();
    let (code, path) = get(&format!(
        "{base}/api/sockspan/traces/{trace_id}/critical-path"
    ));
    assert_eq!(code, 200, "{path}");
    let segments = path["segments"].as_array().expect("segments");
    let covered: u64 = segments
        .iter()
        .map(|s| {
            s["end_time_unix_nano"].as_u64().unwrap_or(0)
                - s["start_time_unix_nano"].as_u64().unwrap_or(0)
        })
        .sum();
    let root = found["data"][0]["spans"]
        .as_array()
        .expect("spans")
        .iter()
        .find(|s| s["spanID"] == path["root_span_id"])
        .expect("root in trace")
        .clone();
    assert_eq!(
        covered / 1000,
        root["duration"].as_u64().expect("duration"),
        "{path}"
    );
    assert!(segments.iter().any(|s| s["owner"] == "service model"));
    let _ = agent.stop();
    if let Some(dir) = store.parent() {
        let _ = std::fs::remove_dir_all(dir);
    }
}

#[test]
fn the_web_ui_serves_every_view_on_real_traffic_in_chromium() {
    let (frontend, _procs) = start_chain_with_model_delay(20);
    let store = store_path();
    let store_arg = store.display().to_string();
    let ui = format!("127.0.0.1:{}", free_port());
    let base = format!("http://{ui}");
    let agent = Agent::start_command("run", &["--store", &store_arg, "--ui", &ui]);
    // Three good predictions, then one whose features call fails (item 500: the features service
    // answers 500, so the frontend 502s; the same route, so its trace can be compared).
    for item in ["0", "1", "2", "500"] {
        let _ = run_ok(
            Command::new("curl")
                .args(["-s", "-o", "/dev/null"])
                .arg(format!("http://127.0.0.1:{frontend}/predict/{item}")),
            Duration::from_secs(20),
        );
    }
    let _ = wait_for(
        &format!("{base}/api/traces?service=frontend&limit=20"),
        |b| {
            b["data"].as_array().is_some_and(|d| {
                let sizes: Vec<usize> = d
                    .iter()
                    .filter_map(|t| t["spans"].as_array().map(Vec::len))
                    .collect();
                sizes.iter().filter(|n| **n == 6).count() == 3 && sizes.contains(&4)
            })
        },
    );
    // Screenshots of each view are kept as the test's artefacts (docs/store-and-api.md shows them).
    let shots = std::env::var("SOCKSPAN_UI_SHOTS").map_or_else(
        |_| sockspan_tests::target_dir().join("ui-screenshots"),
        PathBuf::from,
    );
    std::fs::create_dir_all(&shots).expect("screenshot dir");
    let out = run_ok(
        Command::new("python3")
            .arg(sockspan_tests::fixture("ui_check.py"))
            .arg(&base)
            .arg(&shots),
        Duration::from_mins(3),
    );
    let seen: Value = serde_json::from_slice(&out.stdout).expect("ui_check json");
    eprintln!("the page showed: {seen:#}");
    check_ui_search(&seen);
    check_ui_trace(&seen);
    check_ui_map_and_blame(&seen);
    check_ui_traffic_untraced(&base, &ui);
    let _ = agent.stop();
}

/// Search: results named after their entry point, the failed one marked in the list and the
/// scatter plot, ISO times with a zone; a tag filter survives a reload; two traces compared.
fn check_ui_search(seen: &Value) {
    assert_eq!(seen["traces"], 4, "{seen}");
    assert_eq!(seen["failed_rows"], 1, "{seen}");
    assert_eq!(
        (&seen["dots"], &seen["failed_dots"]),
        (&4.into(), &1.into())
    );
    assert_eq!(
        seen["names"],
        serde_json::json!(["frontend: GET /predict/{id}"]),
        "traces are named after the service they entered, not curl's call"
    );
    assert_eq!(seen["iso_times"], true, "{seen}");
    assert_eq!(
        seen["chips"],
        serde_json::json!(["curl", "features", "frontend", "model"])
    );
    assert_eq!(seen["sorted_last_is_failed"], true, "{seen}");
    let filtered = seen["tag_filtered"].as_array().expect("filtered");
    assert_eq!(filtered.len(), 1, "error=true finds the failed trace");
    assert_eq!(
        seen["reloaded"], seen["tag_filtered"],
        "a reloaded search URL shows the same results: {}",
        seen["tag_filter_url"]
    );
    assert_eq!(seen["reloaded_tags_field"], "error=true");
    assert!(
        seen["compare_url"]
            .as_str()
            .is_some_and(|u| u.contains("/trace/") && u.contains("...")),
        "{seen}"
    );
    let statuses = seen["compare_statuses"].as_array().expect("statuses");
    // Paths in both (same, or changed when a count or the mean time differs by half), and the
    // model call only the good trace made.
    assert!(
        (statuses.contains(&"same".into()) || statuses.contains(&"changed".into()))
            && (statuses.contains(&"added".into()) || statuses.contains(&"removed".into())),
        "the failed trace lacks the model call the good one has: {statuses:?}"
    );
}

/// The trace view: waterfall, critical path, splits, ruler, colours, details with the parent's
/// evidence, find, collapse, JSON download, errors marked, a missing trace explained.
fn check_ui_trace(seen: &Value) {
    assert_eq!(seen["spans"], 6, "{seen}");
    assert_eq!(
        seen["services"],
        serde_json::json!(["curl", "features", "frontend", "model"]),
        "{seen}"
    );
    assert!(
        seen["critical_segments"].as_u64().unwrap_or(0) >= 3,
        "the critical path is drawn: {seen}"
    );
    assert!(
        seen["splits"].as_array().expect("splits").iter().any(|s| s
            .as_str()
            .is_some_and(|t| t.contains("server") && t.contains("network"))),
        "client spans show their server/network split: {seen}"
    );
    assert!(seen["ruler_ticks"].as_u64().unwrap_or(0) >= 4, "{seen}");
    assert_eq!(seen["colours"], 4, "a colour per service: {seen}");
    assert!(
        seen["details_evidence"]
            .as_str()
            .is_some_and(|e| e.starts_with("connection")),
        "the frontend's span was parented by its connection: {seen}"
    );
    let keys: Vec<&str> = seen["details_keys"]
        .as_array()
        .expect("keys")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    for key in ["http.route", "service.name", "process.pid"] {
        assert!(keys.contains(&key), "{key} in the details: {keys:?}");
    }
    let found = seen["find_matches"].as_u64().unwrap_or(0);
    assert!((1..6).contains(&found), "find marks some spans: {seen}");
    assert_eq!(
        (&seen["collapsed_rows"], &seen["expanded_rows"]),
        (&1.into(), &6.into())
    );
    assert_eq!(
        seen["downloaded"]["spans"], 6,
        "Jaeger JSON downloaded: {seen}"
    );
    assert!(
        seen["error_spans"].as_u64().unwrap_or(0) >= 2,
        "the failed trace marks its failing spans: {seen}"
    );
    assert!(
        seen["error_header"]
            .as_str()
            .is_some_and(|h| h.contains("error")),
        "{seen}"
    );
    assert!(
        seen["missing"]
            .as_str()
            .is_some_and(|m| m.contains("older than the store keeps")),
        "{seen}"
    );
}

/// The service map as a graph and a table; blame rows with shares, a caution about few
/// requests, and an example trace that opens.
fn check_ui_map_and_blame(seen: &Value) {
    let edges: Vec<String> = seen["edges"]
        .as_array()
        .expect("edges")
        .iter()
        .map(|e| format!("{}->{}", e[0], e[1]))
        .collect();
    for edge in [
        "\"curl\"->\"frontend\"",
        "\"frontend\"->\"model\"",
        "\"frontend\"->\"features\"",
    ] {
        assert!(edges.contains(&edge.to_string()), "{edge} in {edges:?}");
    }
    // The chain's services (other processes talk too: selenium to chromedriver, chromedriver to
    // Chromium's DevTools, a resolver).
    let nodes = seen["graph_nodes"].as_array().expect("nodes");
    for service in ["curl", "features", "frontend", "model"] {
        assert!(nodes.contains(&service.into()), "{service} in {nodes:?}");
    }
    assert!(seen["graph_links"].as_u64().unwrap_or(0) >= 3, "{seen}");
    // The blame table lists the services and hops of the path with their shares (which hop, if
    // any, meets a Nagle / delayed-ACK stall varies from run to run: both are real).
    let blame: Vec<&str> = seen["blame"]
        .as_array()
        .expect("blame")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(
        blame.len() >= 3 && blame.iter().any(|r| r.ends_with("service model")),
        "{seen}"
    );
    let total: f64 = blame
        .iter()
        .filter_map(|r| r.split('%').next()?.trim().parse::<f64>().ok())
        .sum();
    assert!((total - 100.0).abs() < 3.0, "shares add up: {seen}");
    assert!(
        seen["blame_url"]
            .as_str()
            .is_some_and(|u| u.contains("/blame?service=frontend")),
        "{seen}"
    );
    assert!(
        seen["blame_notice"]
            .as_str()
            .is_some_and(|n| n.starts_with("Only")),
        "a few requests are not presented as a pattern: {seen}"
    );
    assert!(seen["blame_examples"].as_u64().unwrap_or(0) >= 1, "{seen}");
    assert_eq!(seen["example_opened"], true, "{seen}");
}

/// After the browser used every view: no span of any service is a call to the agent's own
/// listener (the browser's page loads and API calls were not traced).
fn check_ui_traffic_untraced(base: &str, ui: &str) {
    let port = ui.rsplit(':').next().expect("port");
    let (_, services) = get(&format!("{base}/api/services"));
    for service in services["data"].as_array().expect("services") {
        let name = service.as_str().expect("name");
        let encoded: String = name
            .bytes()
            .map(|b| {
                if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                    char::from(b).to_string()
                } else {
                    format!("%{b:02X}")
                }
            })
            .collect();
        let (code, found) = get(&format!(
            "{base}/api/traces?service={encoded}&tag=server.port:{port}&limit=5"
        ));
        assert_eq!(code, 200, "{found}");
        assert_eq!(
            found["data"].as_array().map(Vec::len),
            Some(0),
            "{name} has spans of calls to the agent's own UI: {found}"
        );
    }
}

/// A network namespace made for one test, removed on drop.
struct Netns(String);

impl Netns {
    /// A namespace whose loopback is up and also carries `addr` (a non-loopback address).
    fn with_address(name: &str, addr: &str) -> Self {
        let _ = Command::new("ip")
            .args(["netns", "del", name])
            .stderr(std::process::Stdio::null())
            .status();
        let ip = |args: &[&str]| {
            let _ = run_ok(Command::new("ip").args(args), Duration::from_secs(10));
        };
        ip(&["netns", "add", name]);
        let ns = Self(name.to_string());
        ip(&["-n", name, "link", "set", "lo", "up"]);
        ip(&[
            "-n",
            name,
            "addr",
            "add",
            &format!("{addr}/32"),
            "dev",
            "lo",
        ]);
        ns
    }

    fn curl(&self, args: &[&str]) -> String {
        let out = run_ok(
            Command::new("ip")
                .args(["netns", "exec", &self.0, "curl", "-s", "--max-time", "10"])
                .args(["-w", "\n%{http_code}"])
                .args(args),
            Duration::from_secs(20),
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

/// Beyond loopback the API needs a bearer token: refused at start without one (naming the
/// flag), and once given, every API request without the token gets 401 while the page itself
/// loads. Served on a non-loopback address inside a namespace the test makes.
#[test]
fn api_beyond_loopback_requires_the_bearer_token() {
    let store = store_path();
    let store_arg = store.display().to_string();
    let addr = "10.213.0.1";
    let ui = format!("{addr}:{}", free_port());

    let (_, refused) = refusal_of(&["run", "--store", &store_arg, "--ui", &ui]);
    assert!(
        refused.contains("--ui-token-file"),
        "refusal should name the flag: {refused}"
    );
    let token_file = store.with_file_name("ui-token");
    std::fs::create_dir_all(store.parent().expect("dir")).expect("store dir");
    std::fs::write(&token_file, "short\n").expect("token");
    let token_arg = token_file.display().to_string();
    let with_token = [
        "--store",
        &store_arg,
        "--ui",
        &ui,
        "--ui-token-file",
        &token_arg,
    ];
    let (_, weak) = refusal_of(&[&["run"][..], &with_token].concat());
    assert!(weak.contains("at least 16"), "{weak}");

    let token = "4f2c9d7e1b8a6035c4d2e9f1a7b3c580";
    std::fs::write(&token_file, format!("{token}\n")).expect("token");
    let ns = Netns::with_address(&format!("ssauth{}", free_port()), addr);
    // Ready (its --ready-file written) means the UI listens already.
    let agent = Agent::start_in_netns(&ns.0, "run", &with_token);
    let base = format!("http://{ui}");
    let status = |text: &str| text.rsplit('\n').next().unwrap_or("").trim().to_string();

    let anonymous = ns.curl(&[&format!("{base}/api/services")]);
    assert_eq!(status(&anonymous), "401", "{anonymous}");
    assert!(anonymous.contains("Authorization: Bearer"), "{anonymous}");
    let wrong = ns.curl(&[
        "-H",
        "Authorization: Bearer 4f2c9d7e1b8a6035c4d2e9f1a7b3c581",
        &format!("{base}/api/services"),
    ]);
    assert_eq!(status(&wrong), "401");
    let good = ns.curl(&[
        "-H",
        &format!("Authorization: Bearer {token}"),
        &format!("{base}/api/services"),
    ]);
    assert_eq!(status(&good), "200", "{good}");
    assert!(good.contains("\"data\""), "{good}");
    // The page and its scripts hold no data: served without the token, so the page can ask.
    let page = ns.curl(&[&format!("{base}/trace/0123")]);
    assert_eq!(status(&page), "200");
    let script = ns.curl(&[&format!("{base}/ui/util.js")]);
    assert_eq!(status(&script), "200");
    assert!(
        script.contains("sessionStorage"),
        "the page asks for the token"
    );
    assert!(
        anonymous.contains("\"errors\""),
        "refusals come in the API's envelope: {anonymous}"
    );

    let out = agent.stop();
    assert!(out.status.success(), "{}", out.stderr);
    assert!(
        !out.stderr.contains(token),
        "the token never appears in the agent's logs"
    );
}

/// Runs sockspan with `args`, expecting it to fail at once; returns its exit code and stderr.
fn refusal_of(args: &[&str]) -> (Option<i32>, String) {
    let out = Command::new(sockspan_tests::sockspan_bin())
        .args(args)
        .output()
        .expect("run sockspan");
    assert!(!out.status.success(), "sockspan {args:?} should refuse");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

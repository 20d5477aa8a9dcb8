//! Root integration test of `/metrics`: known traffic through a real chain (a driver → front →
//! two leaves, threaded Python services), scraped with the reference Prometheus parser
//! (`prometheus_client`); RED counts equal the requests sent, buckets are cumulative, the
//! service graph's edges match the chain, and the agent's own counters are there.

use std::{
    process::Command,
    time::{Duration, Instant},
};

use serde_json::Value;
use sockspan_tests::{
    Agent,
    chains::{Chain, chain_named},
    fixture, free_port, run_ok,
};

/// What `scrape_metrics.py` makes of `/metrics`.
fn scrape(url: &str) -> Value {
    let out = run_ok(
        Command::new("python3")
            .arg(fixture("scrape_metrics.py"))
            .arg(url),
        Duration::from_secs(20),
    );
    serde_json::from_slice(&out.stdout).expect("scrape json")
}

/// Sum of the samples named `sample` whose labels include every pair of `labels` (counts: whole
/// numbers).
fn total(scraped: &Value, family: &str, sample: &str, labels: &[(&str, &str)]) -> u64 {
    let sum: f64 = scraped["families"][family]["samples"]
        .as_array()
        .map_or(&[][..], Vec::as_slice)
        .iter()
        .filter(|s| s["name"] == sample)
        .filter(|s| labels.iter().all(|(k, v)| s["labels"][k] == *v))
        .map(|s| s["value"].as_f64().unwrap_or(0.0))
        .sum();
    sum.round() as u64
}

/// A sample's labels without `le`, as one comparable string.
fn series_of(sample: &Value) -> String {
    let mut labels = sample["labels"].as_object().cloned().unwrap_or_default();
    labels.remove("le");
    serde_json::to_string(&labels).expect("labels")
}

/// The values of the samples named `name` in series `key`.
fn values(samples: &[Value], name: &str, key: &str) -> Vec<f64> {
    samples
        .iter()
        .filter(|s| s["name"] == name && series_of(s) == key)
        .map(|s| s["value"].as_f64().unwrap_or(-1.0))
        .collect()
}

/// Every histogram's buckets grow with `le` and end at its count.
fn assert_histograms_consistent(scraped: &Value) {
    for (name, family) in scraped["families"].as_object().expect("families") {
        if family["type"] != "histogram" {
            continue;
        }
        let samples = family["samples"].as_array().expect("samples");
        let mut keys: Vec<String> = samples.iter().map(series_of).collect();
        keys.dedup();
        for key in keys {
            let buckets = values(samples, &format!("{name}_bucket"), &key);
            let count = values(samples, &format!("{name}_count"), &key);
            assert!(
                buckets.windows(2).all(|w| w[0] <= w[1]),
                "{name} {key}: {buckets:?}"
            );
            assert_eq!(
                buckets.last(),
                count.first(),
                "{name} {key}: +Inf is the count"
            );
        }
    }
}

const EDGES: [(&str, &str); 3] = [("driver", "front"), ("front", "a"), ("front", "b")];

fn edge<'a>(client: &'a str, server: &'a str) -> [(&'a str, &'a str); 2] {
    [("client", client), ("server", server)]
}

/// Scrapes until every edge has `requests` (the spans wait the link delay) and the agent's own
/// counters (refreshed each second) have caught up, at most 20 s.
fn scrape_when_complete(url: &str, requests: u64) -> Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let scraped = scrape(url);
        let complete = EDGES.iter().all(|(c, s)| {
            total(
                &scraped,
                "traces_service_graph_request",
                "traces_service_graph_request_total",
                &edge(c, s),
            ) >= requests
        }) && total(
            &scraped,
            "sockspan_parent_from_thread",
            "sockspan_parent_from_thread_total",
            &[],
        ) >= 2 * requests;
        if complete || Instant::now() > deadline {
            return scraped;
        }
        std::thread::sleep(Duration::from_millis(300));
    }
}

fn assert_red(scraped: &Value, requests: u64) {
    let server = "http_server_request_duration_seconds";
    let server_count = format!("{server}_count");
    for service in ["front", "a", "b"] {
        let labels = [("service_name", service), ("http_request_method", "GET")];
        assert_eq!(
            total(scraped, server, &server_count, &labels),
            requests,
            "{service}'s SERVER requests"
        );
    }
    let ok = [("http_response_status_code", "200"), ("error_type", "")];
    assert_eq!(
        total(scraped, server, &server_count, &ok),
        3 * requests,
        "all succeeded"
    );
    let client = "http_client_request_duration_seconds";
    let client_count = format!("{client}_count");
    let of = |service| [("service_name", service)];
    assert_eq!(
        total(scraped, client, &client_count, &of("front")),
        2 * requests
    );
    assert_eq!(
        total(scraped, client, &client_count, &of("driver")),
        requests
    );
}

fn assert_graph(scraped: &Value, requests: u64) {
    for (c, s) in EDGES {
        let labels = edge(c, s);
        let requests_on = |family: &str, sample: &str| total(scraped, family, sample, &labels);
        assert_eq!(
            requests_on(
                "traces_service_graph_request",
                "traces_service_graph_request_total"
            ),
            requests,
            "edge {c} → {s}"
        );
        assert_eq!(
            requests_on(
                "traces_service_graph_request_failed",
                "traces_service_graph_request_failed_total"
            ),
            0
        );
        for h in [
            "traces_service_graph_request_server_seconds",
            "traces_service_graph_request_client_seconds",
            "sockspan_service_graph_network_seconds",
        ] {
            assert_eq!(
                requests_on(h, &format!("{h}_count")),
                requests,
                "{h} {c} → {s}"
            );
        }
    }
}

/// A fresh folder `sockspan-<name>-<ui>` and an agent storing spans there, its API on
/// 127.0.0.1:`ui`, with `extra` flags.
fn store_agent(name: &str, ui: u16, extra: &[&str]) -> (std::path::PathBuf, Agent) {
    let dir = std::env::temp_dir().join(format!("sockspan-{name}-{ui}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    let store = dir.join("traces.redb");
    let ui = format!("127.0.0.1:{ui}");
    let mut flags = vec!["--store", store.to_str().expect("path"), "--ui", &ui];
    flags.extend(extra);
    let agent = Agent::start_command("run", &flags);
    (dir, agent)
}

#[test]
fn metrics_count_the_requests_and_the_service_graph_matches_the_chain() {
    let ui = free_port();
    let (dir, agent) = store_agent("metrics", ui, &[]);
    let chain = Chain::start(chain_named("threaded"));
    let ids = chain.drive(6, 2, 4);
    // The warm-up request too.
    let requests = ids.len() as u64 + 1;
    let scraped = scrape_when_complete(&format!("http://127.0.0.1:{ui}/metrics"), requests);
    let out = agent.stop();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(out.status.success(), "{}", out.stderr);
    assert!(
        scraped["content_type"]
            .as_str()
            .is_some_and(|t| t.starts_with("text/plain; version=0.0.4")),
        "{}",
        scraped["content_type"]
    );
    assert_red(&scraped, requests);
    assert_graph(&scraped, requests);
    assert_histograms_consistent(&scraped);
    assert!(
        total(
            &scraped,
            "sockspan_parent_from_thread",
            "sockspan_parent_from_thread_total",
            &[]
        ) >= 2 * requests,
        "link evidence counts"
    );
}

/// `--ready-file` appears once the agent traces (with its pid and API address), `/ready` says
/// 200 then, and the file is gone after the agent stops; a folder that does not exist is refused
/// before anything is attached, naming the flag.
#[test]
fn the_agent_says_when_it_is_ready() {
    let ui = free_port();
    let ready = std::env::temp_dir().join(format!("sockspan-ready-{ui}/ready.json"));
    let (dir, agent) = store_agent(
        "ready",
        ui,
        &["--ready-file", ready.to_str().expect("path")],
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while !ready.exists() {
        assert!(Instant::now() < deadline, "no ready file");
        std::thread::sleep(Duration::from_millis(100));
    }
    let said: Value =
        serde_json::from_str(&std::fs::read_to_string(&ready).expect("read")).expect("json");
    assert_eq!(said["pid"], agent.pid());
    assert_eq!(said["ui"], format!("127.0.0.1:{ui}"));
    let out = run_ok(
        Command::new("curl").args([
            "-sS",
            "-w",
            " %{http_code}",
            &format!("http://127.0.0.1:{ui}/ready"),
        ]),
        Duration::from_secs(10),
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "ready\n 200");
    let stopped = agent.stop();
    assert!(stopped.status.success(), "{}", stopped.stderr);
    assert!(!ready.exists(), "removed at exit");
    let refused = refusal(&dir.join("missing/ready.json"));
    assert!(
        refused.contains("--ready-file") && refused.contains("does not exist"),
        "{refused}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// What `sockspan run --ready-file PATH` says when it refuses to start.
fn refusal(path: &std::path::Path) -> String {
    let out = Command::new(sockspan_tests::sockspan_bin())
        .args(["run", "--output", "jsonl", "--ready-file"])
        .arg(path)
        .output()
        .expect("run sockspan");
    assert!(!out.status.success());
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// What Prometheus's HTTP API answers for the instant query `query`: (labels, value) per series.
fn prometheus_query(port: u16, query: &str) -> Vec<(Value, f64)> {
    let out = run_ok(
        Command::new("curl").args([
            "-sS",
            "--get",
            &format!("http://127.0.0.1:{port}/api/v1/query"),
            "--data-urlencode",
            &format!("query={query}"),
        ]),
        Duration::from_secs(10),
    );
    let body: Value = serde_json::from_slice(&out.stdout).expect("prometheus json");
    assert_eq!(body["status"], "success", "{query}: {body}");
    body["data"]["result"]
        .as_array()
        .map_or(&[][..], Vec::as_slice)
        .iter()
        .map(|r| {
            let value = r["value"][1]
                .as_str()
                .and_then(|v| v.parse().ok())
                .unwrap_or(f64::NAN);
            (r["metric"].clone(), value)
        })
        .collect()
}

/// Polls `query` until `done` holds for its answer, or `deadline`.
fn poll_prometheus(
    port: u16,
    query: &str,
    deadline: Instant,
    done: impl Fn(&[(Value, f64)]) -> bool,
) -> Vec<(Value, f64)> {
    loop {
        let answer = prometheus_query(port, query);
        if done(&answer) || Instant::now() > deadline {
            return answer;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Debian's Prometheus server scrapes the agent every second during known traffic; its query
/// API then returns the RED and service-graph series with the numbers sent, and a Grafana-style
/// rate per edge is there for each edge.
#[test]
fn prometheus_scrapes_the_red_and_service_graph_series() {
    let (ui, prom) = (free_port(), free_port());
    let (dir, agent) = store_agent("prometheus", ui, &[]);
    let config = dir.join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global: {{ scrape_interval: 1s }}\nscrape_configs:\n  - job_name: sockspan\n    static_configs: [{{ targets: ['127.0.0.1:{ui}'] }}]\n"
        ),
    )
    .expect("config");
    let server = sockspan_tests::Proc(
        Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("tsdb").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{prom}"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start prometheus"),
    );
    sockspan_tests::wait_listening(&format!("127.0.0.1:{prom}"), Duration::from_secs(30));
    let chain = Chain::start(chain_named("threaded"));
    // Two rounds of traffic, Prometheus having scraped the first before the second: a rate
    // needs a series' increase between two scrapes.
    let first = chain.drive(6, 2, 4).len() as f64 + 1.0;
    // The chain's edges only: the test's own queries (curl → prometheus) are traced too.
    let edges =
        "sum by (client, server) (traces_service_graph_request_total{client=~\"driver|front\"})";
    let deadline = Instant::now() + Duration::from_mins(1);
    let exactly = |n: f64| {
        move |a: &[(Value, f64)]| a.len() == 3 && a.iter().all(|(_, v)| (*v - n).abs() < 0.5)
    };
    let _ = poll_prometheus(prom, edges, deadline, exactly(first));
    let requests = first + chain.drive(6, 2, 4).len() as f64 + 1.0;
    let totals = poll_prometheus(prom, edges, deadline, exactly(requests));
    let red = prometheus_query(
        prom,
        "sum by (service_name) (http_server_request_duration_seconds_count)",
    );
    let p50 = prometheus_query(
        prom,
        "histogram_quantile(0.5, sum by (le) (http_server_request_duration_seconds_bucket{service_name=\"front\"}))",
    );
    let rates = prometheus_query(
        prom,
        "sum by (client, server) (rate(traces_service_graph_request_total{client=~\"driver|front\"}[1m]))",
    );
    drop(server);
    let out = agent.stop();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(out.status.success(), "{}", out.stderr);
    let named = |m: &Value, k: &str| m[k].as_str().unwrap_or_default().to_string();
    let mut edge_names: Vec<(String, String)> = totals
        .iter()
        .map(|(m, _)| (named(m, "client"), named(m, "server")))
        .collect();
    edge_names.sort();
    assert_eq!(
        edge_names,
        [("driver", "front"), ("front", "a"), ("front", "b")]
            .map(|(c, s)| (c.to_string(), s.to_string()))
            .to_vec()
    );
    assert!(
        totals.iter().all(|(_, v)| (*v - requests).abs() < 0.5),
        "{totals:?} vs {requests}"
    );
    for service in ["front", "a", "b"] {
        let got = red
            .iter()
            .find(|(m, _)| named(m, "service_name") == service);
        assert!(
            got.is_some_and(|(_, v)| (*v - requests).abs() < 0.5),
            "{service}: {red:?}"
        );
    }
    assert!(
        p50.first().is_some_and(|(_, v)| *v > 0.0 && v.is_finite()),
        "{p50:?}"
    );
    assert_eq!(rates.len(), 3, "{rates:?}");
    assert!(rates.iter().all(|(_, v)| *v > 0.0), "{rates:?}");
}

/// The data points a metrics receiver recorded, from the latest export that has any.
fn latest_export(path: &std::path::Path) -> Vec<Value> {
    let points: Vec<Value> = std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let last = points.iter().filter_map(|p| p["export"].as_u64()).max();
    points
        .into_iter()
        .filter(|p| p["export"].as_u64() == last)
        .collect()
}

/// The sum of `field` over the points named `name` whose resource and attributes hold `labels`.
fn point_total(points: &[Value], name: &str, field: &str, labels: &[(&str, &str)]) -> u64 {
    points
        .iter()
        .filter(|p| p["name"] == name)
        .filter(|p| {
            labels.iter().all(|(k, v)| {
                p["attributes"][*k].as_str() == Some(*v) || p["resource"][*k].as_str() == Some(*v)
            })
        })
        .filter_map(|p| p[field].as_u64())
        .sum()
}

/// Each server histogram point: buckets add up to its count, seconds, cumulative, and no
/// `error.type` on successes.
fn assert_server_points(points: &[Value]) {
    let server: Vec<&Value> = points
        .iter()
        .filter(|p| p["name"] == "http.server.request.duration")
        .collect();
    for p in &server {
        let buckets: u64 = p["bucket_counts"]
            .as_array()
            .expect("buckets")
            .iter()
            .filter_map(Value::as_u64)
            .sum();
        assert_eq!(Some(buckets), p["count"].as_u64(), "{p}");
        assert_eq!(p["unit"], "s");
        assert_eq!(p["temporality"], 2, "cumulative: {p}");
        assert!(
            p["attributes"]["error.type"].is_null(),
            "no error.type on successes: {p}"
        );
    }
}

/// `--output otlp` sends the RED histograms, the service graph and the agent's own figures as
/// OTLP metrics (every `OTEL_METRIC_EXPORT_INTERVAL`, and once more at shutdown) to a receiver
/// built on the official bindings, over gRPC and over HTTP: counts equal the requests sent.
#[test]
fn otlp_metrics_reach_a_collector_and_count_the_requests() {
    for protocol in ["grpc", "http/protobuf"] {
        let port = free_port();
        let dir = std::env::temp_dir().join(format!("sockspan-otlp-metrics-{port}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("dir");
        let (spans, metrics) = (dir.join("spans.jsonl"), dir.join("metrics.jsonl"));
        let mode = if protocol == "grpc" { "grpc" } else { "http" };
        let _receiver = sockspan_tests::python_fixture(
            "otlp_receiver.py",
            &[mode, &port.to_string(), spans.to_str().expect("path")],
            &[("METRICS_OUT", metrics.to_str().expect("path"))],
        );
        let endpoint = format!("http://127.0.0.1:{port}");
        let agent = Agent::start_with_env(
            "run",
            &["--output", "otlp", "--otlp-endpoint", &endpoint],
            &[
                ("OTEL_EXPORTER_OTLP_PROTOCOL", protocol),
                ("OTEL_METRIC_EXPORT_INTERVAL", "1000"),
            ],
        );
        let chain = Chain::start(chain_named("threaded"));
        let ids = chain.drive(6, 2, 4);
        let requests = ids.len() as u64 + 1;
        // Exports while the agent runs carry the counts so far; wait until one has them all.
        // The edges count spans as the linker hands them to the exporter, the agent's own
        // `spans_exported` once the collector has acknowledged them: an export can fall between
        // the two, so wait for both.
        let deadline = Instant::now() + Duration::from_secs(20);
        let complete = |points: &[Value]| {
            EDGES.iter().all(|(c, s)| {
                point_total(
                    points,
                    "traces_service_graph_request_total",
                    "value",
                    &edge(c, s),
                ) >= requests
            }) && point_total(
                points,
                "sockspan_spans_exported",
                "value",
                &[("service.name", "sockspan")],
            ) > 0
        };
        while !complete(&latest_export(&metrics)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(300));
        }
        let running = latest_export(&metrics);
        let out = agent.stop();
        assert!(out.status.success(), "{}", out.stderr);
        assert!(
            out.counter("metrics_exports") >= 2,
            "{protocol}: periodic exports and the last one: {}",
            out.stderr
        );
        assert_eq!(out.counter("metrics_exports_failed"), 0);
        for (c, s) in EDGES {
            assert_eq!(
                point_total(
                    &running,
                    "traces_service_graph_request_total",
                    "value",
                    &edge(c, s)
                ),
                requests,
                "{protocol}: edge {c} → {s}"
            );
        }
        for service in ["front", "a", "b"] {
            let labels = [("service.name", service), ("http.request.method", "GET")];
            assert_eq!(
                point_total(&running, "http.server.request.duration", "count", &labels),
                requests,
                "{protocol}: {service}'s SERVER requests, under its own resource"
            );
        }
        assert_server_points(&running);
        assert!(
            point_total(
                &running,
                "sockspan_spans_exported",
                "value",
                &[("service.name", "sockspan")]
            ) > 0,
            "{protocol}: the agent's own counters"
        );
        for own in [
            "sockspan_otlp_retries",
            "sockspan_otlp_queue_spans",
            "sockspan_cpu_milliseconds",
        ] {
            assert!(
                running.iter().any(|p| p["name"] == own),
                "{protocol}: {own} among the agent's figures"
            );
        }
        drop(chain);
        let _ = std::fs::remove_dir_all(&dir);
    }
}

/// The agent's own figures move while it runs: a burst through an 8 KiB ring (one 4 KiB record
/// fits) makes `sockspan_ring_full_drops_total` grow on `/metrics` before the agent stops; the
/// store's size and retention, the agent's CPU time and memory are there too.
#[test]
fn self_metrics_move_under_a_forced_ring_drop() {
    let ui = free_port();
    let (dir, agent) = store_agent(
        "ring-drop",
        ui,
        &["--ring-bytes", "8192", "--capture-bytes", "4096"],
    );
    let port = free_port();
    let _server =
        sockspan_tests::python_fixture("echo_server.py", &["127.0.0.1", &port.to_string()], &[]);
    let _ = run_ok(
        Command::new("python3")
            .arg(fixture("burst_client.py"))
            .args([&port.to_string(), "2000", "4096"]),
        Duration::from_mins(1),
    );
    let url = format!("http://127.0.0.1:{ui}/metrics");
    let deadline = Instant::now() + Duration::from_secs(10);
    let counter = |scraped: &Value, name: &str| {
        total(
            scraped,
            &format!("sockspan_{name}"),
            &format!("sockspan_{name}_total"),
            &[],
        )
    };
    let gauge = |scraped: &Value, name: &str| {
        let family = format!("sockspan_{name}");
        total(scraped, &family, &family, &[])
    };
    let mut scraped = scrape(&url);
    while counter(&scraped, "ring_full_drops") == 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(300));
        scraped = scrape(&url);
    }
    let out = agent.stop();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(out.status.success(), "{}", out.stderr);
    let drops = counter(&scraped, "ring_full_drops");
    assert!(drops > 0, "ring drops on /metrics while running");
    assert!(
        drops <= out.counter("ring_full_drops"),
        "the final log line counts at least as many"
    );
    assert_eq!(gauge(&scraped, "store_retention_seconds"), 24 * 3600);
    for name in ["store_file_bytes", "resident_memory_kib"] {
        assert!(gauge(&scraped, name) > 0, "{name}");
    }
    assert!(counter(&scraped, "cpu_milliseconds") > 0);
}

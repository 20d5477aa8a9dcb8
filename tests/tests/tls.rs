//! Root integration tests of TLS: real OpenSSL stacks (curl, nginx terminating TLS, Python's
//! `ssl`) with a certificate the test makes, no tracing library loaded; the plaintext comes
//! from the OpenSSL probes and the spans must be those of the cleartext, never of ciphertext.

use std::{collections::HashMap, process::Command, time::Duration};

use serde_json::Value;
use sockspan_tests::{Agent, Nginx, free_port, python_fixture, run_ok, self_signed_certificate};

fn attr<'a>(span: &'a Value, key: &str) -> &'a Value {
    &span["attributes"][key]
}

fn port_of(span: &Value) -> Option<u16> {
    attr(span, "server.port")
        .as_u64()
        .and_then(|p| u16::try_from(p).ok())
}

fn kind(span: &Value) -> &str {
    span["kind"].as_str().expect("kind")
}

/// curl → nginx (TLS) → front (plain HTTP, one thread per request) → backend (HTTPS, Python
/// `ssl`), each a real process.
struct TlsChain {
    _backend: sockspan_tests::Proc,
    _front: sockspan_tests::Proc,
    nginx: Nginx,
    front: u16,
    backend: u16,
    dir: std::path::PathBuf,
}

/// The chain's HTTPS back end (Python `ssl`, service `tls-backend`) on a free port, serving
/// certificate `cert` with its `key`.
fn https_backend(cert: &std::path::Path, key: &std::path::Path) -> (sockspan_tests::Proc, u16) {
    let port = free_port();
    let proc = python_fixture(
        "tls_chain.py",
        &[
            "backend",
            &port.to_string(),
            &cert.display().to_string(),
            &key.display().to_string(),
        ],
        &[("OTEL_SERVICE_NAME", "tls-backend")],
    );
    (proc, port)
}

impl TlsChain {
    fn start() -> Self {
        let dir = std::env::temp_dir().join(format!("sockspan-tls-{}", free_port()));
        let (cert, key) = self_signed_certificate(&dir);
        let (backend_proc, backend) = https_backend(&cert, &key);
        let front = free_port();
        let front_proc = python_fixture(
            "tls_chain.py",
            &["front", &front.to_string(), &backend.to_string()],
            &[("OTEL_SERVICE_NAME", "tls-front")],
        );
        let nginx = Nginx::tls_proxy(front, &cert, &key);
        Self {
            _backend: backend_proc,
            _front: front_proc,
            nginx,
            front,
            backend,
            dir,
        }
    }

    /// One curl per batch of `paths`, `parallel` or one after another on one kept-alive TLS
    /// connection; each request carries a bearer token that must reach no output.
    fn curl(&self, paths: &[String], parallel: bool) {
        let mut cmd = Command::new("curl");
        cmd.args(["-sfk", "--max-time", "30"])
            .args(["-H", "Authorization: Bearer SECRET-TLS-OUTER-9a3c"]);
        if parallel {
            cmd.arg("--parallel");
        }
        for path in paths {
            cmd.args(["-o", "/dev/null"])
                .arg(format!("https://127.0.0.1:{}{path}", self.nginx.port));
        }
        let _ = run_ok(&mut cmd, Duration::from_mins(1));
    }
}

impl Drop for TlsChain {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Every hop of the chain is a span with its real path, each the child of the one before,
/// whether TLS was terminated by nginx, spoken by Python's `ssl` or by curl; keep-alive TLS
/// connections and concurrent ones; no span from ciphertext; no secret in any output.
#[test]
fn every_hop_of_a_tls_chain_is_a_span_under_its_caller() {
    let chain = TlsChain::start();
    let agent = Agent::start_command("run", &["--output", "jsonl"]);
    // Five on their own connections, five on one kept-alive connection, five at once.
    for n in 0..5 {
        chain.curl(&[format!("/predict/{n}")], false);
    }
    chain.curl(
        &(10..15)
            .map(|n| format!("/predict/{n}"))
            .collect::<Vec<_>>(),
        false,
    );
    chain.curl(
        &(20..25)
            .map(|n| format!("/predict/{n}"))
            .collect::<Vec<_>>(),
        true,
    );
    let out = agent.stop();
    assert!(out.status.success(), "{}", out.stderr);
    let text = serde_json::to_string(&out.events).expect("json");
    for secret in ["SECRET-TLS-OUTER-9a3c", "SECRET-TLS-INNER-5e1d"] {
        assert!(!text.contains(secret), "{secret} leaked into the spans");
        assert!(!out.stderr.contains(secret), "{secret} leaked into the log");
    }

    let spans = &out.events;
    let by_parent: HashMap<&str, Vec<&Value>> =
        spans.iter().fold(HashMap::new(), |mut map, span| {
            if let Some(parent) = span["parent_span_id"].as_str() {
                map.entry(parent).or_default().push(span);
            }
            map
        });
    let child = |parent: &Value, kind_: &str, port: u16| -> Option<&Value> {
        let id = parent["span_id"].as_str()?;
        let found: Vec<&&Value> = by_parent
            .get(id)?
            .iter()
            .filter(|s| kind(s) == kind_ && port_of(s) == Some(port))
            .collect();
        (found.len() == 1).then(|| *found[0])
    };
    // Spans of the TLS hops come from plaintext, and say so.
    for span in spans
        .iter()
        .filter(|s| port_of(s) == Some(chain.nginx.port) || port_of(s) == Some(chain.backend))
    {
        assert_eq!(attr(span, "tls.protocol.name"), "tls", "{span:#}");
        assert!(
            span["name"]
                .as_str()
                .is_some_and(|n| n.starts_with("GET /")),
            "{span:#}"
        );
    }
    let curls: Vec<&Value> = spans
        .iter()
        .filter(|s| kind(s) == "CLIENT" && port_of(s) == Some(chain.nginx.port))
        .collect();
    assert_eq!(curls.len(), 15, "curl's spans");
    let mut whole = 0;
    let mut broken = Vec::new();
    for curl in &curls {
        let hops = child(curl, "SERVER", chain.nginx.port)
            .and_then(|nginx| child(nginx, "CLIENT", chain.front))
            .and_then(|proxied| child(proxied, "SERVER", chain.front))
            .and_then(|front| child(front, "CLIENT", chain.backend))
            .and_then(|call| child(call, "SERVER", chain.backend));
        match hops {
            Some(backend) => {
                assert_eq!(attr(backend, "url.scheme"), "https");
                assert_eq!(backend["resource"]["service.name"], "tls-backend");
                assert_eq!(
                    attr(backend, "url.path")
                        .as_str()
                        .map(|p| p.starts_with("/score/")),
                    Some(true)
                );
                whole += 1;
            }
            None => broken.push(curl["attributes"]["url.path"].to_string()),
        }
    }
    // ≥ 95 % of requests whole (the bar); in practice all of them.
    assert!(
        whole * 100 >= curls.len() * 95,
        "whole {whole}/15, broken: {broken:?}"
    );
}

/// `--no-runtime-probes tls` leaves the OpenSSL probes off: TLS connections give no span,
/// and none from their ciphertext either.
#[test]
fn with_tls_probes_off_tls_connections_give_no_span() {
    let chain = TlsChain::start();
    let agent = Agent::start_command("run", &["--output", "jsonl", "--no-runtime-probes", "tls"]);
    chain.curl(&["/predict/1".to_string(), "/predict/2".to_string()], false);
    let out = agent.stop();
    assert!(out.status.success(), "{}", out.stderr);
    let tls_spans = out
        .events
        .iter()
        .filter(|s| port_of(s) == Some(chain.nginx.port) || port_of(s) == Some(chain.backend))
        .count();
    assert_eq!(tls_spans, 0, "spans of TLS hops without the probes");
    // The cleartext hop between nginx and the front is still traced.
    assert!(
        out.events.iter().any(|s| port_of(s) == Some(chain.front)),
        "the cleartext hop"
    );
}

/// A kept-alive TLS connection opened (and used) before the agent started: its later requests
/// are client spans, and server spans each under its own client. The server thread already
/// waiting inside `SSL_read` when the probes attached misses that one read (a call in flight at
/// attach is not probed), so the server's view of the plaintext stream starts one request late:
/// its plaintext offsets no longer match the client's. On such a connection requests are keyed
/// by the TCP position of the record each began (both ends see the same), so every later
/// request pairs with its own client.
#[test]
fn a_tls_connection_older_than_the_agent_gives_spans_under_their_own_clients() {
    let chain = TlsChain::start();
    let mut client = sockspan_tests::Talking::start("tls_client.py", &[&chain.backend.to_string()]);
    assert_eq!(client.line("ready", Duration::from_secs(20)), "ready");
    let agent = Agent::start_command("run", &["--output", "jsonl"]);
    for n in 1..=4 {
        client.say(&format!("{n}"));
        let _ = client.line(&format!("ok {n} 200"), Duration::from_secs(20));
    }
    client.close_stdin();
    let out = agent.stop();
    assert!(out.status.success(), "{}", out.stderr);
    let on_backend: Vec<&Value> = out
        .events
        .iter()
        .filter(|s| port_of(s) == Some(chain.backend))
        .collect();
    let path = |s: &Value| attr(s, "url.path").as_str().unwrap_or("").to_string();
    let mut client_paths: Vec<String> = on_backend
        .iter()
        .filter(|s| kind(s) == "CLIENT")
        .map(|s| path(s))
        .collect();
    client_paths.sort();
    assert_eq!(
        client_paths,
        ["/after/1", "/after/2", "/after/3", "/after/4"],
        "client spans"
    );
    let ids: HashMap<&str, String> = on_backend
        .iter()
        .filter(|s| kind(s) == "CLIENT")
        .map(|s| (s["span_id"].as_str().expect("id"), path(s)))
        .collect();
    let servers: Vec<&&Value> = on_backend.iter().filter(|s| kind(s) == "SERVER").collect();
    assert!(
        servers.len() >= 3,
        "server spans of the requests after the first"
    );
    // Each the child of its own client span: the two ends' plaintext offsets differ (the
    // server's count began a request late), the TCP positions of the records they came in
    // agree.
    for server in servers {
        assert_eq!(attr(server, "tls.protocol.name"), "tls");
        let parent = server["parent_span_id"].as_str();
        assert_eq!(
            parent.and_then(|p| ids.get(p)),
            Some(&path(server)),
            "{server:#}\n{}",
            out.counters
        );
    }
}

/// The bearer token of the outer hop and the inner one reach none of the other outputs either:
/// OTLP spans and metrics as an official receiver decodes them, the store, the query API and
/// `/metrics` (JSON lines are checked above).
#[test]
fn tls_secrets_reach_no_output() {
    let chain = TlsChain::start();
    let outputs = sockspan_tests::every_output(
        || {
            for n in 0..3 {
                chain.curl(&[format!("/predict/{n}")], false);
            }
        },
        &[
            "/api/services",
            "/api/traces?service=tls-front&limit=50",
            "/api/traces?service=tls-backend&limit=50",
        ],
    );
    for (text, what) in [
        (&outputs.otlp, "OTLP"),
        (&outputs.api, "the query API and /metrics"),
        (&outputs.dump, "the store's spans"),
    ] {
        assert!(
            text.contains("tls-backend"),
            "{what} holds the TLS hop's spans"
        );
        assert!(!text.contains("SECRET-TLS-"), "a secret leaked into {what}");
    }
    assert!(
        outputs.otlp.contains("http.server.request.duration")
            && outputs.api.contains("http_server_request_duration_seconds"),
        "the metrics were among the outputs checked"
    );
    assert!(
        !outputs.store_file.windows(11).any(|w| w == b"SECRET-TLS-"),
        "a secret leaked into the store file"
    );
}

/// curl → Go front → Go leaf, every hop over TLS spoken by Go's `crypto/tls` (both Go services
/// serve HTTPS, the front calls the leaf over HTTPS): the Go probes give each hop's plaintext,
/// the goroutine rule links the front's call to the request it serves, and the leaf's server
/// span pairs with that call. The Go programs run before the agent, whose start attaches the
/// probes to their executable.
#[test]
fn a_go_https_chain_is_traced_through_crypto_tls() {
    let dir = std::env::temp_dir().join(format!("sockspan-gotls-{}", free_port()));
    let (cert, key) = self_signed_certificate(&dir);
    let (front, leaf) = (free_port(), free_port());
    let exe = sockspan_tests::chains::go_service(false);
    let go = |args: &[String]| {
        let mut cmd = Command::new(&exe);
        cmd.args(args)
            .env("GO_TLS_CERT", &cert)
            .env("GO_TLS_KEY", &key)
            .env("GO_SEQUENTIAL", "1")
            .env("OTEL_SERVICE_NAME", format!("go-{}", args[0]));
        sockspan_tests::chains::start_ready(cmd, &args[0])
    };
    let _leaf = go(&["leaf".into(), leaf.to_string()]);
    let _front = go(&["front".into(), front.to_string(), format!("leaf={leaf}")]);
    let curl = |ids: &[u32], parallel: bool, http2: bool| {
        let mut cmd = Command::new("curl");
        cmd.args(["-sfk", "--max-time", "30"])
            .args(["-H", "Authorization: Bearer SECRET-GO-TLS-77d1"])
            .arg(if http2 { "--http2" } else { "--http1.1" });
        if parallel {
            cmd.arg("--parallel");
        }
        for id in ids {
            cmd.args(["-o", "/dev/null"])
                .arg(format!("https://127.0.0.1:{front}/front/{id}"));
        }
        let _ = run_ok(&mut cmd, Duration::from_mins(1));
    };
    let agent = Agent::start_command("run", &["--output", "jsonl"]);
    for id in 0..10 {
        curl(&[id], false, false);
    }
    curl(&(10..20).collect::<Vec<_>>(), true, false);
    // HTTP/2 over TLS (ALPN h2, which Go's server offers).
    curl(&(30..33).collect::<Vec<_>>(), false, true);
    let out = agent.stop();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(out.status.success(), "{}", out.stderr);
    assert!(
        out.stderr.contains("TLS probes attached") && out.stderr.contains("go_service"),
        "the Go executable's probes: {}",
        out.stderr
    );
    let text = serde_json::to_string(&out.events).expect("json");
    assert!(!text.contains("SECRET-GO-TLS-"), "a secret leaked");
    let spans = &out.events;
    let path = |s: &Value| attr(s, "url.path").as_str().unwrap_or("").to_string();
    let find = |kind_: &str, p: &str| -> Vec<&Value> {
        spans
            .iter()
            .filter(|s| kind(s) == kind_ && path(s) == p)
            .collect()
    };
    for span in spans
        .iter()
        .filter(|s| port_of(s) == Some(front) || port_of(s) == Some(leaf))
    {
        assert_eq!(attr(span, "tls.protocol.name"), "tls", "{span:#}");
    }
    let mut whole = 0;
    let mut broken = Vec::new();
    for id in 0..20 {
        let server = find("SERVER", &format!("/front/{id}"));
        let call = find("CLIENT", &format!("/leaf/{id}"));
        let leaf_server = find("SERVER", &format!("/leaf/{id}"));
        let linked = match (server.as_slice(), call.as_slice(), leaf_server.as_slice()) {
            ([server], [call], [leaf_server]) => {
                assert_eq!(attr(server, "url.scheme"), "https", "{server:#}");
                call["parent_span_id"] == server["span_id"]
                    && leaf_server["parent_span_id"] == call["span_id"]
                    && leaf_server["trace_id"] == server["trace_id"]
            }
            _ => false,
        };
        if linked {
            whole += 1;
        } else {
            broken.push(id);
        }
    }
    assert!(whole >= 19, "whole {whole}/20, broken: {broken:?}");
    for id in 30..33 {
        let server = find("SERVER", &format!("/front/{id}"));
        assert_eq!(server.len(), 1, "the HTTP/2 request {id}");
        assert_eq!(attr(server[0], "network.protocol.version"), "2");
        assert_eq!(find("CLIENT", &format!("/leaf/{id}")).len(), 1);
    }
}

/// The client of `tests/fixtures/static_tls/client.c`, built once per test process with OpenSSL
/// linked into the executable (Debian's `libssl.a`, from libssl-dev).
fn static_openssl_client() -> std::path::PathBuf {
    static BUILT: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();
    BUILT
        .get_or_init(|| {
            let out = sockspan_tests::target_dir().join("fixtures/static_tls_client");
            std::fs::create_dir_all(out.parent().expect("folder")).expect("fixture folder");
            let _ = run_ok(
                Command::new("gcc")
                    .args(["-O1", "-Wall", "-Werror", "-o"])
                    .arg(&out)
                    .arg(sockspan_tests::fixture("static_tls/client.c"))
                    .args(["-Wl,-Bstatic", "-lssl", "-lcrypto", "-Wl,-Bdynamic"])
                    .args(["-lpthread", "-ldl"]),
                Duration::from_mins(2),
            );
            out
        })
        .clone()
}

/// A client with OpenSSL linked into its executable (no libssl mapped, as in services that
/// bundle their own) is traced through the same probes, attached to the executable: each of its
/// requests on one kept-alive TLS connection is a CLIENT span with its path, the parent of the
/// Python back end's SERVER span.
#[test]
fn an_executable_with_openssl_linked_in_is_traced() {
    let dir = std::env::temp_dir().join(format!("sockspan-static-tls-{}", free_port()));
    let (cert, key) = self_signed_certificate(&dir);
    let (_backend, backend) = https_backend(&cert, &key);
    let mut cmd = Command::new(static_openssl_client());
    cmd.args([&backend.to_string(), "4"]);
    let mut client = sockspan_tests::Talking::spawn(cmd, "static OpenSSL client");
    assert_eq!(client.line("ready", Duration::from_secs(20)), "ready");
    let maps = std::fs::read_to_string(format!("/proc/{}/maps", client.proc.pid())).expect("maps");
    assert!(
        !maps.contains("libssl"),
        "the client maps no libssl:\n{maps}"
    );
    // Running before the agent: its executable gets the probes as the agent starts.
    let agent = Agent::start_command("run", &["--output", "jsonl"]);
    client.say("go");
    for n in 1..=4 {
        let _ = client.line(&format!("ok {n} 200"), Duration::from_secs(20));
    }
    let out = agent.stop();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(out.status.success(), "{}", out.stderr);
    assert!(out.counter("tls_libraries_probed") >= 1, "{}", out.counters);
    let on_backend: Vec<&Value> = out
        .events
        .iter()
        .filter(|s| port_of(s) == Some(backend))
        .collect();
    let clients: HashMap<&str, &Value> = on_backend
        .iter()
        .filter(|s| kind(s) == "CLIENT")
        .map(|s| (s["span_id"].as_str().expect("span id"), *s))
        .collect();
    let mut paths: Vec<&str> = clients
        .values()
        .map(|s| attr(s, "url.path").as_str().unwrap_or(""))
        .collect();
    paths.sort_unstable();
    assert_eq!(paths, ["/static/1", "/static/2", "/static/3", "/static/4"]);
    for span in clients.values() {
        assert_eq!(attr(span, "tls.protocol.name"), "tls", "{span:#}");
        assert_eq!(
            span["resource"]["process.pid"],
            client.proc.pid(),
            "{span:#}"
        );
    }
    let servers: Vec<&&Value> = on_backend.iter().filter(|s| kind(s) == "SERVER").collect();
    assert_eq!(servers.len(), 4, "the back end's spans");
    for server in servers {
        let parent = server["parent_span_id"]
            .as_str()
            .and_then(|p| clients.get(p));
        assert_eq!(
            parent.map(|c| attr(c, "url.path")),
            Some(attr(server, "url.path")),
            "{server:#}"
        );
    }
}

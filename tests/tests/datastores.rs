//! Root integration tests of datastore spans: real Redis, PostgreSQL, MariaDB and memcached
//! servers on loopback, a front service calling them through their usual Python clients with
//! pooled connections and concurrency, no tracing library loaded; assertions on the spans
//! `sockspan run` exported.

use std::{
    collections::HashMap,
    process::Command,
    time::{Duration, Instant},
};

use serde_json::Value;
use sockspan_tests::{
    Agent, Proc, Talking, datastores, datastores::Server, every_output, fixture, free_port, run_ok,
};

fn attr<'a>(span: &'a Value, key: &str) -> &'a Value {
    &span["attributes"][key]
}

fn text<'a>(span: &'a Value, key: &str) -> &'a str {
    attr(span, key).as_str().unwrap_or("")
}

fn kind(span: &Value) -> &str {
    span["kind"].as_str().expect("kind")
}

fn id(span: &Value) -> &str {
    span["span_id"].as_str().expect("span_id")
}

struct Stack {
    redis: Server,
    postgres: Server,
    mariadb: Server,
    memcached: Server,
    _dns: Server,
    front: Proc,
    front_port: u16,
}

impl Stack {
    fn start() -> Self {
        Self::start_warm(0)
    }

    /// With `warm` bundles of client connections opened (and used) before it returns: older
    /// than an agent started afterwards.
    fn start_warm(warm: usize) -> Self {
        let (redis, postgres, mariadb, memcached) = (
            datastores::redis(),
            datastores::postgres(),
            datastores::mariadb(),
            datastores::memcached(),
        );
        let dns = datastores::dns();
        let front_port = free_port();
        let ports = [
            front_port,
            redis.port,
            postgres.port,
            mariadb.port,
            memcached.port,
        ]
        .map(|p| p.to_string());
        let mut args: Vec<&str> = ports.iter().map(String::as_str).collect();
        args.extend([datastores::PASSWORD, datastores::DNS_DOMAIN]);
        // The front resolves names through the test's DNS server: its own mount namespace
        // with that server's resolv.conf (the host's is untouched).
        let mut cmd = Command::new("unshare");
        cmd.env("WARM_BUNDLES", warm.to_string())
            .env("OTEL_SERVICE_NAME", "datastore-front")
            .args(["--mount", "--propagation", "private", "sh", "-c"])
            .arg(format!(
                "mount --bind {} /etc/resolv.conf && exec python3 \"$0\" \"$@\"",
                dns.resolv_conf().display()
            ))
            .arg(fixture("datastore_front.py"))
            .args(&args);
        let front = Talking::spawn(cmd, "datastore_front.py")
            .ready("datastore_front.py", Duration::from_mins(1));
        Self {
            redis,
            postgres,
            mariadb,
            memcached,
            _dns: dns,
            front,
            front_port,
        }
    }

    /// `requests` GETs of `path_of(i)`, `width` at a time, each on a connection of its own.
    fn drive(&self, requests: usize, width: usize, path_of: impl Fn(usize) -> String) {
        drive(self.front_port, requests, width, path_of);
    }
}

/// `requests` GETs of `path_of(i)` on the front at `port`, `width` at a time, each on a
/// connection of its own.
fn drive(port: u16, requests: usize, width: usize, path_of: impl Fn(usize) -> String) {
    let deadline = Instant::now() + Duration::from_mins(2);
    let mut i = 0;
    while i < requests {
        assert!(Instant::now() < deadline, "requests took over 2 minutes");
        let batch: Vec<String> = (i..(i + width).min(requests))
            .map(|n| format!("http://127.0.0.1:{port}{}", path_of(n)))
            .collect();
        i += batch.len();
        let mut curl = Command::new("curl");
        curl.args(["-sf", "--max-time", "30", "--parallel", "--no-keepalive"]);
        for url in &batch {
            curl.args(["-o", "/dev/null", url]);
        }
        let _ = run_ok(&mut curl, Duration::from_mins(1));
    }
}

/// The front's SERVER span per request, and every CLIENT span by its parent.
fn front_requests<'a>(
    spans: &'a [Value],
    front_port: u16,
    path_prefix: &str,
) -> (Vec<&'a Value>, HashMap<&'a str, Vec<&'a Value>>) {
    let fronts: Vec<&Value> = spans
        .iter()
        .filter(|s| {
            kind(s) == "SERVER"
                && attr(s, "server.port").as_i64() == Some(i64::from(front_port))
                && text(s, "url.path").starts_with(path_prefix)
        })
        .collect();
    let mut children: HashMap<&str, Vec<&Value>> = HashMap::new();
    for span in spans.iter().filter(|s| kind(s) == "CLIENT") {
        if let Some(parent) = span["parent_span_id"].as_str() {
            children.entry(parent).or_default().push(span);
        }
    }
    (fronts, children)
}

fn of_system<'a>(children: &[&'a Value], system: &str) -> Vec<&'a Value> {
    children
        .iter()
        .copied()
        .filter(|s| text(s, "db.system.name") == system)
        .collect()
}

/// A summary of spans for failure messages.
fn show(spans: &[&Value]) -> String {
    spans
        .iter()
        .map(|s| {
            format!(
                "{} {} {} evidence {} port {} start {} end {}",
                s["name"],
                attr(s, "db.query.text"),
                attr(s, "db.response.status_code"),
                attr(s, "sockspan.parent.evidence"),
                attr(s, "network.peer.port"),
                s["start_time_unix_nano"],
                s["end_time_unix_nano"]
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn assert_no_secret(output: &str, what: &str) {
    for secret in [
        datastores::PASSWORD,
        "SECRET-VALUE-8c21",
        "SECRET-LITERAL-77ab",
        "SECRET-",
    ] {
        assert!(!output.contains(secret), "{secret} leaked into {what}");
    }
}

/// Every request of the front service has its datastore calls as children, with the database
/// conventions' attributes; pooled connections, concurrent requests, start-up and
/// authentication exchanges included; and no password, value or literal reaches any output.
#[test]
// Every datastore child of a request is checked in one place, protocol after protocol.
#[allow(clippy::too_many_lines)]
fn datastore_calls_are_children_of_the_request_that_made_them() {
    let stack = Stack::start();
    let agent = Agent::start_command("run", &["--output", "jsonl"]);
    // Sequential first (connections opened), then concurrent ones (the pool grows and is
    // reused).
    stack.drive(6, 1, |n| format!("/order/{n}"));
    stack.drive(24, 4, |n| format!("/order/{}", 100 + n));
    let out = agent.stop();
    assert!(out.status.success(), "{}", out.stderr);
    let all = serde_json::to_string(&out.events).expect("json");
    assert_no_secret(&all, "the spans");
    assert_no_secret(&out.stderr, "the log");

    let (fronts, children) = front_requests(&out.events, stack.front_port, "/order/");
    assert_eq!(fronts.len(), 30, "front spans");
    for front in &fronts {
        let kids = children.get(id(front)).cloned().unwrap_or_default();
        let context = format!("{}:\n{}", front["name"], show(&kids));

        let redis = of_system(&kids, "redis");
        // A connection's opening (HELLO with the password, CLIENT SETINFO …) belongs to the
        // request that opened it.
        let mut ops: Vec<&str> = redis
            .iter()
            .map(|s| text(s, "db.operation.name"))
            .filter(|op| *op != "HELLO" && !op.starts_with("CLIENT"))
            .collect();
        ops.sort_unstable();
        assert_eq!(ops, ["EXPIRE", "GET", "INCRBY", "SET"], "{context}");
        for span in &redis {
            assert_eq!(attr(span, "server.port"), stack.redis.port, "{context}");
            assert_eq!(attr(span, "db.namespace"), "0", "{context}");
        }
        let set = redis
            .iter()
            .find(|s| text(s, "db.operation.name") == "SET")
            .expect("SET");
        assert_eq!(attr(set, "db.query.text"), "SET ? ?", "{context}");

        let pg = of_system(&kids, "postgresql");
        assert_eq!(pg.len(), 2, "{context}");
        for span in &pg {
            assert_eq!(span["name"], "SELECT items", "{context}");
            assert_eq!(attr(span, "db.collection.name"), "items", "{context}");
            assert_eq!(
                attr(span, "db.namespace"),
                datastores::DATABASE,
                "{context}"
            );
            assert_eq!(attr(span, "server.port"), stack.postgres.port, "{context}");
        }
        let queries: Vec<&str> = pg.iter().map(|s| text(s, "db.query.text")).collect();
        assert!(
            queries.contains(&"SELECT id, name FROM items WHERE id = $1 AND name <> $2"),
            "parameterised text is kept: {context}"
        );
        assert!(
            queries.contains(&"SELECT count(*) FROM items WHERE name = ?"),
            "literals are `?`: {context}"
        );

        // PyMySQL opens a connection with `SET NAMES`.
        let my: Vec<&Value> = of_system(&kids, "mariadb")
            .into_iter()
            .filter(|s| text(s, "db.operation.name") != "SET")
            .collect();
        assert_eq!(my.len(), 1, "{context}");
        assert_eq!(my[0]["name"], "SELECT items", "{context}");
        assert_eq!(
            attr(my[0], "db.query.text"),
            "SELECT id, name FROM items WHERE id = ? AND name <> ?",
            "{context}"
        );
        assert_eq!(
            attr(my[0], "db.namespace"),
            datastores::DATABASE,
            "{context}"
        );
        assert_eq!(attr(my[0], "server.port"), stack.mariadb.port, "{context}");

        let mut dns: Vec<(&str, &str)> = kids
            .iter()
            .filter(|s| !attr(s, "dns.question.name").is_null())
            .map(|s| (text(s, "dns.question.type"), text(s, "dns.question.name")))
            .collect();
        dns.sort_unstable();
        let name = format!("features.{}", datastores::DNS_DOMAIN);
        assert_eq!(
            dns,
            [("A", name.as_str()), ("AAAA", name.as_str())],
            "{context}"
        );
        for span in kids
            .iter()
            .filter(|s| !attr(s, "dns.question.name").is_null())
        {
            assert_eq!(
                attr(span, "server.address"),
                datastores::DNS_ADDRESS,
                "{context}"
            );
            assert_eq!(attr(span, "server.port"), 53, "{context}");
        }

        let mc = of_system(&kids, "memcached");
        let mut ops: Vec<&str> = mc.iter().map(|s| text(s, "db.operation.name")).collect();
        ops.sort_unstable();
        assert_eq!(ops, ["get", "set"], "{context}");
        let get = mc
            .iter()
            .find(|s| text(s, "db.operation.name") == "get")
            .expect("get");
        assert_eq!(attr(get, "db.operation.batch.size"), 3, "{context}");
        assert_eq!(attr(get, "db.query.text"), "get ? ? ?", "{context}");
        assert_eq!(attr(get, "server.port"), stack.memcached.port, "{context}");
    }
    let _ = (&stack.front, &stack.postgres.pid(), &stack.mariadb.pid());
}

/// A failing call is an error span carrying the datastore's code, never its message.
#[test]
fn datastore_errors_carry_their_codes() {
    let stack = Stack::start();
    let agent = Agent::start_command("run", &["--output", "jsonl"]);
    stack.drive(2, 1, |_| "/fail".to_string());
    let out = agent.stop();
    assert!(out.status.success(), "{}", out.stderr);
    assert_no_secret(
        &serde_json::to_string(&out.events).expect("json"),
        "the spans",
    );
    let (fronts, children) = front_requests(&out.events, stack.front_port, "/fail");
    assert_eq!(fronts.len(), 2, "front spans");
    for front in &fronts {
        let kids = children.get(id(front)).cloned().unwrap_or_default();
        let context = format!("{}:\n{}", front["name"], show(&kids));
        let failed: Vec<(&str, &str)> = kids
            .iter()
            // Redis 7.0 refuses redis-py's `CLIENT SETINFO` when a connection opens.
            .filter(|s| {
                s["status"]["code"] == "ERROR"
                    && !text(s, "db.operation.name").starts_with("CLIENT")
            })
            .map(|s| {
                (
                    text(s, "db.system.name"),
                    text(s, "db.response.status_code"),
                )
            })
            .collect();
        for expected in [
            ("redis", "WRONGTYPE"),
            ("postgresql", "23505"),
            ("mariadb", "1062"),
            ("memcached", "CLIENT_ERROR"),
        ] {
            assert!(failed.contains(&expected), "{expected:?} in {context}");
        }
        assert_eq!(failed.len(), 4, "{context}");
    }
}

/// The password of every datastore login, the values written and the literals of every query
/// reach none of the outputs: OTLP as an official receiver decodes it, the store, the query
/// API (JSON lines are checked above).
#[test]
fn datastore_secrets_reach_no_output() {
    let stack = Stack::start();
    let outputs = every_output(
        || {
            stack.drive(3, 1, |n| format!("/order/{n}"));
            stack.drive(1, 1, |_| "/fail".to_string());
        },
        &[
            "/api/services",
            "/api/traces?service=datastore-front&limit=50",
            "/api/traces?service=postgres&limit=50",
            "/api/dependencies",
        ],
    );
    for (text, what) in [
        (&outputs.otlp, "OTLP"),
        (&outputs.api, "the query API"),
        (&outputs.dump, "the store's spans"),
    ] {
        assert!(
            text.contains("db.query.text"),
            "{what} holds datastore spans"
        );
        assert_no_secret(text, what);
    }
    assert!(
        !outputs.store_file.windows(7).any(|w| w == b"SECRET-"),
        "a secret leaked into the store file"
    );
}

/// Connections a client pool opened before the agent started (an agent restarted under running
/// services): their start-up and authentication were never seen, yet later commands are spans,
/// children of the requests that made them. Redis, memcached and DNS carry everything a span
/// needs in each request; MariaDB's client end is picked up at the next command it writes whole
/// (named `mysql`: only the greeting says `MariaDB`); PostgreSQL's client end is not (a client
/// may pipeline: only its server's end is picked up mid-stream, and the front's spans are the
/// client's).
#[test]
fn pooled_connections_older_than_the_agent_give_spans_too() {
    let stack = Stack::start_warm(2);
    let agent = Agent::start_command("run", &["--output", "jsonl"]);
    stack.drive(6, 1, |n| format!("/order/{n}"));
    stack.drive(8, 2, |n| format!("/order/{}", 100 + n));
    let out = agent.stop();
    assert!(out.status.success(), "{}", out.stderr);
    assert_no_secret(
        &serde_json::to_string(&out.events).expect("json"),
        "the spans",
    );
    let (fronts, children) = front_requests(&out.events, stack.front_port, "/order/");
    assert_eq!(fronts.len(), 14, "front spans");
    for front in &fronts {
        let kids = children.get(id(front)).cloned().unwrap_or_default();
        let context = format!("{}:\n{}", front["name"], show(&kids));
        let count = |system: &str| of_system(&kids, system).len();
        let redis = of_system(&kids, "redis")
            .into_iter()
            .filter(|s| {
                let op = text(s, "db.operation.name");
                op != "HELLO" && !op.starts_with("CLIENT")
            })
            .count();
        assert_eq!(redis, 4, "{context}");
        assert_eq!(count("memcached"), 2, "{context}");
        // PostgreSQL CLIENT spans only come from connections the pool opened after the agent
        // started, and are then right.
        assert!(count("postgresql") <= 2, "{context}");
        // MySQL's classic protocol is half duplex: the reply to a command a client writes whole
        // starts at a packet boundary. Its one query per request is there.
        assert_eq!(count("mariadb") + count("mysql"), 1, "{context}");
        for span in of_system(&kids, "postgresql")
            .into_iter()
            .chain(of_system(&kids, "mariadb"))
            .chain(of_system(&kids, "mysql"))
        {
            if text(span, "db.operation.name") != "SET" {
                assert_eq!(span["name"], "SELECT items", "{context}");
            }
        }
    }
}

/// In an asyncio front (aiohttp, redis.asyncio, psycopg's `AsyncConnection`) every request is a
/// task of one event-loop thread, so the thread rule can name no parent: the task rule alone
/// makes each datastore call the child of the request whose task made it, sequential and
/// concurrent, with pooled connections.
#[test]
fn datastore_calls_of_an_asyncio_front_are_children_of_their_request() {
    let (redis, postgres) = (datastores::redis(), datastores::postgres());
    let front_port = free_port();
    let mut cmd = Command::new("python3");
    cmd.env("OTEL_SERVICE_NAME", "datastore-front-async")
        .arg(fixture("datastore_front_async.py"))
        .args([
            &front_port.to_string(),
            &redis.port.to_string(),
            &postgres.port.to_string(),
            datastores::PASSWORD,
        ]);
    let _front = Talking::spawn(cmd, "datastore_front_async.py")
        .ready("datastore_front_async.py", Duration::from_mins(1));
    let agent = Agent::start_command("run", &["--output", "jsonl"]);
    drive(front_port, 6, 1, |n| format!("/order/{n}"));
    drive(front_port, 24, 4, |n| format!("/order/{}", 100 + n));
    let out = agent.stop();
    assert!(out.status.success(), "{}", out.stderr);
    assert!(
        out.counter("asyncio_processes_followed") >= 1,
        "{}",
        out.counters
    );
    let (fronts, children) = front_requests(&out.events, front_port, "/order/");
    assert_eq!(fronts.len(), 30, "front spans");
    for front in &fronts {
        let kids = children.get(id(front)).cloned().unwrap_or_default();
        let context = format!(
            "{} {} start {} end {}:\n{}\nall fronts:\n{}",
            front["name"],
            attr(front, "url.path"),
            front["start_time_unix_nano"],
            front["end_time_unix_nano"],
            show(&kids),
            fronts
                .iter()
                .map(|f| format!(
                    "{} {} {} kids {}",
                    attr(f, "url.path"),
                    f["start_time_unix_nano"],
                    f["end_time_unix_nano"],
                    children.get(id(f)).map_or(0, Vec::len)
                ))
                .collect::<Vec<_>>()
                .join("\n")
        );
        let mut ops: Vec<&str> = of_system(&kids, "redis")
            .iter()
            .map(|s| text(s, "db.operation.name"))
            .filter(|op| *op != "HELLO" && !op.starts_with("CLIENT") && *op != "AUTH")
            .collect();
        ops.sort_unstable();
        assert_eq!(ops, ["EXPIRE", "GET", "INCRBY", "SET"], "{context}");
        let pg = of_system(&kids, "postgresql");
        assert_eq!(pg.len(), 1, "{context}");
        assert_eq!(
            attr(pg[0], "db.query.text"),
            "SELECT id, name FROM items WHERE id = $1",
            "{context}"
        );
        assert_eq!(
            attr(pg[0], "db.namespace"),
            datastores::DATABASE,
            "{context}"
        );
        for kid in &kids {
            assert_eq!(kid["trace_id"], front["trace_id"], "{context}");
        }
    }
}

/// Runs `datastore_tls_client.py` for `system` (`postgres` or `mysql`: a client over TLS to
/// the server on `port` that prints `ready`, waits for a line, then makes five queries, `ok N`
/// after each) under an agent started in between; the agent's output and the client's pid.
fn tls_client_run(system: &str, port: u16) -> (sockspan_tests::Output, u32) {
    let mut cmd = Command::new("python3");
    cmd.arg(fixture("datastore_tls_client.py")).args([
        system,
        &port.to_string(),
        datastores::PASSWORD,
    ]);
    let mut client = Talking::spawn(cmd, "datastore_tls_client.py");
    assert_eq!(client.line("ready", Duration::from_mins(1)), "ready");
    let agent = Agent::start_command("run", &["--output", "jsonl"]);
    client.say("go");
    for n in 1..=5 {
        let _ = client.line(&format!("ok {n}"), Duration::from_secs(30));
    }
    client.wait_for_exit(Duration::from_secs(30));
    let out = agent.stop();
    assert!(out.status.success(), "{}", out.stderr);
    (out, client.proc.pid())
}

/// The five SELECT spans of a TLS client run ([`tls_client_run`]): `system`'s, with `query`
/// as their text, the database, and `tls` evidence; every span of the port from plaintext; the
/// planted literal and the password in none.
fn assert_tls_selects(
    out: &sockspan_tests::Output,
    pid: u32,
    port: u16,
    system: &str,
    query: &str,
) {
    let all = serde_json::to_string(&out.events).expect("json");
    assert!(!all.contains("SECRET-TLS-LITERAL"), "the literal leaked");
    assert!(!all.contains(datastores::PASSWORD), "the password leaked");
    let spans: Vec<&Value> = out
        .events
        .iter()
        .filter(|s| kind(s) == "CLIENT" && attr(s, "server.port") == port)
        .collect();
    let selects: Vec<&&Value> = spans
        .iter()
        .filter(|s| text(s, "db.operation.name") == "SELECT")
        .collect();
    assert_eq!(selects.len(), 5, "{}", show(&spans));
    for span in &selects {
        assert_eq!(attr(span, "db.system.name"), system, "{span:#}");
        assert_eq!(attr(span, "db.query.text"), query, "{span:#}");
        assert_eq!(attr(span, "db.namespace"), datastores::DATABASE, "{span:#}");
        assert_eq!(span["resource"]["process.pid"], pid, "{span:#}");
    }
    // Every span of the port came from plaintext: none without the TLS evidence.
    for span in out.events.iter().filter(|s| attr(s, "server.port") == port) {
        assert_eq!(attr(span, "tls.protocol.name"), "tls", "{span:#}");
    }
}

/// PostgreSQL over TLS (`sslmode=require`: an SSL request the server accepts, then a TLS
/// handshake): the programs recognise the handshake, not the SSL request, and the plaintext
/// from the TLS probes on the client's libssl (psycopg's wheel bundles its own, under a hashed
/// name) is recognised as PostgreSQL from its start-up message: every query is a CLIENT span
/// with its sanitised text, database and `tls` evidence; nothing from the ciphertext; the
/// literal in the queries reaches no output.
#[test]
fn postgres_over_tls_gives_spans_from_its_plaintext() {
    let postgres = datastores::postgres_tls();
    let (out, pid) = tls_client_run("postgres", postgres.port);
    assert_tls_selects(
        &out,
        pid,
        postgres.port,
        "postgresql",
        "SELECT id, name FROM items WHERE id = $1 AND name <> $2",
    );
}

/// MariaDB over TLS (`PyMySQL` with `ssl`): the greeting in cleartext names the system, the
/// client's short SSL request makes the programs treat the socket as TLS from there, and the
/// full handshake response (the database) and the queries come as plaintext from the TLS
/// probes: every query a CLIENT span with its sanitised text, database and `tls` evidence.
#[test]
fn mariadb_over_tls_gives_spans_from_its_plaintext() {
    let mariadb = datastores::mariadb_tls();
    let (out, pid) = tls_client_run("mysql", mariadb.port);
    assert_tls_selects(
        &out,
        pid,
        mariadb.port,
        "mariadb",
        "SELECT id, name FROM items WHERE id = ? AND name <> ?",
    );
}

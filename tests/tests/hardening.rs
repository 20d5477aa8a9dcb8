//! Root integration tests of the agent under faults it does not control: an OTLP back end that
//! is down, refusing, slow and failing, and hostile traffic through traced sockets.

use std::{
    io::{BufRead as _, BufReader},
    process::{Command, Stdio},
    sync::mpsc,
    time::Duration,
};

use serde_json::Value;
use sockspan_tests::{Agent, Proc, fixture, free_port, http_server};

/// A fixture whose stdout lines are all kept (`python_fixture` reads only the first).
struct Talking {
    proc: Proc,
    lines: mpsc::Receiver<String>,
}

impl Talking {
    fn start(script: &str, args: &[&str]) -> Self {
        let mut child = Command::new("python3")
            .arg(fixture(script))
            .args(args)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {script}: {e}"));
        let stdout = child.stdout.take().expect("stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Self {
            proc: Proc(child),
            lines,
        }
    }

    /// The next line starting with `prefix`, waiting at most `timeout`.
    fn line(&self, prefix: &str, timeout: Duration) -> String {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line.starts_with(prefix) => return line,
                Ok(_) => {}
                Err(e) => panic!("no line starting {prefix:?} within {timeout:?}: {e}"),
            }
        }
    }

    /// SIGTERM, then the line starting with `prefix` the process prints on the way out.
    fn stop(self, prefix: &str) -> String {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.proc.pid() as i32, libc::SIGTERM) };
        self.line(prefix, Duration::from_secs(10))
    }
}

/// `key=value` from the agent's final `stopped` log line.
fn stopped_field(stderr: &str, key: &str) -> u64 {
    let line = stderr
        .lines()
        .rev()
        .find(|l| l.contains("stopped"))
        .unwrap_or_else(|| panic!("no `stopped` line in:\n{stderr}"));
    line.split_whitespace()
        .find_map(|kv| kv.strip_prefix(&format!("{key}=")))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {key}= in {line}"))
}

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
    receiver.line("ready", Duration::from_secs(20));
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
    std::thread::sleep(Duration::from_secs(3));
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
    let started = stopped_field(&out.stderr, "spans_started");
    assert!(
        started >= 2 * requests,
        "{started} spans for {requests} requests"
    );
    assert_eq!(stopped_field(&out.stderr, "ring_full_drops"), 0);
    let failed = stopped_field(&out.stderr, "export_failed");
    let exported = stopped_field(&out.stderr, "spans_exported");
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

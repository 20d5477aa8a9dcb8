//! The TLS probes' cost: an HTTPS server answering sequential requests on one kept-alive TLS
//! connection; the server's CPU time per request under `sockspan run` with the TLS probes
//! attached and with `--no-runtime-probes tls`: the difference is what the probes cost the
//! traced program. Two servers: Python's `ssl` (OpenSSL, one thread per connection) and Go's
//! `net/http` (`crypto/tls`).

use std::{
    fmt::Write as _,
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Result, bail};
use sockspan_tests::{Agent, Proc, free_port, python_fixture, run_ok, self_signed_certificate};

/// Which TLS library the bench's server uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsServer {
    /// Python 3.11's `ssl` on the system's OpenSSL 3.0.
    OpenSsl,
    /// Go 1.19's `net/http` on `crypto/tls`.
    GoCryptoTls,
}

#[derive(Debug, Clone, Copy)]
pub struct TlsSample {
    pub probes: bool,
    pub requests: u64,
    /// The HTTPS server's CPU (user + system) per request, µs.
    pub server_cpu_us: f64,
    /// Wall time per request as the client saw it, µs.
    pub wall_us: f64,
}

/// `requests` sequential GETs on one kept-alive TLS connection (the certificate is the
/// bench's own, not checked).
const CLIENT: &str = "import http.client, ssl, sys\n\
    ctx = ssl.create_default_context(); ctx.check_hostname = False; ctx.verify_mode = ssl.CERT_NONE\n\
    c = http.client.HTTPSConnection('127.0.0.1', int(sys.argv[1]), context=ctx)\n\
    for i in range(int(sys.argv[2])):\n\
    \x20   c.request('GET', f'/score/{i}'); r = c.getresponse(); r.read()\n";

fn phase(bin: &Path, server: &Proc, port: u16, probes: bool, requests: u64) -> Result<TlsSample> {
    let mut cmd = Command::new(bin);
    cmd.args(["run", "--output", "jsonl"]);
    if !probes {
        cmd.args(["--no-runtime-probes", "tls"]);
    }
    let agent = Agent::spawn(cmd);
    let before = crate::bench::proc_cpu_seconds(server.pid());
    let started = Instant::now();
    let _ = run_ok(
        Command::new("python3")
            .args(["-c", CLIENT])
            .args([&port.to_string(), &requests.to_string()]),
        Duration::from_mins(10),
    );
    let wall = started.elapsed().as_secs_f64() * 1e6;
    let cpu = (crate::bench::proc_cpu_seconds(server.pid()) - before) * 1e6;
    let out = agent.stop();
    if !out.status.success() {
        bail!("the agent failed: {}", out.stderr);
    }
    let n = requests as f64;
    Ok(TlsSample {
        probes,
        requests,
        server_cpu_us: cpu / n,
        wall_us: wall / n,
    })
}

/// Interleaved rounds of both phases against one server.
pub fn rounds(bin: &Path, quick: bool, library: TlsServer) -> Result<Vec<TlsSample>> {
    let (requests, rounds) = if quick { (1_000, 1) } else { (3_000, 3) };
    let dir = std::env::temp_dir().join(format!("sockspan-bench-tls-{}", free_port()));
    let (cert, key) = self_signed_certificate(&dir);
    let port = free_port();
    let server = match library {
        TlsServer::OpenSsl => python_fixture(
            "tls_chain.py",
            &[
                "backend",
                &port.to_string(),
                &cert.display().to_string(),
                &key.display().to_string(),
            ],
            &[],
        ),
        TlsServer::GoCryptoTls => {
            // The chains' Go service, serving `/score/<id>` at once (no leaf wait).
            let mut cmd = Command::new(sockspan_tests::chains::go_service(false));
            cmd.args(["score", &port.to_string()])
                .env("GO_TLS_CERT", &cert)
                .env("GO_TLS_KEY", &key)
                .env("LEAF_MS", "0");
            sockspan_tests::chains::start_ready(cmd, "the Go HTTPS server")
        }
    };
    let mut samples = Vec::new();
    for probes in crate::bench::probe_phases("TLS probes", rounds, "off") {
        samples.push(phase(bin, &server, port, probes, requests)?);
    }
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(samples)
}

pub fn section(
    out: &mut String,
    library: TlsServer,
    samples: &[TlsSample],
    summary: impl Fn(&[f64], usize) -> (f64, String),
) {
    let of = |probes: bool, f: fn(&TlsSample) -> f64| -> Vec<f64> {
        samples
            .iter()
            .filter(|s| s.probes == probes)
            .map(f)
            .collect()
    };
    let requests = samples.first().map_or(0, |s| s.requests);
    let (heading, server, probes, calls) = match library {
        TlsServer::OpenSsl => (
            "6. TLS probes (OpenSSL)",
            "Python 3.11 `ssl` on OpenSSL 3.0, `tests/fixtures/tls_chain.py backend`",
            "the OpenSSL probes attached (`SSL_read_ex`/`SSL_write_ex` entry and return)",
            "each `SSL_read_ex`/`SSL_write_ex` call is two traps into the kernel (entry and return)",
        ),
        TlsServer::GoCryptoTls => (
            "9. TLS probes (Go `crypto/tls`)",
            "Go 1.19 `net/http` on `crypto/tls`, the chains' `go_service`",
            "the Go `crypto/tls` probes attached (`(*tls.Conn).Read`/`Write` entry and `RET`s)",
            "each `(*tls.Conn).Read`/`Write` call is two traps into the kernel (entry and return)",
        ),
    };
    let _ = writeln!(out, "\n## {heading}\n");
    let _ = writeln!(
        out,
        "Method: an HTTPS server ({server}) answering {requests} sequential GETs on one \
         kept-alive TLS connection from a Python `http.client`; the server's CPU time (user + \
         system, `/proc/PID/stat`) per request under `sockspan run` with {probes}, and under the \
         same agent with `--no-runtime-probes tls`.\n"
    );
    let _ = writeln!(
        out,
        "| phase | server CPU µs per request | wall µs per request |\n|---|---|---|"
    );
    let medians = crate::bench::probe_phase_rows(
        out,
        "off",
        &[
            (&|p| of(p, |s| s.server_cpu_us), 1),
            (&|p| of(p, |s| s.wall_us), 0),
        ],
        &summary,
    );
    let _ = writeln!(
        out,
        "\nThe probes cost the server **{:.1} µs of CPU per request** (difference of the medians): \
         {calls}.",
        medians[0] - medians[1]
    );
}

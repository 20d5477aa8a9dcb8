//! Section 9: a Flask chain (gunicorn's threaded worker, a front calling two downstreams over
//! `requests`) at saturation: untraced, under `sockspan run` as its README starts it, and under
//! OpenTelemetry's Python auto-instrumentation exporting OTLP/HTTP to a receiver on the same
//! host: what each costs the services themselves.

use std::{
    fmt::Write as _,
    path::Path,
    process::{Command, Stdio},
    time::Duration,
};

use anyhow::{Context as _, Result};
use sockspan_tests::{Proc, fixture, free_port, wait_listening};

use super::{Running, Variant, start_variant, stop, summary};
use crate::util::{command_ok, output_of};

/// OpenTelemetry's Python auto-instrumentation for this chain, and the chain's own packages.
const PACKAGES: &[&str] = &[
    "flask",
    "requests",
    "gunicorn",
    "opentelemetry-distro",
    "opentelemetry-exporter-otlp-proto-http",
    "opentelemetry-instrumentation-flask",
    "opentelemetry-instrumentation-requests",
];

const IMPORTS: &str = "import flask, requests, gunicorn, opentelemetry.instrumentation.flask, \
    opentelemetry.instrumentation.requests, opentelemetry.exporter.otlp.proto.http";

/// How the chain is traced in a phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Tracing {
    Untraced,
    Sockspan,
    OpenTelemetry,
}

impl Tracing {
    const ALL: [Self; 3] = [Self::Untraced, Self::Sockspan, Self::OpenTelemetry];

    fn label(self) -> &'static str {
        match self {
            Self::Untraced => "untraced",
            Self::Sockspan => "sockspan run (default output: store and UI)",
            Self::OpenTelemetry => {
                "OpenTelemetry auto-instrumentation (Flask, requests; OTLP/HTTP, batch)"
            }
        }
    }
}

#[derive(Debug, Clone)]
pub(super) struct FlaskSample {
    tracing: Tracing,
    rps: f64,
}

fn ensure_installed() -> Result<()> {
    if !command_ok(Command::new("python3").args(["-c", IMPORTS])) {
        crate::setup::pip_install(PACKAGES)?;
    }
    Ok(())
}

/// The three services, each a gunicorn with one threaded worker; with OpenTelemetry's
/// `sitecustomize` on the path when `otel` names the receiver's port. Returns the front's port.
fn start_chain(otel: Option<u16>) -> Result<(u16, Vec<Proc>)> {
    let (front, features, model) = (free_port(), free_port(), free_port());
    let auto = if otel.is_some() {
        // What `opentelemetry-instrument` does: its sitecustomize first on the path.
        Some(
            output_of(Command::new("python3").args([
                "-c",
                "import os, opentelemetry.instrumentation.auto_instrumentation as m; \
                 print(os.path.dirname(m.__file__))",
            ]))?
            .trim()
            .to_string(),
        )
    } else {
        None
    };
    let mut procs = Vec::new();
    for (role, port) in [("model", model), ("features", features), ("front", front)] {
        let mut cmd = Command::new("python3");
        cmd.args([
            "-m",
            "gunicorn",
            "-k",
            "gthread",
            "--threads",
            "8",
            "-w",
            "1",
        ])
        .args(["-b", &format!("127.0.0.1:{port}"), "--log-level", "warning"])
        .arg("--chdir")
        .arg(fixture(""))
        .arg("flask_chain:app")
        .env("ROLE", role)
        .env("FEATURES", features.to_string())
        .env("MODEL", model.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
        if let (Some(receiver), Some(auto)) = (otel, &auto) {
            cmd.env("PYTHONPATH", auto)
                .env("OTEL_SERVICE_NAME", role)
                .env("OTEL_TRACES_EXPORTER", "otlp")
                .env("OTEL_METRICS_EXPORTER", "none")
                .env("OTEL_LOGS_EXPORTER", "none")
                .env("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")
                .env(
                    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                    format!("http://127.0.0.1:{receiver}/v1/traces"),
                );
        }
        procs.push(Proc(cmd.spawn().context("start gunicorn")?));
        wait_listening(&format!("127.0.0.1:{port}"), Duration::from_secs(30));
    }
    Ok((front, procs))
}

/// Interleaved rounds of the three at saturation (`wrk -t2 -c16`), a fresh chain per phase.
pub(super) fn rounds(bin: &Path, quick: bool) -> Result<Vec<FlaskSample>> {
    ensure_installed()?;
    let (seconds, rounds) = if quick { (4, 1) } else { (8, 3) };
    let spans_file = std::env::temp_dir().join("sockspan-bench-flask.jsonl");
    let received = std::env::temp_dir().join("sockspan-bench-flask-otlp.jsonl");
    let mut out = Vec::new();
    for round in 0..rounds {
        for k in 0..Tracing::ALL.len() {
            let tracing = Tracing::ALL[(round + k) % Tracing::ALL.len()];
            eprintln!(
                "xtask bench: Flask chain round {} of {rounds}: {}",
                round + 1,
                tracing.label()
            );
            let otel_port = (tracing == Tracing::OpenTelemetry).then(free_port);
            let _receiver = otel_port.map(|port| {
                let _ = std::fs::remove_file(&received);
                sockspan_tests::Talking::start(
                    "otlp_receiver.py",
                    &["http", &port.to_string(), &received.display().to_string()],
                )
                .ready("otlp_receiver.py", Duration::from_secs(20))
            });
            let (front, _chain) = start_chain(otel_port)?;
            let agent: Option<Running> = if tracing == Tracing::Sockspan {
                start_variant(bin, Variant::default_store(), Some(&spans_file))?
            } else {
                None
            };
            // Warm up (imports, connection pools), then measure.
            let url = format!("http://127.0.0.1:{front}/predict/1");
            let _ = crate::bench_http::wrk_at(&url, 2, 16, 1)?;
            let (rps, _) = crate::bench_http::wrk_at(&url, 2, 16, seconds)?;
            if let Some(agent) = agent {
                stop(agent)?;
            }
            if tracing == Tracing::OpenTelemetry {
                // The batch processor exports every 5 s: some must have arrived by now.
                std::thread::sleep(Duration::from_secs(6));
                let spans = std::fs::read_to_string(&received).unwrap_or_default();
                anyhow::ensure!(
                    spans.lines().count() > 100,
                    "OpenTelemetry exported {} spans: its instrumentation did not load",
                    spans.lines().count()
                );
            }
            out.push(FlaskSample { tracing, rps });
        }
    }
    let _ = std::fs::remove_file(&spans_file);
    let _ = std::fs::remove_file(&received);
    Ok(out)
}

/// Section 9's text.
pub(super) fn section(out: &mut String, samples: &[FlaskSample]) {
    let of = |t: Tracing| {
        samples
            .iter()
            .filter(|s| s.tracing == t)
            .map(|s| s.rps)
            .collect::<Vec<_>>()
    };
    let (untraced, _) = summary(&of(Tracing::Untraced), 0);
    let _ = writeln!(
        out,
        "\n## 10. A Flask chain: sockspan beside OpenTelemetry's Python auto-instrumentation\n"
    );
    let _ = writeln!(
        out,
        "Method: `tests/fixtures/flask_chain.py`, three gunicorn services (one `gthread` worker, 8 \
         threads each), the front calling its two downstreams over `requests` keep-alive sessions; \
         `wrk -t2 -c16` at saturation against the front after a 1 s warm-up, a fresh chain per \
         phase, the three interleaved per round. sockspan: `sockspan run` with its default output \
         (store and UI). OpenTelemetry: the Flask and requests instrumentations through the SDK's \
         `sitecustomize` (as `opentelemetry-instrument`), batch span processor, OTLP/HTTP to \
         `tests/fixtures/otlp_receiver.py` on the same host. Target: sockspan ≥ 0.97 of \
         untraced.\n"
    );
    let _ = writeln!(
        out,
        "| variant | req/s | ratio to untraced |\n|---|---|---|"
    );
    for t in Tracing::ALL {
        let (rps, text) = summary(&of(t), 0);
        let _ = writeln!(
            out,
            "| {} | {text} | {:.3} |",
            t.label(),
            rps / untraced.max(1.0)
        );
    }
}

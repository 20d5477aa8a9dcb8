//! Metrics beside the spans: RED histograms per service and operation ([`red`]), the service
//! graph ([`graph`]) and the agent's own counters, in the Prometheus text format (version
//! 0.0.4) at `/metrics` on the API listener. Every exported span is counted (no sampling comes
//! before this stage); label cardinality is bounded per metric.

pub mod graph;
pub mod histogram;
pub mod red;

use std::{
    fmt::Write as _,
    sync::{Arc, Mutex, PoisonError},
};

use crate::trace::SpanData;

/// The metrics, shared between the pipeline (which records) and the API (which renders).
pub type SharedMetrics = Arc<Mutex<Metrics>>;

/// One of the agent's own figures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Own {
    /// Without the `sockspan_` prefix; counters end in `_total`.
    pub name: &'static str,
    pub help: &'static str,
    pub value: u64,
}

#[derive(Debug, Default)]
pub struct Metrics {
    pub red: red::Red,
    pub graph: graph::ServiceGraph,
    own: Vec<Own>,
    /// The agent traces: capture attached, runtime probes on the processes running then
    /// (`/ready`).
    pub ready: bool,
}

impl Metrics {
    #[must_use]
    pub fn shared() -> SharedMetrics {
        Arc::new(Mutex::new(Self::default()))
    }

    pub fn record(&mut self, spans: &[SpanData]) {
        for span in spans {
            self.red.record(span);
            self.graph.record(span);
        }
    }

    /// The agent's own figures as of now (the pipeline refreshes them on its ticks).
    pub fn set_own(&mut self, own: Vec<Own>) {
        self.own = own;
    }

    #[must_use]
    pub fn own(&self) -> &[Own] {
        &self.own
    }

    /// The Prometheus text exposition of everything.
    #[must_use]
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(16 * 1024);
        for family in red::Family::ALL {
            let name = family.name();
            let _ = writeln!(out, "# HELP {name} {}", family.help());
            let _ = writeln!(out, "# TYPE {name} histogram");
            let labels = family.labels();
            for (values, h) in self.red.series(family) {
                let pairs: Vec<(&str, &str)> = labels
                    .iter()
                    .copied()
                    .zip(values.iter().map(String::as_str))
                    .collect();
                histogram_lines(&mut out, name, &pairs, h);
            }
            if let Some(h) = self.red.overflow(family) {
                histogram_lines(&mut out, name, &[("otel_metric_overflow", "true")], h);
            }
        }
        self.render_graph(&mut out);
        for own in &self.own {
            let kind = if own.name.ends_with("_total") {
                "counter"
            } else {
                "gauge"
            };
            let _ = writeln!(out, "# HELP sockspan_{} {}", own.name, own.help);
            let _ = writeln!(out, "# TYPE sockspan_{} {kind}", own.name);
            let _ = writeln!(out, "sockspan_{} {}", own.name, own.value);
        }
        out
    }

    fn render_graph(&self, out: &mut String) {
        let edges: Vec<_> = self.graph.edges().collect();
        let labels = |(client, server, kind): &graph::Edge| -> Vec<(&'static str, String)> {
            let mut l = vec![("client", client.clone()), ("server", server.clone())];
            if !kind.is_empty() {
                l.push(("connection_type", (*kind).to_string()));
            }
            l
        };
        for (name, help, failed) in [
            (
                "traces_service_graph_request_total",
                "Requests between two services.",
                false,
            ),
            (
                "traces_service_graph_request_failed_total",
                "Failed requests between two services.",
                true,
            ),
        ] {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} counter");
            for (edge, stats) in &edges {
                let l = labels(edge);
                let pairs: Vec<(&str, &str)> = l.iter().map(|(k, v)| (*k, v.as_str())).collect();
                let value = if failed { stats.failed } else { stats.requests };
                let _ = writeln!(out, "{name}{} {value}", label_set(&pairs));
            }
        }
        for family in &graph::HISTOGRAMS {
            let name = family.prometheus_name();
            let _ = writeln!(out, "# HELP {name} {}", family.help);
            let _ = writeln!(out, "# TYPE {name} histogram");
            for (edge, stats) in &edges {
                let h = (family.pick)(stats);
                if h.count() == 0 {
                    continue;
                }
                let l = labels(edge);
                let pairs: Vec<(&str, &str)> = l.iter().map(|(k, v)| (*k, v.as_str())).collect();
                histogram_lines(out, &name, &pairs, h);
            }
        }
    }
}

/// `{a="x",b="y"}` with values escaped as the text format requires.
fn label_set(pairs: &[(&str, &str)]) -> String {
    let mut out = String::from("{");
    for (i, (k, v)) in pairs.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        let _ = write!(out, "{k}=\"");
        for c in v.chars() {
            match c {
                '\\' => out.push_str("\\\\"),
                '"' => out.push_str("\\\""),
                '\n' => out.push_str("\\n"),
                c => out.push(c),
            }
        }
        out.push('"');
    }
    out.push('}');
    out
}

fn histogram_lines(out: &mut String, name: &str, pairs: &[(&str, &str)], h: &histogram::Histogram) {
    for (le, count) in h.cumulative() {
        let mut with_le = pairs.to_vec();
        with_le.push(("le", &le));
        let _ = writeln!(out, "{name}_bucket{} {count}", label_set(&with_le));
    }
    let set = label_set(pairs);
    let _ = writeln!(out, "{name}_sum{set} {}", h.sum());
    let _ = writeln!(out, "{name}_count{set} {}", h.count());
}

/// Locks `metrics`, whatever a panicking holder left (the figures stay usable).
pub fn lock(metrics: &SharedMetrics) -> std::sync::MutexGuard<'_, Metrics> {
    metrics.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A finished HTTP span for tests: `service`'s `GET /x/{id}` answered 200 in `ms`.
#[cfg(test)]
pub fn test_span(
    service: &str,
    kind: crate::trace::span::SpanKind,
    id: u8,
    parent: Option<u8>,
    ms: u64,
) -> SpanData {
    SpanData {
        trace_id: [1; 16],
        span_id: [id; 8],
        parent_span_id: parent.map(|p| [p; 8]),
        links: Vec::new(),
        kind,
        name: "GET /x".into(),
        start_unix_nano: 1_000_000_000,
        end_unix_nano: 1_000_000_000 + ms * 1_000_000,
        attributes: vec![
            crate::trace::span::KeyValue::str("http.request.method", "GET"),
            crate::trace::span::KeyValue::str("http.route", "/x/{id}"),
            crate::trace::span::KeyValue::int("http.response.status_code", 200),
        ],
        status: crate::trace::span::SpanStatus::Unset,
        resource: std::sync::Arc::new(crate::trace::span::Resource::new(vec![
            crate::trace::span::KeyValue::owned("service.name".into(), service.into()),
        ])),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trace::span::{KeyValue, SpanKind, SpanStatus};

    use super::test_span as span;

    #[test]
    fn red_series_and_graph_edges_render_in_the_text_format() {
        let mut m = Metrics::default();
        // The server end is exported first (it ends first), then its client.
        m.record(&[
            span("b", SpanKind::Server, 2, Some(1), 10),
            span("a", SpanKind::Client, 1, None, 12),
        ]);
        let mut failing = span("b", SpanKind::Server, 4, Some(3), 1);
        failing.status = SpanStatus::Error("500".into());
        failing.attributes[2] = KeyValue::int("http.response.status_code", 500);
        m.record(&[span("a", SpanKind::Client, 3, None, 2), failing]);
        m.set_own(vec![Own {
            name: "spans_exported_total",
            help: "Spans handed to the exporter.",
            value: 4,
        }]);
        let text = m.render();
        let has = |line: &str| {
            assert!(text.lines().any(|l| l == line), "no `{line}` in:\n{text}");
        };
        has(
            r#"http_server_request_duration_seconds_count{service_name="b",http_request_method="GET",http_route="/x/{id}",http_response_status_code="200",error_type=""} 1"#,
        );
        has(
            r#"http_server_request_duration_seconds_count{service_name="b",http_request_method="GET",http_route="/x/{id}",http_response_status_code="500",error_type="500"} 1"#,
        );
        has(
            r#"http_server_request_duration_seconds_bucket{service_name="b",http_request_method="GET",http_route="/x/{id}",http_response_status_code="200",error_type="",le="0.01"} 1"#,
        );
        has(r#"traces_service_graph_request_total{client="a",server="b"} 2"#);
        has(r#"traces_service_graph_request_failed_total{client="a",server="b"} 1"#);
        has(r#"sockspan_service_graph_network_seconds_count{client="a",server="b"} 2"#);
        has("# TYPE sockspan_spans_exported_total counter");
        has("sockspan_spans_exported_total 4");
    }

    #[test]
    fn label_values_are_escaped_and_series_are_bounded() {
        assert_eq!(label_set(&[("a", "x\"y\\z\nw")]), r#"{a="x\"y\\z\nw"}"#);
        let mut m = Metrics::default();
        for i in 0..=red::MAX_SERIES {
            let mut s = span("svc", SpanKind::Server, 1, None, 1);
            s.attributes[1] = KeyValue::owned("http.route".into(), format!("/r{i}"));
            m.record(&[s]);
        }
        assert_eq!(m.red.overflowed, 1);
        assert!(m.render().contains(r#"{otel_metric_overflow="true"}"#));
    }
}

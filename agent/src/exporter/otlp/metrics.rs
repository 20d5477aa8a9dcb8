//! The metrics of `/metrics` as OTLP metrics, for `--output otlp`: every interval
//! (`OTEL_METRIC_EXPORT_INTERVAL`, default 60 s) and once more at shutdown, the RED histograms,
//! the service graph and the agent's own figures go to the collector, cumulative since the
//! agent started (as Prometheus scrapes them).
//!
//! Names: the RED instruments by their semantic-convention names (`http.server.request.duration`,
//! unit `s`, attributes `http.request.method`, `http.route`, …, and `error.type` on failures),
//! each service's series under a resource with its `service.name`; the service graph by the
//! names of OpenTelemetry's service-graph connector (`traces_service_graph_request_total`,
//! `…_failed_total`, `traces_service_graph_request_server` / `…_client` in seconds, attributes
//! `client`, `server`, `connection_type`) plus `sockspan_service_graph_network`; the agent's own
//! counters as `sockspan_*` sums. The graph and the agent's figures are the agent's own, under
//! the resource `service.name=sockspan`. A Prometheus exporter writes them as `/metrics` does.

use std::{
    collections::BTreeMap,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use opentelemetry_proto::tonic::{
    collector::metrics::v1::ExportMetricsServiceRequest,
    common::v1::{InstrumentationScope, KeyValue as ProtoKeyValue},
    metrics::v1::{
        AggregationTemporality, Gauge, Histogram as ProtoHistogram, HistogramDataPoint, Metric,
        NumberDataPoint, ResourceMetrics, ScopeMetrics, Sum, metric, number_data_point,
    },
    resource::v1::Resource as ProtoResource,
};
use tokio::sync::oneshot;

use super::{
    config::{OtlpConfig, OtlpConfigError},
    convert::value,
    transport::{Request, Transport},
};
use crate::{
    metrics::{
        Metrics, SharedMetrics,
        histogram::{DURATION_BUCKETS, Histogram},
        red::Family,
    },
    trace::span::KeyValue,
};

/// The resource the agent's own metrics and the service graph are reported under.
const AGENT_SERVICE: &str = "sockspan";

/// Longest and shortest interval accepted, ms.
const INTERVAL_MS: std::ops::RangeInclusive<u64> = 100..=3_600_000;

#[derive(Debug, thiserror::Error)]
pub enum MetricsConfigError {
    #[error(
        "OTEL_METRICS_EXPORTER: `{0}` is not supported; accepted: otlp (the default with --output otlp), none"
    )]
    Exporter(String),
    #[error(
        "OTEL_METRIC_EXPORT_INTERVAL: `{0}` is not an interval in milliseconds (a whole number from 100 to 3600000)"
    )]
    Interval(String),
    #[error(transparent)]
    Otlp(#[from] OtlpConfigError),
}

/// Where and how often metrics are sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetricsConfig {
    pub otlp: OtlpConfig,
    pub interval: Duration,
}

impl MetricsConfig {
    /// `None` when `OTEL_METRICS_EXPORTER=none`.
    pub fn resolve(
        flag_endpoint: Option<&str>,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Option<Self>, MetricsConfigError> {
        match env("OTEL_METRICS_EXPORTER").as_deref().map(str::trim) {
            None | Some("" | "otlp") => {}
            Some("none") => return Ok(None),
            Some(other) => return Err(MetricsConfigError::Exporter(other.to_string())),
        }
        let interval = match env("OTEL_METRIC_EXPORT_INTERVAL") {
            None => Duration::from_mins(1),
            Some(text) => match text.trim().parse::<u64>() {
                Ok(ms) if INTERVAL_MS.contains(&ms) => Duration::from_millis(ms),
                _ => return Err(MetricsConfigError::Interval(text)),
            },
        };
        let otlp = OtlpConfig::resolve_for(super::config::Signal::Metrics, flag_endpoint, env)?;
        Ok(Some(Self { otlp, interval }))
    }
}

/// Self-metrics of the metrics exporter.
#[derive(Debug, Default)]
pub struct MetricsExportStats {
    pub exports: AtomicU64,
    pub failed: AtomicU64,
}

/// The periodic sender; [`Self::finish`] sends a last export and ends it.
pub struct MetricsExporter {
    stop: Option<oneshot::Sender<()>>,
    pub stats: Arc<MetricsExportStats>,
}

impl MetricsExporter {
    /// Starts the sending task on the current runtime.
    pub fn start(
        config: MetricsConfig,
        metrics: SharedMetrics,
        host: String,
    ) -> Result<(Self, tokio::task::JoinHandle<()>), OtlpConfigError> {
        let transport = Transport::new(&config.otlp)?;
        let (stop, stopped) = oneshot::channel();
        let stats = Arc::new(MetricsExportStats::default());
        tracing::info!(endpoint = %config.otlp.endpoint, interval = ?config.interval, "exporting metrics over OTLP");
        let task = tokio::spawn(send_loop(
            transport,
            config,
            metrics,
            host,
            stopped,
            Arc::clone(&stats),
        ));
        Ok((
            Self {
                stop: Some(stop),
                stats,
            },
            task,
        ))
    }

    /// Asks for the last export; the task ends after it.
    pub fn finish(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

async fn send_loop(
    mut transport: Transport,
    config: MetricsConfig,
    metrics: SharedMetrics,
    host: String,
    mut stopped: oneshot::Receiver<()>,
    stats: Arc<MetricsExportStats>,
) {
    let start_ns = now_ns();
    let mut tick = tokio::time::interval(config.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        let last = tokio::select! {
            _ = tick.tick() => false,
            _ = &mut stopped => true,
        };
        let request = {
            let metrics = crate::metrics::lock(&metrics);
            request(
                &metrics,
                start_ns,
                now_ns(),
                &host,
                &config.otlp.resource_attributes,
            )
        };
        match transport
            .send(Request::Metrics(request), config.otlp.timeout)
            .await
        {
            Ok(()) => {
                stats.exports.fetch_add(1, Ordering::Relaxed);
            }
            // Cumulative figures: the next export carries everything this one had, so a failed
            // one is counted and not retried.
            Err(err) => {
                stats.failed.fetch_add(1, Ordering::Relaxed);
                tracing::warn!("OTLP metrics export failed: {}", err.message);
            }
        }
        if last {
            break;
        }
    }
}

fn now_ns() -> u64 {
    crate::clock::WallClock::new().to_unix_ns(crate::clock::monotonic_ns())
}

fn attribute(key: &str, text: &str) -> ProtoKeyValue {
    value(&KeyValue::owned(key.to_string(), text.to_string()))
}

fn histogram_point(
    attributes: Vec<ProtoKeyValue>,
    h: &Histogram,
    start_ns: u64,
    now_ns: u64,
) -> HistogramDataPoint {
    HistogramDataPoint {
        attributes,
        start_time_unix_nano: start_ns,
        time_unix_nano: now_ns,
        count: h.count(),
        sum: Some(h.sum()),
        bucket_counts: h.buckets().to_vec(),
        explicit_bounds: DURATION_BUCKETS.to_vec(),
        ..Default::default()
    }
}

fn histogram_metric(name: &str, description: &str, points: Vec<HistogramDataPoint>) -> Metric {
    Metric {
        name: name.to_string(),
        description: description.to_string(),
        unit: "s".to_string(),
        data: Some(metric::Data::Histogram(ProtoHistogram {
            data_points: points,
            aggregation_temporality: AggregationTemporality::Cumulative as i32,
        })),
        ..Default::default()
    }
}

fn number(attributes: Vec<ProtoKeyValue>, n: u64, start_ns: u64, now_ns: u64) -> NumberDataPoint {
    NumberDataPoint {
        attributes,
        start_time_unix_nano: start_ns,
        time_unix_nano: now_ns,
        value: Some(number_data_point::Value::AsInt(
            i64::try_from(n).unwrap_or(i64::MAX),
        )),
        ..Default::default()
    }
}

fn counter(name: &str, description: &str, points: Vec<NumberDataPoint>) -> Metric {
    Metric {
        name: name.to_string(),
        description: description.to_string(),
        unit: "1".to_string(),
        data: Some(metric::Data::Sum(Sum {
            data_points: points,
            aggregation_temporality: AggregationTemporality::Cumulative as i32,
            is_monotonic: true,
        })),
        ..Default::default()
    }
}

fn resource_metrics(
    service: &str,
    host: &str,
    extra: &[KeyValue],
    metrics: Vec<Metric>,
) -> ResourceMetrics {
    let mut attributes = vec![
        attribute("service.name", service),
        attribute("host.name", host),
    ];
    attributes.extend(
        extra
            .iter()
            .filter(|kv| kv.key != "service.name" && kv.key != "host.name")
            .map(value),
    );
    ResourceMetrics {
        resource: Some(ProtoResource {
            attributes,
            ..Default::default()
        }),
        scope_metrics: vec![ScopeMetrics {
            scope: Some(InstrumentationScope {
                name: "sockspan".to_string(),
                version: env!("CARGO_PKG_VERSION").to_string(),
                ..Default::default()
            }),
            metrics,
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// The RED histograms, one resource per service.
fn red(m: &Metrics, start_ns: u64, now_ns: u64) -> BTreeMap<String, Vec<Metric>> {
    let mut per_service: BTreeMap<String, Vec<Metric>> = BTreeMap::new();
    for family in Family::ALL {
        let mut points: BTreeMap<&str, Vec<HistogramDataPoint>> = BTreeMap::new();
        for (values, h) in m.red.series(family) {
            let Some((service, rest)) = values.split_first() else {
                continue;
            };
            let (error, keys) = rest
                .split_last()
                .map_or(("", rest), |(e, k)| (e.as_str(), k));
            let mut attributes: Vec<ProtoKeyValue> = family
                .attributes()
                .iter()
                .zip(keys)
                .filter(|(_, v)| !v.is_empty())
                .map(|(k, v)| attribute(k, v))
                .collect();
            if !error.is_empty() {
                attributes.push(attribute("error.type", error));
            }
            points
                .entry(service.as_str())
                .or_default()
                .push(histogram_point(attributes, h, start_ns, now_ns));
        }
        for (service, points) in points {
            per_service
                .entry(service.to_string())
                .or_default()
                .push(histogram_metric(family.otel_name(), family.help(), points));
        }
    }
    per_service
}

/// The service graph and the agent's own figures.
fn agent_metrics(m: &Metrics, start_ns: u64, now_ns: u64) -> Vec<Metric> {
    let edges: Vec<_> = m.graph.edges().collect();
    let labels = |(client, server, kind): &crate::metrics::graph::Edge| {
        let mut l = vec![attribute("client", client), attribute("server", server)];
        if !kind.is_empty() {
            l.push(attribute("connection_type", kind));
        }
        l
    };
    let mut out = vec![
        counter(
            "traces_service_graph_request_total",
            "Requests between two services.",
            edges
                .iter()
                .map(|(e, s)| number(labels(e), s.requests, start_ns, now_ns))
                .collect(),
        ),
        counter(
            "traces_service_graph_request_failed_total",
            "Failed requests between two services.",
            edges
                .iter()
                .map(|(e, s)| number(labels(e), s.failed, start_ns, now_ns))
                .collect(),
        ),
    ];
    for family in &crate::metrics::graph::HISTOGRAMS {
        let pick = family.pick;
        let points = edges
            .iter()
            .filter(|(_, s)| pick(s).count() > 0)
            .map(|(e, s)| histogram_point(labels(e), pick(s), start_ns, now_ns))
            .collect();
        out.push(histogram_metric(family.name, family.help, points));
    }
    for own in m.own() {
        let name = format!("sockspan_{}", own.name);
        out.push(match own.name.strip_suffix("_total") {
            // Prometheus exporters add `_total` to monotonic sums themselves.
            Some(base) => counter(
                &format!("sockspan_{base}"),
                own.help,
                vec![number(Vec::new(), own.value, start_ns, now_ns)],
            ),
            None => Metric {
                name,
                description: own.help.to_string(),
                data: Some(metric::Data::Gauge(Gauge {
                    data_points: vec![number(Vec::new(), own.value, start_ns, now_ns)],
                })),
                ..Default::default()
            },
        });
    }
    out
}

/// Everything in `m` as one OTLP request, cumulative from `start_ns`.
#[must_use]
pub fn request(
    m: &Metrics,
    start_ns: u64,
    now_ns: u64,
    host: &str,
    extra: &[KeyValue],
) -> ExportMetricsServiceRequest {
    let mut resource_metrics: Vec<ResourceMetrics> = red(m, start_ns, now_ns)
        .into_iter()
        .map(|(service, metrics)| resource_metrics(&service, host, extra, metrics))
        .collect();
    resource_metrics.push(self::resource_metrics(
        AGENT_SERVICE,
        host,
        extra,
        agent_metrics(m, start_ns, now_ns),
    ));
    ExportMetricsServiceRequest { resource_metrics }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use opentelemetry_proto::tonic::common::v1::any_value;

    use super::*;
    use crate::{
        metrics::{Own, test_span},
        trace::span::{KeyValue, SpanKind, SpanStatus},
    };

    fn text(kvs: &[ProtoKeyValue]) -> BTreeMap<String, String> {
        kvs.iter()
            .map(|kv| {
                let v = match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
                    Some(any_value::Value::StringValue(s)) => s.clone(),
                    Some(any_value::Value::IntValue(i)) => i.to_string(),
                    other => format!("{other:?}"),
                };
                (kv.key.clone(), v)
            })
            .collect()
    }

    fn known() -> Metrics {
        let mut m = Metrics::default();
        m.record(&[
            test_span("b", SpanKind::Server, 2, Some(1), 10),
            test_span("a", SpanKind::Client, 1, None, 12),
        ]);
        let mut failing = test_span("b", SpanKind::Server, 4, Some(3), 1);
        failing.status = SpanStatus::Error("500".into());
        failing.attributes[2] = KeyValue::int("http.response.status_code", 500);
        m.record(&[test_span("a", SpanKind::Client, 3, None, 2), failing]);
        m.set_own(vec![
            Own {
                name: "spans_exported_total",
                help: "Spans handed to the exporter.",
                value: 4,
            },
            Own {
                name: "connections_tracked",
                help: "Connections tracked now.",
                value: 7,
            },
        ]);
        m
    }

    #[test]
    fn red_histograms_go_under_each_service_with_convention_names() {
        let req = request(&known(), 5, 9, "node-1", &[KeyValue::str("team", "ml")]);
        let by_service: HashMap<String, &ResourceMetrics> = req
            .resource_metrics
            .iter()
            .map(|r| {
                let attrs = text(&r.resource.as_ref().expect("resource").attributes);
                (attrs["service.name"].clone(), r)
            })
            .collect();
        let b = by_service["b"];
        let attrs = text(&b.resource.as_ref().expect("resource").attributes);
        assert_eq!(
            (attrs["host.name"].as_str(), attrs["team"].as_str()),
            ("node-1", "ml")
        );
        let metric = &b.scope_metrics[0].metrics[0];
        assert_eq!(
            (metric.name.as_str(), metric.unit.as_str()),
            ("http.server.request.duration", "s")
        );
        let Some(metric::Data::Histogram(h)) = &metric.data else {
            panic!("a histogram: {metric:?}");
        };
        assert_eq!(
            h.aggregation_temporality,
            AggregationTemporality::Cumulative as i32
        );
        let points: Vec<(BTreeMap<String, String>, u64)> = h
            .data_points
            .iter()
            .map(|p| (text(&p.attributes), p.count))
            .collect();
        assert_eq!(points.len(), 2);
        let ok = &points
            .iter()
            .find(|(a, _)| a["http.response.status_code"] == "200")
            .expect("200")
            .0;
        assert_eq!(ok["http.route"], "/x/{id}");
        assert!(
            !ok.contains_key("error.type"),
            "error.type only on failures"
        );
        let failed = &points
            .iter()
            .find(|(a, _)| a["http.response.status_code"] == "500")
            .expect("500")
            .0;
        assert_eq!(failed["error.type"], "500");
        let p = &h.data_points[0];
        assert_eq!((p.start_time_unix_nano, p.time_unix_nano), (5, 9));
        assert_eq!(p.bucket_counts.len(), p.explicit_bounds.len() + 1);
        assert_eq!(p.bucket_counts.iter().sum::<u64>(), p.count);
        let a = by_service["a"];
        assert_eq!(
            a.scope_metrics[0].metrics[0].name,
            "http.client.request.duration"
        );
    }

    #[test]
    fn the_service_graph_and_own_figures_are_the_agents() {
        let req = request(&known(), 5, 9, "node-1", &[]);
        let agent = req
            .resource_metrics
            .iter()
            .find(|r| {
                text(&r.resource.as_ref().expect("resource").attributes)["service.name"]
                    == "sockspan"
            })
            .expect("the agent's resource");
        let metrics: HashMap<&str, &Metric> = agent.scope_metrics[0]
            .metrics
            .iter()
            .map(|m| (m.name.as_str(), m))
            .collect();
        let Some(metric::Data::Sum(total)) = &metrics["traces_service_graph_request_total"].data
        else {
            panic!("a sum");
        };
        assert!(total.is_monotonic);
        let edge = &total.data_points[0];
        assert_eq!(text(&edge.attributes)["client"], "a");
        assert_eq!(text(&edge.attributes)["server"], "b");
        assert_eq!(edge.value, Some(number_data_point::Value::AsInt(2)));
        let Some(metric::Data::Sum(failed)) =
            &metrics["traces_service_graph_request_failed_total"].data
        else {
            panic!("a sum");
        };
        assert_eq!(
            failed.data_points[0].value,
            Some(number_data_point::Value::AsInt(1))
        );
        for name in [
            "traces_service_graph_request_server",
            "traces_service_graph_request_client",
            "sockspan_service_graph_network",
        ] {
            assert!(
                matches!(metrics[name].data, Some(metric::Data::Histogram(_))),
                "{name}"
            );
        }
        assert!(matches!(
            metrics["sockspan_spans_exported"].data,
            Some(metric::Data::Sum(_))
        ));
        assert!(matches!(
            metrics["sockspan_connections_tracked"].data,
            Some(metric::Data::Gauge(_))
        ));
    }

    fn env<'a>(vars: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |k| {
            vars.iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| (*v).to_string())
        }
    }

    #[test]
    fn settings_follow_the_opentelemetry_variables() {
        let c = MetricsConfig::resolve(Some("http://collector:4318"), &env(&[]))
            .expect("defaults")
            .expect("on");
        assert_eq!(c.interval, Duration::from_mins(1));
        assert_eq!(c.otlp.endpoint, "http://collector:4318/v1/metrics");
        let off = MetricsConfig::resolve(None, &env(&[("OTEL_METRICS_EXPORTER", "none")]));
        assert!(off.expect("none").is_none());
        let c = MetricsConfig::resolve(None, &env(&[("OTEL_METRIC_EXPORT_INTERVAL", "1500")]))
            .expect("interval")
            .expect("on");
        assert_eq!(c.interval, Duration::from_millis(1500));
        for (var, bad) in [
            ("OTEL_METRIC_EXPORT_INTERVAL", "1m"),
            ("OTEL_METRIC_EXPORT_INTERVAL", "0"),
            ("OTEL_METRICS_EXPORTER", "prometheus"),
        ] {
            let err = MetricsConfig::resolve(None, &env(&[(var, bad)])).expect_err(bad);
            assert!(err.to_string().starts_with(var), "{err}");
        }
    }
}

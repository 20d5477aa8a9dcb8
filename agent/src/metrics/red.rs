//! RED metrics (rate, errors, duration) per service and operation, one histogram per series,
//! named and labelled as OpenTelemetry's semantic conventions become Prometheus metrics
//! (`http.server.request.duration` → `http_server_request_duration_seconds`, attribute dots →
//! underscores).

use std::collections::BTreeMap;

use super::histogram::Histogram;
use crate::trace::{
    SpanData,
    span::{AttrValue, SpanKind, SpanStatus},
};

/// Series kept per metric; past it, observations go to one overflow series
/// (`otel_metric_overflow="true"`, as OpenTelemetry SDKs do), counted.
pub const MAX_SERIES: usize = 2000;

/// One metric family: its name, help, and label names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Family {
    HttpServer,
    HttpClient,
    RpcServer,
    RpcClient,
    DbClient,
}

impl Family {
    pub const ALL: [Self; 5] = [
        Self::HttpServer,
        Self::HttpClient,
        Self::RpcServer,
        Self::RpcClient,
        Self::DbClient,
    ];

    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            Self::HttpServer => "http_server_request_duration_seconds",
            Self::HttpClient => "http_client_request_duration_seconds",
            Self::RpcServer => "rpc_server_call_duration_seconds",
            Self::RpcClient => "rpc_client_call_duration_seconds",
            Self::DbClient => "db_client_operation_duration_seconds",
        }
    }

    /// The instrument's name in the semantic conventions (OTLP metrics carry it; Prometheus
    /// exporters turn it into [`Self::name`]).
    #[must_use]
    pub const fn otel_name(self) -> &'static str {
        match self {
            Self::HttpServer => "http.server.request.duration",
            Self::HttpClient => "http.client.request.duration",
            Self::RpcServer => "rpc.server.call.duration",
            Self::RpcClient => "rpc.client.call.duration",
            Self::DbClient => "db.client.operation.duration",
        }
    }

    #[must_use]
    pub const fn help(self) -> &'static str {
        match self {
            Self::HttpServer => "Duration of HTTP server requests.",
            Self::HttpClient => "Duration of HTTP client requests.",
            Self::RpcServer => "Duration of RPC calls served.",
            Self::RpcClient => "Duration of RPC calls made.",
            Self::DbClient => "Duration of database client operations.",
        }
    }

    /// Label names, each the Prometheus form of the span attribute it comes from (in
    /// [`Self::attributes`]' order), `service_name` first.
    #[must_use]
    pub const fn labels(self) -> &'static [&'static str] {
        match self {
            Self::HttpServer => &[
                "service_name",
                "http_request_method",
                "http_route",
                "http_response_status_code",
                "error_type",
            ],
            Self::HttpClient => &[
                "service_name",
                "http_request_method",
                "server_address",
                "http_response_status_code",
                "error_type",
            ],
            Self::RpcServer | Self::RpcClient => &[
                "service_name",
                "rpc_system",
                "rpc_method",
                "rpc_grpc_status_code",
                "error_type",
            ],
            Self::DbClient => &[
                "service_name",
                "db_system_name",
                "db_operation_name",
                "db_collection_name",
                "error_type",
            ],
        }
    }

    /// The span attributes the labels between `service_name` and `error_type` come from.
    #[must_use]
    pub const fn attributes(self) -> &'static [&'static str] {
        match self {
            Self::HttpServer => &[
                "http.request.method",
                "http.route",
                "http.response.status_code",
            ],
            Self::HttpClient => &[
                "http.request.method",
                "server.address",
                "http.response.status_code",
            ],
            Self::RpcServer | Self::RpcClient => {
                &["rpc.system", "rpc.method", "rpc.grpc.status_code"]
            }
            Self::DbClient => &["db.system.name", "db.operation.name", "db.collection.name"],
        }
    }

    /// The family a span is counted in, if any.
    fn of(span: &SpanData) -> Option<Self> {
        let has = |key: &str| span.attributes.iter().any(|kv| kv.key == key);
        let server = span.kind == SpanKind::Server;
        Some(if has("db.system.name") {
            if server {
                return None;
            }
            Self::DbClient
        } else if has("rpc.system") {
            if server {
                Self::RpcServer
            } else {
                Self::RpcClient
            }
        } else if has("http.request.method") {
            if server {
                Self::HttpServer
            } else {
                Self::HttpClient
            }
        } else {
            return None;
        })
    }
}

/// An attribute's value as a label value (strings as they are, integers in decimal).
#[must_use]
pub fn attribute(span: &SpanData, key: &str) -> Option<String> {
    span.attributes
        .iter()
        .find(|kv| kv.key == key)
        .map(|kv| match &kv.value {
            AttrValue::Int(i) => i.to_string(),
            other => other.as_str().unwrap_or_default().to_string(),
        })
}

/// `error.type` as the conventions define it: empty for a success, else the span's
/// `error.type`, its status code, or `_OTHER`.
#[must_use]
pub fn error_type(span: &SpanData) -> String {
    match span.status {
        SpanStatus::Unset => String::new(),
        SpanStatus::Error(_) => attribute(span, "error.type")
            .or_else(|| attribute(span, "http.response.status_code"))
            .or_else(|| attribute(span, "rpc.grpc.status_code"))
            .unwrap_or_else(|| "_OTHER".to_string()),
    }
}

/// A span's duration in seconds.
#[must_use]
pub fn seconds(span: &SpanData) -> f64 {
    span.end_unix_nano.saturating_sub(span.start_unix_nano) as f64 / 1e9
}

#[derive(Debug, Default)]
pub struct Red {
    /// Per family, label values (in [`Family::labels`] order) → histogram; sorted, so the
    /// exposition is stable.
    series: BTreeMap<Family, BTreeMap<Vec<String>, Histogram>>,
    overflow: BTreeMap<Family, Histogram>,
    /// Observations that went to an overflow series.
    pub overflowed: u64,
}

impl Red {
    pub fn record(&mut self, span: &SpanData) {
        let Some(family) = Family::of(span) else {
            return;
        };
        let mut labels = Vec::with_capacity(family.labels().len());
        labels.push(span.resource.service_name().to_string());
        for key in family.attributes() {
            labels.push(attribute(span, key).unwrap_or_default());
        }
        labels.push(error_type(span));
        let series = self.series.entry(family).or_default();
        let at = if series.len() < MAX_SERIES || series.contains_key(&labels) {
            series.entry(labels).or_default()
        } else {
            self.overflowed += 1;
            self.overflow.entry(family).or_default()
        };
        at.observe(seconds(span));
    }

    /// Every series of `family`: label values, histogram.
    pub fn series(&self, family: Family) -> impl Iterator<Item = (&[String], &Histogram)> {
        self.series
            .get(&family)
            .into_iter()
            .flat_map(|s| s.iter().map(|(k, h)| (k.as_slice(), h)))
    }

    /// The overflow series of `family`, if it was used.
    #[must_use]
    pub fn overflow(&self, family: Family) -> Option<&Histogram> {
        self.overflow.get(&family)
    }
}

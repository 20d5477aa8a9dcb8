//! RED metrics (rate, errors, duration) per service and operation, one histogram per series,
//! named and labelled as OpenTelemetry's semantic conventions become Prometheus metrics
//! (`http.server.request.duration` → `http_server_request_duration_seconds`, attribute dots →
//! underscores).

use std::collections::{BTreeMap, HashMap};

use foldhash::fast::RandomState as Fast;

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

    /// [`Family::attributes`] as [`Key`]s.
    const fn keys(self) -> [Key; 3] {
        match self {
            Self::HttpServer => [Key::HttpMethod, Key::HttpRoute, Key::HttpStatus],
            Self::HttpClient => [Key::HttpMethod, Key::ServerAddress, Key::HttpStatus],
            Self::RpcServer | Self::RpcClient => [Key::RpcSystem, Key::RpcMethod, Key::GrpcStatus],
            Self::DbClient => [Key::DbSystem, Key::DbOperation, Key::DbCollection],
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
    fn of(span: &SpanData, picked: &Picked<'_>) -> Option<Self> {
        let has = |key: Key| picked.get(key).is_some();
        let server = span.kind == SpanKind::Server;
        Some(if has(Key::DbSystem) {
            if server {
                return None;
            }
            Self::DbClient
        } else if has(Key::RpcSystem) {
            if server {
                Self::RpcServer
            } else {
                Self::RpcClient
            }
        } else if has(Key::HttpMethod) {
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

/// A span's label values (in [`Family::labels`] order).
fn label_values(span: &SpanData, family: Family) -> Vec<String> {
    let mut labels = Vec::with_capacity(family.labels().len());
    labels.push(span.resource.service_name().to_string());
    for key in family.attributes() {
        labels.push(attribute(span, key).unwrap_or_default());
    }
    labels.push(error_type(span));
    labels
}

/// The attributes the metrics read, by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Key {
    DbSystem,
    DbOperation,
    DbCollection,
    RpcSystem,
    RpcMethod,
    GrpcStatus,
    HttpMethod,
    HttpRoute,
    HttpStatus,
    ServerAddress,
    ErrorType,
}

impl Key {
    const COUNT: usize = 11;

    fn of(name: &str) -> Option<Self> {
        Some(match name {
            "db.system.name" => Self::DbSystem,
            "db.operation.name" => Self::DbOperation,
            "db.collection.name" => Self::DbCollection,
            "rpc.system" => Self::RpcSystem,
            "rpc.method" => Self::RpcMethod,
            "rpc.grpc.status_code" => Self::GrpcStatus,
            "http.request.method" => Self::HttpMethod,
            "http.route" => Self::HttpRoute,
            "http.response.status_code" => Self::HttpStatus,
            "server.address" => Self::ServerAddress,
            "error.type" => Self::ErrorType,
            _ => return None,
        })
    }
}

/// A span's attributes the metrics read, found in one pass over them (the first of each name,
/// as [`attribute`] finds it; a scan per name was most of the metrics' cost).
struct Picked<'a>([Option<&'a AttrValue>; Key::COUNT]);

impl<'a> Picked<'a> {
    fn of(span: &'a SpanData) -> Self {
        let mut picked = [None; Key::COUNT];
        for kv in &span.attributes {
            if let Some(key) = Key::of(&kv.key) {
                picked[key as usize].get_or_insert(&kv.value);
            }
        }
        Self(picked)
    }

    fn get(&self, key: Key) -> Option<&'a AttrValue> {
        self.0[key as usize]
    }
}

/// Appends `part` to a lookup key, its length first, so that no two lists of parts give one key
/// (the RED series' and the service graph's keys).
pub(super) fn push_key_part(key: &mut String, part: &str) {
    key.push_str(itoa::Buffer::new().format(part.len()));
    key.push(':');
    key.push_str(part);
}

/// Writes into `key` what tells `span`'s series apart: each of [`label_values`], its length
/// first (so no two lists of values give one key), without allocating once `key` has grown.
fn series_key(key: &mut String, span: &SpanData, family: Family, picked: &Picked<'_>) {
    use push_key_part as push;
    fn push_value(key: &mut String, value: Option<&AttrValue>) -> bool {
        match value {
            None => return false,
            Some(AttrValue::Int(i)) => push(key, itoa::Buffer::new().format(*i)),
            Some(other) => push(key, other.as_str().unwrap_or_default()),
        }
        true
    }
    key.clear();
    push(key, span.resource.service_name());
    for name in family.keys() {
        if !push_value(key, picked.get(name)) {
            push(key, "");
        }
    }
    // As error_type(), in the same order.
    match span.status {
        SpanStatus::Unset => push(key, ""),
        SpanStatus::Error(_) => {
            let found = [Key::ErrorType, Key::HttpStatus, Key::GrpcStatus]
                .into_iter()
                .any(|name| push_value(key, picked.get(name)));
            if !found {
                push(key, "_OTHER");
            }
        }
    }
}

/// A span's duration in seconds.
#[must_use]
pub fn seconds(span: &SpanData) -> f64 {
    span.end_unix_nano.saturating_sub(span.start_unix_nano) as f64 / 1e9
}

/// A family's series by [`series_key`]: label values and histogram.
type Series = HashMap<String, (Vec<String>, Histogram), Fast>;

#[derive(Debug, Default)]
pub struct Red {
    /// Per family, the series by [`series_key`]: label values (in [`Family::labels`] order)
    /// and histogram.
    series: BTreeMap<Family, Series>,
    overflow: BTreeMap<Family, Histogram>,
    /// Observations that went to an overflow series.
    pub overflowed: u64,
    /// The key of the span being recorded, reused: a span of a series that exists allocates
    /// nothing (label values as `String`s per span were ~3 % of the agent's CPU under wrk).
    key: String,
}

impl Red {
    pub fn record(&mut self, span: &SpanData) {
        let picked = Picked::of(span);
        let Some(family) = Family::of(span, &picked) else {
            return;
        };
        series_key(&mut self.key, span, family, &picked);
        let series = self.series.entry(family).or_default();
        let at = if let Some((_, histogram)) = series.get_mut(self.key.as_str()) {
            histogram
        } else if series.len() < MAX_SERIES {
            &mut series
                .entry(self.key.clone())
                .or_insert_with(|| (label_values(span, family), Histogram::default()))
                .1
        } else {
            self.overflowed += 1;
            self.overflow.entry(family).or_default()
        };
        at.observe(seconds(span));
    }

    /// Every series of `family`: label values, histogram; sorted by the values, so the
    /// exposition is stable.
    pub fn series(&self, family: Family) -> impl Iterator<Item = (&[String], &Histogram)> {
        let mut all: Vec<(&[String], &Histogram)> = self
            .series
            .get(&family)
            .into_iter()
            .flat_map(|s| s.values().map(|(values, h)| (values.as_slice(), h)))
            .collect();
        all.sort_unstable_by(|a, b| a.0.cmp(b.0));
        all.into_iter()
    }

    /// The overflow series of `family`, if it was used.
    #[must_use]
    pub fn overflow(&self, family: Family) -> Option<&Histogram> {
        self.overflow.get(&family)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        metrics::test_span,
        trace::span::{KeyValue, SpanKind},
    };

    fn server(method: &str, route: &str) -> SpanData {
        let mut span = test_span("svc", SpanKind::Server, 1, None, 3);
        span.attributes[0] = KeyValue::owned("http.request.method".into(), method.into());
        span.attributes[1] = KeyValue::owned("http.route".into(), route.into());
        span
    }

    #[test]
    fn each_familys_keys_name_its_attributes() {
        for family in Family::ALL {
            let named: Vec<Option<Key>> = family.attributes().iter().map(|a| Key::of(a)).collect();
            let keys: Vec<Option<Key>> = family.keys().into_iter().map(Some).collect();
            assert_eq!(named, keys, "{family:?}");
        }
    }

    #[test]
    fn each_list_of_label_values_is_one_series() {
        let mut red = Red::default();
        // Values that run together the same way, and values with the key's own separator.
        for (method, route) in [("GETX", "/a"), ("GET", "X/a"), ("1:a", "/"), ("1", ":a/")] {
            red.record(&server(method, route));
        }
        red.record(&server("GET", "X/a"));
        let mut failed = server("GET", "X/a");
        failed.status = SpanStatus::Error("reset".into());
        failed.attributes.remove(2);
        red.record(&failed);
        let series: Vec<(Vec<String>, u64)> = red
            .series(Family::HttpServer)
            .map(|(values, h)| (values.to_vec(), h.count()))
            .collect();
        let row = |method: &str, route: &str, code: &str, error: &str| {
            ["svc", method, route, code, error]
                .map(String::from)
                .to_vec()
        };
        assert_eq!(
            series,
            [
                (row("1", ":a/", "200", ""), 1),
                (row("1:a", "/", "200", ""), 1),
                (row("GET", "X/a", "", "_OTHER"), 1),
                (row("GET", "X/a", "200", ""), 2),
                (row("GETX", "/a", "200", ""), 1),
            ],
            "sorted by the values"
        );
        assert_eq!(red.overflowed, 0);
    }
}

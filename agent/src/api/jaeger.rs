//! The Jaeger query API (`/api/services`, `/api/services/{service}/operations`,
//! `/api/operations`, `/api/traces`, `/api/traces/{id}`, `/api/dependencies`), in the JSON shapes
//! Jaeger's own query service returns, so Grafana's Jaeger data source and the Jaeger UI can read
//! sockspan's store.

use std::collections::{BTreeMap, HashMap, HashSet};

use axum::{
    Json, Router,
    extract::{Path, Query, State},
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::get,
};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::{store::Store, trace::ids::parse_hex};

/// Jaeger's response envelope.
#[derive(Serialize)]
struct Envelope<T: Serialize> {
    data: T,
    total: usize,
    limit: usize,
    offset: usize,
    errors: Option<Vec<ApiError>>,
}

#[derive(Serialize)]
struct ApiError {
    code: u16,
    msg: String,
}

fn ok<T: Serialize>(data: T, total: usize) -> Response {
    Json(Envelope {
        data,
        total,
        limit: 0,
        offset: 0,
        errors: None,
    })
    .into_response()
}

fn error(code: StatusCode, msg: impl Into<String>) -> Response {
    (
        code,
        Json(Envelope::<Option<()>> {
            data: None,
            total: 0,
            limit: 0,
            offset: 0,
            errors: Some(vec![ApiError {
                code: code.as_u16(),
                msg: msg.into(),
            }]),
        }),
    )
        .into_response()
}

pub fn router(store: Store) -> Router {
    Router::new()
        .route("/api/services", get(services))
        .route(
            "/api/services/{service}/operations",
            get(service_operations),
        )
        .route("/api/operations", get(operations))
        .route("/api/traces", get(search))
        .route("/api/traces/{id}", get(trace))
        .route("/api/dependencies", get(dependencies))
        .with_state(store)
}

/// Runs a blocking store read off the async threads.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, Response> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))
}

async fn services(State(store): State<Store>) -> Response {
    match blocking(move || store.services()).await {
        Ok(Ok(list)) => {
            let n = list.len();
            ok(list, n)
        }
        Ok(Err(e)) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        Err(r) => r,
    }
}

async fn service_operations(State(store): State<Store>, Path(service): Path<String>) -> Response {
    match blocking(move || store.operations(&service)).await {
        Ok(Ok(ops)) => {
            let names: Vec<String> = ops.into_iter().map(|(name, _)| name).collect();
            let n = names.len();
            ok(names, n)
        }
        Ok(Err(e)) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        Err(r) => r,
    }
}

#[derive(Deserialize)]
struct OperationsQuery {
    service: String,
    #[serde(rename = "spanKind")]
    span_kind: Option<String>,
}

async fn operations(State(store): State<Store>, Query(q): Query<OperationsQuery>) -> Response {
    match blocking(move || store.operations(&q.service).map(|ops| (ops, q.span_kind))).await {
        Ok(Ok((ops, kind))) => {
            let list: Vec<Value> = ops
                .into_iter()
                .map(|(name, k)| (name, k.to_ascii_lowercase()))
                .filter(|(_, k)| {
                    kind.as_deref()
                        .is_none_or(|want| want.is_empty() || want == k)
                })
                .map(|(name, k)| json!({"name": name, "spanKind": k}))
                .collect();
            let n = list.len();
            ok(list, n)
        }
        Ok(Err(e)) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        Err(r) => r,
    }
}

/// A Go-style duration (`250us`, `1.5ms`, `2s`, `1m`) in nanoseconds.
fn parse_duration(text: &str) -> Option<u64> {
    let text = text.trim();
    let split = text.find(|c: char| !(c.is_ascii_digit() || c == '.'))?;
    let (number, unit) = text.split_at(split);
    let value: f64 = number.parse().ok()?;
    let scale = match unit {
        "ns" => 1.0,
        "us" | "µs" => 1e3,
        "ms" => 1e6,
        "s" => 1e9,
        "m" => 60e9,
        "h" => 3600e9,
        _ => return None,
    };
    Some((value * scale) as u64)
}

#[derive(Deserialize, Default)]
struct SearchQuery {
    service: Option<String>,
    operation: Option<String>,
    /// JSON object of tag → value, as the Jaeger UI and Grafana send it.
    tags: Option<String>,
    #[serde(rename = "minDuration")]
    min_duration: Option<String>,
    #[serde(rename = "maxDuration")]
    max_duration: Option<String>,
    /// Microseconds since the epoch.
    start: Option<u64>,
    end: Option<u64>,
    limit: Option<usize>,
}

/// Whether a stored span carries `key` = `value` among its attributes or resource; `error` is
/// the span's status, as Jaeger clients expect.
fn has_tag(span: &Value, key: &str, value: &str) -> bool {
    if key == "error" {
        return (span["status"]["code"] == "ERROR") == (value == "true");
    }
    ["attributes", "resource"].iter().any(|section| {
        span[section].get(key).is_some_and(|v| match v {
            Value::String(s) => s == value,
            Value::Number(n) => value.parse::<serde_json::Number>().is_ok_and(|v| &v == n),
            Value::Bool(b) => value.parse::<bool>().is_ok_and(|v| v == *b),
            _ => false,
        })
    })
}

/// A validated trace search.
struct Filter {
    service: String,
    operation: Option<String>,
    tags: BTreeMap<String, String>,
    min: Option<u64>,
    max: Option<u64>,
    start_ns: u64,
    end_ns: u64,
    limit: usize,
}

/// Checks the search parameters; the error names the bad one (answered as a 400).
fn parse_search(q: SearchQuery) -> Result<Filter, String> {
    let service = q
        .service
        .filter(|s| !s.is_empty())
        .ok_or_else(|| "parameter 'service' is required".to_string())?;
    let duration = |text: Option<String>, name: &str| -> Result<Option<u64>, String> {
        match text.filter(|s| !s.is_empty()) {
            None => Ok(None),
            Some(t) => parse_duration(&t)
                .map(Some)
                .ok_or_else(|| format!("{name}: expected a duration like 10ms, got '{t}'")),
        }
    };
    let min = duration(q.min_duration, "minDuration")?;
    let max = duration(q.max_duration, "maxDuration")?;
    let tags = match q.tags.filter(|t| !t.is_empty()) {
        None => BTreeMap::new(),
        Some(t) => serde_json::from_str::<BTreeMap<String, Value>>(&t)
            .map_err(|_| "tags: expected a JSON object of strings".to_string())?
            .into_iter()
            .map(|(k, v)| (k, v.as_str().map_or_else(|| v.to_string(), str::to_string)))
            .collect(),
    };
    Ok(Filter {
        service,
        operation: q.operation.filter(|o| !o.is_empty()),
        tags,
        min,
        max,
        start_ns: q.start.unwrap_or(0).saturating_mul(1000),
        end_ns: q.end.map_or(u64::MAX, |e| e.saturating_mul(1000)),
        limit: q.limit.filter(|l| *l > 0).unwrap_or(20).min(1500),
    })
}

async fn search(State(store): State<Store>, Query(q): Query<SearchQuery>) -> Response {
    let Filter {
        service,
        operation,
        tags,
        min,
        max,
        start_ns,
        end_ns,
        limit,
    } = match parse_search(q) {
        Ok(f) => f,
        Err(msg) => return error(StatusCode::BAD_REQUEST, msg),
    };
    let result = blocking(move || {
        let mut found: Vec<[u8; 16]> = Vec::new();
        let mut seen: HashSet<[u8; 16]> = HashSet::new();
        let mut failure = None;
        let scan = store.scan(start_ns, end_ns, |s| {
            let matches = s.service == service
                && operation.as_deref().is_none_or(|o| o == s.name)
                && min.is_none_or(|m| s.duration_ns >= m)
                && max.is_none_or(|m| s.duration_ns <= m);
            if matches && !seen.contains(&s.trace_id) {
                let tagged = tags.is_empty()
                    || match store.trace(&s.trace_id) {
                        Ok(spans) => spans.iter().any(|span| {
                            span["resource"]["service.name"] == service.as_str()
                                && tags.iter().all(|(k, v)| has_tag(span, k, v))
                        }),
                        Err(e) => {
                            failure = Some(e);
                            false
                        }
                    };
                if tagged {
                    seen.insert(s.trace_id);
                    found.push(s.trace_id);
                }
            }
            found.len() < limit && failure.is_none()
        });
        if let Some(e) = failure {
            return Err(e);
        }
        scan?;
        found
            .iter()
            .map(|id| store.trace(id))
            .collect::<Result<Vec<_>, _>>()
    })
    .await;
    match result {
        Ok(Ok(traces)) => {
            let list: Vec<Value> = traces
                .iter()
                .filter(|t| !t.is_empty())
                .map(|t| jaeger_trace(t))
                .collect();
            let n = list.len();
            ok(list, n)
        }
        Ok(Err(e)) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        Err(r) => r,
    }
}

async fn trace(State(store): State<Store>, Path(id): Path<String>) -> Response {
    let Some(trace_id) = parse_hex::<16>(&format!("{id:0>32}")) else {
        return error(
            StatusCode::BAD_REQUEST,
            format!("'{id}' is not a trace id (32 hex digits)"),
        );
    };
    match blocking(move || store.trace(&trace_id)).await {
        Ok(Ok(spans)) if spans.is_empty() => error(StatusCode::NOT_FOUND, "trace not found"),
        Ok(Ok(spans)) => ok(vec![jaeger_trace(&spans)], 1),
        Ok(Err(e)) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        Err(r) => r,
    }
}

#[derive(Deserialize)]
struct DependenciesQuery {
    /// Milliseconds since the epoch.
    #[serde(rename = "endTs")]
    end_ts: Option<u64>,
    /// Milliseconds.
    lookback: Option<u64>,
}

async fn dependencies(State(store): State<Store>, Query(q): Query<DependenciesQuery>) -> Response {
    let end_ns = q.end_ts.map_or(u64::MAX, |ms| ms.saturating_mul(1_000_000));
    let start_ns = q
        .lookback
        .map_or(0, |ms| end_ns.saturating_sub(ms.saturating_mul(1_000_000)));
    let result = blocking(move || {
        let traces = store.trace_ids(start_ns, end_ns, 10_000, |_| true)?;
        let mut edges: BTreeMap<(String, String), u64> = BTreeMap::new();
        for id in &traces {
            let spans = store.trace(id)?;
            let service_of: HashMap<&str, &str> = spans
                .iter()
                .filter_map(|s| {
                    Some((
                        s["span_id"].as_str()?,
                        s["resource"]["service.name"].as_str()?,
                    ))
                })
                .collect();
            for s in &spans {
                let (Some(parent), Some(child)) = (
                    s["parent_span_id"].as_str(),
                    s["resource"]["service.name"].as_str(),
                ) else {
                    continue;
                };
                if let Some(parent_service) = service_of.get(parent)
                    && *parent_service != child
                {
                    *edges
                        .entry(((*parent_service).to_string(), child.to_string()))
                        .or_default() += 1;
                }
            }
        }
        Ok::<_, crate::store::StoreError>(edges)
    })
    .await;
    match result {
        Ok(Ok(edges)) => {
            let list: Vec<Value> = edges
                .into_iter()
                .map(|((parent, child), n)| json!({"parent": parent, "child": child, "callCount": n}))
                .collect();
            let n = list.len();
            ok(list, n)
        }
        Ok(Err(e)) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        Err(r) => r,
    }
}

/// A Jaeger tag from an attribute value.
fn tag(key: &str, value: &Value) -> Value {
    match value {
        Value::Number(n) if n.is_i64() || n.is_u64() => {
            json!({"key": key, "type": "int64", "value": n})
        }
        Value::Number(n) => json!({"key": key, "type": "float64", "value": n}),
        Value::Bool(b) => json!({"key": key, "type": "bool", "value": b}),
        Value::String(s) => json!({"key": key, "type": "string", "value": s}),
        other => json!({"key": key, "type": "string", "value": other.to_string()}),
    }
}

fn tags(object: &Value, skip: &str) -> Vec<Value> {
    object
        .as_object()
        .into_iter()
        .flatten()
        .filter(|(k, _)| *k != skip)
        .map(|(k, v)| tag(k, v))
        .collect()
}

/// One trace in Jaeger's JSON model: spans with references, tags and process ids, plus the
/// processes (one per service and pid).
fn jaeger_trace(spans: &[Value]) -> Value {
    let mut processes: BTreeMap<String, Value> = BTreeMap::new();
    let mut process_ids: HashMap<String, String> = HashMap::new();
    let trace_id = spans
        .first()
        .and_then(|s| s["trace_id"].as_str())
        .unwrap_or_default();
    let mut out = Vec::with_capacity(spans.len());
    for s in spans {
        let resource = &s["resource"];
        let identity = format!("{}/{}", resource["service.name"], resource["process.pid"]);
        let next = format!("p{}", process_ids.len() + 1);
        let pid = process_ids.entry(identity).or_insert(next).clone();
        processes.entry(pid.clone()).or_insert_with(|| {
            json!({
                "serviceName": resource["service.name"].as_str().unwrap_or("unknown_service"),
                "tags": tags(resource, "service.name"),
            })
        });
        let mut references = Vec::new();
        if let Some(parent) = s["parent_span_id"].as_str() {
            references.push(json!({"refType": "CHILD_OF", "traceID": trace_id, "spanID": parent}));
        }
        for link in s["links"].as_array().into_iter().flatten() {
            references.push(json!({"refType": "FOLLOWS_FROM", "traceID": link["trace_id"], "spanID": link["span_id"]}));
        }
        let mut span_tags = tags(&s["attributes"], "");
        span_tags.push(tag(
            "span.kind",
            &json!(s["kind"].as_str().unwrap_or("").to_ascii_lowercase()),
        ));
        if s["status"]["code"] == "ERROR" {
            span_tags.push(tag("error", &json!(true)));
            span_tags.push(tag("otel.status_code", &json!("ERROR")));
            if let Some(m) = s["status"]["message"].as_str() {
                span_tags.push(tag("otel.status_description", &json!(m)));
            }
        }
        let start = s["start_time_unix_nano"].as_u64().unwrap_or(0);
        let end = s["end_time_unix_nano"].as_u64().unwrap_or(start);
        out.push(json!({
            "traceID": trace_id,
            "spanID": s["span_id"],
            "operationName": s["name"],
            "references": references,
            "startTime": start / 1000,
            "duration": end.saturating_sub(start) / 1000,
            "tags": span_tags,
            "logs": [],
            "processID": pid,
            "warnings": null,
            "flags": 1,
        }));
    }
    json!({"traceID": trace_id, "spans": out, "processes": processes, "warnings": null})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_in_go_syntax() {
        assert_eq!(parse_duration("250us"), Some(250_000));
        assert_eq!(parse_duration("1.5ms"), Some(1_500_000));
        assert_eq!(parse_duration("2s"), Some(2_000_000_000));
        assert_eq!(parse_duration("ten"), None);
        assert_eq!(parse_duration("5parsecs"), None);
    }

    #[test]
    fn converts_a_trace_to_the_jaeger_model() {
        let spans = vec![
            json!({"trace_id": "ab", "span_id": "01", "parent_span_id": null, "links": [], "kind": "CLIENT", "name": "GET /x",
                   "start_time_unix_nano": 1_000_000, "end_time_unix_nano": 5_000_000, "status": {"code": "UNSET"},
                   "attributes": {"http.response.status_code": 200}, "resource": {"service.name": "curl", "process.pid": 7}}),
            json!({"trace_id": "ab", "span_id": "02", "parent_span_id": "01", "links": [], "kind": "SERVER", "name": "GET /x",
                   "start_time_unix_nano": 2_000_000, "end_time_unix_nano": 4_000_000, "status": {"code": "ERROR", "message": "HTTP 500"},
                   "attributes": {}, "resource": {"service.name": "api", "process.pid": 9}}),
        ];
        let t = jaeger_trace(&spans);
        assert_eq!(t["spans"][1]["references"][0]["refType"], "CHILD_OF");
        assert_eq!(t["spans"][1]["references"][0]["spanID"], "01");
        assert_eq!(t["spans"][0]["duration"], 4000);
        assert_eq!(t["processes"]["p2"]["serviceName"], "api");
        let tags = t["spans"][1]["tags"].as_array().expect("tags");
        assert!(tags.contains(&json!({"key": "error", "type": "bool", "value": true})));
        assert!(tags.contains(&json!({"key": "span.kind", "type": "string", "value": "server"})));
    }
}

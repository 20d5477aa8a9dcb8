//! Stored spans in Jaeger's JSON trace model: spans with references, tags and process ids,
//! plus the processes. The same JSON Jaeger's query service answers, so the Jaeger UI can load
//! a downloaded trace and Grafana's Jaeger data source can read the API.

use std::collections::{BTreeMap, HashMap};

use serde_json::{Value, json};

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
pub fn jaeger_trace(spans: &[Value]) -> Value {
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

//! sockspan's own endpoints over the store: a trace's spans as stored (links with their
//! reasons, the parent's evidence, resource), its critical path with owners, the service map,
//! and "why is it slow" for an endpoint at a percentile.

use std::collections::HashSet;

use axum::{
    Json, Router,
    extract::{Path, State},
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::get,
};
use serde_json::{Value, json};

use super::{
    envelope::{blocking, error, ok},
    jaeger::search::trace_id,
    params::Params,
};
use crate::{
    analysis::{
        blame::blame,
        critical_path::{Node, critical_path, owner},
    },
    store::Store,
};

/// Traces analysed at most per request.
const MAX_TRACES: usize = 5000;

/// Default window, seconds.
const DEFAULT_LOOKBACK: u64 = 3600;

pub fn router(store: Store) -> Router {
    Router::new()
        .route("/api/sockspan/blame", get(blame_endpoint))
        .route("/api/sockspan/traces/{id}", get(spans_endpoint))
        .route(
            "/api/sockspan/traces/{id}/critical-path",
            get(path_endpoint),
        )
        .route("/api/sockspan/service-map", get(map_endpoint))
        .with_state(store)
}

fn now_ns() -> u64 {
    crate::clock::WallClock::new().to_unix_ns(crate::clock::monotonic_ns())
}

/// `lookback` in seconds (default an hour).
fn lookback(params: &Params) -> Result<u64, String> {
    params
        .number::<u64>("lookback")
        .map(|l| l.unwrap_or(DEFAULT_LOOKBACK))
}

/// The stored spans of `id`, with their parents in the trace.
async fn stored(store: Store, id: &str) -> Result<Vec<Value>, Response> {
    let trace = trace_id(id).map_err(|msg| error(StatusCode::BAD_REQUEST, msg))?;
    match blocking(move || store.trace(&trace)).await? {
        spans if spans.is_empty() => Err(error(
            StatusCode::NOT_FOUND,
            format!("trace {id} not found (older than the store keeps, or not exported yet)"),
        )),
        spans => Ok(spans),
    }
}

async fn blame_endpoint(State(store): State<Store>, params: Params) -> Response {
    let (service, operation) = match (params.required("service"), params.required("operation")) {
        (Ok(s), Ok(o)) => (s.to_string(), o.to_string()),
        (Err(msg), _) | (_, Err(msg)) => return error(StatusCode::BAD_REQUEST, msg),
    };
    let percentile = match params.number::<f64>("percentile") {
        Ok(p) => p.unwrap_or(99.0),
        Err(msg) => return error(StatusCode::BAD_REQUEST, msg),
    };
    if !(0.0..=100.0).contains(&percentile) {
        return error(StatusCode::BAD_REQUEST, "percentile: expected 0 to 100");
    }
    let start = match lookback(&params) {
        Ok(l) => now_ns().saturating_sub(l.saturating_mul(1_000_000_000)),
        Err(msg) => return error(StatusCode::BAD_REQUEST, msg),
    };
    blocking(move || {
        let ids = store.trace_ids(start, u64::MAX, MAX_TRACES, |s| {
            s.service == service && s.name == operation
        })?;
        let traces: Vec<Vec<Node>> = ids
            .iter()
            .map(|id| {
                store
                    .trace(id)
                    .map(|spans| spans.iter().filter_map(Node::from_json).collect())
            })
            .collect::<Result<_, _>>()?;
        Ok(blame(&traces, &service, &operation, percentile))
    })
    .await
    .map_or_else(|r| r, |b| Json(b).into_response())
}

async fn map_endpoint(State(store): State<Store>, params: Params) -> Response {
    let lookback = match lookback(&params) {
        Ok(l) => l,
        Err(msg) => return error(StatusCode::BAD_REQUEST, msg),
    };
    let now = now_ns();
    let start = now.saturating_sub(lookback.saturating_mul(1_000_000_000));
    blocking(move || {
        let ids = store.trace_ids(start, u64::MAX, MAX_TRACES, |_| true)?;
        let mut failed: HashSet<String> = HashSet::new();
        let mut traces: Vec<Vec<Node>> = Vec::with_capacity(ids.len());
        let mut earliest = now;
        for id in &ids {
            let spans = store.trace(id)?;
            for s in &spans {
                if s["status"]["code"] == "ERROR"
                    && let Some(id) = s["span_id"].as_str()
                {
                    failed.insert(id.to_string());
                }
            }
            let nodes: Vec<Node> = spans.iter().filter_map(Node::from_json).collect();
            earliest = nodes
                .iter()
                .map(|n| n.start)
                .filter(|s| *s >= start)
                .fold(earliest, u64::min);
            traces.push(nodes);
        }
        // Rates over the time the store has traffic for in the window, not the whole window: an
        // agent started two minutes ago has not seen an hour of calls.
        let window = (now.saturating_sub(earliest) as f64 / 1e9).max(1.0);
        let edges =
            crate::analysis::service_map::service_map(&traces, &|id| failed.contains(id), window);
        Ok((window, edges))
    })
    .await
    .map_or_else(
        |r| r,
        |(window, edges)| {
            Json(json!({"lookback_seconds": lookback, "window_seconds": window, "edges": edges}))
                .into_response()
        },
    )
}

async fn spans_endpoint(State(store): State<Store>, Path(id): Path<String>) -> Response {
    stored(store, &id).await.map_or_else(
        |r| r,
        |spans| {
            let n = spans.len();
            ok(spans, n)
        },
    )
}

async fn path_endpoint(State(store): State<Store>, Path(id): Path<String>) -> Response {
    let spans = match stored(store, &id).await {
        Ok(spans) => spans,
        Err(r) => return r,
    };
    let nodes: Vec<Node> = spans.iter().filter_map(Node::from_json).collect();
    let ids: HashSet<&str> = nodes.iter().map(|n| n.span_id.as_str()).collect();
    // The root: the span whose parent is not in the trace, earliest first.
    let Some(root) = nodes
        .iter()
        .filter(|n| n.parent.as_deref().is_none_or(|p| !ids.contains(p)))
        .min_by_key(|n| n.start)
    else {
        return error(StatusCode::NOT_FOUND, "trace has no root");
    };
    let segments: Vec<Value> = critical_path(&nodes, &root.span_id)
        .into_iter()
        .map(|s| {
            json!({
                "span_id": s.span_id,
                "start_time_unix_nano": s.start,
                "end_time_unix_nano": s.end,
                "owner": owner(&nodes, &s.span_id),
            })
        })
        .collect();
    Json(json!({"trace_id": id, "root_span_id": root.span_id, "segments": segments}))
        .into_response()
}

//! sockspan's own endpoints over the store: a trace's critical path with its owners, and
//! "why is it slow" for an endpoint at a percentile.

use std::collections::HashSet;

use axum::{
    Json, Router,
    extract::{Path, Query, State},
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::get,
};
use serde::Deserialize;
use serde_json::json;

use crate::{
    analysis::{
        blame::blame,
        critical_path::{Node, critical_path, owner},
    },
    store::Store,
    trace::ids::parse_hex,
};

/// Traces analysed at most per request.
const MAX_TRACES: usize = 5000;

pub fn router(store: Store) -> Router {
    Router::new()
        .route("/api/sockspan/blame", get(blame_endpoint))
        .route(
            "/api/sockspan/traces/{id}/critical-path",
            get(path_endpoint),
        )
        .route("/api/sockspan/service-map", get(map_endpoint))
        .with_state(store)
}

/// Nanoseconds since the epoch, `lookback_s` seconds ago.
fn since(lookback_s: u64) -> u64 {
    let now = crate::clock::WallClock::new().to_unix_ns(crate::clock::monotonic_ns());
    now.saturating_sub(lookback_s.saturating_mul(1_000_000_000))
}

fn problem(code: StatusCode, msg: impl Into<String>) -> Response {
    (code, Json(json!({"error": msg.into()}))).into_response()
}

#[derive(Deserialize)]
struct BlameQuery {
    service: String,
    operation: String,
    #[serde(default = "default_percentile")]
    percentile: f64,
    /// Seconds back from now.
    #[serde(default = "default_lookback")]
    lookback: u64,
}

const fn default_percentile() -> f64 {
    99.0
}

const fn default_lookback() -> u64 {
    3600
}

async fn blame_endpoint(State(store): State<Store>, Query(q): Query<BlameQuery>) -> Response {
    if !(0.0..=100.0).contains(&q.percentile) {
        return problem(StatusCode::BAD_REQUEST, "percentile: expected 0 to 100");
    }
    let start = since(q.lookback);
    let result = tokio::task::spawn_blocking(move || {
        let ids = store.trace_ids(start, u64::MAX, MAX_TRACES, |s| {
            s.service == q.service && s.name == q.operation
        })?;
        let traces: Vec<Vec<Node>> = ids
            .iter()
            .map(|id| {
                store
                    .trace(id)
                    .map(|spans| spans.iter().filter_map(Node::from_json).collect())
            })
            .collect::<Result<_, _>>()?;
        Ok::<_, crate::store::StoreError>(blame(&traces, &q.service, &q.operation, q.percentile))
    })
    .await;
    match result {
        Ok(Ok(b)) => Json(b).into_response(),
        Ok(Err(e)) => problem(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        Err(e) => problem(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

#[derive(Deserialize)]
struct MapQuery {
    /// Seconds back from now.
    #[serde(default = "default_lookback")]
    lookback: u64,
}

async fn map_endpoint(State(store): State<Store>, Query(q): Query<MapQuery>) -> Response {
    let start = since(q.lookback);
    let result = tokio::task::spawn_blocking(move || {
        let ids = store.trace_ids(start, u64::MAX, MAX_TRACES, |_| true)?;
        let mut failed: HashSet<String> = HashSet::new();
        let mut traces: Vec<Vec<Node>> = Vec::with_capacity(ids.len());
        for id in &ids {
            let spans = store.trace(id)?;
            for s in &spans {
                if s["status"]["code"] == "ERROR"
                    && let Some(id) = s["span_id"].as_str()
                {
                    failed.insert(id.to_string());
                }
            }
            traces.push(spans.iter().filter_map(Node::from_json).collect());
        }
        Ok::<_, crate::store::StoreError>(crate::analysis::service_map::service_map(
            &traces,
            &|id| failed.contains(id),
            q.lookback as f64,
        ))
    })
    .await;
    match result {
        Ok(Ok(edges)) => {
            Json(json!({"lookback_seconds": q.lookback, "edges": edges})).into_response()
        }
        Ok(Err(e)) => problem(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        Err(e) => problem(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

async fn path_endpoint(State(store): State<Store>, Path(id): Path<String>) -> Response {
    let Some(trace_id) = parse_hex::<16>(&id) else {
        return problem(
            StatusCode::BAD_REQUEST,
            format!("'{id}' is not a trace id (32 hex digits)"),
        );
    };
    let spans = match tokio::task::spawn_blocking(move || store.trace(&trace_id)).await {
        Ok(Ok(s)) if !s.is_empty() => s,
        Ok(Ok(_)) => return problem(StatusCode::NOT_FOUND, "trace not found"),
        Ok(Err(e)) => return problem(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        Err(e) => return problem(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    };
    let nodes: Vec<Node> = spans.iter().filter_map(Node::from_json).collect();
    let ids: HashSet<&str> = nodes.iter().map(|n| n.span_id.as_str()).collect();
    // The root: the span whose parent is not in the trace, earliest first.
    let Some(root) = nodes
        .iter()
        .filter(|n| n.parent.as_deref().is_none_or(|p| !ids.contains(p)))
        .min_by_key(|n| n.start)
    else {
        return problem(StatusCode::NOT_FOUND, "trace has no root");
    };
    let segments: Vec<serde_json::Value> = critical_path(&nodes, &root.span_id)
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

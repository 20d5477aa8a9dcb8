//! The Jaeger query API (`/api/services`, `/api/services/{service}/operations`,
//! `/api/operations`, `/api/traces`, `/api/traces/{id}`, `/api/dependencies`), in the JSON shapes
//! Jaeger's own query service returns, so Grafana's Jaeger data source and the Jaeger UI can read
//! sockspan's store.

mod model;
pub mod search;

use std::collections::HashSet;

use axum::{
    Router,
    extract::{Path, State},
    http::StatusCode,
    response::Response,
    routing::get,
};
use serde_json::{Value, json};

pub use model::jaeger_trace;
use search::{Filter, Search, has_tag};

use super::{
    envelope::{blocking, error, ok},
    params::Params,
};
use crate::{
    analysis::{critical_path::Node, service_map::service_map},
    store::{Store, StoreError},
};

/// Traces read at most to draw the dependencies.
const MAX_DEPENDENCY_TRACES: usize = 10_000;

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

/// A list answered with its length.
fn list<T: serde::Serialize>(items: Vec<T>) -> Response {
    let n = items.len();
    ok(items, n)
}

async fn services(State(store): State<Store>) -> Response {
    blocking(move || store.services())
        .await
        .map_or_else(|r| r, list)
}

async fn service_operations(State(store): State<Store>, Path(service): Path<String>) -> Response {
    blocking(move || store.operations(&service))
        .await
        .map_or_else(
            |r| r,
            |ops| list(ops.into_iter().map(|(name, _)| name).collect()),
        )
}

async fn operations(State(store): State<Store>, params: Params) -> Response {
    let service = match params.required("service") {
        Ok(s) => s.to_string(),
        Err(msg) => return error(StatusCode::BAD_REQUEST, msg),
    };
    let kind = params.get("spanKind").map(str::to_ascii_lowercase);
    blocking(move || store.operations(&service))
        .await
        .map_or_else(
            |r| r,
            |ops| {
                list(
                    ops.into_iter()
                        .map(|(name, k)| (name, k.to_ascii_lowercase()))
                        .filter(|(_, k)| kind.as_deref().is_none_or(|want| want == k))
                        .map(|(name, k)| json!({"name": name, "spanKind": k}))
                        .collect(),
                )
            },
        )
}

/// The newest traces with a span matching `filter`.
fn matching(store: &Store, filter: Filter) -> Result<Vec<Vec<Value>>, StoreError> {
    let Filter {
        service,
        operation,
        tags,
        min,
        max,
        start_ns,
        end_ns,
        limit,
    } = filter;
    let mut found: Vec<Vec<Value>> = Vec::new();
    let mut seen: HashSet<[u8; 16]> = HashSet::new();
    let mut failure = None;
    let scan = store.scan(start_ns, end_ns, |s| {
        let matches = s.service == service
            && operation.as_deref().is_none_or(|o| o == s.name)
            && min.is_none_or(|m| s.duration_ns >= m)
            && max.is_none_or(|m| s.duration_ns <= m);
        if matches && !seen.contains(&s.trace_id) {
            match store.trace(&s.trace_id) {
                Ok(spans) => {
                    let tagged = tags.is_empty()
                        || spans.iter().any(|span| {
                            span["resource"]["service.name"] == service.as_str()
                                && tags.iter().all(|(k, v)| has_tag(span, k, v))
                        });
                    if tagged && !spans.is_empty() {
                        seen.insert(s.trace_id);
                        found.push(spans);
                    }
                }
                Err(e) => failure = Some(e),
            }
        }
        found.len() < limit && failure.is_none()
    });
    if let Some(e) = failure {
        return Err(e);
    }
    scan?;
    Ok(found)
}

async fn search(State(store): State<Store>, params: Params) -> Response {
    let search = match search::parse(&params) {
        Ok(s) => s,
        Err(msg) => return error(StatusCode::BAD_REQUEST, msg),
    };
    blocking(move || match search {
        Search::Ids(ids) => ids
            .iter()
            .map(|id| store.trace(id))
            .filter(|t| !matches!(t, Ok(spans) if spans.is_empty()))
            .collect::<Result<Vec<_>, _>>(),
        Search::Filter(filter) => matching(&store, filter),
    })
    .await
    .map_or_else(
        |r| r,
        |traces| list(traces.iter().map(|t| jaeger_trace(t)).collect()),
    )
}

async fn trace(State(store): State<Store>, Path(id): Path<String>) -> Response {
    let trace_id = match search::trace_id(&id) {
        Ok(id) => id,
        Err(msg) => return error(StatusCode::BAD_REQUEST, msg),
    };
    match blocking(move || store.trace(&trace_id)).await {
        Ok(spans) if spans.is_empty() => error(
            StatusCode::NOT_FOUND,
            format!("trace {id} not found (older than the store keeps, or not exported yet)"),
        ),
        Ok(spans) => ok(vec![jaeger_trace(&spans)], 1),
        Err(r) => r,
    }
}

/// Caller → callee counts, from the same edges as sockspan's service map: a call to an address
/// no traced service answered is an edge to that address (or to the service seen answering it
/// at other times), not left out.
async fn dependencies(State(store): State<Store>, params: Params) -> Response {
    let (end_millis, lookback_millis) = match (
        params.number::<u64>("endTs"),
        params.number::<u64>("lookback"),
    ) {
        (Ok(e), Ok(l)) => (e, l),
        (Err(msg), _) | (_, Err(msg)) => return error(StatusCode::BAD_REQUEST, msg),
    };
    let end_ns = end_millis.map_or(u64::MAX, |ms| ms.saturating_mul(1_000_000));
    let start_ns =
        lookback_millis.map_or(0, |ms| end_ns.saturating_sub(ms.saturating_mul(1_000_000)));
    blocking(move || {
        let ids = store.trace_ids(start_ns, end_ns, MAX_DEPENDENCY_TRACES, |_| true)?;
        let mut traces = Vec::with_capacity(ids.len());
        for id in &ids {
            traces.push(
                store
                    .trace(id)?
                    .iter()
                    .filter_map(Node::from_json)
                    .collect::<Vec<_>>(),
            );
        }
        Ok(service_map(&traces, &|_| false, 1.0))
    })
    .await
    .map_or_else(
        |r| r,
        |edges| {
            list(
                edges
                    .into_iter()
                    .map(|e| json!({"parent": e.client, "child": e.server, "callCount": e.calls}))
                    .collect(),
            )
        },
    )
}

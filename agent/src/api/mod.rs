//! The query API over the embedded store, served by the agent itself (`--ui`, loopback by
//! default).

pub mod analysis;
pub mod jaeger;

use std::net::SocketAddr;

use crate::store::Store;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error(
        "--ui {0}: only loopback addresses are served until bearer-token authentication lands; use 127.0.0.1 or [::1] and a tunnel"
    )]
    NotLoopback(SocketAddr),
    #[error("--ui {addr}: cannot listen: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// The `OpenAPI` document describing every endpoint.
pub const OPENAPI: &str = include_str!("openapi.json");

/// The web UI: one self-contained page over the API.
const UI: &str = include_str!("ui.html");

async fn ui() -> axum::response::Html<&'static str> {
    axum::response::Html(UI)
}

async fn openapi() -> impl axum::response::IntoResponse {
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        OPENAPI,
    )
}

/// Binds `addr` and serves the API on the current runtime; returns the bound address.
pub async fn serve(addr: SocketAddr, store: Store) -> Result<SocketAddr, ApiError> {
    if !addr.ip().is_loopback() {
        return Err(ApiError::NotLoopback(addr));
    }
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| ApiError::Bind { addr, source })?;
    let bound = listener.local_addr().unwrap_or(addr);
    let app = jaeger::router(store.clone())
        .merge(analysis::router(store))
        .route("/api/openapi.json", axum::routing::get(openapi))
        .route("/", axum::routing::get(ui));
    tokio::spawn(async move {
        if let Err(err) = axum::serve(listener, app).await {
            tracing::warn!("query API stopped: {err}");
        }
    });
    tracing::info!("query API (Jaeger-compatible) on http://{bound}/api/services");
    Ok(bound)
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_openapi_document_is_valid_json_naming_every_route() {
        let doc: serde_json::Value = serde_json::from_str(super::OPENAPI).expect("valid JSON");
        assert_eq!(doc["openapi"], "3.0.3");
        let sources = [
            include_str!("jaeger.rs"),
            include_str!("analysis.rs"),
            include_str!("mod.rs"),
        ];
        // Every route the code registers is documented (axum's `{param}` is OpenAPI's too).
        for source in sources {
            for route in source
                .split("\"/api/")
                .skip(1)
                .filter_map(|rest| rest.split('"').next())
            {
                let path = format!("/api/{route}");
                if route.contains(' ') || route.is_empty() || route.starts_with('{') {
                    continue;
                }
                let documented = doc["paths"]
                    .as_object()
                    .expect("paths")
                    .keys()
                    .any(|k| k.replace("{traceID}", "{id}") == path || *k == path);
                assert!(documented, "{path} is not in openapi.json");
            }
        }
    }
}

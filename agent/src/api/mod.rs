//! The query API over the embedded store, served by the agent itself (`--ui`, loopback by
//! default).

pub mod analysis;
pub mod auth;
mod envelope;
pub mod jaeger;
mod params;
mod ui;

use std::{net::SocketAddr, path::PathBuf};

pub use auth::ApiConfig;

use crate::store::Store;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error(
        "--ui {0}: a non-loopback address needs --ui-token-file (clients then send `Authorization: Bearer <token>`); or listen on 127.0.0.1 / [::1]"
    )]
    NotLoopback(SocketAddr),
    #[error("--ui-token-file {path}: cannot read the token: {source}")]
    TokenFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "--ui-token-file: the token must be at least {min} printable characters without spaces (e.g. `openssl rand -hex 32`)"
    )]
    WeakToken { min: usize },
    #[error("--ui {addr}: cannot listen: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// The `OpenAPI` document describing every endpoint.
pub const OPENAPI: &str = include_str!("openapi.json");

async fn openapi() -> impl axum::response::IntoResponse {
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        OPENAPI,
    )
}

/// Binds the configured address and serves the API on the current runtime; returns the bound
/// address.
pub async fn serve(
    config: &ApiConfig,
    store: Store,
    metrics: crate::metrics::SharedMetrics,
) -> Result<SocketAddr, ApiError> {
    config.validate()?;
    let addr = config.addr;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| ApiError::Bind { addr, source })?;
    let bound = listener.local_addr().unwrap_or(addr);
    let app = jaeger::router(store.clone())
        .merge(analysis::router(store))
        .route("/api/openapi.json", axum::routing::get(openapi))
        .route(
            "/ready",
            axum::routing::get({
                let metrics = metrics.clone();
                move || {
                    let ready = crate::metrics::lock(&metrics).ready;
                    async move {
                        if ready {
                            (axum::http::StatusCode::OK, "ready\n")
                        } else {
                            (axum::http::StatusCode::SERVICE_UNAVAILABLE, "starting\n")
                        }
                    }
                }
            }),
        )
        .route(
            "/metrics",
            axum::routing::get(move || {
                let text = crate::metrics::lock(&metrics).render();
                async move {
                    (
                        [(
                            axum::http::header::CONTENT_TYPE,
                            "text/plain; version=0.0.4; charset=utf-8",
                        )],
                        text,
                    )
                }
            }),
        )
        .route("/api/{*rest}", axum::routing::any(envelope::not_found))
        .merge(ui::router());
    let app = match config.token() {
        Some(token) => app.layer(axum::middleware::from_fn_with_state(
            token,
            auth::require_token,
        )),
        None => app,
    };
    tokio::spawn(async move {
        if let Err(err) = axum::serve(listener, app).await {
            tracing::warn!("query API stopped: {err}");
        }
    });
    tracing::info!(
        token_required = config.token().is_some(),
        "web UI on http://{bound}/ (Jaeger-compatible API under http://{bound}/api/, metrics at /metrics)"
    );
    Ok(bound)
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_openapi_document_is_valid_json_naming_every_route() {
        let doc: serde_json::Value = serde_json::from_str(super::OPENAPI).expect("valid JSON");
        assert_eq!(doc["openapi"], "3.0.3");
        let sources = [
            include_str!("jaeger/mod.rs"),
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

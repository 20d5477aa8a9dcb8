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

/// Binds `addr` and serves the API on the current runtime; returns the bound address.
pub async fn serve(addr: SocketAddr, store: Store) -> Result<SocketAddr, ApiError> {
    if !addr.ip().is_loopback() {
        return Err(ApiError::NotLoopback(addr));
    }
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| ApiError::Bind { addr, source })?;
    let bound = listener.local_addr().unwrap_or(addr);
    let app = jaeger::router(store.clone()).merge(analysis::router(store));
    tokio::spawn(async move {
        if let Err(err) = axum::serve(listener, app).await {
            tracing::warn!("query API stopped: {err}");
        }
    });
    tracing::info!("query API (Jaeger-compatible) on http://{bound}/api/services");
    Ok(bound)
}

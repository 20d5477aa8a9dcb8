//! Jaeger's response envelope (`{"data", "total", "limit", "offset", "errors"}`), used by every
//! endpoint for its errors too, so a client reads a failure the same way wherever it happens: a
//! bad parameter, a missing trace, a missing token, an unknown path.

use axum::{
    Json,
    http::StatusCode,
    response::{IntoResponse, Response},
};
use serde::Serialize;

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

/// `data` with its count.
pub fn ok<T: Serialize>(data: T, total: usize) -> Response {
    Json(Envelope {
        data,
        total,
        limit: 0,
        offset: 0,
        errors: None,
    })
    .into_response()
}

/// An error answered as `code`, its message in `errors[0].msg`.
pub fn error(code: StatusCode, msg: impl Into<String>) -> Response {
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

/// Unknown paths under `/api/`.
pub async fn not_found(uri: axum::http::Uri) -> Response {
    error(
        StatusCode::NOT_FOUND,
        format!(
            "no endpoint {} (the API is described at /api/openapi.json)",
            uri.path()
        ),
    )
}

/// Runs a blocking store read off the async threads; a store error is a 500.
pub async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, crate::store::StoreError> + Send + 'static,
) -> Result<T, Response> {
    match tokio::task::spawn_blocking(f).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(e)) => Err(error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())),
        Err(e) => Err(error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())),
    }
}

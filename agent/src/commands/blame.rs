//! `sockspan blame`: "why is it slow" as a table, asked of the running agent's API.

use bytes::Bytes;
use http_body_util::{BodyExt as _, Empty};
use hyper_util::{client::legacy::Client, rt::TokioExecutor};

use crate::{
    analysis::blame::{Blame, table},
    cli::BlameArgs,
};

#[derive(Debug, thiserror::Error)]
pub enum BlameError {
    #[error("--api {api}: {reason}")]
    BadApi { api: String, reason: String },
    #[error(
        "cannot reach the agent's API at {api} ({reason}); is `sockspan run` running with --store?"
    )]
    Unreachable { api: String, reason: String },
    #[error("the API answered {status}: {body}")]
    Refused { status: u16, body: String },
    #[error("bad answer from the API: {0}")]
    BadAnswer(String),
    /// Nothing to explain: exits non-zero, so a script does not read an empty table as "fine".
    #[error(
        "no request of {service} \"{operation}\" in the last {minutes} minutes (see /api/services and /api/services/{service}/operations)"
    )]
    NoRequests {
        service: String,
        operation: String,
        minutes: u64,
    },
}

/// Percent-encodes a query value (everything but RFC 3986 unreserved characters).
fn encode(value: &str) -> String {
    value
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                char::from(b).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

pub async fn run(args: BlameArgs) -> Result<(), BlameError> {
    let url = format!(
        "{}/api/sockspan/blame?service={}&operation={}&percentile={}&lookback={}",
        args.api.trim_end_matches('/'),
        encode(&args.service),
        encode(&args.operation),
        args.percentile,
        args.lookback_minutes * 60
    );
    let uri: hyper::Uri =
        url.parse()
            .map_err(|e: hyper::http::uri::InvalidUri| BlameError::BadApi {
                api: args.api.clone(),
                reason: e.to_string(),
            })?;
    let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let response = client.get(uri).await.map_err(|e| BlameError::Unreachable {
        api: args.api.clone(),
        reason: e.to_string(),
    })?;
    let status = response.status();
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| BlameError::BadAnswer(e.to_string()))?
        .to_bytes();
    if !status.is_success() {
        // The API's errors come in Jaeger's envelope; its message is what a person needs.
        let message = serde_json::from_slice::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v["errors"][0]["msg"].as_str().map(str::to_string))
            .unwrap_or_else(|| String::from_utf8_lossy(&body).into_owned());
        return Err(BlameError::Refused {
            status: status.as_u16(),
            body: message,
        });
    }
    let blame: Blame =
        serde_json::from_slice(&body).map_err(|e| BlameError::BadAnswer(e.to_string()))?;
    if blame.matched == 0 {
        return Err(BlameError::NoRequests {
            service: args.service,
            operation: args.operation,
            minutes: args.lookback_minutes,
        });
    }
    print!("{}", table(&blame));
    Ok(())
}

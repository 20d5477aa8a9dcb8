//! `sockspan blame`: "why is it slow" as a table, asked of the running agent's API.

use bytes::Bytes;
use http_body_util::{BodyExt as _, Empty};
use hyper_util::{client::legacy::Client, rt::TokioExecutor};

use crate::{
    analysis::blame::{Blame, table},
    cli::BlameArgs,
    pipeline::PipelineError,
};

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

pub async fn run(args: BlameArgs) -> Result<(), PipelineError> {
    let url = format!(
        "{}/api/sockspan/blame?service={}&operation={}&percentile={}&lookback={}",
        args.api.trim_end_matches('/'),
        encode(&args.service),
        encode(&args.operation),
        args.percentile,
        args.lookback_minutes * 60
    );
    let uri: hyper::Uri = url
        .parse()
        .map_err(|e| PipelineError::Privilege(format!("--api {}: {e}", args.api)))?;
    let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let response = client.get(uri).await.map_err(|e| {
        PipelineError::Privilege(format!(
            "cannot reach the agent's API at {} ({e}); is `sockspan run` running with the store?",
            args.api
        ))
    })?;
    let status = response.status();
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| PipelineError::Privilege(e.to_string()))?
        .to_bytes();
    if !status.is_success() {
        return Err(PipelineError::Privilege(format!(
            "the API answered {status}: {}",
            String::from_utf8_lossy(&body)
        )));
    }
    let blame: Blame = serde_json::from_slice(&body)
        .map_err(|e| PipelineError::Privilege(format!("bad answer from the API: {e}")))?;
    if blame.matched == 0 {
        println!(
            "no request of {} \"{}\" in the last {} minutes (see /api/services and /api/services/{}/operations)",
            args.service, args.operation, args.lookback_minutes, args.service
        );
    } else {
        print!("{}", table(&blame));
    }
    Ok(())
}

//! Sending one OTLP request (spans or metrics) over gRPC (tonic) or HTTP/protobuf (hyper),
//! gzip-compressed.

use std::{io::Write as _, time::Duration};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::TokioExecutor,
};
use opentelemetry_proto::tonic::collector::{
    metrics::v1::{ExportMetricsServiceRequest, metrics_service_client::MetricsServiceClient},
    trace::v1::{ExportTraceServiceRequest, trace_service_client::TraceServiceClient},
};
use prost::Message as _;
use tonic::{
    codec::CompressionEncoding,
    metadata::{MetadataKey, MetadataValue},
    transport::Channel,
};

use super::config::{OtlpConfig, OtlpConfigError, OtlpProtocol};

/// Why a send failed, and whether trying again may help (OTLP specification, "Failures").
#[derive(Debug)]
pub struct SendError {
    pub retryable: bool,
    pub message: String,
}

/// One export request of either signal.
#[derive(Debug, Clone)]
pub enum Request {
    Traces(ExportTraceServiceRequest),
    Metrics(ExportMetricsServiceRequest),
}

impl Request {
    fn encode_to_vec(&self) -> Vec<u8> {
        match self {
            Self::Traces(r) => r.encode_to_vec(),
            Self::Metrics(r) => r.encode_to_vec(),
        }
    }
}

pub enum Transport {
    Grpc {
        /// Shared by the clients of each signal (cloning a channel is cheap).
        channel: Channel,
        headers: Vec<(
            MetadataKey<tonic::metadata::Ascii>,
            MetadataValue<tonic::metadata::Ascii>,
        )>,
    },
    Http {
        client: Client<HttpConnector, Full<Bytes>>,
        uri: hyper::Uri,
        headers: Vec<(hyper::header::HeaderName, hyper::header::HeaderValue)>,
    },
}

type GrpcHeaders = [(
    MetadataKey<tonic::metadata::Ascii>,
    MetadataValue<tonic::metadata::Ascii>,
)];

/// A gRPC request carrying the configured headers as metadata.
fn with_headers<T>(message: T, headers: &GrpcHeaders) -> tonic::Request<T> {
    let mut req = tonic::Request::new(message);
    for (k, v) in headers {
        req.metadata_mut().insert(k.clone(), v.clone());
    }
    req
}

fn bad_header(name: &str) -> OtlpConfigError {
    OtlpConfigError::Pair {
        field: "OTEL_EXPORTER_OTLP_HEADERS",
        entry: name.to_string(),
    }
}

impl Transport {
    /// Prepares the client; no connection is made until the first send.
    pub fn new(config: &OtlpConfig) -> Result<Self, OtlpConfigError> {
        let bad_endpoint = || OtlpConfigError::Endpoint {
            field: "--otlp-endpoint",
            got: config.endpoint.clone(),
        };
        match config.protocol {
            OtlpProtocol::Grpc => {
                let channel = Channel::from_shared(config.endpoint.clone())
                    .map_err(|_| bad_endpoint())?
                    .timeout(config.timeout)
                    .connect_timeout(config.timeout)
                    .connect_lazy();
                let headers = config
                    .headers
                    .iter()
                    .map(|(k, v)| {
                        let key = MetadataKey::from_bytes(k.to_ascii_lowercase().as_bytes())
                            .map_err(|_| bad_header(k))?;
                        let value =
                            MetadataValue::try_from(v.as_str()).map_err(|_| bad_header(k))?;
                        Ok((key, value))
                    })
                    .collect::<Result<_, OtlpConfigError>>()?;
                Ok(Self::Grpc { channel, headers })
            }
            OtlpProtocol::HttpProtobuf => {
                let uri: hyper::Uri = config.endpoint.parse().map_err(|_| bad_endpoint())?;
                let headers = config
                    .headers
                    .iter()
                    .map(|(k, v)| {
                        let name = hyper::header::HeaderName::from_bytes(k.as_bytes())
                            .map_err(|_| bad_header(k))?;
                        let value =
                            hyper::header::HeaderValue::from_str(v).map_err(|_| bad_header(k))?;
                        Ok((name, value))
                    })
                    .collect::<Result<_, OtlpConfigError>>()?;
                let mut connector = HttpConnector::new();
                connector.set_connect_timeout(Some(config.timeout));
                Ok(Self::Http {
                    client: Client::builder(TokioExecutor::new()).build(connector),
                    uri,
                    headers,
                })
            }
        }
    }

    pub async fn send(&mut self, request: Request, timeout: Duration) -> Result<(), SendError> {
        match self {
            Self::Grpc { channel, headers } => {
                let answer = match request {
                    Request::Traces(r) => TraceServiceClient::new(channel.clone())
                        .send_compressed(CompressionEncoding::Gzip)
                        .export(with_headers(r, headers))
                        .await
                        .map(drop),
                    Request::Metrics(r) => MetricsServiceClient::new(channel.clone())
                        .send_compressed(CompressionEncoding::Gzip)
                        .export(with_headers(r, headers))
                        .await
                        .map(drop),
                };
                match answer {
                    Ok(()) => Ok(()),
                    Err(status) => {
                        use tonic::Code;
                        let retryable = matches!(
                            status.code(),
                            Code::Cancelled
                                | Code::DeadlineExceeded
                                | Code::ResourceExhausted
                                | Code::Aborted
                                | Code::OutOfRange
                                | Code::Unavailable
                                | Code::DataLoss
                        );
                        Err(SendError {
                            retryable,
                            message: format!("gRPC {:?}: {}", status.code(), status.message()),
                        })
                    }
                }
            }
            Self::Http {
                client,
                uri,
                headers,
            } => {
                let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
                let body = gz
                    .write_all(&request.encode_to_vec())
                    .and_then(|()| gz.finish())
                    .map_err(|e| SendError {
                        retryable: false,
                        message: format!("gzip: {e}"),
                    })?;
                let mut builder = hyper::Request::post(uri.clone())
                    .header(hyper::header::CONTENT_TYPE, "application/x-protobuf")
                    .header(hyper::header::CONTENT_ENCODING, "gzip");
                for (k, v) in headers.iter() {
                    builder = builder.header(k, v);
                }
                let req = builder
                    .body(Full::new(Bytes::from(body)))
                    .map_err(|e| SendError {
                        retryable: false,
                        message: e.to_string(),
                    })?;
                let response = tokio::time::timeout(timeout, client.request(req))
                    .await
                    .map_err(|_| SendError {
                        retryable: true,
                        message: format!("no answer within {timeout:?}"),
                    })?
                    .map_err(|e| SendError {
                        retryable: true,
                        message: e.to_string(),
                    })?;
                let status = response.status();
                // Read the body so the connection can be reused.
                let _ = tokio::time::timeout(timeout, response.into_body().collect()).await;
                if status.is_success() {
                    Ok(())
                } else {
                    Err(SendError {
                        retryable: matches!(status.as_u16(), 429 | 502 | 503 | 504),
                        message: format!("HTTP {status}"),
                    })
                }
            }
        }
    }
}

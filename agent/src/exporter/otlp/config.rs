//! OTLP exporter settings, from flags and the standard `OTEL_*` environment variables.

use std::time::Duration;

use crate::trace::span::KeyValue;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OtlpProtocol {
    Grpc,
    HttpProtobuf,
}

impl OtlpProtocol {
    fn parse(value: &str, field: &'static str) -> Result<Self, OtlpConfigError> {
        match value.trim() {
            "grpc" => Ok(Self::Grpc),
            "http/protobuf" => Ok(Self::HttpProtobuf),
            other => Err(OtlpConfigError::Protocol {
                field,
                got: other.to_string(),
            }),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum OtlpConfigError {
    #[error("{field}: unsupported OTLP protocol `{got}`; accepted: grpc, http/protobuf")]
    Protocol { field: &'static str, got: String },
    #[error(
        "{field}: `{got}` is not an http:// URL (TLS endpoints are not supported yet: point sockspan at a local collector)"
    )]
    Endpoint { field: &'static str, got: String },
    #[error("{field}: `{entry}` is not a key=value pair")]
    Pair { field: &'static str, entry: String },
    #[error("{field}: `{got}` is not a timeout in milliseconds (a whole number from 1 to 600000)")]
    Timeout { field: &'static str, got: String },
}

/// `OTEL_EXPORTER_OTLP_[TRACES_]TIMEOUT`: milliseconds per export request, as the specification
/// says (default 10 s).
fn timeout(text: &str, field: &'static str) -> Result<Duration, OtlpConfigError> {
    match text.trim().parse::<u64>() {
        Ok(ms @ 1..=600_000) => Ok(Duration::from_millis(ms)),
        _ => Err(OtlpConfigError::Timeout {
            field,
            got: text.to_string(),
        }),
    }
}

/// Which OTLP signal a configuration is for: each has its own variables
/// (`OTEL_EXPORTER_OTLP_TRACES_*`, `OTEL_EXPORTER_OTLP_METRICS_*`) and HTTP path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    Traces,
    Metrics,
}

/// A signal's variables and HTTP path.
struct SignalVars {
    protocol: &'static str,
    endpoint: &'static str,
    headers: &'static str,
    timeout: &'static str,
    /// The path an HTTP endpoint gets when given as a base URL.
    path: &'static str,
}

impl Signal {
    const fn vars(self) -> SignalVars {
        match self {
            Self::Traces => SignalVars {
                protocol: "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
                endpoint: "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                headers: "OTEL_EXPORTER_OTLP_TRACES_HEADERS",
                timeout: "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT",
                path: "/v1/traces",
            },
            Self::Metrics => SignalVars {
                protocol: "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL",
                endpoint: "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
                headers: "OTEL_EXPORTER_OTLP_METRICS_HEADERS",
                timeout: "OTEL_EXPORTER_OTLP_METRICS_TIMEOUT",
                path: "/v1/metrics",
            },
        }
    }
}

/// Where and how spans (or metrics) are sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OtlpConfig {
    pub protocol: OtlpProtocol,
    /// For HTTP the full traces URL (`…/v1/traces`); for gRPC the collector's base URL.
    pub endpoint: String,
    pub headers: Vec<(String, String)>,
    /// `OTEL_RESOURCE_ATTRIBUTES`: added to every resource unless the process sets the key.
    pub resource_attributes: Vec<KeyValue>,
    /// Spans waiting to be sent; beyond it new spans are dropped and counted.
    pub queue_spans: usize,
    /// Spans per export request.
    pub batch_spans: usize,
    pub timeout: Duration,
}

/// Percent-decoding for header values (`OTEL_EXPORTER_OTLP_HEADERS` is URL-encoded).
fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let Some(byte) = text
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            out.push(byte);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `k=v,k2=v2` lists, as the `OTel` environment variables write them.
fn pairs(text: &str, field: &'static str) -> Result<Vec<(String, String)>, OtlpConfigError> {
    text.split(',')
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .map(|entry| {
            let (k, v) = entry.split_once('=').ok_or_else(|| OtlpConfigError::Pair {
                field,
                entry: entry.to_string(),
            })?;
            Ok((percent_decode(k.trim()), percent_decode(v.trim())))
        })
        .collect()
}

fn check_http_url(url: &str, field: &'static str) -> Result<(), OtlpConfigError> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| OtlpConfigError::Endpoint {
            field,
            got: url.to_string(),
        })?;
    if rest.is_empty() || rest.starts_with('/') {
        return Err(OtlpConfigError::Endpoint {
            field,
            got: url.to_string(),
        });
    }
    Ok(())
}

impl OtlpConfig {
    /// Resolves the settings of the traces exporter: the flag first, then the signal-specific
    /// variable, then the general one, then the defaults of the OTLP exporter specification.
    pub fn resolve(
        flag_endpoint: Option<&str>,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Self, OtlpConfigError> {
        Self::resolve_for(Signal::Traces, flag_endpoint, env)
    }

    /// Resolves the settings of one signal's exporter (`--otlp-endpoint` is the base URL of
    /// both).
    pub fn resolve_for(
        signal: Signal,
        flag_endpoint: Option<&str>,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Self, OtlpConfigError> {
        let vars = signal.vars();
        let protocol = match (env(vars.protocol), env("OTEL_EXPORTER_OTLP_PROTOCOL")) {
            (Some(p), _) => OtlpProtocol::parse(&p, vars.protocol)?,
            (None, Some(p)) => OtlpProtocol::parse(&p, "OTEL_EXPORTER_OTLP_PROTOCOL")?,
            (None, None) => OtlpProtocol::HttpProtobuf,
        };
        let base = |url: &str| match protocol {
            OtlpProtocol::Grpc => url.trim_end_matches('/').to_string(),
            OtlpProtocol::HttpProtobuf if url.trim_end_matches('/').ends_with(vars.path) => {
                url.trim_end_matches('/').to_string()
            }
            OtlpProtocol::HttpProtobuf => {
                format!("{}{}", url.trim_end_matches('/'), vars.path)
            }
        };
        let (endpoint, field) = if let Some(url) = flag_endpoint {
            (base(url), "--otlp-endpoint")
        } else if let Some(url) = env(vars.endpoint) {
            (url, vars.endpoint)
        } else if let Some(url) = env("OTEL_EXPORTER_OTLP_ENDPOINT") {
            (base(&url), "OTEL_EXPORTER_OTLP_ENDPOINT")
        } else {
            let default = match protocol {
                OtlpProtocol::Grpc => "http://localhost:4317".to_string(),
                OtlpProtocol::HttpProtobuf => format!("http://localhost:4318{}", vars.path),
            };
            (default, "default endpoint")
        };
        check_http_url(&endpoint, field)?;
        let mut headers = match env("OTEL_EXPORTER_OTLP_HEADERS") {
            Some(h) => pairs(&h, "OTEL_EXPORTER_OTLP_HEADERS")?,
            None => Vec::new(),
        };
        if let Some(h) = env(vars.headers) {
            headers.extend(pairs(&h, vars.headers)?);
        }
        let resource_attributes = match env("OTEL_RESOURCE_ATTRIBUTES") {
            Some(a) => pairs(&a, "OTEL_RESOURCE_ATTRIBUTES")?
                .into_iter()
                .map(|(k, v)| KeyValue::owned(k, v))
                .collect(),
            None => Vec::new(),
        };
        let timeout = match (env(vars.timeout), env("OTEL_EXPORTER_OTLP_TIMEOUT")) {
            (Some(t), _) => timeout(&t, vars.timeout)?,
            (None, Some(t)) => timeout(&t, "OTEL_EXPORTER_OTLP_TIMEOUT")?,
            (None, None) => Duration::from_secs(10),
        };
        Ok(Self {
            protocol,
            endpoint,
            headers,
            resource_attributes,
            queue_spans: 8192,
            batch_spans: 512,
            timeout,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn resolve(flag: Option<&str>, vars: &[(&str, &str)]) -> Result<OtlpConfig, OtlpConfigError> {
        let vars: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| ((*k).to_string(), (*v).to_string()))
            .collect();
        OtlpConfig::resolve(flag, &|k| vars.get(k).cloned())
    }

    #[test]
    fn timeouts_are_milliseconds_and_bad_ones_name_the_variable() {
        assert_eq!(
            resolve(None, &[]).expect("default").timeout,
            Duration::from_secs(10)
        );
        let c = resolve(
            None,
            &[
                ("OTEL_EXPORTER_OTLP_TIMEOUT", "2500"),
                ("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "700"),
            ],
        )
        .expect("timeout");
        assert_eq!(c.timeout, Duration::from_millis(700));
        let err = resolve(None, &[("OTEL_EXPORTER_OTLP_TIMEOUT", "10s")]).expect_err("unit");
        assert!(
            err.to_string()
                .starts_with("OTEL_EXPORTER_OTLP_TIMEOUT: `10s`"),
            "{err}"
        );
    }

    #[test]
    fn endpoints_follow_the_specification() {
        let c = resolve(None, &[]).expect("defaults");
        assert_eq!(
            (c.protocol, c.endpoint.as_str()),
            (
                OtlpProtocol::HttpProtobuf,
                "http://localhost:4318/v1/traces"
            )
        );
        let c = resolve(None, &[("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")]).expect("grpc");
        assert_eq!(c.endpoint, "http://localhost:4317");
        let c = resolve(
            None,
            &[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318/")],
        )
        .expect("base");
        assert_eq!(c.endpoint, "http://collector:4318/v1/traces");
        let c = resolve(
            None,
            &[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://a:1"),
                ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://b:2/custom"),
            ],
        )
        .expect("signal-specific");
        assert_eq!(c.endpoint, "http://b:2/custom");
        let c = resolve(
            Some("http://flag:9"),
            &[("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://b:2/x")],
        )
        .expect("flag");
        assert_eq!(c.endpoint, "http://flag:9/v1/traces");
    }

    #[test]
    fn metrics_have_their_own_variables_and_path() {
        let vars: HashMap<String, String> = [
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318"),
            ("OTEL_EXPORTER_OTLP_TRACES_HEADERS", "only=traces"),
            ("OTEL_EXPORTER_OTLP_METRICS_TIMEOUT", "900"),
        ]
        .iter()
        .map(|(k, v)| ((*k).to_string(), (*v).to_string()))
        .collect();
        let env = |k: &str| vars.get(k).cloned();
        let m = OtlpConfig::resolve_for(Signal::Metrics, None, &env).expect("metrics");
        assert_eq!(m.endpoint, "http://collector:4318/v1/metrics");
        assert!(m.headers.is_empty());
        assert_eq!(m.timeout, Duration::from_millis(900));
        let m =
            OtlpConfig::resolve_for(Signal::Metrics, Some("http://flag:9/"), &env).expect("flag");
        assert_eq!(m.endpoint, "http://flag:9/v1/metrics");
        let e = OtlpConfig::resolve_for(Signal::Metrics, None, &|k| {
            (k == "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL").then(|| "thrift".to_string())
        })
        .expect_err("protocol");
        assert!(
            e.to_string()
                .starts_with("OTEL_EXPORTER_OTLP_METRICS_PROTOCOL:"),
            "{e}"
        );
    }

    #[test]
    fn headers_and_resource_attributes() {
        let c = resolve(
            None,
            &[
                (
                    "OTEL_EXPORTER_OTLP_HEADERS",
                    "api-key=abc%20def, x-tenant=t1",
                ),
                (
                    "OTEL_RESOURCE_ATTRIBUTES",
                    "deployment.environment=prod,team=ml",
                ),
            ],
        )
        .expect("parse");
        assert_eq!(
            c.headers,
            [
                ("api-key".to_string(), "abc def".to_string()),
                ("x-tenant".to_string(), "t1".to_string())
            ]
        );
        assert_eq!(c.resource_attributes.len(), 2);
    }

    #[test]
    fn bad_settings_name_the_field() {
        let e = resolve(None, &[("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json")]).expect_err("json");
        assert!(
            e.to_string().starts_with("OTEL_EXPORTER_OTLP_PROTOCOL:"),
            "{e}"
        );
        let e = resolve(Some("https://x:1"), &[]).expect_err("tls");
        assert!(e.to_string().starts_with("--otlp-endpoint:"), "{e}");
        let e = resolve(None, &[("OTEL_EXPORTER_OTLP_HEADERS", "novalue")]).expect_err("pair");
        assert!(e.to_string().contains("OTEL_EXPORTER_OTLP_HEADERS"), "{e}");
    }
}

//! What a finished HTTP/2 stream contributes to its span: a gRPC call or a plain HTTP/2
//! exchange, after the OpenTelemetry RPC and HTTP conventions.

use std::{borrow::Cow, sync::Arc};

use super::grpc;
use crate::{
    protocol::{ATTRIBUTES_ADDED_AT_EXPORT, SpanFacts, Summary, url::TargetAttributes},
    trace::{
        intern::Interner,
        span::{AttrValue, KeyValue, SpanStatus},
    },
};

/// How a stream ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// The response ended its stream.
    Complete,
    /// `RST_STREAM` with this error code, from either end.
    Reset(u32),
    /// GOAWAY said the stream would not be processed.
    Refused,
    /// The connection closed first.
    Closed,
}

/// The request's side of a stream, from its first header block.
#[derive(Debug, Default)]
pub struct RequestFacts {
    pub method: Option<Cow<'static, str>>,
    /// `:path` as sent (the query is redacted at export).
    pub path: Option<Box<str>>,
    pub authority: Option<Arc<str>>,
    pub scheme: Option<&'static str>,
    pub user_agent: Option<Arc<str>>,
    pub grpc: bool,
    /// Fields of the block that referred to table entries the agent never saw.
    pub unknown_fields: u32,
    /// Allowlisted headers (`--record-headers`), already as attributes.
    pub recorded: Vec<KeyValue>,
}

/// The response's side.
#[derive(Debug, Default, Clone, Copy)]
pub struct ResponseFacts {
    pub status: Option<u16>,
    /// A header block came after the first (trailers), as gRPC always sends.
    pub trailers: bool,
    pub grpc_status: Option<u32>,
    pub grpc: bool,
    pub unknown_fields: u32,
}

#[derive(Debug)]
pub struct Http2Summary {
    pub request: RequestFacts,
    pub response: ResponseFacts,
    pub ending: Ending,
}

impl Http2Summary {
    fn is_grpc(&self) -> bool {
        self.request.grpc
            || self.response.grpc
            || self.response.grpc_status.is_some()
            || self.shaped_like_grpc()
    }

    /// With the content-types unresolvable (HPACK entries from before the attach), the shape of
    /// a gRPC call: a POST to `/Service/Method` (or to a path that could not be resolved either)
    /// whose response ended with trailers, which plain HTTP/2 servers hardly ever send.
    fn shaped_like_grpc(&self) -> bool {
        let path_fits = self.request.path.as_deref().is_none_or(|p| {
            p.strip_prefix('/')
                .and_then(|p| p.split_once('/'))
                .is_some_and(|(service, method)| {
                    !service.is_empty() && !method.is_empty() && !method.contains(['/', '?'])
                })
        });
        self.request.unknown_fields + self.response.unknown_fields > 0
            && self.response.trailers
            && self.request.method.as_deref().is_none_or(|m| m == "POST")
            && path_fits
    }

    /// `package.Service/Method` from `/package.Service/Method`.
    fn rpc_method(&self) -> Option<&str> {
        let path = self.request.path.as_deref()?.strip_prefix('/')?;
        path.contains('/').then_some(path)
    }

    fn unknown_fields(&self) -> u32 {
        self.request.unknown_fields + self.response.unknown_fields
    }

    fn ending_error(&self) -> Option<String> {
        match self.ending {
            Ending::Complete => None,
            Ending::Reset(code) => Some(format!("stream reset: {}", grpc::h2_error_name(code))),
            Ending::Refused => Some("stream refused by GOAWAY".to_string()),
            Ending::Closed => Some("connection closed before the response ended".to_string()),
        }
    }

    fn expand_grpc(
        self,
        span: &SpanFacts,
        strings: &mut Interner,
    ) -> (Arc<str>, Vec<KeyValue>, SpanStatus) {
        let mut attributes = Vec::with_capacity(12 + ATTRIBUTES_ADDED_AT_EXPORT);
        attributes.push(KeyValue::str("rpc.system.name", "grpc"));
        // Until v1.39 of the conventions the system was `rpc.system`; Jaeger and Tempo users'
        // queries and dashboards still name it.
        attributes.push(KeyValue::str("rpc.system", "grpc"));
        let name = if let Some(method) = self.rpc_method() {
            let name = strings.get(method);
            attributes.push(KeyValue::shared("rpc.method", Arc::clone(&name)));
            if let Some((service, _)) = method.split_once('/') {
                attributes.push(KeyValue::shared("rpc.service", strings.get(service)));
            }
            name
        } else {
            attributes.push(KeyValue::str("rpc.method", "_OTHER"));
            strings.get("grpc")
        };
        if let Some(code) = self.response.grpc_status {
            attributes.push(KeyValue::str(
                "rpc.response.status_code",
                grpc::status_name(code),
            ));
            attributes.push(KeyValue::int("rpc.grpc.status_code", i64::from(code)));
        }
        self.common_attributes(span, strings, &mut attributes);
        let status = if let Some(error) = self.ending_error() {
            SpanStatus::Error(error)
        } else {
            match self.response.grpc_status {
                Some(0) => SpanStatus::Unset,
                Some(code) => {
                    SpanStatus::Error(format!("gRPC status {code} {}", grpc::status_name(code)))
                }
                // Sent, but as a reference to a table entry the agent never saw: unknown.
                None if self.response.unknown_fields > 0 => SpanStatus::Unset,
                None => SpanStatus::Error("response without grpc-status".to_string()),
            }
        };
        (name, attributes, status)
    }

    fn expand_http(
        mut self,
        span: &SpanFacts,
        strings: &mut Interner,
    ) -> (Arc<str>, Vec<KeyValue>, SpanStatus) {
        let mut attributes = Vec::with_capacity(14 + ATTRIBUTES_ADDED_AT_EXPORT);
        let method = self
            .request
            .method
            .clone()
            .unwrap_or(Cow::Borrowed("_OTHER"));
        attributes.push(KeyValue::str("http.request.method", method.clone()));
        let name = match self.request.path.take() {
            Some(target) => {
                let target = TargetAttributes::of(
                    &method,
                    AttrValue::Str(String::from(target).into()),
                    span.server,
                    strings,
                );
                attributes.push(KeyValue {
                    key: "url.path".into(),
                    value: target.path,
                });
                if let Some(query) = target.query {
                    attributes.push(KeyValue::str("url.query", query));
                }
                if let Some(route) = target.route {
                    attributes.push(KeyValue::shared("http.route", route));
                }
                target.name
            }
            None => strings.get(&method),
        };
        if let Some(code) = self.response.status {
            attributes.push(KeyValue::int("http.response.status_code", i64::from(code)));
        }
        if let Some(ua) = &self.request.user_agent {
            attributes.push(KeyValue::shared("user_agent.original", strings.get(ua)));
        }
        if span.server {
            attributes.push(KeyValue::str(
                "url.scheme",
                self.request.scheme.unwrap_or("http"),
            ));
        }
        self.common_attributes(span, strings, &mut attributes);
        let status = if let Some(error) = self.ending_error() {
            SpanStatus::Error(error)
        } else {
            match self.response.status {
                None => SpanStatus::Error("response without :status".to_string()),
                Some(code) if code >= 500 || (!span.server && code >= 400) => {
                    SpanStatus::Error(format!("HTTP {code}"))
                }
                Some(_) => SpanStatus::Unset,
            }
        };
        (name, attributes, status)
    }

    /// Attributes of both kinds: protocol, addresses, what HPACK could not resolve, recorded
    /// headers.
    fn common_attributes(
        &self,
        span: &SpanFacts,
        strings: &mut Interner,
        attributes: &mut Vec<KeyValue>,
    ) {
        attributes.push(KeyValue::str("network.protocol.name", "http"));
        attributes.push(KeyValue::str("network.protocol.version", "2"));
        span.address_attributes(self.request.authority.as_ref(), strings, attributes);
        let unknown = self.unknown_fields();
        if unknown > 0 {
            attributes.push(KeyValue::int(
                "sockspan.hpack.unknown_fields",
                i64::from(unknown),
            ));
        }
        attributes.extend(self.request.recorded.iter().cloned());
    }
}

impl Summary for Http2Summary {
    fn expand(
        self,
        span: &SpanFacts,
        strings: &mut Interner,
    ) -> (Arc<str>, Vec<KeyValue>, SpanStatus) {
        if self.is_grpc() {
            self.expand_grpc(span, strings)
        } else {
            self.expand_http(span, strings)
        }
    }

    fn describe(&self) -> String {
        let target = self.request.path.as_deref().unwrap_or("?");
        let method = self.request.method.as_deref().unwrap_or("?");
        let outcome = match (self.ending, self.response.grpc_status, self.response.status) {
            (Ending::Complete, Some(code), _) => format!("grpc {code}"),
            (Ending::Complete, None, _) if self.is_grpc() => "grpc ?".to_string(),
            (Ending::Complete, None, Some(status)) => status.to_string(),
            (Ending::Complete, None, None) => "none".to_string(),
            (Ending::Reset(code), ..) => format!("reset {code}"),
            (Ending::Refused, ..) => "refused".to_string(),
            (Ending::Closed, ..) => "closed".to_string(),
        };
        format!("{method} {target} -> {outcome}")
    }
}

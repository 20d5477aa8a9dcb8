//! Finished spans, as the exporters receive them.

use std::{borrow::Cow, sync::Arc};

use super::ids::{SpanId, TraceId};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpanKind {
    Server,
    Client,
}

impl SpanKind {
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Server => "SERVER",
            Self::Client => "CLIENT",
        }
    }
}

/// An attribute value. Strings are `Cow`: the many fixed values (`"tcp"`, `"1.1"`, `"http"`, the
/// evidence names) cost no allocation per span; values that repeat across spans (addresses,
/// `Host`, `User-Agent`, routes) are shared copies from the tracer's interner.
#[derive(Debug, Clone)]
pub enum AttrValue {
    Str(Cow<'static, str>),
    Shared(Arc<str>),
    Int(i64),
}

impl AttrValue {
    /// The value if it is a string, however it is held.
    #[must_use]
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Self::Str(s) => Some(s),
            Self::Shared(s) => Some(s),
            Self::Int(_) => None,
        }
    }
}

/// Values compare by content: a shared string equals the same text held any other way.
impl PartialEq for AttrValue {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Self::Int(a), Self::Int(b)) => a == b,
            _ => self.as_str().is_some() && self.as_str() == other.as_str(),
        }
    }
}

impl Eq for AttrValue {}

/// One attribute. Keys are the OpenTelemetry semantic-convention names: static strings, except
/// for user-supplied ones (`OTEL_RESOURCE_ATTRIBUTES`), so a span allocates no keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyValue {
    pub key: Cow<'static, str>,
    pub value: AttrValue,
}

impl KeyValue {
    pub fn str(key: &'static str, value: impl Into<Cow<'static, str>>) -> Self {
        Self {
            key: Cow::Borrowed(key),
            value: AttrValue::Str(value.into()),
        }
    }

    /// A string attribute whose value is a shared copy.
    #[must_use]
    pub fn shared(key: &'static str, value: Arc<str>) -> Self {
        Self {
            key: Cow::Borrowed(key),
            value: AttrValue::Shared(value),
        }
    }

    #[must_use]
    pub fn int(key: &'static str, value: i64) -> Self {
        Self {
            key: Cow::Borrowed(key),
            value: AttrValue::Int(value),
        }
    }

    /// An attribute whose key is only known at run time.
    #[must_use]
    pub fn owned(key: String, value: String) -> Self {
        Self {
            key: Cow::Owned(key),
            value: AttrValue::Str(Cow::Owned(value)),
        }
    }
}

/// A reference to a span that is related but not provably the parent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpanLink {
    pub trace_id: TraceId,
    pub span_id: SpanId,
    /// Why the link exists (`sockspan.link.reason`).
    pub reason: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SpanStatus {
    Unset,
    Error(String),
}

/// The process a span belongs to.
#[derive(Debug, Clone)]
pub struct Resource {
    /// Private and never changed after `new`: the cached JSON below must stay true to them.
    attributes: Vec<KeyValue>,
    /// The attributes as a JSON object, encoded on first use: every span of the process carries
    /// them, and they are a third of each exported JSON line.
    json: std::sync::OnceLock<Box<[u8]>>,
}

impl PartialEq for Resource {
    fn eq(&self, other: &Self) -> bool {
        self.attributes == other.attributes
    }
}

impl Eq for Resource {}

impl Resource {
    #[must_use]
    pub fn new(attributes: Vec<KeyValue>) -> Self {
        Self {
            attributes,
            json: std::sync::OnceLock::new(),
        }
    }

    #[must_use]
    pub fn attributes(&self) -> &[KeyValue] {
        &self.attributes
    }

    /// The attributes as JSON, encoded by `encode` the first time.
    pub fn json(&self, encode: impl FnOnce(&[KeyValue]) -> Box<[u8]>) -> &[u8] {
        self.json.get_or_init(|| encode(&self.attributes))
    }

    /// The `service.name` attribute.
    #[must_use]
    pub fn service_name(&self) -> &str {
        self.attributes
            .iter()
            .find(|kv| kv.key == "service.name")
            .and_then(|kv| kv.value.as_str())
            .unwrap_or("unknown_service")
    }
}

/// A finished span.
#[derive(Debug, Clone)]
pub struct SpanData {
    pub trace_id: TraceId,
    pub span_id: SpanId,
    pub parent_span_id: Option<SpanId>,
    pub links: Vec<SpanLink>,
    pub kind: SpanKind,
    /// Shared with the other spans of that name ([`super::intern::Interner`]): names are few (a
    /// route, a method, an operation), and a copy per span was an allocation on the thread that
    /// drains the ring and a free on the store's writer thread.
    pub name: Arc<str>,
    pub start_unix_nano: u64,
    pub end_unix_nano: u64,
    pub attributes: Vec<KeyValue>,
    pub status: SpanStatus,
    pub resource: Arc<Resource>,
}

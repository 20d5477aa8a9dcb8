//! Request and response heads: the start line and the few headers tracing needs.
//!
//! Only the headers below are kept; everything else (credentials and cookies included) is
//! dropped while parsing and never copied into a head, a span or any output (the raw bytes of
//! recent heads stay in memory in [`super::head_cache`], which only the parser reads).

use std::{borrow::Cow, mem::MaybeUninit, sync::Arc};

use super::framer::{Framing, Side};

const MAX_HEADERS: usize = 128;

/// The start line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartLine {
    /// The method is a static string for the methods of RFC 9110 and PATCH (no allocation per
    /// request), anything else as sent.
    Request {
        method: Cow<'static, str>,
        /// Shared: a head remembered by its bytes ([`super::head_cache`]) is handed out again.
        target: Arc<str>,
    },
    Response {
        status: u16,
    },
}

pub use crate::trace::propagation::TraceHeaders;

/// Headers sockspan uses; `None` when absent.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeptHeaders {
    /// Shared with the connection's earlier requests when they sent the same value.
    pub host: Option<Arc<str>>,
    pub user_agent: Option<Arc<str>>,
    /// Boxed and absent unless a trace header came: heads travel by value through the
    /// pipeline, and most carry none.
    pub trace: Option<Box<TraceHeaders>>,
    /// Headers the operator allowlisted (`--record-headers`): lower-case name, value. Empty
    /// (and unallocated) unless configured.
    pub recorded: Vec<(String, String)>,
}

/// The last `Host` and `User-Agent` values of a connection's requests. A keep-alive client
/// sends the same ones every time, so a repeat costs a comparison instead of an allocation
/// (copying both per request was ~4 % of the agent's CPU under wrk, `perf`).
#[derive(Debug, Default)]
pub struct RepeatedValues {
    host: Option<Arc<str>>,
    user_agent: Option<Arc<str>>,
}

/// `value` as text, shared with `last` if it is the same.
fn repeated(last: &mut Option<Arc<str>>, value: &[u8]) -> Arc<str> {
    let value = value.trim_ascii();
    if let Some(last) = last
        && last.as_bytes() == value
    {
        return Arc::clone(last);
    }
    let shared: Arc<str> = Arc::from(String::from_utf8_lossy(value));
    *last = Some(Arc::clone(&shared));
    shared
}

/// A parsed head.
// The flags are independent facts the headers state; an enum would not model them better.
#[allow(clippy::struct_excessive_bools)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    pub start: StartLine,
    /// 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub minor_version: u8,
    pub headers: KeptHeaders,
    pub content_length: Option<u64>,
    pub chunked: bool,
    pub connection_close: bool,
    pub upgrade: bool,
    pub expect_continue: bool,
}

impl Head {
    /// Request method, if a request.
    #[must_use]
    pub fn method(&self) -> Option<&str> {
        match &self.start {
            StartLine::Request { method, .. } => Some(method),
            StartLine::Response { .. } => None,
        }
    }

    #[must_use]
    pub fn status(&self) -> Option<u16> {
        match self.start {
            StartLine::Response { status } => Some(status),
            StartLine::Request { .. } => None,
        }
    }

    /// How the body is delimited, judged from this head alone (RFC 9112 §6.3).
    #[must_use]
    pub fn framing(&self, side: Side) -> Framing {
        if self.chunked {
            Framing::Chunked
        } else if let Some(n) = self.content_length {
            Framing::Length(n)
        } else if side == Side::Response {
            Framing::UntilClose
        } else {
            Framing::None
        }
    }

    /// `METHOD target` or the status, for tests.
    #[cfg(test)]
    pub fn summary(&self) -> String {
        match &self.start {
            StartLine::Request { method, target } => format!("{method} {target}"),
            StartLine::Response { status } => status.to_string(),
        }
    }
}

/// A header value as text: optional whitespace (SP / HTAB) trimmed, invalid UTF-8 replaced.
fn text(value: &[u8]) -> String {
    let value = value.trim_ascii();
    std::str::from_utf8(value).map_or_else(
        |_| String::from_utf8_lossy(value).into_owned(),
        str::to_string,
    )
}

/// A Content-Length value: digits only, surrounding whitespace allowed, no allocation.
fn content_length(value: &[u8]) -> Option<u64> {
    let digits = value.trim_ascii();
    if digits.is_empty() || digits.len() > 19 {
        return None;
    }
    digits.iter().try_fold(0u64, |n, &b| {
        b.is_ascii_digit().then(|| n * 10 + u64::from(b - b'0'))
    })
}

/// Whether the comma-separated list `value` holds `token` (any case, optional whitespace around
/// each element, RFC 9110 §5.6.1). On the bytes: a lossy UTF-8 copy per check was ~6 % of the
/// agent's ring-draining thread under wrk.
fn has_token(value: &[u8], token: &str) -> bool {
    value
        .split(|&b| b == b',')
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
}

/// The methods of RFC 9110 and PATCH: the ones a request may start with for the framer to
/// resynchronise on it, and the ones kept as static strings.
pub const KNOWN_METHODS: [&str; 9] = [
    "GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS", "PATCH", "CONNECT", "TRACE",
];

/// `method` as a static string if it is a known one, else a copy.
pub(crate) fn method_of(method: &str) -> Cow<'static, str> {
    KNOWN_METHODS
        .iter()
        .find(|known| **known == method)
        .map_or_else(
            || Cow::Owned(method.to_owned()),
            |known| Cow::Borrowed(*known),
        )
}

/// Parses a head at the start of `data`: `Ok(Some((head, length)))`, `Ok(None)` if more bytes
/// are needed, `Err(())` if the bytes are not an HTTP/1.x head.
#[cfg(any(test, feature = "fuzz"))]
pub fn parse_head(side: Side, data: &[u8]) -> Result<Option<(Head, usize)>, ()> {
    parse_head_with(side, data, &mut RepeatedValues::default())
}

/// [`parse_head`], sharing `Host` and `User-Agent` with the connection's earlier heads.
pub fn parse_head_with(
    side: Side,
    data: &[u8],
    repeats: &mut RepeatedValues,
) -> Result<Option<(Head, usize)>, ()> {
    // Left uninitialised: httparse writes the entries it returns, and zeroing 128 of them
    // (4 KiB) for every head was a visible share of the parse.
    let mut headers = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let (start, minor_version, used, headers) =
        match side {
            Side::Request => {
                let mut req = httparse::Request::new(&mut []);
                let used = match req.parse_with_uninit_headers(data, &mut headers) {
                    Ok(httparse::Status::Complete(n)) => n,
                    Ok(httparse::Status::Partial) => return Ok(None),
                    Err(_) => return Err(()),
                };
                let start = StartLine::Request {
                    method: method_of(req.method.unwrap_or_default()),
                    target: Arc::from(req.path.unwrap_or_default()),
                };
                (start, req.version.unwrap_or(1), used, req.headers)
            }
            Side::Response => {
                let mut resp = httparse::Response::new(&mut []);
                let used = match httparse::ParserConfig::default()
                    .parse_response_with_uninit_headers(&mut resp, data, &mut headers)
                {
                    Ok(httparse::Status::Complete(n)) => n,
                    Ok(httparse::Status::Partial) => return Ok(None),
                    Err(_) => return Err(()),
                };
                let start = StartLine::Response {
                    status: resp.code.unwrap_or(0),
                };
                (start, resp.version.unwrap_or(1), used, resp.headers)
            }
        };
    let mut head = Head {
        start,
        minor_version,
        headers: KeptHeaders::default(),
        content_length: None,
        chunked: false,
        connection_close: minor_version == 0,
        upgrade: false,
        expect_continue: false,
    };
    for h in headers.iter() {
        let name = h.name;
        let value = h.value;
        if name.eq_ignore_ascii_case("content-length") {
            // Conflicting or invalid lengths make the framing unknowable (RFC 9112 §6.3).
            let n = content_length(value).ok_or(())?;
            if head.content_length.is_some_and(|old| old != n) {
                return Err(());
            }
            head.content_length = Some(n);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            head.chunked = has_token(value, "chunked");
        } else if name.eq_ignore_ascii_case("connection") {
            if has_token(value, "close") {
                head.connection_close = true;
            }
            if has_token(value, "keep-alive") {
                head.connection_close = false;
            }
            head.upgrade |= has_token(value, "upgrade");
        } else if name.eq_ignore_ascii_case("expect") {
            head.expect_continue = has_token(value, "100-continue");
        } else if name.eq_ignore_ascii_case("host") {
            head.headers.host = Some(repeated(&mut repeats.host, value));
        } else if name.eq_ignore_ascii_case("user-agent") {
            head.headers.user_agent = Some(repeated(&mut repeats.user_agent, value));
        } else if let Some(slot) = crate::trace::propagation::slot(&mut head.headers.trace, name) {
            *slot = Some(text(value));
        }
        if super::record::header_recorded(name) {
            head.headers
                .recorded
                .push((name.to_ascii_lowercase(), text(value)));
        }
    }
    Ok(Some((head, used)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_tracing_headers_and_drops_credentials() {
        let raw = b"GET /x?y=1 HTTP/1.1\r\nHost: api:8080\r\nAuthorization: Bearer secret\r\nCookie: s=1\r\ntraceparent: 00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01\r\nUser-Agent: curl/8\r\n\r\n";
        let (head, used) = parse_head(Side::Request, raw)
            .expect("valid")
            .expect("complete");
        assert_eq!(used, raw.len());
        assert_eq!(head.method(), Some("GET"));
        assert_eq!(head.headers.host.as_deref(), Some("api:8080"));
        assert_eq!(
            head.headers
                .trace
                .as_ref()
                .and_then(|t| t.traceparent.as_deref()),
            Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")
        );
        let debug = format!("{head:?}");
        assert!(
            !debug.contains("secret") && !debug.contains("s=1"),
            "{debug}"
        );
    }

    #[test]
    fn the_programs_recognise_every_method_the_agent_parses() {
        for method in KNOWN_METHODS {
            let line = format!("{method} / HTTP/1.1");
            let first: [u8; 4] = line.as_bytes()[..4].try_into().expect("4 bytes");
            assert!(
                agent_common::REQUEST_PREFIXES.contains(&u32::from_le_bytes(first)),
                "{method}"
            );
        }
    }

    #[test]
    fn repeated_host_and_user_agent_share_one_copy() {
        let mut repeats = RepeatedValues::default();
        let mut parse = |raw: &[u8]| {
            parse_head_with(Side::Request, raw, &mut repeats)
                .expect("valid")
                .expect("complete")
                .0
                .headers
        };
        let first = parse(b"GET /a HTTP/1.1\r\nHost: api:8080\r\nUser-Agent: curl/8\r\n\r\n");
        let second = parse(b"GET /b HTTP/1.1\r\nHost:  api:8080 \r\nUser-Agent: curl/8\r\n\r\n");
        let third = parse(b"GET /c HTTP/1.1\r\nHost: web\r\nUser-Agent: \xff\r\n\r\n");
        let (Some(a), Some(b)) = (&first.host, &second.host) else {
            panic!("hosts kept");
        };
        assert!(Arc::ptr_eq(a, b));
        assert!(Arc::ptr_eq(
            first.user_agent.as_ref().expect("ua"),
            second.user_agent.as_ref().expect("ua")
        ));
        assert_eq!(third.host.as_deref(), Some("web"));
        assert_eq!(third.user_agent.as_deref(), Some("\u{fffd}"));
    }

    #[test]
    fn framing_rules() {
        let parse = |side, raw: &[u8]| parse_head(side, raw).expect("valid").expect("complete").0;
        let h = parse(
            Side::Response,
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\nContent-Length: 9\r\n\r\n",
        );
        assert_eq!(h.framing(Side::Response), Framing::Chunked);
        let h = parse(Side::Response, b"HTTP/1.0 200 OK\r\n\r\n");
        assert_eq!(h.framing(Side::Response), Framing::UntilClose);
        assert!(h.connection_close);
        let h = parse(Side::Request, b"GET / HTTP/1.1\r\n\r\n");
        assert_eq!(h.framing(Side::Request), Framing::None);
        let h = parse(
            Side::Request,
            b"PUT / HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n",
        );
        assert!(h.expect_continue);
        assert_eq!(h.framing(Side::Request), Framing::Length(3));
        assert_eq!(
            parse_head(
                Side::Request,
                b"GET / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n"
            ),
            Err(())
        );
        assert_eq!(
            parse_head(Side::Request, b"GET / HTTP/1.1\r\nHost"),
            Ok(None)
        );
    }
}

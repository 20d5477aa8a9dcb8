//! Trace context carried by request headers (HTTP/1 heads, HTTP/2 header blocks): W3C
//! `traceparent`, B3 single and multi header.

use super::ids::{SpanId, TraceId, parse_hex};

/// Trace-context headers; `None` when absent (the usual case: nothing is allocated).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TraceHeaders {
    pub traceparent: Option<String>,
    pub tracestate: Option<String>,
    /// B3 single-header form.
    pub b3: Option<String>,
    pub x_b3_traceid: Option<String>,
    pub x_b3_spanid: Option<String>,
    pub x_b3_sampled: Option<String>,
}

/// The field of `trace` a header named `name` fills, if it is a trace header (compared without
/// allocating; `trace` is allocated only when one is).
pub fn slot<'a>(
    trace: &'a mut Option<Box<TraceHeaders>>,
    name: &str,
) -> Option<&'a mut Option<String>> {
    let is = |candidate: &str| name.eq_ignore_ascii_case(candidate);
    let field: fn(&mut TraceHeaders) -> &mut Option<String> = if is("traceparent") {
        |t| &mut t.traceparent
    } else if is("tracestate") {
        |t| &mut t.tracestate
    } else if is("b3") {
        |t| &mut t.b3
    } else if is("x-b3-traceid") {
        |t| &mut t.x_b3_traceid
    } else if is("x-b3-spanid") {
        |t| &mut t.x_b3_spanid
    } else if is("x-b3-sampled") {
        |t| &mut t.x_b3_sampled
    } else {
        return None;
    };
    Some(field(trace.get_or_insert_with(Box::default)))
}

/// A remote parent announced by the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RemoteContext {
    pub trace_id: TraceId,
    pub span_id: SpanId,
    pub sampled: bool,
    pub format: &'static str,
}

/// `00-<32 hex trace id>-<16 hex parent id>-<2 hex flags>` (W3C Trace Context, level 1; higher
/// versions may append fields, which are ignored).
fn traceparent(value: &str) -> Option<RemoteContext> {
    let mut parts = value.trim().split('-');
    let version = parts.next()?;
    if version.len() != 2 || version == "ff" {
        return None;
    }
    let trace_id = parse_hex::<16>(parts.next()?)?;
    let span_id = parse_hex::<8>(parts.next()?)?;
    let flags = parse_hex::<1>(parts.next()?).map_or(0, |f| f[0]);
    if version == "00" && parts.next().is_some() {
        return None;
    }
    Some(RemoteContext {
        trace_id,
        span_id,
        sampled: flags & 1 == 1,
        format: "w3c",
    })
}

/// A B3 trace id: 16 or 32 hex digits (64-bit ids are left-padded).
fn b3_trace_id(text: &str) -> Option<TraceId> {
    match text.len() {
        32 => parse_hex::<16>(text),
        16 => parse_hex::<8>(text).map(|low| {
            let mut id = [0u8; 16];
            id[8..].copy_from_slice(&low);
            id
        }),
        _ => None,
    }
}

/// `b3: {trace}-{span}[-{sampled}[-{parent}]]`.
fn b3_single(value: &str) -> Option<RemoteContext> {
    let mut parts = value.trim().split('-');
    let trace_id = b3_trace_id(parts.next()?)?;
    let span_id = parse_hex::<8>(parts.next()?)?;
    let sampled = parts.next().is_none_or(|s| s == "1" || s == "d");
    Some(RemoteContext {
        trace_id,
        span_id,
        sampled,
        format: "b3",
    })
}

/// The caller's context, W3C first, then B3 single, then B3 multi.
#[must_use]
pub fn extract(headers: &TraceHeaders) -> Option<RemoteContext> {
    if let Some(ctx) = headers.traceparent.as_deref().and_then(traceparent) {
        return Some(ctx);
    }
    if let Some(ctx) = headers.b3.as_deref().and_then(b3_single) {
        return Some(ctx);
    }
    let trace_id = b3_trace_id(headers.x_b3_traceid.as_deref()?.trim())?;
    let span_id = parse_hex::<8>(headers.x_b3_spanid.as_deref()?.trim())?;
    let sampled = headers
        .x_b3_sampled
        .as_deref()
        .is_none_or(|s| s.trim() == "1");
    Some(RemoteContext {
        trace_id,
        span_id,
        sampled,
        format: "b3multi",
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(f: impl FnOnce(&mut TraceHeaders)) -> TraceHeaders {
        let mut h = TraceHeaders::default();
        f(&mut h);
        h
    }

    #[test]
    fn w3c_b3_single_and_multi() {
        let h = headers(|h| {
            h.traceparent = Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into());
        });
        let ctx = extract(&h).expect("w3c");
        assert_eq!(
            super::super::ids::HexId::new(&ctx.trace_id).as_str(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert_eq!(
            super::super::ids::HexId::new(&ctx.span_id).as_str(),
            "00f067aa0ba902b7"
        );
        assert!(ctx.sampled);
        let h = headers(|h| {
            h.b3 =
                Some("80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1-05e3ac9a4f6e3b90".into());
        });
        assert_eq!(extract(&h).expect("b3").format, "b3");
        let h = headers(|h| {
            h.x_b3_traceid = Some("463ac35c9f6413ad".into());
            h.x_b3_spanid = Some("a2fb4a1d1a96d312".into());
            h.x_b3_sampled = Some("1".into());
        });
        let ctx = extract(&h).expect("b3 multi");
        assert_eq!(
            super::super::ids::HexId::new(&ctx.trace_id).as_str(),
            "0000000000000000463ac35c9f6413ad"
        );
    }

    #[test]
    fn invalid_contexts_are_ignored() {
        for bad in [
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "garbage",
            "",
        ] {
            let h = headers(|h| h.traceparent = Some(bad.into()));
            assert_eq!(extract(&h), None, "{bad}");
        }
    }
}

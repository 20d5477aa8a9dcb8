//! One finished span as the JSON object `--output jsonl` prints and the store keeps, written by
//! hand into a reusable buffer.
//!
//! Why not serde: the object's keys are fixed, yet a derived serializer escapes every key, and
//! it writes each fragment (quote, key, colon, value) through the writer separately. Under wrk
//! against nginx that encoding was ~22 % of the agent's CPU, a third of it in string escaping
//! (`perf`). Here fixed keys are copied as literals, strings are scanned 8 bytes at a time
//! for the few characters JSON must escape, and numbers go through `itoa`. The tests hold the
//! output byte for byte to what `serde_json` writes for the same object.

use crate::trace::{
    SpanData,
    ids::HexId,
    span::{AttrValue, KeyValue, SpanStatus},
};

/// Appends `span` as one JSON object (no newline) to `out`.
pub fn write_span(out: &mut Vec<u8>, span: &SpanData) {
    out.extend_from_slice(b"{\"trace_id\":");
    write_id(out, &span.trace_id);
    out.extend_from_slice(b",\"span_id\":");
    write_id(out, &span.span_id);
    out.extend_from_slice(b",\"parent_span_id\":");
    match &span.parent_span_id {
        Some(parent) => write_id(out, parent),
        None => out.extend_from_slice(b"null"),
    }
    out.extend_from_slice(b",\"links\":[");
    for (i, link) in span.links.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(b"{\"trace_id\":");
        write_id(out, &link.trace_id);
        out.extend_from_slice(b",\"span_id\":");
        write_id(out, &link.span_id);
        out.extend_from_slice(b",\"reason\":");
        write_str(out, link.reason);
        out.push(b'}');
    }
    out.extend_from_slice(b"],\"kind\":\"");
    out.extend_from_slice(span.kind.as_str().as_bytes());
    out.extend_from_slice(b"\",\"name\":");
    write_str(out, &span.name);
    out.extend_from_slice(b",\"start_time_unix_nano\":");
    write_int(out, span.start_unix_nano);
    out.extend_from_slice(b",\"end_time_unix_nano\":");
    write_int(out, span.end_unix_nano);
    match &span.status {
        SpanStatus::Unset => out.extend_from_slice(b",\"status\":{\"code\":\"UNSET\"}"),
        SpanStatus::Error(message) => {
            out.extend_from_slice(b",\"status\":{\"code\":\"ERROR\",\"message\":");
            write_str(out, message);
            out.push(b'}');
        }
    }
    out.extend_from_slice(b",\"attributes\":");
    write_attributes(out, &span.attributes);
    out.extend_from_slice(b",\"resource\":");
    out.extend_from_slice(span.resource.json(|attributes| {
        let mut json = Vec::new();
        write_attributes(&mut json, attributes);
        json.into_boxed_slice()
    }));
    out.push(b'}');
}

/// Appends `attributes` as a JSON object; integers stay numbers.
pub fn write_attributes(out: &mut Vec<u8>, attributes: &[KeyValue]) {
    out.push(b'{');
    for (i, kv) in attributes.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write_str(out, &kv.key);
        out.push(b':');
        match &kv.value {
            AttrValue::Str(value) => write_str(out, value),
            AttrValue::Shared(value) => write_str(out, value),
            AttrValue::Int(value) => write_int(out, *value),
        }
    }
    out.push(b'}');
}

pub(crate) fn write_id(out: &mut Vec<u8>, id: &[u8]) {
    out.push(b'"');
    out.extend_from_slice(HexId::new(id).as_str().as_bytes());
    out.push(b'"');
}

pub(crate) fn write_int(out: &mut Vec<u8>, value: impl itoa::Integer) {
    out.extend_from_slice(itoa::Buffer::new().format(value).as_bytes());
}

/// Appends `s` as a JSON string.
pub(crate) fn write_str(out: &mut Vec<u8>, s: &str) {
    out.push(b'"');
    let bytes = s.as_bytes();
    let mut start = 0;
    // Most strings need no escape at all: find the first 8-byte word that might, a word at a
    // time (a per-byte fold was 10 % of the store writer's CPU, `perf`).
    for word in bytes.chunks_exact(8) {
        let mut le = [0u8; 8];
        le.copy_from_slice(word);
        if word_needs_escape(u64::from_le_bytes(le)) {
            break;
        }
        start += 8;
    }
    out.extend_from_slice(&bytes[..start]);
    let mut clean_from = start;
    for (i, &b) in bytes.iter().enumerate().skip(start) {
        if !needs_escape(b) {
            continue;
        }
        out.extend_from_slice(&bytes[clean_from..i]);
        write_escape(out, b);
        clean_from = i + 1;
    }
    out.extend_from_slice(&bytes[clean_from..]);
    out.push(b'"');
}

/// Whether any byte of `word` needs escaping ([`needs_escape`]), without a branch per byte: the
/// classic "has a byte less than n" and "has a zero byte" word tricks, both exact as to whether
/// any byte matches (which one is left to the byte loop).
fn word_needs_escape(word: u64) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGHS: u64 = 0x8080_8080_8080_8080;
    let below_space = word.wrapping_sub(ONES * 0x20) & !word;
    let quote = word ^ (ONES * u64::from(b'"'));
    let backslash = word ^ (ONES * u64::from(b'\\'));
    let zero_in_quote = quote.wrapping_sub(ONES) & !quote;
    let zero_in_backslash = backslash.wrapping_sub(ONES) & !backslash;
    (below_space | zero_in_quote | zero_in_backslash) & HIGHS != 0
}

/// Whether JSON needs `b` escaped in a string: quote, backslash, control characters. Bytes of
/// multi-byte UTF-8 characters never match, so they pass through as they are, as in `serde_json`.
const fn needs_escape(b: u8) -> bool {
    b < 0x20 || b == b'"' || b == b'\\'
}

/// The escape `serde_json` writes for `b`: the short forms where JSON has them, `\u00XX` for the
/// other control characters.
fn write_escape(out: &mut Vec<u8>, b: u8) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let short = match b {
        b'"' => b'"',
        b'\\' => b'\\',
        0x08 => b'b',
        0x0c => b'f',
        b'\n' => b'n',
        b'\r' => b'r',
        b'\t' => b't',
        _ => {
            out.extend_from_slice(b"\\u00");
            out.push(HEX[usize::from(b >> 4)]);
            out.push(HEX[usize::from(b & 0x0f)]);
            return;
        }
    };
    out.push(b'\\');
    out.push(short);
}

/// `span` as its JSON object, for tests of what reads it back (the store).
#[cfg(test)]
pub(crate) fn span_json(span: &SpanData) -> Vec<u8> {
    let mut out = Vec::new();
    write_span(&mut out, span);
    out
}

/// Gives `span` what every optional part of the object needs: a parent, an error status with
/// `message`, and two links with `reasons`; for tests of the encoders.
#[cfg(test)]
pub(crate) fn with_every_part(span: &mut SpanData, message: &str, reasons: [&'static str; 2]) {
    use crate::trace::span::SpanLink;
    span.status = SpanStatus::Error(message.to_owned());
    span.parent_span_id = Some([9; 8]);
    span.links = vec![
        SpanLink {
            trace_id: [1; 16],
            span_id: [2; 8],
            reason: reasons[0],
        },
        SpanLink {
            trace_id: [3; 16],
            span_id: [4; 8],
            reason: reasons[1],
        },
    ];
}

#[cfg(test)]
mod tests {
    use std::{borrow::Cow, sync::Arc};

    use serde::Serialize;

    use super::*;
    use crate::trace::span::{Resource, SpanKind};

    /// The object as a derived serde serializer writes it: the reference for the hand encoder.
    #[derive(Serialize)]
    struct Reference<'a> {
        trace_id: String,
        span_id: String,
        parent_span_id: Option<String>,
        links: Vec<ReferenceLink>,
        kind: &'static str,
        name: &'a str,
        start_time_unix_nano: u64,
        end_time_unix_nano: u64,
        status: ReferenceStatus<'a>,
        attributes: ReferenceAttributes<'a>,
        resource: ReferenceAttributes<'a>,
    }

    #[derive(Serialize)]
    struct ReferenceLink {
        trace_id: String,
        span_id: String,
        reason: &'static str,
    }

    #[derive(Serialize)]
    struct ReferenceStatus<'a> {
        code: &'static str,
        #[serde(skip_serializing_if = "Option::is_none")]
        message: Option<&'a str>,
    }

    struct ReferenceAttributes<'a>(&'a [KeyValue]);

    impl Serialize for ReferenceAttributes<'_> {
        fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            use serde::ser::SerializeMap as _;
            let mut map = s.serialize_map(Some(self.0.len()))?;
            for kv in self.0 {
                match &kv.value {
                    AttrValue::Str(v) => map.serialize_entry(&kv.key, v)?,
                    AttrValue::Shared(v) => map.serialize_entry(&kv.key, &**v)?,
                    AttrValue::Int(v) => map.serialize_entry(&kv.key, v)?,
                }
            }
            map.end()
        }
    }

    fn hex(id: &[u8]) -> String {
        HexId::new(id).as_str().to_owned()
    }

    fn reference(span: &SpanData) -> Vec<u8> {
        let record = Reference {
            trace_id: hex(&span.trace_id),
            span_id: hex(&span.span_id),
            parent_span_id: span.parent_span_id.map(|p| hex(&p)),
            links: span
                .links
                .iter()
                .map(|l| ReferenceLink {
                    trace_id: hex(&l.trace_id),
                    span_id: hex(&l.span_id),
                    reason: l.reason,
                })
                .collect(),
            kind: span.kind.as_str(),
            name: &span.name,
            start_time_unix_nano: span.start_unix_nano,
            end_time_unix_nano: span.end_unix_nano,
            status: match &span.status {
                SpanStatus::Unset => ReferenceStatus {
                    code: "UNSET",
                    message: None,
                },
                SpanStatus::Error(m) => ReferenceStatus {
                    code: "ERROR",
                    message: Some(m),
                },
            },
            attributes: ReferenceAttributes(&span.attributes),
            resource: ReferenceAttributes(span.resource.attributes()),
        };
        serde_json::to_vec(&record).expect("serde encodes")
    }

    use super::span_json as encoded;

    fn span(name: &str, attributes: Vec<KeyValue>) -> SpanData {
        SpanData {
            trace_id: [0x4b; 16],
            span_id: [0x00, 0xf0, 1, 2, 3, 4, 5, 0xff],
            parent_span_id: None,
            links: Vec::new(),
            kind: SpanKind::Server,
            name: name.into(),
            start_unix_nano: 1_764_000_000_123_456_789,
            end_unix_nano: 1_764_000_000_124_000_000,
            attributes,
            status: SpanStatus::Unset,
            resource: Arc::new(Resource::new(vec![
                KeyValue::str("service.name", "nginx"),
                KeyValue::int("process.pid", 4242),
                KeyValue::owned("team \"edge\"".to_owned(), "a\\b".to_owned()),
            ])),
        }
    }

    #[test]
    fn plain_span_matches_serde() {
        let span = span(
            "GET /api/items/{id}",
            vec![
                KeyValue::str("http.request.method", "GET"),
                KeyValue::str("url.path", "/api/items/42?full=1&sort=name"),
                KeyValue::int("http.response.status_code", 200),
                KeyValue::shared("server.address", Arc::from("api.example.test")),
                KeyValue::int("network.peer.port", -1),
                KeyValue::int("big", i64::MIN),
            ],
        );
        assert_eq!(
            String::from_utf8(encoded(&span)),
            String::from_utf8(reference(&span))
        );
    }

    #[test]
    fn every_escape_and_unicode_match_serde() {
        let mut nasty = String::from("quote\" backslash\\ slash/ ünïcødé ✓ 🦀 del\u{7f}");
        for c in 0u8..0x20 {
            nasty.push(char::from(c));
        }
        // Long runs without escapes around the escapes, so both the word scan and the byte
        // loop see them, at every offset within a word.
        for offset in 0..20 {
            let value = format!("{}{nasty}{}", "x".repeat(offset), "y".repeat(40));
            let mut span = span(
                &value,
                vec![KeyValue::str("user_agent.original", value.clone())],
            );
            with_every_part(&mut span, &value, ["same-thread", "tcp-sequence"]);
            span.kind = SpanKind::Client;
            assert_eq!(
                String::from_utf8(encoded(&span)),
                String::from_utf8(reference(&span)),
                "offset {offset}"
            );
        }
    }

    #[test]
    fn the_word_scan_finds_exactly_the_words_with_a_byte_to_escape() {
        // Every byte value at every position of a word of clean bytes, and beside another byte
        // that needs escaping or sits just above the bounds (borrows must not hide or invent one).
        for fill in [b'a', 0x7f, 0xff, b'!', b'#', b' ', b']', 0x80] {
            for at in 0..8 {
                for b in 0..=u8::MAX {
                    let mut word = [fill; 8];
                    word[at] = b;
                    let any = word.iter().any(|&c| needs_escape(c));
                    assert_eq!(word_needs_escape(u64::from_le_bytes(word)), any, "{word:?}");
                    for other in [0u8, 0x1f, b'"', b'\\', 0x20, 0x21, 0x5d] {
                        word[(at + 3) % 8] = other;
                        let any = word.iter().any(|&c| needs_escape(c));
                        assert_eq!(word_needs_escape(u64::from_le_bytes(word)), any, "{word:?}");
                    }
                }
            }
        }
    }

    #[test]
    fn output_parses_back() {
        let span = span("\u{1}\"\\", vec![KeyValue::str("k", Cow::Borrowed("\n"))]);
        let value: serde_json::Value = serde_json::from_slice(&encoded(&span)).expect("valid JSON");
        assert_eq!(value["name"], "\u{1}\"\\");
        assert_eq!(value["attributes"]["k"], "\n");
        assert_eq!(value["resource"]["team \"edge\""], "a\\b");
    }
}

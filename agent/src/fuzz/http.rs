//! Fuzz entry points of the HTTP layer: HTTP/1 connections and heads, HTTP/2 and HPACK, trace
//! context headers, the redaction of what spans record.

use std::collections::HashSet;

use crate::{
    protocol::http1::{
        HttpConnection, HttpEvent,
        framer::{Side, Stamp},
        head::{RepeatedValues, TraceHeaders, parse_head},
        head_cache::parse_head_remembered,
    },
    protocol::{
        ConnectionParser, ProtoEvent, Summary as _,
        http2::{
            Http2Connection,
            hpack::{Decoder, Field},
        },
    },
    trace::{propagation, resource::redacted_command_line, route::route_of},
};

use super::Input;

/// One HTTP/1.x connection fed a script of reads from both directions, some of them captured only
/// in part (the kernel copies at most `capture_bytes` of a syscall), then closed.
///
/// Script: per step a control byte (bit 0: response side; bit 1: truncated capture; bits 2..:
/// thread), a length byte, then that many payload bytes; a truncated step adds a byte of
/// uncaptured length (×64).
///
/// Invariants: every exchange was announced by a request event at the same offset; stamps run
/// forward within an exchange; the connection's own count matches what it emitted.
pub fn http1_connection(data: &[u8]) {
    let mut input = Input(data);
    let mut conn = HttpConnection::new();
    let mut out = Vec::new();
    let mut announced = HashSet::new();
    let mut emitted = 0u64;
    let mut ts = 0u64;
    let mut check = |out: &mut Vec<HttpEvent>| {
        for event in out.drain(..) {
            match event {
                HttpEvent::Request { start, .. } => {
                    announced.insert(start.offset);
                }
                HttpEvent::Exchange(x) => {
                    emitted += 1;
                    assert!(
                        announced.contains(&x.request_start.offset),
                        "exchange at request offset {} was never announced",
                        x.request_start.offset
                    );
                    assert!(x.request_start.ts <= x.request_end.ts, "{x:?}");
                    assert!(x.request_start.offset <= x.request_end.offset, "{x:?}");
                    if let Some(response_start) = x.response_start {
                        assert!(response_start.ts <= x.end.ts, "{x:?}");
                        assert!(response_start.offset <= x.end.offset, "{x:?}");
                    }
                }
            }
        }
    };
    while let Some(read) = input.read() {
        ts += 1;
        conn.feed(read.side, read.payload, read.total, ts, read.tid, &mut out);
        check(&mut out);
    }
    let at = Stamp {
        ts: ts + 1,
        tid: 0,
        offset: 0,
    };
    conn.close(at, &mut out);
    check(&mut out);
    assert_eq!(conn.stats.exchanges, emitted);
}

/// What a stream framed to, independent of how it was cut into reads.
type Framed = Vec<(String, u64, u64, Option<u64>, u64)>;

pub(super) fn frame_cut(
    requests: &[u8],
    responses: &[u8],
    mut cut: impl FnMut() -> usize,
) -> (Framed, u64) {
    let mut conn = HttpConnection::new();
    let mut out = Vec::new();
    for (side, mut rest) in [(Side::Request, requests), (Side::Response, responses)] {
        while !rest.is_empty() {
            let n = cut().clamp(1, rest.len());
            conn.feed(side, &rest[..n], n as u64, 0, 1, &mut out);
            rest = &rest[n..];
        }
    }
    let framed = out
        .iter()
        .filter_map(|event| match event {
            HttpEvent::Exchange(x) => Some((
                x.summary.describe(),
                x.request_start.offset,
                x.request_end.offset,
                x.response_start.map(|s| s.offset),
                x.end.offset,
            )),
            HttpEvent::Request { .. } => None,
        })
        .collect();
    (framed, conn.stats.desyncs)
}

/// Reassembly property: a request stream and a response stream that frame cleanly when each
/// arrives in one read frame to the same exchanges at the same offsets however they are cut
/// into reads.
///
/// Input: a cut-size seed byte, the request stream's length (u16, little-endian), the request
/// stream, then the response stream.
pub fn http1_resplit(data: &[u8]) {
    let mut input = Input(data);
    let seed = input.byte();
    let request_len = usize::from(u16::from_le_bytes([input.byte(), input.byte()]));
    let requests = input.take(request_len);
    let responses = input.0;
    let (reference, desyncs) = frame_cut(requests, responses, || usize::MAX);
    if desyncs > 0 {
        // Resynchronising scans read starts, so where garbage is cut changes what follows it;
        // the property is about streams that are HTTP.
        return;
    }
    // Cut sizes from a xorshift seeded by the input: 1..=seed+1 bytes.
    let mut state = u64::from(seed).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let (split, _) = frame_cut(requests, responses, || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        1 + (state % (u64::from(seed) + 1)) as usize
    });
    assert_eq!(split, reference, "cut sizes up to {}", u16::from(seed) + 1);
}

/// Head parsing, both sides: a parsed head never claims more bytes than it was given, and a
/// request head never claims fewer than its start line. A head answered from the heads parsed
/// before (the same input twice, and the input's first half before it) is the head parsing
/// gives.
pub fn http1_head(data: &[u8]) {
    for side in [Side::Request, Side::Response] {
        let parsed = parse_head(side, data);
        if let Ok(Some((head, used))) = &parsed {
            assert!(*used <= data.len());
            let _ = head.framing(side);
            let _ = (head.method(), head.status());
        }
        let mut repeats = RepeatedValues::default();
        let _ = parse_head_remembered(side, &data[..data.len() / 2], &mut repeats);
        for _ in 0..2 {
            assert_eq!(parse_head_remembered(side, data, &mut repeats), parsed);
        }
    }
}

/// Trace-context headers (traceparent, B3 single and multi): an adopted context is never the
/// all-zero (invalid) id.
pub fn trace_context(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let mut parts = text.split('\n').map(str::to_string);
    let headers = TraceHeaders {
        traceparent: parts.next(),
        tracestate: parts.next(),
        b3: parts.next(),
        x_b3_traceid: parts.next(),
        x_b3_spanid: parts.next(),
        x_b3_sampled: parts.next(),
    };
    if let Some(context) = propagation::extract(&headers) {
        assert_ne!(context.trace_id, [0; 16], "{context:?}");
        assert_ne!(context.span_id, [0; 8], "{context:?}");
    }
}

/// Request targets and command lines: a route never carries the query string, a recorded query
/// keeps no value, and the argument after a kept `--password` flag is always replaced.
pub fn redaction(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let route = route_of(&text);
    assert!(!route.contains('?'), "{text:?} -> {route:?}");
    // No allowlist is configured here: every query value must come out replaced.
    if let Some(query) = crate::protocol::http1::record::redacted_query(&text) {
        for part in query.split('&') {
            assert!(
                part == "REDACTED" || part.ends_with("=REDACTED"),
                "{text:?} -> {query:?}"
            );
        }
    }
    let argv: Vec<String> = text.split('\0').map(str::to_string).collect();
    let redacted = redacted_command_line(&argv);
    // Output tokens line up with arguments only when no argument is empty or holds a space.
    if argv.iter().any(|a| a.is_empty() || a.contains(' ')) {
        return;
    }
    let tokens: Vec<&str> = redacted.split(' ').collect();
    assert_eq!(tokens.len(), argv.len(), "{argv:?} -> {redacted:?}");
    for pair in tokens.windows(2) {
        if pair[0] == "--password" {
            assert_eq!(pair[1], "REDACTED", "{argv:?} -> {redacted:?}");
        }
    }
}

/// One HTTP/2 connection fed a script of reads from both directions, some captured only in
/// part, then closed.
///
/// Script: a start byte (bit 0: attached mid-connection, else the client preface is expected
/// first), then per step a control byte (bit 0: response side; bit 1: truncated capture; bits
/// 2..: thread), a length byte, that many payload bytes, and for a truncated step a byte of
/// uncaptured length (×64).
///
/// Invariants: every exchange was announced by a request event under the same key, client
/// stream ids are odd and each is reported once; stamps run forward within an exchange; the
/// connection's own count matches what it emitted.
pub fn http2_connection(data: &[u8]) {
    let mut input = Input(data);
    let mut conn = if input.byte() & 1 == 0 {
        Http2Connection::from_start()
    } else {
        Http2Connection::midstream()
    };
    let mut out = Vec::new();
    let mut announced = HashSet::new();
    let mut reported = HashSet::new();
    let mut emitted = 0u64;
    let mut ts = 0u64;
    let mut check = |out: &mut Vec<ProtoEvent>| {
        for event in out.drain(..) {
            match event {
                ProtoEvent::Request { key, .. } => {
                    assert_eq!(key % 2, 1, "client streams are odd: {key}");
                    assert!(announced.insert(key), "stream {key} announced twice");
                }
                ProtoEvent::Exchange(x) => {
                    emitted += 1;
                    assert!(
                        announced.contains(&x.key),
                        "stream {} never announced",
                        x.key
                    );
                    assert!(reported.insert(x.key), "stream {} reported twice", x.key);
                    assert!(x.request_start.ts <= x.request_end.ts, "{x:?}");
                    if let Some(response_start) = x.response_start {
                        assert!(x.request_start.ts <= response_start.ts, "{x:?}");
                    }
                    let _ = x.summary.describe();
                }
            }
        }
    };
    while let Some(read) = input.read() {
        ts += 1;
        let (side, total, tid) = (read.side, read.total, read.tid);
        ConnectionParser::feed(&mut conn, side, read.payload, total, ts, tid, &mut out);
        check(&mut out);
    }
    let at = Stamp {
        ts: ts + 1,
        tid: 0,
        offset: 0,
    };
    ConnectionParser::close(&mut conn, at, &mut out);
    check(&mut out);
    assert_eq!(conn.stats.exchanges, emitted);
}

/// HPACK decoding, differentially: a decoder that saw every block against one that attached
/// after the first `k` of them.
///
/// Input: `k` (a byte), then blocks, each a length byte and that many bytes.
///
/// Invariant: while both decode without error, the late decoder never contradicts the one that
/// saw everything: each of its fields is the same one or unknown.
pub fn hpack(data: &[u8]) {
    let mut input = Input(data);
    let skip = usize::from(input.byte() % 8);
    let mut full = Decoder::new();
    let mut late = Decoder::midstream();
    let mut index = 0;
    let mut comparing = true;
    let collect = |decoder: &mut Decoder, block: &[u8]| {
        let mut fields = Vec::new();
        let result = decoder.decode(block, |field| {
            fields.push(match field {
                Field::Known { name, value } => Some((name.to_vec(), value.to_vec())),
                Field::Unknown => None,
            });
        });
        (fields, result.is_ok())
    };
    while !input.is_empty() {
        let len = usize::from(input.byte());
        let block = input.take(len);
        let (seen, full_ok) = collect(&mut full, block);
        if index >= skip {
            let (guessed, late_ok) = collect(&mut late, block);
            comparing &= full_ok && late_ok;
            if comparing {
                assert_eq!(seen.len(), guessed.len(), "one field per representation");
                for (truth, late_field) in seen.iter().zip(&guessed) {
                    assert!(
                        late_field.is_none() || late_field == truth,
                        "block {index}: {late_field:?} where the whole view has {truth:?}"
                    );
                }
            }
        } else {
            comparing &= full_ok;
        }
        index += 1;
    }
}

//! Entry points for the fuzz targets in `fuzz/` (cargo-fuzz) and for the tests that replay the
//! inputs they found.
//!
//! Each function takes arbitrary bytes, drives one parser the way the agent does, and panics only
//! when an invariant breaks: a panic is what the fuzzer reports. The parsers themselves never
//! panic on bad input; the assertions here state what "correct" means beyond "did not crash".
//! Not an API: these exist for `fuzz/` and may change with it.

// Panicking on a broken invariant is what these functions are for (see above).
#![allow(clippy::missing_panics_doc)]

use std::{collections::HashSet, time::Duration};

use agent_common::{ConnEvent, DataEvent, Direction, EventHeader, EventKind, Role, Syscall};

use crate::{
    conntrack::{Conntrack, ConntrackConfig},
    exporter::counting::CountingExporter,
    net::loopback_tuple,
    pipeline::sink::TraceSink,
    probes::{btf::Btf, offsets},
    protocol::http1::{
        HttpConnection, HttpEvent,
        framer::{Side, Stamp},
        head::{TraceHeaders, parse_head},
    },
    protocol::sql::{Dialect, sanitise},
    protocol::{
        ConnectionParser, ProtoEvent,
        dns::DnsConnection,
        http2::{
            Http2Connection,
            hpack::{Decoder, Field},
        },
        memcached::MemcachedConnection,
        mysql::MyConnection,
        postgres::PgConnection,
        redis::RedisConnection,
    },
    receiver::{Event, EventSink as _, decode::decode},
    trace::{
        TraceConfig, Tracer, propagation,
        resource::{Resources, ServiceNameRule, redacted_command_line},
        route::route_of,
    },
};

/// Reads bytes off the front of a fuzz input; runs dry as zeros.
struct Input<'a>(&'a [u8]);

impl<'a> Input<'a> {
    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn byte(&mut self) -> u8 {
        let Some((&first, rest)) = self.0.split_first() else {
            return 0;
        };
        self.0 = rest;
        first
    }

    fn take(&mut self, n: usize) -> &'a [u8] {
        let (taken, rest) = self.0.split_at(n.min(self.0.len()));
        self.0 = rest;
        taken
    }

    /// One read of a connection script: a control byte (bit 0: response side; bit 1: truncated
    /// capture; bits 2..: thread), a length byte, that many payload bytes, and for a truncated
    /// read a byte of uncaptured length (×64). `None` at the end of the input.
    fn read(&mut self) -> Option<ScriptedRead<'a>> {
        if self.is_empty() {
            return None;
        }
        let control = self.byte();
        let len = usize::from(self.byte());
        let payload = self.take(len);
        let uncaptured = if control & 2 == 0 {
            0
        } else {
            u64::from(self.byte()) * 64
        };
        Some(ScriptedRead {
            side: if control & 1 == 0 {
                Side::Request
            } else {
                Side::Response
            },
            payload,
            total: payload.len() as u64 + uncaptured,
            tid: u32::from(control >> 2),
        })
    }
}

/// A syscall's worth of one direction, as a connection script gives it.
struct ScriptedRead<'a> {
    side: Side,
    payload: &'a [u8],
    total: u64,
    tid: u32,
}

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

fn frame_cut(requests: &[u8], responses: &[u8], mut cut: impl FnMut() -> usize) -> (Framed, u64) {
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
/// request head never claims fewer than its start line.
pub fn http1_head(data: &[u8]) {
    for side in [Side::Request, Side::Response] {
        if let Ok(Some((head, used))) = parse_head(side, data) {
            assert!(used <= data.len());
            let _ = head.framing(side);
            let _ = (head.method(), head.status());
        }
    }
}

/// One ring-buffer record: decodes or fails with an error; a data record's payload lies inside it.
pub fn ring_record(data: &[u8]) {
    if let Ok(Event::Data { payload, .. }) = decode(data) {
        assert!(payload.len() <= data.len());
    }
}

/// A BTF blob as `/sys/kernel/btf/vmlinux` would hold it: parses or fails with an error, and the
/// field lookups the agent makes at start-up terminate (type cycles included).
pub fn btf(data: &[u8]) {
    if let Ok(btf) = Btf::parse(data) {
        let _ = offsets::resolve(&btf);
        let _ = btf.func_id("do_sys_open");
    }
}

/// A traced process's executable, as the Go runtime detection and the probe placement read it:
/// build info, functions from `.symtab` or `.gopclntab` and their `RET`s, never a panic; a RET
/// found lies inside the file.
pub fn go_executable(data: &[u8]) {
    use crate::runtime::go::{buildinfo::build_info_of, pclntab, symbols::find_functions_in};
    let _ = build_info_of(data);
    let names = ["runtime.newproc1", "net/http.(*Request).write"];
    if let Ok(found) = find_functions_in(data, &names, &names[..1]) {
        for function in found.values() {
            assert!(function.file_offset <= data.len() as u64);
            assert!(function.returns.iter().all(|&r| r < data.len() as u64));
        }
    }
    let _ = pclntab::find(data, &names);
}

/// A CPython `_asyncio` extension module, as the asyncio probes' placement reads it: never a
/// panic, and `Task.__init__` found inside the file.
pub fn python_module(data: &[u8]) {
    use crate::runtime::python::{layout, task_init_offset};
    for minor in [11, 12, 13] {
        if let Some(l) = layout(3, minor)
            && let Some(at) = task_init_offset(data, &l)
        {
            assert!(
                at < data.len() as u64,
                "Task.__init__ at {at} past the file's end"
            );
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

/// Feeds a connection of a request/response protocol (Redis, memcached, PostgreSQL, MySQL,
/// DNS) a connection script (see [`Input::read`]) and closes it; returns the exchanges it
/// reported.
///
/// Invariants: every exchange was announced by a request event under the same key first; each
/// key is announced and reported once; stamps run forward (request start, request end, reply
/// start, end); nothing is reported once the parser failed.
fn drive_connection(conn: &mut dyn ConnectionParser, data: &[u8]) -> u64 {
    let mut input = Input(data);
    let mut out = Vec::new();
    let mut announced = HashSet::new();
    let mut reported = HashSet::new();
    let mut emitted = 0u64;
    let mut ts = 0u64;
    let mut check = |out: &mut Vec<ProtoEvent>, failed: bool| {
        for event in out.drain(..) {
            assert!(!failed, "an event after the parser failed");
            match event {
                ProtoEvent::Request { key, .. } => {
                    assert!(announced.insert(key), "request {key} announced twice");
                }
                ProtoEvent::Exchange(x) => {
                    emitted += 1;
                    assert!(announced.contains(&x.key), "{} never announced", x.key);
                    assert!(reported.insert(x.key), "{} reported twice", x.key);
                    assert!(x.request_start.ts <= x.request_end.ts, "{x:?}");
                    assert!(x.request_start.offset <= x.request_end.offset, "{x:?}");
                    assert!(x.request_end.ts <= x.end.ts, "{x:?}");
                    if let Some(response_start) = x.response_start {
                        assert!(x.request_start.ts <= response_start.ts, "{x:?}");
                        assert!(response_start.ts <= x.end.ts, "{x:?}");
                    }
                    let _ = x.summary.describe();
                }
            }
        }
    };
    while let Some(read) = input.read() {
        ts += 1;
        // As the protocol table does: a parser that failed is fed nothing more, nor closed.
        if conn.failed() {
            break;
        }
        let failed = conn.failed();
        conn.feed(read.side, read.payload, read.total, ts, read.tid, &mut out);
        check(&mut out, failed);
    }
    let at = Stamp {
        ts: ts + 1,
        tid: 0,
        offset: 0,
    };
    if !conn.failed() {
        conn.close(at, &mut out);
        check(&mut out, false);
    }
    emitted
}

/// One `PostgreSQL` connection, fed a script of reads (the [`http1_connection`] format) after
/// a first byte saying how it was seen (from its startup message, or picked up mid-stream at a
/// query, a Parse or a Bind); the invariants of `drive_connection`, and the connection's own
/// count matches what it emitted.
pub fn postgres_connection(data: &[u8]) {
    let Some((&seen, data)) = data.split_first() else {
        return;
    };
    let mut conn = match seen % 4 {
        0 => PgConnection::from_start(),
        1 => PgConnection::mid_stream(b'Q'),
        2 => PgConnection::mid_stream(b'P'),
        _ => PgConnection::mid_stream(b'B'),
    };
    let emitted = drive_connection(&mut conn, data);
    assert_eq!(conn.stats.exchanges, emitted);
}

/// One `MySQL` / `MariaDB` connection, fed a script of reads (the [`http1_connection`] format)
/// after a first byte saying how it was seen (from the server's greeting when even, else
/// picked up mid-stream); the invariants of `drive_connection`, and the connection's own count
/// matches what it emitted.
pub fn mysql_connection(data: &[u8]) {
    let Some((&seen, data)) = data.split_first() else {
        return;
    };
    let mut conn = if seen % 2 == 0 {
        MyConnection::new()
    } else {
        MyConnection::mid_stream()
    };
    let emitted = drive_connection(&mut conn, data);
    assert_eq!(conn.stats.exchanges, emitted);
}

/// SQL sanitising of arbitrary bytes in both dialects: never panics, output bounded, and a
/// literal `'zz9secret'` that opens the input after a plain word never survives.
///
/// Input: the text.
pub fn sql_sanitise(data: &[u8]) {
    for dialect in [Dialect::Postgres, Dialect::Mysql] {
        let s = sanitise(data, dialect);
        assert!(s.text.len() <= crate::protocol::sql::MAX_TEXT, "{s:?}");
        // A marker literal planted by the input itself: `'zz9secret'` never survives.
        // The marker's text once only: another copy may be a name (bare or quoted), kept.
        let once = data.windows(9).filter(|w| *w == b"zz9secret").count() == 1;
        if let Some(at) = data.windows(11).position(|w| w == b"'zz9secret'")
            && once
        {
            let quoted_cleanly = data[..at].iter().all(u8::is_ascii_alphanumeric);
            if quoted_cleanly {
                assert!(!s.text.contains("zz9secret"), "{s:?}");
            }
        }
    }
}

/// One Redis connection (RESP2/RESP3) fed a script of reads from both directions, some captured
/// only in part, then closed.
///
/// Script: as for [`http1_connection`] (a control byte, a length byte, the payload, and for a
/// truncated read a byte of uncaptured length ×64).
///
/// Invariants: those of `drive_connection` (announced first, reported once, stamps in
/// order), and the connection's own count matches what it emitted.
pub fn redis_connection(data: &[u8]) {
    let mut conn = RedisConnection::new();
    let emitted = drive_connection(&mut conn, data);
    assert_eq!(conn.stats.exchanges, emitted);
}

/// One memcached text-protocol connection fed a script of reads, as [`redis_connection`].
///
/// Invariants: as for [`redis_connection`].
pub fn memcached_connection(data: &[u8]) {
    let mut conn = MemcachedConnection::new();
    let emitted = drive_connection(&mut conn, data);
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

/// The whole user-space pipeline (conntrack, protocol detection, HTTP, pairing, linking, span
/// building) fed a script of connection and data events among eight connections of this
/// process, as the ring would deliver them.
///
/// Script: per step a control byte (bits 0-1: open, data, close, flush; bits 2-4: connection;
/// bit 5: direction; bit 6: role on open), a thread byte, a length byte and the payload.
///
/// Invariant: every span ends no earlier than it starts.
pub fn pipeline(data: &[u8]) {
    let mut input = Input(data);
    let mut exporter = CountingExporter::default();
    let tracer = Tracer::new(
        TraceConfig {
            link_delay: Duration::ZERO,
            ..TraceConfig::default()
        },
        Resources::new(ServiceNameRule::Auto),
    );
    let mut sink = TraceSink::new(
        Conntrack::new(ConntrackConfig::default(), Vec::new()),
        tracer,
        &mut exporter,
    );
    let pid = std::process::id();
    let mut ts = 1_000_000u64;
    while !input.is_empty() {
        let control = input.byte();
        let tid = 100 + u32::from(input.byte() & 7);
        let conn_id = 1 + u64::from((control >> 2) & 7);
        ts += 1_000;
        let header = |kind: EventKind| EventHeader {
            kind: kind as u32,
            pid,
            tid,
            fd: 3 + conn_id as i32,
            conn_id,
            ts_ns: ts,
        };
        match control & 3 {
            0 => {
                let server = control & 0x40 != 0;
                let (role, syscall, tuple) = if server {
                    (
                        Role::Server,
                        Syscall::Accept4,
                        loopback_tuple(8080, 20_000 + conn_id as u16),
                    )
                } else {
                    (
                        Role::Client,
                        Syscall::Connect,
                        loopback_tuple(20_000 + conn_id as u16, 8080),
                    )
                };
                sink.on_event(&Event::Open(ConnEvent {
                    header: header(EventKind::ConnOpen),
                    tuple,
                    role: role as u32,
                    syscall: syscall as u32,
                    ..ConnEvent::default()
                }));
            }
            1 => {
                let len = usize::from(input.byte());
                let payload = input.take(len);
                let direction = if control & 0x20 == 0 {
                    Direction::Egress
                } else {
                    Direction::Ingress
                };
                let event = DataEvent {
                    header: header(EventKind::Data),
                    // Egress bytes moved at the write's entry, ingress bytes at the read's exit.
                    moved_ns: if direction == Direction::Egress {
                        ts - 500
                    } else {
                        ts
                    },
                    ret: payload.len() as i64,
                    role: 0,
                    direction: direction as u32,
                    syscall: Syscall::Read as u32,
                    captured_len: payload.len() as u32,
                    task: 0,
                    // Sequence numbers on some chunks (0x40), of any value: keys come from them.
                    seq: (ts as u32).wrapping_mul(2_654_435_761),
                    seq_valid: u32::from(control & 0x40 != 0),
                };
                sink.on_event(&Event::Data { event, payload });
            }
            2 => sink.on_event(&Event::Close(ConnEvent {
                header: header(EventKind::ConnClose),
                ..ConnEvent::default()
            })),
            _ => sink.export(true),
        }
    }
    sink.export(true);
    drop(sink);
    assert!(exporter.bad_spans == 0, "a span ended before it started");
}

/// A fuzz target: arbitrary bytes in, a panic when an invariant breaks.
pub type Target = fn(&[u8]);

/// A DNS connection (the first input byte's bit 0: TCP, else UDP) fed a connection script
/// ([`http1_connection`]'s format), then closed.
///
/// Invariants: those of every connection parser (see `drive_connection`), and the parser's
/// own count of answered queries is at most what it reported.
pub fn dns_connection(data: &[u8]) {
    let mut input = Input(data);
    let mut conn = DnsConnection::new(input.byte() & 1 == 1);
    let emitted = drive_connection(&mut conn, input.0);
    assert!(conn.stats.exchanges <= emitted);
}

/// A datagram from the network on the peer port: decoding never panics, and fails without the
/// secret. The same bytes signed with the secret (the first 92 are the body) decode when the
/// header is a peer message's, and encode back to exactly those bytes.
pub fn peer_message(data: &[u8]) {
    use crate::peers::wire::{ClientSpan, MESSAGE_LEN, signed};
    const SECRET: &[u8] = b"fuzzing-secret-0123456789";
    assert!(ClientSpan::decode(data, SECRET, 0).is_err() || data.len() == MESSAGE_LEN);
    let Some(body) = data.get(..MESSAGE_LEN - 16) else {
        return;
    };
    let Some((message, sent)) = signed(body, SECRET) else {
        return;
    };
    if let Ok(span) = ClientSpan::decode(&message, SECRET, sent) {
        assert_eq!(span.encode(SECRET, sent), message);
    } else {
        assert!(&message[..4] != b"SSPN" || message[4..8] != [1, 1, 0, 0]);
    }
}

/// Every target by the name its `fuzz/fuzz_targets/*.rs` file and corpus folders use.
pub const TARGETS: &[(&str, Target)] = &[
    ("http1_connection", http1_connection),
    ("http1_resplit", http1_resplit),
    ("http1_head", http1_head),
    ("ring_record", ring_record),
    ("btf", btf),
    ("trace_context", trace_context),
    ("redaction", redaction),
    ("pipeline", pipeline),
    ("http2_connection", http2_connection),
    ("hpack", hpack),
    ("go_executable", go_executable),
    ("dns_connection", dns_connection),
    ("redis_connection", redis_connection),
    ("memcached_connection", memcached_connection),
    ("postgres_connection", postgres_connection),
    ("mysql_connection", mysql_connection),
    ("sql_sanitise", sql_sanitise),
    ("python_module", python_module),
    ("peer_message", peer_message),
];

#[cfg(test)]
mod tests {
    //! Every input the fuzzers found that once broke an invariant, replayed (fuzz/regressions),
    //! plus each target's seed corpus (fuzz/seeds).

    use std::path::Path;

    fn replay(dir: &str, target: fn(&[u8])) -> usize {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../fuzz")
            .join(dir);
        let Ok(entries) = std::fs::read_dir(&root) else {
            return 0;
        };
        let mut n = 0;
        for entry in entries.flatten() {
            let bytes = std::fs::read(entry.path()).expect("readable fuzz input");
            target(&bytes);
            n += 1;
        }
        n
    }

    #[test]
    fn seeds_and_regressions_replay_cleanly() {
        for (name, target) in super::TARGETS {
            let seeds = replay(&format!("seeds/{name}"), *target);
            assert!(seeds > 0, "target {name} has no seeds in fuzz/seeds/{name}");
            replay(&format!("regressions/{name}"), *target);
        }
    }
}

//! Test support for the request/response parsers (Redis, memcached, PostgreSQL, MySQL): reads a
//! captured jsonl fixture (one line per syscall, each payload char one byte), replays it through
//! detection and the detected parser the way the protocol table does, checks the event
//! invariants on the way, and expands every summary so tests can assert on names and attributes
//! and that no planted secret reaches a span.

use std::net::SocketAddr;

use agent_common::Role;

use super::{Chunk, ConnectionParser, Detect, ProtoEvent, Side, SpanFacts, Stamp, Summary as _};
use crate::trace::intern::Interner;

/// One syscall of a fixture: (egress, captured bytes, bytes moved).
pub type Syscall = (bool, Vec<u8>, u64);

/// The syscalls of a fixture (`payload` chars U+0000..U+00FF are bytes).
pub fn syscalls(fixture: &str) -> Vec<Syscall> {
    fixture
        .lines()
        .map(|line| {
            let record: serde_json::Value = serde_json::from_str(line).expect("fixture line");
            let bytes = record["payload"]
                .as_str()
                .expect("payload")
                .chars()
                .map(|c| u8::try_from(u32::from(c)).expect("latin-1"))
                .collect();
            (
                record["direction"] == "egress",
                bytes,
                record["ret"].as_u64().expect("ret"),
            )
        })
        .collect()
}

/// One exchange as a test sees it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub key: u64,
    pub request: (u64, u64),
    /// The summary's `describe()`.
    pub line: String,
    /// Every attribute, its value as `Debug` text, then `name` and `status`.
    pub attributes: Vec<(String, String)>,
    /// The span name, the status, and `key=value` per attribute (string values as they are,
    /// others empty).
    pub expanded: Vec<String>,
}

/// What a replay produced.
#[derive(Debug, Default)]
pub struct Replayed {
    pub seen: Vec<Seen>,
    /// The parser gave up.
    pub failed: bool,
    /// Detection found the protocol.
    pub detected: bool,
}

impl Replayed {
    /// `(key, describe())` per exchange, in order.
    pub fn exchanges(&self) -> Vec<(u64, String)> {
        self.seen.iter().map(|s| (s.key, s.line.clone())).collect()
    }

    /// Every exchange's [`Seen::expanded`], in order.
    pub fn expanded(&self) -> Vec<String> {
        self.seen.iter().flat_map(|s| s.expanded.clone()).collect()
    }
}

/// Attached just before syscall `k` of `calls` at the `server` or client end: the syscall
/// where `detect` recognises the connection, and the request-side bytes before it (what the
/// keys of a replay from `k` are counted from), if it is recognised at all.
pub fn recognised_from(
    detect: Detect,
    calls: &[Syscall],
    server: bool,
    k: usize,
) -> Option<(usize, u64)> {
    let role = if server { Role::Server } else { Role::Client };
    let at = (k..calls.len()).find(|&i| {
        let (egress, bytes, total) = &calls[i];
        detect(&Chunk {
            egress: *egress,
            role,
            payload: bytes,
            total: *total,
        })
        .is_some()
    })?;
    let base = calls[..at]
        .iter()
        .filter(|(egress, _, _)| *egress != server)
        .map(|(_, _, total)| total)
        .sum();
    Some((at, base))
}

/// Replays `calls` (each cut to `capture` bytes) through `detect` and its parser at the
/// `server` or client end. Asserts that every exchange was announced first under its key (the
/// request's offset, for parsers keyed by offsets), each key reported once, stamps ordered.
pub fn replay(detect: Detect, calls: &[Syscall], server: bool, capture: usize) -> Replayed {
    let role = if server { Role::Server } else { Role::Client };
    let mut parser: Option<Box<dyn ConnectionParser>> = None;
    let mut out = Vec::new();
    for (i, (egress, bytes, total)) in calls.iter().enumerate() {
        let data = &bytes[..bytes.len().min(capture)];
        if parser.is_none() {
            let chunk = Chunk {
                egress: *egress,
                role,
                payload: data,
                total: *total,
            };
            parser = detect(&chunk).map(|d| {
                assert_eq!(d.server, server);
                d.parser
            });
        }
        if let Some(p) = parser.as_mut() {
            p.feed(
                Side::of(server, *egress),
                data,
                *total,
                i as u64 + 1,
                1,
                &mut out,
            );
        }
    }
    let failed = parser.as_ref().is_some_and(|p| p.failed());
    if let Some(p) = parser.as_mut() {
        p.close(
            Stamp {
                ts: calls.len() as u64 + 1,
                tid: 1,
                offset: 0,
            },
            &mut out,
        );
    }
    // Request/response protocols answer a request after it ends; a multiplexed one (HTTP/2)
    // may start a stream's response while its request still streams.
    let in_order = parser.as_ref().is_none_or(|p| p.keys_are_offsets());
    if in_order {
        for event in &out {
            if let ProtoEvent::Request { key, start, .. } = event {
                assert_eq!(*key, start.offset, "keys are request offsets");
            }
        }
    }
    Replayed {
        seen: check_at(out, server, in_order),
        failed,
        detected: parser.is_some(),
    }
}

/// Checks the event invariants of a client end's events and expands each exchange.
pub fn check(events: Vec<ProtoEvent>) -> Vec<Seen> {
    check_at(events, false, true)
}

/// Feeds `chunks` (side, bytes, bytes the syscall moved) to `conn` as syscalls 1, 2, … of thread
/// 1, closes it, and returns what it reported, checked by [`check`], and the parser.
pub fn feed_chunks<P: ConnectionParser>(
    mut conn: P,
    chunks: &[(Side, &[u8], u64)],
) -> (Vec<Seen>, P) {
    let mut out = Vec::new();
    for (i, (side, data, total)) in chunks.iter().enumerate() {
        conn.feed(*side, data, *total, i as u64 + 1, 1, &mut out);
    }
    conn.close(Stamp::default(), &mut out);
    (check(out), conn)
}

fn check_at(events: Vec<ProtoEvent>, server: bool, in_order: bool) -> Vec<Seen> {
    let mut announced = Vec::new();
    let mut seen: Vec<Seen> = Vec::new();
    let facts = SpanFacts {
        server,
        local: SocketAddr::from(([127, 0, 0, 1], 40000)),
        remote: SocketAddr::from(([127, 0, 0, 1], 6379)),
    };
    let mut strings = Interner::default();
    for event in events {
        match event {
            ProtoEvent::Request { key, .. } => {
                assert!(!announced.contains(&key), "key {key} announced twice");
                announced.push(key);
            }
            ProtoEvent::Exchange(x) => {
                assert!(announced.contains(&x.key), "{x:?} was not announced");
                assert!(
                    seen.iter().all(|s| s.key != x.key),
                    "key {} reported twice",
                    x.key
                );
                assert!(x.request_start.ts <= x.request_end.ts, "{x:?}");
                assert!(x.request_start.offset <= x.request_end.offset, "{x:?}");
                if let Some(r) = x.response_start {
                    let after = if in_order {
                        x.request_end
                    } else {
                        x.request_start
                    };
                    assert!(after.ts <= r.ts && r.ts <= x.end.ts, "{x:?}");
                }
                let line = x.summary.describe();
                let (name, attributes, status) = x.summary.expand(&facts, &mut strings);
                let mut expanded = vec![name.to_string(), format!("{status:?}")];
                expanded.extend(
                    attributes
                        .iter()
                        .map(|kv| format!("{}={}", kv.key, kv.value.as_str().unwrap_or(""))),
                );
                let mut debug: Vec<(String, String)> = attributes
                    .iter()
                    .map(|kv| (kv.key.to_string(), format!("{:?}", kv.value)))
                    .collect();
                debug.push(("name".into(), name.to_string()));
                debug.push(("status".into(), format!("{status:?}")));
                seen.push(Seen {
                    key: x.key,
                    request: (x.request_start.offset, x.request_end.offset),
                    line,
                    attributes: debug,
                    expanded,
                });
            }
        }
    }
    seen
}

/// Asserts that no exchange's description, attributes or expanded text contain any of
/// `secrets`.
pub fn assert_no_secrets(seen: &[Seen], secrets: &[&str]) {
    for s in seen {
        for secret in secrets {
            assert!(!s.line.contains(secret), "{secret} in {}", s.line);
            for (key, value) in &s.attributes {
                assert!(!value.contains(secret), "{secret} in {key}={value}");
            }
            for text in &s.expanded {
                assert!(!text.contains(secret), "{secret:?} leaked into {text:?}");
            }
        }
    }
}

/// Cuts every syscall of `whole` into pieces of pseudo-random sizes (1..=40 bytes, seeded), as
/// reads of any size would, keeping the first one whole (detection needs it).
pub fn resplit(whole: &[Syscall], run: u64) -> Vec<Syscall> {
    resplit_after(whole, 1, run)
}

/// As [`resplit`], keeping the first `keep` syscalls whole (those up to the one detection
/// recognises).
pub fn resplit_after(whole: &[Syscall], keep: usize, run: u64) -> Vec<Syscall> {
    let mut seed = run.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let keep = keep.min(whole.len());
    let mut pieces = whole[..keep].to_vec();
    for (egress, bytes, _) in &whole[keep..] {
        let mut rest = bytes.as_slice();
        while !rest.is_empty() {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let cut = (1 + (seed % 40) as usize).min(rest.len());
            pieces.push((*egress, rest[..cut].to_vec(), cut as u64));
            rest = &rest[cut..];
        }
    }
    pieces
}

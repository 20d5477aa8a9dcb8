//! Test support for the datastore parsers: reads captured jsonl fixtures, replays them through
//! detection and a parser the way the protocol table does, checks the event invariants, and
//! expands every summary so tests can assert no planted secret reaches a span.

use std::net::SocketAddr;

use agent_common::Role;

use super::{Chunk, ConnectionParser, Detect, ProtoEvent, Side, SpanFacts, Stamp};
use crate::trace::intern::Interner;

/// One syscall of a fixture: (egress, bytes, bytes moved).
pub type Write = (bool, Vec<u8>, u64);

/// The syscalls of a jsonl fixture (`payload` chars U+0000..U+00FF are bytes).
pub fn writes(fixture: &str) -> Vec<Write> {
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

/// What a replay produced.
#[derive(Debug, Default)]
pub struct Replayed {
    /// `(key, describe())` per exchange, in order.
    pub exchanges: Vec<(u64, String)>,
    /// Every attribute value and span name of every expanded summary, as text.
    pub expanded: Vec<String>,
    pub failed: bool,
    pub detected: bool,
}

/// Feeds writes (each cut to `capture` bytes) to the parser `detect` finds, at the `server` or
/// client end; asserts each exchange was announced first under its key and reported once, and
/// that stamps run forward within it.
pub fn replay(detect: Detect, writes: &[Write], server: bool, capture: usize) -> Replayed {
    let role = if server { Role::Server } else { Role::Client };
    let mut parser: Option<Box<dyn ConnectionParser>> = None;
    let mut out = Vec::new();
    let mut result = Replayed::default();
    for (i, (egress, bytes, total)) in writes.iter().enumerate() {
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
                7,
                &mut out,
            );
        }
    }
    result.detected = parser.is_some();
    result.failed = parser.as_ref().is_some_and(|p| p.failed());
    if let Some(p) = parser.as_mut() {
        p.close(
            Stamp {
                ts: writes.len() as u64 + 1,
                tid: 0,
                offset: 0,
            },
            &mut out,
        );
    }
    let mut announced = Vec::new();
    let facts = SpanFacts {
        server,
        local: SocketAddr::from(([127, 0, 0, 1], 40000)),
        remote: SocketAddr::from(([127, 0, 0, 1], 5432)),
    };
    let mut strings = Interner::default();
    for event in out {
        match event {
            ProtoEvent::Request { key, start, .. } => {
                assert_eq!(key, start.offset);
                assert!(!announced.contains(&key), "{key} announced twice");
                announced.push(key);
            }
            ProtoEvent::Exchange(x) => {
                assert!(announced.contains(&x.key), "{x:?} was not announced");
                assert!(
                    !result.exchanges.iter().any(|(k, _)| *k == x.key),
                    "{} reported twice",
                    x.key
                );
                assert!(x.request_start.ts <= x.request_end.ts, "{x:?}");
                if let Some(r) = x.response_start {
                    assert!(x.request_start.ts <= r.ts && r.ts <= x.end.ts, "{x:?}");
                }
                let line = x.summary.describe();
                let (name, attributes, status) = x.summary.expand(&facts, &mut strings);
                result.expanded.push(name);
                result.expanded.push(format!("{status:?}"));
                for kv in attributes {
                    result
                        .expanded
                        .push(format!("{}={}", kv.key, kv.value.as_str().unwrap_or("")));
                }
                result.exchanges.push((x.key, line));
            }
        }
    }
    result
}

/// Asserts none of `secrets` is in any exchange line or expanded attribute.
pub fn assert_no_secrets(replayed: &Replayed, secrets: &[&str]) {
    for secret in secrets {
        for text in replayed
            .exchanges
            .iter()
            .map(|(_, l)| l)
            .chain(&replayed.expanded)
        {
            assert!(!text.contains(secret), "{secret:?} leaked into {text:?}");
        }
    }
}

/// Cuts every write of `whole` into pieces of pseudo-random sizes (1..=40 bytes, seeded), as
/// reads of any size would, keeping the first write whole (detection needs it).
pub fn resplit(whole: &[Write], run: u64) -> Vec<Write> {
    let mut seed = run.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut pieces = vec![whole[0].clone()];
    for (egress, bytes, _) in &whole[1..] {
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

//! Test support for the datastore parsers: replays a captured jsonl fixture (one line per
//! syscall, each payload char one byte) through detection and the detected parser, as the
//! protocol table does, and checks the event invariants on the way.

use std::net::SocketAddr;

use agent_common::Role;

use super::{Chunk, ConnectionParser, Detect, ProtoEvent, Side, SpanFacts, Stamp};
use crate::trace::intern::Interner;

/// One syscall of a fixture: (egress, captured bytes, bytes moved).
pub type Syscall = (bool, Vec<u8>, u64);

/// The syscalls of a fixture.
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
    pub line: String,
    /// Every attribute value, expanded, as text.
    pub attributes: Vec<(String, String)>,
}

/// Replays `calls` (each cut to `capture` bytes) through `detect` and its parser at the
/// `server` end; returns the exchanges and whether the parser failed. Asserts that every
/// exchange was announced first under its key, each key reported once, stamps ordered.
pub fn replay(
    detect: Detect,
    calls: &[Syscall],
    server: bool,
    capture: usize,
) -> (Vec<Seen>, bool) {
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
    (check(out), failed)
}

/// Checks the event invariants and expands each exchange.
pub fn check(events: Vec<ProtoEvent>) -> Vec<Seen> {
    let mut announced = Vec::new();
    let mut seen: Vec<Seen> = Vec::new();
    let facts = SpanFacts {
        server: false,
        local: SocketAddr::from(([127, 0, 0, 1], 40000)),
        remote: SocketAddr::from(([127, 0, 0, 1], 6379)),
    };
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
                    assert!(x.request_end.ts <= r.ts && r.ts <= x.end.ts, "{x:?}");
                }
                let line = x.summary.describe();
                let (name, attributes, status) = x.summary.expand(&facts, &mut Interner::default());
                let mut attributes: Vec<(String, String)> = attributes
                    .iter()
                    .map(|kv| (kv.key.to_string(), format!("{:?}", kv.value)))
                    .collect();
                attributes.push(("name".into(), name));
                attributes.push(("status".into(), format!("{status:?}")));
                seen.push(Seen {
                    key: x.key,
                    request: (x.request_start.offset, x.request_end.offset),
                    line,
                    attributes,
                });
            }
        }
    }
    seen
}

/// Asserts that no exchange's description or attributes contain any of `secrets`.
pub fn assert_no_secrets(seen: &[Seen], secrets: &[&str]) {
    for s in seen {
        for secret in secrets {
            assert!(!s.line.contains(secret), "{secret} in {}", s.line);
            for (key, value) in &s.attributes {
                assert!(!value.contains(secret), "{secret} in {key}={value}");
            }
        }
    }
}

use super::*;

use crate::protocol::replay::{Syscall as Write, resplit, syscalls as writes};

// The fixtures: streams captured by `sockspan events` from real processes, a grpcio 1.85
// client making five calls on one channel (unary, server streaming, bidirectional
// streaming, a call that fails with `NOT_FOUND`, unary again) to a grpcio server, seen at
// each end.
const CLIENT: &str = include_str!("fixtures/grpcio_client_calls.jsonl");
const SERVER: &str = include_str!("fixtures/grpcio_server_calls.jsonl");
const EXPECTED: [&str; 5] = [
    "POST /demo.Model/Predict -> grpc 0",
    "POST /demo.Model/Stream -> grpc 0",
    "POST /demo.Model/Chat -> grpc 0",
    "POST /demo.Model/Fail -> grpc 5",
    "POST /demo.Model/Predict -> grpc 0",
];

/// Feeds writes (cut to `capture` bytes each, as a smaller `--capture-bytes` would) to a
/// parser found by detection, as the protocol table does; returns (key, line) per exchange
/// and whether the parser gave up.
fn replay(writes: &[Write], server: bool, capture: usize) -> (Vec<(u64, String)>, bool) {
    let r = crate::protocol::replay::replay(detect, writes, server, capture);
    (r.exchanges(), r.failed)
}

/// `line` (`METHOD PATH -> OUTCOME`) says nothing `real` contradicts: its method and path
/// are the real ones or unknown (`?`), and a gRPC status it gives is the real one. With
/// fields unresolved it may know less (a gRPC call whose content-type and trailers were
/// unresolvable shows as its HTTP/2 `:status`).
fn assert_not_contradicting(line: &str, real: &str, context: &str) {
    let (head, outcome) = line.split_once(" -> ").expect("describe line");
    let (real_head, real_outcome) = real.split_once(" -> ").expect("describe line");
    for (part, real_part) in head.split(' ').zip(real_head.split(' ')) {
        assert!(
            part == real_part || part == "?",
            "{context}: {line:?} contradicts {real:?}"
        );
    }
    if outcome.starts_with("grpc") && outcome != "grpc ?" {
        assert_eq!(
            outcome, real_outcome,
            "{context}: {line:?} against {real:?}"
        );
    }
}

#[test]
fn captured_grpc_calls_are_one_exchange_per_stream_at_both_ends() {
    for (fixture, server) in [(CLIENT, false), (SERVER, true)] {
        let (found, failed) = replay(&writes(fixture), server, usize::MAX);
        assert!(!failed);
        let lines: Vec<&str> = found.iter().map(|(_, l)| l.as_str()).collect();
        assert_eq!(lines, EXPECTED, "server side: {server}");
        let keys: Vec<u64> = found.iter().map(|(k, _)| *k).collect();
        assert_eq!(keys, [1, 3, 5, 7, 9], "stream ids, the same at both ends");
    }
}

/// Property: however each end's capture is cut into reads (random sizes, in order), the
/// same exchanges come out. 200 seeded splittings of each end.
#[test]
fn any_split_of_a_captured_stream_gives_the_same_exchanges() {
    for (fixture, server) in [(CLIENT, false), (SERVER, true)] {
        let whole = writes(fixture);
        let reference = replay(&whole, server, usize::MAX).0;
        for run in 1..=200u64 {
            // The first piece must still be recognisable: the opening write stays whole.
            let pieces = resplit(&whole, run);
            assert_eq!(
                replay(&pieces, server, usize::MAX).0,
                reference,
                "splitting {run} (server side: {server})"
            );
        }
    }
}

/// Attached after the connection opened: every call that started later is reported, each
/// either with its real method or with none, never with another call's.
#[test]
fn attached_midway_names_later_calls_rightly_or_not_at_all() {
    for (fixture, server) in [(CLIENT, false), (SERVER, true)] {
        let whole = writes(fixture);
        let truth = replay(&whole, server, usize::MAX).0;
        for skip in 1..whole.len() {
            let (found, failed) = replay(&whole[skip..], server, usize::MAX);
            assert!(!failed, "skip {skip} (server side: {server})");
            for (key, line) in &found {
                let (_, real) = truth.iter().find(|(k, _)| k == key).expect("a real stream");
                assert_not_contradicting(line, real, &format!("skip {skip}, stream {key}"));
            }
        }
    }
}

#[test]
fn a_small_capture_limit_loses_names_not_correctness() {
    for capture in [9, 16, 40, 64] {
        for (fixture, server) in [(CLIENT, false), (SERVER, true)] {
            let whole = writes(fixture);
            let truth = replay(&whole, server, usize::MAX).0;
            let (found, _) = replay(&whole, server, capture);
            for (key, line) in &found {
                if let Some((_, real)) = truth.iter().find(|(k, _)| k == key) {
                    assert_not_contradicting(line, real, &format!("capture {capture}"));
                }
            }
        }
    }
}

/// The same calls captured by an agent started while the channel was open, after a Predict
/// and a Stream call (`predict,stream,wait,predict,stream,chat,fail,chat`): the first two
/// paths after the attach are references to entries from before it, so they stay unknown;
/// Chat and Fail were first sent after it and resolve; every call is a gRPC call.
#[test]
fn a_capture_that_starts_mid_connection_names_what_hpack_allows() {
    let client = include_str!("fixtures/grpcio_client_midstream.jsonl");
    let server = include_str!("fixtures/grpcio_server_midstream.jsonl");
    for (fixture, is_server) in [(client, false), (server, true)] {
        let (found, failed) = replay(&writes(fixture), is_server, usize::MAX);
        assert!(!failed);
        let lines: Vec<&str> = found.iter().map(|(_, l)| l.as_str()).collect();
        assert_eq!(
            lines,
            [
                "POST ? -> grpc ?",
                "POST ? -> grpc ?",
                "POST /demo.Model/Chat -> grpc ?",
                "POST /demo.Model/Fail -> grpc 5",
                "POST /demo.Model/Chat -> grpc ?",
            ],
            "server side: {is_server}"
        );
    }
}

#[test]
fn trace_context_in_a_header_block_travels_with_the_request() {
    let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let mut block = vec![0x83, 0x86, 0x44, 6];
    block.extend_from_slice(b"/a.B/C");
    block.extend_from_slice(&[0x40, 11]);
    block.extend_from_slice(b"traceparent");
    block.push(u8::try_from(traceparent.len()).expect("short"));
    block.extend_from_slice(traceparent.as_bytes());
    let mut bytes = PREFACE.to_vec();
    bytes.extend_from_slice(&[0, 0, 0, kind::SETTINGS, 0, 0, 0, 0, 0]);
    let len = u8::try_from(block.len()).expect("short");
    let flags = flag::END_HEADERS | flag::END_STREAM;
    bytes.extend_from_slice(&[0, 0, len, kind::HEADERS, flags, 0, 0, 0, 1]);
    bytes.extend_from_slice(&block);
    let mut conn = Http2Connection::from_start();
    let mut out = Vec::new();
    let total = bytes.len() as u64;
    conn.feed(Side::Request, &bytes, total, 1, 1, &mut out);
    let [ProtoEvent::Request { key: 1, trace, .. }] = out.as_slice() else {
        panic!("one request on stream 1: {out:?}");
    };
    let trace = trace.as_deref().expect("trace headers");
    assert_eq!(trace.traceparent.as_deref(), Some(traceparent));
}

#[test]
fn bytes_that_only_look_like_a_frame_are_given_up() {
    // A plausible SETTINGS frame header, then bytes that frame nothing.
    let mut conn = Http2Connection::midstream();
    let mut out = Vec::new();
    let first = [0, 0, 0, 4, 0, 0, 0, 0, 0];
    conn.feed(Side::Request, &first, 9, 1, 1, &mut out);
    conn.feed(Side::Request, &[0xff; 30], 30, 2, 1, &mut out);
    conn.feed(Side::Request, &[0xff; 4], 100, 3, 1, &mut out);
    assert!(conn.failed());
    assert!(out.is_empty());
}

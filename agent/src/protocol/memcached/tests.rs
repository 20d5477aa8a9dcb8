use super::*;
use crate::protocol::replay::{
    Replayed, Seen, Syscall, assert_no_secrets, check, replay, syscalls,
};

const SECRETS: &[&str] = &[
    "s3cr3t", "4242", "user:", "missing", "nosuch", "big", "1.6.18",
];

/// pymemcache 4.0 against memcached 1.6.18, first connection: set (pymemcache's default
/// `noreply`), set, get hit, get miss, `set_many` (three sets in one write), `get_many` of four
/// keys, gets, delete hit and miss, set, incr, decr, incr of a non-number (`CLIENT_ERROR`,
/// after which pymemcache closes the connection).
const CLIENT_1: &str = include_str!("fixtures/pymemcache_client_1.jsonl");
/// Its second connection: add (`NOT_STORED`), touch, a 100 KB set and get, version, stats.
const CLIENT_2: &str = include_str!("fixtures/pymemcache_client_2.jsonl");
/// The same connections seen at memcached (`read`, `sendmsg`).
const SERVER_1: &str = include_str!("fixtures/pymemcache_server_1.jsonl");
const SERVER_2: &str = include_str!("fixtures/pymemcache_server_2.jsonl");

const EXPECTED_1: &[&str] = &[
    "set [set ? ? ? ? noreply] -> noreply",
    "set [set ? ? ? ?] -> ok",
    "get [get ?] -> ok",
    "get [get ?] -> ok",
    "set [set ? ? ? ?] -> ok",
    "set [set ? ? ? ?] -> ok",
    "set [set ? ? ? ?] -> ok",
    "get [get ? ? ? ?] -> ok",
    "gets [gets ?] -> ok",
    "delete [delete ?] -> ok",
    "delete [delete ?] -> ok",
    "set [set ? ? ? ?] -> ok",
    "incr [incr ? ?] -> ok",
    "decr [decr ? ?] -> ok",
    "incr [incr ? ?] -> error CLIENT_ERROR",
];
const EXPECTED_2: &[&str] = &[
    "add [add ? ? ? ?] -> ok",
    "touch [touch ? ?] -> ok",
    "set [set ? ? ? ?] -> ok",
    "get [get ?] -> ok",
    "version [version] -> ok",
    "stats [stats] -> ok",
];

/// Request bytes before the chunk detection takes (from `skip`, each cut to `capture`):
/// keys count from there.
fn base(whole: &[Syscall], skip: usize, server: bool, capture: usize) -> u64 {
    let detected = (skip..whole.len())
        .find(|&i| {
            let data = &whole[i].1[..whole[i].1.len().min(capture)];
            whole[i].0 != server && first_line(data).is_some_and(command::is_request)
        })
        .unwrap_or(whole.len());
    whole[..detected]
        .iter()
        .filter(|(egress, _, _)| *egress != server)
        .map(|(_, _, total)| total)
        .sum()
}

fn lines(seen: &[Seen]) -> Vec<&str> {
    seen.iter().map(|s| s.line.as_str()).collect()
}

#[test]
fn captured_pymemcache_requests_are_one_exchange_each_at_both_ends() {
    for (client, server, expected) in [
        (CLIENT_1, SERVER_1, EXPECTED_1),
        (CLIENT_2, SERVER_2, EXPECTED_2),
    ] {
        let Replayed {
            seen: at_client,
            failed,
            ..
        } = replay(detect, &syscalls(client), false, usize::MAX);
        assert!(!failed);
        assert_eq!(lines(&at_client), expected);
        let Replayed {
            seen: at_server,
            failed,
            ..
        } = replay(detect, &syscalls(server), true, usize::MAX);
        assert!(!failed);
        assert_eq!(lines(&at_server), expected);
        let keys = |s: &[Seen]| s.iter().map(|x| (x.key, x.request)).collect::<Vec<_>>();
        assert_eq!(keys(&at_client), keys(&at_server));
        assert_no_secrets(&at_client, SECRETS);
        assert_no_secrets(&at_server, SECRETS);
    }
}

#[test]
fn a_multi_key_get_has_its_batch_size() {
    let Replayed { seen, .. } = replay(detect, &syscalls(CLIENT_1), false, usize::MAX);
    let batch = |s: &Seen| {
        s.attributes
            .iter()
            .find(|(k, _)| k == "db.operation.batch.size")
            .map(|(_, v)| v.clone())
    };
    assert_eq!(batch(&seen[7]).as_deref(), Some("Int(4)"));
    assert_eq!(batch(&seen[2]), None);
    let system = seen[2]
        .attributes
        .iter()
        .find(|(k, _)| k == "db.system.name");
    assert!(system.is_some_and(|(_, v)| v.contains("memcached")));
}

#[test]
fn meta_commands_and_quiet_mode_pair_or_stay_unreported() {
    let fixture = include_str!("fixtures/raw_meta_client.jsonl");
    let Replayed { seen, failed, .. } = replay(detect, &syscalls(fixture), false, usize::MAX);
    assert!(!failed);
    assert_eq!(
        lines(&seen),
        [
            "ms [ms ? ? ?] -> ok",
            "mg [mg ? ? ? ?] -> ok",
            "mg [mg ? ?] -> ok",
            "mg [mg ? ? ?] -> noreply",
            "mg [mg ? ? ?] -> noreply",
            "md [md ? ?] -> noreply",
            "mn [mn] -> ok",
            "ma [ma ?] -> error CLIENT_ERROR",
            "md [md ?] -> ok",
            "me [me ?] -> ok",
            "memcached -> error ERROR",
            "flush_all [flush_all] -> ok",
            "verbosity [verbosity ?] -> ok",
        ]
    );
    assert_no_secrets(&seen, &["s3cr3t", "mk1", "bogus"]);
}

#[test]
fn attached_midway_pairs_later_requests_rightly_or_not_at_all() {
    for (fixture, server) in [
        (CLIENT_1, false),
        (SERVER_1, true),
        (CLIENT_2, false),
        (SERVER_2, true),
    ] {
        let whole = syscalls(fixture);
        let truth = replay(detect, &whole, server, usize::MAX).seen;
        for skip in 1..whole.len() {
            let Replayed { seen, failed, .. } = replay(detect, &whole[skip..], server, usize::MAX);
            assert!(!failed);
            let base = base(&whole, skip, server, usize::MAX);
            for s in &seen {
                let Some(real) = truth.iter().find(|t| t.key == s.key + base) else {
                    panic!("skip {skip}: {s:?}");
                };
                assert_eq!(s.line, real.line, "skip {skip}");
            }
        }
    }
}

#[test]
fn any_split_and_small_captures_never_pair_wrongly() {
    for (fixture, server) in [
        (CLIENT_1, false),
        (SERVER_1, true),
        (CLIENT_2, false),
        (SERVER_2, true),
    ] {
        let whole = syscalls(fixture);
        let reference = replay(detect, &whole, server, usize::MAX).seen;
        for run in 1..=30u64 {
            let mut seed = run.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
            let mut pieces = vec![whole[0].clone()];
            for (egress, bytes, total) in &whole[1..] {
                let mut rest = bytes.as_slice();
                let uncaptured = total - bytes.len() as u64;
                while !rest.is_empty() {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    let cut = (1 + (seed % 17) as usize).min(rest.len());
                    let moved = cut as u64 + if cut == rest.len() { uncaptured } else { 0 };
                    pieces.push((*egress, rest[..cut].to_vec(), moved));
                    rest = &rest[cut..];
                }
            }
            let found = replay(detect, &pieces, server, usize::MAX).seen;
            assert_eq!(lines(&found), lines(&reference), "splitting {run}");
        }
        for capture in [5, 12, 20, 40] {
            let Replayed { seen, .. } = replay(detect, &whole, server, capture);
            let base = base(&whole, 0, server, capture);
            for s in &seen {
                let Some(real) = reference.iter().find(|t| t.key == s.key + base) else {
                    panic!("capture {capture} server {server}: {s:?}");
                };
                if s.line != real.line {
                    // Only an exchange the capture cut short may differ, and only by
                    // knowing less.
                    assert!(
                        s.line.ends_with("-> none"),
                        "capture {capture}: {} vs {}",
                        s.line,
                        real.line
                    );
                }
            }
        }
    }
}

fn run(chunks: &[(Side, &[u8], u64)]) -> (Vec<Seen>, MemcachedConnection) {
    crate::protocol::replay::feed_chunks(MemcachedConnection::new(), chunks)
}

#[test]
fn server_errors_carry_their_code_only_and_garbage_loses_nothing_else() {
    let (seen, conn) = run(&[
        (Side::Request, b"get a\r\n", 7),
        (
            Side::Response,
            b"SERVER_ERROR out of memory storing s3cr3t\r\n",
            43,
        ),
        // Binary-protocol bytes, captured in part.
        (Side::Request, b"\x80\x01\x00\x05 binary", 12),
        (Side::Response, b"VALUE x 0 1\r\n", 13),
        (Side::Request, b"get b\r\n", 7),
        (Side::Response, b"END\r\n", 5),
    ]);
    assert_eq!(
        lines(&seen),
        ["get [get ?] -> error SERVER_ERROR", "get [get ?] -> ok"]
    );
    assert_no_secrets(&seen, &["s3cr3t", "memory"]);
    assert_eq!(conn.stats.desyncs, 1);
}

#[test]
fn a_value_line_split_from_its_data_and_a_reply_in_many_reads_pair() {
    let (seen, _) = run(&[
        (Side::Request, b"get a b\r\n", 9),
        (Side::Response, b"VALUE a 0 5\r", 12),
        (Side::Response, b"\nhel", 4),
        (Side::Response, b"lo\r\nVALUE b 0 1\r\nx\r\nEN", 22),
        (Side::Response, b"D\r\n", 3),
    ]);
    assert_eq!(lines(&seen), ["get [get ? ?] -> ok"]);
}

#[test]
fn detection_is_strict() {
    let client = |payload: &'static [u8]| Chunk {
        egress: true,
        role: agent_common::Role::Client,
        payload,
        total: payload.len() as u64,
    };
    for yes in [
        &b"get k\r\n"[..],
        b"set k 0 0 1\r\nx\r\n",
        b"version\r\n",
        b"mg k v\r\n",
        b"gat 10 a b\r\n",
    ] {
        assert!(detect(&client(yes)).is_some(), "{yes:?}");
    }
    for not in [
        &b"GET / HTTP/1.1\r\n\r\n"[..],
        b"get / HTTP/1.1\r\nHost: x\r\n",
        b"*1\r\n$4\r\nPING\r\n",
        b"\x16\x03\x01\x00\x05hello",
        b"\x80\x00\x00\x05",
        b"get k",
        b"set k 0 0 x\r\n",
        b"get\r\n",
        b"gets \r\n",
        b"delete a b c\r\n",
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
    ] {
        assert!(detect(&client(not)).is_none(), "{not:?}");
    }
    let long_key = [b"get ".to_vec(), vec![b'k'; 251], b"\r\n".to_vec()].concat();
    assert!(command::parse(&long_key[..long_key.len() - 2]).is_none());
}

#[test]
fn replies_that_are_not_memcached_give_the_connection_up() {
    // A Redis server answering an inline `get` detected as memcached.
    let (seen, conn) = run(&[
        (Side::Request, b"get k\r\n", 7),
        (Side::Response, b"$5\r\nhello\r\n", 11),
    ]);
    assert!(seen.is_empty() && conn.failed());
    // Inside a multi-line reply, a line that is neither VALUE nor END loses the stream
    // rather than ending the reply.
    let (seen, conn) = run(&[
        (Side::Request, b"get k\r\n", 7),
        (Side::Response, b"VALUE k 0 1\r\nx\r\nSTORED\r\n", 24),
        (Side::Request, b"version\r\n", 9),
        (Side::Response, b"VERSION 1.6.18\r\n", 16),
    ]);
    assert_eq!(lines(&seen), ["version [version] -> ok"]);
    assert_eq!(conn.stats.desyncs, 1);
}

#[test]
fn noreply_storage_completes_when_written_and_pipelines_pair_in_order() {
    let (seen, _) = run(&[
        (
            Side::Request,
            b"set a 0 0 1 noreply\r\nx\r\nget a\r\ndelete a noreply\r\nincr n 1\r\n",
            59,
        ),
        (Side::Response, b"VALUE a 0 1\r\nx\r\nEND\r\n42\r\n", 25),
    ]);
    assert_eq!(
        lines(&seen),
        [
            "set [set ? ? ? ? noreply] -> noreply",
            "delete [delete ? noreply] -> noreply",
            "get [get ?] -> ok",
            "incr [incr ? ?] -> ok",
        ]
    );
}

#[test]
fn pending_requests_are_bounded() {
    let mut conn = MemcachedConnection::new();
    let mut out = Vec::new();
    let many = b"get k\r\n".repeat(MAX_PENDING + 2);
    conn.feed(Side::Request, &many, many.len() as u64, 1, 1, &mut out);
    assert_eq!(conn.pending.len(), MAX_PENDING);
    assert_eq!(conn.stats.pending_overflow, 2);
    let replies = b"END\r\n".repeat(MAX_PENDING + 2);
    conn.feed(
        Side::Response,
        &replies,
        replies.len() as u64,
        2,
        1,
        &mut out,
    );
    // The replies owed to dropped requests cannot be told apart: nothing pairs wrongly.
    assert!(check(out).is_empty());
}

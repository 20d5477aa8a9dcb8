use super::*;
use crate::protocol::replay::{Replayed, Seen, assert_no_secrets, check, replay, syscalls};

const SECRETS: &[&str] = &[
    "s3cr3t",
    "4242",
    "9191",
    "maxmemory",
    "redis-py",
    "news",
    "alerts",
];

/// redis-py 8.1 (RESP2, `protocol=2`, password and `db=2`) against redis-server 7.0.15 on
/// one connection: AUTH, CLIENT SETINFO x2 (unknown to 7.0: errors), SELECT 2, SET, GET,
/// a miss, a 13-command pipeline, MGET, HSET of three fields, HGETALL, INCRBY on a string,
/// LPUSH on a string, a 100 KB SET and GET, SELECT 0, CONFIG GET, MULTI/INCRBY x2/EXEC.
const RESP2_CLIENT: &str = include_str!("fixtures/redis_py_resp2_client.jsonl");
/// The same connection seen at redis-server (its `read`s and `write`s).
const RESP2_SERVER: &str = include_str!("fixtures/redis_py_resp2_server.jsonl");

fn lines(seen: &[Seen]) -> Vec<&str> {
    seen.iter().map(|s| s.line.as_str()).collect()
}

fn expected_resp2() -> Vec<String> {
    let mut lines = vec![
        "AUTH [AUTH ?] -> ok".to_string(),
        "CLIENT SETINFO [CLIENT SETINFO ? ?] -> error ERR".into(),
        "CLIENT SETINFO [CLIENT SETINFO ? ?] -> error ERR".into(),
        "SELECT [SELECT ?] -> ok".into(),
        "SET [SET ? ?] -> ok".into(),
        "GET [GET ?] -> ok".into(),
        "GET [GET ?] -> ok".into(),
    ];
    lines.extend((0..12).map(|_| "SET [SET ? ?] -> ok".to_string()));
    lines.extend(
        [
            "GET [GET ?] -> ok",
            "MGET [MGET ? ? ?] -> ok",
            "HSET [HSET ? ? ? ? ? ? ?] -> ok",
            "HGETALL [HGETALL ?] -> ok",
            "INCRBY [INCRBY ? ?] -> error ERR",
            "LPUSH [LPUSH ? ?] -> error WRONGTYPE",
            "SET [SET ? ?] -> ok",
            "GET [GET ?] -> ok",
            "SELECT [SELECT ?] -> ok",
            "CONFIG GET [CONFIG GET ?] -> ok",
            "MULTI [MULTI] -> ok",
            "INCRBY [INCRBY ? ?] -> ok",
            "INCRBY [INCRBY ? ?] -> ok",
            "EXEC [EXEC] -> ok",
        ]
        .map(String::from),
    );
    lines
}

fn namespace(seen: &Seen) -> Option<&str> {
    seen.attributes
        .iter()
        .find(|(k, _)| k == "db.namespace")
        .map(|(_, v)| v.as_str())
}

#[test]
fn captured_resp2_commands_are_one_exchange_each_at_both_ends() {
    let Replayed {
        seen: client,
        failed,
        ..
    } = replay(detect, &syscalls(RESP2_CLIENT), false, usize::MAX);
    assert!(!failed);
    assert_eq!(lines(&client), expected_resp2());
    let Replayed {
        seen: server,
        failed,
        ..
    } = replay(detect, &syscalls(RESP2_SERVER), true, usize::MAX);
    assert!(!failed);
    assert_eq!(lines(&server), expected_resp2());
    // Keys and request offsets are the same at both ends; pipelined commands each have
    // their own.
    let keys = |s: &[Seen]| s.iter().map(|x| (x.key, x.request)).collect::<Vec<_>>();
    assert_eq!(keys(&client), keys(&server));
    let pipelined: Vec<_> = client[7..20].iter().map(|s| s.request).collect();
    assert!(
        pipelined.windows(2).all(|w| w[0].1 == w[1].0),
        "{pipelined:?}"
    );
    assert_no_secrets(&client, SECRETS);
    assert_no_secrets(&server, SECRETS);
    // Seen from its start (AUTH first): database 0, then 2 after SELECT 2, 0 again later.
    assert!(namespace(&client[0]).is_some_and(|n| n.contains('0')));
    assert!(namespace(&client[4]).is_some_and(|n| n.contains('2')));
    assert!(namespace(&client[31]).is_some_and(|n| n.contains('0')));
}

#[test]
fn smaller_captures_lose_names_or_exchanges_never_pair_wrongly() {
    // The fixtures hold 4096 bytes of each syscall already; smaller captures lose names or
    // exchanges, never pair wrongly.
    let truth = replay(detect, &syscalls(RESP2_CLIENT), false, usize::MAX).seen;
    for capture in [8, 16, 30, 64, 200] {
        for (fixture, server) in [(RESP2_CLIENT, false), (RESP2_SERVER, true)] {
            let Replayed { seen, .. } = replay(detect, &syscalls(fixture), server, capture);
            for s in &seen {
                let real = truth
                    .iter()
                    .find(|t| t.key == s.key)
                    .expect("a real command");
                let op = s.line.split(' ').next().unwrap_or_default();
                assert!(
                    real.line.starts_with(op),
                    "capture {capture}: {} vs {}",
                    s.line,
                    real.line
                );
            }
        }
    }
}

#[test]
fn attached_midway_pairs_later_commands_rightly_or_not_at_all() {
    for (fixture, server) in [(RESP2_CLIENT, false), (RESP2_SERVER, true)] {
        let whole = syscalls(fixture);
        let truth = replay(detect, &whole, server, usize::MAX).seen;
        for skip in 1..whole.len() {
            let Replayed { seen, failed, .. } = replay(detect, &whole[skip..], server, usize::MAX);
            assert!(!failed, "skip {skip}");
            // Keys count from the chunk detected: the request bytes before it are unseen.
            let detected = (skip..whole.len())
                .find(|&i| whole[i].0 != server && starts_command(&whole[i].1))
                .unwrap_or(whole.len());
            let base: u64 = whole[..detected]
                .iter()
                .filter(|(egress, _, _)| *egress != server)
                .map(|(_, _, total)| total)
                .sum();
            for s in &seen {
                let Some(real) = truth.iter().find(|t| t.key == s.key + base) else {
                    panic!("skip {skip} server {server}: {s:?} base {base}");
                };
                assert_eq!(s.line, real.line, "skip {skip}");
                // The database index is unknown until a SELECT.
                if skip > 8 && !s.line.starts_with("SELECT") {
                    assert!(
                        namespace(s).is_none() || skip < 36,
                        "skip {skip}: {:?}",
                        s.attributes
                    );
                }
            }
        }
    }
}

#[test]
fn any_split_of_the_streams_gives_the_same_exchanges() {
    for (fixture, server) in [(RESP2_CLIENT, false), (RESP2_SERVER, true)] {
        let whole = syscalls(fixture);
        let reference = lines(&replay(detect, &whole, server, usize::MAX).seen)
            .into_iter()
            .map(String::from)
            .collect::<Vec<_>>();
        for run in 1..=50u64 {
            let mut seed = run.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
            let mut pieces = vec![whole[0].clone()];
            for (egress, bytes, total) in &whole[1..] {
                let mut rest = bytes.as_slice();
                let uncaptured = total - bytes.len() as u64;
                while !rest.is_empty() {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    let cut = (1 + (seed % 23) as usize).min(rest.len());
                    let last = cut == rest.len();
                    let moved = cut as u64 + if last { uncaptured } else { 0 };
                    pieces.push((*egress, rest[..cut].to_vec(), moved));
                    rest = &rest[cut..];
                }
            }
            let found = replay(detect, &pieces, server, usize::MAX).seen;
            assert_eq!(lines(&found), reference, "splitting {run}");
        }
    }
}

#[test]
fn pubsub_pushes_never_pair_and_confirmations_answer_subscribes() {
    for fixture in [
        include_str!("fixtures/redis_py_pubsub_resp2_client.jsonl"),
        include_str!("fixtures/redis_py_pubsub_resp3_client.jsonl"),
    ] {
        let Replayed { seen, failed, .. } = replay(detect, &syscalls(fixture), false, usize::MAX);
        assert!(!failed);
        let found = lines(&seen);
        let tail = &found[found.len() - 5..];
        assert_eq!(
            tail,
            [
                "SUBSCRIBE [SUBSCRIBE ? ?] -> ok",
                "PSUBSCRIBE [PSUBSCRIBE ?] -> ok",
                "PING [PING] -> ok",
                "UNSUBSCRIBE [UNSUBSCRIBE ? ?] -> ok",
                "PUNSUBSCRIBE [PUNSUBSCRIBE ?] -> ok",
            ],
            "{found:?}"
        );
        assert_no_secrets(&seen, SECRETS);
    }
}

#[test]
fn resp3_replies_pair_and_hello_arguments_are_not_kept() {
    let fixture = include_str!("fixtures/redis_py_resp3_client.jsonl");
    let Replayed { seen, failed, .. } = replay(detect, &syscalls(fixture), false, usize::MAX);
    assert!(!failed);
    assert_eq!(
        lines(&seen),
        [
            "HELLO [HELLO ? ? ? ?] -> ok",
            "CLIENT MAINT_NOTIFICATIONS [CLIENT MAINT_NOTIFICATIONS ? ? ?] -> error ERR",
            "CLIENT SETINFO [CLIENT SETINFO ? ?] -> error ERR",
            "CLIENT SETINFO [CLIENT SETINFO ? ?] -> error ERR",
            "SET [SET ? ?] -> ok",
            "HSET [HSET ? ? ? ? ?] -> ok",
            "HGETALL [HGETALL ?] -> ok",
            "SMEMBERS [SMEMBERS ?] -> ok",
            "ZADD [ZADD ? ? ?] -> ok",
            "ZSCORE [ZSCORE ? ?] -> ok",
            "LPUSH [LPUSH ? ?] -> error WRONGTYPE",
            "GET [GET ?] -> ok",
        ]
    );
    assert_no_secrets(&seen, &[SECRETS, &["default"]].concat());
}

fn run(chunks: &[(Side, &[u8], u64)]) -> (Vec<Seen>, RedisConnection) {
    crate::protocol::replay::feed_chunks(RedisConnection::new(), chunks)
}

#[test]
fn a_header_split_from_its_payload_and_replies_split_anywhere_pair() {
    let (seen, _) = run(&[
        (Side::Request, b"*2\r\n$3\r\nGET\r\n$1", 15),
        (Side::Request, b"\r\nk\r\n", 5),
        (Side::Response, b"$5\r", 3),
        (Side::Response, b"\nhello\r\n:1\r\n", 12),
    ]);
    assert_eq!(lines(&seen), ["GET [GET ?] -> ok"]);
}

#[test]
fn a_reply_header_lost_beyond_the_capture_clears_pending_commands() {
    // Two pipelined commands; the first reply is an array whose element headers fall
    // beyond the capture: neither reply may pair with the wrong command.
    let (seen, conn) = run(&[
        (
            Side::Request,
            b"*2\r\n$6\r\nLRANGE\r\n$1\r\nl\r\n*2\r\n$3\r\nGET\r\n$1\r\nk\r\n",
            43,
        ),
        (Side::Response, b"*1000\r\n$3\r\nabc\r\n", 9000),
        (Side::Response, b"+OK\r\n", 5),
        (Side::Request, b"*1\r\n$4\r\nPING\r\n", 14),
        (Side::Response, b"+PONG\r\n", 7),
    ]);
    assert_eq!(lines(&seen), ["PING [PING] -> ok"]);
    assert_eq!(conn.stats.desyncs, 1);
}

#[test]
fn a_lone_command_keeps_its_reply_when_the_reply_cannot_be_followed() {
    let (seen, _) = run(&[
        (Side::Request, b"*2\r\n$6\r\nLRANGE\r\n$1\r\nl\r\n", 23),
        (Side::Response, b"*1000\r\n$3\r\nabc\r\n", 9000),
        (Side::Response, b"$3\r\nabc\r\n", 9000),
        (Side::Request, b"*1\r\n$4\r\nPING\r\n", 14),
        (Side::Response, b"+PONG\r\n", 7),
    ]);
    assert_eq!(
        lines(&seen),
        ["LRANGE [LRANGE ?] -> ok", "PING [PING] -> ok"]
    );
}

#[test]
fn the_database_index_is_unknown_after_a_mid_stream_attach_until_a_select() {
    let mut conn = RedisConnection::new();
    let mut out = Vec::new();
    for (i, (side, data)) in [
        (Side::Request, &b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n"[..]),
        (Side::Response, b"$-1\r\n"),
        (Side::Request, b"*2\r\n$6\r\nSELECT\r\n$1\r\n7\r\n"),
        (Side::Response, b"+OK\r\n"),
        (Side::Request, b"*2\r\n$6\r\nSELECT\r\n$2\r\n99\r\n"),
        (Side::Response, b"-ERR DB index is out of range\r\n"),
        (Side::Request, b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n"),
        (Side::Response, b"$-1\r\n"),
    ]
    .into_iter()
    .enumerate()
    {
        conn.feed(side, data, data.len() as u64, i as u64, 1, &mut out);
    }
    let seen = check(out);
    let namespaces: Vec<Option<&str>> = seen.iter().map(namespace).collect();
    assert!(namespaces[0].is_none() && namespaces[1].is_none());
    assert!(namespaces[2].is_some_and(|n| n.contains('7')));
    assert!(namespaces[3].is_some_and(|n| n.contains('7')));
    assert_eq!(seen[2].line, "SELECT [SELECT ?] -> error ERR");
}

#[test]
fn detection_is_strict() {
    let client = |payload: &'static [u8]| Chunk {
        egress: true,
        role: agent_common::Role::Client,
        payload,
        total: payload.len() as u64,
    };
    assert!(detect(&client(b"*1\r\n$4\r\nPING\r\n")).is_some());
    for not in [
        &b"GET / HTTP/1.1\r\n\r\n"[..],
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
        b"\x16\x03\x01\x00\x05hello",
        b"get k\r\n",
        b"*0\r\n",
        b"*1\r\n$4\r\nPI",
        b"*1025\r\n$4\r\nPING\r\n",
        b"*1\r\n$4\r\nP1NG\r\n",
        b"*1\r\n$5\r\nPING\r\n",
        b"*01\r\n$4\r\nPING\r\n",
    ] {
        assert!(detect(&client(not)).is_none(), "{not:?}");
    }
    // A server's own writes are replies.
    let reply = Chunk {
        egress: true,
        role: agent_common::Role::Server,
        payload: b"*1\r\n$4\r\nPING\r\n",
        total: 14,
    };
    assert!(detect(&reply).is_none());
}

#[test]
fn garbage_after_detection_is_given_up_or_ignored_never_paired() {
    let (seen, conn) = run(&[
        (Side::Request, b"*1\r\n$4\r\nPING\r\n", 14),
        (Side::Response, b"HTTP/1.1 200 OK\r\n", 17),
    ]);
    assert!(seen.is_empty());
    assert!(conn.failed());
    let (seen, conn) = run(&[
        (Side::Request, b"*1\r\n$4\r\nPING\r\n", 14),
        (Side::Response, b"+PONG\r\n", 7),
        (Side::Request, b"\xff\xfe garbage", 10),
        (Side::Response, b"-ERR what\r\n", 11),
        (Side::Request, b"*1\r\n$4\r\nPING\r\n", 14),
        (Side::Response, b"+PONG\r\n", 7),
    ]);
    assert_eq!(lines(&seen), ["PING [PING] -> ok", "PING [PING] -> ok"]);
    assert!(!conn.failed());
}

#[test]
fn pending_commands_are_bounded_and_their_replies_skipped() {
    let mut conn = RedisConnection::new();
    let mut out = Vec::new();
    let one = b"*1\r\n$4\r\nPING\r\n";
    let many: Vec<u8> = one.repeat(MAX_PENDING + 3);
    conn.feed(Side::Request, &many, many.len() as u64, 1, 1, &mut out);
    let replies = b"+PONG\r\n".repeat(MAX_PENDING + 3);
    conn.feed(
        Side::Response,
        &replies,
        replies.len() as u64,
        2,
        1,
        &mut out,
    );
    let seen = check(out);
    assert_eq!(seen.len(), MAX_PENDING);
    assert_eq!(conn.stats.pending_overflow, 3);
    // The survivors are the last ones, each with its own reply.
    assert_eq!(seen[0].key, 3 * one.len() as u64);
}

#[test]
fn a_huge_command_is_named_with_a_bounded_query() {
    let mut bytes = b"*100001\r\n$4\r\nMSET\r\n".to_vec();
    bytes.extend(b"$1\r\nk\r\n".repeat(100_000));
    let (seen, _) = run(&[
        (Side::Request, &bytes, bytes.len() as u64),
        (Side::Response, b"+OK\r\n", 5),
    ]);
    assert_eq!(seen.len(), 1);
    assert!(seen[0].line.len() < 300, "{}", seen[0].line);
    assert!(seen[0].line.contains("(99936 more)"));
}

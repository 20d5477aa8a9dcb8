//! Replays of real psycopg 3 / `PostgreSQL` 15 traffic (`fixtures/`, see `client.py` and
//! `capture.py` there) at both ends, plus hand-made edge cases.

use super::detect::{StartupKind, startup_kind};
use super::*;
use crate::protocol::Chunk;
use crate::protocol::replay::{
    Syscall, assert_no_secrets, recognised_from, replay, resplit_after, syscalls,
};

const CLIENT: &str = include_str!("fixtures/psycopg_client.jsonl");
const SERVER: &str = include_str!("fixtures/psycopg_server.jsonl");
const SECRETS: &[&str] = &["s3cr3t", "app-s3cr3t-pw", "4242", "alice", "carol", "bob"];

fn lines(found: &[(u64, String)]) -> Vec<&str> {
    found.iter().map(|(_, l)| l.as_str()).collect()
}

const EXPECTED: &[&str] = &[
    "DROP users [DROP TABLE IF EXISTS users; CREATE TABLE users (id int PRIMARY KEY, name text, note text)] -> ok",
    "INSERT users [INSERT INTO users (id, name, note) VALUES ($1, $2, $3)] -> ok",
    "INSERT users [INSERT INTO users VALUES (?, ?, ?)] -> ok",
    "INSERT users [INSERT INTO users (id, name) VALUES ($1, $2)] -> error 23505",
    "INSERT shop [INSERT INTO users SELECT g, ? || g, repeat(?, ?) FROM generate_series(?, ?) g] -> ok",
    "SELECT users [SELECT id, name, note FROM users WHERE id > $1] -> ok",
    "SELECT users [SELECT name FROM users WHERE id = $1] -> ok",
    "SELECT users [SELECT name FROM users WHERE id = $1] -> ok",
    "UPDATE users [UPDATE users SET note = $1 WHERE id = $2] -> ok",
    "DELETE users [DELETE FROM users WHERE id = $1] -> ok",
    "SELECT users [SELECT count(*) FROM users] -> ok",
    "BEGIN shop [BEGIN] -> ok",
    "UPDATE users [UPDATE users SET name = ? WHERE id = ?] -> ok",
    "COMMIT shop [COMMIT] -> ok",
];

#[test]
fn captured_psycopg_session_is_one_exchange_per_query_and_execute_at_both_ends() {
    let client = replay(detect, &syscalls(CLIENT), false, usize::MAX);
    let server = replay(detect, &syscalls(SERVER), true, usize::MAX);
    for r in [&client, &server] {
        assert!(r.detected && !r.failed);
        assert_eq!(lines(&r.exchanges()), EXPECTED);
        assert_no_secrets(&r.seen, SECRETS);
    }
    assert_eq!(
        client.exchanges(),
        server.exchanges(),
        "keys match at both ends"
    );
}

#[test]
fn expanded_attributes_carry_namespace_batch_size_and_sqlstate() {
    let r = replay(detect, &syscalls(CLIENT), false, usize::MAX);
    let has = |attr: &str| r.expanded().iter().any(|a| a == attr);
    assert!(has("db.system.name=postgresql"));
    assert!(has("db.namespace=shop"));
    assert!(has("db.collection.name=users"));
    assert!(has("db.operation.name=DROP"));
    assert!(has("db.response.status_code=23505"));
    // The first simple query carried two statements.
    assert!(r.expanded().iter().any(|a| a == "db.operation.batch.size="));
}

/// However each end's capture is cut into reads, the same exchanges come out at the same keys.
#[test]
fn any_split_of_a_captured_stream_gives_the_same_exchanges() {
    for (fixture, server) in [(CLIENT, false), (SERVER, true)] {
        let whole = syscalls(fixture);
        let truth = replay(detect, &whole, server, usize::MAX).exchanges();
        // Whole up to the start-up message, which detection needs in one piece (the SSL
        // request and its refusal before it are not recognised).
        let (at, _) = recognised_from(detect, &whole, server, 0).expect("recognised");
        for run in 1..=100u64 {
            let r = replay(
                detect,
                &resplit_after(&whole, at + 1, run),
                server,
                usize::MAX,
            );
            assert!(!r.failed);
            assert_eq!(r.exchanges(), truth, "split {run}, server {server}");
        }
    }
}

/// A capture limit smaller than a reply loses the connection from there, never pairs wrongly:
/// every exchange reported is a true one.
#[test]
fn a_small_capture_limit_loses_exchanges_not_correctness() {
    for capture in [4096, 512, 64, 9] {
        for (fixture, server) in [(CLIENT, false), (SERVER, true)] {
            let whole = syscalls(fixture);
            let truth = replay(detect, &whole, server, usize::MAX).exchanges();
            let r = replay(detect, &whole, server, capture);
            for found in &r.exchanges() {
                // The same exchange, or its reply's end uncaptured (found again at the next
                // request).
                let uncaptured = |line: &str| {
                    line.rsplit_once(" -> ")
                        .map_or(line.to_string(), |(head, _)| {
                            format!("{head} -> uncaptured")
                        })
                };
                assert!(
                    truth.contains(found)
                        || truth
                            .iter()
                            .any(|(k, l)| *k == found.0 && uncaptured(l) == found.1),
                    "capture {capture}: {found:?}"
                );
            }
            assert_no_secrets(&r.seen, SECRETS);
        }
    }
}

/// At the default 4096-byte capture a large result set loses its framing in the middle; at the
/// server's end the next request, read whole, finds it again, so that exchange ends there with
/// its outcome uncaptured and every later request is still reported, paired with its own
/// reply; the client's end (which may pipeline) is given up there.
#[test]
fn a_reply_larger_than_the_capture_is_found_again_at_the_next_request() {
    let mut resynced = 0;
    for (fixture, server) in [(CLIENT, false), (SERVER, true)] {
        let whole = syscalls(fixture);
        let truth = replay(detect, &whole, server, usize::MAX).exchanges();
        let r = replay(detect, &whole, server, 4096);
        let found = r.exchanges();
        if !server {
            assert!(r.failed && found.len() < truth.len());
            assert!(found.iter().all(|f| truth.contains(f)));
            continue;
        }
        assert!(!r.failed);
        assert_eq!(found.len(), truth.len(), "{found:#?}");
        for ((key, line), (real_key, real)) in found.iter().zip(&truth) {
            assert_eq!(key, real_key);
            if line != real {
                assert!(line.ends_with(" -> uncaptured"), "{line} for {real}");
                assert_eq!(
                    line.rsplit_once(" -> ").map(|(h, _)| h),
                    real.rsplit_once(" -> ").map(|(h, _)| h)
                );
                resynced += 1;
            }
        }
    }
    assert!(resynced >= 1, "the large result set was found again");
}

fn msg(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut m = vec![tag];
    m.extend_from_slice(&u32::try_from(body.len() + 4).expect("small").to_be_bytes());
    m.extend_from_slice(body);
    m
}

fn startup() -> Vec<u8> {
    let params = b"user\0app\0database\0shop\0\0";
    let mut m = u32::try_from(params.len() + 8)
        .expect("small")
        .to_be_bytes()
        .to_vec();
    m.extend_from_slice(&PROTOCOL_3.to_be_bytes());
    m.extend_from_slice(params);
    m
}

fn ready() -> Vec<u8> {
    msg(b'Z', b"I")
}

fn run(steps: &[(bool, Vec<u8>)]) -> crate::protocol::replay::Replayed {
    // (request side, bytes) at the client end: requests are egress.
    let w: Vec<Syscall> = steps
        .iter()
        .map(|(req, b)| (*req, b.clone(), b.len() as u64))
        .collect();
    replay(detect, &w, false, usize::MAX)
}

#[test]
fn detection_is_strict() {
    fn read(payload: &[u8]) -> Chunk<'_> {
        Chunk {
            egress: false,
            role: agent_common::Role::Server,
            payload,
            total: payload.len() as u64,
        }
    }
    fn chunk(payload: &[u8], total: u64, egress: bool) -> Chunk<'_> {
        Chunk {
            egress,
            role: agent_common::Role::Client,
            payload,
            total,
        }
    }
    let s = startup();
    assert!(detect(&chunk(&s, s.len() as u64, true)).is_some());
    // Wrong length, wrong side, truncated, TLS, HTTP, other versions: not ours.
    assert!(detect(&chunk(&s, s.len() as u64 + 1, true)).is_none());
    assert!(detect(&chunk(&s, s.len() as u64, false)).is_none());
    assert!(detect(&chunk(&s[..20], s.len() as u64, true)).is_none());
    assert!(detect(&chunk(b"\x16\x03\x01\x00\xa5\x01\x00\x00", 8, true)).is_none());
    assert!(detect(&chunk(b"GET / HTTP/1.1\r\n\r\n", 18, true)).is_none());
    let mut v2 = s.clone();
    v2[5] = 2;
    assert!(detect(&chunk(&v2, v2.len() as u64, true)).is_none());
    // An SSL request is not recognised: what follows it is (the start-up after a refusal, the
    // TLS handshake after an acceptance).
    let ssl = [0, 0, 0, 8, 4, 0xd2, 0x16, 0x2f];
    assert!(detect(&chunk(&ssl, 8, true)).is_none());
    // A connection older than the agent, at the server's end: a whole query or batch read
    // (below), not a part of one, nor a reply, nor a batch without its Sync, nor binary text,
    // nor a malformed Bind; never at the client's end.
    let q = msg(b'Q', b"SELECT 1\0");
    assert!(detect(&read(&q)).is_some());
    assert!(
        detect(&chunk(&q, q.len() as u64, true)).is_none(),
        "the client's end"
    );
    assert!(detect(&chunk(&q, q.len() as u64, false)).is_none());
    let cut = Chunk {
        total: q.len() as u64,
        ..read(&q[..8])
    };
    assert!(detect(&cut).is_none());
    let binary = msg(b'Q', b"\x01\x02\0");
    assert!(detect(&read(&binary)).is_none());
    let mut batch = msg(b'P', b"\0SELECT $1\0\0\0");
    batch.extend(msg(b'B', b"\0\0\0\0\0\0\0\0"));
    batch.extend(msg(b'E', b"\0\0\0\0\0"));
    assert!(detect(&read(&batch)).is_none(), "no Sync");
    batch.extend(msg(b'S', b""));
    assert!(detect(&read(&batch)).is_some());
    let mut two = q.clone();
    two.extend(&q);
    assert!(detect(&read(&two)).is_none(), "two queries");
    let mut bad_bind = msg(b'B', b"\0\0\0");
    bad_bind.extend(msg(b'S', b""));
    assert!(detect(&read(&bad_bind)).is_none(), "a Bind cut short");
}

/// A connection older than the agent, attached before any syscall of the captured session:
/// at the server's end, every request from the first one the agent sees whole is an exchange,
/// paired with its own reply (the same key, operation and outcome as with the startup seen,
/// less the database and the statements prepared before), never a wrong one; at the client's
/// end (which may pipeline), none.
#[test]
fn a_connection_older_than_the_agent_is_picked_up_at_its_next_request() {
    for (fixture, server) in [(CLIENT, false), (SERVER, true)] {
        let whole = syscalls(fixture);
        let truth = replay(detect, &whole, server, usize::MAX).exchanges();
        // The request-side bytes before the start-up, where the whole replay begins its count.
        let (_, truth_base) = recognised_from(detect, &whole, server, 0).expect("recognised");
        let mut picked_up = 0;
        for k in 1..whole.len() {
            let Some((at, base)) = recognised_from(detect, &whole, server, k) else {
                continue;
            };
            // The client's end is found only at a start-up.
            assert!(
                server || matches!(startup_kind(&whole[at].1), Some(StartupKind::Startup)),
                "attached at {k}"
            );
            let r = replay(detect, &whole[k..], server, usize::MAX);
            assert!(!r.failed, "attached at {k}");
            let found = r.exchanges();
            let expected: Vec<_> = truth
                .iter()
                .filter(|(key, _)| key + truth_base >= base)
                .collect();
            assert_eq!(found.len(), expected.len(), "attached at {k}: {found:#?}");
            for ((key, line), (real_key, real)) in found.iter().zip(expected) {
                assert_eq!(key + base, real_key + truth_base, "attached at {k}");
                let outcome = |l: &str| l.rsplit_once(" -> ").map(|(_, o)| o.to_string());
                assert!(
                    line == real
                        || *line == real.replacen(" shop", "", 1)
                        || (!line.contains('[') && outcome(line) == outcome(real)),
                    "attached at {k}: {line} for {real}"
                );
            }
            assert_no_secrets(&r.seen, SECRETS);
            picked_up += usize::from(!found.is_empty());
        }
        if server {
            assert!(picked_up > 5, "{picked_up} attach points found requests");
        } else {
            assert!(picked_up <= 2, "the start-up only");
        }
    }
}

/// A reply whose first message does not answer the request read (never seen from a backend,
/// which flushes before it reads): the connection is given up.
#[test]
fn a_reply_to_an_earlier_request_gives_a_mid_stream_connection_up() {
    let mut batch = msg(b'P', b"\0SELECT $1\0\0\0");
    batch.extend(msg(b'B', b"\0\0\0\0\0\0\0\0"));
    batch.extend(msg(b'E', b"\0\0\0\0\0"));
    batch.extend(msg(b'S', b""));
    // The earlier request's rows and end, then this one's ParseComplete.
    let mut reply = msg(b'D', b"\0\x01\0\0\0\x011");
    reply.extend(msg(b'C', b"SELECT 1\0"));
    reply.extend(msg(b'Z', b"I"));
    reply.extend(msg(b'1', b""));
    // At the server's end: requests are read, replies written.
    let w: Vec<Syscall> = [(false, batch), (true, reply)]
        .into_iter()
        .map(|(egress, b)| {
            let len = b.len() as u64;
            (egress, b, len)
        })
        .collect();
    let r = replay(detect, &w, true, usize::MAX);
    assert!(r.detected && r.failed && r.exchanges().is_empty());
}

/// After an accepted SSL request nothing is recognised (the programs recognise the TLS
/// handshake, and the plaintext from the TLS probes starts with the start-up message); after a
/// refused one the start-up that follows in cleartext is.
#[test]
fn tls_accepted_after_ssl_request_is_not_parsed_and_refused_continues() {
    let ssl = vec![0, 0, 0, 8, 4, 0xd2, 0x16, 0x2f];
    let r = run(&[
        (true, ssl.clone()),
        (false, b"S".to_vec()),
        (true, b"\x16\x03\x01\x00\xa5\x01\x00\x00".to_vec()),
    ]);
    assert!(!r.detected && r.exchanges().is_empty());
    let mut answer = b"N".to_vec();
    answer.extend(msg(b'R', &[0, 0, 0, 0]));
    let r = run(&[
        (true, ssl),
        (false, b"N".to_vec()),
        (true, startup()),
        (false, [msg(b'R', &[0, 0, 0, 0]), ready()].concat()),
        (true, msg(b'Q', b"SELECT 1\0")),
        (false, [msg(b'C', b"SELECT 1\0"), ready()].concat()),
    ]);
    assert!(!r.failed);
    assert_eq!(lines(&r.exchanges()), ["SELECT shop [SELECT ?] -> ok"]);
}

#[test]
fn cleartext_and_md5_passwords_are_never_kept() {
    let r = run(&[
        (true, startup()),
        (false, msg(b'R', &[0, 0, 0, 3])),
        (true, msg(b'p', b"pw-s3cr3t\0")),
        (false, [msg(b'R', &[0, 0, 0, 0]), ready()].concat()),
        (true, msg(b'Q', b"SELECT 'x-s3cr3t'\0")),
        (false, [msg(b'C', b"SELECT 1\0"), ready()].concat()),
    ]);
    assert_eq!(lines(&r.exchanges()), ["SELECT shop [SELECT ?] -> ok"]);
    assert_no_secrets(&r.seen, &["s3cr3t"]);
}

/// A pipelined batch whose second Execute fails: the third is skipped by the server and ends
/// with an error of no code at the Sync's `Z`; the next batch pairs rightly.
#[test]
fn an_error_in_a_pipelined_batch_aborts_the_rest_until_sync() {
    let ext = |q: &[u8]| {
        let mut p = b"\0".to_vec();
        p.extend_from_slice(q);
        p.extend_from_slice(b"\0\0\0");
        [
            msg(b'P', &p),
            msg(b'B', b"\0\0\0\0\0\0\0\0"),
            msg(b'E', b"\0\0\0\0\0"),
        ]
        .concat()
    };
    let batch = [
        ext(b"SELECT 1"),
        ext(b"INSERT INTO t VALUES (1)"),
        ext(b"DELETE FROM t"),
        msg(b'S', b""),
    ]
    .concat();
    let err = msg(b'E', b"SERROR\0C23505\0Mduplicate key (id)=(s3cr3t)\0\0");
    let replies = [
        msg(b'1', b""),
        msg(b'2', b""),
        msg(b'C', b"SELECT 1\0"),
        msg(b'1', b""),
        msg(b'2', b""),
        err,
        ready(),
    ]
    .concat();
    let r = run(&[
        (true, startup()),
        (false, [msg(b'R', &[0, 0, 0, 0]), ready()].concat()),
        (true, batch),
        (false, replies),
        (true, msg(b'Q', b"SELECT 2\0")),
        (false, [msg(b'C', b"SELECT 1\0"), ready()].concat()),
    ]);
    assert_eq!(
        lines(&r.exchanges()),
        [
            "SELECT shop [SELECT ?] -> ok",
            "INSERT t [INSERT INTO t VALUES (?)] -> error 23505",
            "DELETE t [DELETE FROM t] -> error ?",
            "SELECT shop [SELECT ?] -> ok",
        ]
    );
    assert_no_secrets(&r.seen, &["s3cr3t", "duplicate"]);
}

#[test]
fn copy_and_notices_are_skipped_and_close_ends_what_is_open() {
    let r = run(&[
        (true, startup()),
        (false, [msg(b'R', &[0, 0, 0, 0]), ready()].concat()),
        (true, msg(b'Q', b"COPY t FROM STDIN\0")),
        (false, msg(b'G', &[0, 0, 1, 0, 0])),
        (true, [msg(b'd', b"1\ts3cr3t\n"), msg(b'c', b"")].concat()),
        (
            false,
            [
                msg(b'N', b"SNOTICE\0Mx\0\0"),
                msg(b'C', b"COPY 1\0"),
                ready(),
            ]
            .concat(),
        ),
        (true, msg(b'Q', b"SELECT pg_sleep(10)\0")),
    ]);
    assert!(!r.failed);
    assert_eq!(
        lines(&r.exchanges()),
        [
            "COPY t [COPY t FROM STDIN] -> ok",
            "SELECT shop [SELECT pg_sleep(?)] -> none"
        ]
    );
}

#[test]
fn garbage_after_startup_gives_up_without_reporting() {
    let r = run(&[
        (true, startup()),
        (false, [msg(b'R', &[0, 0, 0, 0]), ready()].concat()),
        (true, msg(b'Q', b"SELECT 1\0")),
        (false, vec![0, 0, 0, 0, 0, 0]),
        (false, [msg(b'C', b"SELECT 1\0"), ready()].concat()),
    ]);
    assert!(r.failed);
    assert!(r.exchanges().is_empty());
}

#[test]
fn open_exchanges_are_capped() {
    let mut steps = vec![
        (true, startup()),
        (false, [msg(b'R', &[0, 0, 0, 0]), ready()].concat()),
    ];
    for _ in 0..(MAX_OPEN + 10) {
        steps.push((true, msg(b'Q', b"SELECT 1\0")));
    }
    let w: Vec<Syscall> = steps
        .iter()
        .map(|(req, b)| (*req, b.clone(), b.len() as u64))
        .collect();
    let mut conn = PgConnection::from_start();
    let mut out = Vec::new();
    for (i, (egress, b, total)) in w.iter().enumerate() {
        let side = if *egress {
            Side::Request
        } else {
            Side::Response
        };
        conn.feed(side, b, *total, i as u64, 1, &mut out);
    }
    assert_eq!(conn.stats.dropped, 10);
    assert!(conn.open <= MAX_OPEN);
}

//! Replays of real `MariaDB` 10.11 traffic (`fixtures/`, see `client.py` and `capture.py` there):
//! pymysql text queries and mysql-connector-python prepared statements, at both ends; plus
//! hand-made edge cases.

use super::detect::detect_greeting;
use super::*;
use crate::protocol::Chunk;
use crate::protocol::replay::{
    Syscall, assert_no_secrets, recognised_from, replay, resplit, syscalls,
};
use agent_common::Role;

const PYMYSQL_CLIENT: &str = include_str!("fixtures/pymysql_client.jsonl");
const PYMYSQL_SERVER: &str = include_str!("fixtures/pymysql_server.jsonl");
const CONNECTOR_CLIENT: &str = include_str!("fixtures/connector_client.jsonl");
const CONNECTOR_SERVER: &str = include_str!("fixtures/connector_server.jsonl");
/// Every captured session, with the end it was captured at (`true`: the server's).
const SESSIONS: [(&str, bool); 4] = [
    (PYMYSQL_CLIENT, false),
    (PYMYSQL_SERVER, true),
    (CONNECTOR_CLIENT, false),
    (CONNECTOR_SERVER, true),
];
const SECRETS: &[&str] = &[
    "s3cr3t",
    "app-s3cr3t-pw",
    "4242",
    "bob",
    "Duplicate",
    "for key",
];

fn lines(found: &[(u64, String)]) -> Vec<&str> {
    found.iter().map(|(_, l)| l.as_str()).collect()
}

/// The 190-row INSERT's text, longer than kept, stands as `LONG` here (checked apart).
const PYMYSQL: &[&str] = &[
    "SET shop [SET NAMES utf8mb4] -> ok",
    "DROP users [DROP TABLE IF EXISTS users] -> ok",
    "CREATE users [CREATE TABLE users (id INT PRIMARY KEY, name VARCHAR(?), note TEXT)] -> ok",
    "INSERT users [INSERT INTO users (id, name, note) VALUES (?, ?, ?)] -> ok",
    "INSERT users [INSERT INTO users (id, name) VALUES (?, ?)] -> error 1062",
    "LONG",
    "SELECT users [SELECT id, name, note FROM users WHERE id > ?] -> ok",
    "USE shop -> ok",
    "PING shop -> ok",
    "UPDATE users [UPDATE users SET note = ? WHERE id = ?] -> ok",
];
const CONNECTOR: &[&str] = &[
    "SET shop [SET NAMES ? COLLATE ?] -> ok",
    "SET shop [SET @@session.autocommit = ON] -> ok",
    "PING shop -> ok",
    "PREPARE users [SELECT id, name FROM users WHERE id = ? AND note <> ?] -> ok",
    "RESET users [SELECT id, name FROM users WHERE id = ? AND note <> ?] -> ok",
    "SELECT users [SELECT id, name FROM users WHERE id = ? AND note <> ?] -> ok",
    "CLOSE users [SELECT id, name FROM users WHERE id = ? AND note <> ?] -> noreply",
    "PREPARE users [UPDATE users SET note = ? WHERE id = ?] -> ok",
    "RESET users [UPDATE users SET note = ? WHERE id = ?] -> ok",
    "UPDATE users [UPDATE users SET note = ? WHERE id = ?] -> ok",
    "CLOSE users [UPDATE users SET note = ? WHERE id = ?] -> noreply",
    "PREPARE users [INSERT INTO users (id, name) VALUES (?, ?)] -> ok",
    "RESET users [INSERT INTO users (id, name) VALUES (?, ?)] -> ok",
    "INSERT users [INSERT INTO users (id, name) VALUES (?, ?)] -> error 1062",
    "CLOSE users [INSERT INTO users (id, name) VALUES (?, ?)] -> noreply",
];

/// Lines with a long multi-row INSERT's text folded to `LONG` (after checking its shape).
fn folded(found: &[(u64, String)]) -> Vec<&str> {
    lines(found)
        .into_iter()
        .map(|l| {
            if l.len() > 1000 {
                assert!(l.starts_with(
                    "INSERT users [INSERT INTO users (id, name, note) VALUES (?, ?, ?),(?, ?, ?),"
                ));
                assert!(l.ends_with("...] -> ok"), "marked as cut: {l}");
                "LONG"
            } else {
                l
            }
        })
        .collect()
}

#[test]
fn captured_sessions_are_one_exchange_per_command_at_both_ends() {
    for (client, server, expected) in [
        (PYMYSQL_CLIENT, PYMYSQL_SERVER, PYMYSQL),
        (CONNECTOR_CLIENT, CONNECTOR_SERVER, CONNECTOR),
    ] {
        let client = replay(detect, &syscalls(client), false, usize::MAX);
        let server = replay(detect, &syscalls(server), true, usize::MAX);
        for r in [&client, &server] {
            assert!(r.detected && !r.failed);
            assert_eq!(folded(&r.exchanges()), expected);
            assert_no_secrets(&r.seen, SECRETS);
        }
        assert_eq!(
            client.exchanges(),
            server.exchanges(),
            "keys match at both ends"
        );
    }
}

#[test]
fn expanded_attributes_name_the_system_from_the_greeting() {
    let r = replay(detect, &syscalls(CONNECTOR_CLIENT), false, usize::MAX);
    let has = |attr: &str| r.expanded().iter().any(|a| a == attr);
    assert!(has("db.system.name=mariadb"));
    assert!(has("db.namespace=shop"));
    assert!(has("db.collection.name=users"));
    assert!(has("db.response.status_code=1062"));
    assert!(has("db.operation.name=SELECT"));
}

#[test]
fn any_split_of_a_captured_stream_gives_the_same_exchanges() {
    for (fixture, server) in SESSIONS {
        let whole = syscalls(fixture);
        let truth = replay(detect, &whole, server, usize::MAX).exchanges();
        for run in 1..=60u64 {
            let r = replay(detect, &resplit(&whole, run), server, usize::MAX);
            assert!(!r.failed);
            assert_eq!(r.exchanges(), truth, "split {run}, server {server}");
        }
    }
}

/// Smaller captures lose framing (the 10 KB result set at 4096 bytes, handshakes and headers
/// at the smallest): every exchange reported is a true one, its outcome at worst uncaptured.
#[test]
fn a_small_capture_limit_loses_exchanges_not_correctness() {
    for capture in [4096, 512, 64, 9] {
        for (fixture, server) in SESSIONS {
            let whole = syscalls(fixture);
            let truth = replay(detect, &whole, server, usize::MAX).exchanges();
            // From the greeting only: keys from the connection's start (picked up at a later
            // command when the greeting is cut, keys count from there: tested apart).
            let r = replay(detect_greeting, &whole, server, capture);
            for found in &r.exchanges() {
                // A query cut by the capture is marked so; otherwise the same exchange.
                let real = truth
                    .iter()
                    .find(|(k, _)| *k == found.0)
                    .expect("a real one");
                let (found_op, real_op) = (found.1.split(' ').next(), real.1.split(' ').next());
                assert_eq!(found_op, real_op, "capture {capture}");
                // Or the database went uncaptured with the handshake response.
                // Or its reply's end went uncaptured (found again at the next command).
                let uncaptured = |line: &str| {
                    line.rsplit_once(" -> ")
                        .map_or(line.to_string(), |(head, _)| {
                            format!("{head} -> uncaptured")
                        })
                };
                assert!(
                    found.1 == real.1
                        || found.1.contains("...]")
                        || found.1 == real.1.replacen(" shop", "", 1)
                        || found.1 == uncaptured(&real.1),
                    "capture {capture}: {found:?}"
                );
            }
            assert_no_secrets(&r.seen, SECRETS);
        }
    }
}

/// At the default 4096-byte capture the 10 KB result set loses its framing in the middle; the
/// next command finds it again (the protocol is half duplex), so that exchange ends there with
/// its outcome uncaptured and every later command is still reported, paired with its own reply.
#[test]
fn a_reply_larger_than_the_capture_is_found_again_at_the_next_command() {
    let mut resynced = 0;
    for (fixture, server) in SESSIONS {
        let whole = syscalls(fixture);
        let truth = replay(detect, &whole, server, usize::MAX).exchanges();
        let r = replay(detect, &whole, server, 4096);
        assert!(!r.failed, "server {server}");
        let found = r.exchanges();
        assert_eq!(found.len(), truth.len(), "server {server}: {found:#?}");
        let mut uncaptured = 0;
        for ((key, line), (real_key, real)) in found.iter().zip(&truth) {
            assert_eq!(key, real_key);
            // A long query is cut by the capture too (marked `...]`); the same command.
            if line != real && !line.contains("...]") {
                assert!(line.ends_with(" -> uncaptured"), "{line} for {real}");
                assert_eq!(
                    line.rsplit_once(" -> ").map(|(h, _)| h),
                    real.rsplit_once(" -> ").map(|(h, _)| h)
                );
                uncaptured += 1;
            }
        }
        assert!(uncaptured <= 1, "the large result only: {found:#?}");
        resynced += uncaptured;
    }
    // pymysql reads the result set in one syscall at each end: there the framing was lost and
    // found again (Connector/Python reads it in pieces that keep every header captured).
    assert_eq!(resynced, 2);
}

fn packet(seq: u8, body: &[u8]) -> Vec<u8> {
    let len = u32::try_from(body.len()).expect("small").to_le_bytes();
    let mut p = vec![len[0], len[1], len[2], seq];
    p.extend_from_slice(body);
    p
}

fn greeting_packet(caps: u32) -> Vec<u8> {
    let mut b = vec![0x0a];
    b.extend_from_slice(b"8.0.36\0");
    b.extend_from_slice(&[1, 0, 0, 0]);
    b.extend_from_slice(b"abcdefgh\0");
    b.extend_from_slice(&u16::try_from(caps & 0xffff).expect("small").to_le_bytes());
    b.push(45);
    b.extend_from_slice(&[2, 0]);
    b.extend_from_slice(&u16::try_from(caps >> 16).expect("small").to_le_bytes());
    b.extend_from_slice(&[21; 11]);
    b.extend_from_slice(b"0123456789ab\0mysql_native_password\0");
    packet(0, &b)
}

fn handshake_response(caps: u32, db: &[u8]) -> Vec<u8> {
    let mut b = caps.to_le_bytes().to_vec();
    b.extend_from_slice(&[0, 0, 0, 1, 45]);
    b.extend_from_slice(&[0; 23]);
    b.extend_from_slice(b"root\0");
    b.push(20);
    b.extend_from_slice(b"s3cr3t-scramble-0123");
    b.extend_from_slice(db);
    b.push(0);
    packet(1, &b)
}

const BASE: u32 = caps::PROTOCOL_41 | caps::SECURE_CONNECTION | caps::CONNECT_WITH_DB;

/// (client egress, bytes) at the client end.
fn run(steps: &[(bool, Vec<u8>)]) -> crate::protocol::replay::Replayed {
    let w: Vec<Syscall> = steps
        .iter()
        .map(|(egress, b)| (*egress, b.clone(), b.len() as u64))
        .collect();
    replay(detect, &w, false, usize::MAX)
}

fn session(caps: u32) -> Vec<(bool, Vec<u8>)> {
    vec![
        (false, greeting_packet(caps)),
        (true, handshake_response(caps, b"shop")),
        (false, packet(2, &[0, 0, 0, 2, 0, 0, 0])),
    ]
}

#[test]
fn result_sets_with_deprecated_eof_and_multiple_results() {
    let caps = BASE | caps::DEPRECATE_EOF;
    let mut steps = session(caps);
    steps.push((
        true,
        packet(0, b"\x03SELECT a FROM t WHERE b = 's3cr3t'; SELECT 2"),
    ));
    let column = b"\x03def\x00\x01t\x01t\x01a\x01a\x0c\x3f\x00\x0b\x00\x00\x00\x03\x00\x00\x00\x00";
    let reply = [
        packet(1, &[1]),
        packet(2, column),
        packet(3, b"\x0242"),
        packet(4, b"\x0243"),
        // OK (0xFE header) with more results, then the second result: OK.
        packet(5, &[0xfe, 0, 0, 0x0a, 0, 0, 0]),
        packet(6, &[0, 0, 0, 2, 0, 0, 0]),
    ];
    // Header and payload of each packet in their own reads, as a client may read them.
    for p in &reply {
        steps.push((false, p[..4].to_vec()));
        steps.push((false, p[4..].to_vec()));
    }
    steps.push((true, packet(0, &[0x0e])));
    steps.push((
        false,
        packet(
            1,
            &[0xff, 0x15, 0x04, b'#', b'2', b'8', b'0', b'0', b'0', b'x'],
        ),
    ));
    let r = run(&steps);
    assert!(!r.failed);
    assert_eq!(
        lines(&r.exchanges()),
        [
            "SELECT t [SELECT a FROM t WHERE b = ?; SELECT ?] -> ok",
            "PING shop -> error 1045"
        ]
    );
    assert!(r.expanded().iter().any(|a| a == "db.system.name=mysql"));
    assert!(r.expanded().iter().any(|a| a == "db.operation.batch.size="));
    assert_no_secrets(&r.seen, &["s3cr3t", "42"]);
}

#[test]
fn compression_gives_up() {
    let caps = BASE | caps::COMPRESS;
    let r = run(&session(caps));
    assert!(r.failed && r.exchanges().is_empty());
}

/// After the client's short SSL request, the full handshake response and everything after come
/// as plaintext (the programs treat the socket as TLS from the request on): parsed on. Should the
/// TLS bytes arrive instead (the programs did not switch: an end that read the request apart),
/// nothing is paired from them.
#[test]
fn an_ssl_request_continues_with_the_plaintext_and_never_parses_ciphertext() {
    let caps = BASE | caps::SSL;
    let ssl_request = packet(1, &[&caps.to_le_bytes()[..], &[0; 28]].concat());
    let query = packet(0, b"\x03SELECT 1");
    let plaintext = vec![
        (false, greeting_packet(caps)),
        (true, ssl_request.clone()),
        (true, packet(2, &handshake_response(caps, b"shop")[4..])),
        (false, packet(3, &[0, 0, 0, 2, 0, 0, 0])),
        (true, query.clone()),
        (false, packet(1, &[0, 0, 0, 2, 0, 0, 0])),
    ];
    let r = run(&plaintext);
    assert!(!r.failed);
    assert_eq!(lines(&r.exchanges()), ["SELECT shop [SELECT ?] -> ok"]);
    assert!(r.expanded().iter().any(|a| a == "db.namespace=shop"));

    let ciphertext = vec![
        (false, greeting_packet(caps)),
        (true, ssl_request.clone()),
        (
            true,
            b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03".to_vec(),
        ),
        (
            false,
            b"\x16\x03\x03\x00\x7a\x02\x00\x00\x76\x03\x03".to_vec(),
        ),
        (true, query),
    ];
    let r = run(&ciphertext);
    assert!(r.exchanges().is_empty());
    // A second SSL request is not a handshake response.
    let twice = vec![
        (false, greeting_packet(caps)),
        (true, ssl_request.clone()),
        (true, packet(2, &ssl_request[4..])),
    ];
    assert!(run(&twice).failed);
}

#[test]
fn out_of_sequence_reply_gives_up_without_pairing() {
    let mut steps = session(BASE);
    steps.push((true, packet(0, b"\x03SELECT 1")));
    steps.push((false, packet(7, &[0, 0, 0, 2, 0, 0, 0])));
    let r = run(&steps);
    assert!(r.failed && r.exchanges().is_empty());
}

#[test]
fn close_ends_an_open_command_without_a_response() {
    let mut steps = session(BASE);
    steps.push((true, packet(0, b"\x03SELECT SLEEP(10)")));
    let r = run(&steps);
    assert_eq!(
        lines(&r.exchanges()),
        ["SELECT shop [SELECT SLEEP(?)] -> none"]
    );
}

#[test]
fn a_packet_of_the_largest_size_continues_in_the_next() {
    let steps = session(BASE);
    let mut query = b"\x03SELECT '".to_vec();
    query.resize(0xFF_FFFF, b'x');
    let first = packet(0, &query);
    let mut w: Vec<Syscall> = steps
        .iter()
        .map(|(egress, b)| (*egress, b.clone(), b.len() as u64))
        .collect();
    // Captured only in part, as the agent would see it; the reply numbers on from the
    // continuation packet.
    w.push((true, first[..4096].to_vec(), first.len() as u64));
    w.push((true, packet(1, b"x'"), 6));
    w.push((false, packet(2, &[0, 0, 0, 2, 0, 0, 0]), 11));
    let r = replay(detect, &w, false, usize::MAX);
    assert!(!r.failed);
    assert_eq!(lines(&r.exchanges()), ["SELECT shop [SELECT ?...] -> ok"]);
}

#[test]
fn detection_is_strict() {
    fn chunk(payload: &[u8], egress: bool) -> Chunk<'_> {
        Chunk {
            egress,
            role: agent_common::Role::Client,
            payload,
            total: payload.len() as u64,
        }
    }
    let g = greeting_packet(BASE);
    assert!(detect(&chunk(&g, false)).is_some());
    assert!(
        detect(&chunk(&g, true)).is_none(),
        "a client does not send greetings"
    );
    assert!(
        detect(&chunk(&g[..4], false)).is_some(),
        "a header read apart"
    );
    let mut bad = g.clone();
    bad[4] = 9;
    assert!(detect(&chunk(&bad, false)).is_none());
    let mut long = g.clone();
    long[0] += 1;
    assert!(detect(&chunk(&long, false)).is_none());
    assert!(detect(&chunk(b"HTTP/1.1 200 OK\r\n\r\n", false)).is_none());
    assert!(detect(&chunk(b"\x16\x03\x03\x00\x31\x02\x00", false)).is_none());
    assert!(detect(&chunk(b"+OK\r\n", false)).is_none());
    // A command is a connection older than the agent (below); a reply never is.
    assert!(detect(&chunk(&packet(0, b"\x03SELECT 1"), true)).is_some());
    assert!(detect(&chunk(&packet(1, &[0, 0, 0, 2, 0, 0, 0]), false)).is_none());
    // A PostgreSQL startup message is not a greeting.
    assert!(detect(&chunk(b"\x00\x00\x00\x08\x04\xd2\x16\x2f", false)).is_none());
    // A header read apart whose payload is no greeting is given up.
    let r = run(&[(false, g[..4].to_vec()), (false, vec![b'x'; g.len() - 4])]);
    assert!(r.failed);
}

#[test]
fn open_exchanges_are_capped() {
    let mut conn = MyConnection::new();
    let mut out = Vec::new();
    for (egress, b) in session(BASE) {
        let side = if egress {
            Side::Request
        } else {
            Side::Response
        };
        conn.feed(side, &b, b.len() as u64, 1, 1, &mut out);
    }
    for _ in 0..(MAX_OPEN + 5) {
        let p = packet(0, b"\x03SELECT 1");
        conn.feed(Side::Request, &p, p.len() as u64, 2, 1, &mut out);
    }
    assert_eq!(conn.stats.dropped, 5);
    assert!(conn.open <= MAX_OPEN);
}

/// The same line but for what only the handshake tells: the database (until a `USE`), and
/// the statement of an execution prepared before.
fn same_but_the_handshake(found: &str, real: &str) -> bool {
    let outcome = |l: &str| l.rsplit_once(" -> ").map(|(_, o)| o.to_string());
    found == real
        || found == real.replacen(" shop", "", 1)
        || (["EXECUTE ", "RESET ", "CLOSE "]
            .iter()
            .any(|op| found.starts_with(op))
            && !found.contains('[')
            && outcome(found) == outcome(real))
}

/// A connection older than the agent: attached before any syscall of the captured sessions,
/// every command from the first one the agent sees is an exchange at the client's end, paired
/// with its own reply (the same key, operation and outcome as with the handshake seen), never a
/// wrong one.
#[test]
fn a_connection_older_than_the_agent_is_picked_up_at_its_next_command() {
    for (fixture, server) in SESSIONS {
        let whole = syscalls(fixture);
        let truth = replay(detect, &whole, server, usize::MAX).exchanges();
        let mut picked_up = 0;
        for k in 1..whole.len() {
            let Some((_, base)) = recognised_from(detect, &whole, server, k) else {
                continue;
            };
            let r = replay(detect, &whole[k..], server, usize::MAX);
            assert!(!r.failed, "attached at {k}");
            let found = r.exchanges();
            let expected: Vec<_> = truth.iter().filter(|(key, _)| *key >= base).collect();
            assert_eq!(found.len(), expected.len(), "attached at {k}: {found:#?}");
            for ((key, line), (real_key, real)) in found.iter().zip(expected) {
                assert_eq!(key + base, *real_key, "attached at {k}");
                let (line, real) = (folded_one(line), folded_one(real));
                assert!(
                    same_but_the_handshake(&line, &real),
                    "attached at {k}: {line} for {real}"
                );
            }
            assert_no_secrets(&r.seen, SECRETS);
            picked_up += usize::from(!found.is_empty());
        }
        // The server reads a packet's header apart from its body: no read is a whole command,
        // and its end is not picked up mid-stream (nor by the kernel's detection).
        if server {
            assert_eq!(picked_up, 0);
        } else {
            assert!(
                picked_up > 5,
                "attach points that found commands: {picked_up}"
            );
        }
    }
}

/// [`folded`] for one line.
fn folded_one(line: &str) -> String {
    folded(&[(0, line.to_string())])[0].to_string()
}

#[test]
fn a_command_of_another_protocol_or_a_partial_one_is_no_mid_stream_connection() {
    fn chunk(payload: &[u8], total: u64) -> Chunk<'_> {
        Chunk {
            egress: true,
            role: Role::Client,
            payload,
            total,
        }
    }
    let query = packet(0, b"\x03SELECT 1");
    assert!(detect_mid_stream(&chunk(&query, query.len() as u64)).is_some());
    // Cut, a continuation (sequence 1), binary "text", an unknown command, a reply's side.
    assert!(detect_mid_stream(&chunk(&query, query.len() as u64 + 1)).is_none());
    assert!(detect_mid_stream(&chunk(&packet(1, b"\x03SELECT 1"), 14)).is_none());
    assert!(detect_mid_stream(&chunk(&packet(0, b"\x03\x01\x02\x03"), 8)).is_none());
    assert!(detect_mid_stream(&chunk(&packet(0, b"\x09SELECT 1"), 14)).is_none());
    let read = Chunk {
        egress: false,
        role: Role::Client,
        payload: &query,
        total: query.len() as u64,
    };
    assert!(detect_mid_stream(&read).is_none());
    // A PostgreSQL simple query is not one.
    let pg = b"Q\0\0\0\x0dSELECT 1;\0";
    assert!(detect_mid_stream(&chunk(pg, pg.len() as u64)).is_none());
    // An execution with its iteration count, a ping.
    let execute = packet(0, b"\x17\x01\0\0\0\0\x01\0\0\0");
    assert!(detect_mid_stream(&chunk(&execute, execute.len() as u64)).is_some());
    let ping = packet(0, b"\x0e");
    assert!(detect_mid_stream(&chunk(&ping, ping.len() as u64)).is_some());
}

/// Attached mid-stream, whether column definitions end with an EOF packet is learnt from the
/// first result set, either way.
#[test]
fn a_mid_stream_result_set_is_framed_with_or_without_eof_packets() {
    let columns = |out: &mut Vec<u8>, seq: &mut u8| {
        out.extend(packet(*seq, b"\x01"));
        *seq += 1;
        out.extend(packet(
            *seq,
            b"\x03def\x04shop\x05users\x05users\x02id\x02id\x0c\x3f\0\x0b\0\0\0\x03\0\0\0\0\0",
        ));
        *seq += 1;
    };
    for deprecate in [false, true] {
        let mut conn = MyConnection::mid_stream();
        let mut out = Vec::new();
        for round in 0..2u64 {
            let query = packet(0, b"\x03SELECT id FROM users");
            conn.feed(
                Side::Request,
                &query,
                query.len() as u64,
                round * 10,
                1,
                &mut out,
            );
            let mut reply = Vec::new();
            let mut seq = 1u8;
            columns(&mut reply, &mut seq);
            if !deprecate {
                reply.extend(packet(seq, b"\xfe\0\0\x02\0"));
                seq += 1;
            }
            reply.extend(packet(seq, b"\x011"));
            seq += 1;
            if deprecate {
                reply.extend(packet(seq, b"\xfe\0\0\x02\0\0\0"));
            } else {
                reply.extend(packet(seq, b"\xfe\0\0\x02\0"));
            }
            conn.feed(
                Side::Response,
                &reply,
                reply.len() as u64,
                round * 10 + 5,
                1,
                &mut out,
            );
            assert!(!conn.failed(), "deprecate {deprecate}, round {round}");
        }
        let done = described(&out);
        assert_eq!(
            done,
            vec!["SELECT users [SELECT id FROM users] -> ok"; 2],
            "deprecate {deprecate}"
        );
    }
}

/// Picked up mid-stream, a prepare whose definitions end without an EOF packet (deprecated) is
/// ended by the next command, and that command's reply is its own.
#[test]
fn a_mid_stream_prepare_without_eof_packets_ends_at_the_next_command() {
    let def = b"\x03def\x04shop\x05users\x05users\x02id\x02id\x0c\x3f\0\x0b\0\0\0\x03\0\0\0\0\0";
    let mut conn = MyConnection::mid_stream();
    let mut out = Vec::new();
    let prepare = packet(0, b"\x16SELECT id FROM users WHERE id = ?");
    conn.feed(
        Side::Request,
        &prepare,
        prepare.len() as u64,
        1,
        1,
        &mut out,
    );
    let mut reply = packet(1, b"\0\x07\0\0\0\x01\0\x01\0\0\0\0");
    reply.extend(packet(2, def));
    reply.extend(packet(3, def));
    conn.feed(Side::Response, &reply, reply.len() as u64, 2, 1, &mut out);
    let ping = packet(0, b"\x0e");
    conn.feed(Side::Request, &ping, ping.len() as u64, 3, 1, &mut out);
    let ok = packet(1, b"\0\0\0\x02\0\0\0");
    conn.feed(Side::Response, &ok, ok.len() as u64, 4, 1, &mut out);
    assert!(!conn.failed());
    let done = described(&out);
    assert_eq!(
        done,
        vec![
            "PREPARE users [SELECT id FROM users WHERE id = ?] -> ok",
            "PING -> ok"
        ]
    );
}

/// The exchanges among `out`, described.
fn described(out: &[ProtoEvent]) -> Vec<String> {
    use crate::protocol::Summary as _;
    out.iter()
        .filter_map(|e| match e {
            ProtoEvent::Exchange(x) => Some(x.summary.describe()),
            ProtoEvent::Request { .. } => None,
        })
        .collect()
}

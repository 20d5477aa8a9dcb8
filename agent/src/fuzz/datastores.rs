//! Fuzz entry points of the datastore and DNS parsers, driven through one connection script.

use std::collections::HashSet;

use crate::{
    protocol::http1::framer::Stamp,
    protocol::sql::{Dialect, sanitise},
    protocol::{
        ConnectionParser, ProtoEvent, Summary as _, dns::DnsConnection,
        memcached::MemcachedConnection, mysql::MyConnection, postgres::PgConnection,
        redis::RedisConnection,
    },
};

use super::Input;

/// Feeds a connection of a request/response protocol (Redis, memcached, PostgreSQL, MySQL,
/// DNS) a connection script (see [`Input::read`]) and closes it; returns the exchanges it
/// reported.
///
/// Invariants: every exchange was announced by a request event under the same key first; each
/// key is announced and reported once; stamps run forward (request start, request end, reply
/// start, end); nothing is reported once the parser failed.
pub(super) fn drive_connection(conn: &mut dyn ConnectionParser, data: &[u8]) -> u64 {
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

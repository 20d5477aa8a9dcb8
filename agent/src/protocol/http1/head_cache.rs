//! HTTP/1 heads remembered by their bytes.
//!
//! A head's parse is a function of its bytes and its direction alone, and the same bytes are
//! parsed again and again: a connection with both ends on this host is read at both (the bytes
//! the client writes are the bytes the server reads, and the same for the response), and clients
//! repeat their heads across requests and connections (a health check, a load generator, one
//! library's `POST /predict` with the same length). Parsing one costs ~2.5 k instructions
//! (callgrind, `bench-pipeline`); a table of the last heads parsed, indexed by a hash of the
//! bytes they start with and checked byte for byte, hands out a clone of the earlier parse
//! (reference counts) instead. Bytes that start with a whole head parse as that head whatever
//! follows it (the parse stops at its blank line), so the check is that `data` starts with the
//! remembered head's bytes, and no search for the head's end is needed first.
//!
//! One table per thread that parses (the ring-draining thread in the agent; each test its own):
//! 64 sets of 4 heads, a set chosen by a hash of the first 128 bytes, a new head replacing the
//! set's oldest, so the table never grows (at most 256 heads of up to [`MAX_BYTES`] bytes, ~0.5
//! MiB with their buffers' slack). Four ways, because a server's responses often share their
//! first bytes (status line, `Server`, `Date`) and a connection's other end reads its response
//! after the server wrote a few others. The bytes kept are whole heads, credentials included:
//! they stay in the table until replaced and never reach any output (the table has no `Debug`,
//! no log or metric carries them); a head longer than [`MAX_BYTES`] is parsed every time.

use std::{
    cell::RefCell,
    hash::BuildHasher,
    sync::atomic::{AtomicU64, Ordering},
};

use super::head::{Head, RepeatedValues, parse_head_with};
use crate::{memo_worth::MemoWorth, protocol::Side};

/// Sets in each thread's table (a power of two), and heads per set.
const SETS: usize = 64;
const WAYS: usize = 4;
/// Longest head remembered: most request and response heads are 100-800 bytes.
const MAX_BYTES: usize = 1024;
/// Bytes a lookup hashes (at most): enough to tell apart heads that share a long prefix
/// (`POST /api/v1/predictions/…`, a server's status line and `Date`); both ends of a connection
/// see the same bytes.
const KEY_BYTES: usize = 128;
/// Heads judged per judgement of the table's worth.
const WINDOW: u32 = if cfg!(test) { 64 } else { 4096 };
// Remembering costs a copy of the head and of its bytes, ~400 instructions: a host whose heads
// never repeat (every connection's other end elsewhere, every head its own) pays the lookup
// (~100) and a fraction of that ([`MemoWorth`]).

/// Heads answered from a table, every thread's (a self-metric; one uncontended add per hit,
/// against the ~2 k instructions of the parse it saves).
static REMEMBERED: AtomicU64 = AtomicU64::new(0);

#[derive(Default)]
struct Slot {
    /// The hash of the bytes the head was found in (its first [`KEY_BYTES`]).
    hash: u64,
    side: Option<Side>,
    bytes: Vec<u8>,
    head: Option<Head>,
}

struct Table {
    slots: Vec<Slot>,
    /// Per set, the way the next head replaces (the oldest).
    next: Vec<u8>,
    state: foldhash::fast::RandomState,
    hits: u64,
    /// Whether to remember every head.
    worth: MemoWorth,
}

thread_local! {
    static TABLE: RefCell<Table> = RefCell::new(Table {
        slots: std::iter::repeat_with(Slot::default).take(SETS * WAYS).collect(),
        next: vec![0; SETS],
        state: foldhash::fast::RandomState::default(),
        hits: 0,
        worth: MemoWorth::new(WINDOW),
    });
}

/// [`parse_head_with`], answered from the heads this thread parsed before when `data` starts
/// with one of them (same bytes, same direction). A remembered head does not update `repeats`:
/// it already shares its values with the head it was parsed as.
pub fn parse_head_remembered(
    side: Side,
    data: &[u8],
    repeats: &mut RepeatedValues,
) -> Result<Option<(Head, usize)>, ()> {
    TABLE.with_borrow_mut(|table| {
        let key = &data[..data.len().min(KEY_BYTES)];
        let hash = table.state.hash_one((side == Side::Request, key));
        let set = usize::try_from(hash).unwrap_or_default() & (SETS - 1);
        let ways = set * WAYS..(set + 1) * WAYS;
        let found = table.slots[ways.clone()].iter().find_map(|slot| {
            (slot.hash == hash && slot.side == Some(side) && data.starts_with(&slot.bytes))
                .then(|| {
                    slot.head
                        .as_ref()
                        .map(|head| (head.clone(), slot.bytes.len()))
                })
                .flatten()
        });
        if let Some(found) = found {
            table.hits += 1;
            REMEMBERED.fetch_add(1, Ordering::Relaxed);
            table.worth.looked_up(hash, true);
            return Ok(Some(found));
        }
        let parsed = parse_head_with(side, data, repeats);
        // Only whole heads count: a head split over reads is looked up at each.
        if let Ok(Some((head, used))) = &parsed {
            table.worth.looked_up(hash, false);
            if *used <= MAX_BYTES && table.worth.keep(hash) {
                let way = usize::from(table.next[set]);
                table.next[set] = u8::try_from((way + 1) % WAYS).unwrap_or_default();
                let slot = &mut table.slots[ways.start + way];
                slot.hash = hash;
                slot.side = Some(side);
                slot.bytes.clear();
                slot.bytes.extend_from_slice(&data[..*used]);
                slot.head = Some(head.clone());
            }
        }
        parsed
    })
}

/// Heads answered from the tables so far, every thread's.
#[must_use]
pub fn remembered_total() -> u64 {
    REMEMBERED.load(Ordering::Relaxed)
}

/// Heads this thread answered from its table so far.
#[cfg(any(test, feature = "bench"))]
#[must_use]
pub fn hits() -> u64 {
    TABLE.with_borrow(|table| table.hits)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::http1::head::parse_head;

    #[test]
    fn a_head_seen_before_is_the_same_parse_and_other_bytes_are_not_confused() {
        let request =
            b"GET /users/12?x=1 HTTP/1.1\r\nHost: api:8080\r\nUser-Agent: t/1\r\n\r\nbody";
        let mut repeats = RepeatedValues::default();
        let before = hits();
        let first = parse_head_remembered(Side::Request, request, &mut repeats);
        let second = parse_head_remembered(Side::Request, request, &mut repeats);
        assert_eq!(hits(), before + 1);
        assert_eq!(first, second);
        assert_eq!(first, parse_head(Side::Request, request));
        // The same bytes in the other direction are not a request's head.
        assert_eq!(
            parse_head_remembered(Side::Response, request, &mut repeats),
            parse_head(Side::Response, request)
        );
        // One byte apart: parsed, not remembered.
        let other = b"GET /users/13?x=1 HTTP/1.1\r\nHost: api:8080\r\nUser-Agent: t/1\r\n\r\n";
        let (head, used) = parse_head_remembered(Side::Request, other, &mut repeats)
            .expect("valid")
            .expect("complete");
        assert_eq!(head.summary(), "GET /users/13?x=1");
        assert_eq!(used, other.len());
        assert_eq!(hits(), before + 1);
    }

    #[test]
    fn a_table_that_finds_nothing_remembers_less_and_recovers_when_heads_repeat() {
        let mut repeats = RepeatedValues::default();
        let mut n = 0;
        // `count` new heads, each parsed `times` times; the heads found in the table.
        let mut heads = |count: usize, times: usize| {
            let before = hits();
            for _ in 0..count {
                let text = format!("GET /sparse/{n} HTTP/1.1\r\nHost: a\r\n\r\n");
                n += 1;
                for _ in 0..times {
                    parse_head_remembered(Side::Request, text.as_bytes(), &mut repeats)
                        .expect("valid")
                        .expect("complete");
                }
            }
            hits() - before
        };
        // A window of heads seen once: nothing found, the table turns sparse.
        heads(WINDOW as usize, 1);
        // Heads seen twice each: only those it still remembers are found.
        let sparse = heads(16, 2);
        assert!(sparse < 16, "sparse: {sparse}");
        // Half of those it remembers are found: enough to remember every head again.
        heads(
            WINDOW as usize * usize::try_from(crate::memo_worth::SPARSE).expect("small"),
            2,
        );
        assert_eq!(heads(16, 2), 16);
    }

    #[test]
    fn partial_malformed_and_bare_lf_heads_parse_as_without_the_table() {
        let mut repeats = RepeatedValues::default();
        for data in [
            &b"GET / HTTP/1.1\r\nHost: a\r\n"[..],
            b"NOT A HEAD\r\n\r\n",
            b"GET / HTTP/1.1\nHost: a\n\nGET /b HTTP/1.1\r\n\r\n",
        ] {
            for _ in 0..2 {
                assert_eq!(
                    parse_head_remembered(Side::Request, data, &mut repeats),
                    parse_head(Side::Request, data),
                    "{:?}",
                    String::from_utf8_lossy(data)
                );
            }
        }
    }
}

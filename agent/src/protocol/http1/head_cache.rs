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
//! One table per thread that parses (the ring-draining thread in the agent; each test its own),
//! direct-mapped: a new head takes its slot from whatever was there, so the table never grows.
//! The bytes kept are heads the agent already holds while parsing them; they never leave the
//! table, and a head longer than [`MAX_BYTES`] is parsed every time.

use std::{
    cell::RefCell,
    hash::BuildHasher,
    sync::atomic::{AtomicU64, Ordering},
};

use super::head::{Head, RepeatedValues, parse_head_with};
use crate::protocol::Side;

/// Slots in each thread's table (a power of two).
const SLOTS: usize = 256;
/// Longest head remembered: most request and response heads are 100-800 bytes.
const MAX_BYTES: usize = 1024;
/// Bytes a lookup hashes (at most): enough to tell apart heads that share a long prefix
/// (`POST /api/v1/predictions/…`); both ends of a connection see the same bytes.
const KEY_BYTES: usize = 64;
/// Lookups per judgement of the table's worth.
const WINDOW: u32 = 4096;
/// Below one hit in this many lookups, only one head in this many is remembered (chosen by its
/// hash, so both ends of a connection on this host choose the same heads). Remembering costs a
/// copy of the head and of its bytes, ~400 instructions; a host whose heads never repeat
/// (every connection's other end elsewhere, every head its own) pays the lookup (~100) and an
/// eighth of that.
const SPARSE: u32 = 8;

/// Heads answered from a table, every thread's, added at the end of each window (a self-metric
/// read on another thread; an atomic add per head would cost more than the window's count).
static REMEMBERED: AtomicU64 = AtomicU64::new(0);

#[derive(Default)]
struct Slot {
    side: Option<Side>,
    bytes: Vec<u8>,
    head: Option<Head>,
}

struct Table {
    slots: Vec<Slot>,
    state: foldhash::fast::RandomState,
    hits: u64,
    /// This window's lookups and hits.
    looked: u32,
    found: u32,
    /// Whether the last window had too few hits to remember every head.
    sparse: bool,
}

thread_local! {
    static TABLE: RefCell<Table> = RefCell::new(Table {
        slots: std::iter::repeat_with(Slot::default).take(SLOTS).collect(),
        state: foldhash::fast::RandomState::default(),
        hits: 0,
        looked: 0,
        found: 0,
        sparse: false,
    });
}

impl Table {
    /// Counts a lookup; at each window's end, judges whether to remember every head.
    fn judge(&mut self, hit: bool) {
        self.looked += 1;
        self.found += u32::from(hit);
        if self.looked == WINDOW {
            REMEMBERED.fetch_add(u64::from(self.found), Ordering::Relaxed);
            self.sparse = self.found * SPARSE < self.looked;
            self.looked = 0;
            self.found = 0;
        }
    }
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
        let index = usize::try_from(hash).unwrap_or_default() & (SLOTS - 1);
        let slot = &table.slots[index];
        if slot.side == Some(side)
            && data.starts_with(&slot.bytes)
            && let Some(head) = &slot.head
        {
            let found = (head.clone(), slot.bytes.len());
            table.hits += 1;
            table.judge(true);
            return Ok(Some(found));
        }
        table.judge(false);
        let parsed = parse_head_with(side, data, repeats);
        let remember = !table.sparse || (hash >> 32) % u64::from(SPARSE) == 0;
        if remember
            && let Ok(Some((head, used))) = &parsed
            && *used <= MAX_BYTES
        {
            let slot = &mut table.slots[index];
            slot.side = Some(side);
            slot.bytes.clear();
            slot.bytes.extend_from_slice(&data[..*used]);
            slot.head = Some(head.clone());
        }
        parsed
    })
}

/// Heads answered from the tables, as of each thread's last full window of lookups.
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

//! The index by start time: one entry per frame, keyed by the latest start of its spans, holding
//! a summary of each span (start, duration, trace id, service, operation) so that searches
//! filter without decompressing frames.
//!
//! Why per frame and not per span: redb rebuilds a B-tree leaf on every insert, so an entry per
//! span cost ~14 % of the agent's CPU under wrk (`perf`), the largest single cost of storing.
//! A frame's spans started in some range, not at one instant, so a search merges (see
//! [`crate::store::Store::scan`]): frames are read newest key first, and a span is handed out
//! once no frame still to read can hold a newer one.
//!
//! Layout of an entry: `FORMAT` (u8), earliest start in the block (u64 LE), then per span: start
//! (u64 LE), duration (u64 LE), trace id (16 bytes), service length (u16 LE), service,
//! operation length (u16 LE), operation.

use crate::trace::SpanData;

use super::SpanSummary;

const FORMAT: u8 = 1;
const HEADER: usize = 1 + 8;
/// Longest service or operation name kept in a summary (a longer one is cut at a char boundary;
/// the span itself keeps it whole).
const MAX_NAME_BYTES: usize = 1024;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum StartIndexError {
    #[error("start-index entry of {0} bytes is shorter than its header")]
    Short(usize),
    #[error("start-index entry format {0} is not one this sockspan reads")]
    Format(u8),
    #[error("start-index summary at byte {0} runs past the entry's end")]
    Summary(usize),
    #[error("start-index summary at byte {0} has a name that is not UTF-8")]
    Utf8(usize),
}

/// One frame's entry, ended.
#[derive(Debug, Default)]
pub struct StartEntry {
    /// The entry's key: the latest start among its spans.
    pub key_start: u64,
    pub earliest: u64,
    pub spans: u32,
    pub bytes: Vec<u8>,
}

/// Builds one frame's entry in a buffer reused from frame to frame.
#[derive(Default)]
pub struct StartBlock {
    bytes: Vec<u8>,
    earliest: u64,
    latest: u64,
    spans: u32,
}

impl StartBlock {
    pub fn push(&mut self, span: &SpanData, service: &str) {
        if self.bytes.is_empty() {
            self.bytes.push(FORMAT);
            self.bytes.extend_from_slice(&[0; 8]);
            self.earliest = u64::MAX;
            self.latest = 0;
            self.spans = 0;
        }
        self.spans += 1;
        let start = span.start_unix_nano;
        self.earliest = self.earliest.min(start);
        self.latest = self.latest.max(start);
        self.bytes.extend_from_slice(&start.to_le_bytes());
        let duration = span.end_unix_nano.saturating_sub(start);
        self.bytes.extend_from_slice(&duration.to_le_bytes());
        self.bytes.extend_from_slice(&span.trace_id);
        push_name(&mut self.bytes, service);
        push_name(&mut self.bytes, &span.name);
    }

    /// Ends the entry: its key's start (the latest in it) and its bytes, valid until the next
    /// push or reset. `None` when nothing was pushed.
    pub fn finish(&mut self) -> Option<(u64, &[u8])> {
        if self.bytes.is_empty() {
            return None;
        }
        self.bytes[1..HEADER].copy_from_slice(&self.earliest.to_le_bytes());
        Some((self.latest, &self.bytes))
    }

    /// Ends the entry as [`Self::finish`] does, handing its bytes out; `spare` (an earlier
    /// entry's buffer, kept for its room) holds the next entry's.
    pub fn take(&mut self, mut spare: Vec<u8>) -> Option<StartEntry> {
        let (key_start, _) = self.finish()?;
        spare.clear();
        Some(StartEntry {
            key_start,
            earliest: self.earliest,
            spans: self.spans,
            bytes: std::mem::replace(&mut self.bytes, spare),
        })
    }

    /// The earliest start and the number of spans pushed since the last reset.
    #[cfg(test)]
    pub fn counts(&self) -> (u64, u32) {
        (self.earliest, self.spans)
    }

    #[cfg(test)]
    pub fn reset(&mut self) {
        self.bytes.clear();
    }
}

fn push_name(out: &mut Vec<u8>, name: &str) {
    let mut end = name.len().min(MAX_NAME_BYTES);
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    out.extend_from_slice(&(end as u16).to_le_bytes());
    out.extend_from_slice(&name.as_bytes()[..end]);
}

/// The earliest start of an entry's spans, from its header alone.
pub fn earliest_start(entry: &[u8]) -> Result<u64, StartIndexError> {
    let header = entry
        .get(..HEADER)
        .ok_or(StartIndexError::Short(entry.len()))?;
    if header[0] != FORMAT {
        return Err(StartIndexError::Format(header[0]));
    }
    let mut earliest = [0u8; 8];
    earliest.copy_from_slice(&header[1..]);
    Ok(u64::from_le_bytes(earliest))
}

/// Calls `f` with each summary of an entry whose start lies in `[from, to]`.
pub fn for_each_in(
    entry: &[u8],
    from: u64,
    to: u64,
    mut f: impl FnMut(SpanSummary),
) -> Result<(), StartIndexError> {
    earliest_start(entry)?;
    for raw in raw_summaries(entry) {
        let raw = raw?;
        if (from..=to).contains(&raw.start_ns) {
            let text =
                |bytes| std::str::from_utf8(bytes).map_err(|_| StartIndexError::Utf8(raw.at));
            f(SpanSummary {
                trace_id: raw.trace_id,
                service: text(raw.service)?.to_string(),
                name: text(raw.name)?.to_string(),
                start_ns: raw.start_ns,
                duration_ns: raw.duration_ns,
            });
        }
    }
    Ok(())
}

/// How many whole summaries an entry holds (those before any damage).
pub fn count(entry: &[u8]) -> u64 {
    if earliest_start(entry).is_err() {
        return 0;
    }
    raw_summaries(entry).take_while(Result::is_ok).count() as u64
}

/// A summary as stored, its names not yet checked as UTF-8.
struct RawSummary<'a> {
    /// Where it starts in the entry.
    at: usize,
    start_ns: u64,
    duration_ns: u64,
    trace_id: [u8; 16],
    service: &'a [u8],
    name: &'a [u8],
}

/// The summaries after the header, in order; ends after the first one that runs past the entry.
fn raw_summaries(entry: &[u8]) -> impl Iterator<Item = Result<RawSummary<'_>, StartIndexError>> {
    let mut at = HEADER;
    std::iter::from_fn(move || {
        if at >= entry.len() {
            return None;
        }
        let this = at;
        let parsed = entry.get(this..this + 32).and_then(|fixed| {
            let (service, next) = name_at(entry, this + 32)?;
            let (name, next) = name_at(entry, next)?;
            Some((fixed, service, name, next))
        });
        let Some((fixed, service, name, next)) = parsed else {
            at = entry.len();
            return Some(Err(StartIndexError::Summary(this)));
        };
        at = next;
        let mut trace_id = [0u8; 16];
        trace_id.copy_from_slice(&fixed[16..32]);
        Some(Ok(RawSummary {
            at: this,
            start_ns: u64::from_le_bytes(fixed[..8].try_into().unwrap_or_default()),
            duration_ns: u64::from_le_bytes(fixed[8..16].try_into().unwrap_or_default()),
            trace_id,
            service,
            name,
        }))
    })
}

/// The length-prefixed name at `at` and the offset after it.
fn name_at(entry: &[u8], at: usize) -> Option<(&[u8], usize)> {
    let len = usize::from(u16::from_le_bytes(entry.get(at..at + 2)?.try_into().ok()?));
    let name = entry.get(at + 2..at + 2 + len)?;
    Some((name, at + 2 + len))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::tests::span;

    fn all(entry: &[u8]) -> Result<Vec<SpanSummary>, StartIndexError> {
        let mut out = Vec::new();
        for_each_in(entry, 0, u64::MAX, |s| out.push(s))?;
        Ok(out)
    }

    #[test]
    fn summaries_round_trip_with_the_block_range() {
        let mut block = StartBlock::default();
        assert!(block.finish().is_none(), "an empty block has no entry");
        block.push(&span(1, 1, "front", 500), "front");
        block.push(&span(2, 1, "back", 300), "back");
        block.push(&span(3, 1, "front", 900), "front");
        assert_eq!(block.counts(), (300, 3));
        let (latest, entry) = block.finish().expect("entry");
        assert_eq!(latest, 900);
        let entry = entry.to_vec();
        assert_eq!(earliest_start(&entry), Ok(300));
        assert_eq!(count(&entry), 3);
        let summaries = all(&entry).expect("decode");
        assert_eq!(summaries.len(), 3);
        assert_eq!(summaries[1].trace_id, [2; 16]);
        assert_eq!(summaries[1].service, "back");
        assert_eq!(summaries[1].name, "GET /x");
        assert_eq!(summaries[1].start_ns, 300);
        assert_eq!(summaries[1].duration_ns, 1_000);
        let mut in_range = Vec::new();
        for_each_in(&entry, 400, 600, |s| in_range.push(s.start_ns)).expect("range");
        assert_eq!(in_range, [500]);

        block.reset();
        block.push(&span(4, 1, "x", 7), "x");
        assert_eq!(block.counts(), (7, 1), "reset starts afresh");
        let (latest, entry) = block.finish().expect("next entry");
        assert_eq!((latest, earliest_start(entry)), (7, Ok(7)));
    }

    #[test]
    fn long_names_are_cut_at_a_char_boundary() {
        let mut block = StartBlock::default();
        let service = "é".repeat(MAX_NAME_BYTES);
        block.push(&span(1, 1, &service, 1), &service);
        let (_, entry) = block.finish().expect("entry");
        let summaries = all(entry).expect("decode");
        assert_eq!(summaries[0].service.len(), MAX_NAME_BYTES);
        assert!(service.starts_with(&summaries[0].service));
    }

    #[test]
    fn damaged_entries_are_errors_never_panics() {
        let mut block = StartBlock::default();
        block.push(&span(1, 1, "front", 5), "front");
        block.push(&span(2, 1, "back", 6), "back");
        let (_, entry) = block.finish().expect("entry");
        let entry = entry.to_vec();
        assert_eq!(count(&entry), 2);
        for cut in 0..entry.len() {
            // Cut at a summary boundary the rest reads fine; anywhere else it is an error.
            let _ = all(&entry[..cut]);
            assert!(
                count(&entry[..cut]) < 2,
                "a cut entry counts only whole summaries"
            );
            if cut < HEADER {
                assert_eq!(
                    earliest_start(&entry[..cut]),
                    Err(StartIndexError::Short(cut))
                );
            }
        }
        for at in 0..entry.len() {
            for flip in [0x01u8, 0x80, 0xff] {
                let mut bad = entry.clone();
                bad[at] ^= flip;
                let _ = all(&bad);
                let _ = count(&bad);
            }
        }
        let mut wrong_format = entry.clone();
        wrong_format[0] = 9;
        assert_eq!(all(&wrong_format).err(), Some(StartIndexError::Format(9)));
        assert_eq!(
            all(&entry[..HEADER + 10]).err(),
            Some(StartIndexError::Summary(HEADER))
        );
    }
}

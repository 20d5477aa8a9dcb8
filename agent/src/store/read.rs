//! Reading: the service and operation listings, a trace by id, every span, and scans by time
//! newest first (what the query API and `sockspan dump` use).

use std::collections::{BTreeSet, BinaryHeap};

use redb::{ReadableDatabase as _, ReadableTable as _};

use super::{
    BY_START, COUNTS, FRAMES, OPERATIONS, Read, SERVICES, SPREAD, SpanSummary, Store, StoreError,
    TRACE_RUNS, db_err, frame_at, read, read_frame, read_stored, records, start_index, trace_index,
};

/// A summary ordered by start, for the merge in [`Store::scan`] (ties in any order).
struct Newest(SpanSummary);

impl PartialEq for Newest {
    fn eq(&self, other: &Self) -> bool {
        self.0.start_ns == other.0.start_ns
    }
}

impl Eq for Newest {}

impl PartialOrd for Newest {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Newest {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.start_ns.cmp(&other.0.start_ns)
    }
}

impl Store {
    /// Every service with stored spans, sorted.
    pub fn services(&self) -> Result<Vec<String>, StoreError> {
        let txn = self.db.begin_read().map_err(db_err)?;
        let table = txn.open_table(SERVICES).map_err(db_err)?;
        let mut out = Vec::new();
        for entry in table.iter().map_err(db_err)? {
            out.push(entry.map_err(db_err)?.0.value().to_string());
        }
        Ok(out)
    }

    /// Operations of `service` with their span kind (`SERVER`, `CLIENT`), sorted.
    pub fn operations(&self, service: &str) -> Result<Vec<(String, String)>, StoreError> {
        let txn = self.db.begin_read().map_err(db_err)?;
        let table = txn.open_table(OPERATIONS).map_err(db_err)?;
        let mut out = Vec::new();
        for entry in table.range((service, "")..).map_err(db_err)? {
            let (key, kind) = entry.map_err(db_err)?;
            let (svc, op) = key.value();
            if svc != service {
                break;
            }
            out.push((op.to_string(), kind.value().to_string()));
        }
        Ok(out)
    }

    /// The spans of one trace, as stored (jsonl objects).
    pub fn trace(&self, trace_id: &[u8; 16]) -> Result<Vec<serde_json::Value>, StoreError> {
        // The open run first, then the filters, then the snapshot: a run sealed in between is
        // then in the filters and the snapshot, and the pairs read from memory are still right.
        let mut frames: BTreeSet<u64> = read(&self.open_run).frames_of(trace_id).collect();
        let candidates: Vec<u64> = read(&self.blooms)
            .iter()
            .filter(|(_, bloom)| bloom.as_ref().is_none_or(|b| b.may_contain(trace_id)))
            .map(|(&run, _)| run)
            .collect();
        let txn = self.db.begin_read().map_err(db_err)?;
        let index = txn.open_table(TRACE_RUNS).map_err(db_err)?;
        for run in candidates {
            let (low, high) = trace_index::blocks_up_to(run, trace_id);
            if let Some(entry) = index
                .range(&low[..]..=&high[..])
                .map_err(db_err)?
                .next_back()
            {
                let (_, block) = entry.map_err(db_err)?;
                frames.extend(trace_index::frames_in_block(block.value(), trace_id));
            }
        }
        let table = txn.open_table(FRAMES).map_err(db_err)?;
        let (mut raw, mut bytes) = (Vec::new(), Vec::new());
        let mut out = Vec::new();
        for frame in frames {
            // Retention may have taken a frame the index still names.
            let Some(at) = table.get(frame).map_err(db_err)? else {
                continue;
            };
            if read_stored(&self.log, frame, at.value(), &mut bytes) != Read::Bytes {
                continue;
            }
            out.extend(
                records(frame, &bytes, &mut raw)
                    .unwrap_or_default()
                    .iter()
                    .filter(|r| r.trace_id == *trace_id)
                    .filter_map(|r| serde_json::from_slice(&r.json().ok()?).ok()),
            );
        }
        Ok(out)
    }

    /// Every stored span as JSON, in the order they were stored, until `f` returns false;
    /// returns how many frames and spans did not decode (reported and skipped).
    pub fn for_each_span(&self, mut f: impl FnMut(&[u8]) -> bool) -> Result<u64, StoreError> {
        let txn = self.db.begin_read().map_err(db_err)?;
        let frames = txn.open_table(FRAMES).map_err(db_err)?;
        let (mut raw, mut bytes) = (Vec::new(), Vec::new());
        let mut damaged = 0;
        for entry in frames.iter().map_err(db_err)? {
            let (frame, at) = entry.map_err(db_err)?;
            let frame = frame.value();
            let read = read_stored(&self.log, frame, at.value(), &mut bytes);
            if read == Read::Gone {
                continue;
            }
            let Some(records) = (read == Read::Bytes)
                .then(|| records(frame, &bytes, &mut raw))
                .flatten()
            else {
                damaged += 1;
                continue;
            };
            for record in records {
                let json = match record.json() {
                    Ok(json) => json,
                    Err(err) => {
                        tracing::warn!(frame, "span store: {err}");
                        damaged += 1;
                        continue;
                    }
                };
                if !f(&json) {
                    return Ok(damaged);
                }
            }
        }
        Ok(damaged)
    }

    /// Span summaries started in `[start_ns, end_ns]`, newest first, calling `keep` on each
    /// until it returns false.
    ///
    /// Entries are per frame, keyed by the latest start in the frame: they are read from the
    /// newest key down, and a summary is handed out once every entry still unread has a key
    /// below its start (none of them can hold a newer span). Entries keyed after `end_ns` may
    /// hold spans in the range only up to the widest spread any frame had.
    pub fn scan(
        &self,
        start_ns: u64,
        end_ns: u64,
        mut keep: impl FnMut(SpanSummary) -> bool,
    ) -> Result<(), StoreError> {
        let txn = self.db.begin_read().map_err(db_err)?;
        let by_start = txn.open_table(BY_START).map_err(db_err)?;
        let spread = txn
            .open_table(COUNTS)
            .map_err(db_err)?
            .get(SPREAD)
            .map_err(db_err)?
            .map_or(0, |v| v.value());
        let mut pending = BinaryHeap::new();
        let mut block = Vec::new();
        for entry in by_start
            .range((start_ns, 0)..=(end_ns.saturating_add(spread), u64::MAX))
            .map_err(db_err)?
            .rev()
        {
            let (key, value) = entry.map_err(db_err)?;
            let (latest, frame) = key.value();
            while pending
                .peek()
                .is_some_and(|p: &Newest| p.0.start_ns > latest)
            {
                if let Some(Newest(summary)) = pending.pop()
                    && !keep(summary)
                {
                    return Ok(());
                }
            }
            let Some(at) = frame_at(frame, value.value()) else {
                continue;
            };
            // A block that starts after the range has nothing in it.
            if at.start_ns > end_ns || read_frame(&self.log, frame, &at, &mut block) != Read::Bytes
            {
                continue;
            }
            if let Err(err) =
                start_index::for_each_in(&block, start_ns, end_ns, |s| pending.push(Newest(s)))
            {
                tracing::warn!(frame, "span store: {err}");
            }
        }
        while let Some(Newest(summary)) = pending.pop() {
            if !keep(summary) {
                break;
            }
        }
        Ok(())
    }

    /// Distinct trace ids with a span started in `[start_ns, end_ns]` that `matches`, newest
    /// first, at most `limit`.
    pub fn trace_ids(
        &self,
        start_ns: u64,
        end_ns: u64,
        limit: usize,
        matches: impl Fn(&SpanSummary) -> bool,
    ) -> Result<Vec<[u8; 16]>, StoreError> {
        let mut ids = Vec::new();
        let mut seen = std::collections::HashSet::new();
        self.scan(start_ns, end_ns, |s| {
            if matches(&s) && seen.insert(s.trace_id) {
                ids.push(s.trace_id);
            }
            ids.len() < limit
        })?;
        Ok(ids)
    }
}

//! Retention: spans older than the configured age, then the oldest beyond the configured count,
//! a frame at a time.

use redb::{Durability, ReadableDatabase as _, ReadableTable as _, ReadableTableMetadata as _};

use super::{
    BY_START, COUNTS, FRAMES, RETENTION_FRAMES, RUNS, SPANS, Store, StoreError, TRACE_RUNS, db_err,
    first_readable, frame_at, frame_log::LogAt, lock, trace_index, write,
};

impl Store {
    /// Deletes spans older than the retention, then the oldest beyond `max_spans`, a frame at a
    /// time (at most [`RETENTION_FRAMES`] per call); returns how many spans went.
    pub fn enforce_retention(&self, now_unix_ns: u64) -> Result<u64, StoreError> {
        let horizon = now_unix_ns.saturating_sub(self.config.retention.as_nanos() as u64);
        let mut writer = lock(&self.writer);
        let mut txn = self.db.begin_write().map_err(db_err)?;
        let mut removed = 0u64;
        let last_removed;
        {
            let mut frames = txn.open_table(FRAMES).map_err(db_err)?;
            let mut by_start = txn.open_table(BY_START).map_err(db_err)?;
            let mut counts = txn.open_table(COUNTS).map_err(db_err)?;
            let stored = counts.get(SPANS).map_err(db_err)?.map_or(0, |v| v.value());
            let excess = stored.saturating_sub(self.config.max_spans);
            let mut last_doomed = None;
            let mut latest_start = 0u64;
            for entry in frames.iter().map_err(db_err)?.take(RETENTION_FRAMES) {
                let (frame, at) = entry.map_err(db_err)?;
                // A frame whose location cannot be read is dropped with the old ones; its
                // start-index entry could then be keyed anywhere.
                let at = frame_at(frame.value(), at.value());
                if at.is_none() {
                    latest_start = u64::MAX;
                }
                let (spans, latest) = at.map_or((0, 0), |at| (u64::from(at.spans), at.start_ns));
                if latest >= horizon && removed >= excess {
                    break;
                }
                removed += spans;
                latest_start = latest_start.max(latest);
                last_doomed = Some(frame.value());
            }
            let Some(last) = last_doomed else {
                return Ok(0);
            };
            last_removed = last;
            frames.retain_in(..=last, |_, _| false).map_err(db_err)?;
            // The totals go down by what the index held of the frames removed, so they stay the
            // index's count even where a frame's header was damaged.
            let mut indexed = 0u64;
            by_start
                .retain_in(..=(latest_start, u64::MAX), |(_, frame), at| {
                    let doomed = frame <= last;
                    if doomed {
                        indexed += LogAt::from_bytes(at).map_or(0, |at| u64::from(at.spans));
                    }
                    !doomed
                })
                .map_err(db_err)?;
            counts
                .insert(SPANS, stored.saturating_sub(indexed))
                .map_err(db_err)?;
            let mut runs = txn.open_table(RUNS).map_err(db_err)?;
            let mut index = txn.open_table(TRACE_RUNS).map_err(db_err)?;
            let mut gone = Vec::new();
            for entry in runs.range(..=last).map_err(db_err)? {
                gone.push(entry.map_err(db_err)?.0.value());
            }
            for run in gone {
                let (low, high) = trace_index::whole_run(run);
                index
                    .retain_in(&low[..]..=&high[..], |_, _| false)
                    .map_err(db_err)?;
                runs.remove(run).map_err(db_err)?;
            }
        }
        if writer.appender.sync_failed() {
            // Nothing may claim durability any more, but the disk (full, most likely) still
            // needs the space back.
            txn.set_durability(Durability::None).map_err(db_err)?;
        } else {
            // A durable commit: it makes the writes before it durable too, so their frames
            // first.
            writer.appender.sync(&self.log)?;
        }
        txn.commit().map_err(db_err)?;
        write(&self.blooms).retain(|&run, _| run > last_removed);
        if let Err(err) = self.remove_dead_segments(writer.appender.segment()) {
            // The spans are gone all the same; the next pass deletes the segments.
            tracing::warn!("span store: retention could not delete a segment: {err}");
        }
        Ok(removed)
    }

    /// Deletes the log's segments that only hold frames retention removed: those before the
    /// first stored frame's, or all but `current` (the one written to) when none is left.
    fn remove_dead_segments(&self, current: u64) -> Result<(), StoreError> {
        let txn = self.db.begin_read().map_err(db_err)?;
        let frames = txn.open_table(FRAMES).map_err(db_err)?;
        let keep_from = match first_readable(&frames, false, Some(&self.log))? {
            Some(at) => at.segment,
            // None left: all but the segment written to now.
            None if frames.is_empty().map_err(db_err)? => current,
            // Only damaged locations: which segments they need is unknown.
            None => return Ok(()),
        };
        self.log.remove_before(keep_from)?;
        Ok(())
    }
}

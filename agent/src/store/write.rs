//! Writing: prepared frames ([`super::prepare`]) compressed into the frame log, the frame and
//! start-time tables, the trace-id run, the service and operation tables, in one transaction
//! per batch.

use redb::{Durability, ReadableTable as _};

use super::{
    BY_START, COUNTS, FRAMES, OPERATIONS, RUNS, SERVICES, SPANS, SPREAD, Store, StoreError,
    TRACE_RUNS,
    bloom::Bloom,
    db_err,
    frame::FrameCompressor,
    frame_log::Appender,
    frame_log::{FrameLog, Part},
    lock,
    prepare::{Batch, PreparedFrame},
    write,
};
use crate::trace::SpanData;

/// The writer's state: the next frame's number, and buffers reused from commit to commit.
#[derive(Default)]
pub(super) struct Writer {
    pub(super) next_frame: u64,
    pub(super) appender: Appender,
    compressor: FrameCompressor,
    pairs: Vec<([u8; 16], u64)>,
}

/// Where a frame goes: the log, and the tables naming it.
struct FrameOut<'a, 't> {
    log: &'a FrameLog,
    frames: redb::Table<'t, u64, &'static [u8]>,
    by_start: redb::Table<'t, (u64, u64), &'static [u8]>,
}

/// Queues `prepared` for the log (compressed), and writes its location and start-index entry as
/// `frame`; returns the entry's spread.
fn put_frame(
    writer: &mut Writer,
    out: &mut FrameOut,
    prepared: &PreparedFrame,
    frame: u64,
) -> Result<u64, StoreError> {
    let FrameOut {
        log,
        frames,
        by_start,
    } = out;
    let start = &prepared.start;
    let block = Part {
        bytes: &start.bytes,
        spans: start.spans,
        start_ns: start.earliest,
    };
    let frame_part = Part {
        bytes: writer.compressor.compress(&prepared.raw),
        spans: u32::from(prepared.raw.spans),
        start_ns: prepared.raw.latest_start_ns,
    };
    let (block_at, frame_at) = writer.appender.append(log, block, frame_part)?;
    frames
        .insert(frame, &frame_at.to_bytes()[..])
        .map_err(db_err)?;
    by_start
        .insert((start.key_start, frame), &block_at.to_bytes()[..])
        .map_err(db_err)?;
    Ok(start.key_start - start.earliest)
}

impl Store {
    /// Stores `spans`, made ready by the store's own preparer. `durable` commits to disk now;
    /// otherwise the commit becomes durable with the next durable one.
    pub fn write(&self, spans: &[SpanData], durable: bool) -> Result<(), StoreError> {
        let batch = {
            let mut preparer = lock(&self.preparer);
            // Whatever a panic left half made goes first.
            drop(preparer.take());
            for span in spans {
                preparer.push(span);
            }
            preparer.take()
        };
        self.write_prepared(&batch, durable)
    }

    /// Stores a batch (from a [`super::prepare::Preparer`] of this store). `durable` commits to
    /// disk now; otherwise the commit becomes durable with the next durable one (the exporter
    /// makes one every few seconds and at shutdown).
    pub fn write_prepared(&self, batch: &Batch, durable: bool) -> Result<(), StoreError> {
        let mut guard = lock(&self.writer);
        let writer = &mut *guard;
        // Whatever a write left half done (an error, or a panic while it held the lock) goes
        // first.
        if !writer.pairs.is_empty() {
            // A panic in a write: its pairs may be in the open run, under frame numbers the
            // next write gives its own frames (as after an error, below).
            write(&self.open_run).forget_from(writer.next_frame);
            writer.pairs.clear();
        }
        writer.appender.discard();
        let result = self.write_locked(writer, batch, durable);
        writer.pairs.clear();
        if result.is_err() {
            // Frames queued and not written: never named by a commit.
            writer.appender.discard();
            // Taken as not committed (redb says a failed commit may still have become durable:
            // the next write then names its frames' numbers again, with its own frames): the
            // preparers' notes may name what was not written, and the open run holds pairs for
            // frames that do not exist (their numbers are used again by the next write).
            self.names_lost.note();
            // This write's frames are numbered from `next_frame` on, and every other pair the
            // open run holds is of an earlier frame.
            write(&self.open_run).forget_from(writer.next_frame);
        }
        result
    }

    fn write_locked(
        &self,
        writer: &mut Writer,
        batch: &Batch,
        durable: bool,
    ) -> Result<(), StoreError> {
        let mut txn = self.db.begin_write().map_err(db_err)?;
        txn.set_durability(if durable {
            Durability::Immediate
        } else {
            Durability::None
        })
        .map_err(db_err)?;
        let mut frame = writer.next_frame;
        let mut sealed = None;
        {
            let mut out = FrameOut {
                log: &self.log,
                frames: txn.open_table(FRAMES).map_err(db_err)?,
                by_start: txn.open_table(BY_START).map_err(db_err)?,
            };
            let mut services = txn.open_table(SERVICES).map_err(db_err)?;
            let mut operations = txn.open_table(OPERATIONS).map_err(db_err)?;
            let mut counts = txn.open_table(COUNTS).map_err(db_err)?;
            let stored = counts.get(SPANS).map_err(db_err)?.map_or(0, |v| v.value());
            counts.insert(SPANS, stored + batch.spans).map_err(db_err)?;
            let stored_spread = counts.get(SPREAD).map_err(db_err)?.map_or(0, |v| v.value());
            let mut spread = stored_spread;
            for (service, end_ns) in &batch.services {
                services.insert(service.as_str(), end_ns).map_err(db_err)?;
            }
            for (service, name, kind) in &batch.operations {
                operations
                    .insert((service.as_str(), name.as_str()), kind)
                    .map_err(db_err)?;
            }
            for prepared in &batch.frames {
                for &trace_id in &prepared.trace_ids {
                    writer.pairs.push((trace_id, frame));
                }
                spread = spread.max(put_frame(writer, &mut out, prepared, frame)?);
                frame += 1;
            }
            if spread > stored_spread {
                counts.insert(SPREAD, spread).map_err(db_err)?;
            }
            // Into the open run before the commit, so a reader never misses a committed span
            // (the caller takes them back on failure, by their frames).
            let mut open_run = write(&self.open_run);
            for &(trace_id, f) in &writer.pairs {
                open_run.insert(trace_id, f);
            }
            // Sealed only by a write that added frames: the run is named by its last frame,
            // which must not be a run's name already.
            if open_run.len() >= self.run_pairs && frame > writer.next_frame {
                let run = frame - 1;
                let mut index = txn.open_table(TRACE_RUNS).map_err(db_err)?;
                // Sorted by the blocks' writing, so the filter names each trace once.
                open_run.for_each_block(run, |key, block| {
                    index.insert(&key[..], block).map(drop).map_err(db_err)
                })?;
                let mut bloom = Bloom::with_capacity(open_run.len());
                for trace_id in open_run.trace_ids() {
                    bloom.insert(trace_id);
                }
                let mut runs = txn.open_table(RUNS).map_err(db_err)?;
                runs.insert(run, bloom.to_bytes().as_slice())
                    .map_err(db_err)?;
                sealed = Some((run, bloom));
            }
        }
        // The frames reach their segment before the commit that names them; a durable commit
        // makes them durable first.
        if durable {
            writer.appender.sync(&self.log)?;
        } else {
            writer.appender.write_out(&self.log)?;
        }
        txn.commit().map_err(db_err)?;
        writer.next_frame = frame;
        if let Some((run, bloom)) = sealed {
            // The filter before the open run is cleared: a reader that finds the pairs gone
            // then finds the run.
            write(&self.blooms).insert(run, Some(bloom));
            write(&self.open_run).clear();
        }
        Ok(())
    }
}

//! Writing: spans into frames, the frame and start-time tables, the trace-id run, the
//! service and operation tables, in one transaction per batch.

use std::collections::{HashMap, HashSet};

use foldhash::fast::RandomState as Fast;
use redb::{Durability, ReadableTable as _};

use super::{
    BY_START, COUNTS, FRAMES, OPERATIONS, RUNS, SERVICE_REFRESH_NS, SERVICES, SPANS, SPREAD, Store,
    StoreError, TRACE_RUNS,
    bloom::Bloom,
    db_err,
    frame::FrameBuilder,
    frame_log::Appender,
    frame_log::{FrameLog, Part},
    lock,
    start_index::StartBlock,
    write,
};
use crate::trace::SpanData;

/// The writer's state: the next frame's number, buffers reused from commit to commit, and what
/// the service and operation tables already hold (so a span writes them only when it adds
/// something).
#[derive(Default)]
pub(super) struct Writer {
    pub(super) next_frame: u64,
    pub(super) appender: Appender,
    frame: FrameBuilder,
    starts: StartBlock,
    pairs: Vec<([u8; 16], u64)>,
    // Asked once per span: foldhash, not the default SipHash (these keys are the agent's own
    // service names and span names, not a peer's choice of keys).
    services: HashMap<String, u64, Fast>,
    operations: HashMap<String, HashSet<String, Fast>, Fast>,
}

impl Writer {
    /// Whether `service`'s last-seen time should be written for a span ending at `end_ns`;
    /// notes it if so.
    fn service_due(&mut self, service: &str, end_ns: u64) -> bool {
        match self.services.get_mut(service) {
            Some(last) if end_ns < last.saturating_add(SERVICE_REFRESH_NS) => false,
            Some(last) => {
                *last = end_ns;
                true
            }
            None => {
                self.services.insert(service.to_string(), end_ns);
                true
            }
        }
    }

    /// Whether (`service`, `name`) is new to the operations table; notes it if so.
    fn operation_new(&mut self, service: &str, name: &str) -> bool {
        if let Some(names) = self.operations.get_mut(service) {
            if names.contains(name) {
                return false;
            }
            names.insert(name.to_string());
        } else {
            let mut names = HashSet::default();
            names.insert(name.to_string());
            self.operations.insert(service.to_string(), names);
        }
        true
    }
}

/// Where a closed frame goes: the log, and the tables naming it.
struct FrameOut<'a, 't> {
    log: &'a FrameLog,
    frames: redb::Table<'t, u64, &'static [u8]>,
    by_start: redb::Table<'t, (u64, u64), &'static [u8]>,
}

/// Queues the frame being built for the log, and writes its location and start-index entry as
/// `frame`; returns the entry's spread.
fn close_frame(writer: &mut Writer, out: &mut FrameOut, frame: u64) -> Result<u64, StoreError> {
    let FrameOut {
        log,
        frames,
        by_start,
    } = out;
    let (spans, latest) = writer.frame.counts();
    let (earliest, summaries) = writer.starts.counts();
    let Some((key_start, block)) = writer.starts.finish() else {
        // Every frame has spans, so a block.
        writer.frame.reset();
        return Ok(0);
    };
    let block = Part {
        bytes: block,
        spans: summaries,
        start_ns: earliest,
    };
    let frame_part = Part {
        bytes: writer.frame.finish(),
        spans,
        start_ns: latest,
    };
    let (block_at, frame_at) = writer.appender.append(log, block, frame_part)?;
    frames
        .insert(frame, &frame_at.to_bytes()[..])
        .map_err(db_err)?;
    by_start
        .insert((key_start, frame), &block_at.to_bytes()[..])
        .map_err(db_err)?;
    let spread = key_start - earliest;
    writer.starts.reset();
    Ok(spread)
}

impl Store {
    /// Stores a batch. `durable` commits to disk now; otherwise the commit becomes durable with
    /// the next durable one (the exporter makes one every few seconds and at shutdown).
    pub fn write(&self, spans: &[SpanData], durable: bool) -> Result<(), StoreError> {
        let mut guard = lock(&self.writer);
        let writer = &mut *guard;
        // Whatever a write left half done (an error, or a panic while it held the lock) goes
        // first.
        writer.frame.reset();
        writer.starts.reset();
        if !writer.pairs.is_empty() {
            // A panic in a write: its pairs may be in the open run, under frame numbers the
            // next write gives its own frames (as after an error, below).
            write(&self.open_run).forget_from(writer.next_frame);
            writer.pairs.clear();
        }
        writer.appender.discard();
        let result = self.write_locked(writer, spans, durable);
        writer.pairs.clear();
        if result.is_err() {
            // Frames queued and not written: never named by a commit.
            writer.appender.discard();
            // Taken as not committed (redb says a failed commit may still have become durable:
            // the next write then names its frames' numbers again, with its own frames): the
            // caches may name what was not written, and the open run holds pairs for frames
            // that do not exist (their numbers are used again by the next write).
            writer.services.clear();
            writer.operations.clear();
            // This write's frames are numbered from `next_frame` on, and every other pair the
            // open run holds is of an earlier frame.
            write(&self.open_run).forget_from(writer.next_frame);
        }
        result
    }

    fn write_locked(
        &self,
        writer: &mut Writer,
        spans: &[SpanData],
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
            counts
                .insert(SPANS, stored + spans.len() as u64)
                .map_err(db_err)?;
            let stored_spread = counts.get(SPREAD).map_err(db_err)?.map_or(0, |v| v.value());
            let mut spread = stored_spread;
            for span in spans {
                writer.frame.push(span);
                let service = span.resource.service_name();
                writer.starts.push(span, service);
                writer.pairs.push((span.trace_id, frame));
                if writer.service_due(service, span.end_unix_nano) {
                    services
                        .insert(service, span.end_unix_nano)
                        .map_err(db_err)?;
                }
                if writer.operation_new(service, &span.name) {
                    operations
                        .insert((service, &*span.name), span.kind.as_str())
                        .map_err(db_err)?;
                }
                if writer.frame.is_full() {
                    spread = spread.max(close_frame(writer, &mut out, frame)?);
                    frame += 1;
                }
            }
            if !writer.frame.is_empty() {
                spread = spread.max(close_frame(writer, &mut out, frame)?);
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

//! `--output store` (the default): spans into the embedded store the query API and UI read.
//!
//! Writes, their fsyncs and retention run on a thread of their own: the thread that drains the
//! ring makes spans into frames as they come ([`crate::store::prepare`]: read on the core that
//! built them), hands each batch of frames over and never waits for the disk. The queue is
//! bounded (in spans); a batch that would pass the bound is dropped and counted, as OTLP's
//! queue does.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
        mpsc::{self, RecvTimeoutError},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use super::SpanExporter;
use crate::{
    store::{
        Store, StoreError,
        prepare::{Batch, Preparer},
    },
    trace::SpanData,
};

/// How often a commit is made durable (fsync); commits in between are not, so a crash loses at
/// most this much.
const DURABLE_EVERY: Duration = Duration::from_secs(5);
/// How often retention runs. Often: each run removes a bounded number of frames, so it must
/// keep up with the rate spans arrive at (4096 frames of up to 64 spans per 2 s).
const RETAIN_EVERY: Duration = Duration::from_secs(2);
/// Spans waiting for the writer, at most: a few seconds of a busy node's spans (an fsync on a
/// slow disk), tens of MiB at worst.
const MAX_QUEUED_SPANS: u64 = 32 * 1024;
/// How often the writer wakes without spans, for durability and retention.
const IDLE_WAKE: Duration = Duration::from_millis(250);
/// Spans gathered into one batch for the writer (one transaction; a tick hands over a smaller
/// one).
const BATCH_SPANS: u64 = crate::pipeline::sink::EXPORT_CHUNK as u64;
/// Written batches waiting to go back to the thread that made them (their buffers build the
/// next frames), at most; past it the writer frees them.
const MAX_GIVEN_BACK: usize = 2;

/// What the writer did, shared with the exporter for its counts and `/metrics`.
#[derive(Debug, Default)]
struct Stats {
    written: AtomicU64,
    /// Write errors.
    failed: AtomicU64,
    /// Spans dropped because the queue was full.
    dropped_queue_full: AtomicU64,
    /// Spans handed over and not written yet.
    queued: AtomicU64,
    /// Spans retention removed.
    retired: AtomicU64,
}

pub struct StoreExporter {
    store: Store,
    queue: Option<mpsc::Sender<Batch>>,
    /// Batches the writer has written, for their buffers.
    given_back: mpsc::Receiver<Batch>,
    writer: Option<JoinHandle<()>>,
    stats: Arc<Stats>,
    /// Makes the batch being gathered ([`BATCH_SPANS`]).
    preparer: Preparer,
    /// Wait for the writer instead of dropping (the pipeline bench: it measures the writing).
    lossless: bool,
}

impl StoreExporter {
    /// Starts the writer thread.
    ///
    /// # Errors
    /// The thread could not be started.
    pub fn new(store: Store) -> Result<Self, StoreError> {
        let stats = Arc::new(Stats::default());
        let (tx, rx) = mpsc::channel();
        let (back_tx, given_back) = mpsc::sync_channel(MAX_GIVEN_BACK);
        let writer = {
            let (store, stats) = (store.clone(), Arc::clone(&stats));
            std::thread::Builder::new()
                .name("store-writer".into())
                .spawn(move || write_loop(&store, &rx, &back_tx, &stats))
                .map_err(|e| StoreError::Writer(e.to_string()))?
        };
        Ok(Self {
            preparer: store.preparer(),
            store,
            queue: Some(tx),
            given_back,
            writer: Some(writer),
            stats,
            lossless: false,
        })
    }

    /// As [`StoreExporter::new`], but a full queue makes the caller wait, never drops: for
    /// `cargo xtask bench`'s pipeline figures, which must include the store's writing.
    ///
    /// # Errors
    /// The thread could not be started.
    #[cfg(feature = "bench")]
    pub fn lossless(store: Store) -> Result<Self, StoreError> {
        let mut exporter = Self::new(store)?;
        exporter.lossless = true;
        Ok(exporter)
    }

    #[cfg(feature = "bench")]
    #[must_use]
    pub fn store(&self) -> &Store {
        &self.store
    }
}

/// The writer thread: writes each batch as it comes (and gives it back for its buffers), makes
/// commits durable and runs retention on their clocks, and commits durably when the queue
/// closes.
fn write_loop(
    store: &Store,
    rx: &mpsc::Receiver<Batch>,
    back: &mpsc::SyncSender<Batch>,
    stats: &Stats,
) {
    let mut last_durable = Instant::now();
    let mut last_retention = Instant::now();
    let mut dirty = false;
    loop {
        match rx.recv_timeout(IDLE_WAKE) {
            Ok(batch) => {
                let n = batch.spans;
                match store.write_prepared(&batch, false) {
                    Ok(()) => {
                        stats.written.fetch_add(n, Ordering::Relaxed);
                        dirty = true;
                    }
                    Err(err) => {
                        stats.failed.fetch_add(n, Ordering::Relaxed);
                        tracing::warn!(spans = n, "span store write failed, spans dropped: {err}");
                    }
                }
                stats.queued.fetch_sub(n, Ordering::Relaxed);
                // Back to the thread that made it, whose next frames are built in its buffers;
                // when that thread is behind (or gone), freed here.
                let _ = back.try_send(batch);
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => break,
        }
        if dirty && last_durable.elapsed() >= DURABLE_EVERY {
            commit_durably(store);
            dirty = false;
            last_durable = Instant::now();
        }
        if last_retention.elapsed() >= RETAIN_EVERY {
            last_retention = Instant::now();
            let now = crate::clock::WallClock::new().to_unix_ns(crate::clock::monotonic_ns());
            match store.enforce_retention(now) {
                Ok(0) => {}
                Ok(n) => {
                    stats.retired.fetch_add(n, Ordering::Relaxed);
                    tracing::debug!(removed = n, "span store retention");
                }
                Err(err) => tracing::warn!("span store retention failed: {err}"),
            }
        }
    }
    if dirty {
        commit_durably(store);
    }
}

fn commit_durably(store: &Store) {
    if let Err(err) = store.write(&[], true) {
        tracing::warn!("span store: durable commit failed: {err}");
    }
}

impl StoreExporter {
    /// Hands the batch being made to the writer, or drops and counts its spans when the queue
    /// is full.
    fn hand_over(&mut self) {
        let n = self.preparer.spans();
        if n == 0 {
            return;
        }
        let batch = self.preparer.take();
        let Some(queue) = &self.queue else { return };
        while self.lossless
            && self.stats.queued.load(Ordering::Relaxed) > 0
            && self.stats.queued.load(Ordering::Relaxed) + n > MAX_QUEUED_SPANS
        {
            std::thread::sleep(Duration::from_micros(200));
        }
        if !self.lossless && self.stats.queued.load(Ordering::Relaxed) + n > MAX_QUEUED_SPANS {
            self.stats
                .dropped_queue_full
                .fetch_add(n, Ordering::Relaxed);
            self.preparer.recycle(batch);
            return;
        }
        self.stats.queued.fetch_add(n, Ordering::Relaxed);
        if queue.send(batch).is_err() {
            // The writer is gone (it panicked): nothing will be written.
            self.stats.queued.fetch_sub(n, Ordering::Relaxed);
            self.stats.failed.fetch_add(n, Ordering::Relaxed);
        }
    }
}

impl SpanExporter for StoreExporter {
    /// Makes the spans into the batch being gathered (the caller then frees them, on the thread
    /// that made them); a full batch goes to the writer. Between ticks the pipeline exports a
    /// few spans at a time, and each batch is a transaction of its own (a commit, the frames'
    /// ends), so the writer gets batches, not the pipeline's chunks.
    fn export(&mut self, spans: &mut Vec<SpanData>) {
        while let Ok(written) = self.given_back.try_recv() {
            self.preparer.recycle(written);
        }
        for span in spans.iter() {
            self.preparer.push(span);
        }
        if self.preparer.spans() >= BATCH_SPANS {
            self.hand_over();
        }
    }

    /// The batch being made goes to the writer, whatever its size (the writer keeps its own
    /// clocks for durability and retention).
    fn flush(&mut self) {
        self.hand_over();
    }

    fn finish(&mut self) {
        self.hand_over();
        // Closing the queue lets the writer write what is left, commit durably and end.
        self.queue = None;
        if let Some(writer) = self.writer.take()
            && writer.join().is_err()
        {
            tracing::warn!("span store writer panicked");
        }
    }

    fn counts(&self) -> (u64, u64) {
        let lost = self.stats.failed.load(Ordering::Relaxed)
            + self.stats.dropped_queue_full.load(Ordering::Relaxed);
        (self.stats.written.load(Ordering::Relaxed), lost)
    }

    fn own_metrics(&self) -> Vec<crate::metrics::Own> {
        use crate::metrics::Own;
        vec![
            Own {
                name: "store_file_bytes",
                help: "Bytes the span store takes on disk: its file and its frame log.",
                value: self.store.disk_bytes(),
            },
            Own {
                name: "store_retention_seconds",
                help: "How long the store keeps spans (--retention-hours).",
                value: self.store.retention().as_secs(),
            },
            Own {
                name: "store_retention_removed_spans_total",
                help: "Spans retention removed (by age, or beyond --store-max-spans).",
                value: self.stats.retired.load(Ordering::Relaxed),
            },
            Own {
                name: "store_queue_spans",
                help: "Spans handed to the store's writer thread and not written yet.",
                value: self.stats.queued.load(Ordering::Relaxed),
            },
            Own {
                name: "store_dropped_queue_full_spans_total",
                help: "Spans dropped because the store's writer was behind (its queue full).",
                value: self.stats.dropped_queue_full.load(Ordering::Relaxed),
            },
        ]
    }
}

impl Drop for StoreExporter {
    fn drop(&mut self) {
        self.finish();
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::{metrics::test_span, store::StoreConfig, trace::span::SpanKind};

    fn open(name: &str) -> (std::path::PathBuf, Store) {
        let dir = std::env::temp_dir().join(format!("sockspan-{name}-{}", std::process::id()));
        let store = Store::open(StoreConfig {
            path: dir.join("s.redb"),
            retention: Duration::from_hours(1),
            max_spans: 10_000,
        })
        .expect("open");
        (dir, store)
    }

    /// A span of its own trace, numbered `n`.
    fn span(n: usize) -> SpanData {
        let mut span = test_span("svc", SpanKind::Server, 1, None, 1);
        let n = u16::try_from(n).expect("n").to_le_bytes();
        span.trace_id[..2].copy_from_slice(&n);
        span.span_id[..2].copy_from_slice(&n);
        span
    }

    /// Waits (bounded) until the writer has written `n` spans.
    fn wait_written(exporter: &StoreExporter, n: u64) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while exporter.counts().0 < n && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Spans exported a few at a time reach the writer as batches (a full one, then what a flush
    /// finds), every span readable by its trace afterwards; written batches come back for their
    /// buffers.
    #[test]
    fn small_exports_are_written_in_batches_and_every_span_is_stored() {
        let (dir, store) = open("gather");
        let mut exporter = StoreExporter::new(store.clone()).expect("writer");
        let total = usize::try_from(BATCH_SPANS).expect("small") + 3;
        let mut n = 0;
        while n < total {
            let end = (n + 32).min(total);
            exporter.export(&mut (n..end).map(span).collect());
            n = end;
        }
        assert!(
            exporter.counts().0 < total as u64,
            "the last spans wait for the flush"
        );
        exporter.flush();
        wait_written(&exporter, total as u64);
        exporter.finish();
        assert_eq!(exporter.counts(), (total as u64, 0));
        let mut sizes = Vec::new();
        while let Ok(batch) = exporter.given_back.try_recv() {
            sizes.push(batch.spans);
        }
        // The full batch may have been taken back already by the last export, for its buffers.
        assert!(
            sizes == [BATCH_SPANS, 3] || sizes == [3],
            "batches given back: {sizes:?}"
        );
        for n in [0, 31, 32, 1023, total - 1] {
            let trace = store.trace(&span(n).trace_id).expect("read");
            assert_eq!(trace.len(), 1, "span {n}");
        }
        assert_eq!(store.services().expect("services"), ["svc"]);
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A queue that is full drops a whole batch, counted, and the next batch is written.
    #[test]
    fn a_full_queue_drops_the_batch_and_counts_it() {
        let (dir, store) = open("full");
        let mut exporter = StoreExporter::new(store.clone()).expect("writer");
        // As if the writer were that far behind.
        exporter
            .stats
            .queued
            .store(MAX_QUEUED_SPANS, Ordering::Relaxed);
        exporter.export(&mut (0..5).map(span).collect());
        exporter.flush();
        assert_eq!(exporter.stats.dropped_queue_full.load(Ordering::Relaxed), 5);
        exporter.stats.queued.store(0, Ordering::Relaxed);
        exporter.export(&mut (5..7).map(span).collect());
        exporter.flush();
        wait_written(&exporter, 2);
        exporter.finish();
        assert_eq!(exporter.counts(), (2, 5));
        assert!(store.trace(&span(0).trace_id).expect("read").is_empty());
        assert_eq!(store.trace(&span(6).trace_id).expect("read").len(), 1);
        let _ = std::fs::remove_dir_all(&dir);
    }
}

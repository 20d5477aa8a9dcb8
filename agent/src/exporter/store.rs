//! `--output store` (the default): spans into the embedded store the query API and UI read.
//!
//! Writes, their fsyncs and retention run on a thread of their own: the thread that drains the
//! ring gathers spans into batches, hands each over and never waits for the disk. The queue is bounded (in
//! spans); a batch that would pass the bound is dropped and counted, as OTLP's queue does.

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
    store::{Store, StoreError},
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
/// Spans gathered into one batch for the writer at most (one transaction; a tick hands over a
/// smaller one): as many as the pipeline exports at a time at most.
const BATCH_SPANS: usize = crate::pipeline::sink::EXPORT_CHUNK;
/// Written batches waiting to go back to the thread that made them, at most (each of at most
/// about 2 × [`BATCH_SPANS`] spans, taken out of the writer's bounded queue); past it the
/// writer frees them itself.
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
    queue: Option<mpsc::Sender<Vec<SpanData>>>,
    /// Batches the writer has written ([`SpanExporter::give_back`]).
    given_back: mpsc::Receiver<Vec<SpanData>>,
    writer: Option<JoinHandle<()>>,
    stats: Arc<Stats>,
    /// Spans exported since the last batch went to the writer ([`BATCH_SPANS`]).
    gathering: Vec<SpanData>,
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
            store,
            queue: Some(tx),
            given_back,
            writer: Some(writer),
            stats,
            gathering: Vec::with_capacity(BATCH_SPANS),
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

/// The writer thread: writes each batch as it comes (and gives it back to be freed), makes
/// commits durable and runs retention on their clocks, and commits durably when the queue
/// closes.
fn write_loop(
    store: &Store,
    rx: &mpsc::Receiver<Vec<SpanData>>,
    back: &mpsc::SyncSender<Vec<SpanData>>,
    stats: &Stats,
) {
    let mut last_durable = Instant::now();
    let mut last_retention = Instant::now();
    let mut dirty = false;
    loop {
        match rx.recv_timeout(IDLE_WAKE) {
            Ok(batch) => {
                let n = batch.len() as u64;
                match store.write(&batch, false) {
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
                // Freed where it was made: a span's shared strings and resource are counted
                // references the other thread takes, and its blocks came from that thread's
                // allocator cache. When the other thread is behind (or gone), freed here.
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
    /// Hands the gathered spans to the writer as one batch, or drops and counts them when the
    /// queue is full.
    fn hand_over(&mut self) {
        let Some(queue) = &self.queue else { return };
        let n = self.gathering.len() as u64;
        if n == 0 {
            return;
        }
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
            self.gathering.clear();
            return;
        }
        self.stats.queued.fetch_add(n, Ordering::Relaxed);
        // Left with room for a batch, the next one does not grow from empty, copying every
        // span it holds at each doubling.
        let batch = std::mem::replace(&mut self.gathering, Vec::with_capacity(BATCH_SPANS));
        if queue.send(batch).is_err() {
            // The writer is gone (it panicked): nothing will be written.
            self.stats.queued.fetch_sub(n, Ordering::Relaxed);
            self.stats.failed.fetch_add(n, Ordering::Relaxed);
        }
    }
}

impl SpanExporter for StoreExporter {
    /// Gathers the spans into the batch being made; a full batch goes to the writer. Between
    /// ticks the pipeline exports a few spans at a time, and each batch is a transaction of its
    /// own (a commit, the frames' ends), so the writer gets batches, not the pipeline's chunks.
    fn export(&mut self, spans: &mut Vec<SpanData>) {
        self.gathering.append(spans);
        if self.gathering.len() >= BATCH_SPANS {
            self.hand_over();
        }
    }

    fn give_back(&mut self) -> Option<Vec<SpanData>> {
        self.given_back.try_recv().ok()
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
    use crate::{
        metrics::test_span,
        store::StoreConfig,
        trace::span::{Resource, SpanKind},
    };

    /// Written spans come back to the exporting thread, the same spans, their resource shared
    /// with nobody on the writer's side any more; past the bound, the writer frees them itself.
    #[test]
    fn written_batches_are_given_back_to_be_freed_by_their_maker() {
        let dir = std::env::temp_dir().join(format!("sockspan-give-back-{}", std::process::id()));
        let store = Store::open(StoreConfig {
            path: dir.join("s.redb"),
            retention: Duration::from_hours(1),
            max_spans: 1000,
        })
        .expect("open");
        let mut exporter = StoreExporter::new(store).expect("writer");
        let resource = Arc::new(Resource::new(Vec::new()));
        let batches = MAX_GIVEN_BACK + 3;
        for id in 0..batches {
            let mut span = test_span(
                "svc",
                SpanKind::Server,
                u8::try_from(id).expect("id"),
                None,
                1,
            );
            span.resource = Arc::clone(&resource);
            exporter.export(&mut vec![span]);
            exporter.flush();
        }
        // Bounded: the writer writes `batches` one-span batches.
        let deadline = Instant::now() + Duration::from_secs(10);
        while exporter.counts().0 < batches as u64 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(exporter.counts(), (batches as u64, 0));
        // The writer done with every batch (the last ones freed, not merely counted).
        exporter.finish();
        let mut given_back = Vec::new();
        while let Some(batch) = exporter.give_back() {
            given_back.extend(batch);
        }
        assert_eq!(
            given_back.len(),
            MAX_GIVEN_BACK,
            "the rest freed by the writer"
        );
        assert_eq!(given_back[0].span_id, [0; 8], "in the order written");
        assert_eq!(
            Arc::strong_count(&resource),
            1 + MAX_GIVEN_BACK,
            "the spans given back hold the only other references"
        );
        drop(given_back);
        assert_eq!(Arc::strong_count(&resource), 1);
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// Spans exported a few at a time reach the writer as one batch: when a batch's worth is
    /// gathered, or at a flush.
    #[test]
    fn small_exports_are_gathered_into_one_batch() {
        let dir = std::env::temp_dir().join(format!("sockspan-gather-{}", std::process::id()));
        let store = Store::open(StoreConfig {
            path: dir.join("s.redb"),
            retention: Duration::from_hours(1),
            max_spans: 10_000,
        })
        .expect("open");
        let mut exporter = StoreExporter::new(store).expect("writer");
        let span = |id: usize| {
            let mut id_bytes = [0; 8];
            id_bytes[..2].copy_from_slice(&u16::try_from(id).expect("id").to_le_bytes());
            let mut span = test_span("svc", SpanKind::Server, 1, None, 1);
            span.span_id = id_bytes;
            span
        };
        let mut id = 0;
        // Chunks of 32 until a batch's worth, then 3 more and a flush.
        while id < BATCH_SPANS {
            exporter.export(&mut (id..id + 32).map(span).collect());
            id += 32;
        }
        exporter.export(&mut (id..id + 3).map(span).collect());
        exporter.flush();
        let written = BATCH_SPANS as u64 + 3;
        let deadline = Instant::now() + Duration::from_secs(10);
        while exporter.counts().0 < written && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        exporter.finish();
        assert_eq!(exporter.counts(), (written, 0));
        let mut sizes = Vec::new();
        while let Some(batch) = exporter.give_back() {
            sizes.push(batch.len());
        }
        assert_eq!(
            sizes,
            [BATCH_SPANS, 3],
            "one full batch, then what the flush found"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}

//! `--output store` (the default): spans into the embedded store the query API and UI read.

use std::time::{Duration, Instant};

use super::SpanExporter;
use crate::{store::Store, trace::SpanData};

/// How often a commit is made durable (fsync); commits in between are not, so a crash loses at
/// most this much.
const DURABLE_EVERY: Duration = Duration::from_secs(5);
/// How often retention runs. Often: each run removes a bounded number of frames, so it must
/// keep up with the rate spans arrive at (4096 frames of up to 64 spans per 2 s).
const RETAIN_EVERY: Duration = Duration::from_secs(2);

pub struct StoreExporter {
    store: Store,
    written: u64,
    failed: u64,
    /// Spans retention removed.
    retired: u64,
    last_durable: Instant,
    last_retention: Instant,
    dirty: bool,
}

impl StoreExporter {
    #[must_use]
    pub fn new(store: Store) -> Self {
        Self {
            store,
            written: 0,
            failed: 0,
            retired: 0,
            last_durable: Instant::now(),
            last_retention: Instant::now(),
            dirty: false,
        }
    }

    #[must_use]
    pub fn store(&self) -> &Store {
        &self.store
    }

    fn commit_durably(&mut self) {
        if self.dirty {
            if let Err(err) = self.store.write(&[], true) {
                tracing::warn!("span store: durable commit failed: {err}");
            }
            self.dirty = false;
        }
        self.last_durable = Instant::now();
    }
}

impl SpanExporter for StoreExporter {
    fn export(&mut self, spans: &[SpanData]) {
        match self.store.write(spans, false) {
            Ok(()) => {
                self.written += spans.len() as u64;
                self.dirty = true;
            }
            Err(err) => {
                self.failed += spans.len() as u64;
                tracing::warn!(
                    spans = spans.len(),
                    "span store write failed, spans dropped: {err}"
                );
            }
        }
    }

    fn flush(&mut self) {
        if self.last_durable.elapsed() >= DURABLE_EVERY {
            self.commit_durably();
        }
        if self.last_retention.elapsed() >= RETAIN_EVERY {
            self.last_retention = Instant::now();
            let now = crate::clock::WallClock::new().to_unix_ns(crate::clock::monotonic_ns());
            match self.store.enforce_retention(now) {
                Ok(0) => {}
                Ok(n) => {
                    self.retired += n;
                    tracing::debug!(removed = n, "span store retention");
                }
                Err(err) => tracing::warn!("span store retention failed: {err}"),
            }
        }
    }

    fn finish(&mut self) {
        self.commit_durably();
    }

    fn counts(&self) -> (u64, u64) {
        (self.written, self.failed)
    }

    fn own_metrics(&self) -> Vec<crate::metrics::Own> {
        use crate::metrics::Own;
        vec![
            Own {
                name: "store_file_bytes",
                help: "Size of the span store's file.",
                value: std::fs::metadata(self.store.path()).map_or(0, |m| m.len()),
            },
            Own {
                name: "store_retention_seconds",
                help: "How long the store keeps spans (--retention-hours).",
                value: self.store.retention().as_secs(),
            },
            Own {
                name: "store_retention_removed_spans_total",
                help: "Spans retention removed (by age, or beyond --store-max-spans).",
                value: self.retired,
            },
        ]
    }
}

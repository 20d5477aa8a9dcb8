//! `--output otlp`: spans to an OpenTelemetry collector, Jaeger or Tempo over OTLP.
//!
//! The pipeline hands spans to a bounded queue and never waits; a task batches them, sends them
//! gzip-compressed, and retries retryable failures with exponential backoff. A full queue drops
//! new spans and counts them.

pub mod config;
pub mod convert;
pub mod metrics;
pub mod transport;

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use tokio::sync::mpsc;

use super::SpanExporter;
use crate::trace::{SpanData, span::KeyValue};
pub use config::{OtlpConfig, OtlpConfigError};
use transport::Transport;

/// How long a partial batch waits for more spans.
const BATCH_WAIT: Duration = Duration::from_millis(200);
/// Retries of one batch before it is dropped.
const MAX_ATTEMPTS: u32 = 6;
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Self-metrics, shared with the sending task.
#[derive(Debug, Default)]
pub struct OtlpStats {
    pub sent: AtomicU64,
    pub dropped_queue_full: AtomicU64,
    pub failed: AtomicU64,
    pub retries: AtomicU64,
}

pub struct OtlpExporter {
    queue: Option<mpsc::Sender<SpanData>>,
    /// The queue's size, for its depth (size less the free room).
    queue_spans: usize,
    pub stats: Arc<OtlpStats>,
}

impl OtlpExporter {
    /// Starts the sending task on the current runtime.
    pub fn start(
        config: OtlpConfig,
    ) -> Result<(Self, tokio::task::JoinHandle<()>), OtlpConfigError> {
        let transport = Transport::new(&config)?;
        let queue_spans = config.queue_spans;
        let (tx, rx) = mpsc::channel(queue_spans);
        let stats = Arc::new(OtlpStats::default());
        tracing::info!(endpoint = %config.endpoint, protocol = ?config.protocol, "exporting spans over OTLP");
        let task = tokio::spawn(send_loop(rx, transport, config, Arc::clone(&stats)));
        Ok((
            Self {
                queue: Some(tx),
                queue_spans,
                stats,
            },
            task,
        ))
    }
}

impl SpanExporter for OtlpExporter {
    fn export(&mut self, spans: &mut Vec<SpanData>) {
        let Some(queue) = &self.queue else { return };
        for span in spans.drain(..) {
            if queue.try_send(span).is_err() {
                self.stats
                    .dropped_queue_full
                    .fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    fn flush(&mut self) {}

    fn finish(&mut self) {
        // Closing the queue lets the task send what is left and end.
        self.queue = None;
    }

    fn counts(&self) -> (u64, u64) {
        let lost = self.stats.failed.load(Ordering::Relaxed)
            + self.stats.dropped_queue_full.load(Ordering::Relaxed);
        (self.stats.sent.load(Ordering::Relaxed), lost)
    }

    fn own_metrics(&self) -> Vec<crate::metrics::Own> {
        use crate::metrics::Own;
        let depth = self
            .queue
            .as_ref()
            .map_or(0, |q| self.queue_spans.saturating_sub(q.capacity()));
        vec![
            Own {
                name: "otlp_queue_spans",
                help: "Spans waiting in the OTLP queue now.",
                value: depth as u64,
            },
            Own {
                name: "otlp_queue_full_drops_total",
                help: "Spans dropped because the OTLP queue was full.",
                value: self.stats.dropped_queue_full.load(Ordering::Relaxed),
            },
            Own {
                name: "otlp_retries_total",
                help: "OTLP export requests tried again after a retryable failure.",
                value: self.stats.retries.load(Ordering::Relaxed),
            },
            Own {
                name: "otlp_failed_spans_total",
                help: "Spans whose OTLP export failed for good.",
                value: self.stats.failed.load(Ordering::Relaxed),
            },
        ]
    }
}

async fn send_loop(
    mut rx: mpsc::Receiver<SpanData>,
    mut transport: Transport,
    config: OtlpConfig,
    stats: Arc<OtlpStats>,
) {
    let mut batch: Vec<SpanData> = Vec::with_capacity(config.batch_spans);
    loop {
        let Some(first) = rx.recv().await else { break };
        batch.push(first);
        let deadline = tokio::time::Instant::now() + BATCH_WAIT;
        while batch.len() < config.batch_spans {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(span)) => batch.push(span),
                Ok(None) | Err(_) => break,
            }
        }
        send_batch(
            &mut transport,
            &batch,
            &config.resource_attributes,
            config.timeout,
            &stats,
        )
        .await;
        batch.clear();
    }
}

async fn send_batch(
    transport: &mut Transport,
    batch: &[SpanData],
    extra: &[KeyValue],
    timeout: Duration,
    stats: &OtlpStats,
) {
    let request = convert::request(batch, extra);
    let mut backoff = Duration::from_millis(100);
    for attempt in 1..=MAX_ATTEMPTS {
        match transport
            .send(transport::Request::Traces(request.clone()), timeout)
            .await
        {
            Ok(()) => {
                stats.sent.fetch_add(batch.len() as u64, Ordering::Relaxed);
                return;
            }
            Err(err) if err.retryable && attempt < MAX_ATTEMPTS => {
                stats.retries.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(
                    attempt,
                    "OTLP export failed, retrying in {backoff:?}: {}",
                    err.message
                );
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
            Err(err) => {
                stats
                    .failed
                    .fetch_add(batch.len() as u64, Ordering::Relaxed);
                tracing::warn!(
                    spans = batch.len(),
                    "OTLP export failed, spans dropped: {}",
                    err.message
                );
                return;
            }
        }
    }
}

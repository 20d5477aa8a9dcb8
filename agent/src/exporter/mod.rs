//! Stage 6 of the pipeline: where finished spans go.

#[cfg(any(feature = "bench", feature = "fuzz"))]
pub mod counting;
pub mod json;
pub mod jsonl;
pub mod metered;
pub mod otlp;
pub mod store;

use crate::trace::SpanData;

/// A destination for finished spans. Export never blocks the capture path: an exporter that
/// cannot keep up drops and counts.
pub trait SpanExporter {
    /// Takes the spans it keeps out of `spans` (no copy for a queue); the caller clears what is
    /// left.
    fn export(&mut self, spans: &mut Vec<SpanData>);
    /// Pushes out anything buffered (called on ticks and at shutdown).
    fn flush(&mut self);
    /// No more spans will come; background senders finish what they hold.
    fn finish(&mut self) {}
    /// Spans handed out, and spans lost (write errors, full queues).
    fn counts(&self) -> (u64, u64);
    /// The exporter's own figures for `/metrics` (queue depth, retries, store size, …).
    fn own_metrics(&self) -> Vec<crate::metrics::Own> {
        Vec::new()
    }
}

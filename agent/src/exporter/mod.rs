//! Stage 6 of the pipeline: where finished spans go.

#[cfg(any(feature = "bench", feature = "fuzz"))]
pub mod counting;
pub mod json;
pub mod jsonl;
pub mod metered;
pub mod otlp;
pub mod spare_lists;
pub mod store;

use crate::trace::{SpanData, span::KeyValue};

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
    /// Moves the emptied attribute lists of spans this exporter is done with into `into`, for
    /// the tracer to fill again. An exporter that writes on a thread of its own hands them back:
    /// each span's list was otherwise allocated on the draining thread and freed on the writer's
    /// (where glibc frees another thread's block under that arena's lock).
    fn spare_attribute_lists(&mut self, _into: &mut Vec<Vec<KeyValue>>) {}
    /// Spans handed out, and spans lost (write errors, full queues).
    fn counts(&self) -> (u64, u64);
    /// The exporter's own figures for `/metrics` (queue depth, retries, store size, …).
    fn own_metrics(&self) -> Vec<crate::metrics::Own> {
        Vec::new()
    }
}

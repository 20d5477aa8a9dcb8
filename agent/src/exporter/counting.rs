//! An exporter that counts spans and drops them: the benchmark's pipeline figure without an
//! output's cost, and the fuzz targets' check on what the pipeline built.

use super::SpanExporter;
use crate::trace::SpanData;

/// Counts spans and drops them (and counts spans that end before they start, for `fuzz`).
#[derive(Default)]
pub(crate) struct CountingExporter {
    pub(crate) spans: u64,
    pub(crate) bad_spans: u64,
}

impl SpanExporter for CountingExporter {
    fn export(&mut self, spans: &mut Vec<SpanData>) {
        self.spans += spans.len() as u64;
        self.bad_spans += spans
            .iter()
            .filter(|s| s.end_unix_nano < s.start_unix_nano)
            .count() as u64;
    }
    fn flush(&mut self) {}
    fn counts(&self) -> (u64, u64) {
        (self.spans, 0)
    }
}

//! An exporter that counts every span into the metrics ([`crate::metrics`]) before handing it
//! on: metrics see all spans, whatever the destination keeps.

use super::SpanExporter;
use crate::{
    metrics::{self, SharedMetrics},
    trace::SpanData,
};

pub struct Metered {
    inner: Box<dyn SpanExporter>,
    metrics: SharedMetrics,
}

impl Metered {
    #[must_use]
    pub fn new(inner: Box<dyn SpanExporter>, metrics: SharedMetrics) -> Self {
        Self { inner, metrics }
    }
}

impl SpanExporter for Metered {
    fn export(&mut self, spans: &mut Vec<SpanData>) {
        metrics::lock(&self.metrics).record(spans);
        self.inner.export(spans);
    }

    fn flush(&mut self) {
        self.inner.flush();
    }

    fn finish(&mut self) {
        self.inner.finish();
    }

    fn counts(&self) -> (u64, u64) {
        self.inner.counts()
    }

    fn own_metrics(&self) -> Vec<metrics::Own> {
        self.inner.own_metrics()
    }
}

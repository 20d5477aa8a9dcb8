//! `--output jsonl`: one finished span per line.

use std::io::Write;

use super::{SpanExporter, json::write_span};
use crate::trace::SpanData;

/// Writes spans as JSON lines to any writer (stdout for `sockspan run --output jsonl`).
pub struct JsonlExporter<W: Write> {
    out: W,
    /// The line being encoded, reused: no allocation per span.
    line: Vec<u8>,
    written: u64,
    failed: u64,
}

impl<W: Write> JsonlExporter<W> {
    pub fn new(out: W) -> Self {
        Self {
            out,
            line: Vec::with_capacity(4096),
            written: 0,
            failed: 0,
        }
    }
}

impl<W: Write> SpanExporter for JsonlExporter<W> {
    fn export(&mut self, spans: &mut Vec<SpanData>) {
        for span in spans.iter() {
            self.line.clear();
            write_span(&mut self.line, span);
            self.line.push(b'\n');
            if self.out.write_all(&self.line).is_ok() {
                self.written += 1;
            } else {
                self.failed += 1;
            }
        }
    }

    fn flush(&mut self) {
        let _ = self.out.flush();
    }

    fn counts(&self) -> (u64, u64) {
        (self.written, self.failed)
    }
}

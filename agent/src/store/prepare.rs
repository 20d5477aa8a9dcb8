//! Spans made ready for the store on the thread that exported them: their records, frames and
//! start-index entries, and which service and operation names the tables still need.
//!
//! Why here and not on the writer thread: a span is read while it is still in the cache of the
//! core that built it, and only its compact bytes cross to the writer. When the writer read the
//! spans themselves, every span's attributes, shared strings and resource came cold from the
//! other core, and every span was freed on the way back (`perf` of the live agent under wrk:
//! encoding ~5 % and the freeing ~5 % of its CPU). What the writer still does: compression,
//! the frame log, the tables, the trace index, the commit.

use std::{
    collections::{HashMap, HashSet},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
};

use foldhash::fast::RandomState as Fast;

use super::{
    SERVICE_REFRESH_NS,
    frame::{FrameBuilder, RawFrame},
    start_index::{StartBlock, StartEntry},
};
use crate::trace::SpanData;

/// Frames of written batches kept to build the next frames in (their records, start-index
/// entry and trace ids), at most.
const MAX_SPARE_FRAMES: usize = 32;

/// One frame, ready to be written.
#[derive(Debug, Default)]
pub struct PreparedFrame {
    pub raw: RawFrame,
    pub start: StartEntry,
    /// Its spans' trace ids, in order (the trace index's pairs).
    pub trace_ids: Vec<[u8; 16]>,
}

/// Spans ready to be written in one transaction.
#[derive(Debug, Default)]
pub struct Batch {
    pub frames: Vec<PreparedFrame>,
    /// Services whose last-seen time the services table is due to get: (service, end).
    pub services: Vec<(String, u64)>,
    /// Operations new to the operations table: (service, name, kind).
    pub operations: Vec<(String, String, &'static str)>,
    pub spans: u64,
}

/// Names the store's tables may have lost: a failed write does not say what it committed, so
/// every preparer of the store forgets what it noted as written (the next spans write them
/// again). Shared between the store and its preparers.
#[derive(Debug, Default)]
pub struct NamesLost(AtomicU64);

impl NamesLost {
    pub fn note(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }

    fn count(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Builds batches from spans, one at a time. Each thread that hands spans to the store has its
/// own ([`super::Store::preparer`]).
pub struct Preparer {
    frame: FrameBuilder,
    starts: StartBlock,
    trace_ids: Vec<[u8; 16]>,
    batch: Batch,
    /// When each service's last-seen time was last noted (foldhash, not `SipHash`: these keys
    /// are the agent's own service and span names, not a peer's choice of keys).
    services: HashMap<String, u64, Fast>,
    operations: HashMap<String, HashSet<String, Fast>, Fast>,
    names_lost: Arc<NamesLost>,
    /// The store's count of lost names when the caches above were last right.
    names_lost_seen: u64,
    /// Frames of written batches, whose buffers the next frames are built in.
    spare: Vec<PreparedFrame>,
}

impl Preparer {
    pub(super) fn new(names_lost: Arc<NamesLost>) -> Self {
        let names_lost_seen = names_lost.count();
        Self {
            frame: FrameBuilder::default(),
            starts: StartBlock::default(),
            trace_ids: Vec::new(),
            batch: Batch::default(),
            services: HashMap::default(),
            operations: HashMap::default(),
            names_lost,
            names_lost_seen,
            spare: Vec::new(),
        }
    }

    /// Adds `span` to the batch being made.
    pub fn push(&mut self, span: &SpanData) {
        let lost = self.names_lost.count();
        if lost != self.names_lost_seen {
            self.names_lost_seen = lost;
            self.services.clear();
            self.operations.clear();
        }
        self.frame.push(span);
        let service = span.resource.service_name();
        self.starts.push(span, service);
        self.trace_ids.push(span.trace_id);
        self.batch.spans += 1;
        if self.service_due(service, span.end_unix_nano) {
            self.batch
                .services
                .push((service.to_string(), span.end_unix_nano));
        }
        if self.operation_new(service, &span.name) {
            self.batch.operations.push((
                service.to_string(),
                span.name.to_string(),
                span.kind.as_str(),
            ));
        }
        if self.frame.is_full() {
            self.close_frame();
        }
    }

    /// Spans in the batch being made.
    #[must_use]
    pub fn spans(&self) -> u64 {
        self.batch.spans
    }

    /// The batch made so far (its last frame closed); the next one starts empty.
    pub fn take(&mut self) -> Batch {
        if !self.frame.is_empty() {
            self.close_frame();
        }
        std::mem::take(&mut self.batch)
    }

    /// Keeps a written batch's frames for their buffers (a bounded number), freeing the rest.
    pub fn recycle(&mut self, batch: Batch) {
        let room = MAX_SPARE_FRAMES.saturating_sub(self.spare.len());
        self.spare.extend(batch.frames.into_iter().take(room));
    }

    fn close_frame(&mut self) {
        let spare = self.spare.pop().unwrap_or_default();
        let raw = self.frame.finish_raw(spare.raw.bytes);
        // Every frame has spans, so an entry.
        let start = self.starts.take(spare.start.bytes).unwrap_or_default();
        let mut ids = spare.trace_ids;
        ids.clear();
        let trace_ids = std::mem::replace(&mut self.trace_ids, ids);
        self.batch.frames.push(PreparedFrame {
            raw,
            start,
            trace_ids,
        });
    }

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{metrics::test_span, store::frame::FRAME_SPANS, trace::span::SpanKind};

    fn span(n: u8, name: &str) -> SpanData {
        let mut span = test_span("svc", SpanKind::Client, n, None, 1);
        span.name = name.into();
        span
    }

    #[test]
    fn spans_become_full_frames_and_a_last_partial_one() {
        let mut preparer = Preparer::new(Arc::default());
        let count = FRAME_SPANS + 3;
        for n in 0..count {
            preparer.push(&span(u8::try_from(n).expect("small"), "GET"));
        }
        assert_eq!(preparer.spans(), count as u64);
        let batch = preparer.take();
        assert_eq!(batch.spans, count as u64);
        let sizes: Vec<(u8, usize, u32)> = batch
            .frames
            .iter()
            .map(|f| (f.raw.spans, f.trace_ids.len(), f.start.spans))
            .collect();
        assert_eq!(
            sizes,
            [
                (u8::try_from(FRAME_SPANS).expect("small"), FRAME_SPANS, 64),
                (3, 3, 3)
            ]
        );
        assert_eq!(batch.frames[1].trace_ids[0], span(64, "GET").trace_id);
        assert_eq!(preparer.take().spans, 0, "the next batch starts empty");
        // Buffers come back, bounded, and the next frames are built in them.
        preparer.recycle(batch);
        assert_eq!(preparer.spare.len(), 2);
        preparer.push(&span(1, "GET"));
        assert_eq!(preparer.take().frames[0].raw.spans, 1);
        assert_eq!(preparer.spare.len(), 1);
    }

    #[test]
    fn names_go_to_the_tables_once_and_again_after_a_failed_write() {
        let lost = Arc::new(NamesLost::default());
        let mut preparer = Preparer::new(Arc::clone(&lost));
        preparer.push(&span(1, "GET"));
        preparer.push(&span(2, "GET"));
        preparer.push(&span(3, "POST"));
        let batch = preparer.take();
        assert_eq!(batch.services.len(), 1, "one service, not yet due again");
        let operations: Vec<&str> = batch.operations.iter().map(|o| o.1.as_str()).collect();
        assert_eq!(operations, ["GET", "POST"]);
        assert_eq!(batch.operations[0].2, "CLIENT");
        preparer.push(&span(4, "GET"));
        let batch = preparer.take();
        assert!(batch.services.is_empty() && batch.operations.is_empty());
        // A failed write of any preparer of the store: every name is written again.
        lost.note();
        preparer.push(&span(5, "GET"));
        let batch = preparer.take();
        assert_eq!((batch.services.len(), batch.operations.len()), (1, 1));
    }
}

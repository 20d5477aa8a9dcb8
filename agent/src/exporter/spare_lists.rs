//! Attribute lists handed back across threads ([`SpareLists`]): the exporter's writer thread
//! empties the lists of the spans it wrote, and the tracer fills them with the next spans'
//! attributes.
//!
//! Every exported span carries its attributes in a list of its own, allocated on the thread
//! that drains the ring and, with the store as output, freed on the writer's. glibc frees a
//! block another thread allocated under that arena's lock, and the allocating thread, its
//! per-thread cache empty, takes the slow path for the next one: a list that goes back and
//! forth costs neither.

use std::sync::{Mutex, MutexGuard, PoisonError};

use crate::trace::{SpanData, span::KeyValue};

/// Lists waiting to be filled again, at most, on each side (the writer's and the tracer's): one
/// export chunk of spans.
const MAX_LISTS: usize = 1024;
/// A list with room for more attributes than this is freed, not kept (a span with many recorded
/// headers must not make every list that large): a span has about 20.
const MAX_CAPACITY: usize = 32;

/// The lists, shared by the exporter (which hands them to the tracer) and its writer thread.
#[derive(Debug, Default)]
pub struct SpareLists {
    lists: Mutex<Vec<Vec<KeyValue>>>,
}

impl SpareLists {
    /// Writer side: empties the attribute lists of `spans` (their values are released here) and
    /// keeps those worth keeping, up to the bound; the rest are freed with the spans.
    /// `emptied` is the caller's buffer, kept between batches so a hand-back allocates nothing.
    pub fn give_back(&self, spans: &mut [SpanData], emptied: &mut Vec<Vec<KeyValue>>) {
        for span in spans {
            let capacity = span.attributes.capacity();
            if capacity > 0 && capacity <= MAX_CAPACITY && emptied.len() < MAX_LISTS {
                let mut list = std::mem::take(&mut span.attributes);
                list.clear();
                emptied.push(list);
            }
        }
        if emptied.is_empty() {
            return;
        }
        let mut lists = self.locked();
        let room = MAX_LISTS.saturating_sub(lists.len());
        lists.extend(emptied.drain(..).take(room));
        // What did not fit is freed here, with the spans.
        emptied.clear();
    }

    /// The lists, whatever a panicking holder left (empty lists are always usable).
    fn locked(&self) -> MutexGuard<'_, Vec<Vec<KeyValue>>> {
        self.lists.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Tracer side: moves the waiting lists into `into` (the tracer's own spares), up to the
    /// bound in all.
    pub fn take(&self, into: &mut Vec<Vec<KeyValue>>) {
        if into.len() >= MAX_LISTS {
            return;
        }
        let mut lists = self.locked();
        if into.is_empty() {
            // Both vectors keep their buffers: no copy, no allocation.
            std::mem::swap(into, &mut *lists);
        } else {
            let room = MAX_LISTS - into.len();
            let n = lists.len().min(room);
            into.extend(lists.drain(..n));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{metrics::test_span, trace::span::SpanKind};

    #[test]
    fn written_spans_lists_come_back_empty_and_bounded() {
        let spare = SpareLists::default();
        let mut emptied = Vec::new();
        let mut batch: Vec<SpanData> = (1..=3)
            .map(|id| test_span("svc", SpanKind::Server, id, None, 3))
            .collect();
        // One span with a very long list: freed, not kept.
        batch[2].attributes = Vec::with_capacity(MAX_CAPACITY + 1);
        spare.give_back(&mut batch, &mut emptied);
        assert!(emptied.is_empty());
        let mut into = Vec::new();
        spare.take(&mut into);
        assert_eq!(into.len(), 2);
        assert!(into.iter().all(|l| l.is_empty() && l.capacity() > 0));
        // Nothing is left to take twice.
        spare.take(&mut into);
        assert_eq!(into.len(), 2);

        // Never more than the bound, on either side.
        for _ in 0..3 {
            let mut batch: Vec<SpanData> = (0..MAX_LISTS)
                .map(|_| test_span("svc", SpanKind::Client, 1, None, 3))
                .collect();
            spare.give_back(&mut batch, &mut emptied);
        }
        assert_eq!(spare.locked().len(), MAX_LISTS);
        spare.take(&mut into);
        assert_eq!(into.len(), MAX_LISTS);
        assert_eq!(spare.locked().len(), 2);
    }
}

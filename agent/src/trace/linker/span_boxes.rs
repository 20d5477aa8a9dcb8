//! The boxes of open spans, used again: a span is boxed when its request is seen and leaves its
//! box at export, on the same thread, a few hundred milliseconds later.
//!
//! Under wrk against nginx, a new box per span was ~4 % of the agent's CPU and its free ~1.7 %
//! (`perf`): spans are exported in bursts, more at once than glibc's per-thread cache holds of
//! one size, so most allocations took the allocator's slow path, and its arena's lock, which the
//! store's writer thread also takes to free the spans it wrote.

use std::mem::MaybeUninit;

use super::open::OpenSpan;

/// Spare boxes kept at most (~430 KiB at 432 bytes a span): more than the spans a burst of
/// exports frees at this rate; past it, a box is freed.
const MAX_SPARE: usize = 1024;

/// Spare boxes, each holding no span.
#[derive(Default)]
pub(super) struct SpanBoxes {
    // The boxes themselves are what is kept: each is a span's allocation, handed out whole.
    #[allow(clippy::vec_box)]
    spare: Vec<Box<MaybeUninit<OpenSpan>>>,
}

impl SpanBoxes {
    /// `span` in a box, a spare one if any.
    pub(super) fn boxed(&mut self, span: OpenSpan) -> Box<OpenSpan> {
        match self.spare.pop() {
            Some(spare) => Box::write(spare, span),
            None => Box::new(span),
        }
    }

    /// The span out of its box, which is kept for another.
    pub(super) fn unbox(&mut self, boxed: Box<OpenSpan>) -> OpenSpan {
        let raw = Box::into_raw(boxed);
        // SAFETY: `raw` comes from `Box::into_raw`: valid, aligned and owned by nobody else.
        // Reading moves the span out; the allocation holds no live value after it.
        let span = unsafe { raw.read() };
        // SAFETY: the allocation was made by `Box` for an `OpenSpan`, whose layout
        // `MaybeUninit<OpenSpan>` shares; its value was moved out above, so the box drops
        // nothing when it is freed, and `boxed` writes a new value before anything reads one.
        let spare = unsafe { Box::from_raw(raw.cast::<MaybeUninit<OpenSpan>>()) };
        if self.spare.len() < MAX_SPARE {
            self.spare.push(spare);
        }
        span
    }

    #[cfg(test)]
    pub(super) fn spare(&self) -> usize {
        self.spare.len()
    }
}

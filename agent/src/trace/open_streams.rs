//! Which streams of a multiplexing server are still open: for the worker rule, whether every
//! stream a worker may have been serving at some time has ended by now.
//!
//! A worker thread that makes a call and then never writes an answer alone (its answer was
//! flushed by an I/O thread, and no request came to it since) leaves its call waiting. Its
//! stream had begun before the call and ends with its answer; once every stream that began by
//! then has ended, its answer is among the answers seen, and the call can be decided from
//! them ([`super::workers`]). That needs every stream to be known: a stream the agent never saw
//! begin (its connection opened before the agent watched it, its records lost) may still be
//! open. So a process where that may be is left out for a while ([`INCOMPLETE_NS`], kept by
//! [`super::workers`]).

use std::collections::{BTreeSet, VecDeque};

use super::linker::SpanKey;

/// How long a process is left out after a sign that one of its streams may be unknown
/// (activity on a connection the agent did not see open, lost records): the stream it hides
/// would most likely have shown itself by then.
pub const INCOMPLETE_NS: u64 = 60_000_000_000;
/// Streams tracked per process; past this the process is left out (its table cleared).
const MAX_OPEN: usize = 16 * 1024;
/// How long ends are remembered, in event time (they are read only within the settling delay).
const RECENT_ENDS_NS: u64 = 20_000_000;

#[derive(Debug, Default)]
pub struct OpenStreams {
    /// Streams not ended, by when their request began.
    open: BTreeSet<(u64, SpanKey)>,
    /// Recent ends (when, and when that stream began), in about the order they came.
    recent_ends: VecDeque<(u64, u64)>,
    /// Streams were forgotten (too many): never judged again.
    overflowed: bool,
    /// The latest end forgotten from `recent_ends`: a horizon before it cannot be judged.
    pruned_until: u64,
}

impl OpenStreams {
    /// Stream `key`'s request began at `began`.
    pub fn began(&mut self, key: SpanKey, began: u64) {
        if self.open.len() >= MAX_OPEN {
            // Forgotten streams may be open for any time: never judged again.
            self.open.clear();
            self.overflowed = true;
        }
        self.open.insert((began, key));
    }

    /// Stream `key`, begun at `began`, ended at `at` (answered, reset, or its connection gone).
    pub fn ended(&mut self, key: SpanKey, began: u64, at: u64) {
        self.open.remove(&(began, key));
        while self
            .recent_ends
            .front()
            .is_some_and(|&(end, _)| end.saturating_add(RECENT_ENDS_NS) < at)
        {
            if let Some((end, _)) = self.recent_ends.pop_front() {
                self.pruned_until = self.pruned_until.max(end);
            }
        }
        self.recent_ends.push_back((at, began));
    }

    /// Whether every stream that began by `ts` had ended by `horizon` (events up to `horizon`
    /// have all come), as far as the agent can know.
    #[must_use]
    pub fn all_ended(&self, ts: u64, horizon: u64) -> bool {
        !self.overflowed
            && horizon >= self.pruned_until
            && self.open.first().is_none_or(|&(began, _)| began > ts)
            && self
                .recent_ends
                .iter()
                .all(|&(end, began)| end <= horizon || began > ts)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;
    const SOON: u64 = 0;

    #[test]
    fn all_streams_begun_by_a_time_must_have_ended_before_the_horizon() {
        let mut s = OpenStreams::default();
        s.began((1, 1), SOON + 10 * MS);
        s.began((1, 3), SOON + 12 * MS);
        s.began((1, 5), SOON + 20 * MS);
        assert!(!s.all_ended(SOON + 15 * MS, SOON + 30 * MS), "1 and 3 open");
        s.ended((1, 1), SOON + 10 * MS, SOON + 25 * MS);
        s.ended((1, 3), SOON + 12 * MS, SOON + 28 * MS);
        assert!(
            !s.all_ended(SOON + 15 * MS, SOON + 27 * MS),
            "3 ended after the horizon"
        );
        assert!(s.all_ended(SOON + 15 * MS, SOON + 30 * MS), "5 began later");
        assert!(!s.all_ended(SOON + 21 * MS, SOON + 30 * MS), "5 is open");
    }
}

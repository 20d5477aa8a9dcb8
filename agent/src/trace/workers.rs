//! What the worker rule knows: which threads of a multiplexing server hand requests on, and
//! which answer them.
//!
//! A server of a multiplexed protocol (HTTP/2, gRPC) reads every stream on I/O threads and runs
//! each call's handler on a worker thread of a pool (grpcio: grpc-core's poller threads read, a
//! `ThreadPoolExecutor` thread runs the handler and writes its response). The thread that read
//! a call is not the one that makes its downstream calls, so the thread rule finds nothing. A
//! synchronous worker, though, serves one call at a time and then writes its answer: the calls
//! it makes belong to the stream it writes for next. Measured on grpcio 1.85 (`strace -f` of
//! the chain's model server, then `cargo xtask causality`): the handler's thread writes its
//! stream's response alone in one `sendmsg` (HEADERS, DATA and trailers of that stream only),
//! except when grpc-core had an I/O thread flush it, or flushed it together with others.
//!
//! So a CLIENT request made by a thread that reads no multiplexed connection, in a process that
//! serves one, waits ([`Workers::wait`]) for the thread's next server write, which settles it.
//! The worker served one stream when it made the call; the candidates are the stream it wrote
//! for next, alone, if that stream's request began before the call, and every stream whose
//! request began before the call and whose answer named no worker in between (written by an I/O
//! thread, or in a write carrying several streams, or none: reset, closed), unless it came while
//! the call was out (a worker waits for its calls; not assumed in a process where a worker was
//! seen answering with a call out). Exactly one candidate is the parent; several, none, or a
//! write whose streams are unknown in between: no parent.
//!
//! What the rule cannot see: a worker whose own answer another worker flushed alone (grpc-core's
//! combiner runs queued writes on whichever thread holds it), an answer flushed after the
//! worker's next one, a handler still running after its stream was reset, a pool thread making
//! calls outside any handler. Each would give a wrong parent; measured, none did (the
//! precision figures of `docs/causality.md`), and the rule is limited to processes that serve a
//! multiplexed protocol with threads as their units of work.

use std::collections::{HashMap, HashSet, VecDeque};

use super::linker::SpanKey;

type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;
type FastSet<K> = HashSet<K, foldhash::fast::RandomState>;

/// CLIENT requests waiting per thread; the oldest are given up past this (counted).
const MAX_WAITING: usize = 64;
/// Answers that named no worker, remembered per process (older ones are forgotten, and a
/// request that began before a forgotten one gets no parent).
const MAX_UNPLACED: usize = 4096;
/// How late another thread may flush a worker's answer after the worker's next call began
/// (grpc-core runs writes queued on its combiner at the end of the holder's work: microseconds
/// when measured, bounded here with a wide margin).
const FLUSH_LATE_NS: u64 = 2_000_000;
/// How long an unplaced answer is remembered.
const UNPLACED_NS: u64 = 30_000_000_000;
/// Threads, processes and answered streams remembered; the tables are cleared past this (the
/// rule then names fewer parents for a while, never a wrong one).
const MAX_TABLE: usize = 64 * 1024;

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct WorkerStats {
    /// CLIENT requests that waited for their thread's next answer.
    pub waited: u64,
    /// … and got no parent: no candidate or several, or the thread turned out to read (an I/O
    /// thread).
    pub refused: u64,
    /// … of those, because a write whose streams are unknown came in between.
    pub refused_unknown: u64,
    /// Waiting requests given up to stay within `MAX_WAITING`.
    pub given_up: u64,
    /// Streams whose answer named no worker: written by an I/O thread or with other streams, …
    pub unplaced_answers: u64,
    /// … or not at all (the stream was reset, or its connection closed).
    pub unplaced_unanswered: u64,
    /// Writes whose streams are not all known (more than a few, bytes not placed, or a stream
    /// the agent has no span of).
    pub unknown_writes: u64,
}

/// A stream the rule may name as a parent: its SERVER span, when its request began, and what
/// the linker makes a child of it with (`P`).
#[derive(Debug, Clone)]
pub struct Stream<P> {
    pub key: SpanKey,
    pub began: u64,
    pub parent: P,
}

/// An answer that named no worker: when, and the stream (`None`: a write whose streams are not
/// all known, any stream's).
#[derive(Debug, Clone)]
struct Unplaced<P> {
    at: u64,
    stream: Option<Stream<P>>,
}

#[derive(Debug)]
struct Process<P> {
    unplaced: VecDeque<Unplaced<P>>,
    /// Unplaced answers up to this time were forgotten.
    forgotten_until: u64,
    /// A worker answered while a call it made was still out: its handlers do not wait for
    /// their calls, so a worker's call in flight proves nothing about what it answered then.
    answers_during_calls: bool,
}

impl<P> Default for Process<P> {
    fn default() -> Self {
        Self {
            unplaced: VecDeque::new(),
            forgotten_until: 0,
            answers_during_calls: false,
        }
    }
}

/// What a waiting request's candidates came to.
enum Found<'a, P> {
    None,
    One(&'a Stream<P>),
    /// Several candidates, or an answer of unknown streams in between.
    Ambiguous {
        unknown: bool,
    },
}

impl<'a, P> Found<'a, P> {
    fn add(&mut self, candidate: &'a Stream<P>) {
        *self = match std::mem::replace(self, Found::None) {
            Found::None => Found::One(candidate),
            Found::One(one) if one.key == candidate.key => Found::One(one),
            Found::One(_) => Found::Ambiguous { unknown: false },
            ambiguous @ Found::Ambiguous { .. } => ambiguous,
        };
    }
}

impl<P> Process<P> {
    fn note(&mut self, at: u64, stream: Option<Stream<P>>) {
        while self.unplaced.len() >= MAX_UNPLACED
            || self
                .unplaced
                .front()
                .is_some_and(|u| u.at.saturating_add(UNPLACED_NS) < at)
        {
            let Some(old) = self.unplaced.pop_front() else {
                break;
            };
            self.forgotten_until = self.forgotten_until.max(old.at);
        }
        self.unplaced.push_back(Unplaced { at, stream });
    }

    /// Adds to `found` the streams that began by `from` and were answered, naming no worker,
    /// between `from` and `to`, other than while one of the worker's calls was out (`busy`).
    fn unplaced_between<'a>(
        &'a self,
        (from, to): (u64, u64),
        busy: &[(u64, u64)],
        found: &mut Found<'a, P>,
    ) {
        /// Answers are noted in the order their events arrived, which is their time order
        /// give or take events of other CPUs.
        const SLACK_NS: u64 = 1_000_000_000;
        if self.forgotten_until >= from {
            *found = Found::Ambiguous { unknown: true };
            return;
        }
        let recent = self
            .unplaced
            .iter()
            .rev()
            .take_while(|u| u.at.saturating_add(SLACK_NS) >= from);
        for u in recent {
            if u.at < from || u.at > to || busy.iter().any(|&(a, b)| a < u.at && u.at < b) {
                continue;
            }
            match &u.stream {
                None => {
                    *found = Found::Ambiguous { unknown: true };
                    return;
                }
                Some(stream) if stream.began <= from => found.add(stream),
                Some(_) => {}
            }
        }
    }
}

/// A worker's write: the stream it answered alone, or the streams of a write carrying several
/// (`unknown`: not all of them known).
#[derive(Debug)]
pub enum Written<P> {
    Alone(Stream<P>),
    Several {
        streams: Vec<Stream<P>>,
        unknown: bool,
    },
}

#[derive(Debug)]
pub struct Workers<P> {
    /// Processes serving a multiplexed protocol, with threads as units of work.
    serving: FastSet<u32>,
    /// (pid, tid) of threads that read multiplexed connections.
    io_threads: FastSet<(u32, u32)>,
    /// CLIENT requests per (pid, tid) waiting for the thread's next answer, with when each
    /// began.
    waiting: FastMap<(u32, u32), Vec<(SpanKey, u64)>>,
    processes: FastMap<u32, Process<P>>,
    /// SERVER spans of multiplexed connections some write carried frames of.
    answered: FastSet<SpanKey>,
    pub stats: WorkerStats,
}

impl<P> Default for Workers<P> {
    fn default() -> Self {
        Self {
            serving: FastSet::default(),
            io_threads: FastSet::default(),
            waiting: FastMap::default(),
            processes: FastMap::default(),
            answered: FastSet::default(),
            stats: WorkerStats::default(),
        }
    }
}

impl<P: Clone> Workers<P> {
    /// `pid` read a request on a multiplexed connection and runs its work on threads.
    pub fn serves(&mut self, pid: u32) {
        if self.serving.len() >= MAX_TABLE {
            self.serving.clear();
        }
        self.serving.insert(pid);
    }

    /// Whether a CLIENT request by thread `tid` of `pid` may wait for the thread's next answer.
    #[must_use]
    pub fn applies(&self, pid: u32, tid: u32) -> bool {
        self.serving.contains(&pid) && !self.io_threads.contains(&(pid, tid))
    }

    /// The CLIENT request `key`, begun at `ts` by thread `tid`, waits.
    pub fn wait(&mut self, pid: u32, tid: u32, key: SpanKey, ts: u64) {
        if self.waiting.len() >= MAX_TABLE {
            self.stats.given_up += self.waiting.values().map(|w| w.len() as u64).sum::<u64>();
            self.waiting.clear();
        }
        let list = self.waiting.entry((pid, tid)).or_default();
        if list.len() >= MAX_WAITING {
            list.remove(0);
            self.stats.given_up += 1;
        }
        list.push((key, ts));
        self.stats.waited += 1;
    }

    /// Thread `tid` of `pid` read a multiplexed connection: an I/O thread, whose writes name no
    /// worker and whose calls wait for nothing.
    pub fn read_by(&mut self, pid: u32, tid: u32) {
        if self.io_threads.contains(&(pid, tid)) {
            return;
        }
        if self.io_threads.len() >= MAX_TABLE {
            self.io_threads.clear();
        }
        self.io_threads.insert((pid, tid));
        if let Some(waiting) = self.waiting.remove(&(pid, tid)) {
            self.stats.refused += waiting.len() as u64;
        }
    }

    /// Thread `tid` of `pid` wrote, at `at`, response frames of the streams in `written`.
    /// Returns, when it is a worker, the requests it made since its last answer, each with its
    /// parent if the rule names one; `end_of` tells when each ended (`None`: still out).
    pub fn answer(
        &mut self,
        pid: u32,
        tid: u32,
        at: u64,
        written: Written<P>,
        end_of: impl Fn(SpanKey) -> Option<u64>,
    ) -> Vec<(SpanKey, Option<P>)> {
        let io_thread = self.io_threads.contains(&(pid, tid));
        let alone = match written {
            Written::Alone(stream) => {
                self.note_answered(stream.key);
                if io_thread {
                    self.unplaced(pid, at, Some(stream));
                    None
                } else {
                    Some(stream)
                }
            }
            Written::Several { streams, unknown } => {
                for stream in streams {
                    self.note_answered(stream.key);
                    self.unplaced(pid, at, Some(stream));
                }
                if unknown {
                    self.stats.unknown_writes += 1;
                    self.unplaced(pid, at, None);
                }
                None
            }
        };
        if io_thread {
            return Vec::new();
        }
        let Some(waiting) = self.waiting.remove(&(pid, tid)) else {
            return Vec::new();
        };
        let ends: Vec<Option<u64>> = waiting.iter().map(|&(key, _)| end_of(key)).collect();
        let process = self.processes.entry(pid).or_default();
        if alone.is_some() && ends.iter().any(|end| end.is_none_or(|end| end > at)) {
            process.answers_during_calls = true;
        }
        let process = &*process;
        // While its calls were out, the worker waited for them: what was answered then was not
        // its own. Except just after a later call began: an answer the worker wrote before it
        // may be flushed by another thread a little later.
        let busy = |own: u64| -> Vec<(u64, u64)> {
            if process.answers_during_calls {
                return Vec::new();
            }
            waiting
                .iter()
                .zip(&ends)
                .filter_map(|(&(_, ts), end)| {
                    let from = if ts == own { ts } else { ts + FLUSH_LATE_NS };
                    end.filter(|&end| end > from).map(|end| (from, end))
                })
                .collect()
        };
        let mut out = Vec::with_capacity(waiting.len());
        for &(key, ts) in &waiting {
            let mut found = Found::None;
            if let Some(stream) = alone.as_ref().filter(|s| s.began <= ts) {
                found.add(stream);
            }
            process.unplaced_between((ts, at), &busy(ts), &mut found);
            let parent = match found {
                Found::One(stream) => Some(stream.parent.clone()),
                Found::None => None,
                Found::Ambiguous { unknown } => {
                    if unknown {
                        self.stats.refused_unknown += 1;
                    }
                    None
                }
            };
            if parent.is_none() {
                self.stats.refused += 1;
            }
            out.push((key, parent));
        }
        out
    }

    /// A SERVER span of a multiplexed connection in `pid` ended at `at`: if no write carried
    /// its frames (reset, closed), its worker is unknown.
    pub fn ended(&mut self, pid: u32, stream: Stream<P>, at: u64) {
        if !self.answered.remove(&stream.key) && self.serving.contains(&pid) {
            self.stats.unplaced_unanswered += 1;
            self.unplaced(pid, at, Some(stream));
        }
    }

    fn note_answered(&mut self, key: SpanKey) {
        if self.answered.len() >= MAX_TABLE {
            self.answered.clear();
        }
        self.answered.insert(key);
    }

    fn unplaced(&mut self, pid: u32, at: u64, stream: Option<Stream<P>>) {
        if stream.is_some() {
            self.stats.unplaced_answers += 1;
        }
        if self.processes.len() >= MAX_TABLE && !self.processes.contains_key(&pid) {
            self.processes.clear();
        }
        self.processes.entry(pid).or_default().note(at, stream);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const C1: SpanKey = (2, 10);
    const C2: SpanKey = (2, 20);

    /// Stream `id` of connection 1, begun at `began`; its parent is named by its id.
    fn stream(id: u64, began: u64) -> Stream<u64> {
        Stream {
            key: (1, id),
            began,
            parent: id,
        }
    }

    fn alone(id: u64, began: u64) -> Written<u64> {
        Written::Alone(stream(id, began))
    }

    /// Every call ended before anything the tests look at (at time 0).
    const ENDED_EARLY: fn(SpanKey) -> Option<u64> = |_| Some(0);

    /// A process (7) serving, with an I/O thread (100).
    fn workers() -> Workers<u64> {
        let mut w = Workers::default();
        w.serves(7);
        w.read_by(7, 100);
        w
    }

    #[test]
    fn a_workers_calls_belong_to_the_stream_it_answers_next() {
        let mut w = workers();
        assert!(w.applies(7, 200));
        assert!(!w.applies(7, 100), "an I/O thread");
        assert!(
            !w.applies(8, 200),
            "a process serving no multiplexed protocol"
        );
        w.wait(7, 200, C1, 20);
        w.wait(7, 200, C2, 30);
        let settled = w.answer(7, 200, 40, alone(1, 10), ENDED_EARLY);
        assert_eq!(settled, vec![(C1, Some(1)), (C2, Some(1))]);
        assert_eq!(w.answer(7, 200, 50, alone(3, 45), ENDED_EARLY), vec![]);
        w.ended(7, stream(1, 10), 40);
        assert_eq!(
            w.stats.unplaced_unanswered, 0,
            "1 was answered by its write"
        );
    }

    #[test]
    fn a_stream_begun_after_the_call_or_several_streams_name_no_parent() {
        let mut w = workers();
        w.wait(7, 200, C1, 20);
        let settled = w.answer(7, 200, 40, alone(1, 25), ENDED_EARLY);
        assert_eq!(settled, vec![(C1, None)], "1 began after C1");
        w.wait(7, 200, C2, 50);
        let several = Written::Several {
            streams: vec![stream(3, 45), stream(5, 46)],
            unknown: false,
        };
        let settled = w.answer(7, 200, 60, several, ENDED_EARLY);
        assert_eq!(settled, vec![(C2, None)], "3 or 5");
    }

    #[test]
    fn an_answer_naming_no_worker_in_between_is_a_candidate_too() {
        let mut w = workers();
        // The I/O thread writes 3's answer while the worker's call is out of the picture: the
        // worker may have been serving 3 as well as 1.
        w.wait(7, 200, C1, 20);
        assert_eq!(w.answer(7, 100, 30, alone(3, 5), ENDED_EARLY), vec![]);
        let settled = w.answer(7, 200, 40, alone(1, 10), ENDED_EARLY);
        assert_eq!(settled, vec![(C1, None)]);
        // A stream that began after the call cannot have been the worker's: no matter.
        w.wait(7, 200, C2, 50);
        assert_eq!(w.answer(7, 100, 55, alone(3, 52), ENDED_EARLY), vec![]);
        let settled = w.answer(7, 200, 60, alone(1, 45), ENDED_EARLY);
        assert_eq!(settled, vec![(C2, Some(1))]);
        // The worker's next answer is for a stream begun after its call: the one unplaced
        // answer in between, begun before, was its own.
        w.wait(7, 200, C1, 70);
        assert_eq!(w.answer(7, 100, 75, alone(9, 65), ENDED_EARLY), vec![]);
        let settled = w.answer(7, 200, 80, alone(11, 76), ENDED_EARLY);
        assert_eq!(settled, vec![(C1, Some(9))]);
        // A stream reset without an answer counts as one.
        w.wait(7, 200, C2, 90);
        w.ended(7, stream(13, 85), 95);
        let settled = w.answer(7, 200, 100, alone(15, 96), ENDED_EARLY);
        assert_eq!(settled, vec![(C2, Some(13))]);
        // A write of unknown streams in between: any of them may have been the worker's.
        w.wait(7, 200, C1, 110);
        let unknown = Written::Several {
            streams: vec![],
            unknown: true,
        };
        assert_eq!(w.answer(7, 100, 115, unknown, ENDED_EARLY), vec![]);
        let settled = w.answer(7, 200, 120, alone(17, 105), ENDED_EARLY);
        assert_eq!(settled, vec![(C1, None)]);
        assert_eq!(w.stats.refused_unknown, 1);
    }

    #[test]
    fn an_unplaced_answer_while_the_worker_waited_for_its_call_was_not_its_own() {
        let mut w = workers();
        // C1 is out from 20 to 35; 3's answer, unplaced, comes at 30: not the worker's.
        w.wait(7, 200, C1, 20);
        assert_eq!(w.answer(7, 100, 30, alone(3, 5), ENDED_EARLY), vec![]);
        let out = |key: SpanKey| (key == C1).then_some(35);
        let settled = w.answer(7, 200, 40, alone(1, 10), out);
        assert_eq!(settled, vec![(C1, Some(1))]);
        // An answer while a call is still out: handlers here do not wait for their calls, and
        // a call out proves nothing from then on.
        w.wait(7, 200, C2, 50);
        let settled = w.answer(7, 200, 60, alone(1, 45), |_| None);
        assert_eq!(settled, vec![(C2, Some(1))]);
        w.wait(7, 200, C1, 70);
        assert_eq!(w.answer(7, 100, 75, alone(3, 65), ENDED_EARLY), vec![]);
        let out = |key: SpanKey| (key == C1).then_some(78);
        let settled = w.answer(7, 200, 80, alone(1, 66), out);
        assert_eq!(settled, vec![(C1, None)]);
    }

    #[test]
    fn a_workers_two_calls_rule_out_what_was_answered_while_either_was_out() {
        const MS: u64 = 1_000_000;
        let mut w = workers();
        // C1 (20–30 ms) for stream 9, answered by the I/O thread at 32; C2 (40–50) for 11,
        // while 5 (begun before both) is answered unplaced at 45; the worker answers 11 at 60.
        w.wait(7, 200, C1, 20 * MS);
        w.wait(7, 200, C2, 40 * MS);
        assert_eq!(
            w.answer(7, 100, 32 * MS, alone(9, 15 * MS), ENDED_EARLY),
            vec![]
        );
        assert_eq!(w.answer(7, 100, 45 * MS, alone(5, MS), ENDED_EARLY), vec![]);
        let out = |key: SpanKey| Some(if key == C1 { 30 * MS } else { 50 * MS });
        let settled = w.answer(7, 200, 60 * MS, alone(11, 35 * MS), out);
        assert_eq!(settled, vec![(C1, Some(9)), (C2, Some(11))]);
        // Just after C2 began (41 ms), 5's answer may be the worker's own, flushed late.
        w.wait(7, 200, C1, 70 * MS);
        w.wait(7, 200, C2, 90 * MS);
        assert_eq!(
            w.answer(7, 100, 82 * MS, alone(9, 65 * MS), ENDED_EARLY),
            vec![]
        );
        assert_eq!(
            w.answer(7, 100, 91 * MS, alone(5, 60 * MS), ENDED_EARLY),
            vec![]
        );
        let out = |key: SpanKey| Some(if key == C1 { 80 * MS } else { 100 * MS });
        let settled = w.answer(7, 200, 110 * MS, alone(11, 85 * MS), out);
        assert_eq!(settled, vec![(C1, None), (C2, Some(11))]);
    }

    #[test]
    fn a_thread_found_reading_drops_what_it_waited_for() {
        let mut w = workers();
        w.wait(7, 300, C1, 20);
        w.read_by(7, 300);
        assert!(!w.applies(7, 300));
        assert_eq!(w.answer(7, 300, 40, alone(1, 10), ENDED_EARLY), vec![]);
        assert_eq!(w.stats.refused, 1);
    }

    #[test]
    fn forgotten_answers_rule_out_what_began_before_them() {
        let mut p = Process::default();
        for at in 0..=MAX_UNPLACED as u64 {
            p.note(100 + at, Some(stream(at, 1_000_000)));
        }
        let found = |p: &Process<u64>, window| {
            let mut found = Found::None;
            p.unplaced_between(window, &[], &mut found);
            match found {
                Found::None => "none",
                Found::One(_) => "one",
                Found::Ambiguous { .. } => "ambiguous",
            }
        };
        assert_eq!(found(&p, (50, 60)), "ambiguous", "forgotten up to 100");
        assert_eq!(
            found(&p, (200, 300)),
            "none",
            "only later streams in between"
        );
        p.note(UNPLACED_NS * 2, Some(stream(1, 0)));
        assert_eq!(found(&p, (UNPLACED_NS, UNPLACED_NS * 3)), "one");
        assert_eq!(found(&p, (UNPLACED_NS * 2 + 1, UNPLACED_NS * 3)), "none");
    }
}

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
//! seen answering with a call out). Exactly one candidate is the parent, and is claimed: a
//! stream has one worker, so it is no other's candidate. Several: the request waits
//! (`UNDECIDED_NS`) for other workers' claims to leave one. None, or a write whose streams are
//! unknown in between: no parent.
//!
//! A worker seen answering while a call of its own was still out runs several handlers at once
//! (an event loop): it is no worker from then on. Answers are settled a little after the
//! worker's write (`SETTLE_NS` of event time), so that what other CPUs wrote just before it has
//! arrived; lost events (a full ring) and forgotten tables make every earlier window unknown.
//!
//! What the rule cannot see: a worker whose own answer another worker flushed alone (grpc-core's
//! combiner runs queued writes on whichever thread holds it), an answer flushed after the
//! worker's next one, a handler still running after its stream was reset, a pool thread making
//! calls outside any handler, an answer on a connection the agent does not read (TLS through
//! grpcio's own BoringSSL). Each would give a wrong parent; measured, none did (the precision
//! figures of `docs/causality.md`). So the rule applies only where it was measured: grpcio
//! processes (`cygrpc` mapped, [`Workers::allow`]).
//!
//! A worker whose answer an I/O thread flushed may write nothing more for a long time (no
//! request came to it since): its calls would wait until exported, parentless. They are decided
//! without its write once every stream that began by the call has ended ([`OpenStreams`]): its
//! own stream is then among the answers seen, and the candidates are the same as above, the
//! window ending at that time. Only in a process where every stream is known to the agent.

use std::{
    cell::Cell,
    collections::{HashMap, HashSet, VecDeque},
};

use super::linker::SpanKey;
use super::open_streams::{INCOMPLETE_NS, OpenStreams};

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
/// How long after a worker's write its requests are settled, in event time: events reach the
/// agent in the order their syscalls returned, a write is timed at its entry, and another
/// CPU's write that entered before this one may still be on its way.
pub const SETTLE_NS: u64 = 2_000_000;
/// How long (event time) a request with several candidates waits for other workers' claims to
/// leave it one: well within the link delay its span waits for.
const UNDECIDED_NS: u64 = 200_000_000;
/// Requests waiting so, at most (more are refused at once).
const MAX_UNDECIDED: usize = 4096;
/// Other workers looked at (one handler each) when setting aside the streams they must have
/// served, and candidate sets larger than `MAX_SET` left out: the decision stays cheap however
/// many wait.
const MAX_PEERS: usize = 32;
const MAX_SET: usize = 8;
/// Streams remembered per process as pointed at by more handlers than there were streams.
const MAX_OVERSUBSCRIBED: usize = 64;
/// How long an unplaced answer is remembered.
const UNPLACED_NS: u64 = 30_000_000_000;
/// Threads, processes and answered streams remembered; past this everything is forgotten and
/// earlier windows are unknown (the rule then names fewer parents for a while, never a wrong
/// one).
const MAX_TABLE: usize = 64 * 1024;

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct WorkerStats {
    /// CLIENT requests that waited for their thread's next answer.
    pub waited: u64,
    /// … and got no parent: no candidate or several, or the thread turned out to read (an I/O
    /// thread) or to answer with a call out (an event loop).
    pub refused: u64,
    /// … of those, because a write whose streams are unknown (or lost events) came in between.
    pub refused_unknown: u64,
    /// Waiting requests given up to stay within `MAX_WAITING`, or exported before their
    /// thread answered.
    pub given_up: u64,
    /// Streams whose answer named no worker: written by an I/O thread or with other streams, …
    pub unplaced_answers: u64,
    /// … or not at all (the stream was reset, or its connection closed).
    pub unplaced_unanswered: u64,
    /// Writes whose streams are not all known (more than a few, bytes not placed, or a stream
    /// the agent has no span of).
    pub unknown_writes: u64,
    /// Threads found answering while a call of theirs was out: no workers.
    pub interleaving_threads: u64,
    /// Times the tables were forgotten (full, or events lost).
    pub forgotten: u64,
    /// Times the rule stopped for every process, its thread tables full.
    pub stopped: u64,
    /// Requests decided without their worker's answer, once every stream that began by them
    /// had ended.
    pub decided_by_ends: u64,
    /// Requests refused with several candidates (linked to each).
    pub several: u64,
    /// Requests whose candidates came to one once the streams other workers must have served
    /// were set aside.
    pub decided_by_elimination: u64,
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
    /// The worker (tid) the rule found it was, once it found one: a worker serves one stream at
    /// a time and a stream has one worker, so it is no other's candidate.
    claimed_by: Option<u32>,
}

#[derive(Debug)]
struct Process<P> {
    /// In order of `at`.
    unplaced: VecDeque<Unplaced<P>>,
    /// Unplaced answers up to this time were forgotten.
    forgotten_until: u64,
    /// A worker answered while a call it made was still out: handlers here may not wait for
    /// their calls, so a call out proves nothing about what was answered then.
    answers_during_calls: bool,
    /// Streams more handlers pointed at than there were streams (a worker served one the
    /// agent did not place): never set aside as others', never the one left (oldest dropped
    /// past `MAX_OVERSUBSCRIBED`).
    oversubscribed: VecDeque<SpanKey>,
    /// Bumped when a stream is claimed or a request starts waiting for claims: an undecided
    /// request is looked at again only then (or at its deadline).
    epoch: u64,
}

impl<P> Default for Process<P> {
    fn default() -> Self {
        Self {
            unplaced: VecDeque::new(),
            forgotten_until: 0,
            answers_during_calls: false,
            oversubscribed: VecDeque::new(),
            epoch: 0,
        }
    }
}

/// What a waiting request's candidates came to.
enum Found<'a, P> {
    None,
    One(&'a Stream<P>),
    /// Several candidates.
    Several(Vec<&'a Stream<P>>),
    /// An answer of unknown streams in between.
    Unknown,
}

impl<'a, P> Found<'a, P> {
    fn add(&mut self, candidate: &'a Stream<P>) {
        *self = match std::mem::replace(self, Found::None) {
            Found::None => Found::One(candidate),
            Found::One(one) if one.key == candidate.key => Found::One(one),
            Found::One(one) => Found::Several(vec![one, candidate]),
            Found::Several(mut several) => {
                if several.iter().all(|s| s.key != candidate.key) {
                    several.push(candidate);
                }
                Found::Several(several)
            }
            Found::Unknown => Found::Unknown,
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
        // Nearly always at the back: events arrive about in time order.
        let at_index =
            self.unplaced.len() - self.unplaced.iter().rev().take_while(|u| u.at > at).count();
        self.unplaced.insert(
            at_index,
            Unplaced {
                at,
                stream,
                claimed_by: None,
            },
        );
    }

    /// Adds to `found` the streams that began by `from` and were answered, naming no worker,
    /// between `from` and `to`, other than while one of the worker's calls was out (`busy`),
    /// and not found to be another worker's than `tid`.
    fn unplaced_between<'a>(
        &'a self,
        tid: u32,
        (from, to): (u64, u64),
        busy: &[(u64, u64)],
        found: &mut Found<'a, P>,
    ) {
        if self.forgotten_until >= from {
            *found = Found::Unknown;
            return;
        }
        let first = self.unplaced.partition_point(|u| u.at < from);
        for u in self.unplaced.range(first..) {
            if u.at > to {
                break;
            }
            if busy.iter().any(|&(a, b)| a < u.at && u.at < b)
                || u.claimed_by.is_some_and(|other| other != tid)
            {
                continue;
            }
            match &u.stream {
                None => {
                    *found = Found::Unknown;
                    return;
                }
                Some(stream) if stream.began <= from => found.add(stream),
                Some(_) => {}
            }
        }
    }
}

impl<P> Process<P> {
    /// The streams the handler that made `u` may have served, as far as this process's
    /// answers tell.
    fn candidates<'a>(&'a self, u: &'a Undecided<P>) -> Found<'a, P> {
        let mut found = Found::None;
        if let Some(stream) = &u.alone {
            found.add(stream);
        }
        self.unplaced_between(u.tid, (u.ts, u.at), &u.busy, &mut found);
        found
    }

    /// The streams other workers must have served, by their candidates alone: when the
    /// candidates of k other workers' handlers (requests of other threads than `u`'s, among
    /// `others` not marked `gone`, one per thread) all lie within k streams, those k streams
    /// are theirs, a stream having one worker and a worker serving one stream at a time. Only
    /// where every stream is known (the process complete after `complete_after`): a worker
    /// serving a stream the agent never saw would break the premise that its stream is among
    /// its candidates.
    fn served_by_others(
        &self,
        u: &Undecided<P>,
        own: Vec<SpanKey>,
        (others, gone): (&[Undecided<P>], &[bool]),
        complete_after: u64,
    ) -> Aside {
        if own.len() > MAX_SET || u.ts <= complete_after {
            return Aside::Unsure;
        }
        let mut handlers: Vec<(u32, Vec<SpanKey>)> = vec![(u.tid, own)];
        let peers = others
            .iter()
            .zip(gone.iter().copied().chain(std::iter::repeat(false)))
            .filter(|(o, gone)| !gone && o.pid == u.pid && o.tid != u.tid)
            .map(|(o, _)| o);
        for o in peers {
            if handlers.len() > MAX_PEERS {
                break;
            }
            // One handler per thread: two of the same thread might be one handler split
            // across windows, counted twice.
            if o.ts <= complete_after || handlers.iter().any(|(tid, _)| *tid == o.tid) {
                continue;
            }
            let keys = match self.candidates(o) {
                Found::One(stream) => vec![stream.key],
                Found::Several(several) if several.len() <= MAX_SET => {
                    several.iter().map(|s| s.key).collect()
                }
                Found::Several(_) => continue,
                // A handler with no candidate left (or unknown ones) nearby: the premise
                // failed somewhere here.
                Found::None | Found::Unknown => return Aside::Unsure,
            };
            handlers.push((o.tid, keys));
        }
        let mut reserved: Vec<SpanKey> = Vec::new();
        for (i, (_, set)) in handlers.iter().enumerate() {
            let inside = |(_, other): &&(u32, Vec<SpanKey>)| other.iter().all(|k| set.contains(k));
            let within = handlers.iter().filter(inside).count();
            if within > set.len() {
                return Aside::Broken(set.clone());
            }
            // A group holding `u` says nothing of the others.
            let holds_u = i == 0 || inside(&&handlers[0]);
            if within == set.len() && !holds_u {
                for key in set {
                    if !reserved.contains(key) {
                        reserved.push(*key);
                    }
                }
            }
        }
        Aside::Reserved(reserved)
    }
}

/// What other workers' candidates say of a request's ([`Process::served_by_others`]).
enum Aside {
    /// These streams are other workers'.
    Reserved(Vec<SpanKey>),
    /// Nothing can be said (candidates too many, a process that may hide a stream, a
    /// handler whose premise failed).
    Unsure,
    /// More handlers than streams point at these streams: the rule's premise does not hold.
    Broken(Vec<SpanKey>),
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

/// Where a waiting request stands when its worker's answer is settled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Call {
    /// Its response has not come.
    Out,
    /// Its response came at this time.
    Ended(u64),
    /// Its span is gone (exported): unknown.
    Gone,
}

/// A waiting request being decided: its worker, when it began and when its worker answered,
/// the stream answered alone (if it began before the request), and when the worker waited for
/// its calls.
#[derive(Debug)]
struct Undecided<P> {
    pid: u32,
    tid: u32,
    key: SpanKey,
    ts: u64,
    at: u64,
    alone: Option<Stream<P>>,
    busy: Vec<(u64, u64)>,
    /// Its process's `epoch` when it was last decided.
    epoch: Cell<u64>,
}

/// What a request's candidates came to.
enum Decided<P> {
    Parent(P),
    /// No candidate.
    None,
    /// Several known candidates: another worker may yet claim all but one.
    Several,
    /// A write of unknown streams (or forgotten events) in between.
    Unknown,
}

/// A worker's answer whose requests are settled once the events up to a little after it came.
#[derive(Debug)]
struct Pending<P> {
    pid: u32,
    tid: u32,
    at: u64,
    alone: Option<Stream<P>>,
    waiting: Vec<(SpanKey, u64)>,
}

#[derive(Debug)]
pub struct Workers<P> {
    /// Processes the rule was measured on (grpcio): only these are followed.
    allowed: FastSet<u32>,
    /// Processes serving a multiplexed protocol, with threads as units of work.
    serving: FastSet<u32>,
    /// (pid, tid) of threads that read multiplexed connections.
    io_threads: FastSet<(u32, u32)>,
    /// (pid, tid) of threads seen answering while a call of theirs was out.
    interleaving: FastSet<(u32, u32)>,
    /// CLIENT requests per (pid, tid) waiting for the thread's next answer, with when each
    /// began.
    waiting: FastMap<(u32, u32), Vec<(SpanKey, u64)>>,
    /// Answers whose requests are settled later (`SETTLE_NS`), in order.
    pending: VecDeque<Pending<P>>,
    /// Requests left with several candidates, decided again as other workers claim streams.
    undecided: Vec<Undecided<P>>,
    processes: FastMap<u32, Process<P>>,
    /// SERVER spans of multiplexed connections some write carried frames of.
    answered: FastSet<SpanKey>,
    /// Streams not ended yet, per serving process.
    open: FastMap<u32, OpenStreams>,
    /// Requests refused with several candidates, and those candidates' parents.
    one_of: Vec<(SpanKey, Vec<P>)>,
    /// Processes with connections opened before the agent watched were reported: until then,
    /// no request is decided by ends.
    swept: bool,
    /// Until when (event time) each process may have a stream the agent does not know.
    incomplete: FastMap<u32, u64>,
    /// … and every process (events lost, or too many processes to tell apart).
    incomplete_all_until: u64,
    /// Server connections of followed processes whose streams the agent cannot read (given
    /// up, or not parsed: TLS it cannot read, another protocol), and how many each process
    /// has: while one lives, its process may hide a stream.
    hiding: FastMap<u64, u32>,
    hiding_per_process: FastMap<u32, u32>,
    pub stats: WorkerStats,
}

impl<P> Default for Workers<P> {
    fn default() -> Self {
        Self {
            allowed: FastSet::default(),
            serving: FastSet::default(),
            io_threads: FastSet::default(),
            interleaving: FastSet::default(),
            waiting: FastMap::default(),
            pending: VecDeque::new(),
            undecided: Vec::new(),
            processes: FastMap::default(),
            answered: FastSet::default(),
            open: FastMap::default(),
            one_of: Vec::new(),
            swept: false,
            incomplete: FastMap::default(),
            incomplete_all_until: 0,
            hiding: FastMap::default(),
            hiding_per_process: FastMap::default(),
            stats: WorkerStats::default(),
        }
    }
}

impl<P: Clone> Workers<P> {
    /// `pid` runs grpcio: the rule follows it.
    pub fn allow(&mut self, pid: u32) {
        if self.allowed.len() >= MAX_TABLE {
            self.stop();
        }
        self.allowed.insert(pid);
    }

    /// `pid` exited, or runs something else now.
    pub fn disallow(&mut self, pid: u32) {
        if self.allowed.remove(&pid) {
            self.serving.remove(&pid);
            self.processes.remove(&pid);
            self.open.remove(&pid);
            self.io_threads.retain(|&(p, _)| p != pid);
            self.interleaving.retain(|&(p, _)| p != pid);
            self.waiting.retain(|&(p, _), _| p != pid);
            self.pending.retain(|a| a.pid != pid);
            self.undecided.retain(|u| u.pid != pid);
            self.hiding.retain(|_, p| *p != pid);
            self.hiding_per_process.remove(&pid);
        }
    }

    /// Server connection `conn_id` of `pid` carries streams the agent cannot read: until it
    /// closes, `pid` may have a stream the agent does not know.
    pub fn hides_streams(&mut self, pid: u32, conn_id: u64) {
        if !self.allowed.contains(&pid) || self.hiding.contains_key(&conn_id) {
            return;
        }
        if self.hiding.len() >= MAX_TABLE {
            // Too many to follow one by one (closes missed): a connection forgotten would
            // hide its streams unnoticed, so the rule stops instead.
            self.stop();
            return;
        }
        self.hiding.insert(conn_id, pid);
        *self.hiding_per_process.entry(pid).or_default() += 1;
    }

    /// Connection `conn_id` closed at `at`: requests begun while it hid streams stay
    /// undecidable by what is known (its streams ended unseen).
    pub fn conn_closed(&mut self, conn_id: u64, at: u64) {
        let Some(pid) = self.hiding.remove(&conn_id) else {
            return;
        };
        self.incomplete(pid, at);
        if let Some(count) = self.hiding_per_process.get_mut(&pid) {
            *count -= 1;
            if *count == 0 {
                self.hiding_per_process.remove(&pid);
            }
        }
    }

    /// `pid` read a request on a multiplexed connection and runs its work on threads.
    pub fn serves(&mut self, pid: u32) {
        if self.allowed.contains(&pid) {
            self.serving.insert(pid);
        }
    }

    /// Every process with a connection opened before the agent watched it was reported
    /// ([`Workers::incomplete`]).
    /// Processes no longer incomplete at `now` are forgotten.
    pub fn swept(&mut self, now: u64) {
        self.swept = true;
        // A request begun before an `until` is judged by it as long as it may wait (until its
        // span is exported, well within this).
        self.incomplete
            .retain(|_, until| until.saturating_add(INCOMPLETE_NS) > now);
    }

    /// Stream `key` of `pid` (which [`Workers::serves`]) began at `ts`.
    pub fn began(&mut self, pid: u32, key: SpanKey, ts: u64) {
        if self.serving.contains(&pid) {
            self.open.entry(pid).or_default().began(key, ts);
        }
    }

    /// At `at`, `pid` may have a stream the agent does not know (a connection it did not see
    /// open or does not parse, bytes it could not place, a span it had no room for).
    /// Any process: it may be allowed later.
    pub fn incomplete(&mut self, pid: u32, at: u64) {
        let until = at.saturating_add(INCOMPLETE_NS);
        if self.incomplete.len() >= MAX_TABLE && !self.incomplete.contains_key(&pid) {
            // Too many to remember one by one: every process, for as long.
            self.incomplete.clear();
            self.incomplete_all_until = self.incomplete_all_until.max(until);
            return;
        }
        let known = self.incomplete.entry(pid).or_insert(0);
        *known = (*known).max(until);
    }

    /// Until when (event time) `pid` may have a stream the agent does not know.
    fn incomplete_until(&self, pid: u32) -> u64 {
        if self.hiding_per_process.contains_key(&pid) {
            return u64::MAX;
        }
        self.incomplete
            .get(&pid)
            .copied()
            .unwrap_or(0)
            .max(self.incomplete_all_until)
    }

    /// Whether a CLIENT request by thread `tid` of `pid` may wait for the thread's next answer.
    #[must_use]
    pub fn applies(&self, pid: u32, tid: u32) -> bool {
        self.serving.contains(&pid)
            && !self.io_threads.contains(&(pid, tid))
            && !self.interleaving.contains(&(pid, tid))
    }

    /// The CLIENT request `key`, begun at `ts` by thread `tid`, waits.
    pub fn wait(&mut self, pid: u32, tid: u32, key: SpanKey, ts: u64) {
        if self.waiting.len() >= MAX_TABLE {
            self.forget_all(ts);
        }
        let list = self.waiting.entry((pid, tid)).or_default();
        if list.len() >= MAX_WAITING {
            list.remove(0);
            self.stats.given_up += 1;
        }
        list.push((key, ts));
        self.stats.waited += 1;
    }

    /// The waiting request `key` of thread `tid` is exported before its thread answered.
    pub fn exported(&mut self, pid: u32, tid: u32, key: SpanKey) {
        if let Some(list) = self.waiting.get_mut(&(pid, tid))
            && let Some(at) = list.iter().position(|&(k, _)| k == key)
        {
            list.remove(at);
            self.stats.given_up += 1;
            if list.is_empty() {
                self.waiting.remove(&(pid, tid));
            }
        }
    }

    /// Thread `tid` of `pid` read a multiplexed connection: an I/O thread, whose writes name no
    /// worker and whose calls wait for nothing.
    pub fn read_by(&mut self, pid: u32, tid: u32) {
        if !self.allowed.contains(&pid) || self.io_threads.contains(&(pid, tid)) {
            return;
        }
        if self.io_threads.len() >= MAX_TABLE {
            // A thread that reads must never pass for a worker: the rule stops instead.
            self.stop();
            return;
        }
        self.io_threads.insert((pid, tid));
        self.not_a_worker(pid, tid);
    }

    /// Thread `tid` of `pid` turned out to read or to run several handlers at once: what it
    /// waited for, or left undecided, gets no parent, and it is no handler to set streams
    /// aside for.
    fn not_a_worker(&mut self, pid: u32, tid: u32) {
        let mut refused = self.waiting.remove(&(pid, tid)).map_or(0, |w| w.len());
        self.pending.retain(|p| {
            let theirs = p.pid == pid && p.tid == tid;
            if theirs {
                refused += p.waiting.len();
            }
            !theirs
        });
        let before = self.undecided.len();
        self.undecided.retain(|u| u.pid != pid || u.tid != tid);
        refused += before - self.undecided.len();
        self.stats.refused += refused as u64;
    }

    /// Events were lost (the ring was full) up to `now`: what was answered before is unknown.
    pub fn lost_events(&mut self, now: u64) {
        self.incomplete_all_until = self
            .incomplete_all_until
            .max(now.saturating_add(INCOMPLETE_NS));
        for process in self.processes.values_mut() {
            process.forgotten_until = process.forgotten_until.max(now);
        }
        for pid in &self.serving {
            let process = self.processes.entry(*pid).or_default();
            process.forgotten_until = process.forgotten_until.max(now);
        }
        self.stats.forgotten += 1;
    }

    /// A table is full: what waits and what was answered is forgotten, and windows that began
    /// before `now` are unknown. The threads known to read or interleave are kept.
    fn forget_all(&mut self, now: u64) {
        self.stats.given_up += self.waiting.values().map(|w| w.len() as u64).sum::<u64>();
        self.waiting.clear();
        self.pending.clear();
        self.stats.refused += self.undecided.len() as u64;
        self.undecided.clear();
        self.answered.clear();
        self.processes.clear();
        self.lost_events(now);
    }

    /// The threads' tables are full: the rule stops for every process (counted), since a thread
    /// it cannot remember might pass for a worker.
    fn stop(&mut self) {
        self.forget_all(0);
        self.allowed.clear();
        self.serving.clear();
        self.io_threads.clear();
        self.interleaving.clear();
        self.open.clear();
        self.hiding.clear();
        self.hiding_per_process.clear();
        self.stats.stopped += 1;
    }

    /// Thread `tid` of `pid` wrote, at `at`, response frames of the streams in `written`. The
    /// requests it made since its last answer are settled later ([`Workers::settle`]).
    pub fn answer(&mut self, pid: u32, tid: u32, at: u64, written: Written<P>) {
        if !self.serving.contains(&pid) {
            return;
        }
        let io_thread = self.io_threads.contains(&(pid, tid));
        let alone = match written {
            Written::Alone(stream) => {
                self.note_answered(stream.key, at);
                if io_thread {
                    self.unplaced(pid, at, Some(stream));
                    None
                } else {
                    Some(stream)
                }
            }
            Written::Several { streams, unknown } => {
                for stream in streams {
                    self.note_answered(stream.key, at);
                    self.unplaced(pid, at, Some(stream));
                }
                if unknown {
                    self.stats.unknown_writes += 1;
                    self.unplaced(pid, at, None);
                    self.incomplete(pid, at);
                }
                None
            }
        };
        if io_thread {
            return;
        }
        let waiting = self.waiting.remove(&(pid, tid)).unwrap_or_default();
        if waiting.is_empty() && alone.is_none() {
            return;
        }
        self.pending.push_back(Pending {
            pid,
            tid,
            at,
            alone,
            waiting,
        });
    }

    /// Settles the answers written before `now` − `SETTLE_NS` (all with `flush`): returns each
    /// waiting request with its parent, if the rule names one; `call` tells where each request
    /// stands.
    pub fn settle(
        &mut self,
        now: u64,
        flush: bool,
        call: impl Fn(SpanKey) -> Call,
    ) -> Vec<(SpanKey, Option<P>)> {
        let mut out = Vec::new();
        while let Some(next) = self.pending.front() {
            if !flush && next.at.saturating_add(SETTLE_NS) > now {
                break;
            }
            let Some(answer) = self.pending.pop_front() else {
                break;
            };
            self.settle_one(answer, &call, &mut out);
        }
        if !self.undecided.is_empty() {
            self.retry_undecided(now, flush, &mut out);
        }
        out
    }

    /// Decides the waiting requests whose worker has not answered, once every stream of their
    /// process that began by them had ended by `now` − `SETTLE_NS`; then as [`Workers::settle`].
    /// `now` must not go back, and lost events must have been reported up to it.
    pub fn settle_ended(
        &mut self,
        now: u64,
        call: impl Fn(SpanKey) -> Call,
    ) -> Vec<(SpanKey, Option<P>)> {
        let mut out = Vec::new();
        self.settle_by_ends(now.saturating_sub(SETTLE_NS), &call, &mut out);
        if !self.undecided.is_empty() {
            self.retry_undecided(now, false, &mut out);
        }
        out
    }

    fn settle_one(
        &mut self,
        answer: Pending<P>,
        call: &impl Fn(SpanKey) -> Call,
        out: &mut Vec<(SpanKey, Option<P>)>,
    ) {
        let Pending {
            pid,
            tid,
            at,
            alone,
            waiting,
        } = answer;
        if waiting.is_empty() {
            return;
        }
        let calls: Vec<Call> = waiting.iter().map(|&(key, _)| call(key)).collect();
        let out_then = |c: &Call| match *c {
            Call::Out => true,
            Call::Ended(end) => end > at,
            Call::Gone => false,
        };
        if alone.is_some() && calls.iter().any(out_then) {
            // It answered with a call of its own out: it runs several handlers at once.
            if self.interleaving.len() >= MAX_TABLE {
                self.stop();
            }
            self.interleaving.insert((pid, tid));
            self.stats.interleaving_threads += 1;
            self.processes.entry(pid).or_default().answers_during_calls = true;
            self.stats.refused += waiting.len() as u64;
            out.extend(waiting.into_iter().map(|(key, _)| (key, None)));
            self.not_a_worker(pid, tid);
            return;
        }
        let busy = calls_out(
            self.processes.entry(pid).or_default().answers_during_calls,
            &waiting,
            &calls,
        );
        for &(key, ts) in &waiting {
            let undecided = Undecided {
                pid,
                tid,
                key,
                ts,
                at,
                alone: alone.clone().filter(|s| s.began <= ts),
                busy: busy_for(&busy, ts),
                epoch: Cell::new(0),
            };
            self.decide_or_wait(undecided, out);
        }
    }

    /// Decides `u` now, or leaves it for other workers' claims (several candidates).
    fn decide_or_wait(&mut self, u: Undecided<P>, out: &mut Vec<(SpanKey, Option<P>)>) {
        let others = std::mem::take(&mut self.undecided);
        let decided = self.decide(&u, (&others, &[]));
        self.undecided = others;
        match decided {
            Decided::Parent(parent) => out.push((u.key, Some(parent))),
            // Another worker may yet be found to have served one of them.
            Decided::Several if self.undecided.len() < MAX_UNDECIDED => {
                // A new handler among the undecided: the others may be decided by it.
                if let Some(process) = self.processes.get_mut(&u.pid) {
                    process.epoch += 1;
                }
                self.undecided.push(u);
            }
            Decided::Several => self.refuse_several(&u, out),
            Decided::Unknown | Decided::None => {
                self.stats.refused += 1;
                out.push((u.key, None));
            }
        }
    }

    /// Decides the waiting requests whose worker has not answered, once every stream of their
    /// process that began by them had ended by `horizon` (all events up to it have come): the
    /// worker's own stream is among the answers seen then.
    fn settle_by_ends(
        &mut self,
        horizon: u64,
        call: &impl Fn(SpanKey) -> Call,
        out: &mut Vec<(SpanKey, Option<P>)>,
    ) {
        if !self.swept || self.waiting.is_empty() || self.open.is_empty() {
            return;
        }
        let mut waiting = std::mem::take(&mut self.waiting);
        waiting.retain(|&(pid, tid), list| {
            // Requests are in the order they began; a later one needs more streams ended.
            let known_after = self.incomplete_until(pid);
            let closed = self.open.get(&pid).map_or(0, |open| {
                list.iter()
                    .take_while(|&&(key, ts)| {
                        ts > known_after
                            && matches!(call(key), Call::Ended(end) if end <= horizon)
                            && open.all_ended(ts, horizon)
                    })
                    .count()
            });
            if closed == 0 {
                return true;
            }
            let calls: Vec<Call> = list.iter().map(|&(key, _)| call(key)).collect();
            let answers_during_calls = self
                .processes
                .get(&pid)
                .is_some_and(|p| p.answers_during_calls);
            let busy = calls_out(answers_during_calls, list, &calls);
            for (key, ts) in list.drain(..closed) {
                self.stats.decided_by_ends += 1;
                let undecided = Undecided {
                    pid,
                    tid,
                    key,
                    ts,
                    at: horizon,
                    alone: None,
                    busy: busy_for(&busy, ts),
                    epoch: Cell::new(0),
                };
                self.decide_or_wait(undecided, out);
            }
            !list.is_empty()
        });
        debug_assert!(self.waiting.is_empty(), "nothing waits while deciding");
        self.waiting = waiting;
    }

    /// `u` is left with several candidates: no parent, each of them a possible one
    /// ([`Workers::take_one_of`]).
    fn refuse_several(&mut self, u: &Undecided<P>, out: &mut Vec<(SpanKey, Option<P>)>) {
        self.stats.refused += 1;
        self.stats.several += 1;
        out.push((u.key, None));
        let found = self.processes.get(&u.pid).map(|p| p.candidates(u));
        if let Some(Found::Several(several)) = found {
            let parents = several.into_iter().map(|s| s.parent.clone()).collect();
            if self.one_of.len() < MAX_UNDECIDED {
                self.one_of.push((u.key, parents));
            }
        }
    }

    /// The requests given no parent since the last call because several streams may have been
    /// theirs, with those streams' parents (for span links).
    pub fn take_one_of(&mut self) -> Vec<(SpanKey, Vec<P>)> {
        std::mem::take(&mut self.one_of)
    }

    /// What the candidates of `u` come to now; a parent found is claimed for its worker.
    /// `others` are the other requests still undecided (those marked in `gone` are not).
    fn decide(&mut self, u: &Undecided<P>, others: (&[Undecided<P>], &[bool])) -> Decided<P> {
        u.epoch
            .set(self.processes.get(&u.pid).map_or(0, |p| p.epoch));
        let complete_after = if self.swept {
            self.incomplete_until(u.pid)
        } else {
            u64::MAX
        };
        let Some(process) = self.processes.get(&u.pid) else {
            return match &u.alone {
                Some(stream) => Decided::Parent(stream.parent.clone()),
                None => Decided::None,
            };
        };
        let (parent, key, eliminated) = match process.candidates(u) {
            Found::One(stream) => (stream.parent.clone(), stream.key, false),
            Found::None => return Decided::None,
            Found::Unknown => {
                self.stats.refused_unknown += 1;
                return Decided::Unknown;
            }
            Found::Several(several) => {
                let own: Vec<SpanKey> = several.iter().map(|s| s.key).collect();
                // (Where workers answer with calls out, a call out proves nothing: the
                // candidates are wider than they look.)
                if process.answers_during_calls
                    || own.iter().any(|k| process.oversubscribed.contains(k))
                {
                    return Decided::Several;
                }
                let reserved = match process.served_by_others(u, own, others, complete_after) {
                    Aside::Reserved(reserved) => reserved,
                    Aside::Unsure => return Decided::Several,
                    Aside::Broken(streams) => {
                        self.mark_oversubscribed(u.pid, streams);
                        return Decided::Several;
                    }
                };
                let shaky = |k: &SpanKey| {
                    process.oversubscribed.contains(k)
                        || u.alone.as_ref().is_some_and(|s| s.key == *k)
                };
                // The worker's own write is the strongest evidence: never set aside.
                if reserved.iter().any(shaky) {
                    return Decided::Several;
                }
                let mut left = several.into_iter().filter(|s| !reserved.contains(&s.key));
                match (left.next(), left.next()) {
                    (Some(one), None) => (one.parent.clone(), one.key, true),
                    (None, _) => {
                        // Every candidate is another's: the rule's premises do not hold
                        // here, for those streams either.
                        self.mark_oversubscribed(u.pid, reserved);
                        return Decided::None;
                    }
                    _ => return Decided::Several,
                }
            }
        };
        if eliminated {
            self.stats.decided_by_elimination += 1;
        }
        if u.alone.as_ref().is_none_or(|s| s.key != key) {
            self.claim(u.pid, key, u.tid);
        }
        Decided::Parent(parent)
    }

    /// Decides again the requests left with several candidates, now that other workers may
    /// have claimed some; those undecided `UNDECIDED_NS` after their worker's answer get none.
    fn retry_undecided(&mut self, now: u64, flush: bool, out: &mut Vec<(SpanKey, Option<P>)>) {
        let waiting = std::mem::take(&mut self.undecided);
        let mut gone = vec![false; waiting.len()];
        for (i, u) in waiting.iter().enumerate() {
            let due = flush || u.at.saturating_add(UNDECIDED_NS) <= now;
            let epoch = self.processes.get(&u.pid).map_or(0, |p| p.epoch);
            if !due && u.epoch.get() == epoch {
                // Nothing claimed, and no handler began waiting, since it was looked at.
                continue;
            }
            gone[i] = true;
            match self.decide(u, (&waiting, &gone)) {
                Decided::Parent(parent) => out.push((u.key, Some(parent))),
                Decided::Several if !flush && u.at.saturating_add(UNDECIDED_NS) > now => {
                    gone[i] = false;
                }
                Decided::Several => self.refuse_several(u, out),
                Decided::Unknown | Decided::None => {
                    self.stats.refused += 1;
                    out.push((u.key, None));
                }
            }
        }
        self.undecided = waiting
            .into_iter()
            .zip(gone)
            .filter_map(|(u, gone)| (!gone).then_some(u))
            .collect();
    }

    /// A SERVER span of a multiplexed connection in `pid` ended at `at`: if no write carried
    /// its frames (reset, closed), its worker is unknown.
    pub fn ended(&mut self, pid: u32, stream: Stream<P>, at: u64) {
        if let Some(open) = self.open.get_mut(&pid) {
            open.ended(stream.key, stream.began, at);
        }
        if !self.answered.remove(&stream.key) && self.serving.contains(&pid) {
            self.stats.unplaced_unanswered += 1;
            self.unplaced(pid, at, Some(stream));
        }
    }

    /// More handlers of `pid` pointed at `streams` than there are: never set aside as others',
    /// never the one left (the oldest forgotten past `MAX_OVERSUBSCRIBED`).
    fn mark_oversubscribed(&mut self, pid: u32, streams: Vec<SpanKey>) {
        if let Some(process) = self.processes.get_mut(&pid) {
            process.oversubscribed.extend(streams);
            let excess = process
                .oversubscribed
                .len()
                .saturating_sub(MAX_OVERSUBSCRIBED);
            process.oversubscribed.drain(..excess);
        }
    }

    /// Stream `key` of `pid`, answered naming no worker, was found to be worker `tid`'s.
    fn claim(&mut self, pid: u32, key: SpanKey, tid: u32) {
        if let Some(process) = self.processes.get_mut(&pid) {
            process.epoch += 1;
            for u in &mut process.unplaced {
                if u.stream.as_ref().is_some_and(|s| s.key == key) {
                    u.claimed_by = Some(tid);
                }
            }
        }
    }

    fn note_answered(&mut self, key: SpanKey, at: u64) {
        if self.answered.len() >= MAX_TABLE {
            self.forget_all(at);
        }
        self.answered.insert(key);
    }

    fn unplaced(&mut self, pid: u32, at: u64, stream: Option<Stream<P>>) {
        if stream.is_some() {
            self.stats.unplaced_answers += 1;
        }
        if self.processes.len() >= MAX_TABLE && !self.processes.contains_key(&pid) {
            self.forget_all(at);
        }
        self.processes.entry(pid).or_default().note(at, stream);
    }
}

/// The times a worker's calls (`waiting`, where each stands in `calls`) kept it waiting, as
/// (began, a little later, ended): none in a process whose handlers may not wait for them.
fn calls_out(
    answers_during_calls: bool,
    waiting: &[(SpanKey, u64)],
    calls: &[Call],
) -> Vec<(u64, u64, u64)> {
    if answers_during_calls {
        return Vec::new();
    }
    waiting
        .iter()
        .zip(calls)
        .filter_map(|(&(_, ts), c)| match *c {
            Call::Ended(end) => Some((ts, ts + FLUSH_LATE_NS, end)),
            Call::Out | Call::Gone => None,
        })
        .collect()
}

/// While its calls were out, the worker waited for them: what was answered then was not its
/// own, for the request begun at `ts`. Except just after a later call began: an answer the
/// worker wrote before it may be flushed by another thread a little later.
fn busy_for(calls_out: &[(u64, u64, u64)], ts: u64) -> Vec<(u64, u64)> {
    calls_out
        .iter()
        .filter_map(|&(began, late, end)| {
            let from = if began == ts { began } else { late };
            (end > from).then_some((from, end))
        })
        .collect()
}

#[cfg(test)]
mod tests;

//! The linker's side of the worker rule ([`crate::trace::workers`]): which threads may be a
//! multiplexing server's workers, the stream I/O the rule learns from, and the parents (or
//! links) it settles for the CLIENT requests that waited for it.

use super::{
    Tracer,
    open::{FastMap, OpenSpan, SpanKey, Unit},
    trace_ref::TraceRef,
};
use crate::{
    conntrack::{Connection, RoleSource},
    protocol::StreamIo,
    trace::{
        ids::SpanId,
        span::{SpanKind, SpanLink},
        workers::{Call, Stream, Written},
    },
};

/// Where a waiting CLIENT request stands, for the worker rule: out, ended (when), or exported.
fn call_state(spans: &FastMap<SpanKey, Box<OpenSpan>>) -> impl Fn(SpanKey) -> Call + '_ {
    move |key| match spans.get(&key) {
        None => Call::Gone,
        Some(s) => s
            .finished
            .as_ref()
            .map_or(Call::Out, |d| Call::Ended(d.end_ts)),
    }
}

impl Tracer {
    /// The thread of `unit` if it may be a multiplexing server's worker: a thread by the rules
    /// by unit (not an event loop's, nor a Node.js process's) that reads no multiplexed
    /// connection, in a process that serves one.
    pub(super) fn worker_thread(&self, pid: u32, unit: Unit) -> Option<u32> {
        let Unit::Thread(tid) = unit else {
            return None;
        };
        let worker = !self.callbacks.is_tracked(pid)
            && !self.tasks.is_loop_thread(pid, tid)
            && !self.event_loop_threads.contains(&(pid, tid))
            && !self.may_run_unfollowed_loop(pid, tid)
            && self.workers.applies(pid, tid);
        worker.then_some(tid)
    }

    /// What a syscall of thread `tid` at `ts` on the multiplexed connection `conn` did, for the
    /// worker rule ([`crate::trace::workers`]): a read makes the thread an I/O thread; a
    /// server's write settles the CLIENT requests the thread made since its last one.
    pub fn on_stream_io(&mut self, conn: &Connection, io: StreamIo, tid: u32, ts: u64) {
        if !conn.process.runtime.threads_are_tasks() {
            return;
        }
        let pid = conn.process.pid;
        self.last_event_ts = self.last_event_ts.max(ts);
        if conn.preexisting || conn.role_source != RoleSource::Syscall {
            // Opened before the agent watched it: some of its streams may be unknown.
            self.workers.incomplete(pid, ts);
        }
        let answered = match io {
            StreamIo::None => return,
            StreamIo::Read { placed } => {
                if !placed {
                    self.workers.incomplete(pid, ts);
                }
                self.workers.read_by(pid, tid);
                return;
            }
            StreamIo::Wrote(answered) if answered.is_nothing() => return,
            StreamIo::Wrote(answered) => answered,
        };
        // A stream the agent has no SERVER span of (opened before it attached) is unknown; one
        // already finished (a reset after its trailers) is no answer.
        let stream = |id: u64| -> Option<Option<Stream<(SpanId, TraceRef)>>> {
            let key = (conn.conn_id, id);
            match self.spans.get(&key) {
                Some(s) if s.kind == SpanKind::Server && s.finished.is_some() => None,
                Some(s) if s.kind == SpanKind::Server => Some(Some(Stream {
                    key,
                    began: s.start_ts,
                    parent: (s.span_id, s.trace.clone()),
                })),
                _ => Some(None),
            }
        };
        let streams: Vec<Option<Stream<_>>> = answered
            .streams()
            .iter()
            .filter_map(|&id| stream(id))
            .collect();
        let unknown = answered.is_unplaceable() || streams.iter().any(Option::is_none);
        let mut streams: Vec<Stream<_>> = streams.into_iter().flatten().collect();
        let written = match (streams.len(), unknown) {
            (0, false) => return,
            (1, false) => match streams.pop() {
                Some(one) => Written::Alone(one),
                None => return,
            },
            _ => Written::Several { streams, unknown },
        };
        self.workers.answer(pid, tid, ts, written);
        self.settle_workers(ts, false);
    }

    /// Events were lost (a full ring) up to `now`: the worker rule names no parent from what
    /// was answered before.
    pub fn lost_events(&mut self, now: u64) {
        self.workers.lost_events(now);
    }

    /// Gives the CLIENT requests of workers that have not answered the parents the worker rule
    /// names once every stream begun before them ended (by `now`, which never goes back; the
    /// sink reports lost events before it polls).
    pub(super) fn settle_workers_by_ends(&mut self, now: u64) {
        let settled = self.workers.settle_ended(now, call_state(&self.spans));
        self.apply_worker_parents(settled);
    }

    /// At `ts`, a connection of `pid` the agent does not follow (evicted, unknown, not parsed)
    /// carried data: the worker rule cannot know every stream of `pid` for a while.
    pub fn stream_may_be_unknown(&mut self, pid: u32, ts: u64) {
        self.workers.incomplete(pid, ts);
    }

    /// Server connection `conn_id` of `pid` carries streams the agent cannot read (given up,
    /// or not parsed): the worker rule cannot know every stream of `pid` while it lives.
    pub fn conn_hides_streams(&mut self, pid: u32, conn_id: u64, ts: u64) {
        self.workers.incomplete(pid, ts);
        self.workers.hides_streams(pid, conn_id);
    }

    /// Connection `conn_id` closed at `ts`: it hides no stream from then on.
    pub fn conn_closed_for_workers(&mut self, conn_id: u64, ts: u64) {
        self.workers.conn_closed(conn_id, ts);
    }

    /// Every process with a connection the agent did not see open was reported
    /// ([`Tracer::stream_may_be_unknown`]): the worker rule may judge the others by ends.
    pub fn unseen_openings_swept(&mut self, now: u64) {
        self.workers.swept(now);
    }

    /// `pid` runs grpcio, where the worker rule was measured: it applies there.
    pub fn allow_worker_rule(&mut self, pid: u32) {
        self.workers.allow(pid);
    }

    /// `pid` exited or runs something else now: the worker rule forgets it.
    pub fn disallow_worker_rule(&mut self, pid: u32) {
        self.workers.disallow(pid);
    }

    /// Gives the CLIENT requests of workers' answers older than `now` − the settling delay
    /// (all with `flush`) the parents the worker rule names.
    pub(super) fn settle_workers(&mut self, now: u64, flush: bool) {
        let settled = self.workers.settle(now, flush, call_state(&self.spans));
        self.apply_worker_parents(settled);
    }

    /// Gives the requests the worker rule decided their parents, or links where it found
    /// several candidates.
    fn apply_worker_parents(&mut self, settled: Vec<(SpanKey, Option<(SpanId, TraceRef)>)>) {
        for (key, parent) in settled {
            let Some((parent_id, parent_trace)) = parent else {
                continue;
            };
            let Some(client) = self.spans.get_mut(&key) else {
                continue;
            };
            if client.parent.is_some() {
                continue;
            }
            client.parent = Some(parent_id);
            client.evidence = "worker";
            client.trace.join(&parent_trace);
            self.stats.parent_from_worker += 1;
            self.stats.roots = self.stats.roots.saturating_sub(1);
        }
        for (key, candidates) in self.workers.take_one_of() {
            let Some(client) = self.spans.get_mut(&key) else {
                continue;
            };
            if client.parent.is_some() {
                continue;
            }
            for (span_id, trace) in candidates {
                if !client.links.iter().any(|l| l.span_id == span_id) {
                    client.links.push(SpanLink {
                        trace_id: trace.id(),
                        span_id,
                        reason: "the worker thread may have served any of these streams",
                    });
                }
            }
            client.evidence = "ambiguous";
            self.stats.ambiguous += 1;
        }
    }
}

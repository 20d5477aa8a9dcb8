//! Turns exchanges (of any protocol) into spans and links them into traces.
//!
//! A span opens when its request head is read (so children can find it) and finishes when its
//! exchange completes. Its parent comes from the strongest evidence available:
//! 1. a `traceparent` / B3 header on the request (adopted for that request only);
//! 2. same-thread causality, on protocols where the reading thread serves the request (HTTP/1)
//!    and in runtimes whose threads are units of work (not Go): a CLIENT request written by a
//!    thread while it serves exactly one SERVER request is that request's child;
//!    in Go programs whose runtime probes are attached, the goroutine rule instead: a CLIENT
//!    request made by a goroutine (for `net/http`, the one that called `roundTrip`, not the
//!    connection's write loop) serving exactly one SERVER request, or spawned, directly or not,
//!    by a goroutine serving exactly one that started before the spawn, is that request's child;
//!    the proxy rule: a CLIENT request that asks exactly what one SERVER request in flight in the
//!    same process asks (method and target) forwards it, and is its child. When both rules name
//!    one parent each and they differ, neither is trusted;
//!    in Python processes whose asyncio probes are attached, the task rule, for a CLIENT request
//!    made by a task whose creation was seen (it waits, unsettled, instead of taking the thread
//!    rule's answer): it is the child of the SERVER request whose response was written by that
//!    task or a task that created it, directly or not, provided that writer was created after
//!    the SERVER request began (a task of its own: uvicorn, aiohttp, tornado make one per
//!    request) and wrote no other response, and the CLIENT request began inside the SERVER one;
//!    in Node.js processes whose callback probes are attached, the callback rule instead of the
//!    thread rule: a CLIENT request written inside the libuv callback of a socket serving
//!    exactly one request is its child, inside a client socket's callback it is the child of
//!    what that socket's last request was made for ([`super::callbacks`]);
//! 3. both ends on this host: the SERVER span on one end of a TCP connection is the child of the
//!    CLIENT span on the other end whose request has the same key (the TCP sequence number of
//!    its first byte for HTTP/1 and the datastores, so that ends first seen at different bytes
//!    of a connection open before the agent still agree; its stream id for HTTP/2) and asks the
//!    same (method and target, where the protocol says);
//! 4. otherwise a new root.
//!
//! Several candidates give span links, never a guessed parent. Finished spans wait `link_delay`
//! before export, so that evidence arriving slightly out of order (the two ends of a connection
//! are seen on different CPUs) still links them; trace ids are shared references, so a span that
//! learns its parent late moves its whole subtree into the parent's trace.
//!
//! The linker's files, one job each:
//! - this file: the [`Tracer`], its tables, and the entry points for requests, exchanges, Go
//!   runtime probes and abandoned connections;
//! - `config.rs`: [`TraceConfig`] and its validation ([`TraceError`]), the stage's
//!   [`TraceStats`];
//! - `trace_ref.rs`: the trace ids spans share, which a span that learns its parent late
//!   redirects (a union-find);
//! - `open.rs`: the spans held (open or waiting for export), the mirror key both ends of a
//!   connection compute, and the tables of open SERVER spans the rules by unit and the proxy
//!   rule look in;
//! - `parents.rs`: the rules above that name a span's parent (or its links) when its request is
//!   seen: connection, thread, goroutine, callback and proxy;
//! - `task_rule.rs`: the task rule's second half: a response's writer adopts the CLIENT requests
//!   that waited for it;
//! - `worker_rule.rs`: what the worker rule ([`super::workers`]) is told and what it settles;
//! - `peers.rs`: cross-host linking ([`crate::peers`]): announcing CLIENT spans, adopting the
//!   ones other agents announce;
//! - `export.rs`: [`Tracer::poll`], which settles what waited and exports the finished spans;
//! - `tests/`: the unit tests, one file per rule.

mod asking;
mod config;
mod export;
mod inband;
mod open;
mod parents;
mod peers;
mod shedding;
mod span_boxes;
mod stream_asking;
mod task_rule;
mod trace_ref;
mod worker_rule;

use std::collections::{VecDeque, hash_map::Entry};

use super::{
    callbacks::Callbacks,
    goroutines::Goroutines,
    ids::{IdGenerator, SpanId},
    intern::Interner,
    propagation::{self, TraceHeaders},
    remote::{Announcer, RemoteClients},
    resource::Resources,
    span::SpanKind,
    tasks::Tasks,
    workers::{Stream, WorkerStats, Workers},
};
use agent_common::GoProbe;

use crate::{
    clock::WallClock,
    conntrack::Connection,
    peers::wire::ClientSpan,
    protocol::{Exchange, Stamp},
};

pub use config::{TraceConfig, TraceError, TraceStats};
use inband::InbandNotes;
use open::{Done, Endpoint, FastMap, OpenSpan, Serving, Unit, remove_open};
pub(super) use open::{MirrorKey, SpanKey};
use task_rule::TaskWriter;
use trace_ref::TraceRef;

/// Which end of a connection a request was seen at, and whether its protocol lets same-thread
/// causality apply ([`crate::protocol::ConnectionParser::thread_causality`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
// Facts of one end, each read by a different rule.
#[allow(clippy::struct_excessive_bools)]
pub struct End {
    pub server: bool,
    pub thread_causality: bool,
    /// The protocol answers one request at a time, in order (not multiplexed).
    pub in_order: bool,
    /// The task whose syscall completed the request (`DataEvent::task`): in Go, the running
    /// goroutine's `g`; 0 when unknown.
    pub task: u64,
    /// The thread had hidden work open ([`agent_common::DATA_HIDDEN_WORK`]).
    pub hidden_work: bool,
    /// One of those hidden requests asks what this one asks, or may
    /// ([`agent_common::DATA_HIDDEN_SAME_ASK`]).
    pub hidden_same_ask: bool,
    /// One of them asks exactly what this one asks ([`agent_common::DATA_HIDDEN_EXACT_ASK`]).
    pub hidden_exact_ask: bool,
}

pub struct Tracer {
    config: TraceConfig,
    ids: IdGenerator,
    resources: Resources,
    clock: WallClock,
    /// Shared `Host` and `User-Agent` values of finished spans.
    strings: Interner,
    /// Boxed: a span enters and leaves this table once each, and an entry moved by value (~300
    /// bytes, twice at export) was a visible share of the draining thread (`perf`).
    spans: FastMap<SpanKey, Box<OpenSpan>>,
    /// The boxes of exported spans, for the next ones.
    span_boxes: span_boxes::SpanBoxes,
    /// Open SERVER spans per (pid, tid) that read their request.
    serving: FastMap<(u32, u32), Serving>,
    /// (pid, tid) of threads seen serving two requests at once: event loops, where one open
    /// request is no evidence that a write is its (a timer or a task of the service's own may be
    /// writing). The thread rule gives links there, never a parent.
    event_loop_threads: std::collections::HashSet<(u32, u32), foldhash::fast::RandomState>,
    /// Processes running asyncio whose tasks are not followed (its probes off or failed): their
    /// main thread may be the event loop's, so the thread rule gives links there from the first
    /// request on (before it is seen serving two at once).
    loops_unfollowed: std::collections::HashSet<u32, foldhash::fast::RandomState>,
    /// Open SERVER spans per (pid, what the request asks), for the proxy rule.
    forwardable: FastMap<(u32, u64), Serving>,
    /// Open SERVER spans per (pid, goroutine) in tracked Go programs.
    goroutine_serving: FastMap<(u32, u64), Serving>,
    /// What the Go runtime probes said.
    pub goroutines: Goroutines,
    /// What the Python asyncio probes said.
    pub tasks: Tasks,
    /// The Node.js processes whose callback probes are attached, and their sockets.
    pub callbacks: Callbacks,
    /// Threads of multiplexing servers: which read, which answer, and what waits for them.
    workers: Workers<(SpanId, TraceRef)>,
    /// The latest event time seen by the worker rule (it settles answers by event time).
    last_event_ts: u64,
    /// The worker rule's last horizon for deciding by ends (never goes back).
    settled_by_ends_at: u64,
    /// CLIENT spans waiting for the task rule, under each task context of their lineage.
    task_waiting: FastMap<(u32, u64), Vec<SpanKey>>,
    /// What each task (pid, context, serial) that wrote a SERVER response wrote.
    task_writers: FastMap<(u32, u64, u64), TaskWriter>,
    /// CLIENT spans by their request's mirror key.
    clients: FastMap<MirrorKey, SpanKey>,
    /// CLIENT spans of other hosts, announced by their agents.
    remote: RemoteClients,
    /// This host's CLIENT spans to other hosts, when cross-host linking is on.
    announcer: Option<Announcer>,
    /// Announcements for the peer agents, taken by [`Tracer::take_announcements`].
    outgoing: Vec<ClientSpan>,
    /// SERVER spans still looking for their client (seen first).
    waiting_servers: FastMap<MirrorKey, SpanKey>,
    /// Finished spans of unsettled traces in export order: (ready at, monotonic ns; key).
    ready: VecDeque<(u64, SpanKey)>,
    /// Finished spans of settled traces: exported at the next poll.
    ready_now: VecDeque<SpanKey>,
    /// The budget's edges and hidden requests.
    shedding: shedding::Shedding,
    /// What the programs said of requests' first segments in the in-band mode.
    inband: InbandNotes,
    /// The in-band mode's asking form: questions to other agents, answers to theirs.
    asking: asking::Asking,
    /// The in-band mode's connection form: HTTP/2 streams asked about across hosts.
    streams: stream_asking::StreamAsking,
    pub asking_stats: asking::AskingStats,
    pub stats: TraceStats,
}

impl Tracer {
    #[must_use]
    pub fn new(config: TraceConfig, resources: Resources) -> Self {
        Self {
            config,
            ids: IdGenerator::from_entropy(),
            resources,
            clock: WallClock::new(),
            strings: Interner::default(),
            spans: FastMap::default(),
            span_boxes: span_boxes::SpanBoxes::default(),
            serving: FastMap::default(),
            forwardable: FastMap::default(),
            event_loop_threads: std::collections::HashSet::default(),
            loops_unfollowed: std::collections::HashSet::default(),
            goroutine_serving: FastMap::default(),
            goroutines: Goroutines::default(),
            tasks: Tasks::default(),
            callbacks: Callbacks::default(),
            workers: Workers::default(),
            last_event_ts: 0,
            settled_by_ends_at: 0,
            task_waiting: FastMap::default(),
            task_writers: FastMap::default(),
            clients: FastMap::default(),
            remote: RemoteClients::default(),
            announcer: None,
            outgoing: Vec::new(),
            waiting_servers: FastMap::default(),
            ready: VecDeque::new(),
            ready_now: VecDeque::new(),
            shedding: shedding::Shedding::default(),
            inband: InbandNotes::default(),
            asking: asking::Asking::default(),
            streams: stream_asking::StreamAsking::default(),
            asking_stats: asking::AskingStats::default(),
            stats: TraceStats::default(),
        }
    }

    /// What the worker rule did ([`super::workers`]).
    #[must_use]
    pub fn worker_stats(&self) -> WorkerStats {
        self.workers.stats
    }

    /// Spans held now (open or waiting for export).
    #[must_use]
    pub fn held(&self) -> usize {
        self.spans.len()
    }

    /// Finished spans of settled traces, ready to export now.
    #[must_use]
    pub fn ready_now(&self) -> usize {
        self.ready_now.len()
    }

    /// A request was read (`end.server`) or written (client) on `conn`; `request` names it on
    /// the connection, the same at both ends; `forward` is what it asks (0 when unknown).
    pub fn on_request(
        &mut self,
        conn: &Connection,
        end: End,
        request: u64,
        forward: u64,
        trace: Option<&TraceHeaders>,
        start: Stamp,
    ) {
        let server = end.server;
        let pid = conn.process.pid;
        let unit = self.unit_of(conn, end, start);
        let key = (conn.conn_id, request);
        if self.spans.len() >= self.config.max_spans {
            self.stats.dropped_full += 1;
            self.callbacks.on_dropped(conn);
            if server {
                self.workers.incomplete(pid, start.ts);
            }
            return;
        }
        self.stats.spans_started += 1;
        let (local, remote) = conn.addrs();
        let (local, remote) = (Endpoint::new(local), Endpoint::new(remote));
        let inband = self.inband_note_for(conn, key);
        let span_id = self.span_id_for(inband, server);
        let context = trace.and_then(propagation::extract);
        let mirror = MirrorKey::seen_from(server, local, remote, request);
        let mut links = Vec::new();
        // A request made by a known asyncio task waits for the task rule: the thread it ran on
        // serves every request of the event loop. (TLS plaintext of a followed process carries
        // the task its OpenSSL call ran in, as a syscall's record does.)
        let lineage = (context.is_none()
            && !server
            && end.thread_causality
            && end.task != 0
            && self.tasks.is_tracked(pid))
        .then(|| self.tasks.lineage(pid, end.task))
        .filter(|l| !l.is_empty())
        .map(Vec::into_boxed_slice);
        let header = context.is_some();
        let (found, made_for) = if let Some(ctx) = context {
            self.stats.parent_from_header += 1;
            let found = (
                TraceRef::external(ctx.trace_id),
                Some(ctx.span_id),
                ctx.format,
            );
            (found, None)
        } else if let Some(found) = self.inband_parent(inband, server) {
            (found, None)
        } else if server {
            (self.server_parent(mirror, key, forward), None)
        } else {
            let on_loop = lineage.is_some()
                || (self.tasks.is_tracked(pid) && self.tasks.is_loop_thread(pid, start.tid));
            self.parent_of_client(conn, end, (unit, forward, start), on_loop, &mut links)
        };
        let (mut trace, parent, evidence) = found;
        // Streams of a multiplexed connection (HTTP/2, gRPC): the in-band connection form.
        let stream = !end.in_order && conn.tuple.sock_type != agent_common::SOCK_DGRAM;
        let asking = (key, span_id, server, stream, start.ts);
        self.asking_on_request(inband, parent.is_none(), mirror, asking);
        // A request with its own trace header goes where the header says, on both hosts.
        let inband = inband.filter(|_| !header);
        let inband_trace = Self::inband_trace(inband, server, parent.is_some(), &mut trace);
        self.callbacks.on_request(conn, key, end, made_for);
        let lineage = lineage.filter(|_| parent.is_none());
        // Not for the worker rule when the thread has hidden work: its answers may be a hidden
        // request's, and deciding by ends could name the one visible stream.
        if !server && (lineage.is_some() || (evidence == "none" && !end.hidden_work)) {
            self.wait_for_parent(pid, key, lineage.as_deref(), (unit, start.ts), &mut trace);
        }
        if parent.is_none() {
            self.stats.roots += 1;
        }
        let served_here = self.register_end(
            conn,
            end,
            (key, span_id, mirror, unit, forward),
            &trace,
            start.ts,
        );
        let resource = self.resources.get(&conn.process);
        let budget = open::BudgetFacts::served(served_here);
        trace.opened();
        let span = self.span_boxes.boxed(OpenSpan {
            span_id,
            trace,
            parent,
            evidence,
            links,
            kind: if server {
                SpanKind::Server
            } else {
                SpanKind::Client
            },
            pid: conn.process.pid,
            tid: start.tid,
            start_ts: start.ts,
            resource,
            mirror,
            forward,
            unit,
            datagram: conn.tuple.sock_type == agent_common::SOCK_DGRAM,
            tls: conn.tls,
            inband_trace,
            lineage,
            budget,
            finished: None,
        });
        self.spans.insert(key, span);
        self.stats.held_peak = self.stats.held_peak.max(self.spans.len() as u64);
        self.shedding_on_request(key, end, header, start.ts);
    }

    /// Makes a new span findable by the rules that look for its kind; returns whether a CLIENT
    /// span adopted its SERVER end (seen first).
    fn register_end(
        &mut self,
        conn: &Connection,
        end: End,
        (key, span_id, mirror, unit, forward): (SpanKey, SpanId, MirrorKey, Unit, u64),
        trace: &TraceRef,
        ts: u64,
    ) -> bool {
        let pid = conn.process.pid;
        if end.server {
            if !end.in_order && conn.process.runtime.threads_are_tasks() {
                self.workers.serves(pid);
                self.workers.began(pid, key, ts);
            }
            self.register_server(pid, unit, forward, key);
            false
        } else {
            let served_here = self.register_client(mirror, key, span_id, trace, forward);
            self.announce(mirror, key, span_id, trace, forward, ts);
            served_here
        }
    }

    /// A Go runtime probe fired. A spawn reuses its `g`: whatever that `g` served before belonged
    /// to a goroutine that exited, and can be nobody's parent now.
    pub fn on_go_probe(&mut self, pid: u32, probe: GoProbe, a: u64, b: u64, ts: u64) {
        if probe == GoProbe::NewprocReturn {
            self.goroutine_serving.remove(&(pid, a));
        }
        self.goroutines.on_probe(pid, probe, a, b, ts);
    }

    /// Connections the pipeline stopped tracking (evicted, idle): their open spans will never
    /// finish. They leave every table a rule picks parents from, and are dropped (counted).
    pub fn abandon_connections(&mut self, conns: &[u64]) {
        if conns.is_empty() {
            return;
        }
        for &conn_id in conns {
            self.forget_inband_conn(conn_id);
        }
        let conns: std::collections::HashSet<u64> = conns.iter().copied().collect();
        let keys: Vec<SpanKey> = self
            .spans
            .iter()
            .filter(|(k, s)| conns.contains(&k.0) && s.finished.is_none())
            .map(|(k, _)| *k)
            .collect();
        for key in keys {
            let Some(span) = self.spans.remove(&key) else {
                continue;
            };
            self.stats.abandoned += 1;
            if span.kind == SpanKind::Client {
                self.askable_gone((key, span.span_id), None, self.last_event_ts);
            }
            if !span.budget.waited {
                span.trace.closed();
            }
            Self::decided(&span);
            self.abandoned_while_shedding(&span.trace);
            if span.kind == SpanKind::Server && !span.datagram && span.unit == Unit::None {
                // A multiplexed stream that will never end: its worker is unknown, and its
                // connection's later streams too.
                self.workers.incomplete(span.pid, self.last_event_ts);
                let stream = Stream {
                    key,
                    began: span.start_ts,
                    parent: (span.span_id, span.trace.clone()),
                };
                self.workers.ended(span.pid, stream, self.last_event_ts);
            }
            if let Some(lineage) = &span.lineage {
                self.stop_waiting(span.pid, key, lineage);
            } else if span.kind == SpanKind::Client && span.parent.is_none() {
                self.workers.exported(span.pid, span.tid, key);
            }
            match span.unit {
                Unit::Thread(tid) if span.kind == SpanKind::Server => {
                    remove_open(&mut self.serving, (span.pid, tid), key);
                }
                Unit::Goroutine(g) if span.kind == SpanKind::Server => {
                    remove_open(&mut self.goroutine_serving, (span.pid, g), key);
                }
                _ => {}
            }
            if span.kind == SpanKind::Server && span.forward != 0 {
                remove_open(&mut self.forwardable, (span.pid, span.forward), key);
            }
            self.unmirror(&span, key);
        }
    }

    /// A span leaving the tables leaves the one its other end looks in: CLIENT spans are only
    /// in `clients`, SERVER spans only in `waiting_servers` (one lookup per span, not two).
    fn unmirror(&mut self, span: &OpenSpan, key: SpanKey) {
        let table = match span.kind {
            SpanKind::Client => &mut self.clients,
            SpanKind::Server => &mut self.waiting_servers,
        };
        if !table.is_empty()
            && let Entry::Occupied(entry) = table.entry(span.mirror)
            && *entry.get() == key
        {
            entry.remove();
        }
    }

    /// The exchange whose request was reported earlier is complete; `task` is what the syscall
    /// that completed it ran in (`DataEvent::task`; 0 when unknown).
    pub fn on_exchange(&mut self, conn: &Connection, exchange: Exchange, now_mono: u64, task: u64) {
        let key = (conn.conn_id, exchange.key);
        let Some(span) = self.spans.get_mut(&key) else {
            self.stats.orphan_exchanges += 1;
            return;
        };
        let server = span.kind == SpanKind::Server;
        if !server {
            self.callbacks.on_client_done(conn);
        }
        let first_finish = span.finished.is_none();
        span.finished = Some(Done {
            end_ts: exchange.end.ts.max(span.start_ts),
            wait_ns: exchange
                .response_start
                .map(|first| first.ts.saturating_sub(exchange.request_end.ts)),
            summary: exchange.summary,
        });
        if first_finish {
            Self::shedding_on_finish(&self.shedding, span, key);
        }
        if server && !span.datagram && span.unit == Unit::None {
            // A multiplexed stream (HTTP/2): whether a write answered it.
            let stream = Stream {
                key,
                began: span.start_ts,
                parent: (span.span_id, span.trace.clone()),
            };
            self.workers.ended(span.pid, stream, exchange.end.ts);
        }
        if server {
            match span.unit {
                Unit::Thread(tid) => remove_open(&mut self.serving, (span.pid, tid), key),
                Unit::Goroutine(g) => remove_open(&mut self.goroutine_serving, (span.pid, g), key),
                Unit::None => {}
            }
            if span.forward != 0 {
                remove_open(&mut self.forwardable, (span.pid, span.forward), key);
            }
        }
        let span = if server && task != 0 && self.tasks.is_tracked(conn.process.pid) {
            // The task rule may change spans: the span is looked up again after it.
            self.claim_for(key, conn, task);
            let Some(span) = self.spans.get_mut(&key) else {
                return;
            };
            span
        } else {
            span
        };
        // A span of a settled trace has all the evidence it will get: events reach the agent in
        // the order their syscalls returned, and a client's exchange completes only after its
        // server end read the request. Only traces that may still join another wait.
        if span.trace.settled() {
            self.ready_now.push_back(key);
        } else {
            let ready_at = now_mono + self.config.link_delay.as_nanos() as u64;
            self.ready.push_back((ready_at, key));
        }
    }
}

#[cfg(test)]
mod tests;

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

use std::{
    cell::RefCell,
    collections::{HashMap, VecDeque, hash_map::Entry},
    net::{IpAddr, Ipv6Addr, SocketAddr},
    rc::Rc,
    sync::Arc,
    time::Duration,
};

use super::{
    callbacks::{Callbacks, Lookup},
    goroutines::Goroutines,
    ids::{IdGenerator, SpanId, TraceId},
    intern::Interner,
    propagation::{self, TraceHeaders},
    remote::{Announcer, RemoteClient, RemoteClients},
    resource::Resources,
    span::{AttrValue, KeyValue, Resource, SpanData, SpanKind, SpanLink},
    tasks::Tasks,
    workers::{Call, Stream, WorkerStats, Workers, Written},
};
use agent_common::GoProbe;

use crate::{
    clock::WallClock,
    conntrack::{Connection, RoleSource},
    peers::{local::LocalAddrs, wire::ClientSpan},
    protocol::{Exchange, SpanFacts, Stamp, StreamIo, Summary},
};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceConfig {
    /// How long a finished span waits for late evidence before export.
    pub link_delay: Duration,
    /// Bound on spans held (open or waiting).
    pub max_spans: usize,
}

impl Default for TraceConfig {
    fn default() -> Self {
        Self {
            link_delay: Duration::from_millis(500),
            max_spans: 100_000,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    #[error("trace link-delay must be between 0 and 60s, got {0:?}")]
    LinkDelay(Duration),
    #[error("trace max-spans must be at least 100, got {0}")]
    MaxSpans(usize),
}

impl TraceConfig {
    pub fn validate(&self) -> Result<(), TraceError> {
        if self.link_delay > Duration::from_mins(1) {
            return Err(TraceError::LinkDelay(self.link_delay));
        }
        if self.max_spans < 100 {
            return Err(TraceError::MaxSpans(self.max_spans));
        }
        Ok(())
    }
}

/// Self-metrics of the trace stage.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct TraceStats {
    pub spans_started: u64,
    pub spans_exported: u64,
    pub parent_from_header: u64,
    pub parent_from_thread: u64,
    pub parent_from_proxy: u64,
    pub parent_from_goroutine: u64,
    pub parent_from_task: u64,
    pub parent_from_callback: u64,
    /// CLIENT spans a worker thread made for the stream it answered next ([`super::workers`]).
    pub parent_from_worker: u64,
    /// Threads found serving two requests at once (event loops): the thread rule names no
    /// parent on them from then on.
    pub event_loop_threads: u64,
    /// Event-loop threads not remembered, the table being full.
    pub event_loops_unremembered: u64,
    /// Task contexts that wrote the responses of two SERVER requests: not one request's task,
    /// so the task rule names no parent through them.
    pub task_shared_writers: u64,
    pub parent_from_connection: u64,
    /// SERVER spans whose client's agent, on another host, announced it ([`crate::peers`]).
    pub parent_from_peer: u64,
    /// CLIENT spans announced to the agent of their server's host.
    pub peer_announced: u64,
    /// Ends of a connection whose request keys matched but whose requests did not (different
    /// method or target): one end counted from a byte the other did not (TLS plaintext, which
    /// has no sequence numbers, with a read in flight when the probes attached). Not paired.
    pub mirror_mismatches: u64,
    pub roots: u64,
    pub ambiguous: u64,
    /// Exchanges whose request head was never seen (the agent started mid-request).
    pub orphan_exchanges: u64,
    /// Spans dropped because `max_spans` were held.
    pub dropped_full: u64,
    /// Open spans dropped because their connection stopped being tracked.
    pub abandoned: u64,
    /// The most spans held at once (open or waiting for export).
    pub held_peak: u64,
}

/// A trace id that can be redirected: spans share it, and a root that learns its parent late
/// becomes an alias of the parent's trace.
#[derive(Debug, Clone)]
struct TraceRef(Rc<RefCell<TraceNode>>);

#[derive(Debug)]
enum TraceNode {
    /// The trace's id, and whether it is settled: no later evidence can move it into another
    /// trace. Only a SERVER span whose client has not been seen starts an unsettled trace.
    Root(TraceId, bool),
    Alias(TraceRef),
}

impl TraceRef {
    fn new(id: TraceId) -> Self {
        Self(Rc::new(RefCell::new(TraceNode::Root(id, true))))
    }

    /// A trace that may still join its client's (a SERVER span seen before its client).
    fn unsettled(id: TraceId) -> Self {
        Self(Rc::new(RefCell::new(TraceNode::Root(id, false))))
    }

    fn root(&self) -> Self {
        let mut node = self.clone();
        loop {
            let next = match &*node.0.borrow() {
                TraceNode::Root(..) => None,
                TraceNode::Alias(to) => Some(to.clone()),
            };
            match next {
                Some(to) => node = to,
                None => return node,
            }
        }
    }

    fn id(&self) -> TraceId {
        match &*self.root().0.borrow() {
            TraceNode::Root(id, _) => *id,
            TraceNode::Alias(_) => [0; 16],
        }
    }

    fn settled(&self) -> bool {
        matches!(&*self.root().0.borrow(), TraceNode::Root(_, true))
    }

    /// Moves every span sharing this trace into `other`'s trace.
    fn join(&self, other: &Self) {
        let mine = self.root();
        let theirs = other.root();
        if !Rc::ptr_eq(&mine.0, &theirs.0) {
            *mine.0.borrow_mut() = TraceNode::Alias(theirs);
        }
    }
}

/// A request on a connection, seen from the client's end: (client addr, server addr, the
/// request's key on the connection). Both ends compute the same key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) struct MirrorKey {
    client: Endpoint,
    server: Endpoint,
    /// The protocol's request key ([`crate::protocol::ProtoEvent::Request`]).
    request: u64,
}

/// An address as a mirror key holds it: IPv4 in its IPv6-mapped form, so that a v4 socket and a
/// v6 socket with a mapped peer meet, and a key compares and hashes as plain integers (a pair of
/// `SocketAddr`s, hashed field by field with enum tags, flow info and scope id, was a visible
/// share of the linker's time under load, `perf`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Endpoint {
    ip: u128,
    port: u16,
}

impl Endpoint {
    fn new(addr: SocketAddr) -> Self {
        let ip = match addr.ip() {
            IpAddr::V4(v4) => v4.to_ipv6_mapped(),
            IpAddr::V6(v6) => v6,
        };
        Self {
            ip: u128::from(ip),
            port: addr.port(),
        }
    }

    /// The address, IPv4 again where it was mapped.
    fn addr(self) -> SocketAddr {
        SocketAddr::new(Ipv6Addr::from(self.ip).to_canonical(), self.port)
    }
}

pub(super) type SpanKey = (u64, u64);

/// The open SERVER spans of one thread: nearly always one, so it is held inline and a request
/// costs no allocation here.
#[derive(Debug)]
enum Serving {
    One(SpanKey),
    Many(Vec<SpanKey>),
}

impl Serving {
    fn keys(&self) -> &[SpanKey] {
        match self {
            Self::One(key) => std::slice::from_ref(key),
            Self::Many(keys) => keys,
        }
    }

    fn push(&mut self, key: SpanKey) {
        match self {
            Self::One(first) => *self = Self::Many(vec![*first, key]),
            Self::Many(keys) => keys.push(key),
        }
    }

    /// Drops `key`; returns whether none are left.
    fn remove(&mut self, key: SpanKey) -> bool {
        match self {
            Self::One(only) => *only == key,
            Self::Many(keys) => {
                keys.retain(|k| *k != key);
                if let [last] = keys.as_slice() {
                    *self = Self::One(*last);
                    false
                } else {
                    keys.is_empty()
                }
            }
        }
    }
}

/// What a request was made or read by, for the rules by unit of work.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Unit {
    /// No rule by unit applies (a multiplexed protocol, or a Go program not followed).
    None,
    Thread(u32),
    /// A goroutine's `g`, in a Go program whose runtime probes are attached.
    Goroutine(u64),
}

/// The responses one task wrote, as far as the task rule needs them.
#[derive(Debug, Clone, Copy)]
struct TaskWriter {
    /// The connection of its responses.
    conn_id: u64,
    /// When its last response ended.
    last_end: u64,
    /// It answered on two connections, or two requests at once: it is no one request's (nor
    /// one connection's) task, and names no parent.
    shared: bool,
}

/// Open SERVER spans a rule may pick a parent from.
enum Candidates {
    None,
    One(SpanKey),
    Several(Vec<SpanKey>),
}

/// Whether the two ends of a connection saw the same request under one key: the same
/// [`crate::protocol::forward_key`], or one unknown (0: HTTP/2 streams are named by id, which
/// both ends share anyway).
fn same_request(a: u64, b: u64) -> bool {
    a == 0 || b == 0 || a == b
}

fn add_open<K: std::hash::Hash + Eq>(table: &mut FastMap<K, Serving>, at: K, key: SpanKey) {
    match table.entry(at) {
        Entry::Occupied(mut open) => open.get_mut().push(key),
        Entry::Vacant(none) => {
            none.insert(Serving::One(key));
        }
    }
}

/// Where a waiting CLIENT request stands, for the worker rule: out, ended (when), or exported.
fn call_state(spans: &FastMap<SpanKey, OpenSpan>) -> impl Fn(SpanKey) -> Call + '_ {
    move |key| match spans.get(&key) {
        None => Call::Gone,
        Some(s) => s
            .finished
            .as_ref()
            .map_or(Call::Out, |d| Call::Ended(d.end_ts)),
    }
}

fn remove_open<K: std::hash::Hash + Eq>(table: &mut FastMap<K, Serving>, at: K, key: SpanKey) {
    if let Entry::Occupied(mut open) = table.entry(at)
        && open.get_mut().remove(key)
    {
        open.remove();
    }
}

/// Hash maps on the per-event path: foldhash is several times faster than the default `SipHash`
/// and still randomly seeded per process.
type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

#[derive(Debug)]
struct OpenSpan {
    span_id: SpanId,
    trace: TraceRef,
    parent: Option<SpanId>,
    evidence: &'static str,
    links: Vec<SpanLink>,
    kind: SpanKind,
    pid: u32,
    tid: u32,
    start_ts: u64,
    resource: Arc<Resource>,
    /// Both ends of the connection (which is local follows from `kind`) and the request's key.
    mirror: MirrorKey,
    /// What the request asks ([`crate::protocol::forward_key`]), 0 when unknown.
    forward: u64,
    /// The unit of work that made or read the request, as the rules by unit know it.
    unit: Unit,
    /// The connection is UDP (else TCP).
    datagram: bool,
    /// The exchange was read as TLS plaintext (the library probes), not off the socket.
    tls: bool,
    /// A CLIENT request's task lineage ([`Tasks::lineage`]) when it waits for the task rule.
    lineage: Option<Box<[(u64, u64)]>>,
    finished: Option<Done>,
}

/// What a finished exchange left for its span. The protocol's part is boxed: an open span waits
/// with a pointer here, not the whole summary, and a table of tens of thousands of spans grows
/// by the size of its entries.
#[derive(Debug)]
struct Done {
    end_ts: u64,
    /// Last request byte to first response byte.
    wait_ns: Option<u64>,
    summary: Box<dyn Summary>,
}

impl OpenSpan {
    /// (local, remote) addresses.
    fn ends(&self) -> (SocketAddr, SocketAddr) {
        match self.kind {
            SpanKind::Server => (self.mirror.server.addr(), self.mirror.client.addr()),
            SpanKind::Client => (self.mirror.client.addr(), self.mirror.server.addr()),
        }
    }
}

/// Which end of a connection a request was seen at, and whether its protocol lets same-thread
/// causality apply ([`crate::protocol::ConnectionParser::thread_causality`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct End {
    pub server: bool,
    pub thread_causality: bool,
    /// The protocol answers one request at a time, in order (not multiplexed).
    pub in_order: bool,
    /// The task whose syscall completed the request (`DataEvent::task`): in Go, the running
    /// goroutine's `g`; 0 when unknown.
    pub task: u64,
}

pub struct Tracer {
    config: TraceConfig,
    ids: IdGenerator,
    resources: Resources,
    clock: WallClock,
    /// Shared `Host` and `User-Agent` values of finished spans.
    strings: Interner,
    spans: FastMap<SpanKey, OpenSpan>,
    /// Open SERVER spans per (pid, tid) that read their request.
    serving: FastMap<(u32, u32), Serving>,
    /// (pid, tid) of threads seen serving two requests at once: event loops, where one open
    /// request is no evidence that a write is its (a timer or a task of the service's own may be
    /// writing). The thread rule gives links there, never a parent.
    event_loop_threads: std::collections::HashSet<(u32, u32), foldhash::fast::RandomState>,
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
            serving: FastMap::default(),
            forwardable: FastMap::default(),
            event_loop_threads: std::collections::HashSet::default(),
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
        let span_id = self.ids.span_id();
        let context = trace.and_then(propagation::extract);
        let mirror = if server {
            MirrorKey {
                client: remote,
                server: local,
                request,
            }
        } else {
            MirrorKey {
                client: local,
                server: remote,
                request,
            }
        };
        let mut links = Vec::new();
        // A request made by a known asyncio task waits for the task rule: the thread it ran on
        // serves every request of the event loop.
        let lineage = (context.is_none()
            && !server
            && end.thread_causality
            && !conn.tls
            && end.task != 0
            && self.tasks.is_tracked(pid))
        .then(|| self.tasks.lineage(pid, end.task))
        .filter(|l| !l.is_empty())
        .map(Vec::into_boxed_slice);
        let (found, made_for) = if let Some(ctx) = context {
            self.stats.parent_from_header += 1;
            let found = (TraceRef::new(ctx.trace_id), Some(ctx.span_id), ctx.format);
            (found, None)
        } else if server {
            (self.server_parent(mirror, key, forward), None)
        } else {
            let on_loop = lineage.is_some()
                || (self.tasks.is_tracked(pid) && self.tasks.is_loop_thread(pid, start.tid));
            self.parent_of_client(conn, end, (unit, forward, start), on_loop, &mut links)
        };
        let (mut trace, parent, evidence) = found;
        self.callbacks.on_request(conn, key, end, made_for);
        let lineage = lineage.filter(|_| parent.is_none());
        if !server && (lineage.is_some() || evidence == "none") {
            self.wait_for_parent(pid, key, lineage.as_deref(), (unit, start.ts), &mut trace);
        }
        if parent.is_none() {
            self.stats.roots += 1;
        }
        if server {
            if !end.in_order && conn.process.runtime.threads_are_tasks() {
                self.workers.serves(pid);
                self.workers.began(pid, key, start.ts);
            }
            self.register_server(pid, unit, forward, key);
        } else {
            self.register_client(mirror, key, span_id, &trace, forward);
            self.announce(mirror, key, span_id, &trace, forward, start.ts);
        }
        let resource = self.resources.get(&conn.process);
        self.spans.insert(
            key,
            OpenSpan {
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
                lineage,
                finished: None,
            },
        );
        self.stats.held_peak = self.stats.held_peak.max(self.spans.len() as u64);
    }

    /// A CLIENT request without a parent that a later event may name one for waits for it
    /// (its trace unsettled meanwhile): under each task of its `lineage`, for the task rule, or
    /// for its worker thread's next answer ([`super::workers`]).
    fn wait_for_parent(
        &mut self,
        pid: u32,
        key: SpanKey,
        lineage: Option<&[(u64, u64)]>,
        (unit, ts): (Unit, u64),
        trace: &mut TraceRef,
    ) {
        if let Some(lineage) = lineage {
            *trace = TraceRef::unsettled(trace.id());
            for &(task, _) in lineage {
                self.task_waiting.entry((pid, task)).or_default().push(key);
            }
        } else if let Some(tid) = self.worker_thread(pid, unit) {
            *trace = TraceRef::unsettled(trace.id());
            self.workers.wait(pid, tid, key, ts);
        }
    }

    /// The thread of `unit` if it may be a multiplexing server's worker: a thread by the rules
    /// by unit (not an event loop's, nor a Node.js process's) that reads no multiplexed
    /// connection, in a process that serves one.
    fn worker_thread(&self, pid: u32, unit: Unit) -> Option<u32> {
        let Unit::Thread(tid) = unit else {
            return None;
        };
        let worker = !self.callbacks.is_tracked(pid)
            && !self.tasks.is_loop_thread(pid, tid)
            && !self.event_loop_threads.contains(&(pid, tid))
            && self.workers.applies(pid, tid);
        worker.then_some(tid)
    }

    /// Parent of a CLIENT request without a header, and the SERVER span it was made for, by
    /// the rule its runtime allows (`on_loop`: made on an asyncio loop's thread, where the task
    /// rule decides later) and the proxy rule.
    fn parent_of_client(
        &mut self,
        conn: &Connection,
        end: End,
        (unit, forward, start): (Unit, u64, Stamp),
        on_loop: bool,
        links: &mut Vec<SpanLink>,
    ) -> ((TraceRef, Option<SpanId>, &'static str), Option<SpanKey>) {
        let pid = conn.process.pid;
        let by_unit = if on_loop {
            // An event loop's thread serves every request in flight: one open request on it is
            // no evidence (a task of the service's own may be calling).
            (Candidates::None, "task")
        } else if let Some(found) = self.callback_candidates(conn, end, start.ts) {
            (found, "callback")
        } else {
            self.unit_candidates(pid, unit, start.ts)
        };
        self.client_parent(pid, by_unit, forward, start, links)
    }

    /// The unit of work a request was made or read by, for the rules by unit. Same-thread
    /// causality needs a protocol whose reading thread serves the request and a runtime whose
    /// threads are its units of work; in Go, the goroutine, when its probes are attached (else
    /// no rule by unit at all: goroutines change threads).
    fn unit_of(&self, conn: &Connection, end: End, start: Stamp) -> Unit {
        if !end.thread_causality {
            return Unit::None;
        }
        if conn.process.runtime.threads_are_tasks() {
            Unit::Thread(start.tid)
        } else if end.task != 0 && self.goroutines.is_tracked(conn.process.pid) {
            Unit::Goroutine(end.task)
        } else {
            Unit::None
        }
    }

    /// The candidates of the rule by unit of work for a CLIENT request, and the rule's name.
    fn unit_candidates(&mut self, pid: u32, unit: Unit, ts: u64) -> (Candidates, &'static str) {
        match unit {
            Unit::Thread(tid) if self.event_loop_threads.contains(&(pid, tid)) => {
                let found = match self.candidates(self.serving.get(&(pid, tid)), ts) {
                    Candidates::One(key) => Candidates::Several(vec![key]),
                    other => other,
                };
                (found, "event-loop thread")
            }
            Unit::Thread(tid) => (self.candidates(self.serving.get(&(pid, tid)), ts), "thread"),
            Unit::Goroutine(g) => (self.goroutine_candidates(pid, g, ts), "goroutine"),
            Unit::None => (Candidates::None, "thread"),
        }
    }

    /// Makes an open SERVER span findable by the rules that look for one.
    fn register_server(&mut self, pid: u32, unit: Unit, forward: u64, key: SpanKey) {
        /// Threads remembered as event loops; past this, new ones are not (counted).
        const MAX_EVENT_LOOPS: usize = 64 * 1024;
        match unit {
            Unit::Thread(tid) => {
                if self.serving.contains_key(&(pid, tid))
                    && !self.event_loop_threads.contains(&(pid, tid))
                {
                    if self.event_loop_threads.len() < MAX_EVENT_LOOPS {
                        self.event_loop_threads.insert((pid, tid));
                        self.stats.event_loop_threads += 1;
                    } else {
                        self.stats.event_loops_unremembered += 1;
                    }
                }
                add_open(&mut self.serving, (pid, tid), key);
            }
            Unit::Goroutine(g) => add_open(&mut self.goroutine_serving, (pid, g), key),
            Unit::None => {}
        }
        if forward != 0 {
            add_open(&mut self.forwardable, (pid, forward), key);
        }
    }

    /// Makes a CLIENT span findable by its server end, and adopts that end if it came first.
    fn register_client(
        &mut self,
        mirror: MirrorKey,
        key: SpanKey,
        span_id: SpanId,
        trace: &TraceRef,
        forward: u64,
    ) {
        self.clients.insert(mirror, key);
        if let Some(server_key) = self.waiting_servers.remove(&mirror)
            && let Some(server_span) = self.spans.get_mut(&server_key)
            && server_span.parent.is_none()
        {
            if !same_request(server_span.forward, forward) {
                self.stats.mirror_mismatches += 1;
                return;
            }
            // The server end was seen first: it becomes this span's child after all.
            server_span.trace.join(trace);
            server_span.parent = Some(span_id);
            server_span.evidence = "connection";
            self.stats.parent_from_connection += 1;
            self.stats.roots = self.stats.roots.saturating_sub(1);
        }
    }

    /// Turns cross-host linking on: CLIENT spans whose server is not one of `local` are
    /// announced ([`Tracer::take_announcements`]).
    pub fn enable_peers(&mut self, local: LocalAddrs) {
        self.announcer = Some(Announcer {
            local,
            ..Announcer::default()
        });
    }

    /// This host's addresses changed (read again).
    pub fn set_local_addrs(&mut self, local: LocalAddrs) {
        if let Some(announcer) = &mut self.announcer {
            announcer.local = local;
        }
    }

    /// Announcements made since the last call.
    pub fn take_announcements(&mut self, out: &mut Vec<ClientSpan>) {
        out.append(&mut self.outgoing);
    }

    /// Queues the announcement of a CLIENT span whose server is on another host: now if its
    /// trace is settled, else once it is (or at the deadline, half the link delay).
    fn announce(
        &mut self,
        mirror: MirrorKey,
        key: SpanKey,
        span_id: SpanId,
        trace: &TraceRef,
        forward: u64,
        now: u64,
    ) {
        let Some(announcer) = &mut self.announcer else {
            return;
        };
        if announcer.local.contains(mirror.server.addr().ip()) {
            return;
        }
        if trace.settled() {
            self.stats.peer_announced += 1;
            self.outgoing.push(ClientSpan {
                client: mirror.client.addr(),
                server: mirror.server.addr(),
                key: mirror.request,
                forward,
                trace_id: trace.id(),
                span_id,
            });
        } else {
            let wait = self.config.link_delay.as_nanos() / 2;
            announcer.wait(now + u64::try_from(wait).unwrap_or(u64::MAX), key);
        }
    }

    /// Announces the waiting CLIENT spans whose trace settled or whose wait is over.
    pub fn announce_settled(&mut self, now: u64, flush: bool) {
        let Some(announcer) = &mut self.announcer else {
            return;
        };
        let spans = &self.spans;
        let outgoing = &mut self.outgoing;
        let stats = &mut self.stats;
        announcer.pending.retain(|&(deadline, key)| {
            let Some(span) = spans.get(&key) else {
                return false;
            };
            if !span.trace.settled() && deadline > now && !flush {
                return true;
            }
            stats.peer_announced += 1;
            outgoing.push(ClientSpan {
                client: span.mirror.client.addr(),
                server: span.mirror.server.addr(),
                key: span.mirror.request,
                forward: span.forward,
                trace_id: span.trace.id(),
                span_id: span.span_id,
            });
            false
        });
    }

    /// Another host's agent announced a CLIENT span: the SERVER span here with its connection
    /// and key, asking the same, is its child (now if seen already, else when it is).
    pub fn on_peer_client(&mut self, client: &ClientSpan, now: u64) {
        let mirror = MirrorKey {
            client: Endpoint::new(client.client),
            server: Endpoint::new(client.server),
            request: client.key,
        };
        let remote = RemoteClient {
            trace_id: client.trace_id,
            span_id: client.span_id,
            forward: client.forward,
        };
        if let Some(server_key) = self.waiting_servers.get(&mirror).copied()
            && let Some(server_span) = self.spans.get_mut(&server_key)
            && server_span.parent.is_none()
            && same_request(server_span.forward, client.forward)
        {
            self.waiting_servers.remove(&mirror);
            server_span.trace.join(&TraceRef::new(client.trace_id));
            server_span.parent = Some(client.span_id);
            server_span.evidence = "peer";
            self.stats.parent_from_peer += 1;
            self.stats.roots = self.stats.roots.saturating_sub(1);
            return;
        }
        self.remote.insert(mirror, remote, now);
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
            for table in [&mut self.clients, &mut self.waiting_servers] {
                if let Entry::Occupied(entry) = table.entry(span.mirror)
                    && *entry.get() == key
                {
                    entry.remove();
                }
            }
        }
    }

    /// Parent of a server span without a header: the client on the other end, if seen.
    fn server_parent(
        &mut self,
        mirror: MirrorKey,
        key: SpanKey,
        forward: u64,
    ) -> (TraceRef, Option<SpanId>, &'static str) {
        if let Some(client) = self.clients.get(&mirror).and_then(|k| self.spans.get(k)) {
            if !same_request(client.forward, forward) {
                self.stats.mirror_mismatches += 1;
                return (TraceRef::unsettled(self.ids.trace_id()), None, "none");
            }
            self.stats.parent_from_connection += 1;
            return (client.trace.clone(), Some(client.span_id), "connection");
        }
        if let Some(remote) = self.remote.get(&mirror)
            && same_request(remote.forward, forward)
        {
            self.stats.parent_from_peer += 1;
            return (TraceRef::new(remote.trace_id), Some(remote.span_id), "peer");
        }
        self.waiting_servers.insert(mirror, key);
        (TraceRef::unsettled(self.ids.trace_id()), None, "none")
    }

    /// Parent of a client span without a header, from the candidates of the rule by unit of work
    /// (thread or goroutine, named by `by_unit.1`) and the proxy rule (when `forward` is known);
    /// see the module's doc for how they combine.
    fn client_parent(
        &mut self,
        pid: u32,
        (by_thread, unit): (Candidates, &'static str),
        forward: u64,
        start: Stamp,
        links: &mut Vec<SpanLink>,
    ) -> ((TraceRef, Option<SpanId>, &'static str), Option<SpanKey>) {
        let by_proxy = if forward == 0 {
            Candidates::None
        } else {
            self.candidates(self.forwardable.get(&(pid, forward)), start.ts)
        };
        let chosen = match (&by_thread, &by_proxy) {
            (Candidates::One(t), Candidates::One(p)) if t != p => None,
            (Candidates::One(t), _) => Some((*t, unit)),
            // The unit serves several, none of them the one asking the same: this write is
            // some other work's, not a forward.
            (Candidates::Several(serving), Candidates::One(p)) if !serving.contains(p) => None,
            (_, Candidates::One(p)) => Some((*p, "proxy")),
            _ => None,
        };
        if let Some((key, evidence)) = chosen
            && let Some(parent) = self.spans.get(&key)
        {
            let found = (parent.trace.clone(), Some(parent.span_id), evidence);
            match evidence {
                "thread" => self.stats.parent_from_thread += 1,
                "goroutine" => self.stats.parent_from_goroutine += 1,
                "callback" => self.stats.parent_from_callback += 1,
                _ => {
                    self.stats.parent_from_proxy += 1;
                    // A request is forwarded once: a later request asking the same (a health
                    // check the proxy makes itself, say) is not its child too.
                    remove_open(&mut self.forwardable, (pid, forward), key);
                }
            }
            return (found, Some(key));
        }
        let mut ambiguous = false;
        for (candidates, reason) in [
            (
                by_thread,
                match unit {
                    "goroutine" => "same goroutine serves several requests",
                    "callback" => "the callback's socket serves several requests",
                    "event-loop thread" => "an event-loop thread serves every request in flight",
                    _ => "same thread serves several requests",
                },
            ),
            (by_proxy, "several requests in flight ask the same"),
        ] {
            let keys = match candidates {
                Candidates::None => continue,
                // Only when the two rules disagree: each names a candidate.
                Candidates::One(key) => vec![key],
                Candidates::Several(keys) => keys,
            };
            ambiguous = true;
            for key in keys {
                if let Some(s) = self.spans.get(&key)
                    && !links.iter().any(|l| l.span_id == s.span_id)
                {
                    links.push(SpanLink {
                        trace_id: s.trace.id(),
                        span_id: s.span_id,
                        reason,
                    });
                }
            }
        }
        let chosen = if ambiguous {
            self.stats.ambiguous += 1;
            (TraceRef::new(self.ids.trace_id()), None, "ambiguous")
        } else {
            (TraceRef::new(self.ids.trace_id()), None, "none")
        };
        (chosen, None)
    }

    /// The callback rule's candidates for a CLIENT request on `conn` begun at `ts` ([`Lookup`]),
    /// `None` where the rule does not apply (not a followed Node.js process, a multiplexed
    /// write, or a thread the probes never saw).
    fn callback_candidates(&mut self, conn: &Connection, end: End, ts: u64) -> Option<Candidates> {
        if !end.thread_causality || !end.in_order || conn.tls {
            return None;
        }
        let lookup = self.callbacks.lookup(conn, end.task);
        let live = |key: &SpanKey| {
            self.spans
                .get(key)
                .is_some_and(|s| s.finished.is_none() && s.start_ts <= ts)
        };
        match lookup {
            Lookup::Unknown => None,
            Lookup::Serving([newest, older]) => {
                Some(match [newest, older].map(|k| k.filter(live)) {
                    [None, None] => Candidates::None,
                    [Some(one), None] | [None, Some(one)] => Candidates::One(one),
                    [Some(a), Some(b)] => Candidates::Several(vec![a, b]),
                })
            }
            Lookup::MadeFor(key) if live(&key) => Some(Candidates::One(key)),
            // Its request's response came after that request ended, or was none's.
            Lookup::NoParent | Lookup::MadeFor(_) => Some(Candidates::None),
        }
    }

    /// The goroutine rule's candidates for a request written by goroutine `g` at `ts`: the
    /// requests its calling goroutine serves; when `net/http` handed the request over (so the
    /// caller is known to have made it), else those of the nearest ancestor serving any that
    /// started before the spawn that leads here.
    fn goroutine_candidates(&mut self, pid: u32, g: u64, ts: u64) -> Candidates {
        /// Spawns followed up from the caller: a handler's `go` statements nest shallowly.
        const MAX_DEPTH: usize = 8;
        let (mut at, handed_over) = self.goroutines.take_caller(pid, g);
        let mut before = ts;
        for _ in 0..MAX_DEPTH {
            let found = self.candidates(self.goroutine_serving.get(&(pid, at)), before);
            if !matches!(found, Candidates::None) || !handed_over {
                // Without a hand-off the writer may be a helper a request spawned once and that
                // now writes for others (a connection's writer): only its own requests count.
                return found;
            }
            let Some((parent, spawned)) = self.goroutines.parent(pid, at) else {
                return Candidates::None;
            };
            // 0: the spawner was unknown. A record spawned after the child it should be the
            // parent of belongs to a later goroutine that reused the `g`: the chain is broken.
            if parent == 0 || spawned > before {
                return Candidates::None;
            }
            at = parent;
            before = spawned;
        }
        Candidates::None
    }

    /// The open SERVER spans of `open` that started before `ts`.
    fn candidates(&self, open: Option<&Serving>, ts: u64) -> Candidates {
        let Some(open) = open else {
            return Candidates::None;
        };
        let live = |k: &&SpanKey| {
            self.spans
                .get(k)
                .is_some_and(|s| s.finished.is_none() && s.start_ts <= ts)
        };
        // The usual case, one request, without collecting.
        if let Serving::One(k) = open {
            return if live(&k) {
                Candidates::One(*k)
            } else {
                Candidates::None
            };
        }
        let keys: Vec<SpanKey> = open.keys().iter().filter(live).copied().collect();
        match keys.as_slice() {
            [] => Candidates::None,
            [one] => Candidates::One(*one),
            _ => Candidates::Several(keys),
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
        span.finished = Some(Done {
            end_ts: exchange.end.ts.max(span.start_ts),
            wait_ns: exchange
                .response_start
                .map(|first| first.ts.saturating_sub(exchange.request_end.ts)),
            summary: exchange.summary,
        });
        if server && !span.datagram && span.unit == Unit::None {
            // A multiplexed stream (HTTP/2): whether a write answered it.
            let stream = Stream {
                key,
                began: span.start_ts,
                parent: (span.span_id, span.trace.clone()),
            };
            self.workers.ended(span.pid, stream, exchange.end.ts);
        }
        let Some(span) = self.spans.get_mut(&key) else {
            return;
        };
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
        if server && task != 0 && !conn.tls && self.tasks.is_tracked(conn.process.pid) {
            self.claim_for(key, conn, task);
        }
        let Some(span) = self.spans.get_mut(&key) else {
            return;
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

    /// The task rule: the SERVER span `key` on `conn`, whose response was written by the task
    /// running in `writer`, adopts the CLIENT requests made inside it by that task or the tasks
    /// it created (see the module's doc). The writer must be the request's own task (made after
    /// the request began: uvicorn, aiohttp) or its connection's (made after the connection
    /// opened, answering nothing but that connection's requests, one after the other: asyncio
    /// streams, Sanic); a task that answers on two connections, or two requests at once, is
    /// shared from then on and names no parent.
    fn claim_for(&mut self, key: SpanKey, conn: &Connection, writer: u64) {
        /// Writers remembered; cleared past this (a shared one may then go unnoticed once).
        const MAX_WRITERS: usize = 64 * 1024;
        let pid = conn.process.pid;
        let Some(creation) = self.tasks.creation(pid, writer) else {
            return;
        };
        let Some(server) = self.spans.get(&key) else {
            return;
        };
        let (start, end) = (
            server.start_ts,
            server.finished.as_ref().map_or(u64::MAX, |d| d.end_ts),
        );
        // Made before the connection opened: a task of the service's own (a batcher, the main
        // task), whatever it answers.
        if creation.at < start && creation.at < conn.opened_ns {
            return;
        }
        let (parent_id, parent_trace) = (server.span_id, server.trace.clone());
        if self.task_writers.len() >= MAX_WRITERS {
            self.task_writers.clear();
        }
        match self.task_writers.entry((pid, writer, creation.serial)) {
            Entry::Occupied(mut known) => {
                let known = known.get_mut();
                if known.shared {
                    return;
                }
                if known.conn_id != conn.conn_id || known.last_end > start {
                    known.shared = true;
                    self.stats.task_shared_writers += 1;
                    return;
                }
                known.last_end = end;
            }
            Entry::Vacant(none) => {
                none.insert(TaskWriter {
                    conn_id: conn.conn_id,
                    last_end: end,
                    shared: false,
                });
            }
        }
        let Some(waiting) = self.task_waiting.remove(&(pid, writer)) else {
            return;
        };
        let mut kept = Vec::new();
        for client_key in waiting {
            let Some(client) = self.spans.get_mut(&client_key) else {
                continue;
            };
            let Some(lineage) = &client.lineage else {
                continue;
            };
            let ours = lineage.contains(&(writer, creation.serial))
                && client.parent.is_none()
                && client.start_ts >= start
                && client.start_ts <= end;
            if !ours {
                kept.push(client_key);
                continue;
            }
            client.parent = Some(parent_id);
            client.evidence = "task";
            client.lineage = None;
            client.trace.join(&parent_trace);
            self.stats.parent_from_task += 1;
            self.stats.roots = self.stats.roots.saturating_sub(1);
        }
        if !kept.is_empty() {
            self.task_waiting.insert((pid, writer), kept);
        }
    }

    /// What a syscall of thread `tid` at `ts` on the multiplexed connection `conn` did, for the
    /// worker rule ([`super::workers`]): a read makes the thread an I/O thread; a server's write
    /// settles the CLIENT requests the thread made since its last one.
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
    fn settle_workers_by_ends(&mut self, now: u64) {
        let settled = self.workers.settle_ended(now, call_state(&self.spans));
        self.apply_worker_parents(settled);
    }

    /// At `ts`, a connection of `pid` the agent does not follow (evicted, unknown, not parsed)
    /// carried data: the worker rule cannot know every stream of `pid` for a while.
    pub fn stream_may_be_unknown(&mut self, pid: u32, ts: u64) {
        self.workers.incomplete(pid, ts);
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
    fn settle_workers(&mut self, now: u64, flush: bool) {
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

    /// An asyncio task whose context is `child` was created in `parent` (0: unknown). Requests
    /// waiting under a context whose address a new task now has can no longer be claimed
    /// through it.
    pub fn on_py_task(&mut self, pid: u32, tid: u32, child: u64, parent: u64, ts: u64) {
        if self.tasks.spawned(pid, tid, child, parent, ts).is_some() {
            self.task_waiting.remove(&(pid, child));
        }
    }

    /// Takes span `key`, which waited for the task rule, off the lists it waited in.
    fn stop_waiting(&mut self, pid: u32, key: SpanKey, lineage: &[(u64, u64)]) {
        for &(task, _) in lineage {
            if let Entry::Occupied(mut list) = self.task_waiting.entry((pid, task)) {
                list.get_mut().retain(|k| *k != key);
                if list.get().is_empty() {
                    list.remove();
                }
            }
        }
    }

    /// Moves spans whose wait is over to `out`, at most `max` of them (callers export in
    /// chunks: a flush of everything held must not build every span at once); everything
    /// finished is due when `flush`. Returns whether more are due.
    pub fn poll(
        &mut self,
        now_mono: u64,
        flush: bool,
        out: &mut Vec<SpanData>,
        max: usize,
    ) -> bool {
        self.announce_settled(now_mono, flush);
        self.remote.expire(now_mono);
        // By the events' time, but never more than a tick behind the clock (no events come
        // while the services are idle).
        let settle_at = self.last_event_ts.max(now_mono.saturating_sub(100_000_000));
        self.settle_workers(settle_at, flush);
        if !flush {
            // (At a flush, the end of events is no evidence that streams ended.)
            self.settled_by_ends_at = self.settled_by_ends_at.max(settle_at);
            self.settle_workers_by_ends(self.settled_by_ends_at);
        }
        loop {
            let key = if let Some(&key) = self.ready_now.front() {
                if out.len() >= max {
                    return true;
                }
                self.ready_now.pop_front();
                key
            } else if let Some(&(ready_at, key)) = self.ready.front() {
                if !flush && ready_at > now_mono {
                    break;
                }
                if out.len() >= max {
                    return true;
                }
                self.ready.pop_front();
                key
            } else {
                break;
            };
            let Some(span) = self.spans.remove(&key) else {
                continue;
            };
            for table in [&mut self.clients, &mut self.waiting_servers] {
                if let Entry::Occupied(entry) = table.entry(span.mirror)
                    && *entry.get() == key
                {
                    entry.remove();
                }
            }
            if let Some(lineage) = &span.lineage {
                self.stop_waiting(span.pid, key, lineage);
            }
            let (local, remote) = span.ends();
            let Some(finished) = span.finished else {
                continue;
            };
            self.stats.spans_exported += 1;
            let end_unix_nano = self.clock.to_unix_ns(finished.end_ts);
            let (name, mut attributes, status) = finished.summary.expand(
                &SpanFacts {
                    server: span.kind == SpanKind::Server,
                    local,
                    remote,
                },
                &mut self.strings,
            );
            if span.tls {
                // The protocol's summary knows bytes, not where they were read: a TLS
                // connection's URLs are https.
                for kv in &mut attributes {
                    if kv.key == "url.scheme" {
                        kv.value = AttrValue::Str("https".into());
                    }
                }
                attributes.push(KeyValue::str("tls.protocol.name", "tls"));
            }
            attributes.extend([
                KeyValue::str(
                    "network.transport",
                    if span.datagram { "udp" } else { "tcp" },
                ),
                KeyValue::shared("network.peer.address", self.strings.ip(remote.ip())),
                KeyValue::int("network.peer.port", i64::from(remote.port())),
                KeyValue::str("sockspan.parent.evidence", span.evidence),
                KeyValue::int("thread.id", i64::from(span.tid)),
            ]);
            if let Some(wait) = finished.wait_ns {
                attributes.push(KeyValue::int(
                    "sockspan.response.wait_ns",
                    i64::try_from(wait).unwrap_or(i64::MAX),
                ));
            }
            out.push(SpanData {
                trace_id: span.trace.id(),
                span_id: span.span_id,
                parent_span_id: span.parent,
                links: span.links,
                kind: span.kind,
                name,
                start_unix_nano: self.clock.to_unix_ns(span.start_ts),
                end_unix_nano,
                attributes,
                status,
                resource: span.resource,
            });
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::http1::{Head, Side, head::parse_head, summary::Http1Summary};
    use agent_common::Role;

    #[test]
    fn a_thread_serving_goes_from_one_to_many_and_back() {
        let mut serving = Serving::One((1, 0));
        assert!(!serving.remove((9, 9)), "another key leaves it as it was");
        serving.push((2, 0));
        serving.push((3, 0));
        assert_eq!(serving.keys(), &[(1, 0), (2, 0), (3, 0)]);
        assert!(!serving.remove((2, 0)));
        assert!(!serving.remove((1, 0)));
        assert!(matches!(serving, Serving::One((3, 0))));
        assert!(serving.remove((3, 0)), "the last key empties it");
    }

    #[test]
    fn endpoints_of_both_families_meet_and_come_back_as_sent() {
        let v4: SocketAddr = "127.0.0.1:8080".parse().expect("v4");
        let mapped: SocketAddr = "[::ffff:127.0.0.1]:8080".parse().expect("mapped");
        let v6: SocketAddr = "[::1]:8080".parse().expect("v6");
        assert_eq!(Endpoint::new(v4), Endpoint::new(mapped));
        assert_ne!(Endpoint::new(v4), Endpoint::new(v6));
        assert_ne!(
            Endpoint::new(v4),
            Endpoint::new("127.0.0.1:8081".parse().expect("port"))
        );
        assert_eq!(Endpoint::new(v4).addr(), v4);
        assert_eq!(Endpoint::new(mapped).addr(), v4);
        assert_eq!(Endpoint::new(v6).addr(), v6);
    }

    fn conn(conn_id: u64, pid: u32, role: Role, local_port: u16, remote_port: u16) -> Connection {
        Connection::loopback_for_test(conn_id, pid, role, local_port, remote_port)
    }

    fn head(raw: &[u8]) -> Head {
        parse_head(Side::Request, raw)
            .expect("valid")
            .expect("complete")
            .0
    }

    fn stamp(ts: u64, tid: u32, offset: u64) -> Stamp {
        Stamp { ts, tid, offset }
    }

    /// A request seen on `conn` at `start`, keyed by its offset as HTTP/1 keys it.
    fn on_req(
        t: &mut Tracer,
        conn: &Connection,
        server: bool,
        trace: Option<&TraceHeaders>,
        start: Stamp,
    ) {
        let end = End {
            server,
            thread_causality: true,
            in_order: true,
            task: 0,
        };
        t.on_request(conn, end, start.offset, 0, trace, start);
    }

    fn exchange(request: Head, start: Stamp, end_ts: u64) -> Exchange {
        let response = parse_head(
            Side::Response,
            b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
        )
        .expect("valid")
        .expect("complete")
        .0;
        Exchange {
            key: start.offset,
            summary: Box::new(Http1Summary::new(request, Some(&response))),
            request_start: start,
            request_end: start,
            response_start: Some(Stamp {
                ts: end_ts,
                ..start
            }),
            end: Stamp {
                ts: end_ts,
                ..start
            },
        }
    }

    fn tracer() -> Tracer {
        Tracer::new(
            TraceConfig {
                link_delay: Duration::ZERO,
                max_spans: 1000,
            },
            Resources::new(super::super::resource::ServiceNameRule::Auto),
        )
    }

    fn drain(t: &mut Tracer) -> Vec<SpanData> {
        let mut out = Vec::new();
        let _ = t.poll(u64::MAX, true, &mut out, usize::MAX);
        out
    }

    #[test]
    fn server_seen_before_its_client_joins_the_client_trace_with_its_subtree() {
        let mut t = tracer();
        let get = head(b"GET /a HTTP/1.1\r\n\r\n");
        // Process 2 serves on :80 (connection from :5000); its thread 20 then calls out.
        let server_conn = conn(1, 2, Role::Server, 80, 5000);
        let downstream = conn(2, 2, Role::Client, 6000, 90);
        let client_conn = conn(3, 1, Role::Client, 5000, 80);
        on_req(
            &mut t,
            &server_conn,
            true,
            get.headers.trace.as_deref(),
            stamp(10, 20, 0),
        );
        on_req(
            &mut t,
            &downstream,
            false,
            get.headers.trace.as_deref(),
            stamp(11, 20, 0),
        );
        // Only now does the client end appear (its event came late through the ring).
        on_req(
            &mut t,
            &client_conn,
            false,
            get.headers.trace.as_deref(),
            stamp(5, 10, 0),
        );
        for (c, s, end) in [
            (&downstream, 11, 12),
            (&server_conn, 10, 13),
            (&client_conn, 5, 14),
        ] {
            t.on_exchange(c, exchange(get.clone(), stamp(s, 0, 0), end), 0, 0);
        }
        let spans = drain(&mut t);
        assert_eq!(spans.len(), 3);
        let (down, server, client) = (&spans[0], &spans[1], &spans[2]);
        assert_eq!(server.parent_span_id, Some(client.span_id));
        assert_eq!(down.parent_span_id, Some(server.span_id));
        assert!(
            spans.iter().all(|s| s.trace_id == client.trace_id),
            "one trace"
        );
        assert_eq!(t.stats.roots, 1);
    }

    /// A request of an asyncio process (pid 5, loop thread 7) made or read in task `task`.
    fn on_task_req(t: &mut Tracer, conn: &Connection, server: bool, task: u64, start: Stamp) {
        let end = End {
            server,
            thread_causality: true,
            in_order: true,
            task,
        };
        t.on_request(conn, end, start.offset, 0, None, start);
    }

    fn finish_in_task(t: &mut Tracer, conn: &Connection, start: Stamp, end_ts: u64, task: u64) {
        let get = head(b"GET /a HTTP/1.1\r\n\r\n");
        t.on_exchange(conn, exchange(get, start, end_ts), 0, task);
    }

    /// Node.js: calls named by the libuv callback they were written in, whatever thread serves
    /// what (one thread serves both requests here).
    #[test]
    fn a_node_call_belongs_to_the_request_whose_callback_made_it() {
        use agent_common::node_callback;
        let mut t = tracer();
        t.callbacks.track(5);
        let (r1, r2) = (
            conn(1, 5, Role::Server, 80, 5001),
            conn(2, 5, Role::Server, 80, 5002),
        );
        let (x, y, z) = (
            conn(3, 5, Role::Client, 6000, 90),
            conn(4, 5, Role::Client, 6001, 90),
            conn(6, 5, Role::Client, 6002, 91),
        );
        on_task_req(&mut t, &r1, true, node_callback(Some(1)), stamp(10, 7, 0));
        on_task_req(&mut t, &r2, true, node_callback(Some(2)), stamp(11, 7, 0));
        // Written in r1's socket's callback; a timer's call; one made on x's response.
        on_task_req(&mut t, &x, false, node_callback(Some(1)), stamp(12, 7, 0));
        on_task_req(&mut t, &y, false, node_callback(None), stamp(13, 7, 0));
        finish_in_task(&mut t, &x, stamp(12, 7, 0), 14, node_callback(Some(3)));
        on_task_req(&mut t, &z, false, node_callback(Some(3)), stamp(15, 7, 0));
        for (c, start, end) in [(&y, 13, 16), (&z, 15, 17), (&r2, 11, 18), (&r1, 10, 19)] {
            finish_in_task(&mut t, c, stamp(start, 7, 0), end, 0);
        }
        // Export order follows when traces settle: each span is found by when it began.
        let mut spans = drain(&mut t);
        spans.sort_by_key(|s| s.start_unix_nano);
        let [r1, _r2, x, y, z] = spans.as_slice() else {
            panic!("five spans: {spans:#?}")
        };
        assert_eq!(x.parent_span_id, Some(r1.span_id));
        assert_eq!(z.parent_span_id, Some(r1.span_id));
        assert_eq!(y.parent_span_id, None, "a timer's call is nobody's");
        assert!(y.links.is_empty());
        assert_eq!(evidence(x), &AttrValue::Str("callback".into()));
        assert_eq!(evidence(z), &AttrValue::Str("callback".into()));
        assert_eq!(t.stats.parent_from_callback, 2);
        assert_eq!(t.callbacks.stats.outside, 1);
    }

    #[test]
    fn a_pool_threads_call_belongs_to_the_stream_it_answers_next() {
        use crate::protocol::{Answered, StreamIo};
        let mut t = tracer();
        t.allow_worker_rule(5);
        let (s, c) = (
            conn(1, 5, Role::Server, 80, 5001),
            conn(2, 5, Role::Client, 6000, 90),
        );
        let req = || head(b"POST /a.B/C HTTP/1.1\r\nHost: x\r\n\r\n");
        let end = |server, lone| End {
            server,
            thread_causality: lone,
            in_order: false,
            task: 0,
        };
        let wrote = |streams: &[u64]| {
            let mut answered = Answered::default();
            for &id in streams {
                answered.add(id);
            }
            StreamIo::Wrote(answered)
        };
        // I/O thread 7 reads streams 1, 3 and 5; it writes a call of its own too (nobody's).
        for (id, ts) in [(1, 10), (3, 11), (5, 12)] {
            t.on_stream_io(&s, StreamIo::Read { placed: true }, 7, ts);
            t.on_request(&s, end(true, false), id, 0, None, stamp(ts, 7, id));
        }
        t.on_request(&c, end(false, true), 11, 0, None, stamp(13, 7, 11));
        // Worker 8 calls (stream 1 of the client connection) and answers 1 alone; worker 9
        // calls (3) and answers 3 and 5 in one write: either may have been its.
        t.on_request(&c, end(false, true), 1, 0, None, stamp(14, 8, 1));
        t.on_request(&c, end(false, true), 3, 0, None, stamp(15, 9, 3));
        for (id, start, end_ts) in [(11, 13, 16), (1, 14, 17), (3, 15, 18)] {
            t.on_exchange(&c, exchange(req(), stamp(start, 7, id), end_ts), 0, 0);
        }
        t.on_stream_io(&s, wrote(&[1]), 8, 19);
        t.on_exchange(&s, exchange(req(), stamp(10, 7, 1), 19), 0, 0);
        t.on_stream_io(&s, wrote(&[3, 5]), 9, 20);
        for (id, start) in [(3, 11), (5, 12)] {
            t.on_exchange(&s, exchange(req(), stamp(start, 7, id), 20), 0, 0);
        }
        let mut spans = drain(&mut t);
        spans.sort_by_key(|s| s.start_unix_nano);
        let [s1, _s3, _s5, io_call, c1, c3] = spans.as_slice() else {
            panic!("six spans: {spans:#?}")
        };
        assert_eq!(c1.parent_span_id, Some(s1.span_id));
        assert_eq!(c1.trace_id, s1.trace_id);
        assert_eq!(evidence(c1), &AttrValue::Str("worker".into()));
        assert_eq!(c3.parent_span_id, None, "3 or 5");
        assert_eq!(io_call.parent_span_id, None, "an I/O thread's call");
        assert_eq!(t.stats.parent_from_worker, 1);
        assert_eq!(t.worker_stats().waited, 2);
    }

    #[test]
    fn a_request_made_by_a_task_belongs_to_the_request_its_ancestor_answered() {
        let mut t = tracer();
        t.tasks.track(5);
        let (r1, r2) = (
            conn(1, 5, Role::Server, 80, 5001),
            conn(2, 5, Role::Server, 80, 5002),
        );
        let x = conn(3, 5, Role::Client, 6000, 90);
        // Two requests in flight on one loop thread, each handled by a task made after it began
        // (0xa1, 0xa2, by the connections' reader contexts); 0xa1 gathers into 0xc1.
        on_task_req(&mut t, &r1, true, 0x91, stamp(10, 7, 0));
        on_task_req(&mut t, &r2, true, 0x92, stamp(11, 7, 0));
        t.on_py_task(5, 7, 0xa1, 0x91, 12);
        t.on_py_task(5, 7, 0xa2, 0x92, 13);
        t.on_py_task(5, 7, 0xc1, 0xa1, 14);
        on_task_req(&mut t, &x, false, 0xc1, stamp(15, 7, 0));
        finish_in_task(&mut t, &x, stamp(15, 7, 0), 16, 0xc1);
        finish_in_task(&mut t, &r2, stamp(11, 7, 0), 17, 0xa2);
        finish_in_task(&mut t, &r1, stamp(10, 7, 0), 18, 0xa1);
        let spans = drain(&mut t);
        let [x, r2, r1] = spans.as_slice() else {
            panic!("three spans: {spans:#?}")
        };
        assert_eq!(x.parent_span_id, Some(r1.span_id));
        assert_eq!(x.trace_id, r1.trace_id);
        assert_ne!(x.trace_id, r2.trace_id);
        assert_eq!(t.stats.parent_from_task, 1);
        assert!(
            x.attributes
                .iter()
                .any(|kv| kv.key == "sockspan.parent.evidence"
                    && kv.value == AttrValue::Str("task".into()))
        );
    }

    #[test]
    fn on_a_loop_thread_only_the_task_rule_names_parents() {
        let mut t = tracer();
        t.tasks.track(5);
        let mut r1 = conn(1, 5, Role::Server, 80, 5001);
        r1.opened_ns = 8;
        let (bg, old) = (
            conn(3, 5, Role::Client, 6000, 90),
            conn(4, 5, Role::Client, 6001, 90),
        );
        // 0xb0: a task made before the agent followed the process (no creation seen); 0xa0: a
        // task made before the request's connection opened (the service's own).
        t.on_py_task(5, 7, 0xa0, 0x90, 5);
        on_task_req(&mut t, &r1, true, 0x91, stamp(10, 7, 0));
        t.on_py_task(5, 7, 0xa1, 0x91, 12);
        on_task_req(&mut t, &bg, false, 0xb0, stamp(13, 7, 0));
        on_task_req(&mut t, &old, false, 0xa0, stamp(14, 7, 0));
        finish_in_task(&mut t, &bg, stamp(13, 7, 0), 15, 0xb0);
        finish_in_task(&mut t, &old, stamp(14, 7, 0), 15, 0xa0);
        // Even were the old task the writer, it was made before the request's connection
        // opened: no claim.
        finish_in_task(&mut t, &r1, stamp(10, 7, 0), 18, 0xa0);
        let spans = drain(&mut t);
        assert!(
            spans.iter().all(|s| s.parent_span_id.is_none()),
            "one request open on the thread is no evidence: {spans:#?}"
        );
    }

    #[test]
    fn a_task_that_answers_two_requests_names_no_parent_and_reuse_breaks_lineage() {
        let mut t = tracer();
        t.tasks.track(5);
        let (r1, r2) = (
            conn(1, 5, Role::Server, 80, 5001),
            conn(2, 5, Role::Server, 80, 5002),
        );
        let (x, y) = (
            conn(3, 5, Role::Client, 6000, 90),
            conn(4, 5, Role::Client, 6001, 90),
        );
        on_task_req(&mut t, &r1, true, 0x91, stamp(10, 7, 0));
        on_task_req(&mut t, &r2, true, 0x92, stamp(10, 7, 100));
        t.on_py_task(5, 7, 0xa1, 0x91, 12);
        on_task_req(&mut t, &x, false, 0xa1, stamp(13, 7, 0));
        finish_in_task(&mut t, &x, stamp(13, 7, 0), 14, 0xa1);
        // 0xa1 answers r2, then r1: the first answer looked like the task's own request and
        // took x (the limit of the rule, documented in docs/causality.md); the second shows the
        // task is shared, and it names no parent from then on.
        finish_in_task(&mut t, &r2, stamp(10, 7, 100), 15, 0xa1);
        finish_in_task(&mut t, &r1, stamp(10, 7, 0), 16, 0xa1);
        assert_eq!(t.stats.task_shared_writers, 1);
        // A context whose address a new task took: requests waiting under the old one are not
        // claimed through the new one.
        let r3 = conn(5, 5, Role::Server, 80, 5003);
        on_task_req(&mut t, &r3, true, 0x93, stamp(20, 7, 0));
        t.on_py_task(5, 7, 0xa3, 0x93, 21);
        t.on_py_task(5, 7, 0xc3, 0xa3, 22);
        on_task_req(&mut t, &y, false, 0xc3, stamp(23, 7, 0));
        finish_in_task(&mut t, &y, stamp(23, 7, 0), 24, 0xc3);
        t.on_py_task(5, 7, 0xa3, 0x99, 25);
        finish_in_task(&mut t, &r3, stamp(20, 7, 0), 26, 0xa3);
        let _ = drain(&mut t);
        assert_eq!(t.stats.parent_from_task, 1, "x only, by r2's claim; y none");
    }

    #[test]
    fn a_connection_task_answers_its_requests_in_turn() {
        let mut t = tracer();
        t.tasks.track(5);
        let mut c1 = conn(1, 5, Role::Server, 80, 5001);
        c1.opened_ns = 5;
        let mut c2 = conn(2, 5, Role::Server, 80, 5002);
        c2.opened_ns = 5;
        let (x, y, z) = (
            conn(3, 5, Role::Client, 6000, 90),
            conn(4, 5, Role::Client, 6001, 90),
            conn(6, 5, Role::Client, 6002, 90),
        );
        // 0xa1 is c1's task (made after it opened); it answers two requests one after the other.
        t.on_py_task(5, 7, 0xa1, 0x90, 6);
        on_task_req(&mut t, &c1, true, 0x91, stamp(10, 7, 0));
        on_task_req(&mut t, &x, false, 0xa1, stamp(11, 7, 0));
        finish_in_task(&mut t, &x, stamp(11, 7, 0), 12, 0xa1);
        finish_in_task(&mut t, &c1, stamp(10, 7, 0), 13, 0xa1);
        on_task_req(&mut t, &c1, true, 0x91, stamp(20, 7, 100));
        on_task_req(&mut t, &y, false, 0xa1, stamp(21, 7, 0));
        finish_in_task(&mut t, &y, stamp(21, 7, 0), 22, 0xa1);
        finish_in_task(&mut t, &c1, stamp(20, 7, 100), 23, 0xa1);
        assert_eq!(t.stats.parent_from_task, 2, "each request its own call");
        // Answering on another connection shows it is nobody's own task.
        on_task_req(&mut t, &c2, true, 0x92, stamp(30, 7, 0));
        on_task_req(&mut t, &z, false, 0xa1, stamp(31, 7, 0));
        finish_in_task(&mut t, &z, stamp(31, 7, 0), 32, 0xa1);
        finish_in_task(&mut t, &c2, stamp(30, 7, 0), 33, 0xa1);
        assert_eq!(t.stats.parent_from_task, 2);
        assert_eq!(t.stats.task_shared_writers, 1);
    }

    #[test]
    fn a_thread_seen_serving_two_requests_at_once_is_an_event_loop() {
        let mut t = tracer();
        let (r1, r2, r3) = (
            conn(1, 5, Role::Server, 80, 5001),
            conn(2, 5, Role::Server, 80, 5002),
            conn(3, 5, Role::Server, 80, 5003),
        );
        let x = conn(4, 5, Role::Client, 6000, 90);
        on_req(&mut t, &r1, true, None, stamp(10, 7, 0));
        on_req(&mut t, &r2, true, None, stamp(11, 7, 0));
        finish_in_task(&mut t, &r1, stamp(10, 7, 0), 12, 0);
        finish_in_task(&mut t, &r2, stamp(11, 7, 0), 13, 0);
        // Later one request alone is open on the thread: a write is no longer taken for its.
        on_req(&mut t, &r3, true, None, stamp(20, 7, 0));
        on_req(&mut t, &x, false, None, stamp(21, 7, 0));
        let spans = {
            finish_in_task(&mut t, &x, stamp(21, 7, 0), 22, 0);
            finish_in_task(&mut t, &r3, stamp(20, 7, 0), 23, 0);
            drain(&mut t)
        };
        assert_eq!(t.stats.event_loop_threads, 1);
        let x = spans
            .iter()
            .find(|s| s.kind == SpanKind::Client)
            .expect("client");
        assert_eq!(x.parent_span_id, None);
        assert_eq!(x.links.len(), 1);
        assert_eq!(
            x.links[0].reason,
            "an event-loop thread serves every request in flight"
        );
    }

    #[test]
    fn requests_of_an_abandoned_connection_are_nobodys_parent() {
        let mut t = tracer();
        let get = head(b"GET /a HTTP/1.1\r\n\r\n");
        let served = conn(1, 2, Role::Server, 80, 5000);
        let out = conn(2, 2, Role::Client, 6000, 90);
        on_req(&mut t, &served, true, None, stamp(10, 7, 0));
        // The connection was evicted with its request open: it will never finish.
        t.abandon_connections(&[1]);
        on_req(&mut t, &out, false, None, stamp(12, 7, 0));
        t.on_exchange(&out, exchange(get, stamp(12, 7, 0), 13), 0, 0);
        let spans = drain(&mut t);
        assert_eq!(spans.len(), 1);
        assert_eq!(spans[0].parent_span_id, None);
        assert_eq!(t.stats.abandoned, 1);
        assert_eq!(t.held(), 0);
    }

    #[test]
    fn a_thread_serving_two_requests_gives_links_not_a_parent() {
        let mut t = tracer();
        let get = head(b"GET /a HTTP/1.1\r\n\r\n");
        let a = conn(1, 2, Role::Server, 80, 5000);
        let b = conn(2, 2, Role::Server, 80, 5001);
        let out = conn(3, 2, Role::Client, 6000, 90);
        on_req(
            &mut t,
            &a,
            true,
            get.headers.trace.as_deref(),
            stamp(10, 7, 0),
        );
        on_req(
            &mut t,
            &b,
            true,
            get.headers.trace.as_deref(),
            stamp(11, 7, 0),
        );
        on_req(
            &mut t,
            &out,
            false,
            get.headers.trace.as_deref(),
            stamp(12, 7, 0),
        );
        t.on_exchange(&out, exchange(get.clone(), stamp(12, 7, 0), 13), 0, 0);
        let spans = drain(&mut t);
        assert_eq!(spans.len(), 1);
        assert_eq!(spans[0].parent_span_id, None);
        assert_eq!(spans[0].links.len(), 2);
        assert_eq!(t.stats.ambiguous, 1);
    }

    /// A request seen on `conn` asking `method target`, with only the proxy rule's fingerprint.
    fn on_asking(t: &mut Tracer, conn: &Connection, server: bool, ask: &str, start: Stamp) {
        let (method, target) = ask.split_once(' ').expect("METHOD TARGET");
        let end = End {
            server,
            thread_causality: true,
            in_order: true,
            task: 0,
        };
        let forward = crate::protocol::forward_key(method, target);
        t.on_request(conn, end, start.offset, forward, None, start);
    }

    fn finish(t: &mut Tracer, conn: &Connection, start: Stamp, end_ts: u64) {
        let get = head(b"GET /x HTTP/1.1\r\n\r\n");
        t.on_exchange(conn, exchange(get, start, end_ts), 0, 0);
    }

    #[test]
    fn a_forwarded_request_is_the_child_of_the_one_request_asking_the_same() {
        let mut t = tracer();
        // An event loop (one thread, 7) holds two requests; it forwards the second.
        let a = conn(1, 2, Role::Server, 80, 5000);
        let b = conn(2, 2, Role::Server, 80, 5001);
        let up = conn(3, 2, Role::Client, 6000, 90);
        on_asking(&mut t, &a, true, "GET /items/1", stamp(10, 7, 0));
        on_asking(&mut t, &b, true, "GET /items/2", stamp(11, 7, 0));
        on_asking(&mut t, &up, false, "GET /items/2", stamp(12, 7, 0));
        finish(&mut t, &up, stamp(12, 7, 0), 13);
        finish(&mut t, &b, stamp(11, 7, 0), 14);
        finish(&mut t, &a, stamp(10, 7, 0), 15);
        let spans = drain(&mut t);
        let (forwarded, b_span) = (&spans[0], &spans[1]);
        assert_eq!(forwarded.parent_span_id, Some(b_span.span_id));
        assert_eq!(forwarded.trace_id, b_span.trace_id);
        assert_eq!(t.stats.parent_from_proxy, 1);
        assert_eq!(t.stats.ambiguous, 0);
    }

    #[test]
    fn two_requests_asking_the_same_give_links_not_a_parent() {
        let mut t = tracer();
        let a = conn(1, 2, Role::Server, 80, 5000);
        let b = conn(2, 2, Role::Server, 80, 5001);
        let up = conn(3, 2, Role::Client, 6000, 90);
        on_asking(&mut t, &a, true, "GET /same", stamp(10, 7, 0));
        on_asking(&mut t, &b, true, "GET /same", stamp(11, 8, 0));
        // Written on a thread serving nothing (a proxy's own I/O thread).
        on_asking(&mut t, &up, false, "GET /same", stamp(12, 9, 0));
        finish(&mut t, &up, stamp(12, 9, 0), 13);
        let spans = drain(&mut t);
        assert_eq!(spans[0].parent_span_id, None);
        assert_eq!(spans[0].links.len(), 2);
        assert!(
            spans[0]
                .links
                .iter()
                .all(|l| l.reason == "several requests in flight ask the same")
        );
        assert_eq!(t.stats.ambiguous, 1);
    }

    #[test]
    fn thread_and_proxy_rules_that_disagree_name_no_parent() {
        let mut t = tracer();
        // Thread 7 serves /y; thread 8 serves /x; thread 7 then asks /x of another service.
        let y = conn(1, 2, Role::Server, 80, 5000);
        let x = conn(2, 2, Role::Server, 80, 5001);
        let out = conn(3, 2, Role::Client, 6000, 90);
        on_asking(&mut t, &y, true, "GET /y", stamp(10, 7, 0));
        on_asking(&mut t, &x, true, "GET /x", stamp(11, 8, 0));
        on_asking(&mut t, &out, false, "GET /x", stamp(12, 7, 0));
        finish(&mut t, &out, stamp(12, 7, 0), 13);
        let spans = drain(&mut t);
        assert_eq!(spans[0].parent_span_id, None);
        assert_eq!(spans[0].links.len(), 2);
        assert_eq!(t.stats.parent_from_thread + t.stats.parent_from_proxy, 0);
    }

    #[test]
    fn a_request_is_forwarded_once() {
        let mut t = tracer();
        let a = conn(1, 2, Role::Server, 80, 5000);
        let up = conn(3, 2, Role::Client, 6000, 90);
        let again = conn(4, 2, Role::Client, 6001, 90);
        on_asking(&mut t, &a, true, "GET /healthz", stamp(10, 7, 0));
        on_asking(&mut t, &up, false, "GET /healthz", stamp(11, 9, 0));
        on_asking(&mut t, &again, false, "GET /healthz", stamp(12, 9, 0));
        finish(&mut t, &up, stamp(11, 9, 0), 13);
        finish(&mut t, &again, stamp(12, 9, 0), 14);
        finish(&mut t, &a, stamp(10, 7, 0), 15);
        let spans = drain(&mut t);
        let with_parent: Vec<_> = spans
            .iter()
            .filter(|s| s.kind == SpanKind::Client && s.parent_span_id.is_some())
            .collect();
        assert_eq!(
            with_parent.len(),
            1,
            "the first forwards it, the second does not"
        );
        assert_eq!(
            with_parent[0].start_unix_nano,
            spans
                .iter()
                .filter(|s| s.kind == SpanKind::Client)
                .map(|s| s.start_unix_nano)
                .min()
                .expect("clients")
        );
        assert_eq!(t.stats.parent_from_proxy, 1);
    }

    #[test]
    fn a_finished_request_is_not_forwarded_later() {
        let mut t = tracer();
        let a = conn(1, 2, Role::Server, 80, 5000);
        let up = conn(3, 2, Role::Client, 6000, 90);
        on_asking(&mut t, &a, true, "GET /x", stamp(10, 7, 0));
        finish(&mut t, &a, stamp(10, 7, 0), 11);
        on_asking(&mut t, &up, false, "GET /x", stamp(12, 9, 0));
        finish(&mut t, &up, stamp(12, 9, 0), 13);
        let spans = drain(&mut t);
        assert!(spans.iter().all(|s| s.parent_span_id.is_none()));
        assert_eq!(t.stats.parent_from_proxy, 0);
    }

    #[test]
    fn traceparent_is_adopted_for_its_request_only() {
        let mut t = tracer();
        let with = head(b"GET /a HTTP/1.1\r\ntraceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\r\n\r\n");
        let without = head(b"GET /b HTTP/1.1\r\n\r\n");
        let c = conn(1, 2, Role::Server, 80, 5000);
        on_req(
            &mut t,
            &c,
            true,
            with.headers.trace.as_deref(),
            stamp(10, 7, 0),
        );
        t.on_exchange(&c, exchange(with, stamp(10, 7, 0), 11), 0, 0);
        on_req(
            &mut t,
            &c,
            true,
            without.headers.trace.as_deref(),
            stamp(12, 7, 100),
        );
        t.on_exchange(&c, exchange(without, stamp(12, 7, 100), 13), 0, 0);
        let spans = drain(&mut t);
        assert_eq!(
            super::super::ids::HexId::new(&spans[0].trace_id).as_str(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert_eq!(
            spans[0].parent_span_id,
            Some([0x00, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7])
        );
        assert_ne!(spans[1].trace_id, spans[0].trace_id);
        assert_eq!(spans[1].parent_span_id, None);
    }

    #[test]
    fn only_unsettled_traces_wait_for_the_link_delay() {
        let mut t = Tracer::new(
            TraceConfig {
                link_delay: Duration::from_millis(500),
                max_spans: 1000,
            },
            Resources::new(super::super::resource::ServiceNameRule::Auto),
        );
        // A server whose client was not seen may still join the client's trace: it waits.
        let get = head(b"GET /a HTTP/1.1\r\n\r\n");
        let s = conn(1, 2, Role::Server, 80, 5000);
        on_req(
            &mut t,
            &s,
            true,
            get.headers.trace.as_deref(),
            stamp(10, 7, 0),
        );
        t.on_exchange(&s, exchange(get.clone(), stamp(10, 7, 0), 11), 1_000, 0);
        // A client with no parent starts a trace nothing can move: it goes at once.
        let c = conn(3, 4, Role::Client, 6000, 81);
        on_req(
            &mut t,
            &c,
            false,
            get.headers.trace.as_deref(),
            stamp(12, 9, 0),
        );
        t.on_exchange(&c, exchange(get, stamp(12, 9, 0), 13), 1_000, 0);
        let mut out = Vec::new();
        let _ = t.poll(1_000, false, &mut out, usize::MAX);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].kind, SpanKind::Client);
        let _ = t.poll(1_000 + 499_000_000, false, &mut out, usize::MAX);
        assert_eq!(out.len(), 1);
        let _ = t.poll(1_000 + 500_000_000, false, &mut out, usize::MAX);
        assert_eq!(out.len(), 2);
        assert_eq!(out[1].kind, SpanKind::Server);
        assert_eq!(out[1].name, "GET /a");
        assert_eq!(t.held(), 0);
    }

    /// A TCP connection between two hosts' addresses (`a.b.c.d:port`).
    fn between(conn_id: u64, pid: u32, role: Role, local: &str, remote: &str) -> Connection {
        let addr = |text: &str| -> SocketAddr { text.parse().expect("v4 address") };
        let (local, remote) = (addr(local), addr(remote));
        let mut tuple = crate::net::loopback_tuple(local.port(), remote.port());
        let octets = |a: SocketAddr| match a.ip() {
            IpAddr::V4(v4) => v4.octets(),
            IpAddr::V6(_) => panic!("v4 only"),
        };
        tuple.local_addr[..4].copy_from_slice(&octets(local));
        tuple.remote_addr[..4].copy_from_slice(&octets(remote));
        Connection {
            tuple,
            ..conn(conn_id, pid, role, local.port(), remote.port())
        }
    }

    fn evidence(span: &SpanData) -> &AttrValue {
        &span
            .attributes
            .iter()
            .find(|kv| kv.key == "sockspan.parent.evidence")
            .expect("evidence")
            .value
    }

    /// Host A's tracer (10.0.0.1) and host B's (10.0.0.2), both linking with peers; the client
    /// on A and the server on B of one connection.
    fn two_hosts() -> (Tracer, Tracer, Connection, Connection) {
        // The link delay matters: a span waiting for its trace to settle is announced by half
        // of it at the latest.
        let with_delay = || {
            Tracer::new(
                TraceConfig {
                    link_delay: Duration::from_millis(500),
                    max_spans: 1000,
                },
                Resources::new(super::super::resource::ServiceNameRule::Auto),
            )
        };
        let (mut a, mut b) = (with_delay(), with_delay());
        a.enable_peers(LocalAddrs::default());
        b.enable_peers(LocalAddrs::default());
        let client = between(1, 1, Role::Client, "10.0.0.1:5000", "10.0.0.2:80");
        let server = between(7, 2, Role::Server, "10.0.0.2:80", "10.0.0.1:5000");
        (a, b, client, server)
    }

    fn announced(t: &mut Tracer) -> Vec<ClientSpan> {
        let mut out = Vec::new();
        t.take_announcements(&mut out);
        out
    }

    /// The SERVER span on B becomes the CLIENT span's child on A, in its trace, whichever of
    /// B's own request record and A's announcement comes first.
    #[test]
    fn a_server_on_another_host_becomes_the_announced_client_span_child() {
        for announcement_first in [false, true] {
            let (mut a, mut b, client, server) = two_hosts();
            on_asking(&mut a, &client, false, "GET /x", stamp(90, 10, 4242));
            let sent = announced(&mut a);
            assert_eq!(sent.len(), 1, "a settled root is announced at once");
            assert_eq!(sent[0].server, "10.0.0.2:80".parse().expect("addr"));
            assert_eq!(sent[0].key, 4242);
            if announcement_first {
                b.on_peer_client(&sent[0], 0);
            }
            on_asking(&mut b, &server, true, "GET /x", stamp(100, 20, 4242));
            if !announcement_first {
                b.on_peer_client(&sent[0], 0);
            }
            finish(&mut a, &client, stamp(90, 10, 4242), 200);
            finish(&mut b, &server, stamp(100, 20, 4242), 150);
            let (from_a, from_b) = (drain(&mut a), drain(&mut b));
            let (c, s) = (&from_a[0], &from_b[0]);
            assert_eq!(s.parent_span_id, Some(c.span_id), "{announcement_first}");
            assert_eq!(s.trace_id, c.trace_id);
            assert_eq!(evidence(s), &AttrValue::Str("peer".into()));
            assert_eq!(b.stats.parent_from_peer, 1);
        }
    }

    /// An announcement whose request asked something else (another method or target under
    /// the same key) names no parent; nor does one for another connection.
    #[test]
    fn an_announcement_for_another_request_or_connection_links_nothing() {
        let (mut a, mut b, client, server) = two_hosts();
        on_asking(&mut a, &client, false, "GET /x", stamp(90, 10, 4242));
        let sent = announced(&mut a);
        on_asking(&mut b, &server, true, "GET /y", stamp(100, 20, 4242));
        b.on_peer_client(&sent[0], 0);
        let other = between(8, 2, Role::Server, "10.0.0.2:80", "10.0.0.1:5001");
        on_asking(&mut b, &other, true, "GET /x", stamp(110, 21, 4242));
        finish(&mut b, &server, stamp(100, 20, 4242), 150);
        finish(&mut b, &other, stamp(110, 21, 4242), 160);
        for span in drain(&mut b) {
            assert_eq!(span.parent_span_id, None);
        }
        assert_eq!(b.stats.parent_from_peer, 0);
    }

    /// A server on this host (loopback, or one of its addresses) is paired here: nothing goes
    /// out. Without `enable_peers` nothing is announced either.
    #[test]
    fn calls_to_this_host_or_without_peers_are_not_announced() {
        let mut t = tracer();
        let remote = between(1, 1, Role::Client, "10.0.0.1:5000", "10.0.0.2:80");
        on_asking(&mut t, &remote, false, "GET /x", stamp(90, 10, 0));
        assert!(announced(&mut t).is_empty(), "peers off");
        let mut t = tracer();
        t.enable_peers(LocalAddrs::default());
        let local = conn(2, 1, Role::Client, 5001, 80);
        on_asking(&mut t, &local, false, "GET /x", stamp(90, 10, 0));
        assert!(announced(&mut t).is_empty(), "loopback");
    }

    /// The middle host: its SERVER span waits for the front's announcement, so the CLIENT span
    /// it makes meanwhile is not settled; it is announced once the announcement settled it, in
    /// the front's trace.
    #[test]
    fn a_call_from_a_server_waiting_for_its_peer_is_announced_once_settled() {
        let (mut a, mut b, client, server) = two_hosts();
        let onward = between(9, 2, Role::Client, "10.0.0.2:6000", "10.0.0.3:90");
        on_asking(&mut a, &client, false, "GET /x", stamp(90, 10, 1));
        let from_a = announced(&mut a);
        on_asking(&mut b, &server, true, "GET /x", stamp(100, 20, 1));
        on_asking(&mut b, &onward, false, "GET /z", stamp(110, 20, 7));
        assert!(announced(&mut b).is_empty(), "its trace may still move");
        b.announce_settled(120, false);
        assert!(
            announced(&mut b).is_empty(),
            "still unsettled before its deadline"
        );
        let mut late = two_hosts().1;
        let alone = between(3, 2, Role::Server, "10.0.0.2:80", "10.0.0.1:5002");
        on_asking(&mut late, &alone, true, "GET /x", stamp(100, 20, 1));
        on_asking(&mut late, &onward, false, "GET /z", stamp(110, 20, 7));
        late.announce_settled(110 + 250_000_000, false);
        assert_eq!(
            announced(&mut late).len(),
            1,
            "at half the link delay, as it is then"
        );
        b.on_peer_client(&from_a[0], 130);
        b.announce_settled(140, false);
        let from_b = announced(&mut b);
        assert_eq!(from_b.len(), 1);
        assert_eq!(from_b[0].trace_id, from_a[0].trace_id);
        assert_eq!(from_b[0].server, "10.0.0.3:90".parse().expect("addr"));
    }
}

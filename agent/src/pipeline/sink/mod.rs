//! The tracing pipeline's consumer of the event ring: records → conntrack → protocol → trace →
//! exporter, one event at a time, on the thread that drains the ring.

mod budget;
mod rediscover;
mod runtime_probes;
mod self_metrics;
mod shed_openings;

use std::collections::{HashMap, HashSet};

use agent_common::{
    ConnEvent, DataEvent, Direction, GoProbe, GoProbeEvent, InbandEvent, PyTaskEvent,
};

use crate::{
    clock::monotonic_ns,
    conntrack::{Connection, Conntrack},
    exporter::SpanExporter,
    probes::{KernelConns, Probes},
    protocol::{
        Chunk, ProtoEvent, Stamp,
        table::{Fed, Position, ProtocolTable},
    },
    receiver::EventSink,
    trace::{End, SpanData, Tracer},
};

/// Spans built and handed to the exporter at a time.
pub const EXPORT_CHUNK: usize = 1024;
/// Spans ready at once that start an export between ticks. Few, so a span is built while what
/// it is built from (its open span, its summary, the strings they share) is still in the core's
/// caches: paired runs against nginx (`cargo xtask compare`), agent CPU per request, 4 rounds
/// of 2 runs each: 128 against 1024 0.905, 32 against 128 0.974, 8 against 32 1.013 (each
/// export's fixed work catches up); with the store's frames built on the draining thread
/// (session 38), 32 against 1024 0.859. Exporters that write in batches gather them
/// ([`crate::exporter::store`]).
const EXPORT_READY_AT: usize = 32;

/// Self-metrics of the sink's feedback to the programs.
#[derive(Debug, Default, Clone, Copy)]
pub struct FeedbackStats {
    /// Connections the programs were told to stop sending (the agent gave up on them).
    pub marked_opaque: u64,
    /// Connections to the agent's own listeners, not traced ([`super::own`]).
    pub own_connections_ignored: u64,
    /// Connections the agent did not know (their opening lost to a full ring, or evicted)
    /// that the programs were told to announce again ([`rediscover`]).
    pub rediscovered: u64,
}

use crate::peers::{Incoming, wire::Kind};
pub use runtime_probes::RuntimeProbesOn;
use runtime_probes::{
    watch_go, watch_grpcio, watch_inband, watch_node, watch_python, watch_python_unfollowed,
    watch_tls,
};

pub struct TraceSink<'a> {
    pub conntrack: Conntrack,
    pub protocols: ProtocolTable,
    pub tracer: Tracer,
    pub exporter: &'a mut dyn SpanExporter,
    /// The programs' connection table, when running against the kernel (not in benchmarks).
    kernel_conns: Option<KernelConns>,
    /// The loaded programs, to attach the Go runtime probes to Go programs as they appear.
    probes: Option<&'a mut Probes>,
    /// Go processes already considered for the runtime probes.
    /// Python processes looked at for grpcio (the worker rule): whether they run it, and
    /// whether the look at a server connection was had (a process is looked at on its first
    /// connection, and once more on its first server one).
    grpcio_seen: HashMap<u32, (bool, bool)>,
    /// The kernel's count of records lost to a full ring, as last seen.
    ring_full_seen: u64,
    /// The kernel's count of records sent, as last seen (with a budget only).
    events_sent_seen: u64,
    go_seen: HashSet<u32>,
    /// Which runtime probes are attached (`--no-runtime-probes`).
    on: RuntimeProbesOn,
    /// Processes already looked at for libssl files to probe.
    tls_seen: HashSet<u32>,
    /// TLS library files whose probes were attached, over the agent's life.
    pub tls_libraries_probed: u64,
    /// Python processes looked at for the asyncio probes: when last, and whether they are
    /// followed now.
    python_seen: HashMap<u32, (u64, bool)>,
    /// Node.js processes already considered for the callback probes.
    node_seen: HashSet<u32>,
    /// Processes already classified for the in-band mode, and whether they were allowed.
    inband_seen: HashMap<u32, bool>,
    /// TLS connections the in-band mode looked at, until they close: whether the programs
    /// follow their records (their plaintext is answered in order), and the sequence number of
    /// the record of the one note they gave since the last request, which the next request
    /// takes if it began there or later ([`TraceSink::give_tls_note`]).
    inband_tls: HashMap<u64, (bool, Option<u32>)>,
    pub feedback: FeedbackStats,
    /// Where the agent's own figures are published while it runs (`/metrics`).
    metrics: Option<crate::metrics::SharedMetrics>,
    /// The pod list from the API server, for its self-metrics.
    pods: Option<std::sync::Arc<crate::kube::PodDirectory>>,
    /// The agent's own listeners, whose viewers are not traced.
    own: super::own::OwnListeners,
    /// The only network namespace traced (`--netns-only`): processes elsewhere get no runtime
    /// probes from this agent.
    netns: Option<u64>,
    /// Cross-host linking: the socket to the other hosts' agents (`--peer-port`).
    pub peers: Option<crate::peers::Peers>,
    /// Announcements moving between the tracer and the peer socket.
    announcements: Vec<crate::peers::wire::ClientSpan>,
    /// Messages from the peer agents, read in one go.
    incoming: Vec<Incoming>,
    /// Questions and answers for the peer agents.
    peer_messages: Vec<(Kind, std::net::SocketAddr, crate::peers::wire::ClientSpan)>,
    /// The CPU and memory budget, when one is set.
    shedder: Option<budget::Shedder>,
    rediscovery: rediscover::Rediscovery,
    events: Vec<ProtoEvent>,
    spans: Vec<SpanData>,
    ticks: u64,
}

impl<'a> TraceSink<'a> {
    pub fn new(conntrack: Conntrack, tracer: Tracer, exporter: &'a mut dyn SpanExporter) -> Self {
        Self {
            conntrack,
            protocols: ProtocolTable::default(),
            tracer,
            exporter,
            kernel_conns: None,
            probes: None,
            go_seen: HashSet::new(),
            grpcio_seen: HashMap::new(),
            ring_full_seen: 0,
            events_sent_seen: 0,
            on: RuntimeProbesOn {
                go: false,
                tls: false,
                asyncio: false,
                node: false,
            },
            tls_seen: HashSet::new(),
            tls_libraries_probed: 0,
            python_seen: HashMap::new(),
            node_seen: HashSet::new(),
            inband_seen: HashMap::new(),
            inband_tls: HashMap::new(),
            feedback: FeedbackStats::default(),
            metrics: None,
            pods: None,
            own: super::own::OwnListeners::default(),
            netns: None,
            peers: None,
            announcements: Vec::new(),
            incoming: Vec::new(),
            peer_messages: Vec::new(),
            shedder: None,
            rediscovery: rediscover::Rediscovery::default(),
            events: Vec::new(),
            spans: Vec::new(),
            ticks: 0,
        }
    }

    /// Tells the programs, through their connection table, which connections the agent gave up
    /// on, so that they stop sending those bytes.
    #[must_use]
    pub fn with_kernel_conns(mut self, conns: KernelConns) -> Self {
        self.kernel_conns = Some(conns);
        self
    }

    /// Publishes the stages' counters to `metrics` about once a second.
    #[must_use]
    pub fn with_metrics(mut self, metrics: crate::metrics::SharedMetrics) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// Shows the pod list's counters beside the stages' own.
    #[must_use]
    pub fn with_pods(mut self, pods: Option<std::sync::Arc<crate::kube::PodDirectory>>) -> Self {
        self.pods = pods;
        self
    }

    /// Traces only network namespace `netns` (by inode number), when given: the runtime probes
    /// go only to processes in it. Before [`TraceSink::with_runtime_probes`].
    #[must_use]
    pub fn with_netns(mut self, netns: Option<u64>) -> Self {
        self.netns = netns;
        self
    }

    /// Leaves the connections to the agent's own listeners untraced.
    #[must_use]
    pub fn with_own_listeners(mut self, own: super::own::OwnListeners) -> Self {
        self.own = own;
        self
    }

    /// Links traces with the agents of other hosts through `peers`.
    #[must_use]
    pub fn with_peers(mut self, peers: Option<crate::peers::Peers>) -> Self {
        if let Some(peers) = &peers {
            self.tracer.enable_peers(peers.local.clone());
        }
        self.peers = peers;
        self
    }

    /// Stopping: exchanges with the peer agents once more, and says whether answers to this
    /// agent's questions are still awaited.
    pub fn awaiting_answers(&mut self) -> bool {
        if self.peers.is_none() {
            return false;
        }
        self.exchange_with_peers(monotonic_ns());
        self.tracer.awaiting_answers()
    }

    /// Hands what other hosts' agents announced to the tracer, and sends what it announced.
    fn exchange_with_peers(&mut self, now: u64) {
        let Some(peers) = &mut self.peers else {
            return;
        };
        peers.receive(&mut self.incoming);
        for message in self.incoming.drain(..) {
            match message {
                Incoming::Client(client, Kind::Answer) => self.tracer.on_peer_answer(&client, now),
                Incoming::Client(client, _) => self.tracer.on_peer_client(&client, now),
                Incoming::Ask {
                    from,
                    span,
                    stream: false,
                } => self.tracer.on_peer_ask(from, &span, now),
                Incoming::Ask {
                    from,
                    span,
                    stream: true,
                } => self.tracer.on_peer_ask_stream(from, &span, now),
            }
        }
        self.tracer.announce_settled(now, false);
        self.tracer.answer_settled(now, false);
        self.tracer.take_peer_messages(&mut self.peer_messages);
        for (kind, to, span) in self.peer_messages.drain(..) {
            peers.send_one(kind, to, &span);
        }
        self.tracer.take_announcements(&mut self.announcements);
        let mut here = Vec::new();
        peers.send(&self.announcements, &mut here);
        self.announcements.clear();
        for client in &here {
            self.tracer.on_peer_client(client, now);
        }
    }

    /// In the in-band mode, a TLS connection whose plaintext was just parsed, once:
    /// - as a protocol answered in order (`in_order`): the programs follow its records as
    ///   requests from now on. Only where the TLS library reads and writes the socket itself
    ///   (its plaintext records name their ciphertext's position,
    ///   [`agent_common::DATA_RECORD_SEQ`]): there each call's plaintext record comes after the
    ///   syscall that carried its first record, so a request's note is there before the request.
    ///   Not on memory BIOs (asyncio, Node.js), whose runtime writes a call's ciphertext after
    ///   the call: its note would come after its request and be taken by the next one.
    /// - as HTTP/2: its client's writes carry the connection form, which names no position, so
    ///   any TLS library will do (memory BIOs, Go's `crypto/tls`).
    fn follow_tls_records(&mut self, event: &DataEvent, conn_tls: bool, in_order: bool) {
        const FOLLOWED: [&str; 5] = ["http1", "redis", "postgres", "mysql", "memcached"];
        let h = &event.header;
        if !conn_tls
            || self.inband_tls.contains_key(&h.conn_id)
            || !self.probes.as_deref().is_some_and(Probes::inband_on)
        {
            return;
        }
        let value = if in_order {
            if event.flags & agent_common::DATA_RECORD_SEQ == 0 {
                return;
            }
            // (Not DNS over TLS, whose answers may come in another order.)
            let protocol = self.protocols.protocol_of(h.conn_id);
            if protocol.is_some_and(|p| FOLLOWED.contains(&p)) {
                agent_common::INBAND_TLS_IN_ORDER
            } else {
                0
            }
        } else if event.role == agent_common::Role::Client as u32
            && self.protocols.protocol_of(h.conn_id) == Some("http2")
        {
            // Only the connecting end writes the form; the accepting end reads whatever it is
            // sent.
            agent_common::INBAND_TLS_STREAMS
        } else {
            return;
        };
        let written = value != 0
            && self
                .kernel_conns
                .as_mut()
                .is_some_and(|kernel| kernel.set_inband_tls((h.pid, h.fd, h.conn_id), value));
        // Tried once per connection, followed or not (only records followed in order have notes
        // to place).
        let followed = written && value == agent_common::INBAND_TLS_IN_ORDER;
        self.inband_tls.insert(h.conn_id, (followed, None));
    }

    /// Before the requests of a TLS chunk are reported: on a connection whose records the
    /// programs follow, the note they gave since the last request is the first request's if it
    /// begins in the plaintext of that record or a later one (`record`: where this chunk's
    /// ciphertext began, when known). A request head that took several records, or a write
    /// OpenSSL retried after a partial one, begins after the record that was noted. Taken or
    /// not, the note is no later request's.
    fn give_tls_note(&mut self, conn_id: u64, record: Option<u32>, now: u64) {
        let Some((true, pending)) = self.inband_tls.get_mut(&conn_id) else {
            return;
        };
        let Some(noted) = pending.take() else {
            return;
        };
        // Wrapping: sequence numbers are 32-bit.
        #[allow(clippy::cast_possible_wrap)]
        let at_or_after = record.is_some_and(|r| r.wrapping_sub(noted) as i32 >= 0);
        if at_or_after {
            self.tracer.give_tls_request_note(conn_id, noted, now);
        } else {
            self.tracer.drop_inband_note(conn_id, noted);
        }
    }

    /// The loaded programs, when running against the kernel.
    #[must_use]
    pub fn probes(&self) -> Option<&Probes> {
        self.probes.as_deref()
    }

    /// The most spans the tracer held at once.
    #[cfg(all(test, feature = "bench"))]
    pub(crate) fn held_peak(&self) -> u64 {
        self.tracer.stats.held_peak
    }

    /// Hands finished spans to the exporter, in chunks; everything finished when `flush`. The
    /// exporter then pushes out what it buffers (ticks and shutdown).
    pub fn export(&mut self, flush: bool) {
        self.export_due(flush);
        self.exporter.flush();
    }

    /// Hands the spans whose wait is over to the exporter, in chunks, and leaves what the
    /// exporter buffers there (between ticks: it gathers its own batches).
    fn export_due(&mut self, flush: bool) {
        let now = monotonic_ns();
        self.exchange_with_peers(now);
        loop {
            let more = self.tracer.poll(now, flush, &mut self.spans, EXPORT_CHUNK);
            if !self.spans.is_empty() {
                self.exporter.export(&mut self.spans);
                self.spans.clear();
            }
            if !more {
                break;
            }
        }
        // What the export's poll announced leaves now, not a tick later.
        self.exchange_with_peers(now);
    }
}

/// Hands the protocol events of `conn` to the tracer. A free function over the sink's fields, so
/// the connection can stay borrowed from the connection table (no clone per data event).
fn dispatch(tracer: &mut Tracer, events: &mut Vec<ProtoEvent>, conn: &Connection, end: End) {
    // The clock only for exchanges (half the events at most), not for every chunk of bytes.
    let mut now = None;
    for event in events.drain(..) {
        match event {
            ProtoEvent::Request {
                key,
                trace,
                start,
                forward,
            } => {
                tracer.on_request(conn, end, key, forward, trace.as_deref(), start);
            }
            ProtoEvent::Exchange(exchange) => {
                let now = *now.get_or_insert_with(monotonic_ns);
                // The task that completed it names a writer only where one connection carries
                // one request at a time: an HTTP/2 write may flush other streams' responses.
                let task = if end.thread_causality { end.task } else { 0 };
                tracer.on_exchange(conn, exchange, now, task);
            }
        }
    }
}

impl TraceSink<'_> {
    /// What the stages keep of connection `conn_id` beyond the connection table, dropped when
    /// it closes (`ts_ns`, kernel clock) or when the programs are told to forget it (it comes
    /// back under a new id).
    fn conn_gone(&mut self, conn_id: u64, ts_ns: u64) {
        self.tracer.forget_edge(conn_id);
        self.tracer.conn_closed_for_workers(conn_id, ts_ns);
        self.tracer.forget_inband_conn(conn_id);
        self.inband_tls.remove(&conn_id);
        self.budget_forget(conn_id, monotonic_ns());
    }
}

impl EventSink for TraceSink<'_> {
    fn on_open(&mut self, event: &ConnEvent) {
        let conn = self.conntrack.open(event);
        // Every connection's records start with this one ("first seen in use" included), and
        // Go programs already running were probed at start: the data path needs no check.
        if self.on.go
            && let Some(probes) = self.probes.as_deref_mut()
            && !conn.process.runtime.threads_are_tasks()
        {
            watch_go(&mut self.go_seen, &mut self.tracer, probes, &conn.process);
        }
        if self.on.tls
            && let Some(probes) = self.probes.as_deref_mut()
        {
            self.tls_libraries_probed +=
                watch_tls(&mut self.tls_seen, probes, Some(conn.process.pid));
        }
        if self.on.asyncio
            && let Some(probes) = self.probes.as_deref_mut()
        {
            watch_python(
                &mut self.python_seen,
                &mut self.tracer,
                probes,
                &conn.process,
            );
        } else if !self.on.asyncio {
            watch_python_unfollowed(&mut self.python_seen, &mut self.tracer, &conn.process);
        }
        if self.on.node
            && let Some(probes) = self.probes.as_deref_mut()
        {
            watch_node(&mut self.node_seen, &mut self.tracer, probes, &conn.process);
        }
        if let Some(probes) = self.probes.as_deref_mut()
            && probes.inband_on()
        {
            let unfollowed = self.tracer.is_asyncio_unfollowed(conn.process.pid);
            watch_inband(&mut self.inband_seen, probes, &conn.process, unfollowed);
            if event.role == agent_common::Role::Unknown as u32
                && conn.role != agent_common::Role::Unknown
                && let Some(kernel) = &mut self.kernel_conns
            {
                let h = &event.header;
                kernel.set_role((h.pid, h.fd, h.conn_id), conn.role);
            }
        }
        watch_grpcio(&mut self.grpcio_seen, &mut self.tracer, conn);
        // A socket opened on an fd number that an earlier one had starts clean.
        self.tracer.callbacks.opened(conn);
        self.protocols
            .open(event.header.conn_id, conn.seen_from_start());
        if self.own.serve(conn.addrs().1) {
            // A viewer of the agent's UI or API: parsed by no one, and the programs stop
            // sending its bytes.
            self.protocols.ignore(event.header.conn_id);
            self.feedback.own_connections_ignored += 1;
            if let Some(kernel) = &mut self.kernel_conns {
                kernel.mark_opaque(event.header.pid, event.header.fd, event.header.conn_id);
            }
        }
        self.shed_openings_on_open(event);
    }

    fn on_go_probe(&mut self, event: &GoProbeEvent) {
        if let Some(probe) = GoProbe::from_u32(event.probe) {
            let h = &event.header;
            self.tracer
                .on_go_probe(h.pid, probe, event.a, event.b, h.ts_ns);
        }
    }

    fn on_py_task(&mut self, event: &PyTaskEvent) {
        let h = &event.header;
        self.tracer
            .on_py_task(h.pid, h.tid, event.child, event.parent, h.ts_ns);
    }

    fn on_inband(&mut self, event: &InbandEvent) {
        let h = &event.header;
        if event.flags & agent_common::INBAND_CONN == 0
            && let Some((true, pending)) = self.inband_tls.get_mut(&h.conn_id)
        {
            // A followed TLS connection's note waits for the next request; one no request took
            // (an alert, a key update) is no later request's.
            if let Some(old) = pending.replace(event.seq) {
                self.tracer.drop_inband_note(h.conn_id, old);
            }
        }
        self.tracer.on_inband(
            h.conn_id,
            event.seq,
            event.flags,
            (event.trace_id, event.span_id),
            h.ts_ns,
        );
    }

    fn on_data(&mut self, event: &DataEvent, payload: &[u8]) {
        if event.flags & agent_common::DATA_RESUMED != 0 {
            self.budget_resumed(event.header.conn_id, monotonic_ns());
        }
        let Some(conn) = self.conntrack.touch(event) else {
            // A connection not followed (evicted, idle, opened unseen): its streams are not.
            self.tracer
                .stream_may_be_unknown(event.header.pid, event.moved_ns);
            let h = &event.header;
            self.rediscover(h.pid, h.fd, h.conn_id, h.ts_ns);
            return;
        };
        let chunk = Chunk {
            egress: event.direction == Direction::Egress as u32,
            role: conn.role,
            payload,
            total: u64::try_from(event.ret).unwrap_or(0),
        };
        // Egress bytes leave the process at syscall entry, ingress bytes arrive at its exit.
        let fed = self.protocols.feed(
            conn.conn_id,
            &chunk,
            if event.flags & agent_common::DATA_SEQ_VALID != 0 {
                Position::Stream(event.seq)
            } else if event.flags & agent_common::DATA_RECORD_SEQ != 0 && !conn.seen_from_start() {
                // TLS plaintext of a connection first seen in use (open before the agent, or
                // announced again after the agent lost it): its ends' plaintext offsets count
                // from wherever each was first seen, its records' positions agree. A connection
                // seen from its start keeps the offsets, which agree from its first byte, where
                // the first request's record (read with the handshake's last one) may have no
                // position of its own.
                Position::Record(event.seq)
            } else {
                Position::Unknown
            },
            event.moved_ns,
            event.header.tid,
            &mut self.events,
        );
        match fed {
            Fed::Parsed {
                server,
                thread_causality,
                in_order,
                io,
            } => {
                let end = End {
                    server,
                    thread_causality,
                    in_order,
                    task: event.task,
                    hidden_work: event.flags & agent_common::DATA_HIDDEN_WORK != 0,
                    hidden_same_ask: event.flags & agent_common::DATA_HIDDEN_SAME_ASK != 0,
                    hidden_exact_ask: event.flags & agent_common::DATA_HIDDEN_EXACT_ASK != 0,
                };
                // Before the exchanges it completed: they ask whether a write answered them.
                self.tracer
                    .on_stream_io(conn, io, event.header.tid, event.moved_ns);
                // Only TLS chunks with a request look for a note, and look the connection up
                // again (the note's bookkeeping needs the sink): not every parsed chunk.
                let conn = if conn.tls
                    && self
                        .events
                        .iter()
                        .any(|e| matches!(e, ProtoEvent::Request { .. }))
                {
                    let record =
                        (event.flags & agent_common::DATA_RECORD_SEQ != 0).then_some(event.seq);
                    self.give_tls_note(event.header.conn_id, record, event.header.ts_ns);
                    let Some(conn) = self.conntrack.get(event.header.conn_id) else {
                        return;
                    };
                    conn
                } else {
                    conn
                };
                dispatch(&mut self.tracer, &mut self.events, conn, end);
                let tls = conn.tls;
                self.follow_tls_records(event, tls, in_order);
            }
            Fed::GaveUp => {
                self.events.clear();
                if conn.role == agent_common::Role::Server {
                    self.tracer
                        .conn_hides_streams(conn.process.pid, conn.conn_id, event.moved_ns);
                }
                if let Some(kernel) = &mut self.kernel_conns
                    && kernel.mark_opaque(event.header.pid, event.header.fd, conn.conn_id)
                {
                    self.feedback.marked_opaque += 1;
                }
            }
            Fed::Skipped if conn.role == agent_common::Role::Server => {
                // Served, and not parsed (TLS the agent cannot read, another protocol).
                self.tracer
                    .conn_hides_streams(conn.process.pid, conn.conn_id, event.moved_ns);
            }
            Fed::Skipped => {}
        }
        // The export tick competes with draining the ring, and under load ran only every
        // ~100 ms: 10–25 k finished spans waited for it (`held_peak`), ~15 MB of the agent's
        // peak memory. Spans go out a few at a time as they are ready ([`EXPORT_READY_AT`]).
        if self.tracer.ready_now() >= EXPORT_READY_AT {
            self.export_due(false);
        }
    }

    fn on_close(&mut self, event: &ConnEvent) {
        self.shed_openings_on_close(&event.tuple, event.header.conn_id);
        self.conn_gone(event.header.conn_id, event.header.ts_ns);
        let Some(conn) = self.conntrack.close(event) else {
            return;
        };
        self.tracer
            .callbacks
            .closed(conn.process.pid, conn.fd, conn.conn_id);

        let at = Stamp {
            ts: event.header.ts_ns,
            tid: event.header.tid,
            offset: 0,
        };
        if let Fed::Parsed {
            server,
            thread_causality,
            in_order,
            ..
        } = self.protocols.close(conn.conn_id, at, &mut self.events)
        {
            let end = End {
                server,
                thread_causality,
                in_order,
                task: 0,
                hidden_work: false,
                hidden_same_ask: false,
                hidden_exact_ask: false,
            };
            dispatch(&mut self.tracer, &mut self.events, &conn, end);
        }
    }

    fn on_drained(&mut self) {
        self.exchange_with_peers(monotonic_ns());
    }

    fn on_shed(&mut self, event: &ConnEvent) {
        self.shed_openings_on_shed(event);
    }

    fn on_ring_fill(&mut self, fill: f64) {
        if let Some(shedder) = &mut self.shedder {
            shedder.budget.note_ring_fill(fill);
        }
    }

    fn on_tick(&mut self) {
        /// Ticks between two readings of this host's addresses (about 5 s): interfaces come
        /// and go.
        const LOCAL_ADDRS_EVERY: u64 = 50;
        self.ticks += 1;
        if self.ticks.is_multiple_of(LOCAL_ADDRS_EVERY)
            && let Some(peers) = &mut self.peers
        {
            peers.local = crate::peers::local::LocalAddrs::read();
            self.tracer.set_local_addrs(peers.local.clone());
        }
        if self.ticks == 1 || self.ticks.is_multiple_of(100) {
            // Streams of connections opened before the agent watched may still be open, and
            // silent: the worker rule cannot know every stream of those processes.
            let now = monotonic_ns();
            self.conntrack.forget_closed_unseen();
            for pid in self.conntrack.unseen_openings() {
                self.tracer.stream_may_be_unknown(pid, now);
            }
            self.tracer.unseen_openings_swept(now);
        }
        // Lost records first: the export's poll decides by what was seen up to now.
        if let Some(probes) = self.probes.as_deref()
            && let Ok(drops) = probes.counter(agent_common::Counter::RingFull)
        {
            let dropped = drops.saturating_sub(self.ring_full_seen);
            if dropped > 0 {
                // Records lost: the worker rule cannot know what was answered meanwhile.
                self.ring_full_seen = drops;
                self.tracer.lost_events(monotonic_ns());
            }
            if let Some(shedder) = &mut self.shedder
                && let Ok(sent) = probes.counter(agent_common::Counter::EventsSent)
            {
                let new = sent.saturating_sub(self.events_sent_seen);
                self.events_sent_seen = sent;
                shedder.budget.note_ring_drops(dropped, new);
            }
        }
        self.export(false);
        self.budget_tick(monotonic_ns());
        if self.ticks.is_multiple_of(10)
            && let Some(metrics) = &self.metrics
        {
            let own = self.own_metrics();
            crate::metrics::lock(metrics).set_own(own);
        }
        if self.ticks.is_multiple_of(10) {
            tracing::debug!(
                held = self.tracer.held(),
                dropped_full = self.tracer.stats.dropped_full,
                spans_started = self.tracer.stats.spans_started,
                "trace stage"
            );
        }
        if self.ticks.is_multiple_of(20) {
            let tracer = &mut self.tracer;
            self.grpcio_seen.retain(|pid, _| {
                let alive = std::path::Path::new(&format!("/proc/{pid}")).exists();
                if !alive {
                    tracer.disallow_worker_rule(*pid);
                }
                alive
            });
            self.forget_exited_python();
            self.forget_exited_node();
            self.forget_exited_inband();
            self.conntrack.sweep(monotonic_ns());
            let conntrack = &self.conntrack;
            let dropped = self.protocols.retain(|id| conntrack.contains(id));
            // Their open requests never complete: no rule may pick them as a parent later.
            self.tracer.abandon_connections(&dropped);
            let now = monotonic_ns();
            for &conn_id in &dropped {
                self.tracer.forget_edge(conn_id);
                self.budget_forget(conn_id, now);
            }
            self.budget_sweep_dead(now);
        }
    }
}

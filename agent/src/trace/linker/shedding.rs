//! The linker's part in the budget's shedding ([`crate::budget`]): which connections start
//! traces here (the edges the budget may shed), which processes hide shed requests, and the
//! rules that keep every exported trace whole while some of its requests are hidden.
//!
//! - A process with a shed SERVER connection (or one shed until lately) *hides* requests: a
//!   CLIENT span it makes without a parent (no header, no rule, nothing to wait for) may be a
//!   hidden request's call, so its trace is dropped, its subtree with it.
//! - A CLIENT request written by a thread with hidden work open
//!   ([`agent_common::DATA_HIDDEN_WORK`]) takes no parent by thread, nor by what it asks when a
//!   hidden request asks the same ([`agent_common::DATA_HIDDEN_SAME_ASK`]): the candidate may
//!   not be whose it is. Both traces are dropped (the candidate's may miss this call).
//! - Dropping a CLIENT span drops the traces of the candidates the rules saw for it (links):
//!   one of them may miss it; not when a hidden request asks what it asks and no visible one
//!   does (a proxy's forward of that request).
//! - Both ends of a shed pair (client and server end on this host) switch at a request's start
//!   each, not at the same request when the agent's two writes straddle one: a SERVER span on
//!   such a connection without its client, and a CLIENT span whose server end was never seen,
//!   are dropped with their traces.
//!
//! Every drop is counted (`spans_shed`); none names a parent.

use std::collections::HashSet;

use super::{End, Tracer, open::FastMap};

/// How long a process keeps hiding after its last shed SERVER connection resumed or closed: the
/// hidden requests' downstream calls may still be under way.
const HIDING_TAIL_NS: u64 = 2_000_000_000;

/// What the budget may shed, and what it shed.
#[derive(Debug, Default)]
pub(in crate::trace) struct Shedding {
    /// The budget is on: edges are tracked.
    pub(super) enabled: bool,
    /// Connections seen to start traces, or not, by connection id.
    edges: FastMap<u64, Edge>,
    /// Processes that served a request: their client ends are never edges.
    servers: HashSet<u32, foldhash::fast::RandomState>,
    /// Client requests that started a trace here, by process.
    root_calls: FastMap<u32, u32>,
    /// Processes that made a client request that did not start a trace here (it had a parent,
    /// or waited for a rule): never pure clients.
    parented_callers: HashSet<u32, foldhash::fast::RandomState>,
    /// Processes whose new client connections the programs shed from their opening: a request
    /// one serves drops its trace (its calls may be on connections shed at their opening).
    openings_shed: HashSet<u32, foldhash::fast::RandomState>,
    /// Processes hiding shed SERVER requests.
    hiding: FastMap<u32, Hiding>,
    /// Connections of shed pairs: whether each is the SERVER end.
    pairs: FastMap<u64, bool>,
    /// The share of edge connections kept, in thousandths (an attribute of exported spans while
    /// under 1000).
    pub(super) keep_permille: u16,
    /// The candidates the rules named for the CLIENT request being decided, when it took none
    /// (links): what a drop of it may leave incomplete.
    pub(super) candidates: Vec<super::SpanKey>,
    /// Finished spans waiting for the rest of their trace while the budget sheds.
    parked: Vec<super::SpanKey>,
}

/// One connection as the budget sees it.
#[derive(Debug, Clone, Copy)]
pub struct Edge {
    /// Every request on it so far started a trace here.
    pub root: bool,
    pub server: bool,
    /// The other end's connection, when on this host.
    pub mirror: Option<u64>,
    /// Requests seen on it.
    requests: u32,
}

/// Requests an edge without a known other end must have carried before the budget may shed it:
/// a local server end may be seen a moment after its client's first request.
const EDGE_SETTLES_AFTER: u32 = 3;

/// Client requests that started traces a process must have made, and no other, before its
/// new connections may be shed from their opening ([`Tracer::pure_clients`]).
const PURE_CLIENT_AFTER: u32 = 16;

#[derive(Debug, Default, Clone, Copy)]
struct Hiding {
    /// SERVER connections of the process shed now (or on their way in or out).
    conns: u32,
    /// Monotonic ns until which it hides after the last one left.
    until: u64,
}

impl Shedding {
    pub(super) fn hiding(&self, pid: u32, now: u64) -> bool {
        self.hiding
            .get(&pid)
            .is_some_and(|h| h.conns > 0 || now < h.until)
    }

    /// A request on `conn_id` of `pid` started a trace (`root`) or continued one.
    fn note(&mut self, conn_id: u64, pid: u32, server: bool, root: bool) {
        if server {
            self.servers.insert(pid);
        }
        let root = root && (server || !self.servers.contains(&pid));
        if !server {
            if root {
                let calls = self.root_calls.entry(pid).or_default();
                *calls = calls.saturating_add(1);
            } else {
                self.parented_callers.insert(pid);
            }
        }
        self.edges
            .entry(conn_id)
            .and_modify(|e| {
                e.root &= root;
                e.requests = e.requests.saturating_add(1);
            })
            .or_insert(Edge {
                root,
                server,
                mirror: None,
                requests: 1,
            });
    }
}

impl Tracer {
    /// While the budget sheds (a share under all, or a process hiding requests), a trace can
    /// be dropped until its last span finishes: its finished spans wait for that.
    fn parking(&self) -> bool {
        self.shedding.enabled
            && (self.shedding.keep_permille < 1000 || !self.shedding.hiding.is_empty())
    }

    /// Whether the finished span `key` waits for the rest of its trace (and now does).
    pub(super) fn park(&mut self, key: super::SpanKey, flush: bool) -> bool {
        if flush || !self.parking() {
            return false;
        }
        let waits = self
            .spans
            .get(&key)
            .is_some_and(|s| !s.trace.is_shed() && s.trace.open_spans() > 0);
        if waits {
            self.shedding.parked.push(key);
        }
        waits
    }

    /// Parked spans whose trace finished (or was dropped), or all when not parking any more,
    /// go to the export queue.
    pub(super) fn unpark(&mut self, flush: bool) {
        if self.shedding.parked.is_empty() {
            return;
        }
        let all = flush || !self.parking();
        let parked = std::mem::take(&mut self.shedding.parked);
        for key in parked {
            let waits = !all
                && self
                    .spans
                    .get(&key)
                    .is_some_and(|s| !s.trace.is_shed() && s.trace.open_spans() > 0);
            if waits {
                self.shedding.parked.push(key);
            } else {
                self.ready_now.push_back(key);
            }
        }
    }

    /// An open span abandoned (its connection forgotten) while the budget sheds may be one a
    /// switch cut in the middle: its trace would export its children without it.
    pub(super) fn abandoned_while_shedding(&self, trace: &super::TraceRef) {
        if self.parking() {
            trace.mark_shed();
        }
    }

    /// Tracks edges for the budget from now on.
    pub fn enable_shedding(&mut self) {
        if !self.shedding.enabled {
            self.shedding.enabled = true;
            self.shedding.keep_permille = 1000;
        }
    }

    /// The share of edge connections the budget keeps now, for the spans' attribute.
    pub fn set_keep(&mut self, keep: f64) {
        self.shedding.keep_permille = (keep * 1000.0).round().clamp(0.0, 1000.0) as u16;
    }

    /// Connections whose every request started a trace here: what the budget may shed.
    pub fn edges(&self) -> impl Iterator<Item = (u64, Edge)> + '_ {
        self.shedding
            .edges
            .iter()
            .filter(|(_, e)| e.root && (e.mirror.is_some() || e.requests >= EDGE_SETTLES_AFTER))
            .map(|(id, e)| (*id, *e))
    }

    /// Processes whose every client request started a trace here (at least
    /// [`PURE_CLIENT_AFTER`]) and that served none: each new connection of theirs would be an
    /// edge after its first request, so the budget may shed it from its opening.
    pub fn pure_clients(&self) -> impl Iterator<Item = u32> + '_ {
        self.shedding
            .root_calls
            .iter()
            .filter(|&(pid, &calls)| {
                calls >= PURE_CLIENT_AFTER
                    && !self.shedding.servers.contains(pid)
                    && !self.shedding.parented_callers.contains(pid)
            })
            .map(|(&pid, _)| pid)
    }

    /// The processes whose new client connections the programs shed from their opening now.
    pub fn set_openings_shed(&mut self, pids: &HashSet<u32>) {
        self.shedding.openings_shed.clear();
        self.shedding.openings_shed.extend(pids);
    }

    /// Forgets what the budget learnt of processes that are gone (`alive` says which live).
    pub fn forget_dead_callers(&mut self, alive: impl Fn(u32) -> bool) {
        let s = &mut self.shedding;
        s.root_calls.retain(|&pid, _| alive(pid));
        s.parented_callers.retain(|&pid| alive(pid));
        s.servers.retain(|&pid| alive(pid));
    }

    /// A connection closed or stopped being tracked: it is no edge any more.
    pub fn forget_edge(&mut self, conn_id: u64) {
        if let Some(edge) = self.shedding.edges.remove(&conn_id)
            && let Some(mirror) = edge.mirror
            && let Some(other) = self.shedding.edges.get_mut(&mirror)
        {
            other.mirror = None;
        }
        self.shedding.pairs.remove(&conn_id);
    }

    /// The SERVER connection `conn_id` of `pid` is being shed (`shed`) or was resumed or closed
    /// (`!shed`, at `now`, monotonic ns).
    pub fn server_hidden(&mut self, pid: u32, shed: bool, now: u64) {
        let hiding = self.shedding.hiding.entry(pid).or_default();
        if shed {
            hiding.conns += 1;
        } else {
            hiding.conns = hiding.conns.saturating_sub(1);
            hiding.until = now + HIDING_TAIL_NS;
        }
    }

    /// Both ends of a connection on this host are shed together: the pair rules apply to them.
    pub fn shed_pair(&mut self, client: u64, server: u64) {
        self.shedding.pairs.insert(client, false);
        self.shedding.pairs.insert(server, true);
    }

    /// Forgets processes that stopped hiding long ago (called now and then).
    pub fn sweep_hiding(&mut self, now: u64) {
        self.shedding
            .hiding
            .retain(|_, h| h.conns > 0 || now < h.until);
    }

    /// After a request's span was opened (`header`: its parent came from a propagation
    /// header): notes the edge; drops the trace of a CLIENT span without a parent in a process
    /// that hides requests, or of a SERVER span of a shed pair without its client.
    pub(super) fn shedding_on_request(
        &mut self,
        key: super::SpanKey,
        end: End,
        header: bool,
        ts: u64,
    ) {
        let candidates = std::mem::take(&mut self.shedding.candidates);
        if !self.shedding.enabled {
            return;
        }
        let candidates: Vec<super::TraceRef> = candidates
            .iter()
            .filter_map(|k| self.spans.get(k).map(|s| s.trace.clone()))
            .collect();
        let Some(span) = self.spans.get_mut(&key) else {
            return;
        };
        let parentless = span.parent.is_none() && !header;
        let settled = span.trace.settled();
        let root = parentless && span.evidence == "none" && settled;
        let pid = span.pid;
        if end.server && self.shedding.openings_shed.contains(&pid) {
            // It was named a pure client: the calls it makes for this request may be on
            // connections shed at their opening, its trace would miss them.
            span.trace.mark_shed();
        }
        if end.server && parentless && self.shedding.pairs.get(&key.0) == Some(&true) {
            // The pair's client end is hidden for this request: its subtree would be a trace
            // without its root. (A client end seen late joins the dropped trace.)
            span.trace.mark_shed();
        }
        if !end.server && parentless {
            if settled && self.shedding.hiding(pid, ts) {
                span.trace.mark_shed();
                // Whichever of them it was made for misses it now; unless a hidden request
                // of its thread asks exactly what it asks and no visible one does (else the
                // proxy rule would have named it): then it is that one's forward.
                if !end.hidden_exact_ask {
                    candidates.iter().for_each(super::TraceRef::mark_shed);
                }
            } else if !settled {
                // Decided at export, by the same rule, if no rule names its parent meanwhile;
                // its trace and its candidates' stay open until then (their finished spans
                // wait).
                span.budget.waited = true;
                span.budget.hid = self.shedding.hiding(pid, ts);
                candidates.iter().for_each(super::TraceRef::opened);
                span.budget.ambiguous_with = candidates.into_boxed_slice();
            }
        }
        self.shedding.note(key.0, pid, end.server, root);
    }

    /// A span finished: the pair rules decide now, before the rest of its trace may leave
    /// (a SERVER span of a shed pair without its client, a CLIENT span whose server end was
    /// never seen, drop their trace). A waited span stays counted open until it is exported.
    /// An associated function over the shedding state, so the caller keeps its span borrowed
    /// from the span table (one lookup per exchange).
    pub(super) fn shedding_on_finish(
        shedding: &Shedding,
        span: &super::open::OpenSpan,
        key: super::SpanKey,
    ) {
        if !span.budget.waited {
            span.trace.closed();
        }
        if !shedding.enabled {
            return;
        }
        let drop = match shedding.pairs.get(&key.0) {
            Some(true) => span.parent.is_none(),
            Some(false) => !span.budget.served_here,
            None => false,
        };
        if drop {
            span.trace.mark_shed();
        }
    }

    /// A waited span left (exported, dropped or abandoned): its trace and its candidates' are
    /// no longer held open for it.
    pub(super) fn decided(span: &super::open::OpenSpan) {
        if span.budget.waited {
            span.trace.closed();
            span.budget
                .ambiguous_with
                .iter()
                .for_each(super::TraceRef::closed);
        }
    }

    /// The SERVER end `server` of a connection found its CLIENT end `client` on this host.
    pub(super) fn shedding_mirrored(&mut self, client: u64, server: u64) {
        if !self.shedding.enabled {
            return;
        }
        if let Some(e) = self.shedding.edges.get_mut(&client) {
            e.mirror = Some(server);
        }
        if let Some(e) = self.shedding.edges.get_mut(&server) {
            e.mirror = Some(client);
        }
    }

    /// A CLIENT request whose thread has hidden work chose `parent` by thread or by what it
    /// asks: refused, and both traces are dropped.
    pub(super) fn refuse_for_hidden_work(&mut self, parent: &super::TraceRef) -> super::TraceRef {
        self.stats.hidden_work_refusals += 1;
        parent.mark_shed();
        let trace = super::TraceRef::new(self.ids.trace_id());
        trace.mark_shed();
        trace
    }

    /// Whether a finished span leaves unexported (its trace dropped, or the hiding rule for a
    /// span that waited), at `now` (monotonic ns); its trace is dropped with it.
    pub(super) fn shed_at_export(&self, span: &super::open::OpenSpan, now: u64) -> bool {
        if span.trace.is_shed() {
            return true;
        }
        let server = span.kind == crate::trace::span::SpanKind::Server;
        let drop = !server
            && span.parent.is_none()
            && span.budget.waited
            && (span.budget.hid || self.shedding.hiding(span.pid, now));
        if drop {
            span.trace.mark_shed();
            span.budget
                .ambiguous_with
                .iter()
                .for_each(super::TraceRef::mark_shed);
        }
        drop
    }
}

//! The rules that name the parent of a span without a header when its request is seen (the
//! linker's module doc lists them): both ends of a connection for a SERVER span; for a CLIENT
//! span, the rules by unit of work (thread, goroutine, Node.js callback) and the proxy rule,
//! links where they find several candidates, and the wait for the rules that decide later.

use super::{
    End, Tracer,
    open::{MirrorKey, Serving, SpanKey, Unit, remove_open, same_request},
    trace_ref::TraceRef,
};
use crate::{
    conntrack::Connection,
    protocol::Stamp,
    trace::{callbacks::Lookup, ids::SpanId, span::SpanLink},
};

/// Open SERVER spans a rule may pick a parent from.
enum Candidates {
    None,
    One(SpanKey),
    Several(Vec<SpanKey>),
}

impl Tracer {
    /// A CLIENT request without a parent that a later event may name one for waits for it
    /// (its trace unsettled meanwhile): under each task of its `lineage`, for the task rule, or
    /// for its worker thread's next answer ([`crate::trace::workers`]).
    pub(super) fn wait_for_parent(
        &mut self,
        pid: u32,
        key: SpanKey,
        lineage: Option<&[(u64, u64)]>,
        (unit, ts): (Unit, u64),
        trace: &mut TraceRef,
    ) {
        if let Some(lineage) = lineage {
            *trace = trace.unsettled_like();
            for &(task, _) in lineage {
                self.task_waiting.entry((pid, task)).or_default().push(key);
            }
        } else if let Some(tid) = self.worker_thread(pid, unit) {
            *trace = trace.unsettled_like();
            self.workers.wait(pid, tid, key, ts);
        }
    }

    /// Parent of a CLIENT request without a header, and the SERVER span it was made for, by
    /// the rule its runtime allows (`on_loop`: made on an asyncio loop's thread, where the task
    /// rule decides later) and the proxy rule.
    pub(super) fn parent_of_client(
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
        let chosen = self.client_parent(pid, by_unit, forward, start, links);
        match chosen {
            // The thread also serves a request the budget hid: the visible one may not be
            // whose this is.
            ((parent, Some(_), "thread"), _) if end.hidden_work => {
                let trace = self.refuse_for_hidden_work(&parent);
                ((trace, None, "hidden work"), None)
            }
            // The proxy rule looks process-wide; hidden work is known per thread. While the
            // process hides requests, a forward counts only when written by the thread that
            // read the request it forwards (nginx, thread-per-request proxies), whose hidden
            // asks the programs compared; never in runtimes whose threads are not units of
            // work (Go: a hidden request's goroutine may run on the reader's thread).
            ((parent, Some(_), "proxy"), Some(of))
                if end.hidden_same_ask
                    || (self.shedding.hiding(conn.process.pid, start.ts)
                        && (!conn.process.runtime.threads_are_tasks()
                            || self.spans.get(&of).is_some_and(|s| s.tid != start.tid))) =>
            {
                let trace = self.refuse_for_hidden_work(&parent);
                ((trace, None, "hidden work"), None)
            }
            chosen => chosen,
        }
    }

    /// The unit of work a request was made or read by, for the rules by unit. Same-thread
    /// causality needs a protocol whose reading thread serves the request and a runtime whose
    /// threads are its units of work; in Go, the goroutine, when its probes are attached (else
    /// no rule by unit at all: goroutines change threads).
    pub(super) fn unit_of(&self, conn: &Connection, end: End, start: Stamp) -> Unit {
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

    /// `pid` runs asyncio and its tasks are not followed: the thread rule names no parent on
    /// its main thread (links instead), as on a thread seen serving two requests at once.
    /// Bounded; past the bound a process keeps the thread rule (counted).
    pub fn asyncio_unfollowed(&mut self, pid: u32) {
        const MAX_PROCESSES: usize = 64 * 1024;
        if self.loops_unfollowed.len() < MAX_PROCESSES {
            if self.loops_unfollowed.insert(pid) {
                self.stats.asyncio_processes_unfollowed += 1;
            }
        } else {
            self.stats.asyncio_processes_unremembered += 1;
        }
    }

    /// `pid` exited or runs something else now.
    pub fn forget_unfollowed(&mut self, pid: u32) {
        self.loops_unfollowed.remove(&pid);
    }

    /// Whether `pid` runs asyncio with its tasks not followed ([`Tracer::asyncio_unfollowed`]).
    #[must_use]
    pub fn is_asyncio_unfollowed(&self, pid: u32) -> bool {
        !self.loops_unfollowed.is_empty() && self.loops_unfollowed.contains(&pid)
    }

    /// Whether thread `tid` of `pid` may run an event loop whose tasks are not followed: the
    /// main thread of such a process, where asyncio's servers (uvicorn, aiohttp,
    /// `asyncio.run`) run their loop. Its other threads (a grpcio or `ThreadPoolExecutor`
    /// pool's) keep the thread rule until one is seen serving two requests at once. (A
    /// threaded server whose main thread serves requests, a gunicorn sync worker importing
    /// asyncio, loses its thread-rule parents there while the probes are off.)
    pub(super) fn may_run_unfollowed_loop(&self, pid: u32, tid: u32) -> bool {
        tid == pid && self.is_asyncio_unfollowed(pid)
    }

    /// The candidates of the rule by unit of work for a CLIENT request, and the rule's name.
    fn unit_candidates(&mut self, pid: u32, unit: Unit, ts: u64) -> (Candidates, &'static str) {
        match unit {
            Unit::Thread(tid)
                if self.event_loop_threads.contains(&(pid, tid))
                    || self.may_run_unfollowed_loop(pid, tid) =>
            {
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

    /// Makes a CLIENT span findable by its server end, and adopts that end if it came first;
    /// returns whether it did.
    pub(super) fn register_client(
        &mut self,
        mirror: MirrorKey,
        key: SpanKey,
        span_id: SpanId,
        trace: &TraceRef,
        forward: u64,
    ) -> bool {
        self.clients.insert(mirror, key);
        // Usually empty (a client's end is seen first): no 80-byte key hashed for nothing.
        if !self.waiting_servers.is_empty()
            && let Some(server_key) = self.waiting_servers.remove(&mirror)
            && let Some(server_span) = self.spans.get_mut(&server_key)
            && server_span.parent.is_none()
        {
            if !same_request(server_span.forward, forward) {
                self.stats.mirror_mismatches += 1;
                return false;
            }
            // The server end was seen first: it becomes this span's child after all.
            server_span.trace.join(trace);
            server_span.parent = Some(span_id);
            server_span.evidence = "connection";
            self.stats.parent_from_connection += 1;
            self.stats.roots = self.stats.roots.saturating_sub(1);
            self.shedding_mirrored(key.0, server_key.0);
            return true;
        }
        false
    }

    /// Parent of a server span without a header: the client on the other end, if seen.
    pub(super) fn server_parent(
        &mut self,
        mirror: MirrorKey,
        key: SpanKey,
        forward: u64,
    ) -> (TraceRef, Option<SpanId>, &'static str) {
        if let Some(&client_key) = self.clients.get(&mirror)
            && let Some(client) = self.spans.get_mut(&client_key)
        {
            if !same_request(client.forward, forward) {
                self.stats.mirror_mismatches += 1;
                return (TraceRef::unsettled(self.ids.trace_id()), None, "none");
            }
            self.stats.parent_from_connection += 1;
            client.budget.served_here = true;
            let found = (client.trace.clone(), Some(client.span_id), "connection");
            self.shedding_mirrored(client_key.0, key.0);
            return found;
        }
        if let Some(remote) = self.remote.get(&mirror)
            && same_request(remote.forward, forward)
        {
            self.stats.parent_from_peer += 1;
            return (
                TraceRef::external(remote.trace_id),
                Some(remote.span_id),
                "peer",
            );
        }
        self.waiting_servers.insert(mirror, key);
        (TraceRef::unsettled(self.ids.trace_id()), None, "none")
    }

    /// Parent of a client span without a header, from the candidates of the rule by unit of work
    /// (thread or goroutine, named by `by_unit.1`) and the proxy rule (when `forward` is known);
    /// see the linker's module doc ([`super`]) for how they combine.
    fn client_parent(
        &mut self,
        pid: u32,
        (by_thread, unit): (Candidates, &'static str),
        forward: u64,
        start: Stamp,
        links: &mut Vec<SpanLink>,
    ) -> ((TraceRef, Option<SpanId>, &'static str), Option<SpanKey>) {
        self.shedding.candidates.clear();
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
                    self.shedding.candidates.push(key);
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
        if !end.thread_causality || !end.in_order {
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
}

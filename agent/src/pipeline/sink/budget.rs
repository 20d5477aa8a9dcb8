//! The sink's side of the CPU and memory budget ([`crate::budget`]): each look at the agent's
//! usage may change the share of edge connections kept; the sink then moves the edges ranked
//! above the share into the programs' shed states (with their other end when it is on this
//! host), and those below it back out, and tells the tracer which processes hide requests.

use std::collections::HashMap;

use agent_common::{Protocol, Role};

use super::TraceSink;
use crate::budget::{Budget, rank::rank};

/// The pressure (usage over budget) from which the tracer starts learning which connections
/// are edges, ahead of any cut.
const WATCH_ABOVE: f64 = 0.5;

/// A connection the budget moved out of full capture.
#[derive(Debug, Clone, Copy)]
pub(super) struct BudgetConn {
    pub(super) pid: u32,
    pub(super) fd: i32,
    pub(super) server: bool,
    /// Shed (or on its way); else on its way back ([`Protocol::ResumeNext`]).
    pub(super) shed: bool,
    /// Shed from its opening (or, a server end, from its first syscall): never resumed.
    pub(super) at_open: bool,
}

/// The budget and what it moved.
#[derive(Debug)]
pub(super) struct Shedder {
    pub(super) budget: Budget,
    pub(super) conns: HashMap<u64, BudgetConn, foldhash::fast::RandomState>,
    /// Connections shed at their opening ([`super::shed_openings`]).
    pub(super) openings: super::shed_openings::Openings,
    /// The kernel's count of records lost to a full ring at the last sweep of dead
    /// connections: a close record may have been lost since.
    drops_at_sweep: u64,
    /// The processes whose server ends this episode shed, and whether each was found to make
    /// client calls (told to the programs once, [`crate::probes::KernelConns::note_caller`]).
    callers_checked: HashMap<u32, bool, foldhash::fast::RandomState>,
}

impl Shedder {
    pub(super) fn new(budget: Budget) -> Self {
        Self {
            budget,
            conns: HashMap::default(),
            openings: super::shed_openings::Openings::default(),
            drops_at_sweep: 0,
            callers_checked: HashMap::default(),
        }
    }
}

impl TraceSink<'_> {
    /// Sheds within `budget` from now on (none when no limit is set).
    #[must_use]
    pub fn with_budget(mut self, budget: Budget) -> Self {
        if budget.enabled() {
            self.shedder = Some(Shedder::new(budget));
        }
        self
    }

    /// What the budget did, if one is set.
    #[must_use]
    pub fn budget_stats(&self) -> Option<crate::budget::BudgetStats> {
        self.shedder.as_ref().map(|s| s.budget.stats)
    }

    /// The share of edge connections kept, in thousandths.
    pub(super) fn shedder_keep_permille(&self) -> u64 {
        self.shedder
            .as_ref()
            .map_or(1000, |s| (s.budget.keep() * 1000.0).round() as u64)
    }

    /// A look at the agent's usage, when one is due; the edges follow the share.
    pub(super) fn budget_tick(&mut self, now: u64) {
        let Some(shedder) = &mut self.shedder else {
            return;
        };
        let before = shedder.budget.keep();
        let due = shedder.budget.tick(now);
        let keep = shedder.budget.keep();
        // The two transitions an operator (and a test) looks for; the share in between is in
        // `/metrics` (`sockspan_budget_keep_permille`).
        if before >= 1.0 && keep < 1.0 {
            tracing::info!(
                keep_permille = (keep * 1000.0).round() as u64,
                "budget: over the limit, shedding edge connections"
            );
        } else if before < 1.0 && keep >= 1.0 {
            tracing::info!("budget: full capture again");
        }
        if shedder.budget.pressure() > WATCH_ABOVE {
            // Edges are learnt from here on (a few requests each): below, the tracer spends
            // nothing on them.
            self.tracer.enable_shedding();
        }
        // New edges appear between looks: under a cut they are ranked too.
        if due.is_some() || (keep < 1.0 && self.ticks.is_multiple_of(5)) {
            self.tracer.set_keep(keep);
            self.follow_share(keep, now);
            self.name_shed_openings(keep, now);
        }
        self.tracer.sweep_hiding(now);
    }

    /// Moves every edge to the side of `keep` its rank falls on.
    fn follow_share(&mut self, keep: f64, now: u64) {
        let edges: Vec<_> = self.tracer.edges().collect();
        for (conn_id, edge) in edges {
            let Some(conn) = self.conntrack.get(conn_id) else {
                continue;
            };
            // HTTP/1 in the clear only: the programs switch states at its requests' starts;
            // other protocols' state (HPACK, a datastore session) cannot resume mid-stream, and
            // TLS plaintext comes from the library probes, not the socket.
            if conn.tls || self.protocols.protocol_of(conn_id) != Some("http1") {
                continue;
            }
            let kept = rank(&conn.tuple) < keep;
            let shed = self
                .shedder
                .as_ref()
                .and_then(|s| s.conns.get(&conn_id))
                .is_some_and(|c| c.shed);
            if kept != shed {
                continue;
            }
            let ends = [
                Some((conn_id, edge.server)),
                edge.mirror.map(|m| (m, !edge.server)),
            ];
            tracing::debug!(conn_id, ?edge, kept, "budget: edge crosses the share");
            // The SERVER end first when shedding, the CLIENT end first when resuming: a request
            // straddling the two writes then leaves a span the pair rules drop, never a trace
            // cut above its root.
            let mut ends: Vec<(u64, bool)> = ends.into_iter().flatten().collect();
            ends.sort_by_key(|&(_, server)| server == kept);
            if let Some(mirror) = edge.mirror {
                let (client, server) = if edge.server {
                    (mirror, conn_id)
                } else {
                    (conn_id, mirror)
                };
                self.tracer.shed_pair(client, server);
            }
            for (id, server) in ends {
                if kept {
                    self.resume(id, now);
                } else {
                    self.shed(id, server);
                }
            }
        }
        let any =
            self.shedder.as_ref().is_some_and(|s| !s.conns.is_empty()) || self.openings_named();
        if let Some(kernel) = &mut self.kernel_conns {
            kernel.set_shedding(any);
        }
        if !any && let Some(shedder) = &mut self.shedder {
            // The programs forgot the callers with the episode.
            shedder.callers_checked.clear();
        }
    }

    /// Moves `conn_id` into [`Protocol::ShedNext`].
    fn shed(&mut self, conn_id: u64, server: bool) {
        let (Some(shedder), Some(kernel), Some(conn)) = (
            &mut self.shedder,
            &mut self.kernel_conns,
            self.conntrack.get(conn_id),
        ) else {
            return;
        };
        if shedder.conns.get(&conn_id).is_some_and(|c| c.shed) {
            return;
        }
        let role = if server { Role::Server } else { Role::Client };
        let (pid, fd) = (conn.process.pid, conn.fd);
        // The programs flag hidden work from the moment a connection may switch.
        kernel.set_shedding(true);
        if server {
            // Before the switch: a caller's hidden requests are read from the first.
            self.check_caller(pid);
        }
        let (Some(shedder), Some(kernel)) = (&mut self.shedder, &mut self.kernel_conns) else {
            return;
        };
        if kernel
            .set_budget_state((pid, fd, conn_id), role, Protocol::ShedNext, Protocol::Http)
            .is_none()
        {
            tracing::debug!(
                conn_id,
                pid,
                fd,
                "budget: connection gone before it was shed"
            );
            return;
        }
        tracing::debug!(conn_id, pid, fd, server, "budget: shedding");
        let was = shedder.conns.insert(
            conn_id,
            BudgetConn {
                pid,
                fd,
                server,
                shed: true,
                at_open: false,
            },
        );
        if was.is_none() {
            shedder.budget.stats.connections_shed += 1;
        }
        self.conntrack.pin(conn_id, true);
        // Already hidden if it was on its way back.
        if server && was.is_none() {
            self.tracer.server_hidden(pid, true, 0);
        }
    }

    /// Tells the programs, once an episode, whether process `pid`, whose server end is being
    /// shed, makes client calls (the programs note a caller's later `connect`s themselves).
    pub(super) fn check_caller(&mut self, pid: u32) {
        let (Some(shedder), Some(kernel)) = (&mut self.shedder, &mut self.kernel_conns) else {
            return;
        };
        if let std::collections::hash_map::Entry::Vacant(entry) = shedder.callers_checked.entry(pid)
        {
            let calls = self.conntrack.may_call_out(pid);
            if calls {
                kernel.note_caller(pid);
            }
            entry.insert(calls);
        }
    }

    /// Moves `conn_id` towards full capture: [`Protocol::ResumeNext`], or straight back if the
    /// programs never switched it.
    fn resume(&mut self, conn_id: u64, now: u64) {
        let (Some(shedder), Some(kernel)) = (&mut self.shedder, &mut self.kernel_conns) else {
            return;
        };
        let Some(c) = shedder.conns.get_mut(&conn_id) else {
            return;
        };
        if !c.shed {
            return;
        }
        let role = if c.server { Role::Server } else { Role::Client };
        let was = kernel.set_budget_state(
            (c.pid, c.fd, conn_id),
            role,
            Protocol::ResumeNext,
            Protocol::Http,
        );
        if was.is_some() {
            shedder.budget.stats.connections_resumed += 1;
        }
        tracing::debug!(conn_id, ?was, "budget: resuming");
        if was == Some(Protocol::ShedNext as u32) || was.is_none() {
            // Never switched (or gone): nothing hidden to come back from.
            let c = *c;
            shedder.conns.remove(&conn_id);
            self.conntrack.pin(conn_id, false);
            if c.server {
                self.tracer.server_hidden(c.pid, false, now);
            }
        } else {
            c.shed = false;
        }
    }

    /// The first record of a connection the budget resumed ([`agent_common::DATA_RESUMED`]):
    /// its protocol is detected afresh from this request.
    pub(super) fn budget_resumed(&mut self, conn_id: u64, now: u64) {
        // Resumed mid-connection: what it carried while shed is unknown.
        self.protocols.open(conn_id, false);
        // Shed again meanwhile (the record waited in the ring): still the budget's.
        if !self
            .shedder
            .as_ref()
            .and_then(|s| s.conns.get(&conn_id))
            .is_some_and(|c| c.shed)
        {
            self.budget_forget(conn_id, now);
        }
    }

    /// Shed connections of processes that exited (whose close the programs never saw: the
    /// kernel closes a dead process's files without a `close` syscall) leave the budget's care.
    pub(super) fn budget_sweep_dead(&mut self, now: u64) {
        let Some(shedder) = &self.shedder else {
            return;
        };
        let mut alive: HashMap<u32, bool> = HashMap::new();
        // Asked only after records were lost (a lookup per connection held otherwise costs a
        // syscall each, every sweep).
        let lost_records = self.ring_full_seen != shedder.drops_at_sweep;
        let kernel = self.kernel_conns.as_ref().filter(|_| lost_records);
        // Its process gone, or its socket no longer the programs' (its close record lost to a
        // full ring): no close will come for it.
        let dead: Vec<u64> = shedder
            .conns
            .iter()
            .filter(|&(&id, c)| {
                !*alive
                    .entry(c.pid)
                    .or_insert_with(|| std::path::Path::new(&format!("/proc/{}", c.pid)).exists())
                    || kernel.is_some_and(|k| !k.holds((c.pid, c.fd, id)))
            })
            .map(|(id, _)| *id)
            .collect();
        if let Some(shedder) = &mut self.shedder {
            shedder.drops_at_sweep = self.ring_full_seen;
        }
        for conn_id in dead {
            self.budget_forget(conn_id, now);
            self.tracer.forget_edge(conn_id);
        }
        self.tracer
            .forget_dead_callers(|pid| std::path::Path::new(&format!("/proc/{pid}")).exists());
    }

    /// `conn_id` left the budget's care (resumed, closed, no longer tracked).
    pub(super) fn budget_forget(&mut self, conn_id: u64, now: u64) {
        let Some(shedder) = &mut self.shedder else {
            return;
        };
        if let Some(c) = shedder.conns.remove(&conn_id) {
            self.conntrack.pin(conn_id, false);
            if c.server {
                self.tracer.server_hidden(c.pid, false, now);
            }
        }
    }
}

//! The budget on connection churn: a load of one request per connection is never shed by the
//! share of edges ([`super::budget`]), since an edge is learnt from a connection's requests and
//! each connection carries one. Processes the tracer knows to start every trace they are in
//! ([`crate::trace::Tracer::pure_clients`]) are named to the programs instead, with the share
//! kept: they shed each new client connection of such a process that ranks above it from its
//! opening (the open record says so, [`agent_common::CONN_SHED_AT_OPEN`]), and its server end on
//! this host from its first syscall (they say so too, [`agent_common::EventKind::ConnShed`]: it
//! joins the budget's connections and its process counts as hiding requests). The agent pairs
//! the two ends by rank hash, whichever record comes first, so that the pair rules drop the
//! spans of a server end the programs did not shed.
//!
//! A connection shed at its opening stays shed until it closes: nothing on it was ever parsed,
//! and only HTTP/1 could be picked up mid-stream.

use std::collections::{HashMap, HashSet};

use agent_common::{ConnEvent, Role, SockTuple, rank::rank_hash};

use super::{TraceSink, budget::BudgetConn};
use crate::budget::rank::threshold;

/// Ends waiting for their other end, at most: past it the waiting ones are forgotten (an end
/// left unpaired only loses the pair rules).
const UNPAIRED_MAX: usize = 16_384;

/// How long after the last process was unnamed the programs' switch stays on: open records of
/// connections the programs shed before may still wait in the ring (an agent behind its ring).
const UNNAMED_GRACE_NS: u64 = 5_000_000_000;

/// What the sink knows of connections shed at their opening.
#[derive(Debug, Default)]
pub(super) struct Openings {
    /// The processes named to the programs now.
    named: HashSet<u32>,
    /// Monotonic ns until which the programs' switch stays on after the last unnaming, and
    /// server ends opened wait for their client end.
    unnamed_until: u64,
    /// The share they were named with (as the programs' threshold).
    lowest: u64,
    /// Client ends shed at their opening whose server end was not seen (yet), by rank hash.
    clients: HashMap<u64, u64, foldhash::fast::RandomState>,
    /// Server ends opened while processes are named, whose client end was not seen (yet).
    servers: HashMap<u64, u64, foldhash::fast::RandomState>,
}

impl TraceSink<'_> {
    /// An open record: a client end shed at its opening joins the budget's connections, and
    /// either end finds its other end among the ends waiting.
    pub(super) fn shed_openings_on_open(&mut self, event: &ConnEvent) {
        let Some(shedder) = &mut self.shedder else {
            return;
        };
        let openings = &mut shedder.openings;
        let conn_id = event.header.conn_id;
        let shed = event.flags & agent_common::CONN_SHED_AT_OPEN != 0;
        if shed {
            shedder.conns.insert(
                conn_id,
                BudgetConn {
                    pid: event.header.pid,
                    fd: event.header.fd,
                    server: false,
                    shed: true,
                    at_open: true,
                },
            );
            shedder.budget.stats.connections_shed += 1;
            shedder.budget.stats.openings_shed += 1;
            self.conntrack.pin(conn_id, true);
        } else if event.role != Role::Server as u32
            || (openings.named.is_empty()
                && openings.clients.is_empty()
                && event.header.ts_ns >= openings.unnamed_until)
        {
            return;
        }
        let hash = rank_hash(&event.tuple);
        let pair = if shed {
            take_or_wait(&mut openings.servers, &mut openings.clients, hash, conn_id)
                .map(|server| (conn_id, server))
        } else {
            take_or_wait(&mut openings.clients, &mut openings.servers, hash, conn_id)
                .map(|client| (client, conn_id))
        };
        if let Some((client, server)) = pair {
            // The pair rules only: whether the programs shed the server end is theirs to say
            // (a `ConnShed`); they may not (its first write raced the client's `connect`, the
            // client closed before the server read, the map forgot the entry), and then its
            // spans, without their client's, are dropped.
            self.tracer.shed_pair(client, server);
        }
    }

    /// The programs shed a server end at its first syscall: it joins the budget's connections
    /// and its process hides requests; its client end, if the agent saw it open and it is
    /// still waiting, is its pair. Known from the record itself when the agent's table lost
    /// the server end's opening.
    pub(super) fn shed_openings_on_shed(&mut self, event: &ConnEvent) {
        let Some(shedder) = &mut self.shedder else {
            return;
        };
        let server = event.header.conn_id;
        let (pid, fd) = (event.header.pid, event.header.fd);
        if let Some(client) = shedder.openings.clients.remove(&rank_hash(&event.tuple)) {
            self.tracer.shed_pair(client, server);
        }
        if shedder.conns.contains_key(&server) {
            return;
        }
        shedder.conns.insert(
            server,
            BudgetConn {
                pid,
                fd,
                server: true,
                shed: true,
                at_open: true,
            },
        );
        shedder.budget.stats.connections_shed += 1;
        shedder.budget.stats.openings_shed += 1;
        tracing::debug!(server, pid, "budget: server end shed with its client");
        self.check_caller(pid);
        self.conntrack.pin(server, true);
        self.tracer.server_hidden(pid, true, 0);
    }

    /// A connection closed: an end still waiting for its other end stops waiting.
    pub(super) fn shed_openings_on_close(&mut self, tuple: &SockTuple, conn_id: u64) {
        let Some(shedder) = &mut self.shedder else {
            return;
        };
        let openings = &mut shedder.openings;
        if openings.clients.is_empty() && openings.servers.is_empty() {
            return;
        }
        let hash = rank_hash(tuple);
        for waiting in [&mut openings.clients, &mut openings.servers] {
            if waiting.get(&hash) == Some(&conn_id) {
                waiting.remove(&hash);
            }
        }
    }

    /// Names to the programs the processes whose new connections are shed at share `keep`:
    /// the tracer's pure clients that have no connection they may serve on; none at `keep` 1.
    /// The tracer drops the traces of requests served by a named process, or by one with a
    /// client end still shed from its opening (a request's call may be on it).
    pub(super) fn name_shed_openings(&mut self, keep: f64, now: u64) {
        let (Some(shedder), Some(kernel)) = (&mut self.shedder, &mut self.kernel_conns) else {
            return;
        };
        let named: HashSet<u32> = if keep < 1.0 {
            self.tracer
                .pure_clients()
                .filter(|&pid| !self.conntrack.may_serve(pid))
                .collect()
        } else {
            HashSet::new()
        };
        let dark: HashSet<u32> = shedder
            .conns
            .values()
            .filter(|c| c.at_open && !c.server)
            .map(|c| c.pid)
            .chain(named.iter().copied())
            .collect();
        self.tracer.set_openings_shed(&dark);
        let openings = &mut shedder.openings;
        let lowest = threshold(keep);
        if named == openings.named && lowest == openings.lowest {
            return;
        }
        for &pid in openings.named.difference(&named) {
            kernel.unname_shed_opens(pid);
        }
        for &pid in &named {
            if lowest != openings.lowest || !openings.named.contains(&pid) {
                kernel.name_shed_opens(pid, lowest);
            }
        }
        if !named.is_empty() {
            kernel.set_shedding(true);
        }
        if named.is_empty() && !openings.named.is_empty() {
            // Open records the programs sent before the unnaming may still be in the ring:
            // their connections are shed, and need the programs' switch on.
            openings.unnamed_until = now + UNNAMED_GRACE_NS;
        }
        tracing::debug!(?named, keep, "budget: processes whose openings are shed");
        openings.lowest = lowest;
        openings.named = named;
    }

    /// Whether processes are named to the programs now, or were until lately.
    pub(super) fn openings_named(&self) -> bool {
        self.shedder.as_ref().is_some_and(|s| {
            !s.openings.named.is_empty() || crate::clock::monotonic_ns() < s.openings.unnamed_until
        })
    }
}

/// Takes the end waiting under `hash` in `others`, or makes `conn_id` wait in `own`.
fn take_or_wait(
    others: &mut HashMap<u64, u64, foldhash::fast::RandomState>,
    own: &mut HashMap<u64, u64, foldhash::fast::RandomState>,
    hash: u64,
    conn_id: u64,
) -> Option<u64> {
    if let Some(other) = others.remove(&hash) {
        return Some(other);
    }
    if own.len() >= UNPAIRED_MAX {
        own.clear();
    }
    own.insert(hash, conn_id);
    None
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use agent_common::{CONN_SHED_AT_OPEN, EventHeader, EventKind, Syscall};

    use super::*;
    use crate::{
        budget::{
            Budget,
            config::{BudgetConfig, Limit},
        },
        conntrack::{Conntrack, ConntrackConfig},
        exporter::counting::CountingExporter,
        net::loopback_tuple,
        receiver::EventSink as _,
        trace::{
            TraceConfig, Tracer,
            resource::{Resources, ServiceNameRule},
        },
    };

    fn open(conn_id: u64, server: bool, flags: u32) -> ConnEvent {
        let (role, syscall, tuple) = if server {
            (Role::Server, Syscall::Accept4, loopback_tuple(8080, 40_000))
        } else {
            (Role::Client, Syscall::Connect, loopback_tuple(40_000, 8080))
        };
        ConnEvent {
            header: EventHeader {
                kind: EventKind::ConnOpen as u32,
                pid: std::process::id(),
                tid: std::process::id(),
                fd: 3 + conn_id as i32,
                conn_id,
                ts_ns: 1_000 * conn_id,
            },
            tuple,
            role: role as u32,
            syscall: syscall as u32,
            flags,
            ..ConnEvent::default()
        }
    }

    /// Not an open record's flag: the programs' word that they shed this server end
    /// ([`agent_common::EventKind::ConnShed`]).
    const SHED: u32 = u32::MAX;

    /// Feeds `events` (whether each is a server end, its flags) to a sink whose budget names a
    /// process; returns which ends the budget holds, by connection id.
    fn held_after(events: &[(u64, bool, u32)]) -> Vec<(u64, bool)> {
        let mut exporter = CountingExporter::default();
        let tracer = Tracer::new(
            TraceConfig {
                link_delay: Duration::ZERO,
                ..TraceConfig::default()
            },
            Resources::new(ServiceNameRule::Auto),
        );
        let mut sink = TraceSink::new(
            Conntrack::new(ConntrackConfig::default(), Vec::new()),
            tracer,
            &mut exporter,
        )
        .with_budget(Budget::new(BudgetConfig {
            max_cpu: Limit::At(1.0),
            max_memory: Limit::Off,
        }));
        if let Some(shedder) = &mut sink.shedder {
            shedder.openings.named.insert(1);
        }
        for &(conn_id, server, flags) in events {
            if flags == SHED {
                sink.on_shed(&open(conn_id, server, 0));
            } else {
                sink.on_open(&open(conn_id, server, flags));
            }
        }
        let mut held: Vec<(u64, bool)> = sink
            .shedder
            .as_ref()
            .map(|s| s.conns.iter().map(|(id, c)| (*id, c.server)).collect())
            .unwrap_or_default();
        held.sort_unstable();
        held
    }

    #[test]
    fn a_server_end_the_programs_shed_joins_its_client_end_in_either_order() {
        let both = vec![(1, false), (2, true)];
        assert_eq!(
            held_after(&[(1, false, CONN_SHED_AT_OPEN), (2, true, 0), (2, true, SHED)]),
            both
        );
        // The server's `accept` may return before the client's `connect` does.
        assert_eq!(
            held_after(&[(2, true, 0), (1, false, CONN_SHED_AT_OPEN), (2, true, SHED)]),
            both
        );
        // The programs' word is enough: the client end's open record may have been lost.
        assert_eq!(
            held_after(&[(2, true, 0), (2, true, SHED)]),
            vec![(2, true)]
        );
        // Without it the server end is not shed (only the pair rules apply to it).
        assert_eq!(
            held_after(&[(1, false, CONN_SHED_AT_OPEN), (2, true, 0)]),
            vec![(1, false)]
        );
        // A server end whose client end was not shed stays the agent's.
        assert_eq!(held_after(&[(1, false, 0), (2, true, 0)]), vec![]);
    }
}

//! Cross-host linking ([`crate::peers`]): this host's CLIENT spans to other hosts are announced
//! to their server's agent, and a SERVER span here becomes the child of the CLIENT span another
//! agent announced for its request.

use super::{
    Tracer,
    open::{Endpoint, MirrorKey, SpanKey, same_request},
    trace_ref::TraceRef,
};
use crate::{
    peers::{local::LocalAddrs, wire::ClientSpan},
    trace::{
        ids::SpanId,
        remote::{Announcer, RemoteClient},
        span::SpanLink,
    },
};

impl Tracer {
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
    pub(super) fn announce(
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
            // Known outside from now on: a trace joining it later keeps this id.
            trace.fix();
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
            span.trace.fix();
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
        self.peer_client(client, now, false);
    }

    /// Another host's agent answered this one's question ([`super::asking`]): as an
    /// announcement, the evidence being the in-band option that named the span.
    pub fn on_peer_answer(&mut self, client: &ClientSpan, now: u64) {
        self.peer_client(client, now, true);
    }

    fn peer_client(&mut self, client: &ClientSpan, now: u64, answer: bool) {
        let mirror = MirrorKey {
            client: Endpoint::new(client.client),
            server: Endpoint::new(client.server),
            request: client.key,
        };
        // An answer names the span this agent asked for, or nothing.
        if answer && !self.answers_question(mirror, client.span_id) {
            return;
        }
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
            if server_span.trace.is_used() && server_span.trace.id() != client.trace_id {
                // Too late: this span's trace id was used outside already (a question about a
                // call it made was answered at its deadline with it: a subtree on another
                // host is in it), so it cannot move to the client's trace; a parent in
                // another trace would be wrong. A link says who called. (An id only announced
                // may have reached no agent: that trace still joins, as before.)
                server_span.links.push(SpanLink {
                    trace_id: client.trace_id,
                    span_id: client.span_id,
                    reason: "peer-late",
                });
                self.stats.peer_late += 1;
                return;
            }
            server_span.trace.join(&TraceRef::external(client.trace_id));
            server_span.parent = Some(client.span_id);
            if answer {
                server_span.evidence = "inband";
                self.asking_stats.parent_from_answer += 1;
            } else {
                server_span.evidence = "peer";
                self.stats.parent_from_peer += 1;
            }
            self.stats.roots = self.stats.roots.saturating_sub(1);
            return;
        }
        if !answer {
            self.remote.insert(mirror, remote, now);
        }
    }
}

//! The in-band mode (`--in-band`, [`agent_common::InbandEvent`]): the programs tell the tracer
//! which context each request's first TCP segment carried, keyed like the request (connection,
//! sequence number of its first byte).
//!
//! - A SERVER request whose segment carried a CLIENT span's context is that span's child, in its
//!   trace, wherever the client ran (evidence `inband`), as a `traceparent` header would make it.
//! - A SERVER request without one starts the trace the programs gave it (their CLIENT requests
//!   made for it carry that id), unless a rule here names its parent.
//! - A CLIENT request whose segment carried a context has the span id written there, and belongs
//!   to the trace written there: the server's host adopted both. When the rules here put it in
//!   another trace (the programs' rule by thread and this agent's rules disagreed), it is
//!   exported in the trace it carried, as a root with a link to the parent the rules named
//!   (`sockspan.link.reason = inband-disagreed`): its subtree on the other host stays whole and
//!   no span gets a wrong parent.
//! - The asking form (with the peer messages, [`crate::peers`]): a CLIENT request whose trace the
//!   programs could not tell carries its span id and this agent's address; the span keeps that
//!   id and this agent answers the server's agent's question with its trace once settled
//!   ([`super::asking`]). A SERVER request that carried one waits for its client like a passive
//!   one, and its agent asks the named agent.

use super::{Tracer, trace_ref::TraceRef};
use crate::expiring::Expiring;
use crate::trace::{
    ids::{SpanId, TraceId},
    span::SpanLink,
};

/// How long a note waits for its request's record (the programs send it first; the request is
/// parsed within a ring drain).
const NOTE_TTL_NS: u64 = 10_000_000_000;
/// Notes held at once; past this the oldest go (counted).
const MAX_NOTES: usize = 65_536;

/// The key under which a TLS connection's request finds its note ([`Tracer::give_tls_request_note`]):
/// a TLS request's own key is not its record's sequence number (on a connection seen from its
/// start it is its plaintext offset), so a TLS request takes only a note given to it, never one
/// left at a sequence number (the handshake's) that its key might equal. Never a request key.
pub(super) const TLS_REQUEST: u64 = u64::MAX;

/// What the programs said of one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum InbandNote {
    /// A CLIENT request's first segment carried this context (its own span id).
    Sent { trace_id: TraceId, span_id: SpanId },
    /// A SERVER request's first segment carried a CLIENT span's context.
    Adopted { trace_id: TraceId, parent: SpanId },
    /// A SERVER request without one: the trace the programs started for it.
    Started { trace_id: TraceId },
    /// A CLIENT request's first segment carried the asking form: its span id, and this agent's
    /// address for the server's agent to ask the trace.
    SentAsking { span_id: SpanId },
    /// A SERVER request's first segment carried the asking form: the CLIENT span's id and the
    /// address of the agent that knows its trace.
    Asking {
        agent: std::net::IpAddr,
        parent: SpanId,
    },
}

/// Notes by (connection, request key), until their request takes them or they expire.
#[derive(Debug, Default)]
pub(super) struct InbandNotes(Expiring<(u64, u64), InbandNote, NOTE_TTL_NS, MAX_NOTES>);

impl InbandNotes {
    fn insert(&mut self, key: (u64, u64), note: InbandNote, now: u64) -> bool {
        self.0.insert(key, note, now)
    }

    /// The note for a request, taken.
    pub(super) fn take(&mut self, key: (u64, u64)) -> Option<InbandNote> {
        self.0.take(key)
    }
}

impl Tracer {
    /// The programs' note for the request starting at TCP sequence number `seq` of connection
    /// `conn_id` ([`agent_common::InbandEvent`]; `flags` as there, `now` its time).
    pub fn on_inband(
        &mut self,
        conn_id: u64,
        seq: u32,
        flags: u32,
        (trace_id, span_id): (TraceId, SpanId),
        now: u64,
    ) {
        if flags & agent_common::INBAND_CONN != 0 {
            if span_id == [0; 8] {
                return;
            }
            if flags & agent_common::INBAND_SENT != 0 {
                self.on_inband_conn_sent(conn_id, span_id);
            } else if trace_id != [0; 16] {
                let agent = std::net::Ipv6Addr::from(trace_id).to_canonical();
                self.on_inband_conn(conn_id, agent, span_id);
            }
            return;
        }
        let asking = flags & agent_common::INBAND_ASK != 0;
        let note = if asking && flags & agent_common::INBAND_SENT != 0 {
            InbandNote::SentAsking { span_id }
        } else if asking && flags & agent_common::INBAND_ADOPTED != 0 {
            InbandNote::Asking {
                agent: std::net::Ipv6Addr::from(trace_id).to_canonical(),
                parent: span_id,
            }
        } else if asking {
            return;
        } else if flags & agent_common::INBAND_SENT != 0 {
            InbandNote::Sent { trace_id, span_id }
        } else if flags & agent_common::INBAND_ADOPTED != 0 {
            InbandNote::Adopted {
                trace_id,
                parent: span_id,
            }
        } else {
            InbandNote::Started { trace_id }
        };
        if trace_id == [0; 16] {
            return;
        }
        if self.inband.insert((conn_id, u64::from(seq)), note, now) {
            self.stats.inband_notes_evicted += 1;
        }
    }
}

impl Tracer {
    /// The programs' note at the record at TCP sequence number `record` of the TLS connection
    /// `conn_id` is the next request's ([`TLS_REQUEST`]): the sink found that request begins in
    /// that record's plaintext or a later one's, and that no request came since the note.
    pub fn give_tls_request_note(&mut self, conn_id: u64, record: u32, now: u64) {
        if let Some(note) = self.inband.take((conn_id, u64::from(record)))
            && self.inband.insert((conn_id, TLS_REQUEST), note, now)
        {
            self.stats.inband_notes_evicted += 1;
        }
    }

    /// The programs' note for request `key` of `conn`, taken: on a TLS connection only the one
    /// given to its next request ([`TLS_REQUEST`]).
    pub(super) fn inband_note_for(
        &mut self,
        conn: &crate::conntrack::Connection,
        key: (u64, u64),
    ) -> Option<InbandNote> {
        self.inband.take(if conn.tls {
            (conn.conn_id, TLS_REQUEST)
        } else {
            key
        })
    }

    /// Forgets the programs' note at TCP sequence number `seq` of connection `conn_id`: no
    /// request is its.
    pub fn drop_inband_note(&mut self, conn_id: u64, seq: u32) {
        let _ = self.inband.take((conn_id, u64::from(seq)));
    }

    /// A CLIENT request whose first segment carried a context has the span id written there;
    /// any other span a new one.
    pub(super) fn span_id_for(&mut self, note: Option<InbandNote>, server: bool) -> SpanId {
        match note {
            Some(InbandNote::Sent { span_id, .. } | InbandNote::SentAsking { span_id })
                if !server =>
            {
                span_id
            }
            _ => self.ids.span_id(),
        }
    }

    /// A SERVER request whose first segment carried a CLIENT span's context: that span is its
    /// parent, in its trace.
    pub(super) fn inband_parent(
        &mut self,
        note: Option<InbandNote>,
        server: bool,
    ) -> Option<(TraceRef, Option<SpanId>, &'static str)> {
        let (true, Some(InbandNote::Adopted { trace_id, parent })) = (server, note) else {
            return None;
        };
        self.stats.parent_from_inband += 1;
        Some((TraceRef::external(trace_id), Some(parent), "inband"))
    }

    /// The trace the programs gave a request: the one its first segment carried (a CLIENT
    /// span's), or the one a SERVER request started, which its thread's CLIENT requests carry.
    /// A root takes it as its own trace; a span with a parent gives it to the parent's trace
    /// unless that trace's id is known outside already (then a CLIENT span leaves it at export,
    /// [`Tracer::inband_placed`]). Returns a CLIENT span's, which export checks.
    pub(super) fn inband_trace(
        note: Option<InbandNote>,
        server: bool,
        has_parent: bool,
        trace: &mut TraceRef,
    ) -> Option<TraceId> {
        let id = match note {
            Some(InbandNote::Sent { trace_id, .. }) if !server => trace_id,
            Some(InbandNote::Started { trace_id }) if server => trace_id,
            _ => return None,
        };
        if has_parent {
            trace.adopt_id(id);
        } else {
            *trace = trace.renamed(id);
        }
        (!server).then_some(id)
    }

    /// Where a span is exported: in its trace under its parent; but a CLIENT span whose request
    /// carried another trace goes to that one (the server's host put its subtree there), as a
    /// root linked to the parent the rules here named.
    pub(super) fn inband_placed(
        &mut self,
        carried: Option<TraceId>,
        trace: &TraceRef,
        parent: Option<SpanId>,
        mut links: Vec<SpanLink>,
    ) -> (TraceId, Option<SpanId>, Vec<SpanLink>) {
        let trace_id = trace.id();
        match carried {
            Some(carried) if carried != trace_id => {
                self.stats.inband_disagreed += 1;
                if let Some(named) = parent {
                    links.push(SpanLink {
                        trace_id,
                        span_id: named,
                        reason: "inband-disagreed",
                    });
                }
                (carried, None, links)
            }
            _ => (trace_id, parent, links),
        }
    }
}

//! The in-band mode's asking form, between agents ([`crate::peers`]): a request whose trace the
//! client host's programs could not tell (an event loop, goroutines, a thread serving several
//! requests) carried its CLIENT span's id and its agent's address in the TCP option.
//!
//! - On the server's host, its SERVER span waits for its client like a passive one
//!   (`waiting_servers`), and this agent asks the named agent ([`Kind::Ask`]: the connection and
//!   key as the server sees them, the span id). The answer comes back as a CLIENT span with that
//!   connection and key, and makes it the child (evidence `inband`), before export. No answer in
//!   time: a root, never a wrong parent.
//! - On the client's host, the CLIENT span has the id the option carried. A question is
//!   answered once the span's trace is settled (as an announcement waits), at the latest half a
//!   link delay after it came; a question that comes before the span (the asker read its ring
//!   first) waits for it; one that comes after the span was exported is answered from the trace
//!   it was exported in. Answers go to the address the question came from.

use std::{
    collections::{HashMap, VecDeque},
    net::{IpAddr, SocketAddr},
};

use super::{SpanKey, Tracer, inband::InbandNote, open::MirrorKey};
use crate::{
    expiring::Expiring,
    peers::wire::{ClientSpan, Kind},
    trace::ids::{SpanId, TraceId},
};

type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// How long a question waits for its span, and an exported span's trace is kept for late
/// questions: the peer messages' own window.
pub(super) const KEEP_NS: u64 = 30_000_000_000;
/// Entries of each table at once; past this the oldest go (counted).
pub(super) const MAX_ENTRIES: usize = 65_536;

/// What this agent asked another about a request: the CLIENT span with this id (the asking
/// form), or the one of this stream on the connection the option named (the connection form,
/// [`super::stream_asking`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Asked {
    Span(SpanId),
    /// The stream of the SERVER span waiting on this connection (this end's id): an answer
    /// about the same addresses and stream id is for a later connection if another waits.
    Stream(u64),
    /// Asked for streams of two connections between the same addresses (the first closed, the
    /// next reusing its ports, stream ids starting again): whose an answer is cannot be told,
    /// so none is taken until the entry expires.
    Ambiguous,
}

/// A question from another agent: who asked, and its view of the request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Question {
    pub from: SocketAddr,
    /// The asker's view: client and server addresses, the request's key.
    pub client: SocketAddr,
    pub server: SocketAddr,
    pub key: u64,
}

/// Questions and answers to send, as [`Asking::out`] holds them.
type Outgoing = Vec<(Kind, SocketAddr, ClientSpan)>;

impl Question {
    /// Queues the answer, counted: the CLIENT span (`forward`, `trace_id`, `span_id`) as the
    /// asker sees its request, to where the question came from.
    pub(super) fn answer(
        &self,
        out: &mut Outgoing,
        stats: &mut AskingStats,
        (forward, trace_id, span_id): (u64, TraceId, SpanId),
    ) {
        stats.answered += 1;
        let answer = ClientSpan {
            client: self.client,
            server: self.server,
            key: self.key,
            forward,
            trace_id,
            span_id,
        };
        out.push((Kind::Answer, self.from, answer));
    }
}

/// Both sides of the asking form.
#[derive(Debug, Default)]
pub(super) struct Asking {
    /// This host's CLIENT spans whose request carried the asking form, until exported (at most
    /// [`MAX_ENTRIES`]; past that a span cannot be asked for, counted).
    askable: FastMap<SpanId, SpanKey>,
    /// The span each question asked for, by the request as this end sees it: an answer names
    /// it (the asking form), or is refused.
    pub(super) asked: Expiring<MirrorKey, Asked, KEEP_NS, MAX_ENTRIES>,
    /// Questions that came before their span.
    early: Expiring<SpanId, Question, KEEP_NS, MAX_ENTRIES>,
    /// Askable spans exported: the trace and forward key they were exported with.
    exported: Expiring<SpanId, (TraceId, u64), KEEP_NS, MAX_ENTRIES>,
    /// Questions whose span's trace may still move: answered when it settles or at the
    /// deadline (monotonic ns).
    waiting: VecDeque<(u64, SpanKey, SpanId, Question)>,
    /// Questions and answers to send (a question's address is the agent's; the port is the
    /// shared one).
    pub(super) out: Outgoing,
}

/// What the asking form did.
#[derive(Debug, Default, Clone, Copy)]
pub struct AskingStats {
    /// Questions queued for other agents, and answers that named a parent here.
    pub asked: u64,
    pub parent_from_answer: u64,
    /// Questions answered, and those about a span this agent never knew (or forgot).
    pub answered: u64,
    pub unknown: u64,
    /// Answers refused: not for the span asked, or to no question.
    pub refused: u64,
    /// Entries dropped for room before their time.
    pub evicted: u64,
}

impl Tracer {
    /// The asking form on a span being opened (`key`, `span_id`, `server` or not, at `now`)
    /// whose request's note is `inband`: a SERVER span without a parent asks the agent the note
    /// names; a CLIENT span whose request carried the form can be asked for. (It is announced
    /// too, as any: its option may not have reached the server, for want of room, or of an
    /// agent there that reads it.) A `stream` of a multiplexed connection takes the connection
    /// form instead ([`super::stream_asking`]).
    pub(super) fn asking_on_request(
        &mut self,
        inband: Option<InbandNote>,
        no_parent: bool,
        mirror: MirrorKey,
        (key, span_id, server, stream, now): (SpanKey, SpanId, bool, bool, u64),
    ) {
        if stream {
            self.stream_asking_on_request(no_parent, mirror, (key, span_id, server, now));
            return;
        }
        match inband {
            Some(InbandNote::Asking { agent, parent }) if server && no_parent => {
                self.ask(agent, mirror, Asked::Span(parent), parent);
            }
            Some(InbandNote::SentAsking { span_id }) if !server => {
                self.askable(span_id, key, now);
            }
            _ => {}
        }
    }

    /// A SERVER span (`mirror`, as this end sees its request) without a parent: asks `agent`
    /// for its CLIENT span, `asked` being the span id its request's option carried (the asking
    /// form) or its stream on the connection whose option carried `id`, a token (the connection
    /// form, [`super::stream_asking`]). Not when `agent` is this host's: its client is traced
    /// here, and the rules here link it.
    pub(super) fn ask(&mut self, agent: IpAddr, mirror: MirrorKey, asked: Asked, id: SpanId) {
        let Some(announcer) = &self.announcer else {
            return;
        };
        if announcer.local.contains(agent) {
            return;
        }
        let asked = match (self.asking.asked.get(mirror), asked) {
            (Some(&Asked::Stream(earlier)), Asked::Stream(conn_id)) if earlier != conn_id => {
                Asked::Ambiguous
            }
            (Some(&Asked::Ambiguous), Asked::Stream(_)) => Asked::Ambiguous,
            _ => asked,
        };
        if self.asking.asked.insert(mirror, asked, self.last_event_ts) {
            self.asking_stats.evicted += 1;
        }
        if asked == Asked::Ambiguous {
            self.asking_stats.refused += 1;
            return;
        }
        self.asking_stats.asked += 1;
        let question = ClientSpan {
            client: mirror.client.addr(),
            server: mirror.server.addr(),
            key: mirror.request,
            forward: 0,
            trace_id: [0; 16],
            span_id: id,
        };
        let kind = match asked {
            Asked::Span(_) => Kind::Ask,
            Asked::Stream(_) | Asked::Ambiguous => Kind::AskStream,
        };
        self.asking
            .out
            .push((kind, SocketAddr::new(agent, 0), question));
    }

    /// A CLIENT span whose request carried the asking form is being opened: it can be asked
    /// for, and a question that came first waits for its trace (answered at the next settling
    /// once the trace is settled, as any waiting question).
    fn askable(&mut self, span_id: SpanId, key: SpanKey, now: u64) {
        if self.asking.askable.len() >= MAX_ENTRIES {
            self.asking_stats.evicted += 1;
            return;
        }
        self.asking.askable.insert(span_id, key);
        if let Some(question) = self.asking.early.take(span_id) {
            self.wait_for_trace(key, span_id, question, now);
        }
    }

    /// A CLIENT span (`key`, `span_id`) leaves the table: exported in `exported`'s trace with
    /// its forward key (late questions get those), or abandoned (`None`); if it was askable
    /// (either form), it is no longer.
    pub(super) fn askable_gone(
        &mut self,
        (key, span_id): (SpanKey, SpanId),
        exported: Option<(TraceId, u64)>,
        now: u64,
    ) {
        let stream = self.stream_askable_gone(key, span_id, exported.is_some(), now);
        if !stream
            && (self.asking.askable.is_empty() || self.asking.askable.remove(&span_id).is_none())
        {
            return;
        }
        if let Some(exported) = exported
            && self.asking.exported.insert(span_id, exported, now)
        {
            self.asking_stats.evicted += 1;
        }
    }

    /// Another agent asks for the CLIENT span `span.span_id` of this host.
    pub fn on_peer_ask(&mut self, from: SocketAddr, span: &ClientSpan, now: u64) {
        let question = Question {
            from,
            client: span.client,
            server: span.server,
            key: span.key,
        };
        if let Some(&key) = self.asking.askable.get(&span.span_id) {
            self.answer_or_wait(key, span.span_id, question, now);
        } else if let Some(&(trace_id, forward)) = self.asking.exported.get(span.span_id) {
            let ids = (forward, trace_id, span.span_id);
            question.answer(&mut self.asking.out, &mut self.asking_stats, ids);
        } else if self.asking.early.insert(span.span_id, question, now) {
            self.asking_stats.evicted += 1;
        }
    }

    /// Answers `question` about the span `span_id` from the trace it was exported in (unknown
    /// if forgotten).
    pub(super) fn answer_exported(&mut self, span_id: SpanId, question: Question) {
        if let Some(&(trace_id, forward)) = self.asking.exported.get(span_id) {
            let ids = (forward, trace_id, span_id);
            question.answer(&mut self.asking.out, &mut self.asking_stats, ids);
        } else {
            self.asking_stats.unknown += 1;
        }
    }

    /// Answers `question` about the open span `key` (`span_id`) now if its trace is settled,
    /// else queues it until it is (or half a link delay).
    pub(super) fn answer_or_wait(
        &mut self,
        key: SpanKey,
        span_id: SpanId,
        question: Question,
        now: u64,
    ) {
        let Some(span) = self.spans.get(&key).filter(|span| span.span_id == span_id) else {
            self.asking_stats.unknown += 1;
            return;
        };
        if span.trace.settled() {
            span.trace.fix_used();
            let ids = (span.forward, span.trace.id(), span.span_id);
            question.answer(&mut self.asking.out, &mut self.asking_stats, ids);
        } else {
            self.wait_for_trace(key, span_id, question, now);
        }
    }

    /// Whether an answer about the request `mirror` names the span this agent asked for (the
    /// question is taken either way).
    pub(super) fn answers_question(&mut self, mirror: MirrorKey, span_id: SpanId) -> bool {
        if self.asking.asked.get(mirror) == Some(&Asked::Ambiguous) {
            // Kept: a later answer is no less ambiguous.
            self.asking_stats.refused += 1;
            return false;
        }
        let ok = match self.asking.asked.take(mirror) {
            Some(Asked::Span(asked)) => asked == span_id,
            // The stream asked about: whichever span wrote it (the answer is for these
            // addresses and stream id, from an agent that holds the shared secret), while the
            // SERVER span that asked still waits: a connection reusing the addresses later
            // starts its stream ids again.
            Some(Asked::Stream(conn_id)) => self
                .waiting_servers
                .get(&mirror)
                .is_some_and(|key| key.0 == conn_id),
            Some(Asked::Ambiguous) | None => false,
        };
        if !ok {
            self.asking_stats.refused += 1;
        }
        ok
    }

    /// Queues `question` about span `key` (`span_id`) until its trace settles, or half a link
    /// delay from `now`.
    pub(super) fn wait_for_trace(
        &mut self,
        key: SpanKey,
        span_id: SpanId,
        question: Question,
        now: u64,
    ) {
        if self.asking.waiting.len() >= MAX_ENTRIES {
            self.asking_stats.evicted += 1;
            return;
        }
        let wait = u64::try_from(self.config.link_delay.as_nanos() / 2).unwrap_or(u64::MAX);
        self.asking
            .waiting
            .push_back((now.saturating_add(wait), key, span_id, question));
    }

    /// Answers the waiting questions whose span's trace settled or whose wait is over (all
    /// when `flush`). The trace is known outside from then on: a trace joining it keeps its id.
    pub fn answer_settled(&mut self, now: u64, flush: bool) {
        if self.asking.waiting.is_empty() {
            return;
        }
        let spans = &self.spans;
        let stats = &mut self.asking_stats;
        let Asking {
            waiting,
            exported,
            out,
            ..
        } = &mut self.asking;
        waiting.retain(|&(deadline, key, span_id, question)| {
            let Some(span) = spans.get(&key).filter(|span| span.span_id == span_id) else {
                // Exported meanwhile (in the trace it has for good), or abandoned.
                if let Some(&(trace_id, forward)) = exported.get(span_id) {
                    question.answer(out, stats, (forward, trace_id, span_id));
                } else {
                    stats.unknown += 1;
                }
                return false;
            };
            if !span.trace.settled() && deadline > now && !flush {
                return true;
            }
            span.trace.fix_used();
            question.answer(out, stats, (span.forward, span.trace.id(), span.span_id));
            false
        });
    }

    /// Whether a question this agent asked is still unanswered while its SERVER span waits:
    /// an agent that stops gives the answers a moment ([`crate::commands::run`]).
    #[must_use]
    pub fn awaiting_answers(&self) -> bool {
        self.asking
            .asked
            .keys()
            .any(|mirror| self.waiting_servers.contains_key(mirror))
    }

    /// Questions and answers for the peer agents since the last call.
    pub fn take_peer_messages(&mut self, out: &mut Outgoing) {
        out.append(&mut self.asking.out);
    }
}

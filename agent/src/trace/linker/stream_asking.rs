//! The in-band mode's connection form, between agents ([`crate::peers`]): HTTP/2 and gRPC
//! streams across hosts, also through a NAT and to pod addresses.
//!
//! A stream's first byte seldom starts a TCP segment (streams interleave, frames of several
//! calls share a write), and the client host's programs cannot tell which caller a stream is
//! for (grpc-core's own threads, Go's write loop, write the frames). So each write on the
//! connecting end of an HTTP/2 connection carries the connection form
//! (`agent_common::INBAND_OPTION_EXID_CONN`): the address of its agent and a token naming the
//! connection to that agent (random, drawn by the programs, which tell this agent:
//! `INBAND_SENT | INBAND_CONN`). Both ends key a stream by its id.
//!
//! - On the server's host, the programs report the token a connection's segments carried
//!   (`agent_common::INBAND_CONN`). A SERVER span of a stream on that connection without a
//!   parent waits for its client as a passive one does, and this agent asks the named agent
//!   ([`crate::peers::wire::Kind::AskStream`]: the connection as the server sees it, the stream id, the token). The
//!   answer makes it the CLIENT span's child (evidence `inband`), before export, exactly as the
//!   asking form's answer does ([`super::asking`]).
//! - On the client's host, the token names the connection and the stream id the CLIENT span. It
//!   is answered as the asking form's questions are: once its trace is settled (at the latest
//!   half a link delay after the question came); a question that comes before the span waits
//!   for it; one that comes after its export gets the trace it was exported in. A token of
//!   another run of this agent (restarted) names no connection of this one: tokens are drawn
//!   anew, and forgotten when their connection closes.

use std::{
    collections::HashSet,
    net::{IpAddr, SocketAddr},
};

use super::{
    SpanKey, Tracer,
    asking::{Asked, KEEP_NS, MAX_ENTRIES, Question},
    open::{FastMap, MirrorKey},
};
use crate::{
    expiring::Expiring,
    peers::wire::ClientSpan,
    trace::{ids::SpanId, span::SpanKind},
};

/// Streams of one connection remembered while its form has not come (past this they are not
/// asked about, counted).
const MAX_UNASKED: usize = 64;

/// Both sides of the connection form.
#[derive(Debug, Default)]
pub(super) struct StreamAsking {
    /// Whether the connection form is on here (the in-band mode with peer messages).
    on: bool,
    /// What the programs said of each connection's form (at most [`MAX_ENTRIES`]; past that an
    /// arbitrary one goes, counted: a lost close must not stop the form for good).
    conns: FastMap<u64, ConnForm>,
    /// Connecting ends by the token drawn for them.
    by_token: FastMap<SpanId, u64>,
    /// Accepting ends' SERVER spans of streams without a parent read before their connection's
    /// form (at most [`MAX_UNASKED`] per connection, for at most [`MAX_ENTRIES`] connections),
    /// asked about when it comes.
    unasked: FastMap<u64, Vec<MirrorKey>>,
    /// Tokens of connecting ends closed lately: their last streams are asked about after the
    /// connection closed (a short client's).
    closed_tokens: Expiring<SpanId, u64, KEEP_NS, MAX_ENTRIES>,
    /// This host's open CLIENT spans of streams, which a question may name.
    askable: HashSet<SpanKey, foldhash::fast::RandomState>,
    /// Questions that came before their span.
    early: Expiring<SpanKey, Question, KEEP_NS, MAX_ENTRIES>,
    /// Stream CLIENT spans exported: their span id, for questions that come later (the asking
    /// form's table keeps the trace each was exported in).
    exported: Expiring<SpanKey, SpanId, KEEP_NS, MAX_ENTRIES>,
}

/// A connection's form, as the programs told it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ConnForm {
    /// A connecting end here: the token its segments carry (the latest drawn, and one drawn
    /// before it at the same moment, if any).
    Client(SpanId, Option<SpanId>),
    /// An accepting end here: the client's agent, and the token it knows the connection by.
    Server(IpAddr, SpanId),
}

impl Tracer {
    /// Turns the connection form on.
    pub fn enable_stream_asking(&mut self) {
        self.streams.on = true;
    }

    /// The programs drew `token` for the connecting end `conn_id` (its segments carry it). Two
    /// writes at once on two CPUs may both draw one: the one drawn before stays valid too.
    pub(super) fn on_inband_conn_sent(&mut self, conn_id: u64, token: SpanId) {
        let form = match self.streams.conns.get(&conn_id) {
            Some(&ConnForm::Client(latest, _)) if latest == token => return,
            Some(&ConnForm::Client(latest, older)) => {
                if let Some(older) = older {
                    self.streams.by_token.remove(&older);
                }
                ConnForm::Client(token, Some(latest))
            }
            _ => ConnForm::Client(token, None),
        };
        self.remember_conn_form(conn_id, form);
        self.streams.by_token.insert(token, conn_id);
    }

    /// The programs read the connection form on the server's connection `conn_id`: its client's
    /// agent is at `agent`, which knows the connection by `token`.
    pub(super) fn on_inband_conn(&mut self, conn_id: u64, agent: IpAddr, token: SpanId) {
        let form = ConnForm::Server(agent, token);
        if self.streams.conns.get(&conn_id) == Some(&form) {
            return;
        }
        self.remember_conn_form(conn_id, form);
        // Streams read before the form reached this end, still waiting for their client: asked
        // now. (A connection's first write carries no form when its protocol is not known as
        // it leaves.)
        for mirror in self.streams.unasked.remove(&conn_id).unwrap_or_default() {
            if self
                .waiting_servers
                .get(&mirror)
                .is_some_and(|key| key.0 == conn_id)
            {
                self.ask(agent, mirror, Asked::Stream(conn_id), token);
            }
        }
    }

    /// Keeps `form` for `conn_id` (past [`MAX_ENTRIES`] connections an arbitrary other one is
    /// forgotten, counted: a lost close must not stop the form for good).
    fn remember_conn_form(&mut self, conn_id: u64, form: ConnForm) {
        let conns = &self.streams.conns;
        if conns.len() >= MAX_ENTRIES
            && !conns.contains_key(&conn_id)
            && let Some(&old) = conns.keys().next()
        {
            self.asking_stats.evicted += 1;
            self.forget_inband_conn(old);
        }
        self.streams.conns.insert(conn_id, form);
    }

    /// The connection `conn_id` is closed (or abandoned): its later streams are no one's to
    /// ask about. A connecting end's tokens still name it for a while, for questions about its
    /// last streams.
    pub fn forget_inband_conn(&mut self, conn_id: u64) {
        if !self.streams.unasked.is_empty() {
            self.streams.unasked.remove(&conn_id);
        }
        if self.streams.conns.is_empty() {
            return;
        }
        if let Some(ConnForm::Client(latest, older)) = self.streams.conns.remove(&conn_id) {
            let now = crate::clock::monotonic_ns();
            for token in std::iter::once(latest).chain(older) {
                self.streams.by_token.remove(&token);
                if self.streams.closed_tokens.insert(token, conn_id, now) {
                    self.asking_stats.evicted += 1;
                }
            }
        }
    }

    /// A stream's span is being opened (`key`, `span_id`, `server` or not, at `now`): a SERVER
    /// span without a parent whose connection named its client's agent asks it; a CLIENT span
    /// can be asked for (a question that came first waits for its trace, as any waiting
    /// question).
    pub(super) fn stream_asking_on_request(
        &mut self,
        no_parent: bool,
        mirror: MirrorKey,
        (key, span_id, server, now): (SpanKey, SpanId, bool, u64),
    ) {
        if self.announcer.is_none() {
            // Every HTTP/2 span passes here: no peers, nobody to ask or be asked by.
            return;
        }
        let form = self.streams.conns.get(&key.0).copied();
        if server {
            match form {
                _ if !no_parent => {}
                Some(ConnForm::Server(agent, token)) => {
                    self.ask(agent, mirror, Asked::Stream(key.0), token);
                }
                _ if self.streams.on => self.unasked(key.0, mirror),
                _ => {}
            }
            return;
        }
        // Only streams to another host, when the form is on. (Not only on connections whose
        // token the programs told already: the streams of a connection's first write are seen
        // before it, whose protocol was not known as it left.)
        let local = self
            .announcer
            .as_ref()
            .is_none_or(|announcer| announcer.local.contains(mirror.server.addr().ip()));
        if !self.streams.on || local {
            return;
        }
        if self.streams.askable.len() >= MAX_ENTRIES {
            self.asking_stats.evicted += 1;
            return;
        }
        self.streams.askable.insert(key);
        if let Some(question) = self.streams.early.take(key) {
            self.wait_for_trace(key, span_id, question, now);
        }
    }

    /// Remembers the SERVER span of stream `mirror` on connection `conn_id`, read before its
    /// form: asked about when the form comes.
    fn unasked(&mut self, conn_id: u64, mirror: MirrorKey) {
        let unasked = &mut self.streams.unasked;
        if unasked.len() >= MAX_ENTRIES && !unasked.contains_key(&conn_id) {
            self.asking_stats.evicted += 1;
            return;
        }
        let streams = unasked.entry(conn_id).or_default();
        if streams.len() >= MAX_UNASKED {
            self.asking_stats.evicted += 1;
            return;
        }
        streams.push(mirror);
    }

    /// Another agent asks for the CLIENT span of stream `span.key` on the connection whose
    /// token is `span.span_id`.
    pub fn on_peer_ask_stream(&mut self, from: SocketAddr, span: &ClientSpan, now: u64) {
        let question = Question {
            from,
            client: span.client,
            server: span.server,
            key: span.key,
        };
        let token = span.span_id;
        let by_token = self.streams.by_token.get(&token);
        let Some(&conn_id) = by_token.or_else(|| self.streams.closed_tokens.get(token)) else {
            // Never drawn here, or its connection closed long ago (or this agent restarted).
            self.asking_stats.unknown += 1;
            return;
        };
        let key = (conn_id, span.key);
        if let Some(open) = self.spans.get(&key) {
            if open.kind == SpanKind::Client && self.streams.askable.contains(&key) {
                let span_id = open.span_id;
                self.answer_or_wait(key, span_id, question, now);
            } else {
                self.asking_stats.unknown += 1;
            }
        } else if let Some(&span_id) = self.streams.exported.get(key) {
            self.answer_exported(span_id, question);
        } else if self.streams.early.insert(key, question, now) {
            self.asking_stats.evicted += 1;
        }
    }

    /// Whether the CLIENT span `key` leaving the table is a stream's that questions may name;
    /// then it is no longer askable, and when `exported`, later questions find its span id
    /// `span_id` (and the asking form's table the trace it was exported in).
    pub(super) fn stream_askable_gone(
        &mut self,
        key: SpanKey,
        span_id: SpanId,
        exported: bool,
        now: u64,
    ) -> bool {
        if self.streams.askable.is_empty() || !self.streams.askable.remove(&key) {
            return false;
        }
        if exported && self.streams.exported.insert(key, span_id, now) {
            self.asking_stats.evicted += 1;
        }
        true
    }
}

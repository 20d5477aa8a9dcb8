//! Redis (RESP2 and RESP3) on one connection: frames both directions and pairs each command
//! with its reply, in order (pipelining: one write of many commands gives one exchange each),
//! into [`Exchange`]s carrying a [`DbSummary`].
//!
//! Pushes never pair: RESP3 `>` messages, and in RESP2 subscribe mode the `message`,
//! `pmessage` and `smessage` arrays. (Un)subscribe confirmations answer the request that asked
//! for them, one per channel argument. When framing is lost (bytes beyond the capture inside a
//! header, malformed bytes), the pending commands are dropped rather than risk pairing a reply
//! with the wrong command; see [`RedisConnection`] for where framing resumes.

pub mod command;
pub mod resp;

use std::{collections::VecDeque, sync::Arc};

use command::Command;
use resp::{Framer, Message};

use super::{
    Chunk, ConnectionParser, Detected, Exchange, ProtoEvent, Side, Stamp,
    db::{DbOutcome, DbSummary, DbSystem},
};

/// Commands waiting for replies; a pipeline longer than this drops its oldest (their replies
/// are then skipped, never paired with a later command).
const MAX_PENDING: usize = 1024;
/// Largest array a request may start with to be recognised (Redis' own inline limit is 1024
/// for unauthenticated clients; real commands at detection time are short).
const MAX_DETECT_ARGS: u64 = 1024;

/// A connection is Redis when a chunk on its request side starts with a well-formed command:
/// `*N\r\n$L\r\nNAME\r\n` with N in 1..=1024 and NAME exactly L ASCII letters (HTTP, TLS and the
/// other datastores never start with `*`). Mid-stream attach looks the same: every command
/// starts that way.
pub fn detect(chunk: &Chunk<'_>) -> Option<Detected> {
    if !chunk.request_side() || !starts_command(chunk.payload) {
        return None;
    }
    let server = chunk.server().unwrap_or(!chunk.egress);
    let mut parser = RedisConnection::new();
    // A client's first commands on a new connection are its handshake: seen from its start,
    // the connection is on database 0 until a SELECT.
    let mut framer = Framer::new(true, false);
    let mut messages = Vec::new();
    framer.feed(chunk.payload, chunk.total, 0, 0, &mut messages);
    if messages
        .first()
        .is_some_and(|m| Command::of(m).opens_connection())
    {
        parser.namespace = Some(Arc::from("0"));
    }
    Some(Detected {
        server,
        parser: Box::new(parser),
    })
}

/// Whether `data` starts with a command array header and a command name, all captured.
fn starts_command(data: &[u8]) -> bool {
    let Some((count, rest)) = data.strip_prefix(b"*").and_then(number_line) else {
        return false;
    };
    let Some((len, rest)) = rest.strip_prefix(b"$").and_then(number_line) else {
        return false;
    };
    if !(1..=MAX_DETECT_ARGS).contains(&count) || !(1..=32).contains(&len) {
        return false;
    }
    let len = usize::try_from(len).unwrap_or(usize::MAX);
    rest.get(..len)
        .is_some_and(|name| name.iter().all(u8::is_ascii_alphabetic))
        && rest.get(len..len + 2) == Some(b"\r\n")
}

/// `digits\r\n` at the start of `data` (no sign, no leading zero): the number and what follows.
fn number_line(data: &[u8]) -> Option<(u64, &[u8])> {
    let digits = data.iter().take_while(|b| b.is_ascii_digit()).count();
    if digits == 0 || digits > 9 || (digits > 1 && data.first() == Some(&b'0')) {
        return None;
    }
    let rest = data.get(digits..)?.strip_prefix(b"\r\n")?;
    let n = std::str::from_utf8(data.get(..digits)?)
        .ok()?
        .parse()
        .ok()?;
    Some((n, rest))
}

/// Whether a reply may start with `b`.
fn reply_type(b: u8) -> bool {
    b"+-:$*_#,(!=%~>|".contains(&b)
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RedisStats {
    pub exchanges: u64,
    /// Pushes (pub/sub messages, RESP3 `>`), which answer no command.
    pub pushes: u64,
    /// Replies with no command to pair with (after a desync or a mid-stream start).
    pub unpaired_replies: u64,
    /// Times framing was lost (a direction's bytes could not be followed).
    pub desyncs: u64,
    /// Commands dropped because too many were pending.
    pub pending_overflow: u64,
}

#[derive(Debug)]
struct Pending {
    key: u64,
    start: Stamp,
    end: Stamp,
    command: Command,
    /// Confirmations still to come for a (un)subscribe; how many came.
    confirmations_left: u64,
    first_reply: Option<Stamp>,
}

/// A command whose reply began but could not be followed to its end: the reply is its (it was
/// the only command waiting), so it completes when the client sends its next command.
#[derive(Debug)]
struct Tail {
    pending: Pending,
    reply_start: Stamp,
    last: Stamp,
    error: bool,
}

/// Both directions of one Redis connection.
///
/// Framing resumes after a loss as follows: the request direction at the next syscall that
/// starts with a well-formed command (every syscall a client makes for a new command does);
/// the reply direction at the first reply syscall that follows a request syscall and starts with
/// a reply type byte, pairing with the commands framed since. Pending commands are cleared at
/// the loss, so a reply is never paired with a command from before it. What this cannot prove:
/// that an asynchronous client had no replies of lost commands still in flight when it wrote
/// the new one (a synchronous client always had).
// Independent facts about the connection (not one state spelled as flags).
#[allow(clippy::struct_excessive_bools)]
#[derive(Debug)]
pub struct RedisConnection {
    requests: Framer,
    responses: Framer,
    pending: VecDeque<Pending>,
    /// Replies still owed to commands dropped from a full queue: skipped, never paired.
    owed: u64,
    /// `db.namespace`: the database index, when known.
    namespace: Option<Arc<str>>,
    /// RESP2 subscribe mode: `message` arrays are pushes.
    subscribed: bool,
    /// The last syscall fed was on the request side.
    after_request: bool,
    tail: Option<Tail>,
    /// A reply was paired: the peer speaks RESP.
    confirmed: bool,
    failed: bool,
    pub stats: RedisStats,
}

impl Default for RedisConnection {
    fn default() -> Self {
        Self::new()
    }
}

impl RedisConnection {
    /// A connection whose request direction frames from the next byte; the reply direction
    /// starts at the first reply after a command.
    #[must_use]
    pub fn new() -> Self {
        Self {
            requests: Framer::new(true, false),
            responses: Framer::new(false, true),
            pending: VecDeque::new(),
            owed: 0,
            namespace: None,
            subscribed: false,
            after_request: false,
            tail: None,
            confirmed: false,
            failed: false,
            stats: RedisStats::default(),
        }
    }

    fn summary(&self, command: Command, outcome: DbOutcome) -> DbSummary {
        let mut summary = DbSummary::new(DbSystem::Redis, outcome);
        summary.operation = command.operation;
        summary.query = command.query;
        summary.namespace.clone_from(&self.namespace);
        summary
    }

    fn complete(
        &mut self,
        pending: Pending,
        response_start: Option<Stamp>,
        end: Stamp,
        outcome: DbOutcome,
        out: &mut Vec<ProtoEvent>,
    ) {
        self.stats.exchanges += 1;
        let key = pending.key;
        let (request_start, request_end) = (pending.start, pending.end);
        let summary = self.summary(pending.command, outcome);
        out.push(ProtoEvent::Exchange(Exchange {
            key,
            request_start,
            request_end,
            response_start,
            end,
            summary: summary.into(),
        }));
    }

    fn finish_tail(&mut self, out: &mut Vec<ProtoEvent>) {
        if let Some(tail) = self.tail.take() {
            let outcome = if tail.error {
                DbOutcome::Error { code: None }
            } else {
                DbOutcome::Ok
            };
            self.complete(
                tail.pending,
                Some(tail.reply_start),
                tail.last,
                outcome,
                out,
            );
        }
    }

    /// Framing was lost on `side` (in a syscall captured only in part when `gap`): nothing
    /// pending may pair any more.
    fn desync(&mut self, side: Side, at: Stamp, gap: bool) {
        self.stats.desyncs += 1;
        if side == Side::Response {
            // The only command waiting, whose reply was being read (begun after the command)
            // when bytes beyond the capture hid its end, keeps that reply.
            if let Some((reply_start, kind)) = self.responses.lost_inside.take()
                && gap
                && self.pending.len() == 1
                && self.owed == 0
                && self.tail.is_none()
                && let Some(pending) = self.pending.pop_front()
                && pending.command.confirmations == 0
                && pending.first_reply.unwrap_or(reply_start).ts >= pending.end.ts
            {
                self.tail = Some(Tail {
                    reply_start: pending.first_reply.unwrap_or(reply_start),
                    pending,
                    last: at,
                    error: matches!(kind, b'-' | b'!'),
                });
            }
        } else {
            self.requests.lost_inside = None;
            // A lost SELECT may have changed the database.
            self.namespace = None;
            self.responses.abandon();
        }
        if self.pending.iter().any(|p| p.command.select.is_some()) {
            self.namespace = None;
        }
        self.pending.clear();
        self.owed = 0;
    }

    fn request(&mut self, message: &Message, out: &mut Vec<ProtoEvent>) {
        let command = Command::of(message);
        if self.pending.len() >= MAX_PENDING {
            self.pending.pop_front();
            self.owed += 1;
            self.stats.pending_overflow += 1;
        }
        let key = message.start.offset;
        out.push(ProtoEvent::Request {
            key,
            trace: None,
            start: message.start,
            forward: 0,
        });
        self.pending.push_back(Pending {
            key,
            start: message.start,
            end: message.end,
            confirmations_left: command.confirmations,
            command,
            first_reply: None,
        });
    }

    fn reply(&mut self, message: &Message, out: &mut Vec<ProtoEvent>) {
        self.confirmed = true;
        if self
            .pending
            .front()
            .is_some_and(|p| message.start.ts < p.end.ts)
        {
            // It began before the oldest waiting command was all written: it answers something
            // unseen (before an attach or a loss), never that command.
            self.stats.unpaired_replies += 1;
            return;
        }
        let first = message.words[0].whole();
        let aggregate = matches!(message.kind, b'*' | b'>');
        let subscription =
            aggregate && matches!(first, Some(b"subscribe" | b"psubscribe" | b"ssubscribe"));
        let unsubscription = aggregate
            && matches!(
                first,
                Some(b"unsubscribe" | b"punsubscribe" | b"sunsubscribe")
            );
        if subscription || unsubscription {
            if subscription {
                self.subscribed = true;
            } else if message.last_int == Some(0) {
                self.subscribed = false;
            }
            let waiting = self
                .pending
                .front()
                .is_some_and(|p| p.confirmations_left > 0);
            if self.owed > 0 || !waiting {
                self.stats.pushes += 1;
                return;
            }
            if let Some(front) = self.pending.front_mut() {
                front.confirmations_left -= 1;
                front.first_reply.get_or_insert(message.start);
                if front.confirmations_left > 0 {
                    return;
                }
            }
            if let Some(done) = self.pending.pop_front() {
                let start = done.first_reply;
                self.complete(done, start, message.end, DbOutcome::Ok, out);
            }
            return;
        }
        let pushed = message.kind == b'>'
            || (self.subscribed
                && message.kind == b'*'
                && matches!(first, Some(b"message" | b"pmessage" | b"smessage")));
        if pushed {
            self.stats.pushes += 1;
            return;
        }
        if self.owed > 0 {
            self.owed -= 1;
            return;
        }
        let Some(pending) = self.pending.pop_front() else {
            self.stats.unpaired_replies += 1;
            return;
        };
        let outcome = if message.is_error() {
            DbOutcome::Error {
                code: error_code(message),
            }
        } else {
            DbOutcome::Ok
        };
        let select = pending.command.select.filter(|_| outcome == DbOutcome::Ok);
        let start = pending.first_reply.unwrap_or(message.start);
        self.complete(pending, Some(start), message.end, outcome, out);
        if let Some(index) = select {
            self.namespace = Some(Arc::from(index.to_string()));
        }
    }
}

/// An error reply's code: its first word (`ERR`, `WRONGTYPE`, `MOVED`), never the rest.
fn error_code(message: &Message) -> Option<Box<str>> {
    let word = message.words[0].whole()?;
    (!word.is_empty()
        && word
            .iter()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || *b == b'_'))
    .then(|| String::from_utf8_lossy(word).into())
}

impl ConnectionParser for RedisConnection {
    fn feed(
        &mut self,
        side: Side,
        data: &[u8],
        total: u64,
        ts: u64,
        tid: u32,
        out: &mut Vec<ProtoEvent>,
    ) {
        if self.failed {
            return;
        }
        let mut messages = Vec::new();
        match side {
            Side::Request => {
                // The client moved on: the reply it was reading is over.
                self.finish_tail(out);
                if self.requests.lost() && starts_command(data) {
                    self.requests.restart();
                }
                let ok = self.requests.feed(data, total, ts, tid, &mut messages);
                for message in &messages {
                    self.request(message, out);
                }
                if !ok {
                    // Malformed bytes (not bytes beyond the capture) before any reply: this
                    // is not Redis after all.
                    if !self.confirmed && total <= data.len() as u64 {
                        self.failed = true;
                    }
                    let at = Stamp { ts, tid, offset: 0 };
                    self.desync(Side::Request, at, false);
                }
                self.after_request = true;
            }
            Side::Response => {
                if self.responses.lost() && self.tail.is_none() && self.after_request {
                    match data.first() {
                        Some(&b) if reply_type(b) && !self.pending.is_empty() => {
                            self.responses.restart();
                        }
                        Some(_) if !self.confirmed && !self.pending.is_empty() => {
                            // The first reply to a well-formed command is not RESP.
                            self.failed = true;
                            return;
                        }
                        _ => {}
                    }
                }
                let was_lost = self.responses.lost();
                let ok = self.responses.feed(data, total, ts, tid, &mut messages);
                for message in &messages {
                    self.reply(message, out);
                }
                let at = Stamp {
                    ts,
                    tid,
                    offset: self.responses_offset(),
                };
                if !ok {
                    self.desync(Side::Response, at, total > data.len() as u64);
                } else if was_lost && let Some(tail) = self.tail.as_mut() {
                    tail.last = at;
                }
                self.after_request = false;
            }
        }
    }

    fn close(&mut self, at: Stamp, out: &mut Vec<ProtoEvent>) {
        if self.failed {
            return;
        }
        self.finish_tail(out);
        while let Some(pending) = self.pending.pop_front() {
            // A subscription that was confirmed stands; its connection closing is no failure.
            let outcome = if pending.first_reply.is_some() {
                DbOutcome::Ok
            } else {
                DbOutcome::NoResponse
            };
            let start = pending.first_reply;
            self.complete(pending, start, at, outcome, out);
        }
    }

    fn failed(&self) -> bool {
        self.failed
    }

    fn thread_causality(&self) -> bool {
        true
    }
}

impl RedisConnection {
    fn responses_offset(&self) -> u64 {
        self.responses.offset()
    }
}

#[cfg(test)]
mod tests;

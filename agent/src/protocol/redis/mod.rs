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
            summary: Box::new(summary),
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
mod tests {
    use super::*;
    use crate::protocol::replay::{Replayed, Seen, assert_no_secrets, check, replay, syscalls};

    const SECRETS: &[&str] = &[
        "s3cr3t",
        "4242",
        "9191",
        "maxmemory",
        "redis-py",
        "news",
        "alerts",
    ];

    /// redis-py 8.1 (RESP2, `protocol=2`, password and `db=2`) against redis-server 7.0.15 on
    /// one connection: AUTH, CLIENT SETINFO x2 (unknown to 7.0: errors), SELECT 2, SET, GET,
    /// a miss, a 13-command pipeline, MGET, HSET of three fields, HGETALL, INCRBY on a string,
    /// LPUSH on a string, a 100 KB SET and GET, SELECT 0, CONFIG GET, MULTI/INCRBY x2/EXEC.
    const RESP2_CLIENT: &str = include_str!("fixtures/redis_py_resp2_client.jsonl");
    /// The same connection seen at redis-server (its `read`s and `write`s).
    const RESP2_SERVER: &str = include_str!("fixtures/redis_py_resp2_server.jsonl");

    fn lines(seen: &[Seen]) -> Vec<&str> {
        seen.iter().map(|s| s.line.as_str()).collect()
    }

    fn expected_resp2() -> Vec<String> {
        let mut lines = vec![
            "AUTH [AUTH ?] -> ok".to_string(),
            "CLIENT SETINFO [CLIENT SETINFO ? ?] -> error ERR".into(),
            "CLIENT SETINFO [CLIENT SETINFO ? ?] -> error ERR".into(),
            "SELECT [SELECT ?] -> ok".into(),
            "SET [SET ? ?] -> ok".into(),
            "GET [GET ?] -> ok".into(),
            "GET [GET ?] -> ok".into(),
        ];
        lines.extend((0..12).map(|_| "SET [SET ? ?] -> ok".to_string()));
        lines.extend(
            [
                "GET [GET ?] -> ok",
                "MGET [MGET ? ? ?] -> ok",
                "HSET [HSET ? ? ? ? ? ? ?] -> ok",
                "HGETALL [HGETALL ?] -> ok",
                "INCRBY [INCRBY ? ?] -> error ERR",
                "LPUSH [LPUSH ? ?] -> error WRONGTYPE",
                "SET [SET ? ?] -> ok",
                "GET [GET ?] -> ok",
                "SELECT [SELECT ?] -> ok",
                "CONFIG GET [CONFIG GET ?] -> ok",
                "MULTI [MULTI] -> ok",
                "INCRBY [INCRBY ? ?] -> ok",
                "INCRBY [INCRBY ? ?] -> ok",
                "EXEC [EXEC] -> ok",
            ]
            .map(String::from),
        );
        lines
    }

    fn namespace(seen: &Seen) -> Option<&str> {
        seen.attributes
            .iter()
            .find(|(k, _)| k == "db.namespace")
            .map(|(_, v)| v.as_str())
    }

    #[test]
    fn captured_resp2_commands_are_one_exchange_each_at_both_ends() {
        let Replayed {
            seen: client,
            failed,
            ..
        } = replay(detect, &syscalls(RESP2_CLIENT), false, usize::MAX);
        assert!(!failed);
        assert_eq!(lines(&client), expected_resp2());
        let Replayed {
            seen: server,
            failed,
            ..
        } = replay(detect, &syscalls(RESP2_SERVER), true, usize::MAX);
        assert!(!failed);
        assert_eq!(lines(&server), expected_resp2());
        // Keys and request offsets are the same at both ends; pipelined commands each have
        // their own.
        let keys = |s: &[Seen]| s.iter().map(|x| (x.key, x.request)).collect::<Vec<_>>();
        assert_eq!(keys(&client), keys(&server));
        let pipelined: Vec<_> = client[7..20].iter().map(|s| s.request).collect();
        assert!(
            pipelined.windows(2).all(|w| w[0].1 == w[1].0),
            "{pipelined:?}"
        );
        assert_no_secrets(&client, SECRETS);
        assert_no_secrets(&server, SECRETS);
        // Seen from its start (AUTH first): database 0, then 2 after SELECT 2, 0 again later.
        assert!(namespace(&client[0]).is_some_and(|n| n.contains('0')));
        assert!(namespace(&client[4]).is_some_and(|n| n.contains('2')));
        assert!(namespace(&client[31]).is_some_and(|n| n.contains('0')));
    }

    #[test]
    fn smaller_captures_lose_names_or_exchanges_never_pair_wrongly() {
        // The fixtures hold 4096 bytes of each syscall already; smaller captures lose names or
        // exchanges, never pair wrongly.
        let truth = replay(detect, &syscalls(RESP2_CLIENT), false, usize::MAX).seen;
        for capture in [8, 16, 30, 64, 200] {
            for (fixture, server) in [(RESP2_CLIENT, false), (RESP2_SERVER, true)] {
                let Replayed { seen, .. } = replay(detect, &syscalls(fixture), server, capture);
                for s in &seen {
                    let real = truth
                        .iter()
                        .find(|t| t.key == s.key)
                        .expect("a real command");
                    let op = s.line.split(' ').next().unwrap_or_default();
                    assert!(
                        real.line.starts_with(op),
                        "capture {capture}: {} vs {}",
                        s.line,
                        real.line
                    );
                }
            }
        }
    }

    #[test]
    fn attached_midway_pairs_later_commands_rightly_or_not_at_all() {
        for (fixture, server) in [(RESP2_CLIENT, false), (RESP2_SERVER, true)] {
            let whole = syscalls(fixture);
            let truth = replay(detect, &whole, server, usize::MAX).seen;
            for skip in 1..whole.len() {
                let Replayed { seen, failed, .. } =
                    replay(detect, &whole[skip..], server, usize::MAX);
                assert!(!failed, "skip {skip}");
                // Keys count from the chunk detected: the request bytes before it are unseen.
                let detected = (skip..whole.len())
                    .find(|&i| whole[i].0 != server && starts_command(&whole[i].1))
                    .unwrap_or(whole.len());
                let base: u64 = whole[..detected]
                    .iter()
                    .filter(|(egress, _, _)| *egress != server)
                    .map(|(_, _, total)| total)
                    .sum();
                for s in &seen {
                    let Some(real) = truth.iter().find(|t| t.key == s.key + base) else {
                        panic!("skip {skip} server {server}: {s:?} base {base}");
                    };
                    assert_eq!(s.line, real.line, "skip {skip}");
                    // The database index is unknown until a SELECT.
                    if skip > 8 && !s.line.starts_with("SELECT") {
                        assert!(
                            namespace(s).is_none() || skip < 36,
                            "skip {skip}: {:?}",
                            s.attributes
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn any_split_of_the_streams_gives_the_same_exchanges() {
        for (fixture, server) in [(RESP2_CLIENT, false), (RESP2_SERVER, true)] {
            let whole = syscalls(fixture);
            let reference = lines(&replay(detect, &whole, server, usize::MAX).seen)
                .into_iter()
                .map(String::from)
                .collect::<Vec<_>>();
            for run in 1..=50u64 {
                let mut seed = run.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
                let mut pieces = vec![whole[0].clone()];
                for (egress, bytes, total) in &whole[1..] {
                    let mut rest = bytes.as_slice();
                    let uncaptured = total - bytes.len() as u64;
                    while !rest.is_empty() {
                        seed ^= seed << 13;
                        seed ^= seed >> 7;
                        seed ^= seed << 17;
                        let cut = (1 + (seed % 23) as usize).min(rest.len());
                        let last = cut == rest.len();
                        let moved = cut as u64 + if last { uncaptured } else { 0 };
                        pieces.push((*egress, rest[..cut].to_vec(), moved));
                        rest = &rest[cut..];
                    }
                }
                let found = replay(detect, &pieces, server, usize::MAX).seen;
                assert_eq!(lines(&found), reference, "splitting {run}");
            }
        }
    }

    #[test]
    fn pubsub_pushes_never_pair_and_confirmations_answer_subscribes() {
        for fixture in [
            include_str!("fixtures/redis_py_pubsub_resp2_client.jsonl"),
            include_str!("fixtures/redis_py_pubsub_resp3_client.jsonl"),
        ] {
            let Replayed { seen, failed, .. } =
                replay(detect, &syscalls(fixture), false, usize::MAX);
            assert!(!failed);
            let found = lines(&seen);
            let tail = &found[found.len() - 5..];
            assert_eq!(
                tail,
                [
                    "SUBSCRIBE [SUBSCRIBE ? ?] -> ok",
                    "PSUBSCRIBE [PSUBSCRIBE ?] -> ok",
                    "PING [PING] -> ok",
                    "UNSUBSCRIBE [UNSUBSCRIBE ? ?] -> ok",
                    "PUNSUBSCRIBE [PUNSUBSCRIBE ?] -> ok",
                ],
                "{found:?}"
            );
            assert_no_secrets(&seen, SECRETS);
        }
    }

    #[test]
    fn resp3_replies_pair_and_hello_arguments_are_not_kept() {
        let fixture = include_str!("fixtures/redis_py_resp3_client.jsonl");
        let Replayed { seen, failed, .. } = replay(detect, &syscalls(fixture), false, usize::MAX);
        assert!(!failed);
        assert_eq!(
            lines(&seen),
            [
                "HELLO [HELLO ? ? ? ?] -> ok",
                "CLIENT MAINT_NOTIFICATIONS [CLIENT MAINT_NOTIFICATIONS ? ? ?] -> error ERR",
                "CLIENT SETINFO [CLIENT SETINFO ? ?] -> error ERR",
                "CLIENT SETINFO [CLIENT SETINFO ? ?] -> error ERR",
                "SET [SET ? ?] -> ok",
                "HSET [HSET ? ? ? ? ?] -> ok",
                "HGETALL [HGETALL ?] -> ok",
                "SMEMBERS [SMEMBERS ?] -> ok",
                "ZADD [ZADD ? ? ?] -> ok",
                "ZSCORE [ZSCORE ? ?] -> ok",
                "LPUSH [LPUSH ? ?] -> error WRONGTYPE",
                "GET [GET ?] -> ok",
            ]
        );
        assert_no_secrets(&seen, &[SECRETS, &["default"]].concat());
    }

    fn run(chunks: &[(Side, &[u8], u64)]) -> (Vec<Seen>, RedisConnection) {
        crate::protocol::replay::feed_chunks(RedisConnection::new(), chunks)
    }

    #[test]
    fn a_header_split_from_its_payload_and_replies_split_anywhere_pair() {
        let (seen, _) = run(&[
            (Side::Request, b"*2\r\n$3\r\nGET\r\n$1", 15),
            (Side::Request, b"\r\nk\r\n", 5),
            (Side::Response, b"$5\r", 3),
            (Side::Response, b"\nhello\r\n:1\r\n", 12),
        ]);
        assert_eq!(lines(&seen), ["GET [GET ?] -> ok"]);
    }

    #[test]
    fn a_reply_header_lost_beyond_the_capture_clears_pending_commands() {
        // Two pipelined commands; the first reply is an array whose element headers fall
        // beyond the capture: neither reply may pair with the wrong command.
        let (seen, conn) = run(&[
            (
                Side::Request,
                b"*2\r\n$6\r\nLRANGE\r\n$1\r\nl\r\n*2\r\n$3\r\nGET\r\n$1\r\nk\r\n",
                43,
            ),
            (Side::Response, b"*1000\r\n$3\r\nabc\r\n", 9000),
            (Side::Response, b"+OK\r\n", 5),
            (Side::Request, b"*1\r\n$4\r\nPING\r\n", 14),
            (Side::Response, b"+PONG\r\n", 7),
        ]);
        assert_eq!(lines(&seen), ["PING [PING] -> ok"]);
        assert_eq!(conn.stats.desyncs, 1);
    }

    #[test]
    fn a_lone_command_keeps_its_reply_when_the_reply_cannot_be_followed() {
        let (seen, _) = run(&[
            (Side::Request, b"*2\r\n$6\r\nLRANGE\r\n$1\r\nl\r\n", 23),
            (Side::Response, b"*1000\r\n$3\r\nabc\r\n", 9000),
            (Side::Response, b"$3\r\nabc\r\n", 9000),
            (Side::Request, b"*1\r\n$4\r\nPING\r\n", 14),
            (Side::Response, b"+PONG\r\n", 7),
        ]);
        assert_eq!(
            lines(&seen),
            ["LRANGE [LRANGE ?] -> ok", "PING [PING] -> ok"]
        );
    }

    #[test]
    fn the_database_index_is_unknown_after_a_mid_stream_attach_until_a_select() {
        let mut conn = RedisConnection::new();
        let mut out = Vec::new();
        for (i, (side, data)) in [
            (Side::Request, &b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n"[..]),
            (Side::Response, b"$-1\r\n"),
            (Side::Request, b"*2\r\n$6\r\nSELECT\r\n$1\r\n7\r\n"),
            (Side::Response, b"+OK\r\n"),
            (Side::Request, b"*2\r\n$6\r\nSELECT\r\n$2\r\n99\r\n"),
            (Side::Response, b"-ERR DB index is out of range\r\n"),
            (Side::Request, b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n"),
            (Side::Response, b"$-1\r\n"),
        ]
        .into_iter()
        .enumerate()
        {
            conn.feed(side, data, data.len() as u64, i as u64, 1, &mut out);
        }
        let seen = check(out);
        let namespaces: Vec<Option<&str>> = seen.iter().map(namespace).collect();
        assert!(namespaces[0].is_none() && namespaces[1].is_none());
        assert!(namespaces[2].is_some_and(|n| n.contains('7')));
        assert!(namespaces[3].is_some_and(|n| n.contains('7')));
        assert_eq!(seen[2].line, "SELECT [SELECT ?] -> error ERR");
    }

    #[test]
    fn detection_is_strict() {
        let client = |payload: &'static [u8]| Chunk {
            egress: true,
            role: agent_common::Role::Client,
            payload,
            total: payload.len() as u64,
        };
        assert!(detect(&client(b"*1\r\n$4\r\nPING\r\n")).is_some());
        for not in [
            &b"GET / HTTP/1.1\r\n\r\n"[..],
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
            b"\x16\x03\x01\x00\x05hello",
            b"get k\r\n",
            b"*0\r\n",
            b"*1\r\n$4\r\nPI",
            b"*1025\r\n$4\r\nPING\r\n",
            b"*1\r\n$4\r\nP1NG\r\n",
            b"*1\r\n$5\r\nPING\r\n",
            b"*01\r\n$4\r\nPING\r\n",
        ] {
            assert!(detect(&client(not)).is_none(), "{not:?}");
        }
        // A server's own writes are replies.
        let reply = Chunk {
            egress: true,
            role: agent_common::Role::Server,
            payload: b"*1\r\n$4\r\nPING\r\n",
            total: 14,
        };
        assert!(detect(&reply).is_none());
    }

    #[test]
    fn garbage_after_detection_is_given_up_or_ignored_never_paired() {
        let (seen, conn) = run(&[
            (Side::Request, b"*1\r\n$4\r\nPING\r\n", 14),
            (Side::Response, b"HTTP/1.1 200 OK\r\n", 17),
        ]);
        assert!(seen.is_empty());
        assert!(conn.failed());
        let (seen, conn) = run(&[
            (Side::Request, b"*1\r\n$4\r\nPING\r\n", 14),
            (Side::Response, b"+PONG\r\n", 7),
            (Side::Request, b"\xff\xfe garbage", 10),
            (Side::Response, b"-ERR what\r\n", 11),
            (Side::Request, b"*1\r\n$4\r\nPING\r\n", 14),
            (Side::Response, b"+PONG\r\n", 7),
        ]);
        assert_eq!(lines(&seen), ["PING [PING] -> ok", "PING [PING] -> ok"]);
        assert!(!conn.failed());
    }

    #[test]
    fn pending_commands_are_bounded_and_their_replies_skipped() {
        let mut conn = RedisConnection::new();
        let mut out = Vec::new();
        let one = b"*1\r\n$4\r\nPING\r\n";
        let many: Vec<u8> = one.repeat(MAX_PENDING + 3);
        conn.feed(Side::Request, &many, many.len() as u64, 1, 1, &mut out);
        let replies = b"+PONG\r\n".repeat(MAX_PENDING + 3);
        conn.feed(
            Side::Response,
            &replies,
            replies.len() as u64,
            2,
            1,
            &mut out,
        );
        let seen = check(out);
        assert_eq!(seen.len(), MAX_PENDING);
        assert_eq!(conn.stats.pending_overflow, 3);
        // The survivors are the last ones, each with its own reply.
        assert_eq!(seen[0].key, 3 * one.len() as u64);
    }

    #[test]
    fn a_huge_command_is_named_with_a_bounded_query() {
        let mut bytes = b"*100001\r\n$4\r\nMSET\r\n".to_vec();
        bytes.extend(b"$1\r\nk\r\n".repeat(100_000));
        let (seen, _) = run(&[
            (Side::Request, &bytes, bytes.len() as u64),
            (Side::Response, b"+OK\r\n", 5),
        ]);
        assert_eq!(seen.len(), 1);
        assert!(seen[0].line.len() < 300, "{}", seen[0].line);
        assert!(seen[0].line.contains("(99936 more)"));
    }
}

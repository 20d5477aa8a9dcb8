//! memcached's text protocol on one connection: frames request lines (and the data blocks of
//! storage commands) and reply lines (and the data blocks of `VALUE`/`VA`), and pairs replies
//! with requests in order into [`Exchange`]s carrying a [`DbSummary`].
//!
//! `noreply` requests complete at their own end ([`DbOutcome::NoReply`]). Quiet meta commands
//! (`q` flag) do too: their reply is suppressed on the common path (a miss for `mg`, success for
//! `ms`/`md`/`ma`) and may or may not come, so which reply is whose cannot be known until the
//! `mn` that ends the pipeline: replies are skipped until its `MN`, and requests other than
//! `mn` written after a quiet one are not reported (counted in `ambiguous`). The binary protocol
//! (first byte 0x80) is not parsed.

pub mod command;

use std::{cmp::Ordering, collections::VecDeque};

use command::{Expect, Request};

use super::{
    Chunk, ConnectionParser, Detected, Exchange, ProtoEvent, Side, Stamp,
    db::{DbOutcome, DbSummary, DbSystem},
};

/// Requests waiting for replies; more drop the oldest (their replies are skipped).
const MAX_PENDING: usize = 1024;
/// Longest request or reply line followed (a `get` of many keys); longer loses the stream.
const MAX_LINE: usize = 8192;

/// A connection is memcached when a chunk on its request side starts with a complete request
/// line of a known command (exact lowercase, sane tokens, CRLF within the captured bytes). HTTP
/// methods are uppercase, Redis commands start with `*`, TLS with 0x16.
pub fn detect(chunk: &Chunk<'_>) -> Option<Detected> {
    if !chunk.request_side() {
        return None;
    }
    let line = first_line(chunk.payload)?;
    // `get / HTTP/1.1` parses as a get of two keys; it is a lowercase (invalid) HTTP request.
    if !command::is_request(line) || line.ends_with(b" HTTP/1.1") || line.ends_with(b" HTTP/1.0") {
        return None;
    }
    Some(Detected {
        server: chunk.server().unwrap_or(!chunk.egress),
        parser: Box::new(MemcachedConnection::new()),
    })
}

/// The first line of `data` without its CRLF, when it ends within `data`.
fn first_line(data: &[u8]) -> Option<&[u8]> {
    let end = data.iter().take(MAX_LINE).position(|b| *b == b'\n')?;
    data.get(..end)?.strip_suffix(b"\r")
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct MemcachedStats {
    pub exchanges: u64,
    pub unpaired_replies: u64,
    pub desyncs: u64,
    pub pending_overflow: u64,
    /// Requests not reported because a quiet command before them made pairing ambiguous.
    pub ambiguous: u64,
}

/// One direction's framing: lines, and data blocks skipped by length.
#[derive(Debug)]
struct Lines {
    offset: u64,
    /// The current line (bounded), its start.
    line: Vec<u8>,
    start: Option<Stamp>,
    /// Data bytes (with CRLF) still to skip.
    data: u64,
    lost: bool,
}

/// A complete line or data block.
enum Unit {
    Line(Vec<u8>, Stamp, Stamp),
    DataEnd(Stamp),
}

impl Lines {
    fn new(lost: bool) -> Self {
        Self {
            offset: 0,
            line: Vec::new(),
            start: None,
            data: 0,
            lost,
        }
    }

    fn restart(&mut self) {
        self.line.clear();
        self.start = None;
        self.data = 0;
        self.lost = false;
    }

    fn lose(&mut self) {
        self.restart();
        self.lost = true;
    }

    /// Frames `data` (of `total` bytes moved); `skip` says, for each complete line, how many
    /// data bytes follow it. Returns false when the stream was lost.
    fn feed(
        &mut self,
        data: &[u8],
        total: u64,
        ts: u64,
        tid: u32,
        mut on: impl FnMut(Unit) -> Option<u64>,
    ) -> bool {
        let base = self.offset;
        self.offset = base.saturating_add(total.max(data.len() as u64));
        let was_lost = self.lost;
        let mut pos = 0usize;
        let stamp = |pos: usize| Stamp {
            ts,
            tid,
            offset: base + pos as u64,
        };
        while pos < data.len() && !self.lost {
            if self.data > 0 {
                let take = usize::try_from(self.data)
                    .unwrap_or(usize::MAX)
                    .min(data.len() - pos);
                pos += take;
                self.data -= take as u64;
                if self.data == 0 {
                    if data.get(pos.saturating_sub(2)..pos) != Some(b"\r\n") && take >= 2 {
                        self.lose();
                        return false;
                    }
                    let _ = on(Unit::DataEnd(stamp(pos)));
                }
                continue;
            }
            let Some(&b) = data.get(pos) else { break };
            self.start.get_or_insert(stamp(pos));
            pos += 1;
            if b != b'\n' {
                if self.line.len() >= MAX_LINE {
                    self.lose();
                    return false;
                }
                self.line.push(b);
                continue;
            }
            if self.line.pop() != Some(b'\r') {
                self.lose();
                return false;
            }
            let line = std::mem::take(&mut self.line);
            let start = self.start.take().unwrap_or_else(|| stamp(pos));
            if let Some(n) = on(Unit::Line(line, start, stamp(pos))) {
                self.data = n;
            } else {
                self.lose();
                return false;
            }
        }
        let uncaptured = total.saturating_sub(data.len() as u64);
        if uncaptured > 0 && !self.lost {
            match self.data.cmp(&uncaptured) {
                Ordering::Greater => self.data -= uncaptured,
                Ordering::Equal => {
                    self.data = 0;
                    let _ = on(Unit::DataEnd(Stamp {
                        ts,
                        tid,
                        offset: self.offset,
                    }));
                }
                Ordering::Less => {
                    // Unseen bytes past the data block hold unknown lines.
                    self.lose();
                    return false;
                }
            }
        }
        was_lost || !self.lost
    }
}

#[derive(Debug)]
struct Pending {
    key: u64,
    start: Stamp,
    end: Option<Stamp>,
    request: Request,
    /// The request's data block is still being read.
    reply_start: Option<Stamp>,
}

/// Both directions of one memcached connection. After a loss the request direction resumes at
/// the next syscall that starts with a request line; the reply direction at the first reply
/// syscall after a request syscall, with the pending requests cleared at the loss (so a reply
/// never pairs with a request from before it).
// Independent facts about the connection (not one state spelled as flags).
#[allow(clippy::struct_excessive_bools)]
#[derive(Debug)]
pub struct MemcachedConnection {
    requests: Lines,
    responses: Lines,
    pending: VecDeque<Pending>,
    /// Replies owed to requests dropped from a full queue.
    owed: u64,
    /// A quiet meta command was written and no `mn` since.
    quiet: bool,
    /// A reply was paired: the peer speaks memcached.
    confirmed: bool,
    failed: bool,
    after_request: bool,
    /// The only request waiting, whose reply began but could not be followed to its end (its
    /// end fell beyond the capture): the reply is its, complete when the client writes again.
    tail: Option<(Pending, Stamp)>,
    pub stats: MemcachedStats,
}

impl Default for MemcachedConnection {
    fn default() -> Self {
        Self::new()
    }
}

/// What a reply line is.
fn reply_error(line: &[u8]) -> Option<&'static str> {
    if line == b"ERROR" {
        Some("ERROR")
    } else if line.starts_with(b"CLIENT_ERROR") {
        Some("CLIENT_ERROR")
    } else if line.starts_with(b"SERVER_ERROR") {
        Some("SERVER_ERROR")
    } else {
        None
    }
}

/// Data bytes (with CRLF) a reply line announces: `VALUE <key> <flags> <bytes> [<cas>]` and
/// meta `VA <bytes> <flags>*`; `None` when malformed.
fn reply_data(line: &[u8]) -> Option<u64> {
    let mut tokens = line.split(|b| *b == b' ');
    let size = match tokens.next()? {
        b"VALUE" => tokens.nth(2)?,
        b"VA" => tokens.next()?,
        _ => return Some(0),
    };
    if size.is_empty() || size.len() > 12 || !size.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(size)
        .ok()?
        .parse::<u64>()
        .ok()?
        .checked_add(2)
}

impl MemcachedConnection {
    #[must_use]
    pub fn new() -> Self {
        Self {
            requests: Lines::new(false),
            responses: Lines::new(true),
            pending: VecDeque::new(),
            owed: 0,
            quiet: false,
            confirmed: false,
            failed: false,
            after_request: false,
            tail: None,
            stats: MemcachedStats::default(),
        }
    }

    fn emit(
        stats: &mut MemcachedStats,
        pending: Pending,
        response_start: Option<Stamp>,
        end: Stamp,
        outcome: DbOutcome,
        out: &mut Vec<ProtoEvent>,
    ) {
        stats.exchanges += 1;
        let mut summary = DbSummary::new(DbSystem::Memcached, outcome);
        summary.operation = pending.request.operation.map(Into::into);
        summary.query = pending.request.query;
        summary.batch_size = Some(pending.request.keys).filter(|&n| n > 1);
        out.push(ProtoEvent::Exchange(Exchange {
            key: pending.key,
            request_start: pending.start,
            request_end: pending.end.unwrap_or(pending.start),
            response_start,
            end,
            summary: Box::new(summary),
        }));
    }

    fn desync(&mut self, side: Side) {
        self.stats.desyncs += 1;
        self.pending.clear();
        self.owed = 0;
        self.quiet = false;
        if side == Side::Request && !self.responses.lost {
            self.responses.lose();
        }
    }

    fn feed_requests(
        &mut self,
        data: &[u8],
        total: u64,
        ts: u64,
        tid: u32,
        out: &mut Vec<ProtoEvent>,
    ) {
        if self.requests.lost && first_line(data).is_some_and(command::is_request) {
            self.requests.restart();
        }
        let Self {
            requests,
            pending,
            owed,
            quiet,
            stats,
            ..
        } = self;
        let ok = requests.feed(data, total, ts, tid, |unit| match unit {
            Unit::Line(line, start, end) => {
                let request = command::parse(&line).unwrap_or_else(Request::unknown);
                let data = request.data;
                let key = start.offset;
                let mut entry = Pending {
                    key,
                    start,
                    end: (data == 0).then_some(end),
                    request,
                    reply_start: None,
                };
                if *quiet && !matches!(entry.request.expect, Expect::Noop | Expect::Nothing) {
                    stats.ambiguous += 1;
                    // Still framed: its data block is skipped.
                    entry.request.expect = Expect::Nothing;
                    entry.key = u64::MAX;
                }
                if entry.request.quiet {
                    *quiet = true;
                }
                if entry.request.expect == Expect::Noop {
                    *quiet = false;
                }
                if entry.key != u64::MAX {
                    out.push(ProtoEvent::Request {
                        key,
                        trace: None,
                        start,
                        forward: 0,
                    });
                }
                if pending.len() >= MAX_PENDING {
                    pending.pop_front();
                    *owed += 1;
                    stats.pending_overflow += 1;
                }
                pending.push_back(entry);
                Some(data)
            }
            Unit::DataEnd(at) => {
                if let Some(last) = pending.back_mut() {
                    last.end.get_or_insert(at);
                }
                Some(0)
            }
        });
        // Requests that expect nothing are complete once written.
        let mut kept = VecDeque::with_capacity(self.pending.len());
        while let Some(p) = self.pending.pop_front() {
            if p.request.expect == Expect::Nothing && p.end.is_some() {
                if p.key != u64::MAX {
                    let end = p.end.unwrap_or(p.start);
                    Self::emit(&mut self.stats, p, None, end, DbOutcome::NoReply, out);
                }
            } else {
                kept.push_back(p);
            }
        }
        self.pending = kept;
        if !ok {
            self.desync(Side::Request);
        }
    }

    fn feed_responses(
        &mut self,
        data: &[u8],
        total: u64,
        ts: u64,
        tid: u32,
        out: &mut Vec<ProtoEvent>,
    ) {
        if self.responses.lost
            && self.tail.is_none()
            && self.after_request
            && !self.pending.is_empty()
        {
            // Replies are uppercase words or (incr/decr) numbers.
            if data
                .first()
                .is_some_and(|b| b.is_ascii_uppercase() || b.is_ascii_digit())
            {
                self.responses.restart();
            } else if !self.confirmed {
                // The first reply to a well-formed request is not memcached's.
                self.failed = true;
                return;
            }
        }
        let Self {
            responses,
            pending,
            owed,
            confirmed,
            stats,
            ..
        } = self;
        let ok = responses.feed(data, total, ts, tid, |unit| {
            let Unit::Line(line, start, end) = unit else {
                return Some(0);
            };
            let size = reply_data(&line)?;
            let error = reply_error(&line);
            let Some(front) = pending.front_mut() else {
                stats.unpaired_replies += 1;
                return Some(size);
            };
            let early = front.reply_start.is_none() && front.end.is_none_or(|e| start.ts < e.ts);
            if *owed > 0 || early {
                // Replies of requests dropped from a full queue (multi-line ones cannot be told
                // apart from the next reply), or a reply begun before its request was all
                // written (it answers something unseen): the stream is not what it seems.
                return None;
            }
            front.reply_start.get_or_insert(start);
            let done = match front.request.expect {
                Expect::Values | Expect::Stats if error.is_some() || line == b"END" => true,
                Expect::Values if line.starts_with(b"VALUE ") => false,
                Expect::Stats if line.starts_with(b"STAT ") => false,
                // Anything else inside a multi-line reply is not memcached's.
                Expect::Values | Expect::Stats => return None,
                Expect::Noop => line == b"MN" || error.is_some(),
                Expect::Line | Expect::Nothing => true,
            };
            *confirmed = true;
            if done && let Some(p) = pending.pop_front() {
                let outcome = match error {
                    Some(code) => DbOutcome::Error {
                        code: Some(code.into()),
                    },
                    None => DbOutcome::Ok,
                };
                let response_start = p.reply_start;
                let keep = p.key != u64::MAX;
                if keep {
                    Self::emit(stats, p, response_start, end, outcome, out);
                }
            }
            Some(size)
        });
        let at = Stamp {
            ts,
            tid,
            offset: self.responses.offset,
        };
        if !ok {
            // The only request waiting, whose reply was being read when bytes beyond the
            // capture hid its end, keeps that reply.
            if total > data.len() as u64
                && self.pending.len() == 1
                && self.owed == 0
                && self
                    .pending
                    .front()
                    .is_some_and(|p| p.reply_start.is_some())
            {
                self.tail = self.pending.pop_front().map(|p| (p, at));
            }
            self.desync(Side::Response);
        } else if self.responses.lost
            && let Some((_, last)) = self.tail.as_mut()
        {
            *last = at;
        }
    }

    fn finish_tail(&mut self, out: &mut Vec<ProtoEvent>) {
        if let Some((p, last)) = self.tail.take() {
            let start = p.reply_start;
            Self::emit(&mut self.stats, p, start, last, DbOutcome::Ok, out);
        }
    }
}

impl ConnectionParser for MemcachedConnection {
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
        match side {
            Side::Request => {
                self.finish_tail(out);
                self.feed_requests(data, total, ts, tid, out);
                self.after_request = true;
            }
            Side::Response => {
                self.feed_responses(data, total, ts, tid, out);
                self.after_request = false;
            }
        }
    }

    fn close(&mut self, at: Stamp, out: &mut Vec<ProtoEvent>) {
        if self.failed {
            return;
        }
        self.finish_tail(out);
        while let Some(p) = self.pending.pop_front() {
            if p.key != u64::MAX {
                let start = p.reply_start;
                Self::emit(&mut self.stats, p, start, at, DbOutcome::NoResponse, out);
            }
        }
    }

    fn failed(&self) -> bool {
        self.failed
    }

    fn thread_causality(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::replay::{
        Replayed, Seen, Syscall, assert_no_secrets, check, replay, syscalls,
    };

    const SECRETS: &[&str] = &[
        "s3cr3t", "4242", "user:", "missing", "nosuch", "big", "1.6.18",
    ];

    /// pymemcache 4.0 against memcached 1.6.18, first connection: set (pymemcache's default
    /// `noreply`), set, get hit, get miss, `set_many` (three sets in one write), `get_many` of four
    /// keys, gets, delete hit and miss, set, incr, decr, incr of a non-number (`CLIENT_ERROR`,
    /// after which pymemcache closes the connection).
    const CLIENT_1: &str = include_str!("fixtures/pymemcache_client_1.jsonl");
    /// Its second connection: add (`NOT_STORED`), touch, a 100 KB set and get, version, stats.
    const CLIENT_2: &str = include_str!("fixtures/pymemcache_client_2.jsonl");
    /// The same connections seen at memcached (`read`, `sendmsg`).
    const SERVER_1: &str = include_str!("fixtures/pymemcache_server_1.jsonl");
    const SERVER_2: &str = include_str!("fixtures/pymemcache_server_2.jsonl");

    const EXPECTED_1: &[&str] = &[
        "set [set ? ? ? ? noreply] -> noreply",
        "set [set ? ? ? ?] -> ok",
        "get [get ?] -> ok",
        "get [get ?] -> ok",
        "set [set ? ? ? ?] -> ok",
        "set [set ? ? ? ?] -> ok",
        "set [set ? ? ? ?] -> ok",
        "get [get ? ? ? ?] -> ok",
        "gets [gets ?] -> ok",
        "delete [delete ?] -> ok",
        "delete [delete ?] -> ok",
        "set [set ? ? ? ?] -> ok",
        "incr [incr ? ?] -> ok",
        "decr [decr ? ?] -> ok",
        "incr [incr ? ?] -> error CLIENT_ERROR",
    ];
    const EXPECTED_2: &[&str] = &[
        "add [add ? ? ? ?] -> ok",
        "touch [touch ? ?] -> ok",
        "set [set ? ? ? ?] -> ok",
        "get [get ?] -> ok",
        "version [version] -> ok",
        "stats [stats] -> ok",
    ];

    /// Request bytes before the chunk detection takes (from `skip`, each cut to `capture`):
    /// keys count from there.
    fn base(whole: &[Syscall], skip: usize, server: bool, capture: usize) -> u64 {
        let detected = (skip..whole.len())
            .find(|&i| {
                let data = &whole[i].1[..whole[i].1.len().min(capture)];
                whole[i].0 != server && first_line(data).is_some_and(command::is_request)
            })
            .unwrap_or(whole.len());
        whole[..detected]
            .iter()
            .filter(|(egress, _, _)| *egress != server)
            .map(|(_, _, total)| total)
            .sum()
    }

    fn lines(seen: &[Seen]) -> Vec<&str> {
        seen.iter().map(|s| s.line.as_str()).collect()
    }

    #[test]
    fn captured_pymemcache_requests_are_one_exchange_each_at_both_ends() {
        for (client, server, expected) in [
            (CLIENT_1, SERVER_1, EXPECTED_1),
            (CLIENT_2, SERVER_2, EXPECTED_2),
        ] {
            let Replayed {
                seen: at_client,
                failed,
                ..
            } = replay(detect, &syscalls(client), false, usize::MAX);
            assert!(!failed);
            assert_eq!(lines(&at_client), expected);
            let Replayed {
                seen: at_server,
                failed,
                ..
            } = replay(detect, &syscalls(server), true, usize::MAX);
            assert!(!failed);
            assert_eq!(lines(&at_server), expected);
            let keys = |s: &[Seen]| s.iter().map(|x| (x.key, x.request)).collect::<Vec<_>>();
            assert_eq!(keys(&at_client), keys(&at_server));
            assert_no_secrets(&at_client, SECRETS);
            assert_no_secrets(&at_server, SECRETS);
        }
    }

    #[test]
    fn a_multi_key_get_has_its_batch_size() {
        let Replayed { seen, .. } = replay(detect, &syscalls(CLIENT_1), false, usize::MAX);
        let batch = |s: &Seen| {
            s.attributes
                .iter()
                .find(|(k, _)| k == "db.operation.batch.size")
                .map(|(_, v)| v.clone())
        };
        assert_eq!(batch(&seen[7]).as_deref(), Some("Int(4)"));
        assert_eq!(batch(&seen[2]), None);
        let system = seen[2]
            .attributes
            .iter()
            .find(|(k, _)| k == "db.system.name");
        assert!(system.is_some_and(|(_, v)| v.contains("memcached")));
    }

    #[test]
    fn meta_commands_and_quiet_mode_pair_or_stay_unreported() {
        let fixture = include_str!("fixtures/raw_meta_client.jsonl");
        let Replayed { seen, failed, .. } = replay(detect, &syscalls(fixture), false, usize::MAX);
        assert!(!failed);
        assert_eq!(
            lines(&seen),
            [
                "ms [ms ? ? ?] -> ok",
                "mg [mg ? ? ? ?] -> ok",
                "mg [mg ? ?] -> ok",
                "mg [mg ? ? ?] -> noreply",
                "mg [mg ? ? ?] -> noreply",
                "md [md ? ?] -> noreply",
                "mn [mn] -> ok",
                "ma [ma ?] -> error CLIENT_ERROR",
                "md [md ?] -> ok",
                "me [me ?] -> ok",
                "memcached -> error ERROR",
                "flush_all [flush_all] -> ok",
                "verbosity [verbosity ?] -> ok",
            ]
        );
        assert_no_secrets(&seen, &["s3cr3t", "mk1", "bogus"]);
    }

    #[test]
    fn attached_midway_pairs_later_requests_rightly_or_not_at_all() {
        for (fixture, server) in [
            (CLIENT_1, false),
            (SERVER_1, true),
            (CLIENT_2, false),
            (SERVER_2, true),
        ] {
            let whole = syscalls(fixture);
            let truth = replay(detect, &whole, server, usize::MAX).seen;
            for skip in 1..whole.len() {
                let Replayed { seen, failed, .. } =
                    replay(detect, &whole[skip..], server, usize::MAX);
                assert!(!failed);
                let base = base(&whole, skip, server, usize::MAX);
                for s in &seen {
                    let Some(real) = truth.iter().find(|t| t.key == s.key + base) else {
                        panic!("skip {skip}: {s:?}");
                    };
                    assert_eq!(s.line, real.line, "skip {skip}");
                }
            }
        }
    }

    #[test]
    fn any_split_and_small_captures_never_pair_wrongly() {
        for (fixture, server) in [
            (CLIENT_1, false),
            (SERVER_1, true),
            (CLIENT_2, false),
            (SERVER_2, true),
        ] {
            let whole = syscalls(fixture);
            let reference = replay(detect, &whole, server, usize::MAX).seen;
            for run in 1..=30u64 {
                let mut seed = run.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
                let mut pieces = vec![whole[0].clone()];
                for (egress, bytes, total) in &whole[1..] {
                    let mut rest = bytes.as_slice();
                    let uncaptured = total - bytes.len() as u64;
                    while !rest.is_empty() {
                        seed ^= seed << 13;
                        seed ^= seed >> 7;
                        seed ^= seed << 17;
                        let cut = (1 + (seed % 17) as usize).min(rest.len());
                        let moved = cut as u64 + if cut == rest.len() { uncaptured } else { 0 };
                        pieces.push((*egress, rest[..cut].to_vec(), moved));
                        rest = &rest[cut..];
                    }
                }
                let found = replay(detect, &pieces, server, usize::MAX).seen;
                assert_eq!(lines(&found), lines(&reference), "splitting {run}");
            }
            for capture in [5, 12, 20, 40] {
                let Replayed { seen, .. } = replay(detect, &whole, server, capture);
                let base = base(&whole, 0, server, capture);
                for s in &seen {
                    let Some(real) = reference.iter().find(|t| t.key == s.key + base) else {
                        panic!("capture {capture} server {server}: {s:?}");
                    };
                    if s.line != real.line {
                        // Only an exchange the capture cut short may differ, and only by
                        // knowing less.
                        assert!(
                            s.line.ends_with("-> none"),
                            "capture {capture}: {} vs {}",
                            s.line,
                            real.line
                        );
                    }
                }
            }
        }
    }

    fn run(chunks: &[(Side, &[u8], u64)]) -> (Vec<Seen>, MemcachedConnection) {
        crate::protocol::replay::feed_chunks(MemcachedConnection::new(), chunks)
    }

    #[test]
    fn server_errors_carry_their_code_only_and_garbage_loses_nothing_else() {
        let (seen, conn) = run(&[
            (Side::Request, b"get a\r\n", 7),
            (
                Side::Response,
                b"SERVER_ERROR out of memory storing s3cr3t\r\n",
                43,
            ),
            // Binary-protocol bytes, captured in part.
            (Side::Request, b"\x80\x01\x00\x05 binary", 12),
            (Side::Response, b"VALUE x 0 1\r\n", 13),
            (Side::Request, b"get b\r\n", 7),
            (Side::Response, b"END\r\n", 5),
        ]);
        assert_eq!(
            lines(&seen),
            ["get [get ?] -> error SERVER_ERROR", "get [get ?] -> ok"]
        );
        assert_no_secrets(&seen, &["s3cr3t", "memory"]);
        assert_eq!(conn.stats.desyncs, 1);
    }

    #[test]
    fn a_value_line_split_from_its_data_and_a_reply_in_many_reads_pair() {
        let (seen, _) = run(&[
            (Side::Request, b"get a b\r\n", 9),
            (Side::Response, b"VALUE a 0 5\r", 12),
            (Side::Response, b"\nhel", 4),
            (Side::Response, b"lo\r\nVALUE b 0 1\r\nx\r\nEN", 22),
            (Side::Response, b"D\r\n", 3),
        ]);
        assert_eq!(lines(&seen), ["get [get ? ?] -> ok"]);
    }

    #[test]
    fn detection_is_strict() {
        let client = |payload: &'static [u8]| Chunk {
            egress: true,
            role: agent_common::Role::Client,
            payload,
            total: payload.len() as u64,
        };
        for yes in [
            &b"get k\r\n"[..],
            b"set k 0 0 1\r\nx\r\n",
            b"version\r\n",
            b"mg k v\r\n",
            b"gat 10 a b\r\n",
        ] {
            assert!(detect(&client(yes)).is_some(), "{yes:?}");
        }
        for not in [
            &b"GET / HTTP/1.1\r\n\r\n"[..],
            b"get / HTTP/1.1\r\nHost: x\r\n",
            b"*1\r\n$4\r\nPING\r\n",
            b"\x16\x03\x01\x00\x05hello",
            b"\x80\x00\x00\x05",
            b"get k",
            b"set k 0 0 x\r\n",
            b"get\r\n",
            b"gets \r\n",
            b"delete a b c\r\n",
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
        ] {
            assert!(detect(&client(not)).is_none(), "{not:?}");
        }
        let long_key = [b"get ".to_vec(), vec![b'k'; 251], b"\r\n".to_vec()].concat();
        assert!(command::parse(&long_key[..long_key.len() - 2]).is_none());
    }

    #[test]
    fn replies_that_are_not_memcached_give_the_connection_up() {
        // A Redis server answering an inline `get` detected as memcached.
        let (seen, conn) = run(&[
            (Side::Request, b"get k\r\n", 7),
            (Side::Response, b"$5\r\nhello\r\n", 11),
        ]);
        assert!(seen.is_empty() && conn.failed());
        // Inside a multi-line reply, a line that is neither VALUE nor END loses the stream
        // rather than ending the reply.
        let (seen, conn) = run(&[
            (Side::Request, b"get k\r\n", 7),
            (Side::Response, b"VALUE k 0 1\r\nx\r\nSTORED\r\n", 24),
            (Side::Request, b"version\r\n", 9),
            (Side::Response, b"VERSION 1.6.18\r\n", 16),
        ]);
        assert_eq!(lines(&seen), ["version [version] -> ok"]);
        assert_eq!(conn.stats.desyncs, 1);
    }

    #[test]
    fn noreply_storage_completes_when_written_and_pipelines_pair_in_order() {
        let (seen, _) = run(&[
            (
                Side::Request,
                b"set a 0 0 1 noreply\r\nx\r\nget a\r\ndelete a noreply\r\nincr n 1\r\n",
                59,
            ),
            (Side::Response, b"VALUE a 0 1\r\nx\r\nEND\r\n42\r\n", 25),
        ]);
        assert_eq!(
            lines(&seen),
            [
                "set [set ? ? ? ? noreply] -> noreply",
                "delete [delete ? noreply] -> noreply",
                "get [get ?] -> ok",
                "incr [incr ? ?] -> ok",
            ]
        );
    }

    #[test]
    fn pending_requests_are_bounded() {
        let mut conn = MemcachedConnection::new();
        let mut out = Vec::new();
        let many = b"get k\r\n".repeat(MAX_PENDING + 2);
        conn.feed(Side::Request, &many, many.len() as u64, 1, 1, &mut out);
        assert_eq!(conn.pending.len(), MAX_PENDING);
        assert_eq!(conn.stats.pending_overflow, 2);
        let replies = b"END\r\n".repeat(MAX_PENDING + 2);
        conn.feed(
            Side::Response,
            &replies,
            replies.len() as u64,
            2,
            1,
            &mut out,
        );
        // The replies owed to dropped requests cannot be told apart: nothing pairs wrongly.
        assert!(check(out).is_empty());
    }
}

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
            summary: summary.into(),
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
mod tests;

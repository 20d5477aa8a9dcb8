//! HTTP/1.x message framing over one direction of a connection, fed in syscall order.
//!
//! Each feed is one syscall's bytes: the captured prefix plus the count of bytes the syscall
//! moved beyond it. Bodies are skipped by count, so a body larger than the capture limit costs
//! nothing and never desynchronises the stream. Bytes missing inside a head, a malformed head, or
//! a gap past the end of a message put the framer in `Desync`, from which it recovers at the next
//! syscall whose bytes start like a message.

use super::{
    head::{Head, KNOWN_METHODS, RepeatedValues},
    head_cache::parse_head_remembered,
};
use crate::protocol::budget::{HEADS, HeadBudget};

/// Largest head (start line + headers) buffered across reads.
pub const MAX_HEAD_BYTES: usize = 32 * 1024;
/// Longest chunk-size or trailer line accepted.
const MAX_LINE_BYTES: usize = 1024;

pub use crate::protocol::{Side, Stamp};

/// What follows a head, as decided by the framer's owner (it knows the paired request).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterHead {
    /// Framed by the head's own Content-Length / Transfer-Encoding (or read-until-close for
    /// responses without either).
    Body,
    /// No body (a response to HEAD, 1xx, 204, 304).
    NoBody,
    /// Not HTTP after this head (101 Switching Protocols, a successful CONNECT).
    Tunnel,
}

/// Receives what the framer finds.
pub trait FrameSink {
    /// A complete head; `start` is where its first byte was seen.
    fn head(&mut self, head: Head, start: Stamp) -> AfterHead;
    /// The message whose head came last is complete.
    fn end(&mut self, at: Stamp);
    /// Framing was lost; the message in progress (if any) is abandoned.
    fn desync(&mut self, why: DesyncReason);
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DesyncReason {
    /// Bytes beyond the capture limit fell inside a head.
    GapInHead,
    /// Bytes beyond the capture limit ran past the end of a message into the next one.
    GapPastMessage,
    MalformedHead,
    HeadTooLarge,
    /// All connections together already buffer as many head bytes as the agent allows.
    HeadBudget,
    MalformedChunk,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunked {
    /// Reading a chunk-size line; `len` bytes of it seen, `size` parsed so far.
    Size {
        len: usize,
        size: u64,
        in_ext: bool,
    },
    Data(u64),
    /// The CRLF after chunk data; how many bytes of it are left.
    DataEnd(u8),
    /// Trailer lines after the last chunk; bytes of the current line seen (CR excluded).
    Trailer {
        len: usize,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Head,
    Length(u64),
    Chunked(Chunked),
    UntilClose,
    Tunnel,
    Desync,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct FramerStats {
    pub heads: u64,
    pub desyncs: u64,
    pub resyncs: u64,
}

/// One direction's framing state.
#[derive(Debug)]
pub struct Framer {
    side: Side,
    state: State,
    /// Head bytes collected across reads (only when a head spans reads); its capacity is
    /// charged to `budget`.
    buf: Vec<u8>,
    budget: &'static HeadBudget,
    /// Where the head in progress started.
    head_start: Option<Stamp>,
    /// Bytes of this direction seen so far (captured or not).
    offset: u64,
    /// Header values this direction's heads keep repeating.
    repeats: RepeatedValues,
    pub stats: FramerStats,
}

/// Whether `data` begins like a message of `side`: a known method and a space, or `HTTP/1.`.
#[must_use]
pub fn looks_like_start(side: Side, data: &[u8]) -> bool {
    match side {
        Side::Response => data.starts_with(b"HTTP/1."),
        Side::Request => KNOWN_METHODS
            .iter()
            .any(|m| data.starts_with(m.as_bytes()) && data.get(m.len()) == Some(&b' ')),
    }
}

impl Framer {
    #[must_use]
    pub fn new(side: Side) -> Self {
        Self::with_budget(side, &HEADS)
    }

    #[must_use]
    pub fn with_budget(side: Side, budget: &'static HeadBudget) -> Self {
        Self {
            side,
            state: State::Head,
            buf: Vec::new(),
            budget,
            head_start: None,
            offset: 0,
            repeats: RepeatedValues::default(),
            stats: FramerStats::default(),
        }
    }

    /// True once the connection stopped carrying HTTP (upgrade, CONNECT tunnel).
    #[cfg(test)]
    fn is_tunnel(&self) -> bool {
        self.state == State::Tunnel
    }

    /// Appends head bytes to the buffer if the budget has room for them; false otherwise.
    fn buffer(&mut self, bytes: &[u8]) -> bool {
        let before = self.buf.capacity();
        let grow = (self.buf.len() + bytes.len()).saturating_sub(before);
        if grow > 0 {
            if !self.budget.try_take(grow) {
                return false;
            }
            self.buf.reserve_exact(bytes.len());
            // The allocator may round up; charge what it actually gave.
            self.budget
                .take((self.buf.capacity() - before).saturating_sub(grow));
        }
        self.buf.extend_from_slice(bytes);
        true
    }

    /// Empties the head buffer and returns its memory (heads rarely span reads; keeping the
    /// capacity would pin it for the life of every connection that once had one).
    fn release_buffer(&mut self) {
        if self.buf.capacity() > 0 {
            self.budget.give_back(self.buf.capacity());
            self.buf = Vec::new();
        }
    }

    fn lose_sync(&mut self, why: DesyncReason, sink: &mut impl FrameSink) {
        self.state = State::Desync;
        self.release_buffer();
        self.head_start = None;
        self.stats.desyncs += 1;
        sink.desync(why);
    }

    /// Feeds one syscall's bytes: `data` captured, `total` moved (`total >= data.len()`).
    pub fn feed(&mut self, data: &[u8], total: u64, ts: u64, tid: u32, sink: &mut impl FrameSink) {
        let total = total.max(data.len() as u64);
        let base = self.offset;
        self.offset += total;
        if self.state == State::Desync {
            if looks_like_start(self.side, data) {
                self.state = State::Head;
                self.stats.resyncs += 1;
            } else {
                return;
            }
        }
        let mut pos = 0usize;
        while pos < data.len() {
            let at = Stamp {
                ts,
                tid,
                offset: base + pos as u64,
            };
            match self.state {
                State::Head => match self.head_bytes(&data[pos..], at, sink) {
                    Some(used) => pos += used,
                    None => return,
                },
                State::Length(left) => {
                    let take = left.min((data.len() - pos) as u64);
                    pos += take as usize;
                    let end = Stamp {
                        offset: base + pos as u64,
                        ..at
                    };
                    self.body_consumed(left - take, end, sink);
                }
                State::Chunked(c) => pos += self.chunked_bytes(c, &data[pos..], at, sink),
                State::UntilClose => pos = data.len(),
                State::Tunnel | State::Desync => return,
            }
        }
        let gap = total - data.len() as u64;
        if gap > 0 {
            self.skip_gap(
                gap,
                Stamp {
                    ts,
                    tid,
                    offset: base + data.len() as u64,
                },
                sink,
            );
        }
    }

    /// Bytes of this direction seen so far: where the stream ends if it closes now.
    #[must_use]
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// The connection closed: a read-until-close body ends here, at the stream's last byte
    /// (`at.offset` is replaced by that position).
    pub fn close(&mut self, at: Stamp, sink: &mut impl FrameSink) {
        let at = Stamp {
            offset: self.offset,
            ..at
        };
        if self.state == State::UntilClose {
            self.state = State::Head;
            sink.end(at);
        }
    }

    fn body_consumed(&mut self, left: u64, at: Stamp, sink: &mut impl FrameSink) {
        if left == 0 {
            self.state = State::Head;
            sink.end(at);
        } else {
            self.state = State::Length(left);
        }
    }

    /// Consumes head bytes; returns how many, or `None` when the rest of the feed is unusable.
    fn head_bytes(&mut self, data: &[u8], at: Stamp, sink: &mut impl FrameSink) -> Option<usize> {
        let mut skipped = 0;
        if self.buf.is_empty() && self.head_start.is_none() {
            // Tolerate stray CRLFs between messages (RFC 9112 §2.2).
            skipped = data
                .iter()
                .take_while(|&&b| b == b'\r' || b == b'\n')
                .count();
            if skipped == data.len() {
                return Some(skipped);
            }
            self.head_start = Some(Stamp {
                offset: at.offset + skipped as u64,
                ..at
            });
        }
        let data = &data[skipped..];
        let parsed = if self.buf.is_empty() {
            parse_head_remembered(self.side, data, &mut self.repeats)
        } else {
            let before = self.buf.len();
            let room = MAX_HEAD_BYTES.saturating_sub(before);
            if !self.buffer(&data[..data.len().min(room)]) {
                self.lose_sync(DesyncReason::HeadBudget, sink);
                return None;
            }
            parse_head_remembered(self.side, &self.buf, &mut self.repeats)
                .map(|o| o.map(|(h, n)| (h, n - before)))
        };
        match parsed {
            Ok(Some((head, used))) => {
                self.release_buffer();
                let start = self.head_start.take().unwrap_or(at);
                self.stats.heads += 1;
                let framing = head.framing(self.side);
                let after = sink.head(head, start);
                let end_at = Stamp {
                    offset: at.offset + (skipped + used) as u64,
                    ..at
                };
                self.state = match after {
                    AfterHead::Tunnel => State::Tunnel,
                    AfterHead::NoBody => State::Head,
                    AfterHead::Body => framing.state(),
                };
                if after != AfterHead::Tunnel && self.state == State::Head {
                    sink.end(end_at);
                }
                Some(skipped + used)
            }
            Ok(None) => {
                if self.buf.is_empty() {
                    if data.len() > MAX_HEAD_BYTES {
                        self.lose_sync(DesyncReason::HeadTooLarge, sink);
                        return None;
                    }
                    if !self.buffer(data) {
                        self.lose_sync(DesyncReason::HeadBudget, sink);
                        return None;
                    }
                } else if self.buf.len() >= MAX_HEAD_BYTES {
                    self.lose_sync(DesyncReason::HeadTooLarge, sink);
                    return None;
                }
                Some(skipped + data.len())
            }
            Err(()) => {
                self.lose_sync(DesyncReason::MalformedHead, sink);
                None
            }
        }
    }

    /// Consumes chunked-body bytes; returns how many.
    fn chunked_bytes(
        &mut self,
        state: Chunked,
        data: &[u8],
        at: Stamp,
        sink: &mut impl FrameSink,
    ) -> usize {
        match state {
            Chunked::Size { len, size, in_ext } => {
                self.chunk_size_bytes(len, size, in_ext, data, sink)
            }
            Chunked::Data(left) => {
                let take = left.min(data.len() as u64);
                self.state = State::Chunked(if take == left {
                    Chunked::DataEnd(2)
                } else {
                    Chunked::Data(left - take)
                });
                take as usize
            }
            Chunked::DataEnd(left) => self.chunk_end_bytes(left, data, sink),
            Chunked::Trailer { len } => self.trailer_bytes(len, data, at, sink),
        }
    }

    /// A chunk-size line: hex digits, optional `;extensions`, CRLF.
    fn chunk_size_bytes(
        &mut self,
        mut len: usize,
        mut size: u64,
        mut in_ext: bool,
        data: &[u8],
        sink: &mut impl FrameSink,
    ) -> usize {
        for (i, &b) in data.iter().enumerate() {
            len += 1;
            if b == b'\n' {
                self.state = if size == 0 {
                    State::Chunked(Chunked::Trailer { len: 0 })
                } else {
                    State::Chunked(Chunked::Data(size))
                };
                return i + 1;
            }
            if len > MAX_LINE_BYTES {
                self.lose_sync(DesyncReason::MalformedChunk, sink);
                return data.len();
            }
            if b == b';' || b == b' ' || b == b'\t' {
                in_ext = true;
            } else if b != b'\r' && !in_ext {
                let digit = char::from(b).to_digit(16);
                let shifted = size.checked_mul(16);
                let (Some(digit), Some(shifted)) = (digit, shifted) else {
                    self.lose_sync(DesyncReason::MalformedChunk, sink);
                    return data.len();
                };
                size = shifted + u64::from(digit);
            }
        }
        self.state = State::Chunked(Chunked::Size { len, size, in_ext });
        data.len()
    }

    /// The CRLF after chunk data (a bare LF is accepted).
    fn chunk_end_bytes(&mut self, mut left: u8, data: &[u8], sink: &mut impl FrameSink) -> usize {
        let mut used = 0;
        while left > 0 && used < data.len() {
            match data[used] {
                b'\r' => {
                    used += 1;
                    left -= 1;
                }
                b'\n' => {
                    used += 1;
                    left = 0;
                }
                _ => {
                    self.lose_sync(DesyncReason::MalformedChunk, sink);
                    return data.len();
                }
            }
        }
        self.state = State::Chunked(if left == 0 {
            Chunked::Size {
                len: 0,
                size: 0,
                in_ext: false,
            }
        } else {
            Chunked::DataEnd(left)
        });
        used
    }

    /// Trailer lines after the last chunk, up to the empty line that ends the message.
    fn trailer_bytes(
        &mut self,
        mut len: usize,
        data: &[u8],
        at: Stamp,
        sink: &mut impl FrameSink,
    ) -> usize {
        for (i, &b) in data.iter().enumerate() {
            match b {
                b'\n' if len == 0 => {
                    self.state = State::Head;
                    sink.end(Stamp {
                        offset: at.offset + i as u64 + 1,
                        ..at
                    });
                    return i + 1;
                }
                b'\n' => len = 0,
                b'\r' => {}
                _ => {
                    len += 1;
                    if len > MAX_LINE_BYTES {
                        self.lose_sync(DesyncReason::MalformedChunk, sink);
                        return data.len();
                    }
                }
            }
        }
        self.state = State::Chunked(Chunked::Trailer { len });
        data.len()
    }

    /// Accounts `gap` bytes that the syscall moved beyond the captured prefix.
    fn skip_gap(&mut self, gap: u64, at: Stamp, sink: &mut impl FrameSink) {
        match self.state {
            State::Length(left) if gap <= left => {
                let end = Stamp {
                    offset: at.offset + gap,
                    ..at
                };
                self.body_consumed(left - gap, end, sink);
            }
            State::Chunked(Chunked::Data(left)) if gap < left => {
                self.state = State::Chunked(Chunked::Data(left - gap));
            }
            State::UntilClose | State::Tunnel | State::Desync => {}
            State::Head if self.head_start.is_some() || !self.buf.is_empty() => {
                self.lose_sync(DesyncReason::GapInHead, sink);
            }
            _ => self.lose_sync(DesyncReason::GapPastMessage, sink),
        }
    }
}

impl Drop for Framer {
    fn drop(&mut self) {
        self.release_buffer();
    }
}

/// How a message's body is delimited, from its head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    None,
    Length(u64),
    Chunked,
    UntilClose,
}

impl Framing {
    fn state(self) -> State {
        match self {
            Self::None | Self::Length(0) => State::Head,
            Self::Length(n) => State::Length(n),
            Self::Chunked => State::Chunked(Chunked::Size {
                len: 0,
                size: 0,
                in_ext: false,
            }),
            Self::UntilClose => State::UntilClose,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Half heads on many connections share one budget: past it a connection loses framing
    /// (counted) instead of buffering, and every byte comes back when heads complete or
    /// connections go away.
    #[test]
    fn buffered_heads_share_one_budget() {
        let budget: &'static HeadBudget = Box::leak(Box::new(HeadBudget::new(256)));
        let half = b"GET /slow HTTP/1.1\r\nHost: h\r\nX-Pad: ";
        let mut log = Log::default();
        let mut framers: Vec<Framer> = (0..10)
            .map(|_| Framer::with_budget(Side::Request, budget))
            .collect();
        for f in &mut framers {
            f.feed(half, half.len() as u64, 1, 1, &mut log);
        }
        let refused = framers.iter().filter(|f| f.stats.desyncs > 0).count();
        assert!(refused > 0 && refused < 10, "{refused} of 10 refused");
        assert!(budget.in_use() <= 256);
        assert_eq!(budget.refusals(), refused as u64);
        // A buffered head completes: its bytes are given back.
        // Connections going away give their bytes back; a buffered head that completes too.
        framers.truncate(1);
        assert_eq!(budget.in_use(), half.len());
        let rest = b"1\r\n\r\n";
        framers[0].feed(rest, rest.len() as u64, 2, 1, &mut log);
        assert!(
            log.events.iter().any(|e| e.starts_with("head GET /slow")),
            "{:?}",
            log.events
        );
        assert_eq!(budget.in_use(), 0);
        framers.clear();
        assert_eq!(budget.in_use(), 0);
    }

    /// Records what the framer reports.
    #[derive(Default)]
    struct Log {
        events: Vec<String>,
        /// What to answer to heads, in order; `Body` when empty.
        answers: Vec<AfterHead>,
    }

    impl FrameSink for Log {
        fn head(&mut self, head: Head, start: Stamp) -> AfterHead {
            self.events
                .push(format!("head {} @{}", head.summary(), start.offset));
            if self.answers.is_empty() {
                AfterHead::Body
            } else {
                self.answers.remove(0)
            }
        }
        fn end(&mut self, at: Stamp) {
            self.events.push(format!("end @{}", at.offset));
        }
        fn desync(&mut self, why: DesyncReason) {
            self.events.push(format!("desync {why:?}"));
        }
    }

    fn feed_all(side: Side, parts: &[&[u8]]) -> Vec<String> {
        let mut framer = Framer::new(side);
        let mut log = Log::default();
        for (i, p) in parts.iter().enumerate() {
            framer.feed(p, p.len() as u64, i as u64, 1, &mut log);
        }
        log.events
    }

    #[test]
    fn keep_alive_requests_with_and_without_bodies() {
        let events = feed_all(
            Side::Request,
            &[b"GET /a HTTP/1.1\r\nHost: x\r\n\r\nPOST /b HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello"],
        );
        assert_eq!(
            events,
            ["head GET /a @0", "end @28", "head POST /b @28", "end @72"]
        );
    }

    #[test]
    fn head_split_across_reads_and_body_across_many() {
        let events = feed_all(
            Side::Request,
            &[
                b"POST /up",
                b"load HTTP/1.1\r\nContent-Le",
                b"ngth: 10\r\n\r\n01234",
                b"56",
                b"789",
            ],
        );
        assert_eq!(events, ["head POST /upload @0", "end @55"]);
    }

    #[test]
    fn every_split_of_a_pipelined_stream_frames_the_same() {
        let stream: &[u8] = b"GET /1 HTTP/1.1\r\n\r\nPOST /2 HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nwiki\r\n5;ext=1\r\npedia\r\n0\r\nX-Trailer: t\r\n\r\nHEAD /3 HTTP/1.1\r\n\r\n";
        let whole = feed_all(Side::Request, &[stream]);
        assert_eq!(
            whole,
            [
                "head GET /1 @0",
                "end @19",
                "head POST /2 @19",
                "end @111",
                "head HEAD /3 @111",
                "end @131"
            ]
        );
        for a in 1..stream.len() {
            for b in a..stream.len() {
                let split = feed_all(Side::Request, &[&stream[..a], &stream[a..b], &stream[b..]]);
                assert_eq!(split, whole, "split at {a}, {b}");
            }
        }
    }

    #[test]
    fn uncaptured_body_bytes_are_skipped_by_count() {
        let mut framer = Framer::new(Side::Response);
        // The owner answers NoBody for a 204.
        let mut log = Log {
            answers: vec![AfterHead::Body, AfterHead::NoBody],
            ..Log::default()
        };
        // A 100 000-byte body of which each read captured only 10 bytes.
        let head = b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n";
        framer.feed(head, head.len() as u64, 0, 1, &mut log);
        for i in 0..10 {
            framer.feed(b"0123456789", 10_000, i, 1, &mut log);
        }
        framer.feed(b"HTTP/1.1 204 No Content\r\n\r\n", 27, 20, 1, &mut log);
        assert_eq!(
            log.events,
            [
                "head 200 @0",
                "end @100043",
                "head 204 @100043",
                "end @100070"
            ]
        );
    }

    #[test]
    fn gap_inside_a_head_desyncs_then_resyncs_at_the_next_message() {
        let mut framer = Framer::new(Side::Request);
        let mut log = Log::default();
        framer.feed(b"GET /big HTTP/1.1\r\nCookie: aaaa", 9000, 0, 1, &mut log);
        framer.feed(b"more header bytes\r\n\r\n", 21, 1, 1, &mut log);
        framer.feed(b"GET /next HTTP/1.1\r\n\r\n", 22, 2, 1, &mut log);
        assert_eq!(
            log.events,
            ["desync GapInHead", "head GET /next @9021", "end @9043"]
        );
        assert_eq!(framer.stats.resyncs, 1);
    }

    #[test]
    fn responses_no_body_until_close_and_tunnel() {
        let mut framer = Framer::new(Side::Response);
        let mut log = Log {
            answers: vec![AfterHead::NoBody, AfterHead::Body, AfterHead::Tunnel],
            ..Log::default()
        };
        // A response to HEAD carries Content-Length but no body.
        framer.feed(
            b"HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\n",
            39,
            0,
            1,
            &mut log,
        );
        // HTTP/1.0 without length: body until close.
        framer.feed(b"HTTP/1.0 200 OK\r\n\r\nabc", 22, 1, 1, &mut log);
        framer.feed(b"def", 3, 2, 1, &mut log);
        framer.close(
            Stamp {
                ts: 3,
                tid: 1,
                offset: 64,
            },
            &mut log,
        );
        assert_eq!(
            log.events,
            ["head 200 @0", "end @39", "head 200 @39", "end @64"]
        );
        let mut framer = Framer::new(Side::Response);
        let mut log = Log {
            answers: vec![AfterHead::Tunnel],
            ..Log::default()
        };
        framer.feed(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n\x81\x05hello",
            62,
            0,
            1,
            &mut log,
        );
        assert!(framer.is_tunnel());
        framer.feed(b"GET / HTTP/1.1\r\n\r\n", 18, 1, 1, &mut log);
        assert_eq!(log.events, ["head 101 @0"]);
    }

    #[test]
    fn garbage_is_not_http_and_never_panics() {
        let events = feed_all(Side::Request, &[b"\x16\x03\x01\x02\x00binary tls hello"]);
        assert_eq!(events, ["desync MalformedHead"]);
        let mut framer = Framer::new(Side::Request);
        let mut log = Log::default();
        let mut seed: u32 = 7;
        for i in 0..2000u64 {
            let mut bytes = [0u8; 64];
            for b in &mut bytes {
                seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12345);
                *b = (seed >> 16) as u8;
            }
            let n = (seed as usize) % 64;
            framer.feed(
                &bytes[..n],
                (n as u64) + u64::from(seed % 3),
                i,
                1,
                &mut log,
            );
        }
        assert!(!looks_like_start(Side::Request, b"GETX /"));
        assert!(looks_like_start(Side::Response, b"HTTP/1.1 200"));
    }

    #[test]
    fn oversized_head_desyncs() {
        let mut framer = Framer::new(Side::Request);
        let mut log = Log::default();
        framer.feed(b"GET / HTTP/1.1\r\n", 16, 0, 1, &mut log);
        let filler = vec![b'a'; 4096];
        for i in 0..10 {
            framer.feed(&filler, 4096, i, 1, &mut log);
        }
        assert_eq!(log.events, ["desync HeadTooLarge"]);
    }
}

//! HTTP/2 framing (RFC 9113 §4) over one direction of a connection, fed in syscall order.
//!
//! Each feed is one syscall's bytes: the captured prefix plus the count the syscall moved beyond
//! it. DATA payloads are skipped by count, so large messages past the capture limit cost nothing;
//! bytes missing anywhere else (inside a frame header or a header block) lose the framing, which
//! is said to the sink as a gap and recovered at the next syscall whose bytes start with a
//! plausible frame header.

use crate::protocol::{Stamp, budget::BudgetedBytes};

/// The client connection preface (RFC 9113 §3.4).
pub const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// Length of a frame header.
pub const HEADER_LEN: usize = 9;
/// Longest frame payload kept (header blocks, settings, resets); longer ones are skipped like
/// DATA, and a header block among them is a gap for HPACK.
const MAX_KEPT_PAYLOAD: u32 = 64 * 1024;

/// Frame types (RFC 9113 §6).
pub mod kind {
    pub const DATA: u8 = 0;
    pub const HEADERS: u8 = 1;
    pub const PRIORITY: u8 = 2;
    pub const RST_STREAM: u8 = 3;
    pub const SETTINGS: u8 = 4;
    pub const PUSH_PROMISE: u8 = 5;
    pub const PING: u8 = 6;
    pub const GOAWAY: u8 = 7;
    pub const WINDOW_UPDATE: u8 = 8;
    pub const CONTINUATION: u8 = 9;
}

/// Frame flags.
pub mod flag {
    pub const END_STREAM: u8 = 0x1;
    pub const END_HEADERS: u8 = 0x4;
    pub const PADDED: u8 = 0x8;
    pub const PRIORITY: u8 = 0x20;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    pub len: u32,
    pub kind: u8,
    pub flags: u8,
    pub stream: u32,
    /// The reserved bit before the stream id (must be zero).
    pub reserved: bool,
}

impl FrameHeader {
    #[must_use]
    pub fn parse(b: &[u8; HEADER_LEN]) -> Self {
        Self {
            len: u32::from_be_bytes([0, b[0], b[1], b[2]]),
            kind: b[3],
            flags: b[4],
            stream: u32::from_be_bytes([b[5] & 0x7f, b[6], b[7], b[8]]),
            reserved: b[5] & 0x80 != 0,
        }
    }

    /// Whether this is a frame a peer could send: a known type with the stream id and length
    /// its type requires (RFC 9113 §6). Used to recognise frames in bytes of unknown position
    /// (after attaching mid-connection or losing the framing); unknown types are legal on the
    /// wire but too weak a sign to resynchronise on.
    #[must_use]
    pub fn plausible(&self) -> bool {
        if self.reserved {
            return false;
        }
        let on_stream = self.stream != 0;
        match self.kind {
            kind::DATA | kind::HEADERS | kind::PUSH_PROMISE | kind::CONTINUATION => on_stream,
            kind::PRIORITY => on_stream && self.len == 5,
            kind::RST_STREAM => on_stream && self.len == 4,
            kind::SETTINGS => !on_stream && self.len.is_multiple_of(6),
            kind::PING => !on_stream && self.len == 8,
            kind::GOAWAY => !on_stream && self.len >= 8,
            kind::WINDOW_UPDATE => self.len == 4,
            _ => false,
        }
    }
}

/// Whether `data` (a syscall's bytes, `total` moved) starts with a plausible frame that the
/// syscall moved whole: the header's length fits in what was moved.
#[must_use]
pub fn starts_with_frame(data: &[u8], total: u64) -> bool {
    let Some(bytes) = data.first_chunk::<HEADER_LEN>() else {
        return false;
    };
    let header = FrameHeader::parse(bytes);
    header.plausible() && HEADER_LEN as u64 + u64::from(header.len) <= total
}

/// A frame as the connection sees it.
#[derive(Debug)]
pub struct Frame<'a> {
    pub header: FrameHeader,
    /// The payload, for the types whose payload matters (header blocks, settings, resets,
    /// GOAWAY); `None` for DATA and the rest, and for a kept type whose payload was too long.
    pub payload: Option<&'a [u8]>,
    /// Where the frame header started.
    pub start: Stamp,
    /// The syscall that completed the frame.
    pub end: Stamp,
}

/// Where a syscall's bytes ended in the framing ([`Framer::in_progress`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InProgress {
    /// Between two frames.
    Boundary,
    /// Inside a frame header: the frame is not known yet.
    Header,
    /// Inside this frame's payload.
    Frame(FrameHeader),
}

/// The framer's owner.
pub trait FrameSink {
    fn frame(&mut self, frame: Frame<'_>);
    /// Bytes were lost: frames (and header blocks) may be missing before the next one.
    fn gap(&mut self);
}

/// Self-metrics of one direction's framing.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct FramerStats {
    pub frames: u64,
    /// Times the framing was lost.
    pub desyncs: u64,
    /// Times it was found again.
    pub resyncs: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Skipping the client preface: this many bytes of it are still to come.
    Preface(u8),
    /// Reading frames.
    Frames,
    /// Lost: waiting for a syscall that starts with a frame.
    Desync,
}

/// One direction's framing state.
#[derive(Debug)]
pub struct Framer {
    state: State,
    /// Bytes of this direction seen.
    offset: u64,
    header: [u8; HEADER_LEN],
    header_len: usize,
    /// Where the header being read started.
    header_start: Stamp,
    /// The frame being read: its header and where it started.
    current: Option<(FrameHeader, Stamp)>,
    /// Payload bytes of `current` still to come.
    remaining: u32,
    /// Whether `current`'s payload is kept.
    keep: bool,
    /// A kept payload split across reads, held against the parsers' budget.
    payload: BudgetedBytes,
    pub stats: FramerStats,
}

impl Framer {
    /// A direction whose next byte starts the client preface.
    #[must_use]
    pub fn after_preface() -> Self {
        Self::with_state(State::Preface(PREFACE.len() as u8))
    }

    /// A direction whose next byte starts a frame.
    #[must_use]
    pub fn at_frame() -> Self {
        Self::with_state(State::Frames)
    }

    /// A direction seen from somewhere unknown: frames are looked for at syscall boundaries.
    #[must_use]
    pub fn lost() -> Self {
        Self::with_state(State::Desync)
    }

    fn with_state(state: State) -> Self {
        Self {
            state,
            offset: 0,
            header: [0; HEADER_LEN],
            header_len: 0,
            header_start: Stamp::default(),
            current: None,
            remaining: 0,
            keep: false,
            payload: BudgetedBytes::default(),
            stats: FramerStats::default(),
        }
    }

    /// Bytes of this direction seen so far.
    #[must_use]
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Whether the framing is lost (waiting for a syscall that starts with a frame).
    #[must_use]
    pub fn is_lost(&self) -> bool {
        self.state == State::Desync
    }

    /// Where the last syscall ended in the framing.
    #[must_use]
    pub fn in_progress(&self) -> InProgress {
        if self.header_len > 0 {
            return InProgress::Header;
        }
        self.current.map_or(InProgress::Boundary, |(header, _)| {
            InProgress::Frame(header)
        })
    }

    /// Feeds one syscall's captured bytes (`data`, a prefix of the `total` it moved).
    pub fn feed(&mut self, data: &[u8], total: u64, ts: u64, tid: u32, sink: &mut impl FrameSink) {
        let total = total.max(data.len() as u64);
        let base = self.offset;
        self.offset += total;
        if self.state == State::Desync {
            // A syscall that starts with the preface (a server attached to before it read a
            // new connection's first bytes) or with a frame.
            // At the direction's very first byte (a server that wrote its SETTINGS before the
            // client's preface was read) any prefix of the preface counts; further in, four
            // bytes of it.
            let preface_len = data.len().min(PREFACE.len());
            let preface = (base == 0 || preface_len >= 4)
                && preface_len > 0
                && PREFACE.starts_with(&data[..preface_len]);
            self.state = if preface {
                State::Preface(PREFACE.len() as u8)
            } else if starts_with_frame(data, total) {
                State::Frames
            } else {
                return;
            };
            self.stats.resyncs += 1;
        }
        let mut pos = 0usize;
        while pos < data.len() {
            let at = Stamp {
                ts,
                tid,
                offset: base + pos as u64,
            };
            pos += match self.state {
                State::Preface(left) => {
                    let take = usize::from(left).min(data.len() - pos);
                    let seen = PREFACE.len() - usize::from(left);
                    if data[pos..pos + take] != PREFACE[seen..seen + take] {
                        self.lose(sink);
                        return;
                    }
                    // `take` ≤ `left`, a u8.
                    let left = left - take as u8;
                    self.state = if left == 0 {
                        State::Frames
                    } else {
                        State::Preface(left)
                    };
                    take
                }
                State::Frames => self.frame_bytes(&data[pos..], at, sink),
                State::Desync => return,
            };
        }
        let missing = total - data.len() as u64;
        if missing > 0 {
            self.skip_uncaptured(missing, ts, tid, sink);
        }
    }

    /// Consumes frame bytes from the start of `data`; returns how many.
    fn frame_bytes(&mut self, data: &[u8], at: Stamp, sink: &mut impl FrameSink) -> usize {
        let end_after = |take: usize| Stamp {
            offset: at.offset + take as u64,
            ..at
        };
        if self.current.is_none() {
            if self.header_len == 0 {
                // The frame starts where its header's first byte was seen.
                self.header_start = at;
            }
            let take = (HEADER_LEN - self.header_len).min(data.len());
            self.header[self.header_len..self.header_len + take].copy_from_slice(&data[..take]);
            self.header_len += take;
            if self.header_len < HEADER_LEN {
                return take;
            }
            self.header_len = 0;
            let header = FrameHeader::parse(&self.header);
            if !header.plausible() {
                // Not a frame a peer sends: the framing is lost (or never was HTTP/2).
                self.lose(sink);
                return data.len();
            }
            self.keep = matches!(
                header.kind,
                kind::HEADERS
                    | kind::CONTINUATION
                    | kind::PUSH_PROMISE
                    | kind::RST_STREAM
                    | kind::SETTINGS
                    | kind::GOAWAY
            ) && header.len <= MAX_KEPT_PAYLOAD;
            self.remaining = header.len;
            self.payload.clear();
            self.current = Some((header, self.header_start));
            if header.len == 0 {
                self.emit(end_after(take), sink);
            }
            return take;
        }
        let take = (self.remaining as usize).min(data.len());
        if self.keep && !self.payload.extend(&data[..take]) {
            // No room in the budget: the frame is skipped like DATA, a lost block for HPACK.
            self.keep = false;
            self.payload.clear();
        }
        // `take` ≤ `remaining`, a u32.
        self.remaining -= take as u32;
        if self.remaining == 0 {
            self.emit(end_after(take), sink);
        }
        take
    }

    /// The syscall moved `missing` bytes past what was captured: skipped by count inside a
    /// payload nobody reads, a gap anywhere else.
    fn skip_uncaptured(&mut self, missing: u64, ts: u64, tid: u32, sink: &mut impl FrameSink) {
        let skippable = self.state == State::Frames
            && self.header_len == 0
            && self.current.is_some()
            && !self.keep
            && u64::from(self.remaining) >= missing;
        if !skippable {
            self.lose(sink);
            return;
        }
        // Checked above: `missing` ≤ `remaining`, a u32.
        self.remaining -= missing as u32;
        if self.remaining == 0 {
            let end = Stamp {
                ts,
                tid,
                offset: self.offset,
            };
            self.emit(end, sink);
        }
    }

    fn emit(&mut self, end: Stamp, sink: &mut impl FrameSink) {
        let Some((header, start)) = self.current.take() else {
            return;
        };
        self.stats.frames += 1;
        let payload = self.keep.then(|| self.payload.as_slice());
        sink.frame(Frame {
            header,
            payload,
            start,
            end,
        });
        self.payload.clear();
    }

    fn lose(&mut self, sink: &mut impl FrameSink) {
        self.state = State::Desync;
        self.current = None;
        self.header_len = 0;
        self.payload.clear();
        self.stats.desyncs += 1;
        sink.gap();
    }
}

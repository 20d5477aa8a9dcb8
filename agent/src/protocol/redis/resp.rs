//! RESP2/RESP3 message framing over one direction of a Redis connection, fed in syscall order.
//!
//! The framer walks the type-prefixed grammar byte by byte and keeps only what pairing and
//! naming need: the top-level type, the first two scalar elements of a top-level aggregate (a
//! bounded prefix each), the last integer element and an error's first word. Bulk payloads are
//! skipped by length, so a value larger than the capture costs nothing; nesting depth, element
//! counts and lengths are bounded, and anything else (bytes missing inside a header, a malformed
//! header) loses the stream until the owner restarts it at a syscall it trusts.

use crate::protocol::Stamp;

/// Deepest aggregate nesting followed; Redis itself replies at most a few levels deep.
const MAX_DEPTH: usize = 16;
/// Most elements one aggregate may announce (hostile `*99999999` counts beyond are a desync).
const MAX_ELEMENTS: u64 = 1 << 24;
/// Longest bulk string accepted (Redis' own `proto-max-bulk-len` default, 512 MB).
const MAX_BULK: u64 = 512 * 1024 * 1024;
/// Bytes of a header line (`*3`, `$100000`, `:42`) or of a captured word kept.
pub const WORD: usize = 32;
/// Longest inline command line or simple string followed before calling the stream lost.
const MAX_LINE: u64 = 64 * 1024;

/// A bounded prefix of a scalar element.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Word {
    bytes: [u8; WORD],
    len: u8,
    /// The element was longer than the prefix kept.
    pub cut: bool,
}

impl Word {
    fn push(&mut self, b: u8) {
        match self.bytes.get_mut(usize::from(self.len)) {
            Some(slot) => {
                *slot = b;
                self.len += 1;
            }
            None => self.cut = true,
        }
    }

    /// The prefix kept.
    #[must_use]
    pub fn bytes(&self) -> &[u8] {
        self.bytes.get(..usize::from(self.len)).unwrap_or_default()
    }

    /// The whole element, when it fit.
    #[must_use]
    pub fn whole(&self) -> Option<&[u8]> {
        (!self.cut).then(|| self.bytes())
    }
}

/// One complete top-level message and what was kept of it.
#[derive(Debug, Clone, Default)]
pub struct Message {
    pub start: Stamp,
    /// Just past the last byte (its offset is exclusive).
    pub end: Stamp,
    /// Top-level type byte (after any attribute), or `b'i'` for an inline command.
    pub kind: u8,
    /// Elements of a top-level aggregate (tokens of an inline command).
    pub elements: u64,
    /// The first two scalar elements of a top-level aggregate (command and subcommand, push
    /// kind and channel); for a top-level error, `words[0]` is its first word (the code).
    pub words: [Word; 2],
    /// The last integer element of a top-level aggregate (a subscription count).
    pub last_int: Option<i64>,
    /// Every top-level element was a bulk string (a well-formed request).
    pub all_bulk: bool,
}

impl Message {
    /// Whether the server answered with an error (`-ERR`, RESP3 blob error `!`).
    #[must_use]
    pub fn is_error(&self) -> bool {
        matches!(self.kind, b'-' | b'!')
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Expecting a type byte.
    Type,
    /// Reading a header line after type byte `kind`; `seen` bytes so far, `cr` after a `\r`.
    Line { kind: u8, seen: u64, cr: bool },
    /// Skipping a bulk payload and its CRLF; `left` bytes to go, `at` of them consumed.
    Bulk { left: u64, total: u64 },
    /// Framing lost: nothing is read until [`Framer::restart`].
    Lost,
}

#[derive(Debug, Clone, Copy)]
struct Level {
    remaining: u64,
    count: u64,
    attribute: bool,
}

/// Where the current scalar's bytes go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sink {
    None,
    Word(usize),
    Error,
}

/// Frames one direction.
#[derive(Debug)]
pub struct Framer {
    requests: bool,
    offset: u64,
    state: State,
    stack: Vec<Level>,
    line: Word,
    sink: Sink,
    current: Option<Message>,
    /// Inline command: in a token, tokens counted so far.
    inline: Option<(bool, u64)>,
    /// Where the message in progress began and its type, when the stream was lost inside it.
    pub lost_inside: Option<(Stamp, u8)>,
}

impl Framer {
    /// A framer for the request direction (`requests`: only arrays of bulk strings or inline
    /// commands are messages) or the reply direction; it starts lost when `lost`.
    #[must_use]
    pub fn new(requests: bool, lost: bool) -> Self {
        Self {
            requests,
            offset: 0,
            state: if lost { State::Lost } else { State::Type },
            stack: Vec::new(),
            line: Word::default(),
            sink: Sink::None,
            current: None,
            inline: None,
            lost_inside: None,
        }
    }

    /// Bytes of the direction fed so far.
    #[must_use]
    pub fn offset(&self) -> u64 {
        self.offset
    }

    #[must_use]
    pub fn lost(&self) -> bool {
        self.state == State::Lost
    }

    /// Frames anew from the next byte (a syscall start the owner trusts).
    pub fn restart(&mut self) {
        self.state = State::Type;
        self.lost_inside = None;
        self.stack.clear();
        self.current = None;
        self.inline = None;
        self.sink = Sink::None;
    }

    /// Stops framing (the other direction lost what this one answers); offsets keep counting.
    pub fn abandon(&mut self) {
        self.lose();
        self.lost_inside = None;
    }

    fn lose(&mut self) {
        self.state = State::Lost;
        self.stack.clear();
        self.lost_inside = self.current.take().map(|m| (m.start, m.kind));
        self.inline = None;
    }

    /// Frames one syscall's captured `data` of `total` bytes; complete messages go to `out`.
    /// Returns false when the stream was lost in this syscall.
    pub fn feed(
        &mut self,
        data: &[u8],
        total: u64,
        ts: u64,
        tid: u32,
        out: &mut Vec<Message>,
    ) -> bool {
        let base = self.offset;
        self.offset = base.saturating_add(total.max(data.len() as u64));
        let was_lost = self.lost();
        let mut pos = 0usize;
        while pos < data.len() && !self.lost() {
            let at = Stamp {
                ts,
                tid,
                offset: base + pos as u64,
            };
            if let State::Bulk { left, total } = self.state {
                // Captured payload bytes: a word's prefix, and the CRLF checked when seen.
                let take = usize::try_from(left)
                    .unwrap_or(usize::MAX)
                    .min(data.len() - pos);
                let chunk = data.get(pos..pos + take).unwrap_or_default();
                let consumed = total - left;
                for (i, &b) in chunk.iter().enumerate() {
                    let index = consumed + i as u64;
                    if index + 2 >= total {
                        let want = if index + 2 == total { b'\r' } else { b'\n' };
                        if b != want {
                            self.lose();
                            return false;
                        }
                    } else {
                        self.sink_byte(b);
                    }
                }
                pos += take;
                let left = left - take as u64;
                self.state = State::Bulk { left, total };
                if left == 0 {
                    self.state = State::Type;
                    self.value_done(false, base + pos as u64, ts, tid, out);
                }
                continue;
            }
            let Some(&b) = data.get(pos) else { break };
            pos += 1;
            self.byte(b, at, out);
        }
        let uncaptured = total.saturating_sub(data.len() as u64);
        if uncaptured > 0 && !self.lost() {
            match self.state {
                State::Bulk { left, total } if left > uncaptured => {
                    // The prefix kept of a word stops at the gap.
                    if let (Sink::Word(i), Some(m)) = (self.sink, self.current.as_mut())
                        && let Some(word) = m.words.get_mut(i)
                    {
                        word.cut = true;
                    }
                    self.sink = Sink::None;
                    self.state = State::Bulk {
                        left: left - uncaptured,
                        total,
                    };
                }
                State::Bulk { left, .. } if left == uncaptured => {
                    self.state = State::Type;
                    let end = self.offset;
                    self.value_done(false, end, ts, tid, out);
                }
                // Unseen bytes in a header, or after a whole message, frame unknown messages.
                _ => self.lose(),
            }
        }
        was_lost || !self.lost()
    }

    fn sink_byte(&mut self, b: u8) {
        let Some(message) = self.current.as_mut() else {
            return;
        };
        match self.sink {
            Sink::None => {}
            Sink::Word(i) => {
                if let Some(word) = message.words.get_mut(i) {
                    word.push(b);
                }
            }
            Sink::Error => {
                if b == b' ' || b == b'\r' || b == b'\n' {
                    self.sink = Sink::None;
                } else {
                    message.words[0].push(b);
                }
            }
        }
    }

    fn byte(&mut self, b: u8, at: Stamp, out: &mut Vec<Message>) {
        match self.state {
            State::Type => self.type_byte(b, at, out),
            State::Line { kind, seen, cr } => self.line_byte(kind, seen, cr, b, at, out),
            State::Bulk { .. } | State::Lost => {}
        }
    }

    fn type_byte(&mut self, b: u8, at: Stamp, out: &mut Vec<Message>) {
        let top = self.stack.is_empty();
        if top && self.current.is_none() {
            self.current = Some(Message {
                start: at,
                all_bulk: true,
                ..Message::default()
            });
        }
        if self.requests {
            let valid = if top {
                // Requests are arrays; an inline command starts with a letter.
                b == b'*' || b.is_ascii_alphabetic()
            } else {
                b == b'$'
            };
            if !valid {
                self.lose();
                return;
            }
            if top && b != b'*' {
                self.inline = Some((true, 1));
                if let Some(m) = self.current.as_mut() {
                    m.kind = b'i';
                    m.words[0].push(b.to_ascii_uppercase());
                }
                self.state = State::Line {
                    kind: b'i',
                    seen: 1,
                    cr: false,
                };
                return;
            }
        }
        if !matches!(
            b,
            b'+' | b'-'
                | b':'
                | b'$'
                | b'*'
                | b'_'
                | b'#'
                | b','
                | b'('
                | b'!'
                | b'='
                | b'%'
                | b'~'
                | b'>'
                | b'|'
        ) {
            self.lose();
            return;
        }
        let index = self.depth1_index();
        if let Some(m) = self.current.as_mut() {
            if top && b != b'|' {
                m.kind = b;
            }
            if index.is_some() && b != b'$' {
                m.all_bulk = false;
            }
        }
        self.line = Word::default();
        self.sink = match (top, index, b) {
            (true, _, b'-') => Sink::Error,
            (_, Some(0), b'+' | b'$' | b'=') => Sink::Word(0),
            (_, Some(1), b'+' | b'$' | b'=') => Sink::Word(1),
            _ => Sink::None,
        };
        self.state = State::Line {
            kind: b,
            seen: 0,
            cr: false,
        };
        let _ = out;
    }

    /// Index of the next element among the top-level aggregate's, when directly inside it.
    fn depth1_index(&self) -> Option<u64> {
        match self.stack.as_slice() {
            [level] if !level.attribute => Some(level.count - level.remaining),
            _ => None,
        }
    }

    fn line_byte(
        &mut self,
        kind: u8,
        seen: u64,
        cr: bool,
        b: u8,
        at: Stamp,
        out: &mut Vec<Message>,
    ) {
        if b == b'\n' {
            if !cr {
                self.lose();
                return;
            }
            let end = at.offset + 1;
            self.line_done(kind, end, at, out);
            return;
        }
        if cr || seen >= MAX_LINE {
            self.lose();
            return;
        }
        self.state = State::Line {
            kind,
            seen: seen + 1,
            cr: b == b'\r',
        };
        if b == b'\r' {
            return;
        }
        match kind {
            b'i' => self.inline_byte(b),
            b'+' | b'-' => {
                if self.sink == Sink::Error || matches!(self.sink, Sink::Word(_)) {
                    self.sink_byte(b);
                }
            }
            _ => {
                self.line.push(b);
                if self.line.cut {
                    self.lose();
                }
            }
        }
    }

    fn inline_byte(&mut self, b: u8) {
        let Some((in_token, tokens)) = self.inline else {
            return;
        };
        let space = b == b' ' || b == b'\t';
        let tokens = if !space && !in_token {
            tokens + 1
        } else {
            tokens
        };
        if let Some(m) = self.current.as_mut() {
            match tokens {
                1 if !space => m.words[0].push(b.to_ascii_uppercase()),
                2 if !space => m.words[1].push(b),
                _ => {}
            }
        }
        self.inline = Some((!space, tokens));
    }

    /// A header line is complete: decide what follows it.
    fn line_done(&mut self, kind: u8, end: u64, at: Stamp, out: &mut Vec<Message>) {
        self.state = State::Type;
        let (ts, tid) = (at.ts, at.tid);
        match kind {
            b'i' => {
                let tokens = self.inline.take().map_or(0, |(_, n)| n);
                if let Some(m) = self.current.as_mut() {
                    m.elements = tokens;
                }
                self.value_done(false, end, ts, tid, out);
            }
            b'+' | b'-' | b'#' | b',' | b'(' => self.value_done(false, end, ts, tid, out),
            b'_' => {
                if self.line.bytes().is_empty() {
                    self.value_done(false, end, ts, tid, out);
                } else {
                    self.lose();
                }
            }
            b':' => {
                let Some(n) = parse_signed(self.line.bytes()) else {
                    self.lose();
                    return;
                };
                if self.depth1_index().is_some()
                    && let Some(m) = self.current.as_mut()
                {
                    m.last_int = Some(n);
                }
                self.value_done(false, end, ts, tid, out);
            }
            b'$' | b'!' | b'=' => match parse_signed(self.line.bytes()) {
                Some(-1) if kind == b'$' => self.value_done(false, end, ts, tid, out),
                Some(n) if (0..=MAX_BULK as i64).contains(&n) => {
                    if kind == b'!' && self.stack.is_empty() {
                        self.sink = Sink::Error;
                    }
                    let total = n.unsigned_abs() + 2;
                    self.state = State::Bulk { left: total, total };
                }
                _ => self.lose(),
            },
            _ => {
                // Aggregates: `*` `%` `~` `>` `|`.
                let Some(n) = parse_signed(self.line.bytes()) else {
                    self.lose();
                    return;
                };
                if n == -1 && kind == b'*' {
                    self.value_done(false, end, ts, tid, out);
                    return;
                }
                let Ok(n) = u64::try_from(n) else {
                    self.lose();
                    return;
                };
                let count = if matches!(kind, b'%' | b'|') {
                    n * 2
                } else {
                    n
                };
                if count > MAX_ELEMENTS || self.stack.len() >= MAX_DEPTH {
                    self.lose();
                    return;
                }
                if self.stack.is_empty()
                    && kind != b'|'
                    && let Some(m) = self.current.as_mut()
                {
                    m.elements = count;
                }
                let attribute = kind == b'|';
                if count == 0 {
                    self.value_done(attribute, end, ts, tid, out);
                } else {
                    self.stack.push(Level {
                        remaining: count,
                        count,
                        attribute,
                    });
                }
            }
        }
    }

    /// A value is complete (an attribute's when `attribute`); close the aggregates it completes
    /// and, at the top level, the message.
    fn value_done(
        &mut self,
        mut attribute: bool,
        end: u64,
        ts: u64,
        tid: u32,
        out: &mut Vec<Message>,
    ) {
        self.sink = Sink::None;
        loop {
            let Some(level) = self.stack.last_mut() else {
                if attribute {
                    // An attribute precedes the reply it annotates: the message goes on.
                    return;
                }
                if let Some(mut m) = self.current.take() {
                    m.end = Stamp {
                        ts,
                        tid,
                        offset: end,
                    };
                    if self.requests && m.kind == b'*' && (!m.all_bulk || m.elements == 0) {
                        self.lose();
                        return;
                    }
                    out.push(m);
                }
                return;
            };
            if !attribute {
                level.remaining = level.remaining.saturating_sub(1);
            }
            if level.remaining > 0 {
                return;
            }
            attribute = level.attribute;
            self.stack.pop();
        }
    }
}

/// A decimal integer as RESP writes it (`-1`, `42`), bounded to what fits.
fn parse_signed(bytes: &[u8]) -> Option<i64> {
    let (negative, digits) = match bytes.split_first() {
        Some((b'-', rest)) => (true, rest),
        _ => (false, bytes),
    };
    if digits.is_empty() || digits.len() > 18 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let mut n: i64 = 0;
    for &d in digits {
        n = n * 10 + i64::from(d - b'0');
    }
    Some(if negative { -n } else { n })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(requests: bool, chunks: &[(&[u8], u64)]) -> (Vec<Message>, bool) {
        let mut framer = Framer::new(requests, false);
        let mut out = Vec::new();
        for (i, (data, total)) in chunks.iter().enumerate() {
            framer.feed(data, *total, i as u64, 1, &mut out);
        }
        (out, framer.lost())
    }

    #[test]
    fn replies_of_every_type_frame_one_message_each() {
        let bytes: &[u8] =
            b"+OK\r\n-ERR bad thing\r\n:5\r\n$3\r\nabc\r\n$-1\r\n*2\r\n:1\r\n*1\r\n+x\r\n\
_\r\n#t\r\n,1.5\r\n(12\r\n!9\r\nSYNTAX no\r\n=7\r\ntxt:abc\r\n%1\r\n+k\r\n:1\r\n~0\r\n\
>3\r\n$7\r\nmessage\r\n$1\r\nc\r\n$1\r\nv\r\n|1\r\n+ttl\r\n:3\r\n+after-attribute\r\n*-1\r\n";
        let (out, lost) = frame(false, &[(bytes, bytes.len() as u64)]);
        assert!(!lost);
        let kinds: Vec<u8> = out.iter().map(|m| m.kind).collect();
        assert_eq!(kinds, b"+-:$$*_#,(!=%~>+*");
        assert_eq!(out[1].words[0].bytes(), b"ERR");
        assert_eq!(out[10].words[0].bytes(), b"SYNTAX");
        assert_eq!(out[14].words[0].bytes(), b"message");
        // The attribute is part of the reply it precedes.
        let attribute = bytes
            .windows(2)
            .position(|w| w == b"|1")
            .expect("attribute");
        assert_eq!(out[15].start.offset, attribute as u64);
        assert_eq!(out.last().map(|m| m.end.offset), Some(bytes.len() as u64));
    }

    #[test]
    fn a_bulk_beyond_the_capture_is_skipped_by_length() {
        let head = b"$100000\r\nxxxx";
        let (out, lost) = frame(false, &[(head, 100_011 - 3), (b"x\r\n+OK\r\n", 8)]);
        assert!(!lost);
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].end.offset, 100_011);
    }

    #[test]
    fn hostile_counts_and_depths_lose_the_stream_without_allocating() {
        for bytes in [
            &b"*99999999\r\n"[..],
            b"$99999999999\r\n",
            b"*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n",
            b"?what\r\n",
            b"$3\r\nabcd\r\n",
        ] {
            let (out, lost) = frame(false, &[(bytes, bytes.len() as u64)]);
            assert!(lost && out.is_empty(), "{bytes:?}");
        }
    }

    #[test]
    fn requests_are_arrays_of_bulk_strings_or_inline_commands() {
        let bytes = b"*2\r\n$3\r\nget\r\n$1\r\nk\r\nPING\r\nset a b\r\n";
        let (out, lost) = frame(true, &[(bytes, bytes.len() as u64)]);
        assert!(!lost);
        assert_eq!(out.len(), 3);
        assert_eq!(out[0].words[0].bytes(), b"get");
        assert_eq!(out[1].words[0].bytes(), b"PING");
        assert_eq!((out[2].elements, out[2].words[1].bytes()), (3, &b"a"[..]));
        let (_, lost) = frame(true, &[(b"*1\r\n:1\r\n", 7)]);
        assert!(lost);
    }
}

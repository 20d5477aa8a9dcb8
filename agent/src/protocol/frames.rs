//! Length-prefixed message framing for one direction of a datastore connection (`PostgreSQL`'s
//! `tag | i32 len` messages, `MySQL`'s `u24 len | seq` packets), across syscalls.
//!
//! A header split across syscalls is assembled (a `MySQL` server reads the 4-byte header alone);
//! a body is skipped by length, keeping only the bounded prefix its protocol asks for. Bytes a
//! syscall moved but the capture did not copy are skipped by count while they fall inside a
//! body; when they cover a header the framing is lost ([`Lost`]): the caller clears what it
//! pairs and gives the connection up, since nothing after can be proven a message boundary.

use super::Stamp;

/// Longest header a protocol uses.
const MAX_HEAD: usize = 8;

/// The framing of this direction is lost: where the next message starts is unknown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lost {
    /// A header that cannot be one, in captured bytes: not this protocol's (or corrupt).
    Impossible,
    /// Uncaptured bytes hid a header.
    Uncaptured,
}

/// One complete message (or packet).
#[derive(Debug, Default)]
pub struct Message {
    /// The protocol's tag (`PostgreSQL`'s type byte, `MySQL`'s sequence number).
    pub tag: u8,
    /// Body length as the header gave it.
    pub len: u64,
    /// The kept prefix of the body (as much as asked for and captured).
    pub body: Vec<u8>,
    /// Part of the body was not captured, or was longer than what was kept.
    pub cut: bool,
    /// Where the message's first byte was seen.
    pub start: Stamp,
    /// Where its last byte was seen (`offset` is that byte's).
    pub end: Stamp,
}

/// How a protocol reads its headers.
pub trait Header {
    /// Bytes of the next header.
    fn head_len(&self) -> usize;
    /// `(tag, body length)` from a header of `head_len` bytes, `None` if it is impossible.
    fn parse(&self, head: &[u8]) -> Option<(u8, u64)>;
    /// How many body bytes of a message with `tag` to keep.
    fn keep(&self, tag: u8) -> usize;
}

/// One direction's framing state.
#[derive(Debug, Default)]
pub struct Framer {
    /// Stream offset of the next byte.
    offset: u64,
    head: [u8; MAX_HEAD],
    head_have: usize,
    head_start: Stamp,
    /// The message whose body is being read, and body bytes still to come.
    current: Option<(Message, u64)>,
}

impl Framer {
    /// Bytes of this direction seen so far.
    #[must_use]
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Whether the framer is between messages (no header or body begun).
    #[must_use]
    pub fn at_boundary(&self) -> bool {
        self.head_have == 0 && self.current.is_none()
    }

    /// Skips `n` raw bytes outside any message (a one-byte SSL answer); only between messages.
    pub fn skip_raw(&mut self, n: u64) {
        self.offset = self.offset.saturating_add(n);
    }

    /// Where the last byte fed so far was, as a syscall of thread `tid` at `ts` saw it.
    #[must_use]
    pub fn last_byte(&self, ts: u64, tid: u32) -> Stamp {
        Stamp {
            ts,
            tid,
            offset: self.offset.saturating_sub(1),
        }
    }

    /// Forgets the message in progress (its framing was lost), still counting offsets: framing
    /// resumes where the caller proves a message starts.
    pub fn restart(&mut self) {
        *self = Self {
            offset: self.offset,
            ..Self::default()
        };
    }

    /// Skips a syscall's `total` bytes without framing them (the rest of a reply whose framing
    /// was lost); returns where the last of them was.
    pub fn skip_unframed(&mut self, total: u64, ts: u64, tid: u32) -> Stamp {
        self.skip_raw(total);
        self.last_byte(ts, tid)
    }

    /// Frames one syscall's bytes (`data` captured of `total`), appending complete messages to
    /// `out`.
    ///
    /// # Errors
    /// [`Lost`] when uncaptured bytes covered a header or a header was impossible; messages
    /// completed before that are in `out`.
    pub fn feed(
        &mut self,
        header: &impl Header,
        data: &[u8],
        total: u64,
        ts: u64,
        tid: u32,
        out: &mut Vec<Message>,
    ) -> Result<(), Lost> {
        let stamp = |offset: u64| Stamp { ts, tid, offset };
        let mut rest = data;
        while !rest.is_empty() {
            if let Some((message, left)) = self.current.as_mut() {
                let n = usize::try_from(*left).unwrap_or(usize::MAX).min(rest.len());
                let room = header.keep(message.tag).saturating_sub(message.body.len());
                let (chunk, after) = rest.split_at(n);
                message.body.extend_from_slice(&chunk[..room.min(n)]);
                message.cut |= room < n;
                *left -= n as u64;
                self.offset += n as u64;
                rest = after;
                if *left == 0 {
                    self.finish(stamp(self.offset.saturating_sub(1)), out);
                }
                continue;
            }
            let need = header.head_len().min(MAX_HEAD);
            if self.head_have == 0 {
                self.head_start = stamp(self.offset);
            }
            let n = (need - self.head_have).min(rest.len());
            self.head[self.head_have..self.head_have + n].copy_from_slice(&rest[..n]);
            self.head_have += n;
            self.offset += n as u64;
            rest = &rest[n..];
            if self.head_have < need {
                continue;
            }
            self.head_have = 0;
            let (tag, len) = header.parse(&self.head[..need]).ok_or(Lost::Impossible)?;
            let message = Message {
                tag,
                len,
                body: Vec::new(),
                cut: false,
                start: self.head_start,
                end: self.head_start,
            };
            self.current = Some((message, len));
            if len == 0 {
                self.finish(stamp(self.offset.saturating_sub(1)), out);
            }
        }
        let uncaptured = total.saturating_sub(data.len() as u64);
        if uncaptured == 0 {
            return Ok(());
        }
        self.offset = self.offset.saturating_add(uncaptured);
        match self.current.as_mut() {
            Some((message, left)) if *left >= uncaptured && self.head_have == 0 => {
                *left -= uncaptured;
                message.cut = true;
                if *left == 0 {
                    self.finish(stamp(self.offset.saturating_sub(1)), out);
                }
                Ok(())
            }
            _ => {
                self.current = None;
                self.head_have = 0;
                Err(Lost::Uncaptured)
            }
        }
    }

    fn finish(&mut self, end: Stamp, out: &mut Vec<Message>) {
        if let Some((mut message, _)) = self.current.take() {
            message.end = end;
            out.push(message);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `tag | u8 len` messages, keeping 3 body bytes.
    struct Tiny;

    impl Header for Tiny {
        fn head_len(&self) -> usize {
            2
        }
        fn parse(&self, head: &[u8]) -> Option<(u8, u64)> {
            (head[0] != 0).then(|| (head[0], u64::from(head[1])))
        }
        fn keep(&self, _: u8) -> usize {
            3
        }
    }

    #[test]
    fn headers_and_bodies_split_anywhere_frame_the_same() {
        let bytes = b"a\x05hellob\x00c\x02xy";
        for cut in 0..bytes.len() {
            let mut framer = Framer::default();
            let mut out = Vec::new();
            let (one, two) = bytes.split_at(cut);
            framer
                .feed(&Tiny, one, one.len() as u64, 1, 1, &mut out)
                .expect("framed");
            framer
                .feed(&Tiny, two, two.len() as u64, 2, 1, &mut out)
                .expect("framed");
            let found: Vec<(u8, &[u8], bool)> = out
                .iter()
                .map(|m| (m.tag, m.body.as_slice(), m.cut))
                .collect();
            let want: [(u8, &[u8], bool); 3] = [
                (b'a', b"hel", true),
                (b'b', b"", false),
                (b'c', b"xy", false),
            ];
            assert_eq!(found, want, "cut at {cut}");
            assert_eq!(out[0].start.offset, 0);
            assert_eq!(out[0].end.offset, 6);
        }
    }

    #[test]
    fn uncaptured_bytes_inside_a_body_are_skipped_and_over_a_header_lose_framing() {
        let mut framer = Framer::default();
        let mut out = Vec::new();
        framer
            .feed(&Tiny, b"a\x0aab", 12, 1, 1, &mut out)
            .expect("framed");
        assert_eq!(out.len(), 1);
        assert!(out[0].cut);
        framer
            .feed(&Tiny, b"b\x01x", 3, 2, 1, &mut out)
            .expect("framed");
        assert_eq!(framer.offset(), 15);
        assert_eq!(
            framer.feed(&Tiny, b"c\x01", 10, 3, 1, &mut out),
            Err(Lost::Uncaptured)
        );
        assert!(framer.feed(&Tiny, b"\x00\x01", 2, 3, 1, &mut out).is_err());
    }
}

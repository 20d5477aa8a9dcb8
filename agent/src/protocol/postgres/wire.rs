//! The protocol's wire: message headers (untagged during startup), big-endian lengths, C strings
//! and the `SQLSTATE` of an `ErrorResponse`.

use super::{KEEP_ERROR, KEEP_QUERY, MAX_STARTUP};
use crate::protocol::frames::Header;

/// Headers of one direction: untagged `i32 len` during startup (client), else `tag | i32 len`.
pub(super) struct Head {
    pub(super) untagged: bool,
    pub(super) request: bool,
}

impl Header for Head {
    fn head_len(&self) -> usize {
        if self.untagged { 4 } else { 5 }
    }

    fn parse(&self, head: &[u8]) -> Option<(u8, u64)> {
        let (tag, len) = if self.untagged {
            (0, be32(head)?)
        } else {
            (*head.first()?, be32(head.get(1..)?)?)
        };
        // The length counts itself; a tag byte of 0 is never a message.
        if len < 4 || (!self.untagged && tag == 0) || (self.untagged && len > MAX_STARTUP) {
            return None;
        }
        Some((tag, u64::from(len - 4)))
    }

    fn keep(&self, tag: u8) -> usize {
        match (self.request, tag) {
            // Startup: only the parameters' start matters (database, user), not sent secrets.
            (true, 0) => 1024,
            (true, b'Q' | b'P' | b'B' | b'E' | b'C') => KEEP_QUERY,
            (false, b'E') => KEEP_ERROR,
            _ => 0,
        }
    }
}

pub(super) fn be32(b: &[u8]) -> Option<u32> {
    Some(u32::from_be_bytes(b.get(..4)?.try_into().ok()?))
}

/// The text up to its NUL, or all of it when the NUL was not kept.
pub(super) fn text_of(body: &[u8]) -> &[u8] {
    cstr(body).unwrap_or(body)
}

/// The NUL-terminated string at the start of `body` (without its NUL).
pub(super) fn cstr(body: &[u8]) -> Option<&[u8]> {
    body.iter().position(|&b| b == 0).map(|n| &body[..n])
}

/// The `SQLSTATE` (`C` field) of an `ErrorResponse`: five letters or digits, else none. The
/// message and detail fields are never read.
pub(super) fn sqlstate(body: &[u8]) -> Option<Box<str>> {
    let mut rest = body;
    while let Some((&field, after)) = rest.split_first() {
        if field == 0 {
            return None;
        }
        let value = cstr(after)?;
        if field == b'C' {
            return (value.len() == 5 && value.iter().all(u8::is_ascii_alphanumeric))
                .then(|| String::from_utf8_lossy(value).into());
        }
        rest = &after[value.len() + 1..];
    }
    None
}

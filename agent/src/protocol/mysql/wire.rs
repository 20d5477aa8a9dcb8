//! The classic protocol's wire: packet headers, little-endian and length-encoded integers, the
//! greeting, OK and ERR packets, and the capability and command numbers.

use super::DbSystem;
use crate::protocol::frames::Header;

pub(super) mod caps {
    pub const CONNECT_WITH_DB: u32 = 0x8;
    pub const COMPRESS: u32 = 0x20;
    pub const PROTOCOL_41: u32 = 0x200;
    pub const SSL: u32 = 0x800;
    pub const SECURE_CONNECTION: u32 = 0x8000;
    pub const PLUGIN_AUTH_LENENC: u32 = 0x20_0000;
    pub const DEPRECATE_EOF: u32 = 0x100_0000;
}

pub(super) mod com {
    pub const QUIT: u8 = 0x01;
    pub const INIT_DB: u8 = 0x02;
    pub const QUERY: u8 = 0x03;
    pub const PING: u8 = 0x0e;
    pub const CHANGE_USER: u8 = 0x11;
    pub const STMT_PREPARE: u8 = 0x16;
    pub const STMT_EXECUTE: u8 = 0x17;
    pub const STMT_SEND_LONG_DATA: u8 = 0x18;
    pub const STMT_CLOSE: u8 = 0x19;
    pub const STMT_RESET: u8 = 0x1a;
    pub const SET_OPTION: u8 = 0x1b;
    pub const RESET_CONNECTION: u8 = 0x1f;
}

/// `SERVER_MORE_RESULTS_EXISTS` in a reply's status flags: another result follows.
pub(super) const MORE_RESULTS: u16 = 0x8;
/// A packet this long continues in the next one.
pub(super) const MAX_PACKET: u64 = 0xFF_FFFF;

pub(super) fn header(b: &[u8]) -> Option<(u64, u8)> {
    let h = b.get(..4)?;
    Some((
        u64::from(h[0]) | u64::from(h[1]) << 8 | u64::from(h[2]) << 16,
        h[3],
    ))
}

pub(super) fn le16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

pub(super) fn le32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

/// A length-encoded integer at `at`: (value, bytes used).
pub(super) fn lenenc(b: &[u8], at: usize) -> Option<(u64, usize)> {
    let first = *b.get(at)?;
    let wide = |n: usize| {
        let bytes = b.get(at + 1..at + 1 + n)?;
        Some((
            bytes.iter().rev().fold(0u64, |v, &x| v << 8 | u64::from(x)),
            n + 1,
        ))
    };
    match first {
        0..=0xfa => Some((u64::from(first), 1)),
        0xfc => wide(2),
        0xfd => wide(3),
        0xfe => wide(8),
        _ => None,
    }
}

/// A greeting's (system, capabilities), checked strictly.
pub(super) fn greeting(body: &[u8]) -> Option<(DbSystem, u32)> {
    if body.first() != Some(&0x0a) {
        return None;
    }
    let version_len = body.get(1..)?.iter().take(65).position(|&b| b == 0)?;
    let version = &body[1..=version_len];
    if version.is_empty()
        || !version.first().is_some_and(u8::is_ascii_digit)
        || !version.iter().all(|b| b.is_ascii_graphic() || *b == b' ')
    {
        return None;
    }
    // Connection id, 8 bytes of scramble, a zero filler, capabilities.
    let at = 1 + version_len + 1;
    if body.get(at + 12) != Some(&0) {
        return None;
    }
    let low = le16(body, at + 13)?;
    let high = le16(body, at + 18).unwrap_or(0);
    let caps = u32::from(low) | u32::from(high) << 16;
    if caps & caps::PROTOCOL_41 == 0 {
        return None;
    }
    let mariadb = version.windows(7).any(|w| w == b"MariaDB");
    Some((
        if mariadb {
            DbSystem::Mariadb
        } else {
            DbSystem::Mysql
        },
        caps,
    ))
}

pub(super) struct Head {
    pub(super) keep: usize,
}

impl Header for Head {
    fn head_len(&self) -> usize {
        4
    }

    fn parse(&self, head: &[u8]) -> Option<(u8, u64)> {
        header(head).map(|(len, seq)| (seq, len))
    }

    fn keep(&self, _: u8) -> usize {
        self.keep
    }
}

/// The status flags of an OK packet (`0x00` or, ending a result set, `0xFE`).
pub(super) fn ok_status(body: &[u8]) -> Option<u16> {
    let (_, a) = lenenc(body, 1)?;
    let (_, b) = lenenc(body, 1 + a)?;
    le16(body, 1 + a + b)
}

/// An ERR packet's error number; its SQL state and message are never read.
pub(super) fn error_code(body: &[u8]) -> Option<Box<str>> {
    le16(body, 1).map(|code| code.to_string().into())
}

//! What one agent tells another: "the request with this key on this connection was written by
//! this CLIENT span". One UDP datagram each, authenticated with the agents' shared secret.
//! Four kinds ([`Kind`]): the client's agent announces it unasked (to the server's address);
//! or the server's agent asks for it (the in-band mode's asking form named the client's agent
//! and span id, or its connection form named the agent and the connection; the trace id is
//! zero), and the client's agent answers (to the asker).
//!
//! Layout (big-endian, 108 bytes): `SSPN`, version, kind, 2 reserved bytes; client address (16
//! bytes, IPv4 mapped into IPv6) and port; server address and port; the request's key on the
//! connection (TCP sequence number of its first byte, or HTTP/2 stream id); its forward key
//! (method and target hashed, 0 when the protocol has none); trace id; span id; the sender's
//! wall clock in ms; then the first 16 bytes of HMAC-SHA256 over everything before it.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};

use hmac::{Hmac, Mac as _};
use sha2::Sha256;

use crate::trace::ids::{SpanId, TraceId};

const MAGIC: &[u8; 4] = b"SSPN";
const VERSION: u8 = 1;

/// What a message is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A CLIENT span and the request it wrote, sent unasked to the server's address.
    Announce = 1,
    /// The server's agent asks for the CLIENT span with this span id (trace id zero), the
    /// connection and key as the server sees them: its request's option named this agent.
    Ask = 2,
    /// The answer to an [`Kind::Ask`] or [`Kind::AskStream`]: the CLIENT span, with the
    /// asker's connection and key.
    Answer = 3,
    /// The server's agent asks for the CLIENT span of the stream `key` on the connection whose
    /// token (the in-band connection form's) is in place of the span id; trace id zero.
    AskStream = 4,
}

impl Kind {
    fn from_byte(byte: u8) -> Option<Self> {
        match byte {
            1 => Some(Self::Announce),
            2 => Some(Self::Ask),
            3 => Some(Self::Answer),
            4 => Some(Self::AskStream),
            _ => None,
        }
    }
}
pub const MAC_LEN: usize = 16;
/// Where the sender's clock sits.
const SENT_AT: usize = 84;
/// Bytes of one message.
pub const MESSAGE_LEN: usize = 4 + 4 + 18 + 18 + 8 + 8 + 16 + 8 + 8 + MAC_LEN;
/// Messages older (or newer) than this by the receiver's clock are refused: a replayed datagram
/// names a request long gone.
pub const MAX_AGE_MS: u64 = 30_000;

/// A CLIENT span as its agent announces it to the agent of the server's host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientSpan {
    pub client: SocketAddr,
    pub server: SocketAddr,
    /// The request's key on the connection, the same at both ends.
    pub key: u64,
    /// What the request asks (0 when the protocol has no such key).
    pub forward: u64,
    pub trace_id: TraceId,
    pub span_id: SpanId,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WireError {
    #[error("a peer message is {MESSAGE_LEN} bytes, got {0}")]
    Length(usize),
    #[error("not a sockspan peer message (magic, version or kind)")]
    NotOurs,
    #[error("peer message fails authentication (another secret, or altered)")]
    BadMac,
    #[error("peer message is {0} ms away from this host's clock (more than {MAX_AGE_MS})")]
    Stale(u64),
}

type HmacSha256 = Hmac<Sha256>;

fn mac(secret: &[u8], body: &[u8]) -> [u8; 32] {
    // HMAC takes a key of any length.
    let Ok(mut mac) = HmacSha256::new_from_slice(secret) else {
        return [0; 32];
    };
    mac.update(body);
    mac.finalize().into_bytes().into()
}

fn put_addr(out: &mut Vec<u8>, addr: SocketAddr) {
    let v6 = match addr.ip() {
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => v6,
    };
    out.extend_from_slice(&v6.octets());
    out.extend_from_slice(&addr.port().to_be_bytes());
}

fn get_addr(bytes: &[u8]) -> SocketAddr {
    let mut octets = [0u8; 16];
    octets.copy_from_slice(&bytes[..16]);
    let ip = Ipv6Addr::from(octets);
    let port = u16::from_be_bytes([bytes[16], bytes[17]]);
    SocketAddr::new(ip.to_canonical(), port)
}

fn u64_at(bytes: &[u8], at: usize) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&bytes[at..at + 8]);
    u64::from_be_bytes(b)
}

impl ClientSpan {
    /// The datagram, signed with `secret`, stamped `now_ms` (Unix ms).
    #[cfg(any(test, feature = "fuzz"))]
    #[must_use]
    pub fn encode(&self, kind: Kind, secret: &[u8], now_ms: u64) -> Vec<u8> {
        let mut out = Vec::with_capacity(MESSAGE_LEN);
        self.encode_into(kind, secret, now_ms, &mut out);
        out
    }

    /// As [`ClientSpan::encode`], into `out` (cleared first): the sender reuses one buffer.
    pub fn encode_into(&self, kind: Kind, secret: &[u8], now_ms: u64, out: &mut Vec<u8>) {
        out.clear();
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&[VERSION, kind as u8, 0, 0]);
        put_addr(out, self.client);
        put_addr(out, self.server);
        out.extend_from_slice(&self.key.to_be_bytes());
        out.extend_from_slice(&self.forward.to_be_bytes());
        out.extend_from_slice(&self.trace_id);
        out.extend_from_slice(&self.span_id);
        out.extend_from_slice(&now_ms.to_be_bytes());
        let tag = mac(secret, out);
        out.extend_from_slice(&tag[..MAC_LEN]);
    }

    /// Checks and reads one datagram received at `now_ms`.
    ///
    /// # Errors
    /// Wrong length, not ours, failed authentication, or too old/new.
    pub fn decode(bytes: &[u8], secret: &[u8], now_ms: u64) -> Result<(Kind, Self), WireError> {
        if bytes.len() != MESSAGE_LEN {
            return Err(WireError::Length(bytes.len()));
        }
        let kind = Kind::from_byte(bytes[5]);
        let Some(kind) = kind.filter(|_| &bytes[..4] == MAGIC && bytes[4] == VERSION) else {
            return Err(WireError::NotOurs);
        };
        if bytes[6..8] != [0, 0] {
            return Err(WireError::NotOurs);
        }
        let (body, tag) = bytes.split_at(MESSAGE_LEN - MAC_LEN);
        let expected = mac(secret, body);
        // Constant time, so that timing tells a forger nothing about the tag.
        let same = expected[..MAC_LEN]
            .iter()
            .zip(tag)
            .fold(0u8, |acc, (a, b)| acc | (a ^ b));
        if same != 0 {
            return Err(WireError::BadMac);
        }
        let sent_ms = u64_at(body, SENT_AT);
        let age = now_ms.abs_diff(sent_ms);
        if age > MAX_AGE_MS {
            return Err(WireError::Stale(age));
        }
        let mut trace_id = [0u8; 16];
        trace_id.copy_from_slice(&body[60..76]);
        let mut span_id = [0u8; 8];
        span_id.copy_from_slice(&body[76..84]);
        Ok((
            kind,
            Self {
                client: get_addr(&body[8..26]),
                server: get_addr(&body[26..44]),
                key: u64_at(body, 44),
                forward: u64_at(body, 52),
                trace_id,
                span_id,
            },
        ))
    }
}

/// `body` (a message without its tag, [`MESSAGE_LEN`] − 16 bytes) signed as a peer with
/// `secret` would, and the time it claims: for the fuzz target, which must get past the tag.
#[cfg(feature = "fuzz")]
#[must_use]
pub fn signed(body: &[u8], secret: &[u8]) -> Option<(Vec<u8>, u64)> {
    if body.len() != MESSAGE_LEN - MAC_LEN {
        return None;
    }
    let mut out = body.to_vec();
    out.extend_from_slice(&mac(secret, body)[..MAC_LEN]);
    Some((out, u64_at(body, SENT_AT)))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

    fn sample() -> ClientSpan {
        ClientSpan {
            client: "10.77.0.1:40312".parse().expect("addr"),
            server: "[fd00::2]:8080".parse().expect("addr"),
            key: 0xdead_beef,
            forward: 0x1234_5678_9abc_def0,
            trace_id: [7; 16],
            span_id: [9; 8],
        }
    }

    #[test]
    fn a_message_reads_back_as_sent() {
        for kind in [Kind::Announce, Kind::Ask, Kind::Answer, Kind::AskStream] {
            let bytes = sample().encode(kind, SECRET, 1_000_000);
            assert_eq!(bytes.len(), MESSAGE_LEN);
            assert_eq!(
                ClientSpan::decode(&bytes, SECRET, 1_000_500),
                Ok((kind, sample()))
            );
        }
        let mut unknown = sample().encode(Kind::Answer, SECRET, 1_000_000);
        unknown[5] = 5;
        assert_eq!(
            ClientSpan::decode(&unknown, SECRET, 1_000_000),
            Err(WireError::NotOurs)
        );
    }

    #[test]
    fn another_secret_an_altered_byte_or_an_old_message_is_refused() {
        let bytes = sample().encode(Kind::Announce, SECRET, 1_000_000);
        assert_eq!(
            ClientSpan::decode(&bytes, b"another secret of some length!!", 1_000_000),
            Err(WireError::BadMac)
        );
        for i in 8..MESSAGE_LEN {
            let mut altered = bytes.clone();
            altered[i] ^= 1;
            assert_eq!(
                ClientSpan::decode(&altered, SECRET, 1_000_000),
                Err(WireError::BadMac),
                "byte {i}"
            );
        }
        assert_eq!(
            ClientSpan::decode(&bytes, SECRET, 1_000_000 + MAX_AGE_MS + 1),
            Err(WireError::Stale(MAX_AGE_MS + 1))
        );
        assert_eq!(
            ClientSpan::decode(&bytes[1..], SECRET, 1_000_000),
            Err(WireError::Length(MESSAGE_LEN - 1))
        );
        let mut foreign = bytes;
        foreign[0] = b'X';
        assert_eq!(
            ClientSpan::decode(&foreign, SECRET, 1_000_000),
            Err(WireError::NotOurs)
        );
    }
}

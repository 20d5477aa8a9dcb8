//! Trace and span ids: random, as W3C Trace Context asks, from a generator seeded by the kernel.

use std::fmt::Write as _;

pub type TraceId = [u8; 16];
pub type SpanId = [u8; 8];

/// `SplitMix64`: fast, statistically good, seeded from `/dev/urandom`. Ids need to be unique and
/// unpredictable enough not to collide across hosts, not secret.
#[derive(Debug)]
pub struct IdGenerator {
    state: u64,
}

impl IdGenerator {
    #[must_use]
    pub fn from_entropy() -> Self {
        let mut seed = [0u8; 8];
        let read = std::fs::File::open("/dev/urandom")
            .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut seed));
        let mut state = u64::from_le_bytes(seed);
        if read.is_err() {
            // Fall back on time and pid: still unique per agent start.
            state = crate::clock::monotonic_ns() ^ (u64::from(std::process::id()) << 32);
        }
        Self { state }
    }

    #[cfg(test)]
    #[must_use]
    pub fn seeded(state: u64) -> Self {
        Self { state }
    }

    fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A non-zero span id.
    pub fn span_id(&mut self) -> SpanId {
        loop {
            let id = self.next_u64();
            if id != 0 {
                return id.to_be_bytes();
            }
        }
    }

    /// A non-zero trace id.
    pub fn trace_id(&mut self) -> TraceId {
        let mut id = [0u8; 16];
        id[..8].copy_from_slice(&self.next_u64().to_be_bytes());
        id[8..].copy_from_slice(&self.span_id());
        id
    }
}

/// Lower-case hex, as W3C and OTLP/JSON write ids.
#[must_use]
pub fn hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// Parses exactly `N` bytes of hex; all-zero ids are invalid.
#[must_use]
pub fn parse_hex<const N: usize>(text: &str) -> Option<[u8; N]> {
    if text.len() != N * 2 || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let mut out = [0u8; N];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&text[i * 2..i * 2 + 2], 16).ok()?;
    }
    (out != [0u8; N]).then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_distinct_and_round_trip() {
        let mut generator = IdGenerator::seeded(1);
        let a = generator.trace_id();
        let b = generator.trace_id();
        assert_ne!(a, b);
        assert_eq!(parse_hex::<16>(&hex(&a)), Some(a));
        assert_eq!(parse_hex::<8>("0000000000000000"), None);
        assert_eq!(
            parse_hex::<8>("00f067aa0ba902b7"),
            Some([0, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7])
        );
        assert_eq!(parse_hex::<8>("xyz"), None);
    }
}

//! Trace and span ids: random, as W3C Trace Context asks, from a generator seeded by the kernel.

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

/// A trace or span id as lower-case hex, as W3C and OTLP/JSON write ids, on the stack: the
/// exporters write two or three per span and need no `String` for it (formatting them with
/// `write!` per byte into `String`s was ~15 % of the agent's CPU under load).
#[derive(Clone, Copy)]
pub struct HexId {
    digits: [u8; 32],
    len: u8,
}

impl HexId {
    /// `bytes` as hex; ids longer than 16 bytes are cut at 16 (trace ids are the longest).
    #[must_use]
    pub fn new(bytes: &[u8]) -> Self {
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        let bytes = &bytes[..bytes.len().min(16)];
        let mut digits = [0u8; 32];
        for (pair, &b) in digits.chunks_exact_mut(2).zip(bytes) {
            pair[0] = DIGITS[usize::from(b >> 4)];
            pair[1] = DIGITS[usize::from(b & 0x0f)];
        }
        Self {
            digits,
            // At most 32.
            len: u8::try_from(bytes.len() * 2).unwrap_or(32),
        }
    }

    #[must_use]
    pub fn as_str(&self) -> &str {
        // Only ASCII hex digits were written.
        std::str::from_utf8(&self.digits[..usize::from(self.len)]).unwrap_or_default()
    }
}

impl serde::Serialize for HexId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
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
    fn hex_ids_are_lower_case_and_whole() {
        let span = [0x00, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7];
        assert_eq!(HexId::new(&span).as_str(), "00f067aa0ba902b7");
        let trace = [0xab; 16];
        assert_eq!(HexId::new(&trace).as_str(), "ab".repeat(16));
        assert_eq!(parse_hex::<8>(HexId::new(&span).as_str()), Some(span));
    }

    #[test]
    fn ids_are_distinct_and_round_trip() {
        let mut generator = IdGenerator::seeded(1);
        let a = generator.trace_id();
        let b = generator.trace_id();
        assert_ne!(a, b);
        assert_eq!(parse_hex::<16>(HexId::new(&a).as_str()), Some(a));
        assert_eq!(parse_hex::<8>("0000000000000000"), None);
        assert_eq!(
            parse_hex::<8>("00f067aa0ba902b7"),
            Some([0, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7])
        );
        assert_eq!(parse_hex::<8>("xyz"), None);
    }
}

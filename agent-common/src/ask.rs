//! What a request asks, as the programs tell it without a parser: a hash of an HTTP/1 request
//! line's method and target (the bytes before its second space), computed the same way on a
//! hidden request a server reads and on a request a client end writes, so that the agent's
//! budget can tell whether a proxy's upstream call may forward a request it hid
//! ([`crate::DATA_HIDDEN_SAME_ASK`]).

/// Bytes of a request's start looked at, as little-endian words.
pub const ASK_BYTES: usize = 64;
pub const ASK_WORDS: usize = ASK_BYTES / 8;

/// A request whose method and target were not read whole: it may ask anything.
pub const ANY_ASK: u32 = u32::MAX;

/// The hash of the method and target in `words` (a request's first [`ASK_BYTES`], zero-padded
/// past what was read); [`ANY_ASK`] when they hold no second space. Never 0. Branch-free
/// arithmetic (spaces found with the exact zero-byte test, the bytes before the second space
/// kept by a prefix count), so that in the programs the verifier walks one path; `one` is 1,
/// read where the compiler cannot see it, so that it cannot fold the arithmetic back into
/// comparisons (branches, in BPF).
#[inline(always)]
#[must_use]
pub fn ask_hash(words: &[u64; ASK_WORDS], one: u64) -> u32 {
    const LOW7: u64 = 0x7f7f_7f7f_7f7f_7f7f;
    const ONES: u64 = 0x0101_0101_0101_0101;
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    // Spaces in the words before, in every byte.
    let mut before: u64 = 0;
    for &word in words {
        let v = word ^ (0x20 * ONES);
        // The top bit of each byte of `v` that is zero (a space in `word`), exactly.
        let zero = !((((v & LOW7) + LOW7) | v) | LOW7);
        let spaces = zero >> 7;
        // Byte j: the spaces in bytes 0..=j of this word and in the words before (at most 64,
        // so no byte carries into the next).
        let count = spaces.wrapping_mul(ONES) + before;
        // Kept while under two: count + 0x7e stays under 0x80 (counts stay under 0x82).
        let keep = (!(count + 0x7e * ONES) & (0x80 * ONES)) >> 7;
        hash = (hash ^ (word & keep.wrapping_mul(0xff))).wrapping_mul(0x0100_0000_01b3);
        before = (count >> 56).wrapping_mul(ONES);
    }
    if before & 0xff < 2 * one {
        return ANY_ASK;
    }
    ((((hash >> 32) ^ hash) as u32) & 0x7fff_ffff) | one as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ask(bytes: &[u8]) -> u32 {
        let mut padded = [0_u8; ASK_BYTES];
        let n = bytes.len().min(ASK_BYTES);
        padded[..n].copy_from_slice(&bytes[..n]);
        let mut words = [0_u64; ASK_WORDS];
        for (i, w) in words.iter_mut().enumerate() {
            *w = u64::from_le_bytes(padded[i * 8..i * 8 + 8].try_into().expect("8 bytes"));
        }
        ask_hash(&words, 1)
    }

    #[test]
    fn a_forward_asks_what_its_request_asks() {
        let from_client =
            ask(b"GET /predict/1-23 HTTP/1.1\r\nHost: 127.0.0.1:19000\r\nUser-Agent: wrk");
        let forwarded =
            ask(b"GET /predict/1-23 HTTP/1.1\r\nHost: backend\r\nConnection: close\r\n");
        let http10 = ask(b"GET /predict/1-23 HTTP/1.0\r\n\r\n");
        assert_eq!(from_client, forwarded);
        assert_eq!(from_client, http10);
        assert_ne!(from_client, ANY_ASK);
        assert_ne!(from_client, 0);
    }

    #[test]
    fn other_targets_and_methods_ask_otherwise() {
        let base = ask(b"GET /predict/1-23 HTTP/1.1\r\n");
        for other in [
            &b"GET /predict/1-24 HTTP/1.1\r\n"[..],
            b"POST /predict/1-23 HTTP/1.1\r\n",
            b"GET /predict/1-2 HTTP/1.1\r\n",
            b"GET /predict/1-23x HTTP/1.1\r\n",
            b"GET / HTTP/1.1\r\n",
        ] {
            assert_ne!(ask(other), base, "{}", String::from_utf8_lossy(other));
        }
        // Spaces at every word boundary.
        assert_ne!(ask(b"GET /1234567 HTTP/1.1"), ask(b"GET /1234568 HTTP/1.1"));
        assert_eq!(ask(b"GET /1234567 HTTP/1.1"), ask(b"GET /1234567 XYZ"));
    }

    #[test]
    fn a_line_cut_before_its_second_space_asks_anything() {
        assert_eq!(ask(b""), ANY_ASK);
        assert_eq!(ask(b"GET /predict/1-23"), ANY_ASK);
        let long = [b'a'; 80];
        let mut line = b"GET /".to_vec();
        line.extend_from_slice(&long);
        line.extend_from_slice(b" HTTP/1.1");
        assert_eq!(ask(&line), ANY_ASK);
    }
}

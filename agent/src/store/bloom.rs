//! A blocked Bloom filter of the trace ids in one sealed run of the trace index, kept in memory
//! so a lookup probes on disk only the runs that may hold the trace.
//!
//! Why: with 5 M spans stored there are ~150 sealed runs, and probing each on disk cost ~4 µs
//! (a B-tree descent through pages mostly outside the store's page cache): 630 µs per trace
//! lookup, seconds for the dependency graph over 10 000 traces. A filter answers in one cache
//! miss per run. Blocked: every bit of a key lies in one 512-bit block (a cache line), at
//! 8 bits per key a false positive rate of about 3 %.

/// Bits of filter per key: ~32 KiB per sealed run of 32 Ki pairs.
const BITS_PER_KEY: usize = 8;
/// Bits set per key.
const PROBES: u32 = 5;
const BLOCK_WORDS: usize = 8;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bloom {
    words: Box<[u64]>,
}

/// A 64-bit mix of the id's two halves (the finaliser of `SplitMix64`), so ids that are not
/// random (counters, time prefixes) still spread over the blocks.
fn hash(id: &[u8; 16]) -> u64 {
    let mut half = [0u8; 8];
    half.copy_from_slice(&id[..8]);
    let a = u64::from_le_bytes(half);
    half.copy_from_slice(&id[8..]);
    let b = u64::from_le_bytes(half);
    let mut z = a ^ b.rotate_left(32) ^ 0x9e37_79b9_7f4a_7c15;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

impl Bloom {
    /// An empty filter sized for `keys` keys.
    #[must_use]
    pub fn with_capacity(keys: usize) -> Self {
        let blocks = (keys * BITS_PER_KEY).div_ceil(BLOCK_WORDS * 64).max(1);
        Self {
            words: vec![0u64; blocks * BLOCK_WORDS].into_boxed_slice(),
        }
    }

    /// The block of `h` (the high bits, by multiply-shift) and the bits within it (the low).
    fn positions(words: usize, h: u64) -> (usize, impl Iterator<Item = usize>) {
        let blocks = (words / BLOCK_WORDS) as u64;
        let block = ((u128::from(h) * u128::from(blocks)) >> 64) as usize;
        let bits = (0..PROBES).map(move |i| ((h >> (i * 9)) & 511) as usize);
        (block * BLOCK_WORDS, bits)
    }

    pub fn insert(&mut self, id: &[u8; 16]) {
        let (base, bits) = Self::positions(self.words.len(), hash(id));
        for bit in bits {
            self.words[base + bit / 64] |= 1 << (bit % 64);
        }
    }

    #[must_use]
    pub fn may_contain(&self, id: &[u8; 16]) -> bool {
        let (base, mut bits) = Self::positions(self.words.len(), hash(id));
        bits.all(|bit| self.words[base + bit / 64] & (1 << (bit % 64)) != 0)
    }

    #[must_use]
    pub fn to_bytes(&self) -> Vec<u8> {
        self.words.iter().flat_map(|w| w.to_le_bytes()).collect()
    }

    /// A filter as [`Bloom::to_bytes`] wrote it; `None` if `bytes` is not whole blocks.
    #[must_use]
    pub fn from_bytes(bytes: &[u8]) -> Option<Self> {
        if bytes.is_empty() || !bytes.len().is_multiple_of(BLOCK_WORDS * 8) {
            return None;
        }
        let words = bytes
            .chunks_exact(8)
            .map(|c| {
                let mut w = [0u8; 8];
                w.copy_from_slice(c);
                u64::from_le_bytes(w)
            })
            .collect();
        Some(Self { words })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u64) -> [u8; 16] {
        let mut id = [0u8; 16];
        id[8..].copy_from_slice(&n.to_be_bytes());
        id
    }

    #[test]
    fn every_key_is_found_and_few_others_are() {
        let keys = 32 * 1024;
        let mut bloom = Bloom::with_capacity(keys);
        // Sequential ids: the worst case for a filter that trusted ids to be random.
        for n in 0..keys as u64 {
            bloom.insert(&id(n));
        }
        assert!((0..keys as u64).all(|n| bloom.may_contain(&id(n))));
        let trials = 100_000u64;
        let false_positives = (0..trials)
            .filter(|n| bloom.may_contain(&id(1_000_000 + n)))
            .count();
        assert!(
            false_positives < 6_000,
            "{false_positives} false positives in {trials}"
        );
        assert_eq!(
            bloom.to_bytes().len(),
            keys * BITS_PER_KEY / 8,
            "8 bits per key"
        );
    }

    #[test]
    fn filters_survive_the_disk_and_reject_damage() {
        let mut bloom = Bloom::with_capacity(10);
        bloom.insert(&id(7));
        let back = Bloom::from_bytes(&bloom.to_bytes()).expect("whole blocks");
        assert_eq!(back, bloom);
        assert!(back.may_contain(&id(7)));
        assert_eq!(Bloom::from_bytes(&[]), None);
        assert_eq!(Bloom::from_bytes(&[0; 65]), None);
    }
}

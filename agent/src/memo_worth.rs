//! Whether a memo of recent results is worth filling ([`MemoWorth`]): the HTTP/1 head table
//! and the route memo keep what they computed in case the same input comes again, and keeping
//! costs a copy. Where inputs never repeat (every request its own identifier, the other end of
//! every connection on another host), the memo keeps one missed input in [`SPARSE`] instead of
//! every one, and fills again once inputs repeat.

/// Below one hit in this many judged lookups, the memo turns sparse.
pub const SPARSE: u64 = 8;

/// A memo's hit rate over windows of lookups, and what it keeps.
#[derive(Debug)]
pub struct MemoWorth {
    window: u32,
    /// This window's judged lookups and hits.
    looked: u32,
    found: u32,
    /// Whether the last window had too few hits to keep every input.
    sparse: bool,
    /// Missed inputs not chosen and not kept since the last one kept, while sparse.
    skipped: u64,
}

impl MemoWorth {
    /// Judged every `window` lookups.
    #[must_use]
    pub const fn new(window: u32) -> Self {
        Self {
            window,
            looked: 0,
            found: 0,
            sparse: false,
            skipped: 0,
        }
    }

    /// While sparse, an input whose hash says so is always kept: both ends of a connection on
    /// this host keep the same inputs, so when each input comes exactly twice the chosen ones
    /// are found half the time, and the memo fills again.
    fn chosen(hash: u64) -> bool {
        (hash >> 32).is_multiple_of(SPARSE)
    }

    /// Counts a lookup of the input with `hash`. While sparse, only lookups of chosen inputs and
    /// hits are judged: a miss of an input the memo chose not to keep says nothing of its worth,
    /// and a hit on any input (one kept by [`MemoWorth::keep`]'s count) says inputs repeat.
    pub fn looked_up(&mut self, hash: u64, hit: bool) {
        if self.sparse && !hit && !Self::chosen(hash) {
            return;
        }
        self.looked += 1;
        self.found += u32::from(hit);
        if self.looked >= self.window {
            self.sparse = u64::from(self.found) * SPARSE < u64::from(self.looked);
            self.looked = 0;
            self.found = 0;
        }
    }

    /// Whether to keep the missed input with `hash`: always, unless sparse; then the chosen
    /// inputs and one other in [`SPARSE`] (an input that comes again and again is kept within a
    /// few misses, wherever its hash falls).
    pub fn keep(&mut self, hash: u64) -> bool {
        if !self.sparse || Self::chosen(hash) {
            return true;
        }
        self.skipped += 1;
        if self.skipped < SPARSE {
            return false;
        }
        self.skipped = 0;
        true
    }

    #[cfg(test)]
    #[must_use]
    pub const fn is_sparse(&self) -> bool {
        self.sparse
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Hashes that are and are not chosen.
    fn hashes(chosen: bool) -> impl Iterator<Item = u64> {
        (0u64..)
            .map(|i| i << 32)
            .filter(move |&h| MemoWorth::chosen(h) == chosen)
    }

    #[test]
    fn turns_sparse_without_hits_and_fills_again_when_inputs_repeat() {
        let mut worth = MemoWorth::new(64);
        // Nothing ever found: sparse after one window.
        for hash in hashes(false).take(64) {
            worth.looked_up(hash, false);
        }
        assert!(worth.is_sparse());
        // Sparse: chosen inputs are kept, one other in SPARSE.
        assert!(hashes(true).take(10).all(|h| worth.keep(h)));
        let kept = hashes(false).take(80).filter(|&h| worth.keep(h)).count();
        assert_eq!(kept, 80 / usize::try_from(SPARSE).expect("small"));
        // Misses of unchosen inputs are not judged: still sparse after many.
        for hash in hashes(false).take(1000) {
            worth.looked_up(hash, false);
        }
        assert!(worth.is_sparse());
        // One unchosen input again and again: once kept, its hits fill the memo again.
        for _ in 0..64 {
            worth.looked_up(3 << 32, true);
        }
        assert!(!worth.is_sparse());
    }

    #[test]
    fn inputs_seen_twice_keep_a_sparse_memo_filling() {
        let mut worth = MemoWorth::new(64);
        for hash in hashes(false).take(64) {
            worth.looked_up(hash, false);
        }
        assert!(worth.is_sparse());
        // Both ends of each connection: a chosen input missed, then found.
        for hash in hashes(true).take(64) {
            worth.looked_up(hash, false);
            worth.looked_up(hash, true);
        }
        assert!(!worth.is_sparse());
    }
}

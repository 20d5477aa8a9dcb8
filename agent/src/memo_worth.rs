//! Whether a memo of recent results is worth filling ([`MemoWorth`]): the HTTP/1 head table
//! and the route memo keep what they computed in case the same input comes again, and keeping
//! costs a copy. Where inputs rarely repeat (every request its own identifier, the other end of
//! every connection on another host), the memo turns sparse: it keeps the inputs its hash
//! chooses (one in [`SPARSE`]) and one other missed input in [`SPARSE`] (about a quarter of
//! the misses in all), and fills again once the chosen inputs are found.

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

    /// Counts a lookup of the input with `hash`. While sparse, only lookups of chosen inputs are
    /// judged, hits and misses alike: they are kept every time, so their hit rate is the rate a
    /// full memo would have (counting the other inputs' hits but not all their misses would
    /// overstate it, and the memo would fill and empty again window after window).
    pub fn looked_up(&mut self, hash: u64, hit: bool) {
        if self.sparse && !Self::chosen(hash) {
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
    /// inputs and one other miss in [`SPARSE`], so an input that comes again and again is kept
    /// within a few misses and served from the memo wherever its hash falls.
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
        // Lookups of unchosen inputs are not judged, found or not: still sparse after many
        // (such an input, kept by the count above, is served from the memo all the same).
        for hash in hashes(false).take(1000) {
            worth.looked_up(hash, false);
            worth.looked_up(hash, true);
        }
        assert!(worth.is_sparse());
        // Chosen inputs found again: the memo fills again.
        for hash in hashes(true).take(64) {
            worth.looked_up(hash, true);
        }
        assert!(!worth.is_sparse());
    }

    #[test]
    fn a_hot_input_among_rare_ones_does_not_make_the_memo_flip_each_window() {
        // One lookup in ten is the same unchosen input (a health check), the rest each their
        // own: 10 % hits when full, so sparse; and it must stay sparse.
        let mut worth = MemoWorth::new(64);
        let mut fresh = hashes(false).skip(1);
        let mut rare_chosen = hashes(true).skip(1);
        let mut flips = 0;
        let mut was = worth.is_sparse();
        for i in 0..64 * 40 {
            if i % 10 == 0 {
                worth.looked_up(3 << 32, true);
            } else if i % 10 == 1 {
                let hash = rare_chosen.next().expect("endless");
                worth.looked_up(hash, false);
            } else {
                let hash = fresh.next().expect("endless");
                worth.looked_up(hash, false);
            }
            flips += usize::from(worth.is_sparse() != was);
            was = worth.is_sparse();
        }
        assert!(worth.is_sparse());
        assert_eq!(flips, 1);
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

//! Which frames hold the spans of a trace: the store's index by trace id.
//!
//! Trace ids are random, so a B-tree keyed by them takes each new entry in a leaf of its own,
//! and a copy-on-write store rewrites a page per span. Instead the index is kept like a small
//! log-structured merge tree: the pairs (trace id, frame) of the newest frames live in memory
//! (the open run), and once there are [`RUN_PAIRS`] of them they are written out in one go, in
//! order, as a sealed run: blocks of sorted pairs under keys (run, first trace id) that only ever
//! append. A lookup asks the open run and each sealed run whose Bloom filter may hold the trace
//! (one block read per run). A sealed run is named by its last frame, so retention drops whole
//! runs once every frame they point to is gone.
//!
//! The open run is not written on each commit: after a restart it is rebuilt from the frames
//! newer than the last sealed run, which are on disk anyway.

/// Pairs the open run holds before it is sealed: about a megabyte of memory, and one sequential
/// write of 768 KiB per 32 Ki spans.
pub const RUN_PAIRS: usize = 32 * 1024;

/// Pairs a sealed run stores per B-tree entry (more when a trace's pairs would straddle the
/// end). One entry per pair made sealing 6 % of the agent's CPU (a leaf rebuilt per insert);
/// a block of 128 is one insert, and a lookup still reads one entry per run.
pub const BLOCK_PAIRS: usize = 128;

/// Bytes of one pair in a block: trace id, frame (big-endian).
const PAIR_BYTES: usize = 24;

/// A block's key: run (its last frame, big-endian so bytes sort as numbers do), then the first
/// trace id the block holds.
pub type BlockKey = [u8; 24];

#[must_use]
pub fn block_key(run: u64, trace_id: &[u8; 16]) -> BlockKey {
    let mut key = [0u8; 24];
    key[..8].copy_from_slice(&run.to_be_bytes());
    key[8..].copy_from_slice(trace_id);
    key
}

/// The keys of run `run` up to `trace_id`, inclusive: the last of them is the only block that
/// can hold the trace's pairs (a trace's pairs never straddle two blocks).
#[must_use]
pub fn blocks_up_to(run: u64, trace_id: &[u8; 16]) -> (BlockKey, BlockKey) {
    (block_key(run, &[0; 16]), block_key(run, trace_id))
}

/// Every key of sealed run `run`, inclusive.
#[must_use]
pub fn whole_run(run: u64) -> (BlockKey, BlockKey) {
    (block_key(run, &[0; 16]), block_key(run, &[0xff; 16]))
}

/// The frames `block` lists for `trace_id` (the pairs are sorted, so it stops past them).
pub fn frames_in_block<'a>(
    block: &'a [u8],
    trace_id: &'a [u8; 16],
) -> impl Iterator<Item = u64> + 'a {
    block
        .chunks_exact(PAIR_BYTES)
        .skip_while(move |pair| pair[..16] < trace_id[..])
        .take_while(move |pair| pair[..16] == trace_id[..])
        .map(|pair| {
            let mut frame = [0u8; 8];
            frame.copy_from_slice(&pair[16..]);
            u64::from_be_bytes(frame)
        })
}

/// The pairs of the frames written since the last sealed run, in the order they were written;
/// sorted only when sealed. Appending is a copy of 24 bytes: the earlier hash map by trace id
/// cost each span a probe at a random place in ~1.6 MiB (a cache miss), and sealing looked each
/// trace up twice more; together ~7 % of the agent's CPU under wrk. What it gave, finding a
/// trace's open frames at once, only the store's readers ask, a few times per query: a scan of
/// the run (at most [`RUN_PAIRS`] pairs) is tens of microseconds.
#[derive(Debug, Default)]
pub struct OpenRun {
    pairs: Vec<Pair>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Pair {
    trace_id: [u8; 16],
    frame: u64,
}

impl Pair {
    /// Block order: trace id (as its bytes compare), then frame.
    fn order(&self) -> (u128, u64) {
        (u128::from_be_bytes(self.trace_id), self.frame)
    }
}

/// Pairs just written that [`OpenRun::insert`] compares a new one with. A trace's spans mostly
/// reach the store together, a few spans apart, so a repeated pair is mostly refused at once;
/// one that is not is kept until sealing drops it (it only costs its 24 bytes till then).
const LOOK_BACK: usize = 32;

impl OpenRun {
    /// Adds a pair; false if it is one of the last few added (sealing drops other repeats).
    pub fn insert(&mut self, trace_id: [u8; 16], frame: u64) -> bool {
        let pair = Pair { trace_id, frame };
        let recent = self.pairs.len().saturating_sub(LOOK_BACK);
        if self.pairs[recent..].contains(&pair) {
            return false;
        }
        self.pairs.push(pair);
        true
    }

    /// Takes back every pair of frame `frame` and later: a write that was not committed (its
    /// frames are the newest; the next write numbers its own frames from `frame` again).
    pub fn forget_from(&mut self, frame: u64) {
        self.pairs.retain(|pair| pair.frame < frame);
    }

    /// Frames of the open run holding spans of `trace_id`, in no particular order, a frame
    /// possibly more than once.
    pub fn frames_of<'a>(&'a self, trace_id: &'a [u8; 16]) -> impl Iterator<Item = u64> + 'a {
        self.pairs
            .iter()
            .filter(move |pair| pair.trace_id == *trace_id)
            .map(|pair| pair.frame)
    }

    /// Pairs held (a repeat not refused at insertion counts until sealing).
    pub fn len(&self) -> usize {
        self.pairs.len()
    }

    /// Puts the pairs in block order and drops repeats: what sealing does first. After it,
    /// [`Self::trace_ids`] names each trace once and [`Self::len`] counts distinct pairs.
    fn sort(&mut self) {
        self.pairs.sort_unstable_by_key(Pair::order);
        self.pairs.dedup();
    }

    /// The trace ids the open run holds (for the sealed run's filter): each once after
    /// [`Self::for_each_block`] sorted them, in no particular order and maybe repeated before.
    pub fn trace_ids(&self) -> impl Iterator<Item = &[u8; 16]> {
        let mut last = None;
        self.pairs
            .iter()
            .map(|pair| &pair.trace_id)
            .filter(move |&id| {
                let new = last != Some(*id);
                last = Some(*id);
                new
            })
    }

    /// The open run as sealed run `run`: sorts it ([`Self::sort`]), then calls `f` with each
    /// block's key and bytes, in key order. A block closes after [`BLOCK_PAIRS`] pairs, at the
    /// next change of trace id.
    pub fn for_each_block<E>(
        &mut self,
        run: u64,
        mut f: impl FnMut(&BlockKey, &[u8]) -> Result<(), E>,
    ) -> Result<(), E> {
        self.sort();
        let mut block = Vec::with_capacity((BLOCK_PAIRS + 8) * PAIR_BYTES);
        let mut first = [0u8; 16];
        let mut last = None;
        for pair in &self.pairs {
            // A trace's pairs stay in one block: a full block closes before the next trace.
            if last != Some(pair.trace_id) {
                if block.len() >= BLOCK_PAIRS * PAIR_BYTES {
                    f(&block_key(run, &first), &block)?;
                    block.clear();
                }
                if block.is_empty() {
                    first = pair.trace_id;
                }
                last = Some(pair.trace_id);
            }
            block.extend_from_slice(&pair.trace_id);
            block.extend_from_slice(&pair.frame.to_be_bytes());
        }
        if !block.is_empty() {
            f(&block_key(run, &first), &block)?;
        }
        Ok(())
    }

    /// Empties the run and gives its memory back (a new run fills it again over minutes).
    pub fn clear(&mut self) {
        *self = Self::default();
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    #[test]
    fn block_keys_sort_by_run_then_trace() {
        let a = block_key(1, &[0xff; 16]);
        let b = block_key(2, &[0; 16]);
        assert!(a < b, "a later run sorts after every key of an earlier one");
        let (low, high) = blocks_up_to(5, &[7; 16]);
        assert!(low <= block_key(5, &[6; 16]) && block_key(5, &[6; 16]) <= high);
        assert!(block_key(5, &[8; 16]) > high);
        let (first, last) = whole_run(5);
        assert!(first <= low && high <= last && last < block_key(6, &[0; 16]));
    }

    #[test]
    fn sealed_blocks_keep_each_trace_whole_and_find_its_frames() {
        let mut run = OpenRun::default();
        // 300 traces; trace 100 has 40 frames so it would straddle a block boundary.
        for t in 0..300u16 {
            let mut id = [0u8; 16];
            id[..2].copy_from_slice(&t.to_be_bytes());
            let frames = if t == 100 { 40 } else { 1 };
            for f in 0..frames {
                run.insert(id, u64::from(t) * 1000 + f);
            }
        }
        let mut blocks: Vec<(BlockKey, Vec<u8>)> = Vec::new();
        run.for_each_block(9, |key, bytes| {
            blocks.push((*key, bytes.to_vec()));
            Ok::<(), ()>(())
        })
        .expect("blocks");
        assert!(blocks.len() >= 2, "{} blocks", blocks.len());
        assert!(blocks.windows(2).all(|w| w[0].0 < w[1].0), "in key order");
        let pairs: usize = blocks.iter().map(|(_, b)| b.len() / PAIR_BYTES).sum();
        assert_eq!(pairs, run.len(), "every pair sealed once");
        for t in [0u16, 99, 100, 101, 299] {
            let mut id = [0u8; 16];
            id[..2].copy_from_slice(&t.to_be_bytes());
            // What a lookup does: the last block whose key is at most (run, trace).
            let (_, high) = blocks_up_to(9, &id);
            let (_, block) = blocks
                .iter()
                .rev()
                .find(|(key, _)| *key <= high)
                .expect("a block");
            let frames: Vec<u64> = frames_in_block(block, &id).collect();
            let expect: Vec<u64> = run.frames_of(&id).collect();
            assert_eq!(frames, expect, "trace {t}");
        }
    }

    #[test]
    fn the_open_run_finds_every_frame_of_a_trace_and_seals_each_pair_once() {
        let mut run = OpenRun::default();
        for (trace, frame) in [(1u8, 4u64), (2, 4), (1, 9), (1, 4), (3, 1)] {
            run.insert([trace; 16], frame);
        }
        assert_eq!(run.len(), 4, "a pair repeated just after is refused");
        assert!(!run.insert([1; 16], 9));
        let frames: BTreeSet<u64> = run.frames_of(&[1; 16]).collect();
        assert_eq!(frames, BTreeSet::from([4, 9]));
        assert_eq!(run.frames_of(&[9; 16]).count(), 0);
        // A repeat further back than the look-back is held, and dropped when sealed.
        for trace in 10..10 + LOOK_BACK as u8 {
            run.insert([trace; 16], 5);
        }
        assert!(run.insert([2; 16], 4), "out of sight");
        assert_eq!(run.len(), 5 + LOOK_BACK);
        let twos = run.trace_ids().filter(|id| id[0] == 2).count();
        assert_eq!(twos, 2, "unsorted: repeats");
        let mut sealed = Vec::new();
        run.for_each_block(1, |_, block| {
            sealed.extend(block.chunks_exact(PAIR_BYTES).map(|p| (p[0], p[23])));
            Ok::<(), ()>(())
        })
        .expect("blocks");
        let mut expect = vec![(1, 4), (1, 9), (2, 4), (3, 1)];
        expect.extend((10..10 + LOOK_BACK as u8).map(|trace| (trace, 5)));
        assert_eq!(sealed, expect, "sealed in key order, each pair once");
        assert_eq!(run.len(), expect.len());
        let ids: Vec<u8> = run.trace_ids().map(|id| id[0]).collect();
        assert_eq!(ids.len(), 3 + LOOK_BACK, "sorted: each trace once");
        run.clear();
        assert_eq!(run.len(), 0);
    }

    #[test]
    fn a_write_not_committed_takes_back_its_frames_only() {
        let mut run = OpenRun::default();
        for (trace, frame) in [(1u8, 3u64), (2, 4), (1, 5), (3, 5), (4, 6)] {
            run.insert([trace; 16], frame);
        }
        run.forget_from(5);
        assert_eq!(run.len(), 2);
        assert_eq!(run.frames_of(&[1; 16]).collect::<Vec<_>>(), [3]);
        assert_eq!(run.frames_of(&[3; 16]).count(), 0);
        // The next write numbers its frames from 5 again.
        assert!(run.insert([3; 16], 5));
        assert_eq!(run.frames_of(&[3; 16]).collect::<Vec<_>>(), [5]);
    }
}

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

use std::collections::{HashMap, hash_map::Entry};

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

/// The pairs of the frames written since the last sealed run, by trace id; sorted only when
/// sealed. (A B-tree set of pairs, sorted on every insert, was 5 % of `bench-pipeline --store`'s
/// CPU, in comparisons of random 16-byte keys.) Nearly every trace's spans reach the store
/// together, in one frame: its first frame is the map's value (24 bytes a slot, ~1.6 MiB at the
/// run's size, released when the run is sealed), any later ones are in `more`.
#[derive(Debug, Default)]
pub struct OpenRun {
    first: HashMap<[u8; 16], u64, foldhash::fast::RandomState>,
    more: HashMap<[u8; 16], Vec<u64>, foldhash::fast::RandomState>,
    pairs: usize,
}

impl OpenRun {
    /// Adds a pair; false if it was there already.
    pub fn insert(&mut self, trace_id: [u8; 16], frame: u64) -> bool {
        match self.first.entry(trace_id) {
            Entry::Vacant(slot) => {
                slot.insert(frame);
            }
            Entry::Occupied(slot) => {
                if *slot.get() == frame {
                    return false;
                }
                // Kept sorted; frames come in increasing order, so this is nearly always a push.
                let more = self.more.entry(trace_id).or_default();
                match more.binary_search(&frame) {
                    Ok(_) => return false,
                    Err(at) => more.insert(at, frame),
                }
            }
        }
        self.pairs += 1;
        true
    }

    /// Takes back a pair of a write that was not committed.
    pub fn remove(&mut self, trace_id: [u8; 16], frame: u64) {
        let Entry::Occupied(mut first) = self.first.entry(trace_id) else {
            return;
        };
        let Entry::Occupied(mut more) = self.more.entry(trace_id) else {
            if *first.get() == frame {
                first.remove();
                self.pairs -= 1;
            }
            return;
        };
        let frames = more.get_mut();
        if let Ok(at) = frames.binary_search(&frame) {
            frames.remove(at);
        } else if *first.get() == frame {
            // The next frame takes the first's place.
            *first.get_mut() = frames.remove(0);
        } else {
            return;
        }
        if frames.is_empty() {
            more.remove();
        }
        self.pairs -= 1;
    }

    /// Frames of the open run holding spans of `trace_id`, in no particular order.
    pub fn frames_of(&self, trace_id: &[u8; 16]) -> impl Iterator<Item = u64> + '_ {
        let more = self.more.get(trace_id).map_or(&[][..], Vec::as_slice);
        self.first
            .get(trace_id)
            .copied()
            .into_iter()
            .chain(more.iter().copied())
    }

    pub fn len(&self) -> usize {
        self.pairs
    }

    /// The trace ids the open run holds, in no particular order (for the sealed run's filter).
    pub fn trace_ids(&self) -> impl Iterator<Item = &[u8; 16]> {
        self.first.keys()
    }

    /// The open run as sealed run `run`: calls `f` with each block's key and bytes, in key
    /// order. A block closes after [`BLOCK_PAIRS`] pairs, at the next change of trace id.
    pub fn for_each_block<E>(
        &self,
        run: u64,
        mut f: impl FnMut(&BlockKey, &[u8]) -> Result<(), E>,
    ) -> Result<(), E> {
        let mut traces: Vec<&[u8; 16]> = self.first.keys().collect();
        traces.sort_unstable();
        let mut block = Vec::with_capacity((BLOCK_PAIRS + 8) * PAIR_BYTES);
        let mut first = [0u8; 16];
        let mut frames = Vec::new();
        for trace_id in traces {
            // A trace's pairs stay in one block: a full block closes before the next trace.
            if block.len() >= BLOCK_PAIRS * PAIR_BYTES {
                f(&block_key(run, &first), &block)?;
                block.clear();
            }
            if block.is_empty() {
                first = *trace_id;
            }
            frames.clear();
            frames.extend(self.frames_of(trace_id));
            frames.sort_unstable();
            for frame in &frames {
                block.extend_from_slice(trace_id);
                block.extend_from_slice(&frame.to_be_bytes());
            }
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
    fn the_open_run_finds_every_frame_of_a_trace_once() {
        let mut run = OpenRun::default();
        for (trace, frame) in [(1u8, 4u64), (2, 4), (1, 9), (1, 4), (3, 1)] {
            run.insert([trace; 16], frame);
        }
        assert_eq!(run.len(), 4, "the repeated pair is kept once");
        assert!(!run.insert([1; 16], 9));
        run.remove([3; 16], 1);
        assert_eq!(run.frames_of(&[3; 16]).count(), 0);
        run.insert([3; 16], 1);
        let mut frames: Vec<u64> = run.frames_of(&[1; 16]).collect();
        frames.sort_unstable();
        assert_eq!(frames, [4, 9]);
        assert_eq!(run.frames_of(&[9; 16]).count(), 0);
        let mut sealed = Vec::new();
        run.for_each_block(1, |_, block| {
            sealed.extend(block.chunks_exact(PAIR_BYTES).map(|p| (p[0], p[23])));
            Ok::<(), ()>(())
        })
        .expect("blocks");
        assert_eq!(
            sealed,
            [(1, 4), (1, 9), (2, 4), (3, 1)],
            "sealed in key order"
        );
        // Taking back the first frame of a trace with more keeps the others.
        run.remove([1; 16], 4);
        assert_eq!(run.frames_of(&[1; 16]).collect::<Vec<_>>(), [9]);
        assert_eq!(run.len(), 3);
        // Frames out of order (a rebuild), repeats refused wherever they sit.
        for frame in [30, 20, 25, 20, 30, 9] {
            run.insert([1; 16], frame);
        }
        let mut frames: Vec<u64> = run.frames_of(&[1; 16]).collect();
        frames.sort_unstable();
        assert_eq!(frames, [9, 20, 25, 30]);
        assert_eq!(run.len(), 6);
        run.remove([1; 16], 25);
        run.remove([1; 16], 9);
        run.remove([1; 16], 99);
        let mut frames: Vec<u64> = run.frames_of(&[1; 16]).collect();
        frames.sort_unstable();
        assert_eq!(frames, [20, 30]);
        assert_eq!(run.len(), 4);
        run.clear();
        assert_eq!(run.len(), 0);
    }
}

//! One memory budget for the bytes all connections' parsers hold between reads: HTTP/1 heads
//! split across reads, HTTP/2 frames and header blocks split across reads, and HPACK tables.
//!
//! A head that arrives in one read is parsed in place; only a head split across reads is copied
//! into its connection's buffer. Each buffer is bounded (`MAX_HEAD_BYTES`, HTTP/2's 64 KiB per
//! frame, block and table), but a host with tens of thousands of connections each holding half a
//! head (a slowloris, or just a slow network) would still add up to gigabytes. Past this budget a
//! connection that needs to buffer more loses framing, or its HPACK table (counted), instead of
//! growing the agent.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

/// Bytes all connections together may buffer.
pub const HEAD_BUFFER_BUDGET: usize = 64 << 20;

#[derive(Debug)]
pub struct HeadBudget {
    used: AtomicUsize,
    limit: usize,
    refused: AtomicU64,
}

/// The agent's budget.
pub static HEADS: HeadBudget = HeadBudget::new(HEAD_BUFFER_BUDGET);

impl HeadBudget {
    #[must_use]
    pub const fn new(limit: usize) -> Self {
        Self {
            used: AtomicUsize::new(0),
            limit,
            refused: AtomicU64::new(0),
        }
    }

    /// Takes `n` bytes if they fit; counts a refusal otherwise.
    pub fn try_take(&self, n: usize) -> bool {
        let taken = self
            .used
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |used| {
                used.checked_add(n).filter(|&total| total <= self.limit)
            })
            .is_ok();
        if !taken {
            self.refused.fetch_add(1, Ordering::Relaxed);
        }
        taken
    }

    /// Takes `n` bytes whether or not they fit (an allocator rounding up what was asked).
    pub fn take(&self, n: usize) {
        self.used.fetch_add(n, Ordering::Relaxed);
    }

    pub fn give_back(&self, n: usize) {
        // Saturating: a give-back never drives the count below zero, whatever the caller did.
        let _ = self
            .used
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |used| {
                Some(used.saturating_sub(n))
            });
    }

    /// Bytes buffered now.
    pub fn in_use(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    /// Times a connection was refused room (and lost framing).
    pub fn refusals(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }
}

/// Bytes a parser holds against [`HEADS`]: taken as they are added, given back when cleared or
/// dropped.
#[derive(Debug, Default)]
pub struct BudgetedBytes {
    bytes: Vec<u8>,
}

/// Capacity a cleared buffer keeps for its next use; a larger one is freed (one large frame
/// must not pin its memory for the connection's life).
const RETAINED_CAPACITY: usize = 4096;

impl BudgetedBytes {
    /// Appends `data` if the budget has room; returns whether it did.
    pub fn extend(&mut self, data: &[u8]) -> bool {
        if !HEADS.try_take(data.len()) {
            return false;
        }
        self.bytes.extend_from_slice(data);
        true
    }

    pub fn clear(&mut self) {
        HEADS.give_back(self.bytes.len());
        self.bytes.clear();
        if self.bytes.capacity() > RETAINED_CAPACITY {
            self.bytes = Vec::new();
        }
    }

    #[must_use]
    pub fn as_slice(&self) -> &[u8] {
        &self.bytes
    }

    #[must_use]
    pub fn len(&self) -> usize {
        self.bytes.len()
    }
}

impl Drop for BudgetedBytes {
    fn drop(&mut self) {
        HEADS.give_back(self.bytes.len());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn takes_up_to_the_limit_then_refuses_and_counts() {
        let budget = HeadBudget::new(100);
        assert!(budget.try_take(60));
        assert!(!budget.try_take(41));
        assert!(budget.try_take(40));
        assert_eq!((budget.in_use(), budget.refusals()), (100, 1));
        budget.give_back(70);
        assert!(budget.try_take(41));
        budget.give_back(1000);
        assert_eq!(budget.in_use(), 0);
    }
}

//! A bounded table whose entries expire in insertion order: what one agent or the programs said
//! of a request or span, kept until it is taken or its time is over.

use std::{
    collections::{HashMap, VecDeque},
    hash::Hash,
};

/// Entries by key, each kept `TTL_NS` from its insertion, at most `MAX` at once (past that
/// the oldest go first). Each entry knows its deadline, so that an older deadline of a key
/// taken and inserted again never expires the newer entry; deadlines of taken entries are
/// dropped when they outnumber the live ones (the queue stays within twice `MAX`).
#[derive(Debug)]
pub(crate) struct Expiring<K, V, const TTL_NS: u64, const MAX: usize> {
    by_key: HashMap<K, (u64, V), foldhash::fast::RandomState>,
    order: VecDeque<(u64, K)>,
}

impl<K, V, const TTL_NS: u64, const MAX: usize> Default for Expiring<K, V, TTL_NS, MAX> {
    fn default() -> Self {
        Self {
            by_key: HashMap::default(),
            order: VecDeque::new(),
        }
    }
}

impl<K: Hash + Eq + Copy, V, const TTL_NS: u64, const MAX: usize> Expiring<K, V, TTL_NS, MAX> {
    /// Inserts at `now`, dropping what expired; returns whether a live entry had to go for room.
    pub fn insert(&mut self, key: K, value: V, now: u64) -> bool {
        let mut evicted = false;
        while let Some(&(until, old)) = self.order.front() {
            if until > now && self.by_key.len() < MAX {
                break;
            }
            self.order.pop_front();
            if self.by_key.get(&old).is_some_and(|(at, _)| *at == until) {
                self.by_key.remove(&old);
                evicted |= until > now;
            }
        }
        if self.order.len() >= 2 * MAX {
            let by_key = &self.by_key;
            self.order
                .retain(|(until, key)| by_key.get(key).is_some_and(|(at, _)| at == until));
        }
        let until = now.saturating_add(TTL_NS);
        self.by_key.insert(key, (until, value));
        self.order.push_back((until, key));
        evicted
    }

    /// The entry for `key`, taken.
    pub fn take(&mut self, key: K) -> Option<V> {
        if self.by_key.is_empty() {
            return None;
        }
        self.by_key.remove(&key).map(|(_, value)| value)
    }

    pub fn get(&self, key: K) -> Option<&V> {
        self.by_key.get(&key).map(|(_, value)| value)
    }

    /// The keys held (expired ones included until the next insert).
    pub fn keys(&self) -> impl Iterator<Item = &K> {
        self.by_key.keys()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_expire_in_order_and_room_is_made_by_the_oldest() {
        let mut table: Expiring<u32, &str, 10, 2> = Expiring::default();
        assert!(!table.insert(1, "a", 0));
        assert!(!table.insert(2, "b", 5));
        assert!(table.insert(3, "c", 6), "full: the oldest live entry goes");
        assert_eq!(table.get(1), None);
        assert!(
            !table.insert(4, "d", 15),
            "2 expired at 15: no live entry lost"
        );
        assert_eq!(table.take(3), Some("c"));
        assert_eq!(table.take(3), None);
        assert_eq!(table.get(4), Some(&"d"));
    }

    #[test]
    fn a_key_inserted_again_keeps_its_new_deadline_and_taken_keys_do_not_pile_up() {
        let mut table: Expiring<u32, u32, 10, 4> = Expiring::default();
        table.insert(1, 1, 0);
        assert_eq!(table.take(1), Some(1));
        table.insert(1, 2, 8);
        table.insert(2, 0, 11);
        assert_eq!(
            table.get(1),
            Some(&2),
            "the first deadline (10) was the taken entry's"
        );
        for i in 0..100 {
            table.insert(100 + i, i, 12);
            let _ = table.take(100 + i);
        }
        assert!(table.order.len() <= 8, "{}", table.order.len());
        assert_eq!(table.get(1), Some(&2));
    }
}

//! What the Python asyncio probes tell the linker (see `probes::python`): which task created
//! which. Tasks are named by their `contextvars.Context`, which is what a data record of a
//! followed Python process carries (`DataEvent::task`): each task runs in a context of its own.
//!
//! CPython frees contexts and reuses their memory, so an address names different tasks over
//! time. Every creation record gets a serial number; a lineage is a list of (context, serial),
//! and a context matches a lineage entry only while no later creation reused its address.

use std::collections::{HashMap, HashSet, VecDeque};

type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// Tasks whose creation is remembered, all processes together; the oldest are forgotten first
/// (a long-lived task forgotten loses its ancestry, never gains a wrong one).
const MAX_TASKS: usize = 256 * 1024;
/// Creations followed up from a task: a handler's task nesting is shallow.
pub const MAX_DEPTH: usize = 8;

/// A task in a process: (pid, context address).
type Task = (u32, u64);

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct TaskStats {
    /// Python processes followed (their asyncio probes attached), over the agent's life.
    pub processes: u64,
    pub spawns: u64,
    /// Creations whose creator's context could not be read.
    pub spawns_unparented: u64,
    /// Entries dropped to stay within the bound.
    pub forgotten: u64,
}

/// One creation: by which context, when, and its serial.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Creation {
    pub parent: u64,
    pub at: u64,
    pub serial: u64,
}

#[derive(Default)]
pub struct Tasks {
    /// Processes followed; the rules use nothing of the others.
    tracked: HashSet<u32>,
    /// (pid, tid) of threads that created tasks: event loops, where one thread serves every
    /// request in flight, so the thread rule names no parent there.
    loop_threads: HashSet<(u32, u32)>,
    created: FastMap<Task, Creation>,
    /// Creation order with serials, to forget the oldest first.
    order: VecDeque<(Task, u64)>,
    next_serial: u64,
    pub stats: TaskStats,
}

impl Tasks {
    /// The probes follow `pid`: its tasks can be told apart.
    pub fn track(&mut self, pid: u32) {
        if self.tracked.insert(pid) {
            self.stats.processes += 1;
        }
    }

    /// `pid` is not followed any more (it exited, or its pid runs something else): what was
    /// known of its tasks is forgotten.
    pub fn untrack(&mut self, pid: u32) {
        if self.tracked.remove(&pid) {
            self.created.retain(|&(p, _), _| p != pid);
            self.loop_threads.retain(|&(p, _)| p != pid);
        }
    }

    #[must_use]
    pub fn is_tracked(&self, pid: u32) -> bool {
        self.tracked.contains(&pid)
    }

    /// Whether thread `tid` of `pid` runs an event loop (it created tasks).
    #[must_use]
    pub fn is_loop_thread(&self, pid: u32, tid: u32) -> bool {
        self.loop_threads.contains(&(pid, tid))
    }

    /// A task whose context is `child` was created at `at` by thread `tid`, in code running in
    /// `parent` (0: unknown). Returns the creation's serial.
    pub fn spawned(&mut self, pid: u32, tid: u32, child: u64, parent: u64, at: u64) -> Option<u64> {
        if !self.tracked.contains(&pid) || child == 0 {
            return None;
        }
        if self.loop_threads.len() < MAX_TASKS {
            self.loop_threads.insert((pid, tid));
        }
        self.stats.spawns += 1;
        if parent == 0 {
            self.stats.spawns_unparented += 1;
        }
        self.next_serial += 1;
        let serial = self.next_serial;
        self.created
            .insert((pid, child), Creation { parent, at, serial });
        self.order.push_back(((pid, child), serial));
        while self.order.len() > MAX_TASKS {
            let Some((oldest, serial)) = self.order.pop_front() else {
                break;
            };
            // Only if no later creation reused the address.
            if self
                .created
                .get(&oldest)
                .is_some_and(|c| c.serial == serial)
            {
                self.created.remove(&oldest);
                self.stats.forgotten += 1;
            }
        }
        Some(serial)
    }

    /// The creation of the task now running in `context`, if one was seen.
    #[must_use]
    pub fn creation(&self, pid: u32, context: u64) -> Option<Creation> {
        self.created.get(&(pid, context)).copied()
    }

    /// `context` and the contexts that created it, nearest first, each with its creation's
    /// serial, as known now; empty when `context` is not a task whose creation was seen. The
    /// walk stops at a creator whose own creation came after its child's (its address was
    /// reused by a later task: the chain is broken there).
    #[must_use]
    pub fn lineage(&self, pid: u32, context: u64) -> Vec<(u64, u64)> {
        let mut out = Vec::new();
        let mut at = context;
        let mut before = u64::MAX;
        while out.len() < MAX_DEPTH {
            let Some(creation) = self.creation(pid, at) else {
                break;
            };
            if creation.at > before {
                break;
            }
            out.push((at, creation.serial));
            if creation.parent == 0 {
                break;
            }
            at = creation.parent;
            before = creation.at;
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lineage_follows_creators_and_stops_at_reuse() {
        let mut t = Tasks::default();
        assert_eq!(
            t.spawned(1, 7, 0xb, 0xa, 5),
            None,
            "untracked processes are ignored"
        );
        t.track(1);
        let a = t.spawned(1, 7, 0xa, 0x1, 1).expect("tracked");
        let b = t.spawned(1, 7, 0xb, 0xa, 2).expect("tracked");
        let c = t.spawned(1, 7, 0xc, 0xb, 3).expect("tracked");
        assert_eq!(t.lineage(1, 0xc), vec![(0xc, c), (0xb, b), (0xa, a)]);
        assert!(t.is_loop_thread(1, 7));
        assert!(!t.is_loop_thread(1, 8));
        assert_eq!(t.lineage(2, 0xc), vec![], "another process");
        assert_eq!(
            t.lineage(1, 0x1),
            vec![],
            "a context no task was created with"
        );
        // 0xa's address is reused by a task created after 0xb: 0xb's creator is gone.
        let a2 = t.spawned(1, 7, 0xa, 0x9, 4).expect("tracked");
        assert_eq!(t.lineage(1, 0xc), vec![(0xc, c), (0xb, b)]);
        assert_eq!(t.lineage(1, 0xa), vec![(0xa, a2)]);
        t.untrack(1);
        assert_eq!(t.lineage(1, 0xc), vec![]);
    }

    #[test]
    fn a_cycle_of_reused_addresses_ends() {
        let mut t = Tasks::default();
        t.track(1);
        t.spawned(1, 7, 0xa, 0xb, 1);
        t.spawned(1, 7, 0xb, 0xa, 1);
        assert!(t.lineage(1, 0xa).len() <= MAX_DEPTH);
    }

    #[test]
    fn the_oldest_tasks_are_forgotten_first() {
        let mut t = Tasks::default();
        t.track(1);
        for i in 0..=MAX_TASKS as u64 {
            t.spawned(1, 7, 0x1000 + i, 0, i);
        }
        assert_eq!(t.creation(1, 0x1000), None);
        assert!(t.creation(1, 0x1001).is_some());
        assert_eq!(t.stats.forgotten, 1);
    }
}

//! What the Go runtime probes tell the linker (see `probes::go`): which goroutine spawned which,
//! and for which calling goroutine a `net/http` connection's write loop writes a request.
//!
//! Goroutines are named by their `g` (the runtime's struct for them, whose address R14 holds in
//! Go code): a `g` is reused by a later goroutine only after its goroutine exited, and every
//! goroutine starts in `runtime.newproc1`, whose probe then resets what was known of the `g`.

use std::collections::{HashMap, HashSet, VecDeque};

use agent_common::GoProbe;

type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// Goroutines whose parent is remembered, all processes together; the oldest are forgotten
/// first (a long-lived goroutine forgotten loses its ancestry, never gains a wrong one).
const MAX_GOROUTINES: usize = 256 * 1024;
/// Requests handed from `roundTrip` to a write loop and not yet written, and write loops.
const MAX_HANDOFFS: usize = 64 * 1024;
/// Longest a request may wait between its `roundTrip` and its write loop's `Request.write`
/// (a dial to a slow server included) and still pair.
const MAX_HANDOFF_NS: u64 = 10_000_000_000;

/// A goroutine in a process: (pid, `g`).
type Goroutine = (u32, u64);

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct GoroutineStats {
    /// Go processes followed (their runtime probes attached), over the agent's life.
    pub processes: u64,
    pub spawns: u64,
    /// Spawns whose spawning goroutine could not be read.
    pub spawns_unpaired: u64,
    pub handoffs: u64,
    /// `Request.write` of a request whose `roundTrip` was not seen.
    pub handoffs_unpaired: u64,
    /// Entries dropped to stay within the bounds.
    pub forgotten: u64,
}

#[derive(Default)]
pub struct Goroutines {
    /// Processes whose probes are attached; the rules use nothing of the others.
    tracked: HashSet<u32>,
    /// A goroutine's parent and when it was spawned (kernel monotonic ns).
    parents: FastMap<Goroutine, (u64, u64)>,
    /// Spawn order, to forget the oldest first.
    order: VecDeque<Goroutine>,
    /// (pid, `*http.Request`) → the goroutine that called `roundTrip` with it, and when.
    round_trips: FastMap<(u32, u64), (u64, u64)>,
    /// A write loop's goroutine → the goroutine whose request it writes now.
    writing_for: FastMap<Goroutine, u64>,
    pub stats: GoroutineStats,
}

impl Goroutines {
    /// The probes are attached to `pid`'s executable: its goroutines can be followed.
    pub fn track(&mut self, pid: u32) {
        if self.tracked.insert(pid) {
            self.stats.processes += 1;
        }
    }

    #[must_use]
    pub fn is_tracked(&self, pid: u32) -> bool {
        self.tracked.contains(&pid)
    }

    /// A probe fired in `pid` at `ts`, with the values [`GoProbe`] describes.
    pub fn on_probe(&mut self, pid: u32, probe: GoProbe, a: u64, b: u64, ts: u64) {
        if !self.tracked.contains(&pid) {
            return;
        }
        match probe {
            GoProbe::NewprocReturn => {
                if b == 0 {
                    // The spawner could not be read (a spawn from the scheduler, `m.curg`
                    // nil): the goroutine has no known parent; 0 says so to the walk, and
                    // replaces whatever a previous goroutine with this `g` had.
                    self.stats.spawns_unpaired += 1;
                }
                self.spawned((pid, a), b, ts);
            }
            GoProbe::RoundTrip => {
                if self.round_trips.len() >= MAX_HANDOFFS {
                    self.stats.forgotten += self.round_trips.len() as u64;
                    self.round_trips.clear();
                }
                self.round_trips.insert((pid, b), (a, ts));
            }
            GoProbe::RequestWrite => {
                // A hand-off is the write loop's next write after the caller's `roundTrip`: an
                // entry older than that is a request that was never written (its connection
                // failed), and its address may since hold another request.
                let fresh = self
                    .round_trips
                    .remove(&(pid, b))
                    .filter(|&(_, at)| ts.saturating_sub(at) <= MAX_HANDOFF_NS)
                    .map(|(caller, _)| caller);
                let Some(caller) = fresh else {
                    // The write loop now writes for a caller it cannot name: forget the last.
                    self.writing_for.remove(&(pid, a));
                    self.stats.handoffs_unpaired += 1;
                    return;
                };
                if self.writing_for.len() >= MAX_HANDOFFS {
                    self.stats.forgotten += self.writing_for.len() as u64;
                    self.writing_for.clear();
                }
                self.writing_for.insert((pid, a), caller);
                self.stats.handoffs += 1;
            }
        }
    }

    fn spawned(&mut self, child: Goroutine, parent: u64, ts: u64) {
        self.stats.spawns += 1;
        // A reused `g`: nothing of its previous goroutine holds for the new one.
        self.writing_for.remove(&child);
        if self.parents.insert(child, (parent, ts)).is_none() {
            self.order.push_back(child);
        }
        while self.parents.len() > MAX_GOROUTINES {
            let Some(oldest) = self.order.pop_front() else {
                break;
            };
            self.parents.remove(&oldest);
            self.stats.forgotten += 1;
        }
    }

    /// The goroutine a request written by `g` was made by: its caller when `g` is a write loop
    /// that took the request over (`true`), else `g` itself (`false`). A hand-off serves one
    /// request: the write loop's next request needs its own (a lost probe record then costs a
    /// parent, never names the previous caller).
    pub fn take_caller(&mut self, pid: u32, g: u64) -> (u64, bool) {
        match self.writing_for.remove(&(pid, g)) {
            Some(caller) => (caller, true),
            None => (g, false),
        }
    }

    /// Who spawned `g`, and when.
    #[must_use]
    pub fn parent(&self, pid: u32, g: u64) -> Option<(u64, u64)> {
        self.parents.get(&(pid, g)).copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_spawn_names_its_parent() {
        let mut g = Goroutines::default();
        g.on_probe(1, GoProbe::NewprocReturn, 0xb, 0xa, 5);
        assert_eq!(g.parent(1, 0xb), None, "untracked processes are ignored");
        g.track(1);
        g.on_probe(1, GoProbe::NewprocReturn, 0xb, 0xa, 7);
        assert_eq!(g.parent(1, 0xb), Some((0xa, 7)));
        assert_eq!(g.parent(2, 0xb), None);
        // A reused `g` whose spawner could not be read keeps no stale parent: 0 says unknown.
        g.on_probe(1, GoProbe::NewprocReturn, 0xb, 0, 9);
        assert_eq!(g.parent(1, 0xb), Some((0, 9)));
        assert_eq!(g.stats.spawns_unpaired, 1);
    }

    #[test]
    fn a_write_loop_writes_for_the_goroutine_that_called_round_trip() {
        let mut g = Goroutines::default();
        g.track(1);
        g.on_probe(1, GoProbe::RoundTrip, 0xca11, 0x5eed, 1);
        assert_eq!(g.take_caller(1, 0x100), (0x100, false));
        g.on_probe(1, GoProbe::RequestWrite, 0x100, 0x5eed, 2);
        assert_eq!(g.take_caller(1, 0x100), (0xca11, true));
        assert_eq!(
            g.take_caller(1, 0x100),
            (0x100, false),
            "one request per hand-off"
        );
        // The next request it writes came from nowhere the probes saw: no caller, not the last.
        g.on_probe(1, GoProbe::RoundTrip, 0xca11, 0x5eed, 3);
        g.on_probe(1, GoProbe::RequestWrite, 0x100, 0x5eed, 4);
        g.on_probe(1, GoProbe::RequestWrite, 0x100, 0xbad, 5);
        assert_eq!(g.take_caller(1, 0x100), (0x100, false));
        // A reused `g` starts afresh.
        g.on_probe(1, GoProbe::RoundTrip, 0xca11, 0x5eed, 6);
        g.on_probe(1, GoProbe::RequestWrite, 0x100, 0x5eed, 7);
        g.on_probe(1, GoProbe::NewprocReturn, 0x100, 0xa, 8);
        assert_eq!(g.take_caller(1, 0x100), (0x100, false));
        // A `roundTrip` whose request was never written does not pair with a later request
        // that happens to get its address.
        g.on_probe(1, GoProbe::RoundTrip, 0xca11, 0x0dd, 10);
        g.on_probe(
            1,
            GoProbe::RequestWrite,
            0x100,
            0x0dd,
            10 + MAX_HANDOFF_NS + 1,
        );
        assert_eq!(g.take_caller(1, 0x100), (0x100, false));
    }

    #[test]
    fn the_oldest_goroutines_are_forgotten_first() {
        let mut g = Goroutines::default();
        g.track(1);
        for i in 0..=MAX_GOROUTINES as u64 {
            g.spawned((1, 0x1000 + i), 1, i);
        }
        assert_eq!(g.parent(1, 0x1000), None);
        assert_eq!(g.parent(1, 0x1001), Some((1, 1)));
        assert_eq!(g.stats.forgotten, 1);
    }
}

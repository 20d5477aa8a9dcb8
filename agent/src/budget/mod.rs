//! The agent's CPU and memory budget (`--max-cpu`, `--max-memory`): what it measures of itself,
//! how much of the host's edge traffic it keeps, and which connections that sheds.
//!
//! Tracing must never take a node down. About every half second the agent reads its own CPU
//! time and resident memory ([`usage`]); a controller ([`controller`]) turns how far over (or
//! under) budget it is into the share of *edge connections* it keeps. An edge connection is one
//! whose requests start traces on this host: a client end in a process that serves nothing (a
//! load generator, a batch job), with its server end when that is on this host too, or a server
//! end whose requests all come from outside (no client end here, no propagated context). Whether
//! a connection is kept depends only on its rank, a hash of its endpoints ([`rank`]), so both
//! ends agree and a lower share sheds a superset of what a higher one shed.
//!
//! The ring the programs fill is a pressure too: an agent that falls behind (a host with no CPU
//! to spare for it, a ring too small for the load) sheds edges before the ring overflows
//! ([`RING_FILL_AT_LIMIT`], over [`SUSTAINED_DRAINS`] drains in a row: one late wake-up is not
//! falling behind), and sheds more when it overflowed ([`Budget::note_ring_drops`]), so that
//! what it keeps is whole traces instead of records dropped at random.
//!
//! Shedding happens in the kernel first: a shed connection's table entry says
//! [`agent_common::Protocol::Shed`], and the programs stop copying and sending its bytes. The
//! traces the agent keeps stay whole: a shed request's downstream calls have no visible parent,
//! and in a process that hides shed server requests every parentless CLIENT span is dropped
//! with its subtree; a request whose thread has hidden work open cannot take a parent by thread
//! or by what it asks, and the candidate it would have taken is dropped with it (its trace may
//! miss that call). When the load falls the share rises again and shed connections resume at
//! their next syscall, as connections first seen in use.

pub mod config;
pub mod controller;
pub mod rank;
pub mod usage;

pub use config::{BudgetConfig, BudgetError, Limit};
use controller::Controller;
use usage::{Sample, Usage};

/// How often the budget looks at the agent's usage.
pub const INTERVAL_NS: u64 = 500_000_000;

/// How full the ring may get (the bytes the agent has not read yet, over its size) before the
/// agent is as far behind as a budget allows: pressure 1.0. Half full leaves the other half for
/// the time a cut takes to empty the ring (the connections shed stop at their next request).
pub const RING_FILL_AT_LIMIT: f64 = 0.5;

/// How full the ring is when the programs wake the agent
/// ([`agent_common::wakeup_backlog_bytes`]): a drain that a wake-up starts sees this much at
/// least, however fast the agent is, so the ring's pressure counts only what lies above it.
pub const WAKEUP_FILL: f64 = 0.25;

/// Drains in a row whose start must find the ring at a fill for it to count: with a small ring
/// a wake-up that comes a few milliseconds late finds it full once, and the next drain, on
/// time, nearly empty; an agent that is behind finds it full at every drain.
pub const SUSTAINED_DRAINS: usize = 3;

/// The ring's pressure when records were dropped, per share of the interval's records lost
/// (over 1.0: a drop is worse than any fill), up to [`DROP_PRESSURE_MAX`].
const DROP_PRESSURE_PER_SHARE: f64 = 4.0;
const DROP_PRESSURE_MAX: f64 = 3.0;

/// How soon after the last look an early one comes once the ring is at the limit: a ring fills
/// in a fraction of [`INTERVAL_NS`] when the agent stops reading it. An early look acts on the
/// ring alone; CPU is measured over whole intervals.
pub const EARLY_LOOK_NS: u64 = 100_000_000;

/// What the budget did, for the self-metrics and the final counters.
#[derive(Debug, Default, Clone, Copy)]
pub struct BudgetStats {
    /// Edge connections shed (each end counted).
    pub connections_shed: u64,
    /// Of those, ends shed from their opening (connection churn: a process known to start
    /// every trace it is in, [`crate::trace::Tracer::pure_clients`]).
    pub openings_shed: u64,
    /// Shed connections resumed when the share rose.
    pub connections_resumed: u64,
    /// Times the share went down.
    pub cuts: u64,
    /// The agent's CPU use over the last interval, in thousandths of a core.
    pub cpu_millicores: u64,
    /// The agent's resident memory at the last look, bytes.
    pub rss_bytes: u64,
    /// The highest CPU use over any interval, thousandths of a core.
    pub cpu_millicores_peak: u64,
    /// The fullest the ring was at the start of [`SUSTAINED_DRAINS`] drains in a row, over the
    /// last interval, thousandths.
    pub ring_fill_permille: u64,
    /// Cuts made because the ring filled (the agent fell behind) rather than for its CPU or
    /// memory.
    pub ring_cuts: u64,
}

/// The budget's state: limits, the controller, and the last look at the agent's usage.
#[derive(Debug)]
pub struct Budget {
    config: BudgetConfig,
    controller: Controller,
    usage: Usage,
    last: Option<(u64, Sample)>,
    /// The last look's pressure (usage over limit).
    pressure: f64,
    /// The fullest the ring was at the start of [`SUSTAINED_DRAINS`] drains in a row since the
    /// last look (0 to 1).
    ring_fill: f64,
    /// The fills at the last drains' starts (the newest at `recent_at`).
    recent_fills: [f64; SUSTAINED_DRAINS],
    recent_at: usize,
    /// Records the programs dropped (ring full) and sent, since the last look.
    ring_dropped: u64,
    ring_sent: u64,
    /// The next reading of the drop counters covers time before a catch-up: left out.
    drops_before_catch_up: bool,
    /// A cut the ring's fill made is still to show: what was in the ring when it was made
    /// must be read first, and until a drain finds the ring under the limit again, or a whole
    /// interval has passed, it cuts no further (the share would otherwise fall at every look
    /// while the backlog drains). The cut's time (monotonic ns).
    ring_cut_showing: Option<u64>,
    /// The CPU and memory pressure of the last look that measured them (an early look does
    /// not).
    usage_pressure: f64,
    pub stats: BudgetStats,
}

impl Budget {
    #[must_use]
    pub fn new(config: BudgetConfig) -> Self {
        Self {
            config,
            controller: Controller::default(),
            usage: Usage::default(),
            last: None,
            pressure: 0.0,
            ring_fill: 0.0,
            recent_fills: [0.0; SUSTAINED_DRAINS],
            recent_at: 0,
            ring_dropped: 0,
            ring_sent: 0,
            drops_before_catch_up: false,
            ring_cut_showing: None,
            usage_pressure: 0.0,
            stats: BudgetStats::default(),
        }
    }

    /// Whether any limit is set.
    #[must_use]
    pub fn enabled(&self) -> bool {
        self.config.max_cpu.is_on() || self.config.max_memory.is_on()
    }

    /// The last look's pressure: usage over limit, 1.0 at the limit.
    #[must_use]
    pub fn pressure(&self) -> f64 {
        self.pressure
    }

    /// The share of edge connections kept, in `[0, 1]`.
    #[must_use]
    pub fn keep(&self) -> f64 {
        self.controller.keep()
    }

    /// How full the ring was (0 to 1) at a drain's start: the next look takes the fullest it
    /// was at [`SUSTAINED_DRAINS`] drains in a row (a drain that a full batch ended comes back at
    /// once: a backlog of three batches or more over the limit counts, as it should).
    pub fn note_ring_fill(&mut self, fill: f64) {
        self.recent_at = (self.recent_at + 1) % SUSTAINED_DRAINS;
        self.recent_fills[self.recent_at] = fill;
        if self.ring_cut_showing.is_some() && fill < RING_FILL_AT_LIMIT {
            // Caught up with what was in the ring at the cut: from here on the ring's fill
            // says how the cut share does.
            self.ring_cut_showing = None;
            self.ring_fill = 0.0;
            self.recent_fills = [fill; SUSTAINED_DRAINS];
            // Drops counted since the cut, and those the next reading of the counters carries
            // (read every 100 ms, this drain comes sooner), are the backlog's.
            self.ring_dropped = 0;
            self.ring_sent = 0;
            self.drops_before_catch_up = true;
            return;
        }
        let sustained = self
            .recent_fills
            .iter()
            .copied()
            .fold(f64::INFINITY, f64::min);
        self.ring_fill = self.ring_fill.max(sustained);
    }

    /// Records the programs dropped because the ring was full, and records they sent, since the
    /// last call (the kernel's counters, read about every 100 ms).
    pub fn note_ring_drops(&mut self, dropped: u64, sent: u64) {
        if std::mem::take(&mut self.drops_before_catch_up) {
            return;
        }
        self.ring_dropped += dropped;
        self.ring_sent += sent;
    }

    /// The pressure of a ring that was `fill` full at its fullest over drains in a row, and that
    /// dropped `dropped` of `dropped + sent` records: what lies above the wake-up point, 1.0 at
    /// [`RING_FILL_AT_LIMIT`], and over 1.0 for any drop, more the more were lost; held at 1.0
    /// while a cut it made is still showing.
    fn ring_pressure(&self, fill: f64, dropped: u64, sent: u64) -> f64 {
        let mut pressure = ((fill - WAKEUP_FILL) / (RING_FILL_AT_LIMIT - WAKEUP_FILL)).max(0.0);
        if dropped > 0 {
            let share = dropped as f64 / (dropped + sent) as f64;
            pressure = pressure.max((1.0 + DROP_PRESSURE_PER_SHARE * share).min(DROP_PRESSURE_MAX));
        }
        if self.ring_cut_showing.is_some() {
            pressure.min(1.0)
        } else {
            pressure
        }
    }

    /// Looks at the agent's usage if an interval passed since the last look (`now_ns`:
    /// monotonic), or at the ring alone when it reached its limit since; returns the new share
    /// when it changed.
    pub fn tick(&mut self, now_ns: u64) -> Option<f64> {
        if !self.enabled() {
            return None;
        }
        let since = self.last.map(|(at, _)| now_ns.saturating_sub(at));
        let early = (self.ring_fill >= RING_FILL_AT_LIMIT || self.ring_dropped > 0)
            && self.ring_cut_showing.is_none();
        let regular = since.is_none_or(|since| since >= INTERVAL_NS);
        let early_due = early && since.is_some_and(|since| since >= EARLY_LOOK_NS);
        if !(regular || early_due) {
            return None;
        }
        let sample = if regular {
            Some(self.usage.sample()?)
        } else {
            None
        };
        // Taken at every look, the first too: a backlog the ring held before the agent read it
        // at all (start-up) is not the agent falling behind.
        let fill = std::mem::take(&mut self.ring_fill);
        let dropped = std::mem::take(&mut self.ring_dropped);
        let sent = std::mem::take(&mut self.ring_sent);
        let usage = if let Some(sample) = sample {
            let (at, before) = self.last.replace((now_ns, sample))?;
            let cores = sample.cpu_cores_since(&before, now_ns.saturating_sub(at));
            self.stats.cpu_millicores = (cores * 1000.0) as u64;
            self.stats.cpu_millicores_peak = self
                .stats
                .cpu_millicores_peak
                .max(self.stats.cpu_millicores);
            self.stats.rss_bytes = sample.rss_bytes;
            self.usage_pressure = self.config.pressure(cores, sample.rss_bytes);
            if self
                .ring_cut_showing
                .is_some_and(|at| now_ns.saturating_sub(at) >= INTERVAL_NS)
            {
                // What was in the ring at the cut is read by now, or the agent is behind
                // still: the ring's fill may cut again.
                self.ring_cut_showing = None;
            }
            self.usage_pressure
        } else {
            // An early look goes by the ring alone (its fill reached the limit: pressure 1.0 at
            // least, so it holds or cuts, never grows the share) and leaves `last` alone: CPU
            // is measured over whole intervals, and one measure makes one cut.
            0.0
        };
        self.stats.ring_fill_permille = (fill * 1000.0) as u64;
        let ring = self.ring_pressure(fill, dropped, sent);
        let pressure = usage.max(ring);
        self.pressure = pressure;
        let before = self.controller.keep();
        let after = self.controller.update(pressure);
        tracing::debug!(
            cpu_millicores = self.stats.cpu_millicores,
            rss = self.stats.rss_bytes,
            ring_fill = fill,
            dropped,
            pressure,
            keep = after,
            early = !regular,
            "budget: look"
        );
        if after < before {
            self.stats.cuts += 1;
            if ring > usage {
                self.stats.ring_cuts += 1;
                self.ring_cut_showing = Some(now_ns);
            }
        }
        ((after - before).abs() > f64::EPSILON).then_some(after)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A budget far above the agent's CPU and without a memory limit: only the ring cuts.
    fn ring_only() -> Budget {
        Budget::new(BudgetConfig {
            max_cpu: Limit::At(64.0),
            max_memory: Limit::Off,
        })
    }

    /// The ring found `fill` full at [`SUSTAINED_DRAINS`] drains in a row.
    fn sustained(budget: &mut Budget, fill: f64) {
        for _ in 0..SUSTAINED_DRAINS {
            budget.note_ring_fill(fill);
        }
    }

    #[test]
    fn memory_over_budget_cuts_the_share_and_cpu_is_measured() {
        let mut budget = Budget::new(BudgetConfig {
            max_cpu: Limit::Off,
            max_memory: Limit::At(32 << 20),
        });
        assert!(budget.enabled());
        // 64 MiB held and touched: resident, over the 32 MiB budget.
        let held = vec![1_u8; 64 << 20];
        assert!(
            budget.tick(0).is_none(),
            "the first look only takes a sample"
        );
        let keep = budget.tick(INTERVAL_NS).expect("a cut");
        assert!(
            keep < 1.0 && budget.pressure() > 1.0,
            "{keep} {}",
            budget.pressure()
        );
        assert!(budget.stats.rss_bytes > 64 << 20);
        assert_eq!(budget.stats.cuts, 1);
        assert!(
            budget.tick(INTERVAL_NS + 1).is_none(),
            "not before the next interval"
        );
        drop(std::hint::black_box(held));
    }

    #[test]
    fn a_ring_falling_behind_cuts_the_share_once_and_looks_sooner() {
        let mut budget = ring_only();
        // A backlog before the first look (start-up) is not the agent falling behind.
        sustained(&mut budget, 1.0);
        assert!(
            budget.tick(0).is_none(),
            "the first look only takes a sample"
        );
        // Far under the CPU budget, but the ring was three quarters full at drains in a row.
        budget.note_ring_fill(0.2);
        sustained(&mut budget, 0.75);
        budget.note_ring_fill(0.1);
        assert!(
            budget.tick(EARLY_LOOK_NS - 1).is_none(),
            "not before the early look"
        );
        let keep = budget.tick(EARLY_LOOK_NS).expect("a cut");
        assert!(keep < 1.0, "{keep}");
        let expected = (0.75 - WAKEUP_FILL) / (RING_FILL_AT_LIMIT - WAKEUP_FILL);
        assert!((budget.pressure() - expected).abs() < 1e-9);
        assert_eq!((budget.stats.cuts, budget.stats.ring_cuts), (1, 1));
        assert_eq!(budget.stats.ring_fill_permille, 750);
        // The backlog of the cut still drains: the ring stays full, yet no early look (the
        // fill is left for the next regular look) and, at that look, no second cut.
        sustained(&mut budget, 0.9);
        assert!(budget.tick(2 * EARLY_LOOK_NS).is_none());
        assert_eq!(budget.stats.ring_fill_permille, 750, "no early look");
        assert_eq!(budget.tick(INTERVAL_NS), None, "held, not cut again");
        assert_eq!(
            budget.stats.ring_fill_permille, 900,
            "the regular look saw the fill"
        );
        assert!(
            (budget.pressure() - 1.0).abs() < 1e-9,
            "{}",
            budget.pressure()
        );
        assert_eq!(budget.stats.cuts, 1);
        // Caught up (a drain under the limit): the ring's fill may cut again, at an early look.
        budget.note_ring_fill(0.3);
        sustained(&mut budget, 0.75);
        let again = budget
            .tick(INTERVAL_NS + EARLY_LOOK_NS)
            .expect("a second cut");
        assert!(again < keep, "{again} {keep}");
        assert_eq!(budget.stats.ring_cuts, 2);
    }

    #[test]
    fn a_ring_cut_that_does_not_show_within_an_interval_lets_the_ring_cut_again() {
        let mut budget = ring_only();
        budget.tick(0);
        sustained(&mut budget, 0.9);
        assert!(budget.tick(EARLY_LOOK_NS).is_some(), "a ring cut");
        // The ring never drains under the limit: the agent is behind still.
        sustained(&mut budget, 0.9);
        assert_eq!(budget.tick(INTERVAL_NS), None, "held within the interval");
        sustained(&mut budget, 0.9);
        assert!(
            budget.tick(EARLY_LOOK_NS + INTERVAL_NS).is_none(),
            "no early look while it shows"
        );
        assert!(budget.tick(2 * INTERVAL_NS).is_some(), "cut again");
        assert_eq!(budget.stats.ring_cuts, 2);
    }

    #[test]
    fn early_looks_do_not_reuse_a_cpu_or_memory_measure() {
        // Over the memory budget at every regular look, and the ring at its limit meanwhile.
        let mut budget = Budget::new(BudgetConfig {
            max_cpu: Limit::Off,
            max_memory: Limit::At(32 << 20),
        });
        let held = vec![1_u8; 64 << 20];
        budget.tick(0);
        sustained(&mut budget, 0.5);
        assert_eq!(budget.tick(EARLY_LOOK_NS), None, "the ring alone holds");
        assert!(
            budget.tick(INTERVAL_NS).is_some(),
            "the memory measure cuts"
        );
        for look in 1..5 {
            sustained(&mut budget, 0.5);
            assert_eq!(
                budget.tick(INTERVAL_NS + look * EARLY_LOOK_NS),
                None,
                "early look {look} cut again on the same measure"
            );
        }
        assert_eq!((budget.stats.cuts, budget.stats.ring_cuts), (1, 0));
        drop(std::hint::black_box(held));
    }

    #[test]
    fn one_late_wake_up_is_not_falling_behind_but_a_drop_is() {
        let mut budget = ring_only();
        budget.tick(0);
        // A small ring: a wake-up late once finds it full, the next drains start near empty.
        for _ in 0..10 {
            budget.note_ring_fill(1.0);
            budget.note_ring_fill(0.1);
            budget.note_ring_fill(0.3);
        }
        assert_eq!(budget.tick(EARLY_LOOK_NS), None, "no early look");
        assert_eq!(budget.tick(INTERVAL_NS), None, "no cut");
        assert!(budget.stats.ring_fill_permille <= 300);
        // Records dropped: an early look cuts, by how many were lost.
        budget.note_ring_drops(10, 990);
        let keep = budget
            .tick(INTERVAL_NS + EARLY_LOOK_NS)
            .expect("a cut for the drops");
        assert!(
            (budget.pressure() - 1.04).abs() < 1e-9,
            "{}",
            budget.pressure()
        );
        // A cut aimed a little under the limit (the controller's), for 1 % lost.
        assert!(
            (keep - (0.9 / 1.04 * 1024.0_f64).floor() / 1024.0).abs() < 1e-9,
            "{keep}"
        );
        assert_eq!(budget.stats.ring_cuts, 1);
        // While the cut shows, more drops hold the share; once shown, they cut again.
        budget.note_ring_drops(500, 500);
        assert_eq!(
            budget.tick(2 * INTERVAL_NS),
            None,
            "held while the cut shows"
        );
        budget.note_ring_fill(0.1);
        // The first reading after the catch-up is the backlog's.
        budget.note_ring_drops(500, 500);
        budget.note_ring_drops(500, 500);
        let deeper = budget
            .tick(2 * INTERVAL_NS + EARLY_LOOK_NS)
            .expect("a second cut");
        assert!((budget.pressure() - DROP_PRESSURE_MAX).abs() < 1e-9);
        assert!(deeper < keep * 0.35, "{deeper} {keep}");
    }

    #[test]
    fn two_late_wake_ups_in_a_row_are_not_falling_behind() {
        let mut budget = ring_only();
        budget.tick(0);
        for _ in 0..10 {
            budget.note_ring_fill(0.9);
            budget.note_ring_fill(0.9);
            budget.note_ring_fill(0.2);
        }
        assert_eq!(budget.tick(INTERVAL_NS), None, "no cut");
        assert_eq!(budget.stats.ring_fill_permille, 200);
    }

    #[test]
    fn drops_from_before_a_catch_up_do_not_cut_again() {
        let mut budget = ring_only();
        budget.tick(0);
        budget.note_ring_drops(100, 900);
        assert!(budget.tick(EARLY_LOOK_NS).is_some(), "a cut for the drops");
        // The backlog drains (more drops meanwhile), a drain finds the ring caught up; the
        // counters read next still carry drops from before it.
        budget.note_ring_drops(300, 700);
        budget.note_ring_fill(0.1);
        budget.note_ring_drops(200, 800);
        assert_eq!(budget.tick(2 * EARLY_LOOK_NS), None, "no early look");
        let keep = budget.keep();
        budget.tick(INTERVAL_NS);
        assert!(budget.keep() >= keep, "no second cut");
        assert_eq!((budget.stats.cuts, budget.stats.ring_cuts), (1, 1));
        // Drops after it count.
        budget.note_ring_drops(100, 900);
        assert!(budget.tick(INTERVAL_NS + EARLY_LOOK_NS).is_some());
        assert_eq!(budget.stats.ring_cuts, 2);
    }

    #[test]
    fn the_wake_up_point_matches_the_programs() {
        let ring = agent_common::DEFAULT_RING_BYTES;
        let fill = f64::from(agent_common::wakeup_backlog_bytes(ring)) / f64::from(ring);
        assert!((fill - WAKEUP_FILL).abs() < f64::EPSILON, "{fill}");
    }

    #[test]
    fn no_limit_no_looks() {
        let mut budget = Budget::new(BudgetConfig {
            max_cpu: Limit::Off,
            max_memory: Limit::Off,
        });
        assert!(!budget.enabled());
        assert!(budget.tick(0).is_none() && budget.tick(INTERVAL_NS).is_none());
        assert!((budget.keep() - 1.0).abs() < f64::EPSILON);
    }
}

//! The kernel stamps events with `CLOCK_MONOTONIC` (`bpf_ktime_get_ns`); exports want wall time.

fn now(clock: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec through a valid pointer.
    unsafe { libc::clock_gettime(clock, &raw mut ts) };
    (ts.tv_sec as u64) * 1_000_000_000 + ts.tv_nsec as u64
}

/// Nanoseconds of `CLOCK_MONOTONIC`, the clock of event timestamps.
#[must_use]
pub fn monotonic_ns() -> u64 {
    now(libc::CLOCK_MONOTONIC)
}

/// How often [`WallClock::refresh`] samples the offset again.
pub const RESAMPLE_NS: u64 = 1_000_000_000;

/// Converts kernel timestamps to nanoseconds since the Unix epoch.
///
/// The offset between the two clocks moves whenever the wall clock is set or stepped (NTP at
/// boot, a virtual machine's clock put right after a pause, an operator): an offset sampled once
/// at start would date every later span by the old wall clock, and two agents started at
/// different times would disagree, a remote child then falling outside its parent's time. The
/// owner calls [`WallClock::refresh`] from its periodic work, and the offset is sampled again
/// every [`RESAMPLE_NS`].
#[derive(Debug, Clone, Copy)]
pub struct WallClock {
    offset_ns: i128,
    /// `CLOCK_MONOTONIC` when the offset was sampled.
    sampled_ns: u64,
}

impl WallClock {
    /// Samples the offset between the two clocks now.
    #[must_use]
    pub fn new() -> Self {
        let mono = monotonic_ns();
        let real = now(libc::CLOCK_REALTIME);
        Self {
            offset_ns: i128::from(real) - i128::from(mono),
            sampled_ns: mono,
        }
    }

    /// Samples the offset again if [`RESAMPLE_NS`] passed since the last sample (`now_mono`:
    /// `CLOCK_MONOTONIC`, the caller's own reading).
    pub fn refresh(&mut self, now_mono: u64) {
        if now_mono.saturating_sub(self.sampled_ns) >= RESAMPLE_NS {
            *self = Self::new();
        }
    }

    #[must_use]
    pub fn to_unix_ns(self, monotonic_ns: u64) -> u64 {
        (i128::from(monotonic_ns) + self.offset_ns).max(0) as u64
    }
}

impl Default for WallClock {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_offset_is_sampled_again_after_its_interval_only() {
        let mut clock = WallClock::new();
        let first = clock.sampled_ns;
        clock.refresh(first + RESAMPLE_NS - 1);
        assert_eq!(clock.sampled_ns, first, "sampled again too soon");
        // A reading a whole interval on (as the caller's clock would say): sampled now.
        clock.refresh(first + RESAMPLE_NS);
        assert!(clock.sampled_ns > first, "not sampled again");
        // Either sample dates now by the wall clock, within what the two reads take apart.
        let real = now(libc::CLOCK_REALTIME);
        let dated = clock.to_unix_ns(monotonic_ns());
        assert!(dated.abs_diff(real) < 50_000_000, "{dated} against {real}");
    }
}

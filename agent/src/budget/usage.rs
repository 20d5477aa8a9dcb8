//! The agent's own CPU time (every thread's, user and system) and resident memory.

/// One look at the agent's usage.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    /// CPU time used since the process started, ns.
    pub cpu_ns: u64,
    pub rss_bytes: u64,
}

impl Sample {
    /// Cores used between `before` and this look, `wall_ns` apart.
    #[must_use]
    pub fn cpu_cores_since(&self, before: &Self, wall_ns: u64) -> f64 {
        if wall_ns == 0 {
            return 0.0;
        }
        self.cpu_ns.saturating_sub(before.cpu_ns) as f64 / wall_ns as f64
    }
}

/// Reads the usage; keeps `/proc/self/statm` open.
#[derive(Debug, Default)]
pub struct Usage {
    page_size: u64,
}

impl Usage {
    /// The usage now; `None` if the kernel would not say (never expected).
    pub fn sample(&mut self) -> Option<Sample> {
        // SAFETY: getrusage writes the struct it is given; a zeroed rusage is a valid value.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: `usage` is a valid, writable rusage.
        if unsafe { libc::getrusage(libc::RUSAGE_SELF, &raw mut usage) } != 0 {
            return None;
        }
        let ns = |t: libc::timeval| {
            u64::try_from(t.tv_sec).unwrap_or(0) * 1_000_000_000
                + u64::try_from(t.tv_usec).unwrap_or(0) * 1_000
        };
        if self.page_size == 0 {
            // SAFETY: sysconf has no preconditions.
            self.page_size =
                u64::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096);
        }
        let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
        let resident: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
        Some(Sample {
            cpu_ns: ns(usage.ru_utime) + ns(usage.ru_stime),
            rss_bytes: resident * self.page_size,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn work_shows_as_cpu_time_and_memory_as_resident() {
        let mut usage = Usage::default();
        let before = usage.sample().expect("a sample");
        let start = std::time::Instant::now();
        let mut x = 0_u64;
        let mut after = before;
        // Until the kernel's accounting shows 10 ms more (bounded: a stuck clock fails).
        while after.cpu_ns < before.cpu_ns + 10_000_000 && start.elapsed().as_secs() < 10 {
            for _ in 0..100_000 {
                x = std::hint::black_box(x.wrapping_add(1));
            }
            after = usage.sample().expect("a sample");
        }
        assert!(
            after.cpu_ns >= before.cpu_ns + 10_000_000,
            "{before:?} {after:?}"
        );
        assert!(after.rss_bytes > 1 << 20);
    }
}

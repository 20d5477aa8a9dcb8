//! A fixed-bucket histogram, as Prometheus exposes them (cumulative at render time).

/// Upper bounds in seconds: OpenTelemetry's advice for request durations
/// (`http.server.request.duration` and friends).
pub const DURATION_BUCKETS: [f64; 14] = [
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
];

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Histogram {
    /// Observations per bucket (not cumulative); the last is above every bound (`+Inf`).
    counts: [u64; DURATION_BUCKETS.len() + 1],
    sum: f64,
    count: u64,
}

impl Histogram {
    pub fn observe(&mut self, seconds: f64) {
        let seconds = if seconds.is_finite() {
            seconds.max(0.0)
        } else {
            0.0
        };
        let i = DURATION_BUCKETS
            .iter()
            .position(|&bound| seconds <= bound)
            .unwrap_or(DURATION_BUCKETS.len());
        self.counts[i] += 1;
        self.sum += seconds;
        self.count += 1;
    }

    #[must_use]
    pub fn count(&self) -> u64 {
        self.count
    }

    #[must_use]
    pub fn sum(&self) -> f64 {
        self.sum
    }

    /// Observations per bucket, not cumulative, the one above every bound last (OTLP's
    /// `bucket_counts` for [`DURATION_BUCKETS`]).
    #[must_use]
    pub fn buckets(&self) -> &[u64] {
        &self.counts
    }

    /// (`le` label, cumulative count) per bucket, `+Inf` last.
    pub fn cumulative(&self) -> impl Iterator<Item = (String, u64)> + '_ {
        let bounds = DURATION_BUCKETS
            .iter()
            .map(|b| format!("{b}"))
            .chain(std::iter::once("+Inf".to_string()));
        bounds.zip(self.counts.iter().scan(0, |total, &n| {
            *total += n;
            Some(*total)
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_cumulative_and_inf_holds_all() {
        let mut h = Histogram::default();
        for s in [0.001, 0.005, 0.2, 30.0, f64::NAN] {
            h.observe(s);
        }
        let buckets: Vec<(String, u64)> = h.cumulative().collect();
        assert_eq!(buckets[0], ("0.005".to_string(), 3), "≤ bound, NaN as 0");
        assert_eq!(buckets[6], ("0.25".to_string(), 4));
        assert_eq!(buckets.last(), Some(&("+Inf".to_string(), 5)));
        assert_eq!(h.count(), 5);
        assert!((h.sum() - 30.206).abs() < 1e-9);
    }
}

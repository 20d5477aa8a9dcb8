//! Turns the budget's pressure (usage over limit: 1.0 at the limit) into the share of edge
//! connections kept. Multiplicative cuts aimed a little under the limit, so one look brings an
//! overload back near budget; slow, additive-then-multiplicative recovery with a dead band, so
//! the share does not swing with every look (each swing sheds or resumes connections).

/// Where a cut aims: this far under the limit.
const TARGET: f64 = 0.9;
/// Under this pressure the share grows again.
const RECOVER_BELOW: f64 = 0.7;
/// The share moves in steps of 1/`STEPS`, and below one step it is zero.
const STEPS: f64 = 1024.0;

#[derive(Debug)]
pub struct Controller {
    keep: f64,
}

impl Default for Controller {
    fn default() -> Self {
        Self { keep: 1.0 }
    }
}

impl Controller {
    #[must_use]
    pub fn keep(&self) -> f64 {
        self.keep
    }

    /// The share after a look at `pressure`.
    pub fn update(&mut self, pressure: f64) -> f64 {
        let next = if pressure > 1.0 {
            // The work left scales with the share only in part (the agent's floor, shed
            // requests' downstream calls are still parsed): cut by at least a tenth.
            self.keep * (TARGET / pressure).clamp(0.3, 0.9)
        } else if pressure < RECOVER_BELOW {
            (self.keep * 1.25 + 0.02).min(1.0)
        } else {
            self.keep
        };
        let quantised = (next * STEPS).floor() / STEPS;
        self.keep = if next >= 1.0 {
            1.0
        } else {
            quantised.clamp(0.0, 1.0)
        };
        self.keep
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cuts_under_load_holds_in_the_band_and_recovers_when_idle() {
        let mut c = Controller::default();
        assert!(
            (c.update(0.5) - 1.0).abs() < f64::EPSILON,
            "under budget: all kept"
        );
        let cut = c.update(2.0);
        assert!(cut <= 0.45 + 1.0 / STEPS && cut > 0.4, "{cut}");
        assert!(
            (c.update(0.8) - cut).abs() < f64::EPSILON,
            "in the band: held"
        );
        let deeper = c.update(10.0);
        assert!(
            (deeper - (cut * 0.3 * STEPS).floor() / STEPS).abs() < 1e-9,
            "{deeper}"
        );
        let mut last = deeper;
        let mut looks = 0;
        while c.keep() < 1.0 {
            let next = c.update(0.1);
            assert!(next > last, "recovery only goes up");
            last = next;
            looks += 1;
        }
        assert!(looks < 30, "back to full capture in {looks} looks");
    }

    #[test]
    fn a_hopeless_budget_sheds_everything_it_can() {
        let mut c = Controller::default();
        for _ in 0..40 {
            c.update(50.0);
        }
        assert!(c.keep().abs() < f64::EPSILON);
    }
}

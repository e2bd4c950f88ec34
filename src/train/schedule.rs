//! Learning-rate schedules: linear warm-up, then constant, linear decay or
//! cosine decay to zero at the last step.

use crate::spec::schema::{Schedule, Warmup};

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LrSchedule {
    pub peak: f64,
    pub kind: Schedule,
    pub warmup_steps: u64,
    pub total_steps: u64,
}

impl LrSchedule {
    /// `warmup` as a step count, or a fraction of the total steps (rounded up,
    /// so a non-zero fraction warms up for at least one step).
    pub fn new(peak: f64, kind: Schedule, warmup: Warmup, total_steps: u64) -> Self {
        let warmup_steps = match warmup {
            Warmup::Steps(n) => n,
            Warmup::Ratio(r) => (r * total_steps as f64).ceil() as u64,
        }
        .min(total_steps);
        LrSchedule {
            peak,
            kind,
            warmup_steps,
            total_steps,
        }
    }

    /// The rate for optimiser step `step` (0-based: the first update uses
    /// `lr(0)`), as transformers' schedulers compute it.
    pub fn lr(&self, step: u64) -> f64 {
        if step < self.warmup_steps {
            return self.peak * (step + 1) as f64 / self.warmup_steps as f64;
        }
        let decay_steps = self.total_steps.saturating_sub(self.warmup_steps).max(1);
        let progress = ((step - self.warmup_steps) as f64 / decay_steps as f64).clamp(0.0, 1.0);
        match self.kind {
            Schedule::Constant => self.peak,
            Schedule::Linear => self.peak * (1.0 - progress),
            Schedule::Cosine => self.peak * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warmup_rises_linearly_to_the_peak() {
        let s = LrSchedule::new(1.0, Schedule::Constant, Warmup::Steps(4), 10);
        let rates: Vec<f64> = (0..5).map(|i| s.lr(i)).collect();
        assert_eq!(rates, vec![0.25, 0.5, 0.75, 1.0, 1.0]);
    }

    #[test]
    fn decays_reach_zero_at_the_end() {
        let cosine = LrSchedule::new(2.0, Schedule::Cosine, Warmup::Ratio(0.1), 100);
        assert_eq!(cosine.warmup_steps, 10);
        assert!((cosine.lr(10) - 2.0).abs() < 1e-12);
        assert!(
            (cosine.lr(55) - 1.0).abs() < 1e-12,
            "half way is half the peak"
        );
        assert!(cosine.lr(100).abs() < 1e-12);
        let linear = LrSchedule::new(1.0, Schedule::Linear, Warmup::Steps(0), 4);
        assert_eq!(
            (0..=4).map(|i| linear.lr(i)).collect::<Vec<_>>(),
            vec![1.0, 0.75, 0.5, 0.25, 0.0]
        );
    }

    #[test]
    fn a_small_ratio_still_warms_up_one_step() {
        let s = LrSchedule::new(1.0, Schedule::Constant, Warmup::Ratio(0.01), 10);
        assert_eq!(s.warmup_steps, 1);
    }
}

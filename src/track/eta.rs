//! How far a sweep is and when it will end, from the plan's relative cost
//! of each trial (`estimate/cost.rs`) and the progress measured so far: a
//! trial's share of the work is its cost; a running trial has done the
//! fraction of its steps it reached. The rate is the work done since this
//! run started over its wall time, so the estimate exists as soon as any
//! trial has taken a step, not only once one finishes.

use std::collections::HashMap;
use std::time::Duration;

/// The sweep's work, in units of relative cost.
#[derive(Clone, Debug, Default)]
pub struct Progress {
    total: f64,
    /// Trials that ended (finished, pruned, failed), by cost.
    done: f64,
    /// Running trials: (cost, fraction of their steps done).
    running: HashMap<String, (f64, f64)>,
    /// Work already done when this run started (earlier runs, checkpoints
    /// resumed from), which took none of this run's time.
    before: f64,
    costs: HashMap<String, f64>,
}

impl Progress {
    /// A trial of the sweep, with its relative cost (0 or less counts as 1).
    pub fn add_trial(&mut self, trial: &str, cost: f64, already_done: bool) {
        let cost = if cost > 0.0 && cost.is_finite() {
            cost
        } else {
            1.0
        };
        if self.costs.insert(trial.to_owned(), cost).is_none() {
            self.total += cost;
            if already_done {
                self.done += cost;
                self.before += cost;
            }
        }
    }

    fn cost(&self, trial: &str) -> f64 {
        self.costs.get(trial).copied().unwrap_or(1.0)
    }

    /// A worker started `trial` at `step` of `total` (a resumed checkpoint
    /// counts as work done before this run).
    pub fn started(&mut self, trial: &str, step: u64, total: u64) {
        let fraction = fraction(step, total);
        let cost = self.cost(trial);
        let previous = self.running.insert(trial.to_owned(), (cost, fraction));
        // A retry starts again from its checkpoint: only a first sight of
        // the trial in this run counts its resumed part as earlier work.
        if previous.is_none() {
            self.before += cost * fraction;
        }
    }

    /// `trial` reached `step` of `total`.
    pub fn step(&mut self, trial: &str, step: u64, total: u64) {
        let cost = self.cost(trial);
        self.running
            .insert(trial.to_owned(), (cost, fraction(step, total)));
    }

    /// `trial` ended (finished, pruned or failed for good).
    pub fn ended(&mut self, trial: &str) {
        self.running.remove(trial);
        self.done += self.cost(trial);
    }

    /// Work done, from 0 to 1.
    pub fn fraction_done(&self) -> f64 {
        if self.total <= 0.0 {
            return 0.0;
        }
        (self.work_done() / self.total).clamp(0.0, 1.0)
    }

    fn work_done(&self) -> f64 {
        self.done + self.running.values().map(|(c, f)| c * f).sum::<f64>()
    }

    /// Time left at the rate of this run so far; `None` before any work.
    pub fn eta(&self, elapsed: Duration) -> Option<Duration> {
        let this_run = self.work_done() - self.before;
        let seconds = elapsed.as_secs_f64();
        if this_run <= 1e-9 || seconds <= 0.0 {
            return None;
        }
        let left = (self.total - self.work_done()).max(0.0);
        Some(Duration::from_secs_f64(left * seconds / this_run))
    }
}

fn fraction(step: u64, total: u64) -> f64 {
    if total == 0 {
        0.0
    } else {
        (step as f64 / total as f64).min(1.0)
    }
}

/// `1:02:03`, or `4:05` under an hour.
pub fn clock(d: Duration) -> String {
    let s = d.as_secs();
    if s >= 3600 {
        format!("{}:{:02}:{:02}", s / 3600, (s / 60) % 60, s % 60)
    } else {
        format!("{}:{:02}", s / 60, s % 60)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_estimate_exists_before_any_trial_ends_and_weighs_trials_by_cost() {
        let mut p = Progress::default();
        p.add_trial("small", 1.0, false);
        p.add_trial("big", 3.0, false);
        assert_eq!(p.eta(Duration::from_secs(10)), None, "no work yet");
        p.started("small", 0, 100);
        p.started("big", 0, 100);
        p.step("small", 50, 100);
        p.step("big", 50, 100);
        // Half of everything in 60 s: 60 s to go.
        let eta = p.eta(Duration::from_secs(60)).unwrap();
        assert!((eta.as_secs_f64() - 60.0).abs() < 1e-6, "{eta:?}");
        assert!((p.fraction_done() - 0.5).abs() < 1e-12);
        p.ended("small");
        // 1 + 1.5 of 4 done in 80 s: 1.5 left at 2.5 per 80 s = 48 s.
        let eta = p.eta(Duration::from_secs(80)).unwrap();
        assert!((eta.as_secs_f64() - 48.0).abs() < 1e-6, "{eta:?}");
    }

    #[test]
    fn work_from_earlier_runs_does_not_speed_up_the_rate() {
        let mut p = Progress::default();
        p.add_trial("done", 1.0, true);
        p.add_trial("resumed", 1.0, false);
        p.started("resumed", 50, 100);
        assert_eq!(
            p.eta(Duration::from_secs(30)),
            None,
            "nothing done this run"
        );
        p.step("resumed", 75, 100);
        // A quarter of one trial in 30 s; a quarter left: 30 s.
        let eta = p.eta(Duration::from_secs(30)).unwrap();
        assert!((eta.as_secs_f64() - 30.0).abs() < 1e-6, "{eta:?}");
        assert_eq!(clock(Duration::from_secs(3725)), "1:02:05");
        assert_eq!(clock(Duration::from_secs(65)), "1:05");
    }
}

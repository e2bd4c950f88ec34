//! `sweep.budget` in the scheduler: what the sweep has spent (every attempt,
//! earlier runs included), the measured seconds per unit of the plan's
//! relative cost, and whether a trial never launched may start. The rule
//! itself is `search::budget`'s.

use std::collections::{BTreeSet, HashMap};

use crate::plan::timing::rate;
use crate::search::budget::{Admission, Budget};
use crate::spec::schema::SweepBudget;

/// What the store knows of one trial of the sweep.
#[derive(Clone, Debug, PartialEq)]
pub struct TrialSpend {
    pub trial: String,
    pub rel_cost: f64,
    /// Device-seconds of its ended attempts.
    pub seconds: f64,
    /// Whether any attempt of it ever started.
    pub launched: bool,
    pub finished: bool,
}

/// A running attempt, as the budget sees it.
#[derive(Clone, Debug, PartialEq)]
pub struct Running {
    pub trial: String,
    pub rel_cost: f64,
    pub elapsed_s: f64,
}

pub struct BudgetGate {
    budget: Budget,
    spent_s: f64,
    launched: BTreeSet<String>,
    /// Seconds so far per trial, for the rate once it finishes.
    seconds: HashMap<String, f64>,
    /// `(rel_cost, seconds)` of finished trials.
    finished: Vec<(f64, f64)>,
}

impl BudgetGate {
    /// `None` when the spec sets no limit.
    pub fn new(spec: &SweepBudget, history: &[TrialSpend]) -> Option<BudgetGate> {
        let budget = Budget {
            gpu_hours: (spec.gpu_hours > 0.0).then_some(spec.gpu_hours),
            trials: (spec.trials > 0).then_some(spec.trials),
        };
        if budget == Budget::default() {
            return None;
        }
        Some(BudgetGate {
            budget,
            spent_s: history.iter().map(|t| t.seconds).sum(),
            launched: history
                .iter()
                .filter(|t| t.launched)
                .map(|t| t.trial.clone())
                .collect(),
            seconds: history
                .iter()
                .map(|t| (t.trial.clone(), t.seconds))
                .collect(),
            finished: history
                .iter()
                .filter(|t| t.finished)
                .map(|t| (t.rel_cost, t.seconds))
                .collect(),
        })
    }

    /// Seconds per unit of relative cost, once a trial has finished.
    pub fn seconds_per_unit(&self) -> Option<f64> {
        rate(&self.finished)
    }

    /// Whether `trial` may start. A trial launched before always may (it
    /// resumes, retries or was promoted); a new one is judged on the spent
    /// seconds plus what the running trials use and still need (`running`:
    /// their relative cost and seconds so far) plus its own estimate.
    pub fn admit(&self, trial: &str, rel_cost: f64, running: &[Running]) -> Admission {
        if self.launched.contains(trial) {
            return Admission::Launch;
        }
        let per_unit = self.seconds_per_unit().unwrap_or(0.0);
        let committed: f64 = running
            .iter()
            .map(|r| {
                let before = self.seconds.get(&r.trial).copied().unwrap_or(0.0);
                let left = r.rel_cost * per_unit - before - r.elapsed_s;
                r.elapsed_s + left.max(0.0)
            })
            .sum();
        self.budget.admit(
            self.spent_s + committed,
            u32::try_from(self.launched.len()).unwrap_or(u32::MAX),
            rel_cost * per_unit,
        )
    }

    /// Whether no new trial could start whatever its cost (for suggestions).
    pub fn spent(&self, running: &[Running]) -> bool {
        self.admit("", 0.0, running) != Admission::Launch
    }

    pub fn launched(&mut self, trial: &str) {
        self.launched.insert(trial.to_owned());
    }

    /// An attempt of `trial` ended after `seconds` on its device.
    pub fn attempt_ended(&mut self, trial: &str, rel_cost: f64, seconds: f64, finished: bool) {
        self.spent_s += seconds;
        let total = self.seconds.entry(trial.to_owned()).or_default();
        *total += seconds;
        if finished {
            self.finished.push((rel_cost, *total));
        }
    }
}

/// Why a trial never started, for its record.
pub fn refusal(admission: Admission) -> Option<String> {
    match admission {
        Admission::Launch => None,
        Admission::TrialsSpent { limit } => Some(format!(
            "not started: sweep.budget.trials = {limit} trials were launched"
        )),
        Admission::ComputeSpent {
            spent_s,
            next_s,
            limit_s,
        } => Some(format!(
            "not started: {:.3} device-hours spent or committed plus its estimated {:.3} would pass sweep.budget.gpu_hours = {}",
            spent_s / 3600.0,
            next_s / 3600.0,
            limit_s / 3600.0
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spend(trial: &str, seconds: f64, finished: bool) -> TrialSpend {
        TrialSpend {
            trial: trial.into(),
            rel_cost: 2.0,
            seconds,
            launched: seconds > 0.0,
            finished,
        }
    }

    #[test]
    fn earlier_runs_count_and_launched_trials_always_go_on() {
        let spec = SweepBudget {
            gpu_hours: 1.0,
            trials: 3,
        };
        // 1,800 s spent by two trials; one finished: 900 s per 2 units.
        let gate =
            BudgetGate::new(&spec, &[spend("a", 900.0, true), spend("b", 900.0, false)]).unwrap();
        assert_eq!(gate.seconds_per_unit(), Some(450.0));
        // b resumes whatever the budget says.
        assert_eq!(gate.admit("b", 2.0, &[]), Admission::Launch);
        // c: 1,800 + its 900 fits in 3,600.
        assert_eq!(gate.admit("c", 2.0, &[]), Admission::Launch);
        // b resumed (120 s in) has used its 900 s estimate: it commits
        // only what it ran. A new x, 120 s in, commits its whole 900 s.
        let running = |trial: &str| Running {
            trial: trial.into(),
            rel_cost: 2.0,
            elapsed_s: 120.0,
        };
        assert_eq!(gate.admit("c", 2.5, &[running("b")]), Admission::Launch);
        assert!(matches!(
            gate.admit("c", 2.5, &[running("x")]),
            Admission::ComputeSpent { .. }
        ));
        let mut gate = gate;
        gate.launched("c");
        assert_eq!(
            gate.admit("d", 0.0, &[]),
            Admission::TrialsSpent { limit: 3 }
        );
        assert!(gate.spent(&[]));
        assert!(
            refusal(gate.admit("d", 0.0, &[]))
                .unwrap()
                .contains("sweep.budget.trials = 3")
        );
    }

    #[test]
    fn no_limit_is_no_gate_and_the_rate_follows_finished_trials() {
        let none = SweepBudget {
            gpu_hours: 0.0,
            trials: 0,
        };
        assert!(BudgetGate::new(&none, &[]).is_none());
        let mut gate = BudgetGate::new(
            &SweepBudget {
                gpu_hours: 0.5,
                trials: 0,
            },
            &[],
        )
        .unwrap();
        assert_eq!(gate.seconds_per_unit(), None, "nothing finished yet");
        assert_eq!(gate.admit("a", 5.0, &[]), Admission::Launch);
        gate.launched("a");
        gate.attempt_ended("a", 5.0, 300.0, false);
        gate.attempt_ended("a", 5.0, 700.0, true);
        assert_eq!(gate.seconds_per_unit(), Some(200.0));
        // 1,000 s spent; b at 5 units needs 1,000 more: past 1,800.
        assert!(matches!(
            gate.admit("b", 5.0, &[]),
            Admission::ComputeSpent { .. }
        ));
        assert_eq!(gate.admit("b", 4.0, &[]), Admission::Launch);
    }
}

//! ASHA and Hyperband in the scheduler (`sweep.early_stop = "asha"` or
//! `"hyperband"`): the step at which a trial's next attempt stops (its
//! rung), what its evaluation there decides, and that state rebuilt from
//! the trial folders and the store when a sweep resumes. The halving itself
//! is `search::asha`'s, a pure machine whose decisions depend only on the
//! order of rung results; live, that is the order in which the dispatcher
//! reads the rung evaluations, and a rebuild replays them in the order of
//! their recorded wall times (the same order unless two workers report
//! within the same instant). Hyperband is brackets of ASHA with different
//! lowest rungs (`search::hyperband`); a trial joins a bracket when it is
//! first launched, in launch order.

use std::collections::{BTreeMap, BTreeSet};

use crate::metrics::names::higher_is_better;
use crate::search::asha::{Asha, Decision, Promotion, Rungs, State};
use crate::search::hyperband::Hyperband;
use crate::worker::contract::StopAfter;

/// What the rungs count: optimiser steps, or epochs (`sweep.asha.max_epochs`,
/// evaluated at each epoch's end).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RungUnit {
    Step,
    Epoch,
}

impl RungUnit {
    /// Where a worker stops at a rung of `resource` units.
    fn stop_after(self, resource: u64) -> StopAfter {
        match self {
            RungUnit::Step => StopAfter::Step(resource),
            RungUnit::Epoch => StopAfter::Epoch(resource),
        }
    }

    /// The resource an evaluation at `step` (after `epoch` epochs) reached.
    fn of(self, step: u64, epoch: Option<u64>) -> Option<u64> {
        match self {
            RungUnit::Step => Some(step),
            RungUnit::Epoch => epoch,
        }
    }

    fn name(self) -> &'static str {
        match self {
            RungUnit::Step => "step",
            RungUnit::Epoch => "epoch",
        }
    }
}

/// One recorded evaluation of the selection metric (a store row).
#[derive(Clone, Debug, PartialEq)]
pub struct RecordedEval {
    pub trial: String,
    pub step: u64,
    /// Epochs done when it was made (absent from old stores).
    pub epoch: Option<u64>,
    /// `None`: the worker reported NaN.
    pub value: Option<f64>,
    pub wall_time: f64,
}

/// What a rung evaluation decided.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RungResult {
    /// The reporting trial trains on to the next rung (after its worker
    /// stops at this one; `false`: it waits, paused).
    pub continues: bool,
    /// Paused trials this result promoted: they resume to the next rung.
    pub promoted: Vec<String>,
}

/// A trial that ended the sweep paused: never in the top 1/η of `rung`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoppedAtRung {
    pub trial: String,
    pub rung: usize,
    /// The rung's resource, in `unit`s.
    pub at: u64,
    pub unit: RungUnit,
    /// Rungs of its bracket.
    pub rungs: usize,
    pub eta: u32,
}

impl StoppedAtRung {
    /// The trial's reason in the store and `show`.
    pub fn reason(&self) -> String {
        format!(
            "stopped at rung {} of {} ({} {}): not in the top 1/{} of its rung",
            self.rung,
            self.rungs,
            self.unit.name(),
            self.at,
            self.eta
        )
    }
}

pub struct Promotions {
    brackets: Vec<Asha<String>>,
    /// Deals new trials to brackets; `None`: one bracket (ASHA).
    hyperband: Option<Hyperband>,
    bracket_of: BTreeMap<String, usize>,
    metric: String,
    higher_is_better: bool,
    unit: RungUnit,
}

impl Promotions {
    /// ASHA over `rungs`; `metric` is the selection metric (`val/loss`).
    pub fn new(rungs: Rungs, metric: &str) -> Self {
        Promotions::with(vec![Asha::new(rungs)], None, metric)
    }

    /// Hyperband: one ASHA per bracket.
    pub fn hyperband(hyperband: Hyperband, metric: &str) -> Self {
        let brackets = (0..hyperband.brackets().len())
            .map(|b| Asha::new(hyperband.rungs(b)))
            .collect();
        Promotions::with(brackets, Some(hyperband), metric)
    }

    fn with(brackets: Vec<Asha<String>>, hyperband: Option<Hyperband>, metric: &str) -> Self {
        Promotions {
            brackets,
            hyperband,
            bracket_of: BTreeMap::new(),
            metric: metric.to_owned(),
            higher_is_better: higher_is_better(metric),
            unit: RungUnit::Step,
        }
    }

    /// The same, with rungs counted in `unit` (steps by default).
    #[must_use]
    pub fn in_unit(mut self, unit: RungUnit) -> Self {
        self.unit = unit;
        self
    }

    /// The state an uninterrupted run would have reached: the trials
    /// launched so far join their brackets in `launched` order, then the
    /// first evaluation of each trial at each step is replayed in the order
    /// of wall times. Evaluations that are no rung result of the trial at
    /// that point (a trial that trained past a rung before early stopping
    /// was on) are left out.
    #[must_use]
    pub fn rebuild(mut self, launched: &[String], mut history: Vec<RecordedEval>) -> Self {
        for trial in launched {
            self.bracket(trial);
        }
        history.sort_by(|a, b| a.wall_time.total_cmp(&b.wall_time));
        let mut seen = BTreeSet::new();
        for eval in history {
            let Some(resource) = self.unit.of(eval.step, eval.epoch) else {
                continue;
            };
            if !seen.insert((eval.trial.clone(), resource)) {
                continue;
            }
            let value = eval.value.unwrap_or(f64::NAN);
            self.report(&eval.trial, resource, value);
        }
        self
    }

    /// The bracket of `trial`, which joins one (at its bottom rung) when
    /// first seen.
    fn bracket(&mut self, trial: &str) -> usize {
        if let Some(&b) = self.bracket_of.get(trial) {
            return b;
        }
        let b = self.hyperband.as_mut().map_or(0, Hyperband::assign);
        self.bracket_of.insert(trial.to_owned(), b);
        let _ = self.brackets[b].start(trial.to_owned());
        b
    }

    fn state(&self, trial: &str) -> Option<(usize, State)> {
        let b = *self.bracket_of.get(trial)?;
        Some((b, self.brackets[b].state(&trial.to_owned())?))
    }

    /// Where the next attempt of `trial` stops: its current rung, or `None`
    /// at the top rung (it trains to its end).
    pub fn stop_after(&mut self, trial: &str) -> Option<StopAfter> {
        let b = self.bracket(trial);
        let rungs = self.brackets[b].rungs();
        let rung = match self.brackets[b].state(&trial.to_owned()) {
            Some(State::Training(r) | State::Paused(r)) => r,
            Some(State::Complete) | None => rungs.top(),
        };
        (rung < rungs.top()).then(|| self.unit.stop_after(rungs.resources()[rung]))
    }

    /// The rung `trial` trains towards (0 for a trial not started): the
    /// dispatcher runs higher rungs first, as Li et al.'s workers ask for
    /// a promotion before a new trial.
    pub fn target(&self, trial: &str) -> usize {
        match self.state(trial) {
            Some((_, State::Training(r) | State::Paused(r))) => r,
            Some((b, State::Complete)) => self.brackets[b].rungs().top(),
            None => 0,
        }
    }

    /// Whether a worker of `trial` stops after evaluating at `step`: it is
    /// a rung of its bracket below the top (a worker is told to stop at the
    /// first rung ahead of it, so a rung it evaluates at is where it stops,
    /// also when a resumed scheduler replays that evaluation).
    pub fn stops_at(&self, trial: &str, step: u64, epoch: Option<u64>) -> bool {
        let Some(resource) = self.unit.of(step, epoch) else {
            return false;
        };
        self.bracket_of.get(trial).is_some_and(|&b| {
            let rungs = self.brackets[b].rungs();
            rungs.resources()[..rungs.top()].contains(&resource)
        })
    }

    /// Whether `trial` waits at a rung (not promoted, not training).
    pub fn is_paused(&self, trial: &str) -> bool {
        matches!(self.state(trial), Some((_, State::Paused(_))))
    }

    /// An evaluation of `trial` at `step`, after `epoch` epochs: a rung
    /// result when it is at the rung the trial trains towards, else `None`.
    pub fn on_eval(
        &mut self,
        trial: &str,
        step: u64,
        epoch: Option<u64>,
        metrics: &BTreeMap<String, f64>,
    ) -> Option<RungResult> {
        let value = metrics.get(&self.metric).copied().unwrap_or(f64::NAN);
        self.report(trial, self.unit.of(step, epoch)?, value)
    }

    /// A result at `resource` (in the rungs' unit).
    fn report(&mut self, trial: &str, resource: u64, value: f64) -> Option<RungResult> {
        let Some((b, State::Training(rung))) = self.state(trial) else {
            return None;
        };
        let asha = &mut self.brackets[b];
        if asha.rungs().resources()[rung] != resource {
            return None;
        }
        // The machine ranks lower first.
        let value = if self.higher_is_better { -value } else { value };
        let outcome = asha.report(&trial.to_owned(), rung, value).ok()?;
        Some(RungResult {
            continues: matches!(outcome.decision, Decision::Continue { .. }),
            promoted: outcome
                .promoted
                .into_iter()
                .map(|Promotion { trial, .. }| trial)
                .collect(),
        })
    }

    /// The trials paused now: when no trial trains or waits to start, none
    /// of them can be promoted any more.
    pub fn stopped(&self) -> Vec<StoppedAtRung> {
        let mut stopped: Vec<StoppedAtRung> = self
            .brackets
            .iter()
            .flat_map(|asha| {
                let rungs = asha.rungs();
                asha.paused().into_iter().map(move |s| StoppedAtRung {
                    at: rungs.resources()[s.rung],
                    unit: self.unit,
                    trial: s.trial,
                    rung: s.rung,
                    rungs: rungs.resources().len(),
                    eta: rungs.eta(),
                })
            })
            .collect();
        stopped.sort_by(|a, b| a.trial.cmp(&b.trial));
        stopped
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn loss(v: f64) -> BTreeMap<String, f64> {
        BTreeMap::from([("val/loss".to_owned(), v)])
    }

    /// Rungs 5, 15, 45, η = 3, the hand-worked case of `search::asha`'s
    /// tests (a..i with rung-0 values 5 3 8 1 9 4 2 7 6), run as the
    /// dispatcher runs it: one trial at a time, promoted trials first.
    /// Each launch: the trial and the step it was told to stop after.
    type Launches = Vec<(String, Option<StopAfter>)>;

    fn live_run() -> (Promotions, Vec<RecordedEval>, Launches) {
        let mut p = Promotions::new(Rungs::new(5, 45, 3).unwrap(), "val/loss");
        let rung0: BTreeMap<&str, f64> = [
            ("a", 5.0),
            ("b", 3.0),
            ("c", 8.0),
            ("d", 1.0),
            ("e", 9.0),
            ("f", 4.0),
            ("g", 2.0),
            ("h", 7.0),
            ("i", 6.0),
        ]
        .into();
        let value = |t: &str, step: u64| rung0[t] / (step as f64);
        let mut queue: Vec<String> = rung0.keys().map(|t| (*t).to_owned()).collect();
        let mut history = Vec::new();
        let mut launches = Vec::new();
        let mut clock = 0.0;
        while !queue.is_empty() {
            queue.sort_by_key(|t| std::cmp::Reverse(p.target(t)));
            let trial = queue.remove(0);
            let stop_at = p.stop_after(&trial);
            launches.push((trial.clone(), stop_at));
            let step = match stop_at {
                Some(StopAfter::Step(s)) => s,
                _ => 45,
            };
            clock += 1.0;
            let v = value(&trial, step);
            history.push(RecordedEval {
                trial: trial.clone(),
                step,
                epoch: None,
                value: Some(v),
                wall_time: clock,
            });
            if let Some(result) = p.on_eval(&trial, step, None, &loss(v)) {
                if result.continues {
                    queue.push(trial.clone());
                }
                queue.extend(result.promoted);
            }
        }
        (p, history, launches)
    }

    #[test]
    fn promoted_trials_resume_to_the_next_rung_and_the_rest_stop_where_they_paused() {
        let (p, _, launches) = live_run();
        let stopped: Vec<(String, usize)> =
            p.stopped().into_iter().map(|s| (s.trial, s.rung)).collect();
        let at = |r: usize, ts: &'static str| ts.chars().map(move |t| (t.to_string(), r));
        let mut expected: Vec<(String, usize)> = at(0, "acefhi").chain(at(1, "bg")).collect();
        expected.sort();
        assert_eq!(stopped, expected);
        // d went to the top; b was promoted when c arrived and ran next.
        let order: Vec<String> = launches
            .iter()
            .map(|(t, s)| match s {
                Some(StopAfter::Step(s)) => format!("{t}{s}"),
                _ => format!("{t}end"),
            })
            .collect();
        assert_eq!(
            order.join(" "),
            "a5 b5 c5 b15 d5 d15 e5 f5 g5 g15 dend h5 i5"
        );
    }

    #[test]
    fn a_rebuild_from_the_recorded_evaluations_reaches_the_same_state() {
        let (live, mut history, launches) = live_run();
        let mut order: Vec<String> = Vec::new();
        for (trial, _) in launches {
            if !order.contains(&trial) {
                order.push(trial);
            }
        }
        // A duplicate (a retried attempt evaluating again) and noise rows.
        history.push(RecordedEval {
            wall_time: 99.0,
            value: Some(0.0),
            ..history[0].clone()
        });
        history.push(RecordedEval {
            trial: "z".into(),
            step: 7,
            epoch: None,
            value: None,
            wall_time: 0.5,
        });
        history.reverse();
        let rebuilt =
            Promotions::new(Rungs::new(5, 45, 3).unwrap(), "val/loss").rebuild(&order, history);
        assert_eq!(rebuilt.stopped(), live.stopped());
        for t in ["a", "b", "d", "g", "i"] {
            assert_eq!(rebuilt.target(t), live.target(t), "{t}");
        }
    }

    #[test]
    fn higher_is_better_metrics_rank_the_larger_value_first() {
        let mut p = Promotions::new(Rungs::new(1, 3, 3).unwrap(), "val/field_f1");
        let f1 = |v: f64| BTreeMap::from([("val/field_f1".to_owned(), v)]);
        for (t, v) in [("a", 0.2), ("b", 0.9), ("c", 0.5)] {
            assert_eq!(p.stop_after(t), Some(StopAfter::Step(1)));
            let result = p.on_eval(t, 1, None, &f1(v)).expect("a rung result");
            assert_eq!(
                result.promoted,
                if t == "c" {
                    vec!["b".to_owned()]
                } else {
                    vec![]
                }
            );
        }
        assert_eq!(p.stop_after("b"), None, "b trains to its end");
        assert!(p.is_paused("a") && p.is_paused("c"));
        assert_eq!(p.on_eval("a", 2, None, &f1(1.0)), None, "not a rung of a");
    }

    #[test]
    fn hyperband_deals_trials_to_brackets_that_start_at_different_rungs() {
        // 5..45, η = 3: brackets start at 5 (9 trials), 15 (5) and 45 (3).
        let hb = Hyperband::new(5, 45, 3).unwrap();
        let mut p = Promotions::hyperband(hb, "val/loss");
        let stops: Vec<Option<StopAfter>> = ["t1", "t2", "t3", "t4"]
            .iter()
            .map(|t| p.stop_after(t))
            .collect();
        let step = |s| Some(StopAfter::Step(s));
        assert_eq!(stops, [step(5), step(15), None, step(5)]);
        // t2's first rung is 15: its result there is a rung result, one at 5 is not.
        assert_eq!(p.on_eval("t2", 5, None, &loss(1.0)), None);
        let result = p
            .on_eval("t2", 15, None, &loss(1.0))
            .expect("a rung result");
        assert!(!result.continues, "one result of three needed");
        assert!(p.is_paused("t2"));
        let stopped = p.stopped();
        assert_eq!(stopped.len(), 1);
        assert_eq!(
            stopped[0].reason(),
            "stopped at rung 0 of 2 (step 15): not in the top 1/3 of its rung"
        );
    }

    #[test]
    fn rungs_in_epochs_stop_workers_at_epochs_and_rank_their_epoch_ends() {
        let mut p =
            Promotions::new(Rungs::new(1, 3, 3).unwrap(), "val/loss").in_unit(RungUnit::Epoch);
        for (t, v) in [("a", 3.0), ("b", 1.0), ("c", 2.0)] {
            assert_eq!(p.stop_after(t), Some(StopAfter::Epoch(1)));
            // Step 4 is no epoch of its own: the epoch decides.
            assert_eq!(p.on_eval(t, 4, Some(0), &loss(v)), None, "mid-epoch");
            assert!(!p.stops_at(t, 8, Some(0)));
            assert!(p.stops_at(t, 8, Some(1)));
            let result = p.on_eval(t, 8, Some(1), &loss(v)).expect("a rung result");
            assert_eq!(result.promoted.is_empty(), t != "c");
        }
        assert_eq!(p.stop_after("b"), None, "b trains to its end");
        let stopped = p.stopped();
        assert_eq!(
            stopped[0].reason(),
            "stopped at rung 0 of 2 (epoch 1): not in the top 1/3 of its rung"
        );
        // A rebuild reads the epochs of the recorded evaluations.
        let history = [("a", 3.0), ("b", 1.0), ("c", 2.0)]
            .iter()
            .enumerate()
            .map(|(i, (t, v))| RecordedEval {
                trial: (*t).to_owned(),
                step: 8,
                epoch: Some(1),
                value: Some(*v),
                wall_time: i as f64,
            })
            .collect();
        let order: Vec<String> = ["a", "b", "c"].map(str::to_owned).to_vec();
        let rebuilt = Promotions::new(Rungs::new(1, 3, 3).unwrap(), "val/loss")
            .in_unit(RungUnit::Epoch)
            .rebuild(&order, history);
        assert_eq!(rebuilt.stopped(), stopped);
        assert_eq!(rebuilt.target("b"), 1);
    }
}

//! The median stopping rule over trial keys of any type, as
//! `sweep.early_stop = "median"` applies it (`scheduler/pruner.rs` feeds it
//! the scheduler's metric maps): at an evaluation step, a trial
//! worse than the median of the other trials' values at that same step
//! stops, once `min_trials` others reported the step and after the trial's
//! own first `warmup` evaluations. Values are "lower is better".

use std::collections::{BTreeMap, HashMap};
use std::hash::Hash;

pub struct MedianRule<T> {
    min_trials: usize,
    warmup: usize,
    /// Trial → step → value.
    history: HashMap<T, BTreeMap<u64, f64>>,
}

impl<T: Eq + Hash + Clone> MedianRule<T> {
    pub fn new(min_trials: u32, warmup: u32) -> Self {
        MedianRule {
            min_trials: min_trials.max(1) as usize,
            warmup: warmup as usize,
            history: HashMap::new(),
        }
    }

    /// Whether `trial` reported `step` already.
    pub fn has(&self, trial: &T, step: u64) -> bool {
        self.history
            .get(trial)
            .is_some_and(|steps| steps.contains_key(&step))
    }

    /// Records `trial`'s value at `step`; true when it should stop.
    pub fn report(&mut self, trial: &T, step: u64, value: f64) -> bool {
        if value.is_nan() {
            return false;
        }
        let own = self.history.entry(trial.clone()).or_default();
        own.insert(step, value);
        if own.len() <= self.warmup {
            return false;
        }
        let others: Vec<f64> = self
            .history
            .iter()
            .filter(|(id, _)| *id != trial)
            .filter_map(|(_, steps)| steps.get(&step).copied())
            .collect();
        if others.len() < self.min_trials {
            return false;
        }
        median_of(others).is_some_and(|median| value > median)
    }
}

/// The median (the midpoint of the two middle values of an even count);
/// `None` for no values.
pub fn median_of(mut values: Vec<f64>) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    Some(if values.len().is_multiple_of(2) {
        f64::midpoint(values[mid - 1], values[mid])
    } else {
        values[mid]
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn worse_than_the_median_at_the_same_step_stops_after_warmup() {
        let mut rule = MedianRule::new(3, 1);
        for (trial, v) in [("a", 1.0), ("b", 2.0), ("c", 3.0)] {
            assert!(!rule.report(&trial, 5, v));
            assert!(!rule.report(&trial, 10, v / 2.0));
        }
        assert!(!rule.report(&"d", 5, 9.0), "warm-up");
        assert!(rule.report(&"d", 10, 1.2), "median at 10 is 1.0");
        assert!(!rule.report(&"e", 5, 0.1));
        assert!(!rule.report(&"e", 10, 0.9));
        assert!(!rule.report(&"e", 15, 100.0), "nobody else reached 15");
    }
}

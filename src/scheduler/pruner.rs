//! Early stopping by the median rule (`sweep.early_stop = "median"`): at an
//! evaluation step, a trial whose selection metric is worse than the median
//! of the other trials' values at that same step is stopped and recorded as
//! `pruned`. A strategy that returns a decision, testable without workers.

use std::collections::BTreeMap;

use super::promotions::RecordedEval;
use crate::metrics::names::higher_is_better;
use crate::search::median::MedianRule;

pub struct MedianPruner {
    metric: String,
    higher_is_better: bool,
    /// The rule itself, on "lower is better" values.
    rule: MedianRule<String>,
}

impl MedianPruner {
    /// `metric` is the selection metric (`val/loss`); a trial is judged at
    /// a step once `min_trials` others reported it, and after its own
    /// first `warmup` evaluations.
    pub fn new(metric: &str, min_trials: u32, warmup: u32) -> Self {
        MedianPruner {
            metric: metric.to_owned(),
            higher_is_better: higher_is_better(metric),
            rule: MedianRule::new(min_trials, warmup),
        }
    }

    /// Feeds the evaluations an earlier run recorded, first per trial and
    /// step, in the order they were made; their verdicts are past.
    pub fn replay(&mut self, history: &[RecordedEval]) {
        let mut ordered: Vec<&RecordedEval> = history.iter().collect();
        ordered.sort_by(|a, b| a.wall_time.total_cmp(&b.wall_time));
        for eval in ordered {
            if let (false, Some(value)) = (self.rule.has(&eval.trial, eval.step), eval.value) {
                let metrics = BTreeMap::from([(self.metric.clone(), value)]);
                self.report(&eval.trial, eval.step, &metrics);
            }
        }
    }

    /// Records an evaluation of `trial` at `step`; true when the trial
    /// should stop.
    pub fn report(&mut self, trial: &str, step: u64, metrics: &BTreeMap<String, f64>) -> bool {
        let Some(&value) = metrics.get(&self.metric) else {
            return false;
        };
        let value = if self.higher_is_better { -value } else { value };
        self.rule.report(&trial.to_owned(), step, value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn loss(v: f64) -> BTreeMap<String, f64> {
        BTreeMap::from([("val/loss".to_owned(), v)])
    }

    #[test]
    fn a_trial_worse_than_the_median_at_the_same_step_is_pruned_after_warmup() {
        let mut p = MedianPruner::new("val/loss", 3, 1);
        for (trial, v) in [("a", 1.0), ("b", 2.0), ("c", 3.0)] {
            assert!(!p.report(trial, 5, &loss(v)));
            assert!(!p.report(trial, 10, &loss(v / 2.0)));
        }
        // Its first evaluation is warm-up, whatever it says.
        assert!(!p.report("d", 5, &loss(9.0)));
        // Median at step 10 is 1.0: worse is pruned, better is kept.
        assert!(p.report("d", 10, &loss(1.2)));
        assert!(!p.report("e", 5, &loss(0.1)));
        assert!(!p.report("e", 10, &loss(0.9)));
        // A step nobody else reached is not judged.
        assert!(!p.report("e", 15, &loss(100.0)));
    }

    #[test]
    fn higher_is_better_metrics_flip_the_rule_and_too_few_trials_never_prune() {
        let mut p = MedianPruner::new("val/field_f1", 2, 0);
        let f1 = |v: f64| BTreeMap::from([("val/field_f1".to_owned(), v)]);
        assert!(!p.report("a", 1, &f1(0.9)));
        assert!(!p.report("b", 1, &f1(0.1)), "one other trial is too few");
        assert!(p.report("c", 1, &f1(0.2)));
        assert!(!p.report("d", 1, &f1(0.95)));
    }
}

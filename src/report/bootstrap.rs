//! How noisy a selection-metric value is when the seed did not vary: a
//! bootstrap over the validation examples of each trial's selected
//! checkpoint, from its stored per-example predictions.
//!
//! Each of [`RESAMPLES`] resamples draws as many examples as the split
//! has, with replacement, and recomputes the corpus metric over them with
//! the same accumulator the worker used (`TaskMetrics`); the interval is
//! the 2.5th and 97.5th percentile of the resampled values (the percentile
//! bootstrap). The pick and the runner-up share the validation split, so
//! their difference is bootstrapped *paired*: every resample draws the same
//! examples (matched by index) for both, which cancels what the two trials
//! have in common (hard and easy examples) and leaves what tells them apart.
//! The draws are seeded ([`SEED`]), so a report is reproducible.
//!
//! ```text
//! let stat = Statistic::new(Task::Json, "field_f1", pairs)?;
//! let interval = interval(&stat, RESAMPLES, SEED); // estimate, low, high
//! ```

use std::collections::BTreeMap;
use std::fmt::Write as _;

use super::content::Section;
use super::decision::Decision;
use super::examples::{ExamplesError, SPLIT, TrialExamples};
use super::format::number;
use super::{Report, short_id};
use crate::metrics::json_fields::JsonFieldAccumulator;
use crate::metrics::names;
use crate::metrics::task::{Task, TaskMetrics};
use crate::metrics::text::TextAccumulator;
use crate::rng::SplitMix64;

/// Resamples per interval: enough for stable 2.5% and 97.5% percentiles.
pub const RESAMPLES: usize = 1000;
/// The seed of the draws.
pub const SEED: u64 = 0;
/// The coverage of the intervals.
pub const LEVEL: f64 = 0.95;
/// Groups of the leaderboard (best first) whose best run gets an interval,
/// besides the pick and the runner-up.
pub const LEADERBOARD: usize = 10;

/// A metric value and its bootstrap percentile interval.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Interval {
    /// On every example once.
    pub estimate: f64,
    pub low: f64,
    pub high: f64,
}

impl Interval {
    pub fn contains(&self, value: f64) -> bool {
        self.low <= value && value <= self.high
    }

    /// `[low, high]`.
    pub fn text(&self) -> String {
        format!("[{}, {}]", number(self.low), number(self.high))
    }
}

/// Why a metric cannot be recomputed from the predictions.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Unavailable {
    #[error(
        "{0} has no per-example value: the predictions hold generated text, and no loss per example is stored"
    )]
    Loss(String),
    #[error("{0} is not a validation metric, and the predictions are of the validation split")]
    NotValidation(String),
    #[error("{metric} is not a metric of the {task} task (which reports {known})")]
    NotATaskMetric {
        metric: String,
        task: Task,
        known: String,
    },
    #[error("the two trials share no validation example (matched by index)")]
    NothingShared,
}

/// A corpus metric over (prediction, reference) pairs, ready to resample.
#[derive(Clone, Debug)]
pub struct Statistic {
    task: Task,
    /// As `TaskMetrics::finish` names it (`field_f1`).
    name: String,
    pairs: Vec<(String, String)>,
    /// Per-example sums, when the metric is a ratio of sums and they
    /// reproduce `TaskMetrics` on the whole split.
    sums: Option<Sums>,
}

/// A metric that the task's own accumulators sum over examples: resampling
/// it adds each example's single-example accumulator with its draw count
/// (`add_times`), not re-parsing every example.
#[derive(Clone, Debug)]
enum Sums {
    /// `exact_match`, `cer`.
    Text(Vec<TextAccumulator>),
    /// `field_f1`, `field_precision`, `field_recall`, `json_valid`,
    /// `json_exact`.
    Json(Vec<JsonFieldAccumulator>),
}

impl Statistic {
    /// `name` without the split prefix (`field_f1`).
    pub fn new(task: Task, name: &str, pairs: Vec<(String, String)>) -> Result<Self, Unavailable> {
        if !task.metric_names().contains(&name) {
            return Err(Unavailable::NotATaskMetric {
                metric: name.to_owned(),
                task,
                known: task.metric_names().join(", "),
            });
        }
        let sums = Sums::of(task, name, &pairs);
        Ok(Statistic {
            task,
            name: name.to_owned(),
            sums,
            pairs,
        })
    }

    pub fn examples(&self) -> usize {
        self.pairs.len()
    }

    /// Whether a resample only adds per-example sums; otherwise it
    /// recomputes the metric from every example it drew (mAP, BLEU).
    pub fn is_fast(&self) -> bool {
        self.sums.is_some()
    }

    /// The metric on every example once.
    pub fn estimate(&self) -> f64 {
        let ones = vec![1; self.pairs.len()];
        self.corpus(&ones)
    }

    /// The metric over the examples drawn `counts[i]` times each.
    fn value(&self, counts: &[u32]) -> f64 {
        match &self.sums {
            Some(sums) => sums.value(&self.name, counts),
            None => self.corpus(counts),
        }
    }

    fn corpus(&self, counts: &[u32]) -> f64 {
        let mut metrics = TaskMetrics::new(self.task);
        // In split order: detection ranks tie-break on example order.
        for ((prediction, reference), &count) in self.pairs.iter().zip(counts) {
            for _ in 0..count {
                metrics.add(prediction, reference);
            }
        }
        metrics
            .finish()
            .get(&self.name)
            .copied()
            .unwrap_or(f64::NAN)
    }
}

/// One accumulator per example, each holding that example alone.
fn singles<A>(pairs: &[(String, String)], new: fn() -> A, add: fn(&mut A, &str, &str)) -> Vec<A> {
    pairs
        .iter()
        .map(|(p, r)| {
            let mut acc = new();
            add(&mut acc, p, r);
            acc
        })
        .collect()
}

/// The sum of `each`, example i counted `counts[i]` times: one resample.
fn weighted<A>(each: &[A], counts: &[u32], new: fn() -> A, add_times: fn(&mut A, &A, u64)) -> A {
    let mut acc = new();
    for (one, &count) in each.iter().zip(counts) {
        add_times(&mut acc, one, u64::from(count));
    }
    acc
}

impl Sums {
    /// The single-example accumulators of `name`, when its accumulator is a
    /// sum (BLEU's is too, but it is left to `corpus`, as mAP is).
    fn of(task: Task, name: &str, pairs: &[(String, String)]) -> Option<Sums> {
        match (task, name) {
            (_, names::EXACT_MATCH | names::CER) => Some(Sums::Text(singles(
                pairs,
                TextAccumulator::new,
                TextAccumulator::add,
            ))),
            (
                Task::Json,
                names::JSON_F1
                | names::JSON_PRECISION
                | names::JSON_RECALL
                | names::JSON_VALID
                | names::JSON_EXACT,
            ) => Some(Sums::Json(singles(
                pairs,
                JsonFieldAccumulator::new,
                JsonFieldAccumulator::add,
            ))),
            _ => None,
        }
    }

    fn value(&self, name: &str, counts: &[u32]) -> f64 {
        let value = match self {
            Sums::Text(each) => weighted(
                each,
                counts,
                TextAccumulator::new,
                TextAccumulator::add_times,
            )
            .finish()
            .map(|s| match name {
                names::EXACT_MATCH => s.exact_match,
                _ => s.cer,
            }),
            Sums::Json(each) => weighted(
                each,
                counts,
                JsonFieldAccumulator::new,
                JsonFieldAccumulator::add_times,
            )
            .finish()
            .map(|s| match name {
                names::JSON_PRECISION => s.precision,
                names::JSON_RECALL => s.recall,
                names::JSON_VALID => s.valid,
                names::JSON_EXACT => s.exact,
                _ => s.f1,
            }),
        };
        value.unwrap_or(f64::NAN)
    }
}

/// One seed per resample, from one stream: resample `r` draws the same
/// examples for every statistic of the same size, which is what pairs them.
fn resample_seeds(resamples: usize, seed: u64) -> Vec<u64> {
    let mut rng = SplitMix64::new(seed);
    (0..resamples).map(|_| rng.next_u64()).collect()
}

/// How often each of `n` examples is drawn in one resample.
fn draw(seed: u64, n: usize) -> Vec<u32> {
    let mut rng = SplitMix64::new(seed);
    let mut counts = vec![0; n];
    for _ in 0..n {
        counts[rng.below(n)] += 1;
    }
    counts
}

/// `f` of every resample, in resample order, spread over the cores (the
/// values do not depend on how).
fn resampled<T: Send>(
    resamples: usize,
    seed: u64,
    n: usize,
    f: impl Fn(&[u32]) -> T + Sync,
) -> Vec<T> {
    let seeds = resample_seeds(resamples, seed);
    let threads = std::thread::available_parallelism()
        .map_or(1, std::num::NonZero::get)
        .clamp(1, 8);
    let chunk = seeds.len().div_ceil(threads).max(1);
    std::thread::scope(|scope| {
        let handles: Vec<_> = seeds
            .chunks(chunk)
            .map(|seeds| {
                let f = &f;
                scope.spawn(move || seeds.iter().map(|&s| f(&draw(s, n))).collect::<Vec<_>>())
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("a bootstrap thread panicked"))
            .collect()
    })
}

/// The `q` quantile of sorted `values`, interpolating between neighbours
/// (numpy's default).
fn quantile(sorted: &[f64], q: f64) -> f64 {
    let pos = q * (sorted.len() - 1) as f64;
    let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
    sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - lo as f64)
}

fn percentile_interval(estimate: f64, mut values: Vec<f64>) -> Interval {
    values.retain(|v| v.is_finite());
    if values.is_empty() {
        return Interval {
            estimate,
            low: estimate,
            high: estimate,
        };
    }
    values.sort_by(f64::total_cmp);
    let tail = (1.0 - LEVEL) / 2.0;
    Interval {
        estimate,
        low: quantile(&values, tail),
        high: quantile(&values, 1.0 - tail),
    }
}

/// The percentile interval of `stat`.
pub fn interval(stat: &Statistic, resamples: usize, seed: u64) -> Interval {
    let values = resampled(resamples, seed, stat.examples(), |c| stat.value(c));
    percentile_interval(stat.estimate(), values)
}

/// Both statistics on the same draws: their intervals and that of `a − b`.
/// Both are over the same examples in the same order.
pub fn paired_intervals(
    a: &Statistic,
    b: &Statistic,
    resamples: usize,
    seed: u64,
) -> [Interval; 3] {
    assert_eq!(a.examples(), b.examples(), "paired statistics");
    let values = resampled(resamples, seed, a.examples(), |c| (a.value(c), b.value(c)));
    let (ea, eb) = (a.estimate(), b.estimate());
    [
        percentile_interval(ea, values.iter().map(|v| v.0).collect()),
        percentile_interval(eb, values.iter().map(|v| v.1).collect()),
        percentile_interval(ea - eb, values.iter().map(|v| v.0 - v.1).collect()),
    ]
}

/// The paired percentile interval of `a − b`: both over the same examples
/// in the same order, each resample drawing the same ones for both.
pub fn paired_difference(a: &Statistic, b: &Statistic, resamples: usize, seed: u64) -> Interval {
    paired_intervals(a, b, resamples, seed)[2]
}

/// The selection metric as `TaskMetrics` names it, or why the predictions
/// cannot give it.
pub fn task_metric(metric: &str) -> Result<&str, Unavailable> {
    let Some(name) = metric.strip_prefix(&format!("{SPLIT}/")) else {
        return Err(Unavailable::NotValidation(metric.to_owned()));
    };
    if name == names::LOSS || name.ends_with("_loss") {
        return Err(Unavailable::Loss(metric.to_owned()));
    }
    Ok(name)
}

/// The (prediction, reference) pairs of `examples`, by index.
fn pairs(examples: &TrialExamples) -> BTreeMap<usize, (String, String)> {
    examples
        .examples
        .iter()
        .map(|e| (e.index, (e.prediction.clone(), e.reference.clone())))
        .collect()
}

/// The pick's margin, paired over the examples both trials answered.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Paired {
    /// Pick − runner-up.
    pub interval: Interval,
    pub examples: usize,
}

/// The intervals the report shows (when the seed did not vary).
#[derive(Clone, Debug, PartialEq)]
pub struct Bootstrap {
    pub resamples: usize,
    pub seed: u64,
    /// By trial index: its interval, or why there is none.
    pub trials: BTreeMap<usize, Result<Interval, String>>,
    /// Pick − runner-up; `None` without a runner-up.
    pub difference: Option<Result<Paired, String>>,
    /// Leaderboard trials left out because their metric is recomputed from
    /// every example for each resample (too slow for every row).
    pub skipped: usize,
}

/// The trials whose intervals the report shows: the decision's pick and
/// runner-up, then the best runs of the top groups.
pub fn wanted(decision: &Decision, best_runs: &[usize]) -> Vec<usize> {
    let mut out = Vec::new();
    if let Decision::Pick {
        pick, runner_up, ..
    } = decision
    {
        out.push(pick.trial);
        out.extend(runner_up.as_ref().map(|r| r.trial));
    }
    for &t in best_runs.iter().take(LEADERBOARD) {
        if !out.contains(&t) {
            out.push(t);
        }
    }
    out
}

/// The trial's examples, or why it has none.
fn examples_of(
    loaded: &BTreeMap<usize, Result<TrialExamples, ExamplesError>>,
    trial: usize,
) -> Result<&TrialExamples, String> {
    match loaded.get(&trial) {
        Some(Ok(e)) => Ok(e),
        Some(Err(e)) => Err(e.to_string()),
        None => Err("its predictions were not read".into()),
    }
}

/// `metric` over the trial's examples (those in `only`, when given).
fn statistic(
    metric: &str,
    examples: &TrialExamples,
    only: Option<&BTreeMap<usize, (String, String)>>,
) -> Result<Statistic, String> {
    let name = task_metric(metric).map_err(|e| e.to_string())?;
    let mut pairs = pairs(examples);
    if let Some(only) = only {
        pairs.retain(|i, _| only.contains_key(i));
    }
    Statistic::new(examples.task, name, pairs.into_values().collect()).map_err(|e| e.to_string())
}

/// The pick and the runner-up on the examples both answered: the paired
/// interval of their difference, and each one's interval when those
/// examples are all of its own.
struct PairedRun {
    paired: Paired,
    /// `(trial, interval)` of the two that answered nothing else.
    own: Vec<(usize, Interval)>,
}

fn paired(
    metric: &str,
    loaded: &BTreeMap<usize, Result<TrialExamples, ExamplesError>>,
    pick: usize,
    runner_up: usize,
) -> Result<PairedRun, String> {
    // Checked first: without the metric, the files do not matter.
    task_metric(metric).map_err(|e| e.to_string())?;
    let (a, b) = (examples_of(loaded, pick)?, examples_of(loaded, runner_up)?);
    let (all_a, all_b) = (pairs(a), pairs(b));
    let common: BTreeMap<usize, (String, String)> = all_a
        .iter()
        .filter(|(i, _)| all_b.contains_key(i))
        .map(|(&i, p)| (i, p.clone()))
        .collect();
    if common.is_empty() {
        return Err(Unavailable::NothingShared.to_string());
    }
    let (sa, sb) = (
        statistic(metric, a, Some(&common))?,
        statistic(metric, b, Some(&common))?,
    );
    let [ia, ib, difference] = paired_intervals(&sa, &sb, RESAMPLES, SEED);
    // One run gives all three when the two answered the same examples
    // (the usual case): a trial's own interval draws the same examples.
    let own = [(pick, ia, all_a.len()), (runner_up, ib, all_b.len())]
        .into_iter()
        .filter(|&(_, _, n)| n == common.len())
        .map(|(t, i, _)| (t, i))
        .collect();
    Ok(PairedRun {
        paired: Paired {
            interval: difference,
            examples: common.len(),
        },
        own,
    })
}

/// Intervals of `metric` for the trials of `loaded`, and of the decision's
/// margin. A metric without per-example sums (mAP, BLEU) is recomputed
/// from every drawn example for each resample: it gets intervals for the
/// decision's two only.
pub fn estimate(
    metric: &str,
    decision: &Decision,
    loaded: &BTreeMap<usize, Result<TrialExamples, ExamplesError>>,
) -> Bootstrap {
    let mut trials = BTreeMap::new();
    let mut decision_trials = Vec::new();
    let mut difference = None;
    if let Decision::Pick {
        pick, runner_up, ..
    } = decision
    {
        decision_trials.push(pick.trial);
        if let Some(r) = runner_up {
            decision_trials.push(r.trial);
            let run = paired(metric, loaded, pick.trial, r.trial);
            if let Ok(run) = &run {
                trials.extend(run.own.iter().map(|&(t, i)| (t, Ok(i))));
            }
            difference = Some(run.map(|run| run.paired));
        }
    }
    let mut skipped = 0;
    for &t in loaded.keys() {
        if trials.contains_key(&t) {
            continue;
        }
        match examples_of(loaded, t).and_then(|e| statistic(metric, e, None)) {
            Ok(stat) if !stat.is_fast() && !decision_trials.contains(&t) => skipped += 1,
            Ok(stat) => {
                trials.insert(t, Ok(interval(&stat, RESAMPLES, SEED)));
            }
            Err(why) => {
                trials.insert(t, Err(why));
            }
        }
    }
    Bootstrap {
        resamples: RESAMPLES,
        seed: SEED,
        trials,
        difference,
        skipped,
    }
}

/// A table cell: the trial's interval, or `-`.
pub fn cell(report: &Report, trial: usize) -> String {
    report
        .bootstrap
        .as_ref()
        .and_then(|b| b.trials.get(&trial))
        .and_then(|r| r.as_ref().ok())
        .map_or("-".into(), Interval::text)
}

/// Whether any trial got an interval (and tables need the column).
pub fn any(report: &Report) -> bool {
    report
        .bootstrap
        .as_ref()
        .is_some_and(|b| b.trials.values().any(Result::is_ok))
}

/// The column header.
pub fn header() -> String {
    format!("{:.0}% interval", LEVEL * 100.0)
}

/// What the decision says of the margin's noise from the bootstrap, when
/// it has something to say (the seed did not vary and a runner-up exists).
pub fn margin_verdict(report: &Report) -> Option<String> {
    let b = report.bootstrap.as_ref()?;
    let paired = match b.difference.as_ref()? {
        Ok(paired) => paired,
        Err(why) => {
            return Some(format!(
                "The seed-to-seed spread is unknown (the seed did not vary), and there is no bootstrap interval of the margin either: {why}; so a small margin may be luck."
            ));
        }
    };
    let d = paired.interval;
    let range = format!(
        "The paired bootstrap interval of pick − runner-up on {} is {} ({:.0}%, over the {} validation examples both answered)",
        report.metric,
        d.text(),
        LEVEL * 100.0,
        paired.examples
    );
    let favours_pick = |v: f64| {
        if report.higher_is_better {
            v > 0.0
        } else {
            v < 0.0
        }
    };
    Some(if d.contains(0.0) {
        format!(
            "{range}: it includes 0, so the margin is within the noise of the validation sample; the two are not clearly different. Take the cheaper one, or evaluate on more examples."
        )
    } else if favours_pick(d.low) && favours_pick(d.high) {
        format!(
            "{range}: it excludes 0, so the pick is better beyond the noise of the validation sample (not of training: the seed did not vary)."
        )
    } else {
        format!(
            "{range}: it excludes 0 in the runner-up's favour; recomputed from the stored predictions, the runner-up scores better than the store's best values say."
        )
    })
}

/// The decision's sentences on the intervals: how they are made, or why
/// there are none; and a warning when the pick's predictions do not give
/// back the value the store holds.
pub fn describe(report: &Report, pick: usize, sec: &mut Section) {
    let Some(b) = &report.bootstrap else {
        sec.para("The seed varied, so the noise is the seed-to-seed spread (above), not a bootstrap over examples.");
        return;
    };
    match b.trials.get(&pick) {
        Some(Ok(i)) => {
            sec.para(format!(
                "Intervals: {:.0}% percentile bootstrap over the validation examples of each trial's selected checkpoint ({} resamples, seed {}): each resample draws as many examples as the split has, with replacement, and recomputes {} from the stored predictions. The margin's interval draws the same examples for both trials (paired by example index).",
                LEVEL * 100.0,
                b.resamples,
                b.seed,
                report.metric,
            ));
            // The same code scored the same answers: a difference means the
            // file is not of the evaluation the store recorded.
            if let Some(stored) = report.trials[pick].quality
                && (stored - i.estimate).abs() > 1e-9 * stored.abs().max(1.0)
            {
                sec.warning(format!(
                    "Recomputed from the pick's predictions, {} is {}, not the {} the store holds: the predictions file may be of another evaluation.",
                    report.metric,
                    number(i.estimate),
                    number(stored)
                ));
            }
        }
        Some(Err(why)) => sec.para(format!("No bootstrap interval for the pick: {why}.")),
        None => sec.para("No bootstrap interval for the pick."),
    }
}

/// The leaderboard's note on its interval column, and on the trials
/// left without one.
pub fn leaderboard_note(report: &Report) -> Option<String> {
    if !any(report) {
        return None;
    }
    let b = report.bootstrap.as_ref()?;
    let missing: Vec<String> = b
        .trials
        .iter()
        .filter_map(|(&t, r)| {
            let why = r.as_ref().err()?;
            Some(format!("{} ({why})", short_id(&report.trials[t].id)))
        })
        .collect();
    let mut note = format!(
        "The {} is a bootstrap over the validation examples of the best run's selected checkpoint (see the decision), for the top {LEADERBOARD} configurations and the decision's two.",
        header()
    );
    if b.skipped > 0 {
        let _ = write!(
            note,
            " Only the decision's two for {}: it is recomputed from every drawn example for each resample, too slow for every row.",
            report.metric
        );
    }
    if !missing.is_empty() {
        let _ = write!(note, " None for {}.", missing.join("; "));
    }
    Some(note)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::track::predictions::ExamplePrediction;

    fn json_pairs(n: usize, right_every: usize) -> Vec<(String, String)> {
        (0..n)
            .map(|i| {
                let reference = format!(r#"{{"id": {i}, "kind": "pallet", "count": {}}}"#, i % 7);
                let prediction = if i % right_every == 0 {
                    reference.clone()
                } else {
                    format!(r#"{{"id": {i}, "kind": "box", "count": {}}}"#, i % 7)
                };
                (prediction, reference)
            })
            .collect()
    }

    #[test]
    fn the_interval_contains_the_estimate_narrows_with_more_examples_and_is_reproducible() {
        let small = Statistic::new(Task::Json, names::JSON_F1, json_pairs(40, 2)).unwrap();
        let large = Statistic::new(Task::Json, names::JSON_F1, json_pairs(400, 2)).unwrap();
        let (a, b) = (interval(&small, 500, 7), interval(&large, 500, 7));
        for i in [a, b] {
            assert!(i.low < i.estimate && i.estimate < i.high, "{i:?}");
        }
        // Half the examples fully right, half with one field of three wrong.
        assert!((b.estimate - 5.0 / 6.0).abs() < 1e-12, "{b:?}");
        // About √10 narrower with ten times the examples.
        let ratio = (a.high - a.low) / (b.high - b.low);
        assert!(ratio > 2.0 && ratio < 5.0, "{a:?} {b:?}");
        assert_eq!(interval(&small, 500, 7), a);
        assert_ne!(interval(&small, 500, 8), a);
    }

    #[test]
    fn the_fast_path_agrees_with_the_task_metrics() {
        let text: Vec<(String, String)> = ["a cat", "the dog", "", "x"]
            .iter()
            .zip(["a cat", "a dog", "a", " x "])
            .map(|(p, r)| ((*p).to_owned(), r.to_owned()))
            .collect();
        for (task, name, pairs) in [
            (Task::Json, names::JSON_F1, json_pairs(30, 3)),
            (Task::Json, names::JSON_RECALL, json_pairs(30, 3)),
            (Task::Json, names::JSON_EXACT, json_pairs(30, 3)),
            (Task::Text, names::CER, text.clone()),
            (Task::Text, names::EXACT_MATCH, text.clone()),
        ] {
            let stat = Statistic::new(task, name, pairs).unwrap();
            assert!(stat.sums.is_some(), "{name}");
            let counts: Vec<u32> = (0..stat.examples() as u32).map(|i| i % 3).collect();
            let slow = stat.corpus(&counts);
            assert!((stat.value(&counts) - slow).abs() < 1e-12, "{name}");
        }
        // BLEU is not a ratio of per-example sums: always recomputed.
        let bleu = Statistic::new(Task::Text, names::BLEU, text).unwrap();
        assert!(bleu.sums.is_none());
    }

    #[test]
    fn the_paired_difference_excludes_zero_only_for_a_clearly_better_trial() {
        let better = Statistic::new(Task::Json, names::JSON_F1, json_pairs(200, 1)).unwrap();
        let worse = Statistic::new(Task::Json, names::JSON_F1, json_pairs(200, 2)).unwrap();
        let d = paired_difference(&better, &worse, 500, 1);
        assert!(d.low > 0.0, "{d:?}");
        assert!(d.contains(d.estimate));
        let same = paired_difference(&worse, &worse.clone(), 500, 1);
        assert!(same.contains(0.0), "{same:?}");
        assert!(same.low.abs() < 1e-12 && same.high.abs() < 1e-12);
        // Two trials right on different halves of the examples: equal on
        // average, and the paired interval straddles 0.
        let mut shifted = json_pairs(201, 2);
        shifted.remove(0);
        let even = Statistic::new(Task::Json, names::JSON_F1, json_pairs(200, 2)).unwrap();
        let odd = Statistic::new(Task::Json, names::JSON_F1, shifted).unwrap();
        let d = paired_difference(&even, &odd, 500, 1);
        assert!(d.low < 0.0 && d.high > 0.0, "{d:?}");
    }

    #[test]
    fn one_paired_run_gives_both_intervals_and_the_difference() {
        let a = Statistic::new(Task::Json, names::JSON_F1, json_pairs(100, 1)).unwrap();
        let b = Statistic::new(Task::Json, names::JSON_F1, json_pairs(100, 3)).unwrap();
        let [ia, ib, d] = paired_intervals(&a, &b, 300, 5);
        // The same draws as each one's own interval.
        assert_eq!(ia, interval(&a, 300, 5));
        assert_eq!(ib, interval(&b, 300, 5));
        assert_eq!(d, paired_difference(&a, &b, 300, 5));
        // Every answer right: no resample scores otherwise.
        assert!((ia.low - 1.0).abs() < 1e-12 && (ia.high - 1.0).abs() < 1e-12);
        assert!(d.low > 0.0 && d.contains(d.estimate), "{d:?}");
    }

    #[test]
    fn detection_map_is_resampled_by_recomputing_it() {
        let pairs: Vec<(String, String)> = (0..30)
            .map(|i| {
                let r = "<loc0100><loc0100><loc0500><loc0500> pallet".to_owned();
                let p = if i % 3 == 0 {
                    "<loc0600><loc0600><loc0900><loc0900> pallet".to_owned()
                } else {
                    r.clone()
                };
                (p, r)
            })
            .collect();
        let stat = Statistic::new(Task::Detect, names::MAP50, pairs).unwrap();
        assert!(stat.sums.is_none());
        let i = interval(&stat, 200, 3);
        assert!(i.contains(i.estimate) && i.low < i.high, "{i:?}");
    }

    fn detections(shift: usize) -> TrialExamples {
        let examples = (0..20)
            .map(|i| {
                let reference = "<loc0100><loc0100><loc0500><loc0500> pallet".to_owned();
                ExamplePrediction {
                    index: i,
                    image: format!("{i}.jpg").into(),
                    prefix: "detect pallet".into(),
                    prediction: if i < shift {
                        "<loc0700><loc0700><loc0900><loc0900> pallet".into()
                    } else {
                        reference.clone()
                    },
                    reference,
                    score: None,
                    metric: "box_f1".into(),
                }
            })
            .collect();
        TrialExamples {
            task: Task::Detect,
            path: "p.jsonl.gz".into(),
            examples,
        }
    }

    #[test]
    fn a_slow_metric_gets_intervals_for_the_decisions_two_only() {
        use super::super::analysis::Noise;
        use super::super::decision::Candidate;
        let candidate = |trial| Candidate {
            group: trial,
            trial,
            test: Vec::new(),
        };
        let decision = Decision::Pick {
            pick: candidate(0),
            runner_up: Some(candidate(1)),
            margin: Some(0.1),
            noise: Noise::NoRepeats,
        };
        let loaded = BTreeMap::from([
            (0, Ok(detections(2))),
            (1, Ok(detections(6))),
            (2, Ok(detections(9))),
            (3, Err(ExamplesError::NoStep)),
        ]);
        let b = estimate("val/map50", &decision, &loaded);
        assert_eq!(b.trials.keys().copied().collect::<Vec<_>>(), [0, 1, 3]);
        assert!(b.trials[&0].is_ok() && b.trials[&1].is_ok());
        assert_eq!(b.skipped, 1);
        let d = b.difference.unwrap().unwrap();
        assert_eq!(d.examples, 20);
        assert!(d.interval.contains(d.interval.estimate) && d.interval.high > 0.0);
        // CER adds per-example sums: every row gets one.
        let b = estimate("val/cer", &decision, &loaded);
        assert_eq!(b.skipped, 0);
        assert!((0..3).all(|t| b.trials[&t].is_ok()));
        assert_eq!(
            b.trials[&3].as_ref().unwrap_err(),
            "the trial has no selected step"
        );
    }

    #[test]
    fn a_loss_or_a_foreign_metric_has_no_interval() {
        assert_eq!(
            task_metric("val/loss"),
            Err(Unavailable::Loss("val/loss".into()))
        );
        assert!(task_metric("test/field_f1").is_err());
        assert_eq!(task_metric("val/field_f1"), Ok("field_f1"));
        let why = Statistic::new(Task::Text, names::JSON_F1, Vec::new())
            .unwrap_err()
            .to_string();
        assert!(why.contains("not a metric of the text task"), "{why}");
    }
}

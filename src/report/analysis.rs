//! The report's analysis: pure functions over plain rows (one
//! [`TrialFacts`] per trial), so every choice the report makes — grouping
//! seeds, ranking, best per checkpoint, LoRA/QLoRA pairs, the Pareto front,
//! the recommendation — is unit-tested without a store.

use std::cmp::Ordering;
use std::collections::BTreeMap;

use serde_json::Value;

/// The spec key that names the training method.
pub const METHOD_KEY: &str = "train.method";

/// What the report knows of one trial.
#[derive(Clone, Debug, PartialEq)]
pub struct TrialFacts {
    pub id: String,
    /// The sweep's varying keys and this trial's values of them.
    pub params: BTreeMap<String, Value>,
    pub status: String,
    pub reason: Option<String>,
    /// `3b-224` (size-resolution), `tiny 3b-224`, or a named checkpoint.
    pub checkpoint: String,
    /// `train.method` of the resolved config.
    pub method: String,
    pub lr: Option<f64>,
    pub weight_decay: Option<f64>,
    /// The best value of the selection metric (None: never reported).
    pub quality: Option<f64>,
    /// The step of that value: the trial's selected checkpoint.
    pub best_step: Option<u64>,
    /// The trial's folder (`trials.dir`); its selected adapter is `best/`.
    pub dir: String,
    pub wall_time_s: Option<f64>,
    /// Measured peak memory.
    pub peak_memory_bytes: Option<u64>,
    /// The planner's estimate.
    pub est_memory_bytes: Option<u64>,
    pub device: Option<String>,
}

impl TrialFacts {
    /// A finished 3b-224 LoRA trial with quality `q` at step 1 and nothing
    /// else known: the base of the report's test fixtures.
    #[cfg(test)]
    pub(crate) fn finished(id: &str, q: f64) -> TrialFacts {
        TrialFacts {
            id: id.into(),
            params: BTreeMap::new(),
            status: "finished".into(),
            reason: None,
            checkpoint: "3b-224".into(),
            method: "lora".into(),
            lr: None,
            weight_decay: None,
            quality: Some(q),
            best_step: Some(1),
            dir: String::new(),
            wall_time_s: None,
            peak_memory_bytes: None,
            est_memory_bytes: None,
            device: None,
        }
    }

    /// Whether the trial takes part in rankings: it finished and reported
    /// a finite value of the metric.
    pub fn is_ranked(&self) -> bool {
        self.status == "finished" && self.quality.is_some_and(f64::is_finite)
    }

    /// Why the trial is left out of rankings (None when it is ranked).
    pub fn exclusion(&self) -> Option<String> {
        if self.status != "finished" {
            Some(self.reason.clone().unwrap_or_else(|| self.status.clone()))
        } else if self.is_ranked() {
            None
        } else {
            Some("finished without a value of the metric".into())
        }
    }
}

/// The memory a configuration needs: measured when any run measured it,
/// else the planner's estimate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Memory {
    pub bytes: u64,
    pub measured: bool,
}

/// Ranked trials that differ only in seed (a single trial when the seed
/// does not vary).
#[derive(Clone, Debug, PartialEq)]
pub struct Group {
    /// The varying keys but the seed, and their values.
    pub key: BTreeMap<String, Value>,
    pub checkpoint: String,
    pub method: String,
    pub lr: Option<f64>,
    pub weight_decay: Option<f64>,
    /// Indices into the trials, best first.
    pub trials: Vec<usize>,
    pub mean: f64,
    /// Sample standard deviation over seeds (None below two runs).
    pub std: Option<f64>,
    /// Mean wall time of a run, in seconds.
    pub wall_time_s: Option<f64>,
    pub memory: Option<Memory>,
}

impl Group {
    pub fn n(&self) -> usize {
        self.trials.len()
    }

    /// The key as `k=v` pairs, for tables and legends.
    pub fn label(&self) -> String {
        if self.key.is_empty() {
            return "(single configuration)".into();
        }
        self.key
            .iter()
            .map(|(k, v)| format!("{k}={}", value_text(v)))
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// The key without the method, to match LoRA with QLoRA.
    fn setting(&self) -> BTreeMap<String, Value> {
        let mut key = self.key.clone();
        key.remove(METHOD_KEY);
        key
    }
}

/// A JSON value as a table cell: strings unquoted.
pub(crate) use crate::plan::render::value_text;

/// Whether a spec key is a seed (`experiment.seed`, the only seed key, or
/// a bare `seed`).
pub fn is_seed_key(key: &str) -> bool {
    key.rsplit('.').next() == Some("seed")
}

/// Best first: the better quality, by the metric's direction.
pub fn cmp_quality(a: f64, b: f64, higher_is_better: bool) -> Ordering {
    if higher_is_better {
        b.total_cmp(&a)
    } else {
        a.total_cmp(&b)
    }
}

fn mean(values: &[f64]) -> f64 {
    values.iter().sum::<f64>() / values.len() as f64
}

/// Sample standard deviation (n - 1), None below two values.
pub fn sample_std(values: &[f64]) -> Option<f64> {
    if values.len() < 2 {
        return None;
    }
    let m = mean(values);
    let ss: f64 = values.iter().map(|v| (v - m).powi(2)).sum();
    Some((ss / (values.len() - 1) as f64).sqrt())
}

/// Groups the ranked trials by their varying keys other than seeds and
/// ranks the groups by mean quality, best first (ties: less memory, then
/// less wall time, then by label).
pub fn group_trials(trials: &[TrialFacts], higher_is_better: bool) -> Vec<Group> {
    let mut buckets: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    for (i, t) in trials.iter().enumerate().filter(|(_, t)| t.is_ranked()) {
        let key: BTreeMap<&String, &Value> =
            t.params.iter().filter(|(k, _)| !is_seed_key(k)).collect();
        let text = serde_json::to_string(&key).unwrap_or_default();
        // The checkpoint and method are part of the key even when the
        // sweep varies them through other keys.
        buckets
            .entry(format!("{}\u{0}{}\u{0}{text}", t.checkpoint, t.method))
            .or_default()
            .push(i);
    }
    let mut groups: Vec<Group> = buckets
        .into_values()
        .map(|mut members| {
            members.sort_by(|&a, &b| {
                cmp_quality(
                    trials[a].quality.unwrap_or(f64::NAN),
                    trials[b].quality.unwrap_or(f64::NAN),
                    higher_is_better,
                )
                .then_with(|| trials[a].id.cmp(&trials[b].id))
            });
            let first = &trials[members[0]];
            let qualities: Vec<f64> = members.iter().filter_map(|&i| trials[i].quality).collect();
            let walls: Vec<f64> = members
                .iter()
                .filter_map(|&i| trials[i].wall_time_s)
                .collect();
            let measured = members
                .iter()
                .filter_map(|&i| trials[i].peak_memory_bytes)
                .max();
            let estimated = members
                .iter()
                .filter_map(|&i| trials[i].est_memory_bytes)
                .max();
            Group {
                key: first
                    .params
                    .iter()
                    .filter(|(k, _)| !is_seed_key(k))
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect(),
                checkpoint: first.checkpoint.clone(),
                method: first.method.clone(),
                lr: first.lr,
                weight_decay: first.weight_decay,
                mean: mean(&qualities),
                std: sample_std(&qualities),
                wall_time_s: (!walls.is_empty()).then(|| mean(&walls)),
                memory: match (measured, estimated) {
                    (Some(bytes), _) => Some(Memory {
                        bytes,
                        measured: true,
                    }),
                    (None, Some(bytes)) => Some(Memory {
                        bytes,
                        measured: false,
                    }),
                    (None, None) => None,
                },
                trials: members,
            }
        })
        .collect();
    // Equal quality: the smaller memory, then the shorter run, first.
    let memory = |g: &Group| g.memory.map_or(u64::MAX, |m| m.bytes);
    let wall = |g: &Group| g.wall_time_s.unwrap_or(f64::INFINITY);
    groups.sort_by(|a, b| {
        cmp_quality(a.mean, b.mean, higher_is_better)
            .then_with(|| memory(a).cmp(&memory(b)))
            .then_with(|| wall(a).total_cmp(&wall(b)))
            .then_with(|| a.label().cmp(&b.label()))
    });
    groups
}

/// The best group of each checkpoint, as indices into the ranked `groups`
/// (so in rank order: the best checkpoint first).
pub fn best_per_checkpoint(groups: &[Group]) -> Vec<usize> {
    let mut seen = Vec::<&str>::new();
    let mut best = Vec::new();
    for (i, g) in groups.iter().enumerate() {
        if !seen.contains(&g.checkpoint.as_str()) {
            seen.push(&g.checkpoint);
            best.push(i);
        }
    }
    best
}

/// A LoRA and a QLoRA group equal in every other varying key.
#[derive(Clone, Debug, PartialEq)]
pub struct MethodPair {
    pub setting: BTreeMap<String, Value>,
    pub lora: usize,
    pub qlora: usize,
    /// QLoRA's mean minus LoRA's.
    pub quality_diff: f64,
    /// QLoRA's memory over LoRA's.
    pub memory_ratio: Option<f64>,
    /// QLoRA's wall time over LoRA's.
    pub time_ratio: Option<f64>,
}

/// What the LoRA-vs-QLoRA section can say.
#[derive(Clone, Debug, PartialEq)]
pub enum MethodComparison {
    /// The ranked trials do not use both methods (the ones they use).
    NotApplicable { methods: Vec<String> },
    /// Matched pairs (possibly none, when exclusions or failures left no
    /// LoRA run with a QLoRA twin).
    Pairs(Vec<MethodPair>),
}

/// Pairs LoRA and QLoRA groups on matched settings.
pub fn compare_methods(groups: &[Group]) -> MethodComparison {
    let mut methods: Vec<String> = groups.iter().map(|g| g.method.clone()).collect();
    methods.sort();
    methods.dedup();
    if !(methods.iter().any(|m| m == "lora") && methods.iter().any(|m| m == "qlora")) {
        return MethodComparison::NotApplicable { methods };
    }
    let mut pairs = Vec::new();
    for (li, lora) in groups
        .iter()
        .enumerate()
        .filter(|(_, g)| g.method == "lora")
    {
        let setting = lora.setting();
        let twin = groups.iter().enumerate().find(|(_, g)| {
            g.method == "qlora" && g.checkpoint == lora.checkpoint && g.setting() == setting
        });
        if let Some((qi, qlora)) = twin {
            let ratio = |q: Option<f64>, l: Option<f64>| match (q, l) {
                (Some(q), Some(l)) if l > 0.0 => Some(q / l),
                _ => None,
            };
            pairs.push(MethodPair {
                setting,
                lora: li,
                qlora: qi,
                quality_diff: qlora.mean - lora.mean,
                memory_ratio: ratio(
                    qlora.memory.map(|m| m.bytes as f64),
                    lora.memory.map(|m| m.bytes as f64),
                ),
                time_ratio: ratio(qlora.wall_time_s, lora.wall_time_s),
            });
        }
    }
    MethodComparison::Pairs(pairs)
}

/// Quality over learning rate × weight decay for one checkpoint (the best
/// group mean at each point, over the other keys).
#[derive(Clone, Debug, PartialEq)]
pub struct HyperGrid {
    pub checkpoint: String,
    pub lrs: Vec<f64>,
    pub weight_decays: Vec<f64>,
    /// `cells[w][l]`: weight decay `w`, learning rate `l`.
    pub cells: Vec<Vec<Option<f64>>>,
}

fn distinct(mut values: Vec<f64>) -> Vec<f64> {
    values.sort_by(f64::total_cmp);
    values.dedup_by(|a, b| a.total_cmp(b) == Ordering::Equal);
    values
}

/// One grid per checkpoint whose groups vary the learning rate or the
/// weight decay (a grid with one row or one column is a line).
pub fn hyper_grids(groups: &[Group], higher_is_better: bool) -> Vec<HyperGrid> {
    let mut checkpoints: Vec<&str> = groups.iter().map(|g| g.checkpoint.as_str()).collect();
    checkpoints.sort_unstable();
    checkpoints.dedup();
    let mut grids = Vec::new();
    for checkpoint in checkpoints {
        let mine: Vec<&Group> = groups
            .iter()
            .filter(|g| g.checkpoint == checkpoint)
            .collect();
        let lrs = distinct(mine.iter().map(|g| g.lr.unwrap_or(f64::NAN)).collect());
        let weight_decays = distinct(
            mine.iter()
                .map(|g| g.weight_decay.unwrap_or(f64::NAN))
                .collect(),
        );
        if lrs.len() < 2 && weight_decays.len() < 2 {
            continue;
        }
        let at = |values: &[f64], v: Option<f64>| {
            let v = v.unwrap_or(f64::NAN);
            values
                .iter()
                .position(|x| x.total_cmp(&v) == Ordering::Equal)
        };
        let mut cells = vec![vec![None::<f64>; lrs.len()]; weight_decays.len()];
        for g in mine {
            let (Some(l), Some(w)) = (at(&lrs, g.lr), at(&weight_decays, g.weight_decay)) else {
                continue;
            };
            let cell = &mut cells[w][l];
            if cell.is_none_or(|c| cmp_quality(g.mean, c, higher_is_better) == Ordering::Less) {
                *cell = Some(g.mean);
            }
        }
        grids.push(HyperGrid {
            checkpoint: checkpoint.to_owned(),
            lrs,
            weight_decays,
            cells,
        });
    }
    grids
}

/// Which points are on the quality-vs-cost Pareto front: no other point
/// costs at most as much and is at least as good, being strictly better in
/// one of the two. `points` are `(cost, quality)`.
pub fn pareto_front(points: &[(f64, f64)], higher_is_better: bool) -> Vec<bool> {
    let better_or_equal = |a: f64, b: f64| cmp_quality(a, b, higher_is_better) != Ordering::Greater;
    points
        .iter()
        .map(|&(cost, quality)| {
            !points.iter().any(|&(c, q)| {
                c <= cost
                    && better_or_equal(q, quality)
                    && (c < cost || cmp_quality(q, quality, higher_is_better) == Ordering::Less)
            })
        })
        .collect()
}

/// How the margin over the runner-up compares with the seed noise.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Noise {
    /// The seed standard deviation (pooled over the two groups, or over
    /// every repeated group when these two ran once), and whether the
    /// margin is below it.
    Estimated { std: f64, within: bool },
    /// No configuration ran with several seeds.
    NoRepeats,
    /// Nothing to compare with.
    NoRunnerUp,
}

/// A recommended group and how clearly it wins.
#[derive(Clone, Debug, PartialEq)]
pub struct Pick {
    pub group: usize,
    pub runner_up: Option<usize>,
    /// How much better the pick's mean is than the runner-up's (≥ 0).
    pub margin: Option<f64>,
    pub noise: Noise,
}

/// The recommendation under a memory budget.
#[derive(Clone, Debug, PartialEq)]
pub struct BudgetPick {
    pub budget: u64,
    /// None: nothing fits.
    pub pick: Option<Pick>,
    /// Groups over the budget.
    pub over: usize,
    /// Groups whose memory is unknown (treated as not fitting).
    pub unknown: usize,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Recommendation {
    /// None: no ranked trial.
    pub overall: Option<Pick>,
    pub budget: Option<BudgetPick>,
}

/// The pooled sample standard deviation of the groups that ran several
/// seeds.
pub fn pooled_std<'a>(groups: impl IntoIterator<Item = &'a Group>) -> Option<f64> {
    let (mut ss, mut dof) = (0.0, 0usize);
    for g in groups {
        if let Some(std) = g.std {
            ss += std * std * (g.n() - 1) as f64;
            dof += g.n() - 1;
        }
    }
    (dof > 0).then(|| (ss / dof as f64).sqrt())
}

fn pick_among(groups: &[Group], candidates: &[usize]) -> Option<Pick> {
    let (&group, rest) = candidates.split_first()?;
    let runner_up = rest.first().copied();
    let margin = runner_up.map(|r| (groups[group].mean - groups[r].mean).abs());
    let noise = match (runner_up, margin) {
        (Some(r), Some(margin)) => {
            match pooled_std([&groups[group], &groups[r]]).or_else(|| pooled_std(groups)) {
                Some(std) => Noise::Estimated {
                    std,
                    within: margin <= std,
                },
                None => Noise::NoRepeats,
            }
        }
        _ => Noise::NoRunnerUp,
    };
    Some(Pick {
        group,
        runner_up,
        margin,
        noise,
    })
}

/// The best group overall and the best whose memory (measured, else
/// estimated) fits `budget` bytes; `groups` are ranked best first.
pub fn recommend(groups: &[Group], budget: Option<u64>) -> Recommendation {
    let all: Vec<usize> = (0..groups.len()).collect();
    let budget = budget.map(|budget| {
        let fits: Vec<usize> = all
            .iter()
            .copied()
            .filter(|&i| groups[i].memory.is_some_and(|m| m.bytes <= budget))
            .collect();
        let unknown = groups.iter().filter(|g| g.memory.is_none()).count();
        BudgetPick {
            budget,
            pick: pick_among(groups, &fits),
            over: groups.len() - fits.len() - unknown,
            unknown,
        }
    });
    Recommendation {
        overall: pick_among(groups, &all),
        budget,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::float_cmp)] // hand-made values, compared exactly

    use serde_json::json;

    use super::*;

    /// A finished trial of `checkpoint`, `method`, lr and seed.
    fn trial(id: &str, checkpoint: &str, method: &str, lr: f64, seed: i64, q: f64) -> TrialFacts {
        let (size, res) = checkpoint.split_once('-').unwrap();
        TrialFacts {
            id: id.into(),
            params: BTreeMap::from([
                ("model.size".into(), json!(size)),
                (
                    "model.resolution".into(),
                    json!(res.parse::<u32>().unwrap()),
                ),
                ("train.method".into(), json!(method)),
                ("train.lr".into(), json!(lr)),
                ("experiment.seed".into(), json!(seed)),
            ]),
            status: "finished".into(),
            reason: None,
            checkpoint: checkpoint.into(),
            method: method.into(),
            lr: Some(lr),
            weight_decay: Some(0.0),
            quality: Some(q),
            best_step: Some(10),
            dir: format!("results/demo/trials/{id}"),
            wall_time_s: Some(if method == "qlora" { 150.0 } else { 100.0 }),
            peak_memory_bytes: Some(if method == "qlora" { 8 << 30 } else { 20 << 30 }),
            est_memory_bytes: Some(30 << 30),
            device: Some("cuda:0".into()),
        }
    }

    fn no_seed(mut t: TrialFacts) -> TrialFacts {
        t.params.remove("experiment.seed");
        t
    }

    #[test]
    fn seeds_are_grouped_with_mean_and_sample_std() {
        let trials = vec![
            trial("a0", "3b-224", "lora", 1e-4, 0, 0.70),
            trial("a1", "3b-224", "lora", 1e-4, 1, 0.80),
            trial("a2", "3b-224", "lora", 1e-4, 2, 0.90),
            trial("b0", "3b-224", "lora", 3e-4, 0, 0.84),
            trial("b1", "3b-224", "lora", 3e-4, 1, 0.86),
        ];
        let groups = group_trials(&trials, true);
        assert_eq!(groups.len(), 2);
        // Ranked by the mean: 0.85 > 0.80, although a2 is the best trial.
        assert_eq!(groups[0].trials, [4, 3]);
        assert!((groups[0].mean - 0.85).abs() < 1e-12);
        assert!((groups[1].mean - 0.80).abs() < 1e-12);
        assert!((groups[1].std.unwrap() - 0.1).abs() < 1e-12);
        assert_eq!(groups[1].n(), 3);
        assert_eq!(groups[1].trials[0], 2, "best member first");
        assert!(!groups[0].key.contains_key("experiment.seed"));
    }

    #[test]
    fn lower_is_better_ranks_ascending() {
        let trials = vec![
            no_seed(trial("a", "3b-224", "lora", 1e-4, 0, 0.5)),
            no_seed(trial("b", "3b-224", "lora", 3e-4, 0, 0.3)),
        ];
        let groups = group_trials(&trials, false);
        assert_eq!(trials[groups[0].trials[0]].id, "b");
        assert_eq!(groups[0].std, None);
    }

    #[test]
    fn failed_and_metricless_trials_are_not_ranked() {
        let mut failed = no_seed(trial("f", "3b-224", "lora", 1e-3, 0, 0.99));
        failed.status = "failed".into();
        failed.reason = Some("out of memory".into());
        let mut empty = no_seed(trial("e", "3b-224", "lora", 2e-3, 0, 0.0));
        empty.quality = None;
        let ok = no_seed(trial("ok", "3b-224", "lora", 1e-4, 0, 0.5));
        let trials = vec![failed, empty, ok];
        let groups = group_trials(&trials, true);
        assert_eq!(groups.len(), 1);
        assert_eq!(groups[0].trials, [2]);
        assert_eq!(trials[0].exclusion().as_deref(), Some("out of memory"));
        assert!(trials[1].exclusion().unwrap().contains("without a value"));
        assert_eq!(trials[2].exclusion(), None);
    }

    #[test]
    fn best_per_checkpoint_takes_each_checkpoints_top_group() {
        let trials = vec![
            no_seed(trial("a", "3b-224", "lora", 1e-4, 0, 0.60)),
            no_seed(trial("b", "3b-224", "lora", 3e-4, 0, 0.75)),
            no_seed(trial("c", "10b-448", "lora", 1e-4, 0, 0.90)),
            no_seed(trial("d", "10b-448", "lora", 3e-4, 0, 0.50)),
            no_seed(trial("e", "3b-448", "qlora", 1e-4, 0, 0.70)),
        ];
        let groups = group_trials(&trials, true);
        let best: Vec<&str> = best_per_checkpoint(&groups)
            .into_iter()
            .map(|g| trials[groups[g].trials[0]].id.as_str())
            .collect();
        assert_eq!(best, ["c", "b", "e"]);
    }

    #[test]
    fn lora_and_qlora_are_matched_on_every_other_key() {
        let trials = vec![
            no_seed(trial("l1", "3b-224", "lora", 1e-4, 0, 0.80)),
            no_seed(trial("q1", "3b-224", "qlora", 1e-4, 0, 0.78)),
            no_seed(trial("l2", "3b-224", "lora", 3e-4, 0, 0.70)),
            // No twin: different lr.
            no_seed(trial("q3", "3b-224", "qlora", 1e-3, 0, 0.60)),
            // Different checkpoint: no twin either.
            no_seed(trial("q4", "10b-224", "qlora", 3e-4, 0, 0.60)),
        ];
        let groups = group_trials(&trials, true);
        let MethodComparison::Pairs(pairs) = compare_methods(&groups) else {
            panic!("both methods ran");
        };
        assert_eq!(pairs.len(), 1);
        let p = &pairs[0];
        assert_eq!(trials[groups[p.lora].trials[0]].id, "l1");
        assert_eq!(trials[groups[p.qlora].trials[0]].id, "q1");
        assert!((p.quality_diff + 0.02).abs() < 1e-12);
        assert_eq!(p.memory_ratio, Some(0.4));
        assert_eq!(p.time_ratio, Some(1.5));
        assert!(!p.setting.contains_key(METHOD_KEY));
    }

    #[test]
    fn one_method_is_not_applicable() {
        let trials = vec![
            no_seed(trial("s1", "3b-224", "synthetic", 1e-4, 0, 0.8)),
            no_seed(trial("s2", "3b-224", "synthetic", 3e-4, 0, 0.7)),
        ];
        let groups = group_trials(&trials, true);
        assert_eq!(
            compare_methods(&groups),
            MethodComparison::NotApplicable {
                methods: vec!["synthetic".into()]
            }
        );
    }

    #[test]
    fn pareto_front_keeps_the_undominated_points() {
        // (cost, quality), higher quality is better.
        let points = [(1.0, 0.5), (2.0, 0.7), (2.0, 0.6), (3.0, 0.7), (4.0, 0.9)];
        assert_eq!(
            pareto_front(&points, true),
            [true, true, false, false, true]
        );
        // Lower is better: the cheapest is also the best here.
        let points = [(1.0, 0.2), (2.0, 0.1), (3.0, 0.3)];
        assert_eq!(pareto_front(&points, false), [true, true, false]);
        // Exact duplicates dominate neither each other.
        assert_eq!(pareto_front(&[(1.0, 1.0), (1.0, 1.0)], true), [true, true]);
    }

    #[test]
    fn grids_take_the_best_mean_per_cell() {
        let mut trials = vec![
            no_seed(trial("a", "3b-224", "lora", 1e-4, 0, 0.60)),
            no_seed(trial("b", "3b-224", "qlora", 1e-4, 0, 0.65)),
            no_seed(trial("c", "3b-224", "lora", 3e-4, 0, 0.70)),
            no_seed(trial("d", "3b-224", "lora", 3e-4, 0, 0.72)),
        ];
        trials[3].weight_decay = Some(0.1);
        trials[3]
            .params
            .insert("train.weight_decay".into(), json!(0.1));
        let grids = hyper_grids(&group_trials(&trials, true), true);
        assert_eq!(grids.len(), 1);
        let g = &grids[0];
        assert_eq!(g.lrs, [1e-4, 3e-4]);
        assert_eq!(g.weight_decays, [0.0, 0.1]);
        assert_eq!(g.cells, [[Some(0.65), Some(0.70)], [None, Some(0.72)]]);
    }

    #[test]
    fn recommendation_respects_the_budget_and_reports_the_margin() {
        let mut trials = vec![
            no_seed(trial("big", "10b-448", "lora", 1e-4, 0, 0.90)),
            no_seed(trial("mid", "3b-448", "lora", 1e-4, 0, 0.80)),
            no_seed(trial("small", "3b-224", "qlora", 1e-4, 0, 0.75)),
            no_seed(trial("est", "3b-224", "lora", 1e-4, 0, 0.70)),
        ];
        trials[0].peak_memory_bytes = Some(60 << 30);
        trials[1].peak_memory_bytes = Some(30 << 30);
        trials[2].peak_memory_bytes = Some(10 << 30);
        // Never measured: the estimate counts.
        trials[3].peak_memory_bytes = None;
        trials[3].est_memory_bytes = Some(20 << 30);
        let groups = group_trials(&trials, true);
        let rec = recommend(&groups, Some(24 << 30));
        let overall = rec.overall.unwrap();
        assert_eq!(trials[groups[overall.group].trials[0]].id, "big");
        assert_eq!(
            trials[groups[overall.runner_up.unwrap()].trials[0]].id,
            "mid"
        );
        assert!((overall.margin.unwrap() - 0.1).abs() < 1e-12);
        assert_eq!(overall.noise, Noise::NoRepeats);
        let budget = rec.budget.unwrap();
        let pick = budget.pick.unwrap();
        assert_eq!(trials[groups[pick.group].trials[0]].id, "small");
        assert_eq!(trials[groups[pick.runner_up.unwrap()].trials[0]].id, "est");
        assert!(!groups[pick.runner_up.unwrap()].memory.unwrap().measured);
        assert_eq!((budget.over, budget.unknown), (2, 0));

        let tight = recommend(&groups, Some(1 << 30)).budget.unwrap();
        assert_eq!(tight.pick, None);
        assert_eq!(tight.over, 4);
    }

    #[test]
    fn a_margin_within_the_seed_noise_is_flagged() {
        let trials = vec![
            trial("a0", "3b-224", "lora", 1e-4, 0, 0.80),
            trial("a1", "3b-224", "lora", 1e-4, 1, 0.90),
            trial("b0", "3b-224", "lora", 3e-4, 0, 0.82),
            trial("b1", "3b-224", "lora", 3e-4, 1, 0.86),
            trial("c0", "3b-224", "lora", 1e-3, 0, 0.50),
            trial("c1", "3b-224", "lora", 1e-3, 1, 0.52),
        ];
        let groups = group_trials(&trials, true);
        let pick = recommend(&groups, None).overall.unwrap();
        // 0.85 vs 0.84: a margin of 0.01, seed std ~0.055.
        assert!((pick.margin.unwrap() - 0.01).abs() < 1e-9);
        let Noise::Estimated { std, within } = pick.noise else {
            panic!("seeds vary: {:?}", pick.noise);
        };
        assert!(within);
        let expected = f64::midpoint(0.005_f64, 0.0008).sqrt();
        assert!((std - expected).abs() < 1e-9, "{std} vs {expected}");

        // A clear winner is not flagged.
        let clear = recommend(&groups[1..], None).overall.unwrap();
        assert!(matches!(
            clear.noise,
            Noise::Estimated { within: false, .. }
        ));
        // A lone group has no runner-up.
        let lone = recommend(&groups[..1], None).overall.unwrap();
        assert_eq!(lone.noise, Noise::NoRunnerUp);
        assert_eq!(lone.margin, None);
    }
}

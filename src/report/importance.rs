//! Which hyperparameters mattered: how much of the selection metric's
//! variance over the ranked trials each varying key explains, by functional
//! ANOVA (Hutter, Hoos & Leyton-Brown, ICML 2014).
//!
//! Two estimators, chosen by the shape of the trials:
//! - **A complete grid** (every combination of the keys' values ran, the
//!   same number of times): the exact decomposition. The trials *are* the
//!   function on the grid, so no model is fitted: a key's share is the
//!   variance of its marginal means over the total variance, a pair's is
//!   the variance of their joint means beyond both main effects, and the
//!   residual is every higher-order interaction (plus the spread within a
//!   cell).
//! - **Anything else** (random draws, exclusions, failed trials): the
//!   random-forest fANOVA of the `optimizer` crate (64 trees, seed 42,
//!   deterministic). We do not use it on grids: on a sweep of a few trials
//!   its bootstrap leaks variance to keys that have none (a 2×2 grid whose
//!   keys only interact gives one of them 8 % instead of 0), and it
//!   reports no residual. It also encodes a categorical key as the index of
//!   its value, so its splits treat the values as ordered.
//!
//! Keys that always changed together among the ranked trials (a sweep that
//! varies `model.size` and `model.resolution` in pairs) cannot be told
//! apart: they are one factor, `model.size + model.resolution`.

use std::collections::BTreeMap;

use optimizer::parameter::{CategoricalParam, FloatParam, ParamValue, Parameter};
use optimizer::{Direction, FanovaConfig, Study};
use serde_json::Value;

use super::analysis::{TrialFacts, is_seed_key};

/// Below this many ranked trials the table is flagged indicative.
pub const INDICATIVE_BELOW: usize = 20;
/// No table below this many ranked trials.
pub const MIN_TRIALS: usize = 3;
pub const FOREST_TREES: usize = 64;
pub const FOREST_SEED: u64 = 42;

/// What the importance section can say.
#[derive(Clone, Debug, PartialEq)]
pub enum Importance {
    /// Fewer than [`MIN_TRIALS`] ranked trials.
    TooFew {
        ranked: usize,
    },
    /// No varying key takes two values among the ranked trials.
    NothingVaries {
        ranked: usize,
    },
    /// Every ranked trial scored the same: there is no variance to share.
    Flat {
        ranked: usize,
    },
    Shares(Shares),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    /// The exact decomposition of a complete grid; `cells` combinations
    /// ran `per_cell` times each.
    ExactGrid { cells: usize, per_cell: usize },
    /// The `optimizer` crate's random-forest fANOVA.
    Forest,
}

/// The variance decomposition: fractions of the total variance.
#[derive(Clone, Debug, PartialEq)]
pub struct Shares {
    pub method: Method,
    /// Ranked trials analysed.
    pub trials: usize,
    /// One factor per key (or per group of keys that changed together),
    /// its main-effect share; largest first.
    pub main: Vec<(Factor, f64)>,
    /// Pairwise interactions above 0, largest first.
    pub pairs: Vec<(Factor, Factor, f64)>,
    /// Higher-order interactions and within-cell spread (exact grid only;
    /// the forest normalises main effects and pairs to 1).
    pub residual: Option<f64>,
    /// Varying keys of the sweep that took one value among ranked trials.
    pub constant: Vec<String>,
}

impl Shares {
    /// Whether a seed key is among the factors: its share is noise.
    pub fn seeds_vary(&self) -> bool {
        self.main.iter().any(|(f, _)| f.is_seed())
    }
}

/// One key, or keys that always changed together.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Factor {
    pub keys: Vec<String>,
}

impl Factor {
    pub fn label(&self) -> String {
        self.keys.join(" + ")
    }

    pub fn is_seed(&self) -> bool {
        self.keys.iter().all(|k| is_seed_key(k))
    }
}

/// One factor's value per trial, as an index into its sorted levels.
struct Column {
    factor: Factor,
    levels: Vec<Value>,
    /// Per trial.
    index: Vec<usize>,
}

/// Decomposes the variance of the ranked trials' quality over `keys`.
pub fn decompose(trials: &[TrialFacts], keys: &[String]) -> Importance {
    let ranked: Vec<&TrialFacts> = trials.iter().filter(|t| t.is_ranked()).collect();
    let n = ranked.len();
    if n < MIN_TRIALS {
        return Importance::TooFew { ranked: n };
    }
    let y: Vec<f64> = ranked.iter().filter_map(|t| t.quality).collect();
    let (columns, constant) = columns(&ranked, keys);
    if columns.is_empty() {
        return Importance::NothingVaries { ranked: n };
    }
    let mean = y.iter().sum::<f64>() / n as f64;
    let total = y.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n as f64;
    // Relative to the values' scale: a spread of rounding error is flat.
    if total <= (f64::EPSILON * mean.abs().max(1.0)).powi(2) {
        return Importance::Flat { ranked: n };
    }
    let mut shares = match complete_grid(&columns, n) {
        Some((cells, per_cell)) => exact(&columns, &y, total, cells, per_cell),
        None => forest(&columns, &y),
    };
    shares.constant = constant;
    shares
        .main
        .sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    shares
        .pairs
        .sort_by(|a, b| b.2.total_cmp(&a.2).then(a.0.cmp(&b.0)).then(a.1.cmp(&b.1)));
    Importance::Shares(shares)
}

/// The factors (aliased keys merged) and the keys constant among `ranked`.
fn columns(ranked: &[&TrialFacts], keys: &[String]) -> (Vec<Column>, Vec<String>) {
    let mut columns: Vec<Column> = Vec::new();
    let mut constant = Vec::new();
    for key in keys {
        let values: Vec<Value> = ranked
            .iter()
            .map(|t| t.params.get(key).cloned().unwrap_or(Value::Null))
            .collect();
        let mut levels = values.clone();
        levels.sort_by(cmp_values);
        levels.dedup();
        if levels.len() < 2 {
            constant.push(key.clone());
            continue;
        }
        let index: Vec<usize> = values
            .iter()
            .map(|v| levels.iter().position(|l| l == v).unwrap_or(0))
            .collect();
        let partition = first_seen(&index);
        match columns
            .iter_mut()
            .find(|c| first_seen(&c.index) == partition)
        {
            Some(column) => column.factor.keys.push(key.clone()),
            None => columns.push(Column {
                factor: Factor {
                    keys: vec![key.clone()],
                },
                levels,
                index,
            }),
        }
    }
    (columns, constant)
}

/// Numbers by value, then everything else by its JSON text.
fn cmp_values(a: &Value, b: &Value) -> std::cmp::Ordering {
    match (a.as_f64(), b.as_f64()) {
        (Some(x), Some(y)) => x.total_cmp(&y),
        (Some(_), None) => std::cmp::Ordering::Less,
        (None, Some(_)) => std::cmp::Ordering::Greater,
        (None, None) => a.to_string().cmp(&b.to_string()),
    }
}

/// Level indices renumbered by first appearance: equal for two keys that
/// split the trials the same way.
fn first_seen(index: &[usize]) -> Vec<usize> {
    let mut seen: Vec<usize> = Vec::new();
    index
        .iter()
        .map(|i| {
            seen.iter().position(|s| s == i).unwrap_or_else(|| {
                seen.push(*i);
                seen.len() - 1
            })
        })
        .collect()
}

/// `(cells, trials per cell)` when every combination of the factors' levels
/// ran the same number of times.
fn complete_grid(columns: &[Column], n: usize) -> Option<(usize, usize)> {
    let cells = columns
        .iter()
        .try_fold(1usize, |acc, c| acc.checked_mul(c.levels.len()))?;
    if cells > n || !n.is_multiple_of(cells) {
        return None;
    }
    let mut counts: BTreeMap<Vec<usize>, usize> = BTreeMap::new();
    for t in 0..n {
        *counts
            .entry(columns.iter().map(|c| c.index[t]).collect())
            .or_default() += 1;
    }
    let per_cell = n / cells;
    (counts.len() == cells && counts.values().all(|&c| c == per_cell)).then_some((cells, per_cell))
}

/// Means of `y` grouped by the levels of `columns[cols]` (balanced data:
/// the mean over trials is the mean over cells).
fn marginal_means(columns: &[Column], cols: &[usize], y: &[f64]) -> BTreeMap<Vec<usize>, f64> {
    let mut sums: BTreeMap<Vec<usize>, (f64, usize)> = BTreeMap::new();
    for (t, v) in y.iter().enumerate() {
        let key = cols.iter().map(|&c| columns[c].index[t]).collect();
        let e = sums.entry(key).or_default();
        e.0 += v;
        e.1 += 1;
    }
    sums.into_iter()
        .map(|(k, (s, c))| (k, s / c as f64))
        .collect()
}

fn exact(columns: &[Column], y: &[f64], total: f64, cells: usize, per_cell: usize) -> Shares {
    let mu = y.iter().sum::<f64>() / y.len() as f64;
    let mains: Vec<BTreeMap<Vec<usize>, f64>> = (0..columns.len())
        .map(|c| marginal_means(columns, &[c], y))
        .collect();
    // On a complete grid every level (pair of levels) has equal weight, so
    // the variance of a main effect is the plain mean of its squares.
    let main_var: Vec<f64> = mains
        .iter()
        .map(|m| m.values().map(|v| (v - mu).powi(2)).sum::<f64>() / m.len() as f64)
        .collect();
    let mut pairs = Vec::new();
    let mut explained: f64 = main_var.iter().sum();
    for j in 0..columns.len() {
        for k in j + 1..columns.len() {
            let joint = marginal_means(columns, &[j, k], y);
            let var = joint
                .iter()
                .map(|(levels, v)| {
                    let effect = v - mains[j][&levels[..1]] - mains[k][&levels[1..]] + mu;
                    effect * effect
                })
                .sum::<f64>()
                / joint.len() as f64;
            explained += var;
            if var / total > 1e-12 {
                pairs.push((
                    columns[j].factor.clone(),
                    columns[k].factor.clone(),
                    var / total,
                ));
            }
        }
    }
    Shares {
        method: Method::ExactGrid { cells, per_cell },
        trials: y.len(),
        main: columns
            .iter()
            .zip(&main_var)
            .map(|(c, v)| (c.factor.clone(), v / total))
            .collect(),
        pairs,
        residual: Some(((total - explained) / total).max(0.0)),
        constant: Vec::new(),
    }
}

/// A factor as the crate's parameter: numbers as a float range (a tree
/// splits on order only, so a log scale would change nothing), anything
/// else as the index of its value.
enum Param {
    Float(FloatParam),
    Categorical(CategoricalParam<usize>),
}

fn forest(columns: &[Column], y: &[f64]) -> Shares {
    let study: Study<f64> = Study::new(Direction::Maximize);
    let params: Vec<Param> = columns
        .iter()
        .map(|c| {
            let name = c.factor.label();
            let numbers: Option<Vec<f64>> = c.levels.iter().map(Value::as_f64).collect();
            match numbers {
                Some(n) if c.factor.keys.len() == 1 => {
                    Param::Float(FloatParam::new(n[0], n[n.len() - 1]).name(name))
                }
                _ => Param::Categorical(
                    CategoricalParam::new((0..c.levels.len()).collect()).name(name),
                ),
            }
        })
        .collect();
    for (t, &value) in y.iter().enumerate() {
        let fixed = columns
            .iter()
            .zip(&params)
            .map(|(c, p)| {
                let i = c.index[t];
                match p {
                    Param::Float(f) => (
                        f.id(),
                        ParamValue::Float(c.levels[i].as_f64().unwrap_or(0.0)),
                    ),
                    Param::Categorical(k) => (k.id(), ParamValue::Categorical(i)),
                }
            })
            .collect();
        study.enqueue(fixed);
        let mut trial = study.ask();
        for p in &params {
            // The values are enqueued and within range: suggesting returns
            // them and cannot fail.
            let _ = match p {
                Param::Float(f) => f.suggest(&mut trial).map(|_| ()),
                Param::Categorical(k) => k.suggest(&mut trial).map(|_| ()),
            };
        }
        study.complete_trial(trial, value);
    }
    let config = FanovaConfig {
        n_trees: FOREST_TREES,
        seed: Some(FOREST_SEED),
        ..FanovaConfig::default()
    };
    let by_label: BTreeMap<String, Factor> = columns
        .iter()
        .map(|c| (c.factor.label(), c.factor.clone()))
        .collect();
    let factor = |label: &str| by_label.get(label).cloned();
    let (main, pairs) = match study.fanova_with_config(&config) {
        Ok(result) => (
            result
                .main_effects
                .iter()
                .filter_map(|(l, v)| Some((factor(l)?, *v)))
                .collect(),
            result
                .interactions
                .iter()
                .filter_map(|((a, b), v)| Some((factor(a)?, factor(b)?, *v)))
                .collect(),
        ),
        // Only below two trials, which `decompose` never passes.
        Err(_) => (Vec::new(), Vec::new()),
    };
    Shares {
        method: Method::Forest,
        trials: y.len(),
        main,
        pairs,
        residual: None,
        constant: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    /// A finished trial with `params` and quality `q`.
    fn trial(params: &[(&str, Value)], q: f64) -> TrialFacts {
        TrialFacts {
            id: format!("t{q}"),
            params: params
                .iter()
                .map(|(k, v)| ((*k).to_owned(), v.clone()))
                .collect(),
            ..TrialFacts::finished("", q)
        }
    }

    fn keys(names: &[&str]) -> Vec<String> {
        names.iter().map(|&k| k.to_owned()).collect()
    }

    fn shares(i: Importance) -> Shares {
        match i {
            Importance::Shares(s) => s,
            other => panic!("no decomposition: {other:?}"),
        }
    }

    fn main_share(s: &Shares, label: &str) -> f64 {
        s.main
            .iter()
            .find(|(f, _)| f.label() == label)
            .map_or_else(|| panic!("{label} not in {:?}", s.main), |m| m.1)
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-9
    }

    /// 2 learning rates × 3 methods, the metric set by the lr alone.
    #[test]
    fn a_key_that_sets_the_metric_alone_explains_all_of_it() {
        let mut trials = Vec::new();
        for (i, lr) in [1e-4, 1e-3].into_iter().enumerate() {
            for m in ["lora", "qlora", "full"] {
                let q = if i == 0 { 0.5 } else { 0.7 };
                trials.push(trial(
                    &[("train.lr", json!(lr)), ("train.method", json!(m))],
                    q,
                ));
            }
        }
        let s = shares(decompose(&trials, &keys(&["train.lr", "train.method"])));
        assert_eq!(
            s.method,
            Method::ExactGrid {
                cells: 6,
                per_cell: 1
            }
        );
        assert!(close(main_share(&s, "train.lr"), 1.0), "{s:?}");
        assert!(close(main_share(&s, "train.method"), 0.0));
        assert!(s.pairs.is_empty());
        assert!(close(s.residual.unwrap(), 0.0));
        assert_eq!(s.main[0].0.label(), "train.lr");
    }

    /// Additive: lr adds 0 or 0.2, the method 0, 0.1 or 0.2. By hand:
    /// lr's marginal means are μ ∓ 0.1 (variance 0.01), the method's μ −
    /// 0.1, μ, μ + 0.1 (variance 0.02/3); total 0.05/3, so 60 % and 40 %.
    #[test]
    fn additive_effects_split_by_their_variances() {
        let mut trials = Vec::new();
        for (i, lr) in [1e-4, 1e-3].into_iter().enumerate() {
            for (j, m) in ["full", "lora", "qlora"].into_iter().enumerate() {
                let q = 0.5 + 0.2 * i as f64 + 0.1 * j as f64;
                trials.push(trial(
                    &[("train.lr", json!(lr)), ("train.method", json!(m))],
                    q,
                ));
            }
        }
        let s = shares(decompose(&trials, &keys(&["train.lr", "train.method"])));
        assert!(close(main_share(&s, "train.lr"), 0.6), "{s:?}");
        assert!(close(main_share(&s, "train.method"), 0.4));
        assert!(s.pairs.is_empty(), "{:?}", s.pairs);
        assert!(close(s.residual.unwrap(), 0.0));
    }

    /// q = a + b + a·b over a, b ∈ {−1, 1} (2 × 2): each main effect has
    /// variance 1, the interaction 1, the total 3: a third each.
    #[test]
    fn an_interaction_gets_its_own_share() {
        let mut trials = Vec::new();
        for a in [-1.0, 1.0] {
            for b in [-1.0, 1.0] {
                trials.push(trial(&[("a", json!(a)), ("b", json!(b))], a + b + a * b));
            }
        }
        let s = shares(decompose(&trials, &keys(&["a", "b"])));
        assert!(close(main_share(&s, "a"), 1.0 / 3.0), "{s:?}");
        assert!(close(main_share(&s, "b"), 1.0 / 3.0));
        assert_eq!(s.pairs.len(), 1);
        assert!(close(s.pairs[0].2, 1.0 / 3.0));
        assert!(close(s.residual.unwrap(), 0.0));
    }

    /// A pure three-way interaction (q = a·b·c) is in no main effect nor
    /// pair: all of it is residual. Seeds replicate each cell: the
    /// within-cell spread joins the residual too.
    #[test]
    fn higher_order_interactions_and_replicates_are_the_residual() {
        let mut trials = Vec::new();
        for a in [-1.0, 1.0] {
            for b in [-1.0, 1.0] {
                for c in [-1.0, 1.0] {
                    trials.push(trial(
                        &[("a", json!(a)), ("b", json!(b)), ("c", json!(c))],
                        a * b * c,
                    ));
                }
            }
        }
        let s = shares(decompose(&trials, &keys(&["a", "b", "c"])));
        assert!(s.main.iter().all(|(_, v)| close(*v, 0.0)), "{s:?}");
        assert!(s.pairs.is_empty());
        assert!(close(s.residual.unwrap(), 1.0));

        // Each value of `a` twice, ± 0.1: a's effect has variance 0.25,
        // the spread within a cell 0.01.
        let replicated: Vec<TrialFacts> = [(0, -0.1), (0, 0.1), (1, -0.1), (1, 0.1)]
            .into_iter()
            .map(|(a, e)| trial(&[("a", json!(a))], f64::from(a) + e))
            .collect();
        let s = shares(decompose(&replicated, &keys(&["a"])));
        assert_eq!(
            s.method,
            Method::ExactGrid {
                cells: 2,
                per_cell: 2
            }
        );
        assert!(close(main_share(&s, "a"), 0.25 / 0.26), "{s:?}");
        assert!(close(s.residual.unwrap(), 0.01 / 0.26));
    }

    /// Two seeds per lr: seed is a key, and its share is the noise.
    #[test]
    fn the_seed_is_a_factor_whose_share_is_noise() {
        let trials = vec![
            trial(
                &[("train.lr", json!(1e-4)), ("experiment.seed", json!(0))],
                0.50,
            ),
            trial(
                &[("train.lr", json!(1e-4)), ("experiment.seed", json!(1))],
                0.52,
            ),
            trial(
                &[("train.lr", json!(1e-3)), ("experiment.seed", json!(0))],
                0.70,
            ),
            trial(
                &[("train.lr", json!(1e-3)), ("experiment.seed", json!(1))],
                0.72,
            ),
        ];
        let s = shares(decompose(&trials, &keys(&["experiment.seed", "train.lr"])));
        // lr: ±0.1 → 0.01; seed: ±0.01 → 0.0001; total 0.0101.
        assert!(close(main_share(&s, "train.lr"), 0.01 / 0.0101), "{s:?}");
        assert!(close(main_share(&s, "experiment.seed"), 0.0001 / 0.0101));
        assert!(s.seeds_vary());
        assert_eq!(s.main[0].0.label(), "train.lr");
    }

    #[test]
    fn keys_that_change_together_are_one_factor() {
        let mut trials = Vec::new();
        for (size, res) in [("3b", 224), ("10b", 448)] {
            for lr in [1e-4, 1e-3] {
                let q = if size == "3b" { 0.5 } else { 0.6 } + if lr > 5e-4 { 0.1 } else { 0.0 };
                trials.push(trial(
                    &[
                        ("model.size", json!(size)),
                        ("model.resolution", json!(res)),
                        ("train.lr", json!(lr)),
                    ],
                    q,
                ));
            }
        }
        let s = shares(decompose(
            &trials,
            &keys(&["model.resolution", "model.size", "train.lr"]),
        ));
        assert!(matches!(s.method, Method::ExactGrid { cells: 4, .. }));
        assert!(
            close(main_share(&s, "model.resolution + model.size"), 0.5),
            "{s:?}"
        );
        assert!(close(main_share(&s, "train.lr"), 0.5));
    }

    /// A missing cell (a failed trial) is no grid: the forest estimates,
    /// reproducibly, and still ranks the key that matters first.
    #[test]
    fn an_incomplete_grid_falls_back_to_the_seeded_forest() {
        let mut trials = Vec::new();
        for lr in [1e-5_f64, 1e-4, 1e-3, 1e-2] {
            for wd in [0.0, 0.01, 0.1] {
                let q = 0.1 * lr.log10() + 0.001 * wd;
                trials.push(trial(
                    &[("train.lr", json!(lr)), ("train.wd", json!(wd))],
                    q,
                ));
            }
        }
        trials[5].status = "failed".into();
        let keys = keys(&["train.lr", "train.wd"]);
        let s = shares(decompose(&trials, &keys));
        assert_eq!(s.method, Method::Forest);
        assert_eq!(s.residual, None);
        assert_eq!(s.main[0].0.label(), "train.lr");
        assert!(s.main[0].1 > 0.9, "{s:?}");
        let total: f64 =
            s.main.iter().map(|m| m.1).sum::<f64>() + s.pairs.iter().map(|p| p.2).sum::<f64>();
        assert!(close(total, 1.0));
        assert_eq!(decompose(&trials, &keys), Importance::Shares(s));
    }

    #[test]
    fn degenerate_sweeps_say_why_there_is_no_table() {
        let two = vec![
            trial(&[("a", json!(1))], 0.1),
            trial(&[("a", json!(2))], 0.2),
        ];
        assert_eq!(
            decompose(&two, &keys(&["a"])),
            Importance::TooFew { ranked: 2 }
        );
        let flat: Vec<TrialFacts> = (0..3).map(|i| trial(&[("a", json!(i))], 0.5)).collect();
        assert_eq!(
            decompose(&flat, &keys(&["a"])),
            Importance::Flat { ranked: 3 }
        );
        let same: Vec<TrialFacts> = (0..3)
            .map(|i| trial(&[("a", json!(1))], f64::from(i)))
            .collect();
        assert_eq!(
            decompose(&same, &keys(&["a"])),
            Importance::NothingVaries { ranked: 3 }
        );
    }
}

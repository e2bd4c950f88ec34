//! Expanding a spec's `[sweep]` into trials: grid (cartesian product with
//! zip groups and exclude rules) or seeded random search. Every trial is a
//! fully resolved, validated spec with a stable id.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

use crate::spec::error::{Problem, SpecError};
use crate::spec::layers::Layer;
use crate::spec::load::LoadedSpec;
use crate::spec::schema::{Axis, Distribution, Method, Spec, Strategy, Sweep};
use crate::spec::validate;

use super::trial_id::{TrialId, trial_id, values_equal};
use crate::rng::SplitMix64;

/// The spec sections whose keys may vary across trials.
const SWEEPABLE: &[&str] = &[
    "model",
    "data",
    "train",
    "lora",
    "qlora",
    "eval",
    "synthetic",
];

/// The most trials one sweep may expand to, even with `--yes`: the grid is
/// counted before it is built, so a typo in the axes is an error, not an
/// allocation without bound (the store, the plan and the report hold every
/// trial too).
pub const MAX_TRIALS: usize = 10_000;

/// One trial: its id, the values its axes gave it, and its resolved spec.
#[derive(Clone, Debug)]
pub struct Trial {
    pub id: TrialId,
    /// Axis key → value (only the keys that vary).
    pub params: BTreeMap<String, Value>,
    pub spec: Spec,
}

#[derive(Clone, Debug)]
pub struct Expansion {
    pub trials: Vec<Trial>,
    /// Axis keys, in order.
    pub axes: Vec<String>,
    /// Combinations dropped by exclude rules.
    pub excluded: usize,
    /// Random draws that repeated an earlier trial.
    pub repeated_draws: usize,
}

/// A group of axes that vary together: one axis, or a zip group.
enum Group {
    Rows {
        keys: Vec<String>,
        rows: Vec<Vec<Value>>,
    },
    Dist {
        key: String,
        dist: Distribution,
    },
}

impl Group {
    fn len(&self) -> usize {
        match self {
            Group::Rows { rows, .. } => rows.len(),
            Group::Dist { .. } => 1,
        }
    }
}

/// Expands the sweep; `allow_large` is `--yes` (more than `sweep.max_trials`).
pub fn expand(loaded: &LoadedSpec, allow_large: bool) -> Result<Expansion, SpecError> {
    let sweep = &loaded.spec.sweep;
    let groups = plan_groups(loaded)?;
    let axes: Vec<String> = sweep.axes.keys().cloned().collect();

    let (combos, repeated_draws) = match sweep.strategy {
        Strategy::Grid => {
            let count = groups
                .iter()
                .try_fold(1usize, |n, g| n.checked_mul(g.len()))
                .unwrap_or(usize::MAX);
            check_size(loaded, &["sweep", "axes"], count, allow_large)?;
            (grid(&groups), 0)
        }
        // A TPE sweep's trials are suggested while it runs; what it is
        // planned and checked with are `samples` random draws of its space.
        Strategy::Random | Strategy::Tpe => {
            let samples = usize::try_from(sweep.samples).unwrap_or(usize::MAX);
            check_size(loaded, &["sweep", "samples"], samples, allow_large)?;
            random(&groups, sweep.samples, loaded.spec.experiment.seed)
        }
    };

    let before = combos.len();
    let combos: Vec<_> = combos
        .into_iter()
        .filter(|combo| !sweep.exclude.iter().any(|rule| matches_rule(combo, rule)))
        .collect();
    let excluded = before - combos.len();
    // Later checks speak of what trials use: with none, they would blame
    // the wrong keys.
    if combos.is_empty() {
        return Err(SpecError::Invalid(vec![loaded.problem(
            &["sweep".into(), "exclude".into()],
            format!("the exclude rules drop all {before} trials of the sweep"),
            Some("loosen or remove a rule so that some trial is left".into()),
        )]));
    }

    let trials = build_trials(loaded, combos)?;
    check_unused_options(loaded, &trials)?;
    Ok(Expansion {
        trials,
        axes,
        excluded,
        repeated_draws,
    })
}

fn axis_problem(loaded: &LoadedSpec, key: &str, message: String, help: &str) -> Problem {
    loaded.problem(
        &["sweep".into(), "axes".into(), key.into()],
        message,
        Some(help.to_owned()),
    )
}

/// Checks the axes, zip groups and exclude rules, and groups the axes.
fn plan_groups(loaded: &LoadedSpec) -> Result<Vec<Group>, SpecError> {
    let mut problems = check_axes(loaded);
    let zipped = check_zip(loaded, &mut problems);
    check_exclude(loaded, &mut problems);
    if !problems.is_empty() {
        return Err(SpecError::Invalid(problems));
    }
    Ok(group_axes(&loaded.spec.sweep, &zipped))
}

fn check_axes(loaded: &LoadedSpec) -> Vec<Problem> {
    let sweep = &loaded.spec.sweep;
    let mut problems = Vec::new();
    for (key, axis) in &sweep.axes {
        let segments: Vec<&str> = key.split('.').collect();
        let sweepable =
            key == "experiment.seed" || (segments.len() >= 2 && SWEEPABLE.contains(&segments[0]));
        if !sweepable {
            problems.push(axis_problem(
                loaded,
                key,
                format!("`{key}` cannot be swept"),
                "axes vary keys that change what a trial computes: model.*, data.*, train.*, lora.*, qlora.*, eval.*, synthetic.* and experiment.seed",
            ));
            continue;
        }
        match axis {
            Axis::Values(values) | Axis::Distribution(Distribution::Choice(values))
                if values.is_empty() =>
            {
                problems.push(axis_problem(
                    loaded,
                    key,
                    "the axis has no values".into(),
                    "give at least one value, e.g. [1e-5, 3e-5], or remove the axis",
                ));
            }
            Axis::Distribution(dist) if sweep.strategy == Strategy::Grid => {
                let kind = match dist {
                    Distribution::Choice(_) => "choice",
                    Distribution::Uniform(_) => "uniform",
                    Distribution::Loguniform(_) => "loguniform",
                };
                problems.push(axis_problem(
                    loaded,
                    key,
                    format!("a `{kind}` distribution needs sweep.strategy = \"random\" or \"tpe\""),
                    "give a list of values for a grid, or set strategy = \"random\" (or \"tpe\") with samples = N",
                ));
            }
            Axis::Distribution(Distribution::Uniform([lo, hi]))
                if lo.partial_cmp(hi) != Some(std::cmp::Ordering::Less) =>
            {
                problems.push(axis_problem(
                    loaded,
                    key,
                    format!("uniform bounds [{lo}, {hi}] are empty"),
                    "write { uniform = [low, high] } with low < high",
                ));
            }
            Axis::Distribution(Distribution::Loguniform([lo, hi])) if !(*lo > 0.0 && lo < hi) => {
                problems.push(axis_problem(
                    loaded,
                    key,
                    format!("loguniform bounds [{lo}, {hi}] must satisfy 0 < low < high"),
                    "e.g. { loguniform = [1e-6, 1e-4] }",
                ));
            }
            _ => {}
        }
    }

    problems
}

/// Checks the zip groups; returns the zipped axis keys.
fn check_zip(loaded: &LoadedSpec, problems: &mut Vec<Problem>) -> BTreeSet<String> {
    let sweep = &loaded.spec.sweep;
    let zip_key = || vec!["sweep".to_owned(), "zip".to_owned()];
    let mut zipped = BTreeSet::new();
    for group in &sweep.zip {
        if group.len() < 2 {
            problems.push(loaded.problem(
                &zip_key(),
                format!("a zip group needs at least two axes, got {group:?}"),
                Some("zip = [[\"model.resolution\", \"train.batch_size\"]]".into()),
            ));
        }
        let mut lengths = Vec::new();
        for key in group {
            if !zipped.insert(key.clone()) {
                problems.push(loaded.problem(
                    &zip_key(),
                    format!("`{key}` is in more than one zip group"),
                    Some("merge the groups into one".into()),
                ));
            }
            match sweep.axes.get(key) {
                Some(Axis::Values(values)) => lengths.push((key, values.len())),
                Some(Axis::Distribution(_)) => problems.push(loaded.problem(
                    &zip_key(),
                    format!("`{key}` is a distribution; only value lists can be zipped"),
                    None,
                )),
                None => problems.push(loaded.problem(
                    &zip_key(),
                    format!("`{key}` is not an axis"),
                    Some(format!("axes: {}", axis_list(loaded))),
                )),
            }
        }
        if lengths.windows(2).any(|w| w[0].1 != w[1].1) {
            let shown: Vec<String> = lengths.iter().map(|(k, n)| format!("{k}: {n}")).collect();
            problems.push(loaded.problem(
                &zip_key(),
                format!("zipped axes must have equal lengths ({})", shown.join(", ")),
                Some("give every axis of the group the same number of values".into()),
            ));
        }
    }

    zipped
}

fn check_exclude(loaded: &LoadedSpec, problems: &mut Vec<Problem>) {
    let sweep = &loaded.spec.sweep;
    for (i, rule) in sweep.exclude.iter().enumerate() {
        for key in rule.keys() {
            if !sweep.axes.contains_key(key) {
                problems.push(loaded.problem(
                    &["sweep".into(), "exclude".into()],
                    format!("rule {} names `{key}`, which is not an axis", i + 1),
                    Some(format!(
                        "exclude rules match axis values; axes: {}",
                        axis_list(loaded)
                    )),
                ));
            }
        }
        if rule.is_empty() {
            problems.push(loaded.problem(
                &["sweep".into(), "exclude".into()],
                format!("rule {} is empty and would drop every trial", i + 1),
                None,
            ));
        }
    }
}

fn group_axes(sweep: &Sweep, zipped: &BTreeSet<String>) -> Vec<Group> {
    let mut groups = Vec::new();
    for group in &sweep.zip {
        let columns: Vec<&Vec<Value>> = group
            .iter()
            .filter_map(|k| match sweep.axes.get(k) {
                Some(Axis::Values(v)) => Some(v),
                _ => None,
            })
            .collect();
        let rows = (0..columns[0].len())
            .map(|i| columns.iter().map(|c| c[i].clone()).collect())
            .collect();
        groups.push(Group::Rows {
            keys: group.clone(),
            rows,
        });
    }
    for (key, axis) in &sweep.axes {
        if zipped.contains(key) {
            continue;
        }
        groups.push(match axis {
            Axis::Values(values) | Axis::Distribution(Distribution::Choice(values)) => {
                Group::Rows {
                    keys: vec![key.clone()],
                    rows: values.iter().map(|v| vec![v.clone()]).collect(),
                }
            }
            Axis::Distribution(dist) => Group::Dist {
                key: key.clone(),
                dist: dist.clone(),
            },
        });
    }
    groups
}

fn axis_list(loaded: &LoadedSpec) -> String {
    let keys: Vec<&str> = loaded.spec.sweep.axes.keys().map(String::as_str).collect();
    if keys.is_empty() {
        "(none)".into()
    } else {
        keys.join(", ")
    }
}

/// `count` trials (counted before any is built) against `--yes` and
/// `sweep.max_trials`, and against [`MAX_TRIALS`] whatever the flags say;
/// `key` is what set the count.
fn check_size(
    loaded: &LoadedSpec,
    key: &[&str],
    count: usize,
    allow_large: bool,
) -> Result<(), SpecError> {
    let key: Vec<String> = key.iter().map(|&k| k.to_owned()).collect();
    let shown = if count == usize::MAX {
        "more than 2^64".to_owned()
    } else {
        count.to_string()
    };
    if count > MAX_TRIALS {
        return Err(SpecError::Invalid(vec![loaded.problem(
            &key,
            format!(
                "the sweep has {shown} trials, more than palisweep expands in one sweep ({MAX_TRIALS}), even with --yes"
            ),
            Some(
                "trim the axes (or sweep.samples), or split the sweep into several specs".into(),
            ),
        )]));
    }
    let limit = loaded.spec.sweep.max_trials as usize;
    if count > limit && !allow_large {
        return Err(SpecError::Invalid(vec![loaded.problem(
            &key,
            format!("the sweep has {count} trials, more than sweep.max_trials = {limit}"),
            Some("pass --yes to run it anyway, raise sweep.max_trials, or trim the axes".into()),
        )]));
    }
    Ok(())
}

pub type Combo = BTreeMap<String, Value>;

fn grid(groups: &[Group]) -> Vec<Combo> {
    let mut combos = vec![Combo::new()];
    for group in groups {
        let Group::Rows { keys, rows } = group else {
            continue;
        };
        combos = combos
            .iter()
            .flat_map(|combo| {
                rows.iter().map(move |row| {
                    let mut next = combo.clone();
                    for (k, v) in keys.iter().zip(row) {
                        next.insert(k.clone(), v.clone());
                    }
                    next
                })
            })
            .collect();
    }
    combos
}

/// `samples` draws; repeats of an earlier draw are dropped and counted.
fn random(groups: &[Group], samples: u32, seed: u64) -> (Vec<Combo>, usize) {
    // A fixed salt keeps the sweep's stream apart from training's use of the seed.
    let mut rng = SplitMix64::new(seed ^ 0x5157_E3EB_5A3F_0001);
    let mut combos: Vec<Combo> = Vec::new();
    let mut repeated = 0;
    for _ in 0..samples {
        let mut combo = Combo::new();
        for group in groups {
            match group {
                Group::Rows { keys, rows } => {
                    let row = &rows[rng.below(rows.len())];
                    for (k, v) in keys.iter().zip(row) {
                        combo.insert(k.clone(), v.clone());
                    }
                }
                Group::Dist { key, dist } => {
                    let u = rng.next_f64();
                    let x = match dist {
                        Distribution::Uniform([lo, hi]) => lo + u * (hi - lo),
                        Distribution::Loguniform([lo, hi]) => {
                            (lo.ln() + u * (hi.ln() - lo.ln())).exp()
                        }
                        Distribution::Choice(_) => unreachable!("choice axes are grouped as rows"),
                    };
                    combo.insert(key.clone(), Value::from(three_significant_digits(x)));
                }
            }
        }
        if combos.iter().any(|c| combo_equal(c, &combo)) {
            repeated += 1;
        } else {
            combos.push(combo);
        }
    }
    (combos, repeated)
}

/// Sampled values are rounded so tables stay readable and ids stay stable.
pub fn three_significant_digits(x: f64) -> f64 {
    format!("{x:.2e}").parse().unwrap_or(x)
}

fn combo_equal(a: &Combo, b: &Combo) -> bool {
    a.len() == b.len()
        && a.iter()
            .all(|(k, v)| b.get(k).is_some_and(|w| values_equal(v, w)))
}

fn matches_rule(combo: &Combo, rule: &BTreeMap<String, Value>) -> bool {
    rule.iter()
        .all(|(k, v)| combo.get(k).is_some_and(|c| values_equal(c, v)))
}

/// The trials of these axis values (a suggestion, or what a store
/// recorded), resolved and checked as the expansion's own.
pub fn trials_at(loaded: &LoadedSpec, combos: Vec<Combo>) -> Result<Vec<Trial>, SpecError> {
    build_trials(loaded, combos)
}

fn build_trials(loaded: &LoadedSpec, combos: Vec<Combo>) -> Result<Vec<Trial>, SpecError> {
    let cwd = std::env::current_dir().unwrap_or_default();
    let mut problems: Vec<Problem> = Vec::new();
    let mut trials: Vec<Trial> = Vec::new();
    let mut seen: BTreeMap<TrialId, usize> = BTreeMap::new();
    for params in combos {
        let layers: Vec<Layer> = match params
            .iter()
            .map(|(k, v)| Layer::axis(k, v).map_err(|e| (k, e)))
            .collect()
        {
            Ok(layers) => layers,
            Err((key, message)) => {
                problems.push(axis_problem(
                    loaded,
                    key,
                    message,
                    "axis values are TOML values",
                ));
                continue;
            }
        };
        let note = |p: Problem| Problem {
            message: format!("{} (in the trial with {})", p.message, describe(&params)),
            ..p
        };
        let mut spec = match loaded.extract(&layers) {
            Ok(spec) => spec,
            Err(SpecError::Invalid(ps)) => {
                problems.extend(ps.into_iter().map(note));
                continue;
            }
            Err(other) => return Err(other),
        };
        if let Err(e) = loaded.finish(&mut spec, &layers, &cwd) {
            match e {
                SpecError::Invalid(ps) => problems.extend(ps.into_iter().map(note)),
                other => return Err(other),
            }
            continue;
        }
        spec.experiment
            .name
            .clone_from(&loaded.spec.experiment.name);
        spec.experiment
            .results
            .clone_from(&loaded.spec.experiment.results);
        let issues = validate::check(&spec);
        if !issues.is_empty() {
            problems.extend(
                issues
                    .into_iter()
                    .map(|i| note(loaded.problem_in(&i.key, i.message, i.help, &layers))),
            );
            continue;
        }
        let id = trial_id(&spec, &loaded.defaults, &loaded.dir);
        if let Some(&first) = seen.get(&id) {
            problems.push(loaded.problem(
                &["sweep".into(), "axes".into()],
                format!(
                    "the trials with {} and with {} are the same trial ({id})",
                    describe(&trials[first].params),
                    describe(&params)
                ),
                Some("remove the repeated value, or the axis that does not change the trial (e.g. model.size when model.checkpoint names a fixed checkpoint)".into()),
            ));
            continue;
        }
        seen.insert(id.clone(), trials.len());
        trials.push(Trial { id, params, spec });
    }
    if !problems.is_empty() {
        problems.dedup();
        let mut unique: Vec<Problem> = Vec::new();
        for p in problems {
            if !unique
                .iter()
                .any(|u| u.location == p.location && u.key == p.key)
            {
                unique.push(p);
            }
        }
        return Err(SpecError::Invalid(unique));
    }
    Ok(trials)
}

/// `train.lr = 1e-5, model.size = "3b"`.
pub fn describe(params: &Combo) -> String {
    if params.is_empty() {
        return "the base spec".into();
    }
    params
        .iter()
        .map(|(k, v)| format!("{k} = {v}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// QLoRA (or LoRA) options set while no trial uses them are mistakes.
fn check_unused_options(loaded: &LoadedSpec, trials: &[Trial]) -> Result<(), SpecError> {
    let uses = |m: Method| trials.iter().any(|t| t.spec.train.method == m);
    let json = |v: Result<Value, serde_json::Error>| v.unwrap_or_default();
    let sections = [
        (
            "qlora",
            "qlora",
            uses(Method::Qlora),
            json(serde_json::to_value(&loaded.spec.qlora)),
            json(serde_json::to_value(&loaded.defaults.qlora)),
        ),
        (
            "lora",
            "lora",
            uses(Method::Lora) || uses(Method::Qlora),
            json(serde_json::to_value(&loaded.spec.lora)),
            json(serde_json::to_value(&loaded.defaults.lora)),
        ),
        (
            "synthetic",
            "synthetic",
            uses(Method::Synthetic),
            json(serde_json::to_value(&loaded.spec.synthetic)),
            json(serde_json::to_value(&loaded.defaults.synthetic)),
        ),
    ];
    let mut problems = Vec::new();
    for (section, method, used, set, defaults) in sections {
        let Value::Object(set) = set else { continue };
        if used {
            continue;
        }
        for (key, value) in set {
            if defaults.get(&key).is_some_and(|d| !values_equal(d, &value)) {
                problems.push(loaded.problem(
                    &[section.to_owned(), key.clone()],
                    format!("set, but no trial uses train.method = \"{method}\""),
                    Some(format!(
                        "remove {section}.{key}, or set train.method = \"{method}\" (or sweep it: \"train.method\" = [\"lora\", \"qlora\"])"
                    )),
                ));
            }
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(SpecError::Invalid(problems))
    }
}

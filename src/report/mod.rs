//! `palisweep report SWEEP`: the checkpoint-selection report of a sweep,
//! as `report.md` and a self-contained `report.html` (inline SVG plots).
//!
//! [`build`] reads the store into a [`Report`] (plain data: the trials'
//! facts and the analysis of `analysis.rs`); `markdown.rs` and `html.rs`
//! render it, `plots.rs` draws its SVGs; [`write`] does all of it and
//! writes the files.
//!
//! ```text
//! let store = Store::open_read_only(&results.store())?;
//! let options = ReportOptions { budget_memory: Some(parse_bytes("24GiB")?), ..Default::default() };
//! let paths = report::write(&store, "demo", &options)?;
//! ```

pub mod analysis;
pub mod bootstrap;
mod compare;
mod content;
pub mod decision;
mod examples;
mod format;
pub mod gallery;
mod html;
pub mod importance;
mod importance_section;
mod markdown;
mod overlay;
mod parallel;
mod plots;
mod progress;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::metrics::names::higher_is_better;
use crate::track::store::{Store, StoreError, SweepRow};
use analysis::{Group, HyperGrid, MethodComparison, Recommendation, TrialFacts};
use decision::Decision;

pub use html::render_html;
pub use markdown::render_markdown;

/// Trials whose learning curves the report draws.
pub const TOP_CURVES: usize = 5;
/// The training-loss metric drawn next to the selection metric.
pub const TRAIN_LOSS: &str = "train/loss";

/// What the CLI passes (`--out`, `--budget-memory`, `--metric`, `--gallery`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReportOptions {
    /// Default: `<results>/<sweep>/report/`.
    pub out: Option<PathBuf>,
    /// Bytes (`devices::grammar::parse_bytes("24GiB")`).
    pub budget_memory: Option<u64>,
    /// Default: the sweep's `eval.select` metric.
    pub metric: Option<String>,
    /// Examples in the prediction gallery; `None`: [`gallery::DEFAULT_SIZE`],
    /// 0: no gallery.
    pub gallery: Option<usize>,
}

/// The files [`write`] wrote.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReportPaths {
    pub dir: PathBuf,
    pub markdown: PathBuf,
    pub html: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(
        "no trial of sweep `{sweep}` reported the metric `{metric}`{}",
        if known.is_empty() { String::new() } else { format!("\n  help: reported metrics: {}", known.join(", ")) }
    )]
    UnknownMetric {
        sweep: String,
        metric: String,
        known: Vec<String>,
    },
    #[error("the stored config of trial `{trial}` does not parse: {source}")]
    Config {
        trial: String,
        source: Box<toml::de::Error>,
    },
    #[error("cannot draw the plot `{plot}`: {message}")]
    Plot { plot: String, message: String },
    #[error("cannot write {}: {source}", path.display())]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// One trial's curve: `(step, value)` points, later attempts replacing
/// earlier ones at the same step.
#[derive(Clone, Debug, PartialEq)]
pub struct Curve {
    pub label: String,
    pub points: Vec<(u64, f64)>,
}

/// Everything the renderers show.
#[derive(Clone, Debug, PartialEq)]
pub struct Report {
    pub sweep: SweepRow,
    pub metric: String,
    pub higher_is_better: bool,
    /// `GPU-hours` when the trials ran on CUDA devices, else `CPU-hours`.
    pub hours_label: &'static str,
    pub gpu_names: Vec<String>,
    /// The sweep's varying keys (seeds included).
    pub varying: Vec<String>,
    /// Whether a seed key varies (groups are then shown as mean ± std).
    pub seeds_vary: bool,
    pub trials: Vec<TrialFacts>,
    /// Ranked, best first.
    pub groups: Vec<Group>,
    /// Indices into `groups`.
    pub best_per_checkpoint: Vec<usize>,
    pub methods: MethodComparison,
    pub grids: Vec<HyperGrid>,
    /// Which varying keys explain the selection metric's variance.
    pub importance: importance::Importance,
    /// `pareto[i]`: whether `groups[i]` is on the quality-vs-cost front
    /// (false without a wall time).
    pub pareto: Vec<bool>,
    pub recommendation: Recommendation,
    /// The section at the top: the pick, or why there is none.
    pub decision: Decision,
    /// The results root the store is in (quoted in commands as `--results`).
    pub results: PathBuf,
    /// The selection metric of the top groups' best runs.
    pub metric_curves: Vec<Curve>,
    pub loss_curves: Vec<Curve>,
    /// Best so far against device-hours: the sweep as run, then the
    /// strategies `simulate` replayed it under (when it ran).
    pub best_so_far: Vec<plots::Line>,
    /// Bootstrap intervals over validation examples; `None` when the seed
    /// varied (the seed spread is the noise then).
    pub bootstrap: Option<bootstrap::Bootstrap>,
    pub gallery: gallery::Gallery,
}

impl Report {
    /// Indices of trials left out of rankings.
    pub fn excluded(&self) -> Vec<usize> {
        (0..self.trials.len())
            .filter(|&i| !self.trials[i].is_ranked())
            .collect()
    }

    /// A group's cost in device-hours per run (wall time × one device).
    pub fn hours(group: &Group) -> Option<f64> {
        group.wall_time_s.map(|s| s / 3600.0)
    }
}

/// Reads the sweep (a name or id prefix) and analyses it.
pub fn build(store: &Store, sweep: &str, options: &ReportOptions) -> Result<Report, ReportError> {
    let sweep = store.resolve_sweep(sweep)?;
    let metric = ranking_metric(store, &sweep, options)?;
    let rows = store.trials(&sweep.name)?;
    let higher = higher_is_better(&metric);
    let varying = crate::track::store::varying_keys(&rows);
    let results: BTreeMap<String, _> = store
        .trial_results(&sweep.name, &metric)?
        .into_iter()
        .map(|r| (r.id.clone(), r))
        .collect();

    let configs = store.trial_configs(&sweep.name)?;
    let mut trials = Vec::with_capacity(rows.len());
    let mut ended = Vec::new();
    for row in &rows {
        let config = configs.get(&row.id).map_or("", String::as_str);
        let config: toml::Table = toml::from_str(config).map_err(|e| ReportError::Config {
            trial: row.id.clone(),
            source: Box::new(e),
        })?;
        let result = results.get(&row.id);
        if let (Some(end), Some(seconds)) = (row.end, result.and_then(|r| r.wall_time_s)) {
            ended.push(progress::Ended {
                end,
                seconds,
                value: result.and_then(|r| r.best),
            });
        }
        trials.push(TrialFacts {
            id: row.id.clone(),
            params: varying
                .iter()
                .filter_map(|k| row.params.get(k).map(|v| (k.clone(), v.clone())))
                .collect(),
            status: row.status.clone(),
            reason: row.exit_reason.clone(),
            checkpoint: checkpoint_label(&config),
            method: str_at(&config, "train.method").unwrap_or_else(|| "lora".into()),
            lr: float_at(&config, "train.lr"),
            weight_decay: float_at(&config, "train.weight_decay"),
            quality: result.and_then(|r| r.best),
            best_step: result.and_then(|r| r.best_step),
            dir: row.dir.clone(),
            wall_time_s: result.and_then(|r| r.wall_time_s),
            peak_memory_bytes: result.and_then(|r| r.peak_memory_bytes),
            est_memory_bytes: row.est_memory_bytes,
            device: row.device.clone(),
        });
    }

    let groups = analysis::group_trials(&trials, higher);
    let points: Vec<(f64, f64)> = groups
        .iter()
        .map(|g| (Report::hours(g).unwrap_or(f64::INFINITY), g.mean))
        .collect();
    let pareto = analysis::pareto_front(&points, higher)
        .into_iter()
        .zip(&points)
        .map(|(front, p)| front && p.0.is_finite())
        .collect();
    let cuda = trials
        .iter()
        .filter_map(|t| t.device.as_deref())
        .any(|d| d.starts_with("cuda"));

    let (metric_curves, loss_curves) = top_curves(store, &sweep.name, &metric, &groups, &trials)?;
    let recommendation = analysis::recommend(&groups, options.budget_memory);
    let decision = decision::decide(
        &trials,
        &groups,
        recommendation.overall.as_ref(),
        decision::no_signal(&trials, &metric, higher),
        |t| test_metrics(store, &sweep.name, &t.id),
    )?;

    let report = Report {
        best_so_far: best_so_far(&sweep, &metric, ended, higher),
        importance: importance::decompose(&trials, &varying),
        gpu_names: store
            .latest_environment(&sweep.name)?
            .map(|e| e.environment.gpu_names)
            .unwrap_or_default(),
        hours_label: if cuda { "GPU-hours" } else { "CPU-hours" },
        seeds_vary: varying.iter().any(|k| analysis::is_seed_key(k)),
        bootstrap: None,
        gallery: gallery::Gallery::Off,
        varying,
        best_per_checkpoint: analysis::best_per_checkpoint(&groups),
        methods: analysis::compare_methods(&groups),
        grids: analysis::hyper_grids(&groups, higher),
        recommendation,
        decision,
        results: store.path().parent().unwrap_or(Path::new(".")).to_owned(),
        pareto,
        groups,
        trials,
        metric_curves,
        loss_curves,
        higher_is_better: higher,
        metric,
        sweep,
    };
    Ok(with_evidence(report, &configs, options))
}

/// The sweep's best so far against compute, then `simulate`'s replays.
fn best_so_far(
    sweep: &SweepRow,
    metric: &str,
    ended: Vec<progress::Ended>,
    higher: bool,
) -> Vec<plots::Line> {
    let dir = crate::layout::ResultsRoot::new(&sweep.results).sweep(&sweep.name);
    let mut lines = vec![progress::of_sweep(ended, higher)];
    lines.extend(progress::simulated(dir.path(), metric));
    lines
}

/// `--metric`, else the sweep's `eval.select` metric; one that no trial
/// reported is an error that lists those reported.
fn ranking_metric(
    store: &Store,
    sweep: &SweepRow,
    options: &ReportOptions,
) -> Result<String, ReportError> {
    let metric = options
        .metric
        .clone()
        .unwrap_or_else(|| sweep.select_metric.clone());
    let known = store.metric_names(&sweep.name, None)?;
    if !known.contains(&metric) && (options.metric.is_some() || !known.is_empty()) {
        return Err(ReportError::UnknownMetric {
            sweep: sweep.name.clone(),
            metric,
            known,
        });
    }
    Ok(metric)
}

/// The selection metric and training loss of the top groups' best runs.
fn top_curves(
    store: &Store,
    sweep: &str,
    metric: &str,
    groups: &[Group],
    trials: &[TrialFacts],
) -> Result<(Vec<Curve>, Vec<Curve>), ReportError> {
    let mut metric_curves = Vec::new();
    let mut loss_curves = Vec::new();
    for (rank, g) in groups.iter().take(TOP_CURVES).enumerate() {
        let best = &trials[g.trials[0]];
        let label = format!("#{} {}", rank + 1, short_id(&best.id));
        for (name, curves) in [(metric, &mut metric_curves), (TRAIN_LOSS, &mut loss_curves)] {
            let mut points = BTreeMap::new();
            for p in store.metric_series(sweep, &best.id, name)? {
                match p.value {
                    Some(v) if v.is_finite() => points.insert(p.step, v),
                    _ => points.remove(&p.step),
                };
            }
            curves.push(Curve {
                label: label.clone(),
                points: points.into_iter().collect(),
            });
        }
    }

    Ok((metric_curves, loss_curves))
}

/// Adds the bootstrap intervals (only without seeds: with them, the seed
/// spread is the noise) and the gallery, from the predictions of the
/// trials they need.
fn with_evidence(
    mut report: Report,
    configs: &BTreeMap<String, String>,
    options: &ReportOptions,
) -> Report {
    let best_runs: Vec<usize> = if report.seeds_vary {
        Vec::new()
    } else {
        report.groups.iter().map(|g| g.trials[0]).collect()
    };
    let wanted = bootstrap::wanted(&report.decision, &best_runs);
    // `data.task` of those trials (the examples' task unless `auto`).
    let tasks: BTreeMap<String, String> = wanted
        .iter()
        .filter_map(|&t| {
            let id = &report.trials[t].id;
            let config: toml::Table = toml::from_str(configs.get(id)?).ok()?;
            Some((id.clone(), str_at(&config, "data.task")?))
        })
        .collect();
    let loaded = examples::load_all(&report.trials, wanted, &tasks);
    report.bootstrap = (!report.seeds_vary)
        .then(|| bootstrap::estimate(&report.metric, &report.decision, &loaded));
    let size = options.gallery.unwrap_or(gallery::DEFAULT_SIZE);
    report.gallery = gallery::build(&report.decision, &report.trials, &loaded, size);
    report
}

/// A trial's test-split metrics (`test/...`): scored once, on its
/// selected checkpoint, at the end of training.
fn test_metrics(
    store: &Store,
    sweep: &str,
    trial: &str,
) -> Result<Vec<(String, Option<f64>)>, StoreError> {
    Ok(store
        .metric_summary(sweep, trial)?
        .into_iter()
        .filter(|m| m.name.starts_with("test/"))
        .map(|m| (m.name, m.last))
        .collect())
}

/// Builds the report and writes `report.md` and `report.html` into
/// `options.out` (default `<results>/<sweep>/report/`, next to the store).
pub fn write(
    store: &Store,
    sweep: &str,
    options: &ReportOptions,
) -> Result<ReportPaths, ReportError> {
    let report = build(store, sweep, options)?;
    let dir = match &options.out {
        Some(dir) => dir.clone(),
        None => store
            .path()
            .parent()
            .unwrap_or(Path::new("."))
            .join(&report.sweep.name)
            .join("report"),
    };
    let markdown = render_markdown(&report);
    let html = render_html(&report)?;
    let at = |path: &Path| {
        let path = path.to_owned();
        move |source| ReportError::Write { path, source }
    };
    std::fs::create_dir_all(&dir).map_err(at(&dir))?;
    let paths = ReportPaths {
        markdown: dir.join("report.md"),
        html: dir.join("report.html"),
        dir,
    };
    std::fs::write(&paths.markdown, markdown).map_err(at(&paths.markdown))?;
    std::fs::write(&paths.html, html).map_err(at(&paths.html))?;
    Ok(paths)
}

fn lookup<'a>(table: &'a toml::Table, dotted: &str) -> Option<&'a toml::Value> {
    let mut parts = dotted.split('.');
    let mut value = table.get(parts.next()?)?;
    for part in parts {
        value = value.as_table()?.get(part)?;
    }
    Some(value)
}

fn str_at(table: &toml::Table, dotted: &str) -> Option<String> {
    lookup(table, dotted).map(|v| match v {
        toml::Value::String(s) => s.clone(),
        other => other.to_string(),
    })
}

fn float_at(table: &toml::Table, dotted: &str) -> Option<f64> {
    match lookup(table, dotted)? {
        toml::Value::Float(f) => Some(*f),
        toml::Value::Integer(i) => Some(*i as f64),
        _ => None,
    }
}

/// `3b-224` from size × resolution; `tiny 3b-224` for the built-in tiny
/// twin; a named checkpoint (hub id or folder) by its name.
fn checkpoint_label(config: &toml::Table) -> String {
    let size = str_at(config, "model.size");
    let resolution = str_at(config, "model.resolution");
    let composed = match (&size, &resolution) {
        (Some(s), Some(r)) => Some(format!("{s}-{r}")),
        (Some(s), None) => Some(s.clone()),
        (None, Some(r)) => Some(r.clone()),
        (None, None) => None,
    };
    match (str_at(config, "model.checkpoint"), composed) {
        (Some(c), Some(composed)) if c == "tiny" => format!("tiny {composed}"),
        (Some(c), _) => c,
        (None, Some(composed)) => composed,
        (None, None) => "default".into(),
    }
}

/// The first 12 characters of a trial id.
pub fn short_id(id: &str) -> &str {
    &id[..id.len().min(12)]
}

/// A JSON params map as `k=v` pairs.
pub fn params_text(params: &BTreeMap<String, Value>) -> String {
    params
        .iter()
        .map(|(k, v)| format!("{k}={}", analysis::value_text(v)))
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests;

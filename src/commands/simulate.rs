//! `palisweep simulate`: replay a recorded sweep (from the store, a
//! recorded-sweep file, or a synthetic surface) under search strategies and
//! print, per strategy, what share of the grid's compute it needs to come
//! within the tolerance of the grid's best, and its regret at the budget.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use serde_json::{Value, json};

use super::output::{out, outln};
use crate::cli::SimulateArgs;
use crate::layout::ResultsRoot;
use crate::metrics::names::higher_is_better;
use crate::search::benchmark::{Criteria, Summary, grid_best, score, summarise};
use crate::search::record::{RecordError, Recorded, RecordedTrial};
use crate::search::simulate::{Settings, Strategy, replay};
use crate::search::surface::Surface;
use crate::search::traces::{self, SavedTrace, SavedTraces};
use crate::spec::load::{Overrides, load};
use crate::track::store::Store;

/// Where the recorded curves come from.
enum Source {
    /// The same recording for every seed.
    Fixed(Box<Recorded>),
    /// Recorded afresh with each seed's noise.
    Surface(Surface),
}

impl Source {
    fn at(&self, seed: u64) -> std::borrow::Cow<'_, Recorded> {
        match self {
            Source::Fixed(r) => std::borrow::Cow::Borrowed(r),
            Source::Surface(s) => std::borrow::Cow::Owned(s.record(seed)),
        }
    }
}

pub fn run(args: &SimulateArgs) -> anyhow::Result<()> {
    let mut settings = Settings {
        workers: usize::try_from(args.workers).unwrap_or(usize::MAX),
        eta: args.eta,
        min_resource: args.min_resource,
        ..Settings::default()
    };
    // A sweep replayed from the store keeps its traces for the report.
    let mut keep_traces: Option<PathBuf> = None;
    let source = if let Some(path) = &args.recorded {
        Source::Fixed(Box::new(read_file(path)?))
    } else if let Some(name) = &args.surface {
        Source::Surface(Surface::named(name).context("an unknown surface passed clap")?)
    } else {
        let (recorded, sweep_dir) = from_store(args, &mut settings)?;
        keep_traces = Some(sweep_dir.join(traces::FILE));
        Source::Fixed(Box::new(recorded))
    };
    if let Some(path) = &args.export {
        let recorded = source.at(0);
        let file = std::fs::File::create(path)
            .map_err(RecordError::Io)
            .with_context(|| format!("cannot write {}", path.display()))?;
        recorded
            .write(std::io::BufWriter::new(file))
            .with_context(|| format!("cannot write {}", path.display()))?;
        outln!(
            "{} trials of {} written to {}",
            recorded.trials.len(),
            recorded.sweep,
            path.display()
        )?;
        return Ok(());
    }
    let criteria = Criteria {
        tolerance: args.tolerance,
        budget_fraction: args.budget_fraction,
    };
    let strategies: Vec<Strategy> = args
        .strategies
        .iter()
        .filter_map(|name| Strategy::parse(name))
        .collect();
    let mut summaries = Vec::new();
    let mut saved = Vec::new();
    for &strategy in &strategies {
        let mut outcomes = Vec::new();
        for seed in 0..args.seeds {
            let recorded = source.at(seed);
            let replayed = replay(&recorded, strategy, &settings, seed)?;
            if seed == 0 {
                saved.push(SavedTrace::of(strategy.name(), &replayed));
            }
            outcomes.push(score(&recorded, &replayed, criteria, seed));
        }
        summaries.push(summarise(strategy, outcomes));
    }
    let reference = source.at(0);
    if let Some(path) = keep_traces {
        let traces = SavedTraces {
            metric: reference.metric.clone(),
            seed: 0,
            workers: settings.workers,
            strategies: saved,
        };
        std::fs::write(&path, serde_json::to_vec_pretty(&traces)?)
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    if args.format == "json" {
        let json = to_json(&reference, &summaries, &settings, criteria, args);
        outln!("{}", serde_json::to_string_pretty(&json)?)?;
    } else {
        let mut text = to_text(&reference, &summaries, &settings, criteria, args);
        if matches!(source, Source::Surface(_)) {
            text.push_str(
                "Each seed records the surface with its own noise; the grid above is seed 0's.\n",
            );
        }
        out!("{text}")?;
    }
    Ok(())
}

fn read_file(path: &Path) -> anyhow::Result<Recorded> {
    let file = std::fs::File::open(path)
        .map_err(RecordError::Io)
        .with_context(|| format!("cannot read {}", path.display()))?;
    Recorded::read(std::io::BufReader::new(file)).with_context(|| format!("in {}", path.display()))
}

/// The finished trials of a sweep in the store: their selection-metric
/// curves and seconds per step (wall time over steps).
fn from_store(args: &SimulateArgs, settings: &mut Settings) -> anyhow::Result<(Recorded, PathBuf)> {
    let mut sweep = args.from.clone();
    let mut results: Option<PathBuf> = args.results.clone();
    let mut metric = args.metric.clone();
    if let Some(spec) = &args.spec {
        let loaded = load(spec, &Overrides::from_process(Vec::new()))?;
        sweep.get_or_insert(loaded.name.clone());
        results.get_or_insert(loaded.results.clone());
        metric.get_or_insert(loaded.spec.eval.select.metric.clone());
        settings.median_min_trials = loaded.spec.sweep.early_stop_min_trials;
        settings.median_warmup = loaded.spec.sweep.early_stop_warmup;
    }
    let sweep = sweep.context("give the sweep to replay: --from SWEEP (or a SPEC)")?;
    let results = results.unwrap_or_else(|| PathBuf::from("results"));
    let store = Store::open_read_only(&ResultsRoot::new(&results).store())?;
    let row = store.resolve_sweep(&sweep)?;
    let metric = metric.unwrap_or_else(|| row.select_metric.clone());
    let wall: BTreeMap<String, Option<f64>> = store
        .trial_results(&row.name, &metric)?
        .into_iter()
        .map(|r| (r.id, r.wall_time_s))
        .collect();
    let mut trials = Vec::new();
    for trial in store.trials(&row.name)? {
        if trial.status != "finished" {
            continue;
        }
        let mut curve: Vec<(u64, f64)> = Vec::new();
        for point in store.metric_series(&row.name, &trial.id, &metric)? {
            let Some(value) = point.value else { continue };
            // A step read again (a resumed attempt) keeps its last value.
            match curve.last_mut() {
                Some(last) if last.0 == point.step => last.1 = value,
                _ => curve.push((point.step, value)),
            }
        }
        curve.retain(|(step, _)| *step > 0);
        let Some(&(last, _)) = curve.last() else {
            continue;
        };
        let seconds = wall.get(&trial.id).copied().flatten().unwrap_or(0.0);
        trials.push(RecordedTrial {
            id: trial.id,
            params: match trial.params {
                Value::Object(map) => map.into_iter().collect(),
                _ => BTreeMap::new(),
            },
            seconds_per_step: seconds / last as f64,
            curve,
        });
    }
    let recorded = Recorded {
        sweep: row.name.clone(),
        higher_is_better: higher_is_better(&metric),
        metric,
        trials,
    };
    recorded
        .validate()
        .with_context(|| format!("sweep {} cannot be replayed", row.name))?;
    let sweep_dir = ResultsRoot::new(&results)
        .sweep(&row.name)
        .path()
        .to_owned();
    Ok((recorded, sweep_dir))
}

fn percent(x: Option<f64>) -> String {
    x.map_or_else(|| "never".to_owned(), |x| format!("{:.0}%", 100.0 * x))
}

fn number(x: Option<f64>) -> String {
    x.map_or_else(|| "none".to_owned(), |x| format!("{x:.4}"))
}

/// The pick most seeds made at the budget, and on how many.
fn common_pick(summary: &Summary) -> String {
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for seed in &summary.seeds {
        if let Some(pick) = &seed.pick {
            *counts.entry(pick).or_default() += 1;
        }
    }
    counts
        .into_iter()
        .max_by(|a, b| a.1.cmp(&b.1).then(b.0.cmp(a.0)))
        .map_or_else(
            || "none".to_owned(),
            |(id, n)| format!("{id} ({n}/{})", summary.seeds.len()),
        )
}

fn to_text(
    recorded: &Recorded,
    summaries: &[Summary],
    settings: &Settings,
    criteria: Criteria,
    args: &SimulateArgs,
) -> String {
    let (best, value) = grid_best(recorded);
    let direction = if recorded.higher_is_better {
        "higher"
    } else {
        "lower"
    };
    let mut text = format!(
        "{}: {} trials, {} ({direction} is better); the grid's best is {value:.4} ({}), \
         its compute {:.0} device-seconds.\n\
         {} seeds, {} workers, eta {}; target: within {:.0}% of the grid's best; \
         regret at {:.0}% of the grid's compute.\n\n",
        recorded.sweep,
        recorded.trials.len(),
        recorded.metric,
        recorded.trials[best].id,
        recorded.grid_compute(),
        args.seeds,
        settings.workers,
        settings.eta,
        100.0 * criteria.tolerance,
        100.0 * criteria.budget_fraction,
    );
    let header = [
        "strategy",
        "reached",
        "compute to target",
        "regret at budget",
        "compute (all)",
        "pick at budget (seeds)",
    ];
    let rows: Vec<[String; 6]> = summaries
        .iter()
        .map(|s| {
            [
                s.strategy.name().to_owned(),
                format!("{}/{}", s.reached, s.seeds.len()),
                percent(s.median_to_target),
                number(s.median_regret),
                percent(Some(s.median_compute)),
                common_pick(s),
            ]
        })
        .collect();
    let widths: Vec<usize> = (0..header.len())
        .map(|c| {
            rows.iter()
                .map(|r| r[c].chars().count())
                .chain([header[c].len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |cells: Vec<&str>| {
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        format!("{}\n", padded.join("  ").trim_end())
    };
    text.push_str(&line(header.to_vec()));
    for row in &rows {
        text.push_str(&line(row.iter().map(String::as_str).collect()));
    }
    text.push_str(
        "\nMedians over seeds; \"compute to target\" is the share of the grid's compute spent \
         when the pick first came within the target (\"never\" when most seeds did not).\n",
    );
    text
}

fn to_json(
    recorded: &Recorded,
    summaries: &[Summary],
    settings: &Settings,
    criteria: Criteria,
    args: &SimulateArgs,
) -> Value {
    let (best, value) = grid_best(recorded);
    json!({
        "sweep": recorded.sweep,
        "metric": recorded.metric,
        "higher_is_better": recorded.higher_is_better,
        "trials": recorded.trials.len(),
        "grid": {
            "best": value,
            "trial": recorded.trials[best].id,
            "params": recorded.trials[best].params,
            "compute_s": recorded.grid_compute(),
        },
        "seeds": args.seeds,
        "workers": settings.workers,
        "eta": settings.eta,
        "min_resource": settings.min_resource,
        "criteria": criteria,
        "strategies": summaries,
    })
}

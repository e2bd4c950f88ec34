//! Reproducing a trial exactly: what the original run was made of (read
//! from the trial's own `events.jsonl`: batch shape that actually ran,
//! thread count, device, dataset and checkpoint fingerprints, versions),
//! the checks that refuse a rerun on different inputs, and the
//! metric-by-metric comparison of the rerun with the original.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::layout::TrialDir;
use crate::worker::protocol::{Envelope, WorkerEvent};

#[derive(Debug, thiserror::Error)]
pub enum RerunError {
    #[error("cannot read {}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "trial {0} never finished a run: nothing to reproduce (use `palisweep run` to finish it)"
    )]
    NeverFinished(String),
    #[error(
        "the rerun would not use what the original used:\n{}\n  help: restore them, or pass --force to rerun anyway (the comparison will say how far it drifts)",
        .0.iter().map(|m| format!("  - {m}")).collect::<Vec<_>>().join("\n")
    )]
    Mismatch(Vec<String>),
}

/// What the original run of a trial was made of, and what it reported.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Original {
    /// The attempt whose (fresh) start the curve begins with.
    pub attempt: u32,
    pub batch_size: u32,
    pub grad_accum: u32,
    pub threads: i32,
    /// `Cpu`, `Cuda(0)`, or `cpu` for synthetic trials.
    pub device: String,
    pub dataset_fingerprint: String,
    pub checkpoint_fingerprint: Option<String>,
    pub palisweep_version: Option<String>,
    pub libtorch_version: Option<String>,
    /// torch's deterministic algorithms were on (the worker's own report).
    pub deterministic_algorithms: bool,
    /// Step → the step's metrics.
    pub steps: BTreeMap<u64, BTreeMap<String, f64>>,
    /// The last evaluation of each metric (`val/…`, `test/…`).
    pub evals: BTreeMap<String, f64>,
    pub best_metric: Option<f64>,
    /// The highest attempt number recorded.
    pub last_attempt: u32,
}

impl Original {
    pub fn on_cuda(&self) -> bool {
        self.device.to_ascii_lowercase().starts_with("cuda")
    }
}

/// Reads a finished run from `events.jsonl`: the stretch from the last
/// fresh start (`resumed_from == 0`) to its `finished` event, resumed
/// attempts included.
pub fn read_original(events: &Path) -> Result<Option<Original>, RerunError> {
    let text = std::fs::read_to_string(events).map_err(|source| RerunError::Io {
        path: events.to_owned(),
        source,
    })?;
    let mut current: Option<Original> = None;
    let mut finished: Option<Original> = None;
    let mut last_attempt = 0;
    for line in text.lines() {
        let Ok(envelope) = Envelope::parse(line) else {
            continue;
        };
        match envelope.event {
            WorkerEvent::Started {
                attempt,
                batch_size,
                grad_accum,
                threads,
                device,
                dataset_fingerprint,
                resumed_from,
                ..
            } => {
                last_attempt = last_attempt.max(attempt);
                if resumed_from == 0 || current.is_none() {
                    current = Some(Original {
                        attempt,
                        batch_size,
                        grad_accum,
                        threads,
                        device,
                        dataset_fingerprint,
                        ..Original::default()
                    });
                }
            }
            WorkerEvent::Provenance {
                palisweep_version,
                libtorch_version,
                checkpoint_fingerprint,
                deterministic_algorithms,
                ..
            } => {
                if let Some(run) = current.as_mut() {
                    run.palisweep_version = Some(palisweep_version);
                    run.libtorch_version = libtorch_version;
                    run.checkpoint_fingerprint = checkpoint_fingerprint;
                    run.deterministic_algorithms = deterministic_algorithms;
                }
            }
            WorkerEvent::Step { step, metrics, .. } => {
                if let Some(run) = current.as_mut() {
                    run.steps.insert(step, metrics);
                }
            }
            WorkerEvent::Eval { metrics, .. } => {
                if let Some(run) = current.as_mut() {
                    run.evals.extend(metrics);
                }
            }
            WorkerEvent::Finished { best_metric, .. } => {
                if let Some(mut run) = current.take() {
                    run.best_metric = best_metric;
                    finished = Some(run);
                }
            }
            WorkerEvent::Checkpoint { .. }
            | WorkerEvent::Predictions { .. }
            | WorkerEvent::Failed { .. } => {}
        }
    }
    Ok(finished.map(|mut run| {
        run.last_attempt = last_attempt;
        run
    }))
}

/// What the rerun will use now, to hold against the original.
#[derive(Clone, Debug, Default)]
pub struct Current {
    pub dataset_fingerprint: String,
    pub checkpoint_fingerprint: Option<String>,
    pub palisweep_version: String,
    pub libtorch_version: Option<String>,
    pub cuda_available: bool,
}

/// Every difference that makes an exact rerun impossible.
pub fn mismatches(original: &Original, current: &Current) -> Vec<String> {
    let mut found = Vec::new();
    if original.dataset_fingerprint != current.dataset_fingerprint {
        found.push(format!(
            "dataset fingerprint {} (original {})",
            short(&current.dataset_fingerprint),
            short(&original.dataset_fingerprint)
        ));
    }
    if let (Some(then), Some(now)) = (
        &original.checkpoint_fingerprint,
        &current.checkpoint_fingerprint,
    ) && then != now
    {
        found.push(format!(
            "checkpoint fingerprint {} (original {})",
            short(now),
            short(then)
        ));
    }
    if let Some(then) = &original.palisweep_version
        && then != &current.palisweep_version
    {
        found.push(format!(
            "palisweep {} (original {then})",
            current.palisweep_version
        ));
    }
    if let (Some(then), Some(now)) = (&original.libtorch_version, &current.libtorch_version)
        && then != now
    {
        found.push(format!("libtorch {now} (original {then})"));
    }
    if original.on_cuda() && !current.cuda_available {
        found.push(format!(
            "no GPU here (the original ran on {})",
            original.device
        ));
    }
    found
}

fn short(hash: &str) -> &str {
    &hash[..hash.len().min(12)]
}

/// One metric of the comparison.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct MetricComparison {
    pub name: String,
    pub original: Option<f64>,
    pub rerun: Option<f64>,
    pub identical: bool,
}

/// How the rerun compares with the original.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Comparison {
    /// Steps of `train/loss` compared.
    pub steps: usize,
    /// Whether every step's `train/loss` is bit-for-bit equal.
    pub curve_identical: bool,
    /// Largest |Δ| relative to the original, over the loss curve.
    pub curve_max_rel_diff: f64,
    /// The final evaluation metrics and the best metric.
    pub metrics: Vec<MetricComparison>,
    /// Whether the rerun reproduces the original within `tolerance`
    /// (0 = bit for bit).
    pub reproduced: bool,
    pub tolerance: f64,
    /// Whether the rerun ran with torch's deterministic algorithms on.
    pub deterministic_algorithms: bool,
}

/// Compares the loss curves step by step and the final metrics.
pub fn compare(original: &Original, rerun: &Original, tolerance: f64) -> Comparison {
    let loss = |run: &Original| -> BTreeMap<u64, f64> {
        run.steps
            .iter()
            .filter_map(|(step, m)| m.get("train/loss").map(|v| (*step, *v)))
            .collect()
    };
    let (before, after) = (loss(original), loss(rerun));
    let mut curve_identical = before.len() == after.len();
    let mut max_rel = 0.0_f64;
    for (step, then) in &before {
        if let Some(now) = after.get(step) {
            curve_identical &= then.to_bits() == now.to_bits();
            max_rel = max_rel.max(rel_diff(*then, *now));
        } else {
            curve_identical = false;
            max_rel = f64::INFINITY;
        }
    }
    let mut names: Vec<&String> = original.evals.keys().chain(rerun.evals.keys()).collect();
    names.sort();
    names.dedup();
    let mut metrics: Vec<MetricComparison> = names
        .into_iter()
        .map(|name| {
            let then = original.evals.get(name).copied();
            let now = rerun.evals.get(name).copied();
            MetricComparison {
                name: name.clone(),
                original: then,
                rerun: now,
                identical: matches!((then, now), (Some(x), Some(y)) if x.to_bits() == y.to_bits()),
            }
        })
        .collect();
    metrics.push(MetricComparison {
        name: "best".into(),
        original: original.best_metric,
        rerun: rerun.best_metric,
        identical: original.best_metric.map(f64::to_bits) == rerun.best_metric.map(f64::to_bits),
    });
    let within = |m: &MetricComparison| match (m.original, m.rerun) {
        (Some(x), Some(y)) => rel_diff(x, y) <= tolerance || x.to_bits() == y.to_bits(),
        (None, None) => true,
        _ => false,
    };
    let reproduced = if tolerance == 0.0 {
        // `identical` holds for a metric both runs lack (`best` of None).
        curve_identical && metrics.iter().all(|m| m.identical)
    } else {
        before.len() == after.len() && max_rel <= tolerance && metrics.iter().all(within)
    };
    Comparison {
        steps: before.len(),
        curve_identical,
        curve_max_rel_diff: max_rel,
        metrics,
        reproduced,
        tolerance,
        deterministic_algorithms: rerun.deterministic_algorithms,
    }
}

fn rel_diff(a: f64, b: f64) -> f64 {
    if a.to_bits() == b.to_bits() {
        return 0.0;
    }
    (a - b).abs() / a.abs().max(1e-12)
}

/// The folder a rerun works in: beside the original's files, never over
/// them (`<trial>/reruns/<attempt>/`).
pub fn rerun_dir(trial: &TrialDir, attempt: u32) -> TrialDir {
    TrialDir::from_path(&trial.path().join("reruns").join(attempt.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(losses: &[f64], val: f64) -> Original {
        Original {
            steps: losses
                .iter()
                .enumerate()
                .map(|(i, l)| {
                    (
                        i as u64 + 1,
                        BTreeMap::from([("train/loss".to_owned(), *l)]),
                    )
                })
                .collect(),
            evals: BTreeMap::from([("val/loss".to_owned(), val)]),
            best_metric: Some(val),
            ..Original::default()
        }
    }

    #[test]
    fn identical_curves_reproduce_and_any_bit_of_drift_does_not_at_zero_tolerance() {
        let a = run(&[2.0, 1.0, 0.5], 0.7);
        assert!(compare(&a, &a.clone(), 0.0).reproduced);
        let drift = run(&[2.0, 1.0, 0.500_000_1], 0.7);
        let c = compare(&a, &drift, 0.0);
        assert!(!c.reproduced && !c.curve_identical);
        assert!(c.curve_max_rel_diff > 0.0);
        // Within a CUDA-style tolerance it does.
        assert!(compare(&a, &drift, 1e-3).reproduced);
        // A missing step never reproduces.
        assert!(!compare(&a, &run(&[2.0, 1.0], 0.7), 1e-3).reproduced);
    }

    #[test]
    fn changed_inputs_are_named() {
        let original = Original {
            dataset_fingerprint: "aaaa".into(),
            checkpoint_fingerprint: Some("cccc".into()),
            palisweep_version: Some("0.1.0".into()),
            device: "Cuda(0)".into(),
            ..Original::default()
        };
        let current = Current {
            dataset_fingerprint: "bbbb".into(),
            checkpoint_fingerprint: Some("cccc".into()),
            palisweep_version: "0.1.0".into(),
            libtorch_version: None,
            cuda_available: false,
        };
        let found = mismatches(&original, &current);
        assert_eq!(found.len(), 2, "{found:?}");
        assert!(found[0].starts_with("dataset fingerprint bbbb"));
        assert!(found[1].contains("no GPU"));
    }
}

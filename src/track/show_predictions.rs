//! `palisweep show TRIAL --predictions`: which of a trial's evaluations to
//! list (the store's `predictions` index), its file read back
//! ([`super::predictions`]), and the listing: a table with cells cut to
//! fit, or the stored lines whole.
//!
//! ```text
//! let view = show_predictions::load(&store, results, &Request { trial, split: "val", step: None })?;
//! eprint!("{}", view.header());
//! print!("{}", view.to_jsonl());
//! ```

use std::fmt::{self, Write as _};
use std::path::{Path, PathBuf};

use super::predictions::{self, ExamplePrediction, PredictionsError};
use super::store::views::{number, table};
use super::store::{PredictionFileRow, Store, StoreError, TrialRow};
use crate::layout::ResultsRoot;
use crate::metrics::names::higher_is_better;
use crate::sweep::trial_id::TrialId;

/// Which evaluation to list.
#[derive(Clone, Copy, Debug)]
pub struct Request<'a> {
    /// As `show` takes it: an id, a unique prefix, or `SWEEP/ID`.
    pub trial: &'a str,
    /// `val` or `test`.
    pub split: &'a str,
    /// The evaluation at this step; `None`: the best, else the latest.
    pub step: Option<u64>,
}

/// Why a trial has no predictions files at all.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NoPredictions {
    /// `train.method = "synthetic"`: no model answered anything.
    Synthetic,
    /// `eval.generate = false`: evaluations score the loss only.
    NoGeneration,
    /// No evaluation was recorded (yet), in this status.
    NotEvaluated { status: String },
    /// Evaluated with generation, but nothing indexed: written by a
    /// palisweep from before predictions were stored.
    NotRecorded,
}

impl fmt::Display for NoPredictions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NoPredictions::Synthetic => f.write_str(
                "it is a synthetic trial (train.method = \"synthetic\"): no model answered anything",
            ),
            NoPredictions::NoGeneration => f.write_str(
                "its evaluations do not generate (eval.generate = false), so there are no answers to keep\n  \
                 help: set eval.generate = true (and rerun) to store each example's answer and score",
            ),
            NoPredictions::NotEvaluated { status } => write!(
                f,
                "it has not finished an evaluation yet (status {status})"
            ),
            NoPredictions::NotRecorded => f.write_str(
                "its evaluations were recorded without them (by a palisweep from before per-example predictions were stored)",
            ),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ShowPredictionsError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    File(#[from] PredictionsError),
    #[error("trial {trial} has no stored predictions: {why}")]
    NoneStored { trial: String, why: NoPredictions },
    #[error(
        "trial {trial} has no {split} predictions{}\n  help: it has {}",
        step.map(|s| format!(" at step {s}")).unwrap_or_default(),
        available.join(", ")
    )]
    NotFound {
        trial: String,
        split: String,
        step: Option<u64>,
        /// `val at step 4`, … of what is stored.
        available: Vec<String>,
    },
}

impl ShowPredictionsError {
    /// Whether the user asked for something that is not there (exit 2).
    pub fn is_bad_input(&self) -> bool {
        match self {
            ShowPredictionsError::Store(e) => matches!(
                e,
                StoreError::Missing { .. }
                    | StoreError::NoTrial { .. }
                    | StoreError::AmbiguousTrial { .. }
                    | StoreError::NoSweep { .. }
                    | StoreError::AmbiguousSweep { .. }
                    | StoreError::TooNew { .. }
                    | StoreError::Corrupt { .. }
            ),
            ShowPredictionsError::File(_) => false,
            ShowPredictionsError::NoneStored { .. } | ShowPredictionsError::NotFound { .. } => true,
        }
    }
}

/// Why this evaluation was picked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Picked {
    /// `--step`.
    Asked,
    /// The trial's best step (by `eval.select`).
    Best,
    /// The latest evaluation of the split; `best` is the best step when it
    /// has no file of this split.
    Latest { best: Option<u64> },
}

/// The evaluation of `split` to list among `files`: the one at `step`,
/// else (validation only) the one at `best_step`, else the latest. `Err`
/// lists what there is instead.
pub fn choose<'a>(
    files: &'a [PredictionFileRow],
    split: &str,
    step: Option<u64>,
    best_step: Option<u64>,
) -> Result<(&'a PredictionFileRow, Picked), Vec<String>> {
    let of_split = || files.iter().filter(|f| f.split == split);
    let found = if let Some(step) = step {
        of_split()
            .find(|f| f.step == step)
            .map(|f| (f, Picked::Asked))
    } else {
        let best = best_step.filter(|_| split == "val");
        match best.and_then(|b| of_split().find(|f| f.step == b)) {
            Some(f) => Some((f, Picked::Best)),
            None => of_split()
                .max_by_key(|f| f.step)
                .map(|f| (f, Picked::Latest { best })),
        }
    };
    found.ok_or_else(|| {
        files
            .iter()
            .map(|f| format!("{} at step {}", f.split, f.step))
            .collect()
    })
}

/// One evaluation's examples, as read.
#[derive(Clone, Debug, PartialEq)]
pub struct PredictionsView {
    pub trial: TrialRow,
    pub file: PredictionFileRow,
    pub picked: Picked,
    /// The file read (the stored path, or the same file under the results
    /// root given when that moved).
    pub path: PathBuf,
    pub examples: Vec<ExamplePrediction>,
}

/// The examples of the evaluation `request` names.
pub fn load(
    store: &Store,
    results: &Path,
    request: &Request<'_>,
) -> Result<PredictionsView, ShowPredictionsError> {
    let trial = store.resolve_trial(request.trial)?;
    let files = store.predictions(&trial.sweep, &trial.id)?;
    if files.is_empty() {
        return Err(ShowPredictionsError::NoneStored {
            why: why_none(store, &trial)?,
            trial: trial.id,
        });
    }
    let (file, picked) = match choose(&files, request.split, request.step, trial.best_step) {
        Ok((file, picked)) => (file.clone(), picked),
        Err(available) => {
            return Err(ShowPredictionsError::NotFound {
                trial: trial.id,
                split: request.split.to_owned(),
                step: request.step,
                available,
            });
        }
    };
    let path = locate(results, &trial, &file);
    let examples = predictions::read(&path)?;
    Ok(PredictionsView {
        trial,
        file,
        picked,
        path,
        examples,
    })
}

/// The stored path when it is there; else the file of the same name in the
/// trial's folder under `results` (a results root moved, or a relative
/// path written from another working folder).
fn locate(results: &Path, trial: &TrialRow, file: &PredictionFileRow) -> PathBuf {
    let stored = PathBuf::from(&file.path);
    if stored.is_file() {
        return stored;
    }
    let id: Option<TrialId> =
        serde_json::from_value(serde_json::Value::from(trial.id.as_str())).ok();
    let moved = id.map(|id| {
        ResultsRoot::new(results)
            .sweep(&trial.sweep)
            .trial(&id)
            .predictions(&file.split, file.step)
    });
    moved.filter(|p| p.is_file()).unwrap_or(stored)
}

/// Why a trial has no predictions: its config, else whether it was
/// evaluated at all.
fn why_none(store: &Store, trial: &TrialRow) -> Result<NoPredictions, StoreError> {
    let config = store
        .trial_configs(&trial.sweep)?
        .remove(&trial.id)
        .unwrap_or_default();
    let config: toml::Table = toml::from_str(&config).unwrap_or_default();
    let key = |table: &str, key: &str| config.get(table).and_then(|t| t.get(key)).cloned();
    if key("train", "method").and_then(|v| v.as_str().map(str::to_owned))
        == Some("synthetic".into())
    {
        return Ok(NoPredictions::Synthetic);
    }
    if key("eval", "generate").and_then(|v| v.as_bool()) == Some(false) {
        return Ok(NoPredictions::NoGeneration);
    }
    let evaluated = store
        .metric_names(&trial.sweep, Some(&trial.id))?
        .iter()
        .any(|name| name.starts_with("val/") || name.starts_with("test/"));
    Ok(if evaluated {
        NoPredictions::NotRecorded
    } else {
        NoPredictions::NotEvaluated {
            status: trial.status.clone(),
        }
    })
}

/// How wide the table may be: `$COLUMNS` when set, else this.
pub const DEFAULT_WIDTH: usize = 120;

impl PredictionsView {
    /// What was read: trial, split, step and why, the file, the metric.
    pub fn header(&self) -> String {
        let f = &self.file;
        let why = match self.picked {
            Picked::Asked => String::new(),
            Picked::Best => " (the best step)".into(),
            Picked::Latest { best: None } => " (the latest)".into(),
            Picked::Latest { best: Some(b) } => {
                format!(
                    " (the latest: the best step {b} has no {} predictions)",
                    f.split
                )
            }
        };
        let mut out = format!(
            "trial {} of sweep {}: {} predictions at step {}{why}, {} examples\n",
            self.trial.id,
            self.trial.sweep,
            f.split,
            f.step,
            self.examples.len()
        );
        let _ = writeln!(out, "file   {}", self.path.display());
        let scores: Vec<f64> = self.examples.iter().filter_map(|e| e.score).collect();
        let direction = if higher_is_better(&f.metric) {
            "higher is better"
        } else {
            "lower is better"
        };
        let mean = if scores.is_empty() {
            String::new()
        } else {
            format!(
                "; mean {} over {} examples",
                number(scores.iter().sum::<f64>() / scores.len() as f64),
                scores.len()
            )
        };
        let _ = writeln!(out, "score  {} per example, {direction}{mean}", f.metric);
        out
    }

    /// A row per example, cells cut to fit `width` columns.
    pub fn to_table(&self, width: usize) -> String {
        const INDEX: usize = 5;
        const SCORE: usize = 7;
        const IMAGE: usize = 20;
        // Five columns, four gaps of two.
        let text = width.saturating_sub(INDEX + SCORE + IMAGE + 4 * 2) / 2;
        let text = text.max(12);
        let rows: Vec<Vec<String>> = self
            .examples
            .iter()
            .map(|e| {
                let image = e.image.file_name().map_or_else(
                    || e.image.display().to_string(),
                    |n| n.to_string_lossy().into_owned(),
                );
                vec![
                    e.index.to_string(),
                    e.score.map_or_else(|| "-".into(), number),
                    cut(&image, IMAGE),
                    cut(&e.reference, text),
                    cut(&e.prediction, text),
                ]
            })
            .collect();
        table(
            &["index", "score", "image", "reference", "prediction"],
            &rows,
        )
    }

    /// The stored lines, one example each, whole.
    pub fn to_jsonl(&self) -> String {
        let mut out = String::new();
        for example in &self.examples {
            out.push_str(&serde_json::to_string(example).unwrap_or_default());
            out.push('\n');
        }
        out
    }
}

/// `text` on one line (line breaks shown as `⏎`), cut to `max` characters
/// with `…` when longer.
fn cut(text: &str, max: usize) -> String {
    let line: String = text
        .trim()
        .chars()
        .map(|c| match c {
            '\n' => '⏎',
            c if c.is_control() => ' ',
            c => c,
        })
        .collect();
    if line.chars().count() > max {
        let mut kept: String = line.chars().take(max.saturating_sub(1)).collect();
        kept.push('…');
        kept
    } else {
        line
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(split: &str, step: u64) -> PredictionFileRow {
        PredictionFileRow {
            split: split.into(),
            step,
            path: format!("/r/s/trials/t/predictions/{split}-step{step:08}.jsonl.gz"),
            examples: 2,
            metric: "field_f1".into(),
            attempt: 1,
        }
    }

    #[test]
    fn the_best_step_then_the_latest_then_what_is_asked() {
        let files = [
            file("val", 2),
            file("val", 4),
            file("val", 6),
            file("test", 6),
        ];
        let picked = |split, step, best| {
            choose(&files, split, step, best).map(|(f, why)| (f.split.clone(), f.step, why))
        };
        assert_eq!(
            picked("val", None, Some(4)),
            Ok(("val".into(), 4, Picked::Best))
        );
        assert_eq!(
            picked("val", None, None),
            Ok(("val".into(), 6, Picked::Latest { best: None }))
        );
        // A best step without a file: the latest, saying so.
        assert_eq!(
            picked("val", None, Some(3)),
            Ok(("val".into(), 6, Picked::Latest { best: Some(3) }))
        );
        // The best step is a validation step: test takes its latest.
        assert_eq!(
            picked("test", None, Some(4)),
            Ok(("test".into(), 6, Picked::Latest { best: None }))
        );
        assert_eq!(
            picked("val", Some(2), Some(4)),
            Ok(("val".into(), 2, Picked::Asked))
        );
        let missing = picked("val", Some(5), None).unwrap_err();
        assert_eq!(
            missing,
            [
                "val at step 2",
                "val at step 4",
                "val at step 6",
                "test at step 6"
            ]
        );
        assert!(choose(&files[..3], "test", None, None).is_err());
    }

    #[test]
    fn cells_are_cut_to_one_line() {
        assert_eq!(cut("  short ", 10), "short");
        assert_eq!(cut("abcdefghij", 5), "abcd…");
        assert_eq!(cut("a\nb\tc", 10), "a⏎b c");
        assert_eq!(cut("日本語テキスト", 4), "日本語…");
    }

    fn view(examples: Vec<ExamplePrediction>, picked: Picked) -> PredictionsView {
        PredictionsView {
            trial: TrialRow {
                sweep: "s".into(),
                id: "t".into(),
                params: serde_json::Value::Null,
                status: "finished".into(),
                device: None,
                attempt: 1,
                batch_size: None,
                grad_accum: None,
                est_memory_bytes: None,
                start: None,
                end: None,
                exit_reason: None,
                best_metric: None,
                best_step: Some(4),
                dir: "/r/s/trials/t".into(),
            },
            file: PredictionFileRow {
                metric: "cer".into(),
                ..file("val", 6)
            },
            picked,
            path: PathBuf::from("/r/s/trials/t/predictions/val-step00000006.jsonl.gz"),
            examples,
        }
    }

    fn example(
        index: usize,
        reference: &str,
        prediction: &str,
        score: Option<f64>,
    ) -> ExamplePrediction {
        ExamplePrediction {
            index,
            image: PathBuf::from(format!("/data/valid/image-{index}.png")),
            prefix: "caption en".into(),
            reference: reference.into(),
            prediction: prediction.into(),
            score,
            metric: "cer".into(),
        }
    }

    #[test]
    fn the_table_cuts_long_cells_and_the_header_says_what_was_read() {
        let long = "x".repeat(200);
        let v = view(
            vec![
                example(0, "a cat", "a hat", Some(0.2)),
                example(1, &long, "", None),
            ],
            Picked::Latest { best: Some(4) },
        );
        let table = v.to_table(80);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 3);
        assert!(lines[0].starts_with("index  score  image"), "{table}");
        assert!(
            lines[1].contains("image-0.png") && lines[1].contains("a hat"),
            "{table}"
        );
        assert!(
            !lines[1].contains("/data/valid"),
            "file names only: {table}"
        );
        assert!(
            lines[2].contains('…') && lines[2].contains("  -  "),
            "{table}"
        );
        assert!(lines.iter().all(|l| l.chars().count() <= 80), "{table}");
        let header = v.header();
        assert!(
            header.contains("val predictions at step 6 (the latest: the best step 4 has no val predictions), 2 examples"),
            "{header}"
        );
        assert!(header.contains("file   /r/s/trials/t/predictions/val-step00000006.jsonl.gz"));
        assert!(
            header.contains("cer per example, lower is better; mean 0.2 over 1 examples"),
            "{header}"
        );
        // JSON lines: every example whole.
        let lines: Vec<ExamplePrediction> = v
            .to_jsonl()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines, v.examples);
    }
}

//! The per-example validation predictions of a trial's selected checkpoint
//! (`TrialDir::predictions("val", best_step)`), with the task that scores
//! them: what the bootstrap intervals and the gallery read.

use std::collections::BTreeMap;
use std::path::PathBuf;

use super::analysis::TrialFacts;
use crate::layout::TrialDir;
use crate::metrics::task::Task;
use crate::track::predictions::{self, ExamplePrediction, PredictionsError};

/// The split the selection metric is computed on.
pub const SPLIT: &str = "val";

/// One trial's validation predictions at its selected step.
#[derive(Clone, Debug, PartialEq)]
pub struct TrialExamples {
    /// The config's `data.task`, or guessed from the references when it
    /// is `auto`.
    pub task: Task,
    pub path: PathBuf,
    /// In file order (the split's order).
    pub examples: Vec<ExamplePrediction>,
}

/// Why a trial has no predictions to show: not a failure of the report,
/// a sentence in it.
#[derive(Debug, thiserror::Error)]
pub enum ExamplesError {
    #[error("the trial has no selected step")]
    NoStep,
    #[error(
        "no per-example predictions at {} (synthetic trials, and trials run before predictions were stored, have none)",
        path.display()
    )]
    Missing { path: PathBuf },
    #[error("{0}")]
    Unreadable(#[from] PredictionsError),
    #[error("{} holds no example", path.display())]
    Empty { path: PathBuf },
}

/// Predictions of the trials at `indices`, by trial index; `tasks` holds
/// each trial's configured `data.task` (absent: `auto`).
pub fn load_all(
    trials: &[TrialFacts],
    indices: impl IntoIterator<Item = usize>,
    tasks: &BTreeMap<String, String>,
) -> BTreeMap<usize, Result<TrialExamples, ExamplesError>> {
    indices
        .into_iter()
        .map(|i| {
            let task = tasks.get(&trials[i].id).map(String::as_str);
            (i, load(&trials[i], task))
        })
        .collect()
}

/// One trial's predictions; `task` is its config's `data.task`.
pub fn load(trial: &TrialFacts, task: Option<&str>) -> Result<TrialExamples, ExamplesError> {
    let step = trial.best_step.ok_or(ExamplesError::NoStep)?;
    let path = TrialDir::from_path(std::path::Path::new(&trial.dir)).predictions(SPLIT, step);
    if !path.is_file() {
        return Err(ExamplesError::Missing { path });
    }
    let examples = predictions::read(&path)?;
    if examples.is_empty() {
        return Err(ExamplesError::Empty { path });
    }
    // `auto` (or a name this build does not know) is what the worker
    // guesses from the references, so guess the same way.
    let task = task.and_then(|t| t.parse().ok()).unwrap_or_else(|| {
        let references: Vec<&str> = examples.iter().map(|e| e.reference.as_str()).collect();
        Task::guess(&references)
    });
    Ok(TrialExamples {
        task,
        path,
        examples,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trial(dir: &std::path::Path, step: Option<u64>) -> TrialFacts {
        TrialFacts {
            best_step: step,
            dir: dir.display().to_string(),
            ..TrialFacts::finished("t", 0.5)
        }
    }

    fn example(reference: &str) -> ExamplePrediction {
        ExamplePrediction {
            index: 0,
            image: PathBuf::from("a.jpg"),
            prefix: "p".into(),
            reference: reference.into(),
            prediction: reference.into(),
            score: Some(1.0),
            metric: "field_f1".into(),
        }
    }

    #[test]
    fn reads_the_best_step_and_guesses_an_auto_task() {
        let dir = tempfile::tempdir().unwrap();
        let t = trial(dir.path(), Some(40));
        let path = TrialDir::from_path(dir.path()).predictions("val", 40);
        predictions::write(&path, &[example(r#"{"a": 1}"#)]).unwrap();
        // A file at another step is not the selected checkpoint's.
        predictions::write(
            &TrialDir::from_path(dir.path()).predictions("val", 20),
            &[example("x")],
        )
        .unwrap();
        let loaded = load(&t, Some("auto")).unwrap();
        assert_eq!(loaded.task, Task::Json);
        assert_eq!(loaded.path, path);
        assert_eq!(loaded.examples.len(), 1);
        // The config's task wins over the guess.
        assert_eq!(load(&t, Some("text")).unwrap().task, Task::Text);
    }

    #[test]
    fn says_why_when_there_is_nothing_to_read() {
        let dir = tempfile::tempdir().unwrap();
        let why = load(&trial(dir.path(), Some(40)), None)
            .unwrap_err()
            .to_string();
        assert!(
            why.contains("no per-example predictions") && why.contains("val-step00000040"),
            "{why}"
        );
        assert!(matches!(
            load(&trial(dir.path(), None), None),
            Err(ExamplesError::NoStep)
        ));
        let path = TrialDir::from_path(dir.path()).predictions("val", 40);
        predictions::write(&path, &[]).unwrap();
        assert!(matches!(
            load(&trial(dir.path(), Some(40)), None),
            Err(ExamplesError::Empty { .. })
        ));
    }
}

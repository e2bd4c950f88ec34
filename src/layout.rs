//! The results tree, in one place because every command reads or writes it:
//!
//! ```text
//! <results>/palisweep.sqlite              the store
//! <results>/.cache/                       generated datasets and tiny checkpoints
//! <results>/<sweep>/spec.toml             the spec as given
//! <results>/<sweep>/tb/<trial-id>/        TensorBoard run
//! <results>/<sweep>/trials/<trial-id>/    trial.toml (resolved), events.jsonl, worker.log,
//!                                         checkpoints/<step>/, final/, best/ (PEFT adapters)
//! ```

use std::path::{Path, PathBuf};

use crate::sweep::trial_id::TrialId;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResultsRoot(PathBuf);

impl ResultsRoot {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        ResultsRoot(root.into())
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    /// Creates the root, owner-only (0700) when it is new: it holds the
    /// store, configs, logs and adapters of every sweep. A root that exists
    /// keeps the permissions its owner gave it.
    pub fn create(&self) -> std::io::Result<()> {
        use std::os::unix::fs::DirBuilderExt as _;
        if self.0.is_dir() {
            return Ok(());
        }
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.0)
    }

    pub fn store(&self) -> PathBuf {
        self.0.join("palisweep.sqlite")
    }

    pub fn cache(&self) -> PathBuf {
        self.0.join(".cache")
    }

    pub fn sweep(&self, name: &str) -> SweepDir {
        SweepDir(self.0.join(name))
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SweepDir(PathBuf);

impl SweepDir {
    pub fn path(&self) -> &Path {
        &self.0
    }

    pub fn spec(&self) -> PathBuf {
        self.0.join("spec.toml")
    }

    /// `.lock`: held (`flock`) by the `palisweep run` running the sweep.
    pub fn run_lock(&self) -> PathBuf {
        self.0.join(".lock")
    }

    /// `tb/`: TensorBoard's log dir for the sweep (one run per trial).
    pub fn tensorboard(&self) -> PathBuf {
        self.0.join("tb")
    }

    pub fn trial(&self, trial: &TrialId) -> TrialDir {
        TrialDir(self.0.join("trials").join(trial.as_str()))
    }

    /// Ids of the trials recorded under this sweep (folders with a
    /// `trial.toml`), sorted; empty when the sweep has never run.
    pub fn recorded_trials(&self) -> Vec<String> {
        let Ok(entries) = std::fs::read_dir(self.0.join("trials")) else {
            return Vec::new();
        };
        let mut ids: Vec<String> = entries
            .filter_map(Result::ok)
            .filter(|e| e.path().join("trial.toml").is_file())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        ids.sort();
        ids
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TrialDir(PathBuf);

impl TrialDir {
    /// A trial folder given directly (the worker's `--trial`).
    pub fn from_path(path: &Path) -> Self {
        TrialDir(path.to_owned())
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    /// The resolved config, canonical TOML.
    pub fn config(&self) -> PathBuf {
        self.0.join("trial.toml")
    }

    pub fn events(&self) -> PathBuf {
        self.0.join("events.jsonl")
    }

    pub fn log(&self) -> PathBuf {
        self.0.join("worker.log")
    }

    pub fn checkpoint(&self, step: u64) -> PathBuf {
        self.0.join("checkpoints").join(step.to_string())
    }

    pub fn final_adapter(&self) -> PathBuf {
        self.0.join("final")
    }

    pub fn best_adapter(&self) -> PathBuf {
        self.0.join("best")
    }

    /// The per-example predictions of the evaluation of `split` (`val`,
    /// `test`) at `step`: `predictions/val-step00000040.jsonl.gz`.
    pub fn predictions(&self, split: &str, step: u64) -> PathBuf {
        self.0
            .join("predictions")
            .join(format!("{split}-step{step:08}.jsonl.gz"))
    }
}

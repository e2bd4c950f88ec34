//! What `run` and `plan` check once, before anything is written or
//! launched, so that bad input is one error (exit 2) up front rather than
//! a failure in every trial, retried as a crash:
//!
//! * each distinct dataset of the expansion gets the full check every
//!   worker runs ([`crate::data::check::check`]: lines, images, suffixes,
//!   a non-empty train split); a missing or empty valid split is a warning;
//! * each distinct checkpoint folder gets its files' headers checked
//!   against its config and its tokenizer loaded
//!   ([`crate::model::checkpoint::verify`]), no tensor data read;
//! * a Hugging Face id that is not in the cache: `run` asks the hub once
//!   whether it could be downloaded (or fails at once with
//!   `HF_HUB_OFFLINE=1`), so that a network failure is told apart from a
//!   refused token.
//!
//! `plan` plans for data and checkpoints that may not be here yet: a
//! dataset folder that does not exist and a hub id that is not cached are
//! left alone (the plan says it used the spec's maxima); whatever is here
//! must be right.
//!
//! Synthetic trials (`train.method = "synthetic"`) have no model and read
//! no data: they are not checked. The generated datasets (`generated:…`)
//! are palisweep's own, made the same on every machine: only their task is
//! checked against `data.task`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use crate::data::annotations::{DataError, Split, locate};
use crate::data::check::check;
use crate::data::synthetic::SyntheticTask;
use crate::metrics::task::Task;
use crate::model::checkpoint::hub::{self, HubError};
use crate::model::checkpoint::verify::{CheckpointError, verify};
use crate::model::preprocess::processor::{Processor, ProcessorError};
use crate::spec::GENERATED_PREFIX;
use crate::spec::checkpoint::{CheckpointRef, resolve};
use crate::spec::schema::{Method, Spec};
use crate::sweep::expand::Expansion;
use crate::train::learner::spec_task;

/// Which command checks: `run` needs everything here and now; `plan` only
/// what is here.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Purpose {
    Plan,
    Run,
}

/// Why the sweep cannot start.
#[derive(Debug, thiserror::Error)]
pub enum PreflightError {
    #[error(transparent)]
    Data(#[from] DataError),
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    #[error("the checkpoint at {}: {source}", dir.display())]
    Tokenizer {
        dir: PathBuf,
        source: ProcessorError,
    },
    #[error(transparent)]
    Hub(#[from] HubError),
    #[error(
        "data.path = \"{GENERATED_PREFIX}{}\" is a {} dataset but data.task = \"{task}\"\n  \
         help: use data.task = \"{}\" (or \"auto\"), or data.path = \"{GENERATED_PREFIX}{}\"",
        generated.as_str(), generated.as_str(), generated.as_str(), other(*generated)
    )]
    GeneratedTask {
        generated: SyntheticTask,
        task: Task,
    },
}

impl PreflightError {
    /// Everything here is the input's fault, except a hub request that
    /// failed for some other reason (a server error, the disk).
    pub fn is_bad_input(&self) -> bool {
        !matches!(
            self,
            PreflightError::Hub(HubError::Download { .. } | HubError::Io { .. })
        )
    }
}

fn other(task: SyntheticTask) -> &'static str {
    match task {
        SyntheticTask::Json => "detect",
        SyntheticTask::Detect => "json",
    }
}

/// Checks the inputs of every trial of `expansion` that reads any, each
/// distinct dataset and checkpoint once; prints the warnings on stderr.
pub fn check_inputs(expansion: &Expansion, purpose: Purpose) -> Result<(), PreflightError> {
    for warning in warnings(expansion, purpose)? {
        eprintln!("warning: {warning}");
    }
    Ok(())
}

/// [`check_inputs`]' work: the warnings, or the first error.
fn warnings(expansion: &Expansion, purpose: Purpose) -> Result<Vec<String>, PreflightError> {
    let specs: Vec<&Spec> = expansion
        .trials
        .iter()
        .map(|t| &t.spec)
        .filter(|s| s.train.method != Method::Synthetic)
        .collect();
    let mut checkpoints = BTreeSet::new();
    for spec in &specs {
        let revision = spec.model.revision.clone().unwrap_or_else(|| "main".into());
        let reference = resolve(&spec.model).reference;
        if checkpoints.insert((format!("{reference:?}"), revision.clone())) {
            check_checkpoint(&reference, &revision, purpose)?;
        }
    }
    let mut warnings = Vec::new();
    let mut datasets = BTreeSet::new();
    for spec in &specs {
        let data = &spec.data;
        if datasets.insert((
            data.path.clone(),
            format!("{:?}", data.task),
            data.skip_invalid,
        )) {
            warnings.extend(check_dataset(spec, purpose)?);
        }
    }
    Ok(warnings)
}

fn check_checkpoint(
    reference: &CheckpointRef,
    revision: &str,
    purpose: Purpose,
) -> Result<(), PreflightError> {
    let dir = match reference {
        // Written by palisweep itself, from its own code.
        CheckpointRef::Tiny => return Ok(()),
        CheckpointRef::Local(dir) => dir.clone(),
        CheckpointRef::Hub(id) => {
            let cache = hub::cache_dir();
            match hub::cached_snapshot(&cache, id, revision)? {
                Some(snapshot) => snapshot,
                None if purpose == Purpose::Plan => return Ok(()),
                None if hub::offline() => {
                    return Err(HubError::NotCached {
                        id: id.clone(),
                        revision: revision.to_owned(),
                        cache,
                        offline: true,
                    }
                    .into());
                }
                // Each trial will download it; one question to the hub now
                // says whether it can.
                None => return Ok(hub::probe(id, revision)?),
            }
        }
    };
    verify(&dir)?;
    Processor::from_dir(&dir).map_err(|source| PreflightError::Tokenizer { dir, source })?;
    Ok(())
}

/// Checks one dataset as the worker will; returns what is worth a warning.
fn check_dataset(spec: &Spec, purpose: Purpose) -> Result<Vec<String>, PreflightError> {
    let data = &spec.data;
    let select_metric = &spec.eval.select.metric;
    let task = spec_task(spec);
    if let Some(kind) = data.path.strip_prefix(GENERATED_PREFIX) {
        return match (kind.parse::<SyntheticTask>(), task) {
            (Ok(generated), Some(task)) if !fits(generated, task) => {
                Err(PreflightError::GeneratedTask { generated, task })
            }
            _ => Ok(Vec::new()),
        };
    }
    let root = Path::new(&data.path);
    if purpose == Purpose::Plan && !root.exists() {
        return Ok(Vec::new());
    }
    let checked = check(root, task, data.skip_invalid)?;
    let mut warnings = Vec::new();
    if checked.skipped > 0 {
        warnings.push(format!(
            "{}: {} invalid line(s) will be skipped (data.skip_invalid = true)",
            root.display(),
            checked.skipped
        ));
    }
    let missing = match locate(root, Split::Valid) {
        None if is_single_file(root) => Some((
            format!(
                "{} is a single annotations file, which is a train split alone",
                root.display()
            ),
            "point data.path at the export's folder, with valid/annotations.jsonl (or \
             _annotations.valid.jsonl) beside the train split"
                .to_owned(),
        )),
        None => Some((
            format!("{} has no valid split", root.display()),
            format!(
                "add {0}/valid/annotations.jsonl (or {0}/_annotations.valid.jsonl) with its images",
                root.display()
            ),
        )),
        Some((file, _)) if checked.split(Split::Valid).is_empty() => Some((
            format!("the valid split {} has no examples", file.display()),
            format!("add examples to {}", file.display()),
        )),
        Some(_) => None,
    };
    if let Some((missing, help)) = missing {
        let ranked = if select_metric.starts_with("val/") {
            format!(", and the trials cannot be ranked by {select_metric}")
        } else {
            String::new()
        };
        warnings.push(format!(
            "{missing}: the trials get no validation, so no best/ adapter is chosen (final/, \
             the last one, stands in for it){ranked}\n  help: {help}"
        ));
    }
    Ok(warnings)
}

fn is_single_file(root: &Path) -> bool {
    root.extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("jsonl"))
}

/// Whether every suffix of a generated dataset passes `task`'s check.
fn fits(generated: SyntheticTask, task: Task) -> bool {
    match generated {
        SyntheticTask::Json => matches!(task, Task::Json | Task::Text),
        SyntheticTask::Detect => matches!(task, Task::Detect | Task::Text),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::synthetic::{SyntheticOptions, write};
    use crate::spec::load::{Overrides, load};
    use crate::sweep::expand::expand;

    /// The warnings of `spec` (written to a temp folder with a 4-example
    /// generated dataset at `data/`, whose valid split is empty), or its
    /// error.
    fn preflight(spec: &str, purpose: Purpose) -> Result<Vec<String>, PreflightError> {
        preflight_with(spec, purpose, |_| {})
    }

    /// [`preflight`], with `change` applied to the folder first.
    fn preflight_with(
        spec: &str,
        purpose: Purpose,
        change: impl FnOnce(&Path),
    ) -> Result<Vec<String>, PreflightError> {
        let dir = tempfile::tempdir().unwrap();
        let options = SyntheticOptions {
            train: 4,
            valid: 0,
            test: 0,
            image_size: 16,
            ..SyntheticOptions::standard(SyntheticTask::Json)
        };
        write(&dir.path().join("data"), &options).unwrap();
        change(dir.path());
        let path = dir.path().join("spec.toml");
        std::fs::write(&path, spec).unwrap();
        let overrides = Overrides {
            sets: Vec::new(),
            env: Vec::new(),
        };
        let loaded = load(&path, &overrides).unwrap();
        let expansion = expand(&loaded, true).unwrap();
        warnings(&expansion, purpose)
    }

    const TINY: &str = "[model]\ncheckpoint = \"tiny\"\n";

    #[test]
    fn a_dataset_without_a_valid_split_is_a_warning_that_says_what_it_means() {
        let spec = format!("{TINY}[data]\npath = \"data\"\n");
        let warnings = preflight(&spec, Purpose::Run).unwrap();
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(warnings[0].contains("has no examples"), "{warnings:?}");
        assert!(warnings[0].contains("no best/"), "{warnings:?}");
        assert!(warnings[0].contains("val/loss"), "{warnings:?}");
        let without = |dir: &Path| std::fs::remove_dir_all(dir.join("data/valid")).unwrap();
        let warnings = preflight_with(&spec, Purpose::Plan, without).unwrap();
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(warnings[0].contains("has no valid split"), "{warnings:?}");
        assert!(
            warnings[0].contains("valid/annotations.jsonl"),
            "{warnings:?}"
        );
        let single = "[data]\npath = \"data/train/annotations.jsonl\"\n";
        let warnings = preflight(&format!("{TINY}{single}"), Purpose::Run).unwrap();
        assert!(warnings[0].contains("train split alone"), "{warnings:?}");
    }

    #[test]
    fn a_missing_dataset_fails_run_but_not_plan() {
        let spec = format!("{TINY}[data]\npath = \"nowhere\"\n");
        assert!(preflight(&spec, Purpose::Plan).unwrap().is_empty());
        let err = preflight(&spec, Purpose::Run).unwrap_err();
        assert!(
            matches!(err, PreflightError::Data(DataError::NoSplit { .. })),
            "{err}"
        );
        assert!(err.is_bad_input());
    }

    #[test]
    fn synthetic_trials_read_no_data_and_generated_data_must_fit_the_task() {
        let synthetic = "[train]\nmethod = \"synthetic\"\n[data]\npath = \"nowhere\"\n";
        assert!(preflight(synthetic, Purpose::Run).unwrap().is_empty());
        assert!(preflight(TINY, Purpose::Run).unwrap().is_empty());
        let err = preflight(
            &format!("{TINY}[data]\npath = \"generated:json\"\ntask = \"detect\"\n"),
            Purpose::Plan,
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("generated:detect"), "{err}");
    }

    #[test]
    fn a_broken_local_checkpoint_fails_plan_too() {
        let err = preflight("[model]\ncheckpoint = \"./nowhere\"\n", Purpose::Plan)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("nowhere") && err.contains("not a folder"),
            "{err}"
        );
    }
}

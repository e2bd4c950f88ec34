//! Trial checkpoints: `checkpoints/<step>/` with the trainable values, the
//! optimiser state and where training stood; `best/` and `final/` hold the
//! adapter in PEFT format (or the trained tensors for `full`). Every folder
//! is written beside its place and renamed into it, so a crash never leaves
//! half a checkpoint where resume would look.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tch::Tensor;

use crate::model::adapt::peft::{AdapterMeta, PeftError};
use crate::model::adapt::plan::Trainables;

use super::optim::AdamW;

const PARAMS: &str = "params.safetensors";
const OPTIMIZER: &str = "optimizer.safetensors";
const STATE: &str = "state.json";

#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("checkpoint {}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("checkpoint {}: {source}", path.display())]
    Tch {
        path: PathBuf,
        source: tch::TchError,
    },
    #[error("checkpoint {}: {message}", path.display())]
    Invalid { path: PathBuf, message: String },
    #[error(transparent)]
    Peft(#[from] PeftError),
}

/// Where training stood when a checkpoint was written.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainState {
    /// Optimiser steps done.
    pub step: u64,
    /// The epoch in progress (0-based).
    pub epoch: u64,
    /// Micro-batches of that epoch already trained.
    pub batches_done: usize,
    /// Best value of the selection metric so far, and its step.
    pub best: Option<(f64, u64)>,
    /// The thread count the run used (CPU results depend on it).
    pub threads: i32,
    /// The batch shape the position above counts in (0: not recorded).
    #[serde(default)]
    pub batch_size: u32,
    #[serde(default)]
    pub grad_accum: u32,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> CheckpointError + '_ {
    move |source| CheckpointError::Io {
        path: path.to_owned(),
        source,
    }
}

fn tch_err(path: &Path) -> impl FnOnce(tch::TchError) -> CheckpointError + '_ {
    move |source| CheckpointError::Tch {
        path: path.to_owned(),
        source,
    }
}

/// Writes `dir` through a sibling temporary folder and a rename.
fn write_atomically(
    dir: &Path,
    fill: impl FnOnce(&Path) -> Result<(), CheckpointError>,
) -> Result<(), CheckpointError> {
    let parent = dir.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).map_err(io(parent))?;
    let name = dir
        .file_name()
        .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
    let staging = parent.join(format!(".{name}.partial"));
    if staging.exists() {
        std::fs::remove_dir_all(&staging).map_err(io(&staging))?;
    }
    std::fs::create_dir_all(&staging).map_err(io(&staging))?;
    fill(&staging)?;
    if dir.exists() {
        std::fs::remove_dir_all(dir).map_err(io(dir))?;
    }
    std::fs::rename(&staging, dir).map_err(io(dir))
}

fn save_params(trainables: &Trainables, path: &Path) -> Result<(), CheckpointError> {
    let tensors: Vec<(String, Tensor)> = trainables
        .params()
        .iter()
        .map(|p| (p.name.clone(), p.tensor.detach()))
        .collect();
    Tensor::write_safetensors(&tensors, path).map_err(tch_err(path))
}

/// Copies stored values into the trainable variables.
pub fn load_params(trainables: &Trainables, path: &Path) -> Result<(), CheckpointError> {
    let stored = Tensor::read_safetensors(path).map_err(tch_err(path))?;
    for p in trainables.params() {
        let value = stored
            .iter()
            .find(|(name, _)| *name == p.name)
            .map(|(_, t)| t)
            .ok_or_else(|| CheckpointError::Invalid {
                path: path.to_owned(),
                message: format!("lacks `{}`", p.name),
            })?;
        let mut var = p.tensor.shallow_clone();
        tch::no_grad(|| var.f_copy_(value)).map_err(tch_err(path))?;
    }
    Ok(())
}

/// Writes `checkpoints/<step>/` and deletes all but the newest `keep`.
pub fn save(
    checkpoints: &Path,
    trainables: &Trainables,
    optimizer: &AdamW,
    state: &TrainState,
    keep: usize,
) -> Result<PathBuf, CheckpointError> {
    let dir = checkpoints.join(state.step.to_string());
    write_atomically(&dir, |tmp| {
        save_params(trainables, &tmp.join(PARAMS))?;
        let optim_path = tmp.join(OPTIMIZER);
        optimizer.save(&optim_path).map_err(tch_err(&optim_path))?;
        let state_path = tmp.join(STATE);
        let json = serde_json::to_string_pretty(state).unwrap_or_default();
        std::fs::write(&state_path, json).map_err(io(&state_path))
    })?;
    let mut steps = list(checkpoints);
    steps.sort_unstable();
    let excess = steps.len().saturating_sub(keep.max(1));
    for step in &steps[..excess] {
        let old = checkpoints.join(step.to_string());
        std::fs::remove_dir_all(&old).map_err(io(&old))?;
    }
    Ok(dir)
}

/// Steps with a complete checkpoint.
fn list(checkpoints: &Path) -> Vec<u64> {
    std::fs::read_dir(checkpoints)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .filter(|e| e.path().join(STATE).is_file())
                .filter_map(|e| e.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// The newest complete checkpoint, if any.
pub fn latest(checkpoints: &Path) -> Option<PathBuf> {
    list(checkpoints)
        .into_iter()
        .max()
        .map(|step| checkpoints.join(step.to_string()))
}

/// Restores the trainables and the optimiser from a checkpoint folder.
/// The state a checkpoint folder records, without loading its tensors.
pub fn read_state(dir: &Path) -> Result<TrainState, CheckpointError> {
    let state_path = dir.join(STATE);
    let text = std::fs::read_to_string(&state_path).map_err(io(&state_path))?;
    serde_json::from_str(&text).map_err(|e| CheckpointError::Invalid {
        path: state_path,
        message: e.to_string(),
    })
}

/// Loads a checkpoint's trainable values and optimiser state (its
/// [`TrainState`] is [`read_state`]'s).
pub fn restore(
    dir: &Path,
    trainables: &Trainables,
    optimizer: &mut AdamW,
) -> Result<(), CheckpointError> {
    load_params(trainables, &dir.join(PARAMS))?;
    let optim_path = dir.join(OPTIMIZER);
    optimizer.load(&optim_path).map_err(tch_err(&optim_path))
}

/// Writes `best/` or `final/`: the PEFT adapter (plus the raw trainable
/// values, which `full` needs and exact reloads use).
pub fn save_model(
    dir: &Path,
    trainables: &Trainables,
    meta: &AdapterMeta,
) -> Result<(), CheckpointError> {
    write_atomically(dir, |tmp| {
        save_params(trainables, &tmp.join(PARAMS))?;
        match trainables.save_peft(tmp, meta) {
            Ok(()) | Err(PeftError::NotAnAdapter) => Ok(()),
            Err(e) => Err(e.into()),
        }
    })
}

/// The raw trainable values saved in `best/` or `final/`.
pub fn params_file(dir: &Path) -> PathBuf {
    dir.join(PARAMS)
}

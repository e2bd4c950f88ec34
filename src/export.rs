//! What an `export` target names (an adapter folder, a trial folder, or a
//! trial id under the results root) and why it cannot be exported. Apart
//! from the command so that `error.rs` classifies these errors without
//! importing `commands/`.

use std::path::{Path, PathBuf};

use crate::layout::ResultsRoot;
use crate::model::adapt::peft::ADAPTER_CONFIG;
use crate::sweep::trial_id::TrialId;

/// Why `export` cannot start (bad arguments, all exit 2).
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error(
        "`{target}` is neither an adapter folder, a trial folder, nor a trial id under {}",
        results.display()
    )]
    NotFound { target: String, results: PathBuf },
    #[error("trial `{id}` exists in several sweeps ({}): pass its folder instead", sweeps.join(", "))]
    Ambiguous { id: String, sweeps: Vec<String> },
    #[error("trial folder {} has no adapter yet (neither best/ nor final/)", dir.display())]
    NoAdapter { dir: PathBuf },
    #[error("--out {} exists and is not empty", out.display())]
    OutNotEmpty { out: PathBuf },
    #[error("the adapter does not name its base (base_model_name_or_path): pass --checkpoint")]
    NoBase,
}

/// The adapter in a trial folder: `best/`, else `final/`.
fn trial_adapter(trial: &Path) -> Option<PathBuf> {
    ["best", "final"]
        .into_iter()
        .map(|name| trial.join(name))
        .find(|dir| dir.join(ADAPTER_CONFIG).is_file())
}

/// The adapter folder `target` names (see [`ExportArgs::target`]).
pub fn resolve_adapter(target: &str, results: &Path) -> Result<PathBuf, ExportError> {
    let path = Path::new(target);
    if path.join(ADAPTER_CONFIG).is_file() {
        return Ok(path.to_path_buf());
    }
    if path.join("trial.toml").is_file()
        || path.join("best").is_dir()
        || path.join("final").is_dir()
    {
        return trial_adapter(path).ok_or_else(|| ExportError::NoAdapter {
            dir: path.to_path_buf(),
        });
    }
    let not_found = || ExportError::NotFound {
        target: target.to_owned(),
        results: results.to_path_buf(),
    };
    if target.is_empty() || target.contains(['/', '\\']) || target.starts_with('.') {
        return Err(not_found());
    }
    let id: TrialId =
        serde_json::from_value(serde_json::Value::from(target)).map_err(|_| not_found())?;
    let root = ResultsRoot::new(results);
    let mut sweeps: Vec<String> = std::fs::read_dir(results)
        .map_err(|_| not_found())?
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|name| !name.starts_with('.'))
        .filter(|name| root.sweep(name).trial(&id).path().is_dir())
        .collect();
    sweeps.sort();
    match sweeps.as_slice() {
        [] => Err(not_found()),
        [sweep] => {
            let trial = root.sweep(sweep).trial(&id);
            [trial.best_adapter(), trial.final_adapter()]
                .into_iter()
                .find(|dir| dir.join(ADAPTER_CONFIG).is_file())
                .ok_or_else(|| ExportError::NoAdapter {
                    dir: trial.path().to_path_buf(),
                })
        }
        _ => Err(ExportError::Ambiguous {
            id: target.to_owned(),
            sweeps,
        }),
    }
}

/// Refuses an output folder with files in it.
pub fn check_out(out: &Path) -> Result<(), ExportError> {
    let non_empty = std::fs::read_dir(out).is_ok_and(|mut entries| entries.next().is_some());
    if non_empty || out.is_file() {
        return Err(ExportError::OutNotEmpty {
            out: out.to_path_buf(),
        });
    }
    Ok(())
}

//! What an `export` target names (an adapter folder, a trial folder, or a
//! trial id under the results root) and why it cannot be exported. Apart
//! from the command so that `error.rs` classifies these errors without
//! importing `commands/`.

use std::path::{Path, PathBuf};

use crate::layout::ResultsRoot;
use crate::model::adapt::peft::ADAPTER_CONFIG;
use crate::sweep::trial_id::TrialId;
use crate::track::store::{Store, StoreError};

/// Why `export` cannot start (bad arguments, all exit 2).
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error(
        "`{target}` is neither an adapter folder, a trial folder, nor a trial id under {}",
        results.display()
    )]
    NotFound { target: String, results: PathBuf },
    #[error("trial `{id}` exists in several sweeps ({}): pass SWEEP/ID or its folder", sweeps.join(", "))]
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
    let trial = if path.join("trial.toml").is_file()
        || path.join("best").is_dir()
        || path.join("final").is_dir()
    {
        path.to_path_buf()
    } else {
        find_trial(target, results)?
    };
    trial_adapter(&trial).ok_or(ExportError::NoAdapter { dir: trial })
}

/// The folder of the trial `target` names as `show` takes it (an id, a
/// unique prefix of one, or `SWEEP/ID`): through the store when the
/// results root has a readable one, else by the trial folders (whole ids).
fn find_trial(target: &str, results: &Path) -> Result<PathBuf, ExportError> {
    let root = ResultsRoot::new(results);
    let not_found = || ExportError::NotFound {
        target: target.to_owned(),
        results: results.to_path_buf(),
    };
    let folder = |sweep: &str, id: &str| -> Option<PathBuf> {
        let id: TrialId = serde_json::from_value(serde_json::Value::from(id)).ok()?;
        let dir = root.sweep(sweep).trial(&id);
        dir.path().is_dir().then(|| dir.path().to_path_buf())
    };
    if let Ok(store) = Store::open_read_only(&root.store()) {
        match store.resolve_trial(target) {
            Ok(row) => return folder(&row.sweep, &row.id).ok_or_else(not_found),
            Err(StoreError::AmbiguousTrial { candidates, .. }) => {
                return Err(ExportError::Ambiguous {
                    id: target.to_owned(),
                    sweeps: candidates,
                });
            }
            // Not in the store (or no store to read): the folders may know.
            Err(_) => {}
        }
    }
    let plain = |part: &str| !part.is_empty() && !part.contains('\\') && !part.starts_with('.');
    let (sweep, id) = match target.split_once('/') {
        Some((sweep, id)) if plain(sweep) && plain(id) && !id.contains('/') => (Some(sweep), id),
        None if plain(target) => (None, target),
        _ => return Err(not_found()),
    };
    let mut sweeps: Vec<String> = match sweep {
        Some(sweep) => vec![sweep.to_owned()],
        None => std::fs::read_dir(results)
            .map_err(|_| not_found())?
            .filter_map(Result::ok)
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|name| !name.starts_with('.'))
            .collect(),
    };
    sweeps.retain(|sweep| folder(sweep, id).is_some());
    sweeps.sort();
    match sweeps.as_slice() {
        [] => Err(not_found()),
        [sweep] => folder(sweep, id).ok_or_else(not_found),
        _ => Err(ExportError::Ambiguous {
            id: target.to_owned(),
            sweeps: sweeps.iter().map(|s| format!("{s}/{id}")).collect(),
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

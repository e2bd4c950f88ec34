//! `palisweep export TRIAL|ADAPTER_DIR --out DIR [--merge]`: a trial's PEFT
//! adapter copied out as it is, or merged into the full-precision base and
//! written as a full checkpoint in the Hugging Face layout.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use tch::Kind;

use crate::cli::ExportArgs;
use crate::layout::ResultsRoot;
use crate::model::peft::{self, ADAPTER_CONFIG, ADAPTER_WEIGHTS, PeftAdapter};
use crate::sweep::trial_id::TrialId;

use super::checkpoint;

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
fn check_out(out: &Path) -> Result<(), ExportError> {
    let non_empty = std::fs::read_dir(out).is_ok_and(|mut entries| entries.next().is_some());
    if non_empty || out.is_file() {
        return Err(ExportError::OutNotEmpty {
            out: out.to_path_buf(),
        });
    }
    Ok(())
}

pub fn run(args: &ExportArgs) -> anyhow::Result<()> {
    let adapter_dir = resolve_adapter(&args.target, &args.results)?;
    // Reading validates the adapter before anything is written.
    let adapter = PeftAdapter::read(&adapter_dir)?;
    check_out(&args.out)?;
    if !args.merge {
        std::fs::create_dir_all(&args.out)
            .with_context(|| format!("cannot create {}", args.out.display()))?;
        for name in [ADAPTER_CONFIG, ADAPTER_WEIGHTS, "README.md"] {
            let src = adapter_dir.join(name);
            if src.is_file() {
                std::fs::copy(&src, args.out.join(name)).with_context(|| {
                    format!("cannot copy {} to {}", src.display(), args.out.display())
                })?;
            }
        }
        println!(
            "adapter    {} ({} LoRA modules, {} saved tensors)",
            adapter_dir.display(),
            adapter.lora.len(),
            adapter.saved.len()
        );
        println!("written    {}", args.out.display());
        return Ok(());
    }

    let base = args
        .checkpoint
        .clone()
        .or_else(|| adapter.config.base_model_name_or_path.clone())
        .ok_or(ExportError::NoBase)?;
    let revision = args
        .revision
        .clone()
        .or_else(|| adapter.config.revision.clone());
    let base_dir = checkpoint::resolve(&base, revision.as_deref(), &args.cache)?;
    let kind = if args.dtype == "f32" {
        Kind::Float
    } else {
        Kind::BFloat16
    };
    let report =
        peft::write_merged_checkpoint(&base_dir, &adapter, &args.out, kind).with_context(|| {
            format!(
                "cannot merge {} into {}",
                adapter_dir.display(),
                base_dir.display()
            )
        })?;
    println!("adapter    {}", adapter_dir.display());
    println!("base       {}", base_dir.display());
    println!(
        "merged     {} LoRA weights, {} replaced tensors, {} tensors in all",
        report.merged, report.replaced, report.tensors
    );
    println!(
        "written    {} ({}, {:.1} MiB)",
        args.out.display(),
        args.dtype,
        report.bytes as f64 / f64::from(1 << 20)
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trial_ids_resolve_to_best_then_final() {
        let results = tempfile::tempdir().unwrap();
        let trial = results.path().join("sweep-a/trials/0123456789ab");
        std::fs::create_dir_all(trial.join("final")).unwrap();
        let err = resolve_adapter("0123456789ab", results.path()).unwrap_err();
        assert!(matches!(err, ExportError::NoAdapter { .. }), "{err}");
        std::fs::write(trial.join("final").join(ADAPTER_CONFIG), "{}").unwrap();
        assert_eq!(
            resolve_adapter("0123456789ab", results.path()).unwrap(),
            trial.join("final")
        );
        std::fs::create_dir_all(trial.join("best")).unwrap();
        std::fs::write(trial.join("best").join(ADAPTER_CONFIG), "{}").unwrap();
        assert_eq!(
            resolve_adapter("0123456789ab", results.path()).unwrap(),
            trial.join("best")
        );
        // The trial folder itself, and the adapter folder, work too.
        let as_str = trial.display().to_string();
        assert_eq!(
            resolve_adapter(&as_str, results.path()).unwrap(),
            trial.join("best")
        );
        let best = trial.join("best").display().to_string();
        assert_eq!(
            resolve_adapter(&best, results.path()).unwrap(),
            trial.join("best")
        );
        // Unknown and ambiguous ids.
        let err = resolve_adapter("fedcba987654", results.path()).unwrap_err();
        assert!(matches!(err, ExportError::NotFound { .. }), "{err}");
        std::fs::create_dir_all(results.path().join("sweep-b/trials/0123456789ab")).unwrap();
        let err = resolve_adapter("0123456789ab", results.path()).unwrap_err();
        assert!(matches!(err, ExportError::Ambiguous { .. }), "{err}");
        assert!(err.to_string().contains("sweep-a, sweep-b"), "{err}");
    }
}

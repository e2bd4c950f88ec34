//! `palisweep export TRIAL|ADAPTER_DIR --out DIR [--merge]`: a trial's PEFT
//! adapter copied out as it is, or merged into the full-precision base and
//! written as a full checkpoint in the Hugging Face layout.

use anyhow::Context as _;
use tch::Kind;

use super::output::outln;
use crate::cli::ExportArgs;
use crate::export::{ExportError, check_out, resolve_adapter};
use crate::model::adapt::peft::{self, ADAPTER_CONFIG, ADAPTER_WEIGHTS, PeftAdapter};

use super::checkpoint;

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
        outln!(
            "adapter    {} ({} LoRA modules, {} saved tensors)",
            adapter_dir.display(),
            adapter.lora.len(),
            adapter.saved.len()
        )?;
        outln!("written    {}", args.out.display())?;
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
    outln!("adapter    {}", adapter_dir.display())?;
    outln!("base       {}", base_dir.display())?;
    outln!(
        "merged     {} LoRA weights, {} replaced tensors, {} tensors in all",
        report.merged,
        report.replaced,
        report.tensors
    )?;
    outln!(
        "written    {} ({}, {:.1} MiB)",
        args.out.display(),
        args.dtype,
        report.bytes as f64 / f64::from(1 << 20)
    )?;
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
        assert!(
            err.to_string()
                .contains("sweep-a/0123456789ab, sweep-b/0123456789ab"),
            "{err}"
        );
        // SWEEP/ID picks one, as `show` takes it.
        assert_eq!(
            resolve_adapter("sweep-a/0123456789ab", results.path()).unwrap(),
            trial.join("best")
        );
        let err = resolve_adapter("sweep-b/0123456789ab", results.path()).unwrap_err();
        assert!(matches!(err, ExportError::NoAdapter { .. }), "{err}");
    }
}

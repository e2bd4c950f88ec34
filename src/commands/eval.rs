//! `palisweep eval`: token-weighted loss of a checkpoint on a dataset split
//! and, with `--generate`, the task metrics of its greedy answers (and with
//! `--predictions FILE`, each answer and its score).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use anyhow::Context as _;
use serde_json::json;
use tch::{Device, Kind};

use super::output::{OutputError, outln};
use crate::cli::EvalArgs;
use crate::data::annotations::Split;
use crate::data::check::check_split;
use crate::metrics::task::Task;
use crate::model::network::paligemma::PaliGemma;
use crate::model::preprocess::processor::Processor;
use crate::track::predictions;
use crate::train::evaluate::{EvalOptions, evaluate};

use super::{checkpoint, runtime};

/// What `eval` reports; the JSON keys are `loss`, `examples`, `tokens`, `metrics`.
#[derive(Debug)]
pub struct EvalReport {
    pub loss: f64,
    pub examples: usize,
    pub tokens: i64,
    pub truncated: usize,
    pub metrics: BTreeMap<String, f64>,
}

/// The checkpoint in `dir`, with the PEFT adapter in `adapter` applied
/// (unmerged, on the dense base) when given.
pub fn load_model(
    dir: &Path,
    adapter: Option<&Path>,
    device: Device,
    kind: Kind,
) -> anyhow::Result<PaliGemma> {
    match adapter {
        None => PaliGemma::load(dir, device, kind)
            .with_context(|| format!("cannot load the checkpoint at {}", dir.display())),
        Some(adapter) => {
            PaliGemma::load_with_adapter(dir, adapter, device, kind).with_context(|| {
                format!(
                    "cannot load the checkpoint at {} with the adapter {}",
                    dir.display(),
                    adapter.display()
                )
            })
        }
    }
}

pub fn run(args: &EvalArgs) -> anyhow::Result<()> {
    let split: Split = args.split.parse().map_err(anyhow::Error::msg)?;
    let task = match args.task.as_str() {
        "auto" => None,
        other => Some(
            other
                .parse::<Task>()
                .map_err(|e| anyhow::anyhow!("invalid --task: {e}"))?,
        ),
    };
    anyhow::ensure!(args.batch_size >= 1, "--batch-size must be at least 1");
    // Every line, image and reference checked first, as training checks
    // them: a bad one is named by file and line, not scored silently.
    let (records, task) = check_split(&args.data, split, task)?;

    let c = &args.checkpoint;
    let dir = checkpoint::resolve(&c.checkpoint, c.revision.as_deref(), &c.cache)?;
    let device = runtime::device(c.device.as_deref())?;
    let kind = runtime::kind(&c.precision, device)?;
    let model = load_model(&dir, c.adapter.as_deref(), device, kind)?;
    let processor = Processor::from_dir(&dir)?;

    let options = EvalOptions {
        batch_size: args.batch_size,
        max_suffix_tokens: args.max_suffix_tokens,
        generate: args.generate,
        max_new_tokens: args.max_new_tokens,
        device,
        kind,
    };
    let result = evaluate(
        &model,
        &Arc::new(processor),
        &Arc::new(records),
        task,
        &options,
    )?;
    if let Some(path) = &args.predictions {
        predictions::write(path, &result.predictions)?;
    }
    let report = EvalReport {
        loss: result.loss,
        examples: result.examples,
        tokens: result.tokens,
        truncated: result.truncated,
        metrics: result.metrics,
    };
    print_report(args, &report, task)?;
    Ok(())
}

fn print_report(args: &EvalArgs, report: &EvalReport, task: Task) -> Result<(), OutputError> {
    if args.json {
        outln!(
            "{}",
            json!({
                "loss": report.loss,
                "examples": report.examples,
                "tokens": report.tokens,
                "truncated": report.truncated,
                "task": task.as_str(),
                "metrics": report.metrics,
            })
        )?;
        return Ok(());
    }
    outln!("split      {} of {}", args.split, args.data.display())?;
    if let Some(adapter) = &args.checkpoint.adapter {
        outln!("adapter    {}", adapter.display())?;
    }
    outln!("examples   {}", report.examples)?;
    outln!("tokens     {} (supervised)", report.tokens)?;
    outln!("loss       {:.6}", report.loss)?;
    if report.truncated > 0 {
        outln!(
            "truncated  {} suffix(es) at {} tokens",
            report.truncated,
            args.max_suffix_tokens
        )?;
    }
    if args.generate {
        outln!("task       {}", task.as_str())?;
        for (name, value) in &report.metrics {
            outln!("{name:<10} {value:.4}")?;
        }
    }
    Ok(())
}

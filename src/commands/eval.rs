//! `palisweep eval`: token-weighted loss of a checkpoint on a dataset split
//! and, with `--generate`, the task metrics of its greedy answers.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::Context as _;
use serde_json::json;
use tch::{Device, Kind};

use crate::cli::EvalArgs;
use crate::data::annotations::{Split, read_split};
use crate::metrics::task::{Task, TaskMetrics};
use crate::model::generate::generate;
use crate::model::image::load_image;
use crate::model::paligemma::PaliGemma;
use crate::model::processor::{Example, Processor};

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
    let records = read_split(&args.data, split)?;
    anyhow::ensure!(
        !records.is_empty(),
        "the {split} split of {} is empty",
        args.data.display()
    );

    let c = &args.checkpoint;
    let dir = checkpoint::resolve(&c.checkpoint, c.revision.as_deref(), &c.cache)?;
    let device = runtime::device(c.device.as_deref())?;
    let kind = runtime::kind(&c.precision, device)?;
    let model = load_model(&dir, c.adapter.as_deref(), device, kind)?;
    let processor = Processor::from_dir(&dir)?;

    let suffixes: Vec<&str> = records.iter().map(|r| r.suffix.as_str()).collect();
    let task = task.unwrap_or_else(|| Task::guess(&suffixes));
    let mut metrics = TaskMetrics::new(task);
    let (mut loss_sum, mut tokens, mut truncated) = (0.0_f64, 0_i64, 0_usize);
    let eos = i64::from(processor.special_tokens().eos);
    let pad = i64::from(processor.special_tokens().pad);

    for chunk in records.chunks(args.batch_size) {
        let examples = chunk
            .iter()
            .map(|r| {
                Ok(Example {
                    image: load_image(&r.image)?,
                    prefix: r.prefix.clone(),
                    suffix: r.suffix.clone(),
                })
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let encoded = processor.encode_training(&examples, args.max_suffix_tokens)?;
        truncated += encoded.truncated;
        let input = encoded.input.to(device, kind);
        let loss = tch::no_grad(|| model.loss(&input))?;
        loss_sum += loss.sum.double_value(&[]);
        tokens += loss.tokens;

        if args.generate {
            let images: Vec<_> = examples.iter().map(|e| e.image.clone()).collect();
            let prefixes: Vec<String> = examples.iter().map(|e| e.prefix.clone()).collect();
            let prompts = processor
                .encode_prompts(&images, &prefixes)?
                .to(device, kind);
            let outputs = generate(&model, &prompts, args.max_new_tokens, &[eos], pad)?;
            for (ids, example) in outputs.iter().zip(&examples) {
                metrics.add(&processor.decode(ids), &example.suffix);
            }
        }
    }
    let report = EvalReport {
        loss: if tokens > 0 {
            loss_sum / tokens as f64
        } else {
            f64::NAN
        },
        examples: records.len(),
        tokens,
        truncated,
        metrics: if args.generate {
            metrics.finish()
        } else {
            BTreeMap::new()
        },
    };
    print_report(args, &report, task);
    Ok(())
}

fn print_report(args: &EvalArgs, report: &EvalReport, task: Task) {
    if args.json {
        println!(
            "{}",
            json!({
                "loss": report.loss,
                "examples": report.examples,
                "tokens": report.tokens,
                "truncated": report.truncated,
                "task": task.as_str(),
                "metrics": report.metrics,
            })
        );
        return;
    }
    println!("split      {} of {}", args.split, args.data.display());
    if let Some(adapter) = &args.checkpoint.adapter {
        println!("adapter    {}", adapter.display());
    }
    println!("examples   {}", report.examples);
    println!("tokens     {} (supervised)", report.tokens);
    println!("loss       {:.6}", report.loss);
    if report.truncated > 0 {
        println!(
            "truncated  {} suffix(es) at {} tokens",
            report.truncated, args.max_suffix_tokens
        );
    }
    if args.generate {
        println!("task       {}", task.as_str());
        for (name, value) in &report.metrics {
            println!("{name:<10} {value:.4}");
        }
    }
}

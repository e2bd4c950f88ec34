//! `palisweep bench`: times training steps (the trainer's backward and
//! `AdamW`) and forward-only evaluation on a preset or given checkpoint; see
//! [`crate::bench`] for what is measured and `docs/benchmarks.md` for
//! results.

use std::path::PathBuf;

use anyhow::Context as _;
use image::RgbImage;

use super::output::{OutputError, outln};
use crate::bench::checkpoint;
use crate::bench::run::{BenchOptions, Modes, Report, run as bench};
use crate::cli::BenchArgs;
use crate::data::annotations::{Split, read_split};
use crate::model::adapt::lora::LoraConfig;
use crate::model::adapt::plan::QuantConfig;
use crate::model::config::Preset;
use crate::model::network::attention::AttentionMode;
use crate::model::preprocess::image::load_image;
use crate::model::preprocess::processor::Example;
use crate::spec::schema::Method;
use crate::variant::{Resolution, Size};

use super::runtime;

/// The checkpoint to time: a folder as given, or a random preset written once.
fn checkpoint(args: &BenchArgs) -> anyhow::Result<PathBuf> {
    let size: Size = args.size.parse().map_err(anyhow::Error::msg)?;
    let resolution: Resolution = args.resolution.parse().map_err(anyhow::Error::msg)?;
    match Preset::parse(&args.checkpoint) {
        Some(preset) => checkpoint::ensure(&args.cache, preset, size, resolution, args.seed)
            .context("cannot write the benchmark checkpoint"),
        None => Ok(PathBuf::from(&args.checkpoint)),
    }
}

fn examples(args: &BenchArgs) -> anyhow::Result<Vec<Example>> {
    if let Some(data) = &args.data {
        let records = read_split(data, Split::Train)?;
        anyhow::ensure!(
            !records.is_empty(),
            "the train split of {} is empty",
            data.display()
        );
        return records
            .iter()
            .cycle()
            .take(args.batch)
            .map(|r| {
                Ok(Example {
                    image: load_image(&r.image)?,
                    prefix: r.prefix.clone(),
                    suffix: r.suffix.clone(),
                })
            })
            .collect();
    }
    Ok((0..args.batch)
        .map(|i| Example {
            image: RgbImage::from_fn(96, 80, |x, y| {
                image::Rgb([(x * 2) as u8, (y * 3) as u8, (i * 40) as u8])
            }),
            prefix: "extract JSON".into(),
            suffix: r#"{"shape": "circle", "color": "red", "count": 3}"#.into(),
        })
        .collect())
}

fn print_row(r: &Report) -> Result<(), OutputError> {
    let gpu = r
        .peak_gpu_mb
        .map(|m| format!(", peak GPU {m:.0} MiB"))
        .unwrap_or_default();
    let mfu = r
        .mfu
        .map(|m| format!(", MFU {:.1}%", 100.0 * m))
        .unwrap_or_default();
    let estimate = match (r.est_memory_mb, r.est_error_pct) {
        (Some(mb), Some(err)) => format!(", estimate {mb:.0} MiB ({err:+.1}%)"),
        _ => String::new(),
    };
    outln!(
        "{:<7} {} {}{}batch {} × {} tokens on {} ({}, {} threads): {:.1} ms/step, {:.2} samples/s, {:.0} tokens/s, {:.2} TFLOP/s{mfu}, peak RSS {:.0} MiB{gpu}{estimate}",
        r.mode,
        r.method,
        if r.gradient_checkpointing { "+gc " } else { "" },
        if r.attention == "eager" { "eager " } else { "" },
        r.batch,
        r.seq_len,
        r.device,
        r.dtype,
        r.threads,
        r.step_ms,
        r.samples_per_s,
        r.tokens_per_s,
        r.achieved_tflops,
        r.peak_rss_mb.unwrap_or(f64::NAN),
    )
}

pub fn run(args: &BenchArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.batch >= 1 && args.steps >= 1,
        "--batch and --steps must be at least 1"
    );
    let dir = checkpoint(args)?;
    if args.prepare_only {
        outln!("{}", dir.display())?;
        return Ok(());
    }
    let device = runtime::device(args.device.as_deref())?;
    if let Some(threads) = args.threads {
        tch::set_num_threads(threads);
    }
    let kind = runtime::kind(&args.precision, device)?;
    let method = match args.method.as_str() {
        "qlora" => Method::Qlora,
        "full" => Method::Full,
        _ => Method::Lora,
    };
    let modes = match args.mode.as_str() {
        "train" => Modes::Train,
        "forward" => Modes::Forward,
        _ => Modes::Both,
    };
    let lora = LoraConfig {
        dropout: args.lora_dropout,
        ..LoraConfig::new(i64::from(args.lora_r), args.lora_alpha)
    };
    let options = BenchOptions {
        checkpoint: dir.clone(),
        method,
        gradient_checkpointing: args.gradient_checkpointing,
        attention: if args.attention == "eager" {
            AttentionMode::Eager
        } else {
            AttentionMode::MemoryEfficient
        },
        modes,
        warmup: args.warmup,
        steps: args.steps,
        device,
        kind,
        lora,
        quant: QuantConfig::default(),
        seed: args.seed,
        peak_tflops: args.peak_tflops,
        dump_batch: args.dump_batch.clone(),
    };
    let reports = bench(&options, &examples(args)?)
        .with_context(|| format!("benchmark of {}", dir.display()))?;
    for report in &reports {
        if args.json {
            outln!("{}", serde_json::to_string(report)?)?;
        } else {
            print_row(report)?;
        }
    }
    Ok(())
}

//! `palisweep bench`: throughput of forward passes (what evaluation does)
//! on a preset or given checkpoint. Training steps join when the trainer
//! lands. Timings are wall clock after warm-up; memory is the process's
//! peak RSS on the CPU.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context as _;
use image::RgbImage;
use serde_json::json;

use crate::cli::BenchArgs;
use crate::data::annotations::{Split, read_split};
use crate::model::config::{PaliGemmaConfig, Resolution, Size};
use crate::model::image::load_image;
use crate::model::paligemma::PaliGemma;
use crate::model::processor::{Example, Processor};
use crate::model::tiny;

use super::runtime;

/// The checkpoint to time: a folder as given, or a random preset written once.
fn checkpoint(args: &BenchArgs) -> anyhow::Result<PathBuf> {
    let size: Size = args.size.parse().map_err(anyhow::Error::msg)?;
    let resolution: Resolution = args.resolution.parse().map_err(anyhow::Error::msg)?;
    let config = match args.checkpoint.as_str() {
        "tiny" => PaliGemmaConfig::tiny(size, resolution),
        "small" => PaliGemmaConfig::small(size, resolution),
        dir => return Ok(PathBuf::from(dir)),
    };
    let dir = args
        .cache
        .join("bench")
        .join(format!("{}-{size}-{resolution}", args.checkpoint));
    if !dir.join("model.safetensors").is_file() {
        tiny::write_random(&dir, &config, 0).context("cannot write the benchmark checkpoint")?;
    }
    Ok(dir)
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

/// Peak resident memory of this process, in MiB.
fn peak_rss_mib() -> Option<f64> {
    crate::train::perf::peak_rss_bytes().map(|b| b as f64 / (1024.0 * 1024.0))
}

pub fn run(args: &BenchArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.batch >= 1 && args.steps >= 1,
        "--batch and --steps must be at least 1"
    );
    let dir = checkpoint(args)?;
    let device = runtime::device(args.device.as_deref())?;
    if let Some(threads) = args.threads {
        tch::set_num_threads(threads);
    }
    let kind = runtime::kind(&args.precision, device)?;
    let model = PaliGemma::load(&dir, device, kind)
        .with_context(|| format!("cannot load {}", dir.display()))?;
    let processor = Processor::from_dir(&dir)?;
    let encoded = processor.encode_training(&examples(args)?, usize::MAX)?;
    let input = encoded.input.to(device, kind);
    let (batch, seq_len) = input.input_ids.size2()?;

    let step = || -> anyhow::Result<f64> {
        let loss = tch::no_grad(|| model.loss(&input))?;
        // Reading the value waits for the device.
        Ok(loss.sum.double_value(&[]))
    };
    for _ in 0..args.warmup {
        step()?;
    }
    let start = Instant::now();
    for _ in 0..args.steps {
        step()?;
    }
    let seconds = start.elapsed().as_secs_f64();
    let steps = args.steps as f64;
    let samples_per_s = batch as f64 * steps / seconds;
    let tokens_per_s = (batch * seq_len) as f64 * steps / seconds;
    let report = json!({
        "mode": "forward",
        "checkpoint": dir.display().to_string(),
        "device": format!("{device:?}"),
        "dtype": format!("{kind:?}"),
        "threads": tch::get_num_threads(),
        "batch": batch,
        "seq_len": seq_len,
        "steps": args.steps,
        "step_ms": 1000.0 * seconds / steps,
        "samples_per_s": samples_per_s,
        "tokens_per_s": tokens_per_s,
        "peak_rss_mb": peak_rss_mib(),
    });
    if args.json {
        println!("{report}");
    } else {
        println!(
            "forward, batch {batch} × {seq_len} tokens on {device:?} ({kind:?}, {} threads): {:.1} ms/step, {samples_per_s:.2} samples/s, {tokens_per_s:.0} tokens/s, peak RSS {:.0} MiB",
            tch::get_num_threads(),
            1000.0 * seconds / steps,
            peak_rss_mib().unwrap_or(f64::NAN),
        );
    }
    Ok(())
}

//! One benchmark: load a checkpoint with an adaptation plan, time
//! forward-only evaluation and training steps on one fixed batch, and
//! report throughput, peak memory, FLOP utilisation and the memory
//! estimator's error.
//!
//! Training steps are the trainer's: [`loss_backward`] (plain or
//! checkpointed), gradient clipping and the project's [`AdamW`]. Each step
//! ends with reading its loss, which waits for the device, so wall-clock
//! step times are honest on CUDA too.

use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::Serialize;
use tch::{Device, Kind, Tensor};

use crate::devices::detect::DeviceKind;
use crate::estimate::cost::per_example_flops;
use crate::estimate::memory::{TrialShape, estimate_memory};
use crate::model::adapt::lora::{LoraConfig, LoraTargets};
use crate::model::adapt::plan::{AdaptPlan, QuantConfig, Trainables};
use crate::model::network::attention::AttentionMode;
use crate::model::network::backward::{BackwardOptions, loss_backward};
use crate::model::network::paligemma::{ModelError, PaliGemma};
use crate::model::preprocess::input::ModelInput;
use crate::model::preprocess::processor::{Example, Processor, ProcessorError};
use crate::spec::schema::{Attention, Method};
use crate::train::optim::{AdamW, AdamWConfig};
use crate::train::perf::peak_rss_bytes;

use super::gpu_memory::{GpuMemorySampler, bf16_peak_tflops};

const MIB: f64 = 1024.0 * 1024.0;
/// Learning rate of the timed steps (its value does not change the cost).
const LR: f64 = 1e-4;
/// As the trainer's default `max_grad_norm`: clipping is part of a step.
const MAX_GRAD_NORM: f64 = 1.0;

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error(transparent)]
    Processor(#[from] ProcessorError),
    #[error(transparent)]
    Torch(#[from] tch::TchError),
    #[error("--batch, --steps must be at least 1")]
    Empty,
    #[error("the batch has no supervised token: nothing to train on")]
    Unsupervised,
    #[error("`synthetic` trains no model: benchmark lora, qlora or full")]
    Synthetic,
}

/// Which timings to take.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Modes {
    Train,
    Forward,
    /// Forward first (its peak memory is then its own), then training.
    Both,
}

#[derive(Clone, Debug)]
pub struct BenchOptions {
    pub checkpoint: PathBuf,
    pub method: Method,
    pub gradient_checkpointing: bool,
    pub attention: AttentionMode,
    pub modes: Modes,
    pub warmup: usize,
    pub steps: usize,
    pub device: Device,
    pub kind: Kind,
    pub lora: LoraConfig,
    pub quant: QuantConfig,
    /// `LoRA` initialisation and dropout seeds.
    pub seed: u64,
    /// MFU denominator; `None`: known GPUs' bf16 dense peak, else no MFU.
    pub peak_tflops: Option<f64>,
    /// Write the encoded batch here (for the transformers comparison).
    pub dump_batch: Option<PathBuf>,
}

/// One row of results (one JSON line).
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// `train` or `forward`.
    pub mode: &'static str,
    pub method: &'static str,
    pub gradient_checkpointing: bool,
    /// `memory_efficient` or `eager`.
    pub attention: &'static str,
    pub checkpoint: String,
    pub device: String,
    /// GPU product name (CUDA only).
    pub gpu: Option<String>,
    pub dtype: String,
    /// The CPU's `malloc` (`crate::allocator`): `glibc` or `tcmalloc`.
    pub allocator: &'static str,
    pub threads: i32,
    pub batch: i64,
    /// Padded sequence length of the batch.
    pub seq_len: i64,
    /// Non-padding tokens of one batch (what `tokens_per_s` counts).
    pub tokens_per_batch: i64,
    /// Longest row's text tokens before the suffix (image tokens excluded)
    /// and supervised tokens: with `batch` and `seq_len`, the estimator's
    /// input.
    pub prefix_tokens: u32,
    pub suffix_tokens: u32,
    pub warmup: usize,
    pub steps: usize,
    pub step_ms: f64,
    pub samples_per_s: f64,
    pub tokens_per_s: f64,
    /// Process peak resident memory (`VmHWM`) after this mode ran.
    pub peak_rss_mb: Option<f64>,
    /// Process peak GPU memory after this mode ran (CUDA only).
    pub peak_gpu_mb: Option<f64>,
    /// How `peak_gpu_mb` was measured.
    pub gpu_memory_source: Option<&'static str>,
    pub loss_first: f64,
    pub loss_last: f64,
    pub total_params: u64,
    pub trainable_params: u64,
    /// `QLoRA`: NF4 storage (codes, absmax, constants) per quantised weight.
    pub nf4_bytes_per_param: Option<f64>,
    /// Model FLOPs of one sample (see `docs/benchmarks.md`): training
    /// counts forward + backward without recomputation, forward counts the
    /// forward only.
    pub flops_per_sample: f64,
    /// Executed FLOPs per sample, recomputation of checkpointed layers
    /// included (equal to `flops_per_sample` otherwise).
    pub hardware_flops_per_sample: f64,
    pub achieved_tflops: f64,
    pub peak_tflops: Option<f64>,
    /// Model FLOP utilisation: `achieved_tflops / peak_tflops`.
    pub mfu: Option<f64>,
    /// The memory estimator's peak for this training configuration (train
    /// rows only).
    pub est_memory_mb: Option<f64>,
    /// `(estimate − measured) / measured` against `peak_gpu_mb` on CUDA,
    /// `peak_rss_mb` on the CPU.
    pub est_error_pct: Option<f64>,
}

/// The adaptation plan: `LoRA` settings as given, vision tower and
/// projector as the spec defaults have them.
fn plan(options: &BenchOptions) -> Result<AdaptPlan, BenchError> {
    Ok(match options.method {
        Method::Lora => AdaptPlan::lora(options.lora.clone()),
        Method::Qlora => AdaptPlan::qlora(options.lora.clone(), options.quant),
        Method::Full => AdaptPlan::full(),
        Method::Synthetic => return Err(BenchError::Synthetic),
    })
}

/// Writes the batch as safetensors (`pixel_values` in f32), the way the
/// transformers comparison script reads it.
pub fn dump_batch(input: &ModelInput, path: &Path) -> Result<(), tch::TchError> {
    let mut tensors = vec![
        ("input_ids", input.input_ids.shallow_clone()),
        ("attention_mask", input.attention_mask.shallow_clone()),
        ("token_type_ids", input.token_type_ids.shallow_clone()),
        ("pixel_values", input.pixel_values.to_kind(Kind::Float)),
    ];
    if let Some(labels) = &input.labels {
        tensors.push(("labels", labels.shallow_clone()));
    }
    Tensor::write_safetensors(&tensors, path)
}

/// Counts what the FLOP and memory models need from one batch.
struct BatchShape {
    batch: i64,
    seq_len: i64,
    tokens: i64,
    /// Longest row's supervised tokens.
    suffix_tokens: u32,
    /// Longest row's text tokens before the suffix, image tokens excluded.
    prefix_tokens: u32,
}

fn batch_shape(input: &ModelInput, image_tokens: u32) -> Result<BatchShape, tch::TchError> {
    let (batch, seq_len) = input.input_ids.size2()?;
    let tokens = input
        .attention_mask
        .f_sum(Kind::Int64)?
        .f_int64_value(&[])?;
    let suffix = input
        .token_type_ids
        .f_sum_dim_intlist([1i64].as_slice(), false, Kind::Int64)?
        .f_max()?
        .f_int64_value(&[])?;
    let suffix_tokens = u32::try_from(suffix).unwrap_or(0);
    let prefix_tokens = u32::try_from(seq_len)
        .unwrap_or(u32::MAX)
        .saturating_sub(image_tokens + suffix_tokens);
    Ok(BatchShape {
        batch,
        seq_len,
        tokens,
        suffix_tokens,
        prefix_tokens,
    })
}

/// The estimator's input for this run.
fn trial_shape<'a>(
    config: &'a crate::model::config::PaliGemmaConfig,
    options: &BenchOptions,
    batch: &BatchShape,
    targets: &'a [String],
    gradient_checkpointing: bool,
) -> TrialShape<'a> {
    TrialShape {
        config,
        method: options.method,
        batch_size: u32::try_from(batch.batch).unwrap_or(u32::MAX),
        prefix_tokens: batch.prefix_tokens,
        suffix_tokens: batch.suffix_tokens,
        dtype_bytes: u32::try_from(options.kind.elt_size_in_bytes()).unwrap_or(4),
        device: match options.device {
            Device::Cuda(_) => DeviceKind::Cuda,
            _ => DeviceKind::Cpu,
        },
        allocator: crate::allocator::active(),
        freeze_vision: false,
        train_projector: false,
        lora_r: u32::try_from(options.lora.r).unwrap_or(0),
        lora_targets: targets,
        gradient_checkpointing,
        double_quant: options.quant.double_quant,
        quant_block_size: u32::try_from(options.quant.block_size).unwrap_or(64),
        attention: match options.attention {
            AttentionMode::Eager => Attention::Eager,
            AttentionMode::MemoryEfficient | AttentionMode::AlwaysChunked => {
                Attention::MemoryEfficient
            }
        },
    }
}

/// Waits for the GPU's queued work (a no-op on the CPU).
fn synchronize(device: Device) {
    if let Device::Cuda(index) = device {
        tch::Cuda::synchronize(i64::try_from(index).unwrap_or(0));
    }
}

/// Timed loop: `warmup` untimed calls, then `steps` timed ones. Returns
/// seconds per step and the first and last loss.
fn time_steps(
    warmup: usize,
    steps: usize,
    device: Device,
    mut step: impl FnMut() -> Result<f64, BenchError>,
) -> Result<(f64, f64, f64), BenchError> {
    let mut first = f64::NAN;
    for i in 0..warmup {
        let loss = step()?;
        if i == 0 {
            first = loss;
        }
    }
    synchronize(device);
    let start = Instant::now();
    let mut last = f64::NAN;
    for _ in 0..steps {
        last = step()?;
        if first.is_nan() {
            first = last;
        }
    }
    synchronize(device);
    Ok((start.elapsed().as_secs_f64() / steps as f64, first, last))
}

/// Loads, times and reports. One report per mode, forward first.
#[allow(clippy::too_many_lines)] // one measurement, read top to bottom
pub fn run(options: &BenchOptions, examples: &[Example]) -> Result<Vec<Report>, BenchError> {
    if options.steps == 0 || examples.is_empty() {
        return Err(BenchError::Empty);
    }
    // Started before the model loads: the peak includes the weights.
    // Without NVML the timings still stand; the row then has no GPU peak.
    let sampler = match options.device {
        Device::Cuda(index) => GpuMemorySampler::start(index)
            .inspect_err(|e| eprintln!("warning: {e}: no peak GPU memory"))
            .ok(),
        _ => None,
    };
    let plan = plan(options)?;
    let (mut model, trainables) = PaliGemma::load_adapted(
        &options.checkpoint,
        options.device,
        options.kind,
        &plan,
        options.seed,
    )?;
    model.set_attention(options.attention);
    let processor = Processor::from_dir(&options.checkpoint)?;
    let encoded = processor.encode_training(examples, usize::MAX)?;
    if let Some(path) = &options.dump_batch {
        dump_batch(&encoded.input, path)?;
    }
    let config = model.config().clone();
    let shape = batch_shape(&encoded.input, config.num_image_tokens())?;
    if shape.suffix_tokens == 0 {
        return Err(BenchError::Unsupervised);
    }
    let input = encoded.input.to(options.device, options.kind);
    let targets = match &options.lora.targets {
        LoraTargets::Names(names) => names.clone(),
        LoraTargets::Modules(modules) => modules.keys().cloned().collect(),
    };

    let peak_tflops = options
        .peak_tflops
        .or_else(|| sampler.as_ref().and_then(|s| bf16_peak_tflops(&s.name)));
    let stats = trainables.stats();
    let base = Report {
        mode: "forward",
        method: options.method.as_str(),
        gradient_checkpointing: options.gradient_checkpointing,
        attention: match options.attention {
            AttentionMode::Eager => "eager",
            AttentionMode::MemoryEfficient | AttentionMode::AlwaysChunked => "memory_efficient",
        },
        checkpoint: options.checkpoint.display().to_string(),
        device: format!("{:?}", options.device),
        gpu: sampler.as_ref().map(|s| s.name.clone()),
        dtype: format!("{:?}", options.kind),
        allocator: crate::allocator::active().name(),
        threads: tch::get_num_threads(),
        batch: shape.batch,
        seq_len: shape.seq_len,
        tokens_per_batch: shape.tokens,
        prefix_tokens: shape.prefix_tokens,
        suffix_tokens: shape.suffix_tokens,
        warmup: options.warmup,
        steps: options.steps,
        step_ms: f64::NAN,
        samples_per_s: f64::NAN,
        tokens_per_s: f64::NAN,
        peak_rss_mb: None,
        peak_gpu_mb: None,
        gpu_memory_source: None,
        loss_first: f64::NAN,
        loss_last: f64::NAN,
        total_params: config.param_counts().total,
        trainable_params: trainables.num_parameters(),
        nf4_bytes_per_param: (stats.quantized_params > 0)
            .then(|| stats.quantized_bytes as f64 / stats.quantized_params as f64),
        flops_per_sample: f64::NAN,
        hardware_flops_per_sample: f64::NAN,
        achieved_tflops: f64::NAN,
        peak_tflops,
        mfu: None,
        est_memory_mb: None,
        est_error_pct: None,
    };
    // Fills in timings, memory and FLOP rates.
    let finish = |mut report: Report, seconds: f64, losses: (f64, f64)| {
        report.step_ms = 1000.0 * seconds;
        report.samples_per_s = shape.batch as f64 / seconds;
        report.tokens_per_s = shape.tokens as f64 / seconds;
        (report.loss_first, report.loss_last) = losses;
        report.peak_rss_mb = peak_rss_bytes().map(|b| b as f64 / MIB);
        if let Some(sampler) = &sampler {
            let (bytes, source) = sampler.finish_sample();
            report.peak_gpu_mb = Some(bytes as f64 / MIB);
            report.gpu_memory_source = Some(source.as_str());
        }
        report.achieved_tflops = report.flops_per_sample * report.samples_per_s / 1e12;
        report.mfu = report.peak_tflops.map(|p| report.achieved_tflops / p);
        report
    };

    let mut reports = Vec::new();
    if matches!(options.modes, Modes::Forward | Modes::Both) {
        // Forward FLOPs: the same shape with nothing trained runs every part
        // forward only (the head at supervised positions, as the loss does).
        let no_targets: [String; 0] = [];
        let mut forward = trial_shape(&config, options, &shape, &no_targets, false);
        forward.method = Method::Lora;
        let flops = per_example_flops(&forward);
        model.set_training(false);
        let (seconds, first, last) =
            time_steps(options.warmup, options.steps, options.device, || {
                let loss = tch::no_grad(|| model.loss(&input))?;
                Ok(loss.mean()?.f_double_value(&[])?)
            })?;
        reports.push(finish(
            Report {
                flops_per_sample: flops,
                hardware_flops_per_sample: flops,
                ..base.clone()
            },
            seconds,
            (first, last),
        ));
    }
    if matches!(options.modes, Modes::Train | Modes::Both) {
        let model_flops =
            per_example_flops(&trial_shape(&config, options, &shape, &targets, false));
        let executed = trial_shape(
            &config,
            options,
            &shape,
            &targets,
            options.gradient_checkpointing,
        );
        let hardware_flops = per_example_flops(&executed);
        let estimate = estimate_memory(&executed).total as f64 / MIB;
        let (seconds, first, last) = train_loop(options, &model, &trainables, &input)?;
        let mut report = finish(
            Report {
                mode: "train",
                flops_per_sample: model_flops,
                hardware_flops_per_sample: hardware_flops,
                est_memory_mb: Some(estimate),
                ..base.clone()
            },
            seconds,
            (first, last),
        );
        let measured = report.peak_gpu_mb.or(report.peak_rss_mb);
        report.est_error_pct = measured.map(|m| 100.0 * (estimate - m) / m);
        reports.push(report);
    }
    Ok(reports)
}

/// Times optimiser steps of one micro-batch each.
fn train_loop(
    options: &BenchOptions,
    model: &PaliGemma,
    trainables: &Trainables,
    input: &ModelInput,
) -> Result<(f64, f64, f64), BenchError> {
    let mut optimizer = AdamW::new(AdamWConfig::default(), trainables.optimizer_params())?;
    model.set_training(true);
    let mut micro: i64 = 0;
    let seed = i64::from_ne_bytes(options.seed.to_ne_bytes()) & i64::MAX;
    time_steps(options.warmup, options.steps, options.device, || {
        optimizer.zero_grad()?;
        let backward = BackwardOptions {
            label_smoothing: 0.0,
            grad_scale: 1.0,
            checkpointing: options.gradient_checkpointing,
            seed: seed.wrapping_add(micro),
        };
        micro += 1;
        let loss = loss_backward(model, input, &backward)?.mean()?;
        optimizer.clip_grad_norm(MAX_GRAD_NORM)?;
        optimizer.step(LR)?;
        Ok(loss.f_double_value(&[])?)
    })
}

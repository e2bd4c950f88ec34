//! The typed experiment spec. Every key is documented in `defaults.toml`,
//! which is also the lowest configuration layer; these structs only give the
//! keys their types.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::variant::{Resolution, Size};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Spec {
    /// Consumed by the loader (a base file layered below this one).
    #[serde(default, skip_serializing)]
    pub extends: Option<String>,
    pub experiment: Experiment,
    pub data: Data,
    pub model: Model,
    pub train: Train,
    pub lora: Lora,
    pub qlora: Qlora,
    pub eval: Eval,
    pub sweep: Sweep,
    pub resources: Resources,
    pub slurm: Slurm,
    pub synthetic: Synthetic,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Experiment {
    /// Defaults to the spec file's stem.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub seed: u64,
    pub results: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Data {
    pub path: String,
    pub task: Task,
    pub max_prefix_tokens: u32,
    pub max_suffix_tokens: u32,
    pub skip_invalid: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Task {
    Auto,
    Json,
    Detect,
    Segment,
    Text,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Model {
    /// A Hugging Face id, a local folder, or `tiny`; absent = composed from
    /// size, variant and resolution.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkpoint: Option<String>,
    pub size: Size,
    pub resolution: Resolution,
    pub variant: Variant,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<String>,
    pub freeze_vision: bool,
    pub train_projector: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attn_logit_softcapping: Option<Softcap>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub final_logit_softcapping: Option<Softcap>,
    pub attention: Attention,
}

/// How attention is computed (`model.attention`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Attention {
    /// Keeps no `[B, heads, L, L]` tensor for the backward pass.
    #[default]
    MemoryEfficient,
    /// transformers' eager path, op for op (the reference).
    Eager,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Variant {
    Pt,
    Mix,
}

impl Variant {
    pub fn as_str(self) -> &'static str {
        match self {
            Variant::Pt => "pt",
            Variant::Mix => "mix",
        }
    }
}

/// A soft-capping override: `false` turns it off, a number sets the cap.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Softcap {
    Enabled(bool),
    Cap(f64),
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Train {
    pub method: Method,
    pub epochs: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_steps: Option<u64>,
    pub batch_size: u32,
    pub grad_accum: u32,
    pub lr: f64,
    pub weight_decay: f64,
    pub schedule: Schedule,
    pub warmup: Warmup,
    pub max_grad_norm: f64,
    pub precision: Precision,
    pub label_smoothing: f64,
    pub gradient_checkpointing: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Method {
    Lora,
    Qlora,
    Full,
    /// No model: a built-in stand-in that sleeps, reports made-up metrics
    /// and fails on demand (`[synthetic]`), for testing the scheduler.
    Synthetic,
}

impl Method {
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Lora => "lora",
            Method::Qlora => "qlora",
            Method::Full => "full",
            Method::Synthetic => "synthetic",
        }
    }
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Schedule {
    Constant,
    Linear,
    Cosine,
}

/// Warm-up as a fraction of the total steps (a float below 1) or a step
/// count (an integer).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Warmup {
    Steps(u64),
    Ratio(f64),
}

/// Compute precision; `auto` is bf16 on CUDA and f32 on CPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    Auto,
    Bf16,
    F32,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Lora {
    pub r: u32,
    pub alpha: f64,
    pub dropout: f64,
    pub targets: Vec<String>,
    pub rslora: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Qlora {
    pub quant: Quant,
    pub double_quant: bool,
    pub block_size: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Quant {
    Nf4,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Eval {
    pub every: EvalEvery,
    pub generate: bool,
    pub max_new_tokens: u32,
    pub batch_size: u32,
    pub select: Select,
}

/// `"epoch"` or a number of optimiser steps.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum EvalEvery {
    Steps(u64),
    Named(String),
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Select {
    pub metric: String,
    pub mode: SelectMode,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SelectMode {
    Max,
    Min,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Sweep {
    pub strategy: Strategy,
    pub samples: u32,
    /// TPE ranks candidates by expected improvement per unit of the plan's
    /// estimated cost.
    pub cost_aware: bool,
    pub max_trials: u32,
    /// Dotted spec key -> a list of values, or a distribution for `random`.
    pub axes: BTreeMap<String, Axis>,
    /// Groups of axes whose lists are walked together instead of crossed.
    pub zip: Vec<Vec<String>>,
    /// Rules dropping every trial that matches all the rule's key/values.
    pub exclude: Vec<BTreeMap<String, serde_json::Value>>,
    /// Stop trials clearly worse than the others at the same step.
    pub early_stop: EarlyStop,
    /// Trials that must have reported a step before any is compared at it.
    pub early_stop_min_trials: u32,
    /// Evaluations a trial makes before it may be stopped.
    pub early_stop_warmup: u32,
    /// The rungs of `early_stop = "asha"`.
    pub asha: AshaRungs,
    /// When to stop launching trials.
    pub budget: SweepBudget,
}

/// `sweep.budget`: launches stop when the next trial's estimated cost would
/// take the sweep past `gpu_hours`, or once `trials` have been launched.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SweepBudget {
    /// Device-hours (a CPU slot's hour counts as one); 0 = no limit.
    pub gpu_hours: f64,
    /// 0 = no limit.
    pub trials: u32,
}

/// `⌊log_η(max/min)⌋` in integers: the largest s with `min·η^s <= max`.
pub fn s_max(min: u64, max: u64, eta: u32) -> u32 {
    let mut s = 0;
    let mut r = min;
    while let Some(next) = r.checked_mul(u64::from(eta)) {
        if next > max {
            break;
        }
        r = next;
        s += 1;
    }
    s
}

/// Successive halving's resource levels, lowest first, laid down from the
/// top as Hyperband lays its rounds: `max·η^-k` for k = s, …, 1, 0 (integer
/// division), s = [`s_max`]. The top is `max` and the ratios stay η even
/// when `max` is no power of η times `min`. Needs `1 <= min <= max`, `η >= 2`.
pub fn rung_ladder(min: u64, max: u64, eta: u32) -> Vec<u64> {
    let s = s_max(min, max, eta);
    (0..=s).rev().map(|k| max / u64::from(eta).pow(k)).collect()
}

/// Asynchronous successive halving's resource levels, in optimiser steps
/// (rungs at `max_steps / eta^k` down to `min_steps`, see `search::asha`)
/// or, when `max_epochs` is set, in epochs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AshaRungs {
    pub min_steps: u64,
    /// The top rung: the trials' training length. 0 = unset.
    pub max_steps: u64,
    pub min_epochs: u64,
    /// The top rung in epochs (`train.epochs`). 0 = rungs in steps.
    pub max_epochs: u64,
    /// The reduction factor: the top 1/eta of a rung is promoted.
    pub eta: u32,
}

impl AshaRungs {
    /// Whether the rungs count epochs (else optimiser steps).
    pub fn in_epochs(&self) -> bool {
        self.max_epochs > 0
    }

    /// The lowest and the top rung, in the rungs' unit.
    pub fn range(&self) -> (u64, u64) {
        if self.in_epochs() {
            (self.min_epochs, self.max_epochs)
        } else {
            (self.min_steps, self.max_steps)
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EarlyStop {
    None,
    /// The median rule: stop a trial whose selection metric at a step is
    /// worse than the median of the other trials' at that step.
    Median,
    /// Asynchronous successive halving: trials pause (checkpointed) at
    /// each rung of `sweep.asha`; the top 1/eta of a rung resume to the next.
    Asha,
    /// Brackets of ASHA over `sweep.asha`'s steps, each starting at a
    /// different rung (Li et al. 2017), trials dealt in the paper's shares.
    Hyperband,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Strategy {
    Grid,
    Random,
    /// Model-based suggestions (a tree-structured Parzen estimator), one
    /// at a time while the sweep runs, `samples` in all.
    Tpe,
}

/// One sweep axis: a list of values, or (random strategy) a distribution.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Axis {
    Values(Vec<serde_json::Value>),
    Distribution(Distribution),
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", deny_unknown_fields)]
pub enum Distribution {
    Choice(Vec<serde_json::Value>),
    Uniform([f64; 2]),
    Loguniform([f64; 2]),
}

/// The stand-in trial of `train.method = "synthetic"`: what it reports and
/// how it fails. Failures are keyed on attempt numbers so that a retry can
/// succeed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Synthetic {
    /// Optimiser steps it reports.
    pub steps: u64,
    /// Wall time per step, in milliseconds.
    pub step_ms: u64,
    /// Memory it claims per example of `train.batch_size` (the estimate the
    /// scheduler packs with), device grammar sizes (`512MiB`).
    pub memory_per_sample: String,
    /// Runs out of memory (exit 3) while `train.batch_size` is at least
    /// this; 0 = never (1 = always).
    pub oom_from_batch: u32,
    /// Crashes (exit 1) at this step on attempts up to `crash_attempts`; 0 = never.
    pub crash_at_step: u64,
    pub crash_attempts: u32,
    /// Goes silent at this step (until killed) on attempts up to
    /// `hang_attempts`; 0 = never.
    pub hang_at_step: u64,
    pub hang_attempts: u32,
    /// Allocates host memory without bound at this step (until the kernel's
    /// OOM killer ends it) on attempts up to `leak_attempts`; 0 = never.
    pub leak_at_step: u64,
    pub leak_attempts: u32,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Resources {
    /// Device grammar: see `crate::devices`.
    pub devices: String,
    pub max_trials_per_device: u32,
    pub memory_headroom: f64,
    pub retries: u32,
    /// Seconds; 0 = no limit.
    pub trial_timeout: u64,
    /// Seconds without a progress event before a trial is stopped; 0 = never.
    pub stall_timeout: u64,
    pub keep_checkpoints: u32,
    pub backend: Backend,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// Worker processes on this machine.
    Local,
    /// One Slurm job per trial (see [`Slurm`]).
    Slurm,
}

/// How trials become Slurm jobs (`resources.backend = "slurm"`). Empty
/// strings leave the option to the cluster's defaults.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Slurm {
    pub partition: String,
    pub account: String,
    pub qos: String,
    /// `--time` (`HH:MM:SS`, `D-HH:MM:SS`, minutes).
    pub time: String,
    pub cpus_per_trial: u32,
    /// `--mem` (`32G`).
    pub mem_per_trial: String,
    /// `--gres` for every trial (`gpu:1`); empty = none (CPU jobs).
    pub gres: String,
    /// Extra sbatch arguments, as written (`--exclusive`, `--nodelist=n1`).
    pub extra_args: Vec<String>,
    /// Trials whose estimated memory exceeds `above` get this tier's gres
    /// and/or constraint instead (the highest tier that applies wins).
    pub memory_tiers: Vec<MemoryTier>,
    /// What the worker trains on inside its job: `auto` (the GPU Slurm
    /// gave it, else the CPU), `cuda`, or `cpu`.
    pub device: String,
    /// Seconds between polls of Slurm and of the trials' event files.
    pub poll_interval: f64,
    /// At most this many of the sweep's jobs queued or running at once
    /// while attached; 0 = all.
    pub max_jobs: u32,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemoryTier {
    /// Device grammar size (`40GiB`).
    pub above: String,
    #[serde(default)]
    pub gres: String,
    #[serde(default)]
    pub constraint: String,
}

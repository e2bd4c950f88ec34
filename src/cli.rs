//! Command-line arguments (clap derive). Raw arguments only: each command
//! turns them into a validated plan before doing anything.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "palisweep",
    version,
    about = "Declarative LoRA/QLoRA fine-tuning and hyperparameter sweeps of PaliGemma 2",
    long_about = "Declarative LoRA/QLoRA fine-tuning and hyperparameter sweeps of PaliGemma 2.\n\n\
        A TOML spec declares the experiment; `palisweep plan SPEC` shows the trials it expands to, \
        their estimated memory and cost, and where each would run.\n\n\
        Exit codes: 0 success, 1 failure, 2 bad input (spec, flags, dataset), 130 interrupted."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Expand a spec into trials and show ids, varying values, estimated
    /// memory, relative cost and the device each would start on.
    Plan(PlanArgs),
    /// Print the embedded, commented default spec (every key, documented).
    Defaults,
    /// Download every checkpoint a spec names into the Hugging Face cache
    /// (and generate its tiny checkpoints), for machines without internet.
    Fetch(FetchArgs),
    /// Write a tiny random checkpoint with the structure of a published one.
    InitTiny(InitTinyArgs),
    /// Write the synthetic dataset of coloured shapes (Roboflow JSONL layout).
    InitData(InitDataArgs),
    /// Loss (and with --generate the task metrics) of a checkpoint on a dataset split.
    Eval(EvalArgs),
    /// Generate the suffix for one image and prefix.
    Predict(PredictArgs),
    /// Time forward passes (evaluation) on a random or given checkpoint.
    Bench(BenchArgs),
}

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// A checkpoint folder, or `tiny` / `small` for a random checkpoint of
    /// that preset (see --size and --resolution).
    #[arg(long, default_value = "tiny")]
    pub checkpoint: String,
    #[arg(long, default_value = "3b", value_parser = ["3b", "10b", "28b"])]
    pub size: String,
    #[arg(long, default_value = "224", value_parser = ["224", "448", "896"])]
    pub resolution: String,
    /// Dataset root whose train split feeds the batches (default: synthetic
    /// examples with a 24-token suffix).
    #[arg(long)]
    pub data: Option<PathBuf>,
    #[arg(long, default_value_t = 4)]
    pub batch: usize,
    /// Timed steps (after --warmup untimed ones).
    #[arg(long, default_value_t = 10)]
    pub steps: usize,
    #[arg(long, default_value_t = 2)]
    pub warmup: usize,
    /// Compute device: `cpu`, `cuda` or `cuda:N`.
    #[arg(long)]
    pub device: Option<String>,
    #[arg(long, default_value = "auto", value_parser = ["auto", "bf16", "f32"])]
    pub precision: String,
    /// Torch threads on the CPU (default: all cores).
    #[arg(long)]
    pub threads: Option<i32>,
    /// Where random preset checkpoints are cached.
    #[arg(long, default_value = "results/.cache")]
    pub cache: PathBuf,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct FetchArgs {
    #[command(flatten)]
    pub spec: SpecArgs,
}

#[derive(Debug, Args)]
pub struct InitDataArgs {
    /// `json` (shape and colour as JSON) or `detect` (`<loc>` boxes).
    #[arg(long, default_value = "json", value_parser = ["json", "detect"])]
    pub task: String,
    /// Output folder (gets train/, valid/, test/).
    #[arg(long)]
    pub out: PathBuf,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[arg(long, default_value_t = 48)]
    pub train: usize,
    #[arg(long, default_value_t = 12)]
    pub valid: usize,
    #[arg(long, default_value_t = 12)]
    pub test: usize,
    /// Image side in pixels.
    #[arg(long, default_value_t = 64)]
    pub image_size: u32,
}

#[derive(Debug, Args)]
pub struct InitTinyArgs {
    /// Which published checkpoint to scale down.
    #[arg(long, default_value = "3b", value_parser = ["3b", "10b", "28b"])]
    pub size: String,
    /// Its image side: the tiny twin keeps the 1 : 4 : 16 image-token ratio.
    #[arg(long, default_value = "224", value_parser = ["224", "448", "896"])]
    pub resolution: String,
    /// Output folder (Hugging Face layout).
    #[arg(long)]
    pub out: PathBuf,
    /// Seed of the random weights.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

/// Where a command finds its checkpoint.
#[derive(Debug, Args)]
pub struct CheckpointArgs {
    /// A checkpoint folder (HF layout), a Hugging Face id
    /// (`google/paligemma2-3b-pt-224`), or `tiny` / `tiny-<size>-<resolution>`.
    #[arg(long)]
    pub checkpoint: String,
    /// Hub revision (commit or tag) for a Hugging Face id.
    #[arg(long)]
    pub revision: Option<String>,
    /// Compute device: `cpu`, `cuda` or `cuda:N` (default: cuda:0 when available).
    #[arg(long)]
    pub device: Option<String>,
    /// Compute precision: `auto` (bf16 on CUDA, f32 on CPU), `bf16` or `f32`.
    #[arg(long, default_value = "auto", value_parser = ["auto", "bf16", "f32"])]
    pub precision: String,
    /// Where generated tiny checkpoints are cached.
    #[arg(long, default_value = "results/.cache")]
    pub cache: PathBuf,
}

#[derive(Debug, Args)]
pub struct EvalArgs {
    #[command(flatten)]
    pub checkpoint: CheckpointArgs,
    /// Dataset root (Roboflow PaliGemma JSONL export).
    #[arg(long)]
    pub data: PathBuf,
    /// `train`, `valid` or `test`.
    #[arg(long, default_value = "valid")]
    pub split: String,
    #[arg(long, default_value_t = 8)]
    pub batch_size: usize,
    /// Suffixes longer than this many tokens are truncated.
    #[arg(long, default_value_t = 512)]
    pub max_suffix_tokens: usize,
    /// Also generate and score the task metrics.
    #[arg(long)]
    pub generate: bool,
    /// Generation budget with --generate.
    #[arg(long, default_value_t = 128)]
    pub max_new_tokens: usize,
    /// `json`, `detect`, `segment`, `text` or `auto` (guessed from the suffixes).
    #[arg(long, default_value = "auto")]
    pub task: String,
    /// Print JSON: loss, examples, tokens, metrics.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct PredictArgs {
    #[command(flatten)]
    pub checkpoint: CheckpointArgs,
    /// The image.
    #[arg(long)]
    pub image: PathBuf,
    /// The prompt, e.g. `detect cat ; dog` or `extract JSON`.
    #[arg(long)]
    pub prefix: String,
    #[arg(long, default_value_t = 128)]
    pub max_new_tokens: usize,
}

/// The layers a spec-reading command accepts on top of the spec file.
#[derive(Debug, Args)]
pub struct SpecArgs {
    /// The experiment spec (TOML).
    pub spec: PathBuf,
    /// Override a spec key: `--set train.lr=3e-5` (repeatable; TOML values,
    /// bare words are strings; keys may be quoted: `sweep.axes."train.lr"=[1e-5]`).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub sets: Vec<String>,
}

#[derive(Debug, Args)]
pub struct PlanArgs {
    #[command(flatten)]
    pub spec: SpecArgs,
    /// Devices to plan for, overriding `resources.devices`:
    /// `auto` | `cpu` | `cpu:N` | `cuda` | `cuda:0,2` | `cuda:80GiB,80GiB` | `cuda:4x24GiB`.
    #[arg(long, value_name = "DEVICES")]
    pub devices: Option<String>,
    /// Accept a sweep larger than `sweep.max_trials`.
    #[arg(long)]
    pub yes: bool,
    /// Print the plan as JSON.
    #[arg(long)]
    pub json: bool,
}

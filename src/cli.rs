//! Command-line arguments (clap derive). Raw arguments only: each command
//! turns them into a validated plan before doing anything.

use std::path::PathBuf;

use clap::builder::PossibleValuesParser;
use clap::{ArgGroup, Args, Parser, Subcommand};

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
    /// Run a sweep: every trial on the available devices, with retries,
    /// out-of-memory back-off and progress. Running it again resumes it.
    Run(RunArgs),
    /// Follow a sweep again as it was last run (`run --detach`, or a run
    /// whose orchestrator stopped): Slurm jobs already submitted are
    /// followed, not submitted again; the rest is resumed.
    Attach(AttachArgs),
    /// Trials by state, running trials with their step and loss, failures
    /// with reasons (live while a sweep runs).
    Status(StatusArgs),
    /// The sweeps recorded under a results root.
    Ls(LsArgs),
    /// One trial: resolved config, attempts, metric summary, artifacts;
    /// with --predictions, the examples of one of its evaluations.
    Show(ShowArgs),
    /// Every metric of a sweep as CSV or JSON lines, on stdout.
    ExportMetrics(ExportMetricsArgs),
    /// Write the checkpoint-selection report of a sweep (Markdown and a
    /// self-contained HTML page with plots).
    Report(ReportArgs),
    /// Replay a finished sweep's recorded curves and wall times (or a
    /// synthetic surface) under other search strategies, without training:
    /// what each would have picked and at what share of the grid's compute.
    Simulate(SimulateArgs),
    /// Run a finished trial again from what was recorded and compare it,
    /// metric by metric, with the original (bit for bit on CPU).
    Rerun(RerunArgs),
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
    /// Copy a trial's PEFT adapter out, or (--merge) write its base with the
    /// adapter merged in as a full checkpoint.
    Export(ExportArgs),
    /// Time training steps and forward passes on a random or given checkpoint.
    Bench(BenchArgs),
    /// Run one trial from its folder's `trial.toml` (what the scheduler runs).
    Worker(WorkerArgs),
}

#[derive(Debug, Args)]
pub struct WorkerArgs {
    /// The trial folder (`<results>/<sweep>/trials/<id>/`).
    #[arg(long)]
    pub trial: PathBuf,
    /// Attempt number (retries count up from 1).
    #[arg(long, default_value_t = 1)]
    pub attempt: u32,
    /// Override a key of `trial.toml` (the scheduler passes an OOM back-off's
    /// batch size this way).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub sets: Vec<String>,
    /// For debugging by hand: write `trial.toml` from this spec first (when
    /// the folder has none); the spec must expand to one trial, or name it
    /// with --trial-id.
    #[arg(long)]
    pub spec: Option<PathBuf>,
    #[arg(long)]
    pub trial_id: Option<String>,
    /// Stop (checkpoint, exit 4) when standard input closes: the parent is gone.
    #[arg(long)]
    pub watch_stdin: bool,
    /// Stop (checkpoint, exit 4) after this optimiser step, as if asked to:
    /// an ASHA rung, or for testing resume. At the last step it finishes.
    #[arg(long)]
    pub stop_after: Option<u64>,
    /// Stop (checkpoint, exit 4) after this epoch's last step and its
    /// evaluation: an ASHA rung in epochs. At the last step it finishes.
    #[arg(long, conflicts_with = "stop_after")]
    pub stop_after_epoch: Option<u64>,
    /// Torch threads (default: all cores). CPU results depend on it.
    #[arg(long)]
    pub threads: Option<i32>,
    /// `cpu`, `cuda` or `cuda:N` (default: the first visible GPU, else CPU).
    #[arg(long)]
    pub device: Option<String>,
    /// Switch on torch's deterministic algorithms (what `rerun` does; set
    /// `CUBLAS_WORKSPACE_CONFIG=:4096:8` too on CUDA).
    #[arg(long)]
    pub deterministic: bool,
}

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// A checkpoint folder, or `tiny` / `small` / `published` for a random
    /// checkpoint of that preset (see --size and --resolution), written
    /// once into --cache.
    #[arg(long, default_value = "tiny")]
    pub checkpoint: String,
    #[arg(long, default_value = "3b", value_parser = ["3b", "10b", "28b"])]
    pub size: String,
    #[arg(long, default_value = "224", value_parser = ["224", "448", "896"])]
    pub resolution: String,
    /// Dataset root whose train split feeds the batch (default: synthetic
    /// examples with a 19-token suffix).
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// How the base is adapted for the training steps (forward-only
    /// evaluation runs the same adapted model).
    #[arg(long, default_value = "lora", value_parser = ["lora", "qlora", "full"])]
    pub method: String,
    /// Recompute each layer in the backward instead of keeping activations.
    #[arg(long)]
    pub gradient_checkpointing: bool,
    /// How attention is computed (as `model.attention` in a spec).
    #[arg(long, default_value = "memory_efficient", value_parser = ["memory_efficient", "eager"])]
    pub attention: String,
    /// `train`, `forward` (evaluation) or `both` (forward first).
    #[arg(long, default_value = "both", value_parser = ["both", "train", "forward"])]
    pub mode: String,
    #[arg(long, default_value_t = 4)]
    pub batch: usize,
    /// Timed steps (after --warmup untimed ones).
    #[arg(long, default_value_t = 10)]
    pub steps: usize,
    #[arg(long, default_value_t = 2)]
    pub warmup: usize,
    #[arg(long, default_value_t = 8)]
    pub lora_r: u32,
    #[arg(long, default_value_t = 16.0)]
    pub lora_alpha: f64,
    /// 0 by default, so runs compare with any other implementation.
    #[arg(long, default_value_t = 0.0)]
    pub lora_dropout: f64,
    /// Seed of the random checkpoint and of the `LoRA` initialisation.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Compute device: `cpu`, `cuda` or `cuda:N`.
    #[arg(long)]
    pub device: Option<String>,
    #[arg(long, default_value = "auto", value_parser = ["auto", "bf16", "f32"])]
    pub precision: String,
    /// Torch threads on the CPU (default: all cores).
    #[arg(long)]
    pub threads: Option<i32>,
    /// Dense peak of the device in TFLOP/s, for MFU (default: the bf16 peak
    /// of known GPUs by name; none on the CPU).
    #[arg(long)]
    pub peak_tflops: Option<f64>,
    /// Where random preset checkpoints are cached.
    #[arg(long, default_value = "results/.cache")]
    pub cache: PathBuf,
    /// One JSON object per mode and line.
    #[arg(long)]
    pub json: bool,
    /// Write the encoded batch as safetensors (for `scripts/bench/hf_bench.py`).
    #[arg(long, hide = true)]
    pub dump_batch: Option<PathBuf>,
    /// Write the checkpoint, print its folder and exit.
    #[arg(long)]
    pub prepare_only: bool,
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
    /// A PEFT LoRA adapter folder (`adapter_config.json` +
    /// `adapter_model.safetensors`, ours or PEFT's) applied on the checkpoint.
    #[arg(long, value_name = "DIR")]
    pub adapter: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct ExportArgs {
    /// A trial id (or a unique prefix, or SWEEP/ID, as `show` takes it;
    /// its `best/` adapter under --results, else `final/`), a trial folder,
    /// or an adapter folder.
    #[arg(value_name = "TRIAL|ADAPTER_DIR")]
    pub target: String,
    /// Output folder (created; refused if it exists and is not empty).
    #[arg(long)]
    pub out: PathBuf,
    /// Write a full checkpoint (Hugging Face layout, hub tensor names,
    /// tokenizer and preprocessor files copied) with the adapter merged into
    /// the full-precision base, even when it was trained against NF4.
    #[arg(long)]
    pub merge: bool,
    /// The results tree trial ids are looked up in.
    #[arg(long, default_value = "results")]
    pub results: PathBuf,
    /// The base to merge into (default: the adapter's `base_model_name_or_path`).
    #[arg(long)]
    pub checkpoint: Option<String>,
    /// Hub revision of the base (default: the adapter's `revision`).
    #[arg(long)]
    pub revision: Option<String>,
    /// Dtype of the merged weights.
    #[arg(long, default_value = "bf16", value_parser = ["bf16", "f32"])]
    pub dtype: String,
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
    /// With --generate: also write each example's answer and score to FILE
    /// (gzip-compressed JSON lines, as trials keep them in predictions/).
    #[arg(long, value_name = "FILE", requires = "generate")]
    pub predictions: Option<PathBuf>,
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
pub struct RunArgs {
    #[command(flatten)]
    pub spec: SpecArgs,
    /// Devices to run on, overriding `resources.devices`:
    /// `auto` | `cpu` | `cpu:N` | `cuda` | `cuda:0,2`; made-up inventories
    /// (`cuda:2x24GiB`, also written `fake-cuda:2x24GiB`) run synthetic trials only.
    #[arg(long, value_name = "DEVICES")]
    pub devices: Option<String>,
    /// The results root, overriding `experiment.results`.
    #[arg(long, value_name = "DIR")]
    pub results: Option<PathBuf>,
    /// Accept a sweep larger than `sweep.max_trials`.
    #[arg(long)]
    pub yes: bool,
    /// No progress display: only failures and the summary.
    #[arg(long)]
    pub quiet: bool,
    /// Seconds a worker gets to checkpoint after SIGTERM before it is
    /// killed (0 to 86400).
    #[arg(long, default_value_t = 30.0, value_name = "SECONDS", value_parser = parse_kill_grace)]
    pub kill_grace: f64,
    /// Where trials run, overriding `resources.backend`.
    #[arg(long, value_parser = ["local", "slurm"])]
    pub backend: Option<String>,
    #[command(flatten)]
    pub follow: FollowArgs,
}

/// How the orchestrator follows Slurm jobs.
#[derive(Debug, Args, Clone, Copy)]
pub struct FollowArgs {
    /// Slurm: submit the trials and return; `palisweep attach SWEEP` follows them.
    #[arg(long)]
    pub detach: bool,
    /// Slurm: what Ctrl-C does to the running jobs without asking: cancel
    /// them (`--cancel-on-exit`, they checkpoint) or leave them running
    /// (`--cancel-on-exit=false`). Default: ask on a terminal, else leave them.
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    pub cancel_on_exit: Option<bool>,
}

#[derive(Debug, Args)]
pub struct AttachArgs {
    /// The sweep's name (its folder under the results root).
    pub sweep: String,
    #[arg(long, default_value = "results", help = RESULTS_HELP)]
    pub results: PathBuf,
    /// No progress display: only failures and the summary.
    #[arg(long)]
    pub quiet: bool,
    /// Seconds a worker gets to checkpoint after SIGTERM before it is
    /// killed (0 to 86400).
    #[arg(long, default_value_t = 30.0, value_name = "SECONDS", value_parser = parse_kill_grace)]
    pub kill_grace: f64,
    #[command(flatten)]
    pub follow: FollowArgs,
}

/// The longest `--kill-grace`: a day is more than any checkpoint takes.
pub const MAX_KILL_GRACE_S: f64 = 86_400.0;

/// `--kill-grace`: a finite number of seconds in `0..=MAX_KILL_GRACE_S`
/// (it becomes a `Duration`, which NaN, negatives and infinity are not).
fn parse_kill_grace(text: &str) -> Result<f64, String> {
    let seconds: f64 = text
        .trim()
        .parse()
        .map_err(|_| "expected a number of seconds, e.g. 30".to_owned())?;
    if seconds.is_finite() && (0.0..=MAX_KILL_GRACE_S).contains(&seconds) {
        Ok(seconds)
    } else {
        Err(format!(
            "expected a number of seconds from 0 to {MAX_KILL_GRACE_S}, e.g. 30"
        ))
    }
}

/// The results root of the read-only commands.
const RESULTS_HELP: &str = "The results root (default: results/)";

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// A sweep name or id prefix (default: the latest).
    pub sweep: Option<String>,
    #[arg(long, default_value = "results", help = RESULTS_HELP)]
    pub results: PathBuf,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct LsArgs {
    #[arg(long, default_value = "results", help = RESULTS_HELP)]
    pub results: PathBuf,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct ShowArgs {
    /// A trial id (or a unique prefix, or SWEEP/ID).
    pub trial: String,
    #[arg(long, default_value = "results", help = RESULTS_HELP)]
    pub results: PathBuf,
    #[arg(long, conflicts_with = "predictions")]
    pub json: bool,
    /// List the examples of one evaluation with generation: index, score,
    /// image, reference and prediction (by default the validation at the
    /// trial's best step, else its latest).
    #[arg(long)]
    pub predictions: bool,
    /// With --predictions: `val` or `test`.
    #[arg(long, default_value = "val", requires = "predictions", value_parser = ["val", "test"])]
    pub split: String,
    /// With --predictions: the evaluation at this step.
    #[arg(long, value_name = "N", requires = "predictions")]
    pub step: Option<u64>,
    /// With --predictions: `table` (cells cut to fit) or `jsonl` (the
    /// stored lines, whole).
    #[arg(long, default_value = "table", requires = "predictions", value_parser = ["table", "jsonl"])]
    pub format: String,
}

#[derive(Debug, Args)]
pub struct ReportArgs {
    /// A sweep name or id prefix.
    pub sweep: String,
    #[arg(long, default_value = "results", help = RESULTS_HELP)]
    pub results: PathBuf,
    /// Where to write report.md and report.html (default: <results>/<sweep>/report/).
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Also recommend the best choice whose peak memory fits this (`24GiB`).
    #[arg(long, value_name = "SIZE")]
    pub budget_memory: Option<String>,
    /// Rank by this metric instead of the sweep's `eval.select` metric.
    #[arg(long, value_name = "NAME")]
    pub metric: Option<String>,
    /// Validation examples in the prediction gallery (pick vs runner-up;
    /// the worst, the best and some at random); 0 turns it off.
    #[arg(long, value_name = "N", default_value_t = crate::report::gallery::DEFAULT_SIZE)]
    pub gallery: usize,
}

#[derive(Debug, Args)]
pub struct RerunArgs {
    /// A trial id (or a unique prefix, or SWEEP/ID).
    pub trial: String,
    #[arg(long, default_value = "results", help = RESULTS_HELP)]
    pub results: PathBuf,
    /// Rerun even when the dataset, checkpoint or versions differ.
    #[arg(long)]
    pub force: bool,
    /// Print the comparison as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
#[command(group(
    ArgGroup::new("source")
        .required(true)
        .multiple(true)
        .args(["spec", "from", "recorded", "surface"])
))]
pub struct SimulateArgs {
    /// A spec: its sweep (name and results root) is replayed unless --from
    /// names another, ranked by its `eval.select` metric, with its median
    /// rule's `sweep.early_stop_min_trials` and `_warmup`.
    pub spec: Option<PathBuf>,
    /// The sweep to replay: a name or id prefix in the store under --results.
    #[arg(long, value_name = "SWEEP")]
    pub from: Option<String>,
    #[arg(long, value_name = "DIR", help = RESULTS_HELP)]
    pub results: Option<PathBuf>,
    /// Replay a recorded-sweep file (what --export writes).
    #[arg(long, value_name = "FILE", conflicts_with_all = ["spec", "from", "surface"])]
    pub recorded: Option<PathBuf>,
    /// Replay a synthetic response surface, recorded afresh with each
    /// seed's noise.
    #[arg(
        long,
        value_name = "NAME",
        conflicts_with_all = ["spec", "from"],
        value_parser = PossibleValuesParser::new(crate::search::surface::NAMES)
    )]
    pub surface: Option<String>,
    /// Rank by this metric instead of the sweep's selection metric (--from).
    #[arg(long, value_name = "NAME")]
    pub metric: Option<String>,
    /// Seeds 0..N: each draws another order of trials and other TPE draws.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    pub seeds: u64,
    /// Strategies to replay, comma-separated.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "random,median,asha,hyperband,tpe,tpe+asha",
        value_parser = PossibleValuesParser::new(crate::search::simulate::Strategy::NAMES)
    )]
    pub strategies: Vec<String>,
    /// The budget of the regret column, as a fraction of the grid's compute.
    #[arg(long, default_value_t = 0.25, value_parser = parse_fraction)]
    pub budget_fraction: f64,
    /// "Within 1%" of the grid's best, as a fraction.
    #[arg(long, default_value_t = 0.01, value_parser = parse_fraction)]
    pub tolerance: f64,
    /// Trials trained at once in simulated time.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u64).range(1..=4096))]
    pub workers: u64,
    /// ASHA's and Hyperband's reduction factor.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(2..=100))]
    pub eta: u32,
    /// The least steps of the first rung (default: the first evaluation).
    #[arg(long, value_name = "STEPS", value_parser = clap::value_parser!(u64).range(1..))]
    pub min_resource: Option<u64>,
    #[arg(long, default_value = "text", value_parser = ["text", "json"])]
    pub format: String,
    /// Write what would be replayed (the recorded sweep, or the surface at
    /// seed 0) as a recorded-sweep file, and stop.
    #[arg(long, value_name = "FILE")]
    pub export: Option<PathBuf>,
}

/// A fraction in (0, 1].
fn parse_fraction(text: &str) -> Result<f64, String> {
    let x: f64 = text
        .trim()
        .parse()
        .map_err(|_| "expected a fraction, e.g. 0.25".to_owned())?;
    if x > 0.0 && x <= 1.0 {
        Ok(x)
    } else {
        Err("expected a fraction above 0 and at most 1, e.g. 0.25".to_owned())
    }
}

#[derive(Debug, Args)]
pub struct ExportMetricsArgs {
    /// A sweep name or id prefix.
    pub sweep: String,
    #[arg(long, default_value = "csv", value_parser = ["csv", "jsonl"])]
    pub format: String,
    #[arg(long, default_value = "results", help = RESULTS_HELP)]
    pub results: PathBuf,
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
    /// Plan for this backend, overriding `resources.backend`; `slurm` shows
    /// the sbatch line each trial would get.
    #[arg(long, value_parser = ["local", "slurm"])]
    pub backend: Option<String>,
}

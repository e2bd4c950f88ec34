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

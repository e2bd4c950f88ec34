//! palisweep: declarative LoRA/QLoRA fine-tuning and hyperparameter sweeps
//! of PaliGemma 2.
//!
//! `spec` (what the user declares) → `sweep` (the trials it expands to) →
//! `plan` (estimates and placement, using `estimate` and `devices`); `model`
//! is the network itself; `commands` wire them to the CLI.
pub mod app;
pub mod bench;
pub mod cli;
pub mod commands;
pub mod data;
pub mod devices;
pub mod error;
pub mod estimate;
pub mod layout;
pub mod metrics;
pub mod model;
pub mod plan;
pub mod report;
pub mod rerun;
pub mod rng;
pub mod scheduler;
pub mod spec;
pub mod sweep;
pub mod track;
pub mod train;
pub mod worker;

#[cfg(test)]
mod test_support;

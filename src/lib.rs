//! palisweep: declarative LoRA/QLoRA fine-tuning and hyperparameter sweeps
//! of PaliGemma 2.
//!
//! The flow (`docs/architecture.md` draws it): `spec` (what the user
//! declares) → `sweep` (the trials it expands to) → `plan` (estimates and
//! placement, using `estimate` and `devices`) → `scheduler` (runs each trial
//! as a `worker` process, whose work is `train` on `model`) → `events` (the
//! one stream the scheduler produces) → `track` (its consumers: the store,
//! TensorBoard, progress) → `report`. `data` and `metrics` serve training and
//! evaluation; `preflight` checks a sweep's datasets and checkpoints once
//! before `run` or `plan` goes on; `search` holds the adaptive strategies
//! (TPE, ASHA, Hyperband, budgets) and the replay simulator as a pure
//! library; `commands` wire everything to the CLI, and `error` maps errors
//! to exit codes.
pub mod allocator;
pub mod app;
pub mod bench;
pub mod cli;
pub mod commands;
pub mod data;
pub mod devices;
pub mod error;
pub mod estimate;
pub mod events;
pub mod export;
pub mod jsonl;
pub mod layout;
pub mod metrics;
pub mod model;
pub mod plan;
pub mod preflight;
pub mod report;
pub mod rerun;
pub mod rng;
pub mod scheduler;
pub mod search;
pub mod secrets;
pub mod spec;
pub mod sweep;
pub mod track;
pub mod train;
pub mod variant;
pub mod worker;

#[cfg(test)]
mod test_support;

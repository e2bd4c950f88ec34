//! The queue both backends run from: a trial waiting for an attempt, with
//! the batch shape its next attempt uses, and what a sweep's dispatch
//! reports when it ends.

use crate::estimate::memory::MemoryEstimate;
use crate::events::event::{Counts, SweepStatus, TrialInfo};
use crate::layout::TrialDir;

/// A trial to run in this sweep.
#[derive(Clone, Debug)]
pub struct QueuedTrial {
    pub info: TrialInfo,
    pub dir: TrialDir,
    /// The estimate at `info.batch_size`.
    pub memory: MemoryEstimate,
    /// The batch shape the next attempt runs (after earlier back-offs).
    pub batch_size: u32,
    pub grad_accum: u32,
    /// The next attempt's number (attempts count across runs).
    pub next_attempt: u32,
    /// A Slurm job an earlier run submitted and never saw end: followed,
    /// not submitted again.
    pub open_job: Option<OpenJob>,
}

/// An attempt running (or queued) as a Slurm job that no scheduler has
/// seen end.
#[derive(Clone, Debug, PartialEq)]
pub struct OpenJob {
    pub attempt: u32,
    pub job: String,
    pub start: f64,
}

impl QueuedTrial {
    /// The worker's `--set`s for the batch shape an out-of-memory back-off
    /// chose (none while it runs the spec's).
    pub fn backoff_sets(&self) -> Vec<String> {
        if self.batch_size == self.info.batch_size && self.grad_accum == self.info.grad_accum {
            return Vec::new();
        }
        vec![
            format!("train.batch_size={}", self.batch_size),
            format!("train.grad_accum={}", self.grad_accum),
        ]
    }

    /// The estimate at the current batch size: the batch-proportional
    /// parts scale, weights and optimiser state do not.
    pub fn memory_now(&self) -> u64 {
        let m = &self.memory;
        let per_batch = m.activations + m.attention + m.logits;
        let fixed = m.total.saturating_sub(per_batch);
        let scale = f64::from(self.batch_size) / f64::from(self.info.batch_size.max(1));
        fixed + (per_batch as f64 * scale) as u64
    }
}

/// How the sweep went.
#[derive(Debug)]
pub struct Summary {
    pub status: SweepStatus,
    pub counts: Counts,
    /// (trial, reason) of each failed trial.
    pub failures: Vec<(String, String)>,
    /// (trial, Slurm job) of jobs left running when the orchestrator
    /// detached (Slurm backend).
    pub left_running: Vec<(String, String)>,
}

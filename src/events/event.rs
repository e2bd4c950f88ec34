//! The one event stream of a sweep: what the scheduler tells its consumers
//! (the store, TensorBoard, the progress display). Consumers see nothing
//! else, so each event carries what any of them needs; the scheduler never
//! calls a consumer directly.
//!
//! Events are serialisable (tagged JSON) so that a consumer can also be fed
//! from a log, and tests can compare streams.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::worker::protocol::Envelope;

/// A sweep as recorded when it starts (or resumes).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SweepInfo {
    /// `experiment.name`: the sweep's folder under the results root.
    pub name: String,
    /// The spec file as given, and its text.
    pub spec_path: String,
    pub spec_text: String,
    /// sha256 of `spec_text` (hex).
    pub spec_hash: String,
    /// The results root (absolute).
    pub results: String,
    pub total_trials: usize,
    /// The devices trials run on, in the device grammar (`cuda:0`, `cpu:2`).
    pub devices: Vec<String>,
    /// The axes the sweep varies (dotted keys), in spec order.
    pub axes: Vec<String>,
    /// The selection metric (`eval.select.metric`, e.g. `val/field_f1`).
    pub select_metric: String,
}

/// A trial as recorded before it first runs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrialInfo {
    /// The stable 12-hex id.
    pub id: String,
    /// The varying parameters (dotted key → value), as JSON values.
    pub params: BTreeMap<String, serde_json::Value>,
    /// The resolved config (`trial.toml`'s text).
    pub config: String,
    /// The trial folder (absolute).
    pub dir: String,
    pub est_memory_bytes: u64,
    pub batch_size: u32,
    pub grad_accum: u32,
    /// The plan's relative cost (`estimate/cost.rs`): the trial's share of
    /// the sweep's work, for progress estimates.
    #[serde(default = "one")]
    pub rel_cost: f64,
}

fn one() -> f64 {
    1.0
}

/// How one worker process ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AttemptOutcome {
    /// Exit 0 with a `finished` event.
    Finished,
    /// Bad spec or data (exit 2): not retried.
    InvalidInput,
    /// Out of memory (exit 3): retried with a smaller batch.
    OutOfMemory,
    /// Crashed (another exit code, a signal, no `finished` event).
    Crashed,
    /// Ran past `resources.trial_timeout`.
    TimedOut,
    /// Silent past `resources.stall_timeout`.
    Stalled,
    /// Stopped by the user (Ctrl-C).
    Stopped,
    /// Stopped early by `sweep.early_stop`.
    Pruned,
    /// Stopped at an ASHA rung (`sweep.early_stop = "asha"`), checkpointed
    /// there to be promoted or stopped for good.
    Paused,
    /// Its scheduler died (killed, host rebooted) before it saw the worker
    /// end; the next `run` records this when it finds the attempt open and
    /// its worker gone.
    OrchestratorLost,
}

/// Where a trial stands; the store's `trials.status` column holds these
/// names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TrialStatus {
    Queued,
    Running,
    Finished,
    Failed,
    /// Stopped early by `sweep.early_stop` (not a failure).
    Pruned,
    /// Stopped by the user; resumes on the next `run`.
    Interrupted,
    /// Checkpointed at an ASHA rung, waiting to be promoted; a sweep that
    /// ends with it still paused records it as pruned ("stopped at rung r").
    Paused,
}

impl TrialStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            TrialStatus::Queued => "queued",
            TrialStatus::Running => "running",
            TrialStatus::Finished => "finished",
            TrialStatus::Failed => "failed",
            TrialStatus::Pruned => "pruned",
            TrialStatus::Interrupted => "interrupted",
            TrialStatus::Paused => "paused",
        }
    }
}

/// How a whole sweep ended; the store's `sweeps.status` column.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SweepStatus {
    Running,
    /// Every trial finished (or was pruned).
    Finished,
    /// Some trial failed after its retries.
    Failed,
    Interrupted,
}

impl SweepStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            SweepStatus::Running => "running",
            SweepStatus::Finished => "finished",
            SweepStatus::Failed => "failed",
            SweepStatus::Interrupted => "interrupted",
        }
    }
}

/// Trial counts by state.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    pub finished: usize,
    pub failed: usize,
    pub pruned: usize,
    pub interrupted: usize,
}

/// Facts about where a sweep runs, recorded once per `run`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Environment {
    pub palisweep_version: String,
    pub git_sha: Option<String>,
    pub libtorch_version: Option<String>,
    pub cuda_version: Option<String>,
    pub gpu_names: Vec<String>,
    pub driver_version: Option<String>,
    pub host: String,
    /// sha256 of the dataset, when the scheduler computed it.
    pub dataset_fingerprint: Option<String>,
    /// Checkpoint fingerprints (reference → sha256 of its config and index).
    pub checkpoint_fingerprints: BTreeMap<String, String>,
}

/// One event of a sweep, in the order the scheduler saw it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum SweepEvent {
    /// A `run` began (`resumed` when the sweep was recorded before).
    SweepStarted {
        sweep: Box<SweepInfo>,
        environment: Box<Environment>,
        resumed: bool,
        /// Seconds since the Unix epoch.
        time: f64,
    },
    /// A trial of this run's expansion (finished ones too, with their
    /// status, so consumers know the whole grid).
    TrialRecorded {
        trial: Box<TrialInfo>,
        status: TrialStatus,
    },
    /// A worker process started.
    AttemptStarted {
        trial: String,
        attempt: u32,
        device: String,
        batch_size: u32,
        grad_accum: u32,
        pid: Option<u32>,
        /// The Slurm job running it (Slurm backend).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        job: Option<String>,
        /// `palisweep rerun`: recorded as one more attempt, but the trial
        /// keeps its own status, attempt and results.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        rerun: bool,
        time: f64,
    },
    /// A line a worker wrote (its protocol event, with its own time).
    Worker {
        trial: String,
        attempt: u32,
        line: Envelope,
    },
    /// A worker process ended.
    AttemptEnded {
        trial: String,
        attempt: u32,
        outcome: AttemptOutcome,
        exit_code: Option<i32>,
        /// Why, in words (the failure message or the last stderr lines).
        reason: Option<String>,
        /// Peak memory of the process on its device (RSS on CPU, NVML on
        /// CUDA), when measured.
        peak_memory_bytes: Option<u64>,
        time: f64,
    },
    /// A trial reached a final state for this run.
    TrialEnded {
        trial: String,
        status: TrialStatus,
        reason: Option<String>,
        best_metric: Option<f64>,
        time: f64,
    },
    /// A file a trial produced (adapter, checkpoint, log).
    Artifact {
        trial: String,
        /// `final`, `best`, `checkpoint`, `log`, `events`.
        kind: String,
        path: String,
        bytes: u64,
        sha256: Option<String>,
    },
    SweepEnded {
        status: SweepStatus,
        counts: Counts,
        time: f64,
    },
}

impl SweepEvent {
    /// The trial the event is about, if any.
    pub fn trial(&self) -> Option<&str> {
        match self {
            SweepEvent::TrialRecorded { trial, .. } => Some(&trial.id),
            SweepEvent::AttemptStarted { trial, .. }
            | SweepEvent::Worker { trial, .. }
            | SweepEvent::AttemptEnded { trial, .. }
            | SweepEvent::TrialEnded { trial, .. }
            | SweepEvent::Artifact { trial, .. } => Some(trial),
            SweepEvent::SweepStarted { .. } | SweepEvent::SweepEnded { .. } => None,
        }
    }
}

/// Seconds since the Unix epoch.
pub fn now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// Why a consumer could not take an event. A failing consumer is reported
/// and dropped; it never stops the sweep.
#[derive(Debug, thiserror::Error)]
#[error("{sink}: {message}")]
pub struct SinkError {
    pub sink: &'static str,
    pub message: String,
}

/// A consumer of the event stream. Each runs on its own thread and gets
/// events in order, in batches (what arrived since its last call), so a
/// store can write a batch in one transaction.
pub trait EventSink: Send {
    fn name(&self) -> &'static str;
    fn handle(&mut self, events: &[SweepEvent]) -> Result<(), SinkError>;
    /// Called once after the last event.
    fn close(&mut self) -> Result<(), SinkError> {
        Ok(())
    }
}

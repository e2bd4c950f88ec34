//! What an ended attempt means for its trial, whichever backend ran it:
//! record the attempt (trial folder and events), then finish the trial,
//! fail it, or queue it again (a retry, or the out-of-memory back-off to
//! half the batch and twice the accumulation).

use std::path::PathBuf;

use super::queue::{QueuedTrial, Summary};
use super::trial_record::{self, AttemptRecord};
use crate::events::event::{AttemptOutcome, Counts, SweepEvent, SweepStatus, TrialStatus, now};
use crate::events::fanout::{Fanout, FanoutSender};
use crate::layout::TrialDir;
use crate::worker::contract::WorkerExit;
use crate::worker::protocol::FailureKind;

/// A trial of this run and where it stands.
pub struct TrialState {
    pub queued: QueuedTrial,
    pub status: TrialStatus,
    /// Failures this run that count against `retries` (not back-offs).
    pub failures: u32,
    pub reason: Option<String>,
}

impl TrialState {
    pub fn new(queued: QueuedTrial) -> Self {
        Self {
            queued,
            status: TrialStatus::Queued,
            failures: 0,
            reason: None,
        }
    }
}

/// How one attempt ended, as the backend saw it.
#[derive(Clone, Debug)]
pub struct AttemptEnd {
    pub attempt: u32,
    /// The label it ran on (`cuda:0`, `slurm`).
    pub device: String,
    pub start: f64,
    pub outcome: AttemptOutcome,
    pub exit_code: Option<i32>,
    pub reason: Option<String>,
    pub peak_memory_bytes: Option<u64>,
    /// From the worker's `finished` event.
    pub best_metric: Option<f64>,
    pub job: Option<String>,
}

/// Records that attempt `attempt` of `q` started on `device` (a worker's
/// pid, or a Slurm job): in the trial folder first (a restarted scheduler
/// finds it there even if the store never heard of it), then as an event.
pub fn record_start(
    fanout: &Fanout,
    q: &QueuedTrial,
    attempt: u32,
    device: &str,
    (pid, job): (Option<u32>, Option<&str>),
    start: f64,
) {
    let record = AttemptRecord {
        attempt,
        device: device.to_owned(),
        batch_size: q.batch_size,
        grad_accum: q.grad_accum,
        start,
        end: None,
        outcome: None,
        exit_code: None,
        reason: None,
        job: job.map(str::to_owned),
    };
    if let Err(e) = trial_record::append(&q.dir, &record) {
        eprintln!("palisweep: cannot record the attempt of {}: {e}", q.info.id);
    }
    fanout.send(&SweepEvent::AttemptStarted {
        trial: q.info.id.clone(),
        attempt,
        device: device.to_owned(),
        batch_size: q.batch_size,
        grad_accum: q.grad_accum,
        pid,
        job: job.map(str::to_owned),
        rerun: false,
        time: start,
    });
}

/// Why a pruned attempt stopped (both backends).
pub const PRUNED_REASON: &str =
    "pruned: its selection metric was worse than the median of the other trials at the same step";

/// Why the scheduler stopped a worker (either backend).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopCause {
    Interrupt,
    Timeout,
    Stall,
    Prune,
    /// It evaluated at its ASHA rung and stops there itself (`--stop-after`).
    Rung,
}

/// What a backend knows of an ended attempt.
#[derive(Clone, Copy, Debug, Default)]
pub struct ExitFacts<'a> {
    /// The process ended well (exit 0; Slurm's `COMPLETED`).
    pub completed: bool,
    /// The worker sent its `finished` event.
    pub finished: bool,
    /// The worker's exit code, read by its contract.
    pub exit: Option<WorkerExit>,
    /// The worker's `failed` event.
    pub failed: Option<&'a (FailureKind, String)>,
    /// What the scheduler asked of it.
    pub stop: Option<StopCause>,
    /// What the backend itself says ended it, if anything.
    pub backend: Option<BackendEnd>,
}

/// An end the backend itself reports (Slurm's job states).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BackendEnd {
    /// `OUT_OF_MEMORY`: the job's memory allocation ran out.
    OutOfMemory,
    /// `TIMEOUT`, `DEADLINE`: the job's time limit.
    TimedOut,
}

impl ExitFacts<'_> {
    /// The attempt's outcome: a finished trial, then the worker's own
    /// verdict (bad input, out of memory), then what the scheduler asked
    /// for, else a crash.
    pub fn outcome(&self) -> AttemptOutcome {
        let failed_as = |kind: FailureKind| self.failed.is_some_and(|(k, _)| *k == kind);
        if self.completed && self.finished {
            AttemptOutcome::Finished
        } else if self.exit == Some(WorkerExit::BadInput) || failed_as(FailureKind::Data) {
            AttemptOutcome::InvalidInput
        } else if self.exit == Some(WorkerExit::OutOfMemory)
            || failed_as(FailureKind::Oom)
            || self.backend == Some(BackendEnd::OutOfMemory)
        {
            AttemptOutcome::OutOfMemory
        } else if self.stop == Some(StopCause::Timeout)
            || self.backend == Some(BackendEnd::TimedOut)
        {
            AttemptOutcome::TimedOut
        } else if self.stop == Some(StopCause::Stall) {
            AttemptOutcome::Stalled
        } else if self.stop == Some(StopCause::Prune) {
            AttemptOutcome::Pruned
        } else if self.stop == Some(StopCause::Rung) && self.exit == Some(WorkerExit::Stopped) {
            AttemptOutcome::Paused
        } else if self.stop == Some(StopCause::Interrupt) || self.exit == Some(WorkerExit::Stopped)
        {
            AttemptOutcome::Stopped
        } else {
            AttemptOutcome::Crashed
        }
    }

    /// The outcome and why, in words: `timed_out` for a timeout, the
    /// worker's own message for a failure, else what `otherwise` says
    /// (the backend's view of the exit).
    pub fn classify(
        &self,
        timed_out: impl FnOnce() -> String,
        otherwise: impl FnOnce() -> String,
    ) -> (AttemptOutcome, Option<String>) {
        let outcome = self.outcome();
        let reason = match outcome {
            AttemptOutcome::Finished => None,
            AttemptOutcome::TimedOut => Some(timed_out()),
            AttemptOutcome::Stalled => {
                Some("no progress within resources.stall_timeout".to_owned())
            }
            AttemptOutcome::Stopped => Some("stopped".to_owned()),
            AttemptOutcome::Pruned => Some(PRUNED_REASON.to_owned()),
            AttemptOutcome::Paused => Some("paused at its rung, checkpointed".to_owned()),
            _ => Some(self.failed.map_or_else(otherwise, |(_, m)| m.clone())),
        };
        (outcome, reason)
    }
}

/// Records how an attempt ended: in the trial's `attempts.jsonl` and as an
/// `AttemptEnded` event. The trial's next state is [`settle`]'s.
pub fn record_end(q: &QueuedTrial, end: &AttemptEnd, fanout: &Fanout) {
    let time = now();
    let record = AttemptRecord {
        attempt: end.attempt,
        device: end.device.clone(),
        batch_size: q.batch_size,
        grad_accum: q.grad_accum,
        start: end.start,
        end: Some(time),
        outcome: Some(end.outcome),
        exit_code: end.exit_code,
        reason: end.reason.clone(),
        job: end.job.clone(),
    };
    if let Err(e) = trial_record::append(&q.dir, &record) {
        eprintln!("palisweep: cannot record the attempt of {}: {e}", q.info.id);
    }
    fanout.send(&SweepEvent::AttemptEnded {
        trial: q.info.id.clone(),
        attempt: end.attempt,
        outcome: end.outcome,
        exit_code: end.exit_code,
        reason: end.reason.clone(),
        peak_memory_bytes: end.peak_memory_bytes,
        time,
    });
}

/// Records `end` and decides the trial's next state; true when the trial
/// goes back to the queue.
pub fn settle(
    state: &mut TrialState,
    end: &AttemptEnd,
    retries: u32,
    interrupting: bool,
    fanout: &Fanout,
) -> bool {
    record_end(&state.queued, end, fanout);

    let (status, requeue) = match end.outcome {
        AttemptOutcome::Finished => (TrialStatus::Finished, false),
        AttemptOutcome::Pruned => (TrialStatus::Pruned, false),
        // The dispatcher resumes it when its rung promotes it.
        AttemptOutcome::Paused => (TrialStatus::Paused, false),
        _ if interrupting || end.outcome == AttemptOutcome::Stopped => {
            (TrialStatus::Interrupted, false)
        }
        AttemptOutcome::InvalidInput => (TrialStatus::Failed, false),
        AttemptOutcome::OutOfMemory if state.queued.batch_size <= 1 => {
            state.status = TrialStatus::Failed;
            state.reason = Some(format!(
                "oom: out of memory at batch size 1 ({})",
                end.reason.clone().unwrap_or_default()
            ));
            end_trial(fanout, state, None);
            return false;
        }
        AttemptOutcome::OutOfMemory => {
            // Same effective batch, half the memory per forward pass.
            state.queued.batch_size /= 2;
            state.queued.grad_accum *= 2;
            (TrialStatus::Queued, true)
        }
        _ => {
            state.failures += 1;
            if state.failures > retries {
                (TrialStatus::Failed, false)
            } else {
                (TrialStatus::Queued, true)
            }
        }
    };
    state.status = status;
    if status == TrialStatus::Finished {
        state.reason = None;
        // Hashing adapters (gigabytes for full fine-tuning) stays off the loop.
        let sender = fanout.sender();
        let queued = state.queued.clone();
        std::thread::spawn(move || send_artifacts(&sender, &queued));
        end_trial(fanout, state, end.best_metric);
    } else if !requeue {
        state.reason.clone_from(&end.reason);
        end_trial(fanout, state, None);
    }
    requeue
}

/// Ends the trials that never started this run as interrupted (the next
/// run, or `attach`, takes them up).
pub fn interrupt_pending(states: &mut [TrialState], pending: Vec<usize>, fanout: &Fanout) {
    for i in pending {
        states[i].status = TrialStatus::Interrupted;
        end_trial(fanout, &states[i], None);
    }
}

/// How the sweep went: the trials' final counts, each failed one with its
/// reason, and the sweep's status (running while Slurm jobs are
/// `left_running`, then interrupted, failed or finished). A trial that did
/// not end this run counts as interrupted.
pub fn summary(
    states: &[TrialState],
    interrupting: bool,
    left_running: Vec<(String, String)>,
) -> Summary {
    let (counts, failures) = tally(states);
    let sweep_status = if !left_running.is_empty() {
        SweepStatus::Running
    } else if interrupting {
        SweepStatus::Interrupted
    } else if counts.failed > 0 {
        SweepStatus::Failed
    } else {
        SweepStatus::Finished
    };
    Summary {
        status: sweep_status,
        counts,
        failures,
        left_running,
    }
}

fn tally(states: &[TrialState]) -> (Counts, Vec<(String, String)>) {
    let mut counts = Counts::default();
    let mut failures = Vec::new();
    for state in states {
        match state.status {
            TrialStatus::Finished => counts.finished += 1,
            TrialStatus::Failed => {
                counts.failed += 1;
                failures.push((
                    state.queued.info.id.clone(),
                    state.reason.clone().unwrap_or_default(),
                ));
            }
            TrialStatus::Pruned => counts.pruned += 1,
            // Paused at the end of a run: it was interrupted before its
            // rung could be settled.
            TrialStatus::Interrupted
            | TrialStatus::Queued
            | TrialStatus::Running
            | TrialStatus::Paused => {
                counts.interrupted += 1;
            }
        }
    }
    (counts, failures)
}

/// Ends a trial early stopping will not run further: paused at an ASHA
/// rung no result can promote any more, or never started for the budget.
pub fn end_early(state: &mut TrialState, reason: String, fanout: &Fanout) {
    state.status = TrialStatus::Pruned;
    state.reason = Some(reason);
    end_trial(fanout, state, None);
}

/// Fails a trial that never got to run an attempt.
pub fn fail(state: &mut TrialState, reason: String, fanout: &Fanout) {
    state.status = TrialStatus::Failed;
    state.reason = Some(reason);
    end_trial(fanout, state, None);
}

pub fn end_trial(fanout: &Fanout, state: &TrialState, best_metric: Option<f64>) {
    fanout.send(&SweepEvent::TrialEnded {
        trial: state.queued.info.id.clone(),
        status: state.status,
        reason: state.reason.clone(),
        best_metric,
        time: now(),
    });
}

/// The last lines of a worker's stderr, for a failure reason.
pub fn tail_text(tail: &[String]) -> String {
    let last: Vec<&str> = tail
        .iter()
        .rev()
        .take(5)
        .rev()
        .map(String::as_str)
        .collect();
    if last.is_empty() {
        String::new()
    } else {
        format!("; last stderr lines:\n  {}", last.join("\n  "))
    }
}

/// Reports the files a finished trial left: adapters, events, log.
fn send_artifacts(fanout: &FanoutSender, q: &QueuedTrial) {
    for event in artifact_events(&q.info.id, &q.dir) {
        fanout.send(&event);
    }
}

/// A finished trial's files as `Artifact` events: its adapters (hashed),
/// its events and its log.
pub fn artifact_events(trial: &str, dir: &TrialDir) -> Vec<SweepEvent> {
    let adapter = |dir: PathBuf| dir.join("adapter_model.safetensors");
    let files = [
        ("final", adapter(dir.final_adapter()), true),
        ("best", adapter(dir.best_adapter()), true),
        ("events", dir.events(), false),
        ("log", dir.log(), false),
    ];
    files
        .into_iter()
        .filter_map(|(kind, path, hash)| {
            let meta = std::fs::metadata(&path).ok()?;
            let sha256 = hash.then(|| sha256_file(&path)).flatten();
            Some(SweepEvent::Artifact {
                trial: trial.to_owned(),
                kind: kind.into(),
                path: path.display().to_string(),
                bytes: meta.len(),
                sha256,
            })
        })
        .collect()
}

fn sha256_file(path: &std::path::Path) -> Option<String> {
    use sha2::{Digest as _, Sha256};
    let mut file = std::fs::File::open(path).ok()?;
    let mut hasher = Sha256::new();
    std::io::copy(&mut file, &mut hasher).ok()?;
    Some(format!("{:x}", hasher.finalize()))
}

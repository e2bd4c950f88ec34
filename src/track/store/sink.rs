//! The one writer: a [`SweepEvent`] consumer that turns each batch into rows
//! in one transaction. Every statement sets columns from the event alone
//! (upserts, no counters, no clock), so replaying a stream leaves the same
//! rows as reading it once.

use std::collections::BTreeMap;
use std::path::Path;

use rusqlite::{Transaction, TransactionBehavior, params};

use super::schema::Uint;
use super::scrub::{redact_json, redact_text};
use super::{Store, StoreError};
use crate::events::event::{
    AttemptOutcome, EventSink, SinkError, SweepEvent, SweepInfo, TrialInfo, TrialStatus,
};
use crate::worker::protocol::{Envelope, FailureKind, WorkerEvent};

/// Writes the event stream to the store. Events other than
/// `sweep_started` name no sweep: they belong to the last one started (or
/// the one given to [`StoreSink::for_sweep`]).
#[derive(Debug)]
pub struct StoreSink {
    store: Store,
    sweep: Option<String>,
}

impl StoreSink {
    pub fn new(store: Store) -> Self {
        StoreSink { store, sweep: None }
    }

    /// Opens (creating or migrating) the store at `path` for writing.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        Ok(StoreSink::new(Store::open(path)?))
    }

    /// A sink that continues a sweep already recorded, for a stream that
    /// does not begin with its `sweep_started`.
    pub fn for_sweep(store: Store, sweep: &str) -> Self {
        StoreSink {
            store,
            sweep: Some(sweep.to_owned()),
        }
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Writes `events` in one transaction: all or nothing.
    pub fn write(&mut self, events: &[SweepEvent]) -> Result<(), StoreError> {
        let mut sweep = self.sweep.clone();
        let tx = self
            .store
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        for event in events {
            apply(&tx, &mut sweep, event)?;
        }
        tx.commit()?;
        self.sweep = sweep;
        Ok(())
    }
}

impl EventSink for StoreSink {
    fn name(&self) -> &'static str {
        "store"
    }

    fn handle(&mut self, events: &[SweepEvent]) -> Result<(), SinkError> {
        self.write(events).map_err(|e| SinkError {
            sink: "store",
            message: format!("{}: {e}", self.store.path.display()),
        })
    }

    fn close(&mut self) -> Result<(), SinkError> {
        // Fold the WAL back so the file is complete on its own; readers
        // still holding it only make this partial, which is fine.
        self.store
            .conn
            .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()))
            .map_err(|e| SinkError {
                sink: "store",
                message: e.to_string(),
            })
    }
}

fn event_name(event: &SweepEvent) -> &'static str {
    match event {
        SweepEvent::SweepStarted { .. } => "sweep_started",
        SweepEvent::TrialRecorded { .. } => "trial_recorded",
        SweepEvent::AttemptStarted { .. } => "attempt_started",
        SweepEvent::Worker { .. } => "worker",
        SweepEvent::AttemptEnded { .. } => "attempt_ended",
        SweepEvent::TrialEnded { .. } => "trial_ended",
        SweepEvent::Artifact { .. } => "artifact",
        SweepEvent::SweepEnded { .. } => "sweep_ended",
    }
}

fn apply(
    tx: &Transaction<'_>,
    current: &mut Option<String>,
    event: &SweepEvent,
) -> Result<(), StoreError> {
    if let SweepEvent::SweepStarted {
        sweep,
        environment,
        resumed,
        time,
    } = event
    {
        sweep_started(tx, sweep, *time)?;
        environment_row(tx, &sweep.name, environment, *resumed, *time)?;
        *current = Some(sweep.name.clone());
        return Ok(());
    }
    let Some(sweep) = current.as_deref() else {
        return Err(StoreError::NoCurrentSweep {
            event: event_name(event),
        });
    };
    match event {
        SweepEvent::SweepStarted { .. } => unreachable!("handled above"),
        SweepEvent::TrialRecorded { trial, status } => trial_recorded(tx, sweep, trial, *status),
        SweepEvent::AttemptStarted {
            trial,
            attempt,
            device,
            batch_size,
            grad_accum,
            pid,
            job,
            rerun,
            time,
        } => attempt_started(
            tx,
            sweep,
            trial,
            *attempt,
            device,
            (*batch_size, *grad_accum),
            (*pid, job.as_deref()),
            (*rerun, *time),
        ),
        SweepEvent::Worker {
            trial,
            attempt,
            line,
        } => worker_line(tx, sweep, trial, *attempt, line),
        SweepEvent::AttemptEnded { trial, .. } => attempt_ended(tx, sweep, trial, event),
        SweepEvent::TrialEnded {
            trial,
            status,
            reason,
            best_metric,
            time,
        } => {
            let n = tx
                .prepare_cached(
                    "UPDATE trials SET status = ?3, end = ?4, exit_reason = ?5,
                       best_metric = COALESCE(?6, best_metric)
                     WHERE sweep = ?1 AND id = ?2",
                )?
                .execute(params![
                    sweep,
                    trial,
                    status.as_str(),
                    time,
                    reason.as_deref().map(redact_text),
                    best_metric
                ])?;
            expect_trial(n, sweep, trial)
        }
        SweepEvent::Artifact {
            trial,
            kind,
            path,
            bytes,
            sha256,
        } => {
            tx.prepare_cached(
                "INSERT INTO artifacts (sweep, trial_id, kind, path, bytes, sha256)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                 ON CONFLICT (sweep, trial_id, path) DO UPDATE SET
                   kind = excluded.kind, bytes = excluded.bytes, sha256 = excluded.sha256",
            )?
            .execute(params![sweep, trial, kind, path, Uint(*bytes), sha256])
            .map_err(|e| unknown_trial(e, sweep, trial))?;
            Ok(())
        }
        SweepEvent::SweepEnded { status, time, .. } => {
            tx.prepare_cached("UPDATE sweeps SET status = ?2, ended = ?3 WHERE name = ?1")?
                .execute(params![sweep, status.as_str(), time])?;
            Ok(())
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn attempt_started(
    tx: &Transaction<'_>,
    sweep: &str,
    trial: &str,
    attempt: u32,
    device: &str,
    (batch_size, grad_accum): (u32, u32),
    (pid, job): (Option<u32>, Option<&str>),
    (rerun, time): (bool, f64),
) -> Result<(), StoreError> {
    tx.prepare_cached(
        "INSERT INTO attempts (sweep, trial_id, attempt, device, batch_size, grad_accum, pid, slurm_job, start)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)
         ON CONFLICT (sweep, trial_id, attempt) DO UPDATE SET
           device = excluded.device, batch_size = excluded.batch_size,
           grad_accum = excluded.grad_accum, pid = excluded.pid,
           slurm_job = excluded.slurm_job, start = excluded.start",
    )?
    .execute(params![sweep, trial, attempt, device, batch_size, grad_accum, pid, job, time])
    .map_err(|e| unknown_trial(e, sweep, trial))?;
    if rerun {
        // The trial's row stays the original's; so do its results, which
        // read only attempts up to `trials.attempt`.
        return Ok(());
    }
    let n = tx
        .prepare_cached(
            "UPDATE trials SET status = 'running', device = ?3, attempt = ?4,
               batch_size = ?5, grad_accum = ?6, start = COALESCE(start, ?7),
               end = NULL, exit_reason = NULL
             WHERE sweep = ?1 AND id = ?2",
        )?
        .execute(params![
            sweep, trial, device, attempt, batch_size, grad_accum, time
        ])?;
    expect_trial(n, sweep, trial)
}

fn attempt_ended(
    tx: &Transaction<'_>,
    sweep: &str,
    trial: &str,
    event: &SweepEvent,
) -> Result<(), StoreError> {
    let SweepEvent::AttemptEnded {
        attempt,
        outcome,
        exit_code,
        reason,
        peak_memory_bytes,
        time,
        ..
    } = event
    else {
        return Ok(());
    };
    tx.prepare_cached(
        "INSERT INTO attempts (sweep, trial_id, attempt, end, outcome, exit_code, reason, peak_memory_bytes)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
         ON CONFLICT (sweep, trial_id, attempt) DO UPDATE SET
           end = excluded.end, outcome = excluded.outcome, exit_code = excluded.exit_code,
           reason = COALESCE(excluded.reason, reason),
           peak_memory_bytes = COALESCE(excluded.peak_memory_bytes, peak_memory_bytes)",
    )?
    .execute(params![
        sweep,
        trial,
        attempt,
        time,
        outcome_name(*outcome),
        exit_code,
        reason.as_deref().map(redact_text),
        peak_memory_bytes.map(Uint)
    ])
    .map_err(|e| unknown_trial(e, sweep, trial))?;
    Ok(())
}

fn sweep_started(tx: &Transaction<'_>, sweep: &SweepInfo, time: f64) -> Result<(), StoreError> {
    tx.prepare_cached(
        "INSERT INTO sweeps (name, spec_path, spec_text, spec_hash, results, created, started,
                             ended, status, total_trials, devices, axes, select_metric)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?6, NULL, 'running', ?7, ?8, ?9, ?10)
         ON CONFLICT (name) DO UPDATE SET
           spec_path = excluded.spec_path, spec_text = excluded.spec_text,
           spec_hash = excluded.spec_hash, results = excluded.results,
           created = MIN(created, excluded.created), started = excluded.started,
           ended = NULL, status = 'running', total_trials = excluded.total_trials,
           devices = excluded.devices, axes = excluded.axes,
           select_metric = excluded.select_metric",
    )?
    .execute(params![
        sweep.name,
        sweep.spec_path,
        redact_text(&sweep.spec_text),
        sweep.spec_hash,
        sweep.results,
        time,
        Uint(sweep.total_trials as u64),
        serde_json::to_string(&sweep.devices)?,
        serde_json::to_string(&sweep.axes)?,
        sweep.select_metric,
    ])?;
    Ok(())
}

fn environment_row(
    tx: &Transaction<'_>,
    sweep: &str,
    env: &crate::events::event::Environment,
    resumed: bool,
    time: f64,
) -> Result<(), StoreError> {
    let fingerprints = redact_json(&serde_json::to_value(&env.checkpoint_fingerprints)?);
    tx.prepare_cached(
        "INSERT OR REPLACE INTO environment (sweep, started, resumed, palisweep_version, git_sha,
           libtorch_version, cuda_version, gpu_names, driver_version, host, dataset_fingerprint,
           checkpoint_fingerprints)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
    )?
    .execute(params![
        sweep,
        time,
        resumed,
        env.palisweep_version,
        env.git_sha,
        env.libtorch_version,
        env.cuda_version,
        serde_json::to_string(&env.gpu_names)?,
        env.driver_version,
        env.host,
        env.dataset_fingerprint,
        fingerprints.to_string(),
    ])?;
    Ok(())
}

fn trial_recorded(
    tx: &Transaction<'_>,
    sweep: &str,
    trial: &TrialInfo,
    status: TrialStatus,
) -> Result<(), StoreError> {
    let params_json = redact_json(&serde_json::to_value(&trial.params)?);
    // A `queued` record of a trial that already finished (a resumed sweep,
    // or a replayed stream) keeps its status and the batch it ran with.
    tx.prepare_cached(
        "INSERT INTO trials (sweep, id, params, config, dir, status, batch_size, grad_accum,
                             est_memory_bytes)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)
         ON CONFLICT (sweep, id) DO UPDATE SET
           params = excluded.params, config = excluded.config, dir = excluded.dir,
           est_memory_bytes = excluded.est_memory_bytes,
           status = CASE WHEN excluded.status = 'queued' AND status IN ('finished', 'pruned')
                         THEN status ELSE excluded.status END,
           batch_size = CASE WHEN status IN ('finished', 'pruned')
                             THEN batch_size ELSE excluded.batch_size END,
           grad_accum = CASE WHEN status IN ('finished', 'pruned')
                             THEN grad_accum ELSE excluded.grad_accum END",
    )?
    .execute(params![
        sweep,
        trial.id,
        params_json.to_string(),
        redact_text(&trial.config),
        trial.dir,
        status.as_str(),
        trial.batch_size,
        trial.grad_accum,
        Uint(trial.est_memory_bytes),
    ])?;
    Ok(())
}

fn worker_line(
    tx: &Transaction<'_>,
    sweep: &str,
    trial: &str,
    attempt: u32,
    line: &Envelope,
) -> Result<(), StoreError> {
    match &line.event {
        WorkerEvent::Started { .. } => worker_started(tx, sweep, trial, attempt, line)?,
        // The run's environment row collects each checkpoint's fingerprint
        // (versions are the scheduler's own; `rerun` reads events.jsonl).
        WorkerEvent::Provenance {
            checkpoint: Some(checkpoint),
            checkpoint_fingerprint: Some(fingerprint),
            ..
        } => {
            tx.prepare_cached(
                "UPDATE environment SET checkpoint_fingerprints =
                   json_set(checkpoint_fingerprints, '$.\"' || replace(?2, '\"', '') || '\"', ?3)
                 WHERE sweep = ?1 AND started = (SELECT MAX(started) FROM environment WHERE sweep = ?1)",
            )?
            .execute(params![sweep, checkpoint, fingerprint])?;
        }
        WorkerEvent::Provenance { .. } => {}
        // Names come prefixed by the worker (`train/loss`, `val/field_f1`).
        WorkerEvent::Step {
            step,
            epoch,
            metrics,
            ..
        }
        | WorkerEvent::Eval {
            step,
            epoch,
            metrics,
            ..
        } => insert_metrics(
            tx,
            sweep,
            trial,
            attempt,
            (*step, *epoch),
            line.time,
            metrics,
        )?,
        // Keyed by path: a step evaluated again (after a resume) names the
        // attempt that rewrote the file.
        WorkerEvent::Predictions {
            step,
            split,
            path,
            examples,
            metric,
        } => {
            tx.prepare_cached(
                "INSERT INTO predictions (sweep, trial_id, attempt, split, step, path, examples, metric)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
                 ON CONFLICT (sweep, trial_id, path) DO UPDATE SET
                   attempt = excluded.attempt, split = excluded.split, step = excluded.step,
                   examples = excluded.examples, metric = excluded.metric",
            )?
            .execute(params![
                sweep,
                trial,
                attempt,
                split,
                Uint(*step),
                path,
                Uint(*examples as u64),
                metric
            ])
            .map_err(|e| unknown_trial(e, sweep, trial))?;
        }
        WorkerEvent::Checkpoint { step, path, best } => {
            tx.prepare_cached(
                "INSERT INTO artifacts (sweep, trial_id, kind, path, step)
                 VALUES (?1, ?2, 'checkpoint', ?3, ?4)
                 ON CONFLICT (sweep, trial_id, path) DO UPDATE SET step = excluded.step",
            )?
            .execute(params![sweep, trial, path, Uint(*step)])
            .map_err(|e| unknown_trial(e, sweep, trial))?;
            // Only the trial's own attempt (not a rerun) moves its best.
            if *best {
                tx.prepare_cached(
                    "UPDATE trials SET best_step = ?3 WHERE sweep = ?1 AND id = ?2 AND attempt = ?4",
                )?
                .execute(params![sweep, trial, Uint(*step), attempt])?;
            }
        }
        WorkerEvent::Finished { best_metric, .. } => {
            tx.prepare_cached(
                "UPDATE trials SET best_metric = COALESCE(?3, best_metric)
                 WHERE sweep = ?1 AND id = ?2 AND attempt = ?4",
            )?
            .execute(params![sweep, trial, best_metric, attempt])?;
        }
        WorkerEvent::Failed { kind, message } => {
            tx.prepare_cached(
                "UPDATE attempts SET failure_kind = ?4, reason = ?5
                 WHERE sweep = ?1 AND trial_id = ?2 AND attempt = ?3",
            )?
            .execute(params![
                sweep,
                trial,
                attempt,
                failure_name(*kind),
                redact_text(message)
            ])?;
        }
    }
    Ok(())
}

fn worker_started(
    tx: &Transaction<'_>,
    sweep: &str,
    trial: &str,
    attempt: u32,
    line: &Envelope,
) -> Result<(), StoreError> {
    // The worker's own device name is what it sees under
    // `CUDA_VISIBLE_DEVICES` (always `cuda:0`): the scheduler's is kept.
    // Its batch size is the one that actually runs.
    let WorkerEvent::Started {
        trainable_params,
        total_steps,
        batch_size,
        grad_accum,
        threads,
        device,
        dataset_fingerprint,
        resumed_from,
        skipped_lines,
        ..
    } = &line.event
    else {
        return Ok(());
    };
    tx.prepare_cached(
        "INSERT INTO attempts (sweep, trial_id, attempt, device, batch_size, grad_accum,
           start, threads, trainable_params, total_steps, dataset_fingerprint,
           resumed_from, skipped_lines)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)
         ON CONFLICT (sweep, trial_id, attempt) DO UPDATE SET
           device = COALESCE(device, excluded.device), batch_size = excluded.batch_size,
           grad_accum = excluded.grad_accum, start = COALESCE(start, excluded.start),
           threads = excluded.threads, trainable_params = excluded.trainable_params,
           total_steps = excluded.total_steps,
           dataset_fingerprint = excluded.dataset_fingerprint,
           resumed_from = excluded.resumed_from, skipped_lines = excluded.skipped_lines",
    )?
    .execute(params![
        sweep,
        trial,
        attempt,
        device,
        batch_size,
        grad_accum,
        line.time,
        threads,
        Uint(*trainable_params),
        Uint(*total_steps),
        dataset_fingerprint,
        Uint(*resumed_from),
        Uint(*skipped_lines as u64),
    ])
    .map_err(|e| unknown_trial(e, sweep, trial))?;
    tx.prepare_cached(
        "UPDATE trials SET batch_size = ?4, grad_accum = ?5
         WHERE sweep = ?1 AND id = ?2 AND attempt = ?3",
    )?
    .execute(params![sweep, trial, attempt, batch_size, grad_accum])?;
    // The run's environment row: the dataset its workers checked (the last
    // one when trials vary the dataset; each attempt keeps its own).
    tx.prepare_cached(
        "UPDATE environment SET dataset_fingerprint = ?2
         WHERE sweep = ?1 AND started = (SELECT MAX(started) FROM environment WHERE sweep = ?1)",
    )?
    .execute(params![sweep, dataset_fingerprint])?;
    Ok(())
}

/// One `metrics` row per (name, value), all at one step. A NaN is stored
/// as NULL (`SQLite` would anyway).
fn insert_metrics(
    tx: &Transaction<'_>,
    sweep: &str,
    trial: &str,
    attempt: u32,
    (step, epoch): (u64, u64),
    wall_time: f64,
    metrics: &BTreeMap<String, f64>,
) -> Result<(), StoreError> {
    let mut stmt = tx.prepare_cached(
        "INSERT INTO metrics (trial_id, sweep, attempt, step, epoch, name, value, wall_time)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
         ON CONFLICT (trial_id, sweep, attempt, step, name) DO UPDATE SET
           epoch = excluded.epoch, value = excluded.value, wall_time = excluded.wall_time",
    )?;
    for (name, &value) in metrics {
        stmt.execute(params![
            trial,
            sweep,
            attempt,
            Uint(step),
            Uint(epoch),
            name,
            (!value.is_nan()).then_some(value),
            wall_time
        ])?;
    }
    Ok(())
}

fn outcome_name(outcome: AttemptOutcome) -> &'static str {
    match outcome {
        AttemptOutcome::Finished => "finished",
        AttemptOutcome::InvalidInput => "invalid_input",
        AttemptOutcome::OutOfMemory => "out_of_memory",
        AttemptOutcome::Crashed => "crashed",
        AttemptOutcome::TimedOut => "timed_out",
        AttemptOutcome::Stalled => "stalled",
        AttemptOutcome::OrchestratorLost => "orchestrator_lost",
        AttemptOutcome::Stopped => "stopped",
        AttemptOutcome::Pruned => "pruned",
        AttemptOutcome::Paused => "paused",
    }
}

fn failure_name(kind: FailureKind) -> &'static str {
    match kind {
        FailureKind::Oom => "oom",
        FailureKind::Data => "data",
        FailureKind::Other => "other",
    }
}

fn expect_trial(updated: usize, sweep: &str, trial: &str) -> Result<(), StoreError> {
    if updated == 0 {
        return Err(StoreError::UnknownTrial {
            sweep: sweep.to_owned(),
            trial: trial.to_owned(),
        });
    }
    Ok(())
}

/// A foreign-key failure means the trial was never recorded; say so.
fn unknown_trial(e: rusqlite::Error, sweep: &str, trial: &str) -> StoreError {
    if e.sqlite_error_code() == Some(rusqlite::ErrorCode::ConstraintViolation) {
        StoreError::UnknownTrial {
            sweep: sweep.to_owned(),
            trial: trial.to_owned(),
        }
    } else {
        e.into()
    }
}

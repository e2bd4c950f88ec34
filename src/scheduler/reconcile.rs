//! What a resumed `run` does with what an earlier run left behind, before
//! it starts anything. The trial folders are the source of truth
//! (`attempts.jsonl`, `events.jsonl`); the store and TensorBoard are
//! rebuilt from them:
//!
//! 1. wait for workers an earlier run left alive (a worker ends within
//!    its orphan grace after its scheduler dies; `worker/contract.rs`), and
//!    name them if they do not end;
//! 2. cut torn last lines (a process killed mid-write);
//! 3. close attempts the earlier run never saw end: by the worker's own
//!    last word (`finished`, `failed`) when it has one, else as
//!    `orchestrator_lost`;
//! 4. send the consumers every attempt, worker line and end the folders
//!    have and the store lacks (a run killed between a worker's line and
//!    its consumers, a store that failed to write, a store deleted).
//!
//! A step a killed attempt reported past its last checkpoint is reported
//! again by the attempt that resumes: both stay in the store, and a trial's
//! curves read each step from the last attempt that ran it (the store's
//! `own_metrics` view), so a curve has neither gaps nor duplicates.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use super::prepare::RunError;
use super::trial_record::{self, AttemptRecord};
use crate::events::event::{AttemptOutcome, SweepEvent, TrialStatus};
use crate::jsonl::{self, TornLine};
use crate::layout::TrialDir;
use crate::track::store::RecordedAttempts;
use crate::worker::protocol::{Envelope, FailureKind, WorkerEvent};
use crate::worker::trial_lock::{self, Holder};

/// How often a left-over worker is looked for while waiting.
const POLL: Duration = Duration::from_millis(200);

/// A trial of the sweep, as reconciliation sees it.
#[derive(Clone, Debug)]
pub struct TrialFolder {
    pub id: String,
    pub dir: TrialDir,
    /// Followed as a running Slurm job: its folder is still being
    /// written, so nothing in it is closed or cut.
    pub followed: bool,
}

/// Waits until no worker holds a trial folder (those of followed Slurm
/// jobs aside), saying whom it waits for; fails after `patience`.
pub fn wait_for_workers(trials: &[TrialFolder], patience: Duration) -> Result<(), RunError> {
    let deadline = Instant::now() + patience;
    let mut announced = false;
    loop {
        let held: Vec<(&TrialFolder, Holder)> = trials
            .iter()
            .filter(|t| !t.followed)
            .filter_map(|t| trial_lock::holder(&t.dir).map(|h| (t, h)))
            .collect();
        let Some((first, holder)) = held.first() else {
            return Ok(());
        };
        if Instant::now() >= deadline {
            return Err(RunError::TrialBusy {
                trial: first.id.clone(),
                holder: holder.to_string(),
                lock: first.dir.path().join(".lock"),
                others: held.len() - 1,
            });
        }
        if !announced {
            announced = true;
            eprintln!(
                "palisweep: waiting up to {}s for {} worker(s) an earlier run left to end (trial {} is held by {holder})",
                patience.as_secs(),
                held.len(),
                first.id
            );
        }
        std::thread::sleep(POLL);
    }
}

/// What reconciliation found and what the consumers must be sent.
#[derive(Debug, Default)]
pub struct Reconciled {
    /// In order: per trial, its attempts' starts, worker lines and ends.
    pub events: Vec<SweepEvent>,
    /// Trials whose start was sent again (their recorded state must be
    /// sent after these events, which mark them running).
    pub restarted: BTreeSet<String>,
    /// For restarted trials that had finished: their end and files, to
    /// send after their recorded state.
    pub trial_ends: Vec<SweepEvent>,
    /// Attempts closed now, by trial.
    pub closed: Vec<(String, u32, AttemptOutcome)>,
    /// Torn last lines cut off.
    pub torn: Vec<(PathBuf, TornLine)>,
}

/// A worker line and the attempt that wrote it.
struct Line {
    attempt: u32,
    envelope: Envelope,
}

/// Reads `events.jsonl`, giving each line its attempt: the one it names,
/// else (files written before lines named it) the last `started`.
fn read_events(dir: &TrialDir) -> Vec<Line> {
    let Ok(lines) = jsonl::read(&dir.events()) else {
        return Vec::new();
    };
    let mut current = 1;
    let mut out = Vec::new();
    for (_, text) in lines.lines {
        let Ok(envelope) = Envelope::parse(&text) else {
            continue;
        };
        if let WorkerEvent::Started { attempt, .. } = envelope.event {
            current = attempt;
        }
        let attempt = envelope.written_by.unwrap_or(current);
        out.push(Line { attempt, envelope });
    }
    out
}

/// How an attempt that nobody saw end did end, by its worker's last word.
fn closing(lines: &[&Line]) -> (AttemptOutcome, Option<i32>, String) {
    let last_step = lines
        .iter()
        .filter_map(|l| match l.envelope.event {
            WorkerEvent::Step { step, .. } => Some(step),
            _ => None,
        })
        .max();
    for line in lines.iter().rev() {
        match &line.envelope.event {
            WorkerEvent::Finished { .. } => {
                return (AttemptOutcome::Finished, Some(0), String::new());
            }
            WorkerEvent::Failed { kind, message } => {
                let (outcome, code) = match kind {
                    FailureKind::Data => (AttemptOutcome::InvalidInput, 2),
                    FailureKind::Oom => (AttemptOutcome::OutOfMemory, 3),
                    FailureKind::Other => (AttemptOutcome::Crashed, 1),
                };
                return (outcome, Some(code), message.clone());
            }
            _ => {}
        }
    }
    let reached = last_step.map_or_else(
        || "before its first step".to_owned(),
        |s| format!("after step {s}"),
    );
    (
        AttemptOutcome::OrchestratorLost,
        None,
        format!(
            "the `palisweep run` that started this worker died, and the worker ended {reached} without it"
        ),
    )
}

/// Cuts torn last lines off a folder's files.
fn repair(dir: &TrialDir, torn: &mut Vec<(PathBuf, TornLine)>) {
    for path in [dir.events(), dir.path().join("attempts.jsonl")] {
        if !path.is_file() {
            continue;
        }
        match jsonl::open_append(&path) {
            Ok((_, Some(cut))) => {
                eprintln!(
                    "palisweep: {}: dropped a torn last line ({} bytes): the process writing it died mid-line",
                    path.display(),
                    cut.bytes
                );
                torn.push((path, cut));
            }
            Ok((_, None)) => {}
            Err(e) => eprintln!("palisweep: cannot check {}: {e}", path.display()),
        }
    }
}

/// Closes what is open and lists what the consumers lack, trial by trial.
/// Run with no worker alive in these folders ([`wait_for_workers`]).
pub fn reconcile(trials: &[TrialFolder], store: &RecordedAttempts) -> Reconciled {
    let mut out = Reconciled::default();
    for trial in trials.iter().filter(|t| !t.followed) {
        repair(&trial.dir, &mut out.torn);
        let lines = read_events(&trial.dir);
        let mut by_attempt: BTreeMap<u32, Vec<&Line>> = BTreeMap::new();
        for line in &lines {
            by_attempt.entry(line.attempt).or_default().push(line);
        }
        let mut records = trial_record::attempts(&trial.dir);
        // Attempts whose worker wrote but whose start line was lost (a full
        // disk): their `started` line says how they ran.
        for (attempt, own) in &by_attempt {
            if records.iter().any(|r| r.attempt == *attempt) {
                continue;
            }
            if let Some(record) = own.iter().find_map(|l| started_record(*attempt, l)) {
                if let Err(e) = trial_record::append(&trial.dir, &record) {
                    eprintln!(
                        "palisweep: cannot record attempt {attempt} of {}: {e}",
                        trial.id
                    );
                }
                records.push(record);
            }
        }
        records.sort_by_key(|r| r.attempt);
        let mut last_end = None;
        for record in records {
            let own = by_attempt.remove(&record.attempt).unwrap_or_default();
            let record = close_if_open(trial, record, &own, &mut out);
            last_end = record.end.zip(record.outcome);
            backfill(trial, &record, &own, store, &mut out);
        }
        if out.restarted.contains(&trial.id) {
            end_again(trial, last_end, &mut out);
        }
    }
    out
}

/// A trial that had finished (or was pruned) and whose attempts were sent
/// again: its end, and a finished one's files.
fn end_again(trial: &TrialFolder, last: Option<(f64, AttemptOutcome)>, out: &mut Reconciled) {
    let Some((time, outcome)) = last else {
        return;
    };
    let finished = trial_record::finished(&trial.dir);
    let status = match (finished, outcome) {
        (Some(_), _) => TrialStatus::Finished,
        (None, AttemptOutcome::Pruned) => TrialStatus::Pruned,
        _ => return,
    };
    out.trial_ends.push(SweepEvent::TrialEnded {
        trial: trial.id.clone(),
        status,
        reason: None,
        best_metric: finished.flatten(),
        time,
    });
    if status == TrialStatus::Finished {
        out.trial_ends
            .extend(super::fate::artifact_events(&trial.id, &trial.dir));
    }
}

/// An attempt's start as its worker's `started` line tells it.
fn started_record(attempt: u32, line: &Line) -> Option<AttemptRecord> {
    let WorkerEvent::Started {
        batch_size,
        grad_accum,
        device,
        ..
    } = &line.envelope.event
    else {
        return None;
    };
    Some(AttemptRecord {
        attempt,
        device: device.clone(),
        batch_size: *batch_size,
        grad_accum: *grad_accum,
        start: line.envelope.time,
        end: None,
        outcome: None,
        exit_code: None,
        reason: None,
        job: None,
    })
}

/// Writes the end of an attempt nobody saw end into its folder.
fn close_if_open(
    trial: &TrialFolder,
    record: AttemptRecord,
    own: &[&Line],
    out: &mut Reconciled,
) -> AttemptRecord {
    if record.end.is_some() {
        return record;
    }
    let (outcome, exit_code, reason) = closing(own);
    let end = own
        .iter()
        .map(|l| l.envelope.time)
        .fold(record.start, f64::max);
    let closed = AttemptRecord {
        end: Some(end),
        outcome: Some(outcome),
        exit_code,
        reason: (!reason.is_empty()).then_some(reason),
        ..record
    };
    if let Err(e) = trial_record::append(&trial.dir, &closed) {
        eprintln!(
            "palisweep: cannot record the end of attempt {} of {}: {e}",
            closed.attempt, trial.id
        );
    }
    out.closed.push((trial.id.clone(), closed.attempt, outcome));
    closed
}

/// The events that bring the store up to the folder for one attempt.
fn backfill(
    trial: &TrialFolder,
    record: &AttemptRecord,
    own: &[&Line],
    store: &RecordedAttempts,
    out: &mut Reconciled,
) {
    let key = (trial.id.clone(), record.attempt);
    let (started, ended) = store.attempts.get(&key).copied().unwrap_or((false, false));
    if !started {
        out.restarted.insert(trial.id.clone());
        out.events.push(SweepEvent::AttemptStarted {
            trial: trial.id.clone(),
            attempt: record.attempt,
            device: record.device.clone(),
            batch_size: record.batch_size,
            grad_accum: record.grad_accum,
            pid: None,
            job: record.job.clone(),
            rerun: false,
            time: record.start,
        });
    }
    for line in own {
        let missing = match &line.envelope.event {
            WorkerEvent::Step { step, metrics, .. } | WorkerEvent::Eval { step, metrics, .. } => {
                metrics.keys().any(|name| {
                    !store.metrics.contains(&(
                        trial.id.clone(),
                        record.attempt,
                        *step,
                        name.clone(),
                    ))
                })
            }
            // By path, as the store keys them: a store from before the
            // `predictions` table (or one that lost it) gains the rows of
            // attempts it had seen end.
            WorkerEvent::Predictions { path, .. } => !store
                .predictions
                .contains(&(trial.id.clone(), path.clone())),
            // Upserts: harmless to send again for an attempt the store
            // never saw end.
            _ => !ended,
        };
        if missing {
            out.events.push(SweepEvent::Worker {
                trial: trial.id.clone(),
                attempt: record.attempt,
                line: line.envelope.clone(),
            });
        }
    }
    if !ended && let (Some(end), Some(outcome)) = (record.end, record.outcome) {
        out.events.push(SweepEvent::AttemptEnded {
            trial: trial.id.clone(),
            attempt: record.attempt,
            outcome,
            exit_code: record.exit_code,
            reason: record.reason.clone(),
            peak_memory_bytes: None,
            time: end,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::worker::protocol::EventWriter;

    fn start(attempt: u32) -> AttemptRecord {
        AttemptRecord {
            attempt,
            device: "cpu:0".into(),
            batch_size: 2,
            grad_accum: 1,
            start: 1.0,
            end: None,
            outcome: None,
            exit_code: None,
            reason: None,
            job: None,
        }
    }

    fn step(n: u64) -> WorkerEvent {
        WorkerEvent::Step {
            step: n,
            epoch: 0,
            metrics: BTreeMap::from([("train/loss".to_owned(), 1.0 / n as f64)]),
            truncated: 0,
        }
    }

    #[test]
    fn an_open_attempt_is_closed_and_only_what_the_store_lacks_is_sent() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = TrialDir::from_path(tmp.path());
        trial_record::append(&dir, &start(1)).unwrap();
        let mut writer = EventWriter::open(&dir.events(), 1).unwrap();
        for n in 1..=3 {
            writer.emit(step(n)).unwrap();
        }
        drop(writer);
        // A torn line after them, as a kill mid-write leaves.
        let mut text = std::fs::read_to_string(dir.events()).unwrap();
        text.push_str("{\"v\":1,\"ti");
        std::fs::write(dir.events(), text).unwrap();

        let mut store = RecordedAttempts::default();
        store.attempts.insert(("t".into(), 1), (true, false));
        store
            .metrics
            .insert(("t".into(), 1, 1, "train/loss".into()));
        let trials = [TrialFolder {
            id: "t".into(),
            dir: dir.clone(),
            followed: false,
        }];
        wait_for_workers(&trials, Duration::ZERO).unwrap();
        let out = reconcile(&trials, &store);

        assert_eq!(out.torn.len(), 1);
        assert_eq!(
            out.closed,
            vec![("t".to_owned(), 1, AttemptOutcome::OrchestratorLost)]
        );
        let steps: Vec<u64> = out
            .events
            .iter()
            .filter_map(|e| match e {
                SweepEvent::Worker { line, .. } => match line.event {
                    WorkerEvent::Step { step, .. } => Some(step),
                    _ => None,
                },
                _ => None,
            })
            .collect();
        assert_eq!(steps, vec![2, 3], "step 1 is in the store already");
        assert!(matches!(
            out.events.last(),
            Some(SweepEvent::AttemptEnded {
                outcome: AttemptOutcome::OrchestratorLost,
                ..
            })
        ));
        assert!(out.restarted.is_empty(), "the store had its start");
        // The folder now says so too, and a second pass finds nothing open.
        let closed = trial_record::attempts(&dir);
        assert_eq!(closed[0].outcome, Some(AttemptOutcome::OrchestratorLost));
        assert!(reconcile(&trials, &store).closed.is_empty());
    }

    #[test]
    fn predictions_the_store_lacks_are_sent_even_for_an_attempt_it_saw_end() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = TrialDir::from_path(tmp.path());
        trial_record::append(
            &dir,
            &AttemptRecord {
                end: Some(9.0),
                outcome: Some(AttemptOutcome::Finished),
                exit_code: Some(0),
                ..start(1)
            },
        )
        .unwrap();
        let file = |step: u64| dir.predictions("val", step).display().to_string();
        let mut writer = EventWriter::open(&dir.events(), 1).unwrap();
        writer.emit(step(1)).unwrap();
        for n in [1, 2] {
            writer
                .emit(WorkerEvent::Predictions {
                    step: n,
                    split: "val".into(),
                    path: file(n),
                    examples: 3,
                    metric: "cer".into(),
                })
                .unwrap();
        }
        drop(writer);
        // A store from before the `predictions` table: it saw the attempt
        // end and has its curve, and indexed only the first file.
        let mut store = RecordedAttempts::default();
        store.attempts.insert(("t".into(), 1), (true, true));
        store
            .metrics
            .insert(("t".into(), 1, 1, "train/loss".into()));
        store.predictions.insert(("t".into(), file(1)));
        let trials = [TrialFolder {
            id: "t".into(),
            dir: dir.clone(),
            followed: false,
        }];
        let sent: Vec<WorkerEvent> = reconcile(&trials, &store)
            .events
            .into_iter()
            .filter_map(|e| match e {
                SweepEvent::Worker { line, .. } => Some(line.event),
                _ => None,
            })
            .collect();
        assert!(
            matches!(sent.as_slice(), [WorkerEvent::Predictions { step: 2, .. }]),
            "{sent:?}"
        );
        store.predictions.insert(("t".into(), file(2)));
        assert!(reconcile(&trials, &store).events.is_empty());
    }

    #[test]
    fn a_worker_that_finished_unseen_is_closed_as_finished_and_a_held_folder_is_named() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = TrialDir::from_path(tmp.path());
        trial_record::append(&dir, &start(2)).unwrap();
        let mut writer = EventWriter::open(&dir.events(), 2).unwrap();
        writer.emit(step(1)).unwrap();
        writer
            .emit(WorkerEvent::Finished {
                step: 1,
                best_metric: None,
            })
            .unwrap();
        drop(writer);
        let trials = [TrialFolder {
            id: "t".into(),
            dir: dir.clone(),
            followed: false,
        }];
        let lock = trial_lock::acquire(&dir, 2).unwrap();
        let err = wait_for_workers(&trials, Duration::from_millis(300)).unwrap_err();
        assert!(err.to_string().contains("attempt 2"), "{err}");
        drop(lock);
        let out = reconcile(&trials, &RecordedAttempts::default());
        assert_eq!(out.closed[0].2, AttemptOutcome::Finished);
        assert!(out.restarted.contains("t"), "an empty store gets the start");
        assert!(matches!(
            out.events.first(),
            Some(SweepEvent::AttemptStarted { attempt: 2, .. })
        ));
    }
}

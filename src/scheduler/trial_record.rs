//! What a trial folder says about the trial's past, so that a new `run`
//! resumes it correctly even when the store is lost: `attempts.jsonl` (one
//! line per worker process the scheduler started, with the batch shape it
//! ran) and `events.jsonl` (whether the last attempt finished).

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::events::event::AttemptOutcome;
use crate::layout::TrialDir;
use crate::worker::protocol::{Envelope, WorkerEvent};

/// One worker process of a trial.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AttemptRecord {
    pub attempt: u32,
    pub device: String,
    pub batch_size: u32,
    pub grad_accum: u32,
    pub start: f64,
    /// Absent while it runs (or when the scheduler died first).
    #[serde(default)]
    pub end: Option<f64>,
    #[serde(default)]
    pub outcome: Option<AttemptOutcome>,
    #[serde(default)]
    pub exit_code: Option<i32>,
    #[serde(default)]
    pub reason: Option<String>,
    /// The Slurm job running it (Slurm backend).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<String>,
}

fn attempts_path(dir: &TrialDir) -> std::path::PathBuf {
    dir.path().join("attempts.jsonl")
}

/// Every attempt recorded for the trial, in order (a line per start and
/// one per end; the end line replaces its start).
pub fn attempts(dir: &TrialDir) -> Vec<AttemptRecord> {
    let Ok(text) = std::fs::read_to_string(attempts_path(dir)) else {
        return Vec::new();
    };
    let mut records: Vec<AttemptRecord> = Vec::new();
    for record in text
        .lines()
        .filter_map(|l| serde_json::from_str::<AttemptRecord>(l).ok())
    {
        match records.iter_mut().find(|r| r.attempt == record.attempt) {
            Some(existing) => *existing = record,
            None => records.push(record),
        }
    }
    records
}

/// Appends `record` (a start, or the end of an attempt).
pub fn append(dir: &TrialDir, record: &AttemptRecord) -> std::io::Result<()> {
    let (mut file, _) = crate::jsonl::open_append(&attempts_path(dir))?;
    let line = serde_json::to_string(record).map_err(std::io::Error::other)?;
    crate::jsonl::append_line(&mut file, &line)
}

/// Whether the trial's last worker reported `finished` (after its last
/// `started`), and the best metric it reported.
pub fn finished(dir: &TrialDir) -> Option<Option<f64>> {
    let text = std::fs::read_to_string(dir.events()).ok()?;
    let mut result = None;
    for line in text.lines() {
        match Envelope::parse(line).map(|e| e.event) {
            Ok(WorkerEvent::Started { .. }) => result = None,
            Ok(WorkerEvent::Finished { best_metric, .. }) => result = Some(best_metric),
            _ => {}
        }
    }
    result
}

/// Writes `text` to `path` through a temporary file and a rename, so a
/// reader never sees half a file.
pub fn write_atomically(path: &Path, text: &str) -> std::io::Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text)?;
    std::fs::rename(tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::worker::protocol::EventWriter;

    #[test]
    fn end_lines_replace_their_start_and_finished_needs_the_last_attempt() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = TrialDir::from_path(tmp.path());
        let start = AttemptRecord {
            attempt: 1,
            device: "cpu:0".into(),
            batch_size: 8,
            grad_accum: 1,
            start: 1.0,
            end: None,
            outcome: None,
            exit_code: None,
            reason: None,
            job: None,
        };
        append(&dir, &start).unwrap();
        append(
            &dir,
            &AttemptRecord {
                end: Some(2.0),
                outcome: Some(AttemptOutcome::OutOfMemory),
                exit_code: Some(3),
                ..start.clone()
            },
        )
        .unwrap();
        append(
            &dir,
            &AttemptRecord {
                attempt: 2,
                batch_size: 4,
                grad_accum: 2,
                ..start
            },
        )
        .unwrap();
        let records = attempts(&dir);
        assert_eq!(records.len(), 2);
        assert_eq!(records[0].outcome, Some(AttemptOutcome::OutOfMemory));
        assert_eq!(records[1].batch_size, 4);

        assert_eq!(finished(&dir), None);
        let mut events = EventWriter::open(&dir.events(), 1).unwrap();
        let started = || WorkerEvent::Started {
            trial: "t".into(),
            attempt: 1,
            trainable_params: 0,
            total_steps: 1,
            batch_size: 1,
            grad_accum: 1,
            threads: 1,
            device: "cpu".into(),
            dataset_fingerprint: String::new(),
            resumed_from: 0,
            skipped_lines: 0,
        };
        events.emit(started()).unwrap();
        events
            .emit(WorkerEvent::Finished {
                step: 1,
                best_metric: Some(0.5),
            })
            .unwrap();
        assert_eq!(finished(&dir), Some(Some(0.5)));
        // A later attempt that has not finished (a rerun) clears it.
        events.emit(started()).unwrap();
        assert_eq!(finished(&dir), None);
    }
}

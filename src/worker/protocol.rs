//! What a worker tells its parent: one JSON object per line, on stdout and
//! appended to the trial's `events.jsonl`. The scheduler, the store and
//! TensorBoard read nothing else from a worker, so this is the only schema.
//!
//! Versioned: every line carries `"v"`; readers reject a newer major version
//! instead of guessing.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

use serde::{Deserialize, Serialize};

/// Bumped when a field changes meaning or disappears (adding one is not a bump).
pub const PROTOCOL_VERSION: u32 = 1;

/// Why a worker failed, which decides what the scheduler does next.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureKind {
    /// Out of memory: retry with a smaller batch.
    Oom,
    /// Bad spec or data: retrying cannot help.
    Data,
    Other,
}

/// One event of a trial's life.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum WorkerEvent {
    Started {
        trial: String,
        attempt: u32,
        /// Trainable parameters (what PEFT would report).
        trainable_params: u64,
        total_steps: u64,
        batch_size: u32,
        grad_accum: u32,
        threads: i32,
        device: String,
        /// sha256 of the dataset (annotations and images).
        dataset_fingerprint: String,
        /// Step the run resumed from (0 for a fresh start).
        resumed_from: u64,
        /// Invalid dataset lines skipped (`data.skip_invalid`).
        #[serde(default)]
        skipped_lines: usize,
    },
    /// What the run is made of, for exact reruns (right after `started`).
    Provenance {
        palisweep_version: String,
        #[serde(default)]
        git_sha: Option<String>,
        #[serde(default)]
        libtorch_version: Option<String>,
        /// The checkpoint as the spec names it (`google/paligemma2-3b-pt-224`,
        /// `tiny-3b-224`, a folder).
        #[serde(default)]
        checkpoint: Option<String>,
        /// sha256 of the checkpoint's files (see `model::checkpoint::fingerprint`).
        #[serde(default)]
        checkpoint_fingerprint: Option<String>,
        /// torch's deterministic algorithms were on (as libtorch reported).
        #[serde(default)]
        deterministic_algorithms: bool,
        /// `CUDA_VISIBLE_DEVICES` as the worker saw it (set by the
        /// scheduler, or by Slurm for a job's gres).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        cuda_visible_devices: Option<String>,
        /// The Slurm job running the worker (`SLURM_JOB_ID`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        slurm_job: Option<String>,
    },
    /// One optimiser step: `train/loss`, `train/lr`, `train/grad_norm`,
    /// `perf/samples_per_s`, `perf/tokens_per_s`, `perf/peak_memory_bytes`.
    Step {
        step: u64,
        epoch: u64,
        metrics: BTreeMap<String, f64>,
        /// Training examples of this step whose suffix was cut at
        /// `data.max_suffix_tokens`.
        #[serde(default)]
        truncated: usize,
    },
    /// An evaluation on a split: `val/loss`, `val/field_f1`, …
    Eval {
        step: u64,
        epoch: u64,
        split: String,
        metrics: BTreeMap<String, f64>,
        /// Examples of the split whose suffix was cut for the loss.
        #[serde(default)]
        truncated: usize,
    },
    /// The per-example predictions of the evaluation just reported (right
    /// after its `eval`, when it generated): a `track::predictions` file.
    Predictions {
        step: u64,
        /// `val` or `test`, as the metric names are prefixed.
        split: String,
        path: String,
        /// Lines in the file.
        examples: usize,
        /// The per-example metric's name (`field_f1`, `box_f1`, `cer`).
        metric: String,
    },
    Checkpoint {
        step: u64,
        path: String,
        /// Whether this is the best so far by `eval.select`.
        best: bool,
    },
    Finished {
        step: u64,
        /// The selection metric of the best checkpoint.
        best_metric: Option<f64>,
    },
    Failed {
        kind: FailureKind,
        message: String,
    },
}

/// A line on the wire: the version, the wall-clock time, the event.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Envelope {
    pub v: u32,
    /// Seconds since the Unix epoch.
    pub time: f64,
    /// The attempt that wrote it, so that a reader of `events.jsonl` can
    /// tell attempts apart even before an attempt's `started` (absent in
    /// files from before it was added: then the last `started` says). Not
    /// `attempt`: `started` has a field of that name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub written_by: Option<u32>,
    #[serde(flatten)]
    pub event: WorkerEvent,
}

#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    #[error("not a worker event: {0}")]
    Parse(#[from] serde_json::Error),
    #[error(
        "worker protocol version {found} is newer than this palisweep understands ({PROTOCOL_VERSION})"
    )]
    TooNew { found: u32 },
}

impl Envelope {
    pub fn now(event: WorkerEvent) -> Self {
        let time = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        Envelope {
            v: PROTOCOL_VERSION,
            time,
            written_by: None,
            event,
        }
    }

    pub fn to_line(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    pub fn parse(line: &str) -> Result<Self, ProtocolError> {
        let envelope: Envelope = serde_json::from_str(line)?;
        if envelope.v > PROTOCOL_VERSION {
            return Err(ProtocolError::TooNew { found: envelope.v });
        }
        Ok(envelope)
    }
}

/// Writes events to stdout and appends them to `events.jsonl`, one write
/// per line (see [`crate::jsonl`]), so a crash loses nothing already
/// reported and never leaves a line that spoils the next.
pub struct EventWriter {
    file: std::fs::File,
    attempt: u32,
}

impl EventWriter {
    /// Appends to `path` for `attempt`, first cutting off a torn last line
    /// that a killed worker left (and saying so on stderr).
    pub fn open(path: &Path, attempt: u32) -> std::io::Result<Self> {
        let (file, torn) = crate::jsonl::open_append(path)?;
        if let Some(torn) = torn {
            eprintln!(
                "palisweep worker: dropped a torn last line ({} bytes) of {}: an earlier process died while writing it",
                torn.bytes,
                path.display()
            );
        }
        Ok(EventWriter { file, attempt })
    }

    pub fn emit(&mut self, event: WorkerEvent) -> std::io::Result<()> {
        let mut envelope = Envelope::now(event);
        envelope.written_by = Some(self.attempt);
        let line = envelope.to_line();
        crate::jsonl::append_line(&mut self.file, &line)?;
        let mut stdout = std::io::stdout().lock();
        writeln!(stdout, "{line}")?;
        stdout.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_round_trip_with_their_tag_and_version() {
        let event = WorkerEvent::Step {
            step: 3,
            epoch: 0,
            metrics: BTreeMap::from([("train/loss".to_owned(), 1.5)]),
            truncated: 1,
        };
        let line = Envelope::now(event.clone()).to_line();
        assert!(line.contains("\"event\":\"step\""), "{line}");
        assert!(line.contains("\"v\":1"), "{line}");
        assert_eq!(Envelope::parse(&line).unwrap().event, event);
        let failed = Envelope::now(WorkerEvent::Failed {
            kind: FailureKind::Oom,
            message: "CUDA out of memory".into(),
        })
        .to_line();
        assert!(failed.contains("\"kind\":\"oom\""), "{failed}");
        let predictions = WorkerEvent::Predictions {
            step: 40,
            split: "val".into(),
            path: "/r/trials/t/predictions/val-step00000040.jsonl.gz".into(),
            examples: 12,
            metric: "box_f1".into(),
        };
        let line = Envelope::now(predictions.clone()).to_line();
        assert!(line.contains("\"event\":\"predictions\""), "{line}");
        assert_eq!(Envelope::parse(&line).unwrap().event, predictions);
    }

    #[test]
    fn written_lines_name_their_attempt_without_hiding_the_started_events_own() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.jsonl");
        let mut writer = EventWriter::open(&path, 3).unwrap();
        let started = WorkerEvent::Started {
            trial: "t".into(),
            attempt: 3,
            trainable_params: 1,
            total_steps: 2,
            batch_size: 1,
            grad_accum: 1,
            threads: 1,
            device: "cpu".into(),
            dataset_fingerprint: String::new(),
            resumed_from: 0,
            skipped_lines: 0,
        };
        writer.emit(started.clone()).unwrap();
        let line = std::fs::read_to_string(&path).unwrap();
        let parsed = Envelope::parse(line.trim()).unwrap();
        assert_eq!(parsed.written_by, Some(3));
        assert_eq!(parsed.event, started);
    }

    #[test]
    fn newer_versions_and_garbage_are_rejected() {
        let newer = r#"{"v": 99, "time": 0, "event": "finished", "step": 1, "best_metric": null}"#;
        assert!(matches!(
            Envelope::parse(newer),
            Err(ProtocolError::TooNew { found: 99 })
        ));
        assert!(Envelope::parse("Traceback (most recent call last)").is_err());
    }

    #[test]
    fn the_writer_appends_lines_to_the_events_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.jsonl");
        let mut writer = EventWriter::open(&path, 1).unwrap();
        writer
            .emit(WorkerEvent::Finished {
                step: 1,
                best_metric: Some(0.5),
            })
            .unwrap();
        drop(writer);
        let mut writer = EventWriter::open(&path, 1).unwrap();
        writer
            .emit(WorkerEvent::Finished {
                step: 2,
                best_metric: None,
            })
            .unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let steps: Vec<u64> = text
            .lines()
            .map(|l| match Envelope::parse(l).unwrap().event {
                WorkerEvent::Finished { step, .. } => step,
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(steps, vec![1, 2]);
    }
}

//! The store end to end: events in through the sink, rows and views out.
#![allow(clippy::float_cmp)] // values are stored and read back exactly

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use serde_json::json;
use sha2::Digest as _;

use super::*;
use crate::events::event::{
    AttemptOutcome, Counts, EventSink, SweepEvent, SweepInfo, SweepStatus, TrialInfo, TrialStatus,
};
use crate::worker::protocol::{Envelope, FailureKind, PROTOCOL_VERSION, WorkerEvent};

const HF: &str = "hf_SECRETsecretSECRETsecretSECRET1234";
const T0: f64 = 1_700_000_000.0;

pub(super) fn sweep_started(name: &str, time: f64) -> SweepEvent {
    SweepEvent::SweepStarted {
        sweep: Box::new(SweepInfo {
            name: name.into(),
            spec_path: "experiments/demo.toml".into(),
            spec_text: format!(
                "[experiment]\nname = \"{name}\"\n[model]\nhf_token = \"{HF}\"\n[sweep.axes]\n\"train.lr\" = [1e-4, 2e-4]\n"
            ),
            spec_hash: sha2::Sha256::digest(name.as_bytes()).iter().fold(
                String::new(),
                |mut s, b| {
                    let _ = write!(s, "{b:02x}");
                    s
                },
            ),
            results: "/tmp/results".into(),
            total_trials: 3,
            devices: vec!["cuda:0".into(), "cuda:1".into()],
            axes: vec!["train.lr".into()],
            select_metric: "val/field_f1".into(),
        }),
        environment: Box::new(crate::events::event::Environment {
            palisweep_version: "0.1.0".into(),
            git_sha: Some("abc123".into()),
            libtorch_version: Some("2.9.0".into()),
            cuda_version: Some("12.8".into()),
            gpu_names: vec!["NVIDIA H100".into()],
            driver_version: Some("570.1".into()),
            host: "node1".into(),
            dataset_fingerprint: Some("d".repeat(64)),
            checkpoint_fingerprints: BTreeMap::from([(
                "google/paligemma2-3b-pt-224".into(),
                "c".repeat(64),
            )]),
        }),
        resumed: false,
        time,
    }
}

pub(super) fn recorded(id: &str, lr: f64, status: TrialStatus) -> SweepEvent {
    SweepEvent::TrialRecorded {
        trial: Box::new(TrialInfo {
            id: id.into(),
            params: BTreeMap::from([
                ("train.lr".into(), json!(lr)),
                ("train.seed".into(), json!(0)),
                ("model.hf_token".into(), json!(HF)),
            ]),
            config: format!("[train]\nlr = {lr}\n[model]\nhf_token = \"{HF}\"\n"),
            dir: format!("/tmp/results/demo/trials/{id}"),
            est_memory_bytes: 10 << 30,
            batch_size: 8,
            grad_accum: 1,
            rel_cost: 1.0,
        }),
        status,
    }
}

fn started(id: &str, attempt: u32, device: &str, batch: u32, time: f64) -> SweepEvent {
    SweepEvent::AttemptStarted {
        trial: id.into(),
        attempt,
        device: device.into(),
        batch_size: batch,
        grad_accum: 8 / batch,
        pid: Some(4242),
        job: None,
        rerun: false,
        time,
    }
}

fn worker(id: &str, attempt: u32, time: f64, event: WorkerEvent) -> SweepEvent {
    SweepEvent::Worker {
        trial: id.into(),
        attempt,
        line: Envelope {
            written_by: None,
            v: PROTOCOL_VERSION,
            time,
            event,
        },
    }
}

fn worker_started(id: &str, attempt: u32, batch: u32, time: f64) -> SweepEvent {
    worker(
        id,
        attempt,
        time,
        WorkerEvent::Started {
            trial: id.into(),
            attempt,
            trainable_params: 1_000_000,
            total_steps: 100,
            batch_size: batch,
            grad_accum: 8 / batch,
            threads: 4,
            device: "cuda:0".into(),
            dataset_fingerprint: "d".repeat(64),
            resumed_from: 0,
            skipped_lines: 0,
        },
    )
}

pub(super) fn step(id: &str, attempt: u32, step: u64, loss: f64, time: f64) -> SweepEvent {
    worker(
        id,
        attempt,
        time,
        WorkerEvent::Step {
            step,
            epoch: step / 10,
            metrics: BTreeMap::from([
                ("train/loss".into(), loss),
                ("train/lr".into(), 1e-4),
                ("train/grad_norm".into(), 0.5),
                ("perf/samples_per_s".into(), 12.0),
                ("perf/tokens_per_s".into(), 1200.0),
                ("perf/peak_memory_bytes".into(), 9e9),
            ]),
            truncated: 0,
        },
    )
}

fn eval(id: &str, attempt: u32, step: u64, f1: f64, time: f64) -> SweepEvent {
    worker(
        id,
        attempt,
        time,
        WorkerEvent::Eval {
            step,
            epoch: step / 10,
            split: "val".into(),
            metrics: BTreeMap::from([("val/loss".into(), 1.0 - f1), ("val/field_f1".into(), f1)]),
            truncated: 0,
        },
    )
}

/// The predictions file of an evaluation, where the worker writes it.
fn predictions(id: &str, attempt: u32, split: &str, step: u64, time: f64) -> SweepEvent {
    worker(
        id,
        attempt,
        time,
        WorkerEvent::Predictions {
            step,
            split: split.into(),
            path: format!(
                "/tmp/results/demo/trials/{id}/predictions/{split}-step{step:08}.jsonl.gz"
            ),
            examples: 12,
            metric: "field_f1".into(),
        },
    )
}

fn attempt_ended(
    id: &str,
    attempt: u32,
    outcome: AttemptOutcome,
    code: i32,
    reason: Option<&str>,
    time: f64,
) -> SweepEvent {
    SweepEvent::AttemptEnded {
        trial: id.into(),
        attempt,
        outcome,
        exit_code: Some(code),
        reason: reason.map(Into::into),
        peak_memory_bytes: Some(10_000_000_000),
        time,
    }
}

fn trial_ended(id: &str, status: TrialStatus, best: Option<f64>, time: f64) -> SweepEvent {
    SweepEvent::TrialEnded {
        trial: id.into(),
        status,
        reason: (status == TrialStatus::Failed).then(|| "bad dataset line 3".into()),
        best_metric: best,
        time,
    }
}

/// A whole sweep: `aaa` finishes, `bbb` runs out of memory once then
/// finishes at batch 4, `ccc` fails on its data.
#[allow(clippy::too_many_lines)]
pub(super) fn sweep_stream(name: &str) -> Vec<SweepEvent> {
    let mut events = vec![
        sweep_started(name, T0),
        recorded("aaa111aaa111", 1e-4, TrialStatus::Queued),
        recorded("bbb222bbb222", 2e-4, TrialStatus::Queued),
        recorded("ccc333ccc333", 3e-4, TrialStatus::Queued),
        started("aaa111aaa111", 1, "cuda:0", 8, T0 + 1.0),
        worker_started("aaa111aaa111", 1, 8, T0 + 2.0),
        started("bbb222bbb222", 1, "cuda:1", 8, T0 + 1.0),
        worker(
            "bbb222bbb222",
            1,
            T0 + 3.0,
            WorkerEvent::Failed {
                kind: FailureKind::Oom,
                message: "CUDA out of memory".into(),
            },
        ),
        attempt_ended(
            "bbb222bbb222",
            1,
            AttemptOutcome::OutOfMemory,
            3,
            None,
            T0 + 4.0,
        ),
        started("bbb222bbb222", 2, "cuda:1", 4, T0 + 5.0),
        worker_started("bbb222bbb222", 2, 4, T0 + 6.0),
    ];
    for s in 1..=20 {
        let t = T0 + 10.0 + s as f64;
        events.push(step("aaa111aaa111", 1, s, 2.0 / s as f64, t));
        events.push(step("bbb222bbb222", 2, s, 3.0 / s as f64, t));
        if s % 10 == 0 {
            events.push(eval("aaa111aaa111", 1, s, 0.5 + s as f64 / 100.0, t));
            events.push(eval("bbb222bbb222", 2, s, 0.4 + s as f64 / 100.0, t));
            events.push(predictions("aaa111aaa111", 1, "val", s, t));
            events.push(predictions("bbb222bbb222", 2, "val", s, t));
            events.push(worker(
                "aaa111aaa111",
                1,
                t,
                WorkerEvent::Checkpoint {
                    step: s,
                    path: format!("/tmp/results/demo/trials/aaa111aaa111/checkpoints/{s}"),
                    best: true,
                },
            ));
        }
    }
    events.extend([
        worker(
            "aaa111aaa111",
            1,
            T0 + 40.0,
            WorkerEvent::Finished {
                step: 20,
                best_metric: Some(0.7),
            },
        ),
        attempt_ended(
            "aaa111aaa111",
            1,
            AttemptOutcome::Finished,
            0,
            None,
            T0 + 41.0,
        ),
        trial_ended("aaa111aaa111", TrialStatus::Finished, Some(0.7), T0 + 41.0),
        SweepEvent::Artifact {
            trial: "aaa111aaa111".into(),
            kind: "final".into(),
            path: "/tmp/results/demo/trials/aaa111aaa111/final".into(),
            bytes: 12_345,
            sha256: Some("e".repeat(64)),
        },
        attempt_ended(
            "bbb222bbb222",
            2,
            AttemptOutcome::Finished,
            0,
            None,
            T0 + 42.0,
        ),
        trial_ended("bbb222bbb222", TrialStatus::Finished, Some(0.6), T0 + 42.0),
        started("ccc333ccc333", 1, "cuda:0", 8, T0 + 43.0),
        worker(
            "ccc333ccc333",
            1,
            T0 + 44.0,
            WorkerEvent::Failed {
                kind: FailureKind::Data,
                message: format!("bad dataset line 3 (token {HF})"),
            },
        ),
        attempt_ended(
            "ccc333ccc333",
            1,
            AttemptOutcome::InvalidInput,
            2,
            Some("exit 2: bad dataset line 3"),
            T0 + 45.0,
        ),
        trial_ended("ccc333ccc333", TrialStatus::Failed, None, T0 + 45.0),
        SweepEvent::SweepEnded {
            status: SweepStatus::Failed,
            counts: Counts {
                finished: 2,
                failed: 1,
                pruned: 0,
                interrupted: 0,
            },
            time: T0 + 46.0,
        },
    ]);
    events
}

/// Every row of every table, as text, in a fixed order.
fn dump(store: &Store) -> Vec<String> {
    let mut out = Vec::new();
    for table in [
        "sweeps",
        "trials",
        "attempts",
        "metrics",
        "artifacts",
        "environment",
        "predictions",
    ] {
        let conn = store.connection();
        let mut stmt = conn
            .prepare(&format!("SELECT * FROM {table} ORDER BY 1, 2, 3, 4, 5"))
            .unwrap();
        let n = stmt.column_count();
        let rows = stmt
            .query_map([], |r| {
                let cells: Vec<String> = (0..n)
                    .map(|i| match r.get_ref(i).unwrap() {
                        rusqlite::types::ValueRef::Text(t) => {
                            String::from_utf8_lossy(t).into_owned()
                        }
                        other => format!("{other:?}"),
                    })
                    .collect();
                Ok(format!("{table}: {}", cells.join(" | ")))
            })
            .unwrap();
        out.extend(rows.map(Result::unwrap));
    }
    out
}

fn ingest(path: &Path, events: &[SweepEvent], batch: usize) -> StoreSink {
    let mut sink = StoreSink::open(path).unwrap();
    for chunk in events.chunks(batch) {
        sink.handle(chunk).unwrap();
    }
    sink.close().unwrap();
    sink
}

#[test]
fn a_sweep_is_recorded_and_read_back() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("results/palisweep.sqlite");
    ingest(&path, &sweep_stream("demo"), 7);
    let store = Store::open_read_only(&path).unwrap();
    assert_eq!(store.schema_version().unwrap(), SCHEMA_VERSION);

    let sweep = store.resolve_sweep("demo").unwrap();
    assert_eq!(sweep.status, "failed");
    assert_eq!(sweep.counts.finished, 2);
    assert_eq!(sweep.counts.failed, 1);
    assert_eq!(sweep.ended, Some(T0 + 46.0));

    let trials = store.trials("demo").unwrap();
    assert_eq!(trials.len(), 3);
    let b = &trials[1];
    assert_eq!(
        (b.attempt, b.batch_size, b.grad_accum),
        (2, Some(4), Some(2))
    );
    assert_eq!(b.best_metric, Some(0.6));
    assert_eq!(b.start, Some(T0 + 1.0));
    assert_eq!(trials[0].best_step, Some(20));
    assert_eq!(trials[2].exit_reason.as_deref(), Some("bad dataset line 3"));

    let attempts = store.attempts("demo", "bbb222bbb222").unwrap();
    assert_eq!(attempts.len(), 2);
    assert_eq!(attempts[0].outcome.as_deref(), Some("out_of_memory"));
    assert_eq!(attempts[0].reason.as_deref(), Some("CUDA out of memory"));
    assert_eq!(attempts[0].failure_kind.as_deref(), Some("oom"));
    assert_eq!(attempts[1].threads, Some(4));
    assert_eq!(attempts[1].batch_size, Some(4));

    let summary = store.metric_summary("demo", "aaa111aaa111").unwrap();
    let loss = summary.iter().find(|m| m.name == "train/loss").unwrap();
    assert_eq!(loss.count, 20);
    assert_eq!(loss.last_step, 20);
    assert_eq!(loss.last, Some(0.1));
    assert_eq!(loss.best, Some(0.1));
    assert_eq!(loss.max, Some(2.0));
    let f1 = summary.iter().find(|m| m.name == "val/field_f1").unwrap();
    assert!(f1.higher_is_better);
    assert_eq!(f1.best, Some(0.7));

    let series = store
        .metric_series("demo", "aaa111aaa111", "train/loss")
        .unwrap();
    assert_eq!(series.len(), 20);
    assert_eq!((series[0].step, series[0].epoch), (1, Some(0)));
    assert_eq!(series[0].wall_time, T0 + 11.0);

    let results = store.trial_results("demo", "val/field_f1").unwrap();
    assert_eq!(results[0].best, Some(0.7));
    assert_eq!(results[0].best_step, Some(20));
    assert_eq!(results[0].wall_time_s, Some(40.0));
    assert_eq!(results[0].peak_memory_bytes, Some(10_000_000_000));
    assert_eq!(results[1].wall_time_s, Some(3.0 + 37.0));
    assert_eq!(results[2].best, None);
    assert_eq!(
        super::query::varying_keys(&store.trials("demo").unwrap()),
        vec!["train.lr"]
    );

    let env = store.latest_environment("demo").unwrap().unwrap();
    assert_eq!(env.environment.gpu_names, vec!["NVIDIA H100"]);
    assert_eq!(env.environment.libtorch_version.as_deref(), Some("2.9.0"));
}

#[test]
fn views_render_status_ls_and_show() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("palisweep.sqlite");
    let events = sweep_stream("demo");
    // Stop before `ccc` runs and `bbb` ends: `bbb` is running.
    let cut = events
        .iter()
        .position(|e| matches!(e, SweepEvent::AttemptEnded { trial, attempt: 2, .. } if trial == "bbb222bbb222"))
        .unwrap();
    let sink = ingest(&path, &events[..cut], 100);
    let store = sink.store();

    let status = views::status(store, None).unwrap();
    let text = status.to_text();
    assert!(text.contains("sweep demo"), "{text}");
    assert!(
        text.contains("1 queued, 1 running, 1 finished, 0 failed"),
        "{text}"
    );
    assert!(
        text.contains("bbb222bbb222  cuda:1  2        20/100  0.15"),
        "{text}"
    );
    assert!(text.contains("out_of_memory") && text.contains("CUDA out of memory"));
    let json = status.to_json();
    assert_eq!(json["sweep"]["counts"]["running"], 1);
    assert_eq!(json["running"][0]["step"], 20);
    assert_eq!(json["failures"][0]["outcome"], "out_of_memory");

    let ls = views::ls(store).unwrap();
    assert!(ls.to_text().starts_with("sweep"), "{}", ls.to_text());
    assert_eq!(ls.to_json()[0]["name"], "demo");
    assert_eq!(ls.to_json()[0]["id"].as_str().unwrap().len(), 12);

    let show = views::show(store, "aaa1").unwrap();
    let text = show.to_text();
    for needle in [
        "trial aaa111aaa111 of sweep demo  finished",
        "lr = 0.0001",
        "train/loss",
        "val/field_f1",
        "final",
        "12.1 KiB",
        "hf_token = \"<redacted>\"",
    ] {
        assert!(text.contains(needle), "{needle} missing:\n{text}");
    }
    let json = show.to_json();
    assert_eq!(json["trial"]["id"], "aaa111aaa111");
    assert_eq!(json["attempts"][0]["threads"], 4);
    assert!(
        matches!(views::show(store, "zzz"), Err(StoreError::NoTrial { .. })),
        "unknown trial"
    );
}

#[test]
fn replaying_events_leaves_identical_rows() {
    let dir = tempfile::tempdir().unwrap();
    let events = sweep_stream("demo");
    let once = dir.path().join("once.sqlite");
    let sink = ingest(&once, &events, 5);
    let expected = dump(sink.store());
    assert!(expected.len() > 200);
    // The same stream again, in other batch sizes, on top of itself.
    let sink = ingest(&once, &events, 1);
    assert_eq!(dump(sink.store()), expected);
    let sink = ingest(&once, &events, 4096);
    assert_eq!(dump(sink.store()), expected);
}

#[test]
fn a_resumed_sweep_keeps_finished_trials() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("palisweep.sqlite");
    let mut sink = ingest(&path, &sweep_stream("demo"), 50);
    // A second run: the finished ones are recorded as queued by mistake
    // (or replayed), the failed one is queued to run again.
    sink.handle(&[
        sweep_started("demo", T0 + 100.0),
        recorded("aaa111aaa111", 1e-4, TrialStatus::Queued),
        recorded("bbb222bbb222", 2e-4, TrialStatus::Finished),
        recorded("ccc333ccc333", 3e-4, TrialStatus::Queued),
    ])
    .unwrap();
    let store = sink.store();
    let trials = store.trials("demo").unwrap();
    assert_eq!(trials[0].status, "finished");
    assert_eq!(trials[0].best_metric, Some(0.7));
    assert_eq!(trials[1].status, "finished");
    assert_eq!(trials[1].batch_size, Some(4), "the batch that actually ran");
    assert_eq!(trials[2].status, "queued");
    let sweep = store.resolve_sweep("demo").unwrap();
    assert_eq!((sweep.status.as_str(), sweep.ended), ("running", None));
    assert_eq!(sweep.created, T0);
    assert_eq!(store.environments("demo").unwrap().len(), 2);
}

#[test]
fn a_bad_batch_is_refused_whole() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("palisweep.sqlite");
    let mut sink = StoreSink::open(&path).unwrap();
    let err = sink
        .write(&[step("aaa111aaa111", 1, 1, 1.0, T0)])
        .unwrap_err();
    assert!(matches!(err, StoreError::NoCurrentSweep { .. }), "{err}");
    let err = sink
        .handle(&[sweep_started("demo", T0), started("nope", 1, "cpu", 8, T0)])
        .unwrap_err();
    assert!(err.to_string().contains("`nope`"), "{err}");
    // Nothing of the failed batch was kept.
    assert!(sink.store().sweeps().unwrap().is_empty());
}

#[test]
fn nan_values_are_stored_as_null() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("palisweep.sqlite");
    let sink = ingest(
        &path,
        &[
            sweep_started("demo", T0),
            recorded("aaa111aaa111", 1e-4, TrialStatus::Queued),
            started("aaa111aaa111", 1, "cpu", 8, T0),
            step("aaa111aaa111", 1, 1, 1.0, T0 + 1.0),
            step("aaa111aaa111", 1, 2, f64::NAN, T0 + 2.0),
        ],
        10,
    );
    let summary = sink.store().metric_summary("demo", "aaa111aaa111").unwrap();
    let loss = summary.iter().find(|m| m.name == "train/loss").unwrap();
    assert_eq!((loss.count, loss.last, loss.min), (2, None, Some(1.0)));
}

#[test]
fn no_secret_reaches_the_database() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("palisweep.sqlite");
    let sink = ingest(&path, &sweep_stream("demo"), 16);
    // Every text cell …
    let rows = dump(sink.store());
    assert!(rows.iter().all(|r| !r.contains(HF)), "a secret was stored");
    assert!(rows.iter().any(|r| r.contains(REDACTED)));
    let trial = sink.store().resolve_trial("aaa111aaa111").unwrap();
    assert_eq!(trial.params["model.hf_token"], REDACTED);
    // … and every byte on disk (the database and its WAL).
    drop(sink);
    for file in std::fs::read_dir(dir.path()).unwrap() {
        let bytes = std::fs::read(file.unwrap().path()).unwrap();
        let needle = HF.as_bytes();
        assert!(
            !bytes.windows(needle.len()).any(|w| w == needle),
            "a secret is on disk"
        );
    }
}

#[test]
fn sweeps_and_trials_resolve_by_name_or_prefix() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("palisweep.sqlite");
    let mut events = sweep_stream("demo-a");
    events.extend(sweep_stream("demo-b"));
    let sink = ingest(&path, &events, 64);
    let store = sink.store();
    assert_eq!(store.resolve_sweep("demo-a").unwrap().name, "demo-a");
    let err = store.resolve_sweep("demo").unwrap_err();
    assert!(matches!(err, StoreError::AmbiguousSweep { .. }), "{err}");
    let hash = store.resolve_sweep("demo-b").unwrap().spec_hash;
    assert_eq!(store.resolve_sweep(&hash[..6]).unwrap().name, "demo-b");
    let err = store.resolve_sweep("other").unwrap_err();
    assert!(err.to_string().contains("known sweeps: "), "{err}");
    // The same trial id in two sweeps: keep both, ask which.
    let err = store.resolve_trial("aaa111").unwrap_err();
    assert!(err.to_string().contains("demo-a/aaa111aaa111"), "{err}");
    let t = store.resolve_trial("demo-b/aaa1").unwrap();
    assert_eq!(
        (t.sweep.as_str(), t.id.as_str()),
        ("demo-b", "aaa111aaa111")
    );
    assert_eq!(
        store
            .metric_series("demo-a", "aaa111aaa111", "train/loss")
            .unwrap()
            .len(),
        20
    );
    assert_eq!(store.sweep_of("aaa111aaa111").unwrap(), None);
}

#[test]
fn exports_write_quoted_csv_and_jsonl() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("palisweep.sqlite");
    let mut events = vec![
        sweep_started("a,\"b\"", T0),
        recorded("aaa111aaa111", 1e-4, TrialStatus::Queued),
        started("aaa111aaa111", 1, "cpu", 8, T0),
        step("aaa111aaa111", 1, 1, f64::NAN, T0 + 1.5),
    ];
    events.push(eval("aaa111aaa111", 1, 1, 0.5, T0 + 2.0));
    let sink = ingest(&path, &events, 10);
    let store = sink.store();

    let mut csv = Vec::new();
    let n = export_metrics(store, "a,", ExportFormat::Csv, &mut csv).unwrap();
    assert_eq!(n, 8);
    let csv = String::from_utf8(csv).unwrap();
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(
        lines[0],
        "sweep,trial_id,attempt,step,epoch,name,value,wall_time,in_curve"
    );
    assert!(lines[1].ends_with(",true"), "{}", lines[1]);
    assert_eq!(lines.len(), 9);
    assert!(
        lines.contains(&"\"a,\"\"b\"\"\",aaa111aaa111,1,1,0,train/loss,,1700000001.5,true"),
        "{csv}"
    );
    assert!(lines.contains(&"\"a,\"\"b\"\"\",aaa111aaa111,1,1,0,val/field_f1,0.5,1700000002,true"));

    let mut jsonl = Vec::new();
    export_metrics(store, "a,\"b\"", ExportFormat::Jsonl, &mut jsonl).unwrap();
    let rows: Vec<serde_json::Value> = String::from_utf8(jsonl)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), 8);
    assert_eq!(rows[0]["sweep"], "a,\"b\"");
    let loss = rows.iter().find(|r| r["name"] == "train/loss").unwrap();
    assert_eq!(loss["value"], serde_json::Value::Null);
    assert_eq!(loss["wall_time"], 1_700_000_001.5);
}

#[test]
fn a_v1_store_is_migrated_forward() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("palisweep.sqlite");
    {
        // What palisweep with schema version 1 left behind.
        let mut conn = rusqlite::Connection::open(&path).unwrap();
        schema::migrate(&mut conn, &path, 1).unwrap();
        conn.execute_batch(
            "INSERT INTO sweeps VALUES ('old', 's.toml', 'x = 1', 'ff00', '/r', 1.0, 1.0, 2.0,
                 'finished', 1, '[]', '[]', 'val/loss');
             INSERT INTO trials (sweep, id, params, config, dir, status, attempt, batch_size)
                 VALUES ('old', 'aaa111aaa111', '{}', '', '/r/old', 'finished', 1, 8);
             INSERT INTO attempts (sweep, trial_id, attempt, start, end, outcome)
                 VALUES ('old', 'aaa111aaa111', 1, 1.0, 2.0, 'finished');
             INSERT INTO metrics VALUES ('aaa111aaa111', 'old', 1, 1, 0, 'val/loss', 0.5, 1.5);",
        )
        .unwrap();
        assert_eq!(schema::version(&conn).unwrap(), 1);
    }
    // Readers migrate it too (once).
    let store = Store::open_read_only(&path).unwrap();
    assert_eq!(store.schema_version().unwrap(), SCHEMA_VERSION);
    let detail = store.trial_detail("aaa111aaa111").unwrap();
    assert_eq!(detail.attempts[0].threads, None);
    assert_eq!(detail.metrics[0].last, Some(0.5));
    drop(store);
    // And the writer carries on with the new columns.
    let sink = ingest(&path, &sweep_stream("demo"), 64);
    let store = sink.store();
    assert_eq!(store.sweeps().unwrap().len(), 2);
    assert_eq!(
        store.attempts("demo", "aaa111aaa111").unwrap()[0].threads,
        Some(4)
    );
}

#[test]
fn predictions_files_are_indexed_by_trial_split_and_step() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("palisweep.sqlite");
    let sink = ingest(&path, &sweep_stream("demo"), 5);
    let store = sink.store();
    let rows = store.predictions("demo", "aaa111aaa111").unwrap();
    let steps: Vec<(&str, u64, u32)> = rows
        .iter()
        .map(|r| (r.split.as_str(), r.step, r.attempt))
        .collect();
    assert_eq!(steps, [("val", 10, 1), ("val", 20, 1)]);
    assert_eq!(
        rows[1],
        PredictionFileRow {
            split: "val".into(),
            step: 20,
            path: "/tmp/results/demo/trials/aaa111aaa111/predictions/val-step00000020.jsonl.gz"
                .into(),
            examples: 12,
            metric: "field_f1".into(),
            attempt: 1,
        }
    );
    // `bbb` ran on its second attempt (the first ran out of memory).
    let attempts: Vec<u32> = store
        .predictions("demo", "bbb222bbb222")
        .unwrap()
        .iter()
        .map(|r| r.attempt)
        .collect();
    assert_eq!(attempts, [2, 2]);
    assert!(
        store
            .predictions("demo", "ccc333ccc333")
            .unwrap()
            .is_empty()
    );
    assert!(
        store
            .predictions("other", "aaa111aaa111")
            .unwrap()
            .is_empty()
    );
    // A file of a trial never recorded is refused, naming it.
    let mut sink = StoreSink::for_sweep(Store::open(&path).unwrap(), "demo");
    let err = sink
        .write(&[predictions("zzz999zzz999", 1, "val", 10, T0)])
        .unwrap_err();
    assert!(
        matches!(&err, StoreError::UnknownTrial { trial, .. } if trial == "zzz999zzz999"),
        "{err}"
    );
}

#[test]
fn a_resumed_attempt_takes_over_a_steps_file_and_reruns_stay_out() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("palisweep.sqlite");
    let t = "ddd444ddd444";
    let resumed = |attempt: u32, from: u64, time: f64| {
        worker(
            t,
            attempt,
            time,
            WorkerEvent::Started {
                trial: t.into(),
                attempt,
                trainable_params: 1,
                total_steps: 30,
                batch_size: 8,
                grad_accum: 1,
                threads: 1,
                device: "cpu".into(),
                dataset_fingerprint: String::new(),
                resumed_from: from,
                skipped_lines: 0,
            },
        )
    };
    let files = |store: &Store| -> Vec<(String, u64, u32)> {
        store
            .predictions("demo", t)
            .unwrap()
            .into_iter()
            .map(|r| (r.split, r.step, r.attempt))
            .collect()
    };
    // Attempt 1 evaluates steps 10 and 20, is killed after checkpointing
    // step 10 only; attempt 2 resumes from 10.
    let mut sink = ingest(
        &path,
        &[
            sweep_started("demo", T0),
            recorded(t, 1e-4, TrialStatus::Queued),
            started(t, 1, "cpu", 8, T0),
            resumed(1, 0, T0),
            predictions(t, 1, "val", 10, T0 + 1.0),
            predictions(t, 1, "val", 20, T0 + 2.0),
            attempt_ended(t, 1, AttemptOutcome::Crashed, 1, None, T0 + 3.0),
            started(t, 2, "cpu", 8, T0 + 4.0),
            resumed(2, 10, T0 + 4.0),
        ],
        64,
    );
    // Step 20 is not the trial's until attempt 2 evaluates it again.
    assert_eq!(files(sink.store()), [("val".into(), 10, 1)]);
    sink.write(&[
        predictions(t, 2, "val", 20, T0 + 5.0),
        predictions(t, 2, "test", 30, T0 + 6.0),
    ])
    .unwrap();
    assert_eq!(
        files(sink.store()),
        [
            ("val".into(), 10, 1),
            ("val".into(), 20, 2),
            ("test".into(), 30, 2)
        ]
    );
    // A rerun writes its own folder and is not the trial's result.
    sink.write(&[
        SweepEvent::AttemptStarted {
            trial: t.into(),
            attempt: 3,
            device: "cpu".into(),
            batch_size: 8,
            grad_accum: 1,
            pid: None,
            job: None,
            rerun: true,
            time: T0 + 7.0,
        },
        worker(
            t,
            3,
            T0 + 8.0,
            WorkerEvent::Predictions {
                step: 10,
                split: "val".into(),
                path: format!(
                    "/tmp/results/demo/trials/{t}/reruns/3/predictions/val-step00000010.jsonl.gz"
                ),
                examples: 12,
                metric: "field_f1".into(),
            },
        ),
    ])
    .unwrap();
    assert_eq!(files(sink.store()).len(), 3);
    let indexed: i64 = sink
        .store()
        .connection()
        .query_row("SELECT COUNT(*) FROM predictions", [], |r| r.get(0))
        .unwrap();
    assert_eq!(indexed, 4, "the rerun's file is indexed, under its attempt");
}

#[test]
fn a_store_from_before_predictions_gains_the_table() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("palisweep.sqlite");
    {
        // What palisweep with schema version 3 left behind.
        let mut conn = rusqlite::Connection::open(&path).unwrap();
        schema::migrate(&mut conn, &path, 3).unwrap();
        let tables: i64 = conn
            .query_row(
                "SELECT COUNT(*) FROM sqlite_master WHERE name = 'predictions'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(tables, 0);
    }
    let sink = ingest(&path, &sweep_stream("demo"), 64);
    assert_eq!(sink.store().schema_version().unwrap(), SCHEMA_VERSION);
    assert_eq!(
        sink.store()
            .predictions("demo", "aaa111aaa111")
            .unwrap()
            .len(),
        2
    );
    drop(sink);
    // Dropped by hand at the current version: recreated empty on open.
    rusqlite::Connection::open(&path)
        .unwrap()
        .execute_batch("DROP TABLE predictions;")
        .unwrap();
    let store = Store::open(&path).unwrap();
    assert!(
        store
            .predictions("demo", "aaa111aaa111")
            .unwrap()
            .is_empty()
    );
}

#[test]
fn a_newer_store_is_refused_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("palisweep.sqlite");
    drop(Store::open(&path).unwrap());
    rusqlite::Connection::open(&path)
        .unwrap()
        .pragma_update(None, "user_version", 99)
        .unwrap();
    for result in [Store::open(&path), Store::open_read_only(&path)] {
        let Err(err) = result else {
            panic!("a newer store was opened")
        };
        assert!(
            matches!(
                err,
                StoreError::TooNew {
                    found: 99,
                    known: SCHEMA_VERSION,
                    ..
                }
            ),
            "{err}"
        );
        let text = err.to_string();
        assert!(text.contains(&path.display().to_string()), "{text}");
        assert!(
            text.contains("99") && text.contains("upgrade palisweep"),
            "{text}"
        );
    }
    let missing = dir.path().join("none/palisweep.sqlite");
    let err = Store::open_read_only(&missing).err().unwrap();
    assert!(matches!(err, StoreError::Missing { .. }), "{err}");
    assert!(!missing.exists(), "a reader creates nothing");
}

#[test]
fn readers_poll_while_the_sink_writes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("palisweep.sqlite");
    let mut sink = StoreSink::open(&path).unwrap();
    let trials: Vec<String> = (0..8).map(|i| format!("{i:012}")).collect();
    let mut head = vec![sweep_started("live", T0)];
    for (i, t) in trials.iter().enumerate() {
        head.push(recorded(t, 1e-4 * (i + 1) as f64, TrialStatus::Queued));
        head.push(started(t, 1, "cpu", 8, T0));
    }
    sink.handle(&head).unwrap();

    let done = Arc::new(AtomicBool::new(false));
    let readers: Vec<_> = (0..3)
        .map(|_| {
            let done = Arc::clone(&done);
            let path = path.clone();
            std::thread::spawn(move || {
                let store = Store::open_read_only(&path).unwrap();
                let (mut polls, mut last) = (0, 0_i64);
                while !done.load(Ordering::Relaxed) || polls == 0 {
                    let n: i64 = store
                        .connection()
                        .query_row("SELECT COUNT(*) FROM metrics", [], |r| r.get(0))
                        .unwrap();
                    assert!(n >= last, "counts went back: {n} < {last}");
                    last = n;
                    let status = views::status(&store, Some("live")).unwrap();
                    assert_eq!(status.sweep.counts.total(), 8);
                    let _ = status.to_text();
                    polls += 1;
                }
                polls
            })
        })
        .collect();

    let mut batch = Vec::new();
    for s in 1..=500_u64 {
        for t in &trials {
            batch.push(step(t, 1, s, 1.0 / s as f64, T0 + s as f64));
        }
        if batch.len() >= 200 {
            sink.handle(&batch).unwrap();
            batch.clear();
        }
    }
    sink.handle(&batch).unwrap();
    done.store(true, Ordering::Relaxed);
    for r in readers {
        assert!(r.join().unwrap() > 0);
    }
    let store = Store::open_read_only(&path).unwrap();
    let n: i64 = store
        .connection()
        .query_row("SELECT COUNT(*) FROM metrics", [], |r| r.get(0))
        .unwrap();
    assert_eq!(n, 8 * 500 * 6);
}

/// Ingest throughput, not a test: run it with
/// `cargo test --release --lib ingest_benchmark -- --ignored --nocapture`.
#[test]
#[ignore = "benchmark: run by name in release mode"]
fn ingest_benchmark() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("palisweep.sqlite");
    let mut sink = StoreSink::open(&path).unwrap();
    let trials: Vec<String> = (0..16).map(|i| format!("{i:012}")).collect();
    let mut head = vec![sweep_started("bench", T0)];
    for t in &trials {
        head.push(recorded(t, 1e-4, TrialStatus::Queued));
        head.push(started(t, 1, "cuda:0", 8, T0));
    }
    sink.handle(&head).unwrap();
    // Step events of 6 metrics each: new rows in the fan-out's largest
    // batches and in small ones, then the first stream replayed.
    let steps = 10_000_u64;
    let stream = |attempt: u32| -> Vec<SweepEvent> {
        (1..=steps)
            .flat_map(|s| {
                trials
                    .iter()
                    .map(move |t| step(t, attempt, s, 1.0 / s as f64, T0 + s as f64))
            })
            .collect()
    };
    for (what, attempt, batch) in [
        ("new rows", 1, 4096),
        ("new rows", 2, 256),
        ("replayed rows", 1, 4096),
    ] {
        let events = stream(attempt);
        let rows = events.len() * 6;
        let start = std::time::Instant::now();
        for chunk in events.chunks(batch) {
            sink.handle(chunk).unwrap();
        }
        let secs = start.elapsed().as_secs_f64();
        println!(
            "ingest: {rows} {what} in batches of {batch} events: {secs:.2} s, {:.0} rows/s",
            rows as f64 / secs
        );
    }
    // What readers pay on a store this size (16 trials x 20k steps x 6).
    let store = Store::open_read_only(&path).unwrap();
    let start = std::time::Instant::now();
    let status = views::status(&store, Some("bench")).unwrap();
    let status_ms = start.elapsed().as_secs_f64() * 1e3;
    let start = std::time::Instant::now();
    let results = store.trial_results("bench", "train/loss").unwrap();
    let report_ms = start.elapsed().as_secs_f64() * 1e3;
    let start = std::time::Instant::now();
    let show = views::show(&store, &trials[0]).unwrap();
    let show_ms = start.elapsed().as_secs_f64() * 1e3;
    println!(
        "read: status {status_ms:.1} ms ({} running), trial_results {report_ms:.0} ms ({} trials), show {show_ms:.0} ms ({} metrics)",
        status.running.len(),
        results.len(),
        show.detail.metrics.len()
    );
}

//! The sink end to end: a hand-made event stream in, the files read back
//! (every record's CRCs checked) and compared with what went in.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::json;

use super::files;
use super::hparams::{DataType, Domain, Experiment, HParamValue, PluginData, SessionStart, Status};
use super::read::{self, Scalar};
use super::sink::TensorBoardSink;
use crate::events::event::{
    AttemptOutcome, Counts, Environment, EventSink, SweepEvent, SweepInfo, SweepStatus, TrialInfo,
    TrialStatus,
};
use crate::worker::protocol::{Envelope, PROTOCOL_VERSION, WorkerEvent};

const T0: f64 = 1_764_000_000.0;

fn sweep_started(results: &Path, resumed: bool, time: f64) -> SweepEvent {
    SweepEvent::SweepStarted {
        sweep: Box::new(SweepInfo {
            name: "demo".into(),
            spec_path: "demo.toml".into(),
            spec_text: String::new(),
            spec_hash: String::new(),
            results: results.display().to_string(),
            total_trials: 3,
            devices: vec!["cpu:1".into()],
            axes: vec!["train.lr".into(), "lora.r".into(), "model.quant".into()],
            select_metric: "val/field_f1".into(),
        }),
        environment: Box::new(Environment::default()),
        resumed,
        time,
    }
}

/// Trials `a`, `b`, `c`: two learning rates, two ranks, and a string axis.
fn recorded(statuses: [TrialStatus; 3]) -> Vec<SweepEvent> {
    let params = [
        ("aaaaaaaaaaaa", json!(1e-4), json!(8), json!("none")),
        ("bbbbbbbbbbbb", json!(3e-4), json!(8), json!("nf4")),
        ("cccccccccccc", json!(1e-4), json!(16), json!("nf4")),
    ];
    params
        .into_iter()
        .zip(statuses)
        .map(|((id, lr, r, quant), status)| SweepEvent::TrialRecorded {
            trial: Box::new(TrialInfo {
                id: id.into(),
                params: BTreeMap::from([
                    ("train.lr".into(), lr),
                    ("lora.r".into(), r),
                    ("model.quant".into(), quant),
                ]),
                config: String::new(),
                dir: String::new(),
                est_memory_bytes: 0,
                batch_size: 2,
                grad_accum: 1,
                rel_cost: 1.0,
            }),
            status,
        })
        .collect()
}

fn attempt(trial: &str, attempt: u32, time: f64) -> SweepEvent {
    SweepEvent::AttemptStarted {
        trial: trial.into(),
        attempt,
        device: "cpu:0".into(),
        batch_size: 2,
        grad_accum: 1,
        pid: Some(1),
        job: None,
        rerun: false,
        time,
    }
}

fn worker(trial: &str, attempt: u32, time: f64, event: WorkerEvent) -> SweepEvent {
    SweepEvent::Worker {
        trial: trial.into(),
        attempt,
        line: Envelope {
            written_by: None,
            v: PROTOCOL_VERSION,
            time,
            event,
        },
    }
}

/// A training step with every train and perf metric, values from the step.
fn step(trial: &str, attempt: u32, step: u64) -> SweepEvent {
    let s = step as f64;
    let metrics = BTreeMap::from([
        ("train/loss".into(), 2.0 / s),
        ("train/lr".into(), 1e-4 * s),
        ("train/grad_norm".into(), 0.5 + s),
        ("perf/samples_per_s".into(), 10.0 + s),
        ("perf/tokens_per_s".into(), 1000.0 + s),
        ("perf/peak_memory_bytes".into(), 1e9 + s),
    ]);
    worker(
        trial,
        attempt,
        T0 + s,
        WorkerEvent::Step {
            step,
            epoch: 0,
            metrics,
            truncated: 0,
        },
    )
}

const EVAL_METRICS: [&str; 10] = [
    "loss",
    "json_valid",
    "json_exact",
    "field_precision",
    "field_recall",
    "field_f1",
    "map50",
    "map50_95",
    "exact_match",
    "cer",
];

fn eval(trial: &str, attempt: u32, step: u64, prefix: &str, split: &str) -> SweepEvent {
    let metrics = EVAL_METRICS
        .iter()
        .enumerate()
        .map(|(i, m)| (format!("{prefix}/{m}"), i as f64 / 10.0 + step as f64))
        .collect();
    worker(
        trial,
        attempt,
        T0 + step as f64 + 0.5,
        WorkerEvent::Eval {
            step,
            epoch: 0,
            split: split.into(),
            metrics,
            truncated: 0,
        },
    )
}

fn attempt_ended(trial: &str, attempt: u32, outcome: AttemptOutcome) -> SweepEvent {
    SweepEvent::AttemptEnded {
        trial: trial.into(),
        attempt,
        outcome,
        exit_code: Some(0),
        reason: None,
        peak_memory_bytes: None,
        time: T0 + 50.0,
    }
}

fn trial_ended(trial: &str, status: TrialStatus, time: f64) -> SweepEvent {
    SweepEvent::TrialEnded {
        trial: trial.into(),
        status,
        reason: None,
        best_metric: None,
        time,
    }
}

fn sweep_ended(status: SweepStatus) -> SweepEvent {
    SweepEvent::SweepEnded {
        status,
        counts: Counts::default(),
        time: T0 + 100.0,
    }
}

/// The first run: `a` finishes (steps 1–3, validation at 2 and 3, test at
/// 3), `b` runs out of memory and fails on its second attempt, `c` is
/// interrupted after step 1.
fn first_run(results: &Path) -> Vec<SweepEvent> {
    let (a, b, c) = ("aaaaaaaaaaaa", "bbbbbbbbbbbb", "cccccccccccc");
    let mut events = vec![sweep_started(results, false, T0)];
    events.extend(recorded([TrialStatus::Queued; 3]));
    events.push(attempt(a, 1, T0 + 1.0));
    events.push(worker(
        a,
        1,
        T0 + 1.0,
        WorkerEvent::Started {
            trial: a.into(),
            attempt: 1,
            trainable_params: 10,
            total_steps: 3,
            batch_size: 2,
            grad_accum: 1,
            threads: 1,
            device: "cpu:0".into(),
            dataset_fingerprint: String::new(),
            resumed_from: 0,
            skipped_lines: 0,
        },
    ));
    for s in 1..=3 {
        events.push(step(a, 1, s));
        if s >= 2 {
            events.push(eval(a, 1, s, "val", "valid"));
        }
    }
    events.push(eval(a, 1, 3, "test", "test"));
    events.push(worker(
        a,
        1,
        T0 + 4.0,
        WorkerEvent::Finished {
            step: 3,
            best_metric: Some(3.5),
        },
    ));
    events.push(attempt_ended(a, 1, AttemptOutcome::Finished));
    events.push(trial_ended(a, TrialStatus::Finished, T0 + 5.0));
    events.push(attempt(b, 1, T0 + 6.0));
    events.push(step(b, 1, 1));
    events.push(attempt_ended(b, 1, AttemptOutcome::OutOfMemory));
    events.push(attempt(b, 2, T0 + 7.0));
    events.push(step(b, 2, 1));
    events.push(step(b, 2, 2));
    events.push(attempt_ended(b, 2, AttemptOutcome::Crashed));
    events.push(trial_ended(b, TrialStatus::Failed, T0 + 8.0));
    events.push(attempt(c, 1, T0 + 9.0));
    events.push(step(c, 1, 1));
    events.push(attempt_ended(c, 1, AttemptOutcome::Stopped));
    events.push(trial_ended(c, TrialStatus::Interrupted, T0 + 10.0));
    events.push(sweep_ended(SweepStatus::Interrupted));
    events
}

/// The second run resumes `c` (steps 1–2 again, then 3) and finishes it.
fn second_run(results: &Path) -> Vec<SweepEvent> {
    let c = "cccccccccccc";
    let mut events = vec![sweep_started(results, true, T0 + 1000.0)];
    events.extend(recorded([
        TrialStatus::Finished,
        TrialStatus::Failed,
        TrialStatus::Interrupted,
    ]));
    events.push(attempt(c, 1, T0 + 1001.0));
    for s in 1..=3 {
        events.push(step(c, 1, s));
    }
    events.push(eval(c, 1, 3, "val", "valid"));
    events.push(trial_ended(c, TrialStatus::Finished, T0 + 1002.0));
    events.push(sweep_ended(SweepStatus::Finished));
    events
}

/// Feeds `events` in batches of several sizes, then closes.
fn feed(events: &[SweepEvent]) {
    let mut sink = TensorBoardSink::new();
    let mut rest = events;
    let mut size = 1;
    while !rest.is_empty() {
        let (batch, tail) = rest.split_at(size.min(rest.len()));
        sink.handle(batch).unwrap();
        rest = tail;
        size = size % 5 + 1;
    }
    sink.close().unwrap();
}

fn tb(results: &Path) -> PathBuf {
    results.join("demo").join("tb")
}

/// What a run folder holds: its scalars (all files, in order) and hparams
/// data, every record's CRCs checked.
fn read_run(dir: &Path) -> (Vec<Scalar>, Vec<PluginData>, usize) {
    let files = read::read_run(dir).unwrap();
    let mut scalars = Vec::new();
    let mut hparams = Vec::new();
    for (_, events) in &files {
        scalars.extend(read::scalars(events));
        hparams.extend(read::hparams(events).unwrap());
    }
    (scalars, hparams, files.len())
}

/// The scalars the stream sent for a trial, as (tag, step, value).
fn expected_scalars(events: &[SweepEvent], trial: &str) -> Vec<(String, i64, f32)> {
    let mut out = Vec::new();
    for e in events {
        if let SweepEvent::Worker { trial: t, line, .. } = e
            && t == trial
            && let WorkerEvent::Step { step, metrics, .. } | WorkerEvent::Eval { step, metrics, .. } =
                &line.event
        {
            for (k, v) in metrics {
                out.push((k.clone(), (*step).cast_signed(), *v as f32));
            }
        }
    }
    out
}

fn got(scalars: &[Scalar]) -> Vec<(String, i64, f32)> {
    scalars
        .iter()
        .map(|s| (s.tag.clone(), s.step, s.value))
        .collect()
}

fn session_start(hparams: &[PluginData]) -> &SessionStart {
    let starts: Vec<_> = hparams
        .iter()
        .filter_map(|d| match d {
            PluginData::SessionStart(s) => Some(s),
            _ => None,
        })
        .collect();
    assert_eq!(starts.len(), 1, "{hparams:?}");
    starts[0]
}

fn end_status(hparams: &[PluginData]) -> Vec<Status> {
    hparams
        .iter()
        .filter_map(|d| match d {
            PluginData::SessionEnd(e) => Some(e.status),
            _ => None,
        })
        .collect()
}

fn experiment(results: &Path) -> Experiment {
    let (scalars, data, files) = read_run(&tb(results));
    assert!(scalars.is_empty());
    assert_eq!(files, 1);
    match data.as_slice() {
        [PluginData::Experiment(e)] => e.clone(),
        other => panic!("{other:?}"),
    }
}

#[test]
fn every_scalar_and_the_hparams_summaries_are_written_and_read_back() {
    let dir = tempfile::tempdir().unwrap();
    let events = first_run(dir.path());
    feed(&events);
    let tb = tb(dir.path());

    // a: every metric with its step and value, in the order sent; its
    // hyperparameters; finished.
    let (scalars, hparams, files) = read_run(&tb.join("aaaaaaaaaaaa"));
    assert_eq!(got(&scalars), expected_scalars(&events, "aaaaaaaaaaaa"));
    assert_eq!(scalars.len(), 3 * 6 + 2 * 10 + 10);
    let train_loss = scalars
        .iter()
        .find(|s| s.tag == "train/loss" && s.step == 2)
        .unwrap();
    assert!((train_loss.wall_time - (T0 + 2.0)).abs() < 1e-6);
    assert_eq!(files, 3, "start, scalars, end");
    let start = session_start(&hparams);
    assert_eq!(
        start.hparams,
        BTreeMap::from([
            ("train.lr".into(), HParamValue::Number(1e-4)),
            ("lora.r".into(), HParamValue::Number(8.0)),
            ("model.quant".into(), HParamValue::String("none".into())),
        ])
    );
    assert_eq!(start.group_name, "aaaaaaaaaaaa");
    assert!((start.start_time_secs - (T0 + 1.0)).abs() < 1e-6);
    assert_eq!(end_status(&hparams), vec![Status::Success]);

    // b: one scalar file per attempt (opened within the same second), failed.
    let (scalars, hparams, files) = read_run(&tb.join("bbbbbbbbbbbb"));
    assert_eq!(got(&scalars), expected_scalars(&events, "bbbbbbbbbbbb"));
    assert_eq!(files, 4, "start, two attempts, end");
    assert_eq!(end_status(&hparams), vec![Status::Failure]);

    // c: interrupted.
    let (_, hparams, _) = read_run(&tb.join("cccccccccccc"));
    assert_eq!(end_status(&hparams), vec![Status::Unknown]);

    // The experiment: the axes in spec order with their values, the
    // selection metric first and every metric seen.
    let e = experiment(dir.path());
    assert_eq!(e.name, "demo");
    let names: Vec<_> = e.hparams.iter().map(|h| h.name.as_str()).collect();
    assert_eq!(names, ["train.lr", "lora.r", "model.quant"]);
    assert_eq!(e.hparams[0].data_type, DataType::Float64);
    assert_eq!(
        e.hparams[0].domain,
        Some(Domain::Discrete(vec![
            HParamValue::Number(1e-4),
            HParamValue::Number(3e-4)
        ]))
    );
    assert_eq!(e.hparams[2].data_type, DataType::String);
    assert_eq!(
        e.hparams[2].domain,
        Some(Domain::Discrete(vec![
            HParamValue::String("nf4".into()),
            HParamValue::String("none".into())
        ]))
    );
    assert!(e.hparams.iter().all(|h| h.differs));
    let tags: Vec<_> = e.metrics.iter().map(|m| m.tag.as_str()).collect();
    // The score (best so far) first, then the selection metric's last value.
    assert_eq!(tags.len(), 1 + 6 + 10 + 10);
    assert_eq!(tags[0], "best/val/field_f1");
    assert_eq!(tags[1], "val/field_f1");
    assert_eq!(tags[2], "val/cer");
    assert!(tags.contains(&"test/map50_95"));
    assert!(tags.contains(&"perf/peak_memory_bytes"));
    assert_eq!(tags.last(), Some(&"perf/tokens_per_s"));
}

#[test]
fn a_resumed_sweep_replaces_the_stale_end_and_keeps_what_the_first_run_saw() {
    let dir = tempfile::tempdir().unwrap();
    let first = first_run(dir.path());
    feed(&first);
    let before = experiment(dir.path());
    let second = second_run(dir.path());
    feed(&second);
    let c = tb(dir.path()).join("cccccccccccc");
    let (scalars, hparams, files) = read_run(&c);
    let mut expected = expected_scalars(&first, "cccccccccccc");
    expected.extend(expected_scalars(&second, "cccccccccccc"));
    assert_eq!(got(&scalars), expected);
    assert_eq!(files, 4, "start, a scalar file per run, end");
    // One start (with the first run's start time) and one end: finished.
    assert!((session_start(&hparams).start_time_secs - (T0 + 9.0)).abs() < 1e-6);
    assert_eq!(end_status(&hparams), vec![Status::Success]);
    // The test metrics only the first run saw are still in the experiment.
    let after = experiment(dir.path());
    assert_eq!(after.metrics, before.metrics);
    assert_eq!(after.hparams, before.hparams);
    assert!((after.time_created_secs - T0).abs() < 1e-6);
    // The other trials are as the first run left them.
    let (_, hparams, _) = read_run(&tb(dir.path()).join("aaaaaaaaaaaa"));
    assert_eq!(end_status(&hparams), vec![Status::Success]);
}

#[test]
fn a_trial_that_never_ran_has_no_run_and_trial_events_need_a_sweep() {
    let dir = tempfile::tempdir().unwrap();
    let mut sink = TensorBoardSink::new();
    assert!(sink.handle(&[step("aaaaaaaaaaaa", 1, 1)]).is_err());
    let mut sink = TensorBoardSink::new();
    let mut events = vec![sweep_started(dir.path(), false, T0)];
    events.extend(recorded([TrialStatus::Queued; 3]));
    events.push(trial_ended("aaaaaaaaaaaa", TrialStatus::Failed, T0));
    sink.handle(&events).unwrap();
    sink.close().unwrap();
    assert!(!tb(dir.path()).join("aaaaaaaaaaaa").exists());
    assert!(files::experiment_path(&tb(dir.path())).is_file());
    assert!(sink.handle(&[attempt("../x", 1, T0)]).is_err());
}

#[test]
fn a_worker_line_without_its_attempt_event_still_lands_in_a_session() {
    let dir = tempfile::tempdir().unwrap();
    let mut events = vec![sweep_started(dir.path(), false, T0)];
    events.extend(recorded([TrialStatus::Queued; 3]));
    events.push(step("bbbbbbbbbbbb", 1, 5));
    feed(&events);
    let (scalars, hparams, _) = read_run(&tb(dir.path()).join("bbbbbbbbbbbb"));
    assert_eq!(scalars.len(), 6);
    assert_eq!(session_start(&hparams).hparams.len(), 3);
    assert!(end_status(&hparams).is_empty());
}

#[test]
fn a_late_line_keeps_the_end_and_a_new_attempt_after_the_end_restarts_the_session() {
    let dir = tempfile::tempdir().unwrap();
    let a = "aaaaaaaaaaaa";
    let mut events = vec![sweep_started(dir.path(), false, T0)];
    events.extend(recorded([TrialStatus::Queued; 3]));
    events.push(attempt(a, 1, T0));
    events.push(trial_ended(a, TrialStatus::Failed, T0 + 1.0));
    events.push(step(a, 1, 1));
    let mut sink = TensorBoardSink::new();
    sink.handle(&events).unwrap();
    let run = tb(dir.path()).join(a);
    let (scalars, hparams, _) = read_run(&run);
    assert_eq!(scalars.len(), 6);
    assert_eq!(end_status(&hparams), vec![Status::Failure]);
    sink.handle(&[attempt(a, 2, T0 + 2.0)]).unwrap();
    let (_, hparams, _) = read_run(&run);
    assert!(end_status(&hparams).is_empty());
    assert!((session_start(&hparams).start_time_secs - T0).abs() < 1e-6);
    sink.handle(&[trial_ended(a, TrialStatus::Finished, T0 + 3.0)])
        .unwrap();
    sink.close().unwrap();
    let (_, hparams, _) = read_run(&run);
    assert_eq!(end_status(&hparams), vec![Status::Success]);
}

#[test]
fn a_second_sweep_through_one_sink_finishes_the_first() {
    let first = tempfile::tempdir().unwrap();
    let second = tempfile::tempdir().unwrap();
    let mut sink = TensorBoardSink::new();
    let mut events = vec![sweep_started(first.path(), false, T0)];
    events.extend(recorded([TrialStatus::Queued; 3]));
    events.push(step("aaaaaaaaaaaa", 1, 1));
    events.push(sweep_started(second.path(), false, T0));
    sink.handle(&events).unwrap();
    sink.close().unwrap();
    assert_eq!(experiment(first.path()).hparams.len(), 3);
    let e = experiment(second.path());
    assert!(e.hparams.is_empty());
    assert_eq!(
        e.metrics.len(),
        2,
        "only the score and the selection metric"
    );
}

/// Writes the demo sweep's logs (both runs) under `$PALISWEEP_TB_DEMO`, for
/// `scripts/tensorboard/check.py` to open with TensorBoard itself:
/// `PALISWEEP_TB_DEMO=/tmp/tb cargo test --lib write_demo_logs -- --ignored`.
#[test]
#[ignore = "writes to $PALISWEEP_TB_DEMO"]
fn write_demo_logs() {
    let root = PathBuf::from(std::env::var("PALISWEEP_TB_DEMO").expect("PALISWEEP_TB_DEMO"));
    let _ = std::fs::remove_dir_all(root.join("demo"));
    feed(&first_run(&root));
    feed(&second_run(&root));
    println!("wrote {}", tb(&root).display());
}

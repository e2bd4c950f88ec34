//! `palisweep run` through the real binary: synthetic trials on made-up
//! GPUs cover placement, retries, out-of-memory back-off, stalls, Ctrl-C,
//! kill -9 and resume; one sweep trains real tiny checkpoints end to end.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Child;
use std::time::{Duration, Instant};

use crate::util::{Test, count, processes_under, signal, spawn, trial_dirs, wait_for_steps};

/// A synthetic sweep named `s`.
fn synthetic(extra: &str) -> String {
    crate::util::synthetic_spec("s", extra)
}

fn run_args(devices: &str) -> Vec<String> {
    let mut args = crate::util::run_args(devices);
    args.extend(["--kill-grace".to_owned(), "1".to_owned()]);
    args
}

fn run(test: &Test, devices: &str) -> crate::util::Output {
    let args = run_args(devices);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    test.run_in(&args)
}

/// `attempts.jsonl` of every trial, by trial id.
fn attempts(test: &Test) -> BTreeMap<String, Vec<serde_json::Value>> {
    let trials = test.path().join("results/s/trials");
    let mut all = BTreeMap::new();
    for entry in std::fs::read_dir(trials).unwrap() {
        let dir = entry.unwrap().path();
        let lines: Vec<serde_json::Value> = std::fs::read_to_string(dir.join("attempts.jsonl"))
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .filter(|r: &serde_json::Value| !r["end"].is_null())
            .collect();
        all.insert(
            dir.file_name().unwrap().to_string_lossy().into_owned(),
            lines,
        );
    }
    all
}

fn status(test: &Test) -> serde_json::Value {
    crate::util::status(test, "s")
}

#[test]
fn a_synthetic_sweep_packs_trials_by_memory_and_records_everything() {
    // 10 GiB per trial, two per 24 GiB GPU at most.
    let test = Test::new().spec(&synthetic(
        "[synthetic]\nsteps = 4\nstep_ms = 150\nmemory_per_sample = \"1280MiB\"\n\
         [sweep.axes]\n\"train.lr\" = [1e-5, 1e-4, 1e-3]\n\"experiment.seed\" = [0, 1]\n\
         [resources]\nmax_trials_per_device = 2\nmemory_headroom = 0.0\n",
    ));
    let out = run(&test, "fake-cuda:2x24GiB");
    out.code(0).stdout_has("6 finished, 0 failed");
    let status = status(&test);
    assert_eq!(count(&status, "finished"), 6);
    assert_eq!(status["running"].as_array().unwrap().len(), 0);

    // No device ever held more than two trials; packing put two on one.
    let mut intervals: Vec<(String, f64, f64)> = Vec::new();
    for records in attempts(&test).values() {
        for r in records {
            intervals.push((
                r["device"].as_str().unwrap().to_owned(),
                r["start"].as_f64().unwrap(),
                r["end"].as_f64().unwrap(),
            ));
        }
    }
    assert_eq!(intervals.len(), 6);
    let mut most = 0;
    for (device, start, _) in &intervals {
        let overlapping = intervals
            .iter()
            .filter(|(d, s, e)| d == device && s <= start && start < e)
            .count();
        most = most.max(overlapping);
    }
    assert_eq!(most, 2, "{intervals:?}");

    // The store answers show and export; TensorBoard has a run per trial.
    let id = trial_id(&trial_dirs(&test, "s")[0]);
    let show = test
        .run_in(&["show", &id, "--results", "results", "--json"])
        .code(0)
        .json();
    assert_eq!(show["trial"]["status"], "finished", "{show}");
    let csv = test
        .run_in(&["export-metrics", "s", "--results", "results"])
        .code(0)
        .stdout
        .clone();
    assert!(csv.lines().count() > 6 * 4, "{csv}");
    assert!(csv.contains("train/loss") && csv.contains("val/loss"));
    let tb = test.path().join("results/s/tb");
    let runs = std::fs::read_dir(&tb)
        .unwrap()
        .filter(|e| e.as_ref().unwrap().path().is_dir())
        .count();
    assert_eq!(runs, 6);
    let scalars = palisweep::track::tensorboard::read::read_run(&tb.join(&id)).unwrap();
    assert!(!scalars.is_empty());
}

#[test]
fn out_of_memory_halves_the_batch_until_it_fits_and_fails_below_one() {
    let test = Test::new().spec(&synthetic(
        "[synthetic]\nsteps = 3\nstep_ms = 10\noom_from_batch = 3\n\
         [sweep.axes]\n\"train.batch_size\" = [8, 1]\n\"synthetic.oom_from_batch\" = [3, 1]\n\
         [sweep]\nexclude = [{ \"train.batch_size\" = 1, \"synthetic.oom_from_batch\" = 3 }, \
         { \"train.batch_size\" = 8, \"synthetic.oom_from_batch\" = 1 }]\n",
    ));
    let out = run(&test, "fake-cuda:1x80GiB");
    out.code(1).stdout_has("1 finished, 1 failed");
    let all = attempts(&test);
    assert_eq!(all.len(), 2, "one folder per trial: the id never changes");
    let shapes: Vec<Vec<(u64, u64, String)>> = all
        .values()
        .map(|records| {
            records
                .iter()
                .map(|r| {
                    (
                        r["batch_size"].as_u64().unwrap(),
                        r["grad_accum"].as_u64().unwrap(),
                        r["outcome"].as_str().unwrap().to_owned(),
                    )
                })
                .collect()
        })
        .collect();
    let oom = "out_of_memory".to_owned();
    assert!(
        shapes.contains(&vec![
            (8, 1, oom.clone()),
            (4, 2, oom.clone()),
            (2, 4, "finished".to_owned()),
        ]),
        "{shapes:?}"
    );
    assert!(shapes.contains(&vec![(1, 1, oom)]), "{shapes:?}");
    let reasons: Vec<String> = trial_dirs(&test, "s")
        .iter()
        .map(|dir| {
            let show = test
                .run_in(&["show", &trial_id(dir), "--results", "results", "--json"])
                .code(0)
                .json();
            show["trial"]["exit_reason"]
                .as_str()
                .unwrap_or("")
                .to_owned()
        })
        .collect();
    assert!(reasons.iter().any(|r| r.starts_with("oom")), "{reasons:?}");
}

#[test]
fn crashes_are_retried_and_a_trial_that_keeps_crashing_fails_alone() {
    let test = Test::new().spec(&synthetic(
        "[synthetic]\nsteps = 4\nstep_ms = 10\ncrash_at_step = 2\n\
         [sweep.axes]\n\"synthetic.crash_attempts\" = [1, 9]\n\
         [resources]\nretries = 2\n",
    ));
    let out = run(&test, "fake-cuda:1x80GiB");
    out.code(1)
        .stdout_has("1 finished, 1 failed")
        .stdout_has("synthetic: crashed at step 2");
    let mut lengths: Vec<usize> = attempts(&test).values().map(Vec::len).collect();
    lengths.sort_unstable();
    // Crash then success; crash ×3 (the first try and two retries).
    assert_eq!(lengths, [2, 3]);
}

#[test]
fn a_silent_worker_is_killed_after_the_stall_timeout_and_retried() {
    let test = Test::new().spec(&synthetic(
        "[synthetic]\nsteps = 3\nstep_ms = 10\nhang_at_step = 2\n\
         [resources]\nstall_timeout = 1\n",
    ));
    let started = Instant::now();
    run(&test, "fake-cuda:1x80GiB").code(0);
    let outcomes: Vec<String> = attempts(&test)
        .into_values()
        .next()
        .unwrap()
        .iter()
        .map(|r| r["outcome"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(outcomes, ["stalled", "finished"]);
    // It ignores SIGTERM while hanging: the grace period (1 s) ends in
    // SIGKILL. Without it the run would never end; the bound is loose
    // because this machine may be busy with other tests.
    assert!(started.elapsed() < Duration::from_secs(90));
}

#[test]
fn real_trials_refuse_made_up_devices_before_anything_starts() {
    let test = Test::new().spec(
        "[experiment]\nname = \"s\"\n[data]\npath = \"generated:json\"\n[model]\ncheckpoint = \"tiny\"\n",
    );
    run(&test, "fake-cuda:2x24GiB")
        .code(2)
        .stderr_has("made-up inventory");
    assert!(!test.path().join("results/s").exists());
}

/// Starts `palisweep run` in the background.
fn spawn_run(test: &Test) -> Child {
    let args = run_args("fake-cuda:2x80GiB");
    spawn(test, &args.iter().map(String::as_str).collect::<Vec<_>>())
}

const LONG_SWEEP: &str = "[synthetic]\nsteps = 30\nstep_ms = 100\n\
     [sweep.axes]\n\"train.lr\" = [1e-5, 1e-4, 1e-3]\n";

fn trial_id(dir: &Path) -> String {
    dir.file_name().unwrap().to_string_lossy().into_owned()
}

/// `resumed_from` of each `started` event of a trial.
fn resumed_from(dir: &Path) -> Vec<u64> {
    std::fs::read_to_string(dir.join("events.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|e| e["event"] == "started")
        .map(|e| e["resumed_from"].as_u64().unwrap())
        .collect()
}

#[test]
fn ctrl_c_checkpoints_the_workers_and_the_next_run_resumes_them() {
    let test = Test::new().spec(&synthetic(LONG_SWEEP));
    let first = spawn_run(&test);
    wait_for_steps(&test, "s", 2, 3);
    // A second run of the same sweep is refused while this one holds it.
    run(&test, "fake-cuda:2x80GiB")
        .code(1)
        .stderr_has("another `palisweep run` is running sweep `s`");
    signal(&first, nix::sys::signal::Signal::SIGINT);
    let out = first.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(130), "{out:?}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("interrupted"), "{stdout}");
    assert!(
        processes_under(test.path()).is_empty(),
        "workers left behind"
    );
    let stopped: Vec<String> = attempts(&test)
        .values()
        .flatten()
        .map(|r| r["outcome"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(stopped, ["stopped", "stopped"], "the third never started");
    assert_eq!(count(&status(&test), "interrupted"), 3);

    run(&test, "fake-cuda:2x80GiB")
        .code(0)
        .stdout_has("3 finished, 0 failed");
    assert_eq!(trial_dirs(&test, "s").len(), 3, "no duplicate trials");
    let resumed: Vec<Vec<u64>> = trial_dirs(&test, "s")
        .iter()
        .map(|d| resumed_from(d))
        .collect();
    // Two trials resumed from their checkpoints, one started fresh.
    assert_eq!(
        resumed.iter().filter(|r| r.len() == 2 && r[1] >= 3).count(),
        2,
        "{resumed:?}"
    );
    assert_eq!(
        resumed.iter().filter(|r| r == &&vec![0]).count(),
        1,
        "{resumed:?}"
    );
    let status = status(&test);
    assert_eq!(count(&status, "finished"), 3);
    assert_eq!(status["sweep"]["status"], "finished");

    // A third run finds nothing to do.
    run(&test, "fake-cuda:2x80GiB")
        .code(0)
        .stdout_has("3 finished");
    assert_eq!(
        attempts(&test).values().map(Vec::len).sum::<usize>(),
        5,
        "finished trials are skipped by id"
    );
}

#[test]
fn killing_the_scheduler_stops_its_workers_and_nothing_stays_running() {
    let test = Test::new().spec(&synthetic(LONG_SWEEP));
    let mut first = spawn_run(&test);
    wait_for_steps(&test, "s", 2, 3);
    assert!(!processes_under(test.path()).is_empty());
    signal(&first, nix::sys::signal::Signal::SIGKILL);
    first.wait().unwrap();
    // The workers see their stdin close, checkpoint and exit.
    let deadline = Instant::now() + Duration::from_secs(20);
    while !processes_under(test.path()).is_empty() {
        assert!(Instant::now() < deadline, "orphaned workers");
        std::thread::sleep(Duration::from_millis(100));
    }
    run(&test, "fake-cuda:2x80GiB")
        .code(0)
        .stdout_has("3 finished, 0 failed");
    let status = status(&test);
    assert_eq!(count(&status, "running"), 0);
    assert_eq!(count(&status, "finished"), 3);
    assert_eq!(trial_dirs(&test, "s").len(), 3);
}

#[test]
fn a_tiny_sweep_trains_real_checkpoints_end_to_end() {
    let test = Test::new().spec(
        "[experiment]\nname = \"s\"\nseed = 3\n\
         [data]\npath = \"generated:json\"\ntask = \"json\"\nmax_suffix_tokens = 32\n\
         [model]\ncheckpoint = \"tiny\"\n\
         [train]\nepochs = 2\nbatch_size = 8\ngrad_accum = 1\nlr = 1e-2\nwarmup = 1\n\
         [eval]\ngenerate = false\n\
         [sweep.axes]\n\"train.method\" = [\"lora\", \"qlora\"]\n",
    );
    run(&test, "cpu:2")
        .code(0)
        .stdout_has("2 finished, 0 failed");
    for dir in trial_dirs(&test, "s") {
        for adapter in ["final", "best"] {
            assert!(
                dir.join(adapter)
                    .join("adapter_model.safetensors")
                    .is_file(),
                "{} has no {adapter} adapter",
                dir.display()
            );
        }
    }
    let status = status(&test);
    assert_eq!(count(&status, "finished"), 2);
    let csv = test
        .run_in(&["export-metrics", "s", "--results", "results"])
        .code(0)
        .stdout
        .clone();
    assert!(csv.contains("val/loss") && csv.contains("train/grad_norm"));
    let artifacts = test
        .run_in(&[
            "show",
            &trial_id(&trial_dirs(&test, "s")[0]),
            "--results",
            "results",
            "--json",
        ])
        .code(0)
        .json();
    assert!(
        artifacts.to_string().contains("adapter_model.safetensors"),
        "{artifacts}"
    );
    // The environment row names the versions and both fingerprints.
    let db = rusqlite::Connection::open(test.path().join("results/palisweep.sqlite")).unwrap();
    let (version, dataset, checkpoints): (String, Option<String>, String) = db
        .query_row(
            "SELECT palisweep_version, dataset_fingerprint, checkpoint_fingerprints FROM environment",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .unwrap();
    assert_eq!(version, env!("CARGO_PKG_VERSION"));
    assert_eq!(dataset.map(|d| d.len()), Some(64));
    let checkpoints: serde_json::Value = serde_json::from_str(&checkpoints).unwrap();
    assert_eq!(
        checkpoints["tiny-3b-224"].as_str().map(str::len),
        Some(64),
        "{checkpoints}"
    );
}

#[test]
fn early_stopping_prunes_trials_worse_than_the_median() {
    // Best learning rates first: the last two are judged against three.
    let test = Test::new().spec(&synthetic(
        "[synthetic]\nsteps = 20\nstep_ms = 20\n\
         [sweep]\nearly_stop = \"median\"\n\
         [sweep.axes]\n\"train.lr\" = [1e-3, 3e-4, 1e-4, 1e-6, 1e-7]\n",
    ));
    run(&test, "fake-cuda:1x80GiB")
        .code(0)
        .stdout_has("3 finished, 0 failed, 2 pruned");
    let status = status(&test);
    assert_eq!(count(&status, "pruned"), 2);
    let pruned: Vec<u64> = attempts(&test)
        .values()
        .flatten()
        .filter(|r| r["outcome"] == "pruned")
        .map(|r| r["attempt"].as_u64().unwrap())
        .collect();
    assert_eq!(pruned, [1, 1]);
    // Pruned trials stay pruned on the next run.
    run(&test, "fake-cuda:1x80GiB")
        .code(0)
        .stdout_has("3 finished, 0 failed, 2 pruned");
}

#[test]
fn plain_progress_names_each_trials_parameters_gives_an_overall_line_and_one_summary() {
    let test = Test::new().spec(&synthetic(
        "[synthetic]\nsteps = 6\nstep_ms = 10\n\
         [sweep.axes]\n\"train.lr\" = [1e-5, 1e-3]\n",
    ));
    // Not a terminal: plain lines on stderr, the summary on stdout.
    let out = run(&test, "fake-cuda:1x80GiB");
    out.code(0);
    assert!(
        out.stderr.contains("(lr=0.00001) on cuda:0"),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr.contains("(lr=0.001) on cuda:0"),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr.contains("sweep  1/2 done, ")
            && out.stderr.contains("sweep  2/2 done, 0 running"),
        "{}",
        out.stderr
    );
    let summaries = format!("{}{}", out.stdout, out.stderr)
        .matches("2 finished, 0 failed")
        .count();
    assert_eq!(summaries, 1, "{}\n{}", out.stdout, out.stderr);
}

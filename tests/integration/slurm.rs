//! The Slurm backend against a real one-node Slurm cluster
//! (`scripts/slurm/test-cluster.sh start`, which `scripts/test.sh` runs
//! when it runs as root, setting `PALISWEEP_REQUIRE_SLURM=1`). Without a
//! cluster these tests say so on stderr and pass, unless Slurm is
//! required; then they fail.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::util::{BIN, Test, count, events, jsonl, signal, spawn, trial_dirs, wait_for_steps};

/// One cluster for every test: they run one at a time, so that a test
/// that expects two jobs at once gets both GPUs.
static CLUSTER: Mutex<()> = Mutex::new(());

/// The cluster, held for this test, when a Slurm controller answers here.
fn cluster() -> Option<MutexGuard<'static, ()>> {
    let guard = CLUSTER
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    answers().then_some(guard)
}

/// Whether a Slurm controller answers here.
fn answers() -> bool {
    let answers = std::env::var_os("SLURM_CONF").is_some()
        && Command::new("sinfo")
            .args(["-h", "-o", "%t"])
            .output()
            .is_ok_and(|o| o.status.success() && !o.stdout.is_empty());
    if answers {
        return true;
    }
    assert!(
        std::env::var_os("PALISWEEP_REQUIRE_SLURM").is_none(),
        "PALISWEEP_REQUIRE_SLURM is set but no Slurm cluster answers (SLURM_CONF={:?})",
        std::env::var_os("SLURM_CONF")
    );
    eprintln!(
        "Slurm tests did NOT run: no Slurm cluster answers here. As root, \
         `eval \"$(scripts/slurm/test-cluster.sh start)\"` starts a one-node test cluster \
         (scripts/test.sh does it when run as root, and sets PALISWEEP_REQUIRE_SLURM=1, \
         which makes a missing cluster an error)."
    );
    false
}

/// A sweep through Slurm: `extra` adds tables or keys. Polls fast.
fn spec(train: &str, extra: &str) -> String {
    format!(
        "[experiment]\nname = \"sl\"\nseed = 3\n\
         [data]\npath = \"generated:json\"\ntask = \"json\"\nmax_suffix_tokens = 32\n\
         [model]\ncheckpoint = \"tiny\"\n\
         [train]\n{train}\n\
         [eval]\ngenerate = false\n\
         [resources]\nbackend = \"slurm\"\nretries = 2\n\
         [slurm]\ncpus_per_trial = 1\ngres = \"gpu:1\"\npoll_interval = 0.3\n\
         {extra}\n"
    )
}

fn synthetic(steps: u32, step_ms: u32, trials: usize) -> String {
    let lrs: Vec<String> = (1..=trials).map(|i| format!("{i}e-4")).collect();
    spec(
        "method = \"synthetic\"\nbatch_size = 8\ngrad_accum = 1",
        &format!(
            "[synthetic]\nsteps = {steps}\nstep_ms = {step_ms}\n\
             [sweep.axes]\n\"train.lr\" = [{}]\n",
            lrs.join(", ")
        ),
    )
}

const RUN: [&str; 4] = ["run", "spec.toml", "--results", "results"];

/// Asserts a finished palisweep process's exit code; its stdout.
#[track_caller]
fn exited(out: &std::process::Output, code: i32) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(
        out.status.code(),
        Some(code),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// The last record of each attempt in `attempts.jsonl`.
fn attempts(dir: &Path) -> Vec<serde_json::Value> {
    let mut by_attempt: Vec<serde_json::Value> = Vec::new();
    for record in jsonl(&dir.join("attempts.jsonl")) {
        match by_attempt
            .iter_mut()
            .find(|r| r["attempt"] == record["attempt"])
        {
            Some(existing) => *existing = record,
            None => by_attempt.push(record),
        }
    }
    by_attempt
}

/// Jobs Slurm still has queued or running, by id.
fn live_jobs() -> BTreeSet<String> {
    let out = Command::new("squeue")
        .args(["-h", "-o", "%i"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.trim().to_owned())
        .collect()
}

fn job_ids(dirs: &[PathBuf]) -> Vec<Vec<String>> {
    dirs.iter()
        .map(|d| {
            attempts(d)
                .iter()
                .map(|a| a["job"].as_str().unwrap().to_owned())
                .collect()
        })
        .collect()
}

fn status(test: &Test) -> serde_json::Value {
    crate::util::status(test, "sl")
}

#[test]
fn a_tiny_sweep_trains_through_slurm_end_to_end() {
    let Some(_cluster) = cluster() else {
        return;
    };
    let test = Test::new().spec(&spec(
        "epochs = 1\nbatch_size = 8\ngrad_accum = 1\nlr = 1e-2\nwarmup = 1",
        "[sweep.axes]\n\"train.method\" = [\"lora\", \"qlora\"]\n",
    ));
    test.run_in(&RUN).code(0).stdout_has("2 finished, 0 failed");
    let dirs = trial_dirs(&test, "sl");
    let mut visible = BTreeSet::new();
    let mut spans = Vec::new();
    for dir in &dirs {
        assert!(
            dir.join("final/adapter_model.safetensors").is_file(),
            "{} has no adapter",
            dir.display()
        );
        let attempts = attempts(dir);
        assert_eq!(attempts.len(), 1, "{attempts:?}");
        let job = attempts[0]["job"].as_str().unwrap().to_owned();
        let provenance = &events(dir, "provenance")[0];
        // The worker ran inside that job, on the GPU Slurm gave it.
        assert_eq!(provenance["slurm_job"].as_str(), Some(job.as_str()));
        visible.insert(
            provenance["cuda_visible_devices"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
        let time = |e: &serde_json::Value| e["time"].as_f64().unwrap();
        spans.push((
            time(&events(dir, "started")[0]),
            time(&events(dir, "finished")[0]),
        ));
    }
    // Two jobs asking gpu:1 ran at once, each with its own device.
    let overlap = spans[0].0 < spans[1].1 && spans[1].0 < spans[0].1;
    assert!(
        overlap,
        "the two jobs did not run at the same time: {spans:?}"
    );
    assert_eq!(visible, BTreeSet::from(["0".to_owned(), "1".to_owned()]));
    // Store, TensorBoard and metrics, as with the local backend.
    let status = status(&test);
    assert_eq!(count(&status, "finished"), 2, "{status}");
    let csv = test
        .run_in(&["export-metrics", "sl", "--results", "results"])
        .code(0)
        .stdout
        .clone();
    assert!(
        csv.contains("train/loss") && csv.contains("val/loss"),
        "{csv}"
    );
    let tb = std::fs::read_dir(test.path().join("results/sl/tb"))
        .unwrap()
        .count();
    assert!(tb >= 2, "TensorBoard runs: {tb}");
    let db = rusqlite::Connection::open(test.path().join("results/palisweep.sqlite")).unwrap();
    let stored: Vec<String> = db
        .prepare("SELECT slurm_job FROM attempts ORDER BY slurm_job")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let mut recorded: Vec<String> = job_ids(&dirs).concat();
    recorded.sort();
    assert_eq!(stored, recorded);
}

#[test]
fn a_detached_sweep_is_followed_by_attach_without_resubmitting() {
    let Some(_cluster) = cluster() else {
        return;
    };
    let test = Test::new().spec(&synthetic(15, 200, 3));
    let started = Instant::now();
    let detached = test.run_in(&["run", "spec.toml", "--results", "results", "--detach"]);
    detached
        .code(0)
        .stdout_has("3 Slurm job(s) left running")
        .stdout_has("palisweep attach sl");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "--detach waited for the jobs"
    );
    let dirs = trial_dirs(&test, "sl");
    let submitted = job_ids(&dirs);
    assert!(
        submitted.iter().all(|jobs| jobs.len() == 1),
        "{submitted:?}"
    );
    let live = live_jobs();
    assert!(
        submitted.iter().flatten().any(|job| live.contains(job)),
        "no job is queued or running after --detach"
    );
    // From another folder: attach finds the sweep by its results root.
    let results = test.path().join("results");
    let attach = Command::new(BIN)
        .args([
            "attach",
            "sl",
            "--results",
            results.to_str().unwrap(),
            "--quiet",
        ])
        .current_dir("/")
        .output()
        .unwrap();
    let stdout = exited(&attach, 0);
    assert!(stdout.contains("3 finished, 0 failed"), "{stdout}");
    assert_eq!(job_ids(&dirs), submitted, "attach submitted jobs again");
    for dir in &dirs {
        assert_eq!(events(dir, "step").len(), 15, "{}", dir.display());
    }
    assert_eq!(count(&status(&test), "finished"), 3);
}

/// Killed while both jobs run; one of them ends before the restart: the
/// restarted orchestrator submits nothing again, stores every step once
/// and records how both attempts ended.
#[test]
fn a_killed_orchestrator_restarts_and_follows_its_jobs_losing_nothing() {
    let Some(_cluster) = cluster() else {
        return;
    };
    let test = Test::new().spec(&spec(
        "method = \"synthetic\"\nbatch_size = 8\ngrad_accum = 1",
        "[synthetic]\nstep_ms = 200\n[sweep.axes]\n\"synthetic.steps\" = [8, 40]\n",
    ));
    let mut orchestrator = spawn(&test, &RUN);
    wait_for_steps(&test, "sl", 2, 3);
    signal(&orchestrator, nix::sys::signal::Signal::SIGKILL);
    orchestrator.wait().unwrap();
    let dirs = trial_dirs(&test, "sl");
    let submitted = job_ids(&dirs);
    // The jobs outlive their orchestrator; the short one ends meanwhile.
    let live = live_jobs();
    assert!(
        submitted.iter().flatten().all(|job| live.contains(job)),
        "{submitted:?} vs {live:?}"
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    while !dirs.iter().any(|d| !events(d, "finished").is_empty()) {
        assert!(Instant::now() < deadline, "the short job never finished");
        std::thread::sleep(Duration::from_millis(100));
    }

    test.run_in(&RUN).code(0).stdout_has("2 finished, 0 failed");
    assert_eq!(job_ids(&dirs), submitted, "a job was submitted again");
    let db = rusqlite::Connection::open(test.path().join("results/palisweep.sqlite")).unwrap();
    let steps: i64 = db
        .query_row(
            "SELECT COUNT(*) FROM metrics WHERE name = 'train/loss'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(steps, 48, "every step once");
    let ended: Vec<(String, String)> = db
        .prepare("SELECT slurm_job, outcome FROM attempts ORDER BY slurm_job")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(ended.len(), 2, "{ended:?}");
    assert!(
        ended.iter().all(|(_, outcome)| outcome == "finished"),
        "{ended:?}"
    );
    assert_eq!(count(&status(&test), "finished"), 2);
}

#[test]
fn a_job_cancelled_in_slurm_is_retried_and_resumes() {
    let Some(_cluster) = cluster() else {
        return;
    };
    let test = Test::new().spec(&synthetic(30, 150, 1));
    let orchestrator = spawn(&test, &RUN);
    wait_for_steps(&test, "sl", 1, 5);
    let dir = trial_dirs(&test, "sl").remove(0);
    let first = attempts(&dir)[0]["job"].as_str().unwrap().to_owned();
    assert!(
        Command::new("scancel")
            .arg(&first)
            .status()
            .unwrap()
            .success()
    );
    let stdout = exited(&orchestrator.wait_with_output().unwrap(), 0);
    assert!(stdout.contains("1 finished, 0 failed"), "{stdout}");
    let attempts = attempts(&dir);
    assert_eq!(attempts.len(), 2, "{attempts:?}");
    assert_eq!(attempts[0]["outcome"], "crashed");
    let reason = attempts[0]["reason"].as_str().unwrap();
    assert!(
        reason.contains(&format!("Slurm job {first}")) && reason.contains("cancelled"),
        "{reason}"
    );
    assert_ne!(attempts[1]["job"].as_str(), Some(first.as_str()));
    assert_eq!(attempts[1]["outcome"], "finished");
    // The retry went on from the checkpoint the cancelled worker saved.
    let resumed: Vec<u64> = events(&dir, "started")
        .iter()
        .map(|e| e["resumed_from"].as_u64().unwrap())
        .collect();
    assert!(resumed.len() == 2 && resumed[1] >= 5, "{resumed:?}");
}

#[test]
fn ctrl_c_with_cancel_on_exit_cancels_the_jobs_and_a_rerun_resumes_them() {
    let Some(_cluster) = cluster() else {
        return;
    };
    let test = Test::new().spec(&synthetic(30, 150, 2));
    let orchestrator = spawn(
        &test,
        &[
            "run",
            "spec.toml",
            "--results",
            "results",
            "--cancel-on-exit",
        ],
    );
    wait_for_steps(&test, "sl", 2, 3);
    signal(&orchestrator, nix::sys::signal::Signal::SIGINT);
    exited(&orchestrator.wait_with_output().unwrap(), 130);
    let dirs = trial_dirs(&test, "sl");
    let live = live_jobs();
    for dir in &dirs {
        let attempts = attempts(dir);
        assert_eq!(attempts[0]["outcome"], "stopped", "{attempts:?}");
        assert!(!live.contains(attempts[0]["job"].as_str().unwrap()));
    }
    assert_eq!(count(&status(&test), "interrupted"), 2);
    test.run_in(&RUN).code(0).stdout_has("2 finished, 0 failed");
}

#[test]
fn a_partition_slurm_rejects_fails_the_sweep_before_any_job_is_submitted() {
    let Some(_cluster) = cluster() else {
        return;
    };
    let test = Test::new().spec(&synthetic(5, 10, 2));
    let before = live_jobs();
    test.run_in(&[
        "run",
        "spec.toml",
        "--results",
        "results",
        "--set",
        "slurm.partition=\"no-such-partition\"",
    ])
    .code(2)
    .stderr_has("Slurm rejected the job")
    .stderr_has("invalid partition");
    for dir in trial_dirs(&test, "sl") {
        assert!(
            !dir.join("attempts.jsonl").exists(),
            "{} was submitted",
            dir.display()
        );
    }
    assert_eq!(live_jobs(), before);
}

#[test]
fn plan_shows_the_sbatch_line_of_each_trial() {
    // No cluster needed: plan only prints.
    let test = Test::new().spec(&spec(
        "epochs = 1",
        "partition = \"gpu\"\ntime = \"01:00:00\"\n\
         memory_tiers = [{ above = \"1KiB\", gres = \"gpu:a100:1\" }]\n",
    ));
    let out = test.run_in(&["plan", "spec.toml", "--json"]);
    let json = out.code(0).json();
    let line = json["trials"][0]["sbatch"].as_str().unwrap();
    for part in [
        "sbatch --parsable",
        "--partition=gpu",
        "--time=01:00:00",
        "--gres=gpu:a100:1",
        "slurm-job.sh",
    ] {
        assert!(line.contains(part), "{part} in {line}");
    }
    // `--backend local` overrides the spec: no sbatch lines.
    let local = test
        .run_in(&["plan", "spec.toml", "--backend", "local", "--json"])
        .code(0)
        .json();
    assert!(local["trials"][0].is_object(), "{local}");
    assert!(local["trials"][0].get("sbatch").is_none(), "{local}");
}

/// ASHA's hand-worked nine trials (`asha.rs`) through Slurm, one job at a
/// time: each rung is one job whose worker stops there by itself.
fn asha_spec(step_ms: u32) -> String {
    crate::asha::spec_with(
        step_ms,
        "[resources]\nbackend = \"slurm\"\nretries = 2\n\
         [slurm]\ncpus_per_trial = 1\npoll_interval = 0.3\nmax_jobs = 1\n",
    )
}

/// Each trial's attempts as `(job, outcome)`, by letter.
fn rung_jobs(test: &Test) -> Vec<(&'static str, Vec<(String, String)>)> {
    let letters = crate::asha::letters(test);
    trial_dirs(test, "s")
        .iter()
        .map(|dir| {
            let letter = letters[&dir.file_name().unwrap().to_string_lossy().into_owned()];
            let jobs = attempts(dir)
                .iter()
                .map(|a| {
                    (
                        a["job"].as_str().unwrap_or_default().to_owned(),
                        a["outcome"].as_str().unwrap_or_default().to_owned(),
                    )
                })
                .collect();
            (letter, jobs)
        })
        .collect()
}

#[test]
fn asha_through_slurm_promotes_and_stops_the_trials_worked_by_hand() {
    let Some(_cluster) = cluster() else {
        return;
    };
    let test = Test::new().spec(&asha_spec(2));
    crate::asha::ends_as_worked_by_hand(&test, &test.run_in(&RUN));
    assert_eq!(crate::asha::launches(&test), crate::asha::LAUNCHES);
    for (letter, jobs) in rung_jobs(&test) {
        // One job per rung: paused at each rung it reached, d finished.
        let expected = match letter {
            "d" => vec!["paused", "paused", "finished"],
            "b" | "g" => vec!["paused", "paused"],
            _ => vec!["paused"],
        };
        let outcomes: Vec<&str> = jobs.iter().map(|(_, o)| o.as_str()).collect();
        assert_eq!(outcomes, expected, "trial {letter}: {jobs:?}");
        let ids: BTreeSet<&String> = jobs.iter().map(|(j, _)| j).collect();
        assert_eq!(ids.len(), jobs.len(), "trial {letter}: a job per rung");
    }
    crate::asha::each_resumed_from_its_checkpoint(&test);
}

#[test]
fn a_killed_asha_orchestrator_restarts_and_gives_the_same_promotions() {
    let Some(_cluster) = cluster() else {
        return;
    };
    let test = Test::new().spec(&asha_spec(150));
    // Killed once d runs towards rung 1 (after five jobs); its jobs run on.
    crate::util::kill_9_when(&test, &RUN, || {
        test.path().join("results/s/trials").is_dir()
            && crate::asha::launches(&test).split(' ').count() >= 6
    });
    crate::asha::ends_as_worked_by_hand(&test, &test.run_in(&RUN));
    for (letter, jobs) in rung_jobs(&test) {
        assert!(
            jobs.iter().all(|(_, o)| o == "paused" || o == "finished"),
            "trial {letter}: the job followed after the restart ended as it did: {jobs:?}"
        );
    }
    crate::asha::each_resumed_from_its_checkpoint(&test);
}

#[test]
fn tpe_through_slurm_keeps_max_jobs_in_flight_and_stops_at_its_trial_budget() {
    let Some(_cluster) = cluster() else {
        return;
    };
    let test = Test::new().spec(&crate::util::synthetic_spec(
        "s",
        "[synthetic]\nsteps = 10\nstep_ms = 100\n\
         [sweep]\nstrategy = \"tpe\"\nsamples = 6\n\
         [sweep.budget]\ntrials = 4\n\
         [sweep.axes]\n\"train.lr\" = { loguniform = [1e-6, 1e-3] }\n\
         [resources]\nbackend = \"slurm\"\n\
         [slurm]\ncpus_per_trial = 1\npoll_interval = 0.3\nmax_jobs = 2\n",
    ));
    test.run_in(&RUN).code(0).stdout_has("4 finished, 0 failed");
    let suggested = crate::util::jsonl(&test.path().join("results/s/suggestions.jsonl"));
    assert_eq!(
        suggested.len(),
        4,
        "the budget stops suggestions: {suggested:?}"
    );
    let dirs = trial_dirs(&test, "s");
    assert_eq!(dirs.len(), 4);
    // Jobs' lives from their attempt records: never more than two at once.
    let spans: Vec<(f64, f64)> = dirs
        .iter()
        .flat_map(|d| attempts(d))
        .map(|a| (a["start"].as_f64().unwrap(), a["end"].as_f64().unwrap()))
        .collect();
    for (start, _) in &spans {
        let live = spans
            .iter()
            .filter(|(s, e)| s <= start && start < e)
            .count();
        assert!(live <= 2, "{live} jobs at once: {spans:?}");
    }
    // The next run holds: the budget counts the launched trials.
    test.run_in(&RUN).code(0).stdout_has("4 finished, 0 failed");
    assert_eq!(trial_dirs(&test, "s").len(), 4);
}

//! TensorBoard's own code opens what a real sweep wrote
//! (`scripts/tensorboard/check.py` in the pinned venv that
//! `scripts/tensorboard/setup.sh` makes): each trial's scalars with the
//! store's values, the `HParams` experiment, and each trial's session with
//! its status, in process and through a running `tensorboard` with both of
//! its loaders. `scripts/test.sh` sets the venv up and sets
//! `PALISWEEP_REQUIRE_TENSORBOARD=1`; run alone without the venv, the test
//! says on stderr that it did not run.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::util::{Test, run_spec, trial_dirs};

fn python() -> Option<PathBuf> {
    let python = Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv-tb/bin/python");
    if python.exists() {
        return Some(python);
    }
    assert!(
        std::env::var_os("PALISWEEP_REQUIRE_TENSORBOARD").is_none(),
        "PALISWEEP_REQUIRE_TENSORBOARD is set but {} is missing: run scripts/tensorboard/setup.sh",
        python.display()
    );
    eprintln!(
        "tensorboard test not run: no .venv-tb (scripts/tensorboard/setup.sh makes it), and \
         PALISWEEP_REQUIRE_TENSORBOARD (scripts/test.sh sets it; it makes this an error) is not set"
    );
    None
}

#[test]
fn tensorboard_reads_a_sweeps_scalars_hparams_and_statuses() {
    let Some(python) = python() else {
        return;
    };
    // Two synthetic trials: one finishes, one crashes on every attempt.
    let test = Test::new().spec(
        "[experiment]\nname = \"tb\"\n\
         [data]\npath = \"generated:json\"\n\
         [model]\ncheckpoint = \"tiny\"\n\
         [train]\nmethod = \"synthetic\"\nbatch_size = 8\ngrad_accum = 1\nlr = 1e-3\n\
         [synthetic]\nsteps = 40\nstep_ms = 5\ncrash_at_step = 3\n\
         [sweep.axes]\n\"synthetic.crash_attempts\" = [0, 9]\n\
         [resources]\nretries = 0\n",
    );
    run_spec(&test, "fake-cuda:1x80GiB")
        .code(1)
        .stdout_has("1 finished, 1 failed");

    // The store's view: each trial's status, and a loss the finished one
    // logged.
    let rows = crate::util::metric_rows(&test, "tb");
    let mut expectations = Vec::new();
    for dir in trial_dirs(&test, "tb") {
        let id = dir.file_name().unwrap().to_string_lossy().into_owned();
        let show = test
            .run_in(&["show", &id, "--results", "results", "--json"])
            .code(0)
            .json();
        let status = match show["trial"]["status"].as_str().unwrap() {
            "finished" => "STATUS_SUCCESS",
            "failed" => "STATUS_FAILURE",
            other => panic!("{id}: status {other}"),
        };
        expectations.push(format!("--expect-status={id}={status}"));
        if status == "STATUS_SUCCESS" {
            let loss = rows
                .iter()
                .find(|r| {
                    r["trial_id"] == id.as_str() && r["name"] == "train/loss" && r["step"] == 2
                })
                .unwrap_or_else(|| {
                    panic!(
                        "no train/loss at step 2 for {id} among {} stored rows",
                        rows.len()
                    )
                });
            expectations.push(format!(
                "--expect-scalar={id}:train/loss:2={}",
                loss["value"]
            ));
            // HParams shows the trial's score (the store's best, as the
            // report ranks it) and, under the metric's own name, its last.
            let best = show["trial"]["best_metric"].as_f64().unwrap();
            let last = rows
                .iter()
                .filter(|r| r["trial_id"] == id.as_str() && r["name"] == "val/loss")
                .max_by_key(|r| r["step"].as_u64().unwrap())
                .unwrap()["value"]
                .as_f64()
                .unwrap();
            assert!(
                best < last,
                "the sweep must tell best ({best}) from last ({last})"
            );
            expectations.push(format!("--expect-hparam={id}:best/val/loss={best}"));
            expectations.push(format!("--expect-hparam={id}:val/loss={last}"));
        }
    }
    assert_eq!(expectations.len(), 5, "{expectations:?}");

    let stdout = check(&python, &test, &["--serve"], &expectations);
    assert!(stdout.contains("python loader: 2 trial runs"), "{stdout}");
}

#[test]
fn a_promoted_asha_trial_has_one_continuous_curve_in_tensorboard() {
    let Some(python) = python() else {
        return;
    };
    // Three trials, rungs 5 and 15, η = 3: the best at step 5 (the largest
    // learning rate) is promoted when the third result arrives and resumes
    // from its checkpoint in a second attempt.
    let test = Test::new().spec(&crate::util::synthetic_spec(
        "tb",
        "[synthetic]\nsteps = 15\nstep_ms = 2\n\
         [sweep]\nearly_stop = \"asha\"\n\
         [sweep.asha]\nmin_steps = 5\nmax_steps = 15\n\
         [sweep.axes]\n\"train.lr\" = [1e-5, 1e-4, 1e-3]\n",
    ));
    run_spec(&test, "fake-cuda:1x80GiB")
        .code(0)
        .stdout_has("1 finished, 0 failed, 2 pruned");
    let mut expectations = Vec::new();
    for dir in trial_dirs(&test, "tb") {
        let id = dir.file_name().unwrap().to_string_lossy().into_owned();
        let status = test
            .run_in(&["show", &id, "--results", "results", "--json"])
            .code(0)
            .json()["trial"]["status"]
            .as_str()
            .unwrap()
            .to_owned();
        let steps = if status == "finished" { 15 } else { 5 };
        expectations.push(format!("--expect-steps={id}:train/loss={steps}"));
        // Early stopping is the sweep's own choice, not a failure.
        expectations.push(format!("--expect-status={id}=STATUS_SUCCESS"));
    }
    check(&python, &test, &[], &expectations);
}

/// Runs `check.py` on sweep `tb`'s TensorBoard folder with these
/// expectations; asserts it passed and returns what it printed.
fn check(python: &Path, test: &Test, flags: &[&str], expectations: &[String]) -> String {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/tensorboard/check.py");
    let out = Command::new(python)
        .arg(script)
        .arg(test.path().join("results/tb/tb"))
        .args(flags)
        .args(expectations)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "check.py failed:\n{stdout}\n{stderr}");
    assert!(stdout.trim_end().ends_with("OK"), "{stdout}");
    stdout
}

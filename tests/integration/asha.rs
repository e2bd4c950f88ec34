//! `sweep.early_stop = "asha"` through the real binary: synthetic trials on
//! one made-up GPU, so that arrival order — and with it every decision of
//! asynchronous successive halving — is fixed and can be worked by hand.

use std::collections::BTreeMap;
use std::path::Path;

use crate::util::{Test, count, events, trial_dirs};

/// Nine trials a..i on one device, rungs 5, 15 and 45 steps, η = 3.
///
/// The synthetic validation loss falls as `2·exp(-3·rate·step/45)` with
/// `rate = sqrt(lr/1e-4)`: a larger lr is better at every rung, and the
/// rates 0.3…1.1 keep neighbours ≥ 0.04 apart at step 5 and ≥ 0.07 at
/// step 15, above the curve's ±0.005 noise. Ranked best first at rung 0
/// (1 = best), a..i are 5 3 8 1 9 4 2 7 6: the case worked by hand in
/// `search::asha`'s tests. One trial runs at a time; promoted trials go
/// before new ones.
///
/// | runs   | rung-0 results so far | top ⌊n/3⌋ | what happens                  |
/// |--------|-----------------------|-----------|-------------------------------|
/// | a → 5  | a                     | –         | a pauses                      |
/// | b → 5  | a b                   | –         | b pauses                      |
/// | c → 5  | a b c                 | b         | c pauses; b promoted          |
/// | b → 15 | (rung 1: b)           | –         | b pauses at rung 1            |
/// | d → 5  | a b c d               | d         | d continues                   |
/// | d → 15 | (rung 1: b d)         | –         | d pauses at rung 1            |
/// | e → 5  | … e (5)               | d         | e pauses                      |
/// | f → 5  | … f (6)               | d b       | f pauses                      |
/// | g → 5  | … g (7)               | d g       | g continues                   |
/// | g → 15 | (rung 1: b d g)       | d         | g pauses; d promoted          |
/// | d → 45 | (top)                 |           | d trains to its end: finished |
/// | h → 5  | … h (8)               | d g       | h pauses                      |
/// | i → 5  | … i (9)               | d g b     | i pauses                      |
///
/// Nothing is left to run: a c e f h i stop at rung 0, b and g at rung 1.
pub(crate) const LRS: [(&str, f64); 9] = [
    ("a", 4.9e-5),
    ("b", 8.1e-5),
    ("c", 1.6e-5),
    ("d", 1.21e-4),
    ("e", 9e-6),
    ("f", 6.4e-5),
    ("g", 1e-4),
    ("h", 2.5e-5),
    ("i", 3.6e-5),
];

pub(crate) const LAUNCHES: &str = "a5 b5 c5 b15 d5 d15 e5 f5 g5 g15 d45 h5 i5";

fn spec(step_ms: u32) -> String {
    spec_with(step_ms, "")
}

/// The nine trials' spec, with `extra` tables (another backend).
pub(crate) fn spec_with(step_ms: u32, extra: &str) -> String {
    let lrs: Vec<String> = LRS.iter().map(|(_, lr)| format!("{lr:e}")).collect();
    crate::util::synthetic_spec(
        "s",
        &format!(
            "[synthetic]\nsteps = 45\nstep_ms = {step_ms}\n\
             [sweep]\nearly_stop = \"asha\"\n\
             [sweep.asha]\nmin_steps = 5\nmax_steps = 45\neta = 3\n\
             [sweep.axes]\n\"train.lr\" = [{}]\n{extra}",
            lrs.join(", ")
        ),
    )
}

fn run(test: &Test) -> crate::util::Output {
    let mut args = crate::util::run_args("fake-cuda:1x80GiB");
    args.extend(["--kill-grace".to_owned(), "1".to_owned()]);
    test.run_in(&args.iter().map(String::as_str).collect::<Vec<_>>())
}

/// Trial folder → its letter, by its learning rate. A folder whose
/// `trial.toml` is not written yet (the orchestrator makes the folder, then
/// writes the file atomically: a poll mid-run can fall between) has none.
pub(crate) fn letters(test: &Test) -> BTreeMap<String, &'static str> {
    trial_dirs(test, "s")
        .iter()
        .filter(|dir| dir.join("trial.toml").is_file())
        .map(|dir| {
            let config: toml::Table = std::fs::read_to_string(dir.join("trial.toml"))
                .unwrap()
                .parse()
                .unwrap();
            let lr = config["train"]["lr"].as_float().unwrap();
            let (letter, _) = LRS
                .iter()
                .find(|(_, x)| ((x - lr) / x).abs() < 1e-9)
                .unwrap();
            (
                dir.file_name().unwrap().to_string_lossy().into_owned(),
                *letter,
            )
        })
        .collect()
}

/// Each trial's status and reason in the store, by letter.
pub(crate) fn outcomes(test: &Test) -> BTreeMap<&'static str, (String, Option<String>)> {
    let letters = letters(test);
    let db = rusqlite::Connection::open(test.path().join("results/palisweep.sqlite")).unwrap();
    let mut stmt = db
        .prepare("SELECT id, status, exit_reason FROM trials WHERE sweep = 's'")
        .unwrap();
    stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get(1)?, r.get(2)?)))
        .unwrap()
        .map(|row| {
            let (id, status, reason) = row.unwrap();
            (letters[&id], (status, reason))
        })
        .collect()
}

pub(crate) fn expected_outcomes() -> BTreeMap<&'static str, (String, Option<String>)> {
    let stopped = |rung: usize, step: u64| {
        (
            "pruned".to_owned(),
            Some(format!(
                "stopped at rung {rung} of 3 (step {step}): not in the top 1/3 of its rung"
            )),
        )
    };
    LRS.iter()
        .map(|(t, _)| {
            let outcome = match *t {
                "d" => ("finished".to_owned(), None),
                "b" | "g" => stopped(1, 15),
                _ => stopped(0, 5),
            };
            (*t, outcome)
        })
        .collect()
}

/// Every attempt as `<letter><last step>`, in the order they started.
pub(crate) fn launches(test: &Test) -> String {
    let letters = letters(test);
    let mut all: Vec<(f64, String)> = Vec::new();
    for dir in trial_dirs(test, "s") {
        let Some(&letter) = letters.get(&dir.file_name().unwrap().to_string_lossy().into_owned())
        else {
            continue; // not written yet: no attempt started
        };
        let lines = crate::util::jsonl(&dir.join("events.jsonl"));
        let mut current: Option<(f64, u64)> = None;
        for line in lines {
            match line["event"].as_str() {
                Some("started") => {
                    if let Some((t, step)) = current.take() {
                        all.push((t, format!("{letter}{step}")));
                    }
                    current = Some((line["time"].as_f64().unwrap(), 0));
                }
                Some("step") => {
                    if let Some(c) = current.as_mut() {
                        c.1 = line["step"].as_u64().unwrap();
                    }
                }
                _ => {}
            }
        }
        if let Some((t, step)) = current {
            all.push((t, format!("{letter}{step}")));
        }
    }
    all.sort_by(|a, b| a.0.total_cmp(&b.0));
    all.into_iter()
        .map(|(_, s)| s)
        .collect::<Vec<_>>()
        .join(" ")
}

/// Steps each trial trained, as listed by its step events (all attempts).
pub(crate) fn steps_trained(dir: &Path) -> Vec<u64> {
    events(dir, "step")
        .iter()
        .map(|e| e["step"].as_u64().unwrap())
        .collect()
}

#[test]
fn asha_promotes_and_stops_the_trials_worked_by_hand_and_no_step_runs_twice() {
    let test = Test::new().spec(&spec(2));
    ends_as_worked_by_hand(&test, &run(&test));
    assert_eq!(launches(&test), LAUNCHES);
    let letters = letters(&test);
    for dir in trial_dirs(&test, "s") {
        let letter = letters[&dir.file_name().unwrap().to_string_lossy().into_owned()];
        let last = match letter {
            "d" => 45,
            "b" | "g" => 15,
            _ => 5,
        };
        // Promoted trials resumed from their rung's checkpoint.
        assert_eq!(
            steps_trained(&dir),
            (1..=last).collect::<Vec<u64>>(),
            "trial {letter}"
        );
    }
    let status = crate::util::status(&test, "s");
    assert_eq!(count(&status, "pruned"), 8);
    // A finished ASHA sweep stays as it ended on the next run.
    run(&test)
        .code(0)
        .stdout_has("1 finished, 0 failed, 8 pruned");
    assert_eq!(outcomes(&test), expected_outcomes());
    assert_eq!(launches(&test), LAUNCHES, "nothing ran again");
}

#[test]
fn a_kill_9_mid_sweep_then_run_gives_the_same_promotions() {
    let test = Test::new().spec(&spec(40));
    // Kill the scheduler once d is on its way to rung 1 (five launches).
    crate::util::kill_9_run_when(&test, || {
        test.path().join("results/s/trials").is_dir() && launches(&test).split(' ').count() >= 6
    });
    ends_as_worked_by_hand(&test, &run(&test));
    // The rung results before the kill counted: nothing was promoted twice
    // or trained again from the start.
    each_resumed_from_its_checkpoint(&test);
}

/// A finished run of the nine trials: the summary, and each trial's
/// status and reason in the store as worked by hand.
pub(crate) fn ends_as_worked_by_hand(test: &Test, out: &crate::util::Output) {
    out.code(0).stdout_has("1 finished, 0 failed, 8 pruned");
    assert_eq!(outcomes(test), expected_outcomes());
}

/// Each trial trained steps 1..its last, resuming (a step trained again
/// after a kill, from the last checkpoint, counts once).
pub(crate) fn each_resumed_from_its_checkpoint(test: &Test) {
    let letters = letters(test);
    for dir in trial_dirs(test, "s") {
        let letter = letters[&dir.file_name().unwrap().to_string_lossy().into_owned()];
        let mut steps = steps_trained(&dir);
        steps.dedup();
        let last = *steps.last().unwrap();
        assert_eq!(
            steps,
            (1..=last).collect::<Vec<u64>>(),
            "trial {letter} resumed from its checkpoint"
        );
    }
}

/// A tiny real sweep: three learning rates, rungs at steps 2 and 6.
fn real_spec(asha: bool, lrs: &str) -> String {
    let early_stop = if asha {
        "[sweep]\nearly_stop = \"asha\"\n[sweep.asha]\nmin_steps = 2\nmax_steps = 6\neta = 3\n"
    } else {
        ""
    };
    format!(
        "[experiment]\nname = \"s\"\nseed = 5\n\
         [data]\npath = \"generated:json\"\ntask = \"json\"\nmax_suffix_tokens = 32\n\
         [model]\ncheckpoint = \"tiny\"\n\
         [train]\nepochs = 50\nmax_steps = 6\nbatch_size = 4\ngrad_accum = 1\nwarmup = 1\n\
         [eval]\nevery = 2\ngenerate = false\n\
         {early_stop}\
         [sweep.axes]\n\"train.lr\" = [{lrs}]\n"
    )
}

/// `name` of `trial` by step, as the store's export gives it (the curve's
/// own points), values as their JSON text: equal text, equal bits.
fn curve(rows: &[serde_json::Value], trial: &str, name: &str) -> Vec<(u64, String)> {
    rows.iter()
        .filter(|r| r["trial_id"] == trial && r["name"] == name && r["in_curve"] != false)
        .map(|r| (r["step"].as_u64().unwrap(), r["value"].to_string()))
        .collect()
}

#[test]
fn a_promoted_real_trial_trains_the_same_curve_as_an_uninterrupted_run() {
    let swept = Test::new().spec(&real_spec(true, "3e-3, 1e-2, 3e-2"));
    promoted_matches_alone(&swept, |lr| Test::new().spec(&real_spec(false, lr)));
}

/// Rungs in epochs: 8 training examples in batches of 4 make 2 steps an
/// epoch; rungs at epochs 1 and 3 (steps 2 and 6), evaluated per epoch.
fn epoch_spec(asha: bool, lrs: &str) -> String {
    let early_stop = if asha {
        "[sweep]\nearly_stop = \"asha\"\n[sweep.asha]\nmin_epochs = 1\nmax_epochs = 3\neta = 3\n"
    } else {
        ""
    };
    format!(
        "[experiment]\nname = \"s\"\nseed = 5\n\
         [data]\npath = \"data\"\ntask = \"json\"\nmax_suffix_tokens = 32\n\
         [model]\ncheckpoint = \"tiny\"\n\
         [train]\nepochs = 3\nbatch_size = 4\ngrad_accum = 1\nwarmup = 1\n\
         [eval]\nevery = \"epoch\"\ngenerate = false\n\
         {early_stop}\
         [sweep.axes]\n\"train.lr\" = [{lrs}]\n"
    )
}

/// A test folder with `spec` and a dataset of 8 training examples.
fn with_small_data(spec: &str) -> Test {
    let test = Test::new().spec(spec);
    test.run_in(&[
        "init-data",
        "--out",
        "data",
        "--train",
        "8",
        "--valid",
        "4",
        "--test",
        "2",
    ])
    .code(0);
    test
}

#[test]
fn rungs_in_epochs_pause_trials_after_their_epoch_and_the_promoted_one_matches_an_uninterrupted_run()
 {
    let swept = with_small_data(&epoch_spec(true, "3e-3, 1e-2, 3e-2"));
    promoted_matches_alone(&swept, |lr| with_small_data(&epoch_spec(false, lr)));
    let db = rusqlite::Connection::open(swept.path().join("results/palisweep.sqlite")).unwrap();
    let stopped: Vec<Option<String>> = db
        .prepare("SELECT exit_reason FROM trials WHERE sweep = 's' AND status = 'pruned'")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(stopped.len(), 2, "{stopped:?}");
    for reason in &stopped {
        assert_eq!(
            reason.as_deref(),
            Some("stopped at rung 0 of 2 (epoch 1): not in the top 1/3 of its rung")
        );
    }
    for dir in trial_dirs(&swept, "s") {
        let steps = steps_trained(&dir);
        assert!(
            steps == [1, 2] || steps == (1..=6).collect::<Vec<u64>>(),
            "a trial stops after its first epoch (2 steps) or trains all 3: {steps:?}"
        );
    }
}

/// The sweep's finished trial was paused at its first rung, then resumed;
/// its curves equal those of the same trial run alone without ASHA
/// (`alone(lr)`): steps 1..6, evaluations at 2, 4 and 6.
fn promoted_matches_alone(swept: &Test, alone: impl Fn(&str) -> Test) {
    // Two slots of one torch thread each: no reduction is split across
    // threads, so the comparison below can be bit for bit even on a
    // loaded machine (a 2-thread run once differed under the full suite).
    crate::util::run_spec(swept, "cpu:2")
        .code(0)
        .stdout_has("1 finished, 0 failed, 2 pruned");
    let db = rusqlite::Connection::open(swept.path().join("results/palisweep.sqlite")).unwrap();
    let (promoted, lr): (String, String) = db
        .query_row(
            "SELECT id, json_extract(params, '$.\"train.lr\"') FROM trials WHERE status = 'finished'",
            [],
            |r| Ok((r.get(0)?, r.get::<_, f64>(1)?.to_string())),
        )
        .unwrap();
    let attempts: Vec<String> = db
        .prepare("SELECT outcome FROM attempts WHERE trial_id = ?1 ORDER BY attempt")
        .unwrap()
        .query_map([&promoted], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(
        attempts,
        ["paused", "finished"],
        "paused at rung 0, then resumed"
    );

    // The same trial (same id: the sweep table is not part of it), alone
    // and without ASHA.
    let alone = alone(&lr);
    crate::util::run_spec(&alone, "cpu:2")
        .code(0)
        .stdout_has("1 finished, 0 failed");
    let swept_rows = crate::util::metric_rows(swept, "s");
    let alone_rows = crate::util::metric_rows(&alone, "s");
    for name in ["train/loss", "train/grad_norm", "val/loss"] {
        let resumed = curve(&swept_rows, &promoted, name);
        let steps: Vec<u64> = resumed.iter().map(|(s, _)| *s).collect();
        let expected: Vec<u64> = if name == "val/loss" {
            vec![2, 4, 6]
        } else {
            (1..=6).collect()
        };
        assert_eq!(steps, expected, "{name}: {resumed:?}");
        assert_eq!(
            resumed,
            curve(&alone_rows, &promoted, name),
            "{name} of the promoted trial differs from an uninterrupted run"
        );
    }
}

#[test]
fn hyperband_deals_trials_to_brackets_that_pause_them_at_different_rungs() {
    // Rungs 5, 15, 45 and η = 3 give three brackets, first compared at 5,
    // 15 and 45 steps; launched one at a time, a, b and c go to them in
    // that order (the shares 9 : 5 : 3 deal the first three one each).
    // Alone in their brackets, a and b are never in a top third.
    let spec = spec(2)
        .replace("early_stop = \"asha\"", "early_stop = \"hyperband\"")
        .replace(
            "\"train.lr\" = [",
            "\"train.lr\" = [4.9e-5, 8.1e-5, 1.6e-5]\n# [",
        );
    let test = Test::new().spec(&spec);
    run(&test)
        .code(0)
        .stdout_has("1 finished, 0 failed, 2 pruned");
    let expected: BTreeMap<&str, (String, Option<String>)> = [
        (
            "a",
            (
                "pruned".to_owned(),
                Some("stopped at rung 0 of 3 (step 5): not in the top 1/3 of its rung".to_owned()),
            ),
        ),
        (
            "b",
            (
                "pruned".to_owned(),
                Some("stopped at rung 0 of 2 (step 15): not in the top 1/3 of its rung".to_owned()),
            ),
        ),
        ("c", ("finished".to_owned(), None)),
    ]
    .into();
    assert_eq!(outcomes(&test), expected);
    assert_eq!(launches(&test), "a5 b15 c45");
}

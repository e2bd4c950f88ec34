//! Per-example predictions through the real binary (issue #20): every
//! evaluation that generates leaves a file in the trial folder, the store
//! indexes it, `show --predictions` prints it back, and the file agrees with
//! the split metrics the store recorded.

use std::collections::BTreeMap;
use std::io::BufRead as _;
use std::path::Path;

use serde_json::Value;

use crate::util::{Test, run_spec};

/// The decompressed lines of a predictions file.
fn file_lines(path: &Path) -> Vec<String> {
    let file = std::fs::File::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    std::io::BufReader::new(flate2::read::GzDecoder::new(file))
        .lines()
        .map(Result::unwrap)
        .filter(|l| !l.trim().is_empty())
        .collect()
}

fn events(test: &Test, sweep: &str, trial: &str) -> Vec<Value> {
    let path = test
        .path()
        .join("results")
        .join(sweep)
        .join("trials")
        .join(trial)
        .join("events.jsonl");
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Each trial's id by whether its evaluations generate, from its config.
fn trials_by_generation(test: &Test, sweep: &str) -> BTreeMap<bool, String> {
    let dir = test.path().join("results").join(sweep).join("trials");
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            let config: toml::Table =
                toml::from_str(&std::fs::read_to_string(e.path().join("trial.toml")).unwrap())
                    .unwrap();
            let generate = config["eval"]["generate"].as_bool().unwrap();
            (generate, e.file_name().to_string_lossy().into_owned())
        })
        .collect()
}

#[test]
fn every_generating_evaluation_keeps_its_examples_and_show_prints_them_back() {
    // Two trials: one evaluates with generation, one without.
    let test = Test::new().spec(
        "[experiment]\nname = \"p\"\nseed = 0\n\
         [data]\npath = \"generated:json\"\ntask = \"json\"\nmax_suffix_tokens = 32\n\
         [model]\ncheckpoint = \"tiny\"\n\
         [train]\nepochs = 2\nbatch_size = 8\ngrad_accum = 1\nlr = 1e-2\nwarmup = 1\n\
         [lora]\ndropout = 0.0\n\
         [eval]\nmax_new_tokens = 24\nselect = { metric = \"val/field_f1\", mode = \"max\" }\n\
         [sweep.axes]\n\"eval.generate\" = [true, false]\n",
    );
    run_spec(&test, "cpu:2").code(0);
    let trials = trials_by_generation(&test, "p");
    let (id, plain) = (&trials[&true], &trials[&false]);
    let evals = every_evaluation_left_its_file(&test, id, plain);
    let (best_step, shown) = show_prints_the_best_steps_file(&test, id);
    the_file_agrees_with_the_stored_metrics(&test, id, best_step, &shown);
    show_picks_other_evaluations_and_names_missing_ones(&test, id, plain, &evals, best_step);
}

/// Every evaluation of the generating trial is followed by its file, of
/// the split's size; the other trial has none. Returns the evaluations as
/// (step, `val` or `test`).
fn every_evaluation_left_its_file(test: &Test, id: &str, plain: &str) -> Vec<(u64, String)> {
    let events = events(test, "p", id);
    let evals: Vec<(u64, String)> = events
        .iter()
        .filter(|e| e["event"] == "eval")
        .map(|e| {
            let split = if e["split"] == "valid" { "val" } else { "test" };
            (e["step"].as_u64().unwrap(), split.to_owned())
        })
        .collect();
    let files: Vec<&Value> = events
        .iter()
        .filter(|e| e["event"] == "predictions")
        .collect();
    assert!(evals.len() >= 3, "two validations and a test: {evals:?}");
    assert_eq!(files.len(), evals.len());
    let val_size = std::fs::read_to_string(
        test.path()
            .join("results/.cache/data/generated-json-seed0/valid/annotations.jsonl"),
    )
    .unwrap()
    .lines()
    .filter(|l| !l.trim().is_empty())
    .count();
    assert_eq!(val_size, 12);
    for (file, (step, split)) in files.iter().zip(&evals) {
        assert_eq!(file["step"].as_u64(), Some(*step), "{file}");
        assert_eq!(file["split"].as_str(), Some(split.as_str()), "{file}");
        assert_eq!(file["metric"], "field_f1");
        let path = test.path().join(file["path"].as_str().unwrap());
        assert_eq!(
            path.file_name().unwrap().to_string_lossy(),
            format!("{split}-step{step:08}.jsonl.gz")
        );
        let lines = file_lines(&path);
        assert_eq!(file["examples"].as_u64(), Some(lines.len() as u64));
        assert_eq!(lines.len(), val_size, "both splits have 12 examples");
    }
    let trials = test.path().join("results/p/trials");
    assert_eq!(
        std::fs::read_dir(trials.join(id).join("predictions"))
            .unwrap()
            .count(),
        evals.len(),
        "one file per evaluation, nothing else"
    );
    assert!(
        !trials.join(plain).join("predictions").exists(),
        "no generation, no file"
    );
    evals
}

/// `show --predictions --format jsonl` prints exactly the lines of the file
/// at the trial's best step; returns that step and the lines.
fn show_prints_the_best_steps_file(test: &Test, id: &str) -> (u64, Vec<Value>) {
    let best_step = test
        .run_in(&["show", id, "--results", "results", "--json"])
        .code(0)
        .json()["trial"]["best_step"]
        .as_u64()
        .unwrap();
    let out = test.run_in(&[
        "show",
        id,
        "--predictions",
        "--format",
        "jsonl",
        "--results",
        "results",
    ]);
    out.code(0)
        .stderr_has(&format!(
            "val predictions at step {best_step} (the best step)"
        ))
        .stderr_has(&format!("val-step{best_step:08}.jsonl.gz"));
    let shown: Vec<Value> = out
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let best_file = test
        .path()
        .join("results/p/trials")
        .join(id)
        .join(format!("predictions/val-step{best_step:08}.jsonl.gz"));
    let stored: Vec<Value> = file_lines(&best_file)
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(shown, stored);
    assert_eq!(shown.len(), 12);
    for (i, example) in shown.iter().enumerate() {
        assert_eq!(example["index"], i);
        assert_eq!(example["metric"], "field_f1");
    }
    (best_step, shown)
}

/// Independently: the split metrics the store recorded at `step`, from the
/// file's lines alone.
fn the_file_agrees_with_the_stored_metrics(test: &Test, id: &str, step: u64, shown: &[Value]) {
    let metrics = crate::util::metric_rows(test, "p");
    let stored_metric = |name: &str| {
        metrics
            .iter()
            .find(|m| m["trial_id"] == id && m["name"] == name && m["step"] == step)
            .and_then(|m| m["value"].as_f64())
            .unwrap_or_else(|| panic!("no {name} at step {step}"))
    };
    let field = |e: &Value, key: &str| e[key].as_str().unwrap().trim().to_owned();
    let exact = shown
        .iter()
        .filter(|e| field(e, "prediction") == field(e, "reference"))
        .count() as f64
        / shown.len() as f64;
    assert!((stored_metric("val/exact_match") - exact).abs() < 1e-12);
    // CER: edits over reference characters, summed over the split.
    let (edits, chars) = shown.iter().fold((0, 0), |(edits, chars), e| {
        let (p, r) = (field(e, "prediction"), field(e, "reference"));
        (
            edits + strsim::levenshtein(&p, &r),
            chars + r.chars().count(),
        )
    });
    let cer = edits as f64 / chars as f64;
    assert!(
        cer > 0.0,
        "an untrained model that answers every example exactly?"
    );
    assert!((stored_metric("val/cer") - cer).abs() < 1e-9, "{cer}");
}

/// The table, another evaluation by split or step, and what is not there.
fn show_picks_other_evaluations_and_names_missing_ones(
    test: &Test,
    id: &str,
    plain: &str,
    evals: &[(u64, String)],
    best_step: u64,
) {
    let listing = test.run_in(&["show", id, "--predictions", "--results", "results"]);
    listing
        .code(0)
        .stdout_has(&format!(
            "val predictions at step {best_step} (the best step), 12 examples"
        ))
        .stdout_has("field_f1 per example, higher is better");
    let rows: Vec<&str> = listing
        .stdout
        .lines()
        .skip_while(|l| !l.starts_with("index"))
        .skip(1)
        .collect();
    assert_eq!(rows.len(), 12, "{}", listing.stdout);
    assert!(
        rows.iter().all(|r| r.chars().count() <= 120),
        "{}",
        listing.stdout
    );

    let test_step = evals.iter().find(|(_, s)| s == "test").unwrap().0;
    test.run_in(&[
        "show",
        id,
        "--predictions",
        "--split",
        "test",
        "--results",
        "results",
    ])
    .code(0)
    .stdout_has(&format!("test predictions at step {test_step}"));
    let first_val = evals[0].0;
    test.run_in(&[
        "show",
        id,
        "--predictions",
        "--step",
        &first_val.to_string(),
        "--format",
        "jsonl",
        "--results",
        "results",
    ])
    .code(0)
    .stderr_has(&format!("val predictions at step {first_val},"));
    test.run_in(&[
        "show",
        id,
        "--predictions",
        "--step",
        "999",
        "--results",
        "results",
    ])
    .code(2)
    .stderr_has("has no val predictions at step 999")
    .stderr_has(&format!("val at step {first_val}"));

    // The trial without generation: no file, and show says why.
    test.run_in(&["show", plain, "--predictions", "--results", "results"])
        .code(2)
        .stderr_has("has no stored predictions")
        .stderr_has("eval.generate = false");
    // --format belongs to --predictions.
    test.run_in(&["show", id, "--format", "jsonl", "--results", "results"])
        .code(2);
}

#[test]
fn a_synthetic_trial_has_no_predictions_and_show_says_why() {
    let test = Test::new().spec(
        "[experiment]\nname = \"s\"\n[data]\npath = \"generated:json\"\n\
         [model]\ncheckpoint = \"tiny\"\n\
         [train]\nmethod = \"synthetic\"\nbatch_size = 2\ngrad_accum = 1\n\
         [synthetic]\nsteps = 4\nstep_ms = 1\n",
    );
    run_spec(&test, "fake-cuda:1x80GiB").code(0);
    let id = std::fs::read_dir(test.path().join("results/s/trials"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .file_name()
        .to_string_lossy()
        .into_owned();
    test.run_in(&["show", &id, "--predictions", "--results", "results"])
        .code(2)
        .stderr_has(&format!("trial {id} has no stored predictions"))
        .stderr_has("synthetic trial");
}

#[test]
fn eval_writes_the_detection_answers_of_a_checkpoint_with_their_box_f1() {
    let test = Test::new();
    test.run_in(&[
        "init-data",
        "--task",
        "detect",
        "--out",
        "data",
        "--train",
        "2",
        "--valid",
        "5",
        "--test",
        "1",
    ])
    .code(0);
    let out = test.run_in(&[
        "eval",
        "--checkpoint",
        "tiny",
        "--device",
        "cpu",
        "--data",
        "data",
        "--generate",
        "--max-new-tokens",
        "6",
        "--predictions",
        "answers.jsonl.gz",
        "--json",
    ]);
    let report = out.code(0).json();
    assert_eq!(report["task"], "detect");
    let lines: Vec<Value> = file_lines(&test.path().join("answers.jsonl.gz"))
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let references: Vec<Value> =
        std::fs::read_to_string(test.path().join("data/valid/annotations.jsonl"))
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
    assert_eq!(lines.len(), 5);
    assert_eq!(report["examples"], 5);
    for (i, (line, annotation)) in lines.iter().zip(&references).enumerate() {
        assert_eq!(line["index"], i);
        assert_eq!(line["metric"], "box_f1");
        assert_eq!(line["reference"], annotation["suffix"]);
        assert_eq!(line["prefix"], annotation["prefix"]);
        let image = line["image"].as_str().unwrap();
        assert!(
            image.ends_with(annotation["image"].as_str().unwrap()),
            "{image} is not {}",
            annotation["image"]
        );
        let score = line["score"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&score), "{line}");
    }
    // Without --generate there are no answers to write.
    test.run_in(&[
        "eval",
        "--checkpoint",
        "tiny",
        "--data",
        "data",
        "--predictions",
        "x.jsonl.gz",
    ])
    .code(2)
    .stderr_has("--generate");
}

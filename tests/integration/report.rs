//! `palisweep report` through the real binary, on a synthetic sweep: the
//! best trial per checkpoint in the report is the one the raw metrics say.

use std::collections::BTreeMap;

use crate::browser::{Browser, PAGE_WIDTH, ink};
use crate::util::{Test, metric_rows, repo_root};

#[test]
fn the_report_names_the_best_trial_per_checkpoint_and_embeds_its_plots() {
    let test = Test::new().spec(
        "[experiment]\nname = \"r\"\n[data]\npath = \"generated:json\"\n\
         [model]\ncheckpoint = \"tiny\"\n\
         [train]\nmethod = \"synthetic\"\nbatch_size = 2\ngrad_accum = 1\n\
         [synthetic]\nsteps = 10\nstep_ms = 1\n\
         [sweep.axes]\n\"model.size\" = [\"3b\", \"10b\"]\n\"model.resolution\" = [224, 448]\n\
         \"train.lr\" = [1e-6, 1e-4, 1e-3]\n\
         [resources]\nmax_trials_per_device = 4\n",
    );
    test.run_in(&[
        "run",
        "spec.toml",
        "--devices",
        "fake-cuda:2x80GiB",
        "--results",
        "results",
        "--quiet",
    ])
    .code(0);
    // Independently: the lowest val/loss per trial, from the raw metrics.
    let csv = test
        .run_in(&["export-metrics", "r", "--results", "results"])
        .code(0)
        .stdout
        .clone();
    let mut best: BTreeMap<String, f64> = BTreeMap::new();
    for line in csv.lines().skip(1) {
        let cols: Vec<&str> = line.split(',').collect();
        if cols[5] == "val/loss" {
            let value: f64 = cols[6].parse().unwrap();
            let entry = best.entry(cols[1].to_owned()).or_insert(f64::INFINITY);
            *entry = entry.min(value);
        }
    }
    assert_eq!(best.len(), 12);
    // Each trial's checkpoint from its resolved config.
    let mut per_checkpoint: BTreeMap<String, (f64, String)> = BTreeMap::new();
    for (id, value) in &best {
        let config = std::fs::read_to_string(
            test.path()
                .join("results/r/trials")
                .join(id)
                .join("trial.toml"),
        )
        .unwrap();
        let config: toml::Table = toml::from_str(&config).unwrap();
        let model = config["model"].as_table().unwrap();
        let label = format!(
            "{}-{}",
            model["size"].as_str().unwrap(),
            model["resolution"].as_integer().unwrap()
        );
        let entry = per_checkpoint
            .entry(label)
            .or_insert((f64::INFINITY, String::new()));
        if *value < entry.0 {
            *entry = (*value, id.clone());
        }
    }
    assert_eq!(per_checkpoint.len(), 4);

    test.run_in(&["report", "r", "--results", "results"])
        .code(0)
        .stdout_has("report.md")
        .stdout_has("report.html");
    let md = std::fs::read_to_string(test.path().join("results/r/report/report.md")).unwrap();
    let section = md
        .split("## Best per checkpoint")
        .nth(1)
        .unwrap()
        .split("\n## ")
        .next()
        .unwrap();
    for (label, (_, id)) in &per_checkpoint {
        let row = section
            .lines()
            .find(|l| l.contains(&format!(" {label} ")))
            .unwrap_or_else(|| panic!("no row for {label} in:\n{section}"));
        assert!(row.contains(id.as_str()), "{label}: expected {id} in {row}");
    }
    let html = std::fs::read_to_string(test.path().join("results/r/report/report.html")).unwrap();
    assert!(html.trim_start().starts_with("<!DOCTYPE html>") || html.contains("<html"));
    assert!(html.trim_end().ends_with("</html>"));
    let svgs = html.matches("<svg").count();
    assert!(svgs >= 2, "{svgs} plots");
    assert_eq!(svgs, html.matches("</svg>").count());
    assert!(!html.contains("<script"), "self-contained, no scripts");

    check_decision(&test, &md);
    check_page(&test.path().join("results/r/report/report.html"));
}

/// The page in a real browser: it fits 900 px without a horizontal scroll
/// bar, and its screenshot is not blank.
pub fn check_page(page: &std::path::Path) -> Option<std::path::PathBuf> {
    let browser = Browser::find()?;
    let layout = browser.layout(page, PAGE_WIDTH);
    assert!(
        layout.overflow_px <= 0,
        "{}: {} px of horizontal overflow at {PAGE_WIDTH} px (widest: {})",
        page.display(),
        layout.overflow_px,
        layout.widest
    );
    assert!(layout.height_px > 1000, "{layout:?}");
    let png = page.with_extension("png");
    browser.screenshot(page, PAGE_WIDTH, layout.height_px, &png);
    let (ink, colours) = ink(&png);
    assert!(
        ink > 0.02 && colours > 50,
        "{}: a blank page? {:.3} of pixels inked, {colours} colours",
        png.display(),
        ink
    );
    Some(png)
}

/// One trial's score as the raw metrics give it: the best `val/loss` of
/// its curve (`in_curve` rows) and the first step that reached it.
#[derive(Debug)]
struct Score {
    value: f64,
    step: u64,
}

/// The decision section against an independent computation from
/// `export-metrics --format jsonl`, and its export command run for real.
#[allow(clippy::float_cmp)] // the store's own values, compared exactly
fn check_decision(test: &Test, md: &str) {
    let mut scores: BTreeMap<String, Score> = BTreeMap::new();
    for row in metric_rows(test, "r") {
        if row["name"] != "val/loss" || row["in_curve"] != true {
            continue;
        }
        let (Some(value), Some(step)) = (row["value"].as_f64(), row["step"].as_u64()) else {
            continue;
        };
        let id = row["trial_id"].as_str().unwrap().to_owned();
        let score = scores.entry(id).or_insert(Score { value, step });
        if value < score.value || (value == score.value && step < score.step) {
            *score = Score { value, step };
        }
    }
    assert_eq!(scores.len(), 12);
    let mut ranked: Vec<(&String, &Score)> = scores.iter().collect();
    ranked.sort_by(|a, b| a.1.value.total_cmp(&b.1.value));

    let section = md
        .split("## Decision")
        .nth(1)
        .unwrap_or_else(|| panic!("no decision section in\n{md}"))
        .split("\n## ")
        .next()
        .unwrap();
    assert!(
        md.find("## Decision") < md.find("## Overview"),
        "the decision comes first"
    );
    let row = |role: &str| -> Vec<String> {
        section
            .lines()
            .find(|l| l.starts_with(&format!("| {role} ")))
            .unwrap_or_else(|| panic!("no {role} row in\n{section}"))
            .split('|')
            .map(|c| c.trim().to_owned())
            .collect()
    };
    let (pick, runner_up) = (row("pick"), row("runner-up"));
    // The pick has the lowest val/loss of all (ties: any of the tied), at
    // the step that first reached it; the runner-up, the next lowest.
    let score = &scores[&pick[2]];
    assert_eq!(
        score.value, ranked[0].1.value,
        "pick {pick:?}, ranked {ranked:?}"
    );
    assert!((pick[4].parse::<f64>().unwrap() - score.value).abs() <= 1e-3 * score.value.abs());
    assert_eq!(pick[5], score.step.to_string(), "{pick:?}");
    let second = &scores[&runner_up[2]];
    assert_ne!(runner_up[2], pick[2]);
    assert_eq!(
        second.value, ranked[1].1.value,
        "runner-up {runner_up:?}, ranked {ranked:?}"
    );
    assert_eq!(runner_up[5], second.step.to_string());
    let best_dir = format!("results/r/trials/{}/best", pick[2]);
    assert!(section.contains(&best_dir), "{section}");
    assert!(
        section.contains("seed-to-seed spread is unknown"),
        "{section}"
    );
    // No seed axis, so the bootstrap would be the noise: but a loss has
    // no per-example value, and the report says so instead of inventing one.
    assert!(
        section.contains(
            "no bootstrap interval of the margin either: val/loss has no per-example value"
        ),
        "{section}"
    );

    let commands: Vec<&str> = section
        .split("```sh\n")
        .nth(1)
        .unwrap()
        .split("```")
        .next()
        .unwrap()
        .lines()
        .collect();
    let export = format!(
        "palisweep export r/{0} --out r-{1}",
        pick[2],
        &pick[2][..12]
    );
    assert_eq!(
        commands,
        [export.as_str(), &format!("palisweep rerun r/{}", pick[2])]
    );
    export_for_real(test, commands[0], &best_dir, &pick[2]);
}

/// Runs the quoted export command in the test folder.
fn export_for_real(test: &Test, command: &str, best_dir: &str, pick: &str) {
    // The synthetic worker leaves a stand-in in `best/`: put a real PEFT
    // adapter there, so that the quoted command exports what the report
    // points at.
    let best = test.path().join(best_dir);
    let fixture = repo_root().join("tests/golden/adapters/peft-default");
    for file in ["adapter_config.json", "adapter_model.safetensors"] {
        std::fs::copy(fixture.join(file), best.join(file)).unwrap();
    }
    let args: Vec<&str> = command.split_whitespace().skip(1).collect();
    test.run_in(&args).code(0).stdout_has("best");
    let out = test.path().join(format!("r-{}", &pick[..12]));
    assert_eq!(
        std::fs::read(out.join("adapter_model.safetensors")).unwrap(),
        std::fs::read(best.join("adapter_model.safetensors")).unwrap()
    );
}

/// The decision's `(trial id, step)` of `role` (`pick`, `runner-up`).
fn decision_row(md: &str, role: &str) -> (String, u64) {
    let row: Vec<&str> = md
        .split("## Decision")
        .nth(1)
        .unwrap()
        .lines()
        .find(|l| l.starts_with(&format!("| {role} ")))
        .unwrap_or_else(|| panic!("no {role} row in\n{md}"))
        .split('|')
        .map(str::trim)
        .collect();
    (row[2].to_owned(), row[5].parse().unwrap())
}

#[test]
fn report_gallery_shows_the_pick_and_runner_up_on_their_predictions() {
    use palisweep::layout::TrialDir;
    use palisweep::track::predictions::{ExamplePrediction, write};

    let test = Test::new().spec(&crate::util::synthetic_spec(
        "g",
        "[synthetic]\nsteps = 6\nstep_ms = 1\n[sweep.axes]\n\"train.lr\" = [1e-6, 1e-4, 1e-3]\n",
    ));
    crate::util::run_spec(&test, "fake-cuda:1x80GiB").code(0);
    let report = |extra: &[&str]| {
        let mut args = vec!["report", "g", "--results", "results"];
        args.extend(extra);
        test.run_in(&args).code(0);
        let md = std::fs::read_to_string(test.path().join("results/g/report/report.md")).unwrap();
        let html =
            std::fs::read_to_string(test.path().join("results/g/report/report.html")).unwrap();
        (md, html)
    };
    let (md, _) = report(&[]);
    // Synthetic trials store no predictions: the report says so.
    assert!(
        md.contains("No gallery: for the pick, no per-example predictions at"),
        "{md}"
    );
    // Hand-written answers at each trial's selected step: the pick wrong
    // on the first 5 of 30 examples, the runner-up on the first 10.
    for (role, wrong) in [("pick", 5), ("runner-up", 10)] {
        let (id, step) = decision_row(&md, role);
        let examples: Vec<ExamplePrediction> = (0..30)
            .map(|i| {
                let reference = format!(r#"{{"id": {i}, "kind": "pallet"}}"#);
                let (prediction, score) = if i < wrong {
                    (reference.replace("pallet", "crate"), 0.5)
                } else {
                    (reference.clone(), 1.0)
                };
                ExamplePrediction {
                    index: i,
                    image: format!("valid/{i}.jpg").into(),
                    prefix: "extract".into(),
                    reference,
                    prediction,
                    score: Some(score),
                    metric: "field_f1".into(),
                }
            })
            .collect();
        let dir = TrialDir::from_path(&test.path().join("results/g/trials").join(&id));
        write(&dir.predictions("val", step), &examples).unwrap();
    }

    let (md, html) = report(&["--gallery", "3"]);
    let gallery = md
        .split("## Prediction gallery")
        .nth(1)
        .unwrap()
        .split("\n## ")
        .next()
        .unwrap();
    let rows: Vec<Vec<&str>> = gallery
        .lines()
        .filter(|l| l.starts_with("| ") && !l.starts_with("| example") && !l.starts_with("| ---"))
        .map(|l| l.split('|').map(str::trim).collect())
        .collect();
    // One worst (the first wrong one), one best (the first right one), one
    // at random; each with both trials' scores.
    assert_eq!(rows.len(), 3, "{gallery}");
    assert_eq!(&rows[0][1..5], ["0", "worst", "0.5", "0.5"], "{gallery}");
    assert_eq!(&rows[1][1..5], ["5", "best", "1", "0.5"], "{gallery}");
    assert_eq!(rows[2][2], "random", "{gallery}");
    assert_eq!(html.matches("<div class=\"card\">").count(), 3);
    assert!(
        html.contains("<td class=\"wrong\""),
        "the wrong field is marked"
    );
    assert!(html.contains(&format!("This file: {} bytes", html.len())));
    // The selection metric is a loss: no interval, and the reason.
    assert!(md.contains("No bootstrap interval for the pick: val/loss has no per-example value"));

    let (md, _) = report(&["--gallery", "0"]);
    assert!(md.contains("Turned off (--gallery 0)."), "{md}");
}

/// The best `val/loss` of each trial's curve, from `export-metrics`.
fn best_losses(test: &Test, sweep: &str) -> BTreeMap<String, f64> {
    let mut best: BTreeMap<String, f64> = BTreeMap::new();
    for row in metric_rows(test, sweep) {
        if row["name"] != "val/loss" || row["in_curve"] != true {
            continue;
        }
        if let Some(v) = row["value"].as_f64() {
            let id = row["trial_id"].as_str().unwrap().to_owned();
            let e = best.entry(id).or_insert(f64::INFINITY);
            *e = e.min(v);
        }
    }
    best
}

/// The variance of the means of `values` grouped by `key` over the total
/// variance: a main effect's share on a complete, balanced grid.
fn main_share(values: &[(BTreeMap<&str, String>, f64)], key: &str) -> f64 {
    let n = values.len() as f64;
    let mean = values.iter().map(|v| v.1).sum::<f64>() / n;
    let total = values.iter().map(|v| (v.1 - mean).powi(2)).sum::<f64>() / n;
    let mut groups: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    for (params, v) in values {
        groups.entry(params[key].as_str()).or_default().push(*v);
    }
    let between = groups
        .values()
        .map(|g| (g.iter().sum::<f64>() / g.len() as f64 - mean).powi(2))
        .sum::<f64>()
        / groups.len() as f64;
    between / total
}

/// The percentage in the importance table's row for `factor`.
fn table_share(section: &str, factor: &str) -> f64 {
    let row = section
        .lines()
        .find(|l| l.starts_with(&format!("| {factor} ")))
        .unwrap_or_else(|| panic!("no row for {factor} in:\n{section}"));
    let cell = row.split('|').nth(3).unwrap().trim();
    cell.trim_end_matches('%').trim().parse::<f64>().unwrap() / 100.0
}

/// Issue #20: the importance table's shares are the exact decomposition of
/// the raw metrics on a complete grid, and the parallel-coordinates plot
/// has one line per trial.
#[test]
fn the_importance_table_decomposes_the_raw_metrics() {
    let test = Test::new().spec(&crate::util::synthetic_spec(
        "imp",
        "[synthetic]\nsteps = 10\nstep_ms = 1\n\
         [sweep.axes]\n\"model.size\" = [\"3b\", \"10b\"]\n\"train.lr\" = [1e-5, 1e-4, 1e-3]\n\
         \"experiment.seed\" = [0, 1]\n\
         [resources]\nmax_trials_per_device = 4\n",
    ));
    crate::util::run_spec(&test, "fake-cuda:2x80GiB").code(0);
    let best = best_losses(&test, "imp");
    assert_eq!(best.len(), 12);
    let values: Vec<(BTreeMap<&str, String>, f64)> = best
        .iter()
        .map(|(id, v)| {
            let config = std::fs::read_to_string(
                test.path()
                    .join("results/imp/trials")
                    .join(id)
                    .join("trial.toml"),
            )
            .unwrap();
            let config: toml::Table = toml::from_str(&config).unwrap();
            let params = BTreeMap::from([
                ("model.size", config["model"]["size"].to_string()),
                ("train.lr", config["train"]["lr"].to_string()),
                ("experiment.seed", config["experiment"]["seed"].to_string()),
            ]);
            (params, *v)
        })
        .collect();

    test.run_in(&["report", "imp", "--results", "results"])
        .code(0);
    let md = std::fs::read_to_string(test.path().join("results/imp/report/report.md")).unwrap();
    let section = md
        .split("## Which hyperparameters mattered")
        .nth(1)
        .unwrap_or_else(|| panic!("no importance section in:\n{md}"))
        .split("\n## ")
        .next()
        .unwrap();
    assert!(section.contains("exact functional ANOVA"), "{section}");
    assert!(
        section.contains("Indicative only: 12 ranked trials"),
        "{section}"
    );
    for (key, factor) in [
        ("train.lr", "train.lr"),
        ("model.size", "model.size"),
        ("experiment.seed", "experiment.seed (run-to-run noise)"),
    ] {
        let expected = main_share(&values, key);
        let shown = table_share(section, factor);
        // The table rounds to 0.1 %.
        assert!(
            (shown - expected).abs() <= 0.0005 + 1e-9,
            "{key}: {shown} vs {expected}"
        );
    }

    let html = std::fs::read_to_string(test.path().join("results/imp/report/report.html")).unwrap();
    let plot = html
        .split("<svg")
        .find(|s| s.contains("over the varying keys"))
        .expect("a parallel-coordinates plot");
    let plot = &plot[..plot.find("</svg>").unwrap()];
    assert_eq!(plot.matches("<polyline").count(), 12, "one line per trial");
    for axis in [
        "model.size",
        "train.lr (log)",
        "experiment.seed",
        "val/loss",
    ] {
        assert!(plot.contains(axis), "no axis {axis}");
    }
}

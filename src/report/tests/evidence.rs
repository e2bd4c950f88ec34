//! The report's evidence from per-example predictions, end to end: the
//! bootstrap intervals in the decision and the leaderboard.

use std::path::PathBuf;

use super::*;
use crate::layout::TrialDir;
use crate::track::predictions::{self, ExamplePrediction};

/// The hand-made grid with one seed (so the bootstrap is the noise), its
/// trial folders moved under `dir`; the trials by id.
fn store_one_seed(dir: &Path, points: &[Point]) -> (Store, BTreeMap<String, PathBuf>) {
    let failed = Point {
        id: "zz_failed".into(),
        size: "10b",
        resolution: 448,
        lr: 1e-3,
        wd: 0.0,
        seed: 0,
    };
    let mut events = stream(points, &failed);
    let mut dirs = BTreeMap::new();
    for event in &mut events {
        if let SweepEvent::TrialRecorded { trial, .. } = event {
            let folder = dir.join("trials").join(&trial.id);
            trial.dir = folder.display().to_string();
            dirs.insert(trial.id.clone(), folder);
        }
    }
    let path = dir.join("palisweep.sqlite");
    let mut sink = StoreSink::new(Store::open(&path).unwrap());
    sink.write(&events).unwrap();
    drop(sink);
    (Store::open_read_only(&path).unwrap(), dirs)
}

const EXAMPLES: usize = 200;

/// JSON answers wrong (`kind`) on the first `wrong` examples.
fn json_examples(wrong: usize) -> Vec<ExamplePrediction> {
    (0..EXAMPLES)
        .map(|i| {
            let reference = format!(r#"{{"id": {i}, "kind": "pallet", "count": {}}}"#, i % 5);
            let (prediction, score) = if i < wrong {
                (reference.replace("pallet", "crate"), 2.0 / 3.0)
            } else {
                (reference.clone(), 1.0)
            };
            ExamplePrediction {
                index: i,
                image: PathBuf::from(format!("/data/valid/{i}.jpg")),
                prefix: "extract".into(),
                reference,
                prediction,
                score: Some(score),
                metric: "field_f1".into(),
            }
        })
        .collect()
}

fn one_seed() -> Vec<Point> {
    points().into_iter().filter(|p| p.seed == 0).collect()
}

/// Each trial's predictions at its best step (4), wrong on a share of the
/// examples that falls with its F1, so that the better trial's mistakes
/// are a subset of the worse one's.
fn write_predictions(points: &[Point], dirs: &BTreeMap<String, PathBuf>) {
    for p in points {
        let wrong = ((1.0 - final_f1(p)) * EXAMPLES as f64).round() as usize;
        predictions::write(
            &TrialDir::from_path(&dirs[&p.id]).predictions("val", 4),
            &json_examples(wrong),
        )
        .unwrap();
    }
}

fn section<'a>(md: &'a str, title: &str) -> &'a str {
    md.split(&format!("## {title}\n"))
        .nth(1)
        .unwrap_or_else(|| panic!("no {title} in\n{md}"))
        .split("\n## ")
        .next()
        .unwrap()
}

#[test]
fn without_seeds_the_decision_bootstraps_the_margin_over_examples() {
    let dir = tempfile::tempdir().unwrap();
    let points = one_seed();
    let (store, dirs) = store_one_seed(dir.path(), &points);
    write_predictions(&points, &dirs);
    let report = build(&store, "grid", &ReportOptions::default()).unwrap();
    assert!(!report.seeds_vary);
    let decision::Decision::Pick {
        pick, runner_up, ..
    } = &report.decision
    else {
        panic!("{:?}", report.decision)
    };
    let (pick, runner_up) = (pick.trial, runner_up.as_ref().unwrap().trial);
    let b = report.bootstrap.as_ref().unwrap();
    // Every ranked trial has predictions, so every one of the top gets an
    // interval around its recomputed value.
    assert_eq!(b.trials.len(), 8);
    for (t, interval) in &b.trials {
        let i = interval.as_ref().unwrap();
        assert!(i.contains(i.estimate) && i.low < i.high, "{t}: {i:?}");
    }
    // The pick is wrong on 30 examples, the runner-up on 40 (a superset):
    // the paired interval of the difference lies above 0.
    let d = b.difference.as_ref().unwrap().as_ref().unwrap();
    assert_eq!(d.examples, EXAMPLES);
    assert!(d.interval.low > 0.0, "{d:?}");
    let f1 = |wrong: f64| {
        // Each wrong example: 2 of 3 fields right, one wrong.
        let (tp, fp) = (3.0 * EXAMPLES as f64 - wrong, wrong);
        2.0 * tp / (2.0 * tp + 2.0 * fp)
    };
    let expected = f1(30.0) - f1(40.0);
    assert!((d.interval.estimate - expected).abs() < 1e-12, "{d:?}");

    let md = render_markdown(&report);
    let decision = section(&md, "Decision");
    assert!(
        decision.contains("it excludes 0, so the pick is better beyond the noise"),
        "{decision}"
    );
    assert!(
        decision.contains("95% percentile bootstrap") && decision.contains("1000 resamples"),
        "{decision}"
    );
    // The hand-made F1 is not what the hand-made answers score: said.
    assert!(
        decision.contains("> **Warning:** Recomputed from the pick's predictions, val/field_f1 is 0.95, not the 0.85 the store holds"),
        "{decision}"
    );
    let pick_interval = b.trials[&pick].as_ref().unwrap().text();
    let row = decision.lines().find(|l| l.starts_with("| pick ")).unwrap();
    assert!(row.contains(&pick_interval), "{row}");
    let board = section(&md, "Leaderboard");
    assert!(
        board.contains("95% interval") && board.contains(&pick_interval),
        "{board}"
    );

    // Identical predictions for the runner-up: no difference at all.
    let wrong = ((1.0 - report.trials[pick].quality.unwrap()) * EXAMPLES as f64).round() as usize;
    predictions::write(
        &TrialDir::from_path(&dirs[&report.trials[runner_up].id]).predictions("val", 4),
        &json_examples(wrong),
    )
    .unwrap();
    let report = build(&store, "grid", &ReportOptions::default()).unwrap();
    let md = render_markdown(&report);
    assert!(
        section(&md, "Decision").contains("it includes 0, so the margin is within the noise"),
        "{md}"
    );
}

#[test]
fn without_predictions_the_report_says_why_there_is_no_interval() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = store_one_seed(dir.path(), &one_seed());
    let report = build(&store, "grid", &ReportOptions::default()).unwrap();
    let b = report.bootstrap.as_ref().unwrap();
    assert!(b.trials.values().all(Result::is_err));
    let md = render_markdown(&report);
    let decision = section(&md, "Decision");
    assert!(
        decision.contains("there is no bootstrap interval of the margin either")
            && decision.contains("no per-example predictions at")
            && decision.contains("val-step00000004.jsonl.gz"),
        "{decision}"
    );
    assert!(!decision.contains("95% interval"), "no column: {decision}");
    // A loss has no per-example value, whatever the files.
    let options = ReportOptions {
        metric: Some("val/loss".into()),
        ..ReportOptions::default()
    };
    let md = render_markdown(&build(&store, "grid", &options).unwrap());
    assert!(
        section(&md, "Decision").contains("val/loss has no per-example value"),
        "{md}"
    );
}

//! The report's evidence from per-example predictions, end to end: the
//! bootstrap intervals in the decision and the leaderboard, the gallery's
//! cards, and the size of a large report's page.

use std::path::PathBuf;

use super::*;
use crate::layout::TrialDir;
use crate::track::predictions::{self, ExamplePrediction};

/// The hand-made grid with one seed (so the bootstrap is the noise), its
/// trial folders moved under `dir`; the trials by id.
fn store_one_seed(dir: &Path, points: &[Point]) -> (Store, BTreeMap<String, PathBuf>) {
    store_selecting(dir, points, "field_f1")
}

/// As [`store_one_seed`], the hand-made F1 reported (and selected by) as
/// `metric` instead.
fn store_selecting(
    dir: &Path,
    points: &[Point],
    metric: &str,
) -> (Store, BTreeMap<String, PathBuf>) {
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
    let rename = |name: String| name.replace("field_f1", metric);
    for event in &mut events {
        match event {
            SweepEvent::TrialRecorded { trial, .. } => {
                let folder = dir.join("trials").join(&trial.id);
                trial.dir = folder.display().to_string();
                dirs.insert(trial.id.clone(), folder);
            }
            SweepEvent::SweepStarted { sweep, .. } => {
                sweep.select_metric = rename(std::mem::take(&mut sweep.select_metric));
            }
            SweepEvent::Worker { line, .. } => {
                if let crate::worker::protocol::WorkerEvent::Eval { metrics, .. } = &mut line.event
                {
                    *metrics = std::mem::take(metrics)
                        .into_iter()
                        .map(|(k, v)| (rename(k), v))
                        .collect();
                }
            }
            _ => {}
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
    assert!(
        section(&md, "Prediction gallery")
            .contains("No gallery: for the pick, no per-example predictions"),
        "{md}"
    );
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

#[test]
fn the_gallery_shows_the_worst_and_best_of_the_pick_next_to_the_runner_up() {
    let dir = tempfile::tempdir().unwrap();
    let points = one_seed();
    let (store, dirs) = store_one_seed(dir.path(), &points);
    write_predictions(&points, &dirs);
    let report = build(&store, "grid", &ReportOptions::default()).unwrap();
    let gallery::Gallery::Shown { cards, notes } = &report.gallery else {
        panic!("{:?}", report.gallery)
    };
    assert!(notes.is_empty());
    assert_eq!(cards.cards.len(), gallery::DEFAULT_SIZE);
    assert_eq!(cards.trials.len(), 2);
    let of = |c: gallery::Chosen| -> Vec<usize> {
        cards
            .cards
            .iter()
            .filter(|k| k.chosen == c)
            .map(|k| k.index)
            .collect()
    };
    // The pick is wrong on the first 30: the worst are the first four,
    // the best (ties at 1) the first four right ones.
    assert_eq!(of(gallery::Chosen::Worst), [0, 1, 2, 3]);
    assert_eq!(of(gallery::Chosen::Best), [30, 31, 32, 33]);
    assert_eq!(of(gallery::Chosen::Random).len(), 4);

    let md = render_markdown(&report);
    let sec = section(&md, "Prediction gallery");
    let row: Vec<&str> = sec
        .lines()
        .find(|l| l.starts_with("| 0 "))
        .unwrap()
        .split('|')
        .map(str::trim)
        .collect();
    // Example, chosen, the two scores, the reference, the two answers.
    assert_eq!(row[2], "worst", "{row:?}");
    assert_eq!(row[3], "0.6667", "{row:?}");
    assert!(
        row[5].contains("pallet") && row[6].contains("crate"),
        "{row:?}"
    );
    assert!(sec.contains("see report.html"), "{sec}");

    let html = render_html(&report).unwrap();
    assert_well_formed(&html);
    assert_eq!(html.matches("<div class=\"card\">").count(), 12);
    // Example 0: `kind` is wrong under both trials.
    let card = html.split("<h3>Example 0 · worst</h3>").nth(1).unwrap();
    let card = card.split("<div class=\"card\">").next().unwrap();
    assert!(
        card.contains("<td>kind</td><td>&quot;pallet&quot;</td><td class=\"wrong\" title=\"wrong\">✗ &quot;crate&quot;</td>"),
        "{card}"
    );
    assert!(
        card.contains("<td class=\"right\" title=\"right\">✓ 0</td>"),
        "{card}"
    );
    // --gallery 0 turns it off.
    let options = ReportOptions {
        gallery: Some(0),
        ..ReportOptions::default()
    };
    let md = render_markdown(&build(&store, "grid", &options).unwrap());
    assert!(section(&md, "Prediction gallery").contains("Turned off (--gallery 0)."));
}

/// A noisy picture: as large as a JPEG of its size gets.
fn noise_image(path: &Path, width: u32, height: u32) {
    let mut rng = crate::rng::SplitMix64::new(1);
    image::RgbImage::from_fn(width, height, |_, _| {
        let v = rng.next_u64().to_le_bytes();
        image::Rgb([v[0], v[1], v[2]])
    })
    .save(path)
    .unwrap();
}

#[test]
fn a_thousand_trials_and_a_full_gallery_stay_under_ten_megabytes() {
    let dir = tempfile::tempdir().unwrap();
    let points: Vec<Point> = (0..1000)
        .map(|i| {
            let (size, resolution) = SIZES[i % 2];
            Point {
                id: format!("t{i:04}"),
                size,
                resolution,
                lr: 1e-5 * (1.0 + i as f64),
                wd: DECAYS[i % 2],
                seed: 0,
            }
        })
        .collect();
    let (store, dirs) = store_selecting(dir.path(), &points, "map50");
    let image = dir.path().join("pallets.png");
    noise_image(&image, 1024, 768);
    let report = build(&store, "grid", &ReportOptions::default()).unwrap();
    let decision::Decision::Pick {
        pick, runner_up, ..
    } = &report.decision
    else {
        panic!()
    };
    for (k, trial) in [pick.trial, runner_up.as_ref().unwrap().trial]
        .into_iter()
        .enumerate()
    {
        let examples: Vec<ExamplePrediction> = (0..50)
            .map(|i| ExamplePrediction {
                index: i,
                // One image is gone: its card says so.
                image: if i == 0 {
                    dir.path().join("gone.jpg")
                } else {
                    image.clone()
                },
                prefix: "detect pallet".into(),
                reference: "<loc0100><loc0100><loc0500><loc0600> pallet ; <loc0600><loc0200><loc0900><loc0700> pallet".into(),
                prediction: format!("<loc0{}><loc0100><loc0500><loc0600> pallet", 100 + i * 3 + k),
                score: Some(i as f64 / 50.0),
                metric: "box_f1".into(),
            })
            .collect();
        predictions::write(
            &TrialDir::from_path(&dirs[&report.trials[trial].id]).predictions("val", 4),
            &examples,
        )
        .unwrap();
    }
    let report = build(&store, "grid", &ReportOptions::default()).unwrap();
    assert_eq!(report.metric, "val/map50");
    // mAP has no per-example sums: intervals for the decision's two only,
    // the other top rows having no predictions.
    let b = report.bootstrap.as_ref().unwrap();
    assert_eq!(b.trials.values().filter(|r| r.is_ok()).count(), 2);
    assert!(b.difference.as_ref().unwrap().is_ok());
    let html = render_html(&report).unwrap();
    assert!(html.len() < 10 << 20, "{} bytes", html.len());
    assert_well_formed(&html);
    assert_eq!(html.matches("<div class=\"card\">").count(), 12);
    // Eleven cards embed their picture once and reuse it for the runner-up.
    assert_eq!(html.matches("data:image/jpeg;base64,").count(), 11);
    assert_eq!(html.matches("<use href=\"#gallery-").count(), 11);
    assert!(html.contains("image not shown: cannot read image file"));
    assert!(html.contains("gone.jpg"));
    // No script, and the page states its own size.
    assert!(!html.contains("<script"));
    assert!(
        html.contains(&format!("This file: {} bytes", html.len())),
        "{}",
        &html[html.len() - 300..]
    );
}

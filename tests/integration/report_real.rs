//! The report of real tiny sweeps (the tiny twin of PaliGemma 2 trained on
//! generated data, with generation at every evaluation), for a detection
//! and a JSON task: the decision's numbers against an independent
//! computation from `export-metrics`, the gallery's boxes against the
//! stored predictions, and the page in a real browser.

use std::collections::BTreeMap;

use palisweep::metrics::detection::{loc_to_pixels, parse_detections};
use palisweep::track::predictions::{ExamplePrediction, read};

use crate::report::check_page;
use crate::util::{Test, metric_rows};

/// Two learning rates of one tiny checkpoint on generated data.
fn spec(name: &str, task: &str, epochs: u32, select: &str, lrs: &str) -> String {
    format!(
        "[experiment]\nname = \"{name}\"\nseed = 0\n\
         [data]\npath = \"generated:{task}\"\ntask = \"{task}\"\n\
         max_prefix_tokens = 16\nmax_suffix_tokens = 48\n\
         [model]\ncheckpoint = \"tiny\"\nsize = \"3b\"\nresolution = 224\n\
         [train]\nepochs = {epochs}\nbatch_size = 8\ngrad_accum = 1\nwarmup = 2\n\
         [lora]\ndropout = 0.0\n\
         [eval]\nmax_new_tokens = 40\nselect = {{ metric = \"{select}\", mode = \"max\" }}\n\
         [sweep.axes]\n\"train.lr\" = {lrs}\n\
         [resources]\ndevices = \"cpu:2\"\n"
    )
}

/// A trial's score from the raw metrics: the best value of its curve
/// (`in_curve` rows) and the first step that reached it; and its
/// test-split metrics.
#[derive(Debug, Default)]
struct Raw {
    best: Option<(f64, u64)>,
    test: BTreeMap<String, f64>,
}

fn raw_scores(test: &Test, sweep: &str, metric: &str) -> BTreeMap<String, Raw> {
    let mut raw: BTreeMap<String, Raw> = BTreeMap::new();
    for row in metric_rows(test, sweep) {
        let id = row["trial_id"].as_str().unwrap().to_owned();
        let name = row["name"].as_str().unwrap();
        let (Some(value), Some(step)) = (row["value"].as_f64(), row["step"].as_u64()) else {
            continue;
        };
        let entry = raw.entry(id).or_default();
        if name == metric && row["in_curve"] == true {
            if entry.best.is_none_or(|(v, _)| value > v) {
                entry.best = Some((value, step));
            }
        } else if let Some(test_name) = name.strip_prefix("test/") {
            entry.test.insert(test_name.to_owned(), value);
        }
    }
    raw
}

/// The cells of the decision table's row for `role`.
fn decision_row(md: &str, role: &str) -> Vec<String> {
    decision(md)
        .lines()
        .find(|l| l.starts_with(&format!("| {role} ")))
        .unwrap_or_else(|| panic!("no {role} row in\n{md}"))
        .split('|')
        .map(|c| c.trim().to_owned())
        .collect()
}

fn decision(md: &str) -> &str {
    md.split("## Decision")
        .nth(1)
        .unwrap()
        .split("\n## ")
        .next()
        .unwrap()
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-3 * a.abs().max(b.abs()).max(1e-9) + 5e-5
}

/// Runs the sweep and its report; checks the decision's pick and
/// runner-up (id, value, step) and the pick's test metrics against the raw
/// metrics; returns the test, the Markdown and the HTML.
fn run_and_check_decision(name: &str, spec_text: &str, metric: &str) -> (Test, String, String) {
    let test = Test::new().spec(spec_text);
    test.run_in(&["run", "spec.toml", "--results", "results", "--quiet"])
        .code(0);
    test.run_in(&["report", name, "--results", "results"])
        .code(0);
    let md = std::fs::read_to_string(test.path().join(format!("results/{name}/report/report.md")))
        .unwrap();
    let html = std::fs::read_to_string(
        test.path()
            .join(format!("results/{name}/report/report.html")),
    )
    .unwrap();

    let raw = raw_scores(&test, name, metric);
    assert_eq!(raw.len(), 2, "{raw:?}");
    let mut ranked: Vec<(&String, (f64, u64))> = raw
        .iter()
        .map(|(id, r)| (id, r.best.expect("every trial evaluated")))
        .collect();
    ranked.sort_by(|a, b| b.1.0.total_cmp(&a.1.0));
    assert!(
        ranked[0].1.0 > 0.0,
        "the sweep must carry a signal for a pick: {ranked:?}"
    );
    let section = decision(&md);
    for (role, rank) in [("pick", 0), ("runner-up", 1)] {
        let row = decision_row(&md, role);
        let (id, (value, _)) = ranked[rank];
        if ranked[0].1.0 > ranked[1].1.0 {
            assert_eq!(&row[2], id, "{role}: {row:?} vs {ranked:?}");
        }
        let (value_here, step_here) = raw[&row[2]].best.unwrap();
        assert!(close(value_here, value), "{role} {row:?}");
        assert!(
            close(row[4].parse::<f64>().unwrap(), value),
            "{role}: {row:?} vs {value}"
        );
        assert_eq!(row[5], step_here.to_string(), "{role}: {row:?}");
    }
    // Every test metric of the pick, as the raw metrics give it.
    let pick = decision_row(&md, "pick");
    let tests = &raw[&pick[2]].test;
    assert!(!tests.is_empty(), "no test metrics recorded");
    let header: Vec<&str> = section
        .lines()
        .find(|l| l.starts_with('|') && l.contains("| trial "))
        .unwrap_or_else(|| panic!("no decision table in\n{section}"))
        .split('|')
        .map(str::trim)
        .collect();
    for (name, value) in tests {
        let column = header
            .iter()
            .position(|h| *h == format!("test/{name}"))
            .unwrap_or_else(|| panic!("no test/{name} column in {header:?}"));
        let shown: f64 = pick[column].parse().unwrap();
        assert!(
            close(shown, *value),
            "test/{name}: the decision shows {shown}, the raw metrics {value}"
        );
    }
    // The seed did not vary: the margin is judged by a bootstrap over the
    // validation examples, from the stored predictions.
    assert!(section.contains("bootstrap"), "{section}");
    assert!(section.contains("95%"), "{section}");
    (test, md, html)
}

/// The stored validation predictions of `trial` at `step`.
fn stored(test: &Test, sweep: &str, trial: &str, step: u64) -> Vec<ExamplePrediction> {
    read(
        &test
            .path()
            .join(format!("results/{sweep}/trials/{trial}/predictions"))
            .join(format!("val-step{step:08}.jsonl.gz")),
    )
    .unwrap()
}

/// The gallery's cards: each example's index and its markup (a card holds
/// no inner `div`).
fn gallery_cards(html: &str) -> Vec<(usize, &str)> {
    html.split("<div class=\"card\">")
        .skip(1)
        .map(|card| {
            let index = card
                .split("<h3>Example ")
                .nth(1)
                .and_then(|rest| rest.split(' ').next())
                .and_then(|n| n.parse().ok())
                .unwrap_or_else(|| panic!("a card without its example: {card}"));
            (index, card.split("</div>").next().unwrap())
        })
        .collect()
}

/// `(x, y, width, height)` of the `<rect>`s of the `<g class="{class}">`.
fn rects(svg: &str, class: &str) -> Vec<[f64; 4]> {
    let Some(group) = svg.split(&format!("<g class=\"{class}\">")).nth(1) else {
        return Vec::new();
    };
    let group = group.split("</g>").next().unwrap();
    group
        .split("<rect ")
        .skip(1)
        .map(|r| {
            let r = format!(" {r}");
            let attr = |name: &str| -> f64 {
                r.split(&format!("{name}=\""))
                    .nth(1)
                    .unwrap()
                    .split('"')
                    .next()
                    .unwrap()
                    .parse()
                    .unwrap()
            };
            [attr(" x"), attr(" y"), attr(" width"), attr(" height")]
        })
        .collect()
}

/// The pixel boxes of a detection string for an image of `w` × `h`.
fn boxes(text: &str, w: u32, h: u32) -> Vec<[f64; 4]> {
    parse_detections(text)
        .objects
        .iter()
        .map(|o| {
            let p = loc_to_pixels(o.bbox, w, h);
            [
                p.x_min,
                p.y_min,
                (p.x_max - p.x_min).max(0.0),
                (p.y_max - p.y_min).max(0.0),
            ]
        })
        .collect()
}

fn same_boxes(mut a: Vec<[f64; 4]>, mut b: Vec<[f64; 4]>) -> bool {
    let key = |r: &[f64; 4]| (r[0] * 10.0).round() as i64 * 100_000 + (r[1] * 10.0).round() as i64;
    a.sort_by_key(key);
    b.sort_by_key(key);
    a.len() == b.len()
        && a.iter()
            .zip(&b)
            .all(|(x, y)| x.iter().zip(y).all(|(p, q)| (p - q).abs() <= 0.051))
}

#[test]
fn a_detection_sweeps_report_decides_from_the_raw_metrics_and_draws_the_stored_boxes() {
    let (test, md, html) = run_and_check_decision(
        "det",
        &spec("det", "detect", 40, "val/map50", "[5e-3, 1.5e-2]"),
        "val/map50",
    );
    let pick = decision_row(&md, "pick");
    let runner = decision_row(&md, "runner-up");
    let picks = stored(&test, "det", &pick[2], pick[5].parse().unwrap());
    let runners = stored(&test, "det", &runner[2], runner[5].parse().unwrap());
    let cards = gallery_cards(&html);
    assert_eq!(
        cards.len(),
        12.min(picks.len()),
        "the default gallery of 12"
    );
    let mut predicted_boxes = 0;
    for (index, card) in cards {
        let panels: Vec<&str> = card.split("<svg ").skip(1).collect();
        assert_eq!(panels.len(), 2, "one panel per trial: {card}");
        for (panel, answers) in panels.iter().zip([&picks, &runners]) {
            let example = &answers[index];
            assert_eq!(example.index, index);
            let view: Vec<u32> = panel
                .split("viewBox=\"0 0 ")
                .nth(1)
                .unwrap()
                .split('"')
                .next()
                .unwrap()
                .split(' ')
                .map(|v| v.parse().unwrap())
                .collect();
            let (w, h) = image::image_dimensions(&example.image).unwrap();
            assert_eq!(view, [w, h], "the overlay is in the image's pixels");
            let drawn = rects(panel, "prediction");
            predicted_boxes += drawn.len();
            assert!(
                same_boxes(drawn.clone(), boxes(&example.prediction, w, h)),
                "example {index}: drawn {drawn:?}, stored {:?}",
                example.prediction
            );
            assert!(
                same_boxes(rects(panel, "reference"), boxes(&example.reference, w, h)),
                "example {index}: reference boxes"
            );
            assert!(panel.contains("data:image/jpeg;base64,") || panel.contains("<use href="));
        }
    }
    assert!(predicted_boxes > 0, "no predicted box drawn at all");
    check_page(&test.path().join("results/det/report/report.html"));
}

#[test]
fn a_json_sweeps_report_decides_from_the_raw_metrics_and_marks_the_stored_fields() {
    let (test, md, html) = run_and_check_decision(
        "js",
        &spec("js", "json", 12, "val/field_f1", "[3e-3, 1e-2]"),
        "val/field_f1",
    );
    let pick = decision_row(&md, "pick");
    let picks = stored(&test, "js", &pick[2], pick[5].parse().unwrap());
    let cards = gallery_cards(&html);
    assert_eq!(cards.len(), 12.min(picks.len()));
    // A card whose stored answer is wrong marks a field, and every card
    // shows the pick's stored score.
    for (index, card) in cards {
        let example = &picks[index];
        let score = example.score.unwrap();
        if score < 1.0 {
            assert!(
                card.contains("class=\"wrong\"") || card.contains("class=\"missing\""),
                "example {index} scored {score}: {card}"
            );
        }
        assert!(
            card.contains(&trim_score(score)),
            "example {index}: score {score} not on the card"
        );
    }
    check_page(&test.path().join("results/js/report/report.html"));
}

fn trim_score(score: f64) -> String {
    let s = format!("{score:.3}");
    s.trim_end_matches('0').trim_end_matches('.').to_owned()
}

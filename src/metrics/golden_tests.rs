//! The metrics against the reference implementations' own numbers:
//! `tests/golden/metrics/*.json`, written by
//! `scripts/golden/make_metric_golden.py` with pinned sacreBLEU and
//! pycocotools (see `tests/golden/README.md`).

use std::path::Path;

use serde_json::Value;

use super::average_precision::{IOU_THRESHOLDS, MAX_DETECTIONS, RECALL_THRESHOLDS};
use super::bleu::{BleuAccumulator, tokenize_13a};
use super::detection::DetectionAccumulator;

const TOLERANCE: f64 = 1e-9;

fn golden(name: &str) -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden/metrics")
        .join(name);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("golden values missing ({}): {e}", path.display()));
    serde_json::from_str(&text).expect("golden JSON parses")
}

fn strings(value: &Value) -> Vec<&str> {
    value
        .as_array()
        .expect("an array")
        .iter()
        .map(|s| s.as_str().expect("a string"))
        .collect()
}

fn number(value: &Value) -> f64 {
    value.as_f64().expect("a number")
}

#[test]
fn tokenizer_13a_matches_sacrebleu() {
    let values = golden("bleu.json");
    let cases = values["tokenizer_13a"].as_array().expect("tokenizer cases");
    assert!(cases.len() > 100, "{} tokenizer cases", cases.len());
    for case in cases {
        let text = case["text"].as_str().expect("text");
        assert_eq!(tokenize_13a(text), strings(&case["tokens"]), "{text:?}");
    }
}

#[test]
fn corpus_bleu_matches_sacrebleu() {
    let values = golden("bleu.json");
    let cases = values["cases"].as_array().expect("cases");
    assert!(cases.len() >= 30, "{} cases", cases.len());
    let mut worst: f64 = 0.0;
    for case in cases {
        let name = case["name"].as_str().expect("name");
        let mut acc = BleuAccumulator::new();
        let hypotheses = strings(&case["hypotheses"]);
        let references = strings(&case["references"]);
        assert_eq!(hypotheses.len(), references.len(), "{name}");
        for (h, r) in hypotheses.iter().zip(&references) {
            acc.add(h, r);
        }
        let bleu = acc.finish().expect("pairs were added");
        let want = number(&case["bleu"]);
        worst = worst.max((bleu - want).abs());
        assert!((bleu - want).abs() < TOLERANCE, "{name}: {bleu} vs {want}");
    }
    eprintln!(
        "BLEU: {} cases, max |palisweep - sacrebleu| = {worst:e}",
        cases.len()
    );
}

#[test]
fn thresholds_are_pycocotools() {
    let values = golden("coco_map.json");
    let parse = |key: &str| -> Vec<f64> {
        strings(&values[key])
            .iter()
            .map(|s| s.parse().expect("a float"))
            .collect()
    };
    // Bit for bit: an IoU or recall exactly on a threshold must fall the same way.
    assert_eq!(parse("iou_thresholds"), IOU_THRESHOLDS);
    assert_eq!(parse("recall_thresholds"), RECALL_THRESHOLDS);
    assert_eq!(
        values["max_detections"].as_u64(),
        Some(MAX_DETECTIONS as u64)
    );
}

#[test]
fn detection_map_matches_pycocotools() {
    let values = golden("coco_map.json");
    let cases = values["cases"].as_array().expect("cases");
    assert!(cases.len() >= 30, "{} cases", cases.len());
    let mut worst: f64 = 0.0;
    for case in cases {
        let name = case["name"].as_str().expect("name");
        let mut acc = DetectionAccumulator::new();
        for example in case["examples"].as_array().expect("examples") {
            let prediction = example["prediction"].as_str().expect("prediction");
            let reference = example["reference"].as_str().expect("reference");
            acc.add(prediction, reference);
        }
        let scores = acc.finish().expect("pairs were added");
        assert_eq!(scores.parse_errors, 0, "{name}");
        for (got, key) in [(scores.map, "map50_95"), (scores.map50, "map50")] {
            let want = number(&case[key]);
            worst = worst.max((got - want).abs());
            assert!(
                (got - want).abs() < TOLERANCE,
                "{name} {key}: {got} vs {want}"
            );
        }
    }
    eprintln!(
        "mAP: {} cases, max |palisweep - pycocotools| = {worst:e}",
        cases.len()
    );
}

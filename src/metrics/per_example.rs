//! One score per example, for the predictions files (`track::predictions`):
//! what a reader sorts a split's examples by to find the worst answers, and
//! what bootstrap intervals resample. Each task scores with the same rules
//! as its split metric, on one example:
//!
//! * JSON → `field_f1`: the example's field F1 (`FieldCounts::compare`);
//!   a prediction that does not parse has no fields.
//! * detect, segment → `box_f1`: F1 of the boxes at `IoU` ≥ 0.5 with equal
//!   labels, matched greedily by `IoU` (highest first, each box used once);
//!   masks are not scored. A predicted object that does not parse counts as
//!   a false positive: the model did answer something there, and an answer
//!   of garbage to an image with nothing in it must not score as perfect.
//!   No reference and no predicted object scores 1.
//! * text → `cer`: the example's character error rate (edits per reference
//!   character, trimmed as the split's CER is); lower is better. An empty
//!   reference scores 0 against an empty prediction, else 1.
//!
//! Use [`super::names::higher_is_better`] for the direction.

use super::detection::{DetectedObject, parse_detections};
use super::json_fields::JsonFieldAccumulator;
use super::names;
use super::task::Task;
use super::text::TextAccumulator;

/// The least `IoU` at which a predicted box matches a reference box.
pub const BOX_IOU_THRESHOLD: f64 = 0.5;

/// The name of `task`'s per-example metric.
pub fn metric_name(task: Task) -> &'static str {
    match task {
        Task::Json => names::JSON_F1,
        Task::Detect | Task::Segment => names::BOX_F1,
        Task::Text => names::CER,
    }
}

/// The score of one (prediction, reference) pair under
/// [`metric_name`]`(task)`; `None` when it is undefined (not a number).
pub fn score(task: Task, prediction: &str, reference: &str) -> Option<f64> {
    let value = match task {
        Task::Json => field_f1(prediction, reference),
        Task::Detect | Task::Segment => box_f1(prediction, reference),
        Task::Text => cer(prediction, reference),
    };
    value.is_finite().then_some(value)
}

/// Field F1 of one example, scored as the split metric scores it.
pub fn field_f1(prediction: &str, reference: &str) -> f64 {
    let mut one = JsonFieldAccumulator::new();
    one.add(prediction, reference);
    one.counts().f1()
}

/// Box F1 at [`BOX_IOU_THRESHOLD`] (see the module docs).
pub fn box_f1(prediction: &str, reference: &str) -> f64 {
    let predicted = parse_detections(prediction);
    let references = parse_detections(reference).objects;
    let matched = greedy_matches(&predicted.objects, &references);
    let false_positives = predicted.objects.len() - matched + predicted.errors.len();
    let false_negatives = references.len() - matched;
    let denominator = 2 * matched + false_positives + false_negatives;
    if denominator == 0 {
        1.0
    } else {
        (2 * matched) as f64 / denominator as f64
    }
}

/// How many (predicted, reference) pairs of equal label and `IoU` ≥ the
/// threshold a greedy matching finds, taking the highest `IoU` first (ties
/// to the earlier predicted box, then the earlier reference).
fn greedy_matches(predicted: &[DetectedObject], references: &[DetectedObject]) -> usize {
    let mut pairs: Vec<(f64, usize, usize)> = Vec::new();
    for (p, prediction) in predicted.iter().enumerate() {
        for (r, reference) in references.iter().enumerate() {
            if prediction.label != reference.label {
                continue;
            }
            let iou = prediction.bbox.iou(&reference.bbox);
            if iou >= BOX_IOU_THRESHOLD {
                pairs.push((iou, p, r));
            }
        }
    }
    pairs.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2)));
    let mut used_prediction = vec![false; predicted.len()];
    let mut used_reference = vec![false; references.len()];
    let mut matched = 0;
    for (_, p, r) in pairs {
        if !used_prediction[p] && !used_reference[r] {
            used_prediction[p] = true;
            used_reference[r] = true;
            matched += 1;
        }
    }
    matched
}

/// Character error rate of one example, scored as the split metric scores
/// it (both sides trimmed).
pub fn cer(prediction: &str, reference: &str) -> f64 {
    let mut one = TextAccumulator::new();
    one.add(prediction, reference);
    one.finish().map_or(f64::NAN, |s| s.cer)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::names::higher_is_better;
    use crate::metrics::task::TaskMetrics;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-12
    }

    #[test]
    fn each_task_names_its_metric_and_its_direction() {
        assert_eq!(metric_name(Task::Json), "field_f1");
        assert_eq!(metric_name(Task::Detect), "box_f1");
        assert_eq!(metric_name(Task::Segment), "box_f1");
        assert_eq!(metric_name(Task::Text), "cer");
        assert!(higher_is_better(metric_name(Task::Json)));
        assert!(higher_is_better(metric_name(Task::Detect)));
        assert!(!higher_is_better(metric_name(Task::Text)));
    }

    #[test]
    fn field_f1_of_one_example() {
        // Reference fields a=1, b="x", c[]=1, c[]=2; predicted a=1, b="y",
        // c[]=2: TP 2 (a, c[]=2), FP 1 (b), FN 2 (b, c[]=1) → 4 / 7.
        let f1 = field_f1(
            r#"{"a": 1.0, "b": "y", "c": [2]}"#,
            r#"{"a": 1, "b": "x", "c": [1, 2]}"#,
        );
        assert!(close(f1, 4.0 / 7.0), "{f1}");
        assert!(close(field_f1("not json", r#"{"a": 1}"#), 0.0));
        assert!(close(field_f1(r#"{"b": [ "z" ]}"#, r#"{"b":["z"]}"#), 1.0));
        // A reference that does not parse is one string leaf at `$`.
        assert!(close(field_f1(r#""oops""#, " oops "), 1.0));
    }

    #[test]
    fn box_f1_matches_labels_at_half_iou() {
        let reference =
            "<loc0000><loc0000><loc0100><loc0100> cat ; <loc0200><loc0200><loc0300><loc0300> dog";
        // Cat box shifted by 20 bins: IoU = 80·100 / (2·100·100 − 8000) =
        // 8000 / 12000 = 2/3 ≥ 0.5, a match. The dog box is labelled `cat`:
        // no match. TP 1, FP 1, FN 1 → 2 / 4.
        let prediction =
            "<loc0020><loc0000><loc0120><loc0100> cat ; <loc0200><loc0200><loc0300><loc0300> cat";
        assert!(close(box_f1(prediction, reference), 0.5));
        // Shifted by 40: IoU = 6000 / 14000 < 0.5: TP 0 → 0.
        assert!(close(
            box_f1("<loc0040><loc0000><loc0140><loc0100> cat", reference),
            0.0
        ));
        assert!(close(box_f1(reference, reference), 1.0));
        // Nothing to find and nothing found.
        assert!(close(box_f1("", ""), 1.0));
        assert!(close(box_f1(" ", ""), 1.0));
        // Something found where there was nothing; garbage as well.
        assert!(close(
            box_f1("<loc0000><loc0000><loc0100><loc0100> cat", ""),
            0.0
        ));
        assert!(close(box_f1("a cat", ""), 0.0));
        // One good box and one malformed object: TP 1, FP 1, FN 1 → 0.5.
        assert!(close(
            box_f1(
                "<loc0000><loc0000><loc0100><loc0100> cat ; <loc0001> dog",
                reference
            ),
            0.5
        ));
    }

    #[test]
    fn box_f1_is_greedy_by_iou_and_uses_each_box_once() {
        // Two references A (IoU 0.6 and 0.9 with predictions p0, p1) and
        // B: p1 takes A first (0.9), p0 then has only B.
        let a = "<loc0000><loc0000><loc0100><loc0100> x";
        let b = "<loc0000><loc0050><loc0100><loc0150> x";
        // p0 = rows 0–100, cols 25–125: IoU with A = 75/125 = 0.6, with B = 75/125 = 0.6.
        let p0 = "<loc0000><loc0025><loc0100><loc0125> x";
        // p1 = cols 5–105: IoU with A = 95/105 ≈ 0.905, with B = 55/145 < 0.5.
        let p1 = "<loc0000><loc0005><loc0100><loc0105> x";
        let reference = format!("{a} ; {b}");
        assert!(close(box_f1(&format!("{p0} ; {p1}"), &reference), 1.0));
        // The same box predicted twice: the duplicate is a false positive.
        // TP 1, FP 1, FN 1 → 0.5.
        assert!(close(box_f1(&format!("{a} ; {a}"), &reference), 0.5));
    }

    #[test]
    fn cer_of_one_example() {
        assert!(close(cer(" kitten ", "sitting"), 3.0 / 7.0));
        assert!(close(cer("abc", "abc"), 0.0));
        assert!(close(cer("", ""), 0.0));
        assert!(close(cer("x", "  "), 1.0));
        // Longer than the reference: may exceed 1.
        assert!(close(cer("abcdef", "ab"), 2.0));
    }

    #[test]
    fn scores_agree_with_the_split_metric_on_one_example() {
        let cases = [
            (Task::Json, r#"{"a": 1, "b": 2}"#, r#"{"a": 1, "b": 3}"#),
            (Task::Text, "a cat sat", "a hat sat"),
        ];
        for (task, prediction, reference) in cases {
            let mut split = TaskMetrics::new(task);
            split.add(prediction, reference);
            let name = metric_name(task);
            assert_eq!(
                score(task, prediction, reference),
                split.finish().get(name).copied(),
                "{task}"
            );
        }
    }
}

//! Average precision by pycocotools' conventions: the `IoU` and recall
//! thresholds of `COCOeval`'s default `Params` and the 101-point sampling of
//! its `accumulate()`.
//!
//! Pinned source: pycocotools 2.0.11 (<https://pypi.org/project/pycocotools/2.0.11/>),
//! built from ppwwyyxx/cocoapi, the maintained fork of cocodataset/cocoapi,
//! at its "bump version" commit:
//! <https://github.com/ppwwyyxx/cocoapi/blob/ac87f5077ad6b8864c2dc5e93d14cae62d1db05a/PythonAPI/pycocotools/cocoeval.py>.

/// The `IoU` thresholds of COCO's mAP, bit for bit as
/// `np.linspace(.5, 0.95, 10)` makes them (`start + i · step`, the last one
/// set to `stop`): the ninth is 0.8999999999999999, not 0.9.
pub const IOU_THRESHOLDS: [f64; 10] = linspace(0.5, 0.95);

/// Recall thresholds `np.linspace(.0, 1.00, 101)`: `i · 0.01`, which is not
/// always `i / 100` (35 · 0.01 > 0.35, for one).
pub const RECALL_THRESHOLDS: [f64; 101] = linspace(0.0, 1.0);

/// Detections per image and class that COCO scores (`maxDets[-1]`); later
/// ones are dropped, not counted as false positives.
pub const MAX_DETECTIONS: usize = 100;

/// numpy's `linspace(first, last, N)` with an endpoint: `i · step + first`
/// with `step = (last − first) / (N − 1)`, and the last value `last` exactly.
const fn linspace<const N: usize>(first: f64, last: f64) -> [f64; N] {
    let step = (last - first) / (N - 1) as f64;
    let mut out = [0.0; N];
    let mut i = 0;
    while i < N {
        out[i] = i as f64 * step + first;
        i += 1;
    }
    out[N - 1] = last;
    out
}

/// AP of one class at one `IoU` threshold from its ranked hits (`true` = a
/// true positive, best-ranked first) against `references` reference boxes,
/// as `COCOeval.accumulate()` computes it: precision
/// `tp / (tp + fp + ε)` made monotone from the right, sampled at each
/// [`RECALL_THRESHOLDS`] value `r` at the first rank whose recall is ≥ `r`
/// (`np.searchsorted(…, side='left')`), 0 where recall never reaches `r`,
/// then averaged over the 101 samples. 0 when there are no references.
pub fn coco_average_precision(hits: &[bool], references: usize) -> f64 {
    if references == 0 {
        return 0.0;
    }
    let mut true_positives = 0.0;
    let mut false_positives = 0.0;
    let mut recall = Vec::with_capacity(hits.len());
    let mut precision = Vec::with_capacity(hits.len());
    for hit in hits {
        if *hit {
            true_positives += 1.0;
        } else {
            false_positives += 1.0;
        }
        recall.push(true_positives / references as f64);
        // np.spacing(1) == f64::EPSILON, kept so that values agree bit for bit.
        precision.push(true_positives / (false_positives + true_positives + f64::EPSILON));
    }
    for i in (1..precision.len()).rev() {
        if precision[i] > precision[i - 1] {
            precision[i - 1] = precision[i];
        }
    }
    let sampled: f64 = RECALL_THRESHOLDS
        .iter()
        .map(|threshold| {
            let first = recall.partition_point(|r| r < threshold);
            precision.get(first).copied().unwrap_or(0.0)
        })
        .sum();
    sampled / RECALL_THRESHOLDS.len() as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-12
    }

    #[test]
    fn thresholds_follow_linspace() {
        // Bit patterns: these must be exact, not close.
        assert_eq!(IOU_THRESHOLDS[0].to_bits(), 0.5f64.to_bits());
        assert_eq!(IOU_THRESHOLDS[9].to_bits(), 0.95f64.to_bits());
        assert!(IOU_THRESHOLDS[8] < 0.9 && close(IOU_THRESHOLDS[8], 0.9));
        assert_eq!(RECALL_THRESHOLDS[100].to_bits(), 1.0f64.to_bits());
        assert!(RECALL_THRESHOLDS[35] > 0.35 && close(RECALL_THRESHOLDS[35], 0.35));
        assert!(RECALL_THRESHOLDS.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn samples_the_envelope_at_101_recalls() {
        // One reference found at once: precision 1 at every recall.
        assert!(close(coco_average_precision(&[true], 1), 1.0));
        // Recall 1/2 at precision 1: recalls 0.00…0.50 (51 points) score 1.
        assert!(close(
            coco_average_precision(&[true, false], 2),
            51.0 / 101.0
        ));
        // Hit, miss, hit of 2: envelope 1, 2/3, 2/3; 51 points at 1, 50 at 2/3.
        let ap = coco_average_precision(&[true, false, true], 2);
        assert!(close(ap, (51.0 + 50.0 * 2.0 / 3.0) / 101.0));
        // A miss first: precision 1/2 carried back to recall 0.
        assert!(close(coco_average_precision(&[false, true], 1), 0.5));
        assert!(close(coco_average_precision(&[], 3), 0.0));
        assert!(close(coco_average_precision(&[true], 0), 0.0));
    }
}

//! Metric names as evaluation reports them, and which way each one improves.
//!
//! Like burn-train's numeric metrics, every reported value knows whether a
//! larger number is better, so that best-trial selection, early stopping and
//! reports never need to special-case a name.

/// Micro-averaged F1 over flattened JSON fields; higher is better.
pub const JSON_F1: &str = "field_f1";
/// Micro-averaged precision over flattened JSON fields; higher is better.
pub const JSON_PRECISION: &str = "field_precision";
/// Micro-averaged recall over flattened JSON fields; higher is better.
pub const JSON_RECALL: &str = "field_recall";
/// Fraction of predictions whose parsed JSON equals the reference's
/// (numbers by value, strings trimmed); higher is better.
pub const JSON_EXACT: &str = "json_exact";
/// Fraction of predictions that parse as JSON; higher is better.
pub const JSON_VALID: &str = "json_valid";
/// COCO-style box mAP averaged over `IoU` 0.50:0.05:0.95; higher is better.
pub const MAP: &str = "map50_95";
/// Box mAP at `IoU` 0.50; higher is better.
pub const MAP50: &str = "map50";
/// One example's box F1 at `IoU` 0.5 with matching labels
/// (`per_example`); higher is better.
pub const BOX_F1: &str = "box_f1";
/// Number of predicted objects that did not parse; lower is better.
pub const DETECT_PARSE_ERRORS: &str = "detect_parse_errors";
/// Fraction of predictions equal to their reference after trimming; higher is
/// better.
pub const EXACT_MATCH: &str = "exact_match";
/// Character error rate (edits per reference character); lower is better.
pub const CER: &str = "cer";
/// Corpus BLEU (sacreBLEU's defaults) on a 0–1 scale; higher is better.
pub const BLEU: &str = "bleu";
/// Cross-entropy loss on the suffix tokens; lower is better.
pub const LOSS: &str = "loss";

/// Whether a larger value of `metric` is an improvement.
///
/// Lower is better for `loss` and any `*_loss`, `cer`, `wer`, `perplexity`
/// `detect_parse_errors` and `peak_memory_bytes`; every other name (F1, precision, recall,
/// validity, mAP, exact match, BLEU, accuracy, …) is higher-is-better. A prefix up
/// to the last `/` (`eval/loss`, `valid/cer`) is ignored.
pub fn higher_is_better(metric: &str) -> bool {
    let base = metric.rsplit('/').next().unwrap_or(metric);
    let lower = base == LOSS
        || base.ends_with("_loss")
        || base == CER
        || base == "wer"
        || base == "perplexity"
        || base == DETECT_PARSE_ERRORS
        || base == "peak_memory_bytes";
    !lower
}

/// Whether `candidate` improves on `incumbent` for `metric` (strictly; a NaN
/// never improves and is always beaten by a number).
pub fn is_better(metric: &str, candidate: f64, incumbent: f64) -> bool {
    if candidate.is_nan() {
        return false;
    }
    if incumbent.is_nan() {
        return true;
    }
    if higher_is_better(metric) {
        candidate > incumbent
    } else {
        candidate < incumbent
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn directions_match_the_reported_names() {
        for name in [
            JSON_F1,
            JSON_PRECISION,
            JSON_RECALL,
            JSON_VALID,
            MAP,
            MAP50,
            BOX_F1,
            EXACT_MATCH,
            BLEU,
            "accuracy",
        ] {
            assert!(higher_is_better(name), "{name}");
        }
        for name in [
            LOSS,
            CER,
            DETECT_PARSE_ERRORS,
            "eval_loss",
            "eval/loss",
            "valid/cer",
        ] {
            assert!(!higher_is_better(name), "{name}");
        }
    }

    #[test]
    fn is_better_follows_the_direction() {
        assert!(is_better(MAP, 0.6, 0.5));
        assert!(!is_better(MAP, 0.5, 0.5));
        assert!(is_better(LOSS, 0.4, 0.5));
        assert!(!is_better(CER, 0.6, 0.5));
        assert!(is_better(CER, 0.1, f64::NAN));
        assert!(!is_better(CER, f64::NAN, 0.1));
    }
}

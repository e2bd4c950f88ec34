//! Exact match and character error rate (CER) over a split.
//!
//! Both compare the prediction and the reference after trimming surrounding
//! whitespace. CER is the Levenshtein distance over Unicode scalar values
//! (`char`s, no normalisation), micro-averaged over the split: the sum of
//! edits divided by the sum of reference characters.

/// Exact match and CER of a finished split.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TextScores {
    /// Fraction of examples whose trimmed prediction equals the trimmed
    /// reference; higher is better.
    pub exact_match: f64,
    /// Sum of character edits over sum of reference characters; lower is
    /// better, and may exceed 1 when predictions are much longer than the
    /// references.
    pub cer: f64,
}

/// Sums over the examples seen so far.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TextAccumulator {
    examples: u64,
    exact: u64,
    edits: u64,
    reference_chars: u64,
}

impl TextAccumulator {
    /// An empty accumulator.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds one (prediction, reference) pair.
    pub fn add(&mut self, prediction: &str, reference: &str) {
        let prediction = prediction.trim();
        let reference = reference.trim();
        self.examples += 1;
        if prediction == reference {
            self.exact += 1;
        } else {
            self.edits += char_edit_distance(prediction, reference) as u64;
        }
        self.reference_chars += reference.chars().count() as u64;
    }

    /// Adds what `other` accumulated, `times` times over: the accumulator
    /// of a resample that drew `other`'s examples `times` times each.
    pub fn add_times(&mut self, other: &Self, times: u64) {
        self.examples += other.examples * times;
        self.exact += other.exact * times;
        self.edits += other.edits * times;
        self.reference_chars += other.reference_chars * times;
    }

    /// How many pairs were added.
    pub fn examples(&self) -> u64 {
        self.examples
    }

    /// The scores, or `None` before any pair was added.
    ///
    /// When the references hold no characters at all, CER is 0 if the
    /// predictions are empty too and 1 otherwise.
    pub fn finish(&self) -> Option<TextScores> {
        if self.examples == 0 {
            return None;
        }
        let cer = if self.reference_chars == 0 {
            if self.edits == 0 { 0.0 } else { 1.0 }
        } else {
            self.edits as f64 / self.reference_chars as f64
        };
        Some(TextScores {
            exact_match: self.exact as f64 / self.examples as f64,
            cer,
        })
    }
}

/// Levenshtein distance between `a` and `b` counted in `char`s (insertions,
/// deletions and substitutions of one Unicode scalar value each).
pub fn char_edit_distance(a: &str, b: &str) -> usize {
    strsim::levenshtein(a, b)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scores(pairs: &[(&str, &str)]) -> TextScores {
        let mut acc = TextAccumulator::new();
        for (p, r) in pairs {
            acc.add(p, r);
        }
        acc.finish().expect("pairs were added")
    }

    #[test]
    fn exact_match_trims_but_keeps_case() {
        let s = scores(&[("  a cat\n", "a cat"), ("A cat", "a cat")]);
        assert!((s.exact_match - 0.5).abs() < 1e-12);
    }

    #[test]
    fn edit_distance_counts_unicode_chars() {
        assert_eq!(char_edit_distance("kitten", "sitting"), 3);
        assert_eq!(char_edit_distance("café", "cafe"), 1);
        assert_eq!(char_edit_distance("日本語", "日本"), 1);
        assert_eq!(char_edit_distance("", "abc"), 3);
    }

    #[test]
    fn cer_is_micro_averaged() {
        // 1 edit over 4 chars, 3 edits over 6 chars: (1 + 3) / (4 + 6).
        let s = scores(&[("abcx", "abcd"), ("abc", "abcdef")]);
        assert!((s.cer - 0.4).abs() < 1e-12);
        assert!(s.exact_match.abs() < 1e-12);
    }

    #[test]
    fn perfect_predictions_score_zero_cer() {
        let s = scores(&[("hello", "hello"), ("wörld ", "wörld")]);
        assert!((s.exact_match - 1.0).abs() < 1e-12);
        assert!(s.cer.abs() < 1e-12);
    }

    #[test]
    fn empty_references() {
        assert!(scores(&[("", " ")]).cer.abs() < 1e-12);
        assert!((scores(&[("x", "")]).cer - 1.0).abs() < 1e-12);
        assert_eq!(TextAccumulator::new().finish(), None);
    }
}

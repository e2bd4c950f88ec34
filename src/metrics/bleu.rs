//! Corpus BLEU as sacreBLEU computes it by default, on a 0–1 scale.
//!
//! `sacrebleu.corpus_bleu(hypotheses, [references])` with its defaults: one
//! reference per hypothesis, the `13a` tokenizer, case kept, n-grams up to 4,
//! `exp` smoothing and the brevity penalty, statistics summed over the split
//! before the score is taken. sacreBLEU reports 0–100; palisweep divides by
//! 100. Pinned source: sacreBLEU v2.5.1,
//! <https://github.com/mjpost/sacrebleu/blob/v2.5.1/sacrebleu/metrics/bleu.py>
//! and `sacrebleu/tokenizers/tokenizer_13a.py`, `tokenizer_re.py` there.
//!
//! Predictions and references are taken as given (not trimmed): sacreBLEU
//! strips trailing whitespace itself, and the tokenizer ignores the rest.

use std::collections::HashMap;

/// Longest n-gram counted (BLEU-4).
pub const MAX_NGRAM_ORDER: usize = 4;

/// Whitespace as Python's `str.isspace` (and so `str.split`, `str.rstrip`)
/// sees it: Rust's `White_Space` plus the separators U+001C…U+001F.
fn is_python_space(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

/// The characters `tokenizer_re.py`'s first rule pads with spaces (its
/// class of ranges `{`…`~`, `[`…backtick, space…`&`, `(`…`+`, `:`…`@` and
/// `/`): ASCII punctuation except `'`, `,`, `-` and `.`, plus the space
/// itself, which is harmless.
fn is_split_symbol(c: char) -> bool {
    matches!(c, '{'..='~' | '['..='`' | ' '..='&' | '('..='+' | ':'..='@' | '/')
}

/// Applies a two-character rule `(first)(second)` the way Python's `re.sub`
/// does: leftmost matches, left to right, never overlapping.
fn substitute_pairs(
    chars: &[char],
    first: impl Fn(char) -> bool,
    second: impl Fn(char) -> bool,
    replace: impl Fn(char, char, &mut Vec<char>),
) -> Vec<char> {
    let mut out = Vec::with_capacity(chars.len() * 2);
    let mut i = 0;
    while i < chars.len() {
        if i + 1 < chars.len() && first(chars[i]) && second(chars[i + 1]) {
            replace(chars[i], chars[i + 1], &mut out);
            i += 2;
        } else {
            out.push(chars[i]);
            i += 1;
        }
    }
    out
}

/// sacreBLEU's `13a` tokenization (mteval-v13a, as WMT uses it) of one
/// segment, after sacreBLEU's `rstrip`, as a list of tokens.
pub fn tokenize_13a(line: &str) -> Vec<String> {
    let mut line = line
        .trim_end_matches(is_python_space)
        .replace("<skipped>", "")
        .replace("-\n", "")
        .replace('\n', " ");
    if line.contains('&') {
        // Sequential, as upstream: `&amp;lt;` ends up as `<`.
        line = line
            .replace("&quot;", "\"")
            .replace("&amp;", "&")
            .replace("&lt;", "<")
            .replace("&gt;", ">");
    }
    let mut chars = Vec::with_capacity(line.len() * 2);
    for c in format!(" {line} ").chars() {
        if is_split_symbol(c) {
            chars.extend([' ', c, ' ']);
        } else {
            chars.push(c);
        }
    }
    let period_or_comma = |c: char| c == '.' || c == ',';
    let not_digit = |c: char| !c.is_ascii_digit();
    // Period and comma unless preceded by a digit.
    let chars = substitute_pairs(&chars, not_digit, period_or_comma, |a, b, out| {
        out.extend([a, ' ', b, ' ']);
    });
    // Period and comma unless followed by a digit.
    let chars = substitute_pairs(&chars, period_or_comma, not_digit, |a, b, out| {
        out.extend([' ', a, ' ', b]);
    });
    // Dash when preceded by a digit.
    let chars = substitute_pairs(
        &chars,
        |c| c.is_ascii_digit(),
        |c| c == '-',
        |a, b, out| out.extend([a, ' ', b, ' ']),
    );
    chars
        .into_iter()
        .collect::<String>()
        .split(is_python_space)
        .filter(|t| !t.is_empty())
        .map(str::to_owned)
        .collect()
}

/// Counts of every n-gram of order 1…[`MAX_NGRAM_ORDER`].
fn ngram_counts(tokens: &[String]) -> HashMap<&[String], u64> {
    let mut counts = HashMap::new();
    for n in 1..=MAX_NGRAM_ORDER {
        for gram in tokens.windows(n) {
            *counts.entry(gram).or_insert(0) += 1;
        }
    }
    counts
}

/// BLEU's sufficient statistics, summed over the split.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BleuAccumulator {
    examples: u64,
    hypothesis_tokens: u64,
    reference_tokens: u64,
    /// Clipped n-gram matches, by order − 1.
    correct: [u64; MAX_NGRAM_ORDER],
    /// Hypothesis n-grams, by order − 1.
    total: [u64; MAX_NGRAM_ORDER],
}

impl BleuAccumulator {
    /// An empty accumulator.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds one (prediction, reference) pair.
    pub fn add(&mut self, prediction: &str, reference: &str) {
        let hypothesis = tokenize_13a(prediction);
        let reference = tokenize_13a(reference);
        let reference_counts = ngram_counts(&reference);
        self.examples += 1;
        self.hypothesis_tokens += hypothesis.len() as u64;
        self.reference_tokens += reference.len() as u64;
        for (gram, count) in ngram_counts(&hypothesis) {
            let order = gram.len() - 1;
            self.total[order] += count;
            let available = reference_counts.get(gram).copied().unwrap_or(0);
            self.correct[order] += count.min(available);
        }
    }

    /// How many pairs were added.
    pub fn examples(&self) -> u64 {
        self.examples
    }

    /// Corpus BLEU on a 0–1 scale, or `None` before any pair was added.
    ///
    /// As sacreBLEU's `compute_bleu` with `exp` smoothing: 0 without a single
    /// matching n-gram; an order with matches has precision
    /// `correct / total`; the k-th order without matches gets
    /// `1 / (2^k · total)`; an order with no n-grams at all (every hypothesis
    /// shorter than it) floors its log, which makes the score 0.
    pub fn finish(&self) -> Option<f64> {
        if self.examples == 0 {
            return None;
        }
        if self.correct.iter().all(|c| *c == 0) {
            return Some(0.0);
        }
        let (sys, reference) = (self.hypothesis_tokens as f64, self.reference_tokens as f64);
        let brevity_penalty = if self.hypothesis_tokens >= self.reference_tokens {
            1.0
        } else if self.hypothesis_tokens > 0 {
            (1.0 - reference / sys).exp()
        } else {
            0.0
        };
        // Percentages, as upstream, so that the rounding matches too.
        let mut precisions = [0.0; MAX_NGRAM_ORDER];
        let mut smooth = 1.0;
        for (n, precision) in precisions.iter_mut().enumerate() {
            let (correct, total) = (self.correct[n] as f64, self.total[n] as f64);
            if self.total[n] == 0 {
                break;
            }
            *precision = if self.correct[n] == 0 {
                smooth *= 2.0;
                100.0 / (smooth * total)
            } else {
                100.0 * correct / total
            };
        }
        // sacrebleu.utils.my_log: log(0) is floored to -9999999999.
        let log_sum: f64 = precisions
            .iter()
            .map(|p| if *p == 0.0 { -9_999_999_999.0 } else { p.ln() })
            .sum();
        let score = brevity_penalty * (log_sum / MAX_NGRAM_ORDER as f64).exp();
        Some(score / 100.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bleu(pairs: &[(&str, &str)]) -> f64 {
        let mut acc = BleuAccumulator::new();
        for (h, r) in pairs {
            acc.add(h, r);
        }
        acc.finish().expect("pairs were added")
    }

    #[test]
    fn exact_corpus_scores_one_and_short_corpus_zero() {
        assert!((bleu(&[("a cat sat on the mat.", "a cat sat on the mat.")]) - 1.0).abs() < 1e-12);
        // Three tokens: no 4-gram at all.
        assert!(bleu(&[("a cat.", "a cat.")]).abs() < 1e-12);
        assert_eq!(BleuAccumulator::new().finish(), None);
    }

    #[test]
    fn statistics_are_summed_before_the_score() {
        // A 4-gram-less pair scores 0 alone but adds to a longer one's corpus.
        let long = ("the cat sat on the mat", "the cat sat on the mat");
        let short = ("a dog", "a dog");
        let corpus = bleu(&[long, short]);
        assert!(corpus > 0.9 && corpus < 1.0 + 1e-12, "{corpus}");
        // Order of the pairs does not matter.
        assert!((bleu(&[short, long]) - corpus).abs() < 1e-15);
    }

    #[test]
    fn repeated_words_are_clipped_and_short_output_penalised() {
        let repeated = bleu(&[("the the the the the the", "the cat sat on the mat")]);
        let short = bleu(&[("the cat sat on", "the cat sat on the mat")]);
        assert!(repeated < 0.2, "{repeated}");
        // All n-grams match, so only the brevity penalty exp(1 − 6/4) remains.
        assert!(
            (short - (1.0f64 - 6.0 / 4.0).exp()).abs() < 1e-12,
            "{short}"
        );
    }
}

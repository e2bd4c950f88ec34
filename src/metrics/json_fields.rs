//! JSON field precision, recall and F1.
//!
//! Prediction and reference are parsed as JSON and flattened into a multiset
//! of [`Field`]s, each a path to a leaf and the leaf's value:
//!
//! * objects descend by key: `{"a": {"b": 1}}` → `a.b = 1`;
//! * arrays are matched **without regard to order**: every element's fields
//!   sit under `[]`, so `{"tags": ["b", "a"]}` → `tags[] = "b"`,
//!   `tags[] = "a"` and `{"items": [{"name": "x"}]}` → `items[].name = "x"`;
//!   order does not matter, repeats do (a multiset of fields);
//! * empty objects and arrays are leaves themselves (`a = {}`), so that they
//!   can be right or wrong;
//! * a scalar at the top level is a leaf at the root path `$`.
//!
//! Leaves compare after normalisation: strings are trimmed and stay
//! case-sensitive; numbers compare by value (`1 == 1.0 == 1e0`), never equal
//! to a string (`"1" != 1`); `true`, `false` and `null` are themselves.
//!
//! Per example, true positives are the size of the multiset intersection,
//! false positives the predicted fields left over, false negatives the
//! reference fields left over. The split's scores are micro-averaged: sums of
//! TP/FP/FN first, ratios last. A prediction that does not parse has no
//! fields, so all of its reference's fields are misses; `json_valid` is the
//! fraction of predictions that parse (as any JSON value). A reference that
//! does not parse is kept as one string leaf at `$` (its trimmed text), so
//! that broken data shows as misses instead of vanishing.

use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::fmt;

use serde_json::{Number, Value};

/// One step of a [`Field`] path.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PathSegment {
    /// An object key.
    Key(String),
    /// Any position in an array (order-insensitive matching).
    AnyIndex,
}

/// A normalised leaf value.
#[derive(Clone, Debug)]
pub enum Leaf {
    Null,
    Bool(bool),
    /// A number with an integral value (from an integer or a float such as
    /// `1.0`).
    Int(i128),
    /// A number with a fractional part, or too large for [`Leaf::Int`].
    Float(f64),
    /// A trimmed string.
    String(String),
    EmptyArray,
    EmptyObject,
}

impl Leaf {
    fn rank(&self) -> u8 {
        match self {
            Leaf::Null => 0,
            Leaf::Bool(_) => 1,
            Leaf::Int(_) => 2,
            Leaf::Float(_) => 3,
            Leaf::String(_) => 4,
            Leaf::EmptyArray => 5,
            Leaf::EmptyObject => 6,
        }
    }

    fn from_number(number: &Number) -> Leaf {
        if let Some(i) = number.as_i64() {
            return Leaf::Int(i128::from(i));
        }
        if let Some(u) = number.as_u64() {
            return Leaf::Int(i128::from(u));
        }
        // Without `arbitrary_precision` every number is an f64 here; with it,
        // the text may still fail to fit, and NaN then compares equal to NaN
        // (see `Ord`), which is the best available.
        let f = number
            .as_f64()
            .or_else(|| number.to_string().parse().ok())
            .unwrap_or(f64::NAN);
        // 2^100: far inside i128, far beyond where f64 has a fraction.
        if f.is_finite() && f.fract() == 0.0 && f.abs() < 1.267_650_600_228_229_4e30 {
            Leaf::Int(f as i128)
        } else {
            Leaf::Float(f)
        }
    }
}

impl Ord for Leaf {
    fn cmp(&self, other: &Self) -> Ordering {
        match (self, other) {
            (Leaf::Bool(a), Leaf::Bool(b)) => a.cmp(b),
            (Leaf::Int(a), Leaf::Int(b)) => a.cmp(b),
            (Leaf::Float(a), Leaf::Float(b)) => a.total_cmp(b),
            (Leaf::String(a), Leaf::String(b)) => a.cmp(b),
            _ => self.rank().cmp(&other.rank()),
        }
    }
}

impl PartialOrd for Leaf {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for Leaf {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Leaf {}

impl fmt::Display for Leaf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Leaf::Null => f.write_str("null"),
            Leaf::Bool(b) => write!(f, "{b}"),
            Leaf::Int(i) => write!(f, "{i}"),
            Leaf::Float(x) => write!(f, "{x}"),
            Leaf::String(s) => write!(f, "{}", Value::String(s.clone())),
            Leaf::EmptyArray => f.write_str("[]"),
            Leaf::EmptyObject => f.write_str("{}"),
        }
    }
}

/// A path to a leaf and the leaf's normalised value.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Field {
    /// From the root; empty for a top-level scalar.
    pub path: Vec<PathSegment>,
    pub value: Leaf,
}

impl fmt::Display for Field {
    /// `items[0].name = "x"`, `tags[] = 3`, `$ = true`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            f.write_str("$")?;
        }
        for (i, segment) in self.path.iter().enumerate() {
            match segment {
                PathSegment::Key(key) if i == 0 => f.write_str(key)?,
                PathSegment::Key(key) => write!(f, ".{key}")?,
                PathSegment::AnyIndex => f.write_str("[]")?,
            }
        }
        write!(f, " = {}", self.value)
    }
}

/// The fields of `value`, in document order (see the module docs for the
/// rules).
pub fn flatten(value: &Value) -> Vec<Field> {
    let mut out = Vec::new();
    let mut path = Vec::new();
    flatten_into(value, &mut path, &mut out);
    out
}

fn flatten_into(value: &Value, path: &mut Vec<PathSegment>, out: &mut Vec<Field>) {
    let mut leaf = |path: &[PathSegment], value: Leaf| {
        out.push(Field {
            path: path.to_vec(),
            value,
        });
    };
    match value {
        Value::Null => leaf(path, Leaf::Null),
        Value::Bool(b) => leaf(path, Leaf::Bool(*b)),
        Value::Number(n) => leaf(path, Leaf::from_number(n)),
        Value::String(s) => leaf(path, Leaf::String(s.trim().to_owned())),
        Value::Object(map) if map.is_empty() => leaf(path, Leaf::EmptyObject),
        Value::Array(items) if items.is_empty() => leaf(path, Leaf::EmptyArray),
        Value::Object(map) => {
            for (key, child) in map {
                path.push(PathSegment::Key(key.clone()));
                flatten_into(child, path, out);
                path.pop();
            }
        }
        Value::Array(items) => {
            for child in items {
                path.push(PathSegment::AnyIndex);
                flatten_into(child, path, out);
                path.pop();
            }
        }
    }
}

/// True positives, false positives and false negatives over fields.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FieldCounts {
    pub true_positives: u64,
    pub false_positives: u64,
    pub false_negatives: u64,
}

impl FieldCounts {
    /// Counts for one example: `None` as the prediction means it did not
    /// parse.
    pub fn compare(prediction: Option<&Value>, reference: &Value) -> FieldCounts {
        let reference = flatten(reference);
        let predicted = prediction.map(flatten).unwrap_or_default();
        let mut remaining: BTreeMap<&Field, u64> = BTreeMap::new();
        for field in &reference {
            *remaining.entry(field).or_default() += 1;
        }
        let mut true_positives = 0;
        for field in &predicted {
            if let Some(count) = remaining.get_mut(field).filter(|c| **c > 0) {
                *count -= 1;
                true_positives += 1;
            }
        }
        FieldCounts {
            true_positives,
            false_positives: predicted.len() as u64 - true_positives,
            false_negatives: reference.len() as u64 - true_positives,
        }
    }

    /// TP / (TP + FP); with nothing predicted, 1 if nothing was missed
    /// either, else 0.
    pub fn precision(&self) -> f64 {
        ratio(
            self.true_positives,
            self.true_positives + self.false_positives,
            self.false_negatives == 0,
        )
    }

    /// TP / (TP + FN); with no reference fields, 1 if nothing was predicted
    /// either, else 0.
    pub fn recall(&self) -> f64 {
        ratio(
            self.true_positives,
            self.true_positives + self.false_negatives,
            self.false_positives == 0,
        )
    }

    /// 2·TP / (2·TP + FP + FN), the harmonic mean of precision and recall;
    /// 1 when there are no fields on either side.
    pub fn f1(&self) -> f64 {
        ratio(
            2 * self.true_positives,
            2 * self.true_positives + self.false_positives + self.false_negatives,
            true,
        )
    }
}

impl std::ops::AddAssign for FieldCounts {
    fn add_assign(&mut self, other: Self) {
        self.true_positives += other.true_positives;
        self.false_positives += other.false_positives;
        self.false_negatives += other.false_negatives;
    }
}

fn ratio(numerator: u64, denominator: u64, perfect_when_empty: bool) -> f64 {
    if denominator == 0 {
        if perfect_when_empty { 1.0 } else { 0.0 }
    } else {
        numerator as f64 / denominator as f64
    }
}

/// The JSON scores of a finished split; all higher-is-better.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct JsonScores {
    pub f1: f64,
    pub precision: f64,
    pub recall: f64,
    /// Fraction of predictions that parse as JSON.
    pub valid: f64,
    /// Fraction of predictions whose fields equal the reference's exactly
    /// (as multisets, so key order and number spelling do not matter).
    pub exact: f64,
}

/// Micro-averaged field counts over the examples seen so far.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct JsonFieldAccumulator {
    examples: u64,
    valid: u64,
    exact: u64,
    counts: FieldCounts,
}

impl JsonFieldAccumulator {
    /// An empty accumulator.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds one (prediction, reference) pair.
    pub fn add(&mut self, prediction: &str, reference: &str) {
        let predicted = serde_json::from_str::<Value>(prediction).ok();
        let reference = serde_json::from_str::<Value>(reference)
            .unwrap_or_else(|_| Value::String(reference.trim().to_owned()));
        self.examples += 1;
        self.valid += u64::from(predicted.is_some());
        let counts = FieldCounts::compare(predicted.as_ref(), &reference);
        self.exact += u64::from(
            predicted.is_some() && counts.false_positives == 0 && counts.false_negatives == 0,
        );
        self.counts += counts;
    }

    /// Adds what `other` accumulated, `times` times over: the accumulator
    /// of a resample that drew `other`'s examples `times` times each.
    pub fn add_times(&mut self, other: &Self, times: u64) {
        self.examples += other.examples * times;
        self.valid += other.valid * times;
        self.exact += other.exact * times;
        self.counts.true_positives += other.counts.true_positives * times;
        self.counts.false_positives += other.counts.false_positives * times;
        self.counts.false_negatives += other.counts.false_negatives * times;
    }

    /// How many pairs were added.
    pub fn examples(&self) -> u64 {
        self.examples
    }

    /// The summed counts so far.
    pub fn counts(&self) -> FieldCounts {
        self.counts
    }

    /// The scores, or `None` before any pair was added.
    pub fn finish(&self) -> Option<JsonScores> {
        (self.examples > 0).then(|| JsonScores {
            f1: self.counts.f1(),
            precision: self.counts.precision(),
            recall: self.counts.recall(),
            valid: self.valid as f64 / self.examples as f64,
            exact: self.exact as f64 / self.examples as f64,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(prediction: &str, reference: &str) -> FieldCounts {
        let mut acc = JsonFieldAccumulator::new();
        acc.add(prediction, reference);
        acc.counts()
    }

    fn tp_fp_fn(c: FieldCounts) -> (u64, u64, u64) {
        (c.true_positives, c.false_positives, c.false_negatives)
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-12
    }

    #[test]
    fn flattens_nested_paths() {
        let value: Value = serde_json::from_str(
            r#"{"a": {"b": 1}, "items": [{"name": " x "}, [true]], "tags": ["p", "q"],
                "e": [], "o": {}, "n": null}"#,
        )
        .expect("valid JSON");
        let shown: Vec<String> = flatten(&value).iter().map(ToString::to_string).collect();
        assert_eq!(
            shown,
            [
                "a.b = 1",
                "e = []",
                "items[].name = \"x\"",
                "items[][] = true",
                "n = null",
                "o = {}",
                "tags[] = \"p\"",
                "tags[] = \"q\"",
            ]
        );
        assert_eq!(flatten(&Value::from(3))[0].to_string(), "$ = 3");
    }

    #[test]
    fn identical_nested_json_is_perfect() {
        let doc = r#"{"store": {"name": "Acme", "items": [{"sku": "A1", "qty": 2}, {"sku": "B2", "qty": 1}]}, "total": 12.5}"#;
        let c = counts(doc, doc);
        assert_eq!(tp_fp_fn(c), (6, 0, 0));
        assert!(close(c.f1(), 1.0));
    }

    #[test]
    fn numbers_by_value_strings_trimmed_and_case_sensitive() {
        assert_eq!(tp_fp_fn(counts(r#"{"a": 1.0}"#, r#"{"a": 1}"#)), (1, 0, 0));
        assert_eq!(
            tp_fp_fn(counts(r#"{"a": 1e2}"#, r#"{"a": 100}"#)),
            (1, 0, 0)
        );
        assert_eq!(tp_fp_fn(counts(r#"{"a": "1"}"#, r#"{"a": 1}"#)), (0, 1, 1));
        assert_eq!(
            tp_fp_fn(counts(r#"{"a": " x "}"#, r#"{"a": "x"}"#)),
            (1, 0, 0)
        );
        assert_eq!(
            tp_fp_fn(counts(r#"{"a": "X"}"#, r#"{"a": "x"}"#)),
            (0, 1, 1)
        );
        assert_eq!(
            tp_fp_fn(counts(r#"{"a": 0.5}"#, r#"{"a": 0.50}"#)),
            (1, 0, 0)
        );
        assert_eq!(
            tp_fp_fn(counts(r#"{"a": null}"#, r#"{"a": false}"#)),
            (0, 1, 1)
        );
    }

    #[test]
    fn partial_prediction() {
        // Reference: name, address.city, address.zip, phones[] x2 = 5 fields.
        let reference =
            r#"{"name": "Ann", "address": {"city": "Oslo", "zip": "0150"}, "phones": ["1", "2"]}"#;
        // Right: name, city, one phone. Wrong: zip. Extra: age. Missing: one phone.
        let prediction = r#"{"name": "Ann", "address": {"city": "Oslo", "zip": "0151"}, "phones": ["2"], "age": 30}"#;
        let c = counts(prediction, reference);
        assert_eq!(tp_fp_fn(c), (3, 2, 2));
        assert!(close(c.precision(), 0.6));
        assert!(close(c.recall(), 0.6));
        assert!(close(c.f1(), 0.6));
    }

    #[test]
    fn scalar_arrays_ignore_order_but_count_repeats() {
        assert_eq!(
            tp_fp_fn(counts(r#"{"t": ["b", "a"]}"#, r#"{"t": ["a", "b"]}"#)),
            (2, 0, 0)
        );
        assert_eq!(
            tp_fp_fn(counts(r#"{"t": ["a", "a"]}"#, r#"{"t": ["a", "b"]}"#)),
            (1, 1, 1)
        );
    }

    #[test]
    fn object_arrays_match_without_regard_to_order() {
        let reference = r#"{"items": [{"n": "x"}, {"n": "y"}]}"#;
        assert_eq!(tp_fp_fn(counts(reference, reference)), (2, 0, 0));
        let swapped = r#"{"items": [{"n": "y"}, {"n": "x"}]}"#;
        assert_eq!(tp_fp_fn(counts(swapped, reference)), (2, 0, 0));
        let one_wrong = r#"{"items": [{"n": "y"}, {"n": "z"}]}"#;
        assert_eq!(tp_fp_fn(counts(one_wrong, reference)), (1, 1, 1));
    }

    #[test]
    fn exact_json_ignores_key_order_and_number_spelling() {
        let mut acc = JsonFieldAccumulator::default();
        acc.add(r#"{"b": 1.0, "a": " x"}"#, r#"{"a": "x", "b": 1}"#);
        acc.add(r#"{"a": "x"}"#, r#"{"a": "x", "b": 1}"#);
        acc.add("not json", r#"{"a": "x"}"#);
        let scores = acc.finish().expect("scores");
        assert!((scores.exact - 1.0 / 3.0).abs() < 1e-12);
    }

    #[test]
    fn invalid_prediction_misses_every_reference_field() {
        let mut acc = JsonFieldAccumulator::new();
        acc.add(r#"{"a": 1, "b": "#, r#"{"a": 1, "b": 2}"#);
        acc.add(r#"{"a": 1}"#, r#"{"a": 1}"#);
        assert_eq!(tp_fp_fn(acc.counts()), (1, 0, 2));
        let s = acc.finish().expect("pairs were added");
        assert!(close(s.valid, 0.5));
        assert!(close(s.precision, 1.0));
        assert!(close(s.recall, 1.0 / 3.0));
        assert!(close(s.f1, 0.5));
    }

    #[test]
    fn micro_average_sums_counts_before_dividing() {
        let mut acc = JsonFieldAccumulator::new();
        // Example 1: 1 of 1 right. Example 2: 1 of 3 right, 2 wrong.
        acc.add(r#"{"a": 1}"#, r#"{"a": 1}"#);
        acc.add(r#"{"a": 1, "b": 0, "c": 0}"#, r#"{"a": 1, "b": 2, "c": 3}"#);
        let s = acc.finish().expect("pairs were added");
        // TP 2, FP 2, FN 2 → 0.5 everywhere (a macro average would be 2/3).
        assert!(close(s.precision, 0.5));
        assert!(close(s.recall, 0.5));
        assert!(close(s.f1, 0.5));
        assert!(close(s.valid, 1.0));
    }

    #[test]
    fn empty_containers_are_fields_and_broken_references_stay_visible() {
        assert_eq!(tp_fp_fn(counts(r#"{"a": []}"#, r#"{"a": []}"#)), (1, 0, 0));
        assert_eq!(tp_fp_fn(counts(r#"{"a": {}}"#, r#"{"a": []}"#)), (0, 1, 1));
        assert_eq!(tp_fp_fn(counts("{}", "{}")), (1, 0, 0));
        assert_eq!(tp_fp_fn(counts("oops", "not json")), (0, 0, 1));
        assert_eq!(JsonFieldAccumulator::new().finish(), None);
    }

    #[test]
    fn zero_denominators() {
        let nothing = FieldCounts::default();
        assert!(close(nothing.precision(), 1.0));
        assert!(close(nothing.recall(), 1.0));
        assert!(close(nothing.f1(), 1.0));
        let only_misses = FieldCounts {
            false_negatives: 2,
            ..FieldCounts::default()
        };
        assert!(close(only_misses.precision(), 0.0));
        assert!(close(only_misses.recall(), 0.0));
        assert!(close(only_misses.f1(), 0.0));
    }
}

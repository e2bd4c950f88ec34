//! The per-task accumulator that evaluation feeds, and the task guess behind
//! `data.task = "auto"`.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::bleu::BleuAccumulator;
use super::detection::{DetectionAccumulator, parse_detections};
use super::json_fields::JsonFieldAccumulator;
use super::names;
use super::text::TextAccumulator;

/// What the suffixes are, which decides the task metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Task {
    /// JSON documents: field F1.
    Json,
    /// `<loc…>` boxes with labels: box mAP.
    Detect,
    /// Boxes with `<seg…>` codes: box mAP (the masks are not scored).
    Segment,
    /// Free text: corpus BLEU, besides exact match and CER.
    Text,
}

impl Task {
    /// Every task, in declaration order.
    pub const ALL: [Task; 4] = [Task::Json, Task::Detect, Task::Segment, Task::Text];

    /// The lowercase name used in specs.
    pub fn as_str(self) -> &'static str {
        match self {
            Task::Json => "json",
            Task::Detect => "detect",
            Task::Segment => "segment",
            Task::Text => "text",
        }
    }

    /// The task that fits every suffix:
    ///
    /// * all parse as JSON objects (or arrays) → [`Task::Json`];
    /// * all parse as detection strings without a malformed object, and at
    ///   least one object in total (empty suffixes, "nothing here", are
    ///   allowed) → [`Task::Segment`] if any object has seg codes, else
    ///   [`Task::Detect`];
    /// * otherwise, and for no suffixes at all, [`Task::Text`].
    pub fn guess(suffixes: &[&str]) -> Task {
        if suffixes.is_empty() {
            return Task::Text;
        }
        let json = suffixes.iter().all(|s| {
            matches!(
                serde_json::from_str::<serde_json::Value>(s),
                Ok(serde_json::Value::Object(_) | serde_json::Value::Array(_))
            )
        });
        if json {
            return Task::Json;
        }
        let mut objects = 0;
        let mut segmentation = false;
        for suffix in suffixes {
            let parsed = parse_detections(suffix);
            if !parsed.errors.is_empty() {
                return Task::Text;
            }
            objects += parsed.objects.len();
            segmentation |= parsed.has_segmentation();
        }
        match (objects, segmentation) {
            (0, _) => Task::Text,
            (_, true) => Task::Segment,
            (_, false) => Task::Detect,
        }
    }

    /// The names [`TaskMetrics::finish`] reports for this task, sorted.
    pub fn metric_names(self) -> &'static [&'static str] {
        match self {
            Task::Json => &[
                names::CER,
                names::EXACT_MATCH,
                names::JSON_F1,
                names::JSON_PRECISION,
                names::JSON_RECALL,
                names::JSON_EXACT,
                names::JSON_VALID,
            ],
            Task::Detect | Task::Segment => &[
                names::CER,
                names::DETECT_PARSE_ERRORS,
                names::EXACT_MATCH,
                names::MAP50,
                names::MAP,
            ],
            Task::Text => &[names::BLEU, names::CER, names::EXACT_MATCH],
        }
    }
}

impl fmt::Display for Task {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A name that is not a task.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown task `{0}`: use json, detect, segment or text")]
pub struct UnknownTask(pub String);

impl FromStr for Task {
    type Err = UnknownTask;

    fn from_str(s: &str) -> Result<Self, UnknownTask> {
        Task::ALL
            .into_iter()
            .find(|task| task.as_str() == s)
            .ok_or_else(|| UnknownTask(s.to_owned()))
    }
}

#[derive(Clone, Debug)]
enum Specific {
    Json(JsonFieldAccumulator),
    Detection(DetectionAccumulator),
    Bleu(BleuAccumulator),
}

/// Accumulates one split's (prediction, reference) pairs and reports the
/// task's metrics, plus exact match and CER for every task.
#[derive(Clone, Debug)]
pub struct TaskMetrics {
    task: Task,
    text: TextAccumulator,
    specific: Specific,
}

impl TaskMetrics {
    /// An empty accumulator for `task`.
    pub fn new(task: Task) -> Self {
        let specific = match task {
            Task::Json => Specific::Json(JsonFieldAccumulator::new()),
            Task::Detect | Task::Segment => Specific::Detection(DetectionAccumulator::new()),
            Task::Text => Specific::Bleu(BleuAccumulator::new()),
        };
        Self {
            task,
            text: TextAccumulator::new(),
            specific,
        }
    }

    /// The task this accumulator scores.
    pub fn task(&self) -> Task {
        self.task
    }

    /// How many pairs were added.
    pub fn examples(&self) -> u64 {
        self.text.examples()
    }

    /// Adds one generated suffix and its reference.
    pub fn add(&mut self, prediction: &str, reference: &str) {
        self.text.add(prediction, reference);
        match &mut self.specific {
            Specific::Json(acc) => acc.add(prediction, reference),
            Specific::Detection(acc) => acc.add(prediction, reference),
            Specific::Bleu(acc) => acc.add(prediction, reference),
        }
    }

    /// The metrics by name ([`Task::metric_names`]); empty before any pair
    /// was added, since there is nothing to average. Use
    /// [`names::higher_is_better`] for each one's direction.
    pub fn finish(&self) -> BTreeMap<String, f64> {
        let mut out = BTreeMap::new();
        let mut put = |name: &str, value: f64| {
            out.insert(name.to_owned(), value);
        };
        if let Some(text) = self.text.finish() {
            put(names::EXACT_MATCH, text.exact_match);
            put(names::CER, text.cer);
        }
        match &self.specific {
            Specific::Json(acc) => {
                if let Some(json) = acc.finish() {
                    put(names::JSON_F1, json.f1);
                    put(names::JSON_PRECISION, json.precision);
                    put(names::JSON_RECALL, json.recall);
                    put(names::JSON_VALID, json.valid);
                    put(names::JSON_EXACT, json.exact);
                }
            }
            Specific::Detection(acc) => {
                if let Some(detection) = acc.finish() {
                    put(names::MAP, detection.map);
                    put(names::MAP50, detection.map50);
                    put(names::DETECT_PARSE_ERRORS, detection.parse_errors as f64);
                }
            }
            Specific::Bleu(acc) => {
                if let Some(bleu) = acc.finish() {
                    put(names::BLEU, bleu);
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-9
    }

    #[test]
    fn guesses_each_task() {
        assert_eq!(Task::guess(&[r#"{"a": 1}"#, r#" {"b": [2]} "#]), Task::Json);
        assert_eq!(
            Task::guess(&["<loc0001><loc0002><loc0003><loc0004> cat", ""]),
            Task::Detect
        );
        let seg = (0..16)
            .map(|i| format!("<seg{i:03}>"))
            .collect::<Vec<_>>()
            .concat();
        assert_eq!(
            Task::guess(&[
                &format!("<loc0001><loc0002><loc0003><loc0004>{seg} cat"),
                "<loc0001><loc0002><loc0003><loc0004> dog",
            ]),
            Task::Segment
        );
        assert_eq!(Task::guess(&[r#"{"a": 1}"#, "a cat"]), Task::Text);
        assert_eq!(Task::guess(&["42", "true"]), Task::Text);
        assert_eq!(
            Task::guess(&["<loc0001><loc0002><loc0003><loc0004> cat", "a cat"]),
            Task::Text
        );
        assert_eq!(Task::guess(&["", " "]), Task::Text);
        assert_eq!(Task::guess(&[]), Task::Text);
    }

    #[test]
    fn names_parse_and_display() {
        for task in Task::ALL {
            assert_eq!(task.as_str().parse::<Task>(), Ok(task));
            assert_eq!(task.to_string(), task.as_str());
        }
        assert_eq!("auto".parse::<Task>(), Err(UnknownTask("auto".into())));
    }

    #[test]
    fn every_task_reports_its_names() {
        let examples = [
            (Task::Json, r#"{"a": 1}"#),
            (Task::Detect, "<loc0001><loc0002><loc0003><loc0004> cat"),
            (Task::Segment, "<loc0001><loc0002><loc0003><loc0004> cat"),
            // BLEU-4 needs 4-grams: a shorter corpus scores 0 even when exact.
            (Task::Text, "a cat on the mat"),
        ];
        for (task, suffix) in examples {
            let mut metrics = TaskMetrics::new(task);
            assert!(metrics.finish().is_empty());
            metrics.add(suffix, suffix);
            let report = metrics.finish();
            let keys: Vec<&str> = report.keys().map(String::as_str).collect();
            assert_eq!(keys, task.metric_names(), "{task}");
            for (name, value) in &report {
                let perfect = if names::higher_is_better(name) {
                    1.0
                } else {
                    0.0
                };
                if name != names::DETECT_PARSE_ERRORS {
                    assert!(close(*value, perfect), "{task} {name} = {value}");
                }
            }
            assert_eq!(metrics.examples(), 1);
        }
    }

    #[test]
    fn json_split_end_to_end() {
        let mut metrics = TaskMetrics::new(Task::Json);
        metrics.add(r#"{"a": 1, "b": "x"}"#, r#"{"a": 1, "b": "y"}"#);
        metrics.add("not json", r#"{"a": 2}"#);
        let report = metrics.finish();
        // TP 1, FP 1, FN 2.
        assert!(close(report[names::JSON_PRECISION], 0.5));
        assert!(close(report[names::JSON_RECALL], 1.0 / 3.0));
        assert!(close(report[names::JSON_F1], 0.4));
        assert!(close(report[names::JSON_VALID], 0.5));
        assert!(close(report[names::EXACT_MATCH], 0.0));
    }

    #[test]
    fn detection_split_end_to_end() {
        let reference =
            "<loc0000><loc0000><loc0100><loc0100> cat ; <loc0200><loc0200><loc0300><loc0300> dog";
        let mut metrics = TaskMetrics::new(Task::Detect);
        metrics.add(
            "<loc0000><loc0000><loc0100><loc0100> cat ; garbage",
            reference,
        );
        let report = metrics.finish();
        assert!(close(report[names::MAP], 0.5));
        assert!(close(report[names::MAP50], 0.5));
        assert!(close(report[names::DETECT_PARSE_ERRORS], 1.0));
        assert!(report[names::CER] > 0.0);
    }

    #[test]
    fn text_split_reports_bleu() {
        let mut metrics = TaskMetrics::new(Task::Text);
        metrics.add("a cat sat on the mat", "a cat sat on the mat");
        metrics.add("", "the dog barked twice");
        let report = metrics.finish();
        // Half the reference tokens are missing: the brevity penalty applies.
        assert!(report[names::BLEU] > 0.0 && report[names::BLEU] < 1.0);
        assert!(close(report[names::EXACT_MATCH], 0.5));
        for task in [Task::Json, Task::Detect, Task::Segment] {
            assert!(!task.metric_names().contains(&names::BLEU), "{task}");
        }
    }
}

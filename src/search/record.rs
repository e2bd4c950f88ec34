//! A finished sweep as the simulator replays it: each trial's configuration,
//! its selection metric by optimiser step, and its seconds per step. Built
//! from the store by `palisweep simulate --from`, or read from the JSON-lines
//! file that `--export` writes (a header line, then one line per trial):
//!
//! ```text
//! {"v":1,"sweep":"search-grid","metric":"val/loss","higher_is_better":false}
//! {"id":"3f…","params":{"train.lr":0.001,…},"seconds_per_step":0.41,"curve":[[4,2.31],[8,1.97],…]}
//! ```

use std::io::{BufRead, Write};

use serde::{Deserialize, Serialize};

use super::space::Point;

/// The file format's version; readers refuse another.
pub const VERSION: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("line {line}: {source}")]
    Json {
        line: usize,
        source: serde_json::Error,
    },
    #[error("the file is empty: it needs a header line and one line per trial")]
    NoHeader,
    #[error("format version {0} (this palisweep reads version {VERSION})")]
    Version(u32),
    #[error("the recorded sweep has no trial with a curve of {0}")]
    NoTrials(String),
    #[error("trial {id}: {problem}")]
    Trial { id: String, problem: String },
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Header {
    v: u32,
    sweep: String,
    metric: String,
    higher_is_better: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RecordedTrial {
    pub id: String,
    /// Axis key → value (the keys that vary).
    pub params: Point,
    /// Device-seconds per optimiser step: the trial's wall time over its
    /// steps, so start-up and evaluations are spread over the steps.
    pub seconds_per_step: f64,
    /// (optimiser step, selection metric) at each evaluation, by step.
    pub curve: Vec<(u64, f64)>,
}

impl RecordedTrial {
    pub fn last_step(&self) -> u64 {
        self.curve.last().map_or(0, |(s, _)| *s)
    }

    /// Device-seconds to train the whole trial.
    pub fn cost(&self) -> f64 {
        self.last_step() as f64 * self.seconds_per_step
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Recorded {
    pub sweep: String,
    pub metric: String,
    pub higher_is_better: bool,
    pub trials: Vec<RecordedTrial>,
}

impl Recorded {
    /// Checks what the replay relies on: at least one trial, curves with
    /// finite values at increasing steps, positive seconds per step.
    pub fn validate(&self) -> Result<(), RecordError> {
        if self.trials.is_empty() {
            return Err(RecordError::NoTrials(self.metric.clone()));
        }
        for t in &self.trials {
            let problem = if t.curve.is_empty() {
                Some("no evaluation".to_owned())
            } else if !(t.seconds_per_step.is_finite() && t.seconds_per_step > 0.0) {
                Some(format!(
                    "seconds per step {} is not positive",
                    t.seconds_per_step
                ))
            } else if t.curve.windows(2).any(|w| w[0].0 >= w[1].0) || t.curve[0].0 == 0 {
                Some("evaluation steps must start above 0 and increase".to_owned())
            } else if t.curve.iter().any(|(_, v)| !v.is_finite()) {
                Some("a value is not finite".to_owned())
            } else {
                None
            };
            if let Some(problem) = problem {
                return Err(RecordError::Trial {
                    id: t.id.clone(),
                    problem,
                });
            }
        }
        Ok(())
    }

    /// A metric value turned "lower is better".
    pub fn loss(&self, value: f64) -> f64 {
        if self.higher_is_better { -value } else { value }
    }

    /// Device-seconds to train every trial to its end (the grid's compute).
    pub fn grid_compute(&self) -> f64 {
        self.trials.iter().map(RecordedTrial::cost).sum()
    }

    pub fn read(reader: impl BufRead) -> Result<Recorded, RecordError> {
        let mut lines = reader
            .lines()
            .enumerate()
            .filter(|(_, l)| l.as_ref().map_or(true, |l| !l.trim().is_empty()));
        let (_, first) = lines.next().ok_or(RecordError::NoHeader)?;
        let header: Header = serde_json::from_str(&first?)
            .map_err(|source| RecordError::Json { line: 1, source })?;
        if header.v != VERSION {
            return Err(RecordError::Version(header.v));
        }
        let mut trials = Vec::new();
        for (i, line) in lines {
            let trial = serde_json::from_str(&line?).map_err(|source| RecordError::Json {
                line: i + 1,
                source,
            })?;
            trials.push(trial);
        }
        let recorded = Recorded {
            sweep: header.sweep,
            metric: header.metric,
            higher_is_better: header.higher_is_better,
            trials,
        };
        recorded.validate()?;
        Ok(recorded)
    }

    pub fn write(&self, mut out: impl Write) -> Result<(), RecordError> {
        let header = Header {
            v: VERSION,
            sweep: self.sweep.clone(),
            metric: self.metric.clone(),
            higher_is_better: self.higher_is_better,
        };
        let json = |e: serde_json::Error| RecordError::Io(e.into());
        writeln!(out, "{}", serde_json::to_string(&header).map_err(json)?)?;
        for trial in &self.trials {
            writeln!(out, "{}", serde_json::to_string(trial).map_err(json)?)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Recorded {
        Recorded {
            sweep: "s".into(),
            metric: "val/loss".into(),
            higher_is_better: false,
            trials: vec![RecordedTrial {
                id: "a".into(),
                params: Point::from([("train.lr".into(), serde_json::json!(1e-3))]),
                seconds_per_step: 0.5,
                curve: vec![(4, 2.0), (8, 1.5)],
            }],
        }
    }

    #[test]
    fn a_written_file_reads_back_the_same() {
        let mut bytes = Vec::new();
        sample().write(&mut bytes).unwrap();
        let text = String::from_utf8(bytes.clone()).unwrap();
        assert!(text.starts_with(r#"{"v":1,"sweep":"s""#), "{text}");
        assert_eq!(Recorded::read(bytes.as_slice()).unwrap(), sample());
        assert!((sample().grid_compute() - 4.0).abs() < 1e-12);
    }

    #[test]
    fn bad_files_say_what_is_wrong() {
        assert!(matches!(
            Recorded::read(&b""[..]),
            Err(RecordError::NoHeader)
        ));
        let newer = r#"{"v":2,"sweep":"s","metric":"m","higher_is_better":false}"#;
        assert!(matches!(
            Recorded::read(newer.as_bytes()),
            Err(RecordError::Version(2))
        ));
        let mut bad = sample();
        bad.trials[0].curve = vec![(8, 1.0), (4, 2.0)];
        let err = bad.validate().unwrap_err().to_string();
        assert!(err.contains("trial a") && err.contains("increase"), "{err}");
        let mut text = Vec::new();
        sample().write(&mut text).unwrap();
        text.extend_from_slice(b"{\"id\": 1}\n");
        let err = Recorded::read(text.as_slice()).unwrap_err().to_string();
        assert!(err.starts_with("line 3:"), "{err}");
    }
}

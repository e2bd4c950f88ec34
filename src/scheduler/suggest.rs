//! Trials suggested while a sweep runs (`sweep.strategy = "tpe"`): when a
//! device has room, the dispatcher asks for the next trial, and `search::tpe`
//! proposes it from the results so far, telling the trials still without a
//! result to the model as pending (its constant liar).
//!
//! The history is on disk, so a resumed sweep suggests what an
//! uninterrupted one would have: the order of suggestions is the sweep
//! folder's `suggestions.jsonl` (written before a trial is queued), the
//! results are the store's evaluations. A trial's result is the best value
//! of the selection metric it reported so far, so trials that early
//! stopping ended (or that wait at an ASHA rung) inform the model too.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::promotions::RecordedEval;
use super::queue::QueuedTrial;
use crate::events::event::TrialInfo;
use crate::jsonl;
use crate::metrics::names::higher_is_better;
use crate::search::space::{Point, Space};
use crate::search::tpe::{Observation, Request, Tpe};

/// A suggestion made into a trial: its record, and how to run it (`None`
/// when it has already ended).
pub struct Suggested {
    pub info: TrialInfo,
    pub queued: Option<QueuedTrial>,
}

/// Makes a suggested point into a trial (its folder, `trial.toml`, plan);
/// an error says why the point cannot run.
pub type Materialize = Box<dyn FnMut(&Point) -> Result<Suggested, String> + Send>;

/// A point's estimated cost (the plan's relative cost of its trial), for
/// cost-aware suggestions.
pub type CostModel = Box<dyn Fn(&Point) -> f64 + Send>;

#[derive(Debug, thiserror::Error)]
pub enum SuggestError {
    #[error("cannot record a suggestion in {path}: {source}")]
    Record {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the suggestion {params} cannot run: {reason}")]
    Trial { params: String, reason: String },
}

/// One line of `suggestions.jsonl`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct SuggestionLine {
    /// The trial's id; `None` for a suggestion that repeated an earlier
    /// trial (it still counts: it moved the sampler's stream on).
    pub trial: Option<String>,
    pub params: Point,
}

/// The suggestions a sweep recorded, in order (a line torn by a crash is
/// dropped: its trial was never queued).
pub fn read_record(path: &std::path::Path) -> std::io::Result<Vec<SuggestionLine>> {
    jsonl::read(path)?
        .lines
        .iter()
        .map(|(_, line)| serde_json::from_str(line).map_err(std::io::Error::other))
        .collect()
}

pub struct Suggestions {
    tpe: Tpe,
    samples: usize,
    metric: String,
    higher_is_better: bool,
    record: PathBuf,
    lines: Vec<SuggestionLine>,
    /// Best value so far per trial, lower is better.
    best: HashMap<String, f64>,
    materialize: Materialize,
    cost: Option<CostModel>,
}

impl Suggestions {
    /// `record` is the sweep's `suggestions.jsonl` (read when it exists);
    /// `history` the store's evaluations of `metric`.
    pub fn new(
        tpe: Tpe,
        samples: usize,
        metric: &str,
        record: PathBuf,
        history: &[RecordedEval],
        materialize: Materialize,
    ) -> std::io::Result<Self> {
        let lines = read_record(&record)?;
        let mut suggestions = Suggestions {
            tpe,
            samples,
            metric: metric.to_owned(),
            higher_is_better: higher_is_better(metric),
            record,
            lines,
            best: HashMap::new(),
            materialize,
            cost: None,
        };
        for eval in history {
            if let Some(value) = eval.value {
                suggestions.observe(&eval.trial, value);
            }
        }
        Ok(suggestions)
    }

    /// Ranks candidates by expected improvement per unit of `cost`
    /// (`sweep.cost_aware`).
    #[must_use]
    pub fn with_cost(mut self, cost: CostModel) -> Self {
        self.cost = Some(cost);
        self
    }

    /// The trials suggested so far, in order.
    pub fn trials(&self) -> impl Iterator<Item = (&str, &Point)> {
        self.lines
            .iter()
            .filter_map(|l| l.trial.as_deref().map(|t| (t, &l.params)))
    }

    fn observe(&mut self, trial: &str, value: f64) {
        if value.is_nan() {
            return;
        }
        let value = if self.higher_is_better { -value } else { value };
        let best = self.best.entry(trial.to_owned()).or_insert(value);
        *best = best.min(value);
    }

    /// An evaluation of a trial of this sweep.
    pub fn on_eval(&mut self, trial: &str, metrics: &BTreeMap<String, f64>) {
        if let Some(&value) = metrics.get(&self.metric) {
            self.observe(trial, value);
        }
    }

    /// Whether every trial of the budget has been suggested.
    pub fn exhausted(&self) -> bool {
        self.trials().count() >= self.samples
    }

    /// The next trial: `Ok(None)` when the budget is spent or a finite
    /// space has no untried point left.
    pub fn next_trial(&mut self) -> Result<Option<Suggested>, SuggestError> {
        // A repeat is recorded and drawn again; a space of few points
        // stops when every point was tried.
        for _ in 0..64 {
            if self.exhausted() {
                return Ok(None);
            }
            let Some(point) = self.suggest() else {
                return Ok(None);
            };
            if self.trials().any(|(_, p)| Space::same(p, &point)) {
                self.append(SuggestionLine {
                    trial: None,
                    params: point,
                })?;
                continue;
            }
            let suggested = (self.materialize)(&point).map_err(|reason| SuggestError::Trial {
                params: serde_json::Value::from(serde_json::Map::from_iter(point.clone()))
                    .to_string(),
                reason,
            })?;
            // Other values, the same trial (an axis that changes nothing):
            // a repeat too, or a resumed sweep would list the trial twice.
            let id = suggested.info.id.clone();
            if self.trials().any(|(t, _)| t == id) {
                self.append(SuggestionLine {
                    trial: None,
                    params: point,
                })?;
                continue;
            }
            self.append(SuggestionLine {
                trial: Some(id),
                params: point,
            })?;
            return Ok(Some(suggested));
        }
        Ok(None)
    }

    fn suggest(&self) -> Option<Point> {
        let mut observed = Vec::new();
        let mut pending = Vec::new();
        for (trial, point) in self.trials() {
            match self.best.get(trial) {
                Some(&value) => observed.push(Observation {
                    point: point.clone(),
                    value,
                }),
                None => pending.push(point.clone()),
            }
        }
        let open = self.open_points();
        self.tpe.suggest(&Request {
            launched: self.lines.len(),
            observed: &observed,
            pending: &pending,
            open: open.as_deref(),
            cost: self.cost.as_deref().map(|c| c as &dyn Fn(&Point) -> f64),
        })
    }

    /// A space of lists only: its points not suggested yet.
    fn open_points(&self) -> Option<Vec<Point>> {
        let space = self.tpe.space();
        if !space.is_finite() {
            return None;
        }
        let mut points: Vec<Point> = vec![Point::new()];
        for (key, dim) in &space.dims {
            let values = dim.values()?;
            points = points
                .into_iter()
                .flat_map(|p| {
                    values.iter().map(move |v| {
                        let mut q = p.clone();
                        q.insert(key.clone(), v.clone());
                        q
                    })
                })
                .collect();
        }
        // Repeats count as tried: their point made a trial already.
        points.retain(|p| !self.lines.iter().any(|l| Space::same(p, &l.params)));
        Some(points)
    }

    /// Appends `line` to the record, synced: it is written before its
    /// trial is queued, so a crash never loses a suggestion that ran.
    fn append(&mut self, line: SuggestionLine) -> Result<(), SuggestError> {
        let record = |source| SuggestError::Record {
            path: self.record.clone(),
            source,
        };
        let text = serde_json::to_string(&line).map_err(|e| record(std::io::Error::other(e)))?;
        jsonl::open_append(&self.record)
            .and_then(|(mut file, _)| {
                jsonl::append_line(&mut file, &text)?;
                file.sync_data()
            })
            .map_err(record)?;
        self.lines.push(line);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use serde_json::json;

    use super::*;
    use crate::search::tpe::TpeConfig;
    use crate::spec::schema::Axis;

    /// TPE over one list axis `k` of `ks`;
    /// `id` names the trial a point makes.
    fn suggestions(
        record: PathBuf,
        ks: Vec<serde_json::Value>,
        history: &[RecordedEval],
        id: fn(&Point) -> String,
    ) -> Suggestions {
        let mut axes = BTreeMap::new();
        axes.insert("k".to_owned(), Axis::Values(ks));
        let tpe = Tpe::new(Space::from_axes(&axes).unwrap(), TpeConfig::default(), 7).unwrap();
        let materialize: Materialize = Box::new(move |point: &Point| {
            Ok(Suggested {
                info: TrialInfo {
                    id: id(point),
                    params: point.clone(),
                    config: String::new(),
                    dir: String::new(),
                    est_memory_bytes: 0,
                    batch_size: 1,
                    grad_accum: 1,
                    rel_cost: 1.0,
                },
                queued: None,
            })
        });
        Suggestions::new(tpe, 4, "val/loss", record, history, materialize).unwrap()
    }

    fn by_value(point: &Point) -> String {
        format!("t{}", point["k"])
    }

    #[test]
    fn a_finite_space_is_suggested_once_each_and_read_back_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let record = dir.path().join("suggestions.jsonl");
        let ks = vec![json!(1), json!(2), json!(3)];
        let mut first = suggestions(record.clone(), ks.clone(), &[], by_value);
        let mut ids = Vec::new();
        while let Some(s) = first.next_trial().unwrap() {
            ids.push(s.info.id);
        }
        let mut sorted = ids.clone();
        sorted.sort();
        assert_eq!(sorted, ["t1", "t2", "t3"], "each point once, then none");
        let again = suggestions(record, ks, &[], by_value);
        let read: Vec<&str> = again.trials().map(|(t, _)| t).collect();
        assert_eq!(read, ids, "the record keeps the order");
        assert!(!again.exhausted(), "3 of 4 samples");
    }

    #[test]
    fn other_values_that_make_the_same_trial_are_recorded_as_repeats() {
        let dir = tempfile::tempdir().unwrap();
        let record = dir.path().join("suggestions.jsonl");
        let mut s = suggestions(record, vec![json!(1), json!(2)], &[], |_| "same".into());
        assert_eq!(s.next_trial().unwrap().unwrap().info.id, "same");
        assert!(
            s.next_trial().unwrap().is_none(),
            "the other point is the same trial"
        );
        assert_eq!(s.trials().count(), 1);
        assert_eq!(s.lines.len(), 2, "the repeat is recorded");
    }
}

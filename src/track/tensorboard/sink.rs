//! The TensorBoard consumer of the sweep's event stream.
//!
//! Under `<results>/<sweep>/tb/`: one run per trial (`<trial-id>/`) with
//! every metric of its step and eval events as a scalar at the event's step
//! and time (a new file per attempt), its session start (the trial's varying
//! parameters) from its first attempt on and its session end (the status)
//! once it ends; and in `tb/` itself the experiment summary (every axis with
//! the values the trials take, and the metrics), written when the sweep ends
//! or the sink closes.
//!
//! A trial's score is `best/<eval.select>`: the selection metric's value at
//! each step where the worker kept a new best checkpoint, so the `HParams`
//! table (which shows each tag's last value) shows the best, as the store
//! and the report rank trials; the metric's own tag shows its last value.
//!
//! TensorBoard keeps the first summary it reads under a tag in a run, so the
//! hparams files are rewritten rather than appended to: a resumed trial's
//! start keeps its first start time, its stale end is removed until it ends
//! again, and the experiment carries forward the metrics an earlier run saw.
//! Steps a resumed trial writes again are shown with their latest values.
//! A TensorBoard left running across a resume keeps the statuses it had
//! read (that first-summary rule again) until it is restarted.

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::path::{Path, PathBuf};

use super::files::{self, EventFile};
use super::hparams::{
    Experiment, HParamInfo, HParamValue, MetricInfo, PluginData, SessionEnd, SessionStart, Status,
};
use super::read;
use super::summary::Event;
use crate::events::event::{EventSink, SinkError, SweepEvent, TrialStatus, now};
use crate::layout::ResultsRoot;
use crate::worker::protocol::{Envelope, WorkerEvent};

const NAME: &str = "tensorboard";

/// Writes a sweep's TensorBoard logs from its events. It learns where from
/// the `SweepStarted` event (`<results>/<sweep>/tb/`), so it needs nothing
/// to start.
#[derive(Default)]
pub struct TensorBoardSink {
    sweep: Option<Sweep>,
    trials: BTreeMap<String, Trial>,
    /// The scalar tags written (and those an earlier run's experiment had).
    metrics: BTreeSet<String>,
    /// Whether the experiment summary on disk is out of date.
    experiment_stale: bool,
    /// Each trial's hyperparameters for its session start, built from the
    /// columns once per change of the grid (not once per session start,
    /// which is quadratic in the trials).
    session_hparams: Option<BTreeMap<String, BTreeMap<String, HParamValue>>>,
}

struct Sweep {
    name: String,
    /// `<results>/<sweep>/tb`.
    tb: PathBuf,
    axes: Vec<String>,
    select_metric: String,
    time: f64,
}

#[derive(Default)]
struct Trial {
    params: BTreeMap<String, serde_json::Value>,
    /// Whether this sink has written the trial's session start.
    started: bool,
    /// Whether this sink has ended the trial's session (since it started).
    ended: bool,
    /// The open scalar file and the attempt it is for.
    scalars: Option<(u32, EventFile)>,
    /// The selection metric's latest validation value and its step: what a
    /// `checkpoint` event with `best` at that step made the best.
    last_select: Option<(u64, f64)>,
}

/// The tag of a trial's score: the best value of `eval.select` so far, the
/// one its `best/` checkpoint has (what the store's `best_metric`, `show`,
/// `status` and the report give). The `HParams` table shows it first; the
/// selection metric's own tag keeps its last value.
pub fn best_tag(select_metric: &str) -> String {
    format!("best/{select_metric}")
}

impl TensorBoardSink {
    pub fn new() -> Self {
        TensorBoardSink::default()
    }

    /// The sweep's `tb/` folder, once a `SweepStarted` event has said it.
    pub fn tb_dir(&self) -> Option<&Path> {
        self.sweep.as_ref().map(|s| s.tb.as_path())
    }

    fn sweep(&self) -> Result<&Sweep, SinkError> {
        self.sweep
            .as_ref()
            .ok_or_else(|| error("a trial event came before sweep_started".to_owned()))
    }

    fn run_dir(&self, trial: &str) -> Result<PathBuf, SinkError> {
        if trial.is_empty() || trial.contains(['/', '\\']) || trial.starts_with('.') {
            return Err(error(format!("{trial:?} is not a trial id")));
        }
        Ok(self.sweep()?.tb.join(trial))
    }

    fn event(&mut self, event: &SweepEvent) -> Result<(), SinkError> {
        match event {
            SweepEvent::SweepStarted { sweep, time, .. } => {
                let tb = ResultsRoot::new(&sweep.results)
                    .sweep(&sweep.name)
                    .tensorboard();
                if self.tb_dir().is_some_and(|old| old != tb) {
                    // Another sweep through the same sink: finish the first.
                    self.close()?;
                    *self = TensorBoardSink::new();
                }
                self.close_files()?;
                let mut time = *time;
                // A resumed sweep: keep what the previous run's experiment had.
                if let Ok(events) = read::read_events(&files::experiment_path(&tb))
                    && let Ok(data) = read::hparams(&events)
                {
                    for d in data {
                        if let PluginData::Experiment(e) = d {
                            time = e.time_created_secs;
                            self.metrics.extend(e.metrics.into_iter().map(|m| m.tag));
                        }
                    }
                }
                self.sweep = Some(Sweep {
                    name: sweep.name.clone(),
                    tb,
                    axes: sweep.axes.clone(),
                    select_metric: sweep.select_metric.clone(),
                    time,
                });
                self.experiment_stale = true;
                self.session_hparams = None;
            }
            SweepEvent::TrialRecorded { trial, .. } => {
                self.trials.entry(trial.id.clone()).or_default().params = trial.params.clone();
                self.experiment_stale = true;
                self.session_hparams = None;
            }
            SweepEvent::AttemptStarted {
                trial,
                attempt,
                time,
                ..
            } => {
                self.close_scalars(trial)?;
                // A new attempt of a trial this sink saw end restarts its session.
                if self.trials.get(trial).is_some_and(|t| t.ended) {
                    self.start_session(trial, *time)?;
                }
                self.scalars(trial, *attempt, *time)?;
            }
            SweepEvent::Worker {
                trial,
                attempt,
                line,
            } => self.worker(trial, *attempt, line)?,
            SweepEvent::AttemptEnded { trial, attempt, .. } => {
                if self
                    .trials
                    .get(trial)
                    .and_then(|t| t.scalars.as_ref())
                    .is_some_and(|(a, _)| a == attempt)
                {
                    self.close_scalars(trial)?;
                }
            }
            SweepEvent::TrialEnded {
                trial,
                status,
                time,
                ..
            } => self.trial_ended(trial, *status, *time)?,
            SweepEvent::SweepEnded { .. } => {
                self.flush()?;
                self.write_experiment()?;
            }
            SweepEvent::Artifact { .. } => {}
        }
        Ok(())
    }

    fn worker(&mut self, trial: &str, attempt: u32, line: &Envelope) -> Result<(), SinkError> {
        let (step, metrics) = match &line.event {
            WorkerEvent::Step { step, metrics, .. } => (*step, metrics),
            WorkerEvent::Eval { step, metrics, .. } => {
                let select = self.sweep()?.select_metric.clone();
                if let Some(value) = metrics.get(&select) {
                    self.trials.entry(trial.to_owned()).or_default().last_select =
                        Some((*step, *value));
                }
                (*step, metrics)
            }
            WorkerEvent::Checkpoint {
                step, best: true, ..
            } => return self.best(trial, attempt, *step, line.time),
            _ => return Ok(()),
        };
        if metrics.is_empty() {
            return Ok(());
        }
        let step = i64::try_from(step).unwrap_or(i64::MAX);
        let event = Event::scalars(
            line.time,
            step,
            metrics.iter().map(|(k, v)| (k.as_str(), *v)),
        );
        let file = self.scalars(trial, attempt, line.time)?;
        file.write(&event).map_err(|e| io_error(file.path(), &e))?;
        for tag in metrics.keys() {
            if !self.metrics.contains(tag) {
                self.metrics.insert(tag.clone());
                self.experiment_stale = true;
            }
        }
        Ok(())
    }

    /// Writes the trial's score at `step`, where its worker kept a new best
    /// checkpoint.
    fn best(&mut self, trial: &str, attempt: u32, step: u64, time: f64) -> Result<(), SinkError> {
        let Some((at, value)) = self.trials.get(trial).and_then(|t| t.last_select) else {
            return Ok(());
        };
        if at != step {
            return Ok(());
        }
        let tag = best_tag(&self.sweep()?.select_metric);
        let event = Event::scalars(
            time,
            i64::try_from(step).unwrap_or(i64::MAX),
            [(tag.as_str(), value)],
        );
        let file = self.scalars(trial, attempt, time)?;
        file.write(&event).map_err(|e| io_error(file.path(), &e))?;
        if self.metrics.insert(tag) {
            self.experiment_stale = true;
        }
        Ok(())
    }

    /// The trial's scalar file for `attempt`, opened (after the session
    /// start, the first time) when it is not.
    fn scalars(
        &mut self,
        trial: &str,
        attempt: u32,
        time: f64,
    ) -> Result<&mut EventFile, SinkError> {
        let run = self.run_dir(trial)?;
        if !self.trials.get(trial).is_some_and(|t| t.started) {
            self.start_session(trial, time)?;
        }
        let state = self.trials.entry(trial.to_owned()).or_default();
        if state.scalars.as_ref().is_none_or(|(a, _)| *a != attempt) {
            if let Some((_, mut old)) = state.scalars.take() {
                old.flush().map_err(|e| io_error(old.path(), &e))?;
            }
            let file = EventFile::create(&run, time).map_err(|e| io_error(&run, &e))?;
            state.scalars = Some((attempt, file));
        }
        Ok(&mut state.scalars.as_mut().expect("opened above").1)
    }

    /// Writes the trial's session start (keeping the start time of an
    /// earlier run's) and removes a session end an earlier run left.
    fn start_session(&mut self, trial: &str, time: f64) -> Result<(), SinkError> {
        let run = self.run_dir(trial)?;
        let start_path = files::session_start_path(&run);
        let start_time_secs = read::read_events(&start_path)
            .ok()
            .and_then(|events| read::hparams(&events).ok())
            .and_then(|data| {
                data.into_iter().find_map(|d| match d {
                    PluginData::SessionStart(s) => Some(s.start_time_secs),
                    _ => None,
                })
            })
            .unwrap_or(time);
        let hparams = self.session_hparams(trial);
        let start = PluginData::SessionStart(SessionStart {
            hparams,
            group_name: trial.to_owned(),
            start_time_secs,
        });
        files::replace(&start_path, time, &[start.event(time)])
            .map_err(|e| io_error(&start_path, &e))?;
        let end_path = files::session_end_path(&run);
        files::remove(&end_path).map_err(|e| io_error(&end_path, &e))?;
        let state = self.trials.entry(trial.to_owned()).or_default();
        state.started = true;
        state.ended = false;
        Ok(())
    }

    fn trial_ended(
        &mut self,
        trial: &str,
        status: TrialStatus,
        time: f64,
    ) -> Result<(), SinkError> {
        self.close_scalars(trial)?;
        let run = self.run_dir(trial)?;
        self.trials.entry(trial.to_owned()).or_default().ended = true;
        // A trial that never ran has no session to end.
        if !files::session_start_path(&run).is_file() {
            return Ok(());
        }
        let status = match status {
            // Pruning is the sweep's own early stop, not a failure.
            TrialStatus::Finished | TrialStatus::Pruned => Status::Success,
            TrialStatus::Failed => Status::Failure,
            TrialStatus::Queued | TrialStatus::Running => Status::Running,
            // Resumes on the next run, or (paused at an ASHA rung) when
            // promoted: either restart removes this end.
            TrialStatus::Interrupted | TrialStatus::Paused => Status::Unknown,
        };
        let end = PluginData::SessionEnd(SessionEnd {
            status,
            end_time_secs: time,
        });
        let path = files::session_end_path(&run);
        files::replace(&path, time, &[end.event(time)]).map_err(|e| io_error(&path, &e))
    }

    /// `trial`'s value of each hyperparameter (see [`Self::hparam_columns`]).
    fn session_hparams(&mut self, trial: &str) -> BTreeMap<String, HParamValue> {
        if self.session_hparams.is_none() {
            let mut by_trial: BTreeMap<String, BTreeMap<String, HParamValue>> = BTreeMap::new();
            for (name, column) in self.hparam_columns() {
                for (id, value) in column {
                    by_trial.entry(id).or_default().insert(name.clone(), value);
                }
            }
            self.session_hparams = Some(by_trial);
        }
        self.session_hparams
            .as_ref()
            .and_then(|by_trial| by_trial.get(trial).cloned())
            .unwrap_or_default()
    }

    /// Each hyperparameter (the sweep's axes in spec order, then any other
    /// key a trial has) with the trials' values, of one type per column.
    fn hparam_columns(&self) -> Vec<(String, Vec<(String, HParamValue)>)> {
        let mut names: Vec<String> = self
            .sweep
            .as_ref()
            .map(|s| s.axes.clone())
            .unwrap_or_default();
        let others: BTreeSet<&String> = self
            .trials
            .values()
            .flat_map(|t| t.params.keys())
            .filter(|k| !names.contains(k))
            .collect();
        names.extend(others.into_iter().cloned());
        names
            .into_iter()
            .filter_map(|name| {
                let (ids, values): (Vec<&String>, Vec<&serde_json::Value>) = self
                    .trials
                    .iter()
                    .filter_map(|(id, t)| t.params.get(&name).map(|v| (id, v)))
                    .unzip();
                if ids.is_empty() {
                    return None;
                }
                let column = ids
                    .into_iter()
                    .cloned()
                    .zip(HParamValue::column(&values))
                    .collect();
                Some((name, column))
            })
            .collect()
    }

    /// Writes the experiment summary: every hyperparameter with the values
    /// the trials take, and the metrics (the selection metric first, then
    /// validation, test, training and performance metrics by name).
    fn write_experiment(&mut self) -> Result<(), SinkError> {
        let Some(sweep) = &self.sweep else {
            return Ok(());
        };
        let hparams = self
            .hparam_columns()
            .into_iter()
            .map(|(name, column)| {
                let values: Vec<HParamValue> = column.into_iter().map(|(_, v)| v).collect();
                HParamInfo::from_values(&name, &values)
            })
            .collect();
        let best = best_tag(&sweep.select_metric);
        let mut tags: Vec<&String> = self
            .metrics
            .iter()
            .filter(|t| **t != sweep.select_metric && **t != best)
            .collect();
        tags.sort_by_key(|t| {
            let rank = ["val/", "test/", "train/", "perf/"]
                .iter()
                .position(|p| t.starts_with(p))
                .unwrap_or(4);
            (rank, t.as_str())
        });
        let metrics = [&best, &sweep.select_metric]
            .into_iter()
            .filter(|t| !sweep.select_metric.is_empty() && !t.is_empty())
            .chain(tags)
            .map(|t| MetricInfo::for_tag(t))
            .collect();
        let experiment = PluginData::Experiment(Experiment {
            name: sweep.name.clone(),
            description: format!(
                "palisweep sweep {}, selected by {}",
                sweep.name, sweep.select_metric
            ),
            time_created_secs: sweep.time,
            hparams,
            metrics,
        });
        let path = files::experiment_path(&sweep.tb);
        let time = now();
        files::replace(&path, time, &[experiment.event(time)]).map_err(|e| io_error(&path, &e))?;
        self.experiment_stale = false;
        Ok(())
    }

    fn close_scalars(&mut self, trial: &str) -> Result<(), SinkError> {
        if let Some((_, mut file)) = self.trials.get_mut(trial).and_then(|t| t.scalars.take()) {
            file.flush().map_err(|e| io_error(file.path(), &e))?;
        }
        Ok(())
    }

    fn close_files(&mut self) -> Result<(), SinkError> {
        let ids: Vec<String> = self.trials.keys().cloned().collect();
        for id in ids {
            self.close_scalars(&id)?;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<(), SinkError> {
        for (_, file) in self.trials.values_mut().filter_map(|t| t.scalars.as_mut()) {
            file.flush().map_err(|e| io_error(file.path(), &e))?;
        }
        Ok(())
    }
}

impl EventSink for TensorBoardSink {
    fn name(&self) -> &'static str {
        NAME
    }

    /// Writes the batch and flushes, so TensorBoard sees each batch.
    fn handle(&mut self, events: &[SweepEvent]) -> Result<(), SinkError> {
        for event in events {
            self.event(event)?;
        }
        self.flush()
    }

    fn close(&mut self) -> Result<(), SinkError> {
        self.close_files()?;
        if self.experiment_stale {
            self.write_experiment()?;
        }
        Ok(())
    }
}

fn error(message: String) -> SinkError {
    SinkError {
        sink: NAME,
        message,
    }
}

fn io_error(path: &Path, e: &io::Error) -> SinkError {
    error(format!("{}: {e}", path.display()))
}

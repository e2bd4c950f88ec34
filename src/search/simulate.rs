//! The replay simulator: run a search strategy over a finished sweep's
//! recorded learning curves, in simulated time, without training.
//!
//! `workers` trials train at once. A job trains one trial from where it
//! stopped to a target step (the end, the next evaluation, the next rung)
//! and takes (target − start) × the trial's recorded seconds per step; the
//! job ending first (ties: the lower worker) is decided on next, and free
//! workers take work in this order: trials to resume (a trial that goes on,
//! then promotions), else a new trial from the strategy. Compute is the sum
//! of simulated seconds trained over workers, so a replay of the whole grid
//! spends exactly the grid's compute.
//!
//! A trial counts as *complete* once trained to its last recorded step; its
//! value is its selection value, the best evaluation of its curve (what its
//! `best/` checkpoint holds and the report ranks by). The strategy's pick at
//! any moment is the complete trial with the best selection value so far
//! (the earlier on ties): trials stopped early are never picked. The trace
//! records, at every job's end, the compute spent (jobs still running
//! counted up to that moment) and the pick.

use std::collections::{BTreeSet, VecDeque};

use serde::Serialize;

use super::asha::{Asha, AshaError, Decision, Rungs};
use super::hyperband::Hyperband;
use super::median::MedianRule;
use super::record::{RecordError, Recorded};
use super::space::{Point, Space, SpaceError};
use super::tpe::{Observation, Request, Tpe, TpeConfig, TpeError, model_rung};
use crate::rng::SplitMix64;

/// Keeps the order of new trials apart from the other users of the seed.
const ORDER_SALT: u64 = 0x0DE2_5EED_0000_0001;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Strategy {
    /// Every trial, in recorded order, to the end (the reference).
    Grid,
    /// Trials in a seeded random order, each to the end.
    Random,
    /// Random order; the median rule at each evaluation.
    Median,
    /// Random order; asynchronous successive halving.
    Asha,
    /// Random order; brackets of ASHA.
    Hyperband,
    /// TPE suggestions, each to the end.
    Tpe,
    /// TPE suggestions under ASHA, the model fit on the highest rung with
    /// enough results (BOHB-like).
    #[serde(rename = "tpe+asha")]
    TpeAsha,
}

impl Strategy {
    pub const ALL: [Strategy; 7] = [
        Strategy::Grid,
        Strategy::Random,
        Strategy::Median,
        Strategy::Asha,
        Strategy::Hyperband,
        Strategy::Tpe,
        Strategy::TpeAsha,
    ];

    /// Every name, as `--strategies` takes them.
    pub const NAMES: [&'static str; 7] = [
        "grid",
        "random",
        "median",
        "asha",
        "hyperband",
        "tpe",
        "tpe+asha",
    ];

    pub fn name(self) -> &'static str {
        match self {
            Strategy::Grid => "grid",
            Strategy::Random => "random",
            Strategy::Median => "median",
            Strategy::Asha => "asha",
            Strategy::Hyperband => "hyperband",
            Strategy::Tpe => "tpe",
            Strategy::TpeAsha => "tpe+asha",
        }
    }

    pub fn parse(text: &str) -> Option<Strategy> {
        Strategy::ALL.into_iter().find(|s| s.name() == text)
    }
}

#[derive(Clone, Debug)]
pub struct Settings {
    /// Trials trained at once.
    pub workers: usize,
    /// ASHA's and Hyperband's reduction factor η.
    pub eta: u32,
    /// The least steps of ASHA's first rung (Hyperband's most aggressive
    /// bracket); rungs are laid from the last step down by η (see
    /// [`Rungs`]). Default: the first evaluation, so with 72 steps
    /// evaluated every 4 the rungs are 8, 24, 72.
    pub min_resource: Option<u64>,
    /// The median rule's `sweep.early_stop_min_trials` and `_warmup`.
    pub median_min_trials: u32,
    pub median_warmup: u32,
    pub tpe: TpeConfig,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            workers: 4,
            eta: 3,
            min_resource: None,
            median_min_trials: 3,
            median_warmup: 1,
            tpe: TpeConfig::default(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SimulateError {
    #[error("the simulator needs at least one worker")]
    NoWorkers,
    #[error("--min-resource {min} is above the last step {max}")]
    MinResource { min: u64, max: u64 },
    #[error(transparent)]
    Record(#[from] RecordError),
    #[error(transparent)]
    Asha(#[from] AshaError),
    #[error(transparent)]
    Space(#[from] SpaceError),
    #[error(transparent)]
    Tpe(#[from] TpeError),
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TracePoint {
    /// Device-seconds trained so far.
    pub compute_s: f64,
    /// Simulated wall time.
    pub time_s: f64,
    /// The pick: index into the recorded trials and its selection value
    /// (metric units); none until a trial completes.
    pub pick: Option<(usize, f64)>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Replay {
    pub trace: Vec<TracePoint>,
    pub compute_s: f64,
    pub time_s: f64,
    pub launched: usize,
    pub completed: usize,
    /// The pick at the end.
    pub pick: Option<(usize, f64)>,
}

impl Replay {
    /// The pick when `compute_s` had been spent (the last trace point at or
    /// below it).
    pub fn pick_at(&self, compute_s: f64) -> Option<(usize, f64)> {
        self.trace
            .iter()
            .take_while(|p| p.compute_s <= compute_s * (1.0 + 1e-12))
            .last()
            .and_then(|p| p.pick)
    }
}

/// Replays `recorded` under `strategy`; `seed` drives the order of new
/// trials and TPE's draws.
pub fn replay(
    recorded: &Recorded,
    strategy: Strategy,
    settings: &Settings,
    seed: u64,
) -> Result<Replay, SimulateError> {
    recorded.validate()?;
    if settings.workers == 0 {
        return Err(SimulateError::NoWorkers);
    }
    Engine::new(recorded, strategy, settings, seed)?.run()
}

/// The default first rung (see [`Settings::min_resource`]): the first
/// evaluation.
pub fn default_min_resource(recorded: &Recorded) -> u64 {
    recorded
        .trials
        .iter()
        .filter_map(|t| t.curve.first().map(|(s, _)| *s))
        .min()
        .unwrap_or(1)
}

fn max_step(recorded: &Recorded) -> u64 {
    recorded
        .trials
        .iter()
        .map(super::record::RecordedTrial::last_step)
        .max()
        .unwrap_or(0)
}

/// Training to do: a trial, the step to train it to, and for the
/// multi-fidelity strategies the (bracket, rung) that step stands for.
#[derive(Clone, Copy)]
struct Work {
    trial: usize,
    to: u64,
    rung: Option<(usize, usize)>,
}

/// Work on a worker, in simulated seconds.
struct Job {
    work: Work,
    start: f64,
    end: f64,
}

/// Where new trials come from.
enum Source {
    Order(VecDeque<usize>),
    Tpe(Box<Tpe>),
}

struct Engine<'a> {
    recorded: &'a Recorded,
    strategy: Strategy,
    workers: usize,
    /// Per trial: (step, value as "lower is better").
    curves: Vec<Vec<(u64, f64)>>,
    /// Per trial: the best of its curve (lower is better).
    selection: Vec<f64>,
    source: Source,
    /// Trials in launch order; per trial, whether it was launched and the
    /// steps it has trained.
    launched: Vec<usize>,
    tried: Vec<bool>,
    progress: Vec<u64>,
    /// Trials to resume, served before new ones: one that goes on at the
    /// front, promotions at the back.
    ready: VecDeque<Work>,
    ashas: Vec<Asha<usize>>,
    hyperband: Option<Hyperband>,
    median: MedianRule<usize>,
    in_flight: BTreeSet<usize>,
    complete: Vec<bool>,
    /// tpe+asha: per rung, (trial, value) in arrival order.
    rung_results: Vec<Vec<(usize, f64)>>,
    pick: Option<usize>,
    /// tpe+asha fits its model on a rung once it holds this many results.
    min_model: usize,
}

impl<'a> Engine<'a> {
    fn new(
        recorded: &'a Recorded,
        strategy: Strategy,
        settings: &Settings,
        seed: u64,
    ) -> Result<Self, SimulateError> {
        let n = recorded.trials.len();
        let curves: Vec<Vec<(u64, f64)>> = recorded
            .trials
            .iter()
            .map(|t| {
                t.curve
                    .iter()
                    .map(|&(s, v)| (s, recorded.loss(v)))
                    .collect()
            })
            .collect();
        let selection = curves
            .iter()
            .map(|c| c.iter().map(|(_, v)| *v).fold(f64::INFINITY, f64::min))
            .collect();
        let max = max_step(recorded);
        let min = settings
            .min_resource
            .unwrap_or_else(|| default_min_resource(recorded));
        if min > max {
            return Err(SimulateError::MinResource { min, max });
        }
        let points: Vec<Point> = recorded.trials.iter().map(|t| t.params.clone()).collect();
        let space = Space::from_points(&points)?;
        let dims = space.dims.len();
        let source = match strategy {
            Strategy::Grid => Source::Order((0..n).collect()),
            Strategy::Tpe | Strategy::TpeAsha => {
                Source::Tpe(Box::new(Tpe::new(space, settings.tpe, seed)?))
            }
            _ => {
                let mut order: Vec<usize> = (0..n).collect();
                let mut rng = SplitMix64::new(seed ^ ORDER_SALT);
                // Fisher–Yates.
                for i in (1..n).rev() {
                    order.swap(i, rng.below(i + 1));
                }
                Source::Order(order.into())
            }
        };
        let (ashas, hyperband) = match strategy {
            Strategy::Asha | Strategy::TpeAsha => {
                (vec![Asha::new(Rungs::new(min, max, settings.eta)?)], None)
            }
            Strategy::Hyperband => {
                let hb = Hyperband::new(min, max, settings.eta)?;
                let ashas = (0..hb.brackets().len())
                    .map(|b| Asha::new(hb.rungs(b)))
                    .collect();
                (ashas, Some(hb))
            }
            _ => (Vec::new(), None),
        };
        let rungs = ashas.first().map_or(0, |a| a.rungs().resources().len());
        Ok(Engine {
            recorded,
            strategy,
            workers: settings.workers,
            curves,
            selection,
            source,
            launched: Vec::new(),
            tried: vec![false; n],
            progress: vec![0; n],
            ready: VecDeque::new(),
            ashas,
            hyperband,
            median: MedianRule::new(settings.median_min_trials, settings.median_warmup),
            in_flight: BTreeSet::new(),
            complete: vec![false; n],
            rung_results: vec![Vec::new(); rungs],
            pick: None,
            min_model: settings.tpe.startup.max(dims + 1),
        })
    }

    fn run(mut self) -> Result<Replay, SimulateError> {
        let mut workers: Vec<Option<Job>> = (0..self.workers).map(|_| None).collect();
        let mut now = 0.0;
        let mut spent = 0.0;
        let mut trace = Vec::new();
        loop {
            for slot in &mut workers {
                if slot.is_none()
                    && let Some(work) = self.next_job()?
                {
                    let steps = work.to - self.progress[work.trial];
                    let seconds = steps as f64 * self.recorded.trials[work.trial].seconds_per_step;
                    self.in_flight.insert(work.trial);
                    *slot = Some(Job {
                        work,
                        start: now,
                        end: now + seconds,
                    });
                }
            }
            let Some(slot) =
                (0..workers.len())
                    .filter(|&w| workers[w].is_some())
                    .min_by(|&a, &b| {
                        let end = |w: usize| workers[w].as_ref().map_or(f64::INFINITY, |j| j.end);
                        end(a).total_cmp(&end(b))
                    })
            else {
                break;
            };
            let job = workers[slot].take().expect("chosen among busy workers");
            now = job.end;
            spent += job.end - job.start;
            self.in_flight.remove(&job.work.trial);
            self.progress[job.work.trial] = job.work.to;
            self.finish(job.work)?;
            let running: f64 = workers.iter().flatten().map(|j| now - j.start).sum();
            trace.push(TracePoint {
                compute_s: spent + running,
                time_s: now,
                pick: self.pick_value(),
            });
        }
        Ok(Replay {
            compute_s: spent,
            time_s: now,
            launched: self.launched.len(),
            completed: self.complete.iter().filter(|c| **c).count(),
            pick: self.pick_value(),
            trace,
        })
    }

    fn pick_value(&self) -> Option<(usize, f64)> {
        self.pick
            .map(|t| (t, self.recorded.loss(self.selection[t])))
    }

    /// The step where a trial meets `resource`: its first evaluation at or
    /// after it, else its last.
    fn step_for(&self, trial: usize, resource: u64) -> u64 {
        let curve = &self.curves[trial];
        curve
            .iter()
            .find(|(s, _)| *s >= resource)
            .or(curve.last())
            .map_or(0, |(s, _)| *s)
    }

    fn value_at(&self, trial: usize, step: u64) -> f64 {
        self.curves[trial]
            .iter()
            .find(|(s, _)| *s == step)
            .map_or(f64::NAN, |(_, v)| *v)
    }

    fn last_step(&self, trial: usize) -> u64 {
        self.curves[trial].last().map_or(0, |(s, _)| *s)
    }

    fn rung_step(&self, trial: usize, bracket: usize, rung: usize) -> u64 {
        self.step_for(trial, self.ashas[bracket].rungs().resources()[rung])
    }

    /// The next job for a free worker.
    fn next_job(&mut self) -> Result<Option<Work>, SimulateError> {
        if let Some(work) = self.ready.pop_front() {
            return Ok(Some(work));
        }
        let Some(trial) = self.new_trial() else {
            return Ok(None);
        };
        self.launched.push(trial);
        self.tried[trial] = true;
        let (to, rung) = match self.strategy {
            Strategy::Grid | Strategy::Random | Strategy::Tpe => (self.last_step(trial), None),
            Strategy::Median => (self.curves[trial][0].0, None),
            Strategy::Asha | Strategy::TpeAsha | Strategy::Hyperband => {
                let bracket = self.hyperband.as_mut().map_or(0, Hyperband::assign);
                self.ashas[bracket].start(trial)?;
                (self.rung_step(trial, bracket, 0), Some((bracket, 0)))
            }
        };
        Ok(Some(Work { trial, to, rung }))
    }

    fn new_trial(&mut self) -> Option<usize> {
        if let Source::Order(order) = &mut self.source {
            return order.pop_front();
        }
        let open_index: Vec<usize> = (0..self.tried.len()).filter(|&t| !self.tried[t]).collect();
        let open: Vec<Point> = open_index
            .iter()
            .map(|&t| self.recorded.trials[t].params.clone())
            .collect();
        let (observed, pending) = if self.strategy == Strategy::TpeAsha {
            self.rung_history()
        } else {
            let observed = self
                .launched
                .iter()
                .filter(|&&t| self.complete[t])
                .map(|&t| self.observation(t, self.selection[t]))
                .collect();
            let pending = self
                .launched
                .iter()
                .filter(|&&t| !self.complete[t])
                .map(|&t| self.recorded.trials[t].params.clone())
                .collect();
            (observed, pending)
        };
        let Source::Tpe(tpe) = &self.source else {
            return None;
        };
        let request = Request {
            launched: self.launched.len(),
            observed: &observed,
            pending: &pending,
            open: Some(&open),
            cost: None,
        };
        let point = tpe.suggest(&request)?;
        open.iter()
            .position(|p| Space::same(p, &point))
            .map(|i| open_index[i])
    }

    fn observation(&self, trial: usize, value: f64) -> Observation {
        Observation {
            point: self.recorded.trials[trial].params.clone(),
            value,
        }
    }

    /// tpe+asha's model data: results at the highest rung with enough of
    /// them (in launch order), and as pending the trials still training
    /// towards it.
    fn rung_history(&self) -> (Vec<Observation>, Vec<Point>) {
        let counts: Vec<usize> = self.rung_results.iter().map(Vec::len).collect();
        let rung = model_rung(&counts, self.min_model);
        let results = &self.rung_results[rung];
        let value = |t: usize| results.iter().find(|(r, _)| *r == t).map(|(_, v)| *v);
        let mut observed = Vec::new();
        let mut pending = Vec::new();
        for &t in &self.launched {
            match value(t) {
                Some(v) => observed.push(self.observation(t, v)),
                None if self.active(t) => pending.push(self.recorded.trials[t].params.clone()),
                None => {}
            }
        }
        (observed, pending)
    }

    /// Training now or waiting to resume.
    fn active(&self, trial: usize) -> bool {
        self.in_flight.contains(&trial) || self.ready.iter().any(|w| w.trial == trial)
    }

    /// Decides what a finished job means for its trial.
    fn finish(&mut self, job: Work) -> Result<(), SimulateError> {
        let trial = job.trial;
        match self.strategy {
            Strategy::Grid | Strategy::Random | Strategy::Tpe => self.completed(trial),
            Strategy::Median => {
                let value = self.value_at(trial, job.to);
                let stop = self.median.report(&trial, job.to, value);
                if job.to >= self.last_step(trial) {
                    self.completed(trial);
                } else if !stop {
                    let next = self.curves[trial]
                        .iter()
                        .find(|(s, _)| *s > job.to)
                        .map_or(job.to, |(s, _)| *s);
                    self.ready.push_front(Work {
                        trial,
                        to: next,
                        rung: None,
                    });
                }
            }
            Strategy::Asha | Strategy::Hyperband | Strategy::TpeAsha => {
                let (bracket, rung) = job.rung.expect("multi-fidelity jobs carry their rung");
                let value = self.value_at(trial, job.to);
                if self.strategy == Strategy::TpeAsha {
                    self.rung_results[rung].push((trial, value));
                }
                let outcome = self.ashas[bracket].report(&trial, rung, value)?;
                match outcome.decision {
                    Decision::Continue { rung } => {
                        let to = self.rung_step(trial, bracket, rung);
                        self.ready.push_front(Work {
                            trial,
                            to,
                            rung: Some((bracket, rung)),
                        });
                    }
                    Decision::Pause => {}
                    Decision::Complete => self.completed(trial),
                }
                for p in outcome.promoted {
                    let to = self.rung_step(p.trial, bracket, p.rung);
                    self.ready.push_back(Work {
                        trial: p.trial,
                        to,
                        rung: Some((bracket, p.rung)),
                    });
                }
            }
        }
        Ok(())
    }

    fn completed(&mut self, trial: usize) {
        self.complete[trial] = true;
        let better = self
            .pick
            .is_none_or(|p| self.selection[trial] < self.selection[p]);
        if better {
            self.pick = Some(trial);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::search::benchmark::{Criteria, grid_best, score};
    use crate::search::record::RecordedTrial;
    use crate::search::surface::Surface;
    use serde_json::json;

    /// Three trials, evaluated at steps 1, 2 and 3.
    fn tiny() -> Recorded {
        let trial = |id: &str, lr: f64, sps: f64, curve: [f64; 3]| RecordedTrial {
            id: id.into(),
            params: Point::from([("train.lr".into(), json!(lr))]),
            seconds_per_step: sps,
            curve: vec![(1, curve[0]), (2, curve[1]), (3, curve[2])],
        };
        Recorded {
            sweep: "tiny".into(),
            metric: "val/loss".into(),
            higher_is_better: false,
            trials: vec![
                trial("a", 1e-4, 1.0, [3.0, 2.0, 1.5]),
                // Its best evaluation is not its last: selection takes the best.
                trial("b", 1e-3, 2.0, [2.0, 1.0, 1.2]),
                trial("c", 1e-2, 1.0, [1.8, 1.7, 1.6]),
            ],
        }
    }

    #[test]
    fn a_grid_replay_picks_the_grids_best_with_all_of_its_compute() {
        let recorded = tiny();
        for workers in [1, 2, 5] {
            let settings = Settings {
                workers,
                ..Settings::default()
            };
            let replay = replay(&recorded, Strategy::Grid, &settings, 0).unwrap();
            assert_eq!(replay.pick, Some((1, 1.0)), "b at its best, 1.0");
            assert!((replay.compute_s - 12.0).abs() < 1e-9, "3 + 6 + 3 seconds");
            assert_eq!((replay.launched, replay.completed), (3, 3));
            let last = replay.trace.last().unwrap();
            assert!((last.compute_s - recorded.grid_compute()).abs() < 1e-9);
        }
        // One worker: a (3 s), then b (6 s), then c (3 s).
        let one = replay(
            &recorded,
            Strategy::Grid,
            &Settings {
                workers: 1,
                ..Settings::default()
            },
            0,
        )
        .unwrap();
        let times: Vec<f64> = one.trace.iter().map(|p| p.time_s).collect();
        assert_eq!(times, [3.0, 9.0, 12.0]);
        // Two workers: a and b start at 0; a ends at 3 and c starts then.
        // At 3 s, b's running 3 s count as spent: 6 s in all.
        let two = replay(
            &recorded,
            Strategy::Grid,
            &Settings {
                workers: 2,
                ..Settings::default()
            },
            0,
        )
        .unwrap();
        let at: Vec<(f64, f64)> = two.trace.iter().map(|p| (p.time_s, p.compute_s)).collect();
        assert_eq!(at, [(3.0, 6.0), (6.0, 12.0), (6.0, 12.0)]);
    }

    #[test]
    fn a_grid_replay_of_a_surface_reaches_the_grids_best_at_full_compute() {
        let recorded = Surface::named("paligemma").unwrap().record(4);
        let replay = replay(&recorded, Strategy::Grid, &Settings::default(), 0).unwrap();
        let (best, value) = grid_best(&recorded);
        assert_eq!(replay.pick, Some((best, value)));
        let criteria = Criteria {
            tolerance: 0.0,
            budget_fraction: 1.0,
        };
        let outcome = score(&recorded, &replay, criteria, 0);
        assert_eq!(outcome.regret, Some(0.0));
        assert!((outcome.compute - 1.0).abs() < 1e-9);
        // With 0 tolerance it reaches the best exactly when the best trial
        // completes, no later than the whole grid.
        assert!(outcome.to_target.is_some_and(|f| f <= 1.0 + 1e-9));
    }

    #[test]
    fn every_strategy_is_deterministic_per_seed_and_adaptive_ones_save_compute() {
        let recorded = Surface::named("quadratic").unwrap().record(0);
        let grid = recorded.grid_compute();
        for strategy in Strategy::ALL {
            let settings = Settings::default();
            let a = replay(&recorded, strategy, &settings, 5).unwrap();
            let b = replay(&recorded, strategy, &settings, 5).unwrap();
            assert_eq!(a.trace, b.trace, "{}", strategy.name());
            assert!(a.completed >= 1, "{} completes a trial", strategy.name());
            assert!(a.compute_s <= grid * (1.0 + 1e-9), "{}", strategy.name());
            match strategy {
                Strategy::Grid | Strategy::Random | Strategy::Tpe => {
                    assert_eq!(a.completed, recorded.trials.len(), "{}", strategy.name());
                }
                Strategy::Median | Strategy::Asha | Strategy::Hyperband | Strategy::TpeAsha => {
                    assert_eq!(a.launched, recorded.trials.len(), "{}", strategy.name());
                    assert!(
                        a.compute_s < 0.8 * grid,
                        "{} stops trials early: {} of {grid}",
                        strategy.name(),
                        a.compute_s
                    );
                }
            }
        }
        let one = replay(&recorded, Strategy::Random, &Settings::default(), 1).unwrap();
        let two = replay(&recorded, Strategy::Random, &Settings::default(), 2).unwrap();
        assert_ne!(one.trace, two.trace, "seeds change the order");
    }

    #[test]
    fn asha_completes_only_what_its_rungs_promote() {
        // 27 trials, 3 evaluations (rungs 1, 3, 9 of 9 steps at η = 3): at
        // most ⌊27/3⌋ reach rung 1 and ⌊9/3⌋ complete.
        let trials = (0..27)
            .map(|i| RecordedTrial {
                id: format!("t{i}"),
                params: Point::from([("x".into(), json!(i))]),
                seconds_per_step: 1.0,
                curve: vec![
                    (1, f64::from(i)),
                    (3, f64::from(i) / 2.0),
                    (9, f64::from(i) / 3.0),
                ],
            })
            .collect();
        let recorded = Recorded {
            sweep: "lines".into(),
            metric: "val/loss".into(),
            higher_is_better: false,
            trials,
        };
        let settings = Settings {
            workers: 1,
            ..Settings::default()
        };
        assert_eq!(default_min_resource(&recorded), 1);
        let replay = replay(&recorded, Strategy::Asha, &settings, 0).unwrap();
        assert!(replay.completed <= 3, "{}", replay.completed);
        // Rankings agree across rungs here, so the best trial is found.
        assert_eq!(replay.pick, Some((0, 0.0)));
    }

    #[test]
    fn bad_settings_are_errors() {
        let recorded = tiny();
        let none = Settings {
            workers: 0,
            ..Settings::default()
        };
        assert!(matches!(
            replay(&recorded, Strategy::Random, &none, 0),
            Err(SimulateError::NoWorkers)
        ));
        let high = Settings {
            min_resource: Some(10),
            ..Settings::default()
        };
        assert!(matches!(
            replay(&recorded, Strategy::Asha, &high, 0),
            Err(SimulateError::MinResource { min: 10, max: 3 })
        ));
        assert_eq!(Strategy::parse("tpe+asha"), Some(Strategy::TpeAsha));
        assert_eq!(Strategy::parse("bohb"), None);
        assert_eq!(Strategy::ALL.map(Strategy::name), Strategy::NAMES);
    }
}

//! Synthetic response surfaces: a declared objective over the axes, and
//! learning curves that approach it, so that a strategy can be measured
//! where the answer is known. A trial's loss at step t is
//!
//! ```text
//! end + (start − end)·exp(−t/τ(x)) + noise_t,   end = objective(x) + offset
//! ```
//!
//! where the offset is the trial's own luck (a seed's worth, drawn once per
//! trial) and `noise_t` each evaluation's, larger while the loss is still far
//! from its end. Recording a surface (`record`) gives what a finished grid
//! over its axes would have stored, for the simulator to replay.
//!
//! `paligemma` gives every trial the same τ: early evaluations rank trials
//! as their ends do, blurred by noise (informative but noisy). `crossing`
//! lets the learning rate set τ as well, so that the fastest learners lead
//! early and the best configuration only wins late: the case where early
//! stopping is misled (no goal is set on it; it shows the limit).

use serde_json::{Value, json};

use super::record::{Recorded, RecordedTrial};
use super::space::Point;
use crate::rng::SplitMix64;

pub struct Surface {
    pub name: &'static str,
    pub about: &'static str,
    /// Axis key → the values the grid is recorded on.
    pub axes: Vec<(&'static str, Vec<Value>)>,
    /// The loss a trial approaches with unlimited training.
    objective: fn(&Point) -> f64,
    /// Steps for a trial to close 63% of its gap to the objective.
    time_constant: fn(&Point) -> f64,
    seconds_per_step: fn(&Point) -> f64,
    pub steps: u64,
    pub eval_every: u64,
    pub start_loss: f64,
    /// Standard deviation of a trial's offset (seed to seed).
    pub trial_noise: f64,
    /// Standard deviation of each evaluation's noise near the end (three
    /// times this at the start).
    pub eval_noise: f64,
}

/// Every surface `palisweep simulate --surface` knows.
pub const NAMES: &[&str] = &["paligemma", "crossing", "quadratic"];

fn number(point: &Point, key: &str) -> f64 {
    point.get(key).and_then(Value::as_f64).unwrap_or(0.0)
}

fn text<'a>(point: &'a Point, key: &str) -> &'a str {
    point.get(key).and_then(Value::as_str).unwrap_or("")
}

/// Fine-tuning-like: the 10b base ends lower than the 3b and prefers a
/// smaller learning rate, QLoRA costs a little loss (and 30% more time per
/// step, 10b three times 3b's), weight decay matters little (best at 1e-2).
fn fine_tuning(p: &Point) -> f64 {
    let big = text(p, "model.size") == "10b";
    let qlora = text(p, "train.method") == "qlora";
    let base = if big { 0.55 } else { 0.62 };
    let best_log_lr = if big { -3.9 } else { -3.5 } + if qlora { 0.15 } else { 0.0 };
    let lr = (number(p, "train.lr").log10() - best_log_lr).powi(2) * 0.06;
    let wd = (number(p, "train.weight_decay") + 1e-4).log10() + 2.0;
    base + lr + 0.01 * wd * wd + if qlora { 0.015 } else { 0.0 }
}

fn fine_tuning_seconds(p: &Point) -> f64 {
    let size = if text(p, "model.size") == "10b" {
        3.0
    } else {
        1.0
    };
    let method = if text(p, "train.method") == "qlora" {
        1.3
    } else {
        1.0
    };
    0.5 * size * method
}

fn fine_tuning_axes() -> Vec<(&'static str, Vec<Value>)> {
    vec![
        (
            "train.lr",
            vec![
                json!(1e-5),
                json!(3e-5),
                json!(1e-4),
                json!(3e-4),
                json!(1e-3),
                json!(3e-3),
            ],
        ),
        (
            "train.weight_decay",
            vec![json!(0.0), json!(1e-3), json!(1e-2), json!(1e-1)],
        ),
        ("train.method", vec![json!("lora"), json!("qlora")]),
        ("model.size", vec![json!("3b"), json!("10b")]),
    ]
}

/// [`fine_tuning`] with one τ for all: early rungs are informative but noisy.
fn paligemma() -> Surface {
    Surface {
        name: "paligemma",
        about: "6 lr x 4 weight decay x LoRA/QLoRA x 3b/10b (96 trials), val/loss",
        axes: fine_tuning_axes(),
        objective: fine_tuning,
        time_constant: |_| 150.0,
        seconds_per_step: fine_tuning_seconds,
        steps: 900,
        eval_every: 30,
        start_loss: 2.0,
        trial_noise: 0.005,
        eval_noise: 0.01,
    }
}

/// `paligemma`'s objective, but τ falls with the learning rate: the two
/// largest rates lead every early rung, and neither ends best.
fn crossing() -> Surface {
    fn time_constant(p: &Point) -> f64 {
        100.0 * (1e-3 / number(p, "train.lr")).sqrt()
    }
    Surface {
        name: "crossing",
        about: "paligemma's grid; the learning rate also sets how fast a trial learns",
        axes: fine_tuning_axes(),
        objective: fine_tuning,
        time_constant,
        seconds_per_step: fine_tuning_seconds,
        steps: 900,
        eval_every: 30,
        start_loss: 2.0,
        trial_noise: 0.005,
        eval_noise: 0.01,
    }
}

/// A bowl in (log lr, weight decay) with a categorical step: small and
/// quick, for tests.
fn quadratic() -> Surface {
    fn objective(p: &Point) -> f64 {
        let lr = number(p, "train.lr").log10() + 3.0;
        let wd = number(p, "train.weight_decay") - 0.05;
        let method = match text(p, "train.method") {
            "qlora" => 0.05,
            _ => 0.0,
        };
        0.5 + 0.1 * lr * lr + 20.0 * wd * wd + method
    }
    fn time_constant(p: &Point) -> f64 {
        10.0 * (1e-3 / number(p, "train.lr")).sqrt()
    }
    fn seconds_per_step(p: &Point) -> f64 {
        if text(p, "train.method") == "qlora" {
            1.3
        } else {
            1.0
        }
    }
    Surface {
        name: "quadratic",
        about: "5 lr x 3 weight decay x LoRA/QLoRA (30 trials), val/loss",
        axes: vec![
            (
                "train.lr",
                vec![
                    json!(1e-5),
                    json!(1e-4),
                    json!(1e-3),
                    json!(1e-2),
                    json!(1e-1),
                ],
            ),
            (
                "train.weight_decay",
                vec![json!(0.0), json!(0.05), json!(0.1)],
            ),
            ("train.method", vec![json!("lora"), json!("qlora")]),
        ],
        objective,
        time_constant,
        seconds_per_step,
        steps: 100,
        eval_every: 10,
        start_loss: 2.0,
        trial_noise: 0.002,
        eval_noise: 0.005,
    }
}

impl Surface {
    pub fn named(name: &str) -> Option<Surface> {
        match name {
            "paligemma" => Some(paligemma()),
            "crossing" => Some(crossing()),
            "quadratic" => Some(quadratic()),
            _ => None,
        }
    }

    pub fn objective(&self, point: &Point) -> f64 {
        (self.objective)(point)
    }

    /// Every configuration of the axes, the last axis varying fastest.
    pub fn grid(&self) -> Vec<Point> {
        let mut points = vec![Point::new()];
        for (key, values) in &self.axes {
            points = points
                .into_iter()
                .flat_map(|p| {
                    values.iter().map(move |v| {
                        let mut q = p.clone();
                        q.insert((*key).to_owned(), v.clone());
                        q
                    })
                })
                .collect();
        }
        points
    }

    /// What a finished grid over the axes would have recorded, with this
    /// seed's noise.
    pub fn record(&self, seed: u64) -> Recorded {
        let mut rng = SplitMix64::new(seed ^ 0x5EED_5A2F_ACE0_0001);
        let trials = self
            .grid()
            .into_iter()
            .enumerate()
            .map(|(i, params)| {
                let end = self.objective(&params) + self.trial_noise * rng.next_normal();
                let tau = (self.time_constant)(&params);
                let curve = (1..=self.steps / self.eval_every)
                    .map(|k| {
                        let step = k * self.eval_every;
                        let left = (-(step as f64) / tau).exp();
                        let noise = self.eval_noise * (1.0 + 2.0 * left) * rng.next_normal();
                        (step, end + (self.start_loss - end) * left + noise)
                    })
                    .collect();
                RecordedTrial {
                    id: format!("{}-{i:03}", self.name),
                    seconds_per_step: (self.seconds_per_step)(&params),
                    params,
                    curve,
                }
            })
            .collect();
        Recorded {
            sweep: format!("surface:{}", self.name),
            metric: "val/loss".into(),
            higher_is_better: false,
            trials,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_named_surface_records_a_valid_full_grid() {
        for name in NAMES {
            let surface = Surface::named(name).unwrap();
            let recorded = surface.record(1);
            recorded.validate().unwrap();
            let size: usize = surface.axes.iter().map(|(_, v)| v.len()).product();
            assert_eq!(recorded.trials.len(), size, "{name}");
            assert_eq!(
                recorded.trials[0].curve.len() as u64,
                surface.steps / surface.eval_every
            );
        }
        assert!(Surface::named("nope").is_none());
    }

    #[test]
    fn curves_approach_the_objective_and_seeds_change_only_the_noise() {
        let surface = Surface::named("paligemma").unwrap();
        let a = surface.record(1);
        let b = surface.record(2);
        assert_ne!(a, b);
        assert_eq!(a, surface.record(1), "deterministic per seed");
        for trial in &a.trials {
            let target = surface.objective(&trial.params);
            let (_, first) = trial.curve[0];
            let (_, last) = *trial.curve.last().unwrap();
            assert!(first > last, "{}: learning lowers the loss", trial.id);
            assert!(
                last > target - 0.06,
                "{}: never far below its objective",
                trial.id
            );
        }
        // The 10b base's best configuration beats the 3b's.
        let best = |size: &str| {
            a.trials
                .iter()
                .filter(|t| t.params["model.size"] == size)
                .map(|t| surface.objective(&t.params))
                .fold(f64::INFINITY, f64::min)
        };
        assert!(best("10b") < best("3b"));
    }
}

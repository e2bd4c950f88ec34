//! Hours for the plan: relative cost (`estimate/cost.rs`) is unit-free, so
//! a wall time needs a measured rate, the seconds one unit of relative cost
//! took in trials that finished. The rate comes from the store, first from
//! the finished trials of this sweep, else from finished trials of other
//! sweeps in the same results root that ran the same checkpoint, method and
//! data (their relative cost recomputed from their recorded config). The
//! calibration files (`estimate/calibration/`) record memory, not time, so
//! they give no rate.
//!
//! A rate measured where trials shared a device includes that sharing;
//! the plan's simulated packing is the same when the spec is.

use std::collections::{BTreeMap, BTreeSet};

use crate::devices::detect::DeviceKind;
use crate::spec::checkpoint;
use crate::spec::schema::Spec;
use crate::track::store::{Store, StoreError};

use super::build::{PlannedTrial, estimate};
use super::text_lengths;

/// Seconds per unit of relative cost, and what it was measured on.
#[derive(Clone, Debug, PartialEq)]
pub struct Throughput {
    pub seconds_per_unit: f64,
    pub source: Source,
    /// Finished trials measured.
    pub trials: usize,
    /// Their summed wall time (every attempt), in seconds.
    pub wall_s: f64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    /// Finished trials of the sweep being planned.
    ThisSweep,
    /// Finished trials of these other sweeps, with the same checkpoint,
    /// method and data as trials of the plan.
    OtherSweeps(Vec<String>),
}

/// What the store tells the plan about time.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Timing {
    /// None: nothing comparable has finished yet.
    pub throughput: Option<Throughput>,
    /// Trials of the plan that already finished: their measured wall time.
    pub finished: BTreeMap<String, f64>,
}

impl Timing {
    /// Estimated hours of `rel_cost` units at the measured rate.
    pub fn hours(&self, rel_cost: f64) -> Option<f64> {
        self.throughput
            .as_ref()
            .map(|t| rel_cost * t.seconds_per_unit / 3600.0)
    }
}

/// Σ wall / Σ cost over `(rel_cost, wall seconds)` samples: trials weigh by
/// their cost, so short runs' fixed start-up time does not dominate.
pub fn rate(samples: &[(f64, f64)]) -> Option<f64> {
    let usable: Vec<&(f64, f64)> = samples
        .iter()
        .filter(|(c, w)| *c > 0.0 && c.is_finite() && *w > 0.0 && w.is_finite())
        .collect();
    let cost: f64 = usable.iter().map(|s| s.0).sum();
    let wall: f64 = usable.iter().map(|s| s.1).sum();
    (cost > 0.0).then(|| wall / cost)
}

/// The kind of a recorded device label (`cuda:0`, `cpu:1`); None when
/// unknown (`slurm`, not recorded).
pub fn device_kind(label: Option<&str>) -> Option<DeviceKind> {
    match label?.split(':').next()? {
        "cuda" => Some(DeviceKind::Cuda),
        "cpu" => Some(DeviceKind::Cpu),
        _ => None,
    }
}

/// A trial's checkpoint, method and data: what must match for another
/// sweep's rate to apply.
fn likeness(spec: &Spec) -> (String, String, String) {
    (
        checkpoint::resolve(&spec.model).display,
        spec.train.method.to_string(),
        spec.data.path.clone(),
    )
}

/// Reads the rate for `trials` (the plan of sweep `name` on devices of
/// `kind`) from `store`; trials measured on another kind of device do not
/// count.
pub fn measure(
    store: &Store,
    name: &str,
    trials: &[PlannedTrial],
    kind: DeviceKind,
) -> Result<Timing, StoreError> {
    let same_kind = |label: Option<&str>| device_kind(label).is_none_or(|k| k == kind);
    let sweeps = store.sweeps()?;
    let mut timing = Timing::default();
    if let Some(sweep) = sweeps.iter().find(|s| s.name == name) {
        let costs: BTreeMap<&str, f64> = trials
            .iter()
            .map(|t| (t.trial.id.as_str(), t.rel_cost))
            .collect();
        let mut samples = Vec::new();
        for r in store.trial_results(name, &sweep.select_metric)? {
            let (Some(&cost), Some(wall)) = (costs.get(r.id.as_str()), r.wall_time_s) else {
                continue;
            };
            if r.status != "finished" {
                continue;
            }
            timing.finished.insert(r.id.clone(), wall);
            if same_kind(r.device.as_deref()) {
                samples.push((cost, wall));
            }
        }
        timing.throughput = throughput(&samples, Source::ThisSweep);
    }
    if timing.throughput.is_some() {
        return Ok(timing);
    }
    let wanted: BTreeSet<(String, String, String)> =
        trials.iter().map(|t| likeness(&t.trial.spec)).collect();
    let mut samples = Vec::new();
    let mut used = Vec::new();
    for sweep in sweeps.iter().filter(|s| s.name != name) {
        let configs = store.trial_configs(&sweep.name)?;
        let before = samples.len();
        for r in store.trial_results(&sweep.name, &sweep.select_metric)? {
            let (Some(wall), Some(config)) = (r.wall_time_s, configs.get(&r.id)) else {
                continue;
            };
            if r.status != "finished" || !same_kind(r.device.as_deref()) {
                continue;
            }
            // A config this palisweep cannot read is not comparable.
            let Ok(spec) = toml::from_str::<Spec>(config) else {
                continue;
            };
            if !wanted.contains(&likeness(&spec)) {
                continue;
            }
            let lengths = text_lengths::measure(&spec.data);
            samples.push((estimate(&spec, &lengths, kind).2, wall));
        }
        if samples.len() > before {
            used.push(sweep.name.clone());
        }
    }
    timing.throughput = throughput(&samples, Source::OtherSweeps(used));
    Ok(timing)
}

fn throughput(samples: &[(f64, f64)], source: Source) -> Option<Throughput> {
    Some(Throughput {
        seconds_per_unit: rate(samples)?,
        source,
        trials: samples.len(),
        wall_s: samples.iter().map(|s| s.1).sum(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rate_weighs_trials_by_cost() {
        // 10 s for 1 unit and 50 s for 4: 60 s over 5 units.
        let r = rate(&[(1.0, 10.0), (4.0, 50.0)]).unwrap();
        assert!((r - 12.0).abs() < 1e-12);
        // Unusable samples are skipped; none usable is no rate.
        let r = rate(&[(0.0, 10.0), (2.0, f64::NAN), (2.0, 6.0)]).unwrap();
        assert!((r - 3.0).abs() < 1e-12);
        assert_eq!(rate(&[(0.0, 1.0)]), None);
        assert_eq!(rate(&[]), None);
    }

    #[test]
    fn hours_scale_relative_cost_by_the_rate() {
        let timing = Timing {
            throughput: throughput(&[(2.0, 7200.0)], Source::ThisSweep),
            finished: BTreeMap::new(),
        };
        // 3600 s per unit: 3 units are 3 hours.
        assert!((timing.hours(3.0).unwrap() - 3.0).abs() < 1e-12);
        assert_eq!(Timing::default().hours(3.0), None);
    }

    #[test]
    fn device_labels_name_their_kind() {
        assert_eq!(device_kind(Some("cuda:1")), Some(DeviceKind::Cuda));
        assert_eq!(device_kind(Some("cpu:0")), Some(DeviceKind::Cpu));
        assert_eq!(device_kind(Some("slurm")), None);
        assert_eq!(device_kind(None), None);
    }
}

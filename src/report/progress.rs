//! Best so far against compute: the sweep as it ran (trials in the order
//! they ended, each adding its device-seconds) and, when `palisweep
//! simulate` replayed it from the store, each strategy's replay at seed 0
//! (`search::traces`). The lines are steps: the best holds until a better
//! trial ends.

use std::path::Path;

use super::plots::Line;
use crate::search::traces::{self, SavedTraces};

/// One trial as the sweep line needs it.
pub struct Ended {
    pub end: f64,
    pub seconds: f64,
    /// Its best selection value, if it reported one.
    pub value: Option<f64>,
}

/// The best so far in device-hours, as drawn.
pub fn of_sweep(mut trials: Vec<Ended>, higher_is_better: bool) -> Line {
    trials.sort_by(|a, b| a.end.total_cmp(&b.end));
    let mut spent = 0.0;
    let mut points = Vec::new();
    for t in trials {
        spent += t.seconds.max(0.0);
        if let Some(v) = t.value.filter(|v| v.is_finite()) {
            points.push((spent, v));
        }
    }
    Line {
        label: "this sweep, as run".into(),
        points: stairs(&best_so_far(&points, higher_is_better)),
    }
}

/// The replays `simulate` saved for this sweep, when they rank by `metric`.
pub fn simulated(sweep_dir: &Path, metric: &str) -> Vec<Line> {
    let Ok(bytes) = std::fs::read(sweep_dir.join(traces::FILE)) else {
        return Vec::new();
    };
    let Ok(saved) = serde_json::from_slice::<SavedTraces>(&bytes) else {
        return Vec::new();
    };
    if saved.metric != metric {
        return Vec::new();
    }
    saved
        .strategies
        .into_iter()
        .map(|t| Line {
            label: format!("simulated: {}", t.strategy),
            points: stairs(&t.points),
        })
        .collect()
}

/// `(seconds, value)` kept where the value improves.
fn best_so_far(points: &[(f64, f64)], higher_is_better: bool) -> Vec<(f64, f64)> {
    let mut out: Vec<(f64, f64)> = Vec::new();
    for &(x, v) in points {
        let better = out
            .last()
            .is_none_or(|&(_, best)| if higher_is_better { v > best } else { v < best });
        if better {
            out.push((x, v));
        }
    }
    out
}

/// Device-seconds to hours, each change drawn as a step.
fn stairs(points: &[(f64, f64)]) -> Vec<(f64, f64)> {
    let mut out: Vec<(f64, f64)> = Vec::new();
    for &(seconds, v) in points {
        let hours = seconds / 3600.0;
        if let Some(&(_, before)) = out.last() {
            out.push((hours, before));
        }
        out.push((hours, v));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sweep_line_steps_down_when_a_better_trial_ends() {
        let ended = |end: f64, value: Option<f64>| Ended {
            end,
            seconds: 3600.0,
            value,
        };
        // Out of order on purpose; the third never reported.
        let line = of_sweep(
            vec![
                ended(3.0, Some(0.5)),
                ended(1.0, Some(0.8)),
                ended(2.0, None),
                ended(4.0, Some(0.9)),
            ],
            false,
        );
        assert_eq!(line.points, [(1.0, 0.8), (3.0, 0.8), (3.0, 0.5)]);
        let higher = of_sweep(vec![ended(1.0, Some(0.2)), ended(2.0, Some(0.7))], true);
        assert_eq!(higher.points, [(1.0, 0.2), (2.0, 0.2), (2.0, 0.7)]);
    }

    #[test]
    fn saved_replays_are_read_only_for_their_metric() {
        let dir = tempfile::tempdir().unwrap();
        let saved = SavedTraces {
            metric: "val/loss".into(),
            seed: 0,
            workers: 4,
            strategies: vec![traces::SavedTrace {
                strategy: "asha".into(),
                points: vec![(1800.0, 0.9), (3600.0, 0.7)],
            }],
        };
        std::fs::write(
            dir.path().join(traces::FILE),
            serde_json::to_vec(&saved).unwrap(),
        )
        .unwrap();
        let lines = simulated(dir.path(), "val/loss");
        assert_eq!(lines.len(), 1);
        assert_eq!(lines[0].label, "simulated: asha");
        assert_eq!(lines[0].points, [(0.5, 0.9), (1.0, 0.9), (1.0, 0.7)]);
        assert!(simulated(dir.path(), "val/field_f1").is_empty());
        assert!(simulated(&dir.path().join("none"), "val/loss").is_empty());
    }
}

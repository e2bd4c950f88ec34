//! Scoring replays against the grid, over seeds: how much of the grid's
//! compute a strategy needs before its pick is within a tolerance of the
//! grid's best selection value, and how far its pick is from that best at a
//! fixed budget.

use serde::Serialize;

use super::record::Recorded;
use super::simulate::{Replay, Strategy};
use super::space::Point;

#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Criteria {
    /// "Within 1%": |pick − best| ≤ tolerance·|best| (0.01).
    pub tolerance: f64,
    /// The budget of the regret, as a fraction of the grid's compute.
    pub budget_fraction: f64,
}

/// The grid's answer: the trial with the best selection value (the best of
/// its curve; the first of equals), and that value in metric units.
pub fn grid_best(recorded: &Recorded) -> (usize, f64) {
    let selection = |i: usize| {
        recorded.trials[i]
            .curve
            .iter()
            .map(|(_, v)| recorded.loss(*v))
            .fold(f64::INFINITY, f64::min)
    };
    let best = (0..recorded.trials.len())
        .min_by(|&a, &b| selection(a).total_cmp(&selection(b)))
        .unwrap_or(0);
    (best, recorded.loss(selection(best)))
}

/// One seed of one strategy.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SeedOutcome {
    pub seed: u64,
    /// Fraction of the grid's compute spent when the pick first came within
    /// the tolerance; `None`: it never did.
    pub to_target: Option<f64>,
    /// How much worse than the grid's best the pick was when the budget was
    /// spent (metric units, ≥ 0); `None`: no trial completed within it.
    pub regret: Option<f64>,
    /// That pick (trial id and configuration).
    pub pick: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pick_params: Option<Point>,
    /// The whole replay's compute, as a fraction of the grid's.
    pub compute: f64,
    pub launched: usize,
    pub completed: usize,
}

pub fn score(recorded: &Recorded, replay: &Replay, criteria: Criteria, seed: u64) -> SeedOutcome {
    let (_, best) = grid_best(recorded);
    let grid = recorded.grid_compute();
    let regret = |value: f64| (recorded.loss(value) - recorded.loss(best)).max(0.0);
    let tolerance = criteria.tolerance * best.abs();
    let to_target = replay
        .trace
        .iter()
        .find(|p| p.pick.is_some_and(|(_, v)| regret(v) <= tolerance))
        .map(|p| p.compute_s / grid);
    let at_budget = replay.pick_at(criteria.budget_fraction * grid);
    SeedOutcome {
        seed,
        to_target,
        regret: at_budget.map(|(_, v)| regret(v)),
        pick: at_budget.map(|(t, _)| recorded.trials[t].id.clone()),
        pick_params: at_budget.map(|(t, _)| recorded.trials[t].params.clone()),
        compute: replay.compute_s / grid,
        launched: replay.launched,
        completed: replay.completed,
    }
}

/// One strategy over every seed.
#[derive(Clone, Debug, Serialize)]
pub struct Summary {
    pub strategy: Strategy,
    /// Seeds whose pick came within the tolerance at some point.
    pub reached: usize,
    /// Median over seeds of `to_target` (a seed that never reached counts
    /// as infinite); `None` when that median is infinite.
    pub median_to_target: Option<f64>,
    /// Median over seeds of the regret at the budget (no pick counts as
    /// infinite).
    pub median_regret: Option<f64>,
    pub median_compute: f64,
    pub seeds: Vec<SeedOutcome>,
}

pub fn summarise(strategy: Strategy, seeds: Vec<SeedOutcome>) -> Summary {
    Summary {
        strategy,
        reached: seeds.iter().filter(|s| s.to_target.is_some()).count(),
        median_to_target: median(seeds.iter().map(|s| s.to_target)),
        median_regret: median(seeds.iter().map(|s| s.regret)),
        median_compute: median(seeds.iter().map(|s| Some(s.compute))).unwrap_or(0.0),
        seeds,
    }
}

/// The median, `None` standing for +∞ (the midpoint of the two middle
/// values of an even count); `None` for no values.
pub fn median(values: impl Iterator<Item = Option<f64>>) -> Option<f64> {
    let values: Vec<f64> = values.map(|v| v.unwrap_or(f64::INFINITY)).collect();
    super::median::median_of(values).filter(|m| m.is_finite())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_median_counts_missing_values_as_infinite() {
        assert_eq!(
            median([Some(3.0), Some(1.0), Some(2.0)].into_iter()),
            Some(2.0)
        );
        assert_eq!(
            median([Some(1.0), Some(2.0), None, Some(4.0)].into_iter()),
            Some(3.0)
        );
        assert_eq!(median([Some(1.0), None, None].into_iter()), None);
        assert_eq!(median(std::iter::empty()), None);
    }
}

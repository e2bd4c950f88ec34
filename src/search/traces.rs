//! What `palisweep simulate` leaves next to a sweep it replayed from the
//! store (`<sweep>/simulated.json`): each strategy's best so far against
//! the compute it spent, at seed 0, for the report to draw beside the
//! sweep's own.

use serde::{Deserialize, Serialize};

use super::simulate::Replay;

/// The file's name in the sweep folder.
pub const FILE: &str = "simulated.json";

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SavedTraces {
    pub metric: String,
    pub seed: u64,
    /// Trials trained at once in simulated time.
    pub workers: usize,
    pub strategies: Vec<SavedTrace>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SavedTrace {
    pub strategy: String,
    /// `(device-seconds spent, the pick's value)` at each change of pick.
    pub points: Vec<(f64, f64)>,
}

impl SavedTrace {
    pub fn of(strategy: &str, replay: &Replay) -> SavedTrace {
        let mut points: Vec<(f64, f64)> = Vec::new();
        let mut current = None;
        for p in &replay.trace {
            if let Some((trial, value)) = p.pick
                && current != Some(trial)
            {
                current = Some(trial);
                points.push((p.compute_s, value));
            }
        }
        SavedTrace {
            strategy: strategy.to_owned(),
            points,
        }
    }
}

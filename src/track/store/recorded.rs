//! What the store already holds of a sweep's attempts and curves, so that a
//! resumed `run` sends it only what the trial folders have and it lacks
//! (see `scheduler/reconcile.rs`).

use std::collections::{HashMap, HashSet};

use super::schema::get_u64;
use super::{Store, StoreError};

/// The store's record of one sweep's attempts.
#[derive(Clone, Debug, Default)]
pub struct RecordedAttempts {
    /// (trial, attempt) → (its start is recorded, its end is recorded).
    pub attempts: HashMap<(String, u32), (bool, bool)>,
    /// (trial, attempt, step, metric name) of every metric row.
    pub metrics: HashSet<(String, u32, u64, String)>,
    /// (trial, path) of every predictions file indexed.
    pub predictions: HashSet<(String, String)>,
}

impl Store {
    /// Every attempt and metric key the store has for `sweep` (nothing for
    /// a sweep it has never seen).
    pub fn recorded_attempts(&self, sweep: &str) -> Result<RecordedAttempts, StoreError> {
        let mut recorded = RecordedAttempts::default();
        let mut stmt = self.conn.prepare_cached(
            "SELECT trial_id, attempt, start IS NOT NULL, end IS NOT NULL
             FROM attempts WHERE sweep = ?1",
        )?;
        for row in stmt.query_map([sweep], |r| {
            Ok(((r.get(0)?, r.get(1)?), (r.get(2)?, r.get(3)?)))
        })? {
            let (key, value) = row?;
            recorded.attempts.insert(key, value);
        }
        let mut stmt = self
            .conn
            .prepare_cached("SELECT trial_id, attempt, step, name FROM metrics WHERE sweep = ?1")?;
        for row in stmt.query_map([sweep], |r| {
            Ok((r.get(0)?, r.get(1)?, get_u64(r, 2)?, r.get(3)?))
        })? {
            recorded.metrics.insert(row?);
        }
        let mut stmt = self
            .conn
            .prepare_cached("SELECT trial_id, path FROM predictions WHERE sweep = ?1")?;
        for row in stmt.query_map([sweep], |r| Ok((r.get(0)?, r.get(1)?)))? {
            recorded.predictions.insert(row?);
        }
        Ok(recorded)
    }
}

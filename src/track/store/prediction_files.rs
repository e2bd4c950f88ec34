//! The store's index of per-example predictions files
//! (`track::predictions`), as `show --predictions` and reconcile read it.

use super::query::PredictionFileRow;
use super::schema::get_u64;
use super::{Store, StoreError};

impl Store {
    /// The predictions files of a trial's own attempts (not its reruns),
    /// by split and step. As with curves (`own_metrics`), a file of a step
    /// past where a later attempt resumed is left out until that attempt
    /// evaluates the step again.
    pub fn predictions(
        &self,
        sweep: &str,
        trial: &str,
    ) -> Result<Vec<PredictionFileRow>, StoreError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT p.split, p.step, p.path, p.examples, p.metric, p.attempt
             FROM predictions p
             JOIN trials t ON t.sweep = p.sweep AND t.id = p.trial_id
             WHERE p.sweep = ?1 AND p.trial_id = ?2 AND p.attempt <= t.attempt
               AND NOT EXISTS (
                 SELECT 1 FROM attempts later
                  WHERE later.sweep = p.sweep AND later.trial_id = p.trial_id
                    AND later.attempt > p.attempt AND later.attempt <= t.attempt
                    AND later.resumed_from < p.step)
             ORDER BY p.split DESC, p.step",
        )?;
        let rows = stmt.query_map([sweep, trial], |r| {
            Ok(PredictionFileRow {
                split: r.get(0)?,
                step: get_u64(r, 1)?,
                path: r.get(2)?,
                examples: get_u64(r, 3)?,
                metric: r.get(4)?,
                attempt: r.get(5)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}

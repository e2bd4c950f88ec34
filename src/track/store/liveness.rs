//! Whether a sweep the store calls `running` still has its `palisweep run`:
//! a run holds the sweep's lock (`<results>/<sweep>/.lock`, an `flock` the
//! kernel drops when the process dies), so a sweep whose lock is free was
//! left by a run that died (`kill -9`, a reboot). Such a sweep reads as
//! `interrupted` and its `running` trials as interrupted, until the next
//! `run` resumes it. A sweep left running on purpose (`run --detach`, its
//! Slurm jobs still open) stays `running`.

use std::fs::{File, TryLockError};
use std::path::Path;

use super::query::SweepRow;
use super::{Store, StoreError};
use crate::layout::ResultsRoot;

/// Why a sweep the store calls running has no run.
pub const ORPHANED: &str = "its `palisweep run` is gone (killed, or the machine restarted): run the same command again to resume it";

/// Whether some process holds the sweep's run lock; `None` when the lock
/// cannot say (no lock file on a sweep from elsewhere, no locks on the
/// file system).
fn run_alive(results: &Path, sweep: &str) -> Option<bool> {
    let file = File::open(ResultsRoot::new(results).sweep(sweep).run_lock()).ok()?;
    match file.try_lock_shared() {
        Ok(()) => Some(false),
        Err(TryLockError::WouldBlock) => Some(true),
        Err(TryLockError::Error(_)) => None,
    }
}

impl Store {
    /// Corrects a `running` sweep whose run is gone: `interrupted`, with
    /// its running trials counted as interrupted. True when it did.
    pub(super) fn settle_orphaned(&self, sweep: &mut SweepRow) -> Result<bool, StoreError> {
        if sweep.status != "running"
            || run_alive(Path::new(&sweep.results), &sweep.name) != Some(false)
            || !self.open_slurm_jobs(&sweep.name)?.is_empty()
        {
            return Ok(false);
        }
        "interrupted".clone_into(&mut sweep.status);
        sweep.note = Some(ORPHANED.to_owned());
        sweep.counts.interrupted += sweep.counts.running;
        sweep.counts.running = 0;
        Ok(true)
    }
}

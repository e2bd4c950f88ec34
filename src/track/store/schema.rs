//! The schema as an ordered list of forward migrations. `PRAGMA
//! user_version` holds how many have been applied; opening a store applies
//! the missing ones in one transaction, and refuses a store whose version
//! is newer than this list.
//!
//! Never edit a released step: append a new one.

use std::path::Path;

use rusqlite::types::ToSqlOutput;
use rusqlite::{Connection, Row, ToSql, TransactionBehavior};

use super::StoreError;

/// Version 1: the tables.
const V1: &str = "
CREATE TABLE sweeps (
    name          TEXT PRIMARY KEY,
    spec_path     TEXT NOT NULL,
    spec_text     TEXT NOT NULL,   -- secrets redacted
    spec_hash     TEXT NOT NULL,   -- sha256 of the spec as given (hex): the sweep's id
    results       TEXT NOT NULL,
    created       REAL NOT NULL,   -- first run's start (seconds since the epoch)
    started       REAL NOT NULL,   -- latest run's start
    ended         REAL,            -- latest run's end; NULL while running
    status        TEXT NOT NULL,   -- running | finished | failed | interrupted
    total_trials  INTEGER NOT NULL,
    devices       TEXT NOT NULL,   -- JSON array
    axes          TEXT NOT NULL,   -- JSON array of dotted keys
    select_metric TEXT NOT NULL
);

CREATE TABLE trials (
    sweep            TEXT NOT NULL REFERENCES sweeps (name) ON DELETE CASCADE,
    id               TEXT NOT NULL,
    params           TEXT NOT NULL,  -- JSON object: varying dotted key -> value
    config           TEXT NOT NULL,  -- resolved trial.toml, secrets redacted
    dir              TEXT NOT NULL,
    status           TEXT NOT NULL,  -- queued | running | finished | failed | pruned | interrupted | paused
    device           TEXT,
    attempt          INTEGER NOT NULL DEFAULT 0,
    batch_size       INTEGER,        -- the one actually used by the latest attempt
    grad_accum       INTEGER,
    est_memory_bytes INTEGER,
    start            REAL,
    end              REAL,
    exit_reason      TEXT,
    best_metric      REAL,           -- the selection metric of the best checkpoint
    best_step        INTEGER,
    PRIMARY KEY (sweep, id)
);

CREATE TABLE attempts (
    sweep             TEXT NOT NULL,
    trial_id          TEXT NOT NULL,
    attempt           INTEGER NOT NULL,
    device            TEXT,
    batch_size        INTEGER,
    grad_accum        INTEGER,
    pid               INTEGER,
    start             REAL,
    end               REAL,
    outcome           TEXT,          -- finished | invalid_input | out_of_memory | crashed | ...
    exit_code         INTEGER,
    reason            TEXT,
    peak_memory_bytes INTEGER,
    PRIMARY KEY (sweep, trial_id, attempt),
    FOREIGN KEY (sweep, trial_id) REFERENCES trials (sweep, id) ON DELETE CASCADE
);

CREATE TABLE metrics (
    trial_id  TEXT NOT NULL,
    sweep     TEXT NOT NULL,
    attempt   INTEGER NOT NULL,
    step      INTEGER NOT NULL,
    epoch     INTEGER,
    name      TEXT NOT NULL,
    value     REAL,                  -- NULL when the worker reported NaN
    wall_time REAL NOT NULL,
    PRIMARY KEY (trial_id, sweep, attempt, step, name)
) WITHOUT ROWID;

CREATE TABLE artifacts (
    sweep    TEXT NOT NULL,
    trial_id TEXT NOT NULL,
    kind     TEXT NOT NULL,          -- final | best | checkpoint | log | events
    path     TEXT NOT NULL,
    bytes    INTEGER,
    sha256   TEXT,
    step     INTEGER,
    PRIMARY KEY (sweep, trial_id, path),
    FOREIGN KEY (sweep, trial_id) REFERENCES trials (sweep, id) ON DELETE CASCADE
);

CREATE TABLE environment (
    sweep                   TEXT NOT NULL REFERENCES sweeps (name) ON DELETE CASCADE,
    started                 REAL NOT NULL,  -- the run's start: one row per run
    resumed                 INTEGER NOT NULL,
    palisweep_version       TEXT NOT NULL,
    git_sha                 TEXT,
    libtorch_version        TEXT,
    cuda_version            TEXT,
    gpu_names               TEXT NOT NULL,  -- JSON array
    driver_version          TEXT,
    host                    TEXT NOT NULL,
    dataset_fingerprint     TEXT,
    checkpoint_fingerprints TEXT NOT NULL,  -- JSON object
    PRIMARY KEY (sweep, started)
);
";

/// Version 2: what a worker reports when it starts (for `rerun`), why it
/// failed, and indexes on trials. `metrics` has no index but its key:
/// readers go through a trial (`trial_id` leads the key), and a second
/// index (by sweep and name) cut batched ingest from ~250k to ~95k rows/s.
const V2: &str = "
ALTER TABLE attempts ADD COLUMN threads INTEGER;
ALTER TABLE attempts ADD COLUMN trainable_params INTEGER;
ALTER TABLE attempts ADD COLUMN total_steps INTEGER;
ALTER TABLE attempts ADD COLUMN resumed_from INTEGER;
ALTER TABLE attempts ADD COLUMN skipped_lines INTEGER;
ALTER TABLE attempts ADD COLUMN dataset_fingerprint TEXT;
ALTER TABLE attempts ADD COLUMN failure_kind TEXT;
CREATE INDEX trials_by_status ON trials (sweep, status);
CREATE INDEX trials_by_id ON trials (id);
";

/// Version 3: the Slurm job of each attempt (Slurm backend), so that a
/// restarted orchestrator follows jobs instead of submitting them again.
const V3: &str = "
ALTER TABLE attempts ADD COLUMN slurm_job TEXT;
";

/// Version 4: the per-example predictions files of each evaluation that
/// generated (`track::predictions`), one row per file. A file is keyed by
/// its path: an attempt that resumes and evaluates a step again rewrites
/// the file, and its row then names that attempt.
const V4: &str = "
CREATE TABLE predictions (
    sweep    TEXT NOT NULL,
    trial_id TEXT NOT NULL,
    attempt  INTEGER NOT NULL,
    split    TEXT NOT NULL,          -- val | test
    step     INTEGER NOT NULL,
    path     TEXT NOT NULL,
    examples INTEGER NOT NULL,
    metric   TEXT NOT NULL,          -- the per-example metric: field_f1 | box_f1 | cer
    PRIMARY KEY (sweep, trial_id, path),
    FOREIGN KEY (sweep, trial_id) REFERENCES trials (sweep, id) ON DELETE CASCADE
);
";

/// The migrations in order; the schema version is how many there are.
pub(super) const MIGRATIONS: &[&str] = &[V1, V2, V3, V4];

/// The schema version this palisweep writes and reads.
pub const SCHEMA_VERSION: u32 = MIGRATIONS.len() as u32;

pub(super) fn version(conn: &Connection) -> Result<u32, StoreError> {
    Ok(conn.pragma_query_value(None, "user_version", |r| r.get(0))?)
}

/// The store's schema version, refusing one newer than this palisweep's.
pub(super) fn check_not_newer(conn: &Connection, path: &Path) -> Result<u32, StoreError> {
    let found = version(conn)?;
    if found > SCHEMA_VERSION {
        return Err(StoreError::TooNew {
            path: path.to_owned(),
            found,
            known: SCHEMA_VERSION,
        });
    }
    Ok(found)
}

/// Applies the migrations missing below `target`, all in one transaction
/// (taken before reading the version, so two processes opening the same
/// new store do not both migrate).
pub(super) fn migrate(conn: &mut Connection, path: &Path, target: u32) -> Result<(), StoreError> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let found = check_not_newer(&tx, path)?;
    if found >= target {
        return Ok(());
    }
    for step in &MIGRATIONS[found as usize..target as usize] {
        tx.execute_batch(step)?;
    }
    tx.pragma_update(None, "user_version", target)?;
    tx.commit()?;
    Ok(())
}

/// Recreates tables and indexes of the current schema that are missing
/// from a store at the current version (dropped by hand, say), empty, in
/// their current shape (taken from a fresh in-memory store: `SQLite`
/// keeps each table's `CREATE` statement up to date through `ALTER TABLE`).
/// Returns their names. The rows come back from the trial folders on the
/// next `run` (`scheduler/reconcile.rs`).
pub(super) fn restore_missing(conn: &Connection) -> Result<Vec<String>, StoreError> {
    let mut fresh = Connection::open_in_memory()?;
    migrate(&mut fresh, Path::new(":memory:"), SCHEMA_VERSION)?;
    let mut wanted = fresh.prepare(
        "SELECT name, sql FROM sqlite_master
          WHERE type IN ('table', 'index') AND sql IS NOT NULL
          ORDER BY type DESC, name",
    )?;
    let objects: Vec<(String, String)> = wanted
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<Result<_, _>>()?;
    let mut restored = Vec::new();
    for (name, sql) in objects {
        let present: bool = conn.query_row(
            "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE name = ?1)",
            [&name],
            |r| r.get(0),
        )?;
        if !present {
            conn.execute_batch(&sql)?;
            restored.push(name);
        }
    }
    Ok(restored)
}

/// A `u64` bound as an INTEGER (rusqlite maps `u64` only with its
/// `fallible_uint` feature): saturates at `i64::MAX`, which no count,
/// step or byte size reaches.
pub(super) struct Uint(pub u64);

impl ToSql for Uint {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(ToSqlOutput::from(i64::try_from(self.0).unwrap_or(i64::MAX)))
    }
}

/// Reads an INTEGER column as `u64` (negative values, never written, read as 0).
pub(super) fn get_u64(row: &Row<'_>, i: usize) -> rusqlite::Result<u64> {
    Ok(u64::try_from(row.get::<_, i64>(i)?).unwrap_or(0))
}

pub(super) fn get_opt_u64(row: &Row<'_>, i: usize) -> rusqlite::Result<Option<u64>> {
    Ok(row
        .get::<_, Option<i64>>(i)?
        .map(|v| u64::try_from(v).unwrap_or(0)))
}

/// Per-connection views of a trial's own attempts and their metrics. A
/// `rerun` is recorded as an attempt after `trials.attempt` (it never moves
/// the trial's row), so "own" is every attempt up to it; every query of a
/// trial's results reads these, not the tables. Temporary, so they need no
/// migration and work on read-only connections.
///
/// A curve has one point per step: an attempt that resumed from step `r`
/// (`resumed_from`) ran every step after `r` again, so an earlier attempt's
/// rows past `r` (reported before a kill, after the last checkpoint) are
/// not its points. They stay in `metrics`, as the trial folder has them.
pub(super) fn create_own_views(conn: &Connection) -> rusqlite::Result<()> {
    conn.execute_batch(
        "CREATE TEMP VIEW IF NOT EXISTS own_attempts AS
           SELECT a.* FROM main.attempts a
             JOIN main.trials t ON t.sweep = a.sweep AND t.id = a.trial_id
            WHERE a.attempt <= t.attempt;
         CREATE TEMP VIEW IF NOT EXISTS own_metrics AS
           SELECT m.* FROM main.metrics m
             JOIN main.trials t ON t.sweep = m.sweep AND t.id = m.trial_id
            WHERE m.attempt <= t.attempt
              AND NOT EXISTS (
                SELECT 1 FROM main.attempts later
                 WHERE later.sweep = m.sweep AND later.trial_id = m.trial_id
                   AND later.attempt > m.attempt AND later.attempt <= t.attempt
                   AND later.resumed_from < m.step);",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn columns(conn: &Connection, table: &str) -> Vec<String> {
        let mut stmt = conn
            .prepare(&format!("SELECT name FROM pragma_table_info('{table}')"))
            .unwrap();
        stmt.query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    }

    #[test]
    fn every_step_applies_and_the_tables_have_the_issues_names() {
        let mut conn = Connection::open_in_memory().unwrap();
        migrate(&mut conn, Path::new(":memory:"), SCHEMA_VERSION).unwrap();
        assert_eq!(version(&conn).unwrap(), SCHEMA_VERSION);
        const { assert!(SCHEMA_VERSION >= 2) };
        for table in [
            "sweeps",
            "trials",
            "metrics",
            "attempts",
            "artifacts",
            "environment",
            "predictions",
        ] {
            assert!(!columns(&conn, table).is_empty(), "{table}");
        }
        let predictions = columns(&conn, "predictions");
        for c in [
            "sweep", "trial_id", "attempt", "split", "step", "path", "examples", "metric",
        ] {
            assert!(predictions.contains(&c.to_owned()), "predictions.{c}");
        }
        let metrics = columns(&conn, "metrics");
        for c in [
            "trial_id",
            "attempt",
            "step",
            "epoch",
            "name",
            "value",
            "wall_time",
        ] {
            assert!(metrics.contains(&c.to_owned()), "metrics.{c}");
        }
        // Migrating again is a no-op.
        migrate(&mut conn, Path::new(":memory:"), SCHEMA_VERSION).unwrap();
    }
}

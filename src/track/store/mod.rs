//! The `SQLite` store: one database per results root
//! (`<results>/palisweep.sqlite`) that the scheduler writes through
//! [`StoreSink`] and that `status`, `ls`, `show`, `export-metrics` and the
//! report read, also while a sweep is writing (WAL mode, busy timeout).
//!
//! Tables (names and columns are a contract: `sqlite3` users rely on them;
//! see `schema.rs` for the SQL): `sweeps`, `trials`, `attempts`, `metrics`,
//! `artifacts`, `environment`, `predictions` (one row per per-example
//! predictions file, `track::predictions`).
//!
//! Keys. A sweep is its name (`experiment.name`, its folder under the
//! results root); its "id" is its spec hash, and a SWEEP argument may be
//! the name or a unique prefix of either. Trial ids are content hashes of
//! what changes a result, so the same id can appear in two sweeps (the same
//! grid point in two specs), each run separately in its own folder. Every
//! per-trial table therefore carries a `sweep` column next to `trial_id`:
//! `metrics` is unique on `(trial_id, sweep, attempt, step, name)`, which is
//! the issue's `(trial_id, attempt, step, name)` made safe across sweeps
//! (`trial_id` leads the key, so `WHERE trial_id = ?` stays indexed; add
//! `AND sweep = ?` when an id is shared).
//! `attempts` and `artifacts` name their trial `trial_id` too.
//!
//! `metrics` has no foreign key and no index but its key, for ingest speed
//! (see `schema.rs`).
//!
//! Use:
//!
//! ```text
//! // the scheduler: one consumer among the others
//! let sink = StoreSink::open(&results.store())?;
//! let fanout = Fanout::start(vec![Box::new(sink), ...]);
//! // status / ls / show / export-metrics, also while a sweep runs elsewhere
//! let store = Store::open_read_only(&results.store())?;
//! print!("{}", views::status(&store, sweep.as_deref())?.to_text());
//! println!("{:#}", views::show(&store, &trial)?.to_json());
//! export_metrics(&store, &sweep, "csv".parse()?, &mut std::io::stdout().lock())?;
//! ```
//!
//! A metric `value` is NULL when the worker reported NaN (`SQLite` has no
//! NaN). No secret is stored: spec text, configs, parameters and messages
//! pass through [`redact_text`] / [`redact_json`] first (`crate::secrets`,
//! which every other writer of the results tree uses too).

mod export;
mod liveness;
mod prediction_files;
mod query;
mod recorded;
mod schema;
mod sink;
pub mod views;

use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};

pub use export::{ExportFormat, export_metrics};
pub use query::{
    ArtifactRow, AttemptRow, EnvironmentRow, Failure, MetricPoint, MetricRow, MetricSummary,
    PredictionFileRow, RunningTrial, StateCounts, SweepRow, TrialDetail, TrialResult, TrialRow,
    varying_keys,
};
pub use recorded::RecordedAttempts;
pub use schema::SCHEMA_VERSION;
// The store's writer names the redaction `scrub`; it is the crate's one.
use crate::secrets as scrub;
pub use crate::secrets::{REDACTED, redact_json, redact_text};
pub use sink::StoreSink;
pub use views::{LsView, ShowView, StatusView};

// The fan-out moves each consumer to a thread of its own, and `status`
// reads from a blocking task: both types must be `Send` (checked when the
// crate compiles).
const _: () = {
    const fn assert_send<T: Send>() {}
    assert_send::<StoreSink>();
    assert_send::<Store>();
};

/// How long a connection waits for another one's lock before failing.
/// Writes are short batches, so this is only reached when something hangs.
const BUSY_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open the store {}: {source}", path.display())]
    Open {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error(
        "{} is not a readable palisweep store: {reason}\n  help: move it aside (a new one is \
         made by the next `palisweep run`; the trial folders keep each trial's history in \
         events.jsonl and attempts.jsonl), or pass --results DIR for another results root",
        path.display()
    )]
    Corrupt { path: PathBuf, reason: String },
    #[error(
        "no store at {}: nothing has run under this results root yet\n  help: run a sweep first, or pass --results DIR",
        path.display()
    )]
    Missing { path: PathBuf },
    #[error(
        "the store {} has schema version {found}, newer than this palisweep knows ({known})\n  help: upgrade palisweep to read it",
        path.display()
    )]
    TooNew {
        path: PathBuf,
        found: u32,
        known: u32,
    },
    #[error(
        "the store {} has schema version {found} and cannot be upgraded to {known} here: {source}\n  help: run palisweep once where the results root is writable",
        path.display()
    )]
    Outdated {
        path: PathBuf,
        found: u32,
        known: u32,
        source: Box<StoreError>,
    },
    #[error("no sweep `{query}` in the store{}", known_list(known))]
    NoSweep { query: String, known: Vec<String> },
    #[error("`{query}` matches several sweeps: {}\n  help: give more of the name or id", candidates.join(", "))]
    AmbiguousSweep {
        query: String,
        candidates: Vec<String>,
    },
    #[error("no trial `{query}` in the store")]
    NoTrial { query: String },
    #[error("`{query}` matches several trials: {}\n  help: give more of the id, or SWEEP/TRIAL", candidates.join(", "))]
    AmbiguousTrial {
        query: String,
        candidates: Vec<String>,
    },
    #[error("the store has no sweep yet")]
    Empty,
    #[error("event for trial `{trial}` of sweep `{sweep}`, which was never recorded")]
    UnknownTrial { sweep: String, trial: String },
    #[error("event `{event}` before any sweep_started: the store does not know its sweep")]
    NoCurrentSweep { event: &'static str },
    #[error("unknown export format `{0}` (expected csv or jsonl)")]
    Format(String),
    #[error(transparent)]
    Sqlite(#[from] rusqlite::Error),
    #[error(transparent)]
    Json(#[from] serde_json::Error),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// SQLite's "not a database" and "malformed" as [`StoreError::Corrupt`],
/// which names the file; other errors unchanged.
fn corrupt(error: StoreError, path: &Path) -> StoreError {
    match error {
        StoreError::Sqlite(error)
            if matches!(
                error.sqlite_error_code(),
                Some(rusqlite::ErrorCode::NotADatabase | rusqlite::ErrorCode::DatabaseCorrupt)
            ) =>
        {
            // SQLite's text alone: its error's own cause repeats it.
            StoreError::Corrupt {
                path: path.to_owned(),
                reason: error.to_string(),
            }
        }
        other => other,
    }
}

fn known_list(known: &[String]) -> String {
    if known.is_empty() {
        String::new()
    } else {
        format!("\n  help: known sweeps: {}", known.join(", "))
    }
}

/// An open store. One [`StoreSink`] writes; any number of read-only stores
/// (other threads or processes) read at the same time.
#[derive(Debug)]
pub struct Store {
    conn: Connection,
    path: PathBuf,
}

impl Store {
    /// Opens the store for writing, creating the file (and its folder) when
    /// missing and migrating an older schema forward.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let at = |source| StoreError::Open {
            path: path.to_owned(),
            source,
        };
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent)?;
        }
        let mut conn = Connection::open(path).map_err(at)?;
        conn.busy_timeout(BUSY_TIMEOUT).map_err(at)?;
        // Refuse a newer database (or none at all) before touching it.
        schema::check_not_newer(&conn, path).map_err(|e| corrupt(e, path))?;
        let _mode: String = conn
            .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
            .map_err(at)?;
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(at)?;
        conn.pragma_update(None, "foreign_keys", true).map_err(at)?;
        conn.pragma_update(None, "cache_size", -65_536)
            .map_err(at)?;
        conn.set_prepared_statement_cache_capacity(64);
        schema::migrate(&mut conn, path, SCHEMA_VERSION)?;
        let restored = schema::restore_missing(&conn)?;
        if !restored.is_empty() {
            eprintln!(
                "palisweep: the store {} lacked {} (dropped?): recreated empty; `palisweep run` fills them again from the trial folders",
                path.display(),
                restored.join(", ")
            );
        }
        schema::create_own_views(&conn).map_err(at)?;
        Ok(Store {
            conn,
            path: path.to_owned(),
        })
    }

    /// Opens an existing store for reading (`status`, `ls`, `show`,
    /// `report`); works while a sweep writes. A store from an older
    /// palisweep is migrated first (which needs write access, once).
    pub fn open_read_only(path: &Path) -> Result<Self, StoreError> {
        if !path.is_file() {
            return Err(StoreError::Missing {
                path: path.to_owned(),
            });
        }
        let conn = Self::connect_read_only(path)?;
        let found = schema::check_not_newer(&conn, path).map_err(|e| corrupt(e, path))?;
        if found < SCHEMA_VERSION {
            drop(conn);
            if let Err(e) = Store::open(path) {
                return Err(StoreError::Outdated {
                    path: path.to_owned(),
                    found,
                    known: SCHEMA_VERSION,
                    source: Box::new(e),
                });
            }
            return Self::read_only_store(Self::connect_read_only(path)?, path);
        }
        Self::read_only_store(conn, path)
    }

    /// A read-only store on `conn`, whose schema is current.
    fn read_only_store(conn: Connection, path: &Path) -> Result<Self, StoreError> {
        schema::create_own_views(&conn).map_err(|source| StoreError::Open {
            path: path.to_owned(),
            source,
        })?;
        Ok(Store {
            conn,
            path: path.to_owned(),
        })
    }

    fn connect_read_only(path: &Path) -> Result<Connection, StoreError> {
        let at = |source| StoreError::Open {
            path: path.to_owned(),
            source,
        };
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(at)?;
        conn.busy_timeout(BUSY_TIMEOUT).map_err(at)?;
        conn.set_prepared_statement_cache_capacity(64);
        Ok(conn)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The schema version of the file (`PRAGMA user_version`).
    pub fn schema_version(&self) -> Result<u32, StoreError> {
        schema::version(&self.conn)
    }

    /// The connection, for queries this module does not offer (read them
    /// only; the sink is the one writer).
    pub fn connection(&self) -> &Connection {
        &self.conn
    }
}

#[cfg(test)]
mod tests;

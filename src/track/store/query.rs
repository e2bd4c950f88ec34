//! Reads: what `status`, `ls`, `show`, `export-metrics` and the report ask
//! of the store. Plain structs (serialisable, for `--json`), no rendering.

use std::collections::{BTreeMap, BTreeSet};

use rusqlite::{Row, params};
use serde::Serialize;
use serde_json::Value;

use super::schema::{get_opt_u64, get_u64};
use super::{Store, StoreError};
use crate::events::event::Environment;
use crate::metrics::names::higher_is_better;

/// Trials by state.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct StateCounts {
    pub queued: usize,
    pub running: usize,
    pub finished: usize,
    pub failed: usize,
    pub pruned: usize,
    pub interrupted: usize,
    /// Waiting at an ASHA rung for a promotion.
    pub paused: usize,
}

impl StateCounts {
    pub fn total(&self) -> usize {
        self.queued
            + self.running
            + self.finished
            + self.failed
            + self.pruned
            + self.interrupted
            + self.paused
    }

    fn add(&mut self, status: &str, n: usize) {
        match status {
            "queued" => self.queued += n,
            "running" => self.running += n,
            "finished" => self.finished += n,
            "failed" => self.failed += n,
            "pruned" => self.pruned += n,
            "paused" => self.paused += n,
            _ => self.interrupted += n,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SweepRow {
    pub name: String,
    /// The spec hash (sha256, hex): the sweep's id.
    pub spec_hash: String,
    pub spec_path: String,
    pub results: String,
    pub status: String,
    pub created: f64,
    pub started: f64,
    pub ended: Option<f64>,
    pub total_trials: usize,
    pub devices: Vec<String>,
    pub axes: Vec<String>,
    pub select_metric: String,
    pub counts: StateCounts,
    /// Why `status` is not what the store recorded (a run that died).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

impl SweepRow {
    /// The short id shown next to the name (a SWEEP argument may be any
    /// unique prefix of the hash).
    pub fn id(&self) -> &str {
        &self.spec_hash[..self.spec_hash.len().min(12)]
    }
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TrialRow {
    pub sweep: String,
    pub id: String,
    pub params: Value,
    pub status: String,
    pub device: Option<String>,
    pub attempt: u32,
    pub batch_size: Option<u32>,
    pub grad_accum: Option<u32>,
    pub est_memory_bytes: Option<u64>,
    pub start: Option<f64>,
    pub end: Option<f64>,
    pub exit_reason: Option<String>,
    pub best_metric: Option<f64>,
    pub best_step: Option<u64>,
    pub dir: String,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct AttemptRow {
    pub attempt: u32,
    pub device: Option<String>,
    pub batch_size: Option<u32>,
    pub grad_accum: Option<u32>,
    pub pid: Option<u32>,
    /// The Slurm job that ran it (Slurm backend).
    pub slurm_job: Option<String>,
    pub threads: Option<i32>,
    pub trainable_params: Option<u64>,
    pub total_steps: Option<u64>,
    pub resumed_from: Option<u64>,
    pub dataset_fingerprint: Option<String>,
    pub start: Option<f64>,
    pub end: Option<f64>,
    pub outcome: Option<String>,
    pub exit_code: Option<i32>,
    pub failure_kind: Option<String>,
    pub reason: Option<String>,
    pub peak_memory_bytes: Option<u64>,
}

/// An attempt running (or queued) as a Slurm job, not yet ended.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct OpenJob {
    pub trial: String,
    pub attempt: u32,
    pub job: String,
    pub start: Option<f64>,
}

/// One metric of one trial, over all its attempts.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct MetricSummary {
    pub name: String,
    pub count: usize,
    pub last_step: u64,
    /// The value at the last step of the last attempt (None: NaN).
    pub last: Option<f64>,
    pub min: Option<f64>,
    pub max: Option<f64>,
    /// `max` or `min`, by the metric's direction.
    pub best: Option<f64>,
    pub higher_is_better: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct MetricPoint {
    pub attempt: u32,
    pub step: u64,
    pub epoch: Option<u64>,
    /// None when the worker reported NaN.
    pub value: Option<f64>,
    pub wall_time: f64,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ArtifactRow {
    pub kind: String,
    pub path: String,
    pub bytes: Option<u64>,
    pub sha256: Option<String>,
    pub step: Option<u64>,
}

/// One per-example predictions file of a trial (`track::predictions`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PredictionFileRow {
    /// `val` or `test`.
    pub split: String,
    pub step: u64,
    /// As the worker wrote it.
    pub path: String,
    /// Lines in the file.
    pub examples: u64,
    /// The per-example metric (`field_f1`, `box_f1`, `cer`).
    pub metric: String,
    /// The attempt that wrote the file last.
    pub attempt: u32,
}

/// One run's environment: the event's facts, when, and whether it resumed.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct EnvironmentRow {
    pub started: f64,
    pub resumed: bool,
    #[serde(flatten)]
    pub environment: Environment,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TrialDetail {
    pub trial: TrialRow,
    /// The resolved config (`trial.toml`, secrets redacted).
    pub config: String,
    pub attempts: Vec<AttemptRow>,
    pub metrics: Vec<MetricSummary>,
    pub artifacts: Vec<ArtifactRow>,
}

/// A running trial as `status` shows it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RunningTrial {
    pub id: String,
    pub device: Option<String>,
    pub attempt: u32,
    pub step: Option<u64>,
    pub total_steps: Option<u64>,
    pub loss: Option<f64>,
    pub start: Option<f64>,
}

/// A failed attempt or trial, with why.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Failure {
    pub id: String,
    pub attempt: u32,
    pub status: String,
    pub outcome: Option<String>,
    pub exit_code: Option<i32>,
    pub reason: Option<String>,
}

/// What the report needs of one trial for one metric.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TrialResult {
    pub id: String,
    pub params: Value,
    pub status: String,
    pub device: Option<String>,
    pub batch_size: Option<u32>,
    /// The best value of the metric over every step of every attempt.
    pub best: Option<f64>,
    pub best_step: Option<u64>,
    /// The value at the trial's last reported step.
    pub last: Option<f64>,
    /// Seconds spent in attempts (summed; running ones up to their last metric).
    pub wall_time_s: Option<f64>,
    /// The largest of the attempts' measured peaks and `perf/peak_memory_bytes`.
    pub peak_memory_bytes: Option<u64>,
}

const SWEEP_COLUMNS: &str = "name, spec_hash, spec_path, results, status, created, started, ended,
     total_trials, devices, axes, select_metric";

fn json_list(text: &str) -> Vec<String> {
    serde_json::from_str(text).unwrap_or_default()
}

fn sweep_from_row(row: &Row<'_>) -> rusqlite::Result<SweepRow> {
    Ok(SweepRow {
        name: row.get(0)?,
        spec_hash: row.get(1)?,
        spec_path: row.get(2)?,
        results: row.get(3)?,
        status: row.get(4)?,
        created: row.get(5)?,
        started: row.get(6)?,
        ended: row.get(7)?,
        total_trials: get_u64(row, 8)? as usize,
        devices: json_list(&row.get::<_, String>(9)?),
        axes: json_list(&row.get::<_, String>(10)?),
        select_metric: row.get(11)?,
        counts: StateCounts::default(),
        note: None,
    })
}

const TRIAL_COLUMNS: &str = "sweep, id, params, status, device, attempt, batch_size, grad_accum,
     est_memory_bytes, start, end, exit_reason, best_metric, best_step, dir";

fn trial_from_row(row: &Row<'_>) -> rusqlite::Result<TrialRow> {
    Ok(TrialRow {
        sweep: row.get(0)?,
        id: row.get(1)?,
        params: serde_json::from_str(&row.get::<_, String>(2)?).unwrap_or(Value::Null),
        status: row.get(3)?,
        device: row.get(4)?,
        attempt: row.get(5)?,
        batch_size: row.get(6)?,
        grad_accum: row.get(7)?,
        est_memory_bytes: get_opt_u64(row, 8)?,
        start: row.get(9)?,
        end: row.get(10)?,
        exit_reason: row.get(11)?,
        best_metric: row.get(12)?,
        best_step: get_opt_u64(row, 13)?,
        dir: row.get(14)?,
    })
}

impl Store {
    /// Every sweep, most recently started first, with its trial counts.
    pub fn sweeps(&self) -> Result<Vec<SweepRow>, StoreError> {
        let mut stmt = self.conn.prepare_cached(&format!(
            "SELECT {SWEEP_COLUMNS} FROM sweeps ORDER BY started DESC, name"
        ))?;
        let mut sweeps: Vec<SweepRow> = stmt
            .query_map([], sweep_from_row)?
            .collect::<Result<_, _>>()?;
        for sweep in &mut sweeps {
            sweep.counts = self.counts(&sweep.name)?;
            self.settle_orphaned(sweep)?;
        }
        Ok(sweeps)
    }

    /// Trial counts by state of one sweep.
    pub fn counts(&self, sweep: &str) -> Result<StateCounts, StoreError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT status, COUNT(*) FROM trials WHERE sweep = ?1 GROUP BY status",
        )?;
        let mut counts = StateCounts::default();
        let rows = stmt.query_map([sweep], |r| Ok((r.get::<_, String>(0)?, get_u64(r, 1)?)))?;
        for row in rows {
            let (status, n) = row?;
            counts.add(&status, n as usize);
        }
        Ok(counts)
    }

    /// The sweep a SWEEP argument names: its exact name, else the one
    /// sweep whose name or spec hash starts with it.
    pub fn resolve_sweep(&self, query: &str) -> Result<SweepRow, StoreError> {
        let sweeps = self.sweeps()?;
        if let Some(s) = sweeps.iter().find(|s| s.name == query) {
            return Ok(s.clone());
        }
        let lower = query.to_ascii_lowercase();
        let matches: Vec<&SweepRow> = sweeps
            .iter()
            .filter(|s| {
                !query.is_empty() && (s.name.starts_with(query) || s.spec_hash.starts_with(&lower))
            })
            .collect();
        match matches.as_slice() {
            [one] => Ok((*one).clone()),
            [] => Err(StoreError::NoSweep {
                query: query.to_owned(),
                known: sweeps.iter().map(|s| s.name.clone()).collect(),
            }),
            many => Err(StoreError::AmbiguousSweep {
                query: query.to_owned(),
                candidates: many
                    .iter()
                    .map(|s| format!("{} ({})", s.name, s.id()))
                    .collect(),
            }),
        }
    }

    /// The sweep named, or the most recently started one.
    pub fn sweep_or_latest(&self, query: Option<&str>) -> Result<SweepRow, StoreError> {
        match query {
            Some(q) => self.resolve_sweep(q),
            None => self.sweeps()?.into_iter().next().ok_or(StoreError::Empty),
        }
    }

    /// The trials of a sweep, by id.
    pub fn trials(&self, sweep: &str) -> Result<Vec<TrialRow>, StoreError> {
        let mut stmt = self.conn.prepare_cached(&format!(
            "SELECT {TRIAL_COLUMNS} FROM trials WHERE sweep = ?1 ORDER BY id"
        ))?;
        Ok(stmt
            .query_map([sweep], trial_from_row)?
            .collect::<Result<_, _>>()?)
    }

    /// The trial a TRIAL argument names: `ID`, a unique prefix of one, or
    /// `SWEEP/ID` when the id is in several sweeps.
    pub fn resolve_trial(&self, query: &str) -> Result<TrialRow, StoreError> {
        let (sweep, id) = match query.split_once('/') {
            Some((s, id)) => (Some(self.resolve_sweep(s)?.name), id),
            None => (None, query),
        };
        let mut stmt = self.conn.prepare_cached(&format!(
            "SELECT {TRIAL_COLUMNS} FROM trials
             WHERE id >= ?1 AND id < ?1 || char(1114111) AND (?2 IS NULL OR sweep = ?2)
             ORDER BY id, sweep"
        ))?;
        let found: Vec<TrialRow> = stmt
            .query_map(params![id, sweep], trial_from_row)?
            .collect::<Result<_, _>>()?;
        let exact: Vec<&TrialRow> = found.iter().filter(|t| t.id == id).collect();
        let pick: Vec<&TrialRow> = if exact.is_empty() {
            found.iter().collect()
        } else {
            exact
        };
        match pick.as_slice() {
            [one] if !id.is_empty() => Ok((*one).clone()),
            [] | [_] => Err(StoreError::NoTrial {
                query: query.to_owned(),
            }),
            many => Err(StoreError::AmbiguousTrial {
                query: query.to_owned(),
                candidates: many
                    .iter()
                    .take(10)
                    .map(|t| format!("{}/{}", t.sweep, t.id))
                    .collect(),
            }),
        }
    }

    /// Everything `show` prints about a trial.
    pub fn trial_detail(&self, query: &str) -> Result<TrialDetail, StoreError> {
        let trial = self.resolve_trial(query)?;
        let config: String = self.conn.query_row(
            "SELECT config FROM trials WHERE sweep = ?1 AND id = ?2",
            [&trial.sweep, &trial.id],
            |r| r.get(0),
        )?;
        Ok(TrialDetail {
            attempts: self.attempts(&trial.sweep, &trial.id)?,
            metrics: self.metric_summary(&trial.sweep, &trial.id)?,
            artifacts: self.artifacts(&trial.sweep, &trial.id)?,
            config,
            trial,
        })
    }

    pub fn attempts(&self, sweep: &str, trial: &str) -> Result<Vec<AttemptRow>, StoreError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT attempt, device, batch_size, grad_accum, pid, threads, trainable_params,
                    total_steps, resumed_from, dataset_fingerprint, start, end, outcome,
                    exit_code, failure_kind, reason, peak_memory_bytes, slurm_job
             FROM attempts WHERE sweep = ?1 AND trial_id = ?2 ORDER BY attempt",
        )?;
        let rows = stmt.query_map([sweep, trial], |r| {
            Ok(AttemptRow {
                attempt: r.get(0)?,
                device: r.get(1)?,
                batch_size: r.get(2)?,
                grad_accum: r.get(3)?,
                pid: r.get(4)?,
                threads: r.get(5)?,
                trainable_params: get_opt_u64(r, 6)?,
                total_steps: get_opt_u64(r, 7)?,
                resumed_from: get_opt_u64(r, 8)?,
                dataset_fingerprint: r.get(9)?,
                start: r.get(10)?,
                end: r.get(11)?,
                outcome: r.get(12)?,
                exit_code: r.get(13)?,
                failure_kind: r.get(14)?,
                reason: r.get(15)?,
                peak_memory_bytes: get_opt_u64(r, 16)?,
                slurm_job: r.get(17)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Each trial's resolved config (`trial.toml`'s text), by id.
    pub fn trial_configs(&self, sweep: &str) -> Result<BTreeMap<String, String>, StoreError> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT id, config FROM trials WHERE sweep = ?1")?;
        let rows = stmt.query_map([sweep], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Attempts of the sweep that run as Slurm jobs and have not ended:
    /// what a restarted orchestrator follows instead of submitting again.
    pub fn open_slurm_jobs(&self, sweep: &str) -> Result<Vec<OpenJob>, StoreError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT trial_id, attempt, slurm_job, start FROM attempts
             WHERE sweep = ?1 AND slurm_job IS NOT NULL AND end IS NULL
             ORDER BY trial_id, attempt",
        )?;
        let rows = stmt.query_map([sweep], |r| {
            Ok(OpenJob {
                trial: r.get(0)?,
                attempt: r.get(1)?,
                job: r.get(2)?,
                start: r.get(3)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Last, min, max and best of every metric of a trial's own attempts
    /// (not its reruns).
    pub fn metric_summary(
        &self,
        sweep: &str,
        trial: &str,
    ) -> Result<Vec<MetricSummary>, StoreError> {
        let mut stmt = self.conn.prepare_cached(
            "WITH own AS (SELECT * FROM own_metrics WHERE sweep = ?1 AND trial_id = ?2)
             SELECT name, COUNT(*), MIN(value), MAX(value),
                    (SELECT m2.step FROM own m2 WHERE m2.name = m.name
                      ORDER BY m2.attempt DESC, m2.step DESC LIMIT 1),
                    (SELECT m2.value FROM own m2 WHERE m2.name = m.name
                      ORDER BY m2.attempt DESC, m2.step DESC LIMIT 1)
             FROM own m GROUP BY name ORDER BY name",
        )?;
        let rows = stmt.query_map([sweep, trial], |r| {
            let name: String = r.get(0)?;
            let min: Option<f64> = r.get(2)?;
            let max: Option<f64> = r.get(3)?;
            let higher = higher_is_better(&name);
            Ok(MetricSummary {
                count: get_u64(r, 1)? as usize,
                min,
                max,
                best: if higher { max } else { min },
                last_step: get_u64(r, 4)?,
                last: r.get(5)?,
                higher_is_better: higher,
                name,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// One metric of a trial over time (every attempt of its own, in order;
    /// reruns are left out).
    pub fn metric_series(
        &self,
        sweep: &str,
        trial: &str,
        name: &str,
    ) -> Result<Vec<MetricPoint>, StoreError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT attempt, step, epoch, value, wall_time FROM own_metrics
             WHERE sweep = ?1 AND name = ?3 AND trial_id = ?2
             ORDER BY attempt, step",
        )?;
        let rows = stmt.query_map([sweep, trial, name], |r| {
            Ok(MetricPoint {
                attempt: r.get(0)?,
                step: get_u64(r, 1)?,
                epoch: get_opt_u64(r, 2)?,
                value: r.get(3)?,
                wall_time: r.get(4)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// The metric names a trial (or, with `trial` None, any trial of the
    /// sweep) reported.
    pub fn metric_names(
        &self,
        sweep: &str,
        trial: Option<&str>,
    ) -> Result<Vec<String>, StoreError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT DISTINCT name FROM metrics
             WHERE sweep = ?1 AND (?2 IS NULL OR trial_id = ?2) ORDER BY name",
        )?;
        Ok(stmt
            .query_map(params![sweep, trial], |r| r.get(0))?
            .collect::<Result<_, _>>()?)
    }

    pub fn artifacts(&self, sweep: &str, trial: &str) -> Result<Vec<ArtifactRow>, StoreError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT kind, path, bytes, sha256, step FROM artifacts
             WHERE sweep = ?1 AND trial_id = ?2 ORDER BY kind, step, path",
        )?;
        let rows = stmt.query_map([sweep, trial], |r| {
            Ok(ArtifactRow {
                kind: r.get(0)?,
                path: r.get(1)?,
                bytes: get_opt_u64(r, 2)?,
                sha256: r.get(3)?,
                step: get_opt_u64(r, 4)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// The environment of each run of a sweep, oldest first.
    pub fn environments(&self, sweep: &str) -> Result<Vec<EnvironmentRow>, StoreError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT started, resumed, palisweep_version, git_sha, libtorch_version, cuda_version,
                    gpu_names, driver_version, host, dataset_fingerprint, checkpoint_fingerprints
             FROM environment WHERE sweep = ?1 ORDER BY started",
        )?;
        let rows = stmt.query_map([sweep], |r| {
            Ok(EnvironmentRow {
                started: r.get(0)?,
                resumed: r.get(1)?,
                environment: Environment {
                    palisweep_version: r.get(2)?,
                    git_sha: r.get(3)?,
                    libtorch_version: r.get(4)?,
                    cuda_version: r.get(5)?,
                    gpu_names: json_list(&r.get::<_, String>(6)?),
                    driver_version: r.get(7)?,
                    host: r.get(8)?,
                    dataset_fingerprint: r.get(9)?,
                    checkpoint_fingerprints: serde_json::from_str(&r.get::<_, String>(10)?)
                        .unwrap_or_default(),
                },
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Running trials with their latest step and training loss.
    pub fn running(&self, sweep: &str) -> Result<Vec<RunningTrial>, StoreError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT t.id, t.device, t.attempt, t.start,
               (SELECT MAX(step) FROM metrics m
                 WHERE m.trial_id = t.id AND m.sweep = t.sweep AND m.attempt = t.attempt),
               (SELECT value FROM metrics m
                 WHERE m.trial_id = t.id AND m.sweep = t.sweep AND m.attempt = t.attempt
                   AND m.name = 'train/loss' ORDER BY step DESC LIMIT 1),
               (SELECT total_steps FROM attempts a
                 WHERE a.sweep = t.sweep AND a.trial_id = t.id AND a.attempt = t.attempt)
             FROM trials t WHERE t.sweep = ?1 AND t.status = 'running' ORDER BY t.device, t.id",
        )?;
        let rows = stmt.query_map([sweep], |r| {
            Ok(RunningTrial {
                id: r.get(0)?,
                device: r.get(1)?,
                attempt: r.get(2)?,
                start: r.get(3)?,
                step: get_opt_u64(r, 4)?,
                loss: r.get(5)?,
                total_steps: get_opt_u64(r, 6)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Failed trials, and failed attempts of trials that went on (OOM
    /// retries), with their reasons.
    pub fn failures(&self, sweep: &str) -> Result<Vec<Failure>, StoreError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT t.id, COALESCE(a.attempt, t.attempt), t.status, a.outcome, a.exit_code,
                    COALESCE(a.reason, t.exit_reason)
             FROM trials t LEFT JOIN own_attempts a
               ON a.sweep = t.sweep AND a.trial_id = t.id
              AND a.outcome IS NOT NULL AND a.outcome NOT IN ('finished', 'stopped', 'paused')
             WHERE t.sweep = ?1 AND (t.status = 'failed' OR a.attempt IS NOT NULL)
             ORDER BY t.id, a.attempt",
        )?;
        let rows = stmt.query_map([sweep], |r| {
            Ok(Failure {
                id: r.get(0)?,
                attempt: r.get(1)?,
                status: r.get(2)?,
                outcome: r.get(3)?,
                exit_code: r.get(4)?,
                reason: r.get(5)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// For the report: each trial's best and last value of `metric`, wall
    /// time and peak memory, over its own attempts (`own_metrics`,
    /// `own_attempts`: reruns leave the trial's results alone).
    pub fn trial_results(&self, sweep: &str, metric: &str) -> Result<Vec<TrialResult>, StoreError> {
        let agg = if higher_is_better(metric) {
            "MAX"
        } else {
            "MIN"
        };
        let order = if higher_is_better(metric) {
            "DESC"
        } else {
            "ASC"
        };
        let mut stmt = self.conn.prepare_cached(&format!(
            "SELECT t.id, t.params, t.status, t.device, t.batch_size,
               (SELECT {agg}(value) FROM own_metrics m
                 WHERE m.sweep = t.sweep AND m.name = ?2 AND m.trial_id = t.id),
               (SELECT step FROM own_metrics m
                 WHERE m.sweep = t.sweep AND m.name = ?2 AND m.trial_id = t.id
                   AND value IS NOT NULL
                 ORDER BY value {order}, step LIMIT 1),
               (SELECT value FROM own_metrics m
                 WHERE m.sweep = t.sweep AND m.name = ?2 AND m.trial_id = t.id
                 ORDER BY attempt DESC, step DESC LIMIT 1),
               (SELECT SUM(COALESCE(a.end,
                     (SELECT MAX(wall_time) FROM metrics m
                       WHERE m.trial_id = a.trial_id AND m.sweep = a.sweep AND m.attempt = a.attempt))
                   - a.start)
                 FROM own_attempts a WHERE a.sweep = t.sweep AND a.trial_id = t.id),
               MAX(COALESCE((SELECT MAX(peak_memory_bytes) FROM own_attempts a
                              WHERE a.sweep = t.sweep AND a.trial_id = t.id), 0),
                   COALESCE((SELECT MAX(value) FROM own_metrics m
                              WHERE m.sweep = t.sweep AND m.name = 'perf/peak_memory_bytes'
                                AND m.trial_id = t.id), 0))
             FROM trials t WHERE t.sweep = ?1 ORDER BY t.id"
        ))?;
        let rows = stmt.query_map([sweep, metric], |r| {
            let peak: f64 = r.get(9)?;
            Ok(TrialResult {
                id: r.get(0)?,
                params: serde_json::from_str(&r.get::<_, String>(1)?).unwrap_or(Value::Null),
                status: r.get(2)?,
                device: r.get(3)?,
                batch_size: r.get(4)?,
                best: r.get(5)?,
                best_step: get_opt_u64(r, 6)?,
                last: r.get(7)?,
                wall_time_s: r.get(8)?,
                peak_memory_bytes: (peak > 0.0).then_some(peak as u64),
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// The trial's sweep, when the trial id is in exactly one.
    pub fn sweep_of(&self, trial: &str) -> Result<Option<String>, StoreError> {
        let found: Vec<String> = self
            .conn
            .prepare_cached("SELECT sweep FROM trials WHERE id = ?1")?
            .query_map([trial], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        Ok(match found.as_slice() {
            [one] => Some(one.clone()),
            _ => None,
        })
    }

    /// Rows of a sweep's `metrics`, ordered by trial, attempt, step, name,
    /// handed to `f` one by one (for exports too big to hold).
    pub fn for_each_metric(
        &self,
        sweep: &str,
        mut f: impl FnMut(&MetricRow<'_>) -> Result<(), StoreError>,
    ) -> Result<usize, StoreError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT m.trial_id, m.attempt, m.step, m.epoch, m.name, m.value, m.wall_time,
                    EXISTS (SELECT 1 FROM own_metrics o
                             WHERE o.trial_id = m.trial_id AND o.sweep = m.sweep
                               AND o.attempt = m.attempt AND o.step = m.step AND o.name = m.name)
             FROM metrics m
             WHERE m.sweep = ?1 ORDER BY m.trial_id, m.attempt, m.step, m.name",
        )?;
        let mut rows = stmt.query([sweep])?;
        let mut n = 0;
        while let Some(r) = rows.next()? {
            let trial: String = r.get(0)?;
            let name: String = r.get(4)?;
            f(&MetricRow {
                sweep,
                trial_id: &trial,
                attempt: r.get(1)?,
                step: get_u64(r, 2)?,
                epoch: get_opt_u64(r, 3)?,
                name: &name,
                value: r.get(5)?,
                wall_time: r.get(6)?,
                in_curve: r.get(7)?,
            })?;
            n += 1;
        }
        Ok(n)
    }

    /// The environment of the sweep's latest run (for `rerun` checks).
    pub fn latest_environment(&self, sweep: &str) -> Result<Option<EnvironmentRow>, StoreError> {
        Ok(self.environments(sweep)?.pop())
    }
}

/// One row of `metrics`, as exports write it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct MetricRow<'a> {
    pub sweep: &'a str,
    pub trial_id: &'a str,
    pub attempt: u32,
    pub step: u64,
    pub epoch: Option<u64>,
    pub name: &'a str,
    pub value: Option<f64>,
    pub wall_time: f64,
    /// Whether the row is its trial's point at this step: false for a step
    /// that a later attempt of the trial ran again after resuming, and for
    /// a rerun's rows (see `schema::create_own_views`).
    pub in_curve: bool,
}

/// The parameters whose value differs between `trials` (or that some lack).
pub fn varying_keys(trials: &[TrialRow]) -> Vec<String> {
    let mut values: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for trial in trials {
        if let Value::Object(map) = &trial.params {
            for (k, v) in map {
                values.entry(k.clone()).or_default().insert(v.to_string());
            }
        }
    }
    values
        .into_iter()
        .filter(|(k, v)| v.len() > 1 || trials.iter().any(|t| t.params.get(k.as_str()).is_none()))
        .map(|(k, _)| k)
        .collect()
}

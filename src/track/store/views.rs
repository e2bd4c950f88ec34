//! What `status`, `ls` and `show` print, as text and as JSON: pure
//! renderings of what the store's queries read. The CLI calls e.g.
//! `views::status(&store, sweep)?.to_text()` (or `.to_json()` for `--json`).

use std::fmt::Write as _;

use serde_json::{Value, json};

use super::query::{Failure, RunningTrial, SweepRow, TrialDetail};
use super::{Store, StoreError};

/// `palisweep status [SWEEP]`: counts by state, running trials, failures.
#[derive(Clone, Debug, PartialEq)]
pub struct StatusView {
    pub sweep: SweepRow,
    pub running: Vec<RunningTrial>,
    pub failures: Vec<Failure>,
}

/// `palisweep ls`: every sweep.
#[derive(Clone, Debug, PartialEq)]
pub struct LsView {
    pub sweeps: Vec<SweepRow>,
}

/// `palisweep show TRIAL`.
#[derive(Clone, Debug, PartialEq)]
pub struct ShowView {
    pub detail: TrialDetail,
}

/// The status of the sweep named (name or id prefix), or of the most
/// recently started one.
pub fn status(store: &Store, sweep: Option<&str>) -> Result<StatusView, StoreError> {
    let sweep = store.sweep_or_latest(sweep)?;
    // A sweep whose run died has nothing running, whatever the rows say.
    let running = if sweep.note.is_some() {
        Vec::new()
    } else {
        store.running(&sweep.name)?
    };
    Ok(StatusView {
        running,
        failures: store.failures(&sweep.name)?,
        sweep,
    })
}

pub fn ls(store: &Store) -> Result<LsView, StoreError> {
    Ok(LsView {
        sweeps: store.sweeps()?,
    })
}

/// A trial by id, unique id prefix, or `SWEEP/ID`. Checkpoints that are
/// gone from disk (`resources.keep_checkpoints` deletes the older ones)
/// are not listed; the store keeps their rows as history.
pub fn show(store: &Store, trial: &str) -> Result<ShowView, StoreError> {
    let mut detail = store.trial_detail(trial)?;
    detail
        .artifacts
        .retain(|a| a.kind != "checkpoint" || std::path::Path::new(&a.path).exists());
    Ok(ShowView { detail })
}

impl StatusView {
    pub fn to_text(&self) -> String {
        let s = &self.sweep;
        let c = &s.counts;
        // A sweep started when it first ran (`created`); `started` is the
        // latest run's start, which a resume moves.
        let mut out = format!(
            "sweep {} ({})  {}  started {}{}{}\n",
            s.name,
            s.id(),
            s.status,
            timestamp(s.created),
            if s.started > s.created {
                format!(", resumed {}", timestamp(s.started))
            } else {
                String::new()
            },
            s.ended
                .map(|e| format!(", ended {}", timestamp(e)))
                .unwrap_or_default()
        );
        if let Some(note) = &s.note {
            let _ = writeln!(out, "  {note}");
        }
        let _ = writeln!(
            out,
            "trials {}/{}: {} queued, {} running, {} finished, {} failed, {} pruned, {} interrupted",
            c.finished + c.failed + c.pruned,
            s.total_trials.max(c.total()),
            c.queued,
            c.running,
            c.finished,
            c.failed,
            c.pruned,
            c.interrupted
        );
        if c.paused > 0 {
            // Before the newline writeln! added: same line.
            out.pop();
            let _ = writeln!(out, ", {} paused at an ASHA rung", c.paused);
        }
        if !self.running.is_empty() {
            out.push_str("\nrunning\n");
            let rows: Vec<Vec<String>> = self
                .running
                .iter()
                .map(|r| {
                    vec![
                        r.id.clone(),
                        opt(r.device.as_deref()),
                        r.attempt.to_string(),
                        match (r.step, r.total_steps) {
                            (Some(s), Some(t)) => format!("{s}/{t}"),
                            (Some(s), None) => s.to_string(),
                            (None, _) => "-".into(),
                        },
                        r.loss.map_or("-".into(), number),
                    ]
                })
                .collect();
            out.push_str(&table(
                &["trial", "device", "attempt", "step", "loss"],
                &rows,
            ));
        }
        if !self.failures.is_empty() {
            out.push_str("\nfailures\n");
            let rows: Vec<Vec<String>> = self
                .failures
                .iter()
                .map(|f| {
                    vec![
                        f.id.clone(),
                        f.attempt.to_string(),
                        f.status.clone(),
                        opt(f.outcome.as_deref()),
                        f.exit_code.map_or("-".into(), |c| c.to_string()),
                        one_line(f.reason.as_deref().unwrap_or("-")),
                    ]
                })
                .collect();
            out.push_str(&table(
                &[
                    "trial",
                    "attempt",
                    "trial status",
                    "outcome",
                    "exit",
                    "reason",
                ],
                &rows,
            ));
        }
        out
    }

    pub fn to_json(&self) -> Value {
        json!({
            "sweep": sweep_json(&self.sweep),
            "running": self.running,
            "failures": self.failures,
        })
    }
}

impl LsView {
    pub fn to_text(&self) -> String {
        if self.sweeps.is_empty() {
            return "no sweeps\n".into();
        }
        let rows: Vec<Vec<String>> = self
            .sweeps
            .iter()
            .map(|s| {
                let c = &s.counts;
                vec![
                    s.name.clone(),
                    s.id().to_owned(),
                    s.status.clone(),
                    format!(
                        "{}/{}",
                        c.finished + c.pruned,
                        s.total_trials.max(c.total())
                    ),
                    c.running.to_string(),
                    c.failed.to_string(),
                    timestamp(s.created),
                    s.select_metric.clone(),
                ]
            })
            .collect();
        table(
            &[
                "sweep", "id", "status", "done", "running", "failed", "started", "metric",
            ],
            &rows,
        )
    }

    pub fn to_json(&self) -> Value {
        Value::Array(self.sweeps.iter().map(sweep_json).collect())
    }
}

impl ShowView {
    pub fn to_text(&self) -> String {
        let d = &self.detail;
        let t = &d.trial;
        let mut out = format!("trial {} of sweep {}  {}\n", t.id, t.sweep, t.status);
        let _ = writeln!(out, "folder  {}", t.dir);
        if let Value::Object(params) = &t.params
            && !params.is_empty()
        {
            let list: Vec<String> = params.iter().map(|(k, v)| format!("{k}={v}")).collect();
            let _ = writeln!(out, "params  {}", list.join("  "));
        }
        if let Some(best) = t.best_metric {
            let _ = writeln!(
                out,
                "best    {}{}",
                number(best),
                t.best_step
                    .map(|s| format!(" (step {s})"))
                    .unwrap_or_default()
            );
        }
        if let Some(reason) = &t.exit_reason {
            let _ = writeln!(out, "reason  {}", one_line(reason));
        }
        out.push_str("\nconfig\n");
        for line in d.config.lines() {
            let _ = writeln!(out, "  {line}");
        }
        out.push_str(&attempts_table(d));
        if !d.metrics.is_empty() {
            out.push_str("\nmetrics\n");
            let rows: Vec<Vec<String>> = d
                .metrics
                .iter()
                .map(|m| {
                    let f = |v: Option<f64>| v.map_or("nan".into(), number);
                    vec![
                        m.name.clone(),
                        m.count.to_string(),
                        m.last_step.to_string(),
                        f(m.last),
                        f(m.best),
                        f(m.min),
                        f(m.max),
                    ]
                })
                .collect();
            out.push_str(&table(
                &[
                    "metric",
                    "points",
                    "last step",
                    "last",
                    "best",
                    "min",
                    "max",
                ],
                &rows,
            ));
        }
        if !d.artifacts.is_empty() {
            out.push_str("\nartifacts\n");
            let rows: Vec<Vec<String>> = d
                .artifacts
                .iter()
                .map(|a| {
                    vec![
                        a.kind.clone(),
                        a.step.map_or("-".into(), |s| s.to_string()),
                        a.bytes.map_or("-".into(), bytes),
                        a.sha256
                            .as_deref()
                            .map_or("-".into(), |h| h[..h.len().min(12)].to_owned()),
                        a.path.clone(),
                    ]
                })
                .collect();
            out.push_str(&table(&["kind", "step", "size", "sha256", "path"], &rows));
        }
        out
    }

    pub fn to_json(&self) -> Value {
        serde_json::to_value(&self.detail).unwrap_or(Value::Null)
    }
}

fn attempts_table(d: &TrialDetail) -> String {
    let mut out = String::new();
    if d.attempts.is_empty() {
        return String::new();
    }
    {
        out.push_str("\nattempts\n");
        let rows: Vec<Vec<String>> = d
            .attempts
            .iter()
            .map(|a| {
                vec![
                    a.attempt.to_string(),
                    // A Slurm attempt names its job.
                    match &a.slurm_job {
                        Some(job) => format!("{} job {job}", opt(a.device.as_deref())),
                        None => opt(a.device.as_deref()),
                    },
                    a.batch_size.map_or("-".into(), |b| b.to_string()),
                    a.grad_accum.map_or("-".into(), |b| b.to_string()),
                    a.start.map_or("-".into(), timestamp),
                    match (a.start, a.end) {
                        (Some(s), Some(e)) => duration(e - s),
                        _ => "-".into(),
                    },
                    opt(a.outcome.as_deref()),
                    a.exit_code.map_or("-".into(), |c| c.to_string()),
                    a.peak_memory_bytes.map_or("-".into(), bytes),
                    one_line(a.reason.as_deref().unwrap_or("-")),
                ]
            })
            .collect();
        out.push_str(&table(
            &[
                "attempt", "device", "batch", "accum", "start", "took", "outcome", "exit", "peak",
                "reason",
            ],
            &rows,
        ));
    }
    out
}

fn sweep_json(s: &SweepRow) -> Value {
    let mut v = serde_json::to_value(s).unwrap_or(Value::Null);
    if let Value::Object(map) = &mut v {
        map.insert("id".into(), Value::String(s.id().to_owned()));
    }
    v
}

fn opt(s: Option<&str>) -> String {
    s.unwrap_or("-").to_owned()
}

/// The first line of a message, cut to 100 characters.
fn one_line(s: &str) -> String {
    let line = s
        .lines()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("")
        .trim();
    if line.chars().count() > 100 {
        format!("{}…", line.chars().take(99).collect::<String>())
    } else {
        line.to_owned()
    }
}

/// A metric value: 4 significant digits, scientific when tiny or huge.
pub(crate) fn number(v: f64) -> String {
    if v == 0.0 || (1e-3..1e6).contains(&v.abs()) {
        let s = format!("{v:.4}");
        let s = s.trim_end_matches('0').trim_end_matches('.');
        s.to_owned()
    } else {
        format!("{v:.3e}")
    }
}

fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

/// Seconds as `42s`, `3m05s`, `2h01m`.
pub(crate) fn duration(seconds: f64) -> String {
    let s = seconds.max(0.0).round() as u64;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
    }
}

/// Seconds since the epoch as `YYYY-MM-DD HH:MM:SS` UTC.
fn timestamp(t: f64) -> String {
    let secs = t.max(0.0) as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

/// Left-aligned columns separated by two spaces, with a header row.
pub(crate) fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: &mut dyn Iterator<Item = &str>| {
        let mut text = String::new();
        for (i, (cell, w)) in cells.zip(&widths).enumerate() {
            if i > 0 {
                text.push_str("  ");
            }
            let _ = write!(text, "{cell:<w$}");
        }
        out.push_str(text.trim_end());
        out.push('\n');
    };
    line(&mut headers.iter().copied());
    for row in rows {
        line(&mut row.iter().map(String::as_str));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn helpers_format_times_sizes_and_tables() {
        assert_eq!(timestamp(0.0), "1970-01-01 00:00:00");
        assert_eq!(timestamp(1_700_000_000.0), "2023-11-14 22:13:20");
        assert_eq!(duration(3725.0), "1h02m");
        assert_eq!(duration(65.0), "1m05s");
        assert_eq!(bytes(3 * 1024 * 1024 * 1024), "3.0 GiB");
        assert_eq!(number(0.25), "0.25");
        assert_eq!(number(1e-5), "1.000e-5");
        let t = table(&["a", "bb"], &[vec!["xyz".into(), "1".into()]]);
        assert_eq!(t, "a    bb\nxyz  1\n");
    }
}

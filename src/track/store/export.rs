//! `palisweep export-metrics SWEEP --format csv|jsonl`: a sweep's `metrics`
//! rows, one per line, streamed to any writer. A NaN value is written as an
//! empty CSV field or JSON `null`. Every row is written, also the steps a
//! resumed attempt ran again; `in_curve` marks the rows that make each
//! trial's curves (one per step: filter on it to plot).

use std::io::Write;
use std::str::FromStr;

use super::query::MetricRow;
use super::{Store, StoreError};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExportFormat {
    Csv,
    Jsonl,
}

impl FromStr for ExportFormat {
    type Err = StoreError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "csv" => Ok(ExportFormat::Csv),
            "jsonl" | "ndjson" => Ok(ExportFormat::Jsonl),
            _ => Err(StoreError::Format(s.to_owned())),
        }
    }
}

const COLUMNS: [&str; 9] = [
    "sweep",
    "trial_id",
    "attempt",
    "step",
    "epoch",
    "name",
    "value",
    "wall_time",
    "in_curve",
];

/// Writes the metrics of `sweep` (a name or id prefix); returns the number
/// of rows.
pub fn export_metrics(
    store: &Store,
    sweep: &str,
    format: ExportFormat,
    out: &mut impl Write,
) -> Result<usize, StoreError> {
    let sweep = store.resolve_sweep(sweep)?;
    if format == ExportFormat::Csv {
        writeln!(out, "{}", COLUMNS.join(","))?;
    }
    let n = store.for_each_metric(&sweep.name, |row| {
        match format {
            ExportFormat::Csv => write_csv(out, row)?,
            ExportFormat::Jsonl => {
                serde_json::to_writer(&mut *out, row)?;
                out.write_all(b"\n")?;
            }
        }
        Ok(())
    })?;
    out.flush()?;
    Ok(n)
}

fn write_csv(out: &mut impl Write, row: &MetricRow<'_>) -> std::io::Result<()> {
    let fields = [
        csv_field(row.sweep),
        csv_field(row.trial_id),
        row.attempt.to_string(),
        row.step.to_string(),
        row.epoch.map(|e| e.to_string()).unwrap_or_default(),
        csv_field(row.name),
        row.value.map(|v| v.to_string()).unwrap_or_default(),
        row.wall_time.to_string(),
        row.in_curve.to_string(),
    ];
    writeln!(out, "{}", fields.join(","))
}

/// RFC 4180: a field holding a comma, quote or line break is quoted, with
/// its quotes doubled.
fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_fields_are_quoted_when_needed() {
        assert_eq!(csv_field("train/loss"), "train/loss");
        assert_eq!(csv_field("a,b"), "\"a,b\"");
        assert_eq!(csv_field("say \"hi\""), "\"say \"\"hi\"\"\"");
        assert_eq!(csv_field("two\nlines"), "\"two\nlines\"");
        assert!("CSV".parse::<ExportFormat>().is_ok());
        assert!("xml".parse::<ExportFormat>().is_err());
    }
}

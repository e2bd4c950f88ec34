//! The plan as a terminal table or as JSON with stable keys.

use std::fmt::Write as _;

use serde_json::{Value, json};

use crate::devices::grammar::format_bytes;

use super::build::{SweepPlan, inventory_summary};
use super::timing::{Source, Timing};

/// JSON keys are a contract: `trials[].id`, `trials[].params`,
/// `trials[].est_memory_bytes`, `trials[].rel_cost`, `trials[].device`,
/// `trials[].est_hours` and `time` (null until a rate is measured).
pub fn to_json(plan: &SweepPlan, timing: &Timing) -> Value {
    let trials: Vec<Value> = plan
        .trials
        .iter()
        .map(|t| {
            let device = t
                .slot
                .map(|s| plan.inventory.devices[s.device].label.clone());
            json!({
                "id": t.trial.id,
                "params": t.trial.params,
                "checkpoint": t.checkpoint.display,
                "method": t.trial.spec.train.method,
                "est_memory_bytes": t.memory.total,
                "est_memory": {
                    "weights": t.memory.weights,
                    "trainable_state": t.memory.trainable_state,
                    "activations": t.memory.activations,
                    "attention": t.memory.attention,
                    "logits": t.memory.logits,
                    "overhead": t.memory.overhead,
                    "allocator": t.memory.allocator,
                },
                "rel_cost": t.rel_cost,
                "est_hours": timing.hours(t.rel_cost),
                "device": device,
                "start": t.slot.map(|s| s.start),
                "recorded": plan.recorded.contains(t.trial.id.as_str()),
            })
        })
        .collect();
    let devices: Vec<Value> = plan
        .inventory
        .devices
        .iter()
        .zip(&plan.placement.capacity_bytes)
        .map(|(d, cap)| {
            json!({
                "label": d.label,
                "name": d.name,
                "total_bytes": d.total_bytes,
                "usable_bytes": cap,
            })
        })
        .collect();
    json!({
        "sweep": plan.name,
        "axes": plan.axes,
        "trial_count": plan.trials.len(),
        "excluded": plan.excluded,
        "repeated_draws": plan.repeated_draws,
        "trials": trials,
        "devices": devices,
        "device_source": plan.inventory.source,
        "total_rel_cost": plan.trials.iter().map(|t| t.rel_cost).sum::<f64>(),
        "makespan_rel_cost": plan.placement.makespan,
        "text_lengths_measured": plan.lengths_measured,
        "rel_cost_per_example": plan.costs_per_example,
        "dropped": plan.dropped,
        "time": time_json(plan, timing),
    })
}

fn time_json(plan: &SweepPlan, timing: &Timing) -> Value {
    let Some(t) = &timing.throughput else {
        return Value::Null;
    };
    json!({
        "seconds_per_rel_cost": t.seconds_per_unit,
        "source": match &t.source {
            Source::ThisSweep => json!("this_sweep"),
            Source::OtherSweeps(names) => json!({ "other_sweeps": names }),
        },
        "measured_trials": t.trials,
        "measured_wall_s": t.wall_s,
        "device_hours": timing.hours(total_cost(plan)),
        "wall_clock_hours": timing.hours(plan.placement.makespan),
        "finished_trials": timing.finished.len(),
    })
}

fn total_cost(plan: &SweepPlan) -> f64 {
    plan.trials.iter().map(|t| t.rel_cost).sum()
}

/// Hours with two significant digits below 10 (`0.00042`, `1.5`), one
/// decimal above.
pub fn hours_text(h: f64) -> String {
    if !h.is_finite() || h <= 0.0 {
        return "0".into();
    }
    if h >= 10.0 {
        return format!("{h:.1}");
    }
    let decimals = (1 - h.log10().floor() as i32).clamp(1, 9) as usize;
    format!("{h:.decimals$}")
}

/// A swept value as a table shows it (strings without their quotes).
pub(crate) fn value_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn cost_text(cost: f64) -> String {
    if cost >= 100.0 {
        format!("{cost:.0}")
    } else if cost >= 0.01 {
        format!("{cost:.2}")
    } else {
        format!("{cost:.2e}")
    }
}

pub fn to_table(plan: &SweepPlan, timing: &Timing) -> String {
    let mut out = heading(plan);
    out.push('\n');
    out.push_str(&grid(plan, timing));
    out.push_str(&start_line(timing));
    out.push('\n');
    out.push_str(&footer(plan));
    out.push_str(&time_footer(plan, timing));
    out
}

/// What the `start` column means, exactly as `placement.rs` simulates it.
fn start_line(timing: &Timing) -> String {
    let rate = timing.throughput.as_ref().map_or(String::new(), |t| {
        format!(
            " (one unit ≈ {} as measured)",
            seconds_text(t.seconds_per_unit)
        )
    });
    format!(
        "start: when the trial would begin in the plan's simulated sweep (largest estimated memory first, onto the device with the fewest running trials, within the memory headroom and resources.max_trials_per_device; each runs for its relative cost): now = at once, +X = after X units of relative cost{rate}\n"
    )
}

fn seconds_text(s: f64) -> String {
    if s >= 100.0 {
        format!("{s:.0} s")
    } else {
        format!("{s:.2} s")
    }
}

/// Where the hours come from and the sweep's totals, or why there are none.
fn time_footer(plan: &SweepPlan, timing: &Timing) -> String {
    let mut out = String::new();
    let Some(t) = &timing.throughput else {
        let _ = writeln!(
            out,
            "hours: cannot estimate time yet: no finished trial of this sweep, nor of another sweep in the same results root with the same checkpoint, method and data, measures the seconds per unit of relative cost; run some trials (`palisweep run SPEC`, stop with Ctrl-C once a few have finished) and plan again"
        );
        return out;
    };
    let source = match &t.source {
        Source::ThisSweep => "of this sweep".to_owned(),
        Source::OtherSweeps(names) => format!(
            "of sweep(s) {} with the same checkpoint, method and data",
            names.join(", ")
        ),
    };
    let _ = writeln!(
        out,
        "hours: {} per unit of relative cost, measured over {} finished trial(s) {source} ({} h of wall time)",
        seconds_text(t.seconds_per_unit),
        t.trials,
        hours_text(t.wall_s / 3600.0),
    );
    let hours = |cost: f64| hours_text(timing.hours(cost).unwrap_or(0.0));
    let _ = writeln!(
        out,
        "estimated total {} device-hours (the trials' est. hours summed); wall-clock {} h with the packing simulated above on {} device(s)",
        hours(total_cost(plan)),
        hours(plan.placement.makespan),
        plan.inventory.devices.len(),
    );
    let done = timing.finished.len();
    let measured = hours_text(timing.finished.values().sum::<f64>() / 3600.0);
    if done == plan.trials.len() {
        let _ = writeln!(
            out,
            "all {done} trial(s) already finished ({measured} h measured)"
        );
    } else if done > 0 {
        let left: f64 = plan
            .trials
            .iter()
            .filter(|p| !timing.finished.contains_key(p.trial.id.as_str()))
            .map(|p| p.rel_cost)
            .sum();
        let _ = writeln!(
            out,
            "{done} trial(s) already finished ({measured} h measured); the other {} need about {} device-hours",
            plan.trials.len() - done,
            hours(left),
        );
    }
    out
}

fn heading(plan: &SweepPlan) -> String {
    let mut out = String::new();
    let n = plan.trials.len();
    let over = if plan.axes.is_empty() {
        String::new()
    } else {
        format!(" over {}", plan.axes.join(", "))
    };
    let _ = writeln!(
        out,
        "sweep `{}`: {n} trial{}{over} on {}",
        plan.name,
        if n == 1 { "" } else { "s" },
        inventory_summary(&plan.inventory),
    );
    if plan.excluded > 0 {
        let _ = writeln!(
            out,
            "{} combination(s) dropped by exclude rules",
            plan.excluded
        );
    }
    if !plan.recorded.is_empty() || !plan.dropped.is_empty() {
        let _ = writeln!(
            out,
            "against the recorded sweep: {} trial(s) already recorded (run resumes them), {} new, {} recorded trial(s) no longer in the spec (kept, not run)",
            plan.recorded.len(),
            plan.trials.len() - plan.recorded.len(),
            plan.dropped.len()
        );
    }
    if plan.repeated_draws > 0 {
        let _ = writeln!(
            out,
            "{} random draw(s) repeated an earlier trial and were dropped",
            plan.repeated_draws
        );
    }
    out
}

/// Axis columns, without the method (it has its own column).
fn axis_columns(plan: &SweepPlan) -> impl Iterator<Item = &String> {
    plan.axes.iter().filter(|a| a.as_str() != "train.method")
}

fn grid(plan: &SweepPlan, timing: &Timing) -> String {
    let mut header: Vec<String> = vec!["id".into(), "checkpoint".into(), "method".into()];
    header.extend(axis_columns(plan).cloned());
    header.extend(["est. memory", "rel. cost"].map(String::from));
    if timing.throughput.is_some() {
        header.push("est. hours".into());
    }
    header.extend(["device", "start"].map(String::from));
    let rows: Vec<Vec<String>> = plan
        .trials
        .iter()
        .map(|t| {
            let mut row = vec![
                t.trial.id.to_string(),
                t.checkpoint.display.clone(),
                t.trial.spec.train.method.to_string(),
            ];
            row.extend(
                axis_columns(plan)
                    .map(|a| t.trial.params.get(a).map(value_text).unwrap_or_default()),
            );
            row.push(format_bytes(t.memory.total));
            row.push(cost_text(t.rel_cost));
            if let Some(h) = timing.hours(t.rel_cost) {
                row.push(hours_text(h));
            }
            let (device, start) = t.slot.map_or(("-".into(), "-".into()), |slot| {
                let start = if slot.start == 0.0 {
                    "now".into()
                } else {
                    format!("+{}", cost_text(slot.start))
                };
                (plan.inventory.devices[slot.device].label.clone(), start)
            });
            row.push(device);
            row.push(start);
            row
        })
        .collect();
    let widths: Vec<usize> = (0..header.len())
        .map(|c| {
            rows.iter()
                .map(|r| r[c].chars().count())
                .chain(std::iter::once(header[c].chars().count()))
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |cells: &[String]| {
        cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_owned()
    };
    let mut out = String::new();
    let _ = writeln!(out, "{}", line(&header));
    for row in &rows {
        let _ = writeln!(out, "{}", line(row));
    }
    out
}

fn footer(plan: &SweepPlan) -> String {
    let mut out = String::new();
    let total: f64 = plan.trials.iter().map(|t| t.rel_cost).sum();
    let peak = plan
        .trials
        .iter()
        .map(|t| t.memory.total)
        .max()
        .unwrap_or(0);
    let _ = writeln!(
        out,
        "total relative cost {} (1 = one 3B@224 training example); simulated makespan {} across {} device(s)",
        cost_text(total),
        cost_text(plan.placement.makespan),
        plan.inventory.devices.len()
    );
    let _ = writeln!(out, "largest trial ≈ {}", format_bytes(peak));
    if plan.costs_per_example {
        let _ = writeln!(
            out,
            "note: dataset size unknown before it exists: costs are per training example per epoch"
        );
    }
    if !plan.lengths_measured {
        let _ = writeln!(
            out,
            "note: text lengths are the spec maxima (data.max_prefix_tokens / max_suffix_tokens): the dataset is not present yet"
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hours_keep_two_significant_digits_below_ten() {
        assert_eq!(hours_text(0.000_357), "0.00036");
        assert_eq!(hours_text(0.05), "0.050");
        assert_eq!(hours_text(1.54), "1.5");
        assert_eq!(hours_text(12.34), "12.3");
        assert_eq!(hours_text(0.0), "0");
    }
}

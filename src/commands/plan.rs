//! `palisweep plan SPEC`: load, expand, estimate, place, print. With the
//! Slurm backend, also the sbatch line each trial would get.

use anyhow::Context as _;

use super::output::{out, outln};
use crate::cli::PlanArgs;
use crate::layout::ResultsRoot;
use crate::plan::build::{SweepPlan, build};
use crate::plan::render;
use crate::plan::timing::{self, Timing};
use crate::scheduler::slurm::sbatch::JobRequest;
use crate::secrets::redact_text;
use crate::spec::load::{LoadedSpec, Overrides, load};
use crate::spec::schema::{Backend, Strategy};
use crate::sweep::expand::expand;
use crate::track::store::{Store, StoreError};

pub fn run(args: PlanArgs) -> anyhow::Result<()> {
    let mut sets = args.spec.sets;
    if let Some(backend) = &args.backend {
        sets.push(format!("resources.backend=\"{backend}\""));
    }
    let loaded = load(&args.spec.spec, &Overrides::from_process(sets))?;
    let expansion = expand(&loaded, args.yes)?;
    let slurm = loaded.spec.resources.backend == Backend::Slurm;
    let (inventory, limits) =
        super::runtime::placement(args.devices.as_deref(), &loaded.spec.resources)?;
    crate::preflight::check_inputs(&expansion, crate::preflight::Purpose::Plan)?;
    let tpe = loaded.spec.sweep.strategy == Strategy::Tpe;
    // A TPE sweep's trials are not known before it runs: its draws stand
    // in for them, and are not compared with what it recorded.
    let recorded = if tpe {
        Vec::new()
    } else {
        ResultsRoot::new(&loaded.results)
            .sweep(&loaded.name)
            .recorded_trials()
    };
    let plan = build(&loaded.name, expansion, inventory, limits, &recorded)?;
    let timing = measured_timing(&loaded, &plan);
    let sbatch = if slurm {
        sbatch_lines(&loaded, &plan)?
    } else {
        Vec::new()
    };
    if args.json {
        let mut json = render::to_json(&plan, &timing);
        if let Some(trials) = json.get_mut("trials").and_then(|t| t.as_array_mut()) {
            for (trial, line) in trials.iter_mut().zip(&sbatch) {
                trial["sbatch"] = serde_json::Value::String(line.clone());
            }
        }
        outln!("{}", serde_json::to_string_pretty(&json)?)?;
    } else {
        if tpe {
            outln!(
                "strategy tpe: its {} trials are suggested one by one while it runs, from the results so far; the rows below are random draws of its space, to plan memory and cost with\n",
                loaded.spec.sweep.samples
            )?;
        }
        out!("{}", render::to_table(&plan, &timing))?;
        if let Some(line) = budget_line(&loaded, &plan, &timing) {
            outln!("{line}")?;
        }
        if slurm {
            outln!("\nSlurm: one job per trial (first attempt):")?;
            for (t, line) in plan.trials.iter().zip(&sbatch) {
                outln!("  {}: {line}", t.trial.id)?;
            }
        }
    }
    Ok(())
}

/// `sweep.budget` against the plan: how much of the sweep it pays for.
fn budget_line(loaded: &LoadedSpec, plan: &SweepPlan, timing: &Timing) -> Option<String> {
    let budget = &loaded.spec.sweep.budget;
    let mut parts = Vec::new();
    if budget.trials > 0 {
        parts.push(format!(
            "{} of the {} trials",
            budget.trials.min(plan.trials.len() as u32),
            plan.trials.len()
        ));
    }
    if budget.gpu_hours > 0.0 {
        let total: f64 = plan.trials.iter().map(|t| t.rel_cost).sum();
        parts.push(match timing.hours(total) {
            Some(hours) => format!(
                "{} device-hours of the estimated {} for the whole sweep ({:.0}%)",
                budget.gpu_hours,
                render::hours_text(hours),
                100.0 * (budget.gpu_hours / hours).min(1.0)
            ),
            None => format!(
                "{} device-hours (no estimate of the whole sweep's hours yet: it needs a finished trial)",
                budget.gpu_hours
            ),
        });
    }
    (!parts.is_empty()).then(|| format!("budget: {}; launches stop there", parts.join(", ")))
}

/// The store's measured rate for the plan's hours; an unreadable store
/// costs the hours, not the plan.
fn measured_timing(loaded: &LoadedSpec, plan: &SweepPlan) -> Timing {
    let kind = plan
        .inventory
        .devices
        .first()
        .map_or(crate::devices::detect::DeviceKind::Cpu, |d| d.kind);
    let measured = Store::open_read_only(&ResultsRoot::new(&loaded.results).store())
        .and_then(|store| timing::measure(&store, &loaded.name, &plan.trials, kind));
    match measured {
        Ok(timing) => timing,
        Err(StoreError::Missing { .. }) => Timing::default(),
        Err(e) => {
            eprintln!("palisweep: no time estimate: {e}");
            Timing::default()
        }
    }
}

/// The sbatch line of each trial's first attempt, in plan order.
fn sbatch_lines(loaded: &LoadedSpec, plan: &SweepPlan) -> anyhow::Result<Vec<String>> {
    let exe = std::env::current_exe().context("cannot find the palisweep executable")?;
    let sweep = ResultsRoot::new(&loaded.results).sweep(&loaded.name);
    Ok(plan
        .trials
        .iter()
        .map(|t| {
            let dir = sweep.trial(&t.trial.id);
            JobRequest {
                slurm: &t.trial.spec.slurm,
                sweep: &loaded.name,
                trial_id: t.trial.id.as_str(),
                dir: &dir,
                attempt: 1,
                memory_bytes: t.memory.total,
                sets: &[],
                stop_after: None,
                exe: &exe,
            }
            .command_line()
        })
        // Shown, not run: `slurm.extra_args` may carry a secret.
        .map(|line| redact_text(&line))
        .collect())
}

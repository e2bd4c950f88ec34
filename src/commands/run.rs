//! `palisweep run SPEC`: expand, plan, record and run a sweep; running it
//! again resumes it. `palisweep attach SWEEP` runs it again as it was
//! last run (`run.json`), following the Slurm jobs it left. Exit 0 when
//! every trial finished (or `--detach` submitted them), 1 when some failed
//! after their retries, 2 for bad input, 130 when interrupted.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use tokio::sync::mpsc;

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::output::{OutputError, outln};
use crate::cli::{AttachArgs, FollowArgs, RunArgs};
use crate::devices::detect::DeviceKind;
use crate::error::{EXIT_FAILURE, EXIT_INTERRUPTED};
use crate::events::event::{
    AttemptOutcome, EventSink, SweepEvent, SweepStatus, TrialInfo, TrialStatus, now,
};
use crate::events::fanout::Fanout;
use crate::layout::{ResultsRoot, SweepDir, TrialDir};
use crate::plan::build::{display_path, estimate};
use crate::plan::placement::Limits;
use crate::plan::text_lengths::{self, TextLengths};
use crate::scheduler::adaptive::Adaptive;
use crate::scheduler::budget_gate::{BudgetGate, TrialSpend};
use crate::scheduler::dispatcher::{Dispatch, dispatch};
use crate::scheduler::prepare::prepare;
use crate::scheduler::prepare::prepare_suggested;
use crate::scheduler::prepare::{PreparedSweep, RunError};
use crate::scheduler::promotions::{Promotions, RecordedEval, RungUnit};
use crate::scheduler::pruner::MedianPruner;
use crate::scheduler::queue::{OpenJob, QueuedTrial, Summary};
use crate::scheduler::reconcile::{Reconciled, TrialFolder, reconcile, wait_for_workers};
use crate::scheduler::slurm::dispatcher::{
    OnInterrupt, SlurmDispatch, dispatch as slurm_dispatch, preflight,
};
use crate::scheduler::suggest::{CostModel, Suggested, Suggestions, read_record};
use crate::scheduler::trial_record;
use crate::search::asha::Rungs;
use crate::search::hyperband::Hyperband;
use crate::search::space::{Point, Space};
use crate::search::tpe::{Tpe, TpeConfig};
use crate::secrets::{REDACTED, redact_json};
use crate::spec::load::{LoadedSpec, Overrides, load};
use crate::spec::schema::Backend;
use crate::spec::schema::{EarlyStop, Strategy};
use crate::sweep::expand::expand;
use crate::sweep::expand::{Expansion, trials_at};
use crate::track::progress::{ProgressMode, ProgressSink};
use crate::track::store::{RecordedAttempts, Store};
use crate::worker::contract::orphan_grace;
use crate::worker::protocol::WorkerEvent;

pub fn run(args: &RunArgs) -> anyhow::Result<ExitCode> {
    let mut sets = args.spec.sets.clone();
    if let Some(results) = &args.results {
        let value = toml::Value::String(results.display().to_string());
        sets.push(format!("experiment.results={value}"));
    }
    if let Some(backend) = &args.backend {
        sets.push(format!("resources.backend=\"{backend}\""));
    }
    let spec_path = std::path::absolute(&args.spec.spec)
        .with_context(|| format!("cannot resolve {}", args.spec.spec.display()))?;
    let invocation = Invocation {
        spec: spec_path,
        sets,
        devices: args.devices.clone(),
        yes: args.yes,
    };
    let options = Options {
        quiet: args.quiet,
        kill_grace: args.kill_grace,
        follow: args.follow,
    };
    execute(&invocation, &options)
}

/// `palisweep attach SWEEP`: the sweep's last `run`, again.
pub fn attach(args: &AttachArgs) -> anyhow::Result<ExitCode> {
    let dir = ResultsRoot::new(&args.results).sweep(&args.sweep);
    let invocation = Invocation::read(&dir)?;
    invocation.check_complete(&dir)?;
    let options = Options {
        quiet: args.quiet,
        kill_grace: args.kill_grace,
        follow: args.follow,
    };
    execute(&invocation, &options)
}

/// How a sweep was run (`<sweep>/run.json`), so that `attach` runs it the
/// same way: the spec, the `--set` overrides (they change trial ids), the
/// devices flag.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Invocation {
    /// Absolute.
    spec: PathBuf,
    sets: Vec<String>,
    devices: Option<String>,
    yes: bool,
}

impl Invocation {
    fn path(dir: &SweepDir) -> PathBuf {
        dir.path().join("run.json")
    }

    fn read(dir: &SweepDir) -> anyhow::Result<Self> {
        let path = Self::path(dir);
        let text = std::fs::read_to_string(&path).with_context(|| {
            format!(
                "{} was never run here (no {}): check the sweep name and --results",
                dir.path().display(),
                path.display()
            )
        })?;
        serde_json::from_str(&text).with_context(|| format!("cannot read {}", path.display()))
    }

    /// Writes it with its secrets redacted (a `--set` carrying a token
    /// stays a valid flag, with `<redacted>` for the token).
    fn write(&self, dir: &SweepDir) -> anyhow::Result<()> {
        let path = Self::path(dir);
        let json = redact_json(&serde_json::to_value(self)?);
        std::fs::write(&path, serde_json::to_string_pretty(&json)?)
            .with_context(|| format!("cannot write {}", path.display()))
    }

    /// Refuses a record whose `--set` flags lost a secret: running them
    /// would submit `<redacted>` where the secret was.
    fn check_complete(&self, dir: &SweepDir) -> Result<(), RunError> {
        match self.sets.iter().find(|set| set.contains(REDACTED)) {
            Some(set) => Err(RunError::Redacted {
                path: Self::path(dir),
                set: set.clone(),
            }),
            None => Ok(()),
        }
    }
}

struct Options {
    quiet: bool,
    kill_grace: f64,
    follow: FollowArgs,
}

fn execute(invocation: &Invocation, options: &Options) -> anyhow::Result<ExitCode> {
    let loaded = load(
        &invocation.spec,
        &Overrides::from_process(invocation.sets.clone()),
    )?;
    let expansion = expand(&loaded, invocation.yes)?;
    let resources = &loaded.spec.resources;
    let (inventory, limits) = super::runtime::placement(invocation.devices.as_deref(), resources)?;
    let devices = match &invocation.devices {
        Some(flag) => format!("--devices {flag}"),
        None => format!(
            "{}: resources.devices = {:?}",
            loaded.locate(&["resources", "devices"]),
            resources.devices
        ),
    };
    crate::preflight::check_inputs(&expansion, crate::preflight::Purpose::Run)?;
    // A TPE sweep prepares the trials it suggested so far (its random
    // draws only had their inputs checked); the rest come while it runs.
    let tpe = loaded.spec.sweep.strategy == Strategy::Tpe;
    let expansion = if tpe {
        suggested_so_far(&loaded, expansion)?
    } else {
        expansion
    };
    let mut prepared = prepare(&loaded, expansion, inventory, limits, &devices)?;
    if tpe {
        prepared.sweep.total_trials = loaded.spec.sweep.samples as usize;
    }
    // Recorded with the results root it resolved to, so that `attach` finds
    // the same folders from any working directory.
    let mut recorded = invocation.clone();
    let results = toml::Value::String(loaded.results.display().to_string());
    recorded.sets.push(format!("experiment.results={results}"));
    recorded.write(&prepared.dir)?;
    let reconciled = reconcile_folders(&loaded, &prepared)?;
    let backend = work(&loaded, &prepared, &reconciled, limits, options)?;
    if prepared.resumed {
        announce_resume(&prepared, &reconciled);
    }

    let mut sinks: Vec<Box<dyn EventSink>> = vec![Box::new(ProgressSink::new(
        ProgressMode::detect(options.quiet),
    ))];
    sinks.extend(crate::track::sinks(&loaded.results)?);
    let fanout = Fanout::start(sinks);
    open_stream(&fanout, &prepared, &reconciled);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let mut summary = runtime.block_on(async {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(forward_interrupts(tx));
        match backend {
            Work::Local(work) => dispatch(*work, &fanout, rx).await,
            Work::Slurm(work) => slurm_dispatch(*work, &fanout, rx).await,
        }
    });
    // Trials an earlier run finished (or pruned) count towards the sweep.
    for (_, status) in &prepared.recorded {
        match status {
            TrialStatus::Finished => summary.counts.finished += 1,
            TrialStatus::Pruned => summary.counts.pruned += 1,
            _ => {}
        }
    }
    fanout.send(&SweepEvent::SweepEnded {
        status: summary.status,
        counts: summary.counts,
        time: now(),
    });
    let lost = fanout.close();
    drop(prepared.lock);
    // The exit code says how the sweep went, whether or not anyone still
    // reads the summary (a closed pipe is no failure).
    if let Err(OutputError::Io(error)) =
        print_summary(&summary, &prepared.sweep.name, &loaded.results)
    {
        eprintln!("palisweep: {error}");
    }
    if !lost.is_empty() {
        // The trials ran and their folders hold everything; what a consumer
        // missed, the next run sends it again (`scheduler/reconcile.rs`).
        for error in &lost {
            eprintln!("palisweep: error: {error}");
        }
        eprintln!(
            "palisweep: error: the results above were not all recorded; the trial folders under {} hold them: \
             fix the cause, then run the same command again to record them",
            display_path(prepared.dir.path())
        );
        return Ok(ExitCode::from(EXIT_FAILURE));
    }
    Ok(match summary.status {
        SweepStatus::Finished => ExitCode::SUCCESS,
        // Jobs left running: on purpose with --detach, else after Ctrl-C.
        SweepStatus::Running if options.follow.detach => ExitCode::SUCCESS,
        SweepStatus::Running | SweepStatus::Interrupted => ExitCode::from(EXIT_INTERRUPTED),
        SweepStatus::Failed => ExitCode::from(EXIT_FAILURE),
    })
}

/// The stream's opening: the sweep, every trial of it, then what the trial
/// folders hold and the consumers lack.
fn open_stream(fanout: &Fanout, prepared: &PreparedSweep, reconciled: &Reconciled) {
    fanout.send(&SweepEvent::SweepStarted {
        sweep: Box::new(prepared.sweep.clone()),
        environment: Box::new(prepared.environment.clone()),
        resumed: prepared.resumed,
        time: now(),
    });
    for (info, status) in &prepared.recorded {
        fanout.send(&SweepEvent::TrialRecorded {
            trial: Box::new(info.clone()),
            status: *status,
        });
    }
    for event in &reconciled.events {
        fanout.send(event);
    }
    // A start sent again marks its trial running: say again where it stands.
    for (info, status) in &prepared.recorded {
        if reconciled.restarted.contains(&info.id) {
            fanout.send(&SweepEvent::TrialRecorded {
                trial: Box::new(info.clone()),
                status: *status,
            });
        }
    }
    for event in &reconciled.trial_ends {
        fanout.send(event);
    }
}

/// Brings what an earlier run left in line before anything starts: waits
/// for its workers, closes its open attempts, and lists what the store
/// lacks of the trial folders.
fn reconcile_folders(loaded: &LoadedSpec, prepared: &PreparedSweep) -> anyhow::Result<Reconciled> {
    let folders: Vec<TrialFolder> = prepared
        .recorded
        .iter()
        .map(|(info, _)| TrialFolder {
            id: info.id.clone(),
            dir: TrialDir::from_path(std::path::Path::new(&info.dir)),
            followed: prepared
                .queue
                .iter()
                .any(|q| q.info.id == info.id && q.open_job.is_some()),
        })
        .collect();
    // A worker outlives its scheduler by its orphan grace at most.
    wait_for_workers(&folders, orphan_grace() + Duration::from_secs(15))?;
    let store = ResultsRoot::new(&loaded.results).store();
    let recorded = if store.is_file() {
        // Opened for writing: a store that lost a table gets it back here.
        Store::open(&store)?.recorded_attempts(&prepared.sweep.name)?
    } else {
        RecordedAttempts::default()
    };
    Ok(reconcile(&folders, &recorded))
}

/// One line on what an earlier run left: what is done, what was closed,
/// what the store gets from the folders.
fn announce_resume(prepared: &PreparedSweep, reconciled: &Reconciled) {
    let done = prepared
        .recorded
        .iter()
        .filter(|(_, s)| matches!(s, TrialStatus::Finished | TrialStatus::Pruned))
        .count();
    let lost = reconciled
        .closed
        .iter()
        .filter(|(_, _, o)| *o == AttemptOutcome::OrchestratorLost)
        .count();
    let lines = reconciled
        .events
        .iter()
        .filter(|e| matches!(e, SweepEvent::Worker { .. }))
        .count();
    eprintln!(
        "palisweep: resuming sweep `{}`: {done} of {} trial(s) done; {} attempt(s) left open closed ({lost} orchestrator lost); {lines} result line(s) recorded from the trial folders",
        prepared.sweep.name,
        prepared.recorded.len(),
        reconciled.closed.len(),
    );
}

/// The dispatcher's input for the sweep's backend. For Slurm, checks first
/// that Slurm would take the jobs (before any job is submitted).
fn work(
    loaded: &LoadedSpec,
    prepared: &PreparedSweep,
    reconciled: &Reconciled,
    limits: Limits,
    options: &Options,
) -> anyhow::Result<Work> {
    let resources = &loaded.spec.resources;
    let exe = std::env::current_exe().context("cannot find the palisweep executable")?;
    let sweep = &loaded.spec.sweep;
    let metric = &loaded.spec.eval.select.metric;
    // Early stopping's and TPE's history is the store's (with what the
    // trial folders add to it now): trials of earlier runs count.
    let history = if sweep.early_stop == EarlyStop::None && sweep.strategy != Strategy::Tpe {
        Vec::new()
    } else {
        recorded_evals(&loaded.results, &prepared.sweep.name, metric, reconciled)?
    };
    let pruner = (sweep.early_stop == EarlyStop::Median).then(|| {
        let mut pruner =
            MedianPruner::new(metric, sweep.early_stop_min_trials, sweep.early_stop_warmup);
        pruner.replay(&history);
        pruner
    });
    let suggestions = match sweep.strategy {
        Strategy::Tpe => Some(suggestions(loaded, prepared, limits, &history)?),
        _ => None,
    };
    let a = &sweep.asha;
    let (min, max) = a.range();
    let unit = if a.in_epochs() {
        RungUnit::Epoch
    } else {
        RungUnit::Step
    };
    let promotions = match sweep.early_stop {
        EarlyStop::Asha => Some(Promotions::new(Rungs::new(min, max, a.eta)?, metric)),
        EarlyStop::Hyperband => Some(Promotions::hyperband(
            Hyperband::new(min, max, a.eta)?,
            metric,
        )),
        EarlyStop::None | EarlyStop::Median => None,
    }
    .map(|p| p.in_unit(unit).rebuild(&launch_order(prepared), history));
    let adaptive = Adaptive {
        pruner,
        promotions,
        suggestions,
        budget: budget_gate(loaded, prepared),
    };
    Ok(if resources.backend == Backend::Slurm {
        let work = SlurmDispatch {
            sweep: prepared.sweep.name.clone(),
            trials: with_store_jobs(
                &loaded.results,
                &prepared.sweep.name,
                prepared.queue.clone(),
            )?,
            slurm: loaded.spec.slurm.clone(),
            retries: resources.retries,
            exe,
            adaptive,
            detach: options.follow.detach,
            on_interrupt: match options.follow.cancel_on_exit {
                Some(true) => OnInterrupt::Cancel,
                Some(false) => OnInterrupt::Leave,
                None => OnInterrupt::Ask,
            },
        };
        // Before anything is recorded or submitted: Slurm must take the jobs.
        preflight(&work).map_err(RunError::Slurm)?;
        Work::Slurm(Box::new(work))
    } else {
        let seconds = |s: u64| (s > 0).then(|| Duration::from_secs(s));
        Work::Local(Box::new(Dispatch {
            trials: prepared.queue.clone(),
            inventory: prepared.inventory.clone(),
            limits,
            retries: resources.retries,
            trial_timeout: seconds(resources.trial_timeout),
            stall_timeout: seconds(resources.stall_timeout),
            kill_grace: Duration::from_secs_f64(options.kill_grace),
            exe,
            adaptive,
        }))
    })
}

/// `sweep.budget` with what earlier runs of the sweep spent.
fn budget_gate(loaded: &LoadedSpec, prepared: &PreparedSweep) -> Option<BudgetGate> {
    let spec = &loaded.spec.sweep.budget;
    if spec.gpu_hours <= 0.0 && spec.trials == 0 {
        return None;
    }
    // The trial folders' attempt records, which reconciliation has just
    // closed (the store gets those only once this run's events flow).
    let history: Vec<TrialSpend> = prepared
        .recorded
        .iter()
        .map(|(info, status)| {
            let attempts = folder_attempts(info);
            TrialSpend {
                trial: info.id.clone(),
                rel_cost: info.rel_cost,
                seconds: attempts
                    .iter()
                    .filter_map(|a| Some(a.end? - a.start))
                    .filter(|s| *s > 0.0)
                    .sum(),
                launched: !attempts.is_empty(),
                finished: *status == TrialStatus::Finished,
            }
        })
        .collect();
    BudgetGate::new(spec, &history)
}

fn folder_attempts(info: &TrialInfo) -> Vec<trial_record::AttemptRecord> {
    trial_record::attempts(&TrialDir::from_path(std::path::Path::new(&info.dir)))
}

/// The trials that ever started, in the order their first attempt did
/// (the trial folders' attempt records, which a crash does not lose).
fn launch_order(prepared: &PreparedSweep) -> Vec<String> {
    let mut first: Vec<(f64, String)> = prepared
        .recorded
        .iter()
        .filter_map(|(info, _)| {
            let start = folder_attempts(info)
                .iter()
                .map(|a| a.start)
                .min_by(f64::total_cmp)?;
            Some((start, info.id.clone()))
        })
        .collect();
    first.sort_by(|a, b| a.0.total_cmp(&b.0));
    first.into_iter().map(|(_, id)| id).collect()
}

/// A TPE sweep's suggestions so far (its `suggestions.jsonl`), as the
/// trials to prepare; `drawn` (random draws of the space) only checked
/// the axes.
fn suggested_so_far(loaded: &LoadedSpec, drawn: Expansion) -> anyhow::Result<Expansion> {
    let record = suggestion_record(loaded);
    let combos = read_record(&record)
        .with_context(|| format!("cannot read {}", record.display()))?
        .into_iter()
        .filter(|line| line.trial.is_some())
        .map(|line| line.params)
        .collect();
    Ok(Expansion {
        trials: trials_at(loaded, combos)?,
        ..drawn
    })
}

fn suggestion_record(loaded: &LoadedSpec) -> std::path::PathBuf {
    ResultsRoot::new(&loaded.results)
        .sweep(&loaded.name)
        .path()
        .join("suggestions.jsonl")
}

/// TPE over the sweep's axes, seeded by the experiment, whose suggestions
/// become trials of this sweep as they are made.
fn suggestions(
    loaded: &LoadedSpec,
    prepared: &PreparedSweep,
    limits: Limits,
    history: &[RecordedEval],
) -> anyhow::Result<Suggestions> {
    let space = Space::from_axes(&loaded.spec.sweep.axes)?;
    let tpe = Tpe::new(space, TpeConfig::default(), loaded.spec.experiment.seed)?;
    let owned = loaded.clone();
    let dir = prepared.dir.clone();
    let inventory = prepared.inventory.clone();
    let materialize = Box::new(move |point: &Point| {
        let trial = trials_at(&owned, vec![point.clone()])
            .map_err(|e| e.to_string())?
            .pop()
            .ok_or("the suggestion made no trial")?;
        let (info, state) = prepare_suggested(&owned, &dir, &inventory, limits, trial)
            .map_err(|e| e.to_string())?;
        Ok(Suggested {
            info,
            queued: state.ok(),
        })
    });
    let suggestions = Suggestions::new(
        tpe,
        loaded.spec.sweep.samples as usize,
        &loaded.spec.eval.select.metric,
        suggestion_record(loaded),
        history,
        materialize,
    )?;
    Ok(if loaded.spec.sweep.cost_aware {
        suggestions.with_cost(plan_cost(loaded, prepared))
    } else {
        suggestions
    })
}

/// A point's cost as `plan` estimates it: the relative cost of the trial it
/// makes, on the sweep's kind of device (1 for a point that makes no trial,
/// which `materialize` then reports).
fn plan_cost(loaded: &LoadedSpec, prepared: &PreparedSweep) -> CostModel {
    let owned = loaded.clone();
    let kind = prepared
        .inventory
        .devices
        .first()
        .map_or(DeviceKind::Cpu, |d| d.kind);
    let lengths: std::sync::Mutex<std::collections::BTreeMap<String, TextLengths>> =
        std::sync::Mutex::default();
    Box::new(move |point: &Point| {
        let Some(trial) = trials_at(&owned, vec![point.clone()])
            .ok()
            .and_then(|mut t| t.pop())
        else {
            return 1.0;
        };
        let mut cache = lengths
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let measured = *cache
            .entry(trial.spec.data.path.clone())
            .or_insert_with(|| text_lengths::measure(&trial.spec.data));
        estimate(&trial.spec, &measured, kind).2
    })
}

/// Every recorded evaluation of `metric` in the sweep, for early stopping
/// and TPE to rebuild their history from: the store's, and what the trial
/// folders hold that the store has yet to get.
fn recorded_evals(
    results: &std::path::Path,
    sweep: &str,
    metric: &str,
    reconciled: &Reconciled,
) -> anyhow::Result<Vec<RecordedEval>> {
    let store = ResultsRoot::new(results).store();
    let mut evals = Vec::new();
    if store.is_file() {
        Store::open_read_only(&store)?.for_each_metric(sweep, |row| {
            if row.name == metric {
                evals.push(RecordedEval {
                    trial: row.trial_id.to_owned(),
                    step: row.step,
                    epoch: row.epoch,
                    value: row.value,
                    wall_time: row.wall_time,
                });
            }
            Ok(())
        })?;
    }
    for event in &reconciled.events {
        if let SweepEvent::Worker { trial, line, .. } = event
            && let WorkerEvent::Eval {
                step,
                epoch,
                metrics,
                ..
            } = &line.event
            && let Some(&value) = metrics.get(metric)
        {
            evals.push(RecordedEval {
                trial: trial.clone(),
                step: *step,
                epoch: Some(*epoch),
                value: Some(value).filter(|v| !v.is_nan()),
                wall_time: line.time,
            });
        }
    }
    Ok(evals)
}

enum Work {
    Local(Box<Dispatch>),
    Slurm(Box<SlurmDispatch>),
}

/// The Slurm jobs earlier runs submitted and never saw end: what the trial
/// folders say (`prepare` read them), plus any attempt the store recorded
/// that the folder never did (an attempt record that failed to write).
fn with_store_jobs(
    results: &std::path::Path,
    sweep: &str,
    mut queue: Vec<QueuedTrial>,
) -> anyhow::Result<Vec<QueuedTrial>> {
    let store = ResultsRoot::new(results).store();
    if !store.is_file() {
        return Ok(queue);
    }
    for job in Store::open_read_only(&store)?.open_slurm_jobs(sweep)? {
        // Attempts below next_attempt are the folder's, which knows better.
        if let Some(q) = queue
            .iter_mut()
            .find(|q| q.info.id == job.trial && q.open_job.is_none())
            && job.attempt >= q.next_attempt
        {
            q.open_job = Some(OpenJob {
                attempt: job.attempt,
                job: job.job,
                start: job.start.unwrap_or_else(now),
            });
        }
    }
    Ok(queue)
}

/// One message per Ctrl-C or SIGTERM (a batch system's stop counts as a
/// first Ctrl-C).
async fn forward_interrupts(tx: mpsc::UnboundedSender<()>) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut int), Ok(mut term)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) else {
        return;
    };
    loop {
        tokio::select! {
            _ = int.recv() => {},
            _ = term.recv() => {},
        }
        if tx.send(()).is_err() {
            return;
        }
    }
}

fn print_summary(
    summary: &Summary,
    name: &str,
    results: &std::path::Path,
) -> Result<(), OutputError> {
    let c = &summary.counts;
    outln!(
        "sweep `{name}` {}: {} finished, {} failed, {} pruned, {} interrupted",
        summary.status.as_str(),
        c.finished,
        c.failed,
        c.pruned,
        c.interrupted
    )?;
    for (trial, reason) in &summary.failures {
        outln!("  failed {trial}: {}", reason.lines().next().unwrap_or(""))?;
    }
    if !summary.left_running.is_empty() {
        outln!("{} Slurm job(s) left running:", summary.left_running.len())?;
        for (trial, job) in &summary.left_running {
            outln!("  job {job}: trial {trial}")?;
        }
        outln!(
            "attach:      palisweep attach {name} --results {}",
            display_path(results)
        )?;
    }
    let root = ResultsRoot::new(results);
    let sweep = root.sweep(name);
    outln!("results:     {}", display_path(sweep.path()))?;
    outln!("store:       {}", display_path(&root.store()))?;
    outln!(
        "tensorboard: tensorboard --logdir {}",
        display_path(&sweep.tensorboard())
    )?;
    outln!(
        "inspect:     palisweep status {name} --results {}",
        display_path(results)
    )?;
    outln!(
        "report:      palisweep report {name} --results {}",
        display_path(results)
    )?;
    if summary.status == SweepStatus::Interrupted {
        outln!("resume:      run the same command again")?;
    }
    Ok(())
}

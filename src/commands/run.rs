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

use crate::cli::{AttachArgs, FollowArgs, RunArgs};
use crate::error::{EXIT_FAILURE, EXIT_INTERRUPTED};
use crate::events::event::{EventSink, SweepEvent, SweepStatus, TrialStatus, now};
use crate::events::fanout::Fanout;
use crate::layout::{ResultsRoot, SweepDir};
use crate::plan::build::display_path;
use crate::plan::placement::Limits;
use crate::scheduler::dispatcher::{Dispatch, dispatch};
use crate::scheduler::prepare::prepare;
use crate::scheduler::prepare::{PreparedSweep, RunError};
use crate::scheduler::pruner::MedianPruner;
use crate::scheduler::queue::{OpenJob, QueuedTrial, Summary};
use crate::scheduler::slurm::dispatcher::{
    OnInterrupt, SlurmDispatch, dispatch as slurm_dispatch, preflight,
};
use crate::spec::load::{LoadedSpec, Overrides, load};
use crate::spec::schema::Backend;
use crate::spec::schema::EarlyStop;
use crate::sweep::expand::expand;
use crate::track::progress::{ProgressMode, ProgressSink};
use crate::track::store::Store;

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

    fn write(&self, dir: &SweepDir) -> anyhow::Result<()> {
        let path = Self::path(dir);
        std::fs::write(&path, serde_json::to_string_pretty(self)?)
            .with_context(|| format!("cannot write {}", path.display()))
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
    crate::preflight::check_inputs(&expansion, crate::preflight::Purpose::Run)?;
    let prepared = prepare(&loaded, expansion, inventory, limits)?;
    // Recorded with the results root it resolved to, so that `attach` finds
    // the same folders from any working directory.
    let mut recorded = invocation.clone();
    let results = toml::Value::String(loaded.results.display().to_string());
    recorded.sets.push(format!("experiment.results={results}"));
    recorded.write(&prepared.dir)?;
    let backend = work(&loaded, &prepared, limits, options)?;

    let mut sinks: Vec<Box<dyn EventSink>> = vec![Box::new(ProgressSink::new(
        ProgressMode::detect(options.quiet),
    ))];
    sinks.extend(crate::track::sinks(&loaded.results)?);
    let fanout = Fanout::start(sinks);
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
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let mut summary = runtime.block_on(async {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(forward_interrupts(tx));
        match backend {
            Work::Local(work) => dispatch(work, &fanout, rx).await,
            Work::Slurm(work) => slurm_dispatch(work, &fanout, rx).await,
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
    for error in fanout.close() {
        eprintln!("palisweep: {error}");
    }
    drop(prepared.lock);
    print_summary(&summary, &prepared.sweep.name, &loaded.results);
    Ok(match summary.status {
        SweepStatus::Finished => ExitCode::SUCCESS,
        // Jobs left running: on purpose with --detach, else after Ctrl-C.
        SweepStatus::Running if options.follow.detach => ExitCode::SUCCESS,
        SweepStatus::Running | SweepStatus::Interrupted => ExitCode::from(EXIT_INTERRUPTED),
        SweepStatus::Failed => ExitCode::from(EXIT_FAILURE),
    })
}

/// The dispatcher's input for the sweep's backend. For Slurm, checks first
/// that Slurm would take the jobs (before any job is submitted).
fn work(
    loaded: &LoadedSpec,
    prepared: &PreparedSweep,
    limits: Limits,
    options: &Options,
) -> anyhow::Result<Work> {
    let resources = &loaded.spec.resources;
    let exe = std::env::current_exe().context("cannot find the palisweep executable")?;
    let pruner = (loaded.spec.sweep.early_stop == EarlyStop::Median).then(|| {
        MedianPruner::new(
            &loaded.spec.eval.select.metric,
            loaded.spec.sweep.early_stop_min_trials,
            loaded.spec.sweep.early_stop_warmup,
        )
    });
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
            pruner,
            detach: options.follow.detach,
            on_interrupt: match options.follow.cancel_on_exit {
                Some(true) => OnInterrupt::Cancel,
                Some(false) => OnInterrupt::Leave,
                None => OnInterrupt::Ask,
            },
        };
        // Before anything is recorded or submitted: Slurm must take the jobs.
        preflight(&work).map_err(RunError::Slurm)?;
        Work::Slurm(work)
    } else {
        let seconds = |s: u64| (s > 0).then(|| Duration::from_secs(s));
        Work::Local(Dispatch {
            trials: prepared.queue.clone(),
            inventory: prepared.inventory.clone(),
            limits,
            retries: resources.retries,
            trial_timeout: seconds(resources.trial_timeout),
            stall_timeout: seconds(resources.stall_timeout),
            kill_grace: Duration::from_secs_f64(options.kill_grace),
            exe,
            pruner,
        })
    })
}

enum Work {
    Local(Dispatch),
    Slurm(SlurmDispatch),
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

fn print_summary(summary: &Summary, name: &str, results: &std::path::Path) {
    let c = &summary.counts;
    println!(
        "sweep `{name}` {}: {} finished, {} failed, {} pruned, {} interrupted",
        summary.status.as_str(),
        c.finished,
        c.failed,
        c.pruned,
        c.interrupted
    );
    for (trial, reason) in &summary.failures {
        println!("  failed {trial}: {}", reason.lines().next().unwrap_or(""));
    }
    if !summary.left_running.is_empty() {
        println!("{} Slurm job(s) left running:", summary.left_running.len());
        for (trial, job) in &summary.left_running {
            println!("  job {job}: trial {trial}");
        }
        println!(
            "attach:      palisweep attach {name} --results {}",
            display_path(results)
        );
    }
    let root = ResultsRoot::new(results);
    let sweep = root.sweep(name);
    println!("results:     {}", display_path(sweep.path()));
    println!("store:       {}", display_path(&root.store()));
    println!(
        "tensorboard: tensorboard --logdir {}",
        display_path(&sweep.tensorboard())
    );
    println!(
        "inspect:     palisweep status {name} --results {}",
        display_path(results)
    );
    println!(
        "report:      palisweep report {name} --results {}",
        display_path(results)
    );
    if summary.status == SweepStatus::Interrupted {
        println!("resume:      run the same command again");
    }
}

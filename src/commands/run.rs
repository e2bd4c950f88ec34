//! `palisweep run SPEC`: expand, plan, record and run a sweep; running it
//! again resumes it. Exit 0 when every trial finished, 1 when some failed
//! after their retries, 2 for bad input, 130 when interrupted.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use tokio::sync::mpsc;

use crate::cli::RunArgs;
use crate::error::{EXIT_FAILURE, EXIT_INTERRUPTED};
use crate::plan::build::display_path;
use crate::plan::placement::Limits;
use crate::scheduler::dispatcher::{Dispatch, Summary, dispatch};
use crate::scheduler::event::{EventSink, SweepEvent, SweepStatus, TrialStatus, now};
use crate::scheduler::prepare::prepare;
use crate::scheduler::progress::{ProgressMode, ProgressSink};
use crate::scheduler::pruner::MedianPruner;
use crate::scheduler::sinks::Fanout;
use crate::spec::load::{Overrides, load};
use crate::spec::schema::EarlyStop;
use crate::sweep::expand::expand;

pub fn run(args: &RunArgs) -> anyhow::Result<ExitCode> {
    let mut sets = args.spec.sets.clone();
    if let Some(results) = &args.results {
        let value = toml::Value::String(results.display().to_string());
        sets.push(format!("experiment.results={value}"));
    }
    let loaded = load(&args.spec.spec, &Overrides::from_process(sets))?;
    let expansion = expand(&loaded, args.yes)?;
    let inventory =
        super::runtime::inventory(args.devices.as_deref(), &loaded.spec.resources.devices)?;
    let resources = &loaded.spec.resources;
    let limits = Limits {
        memory_headroom: resources.memory_headroom,
        max_trials_per_device: resources.max_trials_per_device,
    };
    let prepared = prepare(&loaded, expansion, inventory, limits)?;
    let seconds = |s: u64| (s > 0).then(|| Duration::from_secs(s));

    let mut sinks: Vec<Box<dyn EventSink>> = vec![Box::new(ProgressSink::new(
        ProgressMode::detect(args.quiet),
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
    let work = Dispatch {
        trials: prepared.queue,
        inventory: prepared.inventory,
        limits,
        retries: resources.retries,
        trial_timeout: seconds(resources.trial_timeout),
        stall_timeout: seconds(resources.stall_timeout),
        kill_grace: Duration::from_secs_f64(args.kill_grace),
        exe: std::env::current_exe().context("cannot find the palisweep executable")?,
        pruner: (loaded.spec.sweep.early_stop == EarlyStop::Median).then(|| {
            MedianPruner::new(
                &loaded.spec.eval.select.metric,
                loaded.spec.sweep.early_stop_min_trials,
                loaded.spec.sweep.early_stop_warmup,
            )
        }),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let mut summary = runtime.block_on(async {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(forward_interrupts(tx));
        dispatch(work, &fanout, rx).await
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
        SweepStatus::Finished | SweepStatus::Running => ExitCode::SUCCESS,
        SweepStatus::Failed => ExitCode::from(EXIT_FAILURE),
        SweepStatus::Interrupted => ExitCode::from(EXIT_INTERRUPTED),
    })
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
    let sweep = results.join(name);
    println!("results:     {}", display_path(&sweep));
    println!(
        "store:       {}",
        display_path(&results.join("palisweep.sqlite"))
    );
    println!(
        "tensorboard: tensorboard --logdir {}",
        display_path(&sweep.join("tb"))
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

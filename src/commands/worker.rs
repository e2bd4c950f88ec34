//! `palisweep worker --trial DIR`: runs one trial from its resolved config
//! (`DIR/trial.toml`), reporting events as JSON lines on stdout and in
//! `DIR/events.jsonl`, progress on stderr. The scheduler runs one per trial;
//! it is runnable by hand for debugging (`--spec` makes the trial folder).
//!
//! Its exit codes are [`WorkerExit`]'s (the table in `worker/contract.rs`).

use std::io::{Read as _, Write as _};
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context as _;

use crate::cli::WorkerArgs;
use crate::layout::{ResultsRoot, TrialDir};
use crate::spec::load::{Overrides, load};
use crate::spec::schema::{Method, Spec};
use crate::sweep::expand::expand;
use crate::train::learner::{RunContext, TrainError, train};
use crate::worker::contract::{StopAfter, WorkerExit, orphan_grace};
use crate::worker::protocol::{EventWriter, FailureKind, WorkerEvent};
use crate::worker::synthetic::{self, SyntheticContext, SyntheticEnd};
use crate::worker::trial_lock;

/// Writes `trial.toml` from a spec that expands to one trial (or the one
/// named by `--trial-id`).
fn materialize(spec_path: &Path, trial: &Path, wanted: Option<&str>) -> anyhow::Result<()> {
    let loaded = load(spec_path, &Overrides::from_process(Vec::new()))?;
    let expansion = expand(&loaded, true)?;
    let chosen = if let Some(id) = wanted {
        expansion
            .trials
            .iter()
            .find(|t| t.id.as_str() == id)
            .with_context(|| format!("{} has no trial {id}", spec_path.display()))?
    } else {
        anyhow::ensure!(
            expansion.trials.len() == 1,
            "{} expands to {} trials: pick one with --trial-id",
            spec_path.display(),
            expansion.trials.len()
        );
        &expansion.trials[0]
    };
    std::fs::create_dir_all(trial)?;
    let mut spec = chosen.spec.clone();
    spec.sweep = loaded.defaults.sweep.clone();
    let text = crate::secrets::redact_text(&toml::to_string(&spec)?);
    std::fs::write(trial.join("trial.toml"), text)?;
    Ok(())
}

/// SIGTERM and (optionally) the end of stdin set the stop flag.
fn watch_for_stop(stop: &Arc<AtomicBool>, watch_stdin: bool) {
    let flag = Arc::clone(stop);
    std::thread::spawn(move || {
        if let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            runtime.block_on(async {
                if let Ok(mut term) =
                    tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                {
                    term.recv().await;
                    flag.store(true, Ordering::SeqCst);
                }
            });
        }
    });
    if watch_stdin {
        // The parent holds our stdin open; end of file means it is gone.
        let flag = Arc::clone(stop);
        std::thread::spawn(move || {
            let mut sink = [0u8; 256];
            let mut stdin = std::io::stdin();
            while matches!(stdin.read(&mut sink), Ok(n) if n > 0) {}
            flag.store(true, Ordering::SeqCst);
            // A worker stuck in a kernel or a hung collective never reads
            // the flag: without its scheduler it must still end, or it
            // keeps the device's memory and its trial folder.
            let grace = orphan_grace();
            std::thread::sleep(grace);
            // Not `eprintln!`: stderr was a pipe to the scheduler, and a
            // panic on its closed end would end this thread, not the worker.
            let _ = writeln!(
                std::io::stderr(),
                "palisweep worker: the scheduler is gone and this worker did not stop within {}s; ending it",
                grace.as_secs_f64()
            );
            let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGKILL);
        });
    }
}

pub fn run(args: &WorkerArgs) -> anyhow::Result<ExitCode> {
    let trial = TrialDir::from_path(&args.trial);
    if let Some(spec) = &args.spec
        && !trial.config().is_file()
    {
        materialize(spec, trial.path(), args.trial_id.as_deref())?;
    }
    let loaded = load(
        &trial.config(),
        &Overrides {
            sets: args.sets.clone(),
            env: Vec::new(),
        },
    )
    .with_context(|| format!("cannot read the trial config {}", trial.config().display()))?;
    let spec = loaded.spec;
    // Held until the process ends: no second attempt runs in this folder.
    let _lock = trial_lock::acquire(&trial, args.attempt)?;
    let stop = Arc::new(AtomicBool::new(false));
    watch_for_stop(&stop, args.watch_stdin);
    let threads = args.threads.unwrap_or_else(|| {
        std::thread::available_parallelism().map_or(1, |n| i32::try_from(n.get()).unwrap_or(1))
    });
    if spec.train.method == Method::Synthetic {
        return run_synthetic(&spec, args, &trial, threads, &stop);
    }
    if args.deterministic {
        // Before the first kernel, so that every op runs the deterministic way.
        crate::train::determinism::enable()?;
    }
    let device = super::runtime::device(args.device.as_deref())?;
    let ctx = RunContext {
        trial_id: trial
            .path()
            .file_name()
            .map_or_else(String::new, |n| n.to_string_lossy().into_owned()),
        cache: ResultsRoot::new(&spec.experiment.results).cache(),
        trial,
        attempt: args.attempt,
        device,
        threads,
        stop: &stop,
        stop_after: stop_after(args),
    };
    let mut events = EventWriter::open(&ctx.trial.events(), ctx.attempt)
        .with_context(|| format!("cannot write {}", ctx.trial.events().display()))?;
    match train(&spec, &ctx, &mut events) {
        Ok(outcome) => {
            eprintln!(
                "finished after {} steps; last train loss {:.4}; best {}",
                outcome.steps,
                outcome.last_train_loss,
                outcome
                    .best
                    .map_or("-".into(), |(v, s)| format!("{v:.4} at step {s}"))
            );
            Ok(WorkerExit::Finished.into())
        }
        Err(TrainError::Stopped { step }) => {
            eprintln!("stopped at step {step}; the checkpoint resumes it");
            Ok(WorkerExit::Stopped.into())
        }
        Err(error) => {
            let message = error.to_string();
            let (kind, code) = classify(&error);
            let _ = events.emit(WorkerEvent::Failed {
                kind,
                message: message.clone(),
            });
            eprintln!("error: {message}");
            Ok(code.into())
        }
    }
}

/// The stand-in trial: same events, same exit codes, no model.
fn run_synthetic(
    spec: &Spec,
    args: &WorkerArgs,
    trial: &TrialDir,
    threads: i32,
    stop: &AtomicBool,
) -> anyhow::Result<ExitCode> {
    let trial_id = trial
        .path()
        .file_name()
        .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
    let ctx = SyntheticContext {
        trial,
        trial_id: &trial_id,
        attempt: args.attempt,
        threads,
        device: args.device.clone().unwrap_or_else(|| "cpu".into()),
        stop,
        stop_after: stop_after(args),
    };
    let mut events = EventWriter::open(&trial.events(), args.attempt)
        .with_context(|| format!("cannot write {}", trial.events().display()))?;
    Ok(match synthetic::run(spec, &ctx, &mut events)? {
        SyntheticEnd::Finished { steps } => {
            eprintln!("synthetic trial finished after {steps} steps");
            WorkerExit::Finished.into()
        }
        SyntheticEnd::Stopped { step } => {
            eprintln!("stopped at step {step}; the checkpoint resumes it");
            WorkerExit::Stopped.into()
        }
        SyntheticEnd::Failed { kind, message } => {
            eprintln!("error: {message}");
            match kind {
                FailureKind::Oom => WorkerExit::OutOfMemory,
                FailureKind::Data => WorkerExit::BadInput,
                FailureKind::Other => WorkerExit::Failed,
            }
            .into()
        }
    })
}

/// Out of memory, bad data or spec, or anything else.
fn classify(error: &TrainError) -> (FailureKind, WorkerExit) {
    let text = error.to_string().to_ascii_lowercase();
    if text.contains("out of memory") {
        return (FailureKind::Oom, WorkerExit::OutOfMemory);
    }
    match error {
        TrainError::Data(_)
        | TrainError::Processor(_)
        | TrainError::Loader(_)
        | TrainError::Input(_) => (FailureKind::Data, WorkerExit::BadInput),
        // A checkpoint that is missing, corrupt or does not fit its config.
        TrainError::Model(e) if e.is_bad_input() => (FailureKind::Data, WorkerExit::BadInput),
        _ => (FailureKind::Other, WorkerExit::Failed),
    }
}

/// `--stop-after` or `--stop-after-epoch` (clap refuses both).
fn stop_after(args: &WorkerArgs) -> Option<StopAfter> {
    args.stop_after
        .map(StopAfter::Step)
        .or(args.stop_after_epoch.map(StopAfter::Epoch))
}

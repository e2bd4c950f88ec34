//! `palisweep rerun TRIAL`: runs a finished trial again from what was
//! recorded (resolved config, the batch shape that actually ran after any
//! back-off, the thread count, the device kind), after checking that the
//! dataset, checkpoint and versions are the ones it used; records it as a
//! new attempt and compares it metric by metric with the original.
//! Exit 0 when it reproduces (bit for bit on CPU), 1 when it does not.

use std::io::{BufRead as _, BufReader};
use std::path::Path;
use std::process::{Command, ExitCode, Stdio};

use anyhow::Context as _;

use super::output::{out, outln};
use crate::cli::RerunArgs;
use crate::data::check::check;
use crate::devices::detect::{self, DeviceKind};
use crate::devices::grammar::DeviceRequest;
use crate::error::EXIT_FAILURE;
use crate::events::event::{AttemptOutcome, EventSink, SweepEvent, now};
use crate::layout::{ResultsRoot, TrialDir};
use crate::model::checkpoint::fingerprint::checkpoint_fingerprint;
use crate::rerun::{
    Comparison, Current, Original, RerunError, compare, mismatches, read_original, rerun_dir,
};
use crate::spec::load::{Overrides, load};
use crate::spec::schema::{Method, Spec};
use crate::track::progress::{ProgressMode, ProgressSink};
use crate::track::store::{Store, StoreSink};
use crate::train::determinism::CUBLAS_WORKSPACE_CONFIG;
use crate::train::learner::{checkpoint_dir, dataset_root, spec_task};
use crate::worker::contract::WorkerCommand;
use crate::worker::protocol::Envelope;

/// Relative tolerance on CUDA, where kernels are not bitwise deterministic
/// across runs (atomics in reductions).
const CUDA_TOLERANCE: f64 = 1e-3;

pub fn run(args: &RerunArgs) -> anyhow::Result<ExitCode> {
    let store_path = ResultsRoot::new(&args.results).store();
    let store = Store::open_read_only(&store_path)?;
    let row = store.resolve_trial(&args.trial)?;
    // Reruns are attempts too: the next number follows every one recorded.
    let recorded = store
        .attempts(&row.sweep, &row.id)?
        .iter()
        .map(|a| a.attempt)
        .max()
        .unwrap_or(0);
    drop(store);
    let trial = TrialDir::from_path(Path::new(&row.dir));
    let original =
        read_original(&trial.events())?.ok_or_else(|| RerunError::NeverFinished(row.id.clone()))?;
    let spec = load(&trial.config(), &Overrides::default())
        .with_context(|| format!("cannot read {}", trial.config().display()))?
        .spec;

    let current = current(&spec)?;
    let problems = mismatches(&original, &current);
    if !problems.is_empty() {
        if !args.force {
            return Err(RerunError::Mismatch(problems).into());
        }
        for problem in &problems {
            eprintln!("palisweep: rerunning anyway (--force): {problem}");
        }
    }

    let attempt = original.last_attempt.max(recorded) + 1;
    let dir = rerun_dir(&trial, attempt);
    std::fs::create_dir_all(dir.path())?;
    std::fs::copy(trial.config(), dir.config())?;
    let device = if original.on_cuda() { "cuda:0" } else { "cpu" };
    eprintln!(
        "rerunning {} as attempt {attempt} in {}: batch {} × {}, {} thread(s), {device}",
        row.id,
        dir.path().display(),
        original.batch_size,
        original.grad_accum,
        original.threads
    );
    let sink = StoreSink::for_sweep(Store::open(&store_path)?, &row.sweep);
    // Recorded as one more attempt (`rerun`): the trial keeps its status,
    // attempt, best and wall time.
    let mut sinks = Sinks {
        store: sink,
        progress: ProgressSink::new(ProgressMode::detect(false)),
    };
    let (status, rerun) = run_worker(&mut sinks, &row.id, &dir, attempt, device, &original)?;
    let _ = sinks.store.close();
    let Some(rerun) = rerun else {
        anyhow::bail!(
            "the rerun of {} did not finish (exit {:?}); see {}",
            row.id,
            status.code(),
            dir.log().display()
        );
    };
    let tolerance = if original.on_cuda() {
        CUDA_TOLERANCE
    } else {
        0.0
    };
    let comparison = compare(&original, &rerun, tolerance);
    if args.json {
        outln!("{}", serde_json::to_string_pretty(&comparison)?)?;
    } else {
        out!("{}", render(&row.id, &original, &comparison))?;
    }
    Ok(if comparison.reproduced {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_FAILURE)
    })
}

/// Where a rerun's events go: the store, and the progress display `run`
/// uses (a bar per step on a terminal, plain lines otherwise).
struct Sinks {
    store: StoreSink,
    progress: ProgressSink,
}

fn record(sinks: &mut Sinks, event: SweepEvent) {
    let _ = sinks.progress.handle(std::slice::from_ref(&event));
    if let Err(e) = sinks.store.handle(&[event]) {
        eprintln!("palisweep: the store did not take the rerun: {e}");
    }
}

/// Runs the worker in `dir` with the original's batch shape, threads and
/// device kind, recording its events as attempt `attempt`.
fn run_worker(
    sink: &mut Sinks,
    id: &str,
    dir: &TrialDir,
    attempt: u32,
    device: &str,
    original: &Original,
) -> anyhow::Result<(std::process::ExitStatus, Option<Original>)> {
    let mut child = worker_command(&std::env::current_exe()?, dir, attempt, device, original)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("cannot start the worker")?;
    record(
        sink,
        SweepEvent::AttemptStarted {
            trial: id.to_owned(),
            attempt,
            device: device.to_owned(),
            batch_size: original.batch_size,
            grad_accum: original.grad_accum,
            pid: Some(child.id()),
            job: None,
            rerun: true,
            time: now(),
        },
    );
    if let Some(stdout) = child.stdout.take() {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Ok(line) = Envelope::parse(&line) {
                record(
                    sink,
                    SweepEvent::Worker {
                        trial: id.to_owned(),
                        attempt,
                        line,
                    },
                );
            }
        }
    }
    let status = child.wait()?;
    // A worker that failed before writing events (no GPU, a bad config)
    // still ends its attempt in the store: as crashed.
    let rerun = read_original(&dir.events()).ok().flatten();
    let outcome = if status.success() && rerun.is_some() {
        AttemptOutcome::Finished
    } else {
        AttemptOutcome::Crashed
    };
    record(
        sink,
        SweepEvent::AttemptEnded {
            trial: id.to_owned(),
            attempt,
            outcome,
            exit_code: status.code(),
            reason: (outcome != AttemptOutcome::Finished).then(|| "the rerun failed".to_owned()),
            peak_memory_bytes: None,
            time: now(),
        },
    );
    Ok((status, rerun))
}

/// The worker as the original ran: its batch shape, threads and device
/// kind. On CUDA with torch's deterministic algorithms and cuBLAS's
/// reproducible workspace; on the CPU without, because the original ran
/// without and our CPU kernels are deterministic already (bit for bit).
fn worker_command(
    exe: &Path,
    dir: &TrialDir,
    attempt: u32,
    device: &str,
    original: &Original,
) -> Command {
    let worker = WorkerCommand {
        trial_dir: dir.path().to_owned(),
        attempt,
        threads: original.threads.max(1).unsigned_abs(),
        device: Some(device.to_owned()),
        sets: vec![
            format!("train.batch_size={}", original.batch_size),
            format!("train.grad_accum={}", original.grad_accum),
        ],
        watch_stdin: false,
        deterministic: original.on_cuda(),
        stop_after: None,
    };
    let mut command = Command::new(exe);
    command.args(worker.args());
    if original.on_cuda() {
        let (key, value) = CUBLAS_WORKSPACE_CONFIG;
        command.env(key, value);
    }
    command
}

/// What the rerun would use now.
fn current(spec: &Spec) -> anyhow::Result<Current> {
    let cuda_available = detect::resolve(&DeviceRequest::Auto)
        .is_ok_and(|inv| inv.devices.iter().any(|d| d.kind == DeviceKind::Cuda));
    let mut current = Current {
        palisweep_version: env!("CARGO_PKG_VERSION").to_owned(),
        libtorch_version: option_env!("PALISWEEP_LIBTORCH_VERSION").map(str::to_owned),
        cuda_available,
        ..Current::default()
    };
    if spec.train.method == Method::Synthetic {
        "synthetic".clone_into(&mut current.dataset_fingerprint);
        current.libtorch_version = None;
        return Ok(current);
    }
    let cache = ResultsRoot::new(&spec.experiment.results).cache();
    let root = dataset_root(spec, &cache)?;
    current.dataset_fingerprint =
        check(&root, spec_task(spec), spec.data.skip_invalid)?.fingerprint;
    current.checkpoint_fingerprint = checkpoint_fingerprint(&checkpoint_dir(spec, &cache)?).ok();
    Ok(current)
}

fn render(id: &str, original: &Original, c: &Comparison) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let verdict = if c.reproduced {
        "reproduced"
    } else {
        "NOT reproduced"
    };
    let _ = writeln!(
        out,
        "trial {id}: {verdict} ({})",
        if c.tolerance == 0.0 {
            "bit for bit".to_owned()
        } else {
            format!("relative tolerance {:e}", c.tolerance)
        }
    );
    let _ = writeln!(
        out,
        "train/loss over {} steps: {}",
        c.steps,
        if c.curve_identical {
            "identical".to_owned()
        } else {
            format!("max relative difference {:.3e}", c.curve_max_rel_diff)
        }
    );
    let _ = writeln!(
        out,
        "\n{:<24} {:>16} {:>16}  same",
        "metric", "original", "rerun"
    );
    let value = |v: Option<f64>| v.map_or("-".to_owned(), |v| format!("{v:.8}"));
    for m in &c.metrics {
        let _ = writeln!(
            out,
            "{:<24} {:>16} {:>16}  {}",
            m.name,
            value(m.original),
            value(m.rerun),
            if m.identical { "yes" } else { "no" }
        );
    }
    if original.on_cuda() {
        let _ = writeln!(
            out,
            "torch deterministic algorithms in the rerun: {}",
            if c.deterministic_algorithms {
                "on"
            } else {
                "off"
            }
        );
    }
    let _ = writeln!(
        out,
        "\n(original attempt {} on {}, batch {} × {}, {} thread(s))",
        original.attempt,
        original.device,
        original.batch_size,
        original.grad_accum,
        original.threads
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(command: &Command) -> Vec<String> {
        command
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect()
    }

    fn cublas(command: &Command) -> Option<String> {
        command
            .get_envs()
            .find(|(k, _)| *k == CUBLAS_WORKSPACE_CONFIG.0)
            .and_then(|(_, v)| v.map(|v| v.to_string_lossy().into_owned()))
    }

    #[test]
    fn a_cuda_rerun_runs_deterministic_and_a_cpu_rerun_as_the_original_did() {
        let dir = TrialDir::from_path(Path::new("/r/s/trials/t"));
        let mut original = Original {
            batch_size: 2,
            grad_accum: 4,
            threads: 3,
            device: "Cuda(0)".into(),
            ..Original::default()
        };
        let cuda = worker_command(Path::new("palisweep"), &dir, 5, "cuda:0", &original);
        let cuda_args = args(&cuda);
        assert!(
            cuda_args.contains(&"--deterministic".to_owned()),
            "{cuda_args:?}"
        );
        assert_eq!(cublas(&cuda).as_deref(), Some(":4096:8"));
        for expected in ["train.batch_size=2", "train.grad_accum=4", "3", "5"] {
            assert!(
                cuda_args.iter().any(|a| a == expected),
                "{expected}: {cuda_args:?}"
            );
        }

        original.device = "Cpu".into();
        let cpu = worker_command(Path::new("palisweep"), &dir, 5, "cpu", &original);
        assert!(!args(&cpu).contains(&"--deterministic".to_owned()));
        assert_eq!(cublas(&cpu), None);
    }
}

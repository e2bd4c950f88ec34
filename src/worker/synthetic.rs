//! The synthetic trial (`train.method = "synthetic"`): no model, no data.
//! It reports the same events as a real worker — made-up metrics on a
//! curve that depends on the learning rate and seed — checkpoints its step,
//! resumes, and fails on demand (`[synthetic]`), so the scheduler's
//! placement, retries, back-off, signals and resume can be tested in
//! seconds without libtorch doing any work.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::contract::StopAfter;
use super::protocol::{EventWriter, FailureKind, WorkerEvent};
use crate::layout::TrialDir;
use crate::rng::SplitMix64;
use crate::spec::schema::Spec;

/// What a synthetic run needs besides its spec.
pub struct SyntheticContext<'a> {
    pub trial: &'a TrialDir,
    pub trial_id: &'a str,
    pub attempt: u32,
    pub threads: i32,
    pub device: String,
    pub stop: &'a AtomicBool,
    /// Synthetic trials have no epochs: only a step stops them.
    pub stop_after: Option<StopAfter>,
}

/// How a synthetic run ended, short of an I/O error.
#[derive(Debug, PartialEq)]
pub enum SyntheticEnd {
    Finished {
        steps: u64,
    },
    Stopped {
        step: u64,
    },
    /// Failed on demand; `Failed` was reported.
    Failed {
        kind: FailureKind,
        message: String,
    },
}

/// The resume point, written after every step.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Progress {
    step: u64,
    batch_size: u32,
    best: Option<f64>,
}

fn progress_path(trial: &TrialDir) -> std::path::PathBuf {
    trial.path().join("checkpoints").join("synthetic.json")
}

fn save(path: &Path, progress: &Progress) -> std::io::Result<()> {
    std::fs::create_dir_all(path.parent().unwrap_or(Path::new(".")))?;
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, serde_json::to_vec(progress)?)?;
    std::fs::rename(tmp, path)
}

/// A loss curve that falls faster with a larger learning rate (up to a
/// point), with a little seeded noise: enough for reports to rank trials.
fn loss_at(spec: &Spec, step: u64, salt: u64) -> f64 {
    let steps = spec.synthetic.steps.max(1) as f64;
    let rate = (spec.train.lr / 1e-4).clamp(0.05, 20.0).sqrt();
    let floor = 0.05 + 0.02 * spec.train.weight_decay.abs();
    let mut rng = SplitMix64::new(spec.experiment.seed ^ (step << 20) ^ salt);
    let noise = 0.01 * (rng.next_f64() - 0.5);
    floor + 2.0 * (-3.0 * rate * step as f64 / steps).exp() + noise
}

pub fn run(
    spec: &Spec,
    ctx: &SyntheticContext<'_>,
    events: &mut EventWriter,
) -> std::io::Result<SyntheticEnd> {
    let s = &spec.synthetic;
    let path = progress_path(ctx.trial);
    let mut progress: Progress = std::fs::read(&path)
        .ok()
        .and_then(|bytes| serde_json::from_slice(&bytes).ok())
        .filter(|p: &Progress| p.batch_size == spec.train.batch_size)
        .unwrap_or_default();
    progress.batch_size = spec.train.batch_size;
    events.emit(WorkerEvent::Started {
        trial: ctx.trial_id.to_owned(),
        attempt: ctx.attempt,
        trainable_params: 0,
        total_steps: s.steps,
        batch_size: spec.train.batch_size,
        grad_accum: spec.train.grad_accum,
        threads: ctx.threads,
        device: ctx.device.clone(),
        dataset_fingerprint: "synthetic".into(),
        resumed_from: progress.step,
        skipped_lines: 0,
    })?;
    events.emit(WorkerEvent::Provenance {
        palisweep_version: env!("CARGO_PKG_VERSION").to_owned(),
        git_sha: option_env!("PALISWEEP_GIT_SHA").map(str::to_owned),
        libtorch_version: None,
        checkpoint: None,
        checkpoint_fingerprint: None,
        deterministic_algorithms: false,
        cuda_visible_devices: std::env::var("CUDA_VISIBLE_DEVICES").ok(),
        slurm_job: std::env::var("SLURM_JOB_ID").ok(),
    })?;
    if s.oom_from_batch > 0 && spec.train.batch_size >= s.oom_from_batch {
        let message = format!(
            "synthetic: CUDA out of memory (batch {} ≥ {})",
            spec.train.batch_size, s.oom_from_batch
        );
        return fail(events, FailureKind::Oom, message);
    }
    let step_time = Duration::from_millis(s.step_ms);
    while progress.step < s.steps {
        if ctx.stop.load(Ordering::SeqCst) {
            return Ok(SyntheticEnd::Stopped {
                step: progress.step,
            });
        }
        let step = progress.step + 1;
        never_return_at(s, step, ctx.attempt);
        if s.crash_at_step == step && ctx.attempt <= s.crash_attempts {
            let message = format!("synthetic: crashed at step {step}");
            return fail(events, FailureKind::Other, message);
        }
        std::thread::sleep(step_time);
        let loss = loss_at(spec, step, 0);
        let seconds = step_time.as_secs_f64().max(1e-3);
        let samples = f64::from(spec.train.batch_size * spec.train.grad_accum);
        events.emit(WorkerEvent::Step {
            step,
            epoch: 0,
            metrics: BTreeMap::from([
                ("train/loss".to_owned(), loss),
                ("train/lr".to_owned(), spec.train.lr),
                ("train/grad_norm".to_owned(), loss.sqrt()),
                ("perf/samples_per_s".to_owned(), samples / seconds),
                ("perf/tokens_per_s".to_owned(), 300.0 * samples / seconds),
            ]),
            truncated: 0,
        })?;
        if step.is_multiple_of(5) || step == s.steps {
            evaluate(spec, step, ctx.trial, &mut progress, events)?;
        }
        progress.step = step;
        save(&path, &progress)?;
        if ctx.stop_after == Some(StopAfter::Step(step)) && step < s.steps {
            return Ok(SyntheticEnd::Stopped { step });
        }
    }
    events.emit(WorkerEvent::Finished {
        step: progress.step,
        best_metric: progress.best,
    })?;
    Ok(SyntheticEnd::Finished {
        steps: progress.step,
    })
}

/// Validation at `step`; a better `val/loss` is the new best, announced as
/// the real trainer does (a `checkpoint` event with `best`, after the
/// `eval`), with a stand-in `best/` folder.
fn evaluate(
    spec: &Spec,
    step: u64,
    trial: &TrialDir,
    progress: &mut Progress,
    events: &mut EventWriter,
) -> std::io::Result<()> {
    let val = loss_at(spec, step, 1) + 0.05;
    events.emit(WorkerEvent::Eval {
        step,
        epoch: 0,
        split: "valid".into(),
        metrics: BTreeMap::from([("val/loss".to_owned(), val)]),
        truncated: 0,
    })?;
    if progress.best.is_none_or(|best| val < best) {
        progress.best = Some(val);
        let best = trial.best_adapter();
        std::fs::create_dir_all(&best)?;
        std::fs::write(
            best.join("synthetic.json"),
            format!("{{\"step\": {step}, \"val/loss\": {val}}}\n"),
        )?;
        events.emit(WorkerEvent::Checkpoint {
            step,
            path: best.display().to_string(),
            best: true,
        })?;
    }
    Ok(())
}

/// The failures that never return: a hang, a leak until the kernel kills it.
fn never_return_at(s: &crate::spec::schema::Synthetic, step: u64, attempt: u32) {
    if s.hang_at_step == step && attempt <= s.hang_attempts {
        eprintln!("synthetic: hanging at step {step} (until killed)");
        loop {
            std::thread::sleep(Duration::from_secs(3600));
        }
    }
    if s.leak_at_step == step && attempt <= s.leak_attempts {
        eprintln!("synthetic: allocating host memory at step {step} (until killed)");
        leak();
    }
}

/// Takes host memory 64 MiB at a time, touching every page so that it is
/// resident, until the kernel kills the process.
fn leak() -> ! {
    const CHUNK: usize = 64 << 20;
    let mut held: Vec<Vec<u8>> = Vec::new();
    loop {
        held.push(vec![1u8; CHUNK]);
        std::hint::black_box(&held);
    }
}

fn fail(
    events: &mut EventWriter,
    kind: FailureKind,
    message: String,
) -> std::io::Result<SyntheticEnd> {
    events.emit(WorkerEvent::Failed {
        kind,
        message: message.clone(),
    })?;
    Ok(SyntheticEnd::Failed { kind, message })
}

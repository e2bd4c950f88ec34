//! One trial's training run: data checks, model with its adaptation plan,
//! the epoch loop with gradient accumulation, clipping, the LR schedule,
//! evaluation, checkpoints and resume. Everything random is derived from
//! (seed, epoch, step), so a resumed run continues exactly as an
//! uninterrupted one would (bitwise on CPU, with the same thread count).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use tch::{Device, Kind};

use crate::data::annotations::{DataError, Split};
use crate::data::check::{CheckedDataset, check};
use crate::data::loader::{EpochLoader, LoaderError, LoaderOptions, batches_per_epoch};
use crate::data::synthetic::{self, SyntheticTask};
use crate::layout::TrialDir;
use crate::metrics::names::is_better;
use crate::metrics::task::Task;
use crate::model::adapt::AdaptPlan;
use crate::model::backward::{BackwardOptions, loss_backward};
use crate::model::paligemma::{ModelError, PaliGemma};
use crate::model::peft::AdapterMeta;
use crate::model::processor::{Processor, ProcessorError};
use crate::model::{hub, tiny};
use crate::spec::GENERATED_PREFIX;
use crate::spec::checkpoint::{self as ckpt_ref, CheckpointRef};
use crate::spec::schema::{EvalEvery, Precision, Spec};
use crate::worker::protocol::{EventWriter, WorkerEvent};

use super::checkpoint::{self, CheckpointError, TrainState};
use super::evaluate::{EvalError, EvalOptions, evaluate};
use super::optim::{AdamW, AdamWConfig};
use super::schedule::LrSchedule;

#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error(transparent)]
    Data(#[from] DataError),
    #[error(transparent)]
    Loader(#[from] LoaderError),
    #[error(transparent)]
    Processor(#[from] ProcessorError),
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error(transparent)]
    Eval(#[from] EvalError),
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    #[error(transparent)]
    Tch(#[from] tch::TchError),
    /// The dataset or checkpoint the spec names cannot be had.
    #[error("{0}")]
    Input(String),
    #[error("cannot write events: {0}")]
    Events(#[from] std::io::Error),
    #[error("the trial was stopped at step {step} (checkpoint saved)")]
    Stopped { step: u64 },
}

/// Everything a run needs besides its spec.
pub struct RunContext<'a> {
    pub trial: TrialDir,
    pub trial_id: String,
    pub attempt: u32,
    /// `<results>/.cache`: generated datasets and tiny checkpoints.
    pub cache: PathBuf,
    pub device: Device,
    pub threads: i32,
    /// Set by SIGTERM or a closed stdin: checkpoint and stop.
    pub stop: &'a AtomicBool,
    /// Stop after this step as if asked to (testing resume).
    pub stop_after: Option<u64>,
}

/// What a finished run reports.
#[derive(Clone, Debug, PartialEq)]
pub struct Outcome {
    pub steps: u64,
    pub best: Option<(f64, u64)>,
    pub last_train_loss: f64,
}

/// The dataset folder `data.path` names (generating the synthetic one).
pub fn dataset_root(spec: &Spec, cache: &Path) -> Result<PathBuf, TrainError> {
    match spec.data.path.strip_prefix(GENERATED_PREFIX) {
        Some(kind) => {
            let task: SyntheticTask = kind.parse().map_err(TrainError::Input)?;
            synthetic::ensure(cache, task).map_err(|e| TrainError::Input(e.to_string()))
        }
        None => Ok(PathBuf::from(&spec.data.path)),
    }
}

/// The checkpoint folder `[model]` names (generating a tiny one, resolving
/// a hub id through the cache).
pub fn checkpoint_dir(spec: &Spec, cache: &Path) -> Result<PathBuf, TrainError> {
    let resolved = ckpt_ref::resolve(&spec.model);
    match resolved.reference {
        CheckpointRef::Tiny => tiny::ensure(cache, resolved.size, resolved.resolution)
            .map_err(|e| TrainError::Input(e.to_string())),
        CheckpointRef::Hub(id) => hub::resolve(&id, spec.model.revision.as_deref())
            .map_err(|e| TrainError::Input(e.to_string())),
        CheckpointRef::Local(dir) => Ok(dir),
    }
}

pub fn spec_task(spec: &Spec) -> Option<Task> {
    use crate::spec::schema::Task as SpecTask;
    match spec.data.task {
        SpecTask::Auto => None,
        SpecTask::Json => Some(Task::Json),
        SpecTask::Detect => Some(Task::Detect),
        SpecTask::Segment => Some(Task::Segment),
        SpecTask::Text => Some(Task::Text),
    }
}

/// A seed for torch's generator at one micro-step (dropout), from the
/// trial seed, the epoch and the micro-batch: never from earlier draws.
fn step_seed(seed: u64, epoch: u64, batch: usize) -> i64 {
    let mut rng =
        crate::rng::SplitMix64::new(seed ^ (epoch << 32) ^ batch as u64 ^ 0xA5A5_5A5A_0F0F_F0F0);
    i64::from_ne_bytes(rng.next_u64().to_ne_bytes()) & i64::MAX
}

/// Runs (or resumes) the trial to the end.
#[allow(clippy::too_many_lines)] // one loop, read top to bottom
pub fn train(
    spec: &Spec,
    ctx: &RunContext,
    events: &mut EventWriter,
) -> Result<Outcome, TrainError> {
    tch::set_num_threads(ctx.threads);
    let root = dataset_root(spec, &ctx.cache)?;
    let dataset: CheckedDataset = check(&root, spec_task(spec), spec.data.skip_invalid)?;
    let checkpoint_path = checkpoint_dir(spec, &ctx.cache)?;
    let kind = match (spec.train.precision, ctx.device) {
        (Precision::Bf16, _) | (Precision::Auto, Device::Cuda(_)) => Kind::BFloat16,
        _ => Kind::Float,
    };
    let plan = AdaptPlan::from_spec(spec);
    let (model, trainables) = PaliGemma::load_adapted(
        &checkpoint_path,
        ctx.device,
        kind,
        &plan,
        spec.experiment.seed,
    )?;
    let processor = Processor::from_dir(&checkpoint_path)?;
    // data.max_prefix_tokens limits the prompt; the processor counts the
    // image tokens, `<bos>` and `"\n"` too.
    let prefix_limit = processor.image_seq_length() + 2 + spec.data.max_prefix_tokens as usize;
    let processor = Arc::new(processor.with_max_prefix_tokens(prefix_limit));

    let train_records = Arc::new(dataset.split(Split::Train).to_vec());
    let valid_records = Arc::new(dataset.split(Split::Valid).to_vec());
    let test_records = Arc::new(dataset.split(Split::Test).to_vec());
    let batch_size = spec.train.batch_size as usize;
    let accum = spec.train.grad_accum as usize;
    let batches = batches_per_epoch(train_records.len(), batch_size);
    let steps_per_epoch = batches.div_ceil(accum) as u64;
    let mut total_steps = steps_per_epoch * u64::from(spec.train.epochs);
    if let Some(max) = spec.train.max_steps {
        total_steps = total_steps.min(max);
    }
    let schedule = LrSchedule::new(
        spec.train.lr,
        spec.train.schedule,
        spec.train.warmup,
        total_steps,
    );
    let mut optimizer = AdamW::new(
        AdamWConfig {
            weight_decay: spec.train.weight_decay,
            ..AdamWConfig::default()
        },
        trainables
            .params()
            .iter()
            .map(|p| (p.name.clone(), p.tensor.shallow_clone(), !p.no_decay))
            .collect(),
    )?;

    let checkpoints = ctx.trial.path().join("checkpoints");
    let mut state = TrainState {
        step: 0,
        epoch: 0,
        batches_done: 0,
        best: None,
        threads: ctx.threads,
        batch_size: spec.train.batch_size,
        grad_accum: spec.train.grad_accum,
    };
    if let Some(latest) = checkpoint::latest(&checkpoints) {
        let saved = checkpoint::read_state(&latest)?;
        // The data position counts batches of the saved shape: after an
        // out-of-memory back-off changed it, start over rather than skip
        // the wrong examples.
        let same_shape = (saved.batch_size, saved.grad_accum) == (0, 0)
            || (saved.batch_size, saved.grad_accum)
                == (spec.train.batch_size, spec.train.grad_accum);
        if same_shape {
            checkpoint::restore(&latest, &trainables, &mut optimizer)?;
            state = TrainState {
                batch_size: spec.train.batch_size,
                grad_accum: spec.train.grad_accum,
                ..saved
            };
        } else {
            eprintln!(
                "checkpoints were made with batch {} × {}; this attempt runs {} × {}: starting over",
                saved.batch_size, saved.grad_accum, spec.train.batch_size, spec.train.grad_accum
            );
        }
    }
    let resumed_from = state.step;
    let total_params = model.config().param_counts().total;
    eprintln!(
        "trainable parameters: {} of {} ({:.3}%); {} train / {} valid / {} test examples ({} invalid lines skipped); dataset sha256 {}",
        trainables.num_parameters(),
        total_params,
        100.0 * trainables.num_parameters() as f64 / total_params.max(1) as f64,
        train_records.len(),
        valid_records.len(),
        test_records.len(),
        dataset.skipped,
        dataset.fingerprint
    );
    events.emit(WorkerEvent::Started {
        trial: ctx.trial_id.clone(),
        attempt: ctx.attempt,
        trainable_params: trainables.num_parameters(),
        total_steps,
        batch_size: spec.train.batch_size,
        grad_accum: spec.train.grad_accum,
        threads: ctx.threads,
        device: format!("{:?}", ctx.device),
        dataset_fingerprint: dataset.fingerprint.clone(),
        resumed_from,
        skipped_lines: dataset.skipped,
    })?;
    events.emit(WorkerEvent::Provenance {
        palisweep_version: env!("CARGO_PKG_VERSION").to_owned(),
        git_sha: option_env!("PALISWEEP_GIT_SHA").map(str::to_owned),
        libtorch_version: option_env!("PALISWEEP_LIBTORCH_VERSION").map(str::to_owned),
        checkpoint: Some(ckpt_ref::resolve(&spec.model).display),
        checkpoint_fingerprint: crate::model::fingerprint::checkpoint_fingerprint(&checkpoint_path)
            .ok(),
        deterministic_algorithms: crate::train::determinism::state().algorithms,
        cuda_visible_devices: std::env::var("CUDA_VISIBLE_DEVICES").ok(),
        slurm_job: std::env::var("SLURM_JOB_ID").ok(),
    })?;

    let meta = AdapterMeta {
        base_model_name_or_path: Some(ckpt_ref::resolve(&spec.model).display),
        revision: spec.model.revision.clone(),
    };
    let eval_options = EvalOptions {
        batch_size: spec.eval.batch_size as usize,
        max_suffix_tokens: spec.data.max_suffix_tokens as usize,
        generate: spec.eval.generate,
        max_new_tokens: spec.eval.max_new_tokens as usize,
        device: ctx.device,
        kind,
    };
    let select = spec.eval.select.metric.clone();
    let (select_split, select_name) = select.split_once('/').unwrap_or(("val", "loss"));
    let eval_every = match spec.eval.every {
        EvalEvery::Steps(n) => Some(n.max(1)),
        EvalEvery::Named(_) => None,
    };
    let loader_options = LoaderOptions {
        batch_size,
        max_suffix_tokens: spec.data.max_suffix_tokens as usize,
        shuffle_seed: Some(spec.experiment.seed),
        prefetch: 2,
    };
    let keep = spec.resources.keep_checkpoints as usize;

    // Evaluates the validation split, reports it, and keeps `best/`.
    let evaluate_and_keep_best =
        |state: &mut TrainState, events: &mut EventWriter| -> Result<(), TrainError> {
            if valid_records.is_empty() {
                return Ok(());
            }
            model.set_training(false);
            let result = evaluate(
                &model,
                &processor,
                &valid_records,
                dataset.task,
                &eval_options,
            )?;
            let metrics = result.named("val");
            events.emit(WorkerEvent::Eval {
                step: state.step,
                epoch: state.epoch,
                split: "valid".into(),
                metrics: metrics.clone(),
                truncated: result.truncated,
            })?;
            if select_split == "val"
                && let Some(&value) = metrics.get(&format!("val/{select_name}"))
                && state
                    .best
                    .is_none_or(|(best, _)| is_better(select_name, value, best))
            {
                state.best = Some((value, state.step));
                let best_dir = ctx.trial.best_adapter();
                checkpoint::save_model(&best_dir, &trainables, &meta)?;
                events.emit(WorkerEvent::Checkpoint {
                    step: state.step,
                    path: best_dir.display().to_string(),
                    best: true,
                })?;
            }
            Ok(())
        };

    let mut last_train_loss = f64::NAN;
    // Per optimiser step: the micro-batch losses stay on the device (one
    // read per step, not per micro-batch); throughput counts this window only.
    let mut window_started = Instant::now();
    let mut window_loss: Option<tch::Tensor> = None;
    let (mut window_micro, mut window_samples, mut window_tokens) = (0usize, 0usize, 0i64);
    let mut window_truncated = 0usize;
    'epochs: while state.epoch < u64::from(spec.train.epochs) && state.step < total_steps {
        let loader = EpochLoader::start(
            Arc::clone(&train_records),
            Arc::clone(&processor),
            loader_options,
            state.epoch,
            state.batches_done,
        );
        model.set_training(true);
        optimizer.zero_grad();
        for batch in loader {
            let batch = batch?;
            let input = batch.encoded.input.to(ctx.device, kind);
            let options = BackwardOptions {
                label_smoothing: spec.train.label_smoothing,
                // Each micro-batch counts 1/accum of the step, as transformers' Trainer does.
                grad_scale: 1.0 / accum as f64,
                checkpointing: spec.train.gradient_checkpointing,
                seed: step_seed(spec.experiment.seed, state.epoch, batch.index),
            };
            let detached = loss_backward(&model, &input, &options)?.mean()?;
            window_loss = Some(match window_loss.take() {
                Some(sum) => sum.f_add(&detached)?,
                None => detached,
            });
            window_micro += 1;
            window_samples += batch.records.len();
            window_truncated += batch.encoded.truncated;
            // Counted on the host copy of the mask: no device sync.
            window_tokens += batch
                .encoded
                .input
                .attention_mask
                .f_sum(Kind::Int64)?
                .f_int64_value(&[])?;
            state.batches_done = batch.index + 1;
            let epoch_end = state.batches_done == batches;
            if window_micro < accum && !epoch_end {
                continue;
            }
            let grad_norm = optimizer.clip_grad_norm(spec.train.max_grad_norm)?;
            let lr = schedule.lr(state.step);
            optimizer.step(lr)?;
            optimizer.zero_grad();
            state.step += 1;
            last_train_loss = match window_loss.take() {
                Some(sum) => sum.f_double_value(&[])? / window_micro as f64,
                None => f64::NAN,
            };
            let elapsed = window_started.elapsed().as_secs_f64().max(1e-9);
            let mut metrics = BTreeMap::from([
                ("train/loss".to_owned(), last_train_loss),
                ("train/lr".to_owned(), lr),
                ("train/grad_norm".to_owned(), grad_norm),
                (
                    "perf/samples_per_s".to_owned(),
                    window_samples as f64 / elapsed,
                ),
                (
                    "perf/tokens_per_s".to_owned(),
                    window_tokens as f64 / elapsed,
                ),
            ]);
            if let Some(rss) = super::perf::peak_rss_bytes() {
                metrics.insert("perf/peak_memory_bytes".to_owned(), rss as f64);
            }
            events.emit(WorkerEvent::Step {
                step: state.step,
                epoch: state.epoch,
                metrics,
                truncated: window_truncated,
            })?;
            (window_micro, window_samples, window_tokens) = (0, 0, 0);
            window_truncated = 0;
            window_started = Instant::now();

            let step_eval = eval_every.is_some_and(|n| state.step.is_multiple_of(n));
            if epoch_end {
                state.epoch += 1;
                state.batches_done = 0;
            }
            if step_eval || (epoch_end && eval_every.is_none()) {
                evaluate_and_keep_best(&mut state, events)?;
                model.set_training(true);
            }
            if ctx.stop_after == Some(state.step) {
                ctx.stop.store(true, Ordering::SeqCst);
            }
            let stopping = ctx.stop.load(Ordering::SeqCst);
            if epoch_end || step_eval || stopping || state.step >= total_steps {
                let path = checkpoint::save(&checkpoints, &trainables, &optimizer, &state, keep)?;
                events.emit(WorkerEvent::Checkpoint {
                    step: state.step,
                    path: path.display().to_string(),
                    best: false,
                })?;
            }
            if stopping {
                return Err(TrainError::Stopped { step: state.step });
            }
            if state.step >= total_steps {
                break 'epochs;
            }
            if epoch_end {
                continue 'epochs;
            }
        }
    }
    if state.best.is_none() {
        evaluate_and_keep_best(&mut state, events)?;
    }
    checkpoint::save_model(&ctx.trial.final_adapter(), &trainables, &meta)?;
    events.emit(WorkerEvent::Checkpoint {
        step: state.step,
        path: ctx.trial.final_adapter().display().to_string(),
        best: false,
    })?;

    // The best checkpoint (by eval.select) is the one scored on test.
    if !test_records.is_empty() {
        let best_dir = ctx.trial.best_adapter();
        if checkpoint::params_file(&best_dir).is_file() {
            checkpoint::load_params(&trainables, &checkpoint::params_file(&best_dir))?;
        }
        model.set_training(false);
        let result = evaluate(
            &model,
            &processor,
            &test_records,
            dataset.task,
            &eval_options,
        )?;
        let metrics = result.named("test");
        events.emit(WorkerEvent::Eval {
            step: state.step,
            epoch: state.epoch,
            split: "test".into(),
            metrics,
            truncated: result.truncated,
        })?;
    }
    events.emit(WorkerEvent::Finished {
        step: state.step,
        best_metric: state.best.map(|(v, _)| v),
    })?;
    Ok(Outcome {
        steps: state.step,
        best: state.best,
        last_train_loss,
    })
}

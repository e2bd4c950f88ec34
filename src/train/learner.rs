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

use tch::{Device, Kind, Tensor};

use crate::data::annotations::{DataError, Record, Split};
use crate::data::check::{CheckedDataset, check};
use crate::data::loader::{Batch, EpochLoader, LoaderError, LoaderOptions, batches_per_epoch};
use crate::data::synthetic::{self, SyntheticTask};
use crate::layout::TrialDir;
use crate::metrics::names::is_better;
use crate::metrics::task::Task;
use crate::model::adapt::peft::AdapterMeta;
use crate::model::adapt::plan::Trainables;
use crate::model::checkpoint::fingerprint::checkpoint_fingerprint;
use crate::model::checkpoint::{hub, tiny};
use crate::model::network::backward::{BackwardOptions, loss_backward};
use crate::model::network::paligemma::{ModelError, PaliGemma};
use crate::model::preprocess::processor::{Processor, ProcessorError};
use crate::spec::GENERATED_PREFIX;
use crate::spec::checkpoint::{self as ckpt_ref, CheckpointRef};
use crate::spec::schema::{EvalEvery, Precision, Spec};
use crate::track::predictions::{self, PredictionsError};
use crate::train::adapt_plan::{adapt_plan, attention_mode};
use crate::worker::contract::StopAfter;
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
    Predictions(#[from] PredictionsError),
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
    /// Stop there as if asked to: an ASHA rung (or testing resume).
    pub stop_after: Option<StopAfter>,
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
pub fn train(
    spec: &Spec,
    ctx: &RunContext,
    events: &mut EventWriter,
) -> Result<Outcome, TrainError> {
    let mut trainer = Trainer::new(spec, ctx)?;
    trainer.resume()?;
    trainer.announce(events)?;
    trainer.run(events)
}

/// One trial's training run, made of the steps [`train`] takes: build
/// (data, model, optimiser), resume, announce, then the epoch loop of
/// optimiser steps with evaluations and checkpoints, and finish.
pub struct Trainer<'a> {
    spec: &'a Spec,
    ctx: &'a RunContext<'a>,
    dataset: CheckedDataset,
    checkpoint_path: PathBuf,
    model: PaliGemma,
    trainables: Trainables,
    processor: Arc<Processor>,
    records: BTreeMap<Split, Arc<Vec<Record>>>,
    optimizer: AdamW,
    schedule: LrSchedule,
    state: TrainState,
    kind: Kind,
    /// Micro-batches per epoch, and per optimiser step.
    batches: usize,
    accum: usize,
    total_steps: u64,
    eval_options: EvalOptions,
    meta: AdapterMeta,
    last_train_loss: f64,
}

/// What one optimiser step has gathered so far: the micro-batch losses stay
/// on the device (one read per step, not per micro-batch); throughput counts
/// this window only.
struct StepWindow {
    started: Instant,
    loss: Option<Tensor>,
    micro: usize,
    samples: usize,
    tokens: i64,
    truncated: usize,
}

impl StepWindow {
    fn new() -> Self {
        Self {
            started: Instant::now(),
            loss: None,
            micro: 0,
            samples: 0,
            tokens: 0,
            truncated: 0,
        }
    }
}

impl<'a> Trainer<'a> {
    /// Checks the dataset, loads the model with the spec's adaptation plan,
    /// and builds the optimiser and the schedule; nothing is emitted yet.
    pub fn new(spec: &'a Spec, ctx: &'a RunContext<'a>) -> Result<Self, TrainError> {
        tch::set_num_threads(ctx.threads);
        let root = dataset_root(spec, &ctx.cache)?;
        let dataset: CheckedDataset = check(&root, spec_task(spec), spec.data.skip_invalid)?;
        let checkpoint_path = checkpoint_dir(spec, &ctx.cache)?;
        let kind = match (spec.train.precision, ctx.device) {
            (Precision::Bf16, _) | (Precision::Auto, Device::Cuda(_)) => Kind::BFloat16,
            _ => Kind::Float,
        };
        let (mut model, trainables) = PaliGemma::load_adapted(
            &checkpoint_path,
            ctx.device,
            kind,
            &adapt_plan(spec),
            spec.experiment.seed,
        )?;
        model.set_attention(attention_mode(spec));
        let processor = Processor::from_dir(&checkpoint_path)?;
        // data.max_prefix_tokens limits the prompt; the processor counts the
        // image tokens, `<bos>` and `"\n"` too.
        let prefix_limit = processor.image_seq_length() + 2 + spec.data.max_prefix_tokens as usize;
        let processor = Arc::new(processor.with_max_prefix_tokens(prefix_limit));
        let records: BTreeMap<Split, Arc<Vec<Record>>> = [Split::Train, Split::Valid, Split::Test]
            .into_iter()
            .map(|split| (split, Arc::new(dataset.split(split).to_vec())))
            .collect();
        let batches =
            batches_per_epoch(records[&Split::Train].len(), spec.train.batch_size as usize);
        let accum = spec.train.grad_accum as usize;
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
        let optimizer = AdamW::new(
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
        let state = TrainState {
            step: 0,
            epoch: 0,
            batches_done: 0,
            best: None,
            threads: ctx.threads,
            batch_size: spec.train.batch_size,
            grad_accum: spec.train.grad_accum,
        };
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
        Ok(Self {
            spec,
            ctx,
            dataset,
            checkpoint_path,
            model,
            trainables,
            processor,
            records,
            optimizer,
            schedule,
            state,
            kind,
            batches,
            accum,
            total_steps,
            eval_options,
            meta,
            last_train_loss: f64::NAN,
        })
    }

    fn checkpoints(&self) -> PathBuf {
        self.ctx.trial.path().join("checkpoints")
    }

    /// Continues from the latest checkpoint, if any was made with this
    /// batch shape.
    pub fn resume(&mut self) -> Result<(), TrainError> {
        let Some(latest) = checkpoint::latest(&self.checkpoints()) else {
            return Ok(());
        };
        let (batch_size, grad_accum) = (self.spec.train.batch_size, self.spec.train.grad_accum);
        let saved = checkpoint::read_state(&latest)?;
        // The data position counts batches of the saved shape: after an
        // out-of-memory back-off changed it, start over rather than skip
        // the wrong examples.
        let same_shape = (saved.batch_size, saved.grad_accum) == (0, 0)
            || (saved.batch_size, saved.grad_accum) == (batch_size, grad_accum);
        if same_shape {
            checkpoint::restore(&latest, &self.trainables, &mut self.optimizer)?;
            self.state = TrainState {
                batch_size,
                grad_accum,
                ..saved
            };
        } else {
            eprintln!(
                "checkpoints were made with batch {} × {}; this attempt runs {batch_size} × {grad_accum}: starting over",
                saved.batch_size, saved.grad_accum
            );
        }
        Ok(())
    }

    /// Tells the log and the events what runs: `started` and `provenance`.
    pub fn announce(&self, events: &mut EventWriter) -> Result<(), TrainError> {
        let (spec, ctx, dataset) = (self.spec, self.ctx, &self.dataset);
        let total_params = self.model.config().param_counts().total;
        let trainable = self.trainables.num_parameters();
        eprintln!(
            "trainable parameters: {trainable} of {total_params} ({:.3}%); {} train / {} valid / {} test examples ({} invalid lines skipped); dataset sha256 {}",
            100.0 * trainable as f64 / total_params.max(1) as f64,
            self.records[&Split::Train].len(),
            self.records[&Split::Valid].len(),
            self.records[&Split::Test].len(),
            dataset.skipped,
            dataset.fingerprint
        );
        events.emit(WorkerEvent::Started {
            trial: ctx.trial_id.clone(),
            attempt: ctx.attempt,
            trainable_params: trainable,
            total_steps: self.total_steps,
            batch_size: spec.train.batch_size,
            grad_accum: spec.train.grad_accum,
            threads: ctx.threads,
            device: format!("{:?}", ctx.device),
            dataset_fingerprint: dataset.fingerprint.clone(),
            resumed_from: self.state.step,
            skipped_lines: dataset.skipped,
        })?;
        events.emit(WorkerEvent::Provenance {
            palisweep_version: env!("CARGO_PKG_VERSION").to_owned(),
            git_sha: option_env!("PALISWEEP_GIT_SHA").map(str::to_owned),
            libtorch_version: option_env!("PALISWEEP_LIBTORCH_VERSION").map(str::to_owned),
            checkpoint: Some(ckpt_ref::resolve(&spec.model).display),
            checkpoint_fingerprint: checkpoint_fingerprint(&self.checkpoint_path).ok(),
            deterministic_algorithms: crate::train::determinism::state().algorithms,
            cuda_visible_devices: std::env::var("CUDA_VISIBLE_DEVICES").ok(),
            slurm_job: std::env::var("SLURM_JOB_ID").ok(),
        })?;
        Ok(())
    }

    /// The epoch loop to the last step, then [`Trainer::finish`].
    pub fn run(mut self, events: &mut EventWriter) -> Result<Outcome, TrainError> {
        let eval_every = match self.spec.eval.every {
            EvalEvery::Steps(n) => Some(n.max(1)),
            EvalEvery::Named(_) => None,
        };
        let loader_options = LoaderOptions {
            batch_size: self.spec.train.batch_size as usize,
            max_suffix_tokens: self.spec.data.max_suffix_tokens as usize,
            shuffle_seed: Some(self.spec.experiment.seed),
            prefetch: 2,
        };
        let mut window = StepWindow::new();
        'epochs: while self.state.epoch < u64::from(self.spec.train.epochs)
            && self.state.step < self.total_steps
        {
            let loader = EpochLoader::start(
                Arc::clone(&self.records[&Split::Train]),
                Arc::clone(&self.processor),
                loader_options,
                self.state.epoch,
                self.state.batches_done,
            );
            self.model.set_training(true);
            self.optimizer.zero_grad()?;
            for batch in loader {
                self.micro_step(&batch?, &mut window)?;
                let epoch_end = self.state.batches_done == self.batches;
                if window.micro < self.accum && !epoch_end {
                    continue;
                }
                self.step(&mut window, events)?;
                let step_eval = eval_every.is_some_and(|n| self.state.step.is_multiple_of(n));
                if epoch_end {
                    self.state.epoch += 1;
                    self.state.batches_done = 0;
                }
                if step_eval || (epoch_end && eval_every.is_none()) {
                    self.evaluate_and_emit(Split::Valid, events)?;
                    self.model.set_training(true);
                }
                // At the last step a rung is the end: finish, not stop.
                let at_rung = match self.ctx.stop_after {
                    Some(StopAfter::Step(step)) => self.state.step == step,
                    Some(StopAfter::Epoch(epoch)) => epoch_end && self.state.epoch == epoch,
                    None => false,
                };
                if at_rung && self.state.step < self.total_steps {
                    self.ctx.stop.store(true, Ordering::SeqCst);
                }
                let stopping = self.ctx.stop.load(Ordering::SeqCst);
                if epoch_end || step_eval || stopping || self.state.step >= self.total_steps {
                    self.checkpoint(events)?;
                }
                if stopping {
                    return Err(TrainError::Stopped {
                        step: self.state.step,
                    });
                }
                if self.state.step >= self.total_steps {
                    break 'epochs;
                }
                if epoch_end {
                    continue 'epochs;
                }
            }
        }
        self.finish(events)
    }

    /// Forward and backward of one micro-batch; its gradients add up until
    /// the optimiser step.
    fn micro_step(&mut self, batch: &Batch, window: &mut StepWindow) -> Result<(), TrainError> {
        let spec = self.spec;
        let input = batch.encoded.input.to(self.ctx.device, self.kind);
        let options = BackwardOptions {
            label_smoothing: spec.train.label_smoothing,
            // Each micro-batch counts 1/accum of the step, as transformers' Trainer does.
            grad_scale: 1.0 / self.accum as f64,
            checkpointing: spec.train.gradient_checkpointing,
            seed: step_seed(spec.experiment.seed, self.state.epoch, batch.index),
        };
        let detached = loss_backward(&self.model, &input, &options)?.mean()?;
        window.loss = Some(match window.loss.take() {
            Some(sum) => sum.f_add(&detached)?,
            None => detached,
        });
        window.micro += 1;
        window.samples += batch.records.len();
        window.truncated += batch.encoded.truncated;
        // Counted on the host copy of the mask: no device sync.
        window.tokens += batch
            .encoded
            .input
            .attention_mask
            .f_sum(Kind::Int64)?
            .f_int64_value(&[])?;
        self.state.batches_done = batch.index + 1;
        Ok(())
    }

    /// Clips, steps the optimiser at the schedule's rate, and reports the
    /// step's metrics; the window starts over.
    fn step(
        &mut self,
        window: &mut StepWindow,
        events: &mut EventWriter,
    ) -> Result<(), TrainError> {
        let grad_norm = self
            .optimizer
            .clip_grad_norm(self.spec.train.max_grad_norm)?;
        let lr = self.schedule.lr(self.state.step);
        self.optimizer.step(lr)?;
        self.optimizer.zero_grad()?;
        self.state.step += 1;
        self.last_train_loss = match window.loss.take() {
            Some(sum) => sum.f_double_value(&[])? / window.micro as f64,
            None => f64::NAN,
        };
        let elapsed = window.started.elapsed().as_secs_f64().max(1e-9);
        let mut metrics = BTreeMap::from([
            ("train/loss".to_owned(), self.last_train_loss),
            ("train/lr".to_owned(), lr),
            ("train/grad_norm".to_owned(), grad_norm),
            (
                "perf/samples_per_s".to_owned(),
                window.samples as f64 / elapsed,
            ),
            (
                "perf/tokens_per_s".to_owned(),
                window.tokens as f64 / elapsed,
            ),
        ]);
        if let Some(rss) = super::perf::peak_rss_bytes() {
            metrics.insert("perf/peak_memory_bytes".to_owned(), rss as f64);
        }
        events.emit(WorkerEvent::Step {
            step: self.state.step,
            epoch: self.state.epoch,
            metrics,
            truncated: window.truncated,
        })?;
        *window = StepWindow::new();
        Ok(())
    }

    /// Evaluates `split` (validation or test) with the current weights and
    /// reports it, with its per-example predictions file when it generated;
    /// on validation, keeps `best/` when the selection metric improved. An
    /// empty split is skipped.
    fn evaluate_and_emit(
        &mut self,
        split: Split,
        events: &mut EventWriter,
    ) -> Result<(), TrainError> {
        let records = &self.records[&split];
        if records.is_empty() {
            return Ok(());
        }
        let (prefix, name) = match split {
            Split::Test => ("test", "test"),
            _ => ("val", "valid"),
        };
        self.model.set_training(false);
        let result = evaluate(
            &self.model,
            &self.processor,
            records,
            self.dataset.task,
            &self.eval_options,
        )?;
        let metrics = result.named(prefix);
        events.emit(WorkerEvent::Eval {
            step: self.state.step,
            epoch: self.state.epoch,
            split: name.into(),
            metrics: metrics.clone(),
            truncated: result.truncated,
        })?;
        if let Some(first) = result.predictions.first() {
            let path = self.ctx.trial.predictions(prefix, self.state.step);
            predictions::write(&path, &result.predictions)?;
            events.emit(WorkerEvent::Predictions {
                step: self.state.step,
                split: prefix.into(),
                path: path.display().to_string(),
                examples: result.predictions.len(),
                metric: first.metric.clone(),
            })?;
        }
        let select = &self.spec.eval.select.metric;
        let (select_split, select_name) = select.split_once('/').unwrap_or(("val", "loss"));
        if split == Split::Valid
            && select_split == "val"
            && let Some(&value) = metrics.get(&format!("val/{select_name}"))
            && self
                .state
                .best
                .is_none_or(|(best, _)| is_better(select_name, value, best))
        {
            self.state.best = Some((value, self.state.step));
            self.save_adapter(&self.ctx.trial.best_adapter(), true, events)?;
        }
        Ok(())
    }

    /// Saves the adapter in PEFT's format into `dir` (`best/`, `final/`).
    fn save_adapter(
        &self,
        dir: &Path,
        best: bool,
        events: &mut EventWriter,
    ) -> Result<(), TrainError> {
        checkpoint::save_model(dir, &self.trainables, &self.meta)?;
        events.emit(WorkerEvent::Checkpoint {
            step: self.state.step,
            path: dir.display().to_string(),
            best,
        })?;
        Ok(())
    }

    /// Saves the resumable checkpoint (weights, optimiser, position).
    fn checkpoint(&self, events: &mut EventWriter) -> Result<(), TrainError> {
        let keep = self.spec.resources.keep_checkpoints as usize;
        let path = checkpoint::save(
            &self.checkpoints(),
            &self.trainables,
            &self.optimizer,
            &self.state,
            keep,
        )?;
        events.emit(WorkerEvent::Checkpoint {
            step: self.state.step,
            path: path.display().to_string(),
            best: false,
        })?;
        Ok(())
    }

    /// After the last step: a validation if none chose a best yet, the
    /// `final/` adapter, the best checkpoint scored on test, `finished`.
    fn finish(mut self, events: &mut EventWriter) -> Result<Outcome, TrainError> {
        if self.state.best.is_none() {
            self.evaluate_and_emit(Split::Valid, events)?;
        }
        self.save_adapter(&self.ctx.trial.final_adapter(), false, events)?;
        // The best checkpoint (by eval.select) is the one scored on test.
        if !self.records[&Split::Test].is_empty() {
            let best = checkpoint::params_file(&self.ctx.trial.best_adapter());
            if best.is_file() {
                checkpoint::load_params(&self.trainables, &best)?;
            }
            self.evaluate_and_emit(Split::Test, events)?;
        }
        events.emit(WorkerEvent::Finished {
            step: self.state.step,
            best_metric: self.state.best.map(|(v, _)| v),
        })?;
        Ok(Outcome {
            steps: self.state.step,
            best: self.state.best,
            last_train_loss: self.last_train_loss,
        })
    }
}

//! Evaluation of a model on a split: token-weighted loss and, with
//! generation, the task metrics. `palisweep eval` and the trainer share it.

use std::collections::BTreeMap;
use std::sync::Arc;

use tch::{Device, Kind};

use crate::data::annotations::Record;
use crate::data::loader::{EpochLoader, LoaderError, LoaderOptions};
use crate::metrics::task::{Task, TaskMetrics};
use crate::model::network::generate::generate;
use crate::model::network::paligemma::{ModelError, PaliGemma};
use crate::model::preprocess::processor::{Processor, ProcessorError};

#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    #[error(transparent)]
    Loader(#[from] LoaderError),
    #[error(transparent)]
    Processor(#[from] ProcessorError),
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error(transparent)]
    Tch(#[from] tch::TchError),
}

#[derive(Clone, Copy, Debug)]
pub struct EvalOptions {
    pub batch_size: usize,
    pub max_suffix_tokens: usize,
    /// Generate and score the task metrics.
    pub generate: bool,
    pub max_new_tokens: usize,
    pub device: Device,
    pub kind: Kind,
}

#[derive(Clone, Debug, PartialEq)]
pub struct EvalResult {
    /// Token-weighted mean cross-entropy over the split's suffix tokens.
    pub loss: f64,
    pub tokens: i64,
    pub examples: usize,
    pub truncated: usize,
    /// Task metrics by name (empty without generation).
    pub metrics: BTreeMap<String, f64>,
}

impl EvalResult {
    /// The loss and metrics under the names every consumer uses:
    /// `<split>/loss`, `<split>/field_f1`, … (`split` is `val` or `test`).
    pub fn named(&self, split: &str) -> BTreeMap<String, f64> {
        let mut named: BTreeMap<String, f64> = self
            .metrics
            .iter()
            .map(|(k, v)| (format!("{split}/{k}"), *v))
            .collect();
        named.insert(format!("{split}/loss"), self.loss);
        named
    }
}

/// Evaluates `records` in file order (no dropout, no autograd).
pub fn evaluate(
    model: &PaliGemma,
    processor: &Arc<Processor>,
    records: &Arc<Vec<Record>>,
    task: Task,
    options: &EvalOptions,
) -> Result<EvalResult, EvalError> {
    let loader_options = LoaderOptions {
        batch_size: options.batch_size,
        max_suffix_tokens: options.max_suffix_tokens,
        shuffle_seed: None,
        prefetch: 2,
    };
    let special = processor.special_tokens();
    let (eos, pad) = (i64::from(special.eos), i64::from(special.pad));
    let mut metrics = TaskMetrics::new(task);
    let (mut loss_sum, mut tokens, mut truncated) = (0.0_f64, 0_i64, 0_usize);
    for batch in EpochLoader::start(
        Arc::clone(records),
        Arc::clone(processor),
        loader_options,
        0,
        0,
    ) {
        let batch = batch?;
        truncated += batch.encoded.truncated;
        let input = batch.encoded.input.to(options.device, options.kind);
        let loss = tch::no_grad(|| model.loss(&input))?;
        loss_sum += loss.sum.f_double_value(&[])?;
        tokens += loss.tokens;
        if options.generate {
            let prefixes: Vec<String> = batch.records.iter().map(|r| r.prefix.clone()).collect();
            let prompts = processor
                .encode_prompts(&batch.images, &prefixes)?
                .to(options.device, options.kind);
            let outputs = generate(model, &prompts, options.max_new_tokens, &[eos], pad)?;
            for (ids, record) in outputs.iter().zip(&batch.records) {
                metrics.add(&processor.decode(ids), &record.suffix);
            }
        }
    }
    Ok(EvalResult {
        loss: if tokens > 0 {
            loss_sum / tokens as f64
        } else {
            f64::NAN
        },
        tokens,
        examples: records.len(),
        truncated,
        metrics: if options.generate {
            metrics.finish()
        } else {
            BTreeMap::new()
        },
    })
}

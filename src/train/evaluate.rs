//! Evaluation of a model on a split: token-weighted loss and, with
//! generation, the task metrics and each example's answer and score.
//! `palisweep eval` and the trainer share it.

use std::collections::BTreeMap;
use std::sync::Arc;

use tch::{Device, Kind};

use crate::data::annotations::Record;
use crate::data::loader::{EpochLoader, LoaderError, LoaderOptions};
use crate::metrics::per_example;
use crate::metrics::task::{Task, TaskMetrics};
use crate::model::network::generate::generate;
use crate::model::network::paligemma::{ModelError, PaliGemma};
use crate::model::preprocess::processor::{Processor, ProcessorError};
use crate::track::predictions::ExamplePrediction;

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
    /// Every example's answer and per-example score, in split order
    /// (empty without generation).
    pub predictions: Vec<ExamplePrediction>,
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
    let mut predictions = Vec::new();
    let metric = per_example::metric_name(task);
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
                let prediction = processor.decode(ids);
                metrics.add(&prediction, &record.suffix);
                predictions.push(ExamplePrediction {
                    // The loader keeps file order without a shuffle seed.
                    index: predictions.len(),
                    image: record.image.clone(),
                    prefix: record.prefix.clone(),
                    reference: record.suffix.clone(),
                    score: per_example::score(task, &prediction, &record.suffix),
                    metric: metric.to_owned(),
                    prediction,
                });
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
        predictions,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::annotations::Split;
    use crate::data::check::check_split;
    use crate::data::synthetic::{self, SyntheticTask};
    use crate::metrics::names;
    use crate::model::checkpoint::tiny;
    use crate::variant::{Resolution, Size};

    #[test]
    fn generation_keeps_each_detection_answer_with_its_box_f1_in_split_order() {
        let cache = tempfile::tempdir().unwrap();
        let data = synthetic::ensure(cache.path(), SyntheticTask::Detect).unwrap();
        let (records, task) = check_split(&data, Split::Valid, None).unwrap();
        assert_eq!(task, Task::Detect);
        let dir = tiny::ensure(cache.path(), Size::B3, Resolution::R224).unwrap();
        let model = PaliGemma::load(&dir, Device::Cpu, Kind::Float).unwrap();
        let processor = Arc::new(Processor::from_dir(&dir).unwrap());
        let records = Arc::new(records);
        // Batches of 5 over 12 examples: the index runs on across batches.
        let mut options = EvalOptions {
            batch_size: 5,
            max_suffix_tokens: 64,
            generate: true,
            max_new_tokens: 4,
            device: Device::Cpu,
            kind: Kind::Float,
        };
        let result = evaluate(&model, &processor, &records, task, &options).unwrap();
        assert_eq!(records.len(), 12);
        assert_eq!(result.predictions.len(), records.len());
        for (i, (p, record)) in result.predictions.iter().zip(records.iter()).enumerate() {
            assert_eq!(p.index, i);
            assert_eq!(p.image, record.image);
            assert_eq!(p.prefix, record.prefix);
            assert_eq!(p.reference, record.suffix);
            assert_eq!(p.metric, "box_f1");
            assert_eq!(
                p.score,
                per_example::score(Task::Detect, &p.prediction, &record.suffix)
            );
            assert!(p.score.is_some_and(|s| (0.0..=1.0).contains(&s)), "{p:?}");
        }
        let exact = result
            .predictions
            .iter()
            .filter(|p| p.prediction.trim() == p.reference.trim())
            .count() as f64
            / 12.0;
        assert!((result.metrics[names::EXACT_MATCH] - exact).abs() < 1e-12);
        options.generate = false;
        let loss_only = evaluate(&model, &processor, &records, task, &options).unwrap();
        assert!(loss_only.predictions.is_empty() && loss_only.metrics.is_empty());
        assert!((loss_only.loss - result.loss).abs() < 1e-9);
    }
}

//! Batches for training and evaluation, prepared off the training thread:
//! a worker thread decodes, resizes and tokenises the next batches while the
//! current one trains (a bounded channel is the prefetch queue).
//!
//! The order of an epoch is a seeded shuffle derived from (seed, epoch)
//! alone — tch cannot save its RNG state, so nothing random may depend on
//! what ran before. A resumed run skips the batches it already trained
//! without decoding them.

use std::path::PathBuf;
use std::sync::Arc;

use image::RgbImage;
use std::sync::mpsc::{Receiver, sync_channel};
use std::thread::JoinHandle;

use crate::model::preprocess::image::{ImageError, load_image};
use crate::model::preprocess::processor::{Encoded, Example, Processor, ProcessorError};
use crate::rng::SplitMix64;

use super::annotations::Record;

#[derive(Debug, thiserror::Error)]
pub enum LoaderError {
    #[error(transparent)]
    Image(#[from] ImageError),
    #[error(transparent)]
    Processor(#[from] ProcessorError),
    /// The processor's `PrefixTooLong`, at the annotation line it came from.
    #[error(
        "{}:{line}: `prefix`: the prefix is {tokens} tokens long, more than the limit of {max}: \
         {image_tokens} image tokens (the checkpoint's image_seq_length) + `<bos>` + the prompt \
         (data.max_prefix_tokens = {}) + the closing \"\\n\"\n  \
         help: shorten this line's prefix, or raise data.max_prefix_tokens",
        file.display(),
        max.saturating_sub(image_tokens + 2)
    )]
    PrefixTooLong {
        file: PathBuf,
        line: usize,
        tokens: usize,
        max: usize,
        image_tokens: usize,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LoaderOptions {
    pub batch_size: usize,
    pub max_suffix_tokens: usize,
    /// Shuffle with this seed; `None` keeps file order (evaluation).
    pub shuffle_seed: Option<u64>,
    /// Batches prepared ahead of the consumer.
    pub prefetch: usize,
}

/// One prepared batch.
#[derive(Debug)]
pub struct Batch {
    /// Position of the batch within its epoch.
    pub index: usize,
    pub encoded: Encoded,
    /// The records in the batch, in batch order (for references in metrics).
    pub records: Vec<Record>,
    /// Their decoded images (generation prompts reuse them).
    pub images: Vec<RgbImage>,
}

/// The record order of one epoch: a Fisher–Yates shuffle driven by a stream
/// seeded from (seed, epoch), or file order without a seed.
pub fn epoch_order(len: usize, seed: Option<u64>, epoch: u64) -> Vec<usize> {
    let mut order: Vec<usize> = (0..len).collect();
    if let Some(seed) = seed {
        let mut rng =
            SplitMix64::new(seed ^ epoch.wrapping_add(1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
        for i in (1..len).rev() {
            order.swap(i, rng.below(i + 1));
        }
    }
    order
}

/// Number of batches in an epoch of `len` records (the last may be short).
pub fn batches_per_epoch(len: usize, batch_size: usize) -> usize {
    len.div_ceil(batch_size.max(1))
}

/// An epoch's batches, prepared by a background thread.
pub struct EpochLoader {
    receiver: Receiver<Result<Batch, LoaderError>>,
    worker: Option<JoinHandle<()>>,
}

impl EpochLoader {
    /// Starts preparing `epoch`, skipping its first `skip` batches.
    pub fn start(
        records: Arc<Vec<Record>>,
        processor: Arc<Processor>,
        options: LoaderOptions,
        epoch: u64,
        skip: usize,
    ) -> Self {
        let (sender, receiver) = sync_channel(options.prefetch.max(1));
        let worker = std::thread::spawn(move || {
            let order = epoch_order(records.len(), options.shuffle_seed, epoch);
            for (index, chunk) in order
                .chunks(options.batch_size.max(1))
                .enumerate()
                .skip(skip)
            {
                let batch = prepare(
                    &records,
                    &processor,
                    chunk,
                    index,
                    options.max_suffix_tokens,
                );
                let failed = batch.is_err();
                // The consumer hung up (stopped early): nothing left to do.
                if sender.send(batch).is_err() || failed {
                    return;
                }
            }
        });
        EpochLoader {
            receiver,
            worker: Some(worker),
        }
    }
}

fn prepare(
    records: &[Record],
    processor: &Processor,
    chunk: &[usize],
    index: usize,
    max_suffix_tokens: usize,
) -> Result<Batch, LoaderError> {
    let picked: Vec<Record> = chunk.iter().map(|&i| records[i].clone()).collect();
    let examples = picked
        .iter()
        .map(|r| {
            Ok(Example {
                image: load_image(&r.image)?,
                prefix: r.prefix.clone(),
                suffix: r.suffix.clone(),
            })
        })
        .collect::<Result<Vec<_>, LoaderError>>()?;
    let encoded = processor
        .encode_training(&examples, max_suffix_tokens)
        .map_err(|error| match error {
            ProcessorError::PrefixTooLong { row, tokens, max } => LoaderError::PrefixTooLong {
                file: picked[row].file.clone(),
                line: picked[row].line,
                tokens,
                max,
                image_tokens: processor.image_seq_length(),
            },
            other => LoaderError::Processor(other),
        })?;
    Ok(Batch {
        index,
        encoded,
        records: picked,
        images: examples.into_iter().map(|e| e.image).collect(),
    })
}

impl Iterator for EpochLoader {
    type Item = Result<Batch, LoaderError>;

    fn next(&mut self) -> Option<Self::Item> {
        self.receiver.recv().ok()
    }
}

impl Drop for EpochLoader {
    fn drop(&mut self) {
        // Unblock a worker waiting on a full queue, then wait for it.
        let (_, closed) = sync_channel::<Result<Batch, LoaderError>>(0);
        drop(std::mem::replace(&mut self.receiver, closed));
        if let Some(worker) = self.worker.take() {
            let _ = worker.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::annotations::{Split, read_split};
    use crate::data::synthetic::{SyntheticOptions, SyntheticTask, write};
    use crate::variant::{Resolution, Size};

    #[test]
    fn the_order_depends_only_on_seed_and_epoch() {
        assert_eq!(epoch_order(10, Some(1), 0), epoch_order(10, Some(1), 0));
        assert_ne!(epoch_order(10, Some(1), 0), epoch_order(10, Some(1), 1));
        assert_ne!(epoch_order(10, Some(1), 0), epoch_order(10, Some(2), 0));
        assert_eq!(epoch_order(4, None, 3), vec![0, 1, 2, 3]);
        let mut sorted = epoch_order(50, Some(9), 2);
        sorted.sort_unstable();
        assert_eq!(sorted, (0..50).collect::<Vec<_>>());
    }

    #[test]
    fn batches_cover_the_epoch_and_resume_skips_the_done_ones() {
        let data = tempfile::tempdir().unwrap();
        let options = SyntheticOptions {
            train: 7,
            valid: 0,
            test: 0,
            image_size: 32,
            ..SyntheticOptions::standard(SyntheticTask::Json)
        };
        write(data.path(), &options).unwrap();
        let ckpt = tempfile::tempdir().unwrap();
        crate::model::checkpoint::tiny::write(ckpt.path(), Size::B3, Resolution::R224, 0).unwrap();
        let processor = Arc::new(Processor::from_dir(ckpt.path()).unwrap());
        let records = Arc::new(read_split(data.path(), Split::Train).unwrap());
        let loader_options = LoaderOptions {
            batch_size: 3,
            max_suffix_tokens: 64,
            shuffle_seed: Some(5),
            prefetch: 2,
        };
        let full: Vec<Batch> =
            EpochLoader::start(records.clone(), processor.clone(), loader_options, 1, 0)
                .collect::<Result<_, _>>()
                .unwrap();
        assert_eq!(full.len(), batches_per_epoch(7, 3));
        assert_eq!(full.iter().map(|b| b.records.len()).sum::<usize>(), 7);
        let resumed: Vec<Batch> = EpochLoader::start(records, processor, loader_options, 1, 1)
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(resumed.len(), full.len() - 1);
        assert_eq!(resumed[0].index, 1);
        assert_eq!(resumed[0].records, full[1].records);
        assert!(
            resumed[0]
                .encoded
                .input
                .input_ids
                .equal(&full[1].encoded.input.input_ids)
        );
    }

    #[test]
    fn dropping_a_loader_early_does_not_hang() {
        let data = tempfile::tempdir().unwrap();
        write(
            data.path(),
            &SyntheticOptions {
                train: 12,
                valid: 0,
                test: 0,
                image_size: 32,
                ..SyntheticOptions::standard(SyntheticTask::Json)
            },
        )
        .unwrap();
        let ckpt = tempfile::tempdir().unwrap();
        crate::model::checkpoint::tiny::write(ckpt.path(), Size::B3, Resolution::R224, 0).unwrap();
        let processor = Arc::new(Processor::from_dir(ckpt.path()).unwrap());
        let records = Arc::new(read_split(data.path(), Split::Train).unwrap());
        let options = LoaderOptions {
            batch_size: 1,
            max_suffix_tokens: 64,
            shuffle_seed: None,
            prefetch: 1,
        };
        let mut loader = EpochLoader::start(records, processor, options, 0, 0);
        assert!(loader.next().is_some());
        drop(loader);
    }
}

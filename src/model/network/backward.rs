//! The training pass: loss and backward of one micro-batch, plain or with
//! gradient checkpointing.
//!
//! libtorch has no checkpoint API, so checkpointing is built here: the
//! forward runs without autograd and keeps only each layer's input; the
//! backward then walks the layers in reverse, recomputes each from its saved
//! input with autograd on, and back-propagates the upstream gradient `g`
//! through it as the gradient of `(output · g).sum()`, which also
//! accumulates the layer's parameter gradients. Memory is then one layer's
//! activations plus one `[B, L, hidden]` tensor per layer, instead of every
//! layer's internals.
//!
//! `LoRA` dropout draws from torch's global generator, so every layer is
//! reseeded from (step seed, tower, layer) before it runs, in both paths:
//! the recomputation then draws the same masks as the forward, and the two
//! paths give the same gradients.

use tch::{TchError, Tensor};

use crate::model::network::paligemma::{LossOutput, ModelError, PaliGemma};
use crate::model::preprocess::input::ModelInput;
use crate::rng::SplitMix64;

/// How [`loss_backward`] runs.
#[derive(Clone, Copy, Debug)]
pub struct BackwardOptions {
    /// As in torch's `cross_entropy` (0 = plain).
    pub label_smoothing: f64,
    /// The backward runs on `mean loss · grad_scale` (`1/accumulation`).
    pub grad_scale: f64,
    /// Recompute each layer in the backward instead of keeping its
    /// activations.
    pub checkpointing: bool,
    /// The micro-batch's seed; each layer's dropout seed derives from it.
    pub seed: i64,
}

#[derive(Clone, Copy)]
enum Tower {
    Vision = 1,
    Decoder = 2,
}

/// Seeds torch's generator for one layer of one tower.
fn reseed(seed: i64, tower: Tower, layer: usize) {
    let mixed = (seed as u64) ^ ((tower as u64) << 56) ^ (layer as u64);
    tch::manual_seed((SplitMix64::new(mixed).next_u64() >> 1).cast_signed());
}

/// Computes the micro-batch loss, runs its backward (gradients accumulate
/// into the trainable tensors) and returns the loss, detached. A batch
/// without supervised tokens contributes no gradient.
pub fn loss_backward(
    model: &PaliGemma,
    input: &ModelInput,
    options: &BackwardOptions,
) -> Result<LossOutput, ModelError> {
    if options.checkpointing {
        checkpointed(model, input, options)
    } else {
        plain(model, input, options)
    }
}

/// Runs the backward of `loss · grad_scale / tokens` when anything trains.
fn backward_mean(loss: &LossOutput, grad_scale: f64) -> Result<(), TchError> {
    if loss.tokens > 0 && loss.sum.requires_grad() {
        loss.sum
            .f_mul_scalar(grad_scale / loss.tokens as f64)?
            .f_backward()?;
    }
    Ok(())
}

/// Back-propagates `upstream` through `output` (the gradient of
/// `(output · upstream).sum()`), when anything upstream trains.
fn backward_through(output: &Tensor, upstream: &Tensor) -> Result<(), TchError> {
    if output.requires_grad() {
        output.f_mul(upstream)?.f_sum(None)?.f_backward()?;
    }
    Ok(())
}

/// A leaf copy of `x` that collects its own gradient.
fn leaf(x: &Tensor) -> Result<Tensor, TchError> {
    Ok(x.f_detach()?.set_requires_grad(true))
}

fn detached(loss: &LossOutput) -> Result<LossOutput, TchError> {
    Ok(LossOutput {
        sum: loss.sum.f_detach()?,
        tokens: loss.tokens,
    })
}

/// The vision tower's normed output, layer by layer (no autograd when the
/// tower is frozen).
fn tower_output(model: &PaliGemma, pixels: &Tensor, seed: i64) -> Result<Tensor, TchError> {
    let tower = model.vision_tower();
    let run = || -> Result<Tensor, TchError> {
        let mut x = tower.embed(pixels)?;
        for i in 0..tower.num_layers() {
            reseed(seed, Tower::Vision, i);
            x = tower.layer(i, &x)?;
        }
        tower.post_norm(&x)
    };
    if model.vision_frozen() {
        tch::no_grad(run)
    } else {
        run()
    }
}

fn plain(
    model: &PaliGemma,
    input: &ModelInput,
    options: &BackwardOptions,
) -> Result<LossOutput, ModelError> {
    let supervised = model.supervised(input)?;
    let features = model.project(&tower_output(model, &input.pixel_values, options.seed)?)?;
    let mut x = model.merge_embeddings(input, &features)?;
    let decoder = model.language_model();
    let pass = model.decoder_pass(input, supervised.window)?;
    for i in 0..decoder.num_layers() {
        reseed(options.seed, Tower::Decoder, i);
        x = decoder.layer(i, &x, &pass)?;
    }
    let hidden = decoder.final_norm(&x)?;
    let loss = LossOutput {
        sum: model.head_loss(&hidden, &supervised, options.label_smoothing)?,
        tokens: supervised.tokens,
    };
    backward_mean(&loss, options.grad_scale)?;
    Ok(detached(&loss)?)
}

/// What the checkpointed forward keeps of the vision tower.
enum VisionSaved {
    /// Frozen: its normed output (computed without autograd).
    Frozen(Tensor),
    /// Trained: each encoder layer's input and the last layer's output.
    Layers { inputs: Vec<Tensor>, last: Tensor },
}

fn checkpointed(
    model: &PaliGemma,
    input: &ModelInput,
    options: &BackwardOptions,
) -> Result<LossOutput, ModelError> {
    let seed = options.seed;
    let supervised = model.supervised(input)?;
    let tower = model.vision_tower();
    let decoder = model.language_model();
    let pass = model.decoder_pass(input, supervised.window)?;

    // Forward without autograd, keeping layer inputs only.
    let vision = if model.vision_frozen() {
        VisionSaved::Frozen(tower_output(model, &input.pixel_values, seed)?)
    } else {
        tch::no_grad(|| -> Result<VisionSaved, TchError> {
            let mut x = tower.embed(&input.pixel_values)?;
            let mut inputs = Vec::with_capacity(tower.num_layers());
            for i in 0..tower.num_layers() {
                reseed(seed, Tower::Vision, i);
                let next = tower.layer(i, &x)?;
                inputs.push(x);
                x = next;
            }
            Ok(VisionSaved::Layers { inputs, last: x })
        })?
    };
    let (mut saved, last) = tch::no_grad(|| -> Result<(Vec<Tensor>, Tensor), ModelError> {
        let features = match &vision {
            VisionSaved::Frozen(hidden) => model.project(hidden)?,
            VisionSaved::Layers { last, .. } => model.project(&tower.post_norm(last)?)?,
        };
        let mut x = model.merge_embeddings(input, &features)?;
        let mut inputs = Vec::with_capacity(decoder.num_layers());
        for i in 0..decoder.num_layers() {
            reseed(seed, Tower::Decoder, i);
            let next = decoder.layer(i, &x, &pass)?;
            inputs.push(x);
            x = next;
        }
        Ok((inputs, x))
    })?;

    // The head with autograd, then the decoder layers in reverse.
    let last = leaf(&last)?;
    let hidden = decoder.final_norm(&last)?;
    let loss = LossOutput {
        sum: model.head_loss(&hidden, &supervised, options.label_smoothing)?,
        tokens: supervised.tokens,
    };
    backward_mean(&loss, options.grad_scale)?;
    drop(hidden);
    let mut upstream = last.grad();
    if !upstream.defined() {
        // Nothing trains: no gradient reached the decoder.
        return Ok(detached(&loss)?);
    }
    for i in (0..decoder.num_layers()).rev() {
        let x = leaf(&saved.pop().expect("one saved input per layer"))?;
        reseed(seed, Tower::Decoder, i);
        backward_through(&decoder.layer(i, &x, &pass)?, &upstream)?;
        upstream = x.grad();
    }

    // The embeddings (and the projector, and a trained tower) last.
    match vision {
        VisionSaved::Frozen(hidden) => {
            let embeds = model.merge_embeddings(input, &model.project(&hidden)?)?;
            backward_through(&embeds, &upstream)?;
        }
        VisionSaved::Layers { mut inputs, last } => {
            let last = leaf(&last)?;
            let features = model.project(&tower.post_norm(&last)?)?;
            backward_through(&model.merge_embeddings(input, &features)?, &upstream)?;
            let mut upstream = last.grad();
            for i in (0..tower.num_layers()).rev() {
                let x = leaf(&inputs.pop().expect("one saved input per layer"))?;
                reseed(seed, Tower::Vision, i);
                backward_through(&tower.layer(i, &x)?, &upstream)?;
                upstream = x.grad();
            }
            backward_through(&tower.embed(&input.pixel_values)?, &upstream)?;
        }
    }
    Ok(detached(&loss)?)
}

#[cfg(test)]
mod tests {
    use tch::{Device, Kind, Tensor};

    use super::*;
    use crate::model::adapt::lora::LoraConfig;
    use crate::model::adapt::plan::QuantConfig;
    use crate::model::adapt::plan::{AdaptPlan, PROJECTOR_MODULE, Trainables};
    use crate::model::network::attention::AttentionMode;
    use crate::model::network::paligemma::test_util::{golden_dir, golden_train_batch};

    fn lora(dropout: f64) -> AdaptPlan {
        AdaptPlan::lora(LoraConfig {
            dropout,
            ..LoraConfig::new(8, 16.0)
        })
    }

    /// Each trainable's gradient after one pass (then cleared), and the loss.
    fn gradients(
        model: &PaliGemma,
        trainables: &Trainables,
        checkpointing: bool,
    ) -> (f64, Vec<(String, Tensor)>) {
        let options = BackwardOptions {
            label_smoothing: 0.1,
            grad_scale: 0.5,
            checkpointing,
            seed: 11,
        };
        let loss = loss_backward(model, &golden_train_batch(), &options).unwrap();
        assert!(!loss.sum.requires_grad());
        let grads = take_gradients(trainables);
        (loss.mean().unwrap().double_value(&[]), grads)
    }

    /// Each trainable's gradient, by name; the gradients are then cleared.
    fn take_gradients(trainables: &Trainables) -> Vec<(String, Tensor)> {
        trainables
            .params()
            .iter()
            .map(|p| {
                let mut t = p.tensor.shallow_clone();
                let grad = t.grad().copy();
                t.zero_grad();
                (p.name.clone(), grad)
            })
            .collect()
    }

    /// Non-zero B matrices, so that the branch (and its dropout) changes
    /// the output and gradients reach the A matrices too.
    fn perturb_b(trainables: &Trainables) {
        tch::manual_seed(3);
        tch::no_grad(|| {
            for vars in trainables.lora().values() {
                let noise = Tensor::randn(vars.b.size(), (Kind::Float, Device::Cpu)) * 0.02;
                vars.b.shallow_clone().copy_(&noise);
            }
        });
    }

    fn assert_same_gradients(plan: &AdaptPlan) {
        let base = golden_dir().join("checkpoints/f32");
        let (model, trainables) =
            PaliGemma::load_adapted(&base, Device::Cpu, Kind::Float, plan, 7).unwrap();
        perturb_b(&trainables);
        model.set_training(true);
        let (reference_loss, reference) = gradients(&model, &trainables, false);
        let (loss, checkpointed) = gradients(&model, &trainables, true);
        assert!(reference_loss.is_finite());
        // 1e-5: MKL picks its thread count per call under load (its dynamic
        // threading), which moves a sum's last bits: measured 2e-6 on a
        // busy 2-core VM, 0 on a quiet one.
        assert!(
            (reference_loss - loss).abs() <= 1e-5 * reference_loss.abs(),
            "{reference_loss} vs {loss}"
        );
        assert!(!reference.is_empty());
        for ((name, a), (_, b)) in reference.iter().zip(&checkpointed) {
            assert!(a.defined() && b.defined(), "{name} has no gradient");
            let scale = a.abs().max().double_value(&[]);
            assert!(scale > 0.0, "{name}: zero gradient");
            let diff = (a - b).abs().max().double_value(&[]);
            assert!(
                diff <= 1e-5 * scale,
                "{name}: differs by {diff} (scale {scale})"
            );
        }
    }

    /// Dropout draws from torch's process-wide generator, which tests on
    /// other threads reseed: tests that depend on its draws run alone.
    fn alone(test: &str) -> bool {
        crate::test_support::alone(&format!("model::network::backward::tests::{test}"))
    }

    #[test]
    fn checkpointing_gives_the_plain_gradients_with_a_trained_tower_and_dropout() {
        if alone("checkpointing_gives_the_plain_gradients_with_a_trained_tower_and_dropout") {
            assert_same_gradients(&lora(0.1));
        }
    }

    #[test]
    fn checkpointing_gives_the_plain_gradients_with_a_frozen_tower_and_dropout() {
        if alone("checkpointing_gives_the_plain_gradients_with_a_frozen_tower_and_dropout") {
            assert_same_gradients(&AdaptPlan {
                freeze_vision: true,
                ..lora(0.1)
            });
        }
    }

    #[test]
    fn checkpointing_gives_the_plain_gradients_with_a_frozen_tower_and_projector() {
        assert_same_gradients(&AdaptPlan {
            freeze_vision: true,
            modules_to_save: vec![PROJECTOR_MODULE.into()],
            ..lora(0.0)
        });
    }

    #[test]
    fn checkpointing_gives_the_plain_gradients_in_full_fine_tuning() {
        assert_same_gradients(&AdaptPlan::full());
    }

    /// The last layer computed over the supervised window only gives the
    /// gradients of the whole computation: the loss of every position's
    /// logits (`PaliGemma::forward`, no window), back-propagated.
    #[test]
    fn the_query_window_keeps_the_gradients_of_the_full_logits() {
        let base = golden_dir().join("checkpoints/f32");
        let (model, trainables) =
            PaliGemma::load_adapted(&base, Device::Cpu, Kind::Float, &lora(0.0), 7).unwrap();
        perturb_b(&trainables);
        let input = golden_train_batch();
        let supervised = model.supervised(&input).unwrap();
        let (_, len) = input.input_ids.size2().unwrap();
        // The window leaves positions out (the image tokens at least).
        let window = supervised.window;
        assert!(window.start > 0 && window.len < len, "{window:?} of {len}");
        let options = BackwardOptions {
            label_smoothing: 0.0,
            grad_scale: 1.0,
            checkpointing: false,
            seed: 11,
        };
        let mut runs = Vec::new();
        for windowed in [true, false] {
            let loss = if windowed {
                loss_backward(&model, &input, &options)
                    .unwrap()
                    .mean()
                    .unwrap()
            } else {
                let logits = model.forward(&input).unwrap();
                let (_, l, v) = logits.size3().unwrap();
                let targets = input.labels.as_ref().unwrap().narrow(1, 1, l - 1);
                let loss = logits
                    .narrow(1, 0, l - 1)
                    .reshape([-1, v])
                    .to_kind(Kind::Float)
                    .cross_entropy_loss::<Tensor>(
                        &targets.reshape([-1]),
                        None,
                        tch::Reduction::Mean,
                        -100,
                        0.0,
                    );
                loss.backward();
                loss.detach()
            };
            runs.push((loss.double_value(&[]), take_gradients(&trainables)));
        }
        let ((windowed_loss, windowed), (full_loss, full)) = (&runs[0], &runs[1]);
        assert!((windowed_loss - full_loss).abs() <= 1e-5 * full_loss.abs());
        for ((_, w), (_, f)) in windowed.iter().zip(full) {
            let scale = f.abs().max().double_value(&[]);
            assert!(scale > 0.0);
            let diff = (w - f).abs().max().double_value(&[]);
            assert!(diff <= 1e-4 * scale, "differs by {diff} (scale {scale})");
        }
    }

    /// The memory-efficient attention (chunked decoder, chunked `SigLIP` on
    /// the CPU) gives the eager path's loss and gradients, plain and with
    /// checkpointing, `LoRA` and QLoRA: at most 1e-4 relative in f32.
    #[test]
    fn memory_efficient_attention_gives_the_eager_gradients() {
        let base = golden_dir().join("checkpoints/f32");
        let qlora = AdaptPlan::qlora(LoraConfig::new(8, 16.0), QuantConfig::default());
        for plan in [lora(0.0), qlora] {
            let (mut model, trainables) =
                PaliGemma::load_adapted(&base, Device::Cpu, Kind::Float, &plan, 7).unwrap();
            perturb_b(&trainables);
            for checkpointing in [false, true] {
                model.set_attention(AttentionMode::Eager);
                let (eager_loss, eager) = gradients(&model, &trainables, checkpointing);
                // The golden checkpoint's scores are small enough to keep:
                // chunk them anyway, so the kernel is what is tested.
                model.set_attention(AttentionMode::AlwaysChunked);
                let (loss, chunked) = gradients(&model, &trainables, checkpointing);
                assert!((eager_loss - loss).abs() <= 1e-4 * eager_loss.abs());
                for ((name, e), (_, c)) in eager.iter().zip(&chunked) {
                    let scale = e.abs().max().double_value(&[]);
                    assert!(scale > 0.0, "{name}: zero gradient");
                    let diff = (e - c).abs().max().double_value(&[]);
                    assert!(diff <= 1e-4 * scale, "{name}: {diff:e} (scale {scale:e})");
                }
            }
        }
    }

    #[test]
    fn dropout_is_reproducible_per_seed() {
        if !alone("dropout_is_reproducible_per_seed") {
            return;
        }
        let base = golden_dir().join("checkpoints/f32");
        let (model, trainables) =
            PaliGemma::load_adapted(&base, Device::Cpu, Kind::Float, &lora(0.5), 7).unwrap();
        perturb_b(&trainables);
        model.set_training(false);
        let (without_dropout, _) = gradients(&model, &trainables, false);
        model.set_training(true);
        let (first, _) = gradients(&model, &trainables, false);
        let (again, _) = gradients(&model, &trainables, false);
        // Dropout acts, and draws the same masks for the same seed.
        assert_ne!(first.to_bits(), without_dropout.to_bits());
        assert_eq!(first.to_bits(), again.to_bits());
    }
}

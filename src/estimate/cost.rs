//! Relative training cost of a trial, proportional to its training FLOPs
//! and normalised to one example of `PaliGemma` 2 3B@224 trained in full.
//!
//! A matmul with `P` weights costs `2·P` FLOPs per token forward; backward
//! costs `2·P` for the input gradient and `2·P` for the weight gradient. So
//! per token: trained weights `6·P`, frozen weights that gradients flow
//! through `4·P`, weights run without autograd `2·P`. Attention adds
//! `4·L²·heads·head_dim` forward FLOPs per layer and sequence (`QKᵀ` and
//! `PV`), tripled when gradients flow through it. Gradient checkpointing
//! recomputes the forward of the checkpointed towers once more.

use std::sync::LazyLock;

use crate::allocator::Allocator;
use crate::model::config::{PaliGemmaConfig, Tower};
use crate::spec::schema::{Attention, Method};
use crate::variant::{Resolution, Size};

use super::memory::{DeviceKind, TrialShape};

/// Text tokens of the normalisation example (`PaliGemma`'s 224 pretraining
/// length, docs/model-reference.md §1), all supervised.
pub const REFERENCE_TEXT_TOKENS: u32 = 128;

/// FLOPs per weight per token.
const FORWARD: f64 = 2.0;
const FROZEN_WITH_GRAD: f64 = 4.0;
const TRAINED: f64 = 6.0;

/// How a part of the model takes part in one training step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Role {
    /// Forward only, no autograd.
    Forward,
    /// Frozen, but gradients flow through it to something trained upstream.
    FrozenWithGrad,
    Trained,
}

impl Role {
    fn flops_per_weight(self) -> f64 {
        match self {
            Role::Forward => FORWARD,
            Role::FrozenWithGrad => FROZEN_WITH_GRAD,
            Role::Trained => TRAINED,
        }
    }

    /// Forward + backward multiple of the forward attention FLOPs.
    fn attention_passes(self) -> f64 {
        match self {
            Role::Forward => 1.0,
            Role::FrozenWithGrad | Role::Trained => 3.0,
        }
    }
}

/// Training FLOPs of one example: forward + backward over every part, plus
/// one recomputed forward of the decoder (and a trained vision tower) under
/// gradient checkpointing, and the scores memory-efficient attention
/// recomputes in its backward. Independent of batch size and dtype. The last
/// decoder layer's queries cover the supervised positions only, as the
/// model code runs it (`model::network::gemma2::QueryWindow`).
pub fn per_example_flops(shape: &TrialShape) -> f64 {
    flops(shape, true)
}

/// [`per_example_flops`], with the last decoder layer over the supervised
/// window (`windowed`) or over every position.
fn flops(shape: &TrialShape, windowed: bool) -> f64 {
    let config = shape.config;
    let full = shape.method == Method::Full;
    let trains_anything = shape.trainable_params() > 0;
    let image_tokens = f64::from(config.num_image_tokens());
    let seq = shape.sequence_len() as f64;

    let vision = if shape.trains_vision() {
        if full {
            Role::Trained
        } else {
            Role::FrozenWithGrad
        }
    } else {
        Role::Forward
    };
    let projector = if shape.trains_projector() {
        Role::Trained
    } else if vision == Role::Forward {
        Role::Forward
    } else {
        Role::FrozenWithGrad
    };
    let language = match (full, trains_anything) {
        (true, _) => Role::Trained,
        (false, true) => Role::FrozenWithGrad,
        (false, false) => Role::Forward,
    };

    // Checkpointed towers (those that keep activations) run forward twice.
    let is_recomputed = |role: Role| shape.gradient_checkpointing && role != Role::Forward;

    let last_layer = format!(
        "language_model.model.layers.{}.",
        config.text_config.num_hidden_layers.saturating_sub(1)
    );
    let mut flops = 0.0;
    for module in config.linear_modules() {
        let weights = module.weight_params() as f64;
        // The tied head runs only at supervised positions (the loss needs
        // nothing else) and is outside the checkpointed layers.
        let (role, tokens, twice) = match module.tower {
            Tower::Vision => (vision, image_tokens, is_recomputed(vision)),
            Tower::Projector => (projector, image_tokens, false),
            Tower::Language if module.tied => (language, f64::from(shape.suffix_tokens), false),
            Tower::Language if windowed && reads_query_window(&last_layer, &module.name) => (
                language,
                f64::from(shape.suffix_tokens),
                is_recomputed(language),
            ),
            Tower::Language => (language, seq, is_recomputed(language)),
        };
        let extra = if twice { FORWARD } else { 0.0 };
        flops += (role.flops_per_weight() + extra) * weights * tokens;
        if shape.has_adapter(&module) {
            flops += (TRAINED + extra) * module.lora_params(shape.lora_r) as f64 * tokens;
        }
    }

    // Patch embedding: a conv with one weight per (channel, pixel, output);
    // its input is pixels, so backward only computes the weight gradient.
    let v = &config.vision_config;
    let patch_weights = f64::from(v.num_channels)
        * f64::from(v.patch_size)
        * f64::from(v.patch_size)
        * f64::from(v.hidden_size);
    let conv = if vision == Role::Trained {
        TRAINED - 2.0
    } else {
        FORWARD
    };
    flops += conv * patch_weights * image_tokens;

    // Memory-efficient attention computes the scores once more in the
    // backward (q·kᵀ: half a forward), as flash attention does.
    let recomputed_scores = match shape.attention {
        Attention::Eager => 0.0,
        Attention::MemoryEfficient => 0.5,
    };
    let attention = |role: Role, len: f64, width: f64, layers: f64| {
        let mut passes = role.attention_passes() + if is_recomputed(role) { 1.0 } else { 0.0 };
        if role != Role::Forward {
            passes += recomputed_scores;
        }
        passes * 4.0 * len * len * width * layers
    };
    let t = &config.text_config;
    flops += attention(
        vision,
        image_tokens,
        f64::from(v.hidden_size),
        f64::from(v.num_hidden_layers),
    );
    // The last decoder layer's queries cover the supervised window only.
    let window = if windowed {
        f64::from(shape.suffix_tokens) / seq
    } else {
        1.0
    };
    flops += attention(
        language,
        seq,
        f64::from(t.num_attention_heads) * f64::from(t.head_dim),
        f64::from(t.num_hidden_layers.saturating_sub(1)) + window,
    );
    flops
}

/// Whether `module` runs on the supervised window only: every linear of the
/// last decoder layer (`last_layer`, its name prefix) but the key and value
/// projections, which read every position (`model::network::gemma2::QueryWindow`).
fn reads_query_window(last_layer: &str, module: &str) -> bool {
    module
        .strip_prefix(last_layer)
        .is_some_and(|rest| !rest.ends_with("k_proj") && !rest.ends_with("v_proj"))
}

/// FLOPs of the normalisation example: 3B@224, 256 image tokens +
/// [`REFERENCE_TEXT_TOKENS`] supervised text tokens, full training.
pub fn reference_flops() -> f64 {
    static REFERENCE: LazyLock<f64> = LazyLock::new(|| {
        let config = PaliGemmaConfig::published(Size::B3, Resolution::R224);
        per_example_flops(&full_training_shape(&config, REFERENCE_TEXT_TOKENS))
    });
    *REFERENCE
}

/// Cost of training on `examples` examples, in units of one 3B@224 example
/// trained in full ([`reference_flops`]).
pub fn relative_cost(shape: &TrialShape, examples: u64) -> f64 {
    per_example_flops(shape) * examples as f64 / reference_flops()
}

/// Full training of every part with `text_tokens` supervised tokens.
fn full_training_shape(config: &PaliGemmaConfig, text_tokens: u32) -> TrialShape<'_> {
    TrialShape {
        config,
        method: Method::Full,
        batch_size: 1,
        prefix_tokens: 0,
        suffix_tokens: text_tokens,
        dtype_bytes: 2,
        device: DeviceKind::Cuda,
        allocator: Allocator::Glibc,
        freeze_vision: false,
        train_projector: true,
        lora_r: 0,
        lora_targets: &[],
        gradient_checkpointing: false,
        double_quant: false,
        quant_block_size: 64,
        // The paper's runs, and the unit of cost: every score kept.
        attention: Attention::Eager,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Paper Table 1 (docs/model-reference.md §10): relative training cost per example,
    /// 224/448/896, for 3B/10B/28B.
    const TABLE_1: [(Size, [f64; 3]); 3] = [
        (Size::B3, [1.0, 4.6, 23.5]),
        (Size::B10, [3.7, 18.3, 67.7]),
        (Size::B28, [18.9, 63.5, 155.6]),
    ];

    /// Pretraining text length: 128 at 224, 512 at 448/896 (docs/model-reference.md §1).
    fn pretraining_text(resolution: Resolution) -> u32 {
        if resolution == Resolution::R224 {
            128
        } else {
            512
        }
    }

    fn default_targets() -> Vec<String> {
        crate::model::adapt::lora::DEFAULT_TARGETS
            .map(String::from)
            .to_vec()
    }

    #[test]
    fn reference_example_costs_one() {
        let config = PaliGemmaConfig::published(Size::B3, Resolution::R224);
        let shape = full_training_shape(&config, REFERENCE_TEXT_TOKENS);
        assert!((relative_cost(&shape, 1) - 1.0).abs() < 1e-12);
        assert!((relative_cost(&shape, 1000) - 1000.0).abs() < 1e-9);
        // By hand: 6 × (LM linears × 384 tokens, but the last layer's
        // linears other than k/v (73,138,176 weights) × the 128 supervised
        // tokens + tied head × 128 + (SigLIP linears + projector) × 256 image
        // tokens) + 4 × patch conv × 256 + 3 × 4·L·queries·width·layers for
        // both towers' attention (the decoder's last layer: 128 queries).
        let last_windowed = 73_138_176.0;
        let by_hand = 6.0
            * ((2_024_275_968.0 - last_windowed) * 384.0
                + last_windowed * 128.0
                + 592_625_664.0 * 128.0
                + (411_070_464.0 + 2_654_208.0) * 256.0)
            + 4.0 * 677_376.0 * 256.0
            + 3.0
                * 4.0
                * (384.0 * 384.0 * 2048.0 * 25.0
                    + 384.0 * 128.0 * 2048.0
                    + 256.0 * 256.0 * 1152.0 * 27.0);
        assert!((reference_flops() / by_hand - 1.0).abs() < 1e-12);
    }

    /// FLOPs cannot reproduce Table 1 exactly: the paper measured TPU time,
    /// on `TPUv5e` for all but 28B@896 (`TPUv5p`, converted at an assumed 2.3×
    /// per chip), with sharding and utilisation that differ by model size;
    /// 28B runs are relatively less efficient, which FLOPs do not see. So we
    /// require (a) the same order along every row (resolution) and column
    /// (size), (b) the same order for every pair of cells except 28B@224,
    /// whose measured cost (18.9) sits just above 10B@448 (18.3) and 3B@896
    /// (23.5 is the other side) while its FLOPs are ~30% below them, and
    /// (c) each ratio within `FACTOR` of the paper's, the tightest bound that
    /// holds (worst cell: 28B@224 at ≈1.79×).
    #[test]
    fn published_costs_track_paper_table_1() {
        const FACTOR: f64 = 1.8;
        let reference = PaliGemmaConfig::published(Size::B3, Resolution::R224);
        let unwindowed_reference = flops(
            &full_training_shape(&reference, REFERENCE_TEXT_TOKENS),
            false,
        );
        let mut cells = Vec::new();
        println!("size  res   paper   flops-based  paper/ours");
        for (size, paper) in TABLE_1 {
            for (resolution, paper) in Resolution::ALL.into_iter().zip(paper) {
                let config = PaliGemmaConfig::published(size, resolution);
                let shape = full_training_shape(&config, pretraining_text(resolution));
                // The paper's runs compute every position of every layer.
                let ours = flops(&shape, false) / unwindowed_reference;
                println!(
                    "{size:>4}  {resolution}  {paper:>6.1}  {ours:>11.2}  {:>10.2}",
                    paper / ours
                );
                cells.push((size, resolution, paper, ours));
            }
        }
        let mut worst: f64 = 1.0;
        for &(size, resolution, paper, ours) in &cells {
            let ratio = paper / ours;
            worst = worst.max(ratio.max(1.0 / ratio));
            assert!(
                ratio < FACTOR && ratio > 1.0 / FACTOR,
                "{size}@{resolution}: paper {paper}, ours {ours:.2}"
            );
        }
        println!("worst ratio {worst:.3} (bound {FACTOR})");
        let exempt = |a: &(Size, Resolution, f64, f64), b: &(Size, Resolution, f64, f64)| {
            let is_28b_224 =
                |c: &(Size, Resolution, f64, f64)| (c.0, c.1) == (Size::B28, Resolution::R224);
            is_28b_224(a) || is_28b_224(b)
        };
        for a in &cells {
            for b in &cells {
                let same_row_or_column = a.0 == b.0 || a.1 == b.1;
                if a.2 < b.2 && (same_row_or_column || !exempt(a, b)) {
                    assert!(
                        a.3 < b.3,
                        "order differs: {}@{} vs {}@{}",
                        a.0,
                        a.1,
                        b.0,
                        b.1
                    );
                }
            }
        }
    }

    #[test]
    fn lora_costs_less_than_full_and_checkpointing_costs_more() {
        let config = PaliGemmaConfig::published(Size::B3, Resolution::R224);
        let targets = default_targets();
        let full = full_training_shape(&config, 128);
        let lora = TrialShape {
            method: Method::Lora,
            lora_r: 8,
            lora_targets: &targets,
            train_projector: false,
            ..full
        };
        let (full_cost, lora_cost) = (relative_cost(&full, 1), relative_cost(&lora, 1));
        // Frozen base: ≈ 4/6 of full training.
        assert!(
            lora_cost < full_cost && lora_cost > 0.6 * full_cost,
            "{lora_cost}"
        );
        let checkpointed = TrialShape {
            gradient_checkpointing: true,
            ..lora
        };
        assert!(relative_cost(&checkpointed, 1) > lora_cost);
        let frozen_vision = TrialShape {
            freeze_vision: true,
            ..lora
        };
        assert!(relative_cost(&frozen_vision, 1) < lora_cost);
        // QLoRA does the same FLOPs (dequantisation is not counted).
        let qlora = TrialShape {
            method: Method::Qlora,
            ..lora
        };
        assert!((relative_cost(&qlora, 1) - lora_cost).abs() < 1e-12);
    }

    #[test]
    fn cost_grows_with_text_and_is_linear_in_examples() {
        let config = PaliGemmaConfig::tiny(Size::B3, Resolution::R224);
        let short = full_training_shape(&config, 16);
        let long = full_training_shape(&config, 64);
        assert!(per_example_flops(&long) > per_example_flops(&short));
        let one = relative_cost(&short, 1);
        assert!(one > 0.0 && one < 1e-3, "{one}");
        assert!((relative_cost(&short, 10) / one - 10.0).abs() < 1e-9);
    }
}

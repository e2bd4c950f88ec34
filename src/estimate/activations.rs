//! What is alive beyond weights and optimiser state at the peak of a
//! training step: the tensors each layer's forward leaves for the backward
//! (counted from `gemma2.rs`, `siglip.rs`, `lora.rs` and `linear.rs`), the
//! transient buffers of the layer whose backward runs at the peak, and
//! which of them the CPU heap serves.
//!
//! Memory-efficient attention (`model.attention`, the default) keeps no
//! scores: its custom autograd function keeps q, k and v, and its backward
//! holds one chunk of queries' scores at a time
//! ([`crate::model::network::attention::chunk_rows`]). The NF4 linear layer
//! keeps only its packed weight: `QLoRA` adds no dequantised copy to what a
//! layer keeps (the one it dequantises at a time is the weights' scratch).
//!
//! A cast to the dtype a tensor already has is no copy, so the count
//! depends on the compute dtype: in f32 linears that read one tensor share
//! it, in bf16 each adapter keeps its own f32 copy.

use std::ops::{Add, Mul};

use tch::Device;

use crate::model::config::{LinearModule, Tower};
use crate::model::network::attention::{AttentionMode, chunk_elements, chunked};
use crate::spec::schema::Attention;

use super::memory::{DeviceKind, TrialShape};

const MIB: u64 = 1 << 20;

/// `LoRA` branches run in f32 (PEFT's `autocast_adapter_dtype`): each casts
/// its input to f32 and keeps it for A's gradient; on a bf16 base that cast
/// is a copy per adapted linear.
pub const ADAPTER_DTYPE_BYTES: u64 = 4;
/// Gemma 2's `RMSNorm` computes in f32 and keeps its f32 input: four per
/// decoder layer.
pub const NORM_DTYPE_BYTES: u64 = 4;
pub const DECODER_NORMS: u64 = 4;
/// Both towers' softmax runs in f32 and keeps its output for the backward.
pub const SOFTMAX_BYTES: u64 = 4;
/// While one softmax runs its backward it holds its incoming and outgoing
/// f32 gradients beside the kept output: two more f32 buffers the size of
/// that layer's scores.
pub const SOFTMAX_BACKWARD_BYTES: u64 = 8;

/// glibc's malloc serves a request under its mmap threshold from the heap,
/// and the threshold rises to the size of each large block freed, up to
/// this (`DEFAULT_MMAP_THRESHOLD_MAX` on 64-bit).
pub const GLIBC_MMAP_THRESHOLD_MAX: u64 = 32 * MIB;

/// Bytes alive at some moment, and the part of them held in allocations
/// under [`GLIBC_MMAP_THRESHOLD_MAX`] (served from the heap on the CPU).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Held {
    pub bytes: u64,
    pub small: u64,
}

impl Held {
    /// `count` tensors of `elements` elements of `elt` bytes each.
    fn tensors(count: u64, elements: u64, elt: u64) -> Self {
        let one = elements * elt;
        let small = if one < GLIBC_MMAP_THRESHOLD_MAX {
            one
        } else {
            0
        };
        Self {
            bytes: count * one,
            small: count * small,
        }
    }
}

impl Add for Held {
    type Output = Self;
    fn add(self, other: Self) -> Self {
        Self {
            bytes: self.bytes + other.bytes,
            small: self.small + other.small,
        }
    }
}

impl Mul<u64> for Held {
    type Output = Self;
    fn mul(self, n: u64) -> Self {
        Self {
            bytes: self.bytes * n,
            small: self.small * n,
        }
    }
}

/// What is alive beyond the static memory at one moment of a step, by kind.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Dynamic {
    pub activations: Held,
    pub attention: Held,
}

impl Dynamic {
    pub fn bytes(&self) -> u64 {
        self.activations.bytes + self.attention.bytes
    }

    /// The heap-served activations and scores: what glibc's retention
    /// scales.
    pub fn heap(&self) -> u64 {
        self.activations.small + self.attention.small
    }

    fn max(self, other: Self) -> Self {
        if other.bytes() > self.bytes() {
            other
        } else {
            self
        }
    }

    /// `f` on each kind, pairwise.
    fn zip(self, other: Self, f: impl Fn(Held, Held) -> Held) -> Self {
        Self {
            activations: f(self.activations, other.activations),
            attention: f(self.attention, other.attention),
        }
    }
}

impl Add for Dynamic {
    type Output = Self;
    fn add(self, other: Self) -> Self {
        self.zip(other, Add::add)
    }
}

impl Mul<u64> for Dynamic {
    type Output = Self;
    fn mul(self, n: u64) -> Self {
        self.zip(self, |held, _| held * n)
    }
}

/// One layer of one tower: what its forward keeps for the backward, and
/// what its softmax backward adds while it runs.
#[derive(Clone, Copy, Debug, Default)]
struct Layer {
    kept: Dynamic,
    backward: Held,
    /// The layer's input `[B, L, hidden]`, what checkpointing keeps.
    input: Held,
}

/// The linears of layer 0 of `tower` (every layer has the same), each with
/// whether it carries an adapter and whether its weight trains.
fn layer_linears(shape: &TrialShape, tower: Tower) -> Vec<(LinearModule, bool, bool)> {
    let prefix = match tower {
        Tower::Vision => "vision_tower.vision_model.encoder.layers.0.",
        _ => "language_model.model.layers.0.",
    };
    let trained = shape.is_full() && (tower != Tower::Vision || !shape.freeze_vision);
    shape
        .config
        .linear_modules()
        .into_iter()
        .filter(|m| m.name.starts_with(prefix))
        .map(|m| {
            let adapted = shape.has_adapter(&m);
            (m, adapted, trained)
        })
        .collect()
}

/// Inputs the linears of one layer keep: `groups` of linears that read the
/// same tensor (by name suffix), each with its row count. Such linears
/// share the tensor when it is kept as is: for a trained weight, or for an
/// adapter when the compute dtype is already the adapter's. On a narrower
/// base each adapter keeps its own f32 copy.
fn linear_inputs(shape: &TrialShape, tower: Tower, groups: &[(&[&str], u64)]) -> Held {
    let dtype = u64::from(shape.dtype_bytes);
    let linears = layer_linears(shape, tower);
    let mut held = Held::default();
    for &(group, tokens) in groups {
        let members: Vec<_> = linears
            .iter()
            .filter(|(m, _, _)| group.iter().any(|g| m.name.ends_with(g)))
            .collect();
        let Some((first, _, _)) = members.first() else {
            continue;
        };
        let width = first.in_features;
        let adapted = members.iter().filter(|(_, a, _)| *a).count() as u64;
        let trained = members.iter().any(|(_, _, t)| *t);
        if dtype >= ADAPTER_DTYPE_BYTES {
            if adapted > 0 || trained {
                held = held + Held::tensors(1, tokens * width, dtype);
            }
        } else {
            held = held + Held::tensors(adapted, tokens * width, ADAPTER_DTYPE_BYTES);
            if trained {
                held = held + Held::tensors(1, tokens * width, dtype);
            }
        }
    }
    held
}

/// One Gemma 2 decoder layer (`gemma2.rs`), per `[B, L]` batch, whose
/// queries cover `queries` positions per row (`L`, or the supervised
/// window in the last layer):
/// * the f32 input of each of its four `RMSNorm`s (the first over every
///   position, the others over the queries);
/// * q after `RoPE` (queries), k and v (every position), in the compute
///   dtype: eager attention keeps k and v repeated to every query head,
///   memory-efficient attention as they are (`num_key_value_heads`);
/// * gate, `gelu(gate)` and up of the MLP (kept by `gelu` and the product);
/// * the inputs its adapted or trained linears keep ([`linear_inputs`]);
/// * the attention scores `B × heads × queries × L` ([`layer`]).
fn decoder_layer(shape: &TrialShape, queries: u64) -> Layer {
    let t = &shape.config.text_config;
    let dtype = u64::from(shape.dtype_bytes);
    let batch = u64::from(shape.batch_size);
    let len = shape.sequence_len();
    let (tokens, query_tokens) = (batch * len, batch * queries);
    let (h, mlp) = (u64::from(t.hidden_size), u64::from(t.intermediate_size));
    let heads = u64::from(t.num_attention_heads) * u64::from(t.head_dim);
    let scores = batch * u64::from(t.num_attention_heads) * queries * len;
    let chunked = chunks(shape, scores);
    let kv_heads = if chunked {
        u64::from(t.num_key_value_heads) * u64::from(t.head_dim)
    } else {
        heads
    };
    let activations = Held::tensors(1, tokens * h, NORM_DTYPE_BYTES)
        + Held::tensors(DECODER_NORMS - 1, query_tokens * h, NORM_DTYPE_BYTES)
        + Held::tensors(1, query_tokens * heads, dtype)
        + Held::tensors(2, tokens * kv_heads, dtype)
        + Held::tensors(3, query_tokens * mlp, dtype)
        + linear_inputs(
            shape,
            Tower::Language,
            &[
                (&["q_proj", "k_proj", "v_proj"], tokens),
                (&["o_proj"], query_tokens),
                (&["gate_proj", "up_proj"], query_tokens),
                (&["down_proj"], query_tokens),
            ],
        );
    let mut layer = layer(
        shape,
        activations,
        Held::tensors(1, tokens * h, dtype),
        scores,
        t.attn_logit_softcapping.is_some(),
    );
    if chunked {
        // The backward's key and value gradients, summed over the chunks in f32.
        layer.backward = layer.backward + Held::tensors(2, tokens * kv_heads, 4);
    }
    layer
}

/// One `SigLIP` encoder layer (`siglip.rs`), per `[B, N]` batch of image
/// tokens: the inputs of both `LayerNorm`s, q, k and v, the `fc1` output
/// (`gelu`'s input) in the compute dtype, the inputs its adapted or trained
/// linears keep, and the scores `B × heads × N²` ([`layer`]).
fn vision_layer(shape: &TrialShape) -> Layer {
    let v = &shape.config.vision_config;
    let dtype = u64::from(shape.dtype_bytes);
    let image_tokens = u64::from(shape.config.num_image_tokens());
    let tokens = u64::from(shape.batch_size) * image_tokens;
    let (h, mlp) = (u64::from(v.hidden_size), u64::from(v.intermediate_size));
    let activations = Held::tensors(2, tokens * h, dtype)
        + Held::tensors(3, tokens * h, dtype)
        + Held::tensors(1, tokens * mlp, dtype)
        + linear_inputs(
            shape,
            Tower::Vision,
            &[
                (&["q_proj", "k_proj", "v_proj"], tokens),
                (&["out_proj"], tokens),
                (&["fc1"], tokens),
                (&["fc2"], tokens),
            ],
        );
    let scores = u64::from(shape.batch_size)
        * u64::from(v.num_attention_heads)
        * image_tokens
        * image_tokens;
    layer(
        shape,
        activations,
        Held::tensors(1, tokens * h, dtype),
        scores,
        false,
    )
}

/// A layer from its kept activations, its input and its score count.
///
/// Eager: the layer keeps the f32 softmax, the probabilities cast back (a
/// copy only in a narrower dtype) and the soft-cap's `tanh` when `capped`
/// (sliding layers too: the window is a mask); its softmax backward adds
/// two f32 buffers of the scores' size.
///
/// Memory-efficient (over
/// [`crate::model::network::attention::KEEP_SCORES_BELOW`] scores; below,
/// as eager):
/// nothing of the scores is kept; the backward holds one
/// chunk at a time: the f32 probabilities and their f32 gradient, and
/// three compute-dtype buffers (the `tanh`, the probabilities' gradient,
/// the scores' gradient).
fn layer(shape: &TrialShape, activations: Held, input: Held, scores: u64, capped: bool) -> Layer {
    let dtype = u64::from(shape.dtype_bytes);
    if chunks(shape, scores) {
        let device = match shape.device {
            DeviceKind::Cpu => Device::Cpu,
            DeviceKind::Cuda => Device::Cuda(0),
        };
        let chunk = scores.min(chunk_elements(device).unsigned_abs());
        return Layer {
            kept: Dynamic {
                activations,
                attention: Held::default(),
            },
            backward: Held::tensors(1, chunk, 2 * SOFTMAX_BYTES + 3 * dtype),
            input,
        };
    }
    let mut attention = Held::tensors(1, scores, SOFTMAX_BYTES);
    if capped {
        attention = attention + Held::tensors(1, scores, dtype);
    }
    if dtype < SOFTMAX_BYTES {
        attention = attention + Held::tensors(1, scores, dtype);
    }
    Layer {
        kept: Dynamic {
            activations,
            attention,
        },
        backward: Held::tensors(1, scores, SOFTMAX_BACKWARD_BYTES),
        input,
    }
}

/// Whether a layer of `scores` score elements runs in chunks, by the model's
/// own rule (memory-efficient attention keeps small scores, as eager).
fn chunks(shape: &TrialShape, scores: u64) -> bool {
    shape.attention == Attention::MemoryEfficient
        && chunked(
            AttentionMode::MemoryEfficient.decoder(),
            i64::try_from(scores).unwrap_or(i64::MAX),
        )
}

/// The pass's boolean masks `[B, 1, L, L]`, one for the global and one
/// for the sliding-window layers (`gemma2::AttentionMasks::blocked`): the
/// chunked layers' autograd functions keep them until the decoder's
/// backward ends. Unchunked layers add the masks to the scores in the
/// forward and keep nothing of them.
fn decoder_masks(shape: &TrialShape) -> Held {
    let t = &shape.config.text_config;
    let (batch, len) = (u64::from(shape.batch_size), shape.sequence_len());
    if !chunks(shape, batch * u64::from(t.num_attention_heads) * len * len) {
        return Held::default();
    }
    Held::tensors(2, batch * len * len, 1)
}

/// The decoder's final `RMSNorm` keeps its f32 input, the supervised
/// window's positions.
fn final_norm(shape: &TrialShape) -> Held {
    let tokens = u64::from(shape.batch_size) * u64::from(shape.suffix_tokens);
    Held::tensors(
        1,
        tokens * u64::from(shape.config.text_config.hidden_size),
        NORM_DTYPE_BYTES,
    )
}

/// What is alive at the peak of a step beyond weights, optimiser state,
/// logits and the runtime. The decoder runs its backward first, the
/// vision tower (when it trains) last.
///
/// * Without checkpointing the peak is either at the first decoder layer's
///   softmax backward (everything kept, plus its transient) or, when the
///   tower's scores dominate, at a vision layer's (the decoder's memory is
///   freed by then).
/// * With checkpointing ([`crate::model::network::backward`]) each tower keeps
///   every layer's input and recomputes one layer at a time. On the CPU the
///   peak is the larger of the two towers' layers; the CUDA caching
///   allocator keeps the blocks the decoder's layers reserved (other sizes
///   than the tower's), so there the two add up: measured on the H200,
///   3B@896 `QLoRA` reserved 17.6 GiB where the larger layer alone explains
///   12.2.
pub fn peak_dynamic(shape: &TrialShape) -> Dynamic {
    if shape.trainable_params() == 0 {
        return Dynamic::default();
    }
    let t = &shape.config.text_config;
    let v = &shape.config.vision_config;
    // Every decoder layer but the last computes every query; the last, the
    // supervised window's (`model::network::gemma2::QueryWindow`).
    let decoder = decoder_layer(shape, shape.sequence_len());
    let last_decoder = decoder_layer(shape, u64::from(shape.suffix_tokens));
    let (decoder_layers, vision_layers) = (
        u64::from(t.num_hidden_layers),
        u64::from(v.num_hidden_layers),
    );
    let vision = shape.trains_vision().then(|| vision_layer(shape));
    let masks = Dynamic {
        attention: decoder_masks(shape),
        ..Dynamic::default()
    };
    let with_backward = |layer: &Layer| Dynamic {
        attention: layer.kept.attention + layer.backward,
        ..layer.kept
    };
    if shape.gradient_checkpointing {
        let mut inputs = decoder.input * decoder_layers;
        let mut peak = masks
            + if decoder_layers > 1 {
                with_backward(&decoder)
            } else {
                with_backward(&last_decoder)
            };
        if let Some(vision) = &vision {
            inputs = inputs + vision.input * vision_layers;
            let tower = with_backward(vision);
            peak = match shape.device {
                DeviceKind::Cuda => peak + tower,
                DeviceKind::Cpu => peak.max(tower),
            };
        }
        peak.activations = peak.activations + inputs + final_norm(shape);
        return peak;
    }
    let mut tower = Dynamic::default();
    let mut tower_peak = Dynamic::default();
    if let Some(vision) = &vision {
        tower = vision.kept * vision_layers;
        tower_peak = tower
            + Dynamic {
                attention: vision.backward,
                ..Dynamic::default()
            };
    }
    // The last layer's backward runs first, with everything kept; the next
    // one after the last layer's memory (and the final norm's) is freed.
    let transient = |layer: &Layer| Dynamic {
        attention: layer.backward,
        ..Dynamic::default()
    };
    let below_last = decoder.kept * decoder_layers.saturating_sub(1) + tower + masks;
    let mut kept = below_last + last_decoder.kept;
    kept.activations = kept.activations + final_norm(shape);
    let mut peak = (kept + transient(&last_decoder)).max(tower_peak);
    if decoder_layers > 1 {
        peak = peak.max(below_last + transient(&decoder));
    }
    peak
}

/// Activations at the peak ([`peak_dynamic`]).
pub fn activation_bytes(shape: &TrialShape) -> u64 {
    peak_dynamic(shape).activations.bytes
}

/// Attention score buffers at the peak ([`peak_dynamic`]).
pub fn attention_bytes(shape: &TrialShape) -> u64 {
    peak_dynamic(shape).attention.bytes
}

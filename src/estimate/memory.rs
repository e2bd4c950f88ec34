//! Peak device memory of one training trial, computed from the architecture
//! (docs/model-reference.md §8 for NF4 storage) and from what autograd keeps for the
//! backward pass of this project's model code.
//!
//! The activation terms count tensors, not coefficients: for each layer, the
//! tensors its forward leaves saved for the backward (which depends on the
//! compute dtype, since a cast to the dtype a tensor already has is no copy),
//! plus the transient buffers of the one layer whose backward is running at
//! the peak. Two allocator effects are modelled on top, each measured: glibc
//! keeps freed heap memory on the CPU ([`CPU_HEAP_RETENTION_PERCENT`]), and
//! the CUDA caching allocator keeps blocks of one tower's sizes while the
//! other tower runs ([`peak_dynamic`]).
//!
//! Calibration: `src/estimate/calibration/{cpu,cuda}.json` hold measured
//! peaks (`scripts/bench/calibrate.sh` regenerates the CPU file) and
//! `estimate::calibration`'s test keeps every row within ±15%.

use crate::allocator::Allocator;
use crate::model::config::{LinearModule, PaliGemmaConfig, Tower};
use crate::spec::schema::{Attention, Method};

pub use super::activations::{activation_bytes, attention_bytes, peak_dynamic};
pub use crate::devices::detect::DeviceKind;

const MIB: u64 = 1 << 20;

/// The CUDA context, cuBLAS workspaces and the caching allocator's rounding,
/// as NVML counts them for the process. Calibrated on the H200 forward rows
/// (`calibration/cuda.json`): 3B@224 used 1.1–1.4 GiB beyond its weights.
pub const CUDA_RUNTIME_OVERHEAD: u64 = 1000 * MIB;
/// libtorch's CPU runtime: its mapped code (~220 MiB resident), thread
/// pools and the tokenizer. Calibrated: the `tiny` presets at 224 px peak
/// at 421–441 MiB of RSS with a few MiB of tensors.
pub const CPU_RUNTIME_OVERHEAD: u64 = 415 * MIB;

/// Bytes per trained parameter kept by the optimiser: f32 master weight,
/// f32 gradient, `AdamW`'s f32 `m` and `v` (docs/model-reference.md §11).
pub const TRAINABLE_STATE_BYTES: u64 = 16;

/// Logits at supervised positions: the compute-dtype logits, their f32
/// upcast for the loss, and the f32 gradient (docs/model-reference.md §11).
pub const LOGITS_F32_BYTES: u64 = 4 + 4;

/// NF4 double quantisation quantises the absmax constants in blocks of 256
/// (`bitsandbytes`, docs/model-reference.md §8).
pub const DOUBLE_QUANT_BLOCK: u64 = 256;

/// What the heap keeps beyond the live heap-served tensors at the peak, in
/// percent of them: freed forward temporaries and gradients that later
/// requests do not fit. Measured on `small` 3b@224 `LoRA` (2 threads): with
/// `MALLOC_MMAP_THRESHOLD_=65536` (no heap for tensors) it peaks at 636 MiB
/// instead of 749, within 1% of what is counted here without this term
/// (≈630: the calibration test prints each row's allocator term, here 107);
/// the 113 MiB the heap kept are 63% of the 179 MiB of heap-served
/// activations and scores. 60% keeps every CPU calibration row within
/// −6.8% … +6.6%. (It was 100% before `LoRA`'s branch was fused into one
/// `addmm`, which allocates two fewer `[tokens, out]` temporaries per
/// adapted linear.)
pub const CPU_HEAP_RETENTION_PERCENT: u64 = 60;

/// What tcmalloc (`crate::allocator`, the default where installed) holds
/// beyond the live tensors at the peak, in percent of the activations and
/// scores (it serves all of them, large ones too): freed spans it has not
/// yet returned. Calibrated on the `cpu-tcmalloc.json` rows.
pub const TCMALLOC_RETENTION_PERCENT: u64 = 10;

/// What one trial trains, on what, at what size: the input of the memory
/// and cost estimates.
#[derive(Clone, Copy, Debug)]
#[allow(clippy::struct_excessive_bools)] // independent spec switches, not states
pub struct TrialShape<'a> {
    pub config: &'a PaliGemmaConfig,
    pub method: Method,
    pub batch_size: u32,
    /// Text tokens before the suffix (`<bos>`, prompt, `\n`), excluding
    /// image tokens.
    pub prefix_tokens: u32,
    /// Supervised tokens (target + `<eos>`).
    pub suffix_tokens: u32,
    /// Compute dtype: 2 for bf16 (CUDA), 4 for f32 (CPU).
    pub dtype_bytes: u32,
    pub device: DeviceKind,
    /// The CPU's `malloc` (what it keeps of freed memory); unused on CUDA.
    pub allocator: Allocator,
    pub freeze_vision: bool,
    /// `LoRA`/`QLoRA` only: train `multi_modal_projector` fully (full training
    /// always trains it).
    pub train_projector: bool,
    pub lora_r: u32,
    pub lora_targets: &'a [String],
    pub gradient_checkpointing: bool,
    pub double_quant: bool,
    pub quant_block_size: u32,
    /// `model.attention`: eager keeps every layer's scores for the backward.
    pub attention: Attention,
}

/// Estimated peak device memory in bytes, by component.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MemoryEstimate {
    /// Frozen base weights (bf16/f32, or NF4 for `QLoRA` linears).
    pub weights: u64,
    /// Trained parameters with gradients and `AdamW` state.
    pub trainable_state: u64,
    /// Activations kept for the backward pass at the peak (saved layer
    /// inputs under gradient checkpointing).
    pub activations: u64,
    /// Attention at the peak: eager, the score buffers kept and the
    /// softmax backward's transient; memory-efficient, one chunk's
    /// transient and the pass's masks.
    pub attention: u64,
    /// Logits at supervised positions.
    pub logits: u64,
    /// Runtime overhead of the device.
    pub overhead: u64,
    /// Memory the allocator holds beyond the live tensors (CPU: freed heap
    /// memory, [`CPU_HEAP_RETENTION_PERCENT`]).
    pub allocator: u64,
    pub total: u64,
}

impl TrialShape<'_> {
    /// Decoder sequence length: image tokens + prefix + suffix.
    pub fn sequence_len(&self) -> u64 {
        u64::from(self.config.num_image_tokens())
            + u64::from(self.prefix_tokens)
            + u64::from(self.suffix_tokens)
    }

    pub(crate) fn is_full(&self) -> bool {
        self.method == Method::Full
    }

    /// Whether the projector's own weights are trained.
    pub fn trains_projector(&self) -> bool {
        self.is_full() || self.train_projector
    }

    /// Whether the vision tower gets gradients: full training with an
    /// unfrozen tower, or `LoRA` targets that hit it and `freeze_vision` off.
    pub fn trains_vision(&self) -> bool {
        !self.freeze_vision
            && (self.is_full()
                || self
                    .config
                    .linear_modules()
                    .iter()
                    .any(|m| m.tower == Tower::Vision && m.is_targeted(self.lora_targets)))
    }

    /// Whether a `LoRA` adapter sits on this linear (a fully trained projector
    /// gets none).
    pub(crate) fn has_adapter(&self, module: &LinearModule) -> bool {
        !self.is_full()
            && match module.tower {
                Tower::Vision => !self.freeze_vision,
                Tower::Projector => !self.train_projector,
                Tower::Language => true,
            }
            && module.is_targeted(self.lora_targets)
    }

    /// Parameters of the base model trained in full: everything but a frozen
    /// vision tower for full training, the projector (when asked) for `LoRA`.
    pub fn full_trained_params(&self) -> u64 {
        let counts = self.config.param_counts();
        let projector = if self.trains_projector() {
            counts.projector
        } else {
            0
        };
        if self.is_full() {
            let vision = if self.freeze_vision { 0 } else { counts.vision };
            counts.embedding + counts.decoder_layers + counts.final_norm + projector + vision
        } else {
            projector
        }
    }

    /// `LoRA` adapter parameters (0 for full training).
    pub fn adapter_params(&self) -> u64 {
        self.config
            .linear_modules()
            .iter()
            .filter(|m| self.has_adapter(m))
            .map(|m| m.lora_params(self.lora_r))
            .sum()
    }

    /// Everything the optimiser updates.
    pub fn trainable_params(&self) -> u64 {
        self.full_trained_params() + self.adapter_params()
    }
}

/// Estimated peak memory of one trial on one device: every component
/// below and their sum.
pub fn estimate_memory(shape: &TrialShape) -> MemoryEstimate {
    let peak = peak_dynamic(shape);
    let allocator = match shape.device {
        DeviceKind::Cpu => match shape.allocator {
            Allocator::Glibc => peak.heap() * CPU_HEAP_RETENTION_PERCENT / 100,
            Allocator::Tcmalloc => peak.bytes() * TCMALLOC_RETENTION_PERCENT / 100,
        },
        DeviceKind::Cuda => 0,
    };
    let mut estimate = MemoryEstimate {
        weights: weight_bytes(shape),
        trainable_state: trainable_state_bytes(shape),
        activations: peak.activations.bytes,
        attention: peak.attention.bytes,
        logits: logit_bytes(shape),
        overhead: overhead_bytes(shape.device),
        allocator,
        total: 0,
    };
    estimate.total = estimate.weights
        + estimate.trainable_state
        + estimate.activations
        + estimate.attention
        + estimate.logits
        + estimate.overhead
        + estimate.allocator;
    estimate
}

/// Frozen base weights. `LoRA`/full: `frozen params × dtype`. `QLoRA`: every
/// frozen linear weight (vision, projector, LM; not the tied head) in NF4 at
/// `⌈n/2⌉` bytes plus its absmax constants ([`absmax_bytes`]), every other
/// frozen parameter (embedding, norms, biases, patch conv, position table)
/// in the compute dtype, plus one dequantised copy of the largest linear as
/// matmul scratch. Trained parameters live in [`trainable_state_bytes`].
pub fn weight_bytes(shape: &TrialShape) -> u64 {
    let dtype = u64::from(shape.dtype_bytes);
    let frozen = shape
        .config
        .param_counts()
        .total
        .saturating_sub(shape.full_trained_params());
    if shape.method != Method::Qlora {
        return frozen * dtype;
    }
    let block = u64::from(shape.quant_block_size.max(1));
    let quantised: Vec<u64> = shape
        .config
        .linear_modules()
        .iter()
        .filter(|m| !m.tied)
        // A fully trained projector is not quantised.
        .filter(|m| m.tower != Tower::Projector || !shape.trains_projector())
        .map(LinearModule::weight_params)
        .collect();
    let quantised_params: u64 = quantised.iter().sum();
    let nf4: u64 = quantised
        .iter()
        .map(|&n| n.div_ceil(2) + absmax_bytes(n, block, shape.double_quant))
        .sum();
    let scratch = quantised.iter().max().copied().unwrap_or(0) * dtype;
    nf4 + frozen.saturating_sub(quantised_params) * dtype + scratch
}

/// NF4 absmax constants of one tensor of `n` weights in blocks of `block`:
/// an f32 per block, or with double quantisation one byte per block plus an
/// f32 per [`DOUBLE_QUANT_BLOCK`] blocks and one f32 offset (docs/model-reference.md §8).
pub fn absmax_bytes(n: u64, block: u64, double_quant: bool) -> u64 {
    let blocks = n.div_ceil(block.max(1));
    if double_quant {
        blocks + 4 * blocks.div_ceil(DOUBLE_QUANT_BLOCK) + 4
    } else {
        4 * blocks
    }
}

/// Trained parameters × [`TRAINABLE_STATE_BYTES`] (f32 master, grad, `AdamW`
/// `m`, `v`), plus a compute-dtype copy of each when computing in bf16.
pub fn trainable_state_bytes(shape: &TrialShape) -> u64 {
    let copy = if shape.dtype_bytes < 4 {
        u64::from(shape.dtype_bytes)
    } else {
        0
    };
    shape.trainable_params() * (TRAINABLE_STATE_BYTES + copy)
}

/// `batch × suffix × vocab × (dtype + 4 + 4)`: the head runs only at
/// supervised positions; logits in the compute dtype, their f32 upcast and
/// f32 gradient.
pub fn logit_bytes(shape: &TrialShape) -> u64 {
    u64::from(shape.batch_size)
        * u64::from(shape.suffix_tokens)
        * u64::from(shape.config.text_config.vocab_size)
        * (u64::from(shape.dtype_bytes) + LOGITS_F32_BYTES)
}

/// Fixed runtime overhead: [`CUDA_RUNTIME_OVERHEAD`] or
/// [`CPU_RUNTIME_OVERHEAD`].
pub fn overhead_bytes(device: DeviceKind) -> u64 {
    match device {
        DeviceKind::Cuda => CUDA_RUNTIME_OVERHEAD,
        DeviceKind::Cpu => CPU_RUNTIME_OVERHEAD,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::network::attention::CUDA_CHUNK_ELEMENTS;
    use crate::variant::{Resolution, Size};

    const GB: f64 = 1e9;

    fn default_targets() -> Vec<String> {
        crate::model::adapt::lora::DEFAULT_TARGETS
            .map(String::from)
            .to_vec()
    }

    /// The maestro recipe (docs/model-reference.md §9) on CUDA in bf16: r=8,
    /// 7 targets, blocks of 64, 64 text tokens; with double quantisation
    /// (palisweep's default; maestro itself leaves it off, §8).
    fn shape<'a>(
        config: &'a PaliGemmaConfig,
        method: Method,
        targets: &'a [String],
    ) -> TrialShape<'a> {
        TrialShape {
            config,
            method,
            batch_size: 1,
            prefix_tokens: 32,
            suffix_tokens: 32,
            dtype_bytes: 2,
            device: DeviceKind::Cuda,
            allocator: Allocator::Glibc,
            freeze_vision: false,
            train_projector: false,
            lora_r: 8,
            lora_targets: targets,
            gradient_checkpointing: false,
            double_quant: true,
            quant_block_size: 64,
            attention: Attention::Eager,
        }
    }

    fn assert_near(actual: u64, expected_gb: f64, tolerance: f64, what: &str) {
        let actual_gb = actual as f64 / GB;
        assert!(
            (actual_gb / expected_gb - 1.0).abs() <= tolerance,
            "{what}: {actual_gb:.3} GB, reference {expected_gb} GB"
        );
    }

    #[test]
    fn static_weights_match_reference_table() {
        // docs/model-reference.md §11: bf16, NF4 + DQ, NF4 without DQ (GB), for 3B/10B/28B.
        let table = [
            (Size::B3, 6.06, 2.45, 2.56),
            (Size::B10, 19.3, 6.35, 6.76),
            (Size::B28, 55.3, 16.0, 17.3),
        ];
        let targets = default_targets();
        for (size, bf16, dq, no_dq) in table {
            let config = PaliGemmaConfig::published(size, Resolution::R224);
            let lora = shape(&config, Method::Lora, &targets);
            assert_near(weight_bytes(&lora), bf16, 0.05, &format!("{size} bf16"));
            let qlora = TrialShape {
                method: Method::Qlora,
                ..lora
            };
            assert_near(weight_bytes(&qlora), dq, 0.05, &format!("{size} NF4+DQ"));
            let qlora = TrialShape {
                double_quant: false,
                ..qlora
            };
            assert_near(weight_bytes(&qlora), no_dq, 0.05, &format!("{size} NF4"));
        }
    }

    #[test]
    fn nf4_storage_is_half_a_byte_plus_constants() {
        // docs/model-reference.md §8: ≈0.5159 B/param with DQ, 0.5625 without (blocks of 64).
        let n = 64 * 256 * 1000;
        let with = (n / 2 + absmax_bytes(n, 64, true)) as f64 / n as f64;
        let without = (n / 2 + absmax_bytes(n, 64, false)) as f64 / n as f64;
        assert!((with - 0.5159).abs() < 1e-4, "{with}");
        assert!((without - 0.5625).abs() < 1e-9, "{without}");
        // A trailing partial block gets its own absmax.
        assert_eq!(absmax_bytes(65, 64, false), 8);
    }

    #[test]
    fn trainable_state_for_r8_3b() {
        let targets = default_targets();
        let config = PaliGemmaConfig::published(Size::B3, Resolution::R224);
        // f32 compute (CPU): 16 B/param, docs/model-reference.md §11's 0.19 GB.
        let cpu = TrialShape {
            dtype_bytes: 4,
            device: DeviceKind::Cpu,
            ..shape(&config, Method::Lora, &targets)
        };
        assert_eq!(cpu.trainable_params(), 11_876_352);
        assert_near(trainable_state_bytes(&cpu), 0.19, 0.05, "r=8 f32");
        // bf16 adds a compute-dtype copy: 18 B/param.
        let cuda = shape(&config, Method::Lora, &targets);
        assert_eq!(trainable_state_bytes(&cuda), 11_876_352 * 18);
        // The projector trained in full joins the state and leaves the weights.
        let with_projector = TrialShape {
            train_projector: true,
            ..cuda
        };
        let projector = config.param_counts().projector;
        assert_eq!(with_projector.trainable_params(), 11_876_352 + projector);
        assert_eq!(
            weight_bytes(&cuda) - weight_bytes(&with_projector),
            projector * 2
        );
        // Full training: ≈ 16 B/param × 3.03B ≈ 49 GB in f32.
        let full = TrialShape {
            method: Method::Full,
            ..cpu
        };
        assert_near(trainable_state_bytes(&full), 48.5, 0.05, "full f32");
        assert_eq!(weight_bytes(&full), 0);
    }

    /// 3B at 224 px, one sample of 320 tokens, vision tower frozen, no
    /// checkpointing: the per-token counts of `decoder_layer` by hand.
    #[test]
    fn decoder_activations_are_the_kept_tensors() {
        let targets = default_targets();
        let config = PaliGemmaConfig::published(Size::B3, Resolution::R224);
        let (h, mlp, heads, layers) = (2304, 9216, 8 * 256, 26);
        let bf16 = TrialShape {
            freeze_vision: true,
            ..shape(&config, Method::Lora, &targets)
        };
        let (tokens, window) = (bf16.sequence_len(), 32);
        assert_eq!(tokens, 320);
        // bf16: 4 f32 norm inputs, q/k/v (2 B), gate/gelu/up (2 B), and an
        // f32 copy of the input of each of the 7 adapted linears.
        let per_token = 4 * 4 * h + 3 * 2 * heads + 3 * 2 * mlp + 4 * (5 * h + heads + mlp);
        // The last layer: every position through the first norm, k, v and
        // the q/k/v inputs; the 32 supervised positions through the rest.
        let last_all = 4 * h + 2 * 2 * heads + 4 * 3 * h;
        let last_window = 3 * 4 * h + 2 * heads + 3 * 2 * mlp + 4 * (2 * h + heads + mlp);
        let final_norm = 4 * h;
        // The peak is the last layer's backward, with everything kept.
        assert_eq!(
            activation_bytes(&bf16),
            tokens * ((layers - 1) * per_token + last_all) + window * (last_window + final_norm)
        );
        // f32: casts to f32 are no copies, so q/k/v share their input, and
        // so do gate/up.
        let f32 = TrialShape {
            dtype_bytes: 4,
            device: DeviceKind::Cpu,
            ..bf16
        };
        let per_token = 4 * 4 * h + 3 * 4 * heads + 3 * 4 * mlp + 4 * (2 * h + heads + mlp);
        let last_all = 4 * h + 2 * 4 * heads + 4 * h;
        let last_window = 3 * 4 * h + 4 * heads + 3 * 4 * mlp + 4 * (h + heads + mlp);
        assert_eq!(
            activation_bytes(&f32),
            tokens * ((layers - 1) * per_token + last_all) + window * (last_window + final_norm)
        );
        // Scores: tanh (2 B), f32 softmax, probabilities (2 B) in every
        // layer (the last: 32 queries), plus the last layer's softmax
        // backward's two f32 gradients.
        let (scores, last_scores) = (8 * tokens * tokens, 8 * window * tokens);
        let attention = scores * 8 * (layers - 1) + last_scores * (8 + 8);
        assert_eq!(attention_bytes(&bf16), attention);
        assert_eq!(attention_bytes(&f32), attention);
        // QLoRA keeps no dequantised weight (the NF4 layer dequantises
        // again in the backward): its layers keep what LoRA's do, and its
        // frozen weights take a quarter of the space.
        let qlora = TrialShape {
            method: Method::Qlora,
            ..bf16
        };
        assert_eq!(peak_dynamic(&qlora), peak_dynamic(&bf16));
        assert!(estimate_memory(&qlora).total < estimate_memory(&bf16).total);
    }

    #[test]
    fn a_trained_vision_tower_keeps_its_activations_and_scores() {
        let targets = default_targets();
        let config = PaliGemmaConfig::published(Size::B3, Resolution::R224);
        let on = shape(&config, Method::Lora, &targets);
        let off = TrialShape {
            freeze_vision: true,
            ..on
        };
        // Per image token and layer: LayerNorm inputs, q/k/v, fc1 (2 B),
        // f32 copies of the q/k/v inputs; 16 heads × 256 keys of f32
        // softmax and bf16 probabilities.
        let (h, mlp) = (1152, 4304);
        let per_token = 2 * 2 * h + 3 * 2 * h + 2 * mlp + 3 * 4 * h;
        assert_eq!(
            activation_bytes(&on) - activation_bytes(&off),
            27 * 256 * per_token
        );
        assert_eq!(
            attention_bytes(&on) - attention_bytes(&off),
            27 * 16 * 256 * 256 * 6
        );
    }

    /// What the caching allocator keeps: with checkpointing on CUDA the
    /// recomputed decoder layer and vision layer add up; on the CPU only
    /// the larger counts, but heap-served tensors count twice.
    #[test]
    fn allocator_effects_by_device() {
        let targets = default_targets();
        let config = PaliGemmaConfig::published(Size::B3, Resolution::R448);
        let cuda = TrialShape {
            gradient_checkpointing: true,
            ..shape(&config, Method::Qlora, &targets)
        };
        let cpu = TrialShape {
            device: DeviceKind::Cpu,
            ..cuda
        };
        let (on_cuda, on_cpu) = (estimate_memory(&cuda), estimate_memory(&cpu));
        assert!(on_cuda.attention > on_cpu.attention);
        assert_eq!(on_cuda.allocator, 0);
        assert!(on_cpu.allocator > 0);
        // A 2-sample small batch at 224: every tensor is under 32 MiB.
        let small = PaliGemmaConfig::small(Size::B3, Resolution::R224);
        let s = TrialShape {
            dtype_bytes: 4,
            device: DeviceKind::Cpu,
            batch_size: 2,
            ..shape(&small, Method::Lora, &targets)
        };
        let m = estimate_memory(&s);
        assert_eq!(
            m.allocator,
            (m.activations + m.attention) * CPU_HEAP_RETENTION_PERCENT / 100
        );
        // At 896 px batch 4 glibc's mmap serves the large tensors, which its
        // term leaves out; tcmalloc's counts every tensor, at its own rate.
        let large = PaliGemmaConfig::small(Size::B3, Resolution::R896);
        let glibc = TrialShape {
            batch_size: 4,
            dtype_bytes: 4,
            device: DeviceKind::Cpu,
            ..shape(&large, Method::Lora, &targets)
        };
        let tcmalloc = TrialShape {
            allocator: Allocator::Tcmalloc,
            ..glibc
        };
        let (g, t) = (estimate_memory(&glibc), estimate_memory(&tcmalloc));
        assert!(g.allocator < (g.activations + g.attention) * CPU_HEAP_RETENTION_PERCENT / 100);
        assert_eq!(
            t.allocator,
            (t.activations + t.attention) * TCMALLOC_RETENTION_PERCENT / 100
        );
        assert_eq!(t.total - t.allocator, g.total - g.allocator);
    }

    #[test]
    fn monotone_in_batch_size_and_resolution() {
        let targets = default_targets();
        for method in [Method::Lora, Method::Qlora, Method::Full] {
            for size in Size::ALL {
                let totals: Vec<u64> = Resolution::ALL
                    .into_iter()
                    .map(|r| {
                        let config = PaliGemmaConfig::published(size, r);
                        estimate_memory(&shape(&config, method, &targets)).total
                    })
                    .collect();
                assert!(
                    totals.is_sorted() && totals[0] < totals[2],
                    "{size} {method}"
                );
                let config = PaliGemmaConfig::tiny(size, Resolution::R448);
                let totals: Vec<u64> = [1, 2, 4, 8]
                    .into_iter()
                    .map(|batch_size| {
                        let s = TrialShape {
                            batch_size,
                            ..shape(&config, method, &targets)
                        };
                        estimate_memory(&s).total
                    })
                    .collect();
                assert!(totals.windows(2).all(|w| w[0] < w[1]), "{size} {method}");
            }
        }
    }

    /// `QLoRA` keeps no dequantised weight (the NF4 layer dequantises again
    /// in its backward), so it needs less than `LoRA` at every size and
    /// resolution, with and without checkpointing, with either attention,
    /// on both devices. (Before, autograd kept every layer's copy: measured
    /// on the H200, 16.2 vs 14.9 GiB at 3B@224 without checkpointing.)
    #[test]
    fn qlora_needs_less_than_lora_everywhere() {
        let targets = default_targets();
        for size in Size::ALL {
            for resolution in Resolution::ALL {
                for config in [
                    PaliGemmaConfig::published(size, resolution),
                    PaliGemmaConfig::tiny(size, resolution),
                ] {
                    for (checkpointing, attention, device, dtype) in [
                        (false, Attention::Eager, DeviceKind::Cuda, 2),
                        (true, Attention::Eager, DeviceKind::Cuda, 2),
                        (false, Attention::MemoryEfficient, DeviceKind::Cuda, 2),
                        (true, Attention::MemoryEfficient, DeviceKind::Cuda, 2),
                        (false, Attention::MemoryEfficient, DeviceKind::Cpu, 4),
                        (true, Attention::MemoryEfficient, DeviceKind::Cpu, 4),
                    ] {
                        let lora = TrialShape {
                            gradient_checkpointing: checkpointing,
                            attention,
                            device,
                            dtype_bytes: dtype,
                            ..shape(&config, Method::Lora, &targets)
                        };
                        let qlora = TrialShape {
                            method: Method::Qlora,
                            ..lora
                        };
                        assert!(
                            estimate_memory(&qlora).total < estimate_memory(&lora).total,
                            "{size}@{resolution} {attention:?} {device:?} gc {checkpointing}"
                        );
                    }
                }
            }
        }
    }

    /// Memory-efficient attention keeps none of the scores: at 896 px its
    /// estimate is a fraction of eager's, and the difference is the
    /// scores eager keeps.
    #[test]
    fn memory_efficient_attention_keeps_no_scores() {
        let targets = default_targets();
        let config = PaliGemmaConfig::published(Size::B3, Resolution::R896);
        let eager = TrialShape {
            batch_size: 4,
            ..shape(&config, Method::Lora, &targets)
        };
        let efficient = TrialShape {
            attention: Attention::MemoryEfficient,
            ..eager
        };
        let (e, m) = (estimate_memory(&eager), estimate_memory(&efficient));
        assert!(
            m.attention * 100 < e.attention,
            "{} vs {}",
            m.attention,
            e.attention
        );
        assert!(
            m.total * 3 < e.total,
            "{} vs {} GiB",
            m.total >> 30,
            e.total >> 30
        );
        // What remains of attention is one chunk's transient: bounded by the
        // chunk budget, not by the sequence.
        assert!(m.attention < (CUDA_CHUNK_ELEMENTS.unsigned_abs() * 16) + (1 << 30));
    }

    #[test]
    fn freezing_vision_and_checkpointing_reduce_activations() {
        let targets = default_targets();
        let lm_only: Vec<String> = ["o_proj", "gate_proj"].map(String::from).to_vec();
        for resolution in Resolution::ALL {
            let config = PaliGemmaConfig::published(Size::B3, resolution);
            let base = shape(&config, Method::Lora, &targets);
            assert!(base.trains_vision());
            let frozen = TrialShape {
                freeze_vision: true,
                ..base
            };
            assert!(activation_bytes(&frozen) < activation_bytes(&base));
            // Targets that miss SigLIP leave it untrained even when unfrozen.
            let missed = TrialShape {
                lora_targets: &lm_only,
                ..base
            };
            assert!(!missed.trains_vision());
            let missed_frozen = TrialShape {
                freeze_vision: true,
                ..missed
            };
            assert_eq!(activation_bytes(&missed), activation_bytes(&missed_frozen));

            let checkpointed = TrialShape {
                gradient_checkpointing: true,
                ..base
            };
            assert!(activation_bytes(&checkpointed) < activation_bytes(&base));
            assert!(attention_bytes(&checkpointed) < attention_bytes(&base));
            assert_eq!(
                weight_bytes(&checkpointed) + trainable_state_bytes(&checkpointed),
                weight_bytes(&base) + trainable_state_bytes(&base)
            );
        }
    }

    #[test]
    fn soft_capping_keeps_a_tanh_per_score_and_logits_only_at_suffix() {
        let targets = default_targets();
        let mut config = PaliGemmaConfig::published(Size::B3, Resolution::R224);
        let s = TrialShape {
            freeze_vision: true,
            ..shape(&config, Method::Lora, &targets)
        };
        // 32 supervised positions × 257216 × (2 + 4 + 4) bytes.
        assert_eq!(logit_bytes(&s), 32 * 257_216 * 10);
        let capped = attention_bytes(&s);
        // Without the cap the decoder is still eager: softmax and
        // probabilities stay, the tanh goes.
        config.text_config.attn_logit_softcapping = None;
        let s = TrialShape {
            freeze_vision: true,
            ..shape(&config, Method::Lora, &targets)
        };
        let (scores, last_scores) = (8 * 320 * 320, 8 * 32 * 320);
        assert_eq!(
            capped - attention_bytes(&s),
            (25 * scores + last_scores) * 2
        );
    }

    #[test]
    fn tiny_cpu_trial_is_small_and_dominated_by_the_runtime() {
        let targets = default_targets();
        let config = PaliGemmaConfig::tiny(Size::B3, Resolution::R224);
        let s = TrialShape {
            dtype_bytes: 4,
            device: DeviceKind::Cpu,
            batch_size: 4,
            ..shape(&config, Method::Lora, &targets)
        };
        let m = estimate_memory(&s);
        assert_eq!(m.overhead, CPU_RUNTIME_OVERHEAD);
        assert_eq!(
            m.total,
            m.weights
                + m.trainable_state
                + m.activations
                + m.attention
                + m.logits
                + m.overhead
                + m.allocator
        );
        assert!(m.weights > 0 && m.trainable_state > 0 && m.activations > 0);
        assert!(m.total < CPU_RUNTIME_OVERHEAD + 64 * MIB, "{m:?}");
    }
}

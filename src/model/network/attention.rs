//! How attention is computed, in both towers (`model.attention`).
//!
//! `Eager` is transformers' eager path, op for op: the reference the golden
//! tests pin. It keeps the `[B, heads, Lq, Lk]` scores and probabilities of
//! every layer for the backward pass. `MemoryEfficient` (the default) keeps
//! none: the decoder runs the same ops over chunks of queries in a custom
//! autograd function whose backward recomputes each chunk
//! (`csrc/kernels.cpp`); `SigLIP` (no mask, no soft-cap) uses torch's fused
//! `scaled_dot_product_attention` on CUDA and the same chunked function on
//! the CPU, where the fused kernel rounds differently from transformers'
//! eager path (see `siglip.rs`).

use tch::{Device, Kind};

use crate::model::network::kernels;

/// The user's choice (`model.attention`). Without the C++ kernels (a build
/// without libtorch's headers), memory-efficient falls back to eager on the
/// CPU.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum AttentionMode {
    /// transformers' eager path (reference, fallback).
    Eager,
    /// No `[B, heads, Lq, Lk]` tensor kept for the backward pass (scores
    /// under [`KEEP_SCORES_BELOW`] elements excepted: they are kept).
    #[default]
    MemoryEfficient,
    /// Chunks at every size (tests of the kernel through the model).
    AlwaysChunked,
}

/// How one tower computes its attention.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttentionImpl {
    Eager,
    /// Query chunks through `csrc/kernels.cpp`, for scores over
    /// `keep_below` elements (smaller ones run the eager ops).
    Chunked {
        keep_below: i64,
    },
    /// torch's fused `scaled_dot_product_attention` (no mask, no soft-cap).
    Sdpa,
}

impl AttentionMode {
    /// The decoder's implementation: soft-capping rules out torch's fused
    /// kernels, so memory-efficient means chunked.
    pub fn decoder(self) -> AttentionImpl {
        match self {
            _ if !kernels::available() => AttentionImpl::Eager,
            AttentionMode::Eager => AttentionImpl::Eager,
            AttentionMode::MemoryEfficient => AttentionImpl::Chunked {
                keep_below: KEEP_SCORES_BELOW,
            },
            AttentionMode::AlwaysChunked => AttentionImpl::Chunked { keep_below: 0 },
        }
    }

    /// The vision tower's implementation on `device`.
    pub fn vision(self, device: Device) -> AttentionImpl {
        match (self, device) {
            (AttentionMode::Eager, _) => AttentionImpl::Eager,
            (AttentionMode::MemoryEfficient, Device::Cuda(_)) => AttentionImpl::Sdpa,
            _ => self.decoder(),
        }
    }
}

/// `torch.finfo(kind).min`, the additive "masked" value transformers uses.
pub fn dtype_min(kind: Kind) -> f64 {
    match kind {
        Kind::BFloat16 => -3.389_531_389_251_535_5e38,
        Kind::Half => -65504.0,
        Kind::Double => f64::MIN,
        _ => f64::from(f32::MIN),
    }
}

/// Scores a chunk of queries may hold (elements over batch and heads). On
/// the CPU, chunks whose f32 tensors (4 MiB) stay in cache: measured on the
/// `small` preset at 448 px (batch 2, 2 threads), a step took 810 ms with
/// 1 Mi elements, 970 ms with 256 Ki and 977 ms with 4 Mi, against 1155 ms
/// eager. On CUDA, fewer and larger products (16 Mi elements, ~64 MiB per
/// f32 tensor) keep the device busy.
pub const CPU_CHUNK_ELEMENTS: i64 = 1 << 20;
pub const CUDA_CHUNK_ELEMENTS: i64 = 1 << 24;

/// Score tensors up to this many elements (over batch and heads: 16 MiB in
/// f32) are cheaper kept than recomputed: the memory-efficient path runs
/// the eager ops there. Measured on the `small` preset at 224 px (batch 4 ×
/// 279 tokens, 1.25 Mi scores a layer): 237–250 ms a step eager against
/// 259–273 ms chunked; at 448 px (8.8 Mi) chunks win, 810 against 1155 ms (commands in docs/benchmarks.md).
pub const KEEP_SCORES_BELOW: i64 = 1 << 22;

/// Whether `implementation` runs chunks for a layer of `scores` score
/// elements (batch × heads × queries × keys); not when they are small
/// enough to keep (see [`KEEP_SCORES_BELOW`]).
pub fn chunked(implementation: AttentionImpl, scores: i64) -> bool {
    match implementation {
        AttentionImpl::Chunked { keep_below } => scores > keep_below,
        _ => false,
    }
}

/// Score elements one chunk holds on `device`.
pub fn chunk_elements(device: Device) -> i64 {
    match device {
        Device::Cuda(_) => CUDA_CHUNK_ELEMENTS,
        _ => CPU_CHUNK_ELEMENTS,
    }
}

/// Query rows per chunk on `device` for `batch × heads` rows of `k_len` keys.
pub fn chunk_rows(device: Device, batch: i64, heads: i64, q_len: i64, k_len: i64) -> i64 {
    (chunk_elements(device) / (batch * heads * k_len).max(1)).clamp(1, q_len.max(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_bound_the_scores_and_cover_short_sequences_at_once() {
        let cpu = Device::Cpu;
        assert_eq!(chunk_rows(cpu, 1, 8, 300, 300), 300);
        let rows = chunk_rows(cpu, 2, 8, 1047, 1047);
        assert!(
            rows * 2 * 8 * 1047 <= CPU_CHUNK_ELEMENTS && rows >= 60,
            "{rows}"
        );
        let rows = chunk_rows(Device::Cuda(0), 4, 8, 4160, 4160);
        assert!(
            rows * 4 * 8 * 4160 <= CUDA_CHUNK_ELEMENTS && rows >= 100,
            "{rows}"
        );
        assert_eq!(chunk_rows(cpu, 1 << 20, 1 << 10, 10, 1 << 10), 1);
    }

    #[test]
    fn small_scores_are_kept_rather_than_recomputed() {
        let efficient = AttentionMode::MemoryEfficient.decoder();
        assert!(!chunked(efficient, 4 * 4 * 279 * 279));
        assert!(chunked(efficient, 2 * 4 * 1047 * 1047));
        assert!(chunked(AttentionMode::AlwaysChunked.decoder(), 4));
        assert!(!chunked(AttentionImpl::Eager, 2 * 4 * 1047 * 1047));
    }

    #[test]
    fn the_decoder_never_takes_the_fused_kernel() {
        assert!(matches!(
            AttentionMode::MemoryEfficient.decoder(),
            AttentionImpl::Chunked { .. }
        ));
        assert_eq!(
            AttentionMode::MemoryEfficient.vision(Device::Cuda(0)),
            AttentionImpl::Sdpa
        );
        assert!(matches!(
            AttentionMode::MemoryEfficient.vision(Device::Cpu),
            AttentionImpl::Chunked { .. }
        ));
        assert_eq!(
            AttentionMode::Eager.vision(Device::Cuda(0)),
            AttentionImpl::Eager
        );
    }
}

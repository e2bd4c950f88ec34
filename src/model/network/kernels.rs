//! Safe wrappers over the custom autograd functions of `csrc/kernels.cpp`,
//! which build.rs compiles against libtorch's headers (tch has no custom
//! autograd): chunked attention whose backward recomputes, and the NF4
//! linear layer whose backward dequantises again. Both keep, between
//! forward and backward, only what they were given (q, k, v and the
//! pass's mask; the packed NF4 weight), never a tensor of the attention's
//! `[B, heads, Lq, Lk]` or the layer's dense weight.
#![allow(unsafe_code)]

use std::ffi::c_void;

use tch::{TchError, Tensor};

use crate::model::adapt::nf4::Nf4Inputs;
#[cfg(palisweep_kernels)]
use crate::model::network::attention::dtype_min;

/// Whether the kernels were compiled in (build.rs found libtorch's headers).
pub const fn available() -> bool {
    cfg!(palisweep_kernels)
}

/// `softmax(cap(q·kᵀ·scaling) + mask, f32)·v` over query chunks of `chunk`
/// rows: q `[B, Hq, Lq, D]`, k and v `[B, Hkv, Lk, D]` (grouped-query
/// attention when `Hkv < Hq`); `blocked` `[B, 1, Lq, Lk]` (bool) is where
/// the mask holds `finfo(kind).min`, none when `None` (`SigLIP`).
pub fn chunked_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    blocked: Option<&Tensor>,
    scaling: f64,
    softcap: Option<f64>,
    chunk: i64,
) -> Result<Tensor, TchError> {
    #[cfg(palisweep_kernels)]
    {
        let mut out: *mut c_void = std::ptr::null_mut();
        let ptr = |t: &Tensor| t.as_ptr().cast::<c_void>();
        let masked = dtype_min(q.f_kind()?);
        // SAFETY: every pointer is a live tch tensor (an `at::Tensor*`)
        // borrowed for the call, or null where the C++ side accepts null; on
        // success `out` is a new `at::Tensor*` whose ownership passes to the
        // returned `Tensor` (tch frees it on drop).
        let status = unsafe {
            ffi::palisweep_chunked_attention(
                ptr(q),
                ptr(k),
                ptr(v),
                blocked.map_or(std::ptr::null(), ptr),
                scaling,
                softcap.unwrap_or(0.0),
                masked,
                chunk,
                &raw mut out,
            )
        };
        finish(status, out)
    }
    #[cfg(not(palisweep_kernels))]
    {
        let _ = (q, k, v, blocked, scaling, softcap, chunk);
        Err(not_built())
    }
}

/// `x·Wᵀ + b` with W dequantised from `w` in `x`'s dtype, keeping only the
/// packed weight for the backward pass (which returns the input's and, when
/// it trains, the bias's gradient; the NF4 weight is frozen).
pub fn nf4_linear(x: &Tensor, w: &Nf4Inputs, bias: Option<&Tensor>) -> Result<Tensor, TchError> {
    #[cfg(palisweep_kernels)]
    {
        let null = std::ptr::null::<c_void>();
        let mut out: *mut c_void = std::ptr::null_mut();
        let ptr = |t: &Tensor| t.as_ptr().cast::<c_void>();
        // SAFETY: as in `chunked_attention`.
        let status = unsafe {
            ffi::palisweep_nf4_linear(
                ptr(x),
                ptr(&w.packed),
                ptr(&w.byte_lut),
                ptr(&w.absmax),
                w.double.as_ref().map_or(null, |(map, _, _)| ptr(map)),
                w.double.as_ref().map_or(null, |(_, nested, _)| ptr(nested)),
                bias.map_or(null, ptr),
                w.double
                    .as_ref()
                    .map_or(0.0, |(_, _, offset)| f64::from(*offset)),
                w.nested_block,
                w.rows,
                w.cols,
                w.block,
                &raw mut out,
            )
        };
        finish(status, out)
    }
    #[cfg(not(palisweep_kernels))]
    {
        let _ = (x, w, bias);
        Err(not_built())
    }
}

#[cfg(palisweep_kernels)]
fn finish(status: i32, out: *mut c_void) -> Result<Tensor, TchError> {
    checked(status)?;
    if out.is_null() {
        return Err(TchError::Torch(
            "a C++ kernel returned no tensor".to_owned(),
        ));
    }
    // SAFETY: `out` is a new `at::Tensor*` that nothing else owns.
    Ok(unsafe { Tensor::from_ptr(out.cast()) })
}

/// A `csrc/kernels.cpp` entry point's status as a result: its C++
/// exception's message on failure (every entry point of that file).
#[cfg(palisweep_kernels)]
pub(crate) fn checked(status: i32) -> Result<(), TchError> {
    if status == 0 {
        return Ok(());
    }
    // SAFETY: a NUL-terminated string owned by the C++ side's thread-local.
    let message = unsafe { std::ffi::CStr::from_ptr(ffi::palisweep_kernel_error()) };
    Err(TchError::Torch(message.to_string_lossy().into_owned()))
}

#[cfg(not(palisweep_kernels))]
fn not_built() -> TchError {
    TchError::Torch(
        "palisweep was built without its C++ kernels (LIBTORCH unset): use model.attention = \"eager\""
            .to_owned(),
    )
}

#[cfg(palisweep_kernels)]
mod ffi {
    use std::ffi::{c_char, c_void};

    unsafe extern "C" {
        pub fn palisweep_kernel_error() -> *const c_char;
        #[allow(clippy::too_many_arguments)]
        pub fn palisweep_chunked_attention(
            q: *const c_void,
            k: *const c_void,
            v: *const c_void,
            blocked: *const c_void,
            scaling: f64,
            softcap: f64,
            masked: f64,
            chunk: i64,
            out: *mut *mut c_void,
        ) -> i32;
        #[allow(clippy::too_many_arguments)]
        pub fn palisweep_nf4_linear(
            x: *const c_void,
            packed: *const c_void,
            byte_lut: *const c_void,
            absmax: *const c_void,
            dynamic_map: *const c_void,
            nested_absmax: *const c_void,
            bias: *const c_void,
            offset: f64,
            nested_block: i64,
            rows: i64,
            cols: i64,
            block: i64,
            out: *mut *mut c_void,
        ) -> i32;
    }
}

#[cfg(test)]
#[allow(clippy::many_single_char_names)] // q, k, v and the usual dimension names
mod tests {
    use tch::{Device, Kind, Tensor};

    use super::*;
    use crate::model::network::gemma2::{prefix_lm_blocked, prefix_lm_mask};

    /// The eager computation of gemma2.rs, written out: the reference.
    fn eager(
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        mask: Option<&Tensor>,
        scaling: f64,
        softcap: Option<f64>,
    ) -> Tensor {
        let n_rep = q.size()[1] / k.size()[1];
        let (b, h, l, d) = k.size4().unwrap();
        let repeat = |t: &Tensor| {
            t.unsqueeze(2)
                .expand([b, h, n_rep, l, d], false)
                .reshape([b, h * n_rep, l, d])
        };
        let mut scores = q.matmul(&repeat(k).transpose(2, 3)) * scaling;
        if let Some(cap) = softcap {
            scores = (scores / cap).tanh() * cap;
        }
        if let Some(mask) = mask {
            scores += mask;
        }
        scores
            .softmax(-1, Kind::Float)
            .to_kind(q.kind())
            .matmul(&repeat(v))
    }

    fn leaf(shape: &[i64], seed: i64) -> Tensor {
        tch::manual_seed(seed);
        Tensor::randn(shape, (Kind::Float, Device::Cpu)).set_requires_grad(true)
    }

    fn rel_diff(a: &Tensor, b: &Tensor) -> f64 {
        let scale = b.abs().max().double_value(&[]).max(1e-12);
        (a - b).abs().max().double_value(&[]) / scale
    }

    /// Outputs and the gradients of q, k and v, chunked vs eager, in f32:
    /// at most 1e-4 relative (measured: ~1e-7). `mask`: the key mask, the
    /// prefix, the first query's index and the sliding window.
    fn check(
        heads: (i64, i64),
        (q_len, k_len): (i64, i64),
        mask: Option<(&Tensor, Option<&Tensor>, i64, Option<i64>)>,
        softcap: Option<f64>,
        chunk: i64,
    ) {
        let (b, d) = (2, 8);
        let q = leaf(&[b, heads.0, q_len, d], 1);
        let k = leaf(&[b, heads.1, k_len, d], 2);
        let v = leaf(&[b, heads.1, k_len, d], 3);
        let upstream = leaf(&[b, heads.0, q_len, d], 4).detach();
        let blocked = mask.map(|(key_mask, prefix, q_start, window)| {
            prefix_lm_blocked(key_mask, prefix, q_start, q_len, window).unwrap()
        });
        let dense = mask.map(|(key_mask, prefix, q_start, window)| {
            prefix_lm_mask(key_mask, prefix, q_start, q_len, window, Kind::Float).unwrap()
        });
        let grads = |out: &Tensor| {
            let g = Tensor::run_backward(&[out * &upstream], &[&q, &k, &v], false, false);
            g.iter().map(Tensor::copy).collect::<Vec<_>>()
        };
        let reference = eager(&q, &k, &v, dense.as_ref(), 0.3, softcap);
        let chunked = chunked_attention(&q, &k, &v, blocked.as_ref(), 0.3, softcap, chunk).unwrap();
        let diff = rel_diff(&chunked, &reference);
        assert!(diff <= 1e-4, "output: {diff:e}");
        for (name, (a, b)) in ["q", "k", "v"]
            .iter()
            .zip(grads(&chunked).iter().zip(&grads(&reference)))
        {
            let diff = rel_diff(a, b);
            assert!(diff <= 1e-4, "d{name}: {diff:e}");
        }
    }

    #[test]
    fn chunks_give_the_eager_outputs_and_gradients_with_the_prefix_lm_mask() {
        // Row 0: 3 prefix, 3 suffix, 1 pad; row 1: 2 left pads, 4 prefix, 1 suffix.
        let am = Tensor::from_slice(&[1i64, 1, 1, 1, 1, 1, 0, 0, 0, 1, 1, 1, 1, 1]).view([2, 7]);
        let tt = Tensor::from_slice(&[0i64, 0, 0, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 1]).view([2, 7]);
        let prefix = tt.eq(0);
        for chunk in [1, 3, 7] {
            // Global and sliding-window layers, grouped-query (4 over 2), soft-capped.
            check(
                (4, 2),
                (7, 7),
                Some((&am, Some(&prefix), 0, None)),
                Some(5.0),
                chunk,
            );
            check(
                (4, 2),
                (7, 7),
                Some((&am, Some(&prefix), 0, Some(2))),
                Some(5.0),
                chunk,
            );
        }
    }

    #[test]
    fn chunks_give_the_eager_results_for_a_window_of_queries_and_for_decoding() {
        let am = Tensor::ones([2, 9], (Kind::Int64, Device::Cpu));
        let prefix = Tensor::from_slice(&[true; 4])
            .view([1, 4])
            .pad([0, 5], "constant", Some(0.0))
            .expand([2, 9], false)
            .contiguous();
        // The last layer's query window: queries 5..8 over 9 keys.
        check((2, 2), (3, 9), Some((&am, Some(&prefix), 5, None)), None, 2);
        // Decoding: one query at index 8 over a cache of 9 keys, a window of 3.
        check((4, 1), (1, 9), Some((&am, None, 8, Some(3))), Some(5.0), 1);
    }

    #[test]
    fn chunks_give_the_eager_results_without_a_mask() {
        // SigLIP: bidirectional, no soft-cap.
        check((3, 3), (10, 10), None, None, 4);
    }

    /// As the model calls it: q, k and v are `[B, H, L, D]` views of
    /// `[B, L, H, D]` projections (which the kernel copies once, not per
    /// chunk); the gradients reach the projections.
    #[test]
    fn views_of_the_projections_give_the_eager_results() {
        let (b, l, d) = (3, 9, 8);
        let q = leaf(&[b, l, 4, d], 1);
        let k = leaf(&[b, l, 2, d], 2);
        let v = leaf(&[b, l, 2, d], 3);
        let upstream = leaf(&[b, 4, l, d], 4).detach();
        let heads = |t: &Tensor| t.transpose(1, 2);
        let grads = |out: &Tensor| {
            let g = Tensor::run_backward(&[out * &upstream], &[&q, &k, &v], false, false);
            g.iter().map(Tensor::copy).collect::<Vec<_>>()
        };
        let reference = eager(&heads(&q), &heads(&k), &heads(&v), None, 0.3, Some(5.0));
        let chunked =
            chunked_attention(&heads(&q), &heads(&k), &heads(&v), None, 0.3, Some(5.0), 2).unwrap();
        assert!(rel_diff(&chunked, &reference) <= 1e-4);
        for (name, (a, b)) in ["q", "k", "v"]
            .iter()
            .zip(grads(&chunked).iter().zip(&grads(&reference)))
        {
            let diff = rel_diff(a, b);
            assert!(diff <= 1e-4, "d{name}: {diff:e}");
        }
    }

    /// The NF4 layer gives the dense path's output bit for bit, and its
    /// input and bias gradients.
    #[test]
    fn the_nf4_linear_equals_the_dequantised_weight_forward_and_backward() {
        use crate::model::adapt::nf4::Nf4Tensor;
        for double_quant in [false, true] {
            // 40 × 50 = 2000 weights: blocks of 64 leave a partial last block.
            let weight = leaf(&[40, 50], 5).detach();
            let nf4 = Nf4Tensor::quantize(&weight, 64, double_quant).unwrap();
            let bias = leaf(&[40], 6);
            let x = leaf(&[3, 4, 50], 7);
            let upstream = leaf(&[3, 4, 40], 8).detach();
            let dense = x.linear(&nf4.dequantize(Kind::Float).unwrap(), Some(&bias));
            let kernel = nf4_linear(&x, &nf4.kernel_inputs().unwrap(), Some(&bias)).unwrap();
            assert!(kernel.equal(&dense), "forward, double_quant {double_quant}");
            let grads =
                |out: &Tensor| Tensor::run_backward(&[out * &upstream], &[&x, &bias], false, false);
            for (a, b) in grads(&kernel).iter().zip(&grads(&dense)) {
                let diff = rel_diff(a, b);
                assert!(diff <= 1e-6, "gradient differs by {diff:e}");
            }
        }
    }

    #[test]
    fn errors_from_libtorch_come_back_as_errors() {
        let q = Tensor::zeros([1, 2, 3, 4], (Kind::Float, Device::Cpu));
        let k = Tensor::zeros([1, 2, 3, 5], (Kind::Float, Device::Cpu));
        let err = chunked_attention(&q, &k, &k, None, 1.0, None, 2).unwrap_err();
        assert!(err.to_string().contains("size"), "{err}");
    }
}

//! The optimiser's multi-tensor operations (`csrc/kernels.cpp`): `AdamW`'s
//! step, gradient clipping and zero-grad over every trained tensor at once,
//! through torch's `_foreach_*` ops, which tch does not expose. Each is a
//! fixed number of `ATen` operations whatever the number of tensors (on CUDA,
//! each a kernel over all of them), where a loop in Rust issued a few per
//! tensor: over 500 tensors for 3B with `LoRA` on both towers.
#![allow(unsafe_code)]

use std::ffi::c_void;

use tch::{TchError, Tensor};

#[cfg(palisweep_kernels)]
use crate::model::network::kernels::checked;

/// The hyper-parameters of one `AdamW` update (bias corrections included).
#[derive(Clone, Copy, Debug)]
pub struct AdamWStep {
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
    /// `1 − β₁ᵗ` and `1 − β₂ᵗ`.
    pub bias1: f64,
    pub bias2: f64,
}

/// One trained tensor as the step sees it.
pub struct StepTensor<'a> {
    pub value: &'a Tensor,
    /// The f32 master of a lower-precision `value`.
    pub master: Option<&'a Tensor>,
    pub exp_avg: &'a Tensor,
    pub exp_avg_sq: &'a Tensor,
    pub decay: bool,
}

fn ptr(t: &Tensor) -> *mut c_void {
    t.as_ptr().cast::<c_void>().cast_mut()
}

/// Updates every tensor whose gradient is defined.
pub fn adamw_step(tensors: &[StepTensor], step: AdamWStep) -> Result<(), TchError> {
    let values: Vec<_> = tensors.iter().map(|t| ptr(t.value)).collect();
    let masters: Vec<_> = tensors
        .iter()
        .map(|t| t.master.map_or(std::ptr::null_mut(), ptr))
        .collect();
    let exp_avg: Vec<_> = tensors.iter().map(|t| ptr(t.exp_avg)).collect();
    let exp_avg_sq: Vec<_> = tensors.iter().map(|t| ptr(t.exp_avg_sq)).collect();
    let decay: Vec<u8> = tensors.iter().map(|t| u8::from(t.decay)).collect();
    #[cfg(palisweep_kernels)]
    {
        // SAFETY: five arrays of `len` entries; every non-null pointer is a
        // live tch tensor (`at::Tensor*`) borrowed for the call; the C++ side
        // catches every exception.
        let status = unsafe {
            ffi::palisweep_adamw_step(
                values.as_ptr(),
                masters.as_ptr(),
                exp_avg.as_ptr(),
                exp_avg_sq.as_ptr(),
                decay.as_ptr(),
                len(&values),
                step.lr,
                step.beta1,
                step.beta2,
                step.eps,
                step.weight_decay,
                step.bias1,
                step.bias2,
            )
        };
        checked(status)
    }
    #[cfg(not(palisweep_kernels))]
    {
        let _ = (values, masters, exp_avg, exp_avg_sq, decay, step);
        Err(not_built())
    }
}

/// The global L2 norm of the defined gradients (before clipping), scaling
/// them to `max_norm` when it is positive and exceeded.
pub fn clip_grad_norm(values: &[&Tensor], max_norm: f64) -> Result<f64, TchError> {
    let values: Vec<_> = values.iter().map(|t| ptr(t)).collect();
    #[cfg(palisweep_kernels)]
    {
        let mut norm = 0.0;
        // SAFETY: as in `adamw_step`; `norm` is written on success.
        let status = unsafe {
            ffi::palisweep_clip_grad_norm(values.as_ptr(), len(&values), max_norm, &raw mut norm)
        };
        checked(status).map(|()| norm)
    }
    #[cfg(not(palisweep_kernels))]
    {
        let _ = (values, max_norm);
        Err(not_built())
    }
}

/// Drops every gradient (`set_to_none`: no kernel; the next backward writes
/// fresh gradients instead of adding to zeros, the same values).
pub fn zero_grad(values: &[&Tensor]) -> Result<(), TchError> {
    let values: Vec<_> = values.iter().map(|t| ptr(t)).collect();
    #[cfg(palisweep_kernels)]
    {
        // SAFETY: as in `adamw_step`.
        checked(unsafe { ffi::palisweep_zero_grad(values.as_ptr(), len(&values)) })
    }
    #[cfg(not(palisweep_kernels))]
    {
        let _ = values;
        Err(not_built())
    }
}

/// The number of `ATen` operations `f` dispatches on this thread (top level:
/// not those a composite operation runs inside it), with its result.
#[cfg(palisweep_kernels)]
pub fn count_ops<T>(f: impl FnOnce() -> T) -> (T, i64) {
    // SAFETY: thread-local bookkeeping in libtorch's RecordFunction callbacks.
    unsafe { ffi::palisweep_count_ops_start() };
    let out = f();
    // SAFETY: as above.
    let count = unsafe { ffi::palisweep_count_ops_stop() };
    (out, count)
}

#[cfg(palisweep_kernels)]
fn len(values: &[*mut c_void]) -> i64 {
    i64::try_from(values.len()).unwrap_or(i64::MAX)
}

#[cfg(not(palisweep_kernels))]
fn not_built() -> TchError {
    TchError::Torch("palisweep was built without its C++ kernels (LIBTORCH unset)".to_owned())
}

#[cfg(palisweep_kernels)]
mod ffi {
    use std::ffi::c_void;

    unsafe extern "C" {
        #[allow(clippy::too_many_arguments)]
        pub fn palisweep_adamw_step(
            values: *const *mut c_void,
            masters: *const *mut c_void,
            exp_avg: *const *mut c_void,
            exp_avg_sq: *const *mut c_void,
            decay: *const u8,
            n: i64,
            lr: f64,
            beta1: f64,
            beta2: f64,
            eps: f64,
            weight_decay: f64,
            bias1: f64,
            bias2: f64,
        ) -> i32;
        pub fn palisweep_clip_grad_norm(
            values: *const *mut c_void,
            n: i64,
            max_norm: f64,
            norm: *mut f64,
        ) -> i32;
        pub fn palisweep_zero_grad(values: *const *mut c_void, n: i64) -> i32;
        pub fn palisweep_count_ops_start();
        pub fn palisweep_count_ops_stop() -> i64;
    }
}

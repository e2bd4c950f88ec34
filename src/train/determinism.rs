//! torch's deterministic algorithms, for reruns that must reproduce a trial
//! on CUDA (on the CPU our kernels are deterministic already). tch has no
//! binding for `at::globalContext().setDeterministicAlgorithms`, so build.rs
//! compiles a three-function C++ shim (`csrc/determinism.cpp`); this module
//! is its only caller. (The crate's other `unsafe` is the memory map of
//! safetensors files in `model/checkpoint/weights.rs`.)
//!
//! cuBLAS also needs `CUBLAS_WORKSPACE_CONFIG=:4096:8` in the environment
//! before its first handle exists: whoever starts the worker sets it
//! ([`CUBLAS_WORKSPACE_CONFIG`]).
#![allow(unsafe_code)]

/// The environment cuBLAS needs for reproducible results (torch's
/// reproducibility notes); read when the first cuBLAS handle is created.
pub const CUBLAS_WORKSPACE_CONFIG: (&str, &str) = ("CUBLAS_WORKSPACE_CONFIG", ":4096:8");

#[derive(Debug, thiserror::Error)]
pub enum DeterminismError {
    #[error("libtorch refused to switch on deterministic algorithms")]
    Refused,
    #[error(
        "this palisweep was built without the determinism shim (LIBTORCH was not set when it was built)"
    )]
    NotBuilt,
}

/// What libtorch reports about its determinism switches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeterminismState {
    pub algorithms: bool,
    pub cudnn: bool,
}

#[cfg(palisweep_determinism)]
mod shim {
    use std::os::raw::c_int;

    unsafe extern "C" {
        fn palisweep_set_deterministic(warn_only: c_int) -> c_int;
        fn palisweep_deterministic_algorithms() -> c_int;
        fn palisweep_deterministic_cudnn() -> c_int;
    }

    pub fn set(warn_only: bool) -> bool {
        // SAFETY: takes an int, touches only libtorch's global context,
        // catches every C++ exception.
        unsafe { palisweep_set_deterministic(c_int::from(warn_only)) == 0 }
    }

    pub fn algorithms() -> bool {
        // SAFETY: a getter on libtorch's global context.
        unsafe { palisweep_deterministic_algorithms() != 0 }
    }

    pub fn cudnn() -> bool {
        // SAFETY: a getter on libtorch's global context.
        unsafe { palisweep_deterministic_cudnn() != 0 }
    }
}

/// Switches on deterministic algorithms, deterministic cuDNN and no cuDNN
/// autotuning for this process. Warn-only: an op with no deterministic
/// kernel warns on stderr rather than aborting the run, and the rerun's
/// stated tolerance covers it.
pub fn enable() -> Result<DeterminismState, DeterminismError> {
    #[cfg(palisweep_determinism)]
    {
        if !shim::set(true) {
            return Err(DeterminismError::Refused);
        }
        Ok(state())
    }
    #[cfg(not(palisweep_determinism))]
    Err(DeterminismError::NotBuilt)
}

/// The switches as libtorch sees them now.
pub fn state() -> DeterminismState {
    #[cfg(palisweep_determinism)]
    {
        DeterminismState {
            algorithms: shim::algorithms(),
            cudnn: shim::cudnn(),
        }
    }
    #[cfg(not(palisweep_determinism))]
    DeterminismState {
        algorithms: false,
        cudnn: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// libtorch's switches are process-wide: switching them on runs alone.
    #[test]
    fn enable_switches_libtorch_into_deterministic_mode() {
        if !crate::test_support::alone(
            "train::determinism::tests::enable_switches_libtorch_into_deterministic_mode",
        ) {
            return;
        }
        assert_eq!(
            state(),
            DeterminismState {
                algorithms: false,
                cudnn: false
            },
            "libtorch starts non-deterministic"
        );
        let state = enable().unwrap();
        assert!(state.algorithms && state.cudnn, "{state:?}");
        assert_eq!(super::state(), state);
    }
}

//! Architecture-derived estimates of a trial's peak device memory and relative training cost.
pub mod activations;
#[cfg(test)]
mod calibration;
pub mod cost;
pub mod memory;

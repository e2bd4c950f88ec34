//! `palisweep bench`: throughput, peak memory and FLOP utilisation of
//! training steps and forward-only evaluation on random checkpoints.
pub mod checkpoint;
pub mod gpu_memory;
pub mod run;

//! `palisweep run`: the scheduler. [`prepare`] turns a spec into queued
//! trials; the [`dispatcher`] (one `select!` loop) owns the queue, the
//! devices ([`slots`]) and the running workers; the [`executor`] only
//! starts and watches worker processes; every consumer (store, TensorBoard,
//! [`progress`]) sees only the [`event::SweepEvent`] stream, through
//! [`sinks::Fanout`].
pub mod dispatcher;
pub mod event;
pub mod executor;
pub mod fate;
pub mod memory_probe;
pub mod prepare;
pub mod progress;
pub mod pruner;
pub mod sinks;
pub mod slots;
pub mod slurm;
pub mod trial_record;

//! `palisweep run`: the scheduler. [`prepare`] turns a spec into queued
//! trials; the [`dispatcher`] (one `select!` loop) owns the queue, the
//! devices ([`slots`]) and the running workers; the [`executor`] only
//! starts and watches worker processes. Its only output is the
//! [`crate::events`] stream, which the consumers under `track/` receive.
pub mod adaptive;
pub mod budget_gate;
pub mod dispatcher;
pub mod executor;
pub mod fate;
pub mod memory_probe;
pub mod oom_killer;
pub mod prepare;
pub mod promotions;
pub mod pruner;
pub mod queue;
pub mod reconcile;
pub mod slots;
pub mod slurm;
pub mod suggest;
pub mod trial_record;

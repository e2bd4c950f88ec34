//! Training: the pieces the worker's loop is built from, and the loop.
pub mod adapt_plan;
pub mod checkpoint;
pub mod determinism;
pub mod evaluate;
pub mod learner;
pub mod multi_tensor;
pub mod optim;
pub mod perf;
pub mod schedule;

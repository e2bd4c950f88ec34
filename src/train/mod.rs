//! Training: the pieces the worker's loop is built from.
pub mod optim;
pub mod schedule;

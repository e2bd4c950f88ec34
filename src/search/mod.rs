//! Adaptive search as a pure library: what to launch next and when to stop
//! a trial, decided from results alone (no processes, no clock), so the
//! scheduler can drive it and the replay simulator can measure it.
//!
//! `space` (the axes as dimensions) → `tpe` (model-based suggestions) and
//! `asha` / `hyperband` / `median` (early stopping) → `budget` (when to stop
//! launching) → `simulate` (a replay of recorded curves under a strategy,
//! from a store, a `record` file or a synthetic `surface`) → `benchmark`
//! (scoring replays against the grid over seeds).
pub mod asha;
pub mod benchmark;
pub mod budget;
pub mod hyperband;
pub mod median;
pub mod record;
pub mod simulate;
pub mod space;
pub mod surface;
pub mod tpe;
pub mod traces;

//! `palisweep plan`: trials with their memory estimate, relative cost and the
//! device each would start on — the same check `run` makes before starting —
//! and, once trials have finished, their estimated hours.
pub mod build;
pub mod placement;
pub mod render;
pub mod text_lengths;
pub mod timing;

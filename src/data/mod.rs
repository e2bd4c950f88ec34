//! Datasets in Roboflow's PaliGemma JSONL export, and the synthetic one.
pub mod annotations;
pub mod check;
pub mod loader;
pub mod synthetic;

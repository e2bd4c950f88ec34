//! Datasets in Roboflow's PaliGemma JSONL export.
pub mod annotations;

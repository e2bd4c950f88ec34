//! Task metrics that evaluation computes from generated suffixes against the
//! reference suffixes of a split: JSON field F1, detection mAP over
//! `<locNNNN>` boxes, exact match and character error rate, corpus BLEU for
//! free text, gathered by one
//! per-task accumulator ([`task::TaskMetrics`]); and one score per example
//! for the predictions files ([`per_example`]).
pub mod average_precision;
pub mod bleu;
pub mod detection;
#[cfg(test)]
mod golden_tests;
pub mod json_fields;
pub mod names;
pub mod per_example;
pub mod task;
pub mod text;

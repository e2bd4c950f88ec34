//! TensorBoard logs of a sweep: one run per trial (`<results>/<sweep>/tb/<trial-id>/`)
//! with every metric as a scalar, the hparams plugin's session summaries in
//! each trial's run and the experiment summary in the `tb/` folder itself,
//! so the `HParams` dashboard compares the trials side by side.
//!
//! [`sink::TensorBoardSink`] is the event consumer; the other files are the
//! formats it writes (and [`read`] parses them back, checking every CRC).
pub mod files;
pub mod hparams;
pub mod read;
pub mod sink;
pub mod summary;
pub mod wire;

#[cfg(test)]
mod tests;

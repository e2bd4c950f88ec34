//! Tracking: the consumers of a sweep's event stream (the SQLite store, the
//! TensorBoard logs and the progress display), and the per-example
//! predictions files with their listing.

pub mod eta;
pub mod predictions;
pub mod progress;
pub mod show_predictions;
pub mod store;
pub mod tensorboard;

use std::path::Path;

use crate::events::event::EventSink;
use crate::layout::ResultsRoot;

use store::{StoreError, StoreSink};
use tensorboard::sink::TensorBoardSink;

/// The recording consumers of a sweep under `results`: the store (opened
/// here, so a database that cannot be used stops the run before it starts)
/// and the TensorBoard logs (`<results>/<sweep>/tb/`).
pub fn sinks(results: &Path) -> Result<Vec<Box<dyn EventSink>>, StoreError> {
    let store = StoreSink::open(&ResultsRoot::new(results).store())?;
    Ok(vec![Box::new(store), Box::new(TensorBoardSink::new())])
}

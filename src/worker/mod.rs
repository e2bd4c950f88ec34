//! The `palisweep worker` side: what runs one trial and reports on it.
pub mod contract;
pub mod protocol;
pub mod synthetic;
pub mod trial_lock;

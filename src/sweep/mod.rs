//! From one spec to many trials: grid and random expansion, stable ids.
pub mod expand;
pub mod trial_id;

//! PaliGemma 2 on tch: configs now; layers, loading and generation as they land.
pub mod config;

//! The device grammar (`auto`, `cpu:N`, `cuda:0,2`, `cuda:4x24GiB`) and its
//! resolution into a detected or hypothetical inventory.
pub mod detect;
pub mod error;
pub mod grammar;
pub mod usage;

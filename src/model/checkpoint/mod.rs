//! Checkpoint I/O: safetensors weights in the Hugging Face layout, the hub
//! cache, content fingerprints, and the built-in tiny checkpoints.
pub mod fingerprint;
pub mod hub;
pub mod tensors;
pub mod tiny;
pub mod weights;

//! Checkpoint I/O: safetensors weights in the Hugging Face layout, the hub
//! cache, content fingerprints, the built-in tiny checkpoints, and the
//! header-only check of a checkpoint folder.
pub mod fingerprint;
pub mod hub;
pub mod tensors;
pub mod tiny;
pub mod verify;
pub mod weights;

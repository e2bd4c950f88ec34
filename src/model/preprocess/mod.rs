//! Preprocessing: the `PaliGemma` processor (tokenizer and prompts), image
//! decoding (with the JPEG structure checks) and resizing, and the batched
//! model inputs.
pub mod image;
pub mod input;
pub mod jpeg;
pub mod processor;

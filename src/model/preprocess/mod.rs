//! Preprocessing: the `PaliGemma` processor (tokenizer and prompts), image
//! decoding and resizing, and the batched model inputs.
pub mod image;
pub mod input;
pub mod processor;

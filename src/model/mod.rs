//! `PaliGemma` 2 on tch, by concern: [`config`] (the architecture, named
//! like Hugging Face `config.json`, shared by every part), [`network`] (the
//! towers, the forward and backward passes, generation), [`adapt`] (`LoRA`,
//! NF4 and the PEFT adapter format), [`checkpoint`] (reading and writing
//! weights, the hub, fingerprints, the built-in tiny checkpoints) and
//! [`preprocess`] (the tokenizer, images, and model inputs).
pub mod adapt;
pub mod checkpoint;
pub mod config;
pub mod network;
pub mod preprocess;

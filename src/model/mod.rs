//! `PaliGemma` 2 on tch: configs, weights, the processor (tokenizer and
//! images), the three towers, generation, and the built-in tiny checkpoints.
pub mod adapt;
pub mod backward;
pub mod config;
pub mod fingerprint;
pub mod gemma2;
pub mod generate;
pub mod hub;
pub mod image;
pub mod input;
pub mod linear;
pub mod lora;
pub mod nf4;
pub mod paligemma;
pub mod peft;
pub mod processor;
pub mod siglip;
pub mod tiny;
pub mod weights;

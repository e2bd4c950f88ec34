//! Adaptation: which tensors train and how ([`plan`]), `LoRA` branches,
//! NF4 quantisation, and adapters in PEFT's format.
pub mod lora;
pub mod nf4;
pub mod peft;
pub mod plan;

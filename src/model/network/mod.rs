//! The network: SigLIP, the projector and Gemma 2 ([`paligemma`]), their
//! linear layer, hand-built gradient checkpointing and generation.
pub mod attention;
pub mod backward;
pub mod gemma2;
pub mod generate;
pub mod kernels;
pub mod layer_path;
pub mod linear;
pub mod paligemma;
pub mod siglip;

//! The `SigLIP` vision tower of `PaliGemma` 2 (`SiglipVisionModel` without
//! the pooling head), as transformers 5.24 `modeling_siglip.py` computes it,
//! docs/model-reference.md §2.1.
//!
//! Config ([`VisionConfig`], HF names) → private layer structs named like
//! their weight-path segments → the public [`SiglipVisionModel`], built from
//! the `vision_tower.vision_model` subtree.
//!
//! Attention ([`AttentionImpl`]): `Eager` is transformers' `eager` path
//! (`softmax(q·kᵀ·scale)` in f32, cast back, `·v`), bit-identical to
//! transformers 5.24 on the golden fixtures in f32 and bf16; `Chunked` runs
//! the same ops over chunks of queries (`csrc/kernels.cpp`); `Sdpa` is
//! torch's `scaled_dot_product_attention` (what transformers' `sdpa` calls),
//! which never materialises the scores but does not round the probabilities
//! to the compute dtype, so it is not exact: on the golden batch it moves
//! f32 logits by 1.1e-5 and bf16 logits by up to 0.31 (2–3 bf16 ulps). It is
//! the memory-efficient choice on CUDA only.

use tch::{Kind, TchError, Tensor};

use crate::model::checkpoint::weights::WeightError;
use crate::model::config::VisionConfig;
use crate::model::network::attention::{AttentionImpl, AttentionMode, chunk_rows, chunked};
use crate::model::network::kernels;
use crate::model::network::layer_path::LayerPath;
use crate::model::network::linear::Linear;

/// `nn.LayerNorm` over the last dim, with weight and bias.
#[derive(Debug)]
struct LayerNorm {
    weight: Tensor,
    bias: Tensor,
    eps: f64,
}

impl LayerNorm {
    fn new(path: &LayerPath, size: i64, eps: f64) -> Result<Self, WeightError> {
        Ok(Self {
            weight: path.get("weight", &[size])?,
            bias: path.get("bias", &[size])?,
            eps,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor, TchError> {
        let size = self.weight.size();
        x.f_layer_norm(&size, Some(&self.weight), Some(&self.bias), self.eps, true)
    }
}

/// Patch embedding (`Conv2d`, kernel = stride = patch) plus the learned
/// position table, one row per patch.
#[derive(Debug)]
struct Embeddings {
    patch_embedding: Conv2d,
    /// `position_embedding.weight` `[num_patches, hidden]`.
    position_embedding: Tensor,
}

#[derive(Debug)]
struct Conv2d {
    weight: Tensor,
    bias: Tensor,
    stride: i64,
}

impl Embeddings {
    fn new(cfg: &VisionConfig, path: &LayerPath) -> Result<Self, WeightError> {
        let (h, c, p) = (
            i64::from(cfg.hidden_size),
            i64::from(cfg.num_channels),
            i64::from(cfg.patch_size),
        );
        let side = i64::from(cfg.image_size / cfg.patch_size);
        let conv = path.pp("patch_embedding");
        Ok(Self {
            patch_embedding: Conv2d {
                weight: conv.get("weight", &[h, c, p, p])?,
                bias: conv.get("bias", &[h])?,
                stride: p,
            },
            position_embedding: path
                .pp("position_embedding")
                .get("weight", &[side * side, h])?,
        })
    }

    fn forward(&self, pixel_values: &Tensor) -> Result<Tensor, TchError> {
        let conv = &self.patch_embedding;
        let patches = pixel_values.f_to_kind(conv.weight.kind())?.f_conv2d(
            &conv.weight,
            Some(&conv.bias),
            [conv.stride, conv.stride],
            [0, 0],
            [1, 1],
            1,
        )?;
        // [B, h, S/p, S/p] → [B, N, h], row-major over the patch grid.
        patches
            .f_flatten(2, -1)?
            .f_transpose(1, 2)?
            .f_add(&self.position_embedding)
    }
}

#[derive(Debug)]
struct Attention {
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    out_proj: Linear,
    num_heads: i64,
    head_dim: i64,
    scale: f64,
}

impl Attention {
    fn new(cfg: &VisionConfig, path: &LayerPath) -> Result<Self, WeightError> {
        let h = i64::from(cfg.hidden_size);
        let num_heads = i64::from(cfg.num_attention_heads);
        let head_dim = h / num_heads;
        Ok(Self {
            q_proj: Linear::new(&path.pp("q_proj"), h, h, true)?,
            k_proj: Linear::new(&path.pp("k_proj"), h, h, true)?,
            v_proj: Linear::new(&path.pp("v_proj"), h, h, true)?,
            out_proj: Linear::new(&path.pp("out_proj"), h, h, true)?,
            num_heads,
            head_dim,
            scale: (head_dim as f64).powf(-0.5),
        })
    }

    fn forward(&self, x: &Tensor, mode: AttentionImpl) -> Result<Tensor, TchError> {
        let (batch, len, _) = x.size3()?;
        let heads = |t: Tensor| {
            t.f_view([batch, len, self.num_heads, self.head_dim])?
                .f_transpose(1, 2)
        };
        let q = heads(self.q_proj.forward(x)?)?;
        let k = heads(self.k_proj.forward(x)?)?;
        let v = heads(self.v_proj.forward(x)?)?;
        let out = match mode {
            AttentionImpl::Sdpa => Tensor::f_scaled_dot_product_attention(
                &q,
                &k,
                &v,
                None::<Tensor>,
                0.0,
                false,
                self.scale,
                false,
            )?,
            AttentionImpl::Chunked { .. } if chunked(mode, batch * self.num_heads * len * len) => {
                kernels::chunked_attention(
                    &q,
                    &k,
                    &v,
                    None,
                    self.scale,
                    None,
                    chunk_rows(q.device(), batch, self.num_heads, len, len),
                )?
            }
            // Eager, and scores small enough to keep.
            _ => {
                let scores = q
                    .f_matmul(&k.f_transpose(-1, -2)?)?
                    .f_mul_scalar(self.scale)?;
                scores
                    .f_softmax(-1, Kind::Float)?
                    .f_to_kind(q.kind())?
                    .f_matmul(&v)?
            }
        };
        let out = out
            .f_transpose(1, 2)?
            .f_contiguous()?
            .f_reshape([batch, len, -1])?;
        self.out_proj.forward(&out)
    }
}

#[derive(Debug)]
struct Mlp {
    fc1: Linear,
    fc2: Linear,
}

impl Mlp {
    fn new(cfg: &VisionConfig, path: &LayerPath) -> Result<Self, WeightError> {
        let (h, i) = (i64::from(cfg.hidden_size), i64::from(cfg.intermediate_size));
        Ok(Self {
            fc1: Linear::new(&path.pp("fc1"), h, i, true)?,
            fc2: Linear::new(&path.pp("fc2"), i, h, true)?,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor, TchError> {
        self.fc2.forward(&self.fc1.forward(x)?.f_gelu("tanh")?)
    }
}

#[derive(Debug)]
struct EncoderLayer {
    layer_norm1: LayerNorm,
    self_attn: Attention,
    layer_norm2: LayerNorm,
    mlp: Mlp,
}

impl EncoderLayer {
    fn new(cfg: &VisionConfig, path: &LayerPath) -> Result<Self, WeightError> {
        let (h, eps) = (i64::from(cfg.hidden_size), cfg.layer_norm_eps);
        Ok(Self {
            layer_norm1: LayerNorm::new(&path.pp("layer_norm1"), h, eps)?,
            self_attn: Attention::new(cfg, &path.pp("self_attn"))?,
            layer_norm2: LayerNorm::new(&path.pp("layer_norm2"), h, eps)?,
            mlp: Mlp::new(cfg, &path.pp("mlp"))?,
        })
    }

    fn forward(&self, x: &Tensor, mode: AttentionImpl) -> Result<Tensor, TchError> {
        let h = self
            .self_attn
            .forward(&self.layer_norm1.forward(x)?, mode)?;
        let x = x.f_add(&h)?;
        let h = self.mlp.forward(&self.layer_norm2.forward(&x)?)?;
        x.f_add(&h)
    }
}

/// `SiglipVisionModel` (`vision_use_head: false`): `[B, 3, S, S]` pixels →
/// `last_hidden_state` `[B, (S/p)², hidden]`.
#[derive(Debug)]
pub struct SiglipVisionModel {
    embeddings: Embeddings,
    /// `encoder.layers.*`
    layers: Vec<EncoderLayer>,
    post_layernorm: LayerNorm,
    attention: AttentionImpl,
}

impl SiglipVisionModel {
    /// Loads the tower from `path` (the `vision_tower.vision_model` level).
    pub fn new(cfg: &VisionConfig, path: &LayerPath) -> Result<Self, WeightError> {
        let layers_path = path.pp("encoder").pp("layers");
        Ok(Self {
            embeddings: Embeddings::new(cfg, &path.pp("embeddings"))?,
            layers: (0..cfg.num_hidden_layers)
                .map(|i| EncoderLayer::new(cfg, &layers_path.pp(i)))
                .collect::<Result<_, _>>()?,
            post_layernorm: LayerNorm::new(
                &path.pp("post_layernorm"),
                i64::from(cfg.hidden_size),
                cfg.layer_norm_eps,
            )?,
            attention: AttentionMode::default().vision(path.device()),
        })
    }

    /// Chooses the attention implementation (memory-efficient by default).
    pub fn set_attention(&mut self, attention: AttentionImpl) {
        self.attention = attention;
    }

    pub fn forward(&self, pixel_values: &Tensor) -> Result<Tensor, TchError> {
        let mut x = self.embed(pixel_values)?;
        for i in 0..self.num_layers() {
            x = self.layer(i, &x)?;
        }
        self.post_norm(&x)
    }

    /// Patch and position embeddings `[B, N, hidden]`: the encoder's input.
    pub fn embed(&self, pixel_values: &Tensor) -> Result<Tensor, TchError> {
        self.embeddings.forward(pixel_values)
    }

    pub fn num_layers(&self) -> usize {
        self.layers.len()
    }

    /// Encoder layer `index` on `x`; layer by layer so that training can
    /// recompute one layer at a time (gradient checkpointing).
    pub fn layer(&self, index: usize, x: &Tensor) -> Result<Tensor, TchError> {
        self.layers[index].forward(x, self.attention)
    }

    /// The final `post_layernorm`.
    pub fn post_norm(&self, x: &Tensor) -> Result<Tensor, TchError> {
        self.post_layernorm.forward(x)
    }
}

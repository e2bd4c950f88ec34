//! Architecture configs, named like Hugging Face `config.json`, with the
//! published `PaliGemma` 2 checkpoints and their scaled-down "tiny" twins built in.

use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::variant::{Resolution, Size};

// ---------------------------------------------------------------------------
// config.json structs
// ---------------------------------------------------------------------------

/// Why a `config.json` could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read model config {}: {error}", path.display())]
    Read { path: PathBuf, error: io::Error },
    /// serde's message names the offending key and its line/column.
    #[error("cannot parse model config {}: {error}", path.display())]
    Parse {
        path: PathBuf,
        error: serde_json::Error,
    },
    #[error("inconsistent model config {}: {reason}", path.display())]
    Invalid { path: PathBuf, reason: String },
    /// From [`PaliGemmaConfig::validate`], which knows no path.
    #[error("inconsistent model config: {0}")]
    Inconsistent(String),
}

/// The top level of a `PaliGemma` `config.json` (`model_type: "paligemma"`).
///
/// Unknown keys (`architectures`, `torch_dtype`, `_vocab_size`, the stale
/// top-level `hidden_size`, ...) are ignored, as transformers does.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PaliGemmaConfig {
    #[serde(default = "default_paligemma_model_type")]
    pub model_type: String,
    pub vision_config: VisionConfig,
    pub text_config: TextConfig,
    /// Output width of `multi_modal_projector.linear` (= the text hidden size).
    pub projection_dim: u32,
    /// Token id of `<image>`; transformers v5 also spells it `image_token_id`.
    #[serde(alias = "image_token_id")]
    pub image_token_index: u32,
    #[serde(default = "default_pad_token_id")]
    pub pad_token_id: u32,
    #[serde(default = "default_bos_token_id")]
    pub bos_token_id: u32,
    #[serde(default = "default_eos_token_id")]
    pub eos_token_id: u32,
}

/// `SigLIP` vision tower (`vision_config`, `model_type: "siglip_vision_model"`).
/// Defaults are `SiglipVisionConfig`'s, so an omitted key means what it
/// means to transformers.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct VisionConfig {
    #[serde(default = "default_vision_model_type")]
    pub model_type: String,
    pub hidden_size: u32,
    pub intermediate_size: u32,
    pub num_hidden_layers: u32,
    pub num_attention_heads: u32,
    #[serde(default = "default_num_channels")]
    pub num_channels: u32,
    #[serde(default = "default_image_size")]
    pub image_size: u32,
    #[serde(default = "default_patch_size")]
    pub patch_size: u32,
    #[serde(default = "default_eps")]
    pub layer_norm_eps: f64,
    #[serde(default = "default_act")]
    pub hidden_act: String,
    #[serde(default)]
    pub attention_dropout: f64,
}

/// Gemma 2 language model (`text_config`, `model_type: "gemma2"`).
/// Defaults are `Gemma2Config`'s (transformers 5.24): the published 3B file
/// omits `head_dim`, `rms_norm_eps`, `rope_theta` and
/// `max_position_embeddings`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TextConfig {
    #[serde(default = "default_text_model_type")]
    pub model_type: String,
    pub hidden_size: u32,
    pub intermediate_size: u32,
    pub num_hidden_layers: u32,
    pub num_attention_heads: u32,
    pub num_key_value_heads: u32,
    #[serde(default = "default_head_dim")]
    pub head_dim: u32,
    /// Attention scores are scaled by `query_pre_attn_scalar^-0.5`, which is
    /// not `head_dim^-0.5` for 28B.
    #[serde(default = "default_query_pre_attn_scalar")]
    pub query_pre_attn_scalar: u32,
    /// Window of the even-indexed (sliding) layers.
    #[serde(default = "default_sliding_window")]
    pub sliding_window: u32,
    /// `tanh(s/cap)*cap` on attention scores; `null` in the file turns it off,
    /// an absent key means transformers' default (50).
    #[serde(default = "default_attn_logit_softcapping")]
    pub attn_logit_softcapping: Option<f64>,
    /// The same on the output logits; absent means 30, `null` off.
    #[serde(default = "default_final_logit_softcapping")]
    pub final_logit_softcapping: Option<f64>,
    #[serde(default = "default_eps")]
    pub rms_norm_eps: f64,
    #[serde(default = "default_rope_theta")]
    pub rope_theta: f64,
    #[serde(default = "default_max_position_embeddings")]
    pub max_position_embeddings: u32,
    /// Embedding rows, including `PaliGemma` 2's 64 padding rows (257216).
    pub vocab_size: u32,
    #[serde(default = "default_act")]
    pub hidden_activation: String,
    #[serde(default)]
    pub attention_bias: bool,
    #[serde(default)]
    pub attention_dropout: f64,
}

fn default_paligemma_model_type() -> String {
    "paligemma".into()
}
fn default_vision_model_type() -> String {
    "siglip_vision_model".into()
}
fn default_text_model_type() -> String {
    "gemma2".into()
}
fn default_pad_token_id() -> u32 {
    0
}
fn default_eos_token_id() -> u32 {
    1
}
fn default_bos_token_id() -> u32 {
    2
}
fn default_num_channels() -> u32 {
    3
}
fn default_image_size() -> u32 {
    224
}
fn default_patch_size() -> u32 {
    16
}
fn default_eps() -> f64 {
    1e-6
}
fn default_act() -> String {
    "gelu_pytorch_tanh".into()
}
fn default_head_dim() -> u32 {
    256
}
fn default_query_pre_attn_scalar() -> u32 {
    256
}
fn default_sliding_window() -> u32 {
    4096
}
#[allow(clippy::unnecessary_wraps)] // serde default for an Option field
fn default_attn_logit_softcapping() -> Option<f64> {
    Some(50.0)
}
#[allow(clippy::unnecessary_wraps)] // serde default for an Option field
fn default_final_logit_softcapping() -> Option<f64> {
    Some(30.0)
}
fn default_rope_theta() -> f64 {
    10_000.0
}
fn default_max_position_embeddings() -> u32 {
    8192
}

// ---------------------------------------------------------------------------
// Presets
// ---------------------------------------------------------------------------

/// Rows of the `PaliGemma` 2 token embedding: 257152 real tokens + 64 padding
/// rows (docs/model-reference.md §1, from the published 3B `config.json`).
const PUBLISHED_VOCAB_SIZE: u32 = 257_216;
/// `<image>` = 256000 Gemma pieces + 1024 `<loc>` + 128 `<seg>` (docs/model-reference.md §1, §4).
const PUBLISHED_IMAGE_TOKEN_INDEX: u32 = 257_152;

/// Vocabulary of the tiny presets.
const TINY_VOCAB_SIZE: u32 = 2048;
/// The tiny tokenizer must place `<image>` at this id (the last row), as the
/// real one places it after every other special token.
pub const TINY_IMAGE_TOKEN_INDEX: u32 = TINY_VOCAB_SIZE - 1;

impl PaliGemmaConfig {
    /// The config of `google/paligemma2-{size}-pt-{resolution}`.
    ///
    /// Numbers from docs/model-reference.md §1: the `SigLIP`-So400m/14 block of
    /// `convert_paligemma2_weights_to_hf.py`, `VARIANT_CONFIGS` there, the
    /// published 3B-224 `config.json`, and `big_vision` `gemma2_{2b,9b,27b}`.
    /// The 10B/28B `vocab_size` of 257216 is assumed equal to 3B's
    /// (docs/model-reference.md §12.1); the parameter-count tests pin every
    /// number here.
    pub fn published(size: Size, resolution: Resolution) -> Self {
        let text_config = match size {
            // Gemma 2 2B.
            Size::B3 => gemma2_published(2304, 9216, 26, 8, 4, 256, 256),
            // Gemma 2 9B.
            Size::B10 => gemma2_published(3584, 14336, 42, 16, 8, 256, 256),
            // Gemma 2 27B: head_dim 128 but query_pre_attn_scalar 4608/32 = 144.
            Size::B28 => gemma2_published(4608, 36864, 46, 32, 16, 128, 144),
        };
        Self {
            model_type: default_paligemma_model_type(),
            // SigLIP-So400m/14, identical in all nine checkpoints.
            vision_config: VisionConfig {
                model_type: default_vision_model_type(),
                hidden_size: 1152,
                intermediate_size: 4304,
                num_hidden_layers: 27,
                num_attention_heads: 16,
                num_channels: 3,
                image_size: resolution.pixels(),
                patch_size: 14,
                layer_norm_eps: 1e-6,
                hidden_act: default_act(),
                attention_dropout: 0.0,
            },
            projection_dim: text_config.hidden_size,
            text_config,
            image_token_index: PUBLISHED_IMAGE_TOKEN_INDEX,
            pad_token_id: 0,
            bos_token_id: 2,
            eos_token_id: 1,
        }
    }

    /// A scaled-down twin of [`published`](Self::published) for CPU demos and
    /// tests (runs in seconds). Not from any checkpoint: the numbers are
    /// chosen so every code path of the real model is exercised:
    /// * 2/3/4 decoder layers for 3b/10b/28b (both sliding and global layers);
    /// * GQA (kv heads < heads), `head_dim != hidden/heads`, and
    ///   `query_pre_attn_scalar != head_dim` (as in 28B);
    /// * soft-capping 50/30 and `sliding_window` 16, shorter than any sequence;
    /// * 32/64/128 px images with patch 8 → 16/64/256 image tokens, the 1:4:16
    ///   ratio of 224/448/896;
    /// * a 2-layer, 32-wide vision tower; vocabulary 2048 with pad 0, eos 1,
    ///   bos 2 and `<image>` at [`TINY_IMAGE_TOKEN_INDEX`] (2047).
    pub fn tiny(size: Size, resolution: Resolution) -> Self {
        // (hidden, intermediate, layers, heads, kv heads, head_dim, qpas)
        let (h, i, layers, heads, kv, head_dim, qpas) = match size {
            // hidden/heads = 16; scalar 32 differs from head_dim 24.
            Size::B3 => (64, 128, 2, 4, 2, 24, 32),
            // hidden/heads = 24; scalar 24 differs from head_dim 32.
            Size::B10 => (96, 192, 3, 4, 2, 32, 24),
            // hidden/heads = 16 = scalar (the 28B rule), head_dim 24; MLP 4x
            // wider like 27B's 8x.
            Size::B28 => (128, 512, 4, 8, 4, 24, 16),
        };
        let image_size = match resolution {
            Resolution::R224 => 32,
            Resolution::R448 => 64,
            Resolution::R896 => 128,
        };
        Self {
            model_type: default_paligemma_model_type(),
            vision_config: VisionConfig {
                model_type: default_vision_model_type(),
                hidden_size: 32,
                intermediate_size: 64,
                num_hidden_layers: 2,
                num_attention_heads: 4,
                num_channels: 3,
                image_size,
                patch_size: 8,
                layer_norm_eps: 1e-6,
                hidden_act: default_act(),
                attention_dropout: 0.0,
            },
            text_config: TextConfig {
                model_type: default_text_model_type(),
                hidden_size: h,
                intermediate_size: i,
                num_hidden_layers: layers,
                num_attention_heads: heads,
                num_key_value_heads: kv,
                head_dim,
                query_pre_attn_scalar: qpas,
                sliding_window: 16,
                attn_logit_softcapping: Some(50.0),
                final_logit_softcapping: Some(30.0),
                rms_norm_eps: 1e-6,
                rope_theta: 10_000.0,
                max_position_embeddings: 8192,
                vocab_size: TINY_VOCAB_SIZE,
                hidden_activation: default_act(),
                attention_bias: false,
                attention_dropout: 0.0,
            },
            projection_dim: h,
            image_token_index: TINY_IMAGE_TOKEN_INDEX,
            pad_token_id: 0,
            bos_token_id: 2,
            eos_token_id: 1,
        }
    }

    /// A "small" twin for benchmarks and memory calibration on CPU: the real
    /// image geometry (patch 14 at 224/448/896 px → 256/1024/4096 image
    /// tokens, the sequence lengths that dominate cost) with narrow towers —
    /// a 4-layer, 256-wide SigLIP and a 4/6/8-layer Gemma 2 of width
    /// 256/384/512 for 3b/10b/28b — and the tiny tokenizer's vocabulary.
    pub fn small(size: Size, resolution: Resolution) -> Self {
        let mut config = Self::tiny(size, resolution);
        let (h, i, layers, heads, kv) = match size {
            Size::B3 => (256, 1024, 4, 4, 2),
            Size::B10 => (384, 1536, 6, 6, 3),
            Size::B28 => (512, 4096, 8, 8, 4),
        };
        let v = &mut config.vision_config;
        v.hidden_size = 256;
        v.intermediate_size = 1024;
        v.num_hidden_layers = 4;
        v.num_attention_heads = 4;
        v.patch_size = 14;
        v.image_size = resolution.pixels();
        let t = &mut config.text_config;
        t.hidden_size = h;
        t.intermediate_size = i;
        t.num_hidden_layers = layers;
        t.num_attention_heads = heads;
        t.num_key_value_heads = kv;
        t.head_dim = 64;
        t.query_pre_attn_scalar = 64;
        // Gemma 2's own window: it binds only at 896 px, as in the real model.
        t.sliding_window = 4096;
        config.projection_dim = h;
        config
    }

    /// Reads and validates a Hugging Face `config.json`.
    pub fn from_json_file(path: impl AsRef<Path>) -> Result<Self, ConfigError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|error| ConfigError::Read {
            path: path.to_path_buf(),
            error,
        })?;
        let mut config: Self = serde_json::from_str(&text).map_err(|error| ConfigError::Parse {
            path: path.to_path_buf(),
            error,
        })?;
        // transformers 5 writes the RoPE base under `rope_parameters`.
        let raw: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
        if let Some(theta) = raw["text_config"]["rope_parameters"]["rope_theta"].as_f64() {
            config.text_config.rope_theta = theta;
        }
        config.validate().map_err(|e| match e {
            ConfigError::Inconsistent(reason) => ConfigError::Invalid {
                path: path.to_path_buf(),
                reason,
            },
            other => other,
        })?;
        Ok(config)
    }

    /// Checks the shape constraints the model code relies on.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let v = &self.vision_config;
        let t = &self.text_config;
        let fail = |reason: String| Err(ConfigError::Inconsistent(reason));
        let zero = [
            ("vision_config.hidden_size", v.hidden_size),
            ("vision_config.num_hidden_layers", v.num_hidden_layers),
            ("vision_config.num_attention_heads", v.num_attention_heads),
            ("vision_config.patch_size", v.patch_size),
            ("text_config.hidden_size", t.hidden_size),
            ("text_config.num_attention_heads", t.num_attention_heads),
            ("text_config.num_key_value_heads", t.num_key_value_heads),
            ("text_config.head_dim", t.head_dim),
            ("text_config.vocab_size", t.vocab_size),
        ];
        if let Some((key, _)) = zero.iter().find(|(_, value)| *value == 0) {
            return fail(format!("{key} must be positive"));
        }
        if !v.image_size.is_multiple_of(v.patch_size) {
            return fail(format!(
                "vision_config.image_size {} is not a multiple of patch_size {}",
                v.image_size, v.patch_size
            ));
        }
        if !v.hidden_size.is_multiple_of(v.num_attention_heads) {
            return fail(format!(
                "vision_config.hidden_size {} is not divisible by num_attention_heads {}",
                v.hidden_size, v.num_attention_heads
            ));
        }
        if !t.num_attention_heads.is_multiple_of(t.num_key_value_heads) {
            return fail(format!(
                "text_config.num_attention_heads {} is not a multiple of num_key_value_heads {}",
                t.num_attention_heads, t.num_key_value_heads
            ));
        }
        if !t.head_dim.is_multiple_of(2) {
            return fail(format!(
                "text_config.head_dim {} must be even for RoPE",
                t.head_dim
            ));
        }
        if self.projection_dim != t.hidden_size {
            return fail(format!(
                "projection_dim {} differs from text_config.hidden_size {}",
                self.projection_dim, t.hidden_size
            ));
        }
        if self.image_token_index >= t.vocab_size {
            return fail(format!(
                "image_token_index {} is outside the vocabulary ({} rows)",
                self.image_token_index, t.vocab_size
            ));
        }
        Ok(())
    }

    /// Image tokens per image: `(image_size / patch_size)^2`
    /// (256/1024/4096 for the published 224/448/896).
    pub fn num_image_tokens(&self) -> u32 {
        let side = self.vision_config.image_size / self.vision_config.patch_size;
        side * side
    }
}

/// A published Gemma 2 text config; the fields not passed are the same for
/// 2B/9B/27B (docs/model-reference.md §1 table).
fn gemma2_published(
    hidden_size: u32,
    intermediate_size: u32,
    num_hidden_layers: u32,
    num_attention_heads: u32,
    num_key_value_heads: u32,
    head_dim: u32,
    query_pre_attn_scalar: u32,
) -> TextConfig {
    TextConfig {
        model_type: default_text_model_type(),
        hidden_size,
        intermediate_size,
        num_hidden_layers,
        num_attention_heads,
        num_key_value_heads,
        head_dim,
        query_pre_attn_scalar,
        sliding_window: 4096,
        attn_logit_softcapping: Some(50.0),
        final_logit_softcapping: Some(30.0),
        rms_norm_eps: 1e-6,
        rope_theta: 10_000.0,
        max_position_embeddings: 8192,
        vocab_size: PUBLISHED_VOCAB_SIZE,
        hidden_activation: default_act(),
        attention_bias: false,
        attention_dropout: 0.0,
    }
}

// ---------------------------------------------------------------------------
// Parameter counting
// ---------------------------------------------------------------------------

/// The part of `PaliGemma` a module belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Tower {
    Vision,
    Projector,
    Language,
}

/// One `nn.Linear` of the model, as PEFT and the NF4 loader see it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinearModule {
    /// Module path as in the safetensors keys (docs/model-reference.md §5, legacy form),
    /// e.g. `language_model.model.layers.3.mlp.up_proj`. PEFT target
    /// matching is by suffix, so the root prefix does not matter.
    pub name: String,
    pub tower: Tower,
    pub in_features: u64,
    pub out_features: u64,
    pub bias: bool,
    /// `lm_head`: its weight is the token embedding, so it is neither counted
    /// twice nor quantised.
    pub tied: bool,
}

impl LinearModule {
    pub fn weight_params(&self) -> u64 {
        self.in_features * self.out_features
    }

    pub fn bias_params(&self) -> u64 {
        if self.bias { self.out_features } else { 0 }
    }

    /// PEFT's list matching: the name equals a target or ends with
    /// `.<target>`.
    pub fn is_targeted(&self, targets: &[String]) -> bool {
        targets.iter().any(|t| {
            self.name == *t
                || (self.name.len() > t.len()
                    && self.name.ends_with(t.as_str())
                    && self.name.as_bytes()[self.name.len() - t.len() - 1] == b'.')
        })
    }

    /// Parameters of a rank-`r` `LoRA` adapter on this module: A `[r, in]` +
    /// B `[out, r]`.
    pub fn lora_params(&self, r: u32) -> u64 {
        u64::from(r) * (self.in_features + self.out_features)
    }
}

/// Parameter counts by part; the tied `lm_head` is counted once (in
/// `embedding`), as transformers' `num_parameters()` does.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ParamCounts {
    /// `SigLIP`: patch conv, position table, encoder layers, post layernorm.
    pub vision: u64,
    /// `multi_modal_projector.linear` weight + bias.
    pub projector: u64,
    /// Token embedding (= the tied `lm_head`).
    pub embedding: u64,
    /// All Gemma 2 decoder layers.
    pub decoder_layers: u64,
    /// The final `RMSNorm`.
    pub final_norm: u64,
    pub total: u64,
    /// Weights of every `nn.Linear` except the tied head: the tensors `QLoRA`
    /// quantises (docs/model-reference.md §8).
    pub linear_params: u64,
    /// Biases of those linears (`SigLIP` and the projector; Gemma 2 has none).
    pub linear_bias_params: u64,
}

impl PaliGemmaConfig {
    /// Every `nn.Linear`, in model order, the tied `lm_head` last.
    pub fn linear_modules(&self) -> Vec<LinearModule> {
        let v = &self.vision_config;
        let t = &self.text_config;
        let (vh, vi) = (u64::from(v.hidden_size), u64::from(v.intermediate_size));
        let h = u64::from(t.hidden_size);
        let q_out = u64::from(t.num_attention_heads) * u64::from(t.head_dim);
        let kv_out = u64::from(t.num_key_value_heads) * u64::from(t.head_dim);
        let mlp = u64::from(t.intermediate_size);
        let linear = |name: String, tower, in_features, out_features, bias| LinearModule {
            name,
            tower,
            in_features,
            out_features,
            bias,
            tied: false,
        };
        let mut modules = Vec::new();
        for layer in 0..v.num_hidden_layers {
            let prefix = format!("vision_tower.vision_model.encoder.layers.{layer}");
            for proj in ["q_proj", "k_proj", "v_proj", "out_proj"] {
                modules.push(linear(
                    format!("{prefix}.self_attn.{proj}"),
                    Tower::Vision,
                    vh,
                    vh,
                    true,
                ));
            }
            modules.push(linear(
                format!("{prefix}.mlp.fc1"),
                Tower::Vision,
                vh,
                vi,
                true,
            ));
            modules.push(linear(
                format!("{prefix}.mlp.fc2"),
                Tower::Vision,
                vi,
                vh,
                true,
            ));
        }
        modules.push(linear(
            "multi_modal_projector.linear".into(),
            Tower::Projector,
            vh,
            u64::from(self.projection_dim),
            true,
        ));
        let bias = t.attention_bias;
        for layer in 0..t.num_hidden_layers {
            let prefix = format!("language_model.model.layers.{layer}");
            let lm = Tower::Language;
            modules.push(linear(
                format!("{prefix}.self_attn.q_proj"),
                lm,
                h,
                q_out,
                bias,
            ));
            modules.push(linear(
                format!("{prefix}.self_attn.k_proj"),
                lm,
                h,
                kv_out,
                bias,
            ));
            modules.push(linear(
                format!("{prefix}.self_attn.v_proj"),
                lm,
                h,
                kv_out,
                bias,
            ));
            modules.push(linear(
                format!("{prefix}.self_attn.o_proj"),
                lm,
                q_out,
                h,
                bias,
            ));
            modules.push(linear(format!("{prefix}.mlp.gate_proj"), lm, h, mlp, false));
            modules.push(linear(format!("{prefix}.mlp.up_proj"), lm, h, mlp, false));
            modules.push(linear(format!("{prefix}.mlp.down_proj"), lm, mlp, h, false));
        }
        modules.push(LinearModule {
            tied: true,
            ..linear(
                "language_model.lm_head".into(),
                Tower::Language,
                h,
                u64::from(t.vocab_size),
                false,
            )
        });
        modules
    }

    /// Parameter counts from the architecture (no weights needed).
    pub fn param_counts(&self) -> ParamCounts {
        let v = &self.vision_config;
        let t = &self.text_config;
        let (vh, vi) = (u64::from(v.hidden_size), u64::from(v.intermediate_size));
        let patch = u64::from(v.patch_size);
        // Conv2d(channels -> hidden, kernel = stride = patch) with bias.
        let patch_embed = u64::from(v.num_channels) * patch * patch * vh + vh;
        let position_table = u64::from(self.num_image_tokens()) * vh;
        // Two LayerNorms (weight + bias), q/k/v/out with bias, fc1/fc2 with bias.
        let vision_layer = 2 * 2 * vh + 4 * (vh * vh + vh) + (vh * vi + vi) + (vi * vh + vh);
        let post_layernorm = 2 * vh;
        let vision = patch_embed
            + position_table
            + u64::from(v.num_hidden_layers) * vision_layer
            + post_layernorm;

        let projector = vh * u64::from(self.projection_dim) + u64::from(self.projection_dim);

        let h = u64::from(t.hidden_size);
        let embedding = u64::from(t.vocab_size) * h;
        let q_out = u64::from(t.num_attention_heads) * u64::from(t.head_dim);
        let kv_out = u64::from(t.num_key_value_heads) * u64::from(t.head_dim);
        let attention_bias = if t.attention_bias {
            q_out + 2 * kv_out + h
        } else {
            0
        };
        let attention = h * q_out + 2 * h * kv_out + q_out * h + attention_bias;
        let mlp = 3 * h * u64::from(t.intermediate_size);
        // input, post-attention, pre-feedforward, post-feedforward RMSNorms.
        let norms = 4 * h;
        let decoder_layers = u64::from(t.num_hidden_layers) * (attention + mlp + norms);
        let final_norm = h;

        let (linear_params, linear_bias_params) = self
            .linear_modules()
            .iter()
            .filter(|m| !m.tied)
            .fold((0, 0), |(w, b), m| {
                (w + m.weight_params(), b + m.bias_params())
            });

        ParamCounts {
            vision,
            projector,
            embedding,
            decoder_layers,
            final_norm,
            total: vision + projector + embedding + decoder_layers + final_norm,
            linear_params,
            linear_bias_params,
        }
    }

    /// Trainable parameters of rank-`r` `LoRA` adapters on every linear whose
    /// name matches `targets` (PEFT suffix rule). Vision-tower linears count
    /// only when `include_vision`; the default 7-name list hits `SigLIP`'s
    /// `q_proj`/`k_proj`/`v_proj` too (docs/model-reference.md §9).
    pub fn lora_params(&self, r: u32, targets: &[String], include_vision: bool) -> u64 {
        self.linear_modules()
            .iter()
            .filter(|m| include_vision || m.tower != Tower::Vision)
            .filter(|m| m.is_targeted(targets))
            .map(|m| m.lora_params(r))
            .sum()
    }
}

/// A named architecture of the random checkpoints that benchmarks and the
/// memory calibration run on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Preset {
    Tiny,
    Small,
    Published,
}

impl Preset {
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "tiny" => Some(Self::Tiny),
            "small" => Some(Self::Small),
            "published" => Some(Self::Published),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Tiny => "tiny",
            Self::Small => "small",
            Self::Published => "published",
        }
    }

    /// The architecture. `published` keeps the real vocabulary (its
    /// embedding and head cost what they cost) but places `<image>` where
    /// the tiny tokenizer, which every random checkpoint ships, has it.
    pub fn config(self, size: Size, resolution: Resolution) -> PaliGemmaConfig {
        match self {
            Self::Tiny => PaliGemmaConfig::tiny(size, resolution),
            Self::Small => PaliGemmaConfig::small(size, resolution),
            Self::Published => {
                let mut config = PaliGemmaConfig::published(size, resolution);
                config.image_token_index = TINY_IMAGE_TOKEN_INDEX;
                config
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// docs/model-reference.md §1, verified by instantiating the HF configs on the meta device.
    const VERIFIED_TOTALS: [(Size, [u64; 3]); 3] = [
        (Size::B3, [3_032_242_416, 3_033_127_152, 3_036_666_096]),
        (Size::B10, [9_662_638_832, 9_663_523_568, 9_667_062_512]),
        (Size::B28, [27_650_487_024, 27_651_371_760, 27_654_910_704]),
    ];

    fn default_targets() -> Vec<String> {
        crate::model::adapt::lora::DEFAULT_TARGETS
            .map(String::from)
            .to_vec()
    }

    /// The published 3B-224 `config.json` (docs/model-reference.md §1), with its stale and
    /// unused keys, plus one key no version of transformers knows.
    const HF_3B_224: &str = r#"{
      "_vocab_size": 257152,
      "architectures": ["PaliGemmaForConditionalGeneration"],
      "bos_token_id": 2,
      "eos_token_id": 1,
      "hidden_size": 2048,
      "image_token_index": 257152,
      "model_type": "paligemma",
      "pad_token_id": 0,
      "projection_dim": 2304,
      "text_config": {
        "attn_logit_softcapping": 50.0,
        "cache_implementation": "hybrid",
        "eos_token_id": [1, 107],
        "final_logit_softcapping": 30.0,
        "hidden_act": "gelu_pytorch_tanh",
        "hidden_activation": "gelu_pytorch_tanh",
        "hidden_size": 2304,
        "intermediate_size": 9216,
        "model_type": "gemma2",
        "num_attention_heads": 8,
        "num_hidden_layers": 26,
        "num_image_tokens": 256,
        "num_key_value_heads": 4,
        "query_pre_attn_scalar": 256,
        "sliding_window": 4096,
        "torch_dtype": "bfloat16",
        "vocab_size": 257216
      },
      "torch_dtype": "bfloat16",
      "transformers_version": "4.47.0.dev0",
      "palisweep_unknown_key": {"nested": true},
      "vision_config": {
        "hidden_size": 1152,
        "intermediate_size": 4304,
        "model_type": "siglip_vision_model",
        "num_attention_heads": 16,
        "num_hidden_layers": 27,
        "num_image_tokens": 256,
        "num_positions": 256,
        "patch_size": 14,
        "projection_dim": 2304,
        "torch_dtype": "bfloat16",
        "vision_use_head": false
      }
    }"#;

    fn write_temp(text: &str) -> tempfile::NamedTempFile {
        use std::io::Write;
        let mut file = tempfile::NamedTempFile::new().unwrap();
        file.write_all(text.as_bytes()).unwrap();
        file
    }

    #[test]
    fn published_totals_match_verified_counts() {
        for (size, totals) in VERIFIED_TOTALS {
            for (resolution, expected) in Resolution::ALL.into_iter().zip(totals) {
                let counts = PaliGemmaConfig::published(size, resolution).param_counts();
                assert_eq!(counts.total, expected, "{size}@{resolution}");
            }
        }
    }

    #[test]
    fn published_part_counts_match_reference() {
        let c = PaliGemmaConfig::published(Size::B3, Resolution::R224).param_counts();
        // docs/model-reference.md §1: vision 412.4M at 224, 416.9M at 896; projector 2.66M;
        // embedding 592.6M.
        assert_eq!(c.vision, 412_442_352);
        assert_eq!(c.projector, 2_656_512);
        assert_eq!(c.embedding, 257_216 * 2304);
        let c896 = PaliGemmaConfig::published(Size::B3, Resolution::R896).param_counts();
        assert_eq!((c896.vision + 50_000) / 100_000, 4169);
        let projectors: Vec<u64> = Size::ALL
            .map(|s| {
                (PaliGemmaConfig::published(s, Resolution::R224)
                    .param_counts()
                    .projector
                    + 5_000)
                    / 10_000
            })
            .to_vec();
        assert_eq!(projectors, [266, 413, 531]);
    }

    #[test]
    fn linear_breakdown_is_consistent() {
        for size in Size::ALL {
            for resolution in Resolution::ALL {
                for config in [
                    PaliGemmaConfig::published(size, resolution),
                    PaliGemmaConfig::tiny(size, resolution),
                ] {
                    let c = config.param_counts();
                    // Everything but linears: embedding, norms, conv, position table.
                    let v = &config.vision_config;
                    let (vh, h) = (
                        u64::from(v.hidden_size),
                        u64::from(config.text_config.hidden_size),
                    );
                    let vision_other = c.vision
                        - u64::from(v.num_hidden_layers)
                            * (4 * vh * vh + 2 * vh * u64::from(v.intermediate_size));
                    let lm_other = u64::from(config.text_config.num_hidden_layers) * 4 * h + h;
                    let projector_weight = vh * h;
                    assert_eq!(
                        c.total - c.linear_params,
                        vision_other + (c.projector - projector_weight) + c.embedding + lm_other,
                        "{size}@{resolution}"
                    );
                }
            }
        }
        // 3B, docs/model-reference.md §11: ≈1.26 GB of NF4 linears at 0.5159 B/param.
        let c = PaliGemmaConfig::published(Size::B3, Resolution::R224).param_counts();
        assert_eq!(c.linear_params, 2_438_000_640);
        assert_eq!(c.linear_bias_params, 27 * (4 * 1152 + 4304 + 1152) + 2304);
    }

    #[test]
    fn lora_counts_match_reference() {
        // docs/model-reference.md §9: r=8 on the 7-name list (LM, vision).
        let expected = [
            (Size::B3, 10_383_360),
            (Size::B10, 27_009_024),
            (Size::B28, 57_090_048),
        ];
        let targets = default_targets();
        for (size, lm) in expected {
            let config = PaliGemmaConfig::published(size, Resolution::R224);
            assert_eq!(config.lora_params(8, &targets, false), lm, "{size}");
            assert_eq!(
                config.lora_params(8, &targets, true),
                lm + 1_492_992,
                "{size}"
            );
        }
        let config = PaliGemmaConfig::published(Size::B3, Resolution::R448);
        assert_eq!(config.lora_params(8, &targets, true), 11_876_352);
    }

    #[test]
    fn lora_target_matching_is_peft_suffix_matching() {
        let config = PaliGemmaConfig::published(Size::B3, Resolution::R224);
        let targets = |names: &[&str]| names.iter().map(|s| (*s).to_string()).collect::<Vec<_>>();
        // `proj` is not a suffix after a dot of `q_proj`.
        assert_eq!(config.lora_params(8, &targets(&["proj"]), true), 0);
        // Dotted targets narrow the match: only SigLIP has `self_attn.out_proj`.
        let out_proj = config.lora_params(4, &targets(&["self_attn.out_proj"]), true);
        assert_eq!(out_proj, 27 * 4 * (1152 + 1152));
        assert_eq!(config.lora_params(4, &targets(&["out_proj"]), false), 0);
        // The projector and the tied head are linears PEFT can target too.
        assert_eq!(
            config.lora_params(1, &targets(&["linear"]), false),
            1152 + 2304
        );
        assert_eq!(
            config.lora_params(1, &targets(&["lm_head"]), false),
            2304 + 257_216
        );
        // A full name matches itself.
        let full = targets(&["language_model.model.layers.0.mlp.down_proj"]);
        assert_eq!(config.lora_params(2, &full, false), 2 * (9216 + 2304));
    }

    #[test]
    fn tiny_presets_exercise_every_code_path() {
        for size in Size::ALL {
            let mut tokens = Vec::new();
            for resolution in Resolution::ALL {
                let c = PaliGemmaConfig::tiny(size, resolution);
                c.validate().unwrap();
                let t = &c.text_config;
                assert!(t.num_key_value_heads < t.num_attention_heads);
                assert_ne!(t.head_dim * t.num_attention_heads, t.hidden_size);
                assert_ne!(t.query_pre_attn_scalar, t.head_dim);
                assert_eq!(t.attn_logit_softcapping, Some(50.0));
                assert_eq!(t.final_logit_softcapping, Some(30.0));
                // Every sequence is longer: image tokens + `<bos>` + ...
                assert!(t.sliding_window <= c.num_image_tokens());
                assert_eq!(c.image_token_index, t.vocab_size - 1);
                tokens.push(c.num_image_tokens());
            }
            assert_eq!(tokens, [16, 64, 256]);
        }
        let layers = Size::ALL.map(|s| {
            PaliGemmaConfig::tiny(s, Resolution::R224)
                .text_config
                .num_hidden_layers
        });
        assert_eq!(layers, [2, 3, 4]);
    }

    #[test]
    fn published_presets_validate_and_count_image_tokens() {
        for size in Size::ALL {
            let tokens = Resolution::ALL.map(|r| {
                let c = PaliGemmaConfig::published(size, r);
                c.validate().unwrap();
                c.num_image_tokens()
            });
            assert_eq!(tokens, [256, 1024, 4096]);
        }
    }

    #[test]
    fn serde_round_trip() {
        for size in Size::ALL {
            for resolution in Resolution::ALL {
                for mut config in [
                    PaliGemmaConfig::published(size, resolution),
                    PaliGemmaConfig::tiny(size, resolution),
                ] {
                    let json = serde_json::to_string_pretty(&config).unwrap();
                    let back: PaliGemmaConfig = serde_json::from_str(&json).unwrap();
                    assert_eq!(back, config);
                    // A disabled cap must stay disabled, not fall back to 50.
                    config.text_config.attn_logit_softcapping = None;
                    let json = serde_json::to_string(&config).unwrap();
                    let back: PaliGemmaConfig = serde_json::from_str(&json).unwrap();
                    assert_eq!(back.text_config.attn_logit_softcapping, None);
                }
            }
        }
    }

    #[test]
    fn reads_published_config_json_ignoring_unknown_keys() {
        let file = write_temp(HF_3B_224);
        let config = PaliGemmaConfig::from_json_file(file.path()).unwrap();
        // Omitted keys take transformers' defaults, which are 3B-224's values.
        assert_eq!(
            config,
            PaliGemmaConfig::published(Size::B3, Resolution::R224)
        );
    }

    #[test]
    fn missing_key_error_names_key_and_path() {
        let text = HF_3B_224.replace("\"num_key_value_heads\": 4,", "");
        let file = write_temp(&text);
        let err = PaliGemmaConfig::from_json_file(file.path()).unwrap_err();
        assert!(matches!(err, ConfigError::Parse { .. }), "{err:?}");
        let message = err.to_string();
        assert!(message.contains("num_key_value_heads"), "{message}");
        assert!(
            message.contains(&file.path().display().to_string()),
            "{message}"
        );
    }

    #[test]
    fn unreadable_and_inconsistent_files_are_typed_errors() {
        let err = PaliGemmaConfig::from_json_file("/nonexistent/config.json").unwrap_err();
        assert!(matches!(err, ConfigError::Read { .. }), "{err:?}");
        assert!(err.to_string().contains("/nonexistent/config.json"));

        let text = HF_3B_224.replace("\"projection_dim\": 2304", "\"projection_dim\": 2048");
        let file = write_temp(&text);
        let err = PaliGemmaConfig::from_json_file(file.path()).unwrap_err();
        assert!(matches!(err, ConfigError::Invalid { .. }), "{err:?}");
        assert!(err.to_string().contains("projection_dim"), "{err}");
    }
}

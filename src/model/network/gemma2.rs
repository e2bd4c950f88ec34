//! Gemma 2, the language model of `PaliGemma` 2, as transformers 5.24
//! `modeling_gemma2.py` computes it (its eager attention: soft-capping rules
//! out torch's fused kernels), docs/model-reference.md §2.3. The same ops
//! also run over chunks of queries in a custom autograd function that keeps
//! no `[B, heads, Lq, Lk]` tensor ([`AttentionMode`]).
//!
//! Layout follows candle: the config ([`TextConfig`], HF names) → private
//! layer structs whose fields are named like their weight-path segments →
//! the public [`Gemma2Model`]. Every dtype step of transformers is kept:
//! `RMSNorm` and softmax in f32, everything else (projections, `RoPE`
//! products, soft-caps, residual adds, the tied head) in the compute dtype.
//!
//! Every projection is a [`Linear`], the one linear type of all towers
//! (frozen, NF4, `LoRA` or trainable, as the adaptation plan decides).

use std::cell::OnceCell;

use tch::{Device, Kind, TchError, Tensor};

use crate::model::checkpoint::weights::WeightError;
use crate::model::config::TextConfig;
use crate::model::network::attention::{
    AttentionImpl, AttentionMode, chunk_rows, chunked, dtype_min,
};
use crate::model::network::kernels;
use crate::model::network::layer_path::LayerPath;
use crate::model::network::linear::Linear;

// ---------------------------------------------------------------------------
// Building blocks shared with `siglip.rs` and `paligemma.rs`
// ---------------------------------------------------------------------------

/// `tanh(x / cap) · cap` in the dtype of `x`, as transformers writes it.
fn soft_cap(x: &Tensor, cap: Option<f64>) -> Result<Tensor, TchError> {
    match cap {
        Some(cap) => x.f_div_scalar(cap)?.f_tanh()?.f_mul_scalar(cap),
        None => Ok(x.shallow_clone()),
    }
}

// ---------------------------------------------------------------------------
// Masks
// ---------------------------------------------------------------------------

/// The attention masks of one forward pass, built on first use: where a
/// query may not attend (`[B, 1, Lq, Lk]`, bool; the memory-efficient path)
/// and the additive masks of the eager path (0 where a query may attend,
/// `finfo.min` elsewhere, in the compute dtype). One of each for the global
/// and one for the sliding-window layers, shared by every layer of the pass.
#[derive(Debug)]
pub struct AttentionMasks {
    key_mask: Tensor,
    /// `token_type_ids == 0`: the bidirectional prefix block.
    prefix: Option<Tensor>,
    q_start: i64,
    q_len: i64,
    sliding_window: i64,
    kind: Kind,
    /// (global layers, sliding-window layers).
    blocked: OnceCell<(Tensor, Tensor)>,
    dense: OnceCell<(Tensor, Tensor)>,
}

impl AttentionMasks {
    /// The transformers 5 prefix-LM masks (docs/model-reference.md §3) for queries at
    /// sequence indices `q_start..q_start + q_len` over keys `0..Lk`:
    /// `allowed = (causal [∧ k > q − window] ∨ (tt[q] = 0 ∧ tt[k] = 0)) ∧
    /// key_mask[k]`. `key_mask` `[B, Lk]` is the attention mask of every key
    /// (cached ones included); `token_type_ids` `[B, Lk]` enables the
    /// bidirectional prefix block (first pass only, as transformers does).
    pub fn new(
        key_mask: &Tensor,
        token_type_ids: Option<&Tensor>,
        q_start: i64,
        q_len: i64,
        sliding_window: i64,
        kind: Kind,
    ) -> Result<Self, TchError> {
        Ok(Self {
            key_mask: key_mask.shallow_clone(),
            prefix: token_type_ids.map(|tt| tt.f_eq(0)).transpose()?,
            q_start,
            q_len,
            sliding_window,
            kind,
            blocked: OnceCell::new(),
            dense: OnceCell::new(),
        })
    }

    /// Where a query of the global (`sliding = false`) or the sliding-window
    /// layers may not attend, `[B, 1, Lq, Lk]`.
    pub fn blocked(&self, sliding: bool) -> Result<&Tensor, TchError> {
        if self.blocked.get().is_none() {
            let blocked = |window| {
                prefix_lm_blocked(
                    &self.key_mask,
                    self.prefix.as_ref(),
                    self.q_start,
                    self.q_len,
                    window,
                )
            };
            let _ = self
                .blocked
                .set((blocked(None)?, blocked(Some(self.sliding_window))?));
        }
        let (full, window) = self.blocked.get().expect("set above");
        Ok(if sliding { window } else { full })
    }

    /// The additive mask of the global or the sliding-window layers for the
    /// queries `start..start + len` of the pass. The whole pass's masks are
    /// built once and shared by every layer; a narrower window (the last
    /// layer's [`QueryWindow`]) gets its own rows only, since the whole
    /// `[B, 1, Lq, Lk]` masks would be two `Lq × Lk` tensors per sample that
    /// the chunked layers never read (at 896 px, 271 MiB each at batch 4).
    pub fn dense(&self, sliding: bool, start: i64, len: i64) -> Result<Tensor, TchError> {
        if start != 0 || len != self.q_len {
            let blocked = self.blocked(sliding)?.f_narrow(2, start, len)?;
            return additive(&blocked, self.kind);
        }
        if self.dense.get().is_none() {
            let dense = |sliding| additive(self.blocked(sliding)?, self.kind);
            let _ = self.dense.set((dense(false)?, dense(true)?));
        }
        let (full, window) = self.dense.get().expect("set above");
        Ok(if sliding { window } else { full }.shallow_clone())
    }
}

/// Where a query may not attend, `[B, 1, Lq, Lk]` (bool); see
/// [`AttentionMasks::new`] (`prefix` is `token_type_ids == 0`).
pub fn prefix_lm_blocked(
    key_mask: &Tensor,
    prefix: Option<&Tensor>,
    q_start: i64,
    q_len: i64,
    sliding_window: Option<i64>,
) -> Result<Tensor, TchError> {
    let device = key_mask.device();
    let (_, k_len) = key_mask.size2()?;
    let q =
        Tensor::f_arange_start(q_start, q_start + q_len, (Kind::Int64, device))?.f_unsqueeze(1)?;
    let k = Tensor::f_arange(k_len, (Kind::Int64, device))?.f_unsqueeze(0)?;
    let mut allowed = k.f_le_tensor(&q)?;
    if let Some(window) = sliding_window {
        allowed = allowed.f_logical_and(&k.f_gt_tensor(&q.f_sub_scalar(window)?)?)?;
    }
    let mut allowed = allowed.f_unsqueeze(0)?;
    if let Some(prefix) = prefix {
        let q_prefix = prefix.f_narrow(1, q_start, q_len)?.f_unsqueeze(2)?;
        let k_prefix = prefix.f_unsqueeze(1)?;
        allowed = allowed.f_logical_or(&q_prefix.f_logical_and(&k_prefix)?)?;
    }
    allowed
        .f_logical_and(&key_mask.f_ne(0)?.f_unsqueeze(1)?)?
        .f_logical_not()?
        .f_unsqueeze(1)
}

/// The additive mask of `blocked`: `finfo(kind).min` there, 0 elsewhere.
fn additive(blocked: &Tensor, kind: Kind) -> Result<Tensor, TchError> {
    // In place: `masked_fill` would clone the zeros, two masks alive at once.
    let mut mask = Tensor::f_zeros(blocked.size(), (kind, blocked.device()))?;
    let _ = mask.f_masked_fill_(blocked, dtype_min(kind))?;
    Ok(mask)
}

/// One additive prefix-LM mask `[B, 1, Lq, Lk]` (see [`prefix_lm_blocked`]).
pub fn prefix_lm_mask(
    key_mask: &Tensor,
    prefix: Option<&Tensor>,
    q_start: i64,
    q_len: i64,
    sliding_window: Option<i64>,
    kind: Kind,
) -> Result<Tensor, TchError> {
    additive(
        &prefix_lm_blocked(key_mask, prefix, q_start, q_len, sliding_window)?,
        kind,
    )
}

/// The positions `start..start + len` of a cache-less pass whose outputs are
/// needed. The last decoder layer computes only those queries (and their
/// MLP): the loss reads its output at supervised positions alone, and
/// every other position feeds that layer only through its keys and values.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QueryWindow {
    pub start: i64,
    pub len: i64,
}

impl QueryWindow {
    /// The window of `x` `[B, L, …]` along the sequence.
    fn of(self, x: &Tensor) -> Result<Tensor, TchError> {
        x.f_narrow(1, self.start, self.len)
    }
}

/// The per-pass inputs of the decoder layers (see [`Gemma2Model::pass`]).
#[derive(Debug)]
pub struct DecoderPass {
    cos: Tensor,
    sin: Tensor,
    masks: AttentionMasks,
    /// The positions the last layer computes (all when `None`).
    window: Option<QueryWindow>,
}

// ---------------------------------------------------------------------------
// Layers
// ---------------------------------------------------------------------------

/// `Gemma2RMSNorm`: `(x·rsqrt(mean(x²) + eps))·(1 + w)` in f32, then cast
/// back to the input dtype.
#[derive(Debug)]
struct RmsNorm {
    /// The stored weight (an offset from 1), in the compute dtype; a
    /// variable when trained.
    weight: Tensor,
    /// `1 + weight` in f32, precomputed when the weight is frozen.
    scale: Option<Tensor>,
    eps: f64,
}

impl RmsNorm {
    fn new(path: &LayerPath, size: i64, eps: f64) -> Result<Self, WeightError> {
        let weight = path.get("weight", &[size])?;
        let scale = if weight.requires_grad() {
            None
        } else {
            Some(Self::scale_of(&weight).map_err(|source| WeightError::Tch {
                name: path.name("weight"),
                source,
            })?)
        };
        Ok(Self { weight, scale, eps })
    }

    fn scale_of(weight: &Tensor) -> Result<Tensor, TchError> {
        weight.f_to_kind(Kind::Float)?.f_add_scalar(1.0)
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor, TchError> {
        let xf = x.f_to_kind(Kind::Float)?;
        let variance = xf
            .f_pow_tensor_scalar(2)?
            .f_mean_dim(-1, true, None::<Kind>)?;
        let normed = xf.f_mul(&variance.f_add_scalar(self.eps)?.f_rsqrt()?)?;
        let scale = match &self.scale {
            Some(scale) => scale.shallow_clone(),
            None => Self::scale_of(&self.weight)?,
        };
        normed.f_mul(&scale)?.f_to_kind(x.kind())
    }
}

/// Default `RoPE` over the full head dim ("rotate half" pairing).
#[derive(Debug)]
struct RotaryEmbedding {
    /// `1 / theta^(2j/d)`, f32 `[d/2]`, computed on the CPU like transformers.
    inv_freq: Tensor,
}

impl RotaryEmbedding {
    fn new(head_dim: i64, theta: f64, device: Device) -> Result<Self, TchError> {
        let exponent = Tensor::f_arange_start_step(0, head_dim, 2, (Kind::Float, Device::Cpu))?
            .f_div_scalar(head_dim)?;
        let inv_freq = Tensor::f_pow_scalar(theta, &exponent)?
            .f_reciprocal()?
            .f_to_device(device)?;
        Ok(Self { inv_freq })
    }

    /// `(cos, sin)` for `position_ids` `[B, L]`, each `[B, 1, L, d]` in `kind`
    /// (angles in f32, cast like transformers).
    fn cos_sin(&self, position_ids: &Tensor, kind: Kind) -> Result<(Tensor, Tensor), TchError> {
        let freqs = position_ids
            .f_to_kind(Kind::Float)?
            .f_unsqueeze(-1)?
            .f_mul(&self.inv_freq)?;
        let emb = Tensor::f_cat(&[&freqs, &freqs], -1)?;
        let cos = emb.f_cos()?.f_to_kind(kind)?.f_unsqueeze(1)?;
        let sin = emb.f_sin()?.f_to_kind(kind)?.f_unsqueeze(1)?;
        Ok((cos, sin))
    }
}

/// `x·cos + rotate_half(x)·sin`, `rotate_half([x1, x2]) = [−x2, x1]`.
fn apply_rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor, TchError> {
    let half = x.size().last().copied().unwrap_or(0) / 2;
    let x1 = x.f_narrow(-1, 0, half)?;
    let x2 = x.f_narrow(-1, half, half)?;
    let rotated = Tensor::f_cat(&[&x2.f_neg()?, &x1], -1)?;
    x.f_mul(cos)?.f_add(&rotated.f_mul(sin)?)
}

/// `repeat_kv`: `[B, kv, L, d]` → `[B, kv·n, L, d]`, head `g` using kv head
/// `g / n`.
fn repeat_kv(x: &Tensor, n_rep: i64) -> Result<Tensor, TchError> {
    if n_rep == 1 {
        return Ok(x.shallow_clone());
    }
    let (b, kv, l, d) = x.size4()?;
    x.f_unsqueeze(2)?
        .f_expand([b, kv, n_rep, l, d], false)?
        .f_reshape([b, kv * n_rep, l, d])
}

/// Keys and values of one layer for incremental decoding, preallocated to
/// the whole generation length: `[B, kv_heads, capacity, head_dim]`.
#[derive(Debug)]
struct LayerCache {
    k: Tensor,
    v: Tensor,
}

impl LayerCache {
    /// Writes `k`, `v` at `offset` and returns every key/value so far.
    fn update(
        &mut self,
        k: &Tensor,
        v: &Tensor,
        offset: i64,
    ) -> Result<(Tensor, Tensor), TchError> {
        let len = k.size()[2];
        self.k.f_narrow(2, offset, len)?.f_copy_(k)?;
        self.v.f_narrow(2, offset, len)?.f_copy_(v)?;
        Ok((
            self.k.f_narrow(2, 0, offset + len)?,
            self.v.f_narrow(2, 0, offset + len)?,
        ))
    }
}

/// The key/value cache of every layer, filled by the prefill and extended
/// one token per decode step. Keys are stored after `RoPE`.
#[derive(Debug)]
pub struct KvCache {
    layers: Vec<LayerCache>,
    len: i64,
    capacity: i64,
}

impl KvCache {
    /// Number of positions filled.
    pub fn len(&self) -> i64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn capacity(&self) -> i64 {
        self.capacity
    }
}

#[derive(Debug)]
struct Attention {
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    o_proj: Linear,
    num_heads: i64,
    num_kv_heads: i64,
    head_dim: i64,
    /// `query_pre_attn_scalar^-0.5` (not `head_dim^-0.5` in general).
    scaling: f64,
    softcap: Option<f64>,
    /// Even layer indices use the sliding-window mask.
    is_sliding: bool,
    implementation: AttentionImpl,
}

impl Attention {
    fn new(cfg: &TextConfig, path: &LayerPath, index: usize) -> Result<Self, WeightError> {
        let h = i64::from(cfg.hidden_size);
        let (nh, nkv, hd) = (
            i64::from(cfg.num_attention_heads),
            i64::from(cfg.num_key_value_heads),
            i64::from(cfg.head_dim),
        );
        let bias = cfg.attention_bias;
        Ok(Self {
            q_proj: Linear::new(&path.pp("q_proj"), h, nh * hd, bias)?,
            k_proj: Linear::new(&path.pp("k_proj"), h, nkv * hd, bias)?,
            v_proj: Linear::new(&path.pp("v_proj"), h, nkv * hd, bias)?,
            o_proj: Linear::new(&path.pp("o_proj"), nh * hd, h, bias)?,
            num_heads: nh,
            num_kv_heads: nkv,
            head_dim: hd,
            scaling: f64::from(cfg.query_pre_attn_scalar).powf(-0.5),
            softcap: cfg.attn_logit_softcapping,
            is_sliding: index.is_multiple_of(2),
            implementation: AttentionMode::default().decoder(),
        })
    }

    /// Attention of the queries in `window` (all when `None`) over every
    /// key of `x`; the output covers the window's positions.
    fn forward(
        &self,
        x: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        masks: &AttentionMasks,
        cache: Option<(&mut LayerCache, i64)>,
        window: Option<QueryWindow>,
    ) -> Result<Tensor, TchError> {
        let (batch, len, _) = x.size3()?;
        let queries = window.unwrap_or(QueryWindow { start: 0, len });
        // cos/sin `[B, 1, L, d]`: narrowed on dim 2 (a view, free when the
        // window is everything).
        let (cos_q, sin_q) = (
            cos.f_narrow(2, queries.start, queries.len)?,
            sin.f_narrow(2, queries.start, queries.len)?,
        );
        let heads =
            |t: Tensor, l: i64, n: i64| t.f_view([batch, l, n, self.head_dim])?.f_transpose(1, 2);
        let q = heads(
            self.q_proj.forward(&queries.of(x)?)?,
            queries.len,
            self.num_heads,
        )?;
        let k = heads(self.k_proj.forward(x)?, len, self.num_kv_heads)?;
        let v = heads(self.v_proj.forward(x)?, len, self.num_kv_heads)?;
        let q = apply_rope(&q, &cos_q, &sin_q)?;
        let k = apply_rope(&k, cos, sin)?;
        let (k, v) = match cache {
            Some((cache, offset)) => cache.update(&k, &v, offset)?,
            None => (k, v),
        };
        let k_len = k.size()[2];
        let scores = batch * self.num_heads * queries.len * k_len;
        let out = if chunked(self.implementation, scores) {
            let blocked =
                masks
                    .blocked(self.is_sliding)?
                    .f_narrow(2, queries.start, queries.len)?;
            kernels::chunked_attention(
                &q,
                &k,
                &v,
                Some(&blocked),
                self.scaling,
                self.softcap,
                chunk_rows(q.device(), batch, self.num_heads, queries.len, k_len),
            )?
        } else {
            let mask = masks.dense(self.is_sliding, queries.start, queries.len)?;
            let n_rep = self.num_heads / self.num_kv_heads;
            let k = repeat_kv(&k, n_rep)?;
            let v = repeat_kv(&v, n_rep)?;
            let scores = q
                .f_matmul(&k.f_transpose(2, 3)?)?
                .f_mul_scalar(self.scaling)?;
            let scores = soft_cap(&scores, self.softcap)?.f_add(&mask)?;
            let probs = scores.f_softmax(-1, Kind::Float)?.f_to_kind(q.kind())?;
            probs.f_matmul(&v)?
        };
        let out = out
            .f_transpose(1, 2)?
            .f_contiguous()?
            .f_reshape([batch, queries.len, -1])?;
        self.o_proj.forward(&out)
    }
}

#[derive(Debug)]
#[allow(clippy::struct_field_names)] // the weight-path segments
struct Mlp {
    gate_proj: Linear,
    up_proj: Linear,
    down_proj: Linear,
}

impl Mlp {
    fn new(cfg: &TextConfig, path: &LayerPath) -> Result<Self, WeightError> {
        let (h, i) = (i64::from(cfg.hidden_size), i64::from(cfg.intermediate_size));
        Ok(Self {
            gate_proj: Linear::new(&path.pp("gate_proj"), h, i, false)?,
            up_proj: Linear::new(&path.pp("up_proj"), h, i, false)?,
            down_proj: Linear::new(&path.pp("down_proj"), i, h, false)?,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor, TchError> {
        let gate = self.gate_proj.forward(x)?.f_gelu("tanh")?;
        self.down_proj
            .forward(&gate.f_mul(&self.up_proj.forward(x)?)?)
    }
}

#[derive(Debug)]
struct DecoderLayer {
    self_attn: Attention,
    mlp: Mlp,
    input_layernorm: RmsNorm,
    post_attention_layernorm: RmsNorm,
    pre_feedforward_layernorm: RmsNorm,
    post_feedforward_layernorm: RmsNorm,
}

impl DecoderLayer {
    fn new(cfg: &TextConfig, path: &LayerPath, index: usize) -> Result<Self, WeightError> {
        let (h, eps) = (i64::from(cfg.hidden_size), cfg.rms_norm_eps);
        Ok(Self {
            self_attn: Attention::new(cfg, &path.pp("self_attn"), index)?,
            mlp: Mlp::new(cfg, &path.pp("mlp"))?,
            input_layernorm: RmsNorm::new(&path.pp("input_layernorm"), h, eps)?,
            post_attention_layernorm: RmsNorm::new(&path.pp("post_attention_layernorm"), h, eps)?,
            pre_feedforward_layernorm: RmsNorm::new(&path.pp("pre_feedforward_layernorm"), h, eps)?,
            post_feedforward_layernorm: RmsNorm::new(
                &path.pp("post_feedforward_layernorm"),
                h,
                eps,
            )?,
        })
    }

    /// The layer's output at the positions of `window` (all when `None`).
    fn forward(
        &self,
        x: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        masks: &AttentionMasks,
        cache: Option<(&mut LayerCache, i64)>,
        window: Option<QueryWindow>,
    ) -> Result<Tensor, TchError> {
        let h = self.input_layernorm.forward(x)?;
        let h = self.self_attn.forward(&h, cos, sin, masks, cache, window)?;
        let h = self.post_attention_layernorm.forward(&h)?;
        let x = match window {
            Some(w) => w.of(x)?,
            None => x.shallow_clone(),
        }
        .f_add(&h)?;
        let h = self.pre_feedforward_layernorm.forward(&x)?;
        let h = self.mlp.forward(&h)?;
        let h = self.post_feedforward_layernorm.forward(&h)?;
        x.f_add(&h)
    }
}

// ---------------------------------------------------------------------------
// Model
// ---------------------------------------------------------------------------

/// The Gemma 2 decoder with its tied, soft-capped head. Built from the
/// `language_model` subtree (`model.embed_tokens`, `model.layers.*`,
/// `model.norm`).
#[derive(Debug)]
pub struct Gemma2Model {
    /// Token embedding `[vocab, hidden]`, also the `lm_head` weight.
    embed_tokens: Tensor,
    layers: Vec<DecoderLayer>,
    norm: RmsNorm,
    rotary_emb: RotaryEmbedding,
    /// `√hidden` as f32, then cast to the compute dtype (0-dim).
    embed_scale: Tensor,
    vocab_size: i64,
    hidden_size: i64,
    num_kv_heads: i64,
    head_dim: i64,
    sliding_window: i64,
    final_logit_softcapping: Option<f64>,
}

impl Gemma2Model {
    /// Loads the decoder from `path` (the `language_model` level). The
    /// vocabulary size is the embedding's row count, not `cfg.vocab_size`
    /// (docs/model-reference.md §1).
    pub fn new(cfg: &TextConfig, path: &LayerPath) -> Result<Self, WeightError> {
        let model = path.pp("model");
        let h = i64::from(cfg.hidden_size);
        let embed_shape = model.pp("embed_tokens").shape("weight")?;
        let vocab_size = match embed_shape.as_slice() {
            [rows, _] => *rows,
            _ => 0,
        };
        let embed_tokens = model.pp("embed_tokens").get("weight", &[vocab_size, h])?;
        let layers = (0..cfg.num_hidden_layers as usize)
            .map(|i| DecoderLayer::new(cfg, &model.pp("layers").pp(i), i))
            .collect::<Result<Vec<_>, _>>()?;
        let norm = RmsNorm::new(&model.pp("norm"), h, cfg.rms_norm_eps)?;
        let tch_err = |source| WeightError::Tch {
            name: model.name("rotary_emb"),
            source,
        };
        let rotary_emb =
            RotaryEmbedding::new(i64::from(cfg.head_dim), cfg.rope_theta, path.device())
                .map_err(tch_err)?;
        // transformers: `torch.tensor(hidden**0.5)` (f32) `.to(weight.dtype)`.
        let embed_scale = Tensor::f_from_slice(&[(f64::from(cfg.hidden_size).sqrt()) as f32])
            .and_then(|t| t.f_reshape([] as [i64; 0]))
            .and_then(|t| t.f_to_kind(path.kind()))
            .and_then(|t| t.f_to_device(path.device()))
            .map_err(tch_err)?;
        Ok(Self {
            embed_tokens,
            layers,
            norm,
            rotary_emb,
            embed_scale,
            vocab_size,
            hidden_size: h,
            num_kv_heads: i64::from(cfg.num_key_value_heads),
            head_dim: i64::from(cfg.head_dim),
            sliding_window: i64::from(cfg.sliding_window),
            final_logit_softcapping: cfg.final_logit_softcapping,
        })
    }

    /// How every layer computes attention.
    pub fn set_attention(&mut self, implementation: AttentionImpl) {
        for layer in &mut self.layers {
            layer.self_attn.implementation = implementation;
        }
    }

    /// Rows of the token embedding (257216 for the published checkpoints).
    pub fn vocab_size(&self) -> i64 {
        self.vocab_size
    }

    pub fn hidden_size(&self) -> i64 {
        self.hidden_size
    }

    pub fn sliding_window(&self) -> i64 {
        self.sliding_window
    }

    /// The token embedding matrix (= the tied head's weight).
    pub fn embed_weight(&self) -> &Tensor {
        &self.embed_tokens
    }

    /// `Gemma2TextScaledWordEmbedding`: `E[ids] · √hidden` in the compute
    /// dtype.
    pub fn embed(&self, input_ids: &Tensor) -> Result<Tensor, TchError> {
        Tensor::f_embedding(&self.embed_tokens, input_ids, -1, false, false)?
            .f_mul(&self.embed_scale)
    }

    /// An empty cache for `batch` rows and up to `capacity` positions.
    pub fn new_cache(&self, batch: i64, capacity: i64) -> Result<KvCache, TchError> {
        let options = (self.embed_tokens.kind(), self.embed_tokens.device());
        let shape = [batch, self.num_kv_heads, capacity, self.head_dim];
        let layers = self
            .layers
            .iter()
            .map(|_| {
                Ok(LayerCache {
                    k: Tensor::f_zeros(shape, options)?,
                    v: Tensor::f_zeros(shape, options)?,
                })
            })
            .collect::<Result<Vec<_>, TchError>>()?;
        Ok(KvCache {
            layers,
            len: 0,
            capacity,
        })
    }

    /// Runs the decoder layers and the final norm over `inputs_embeds`
    /// `[B, L, hidden]` at `position_ids` `[B, L]`. With a cache, the new
    /// keys/values are stored at `cache.len()..` and attention covers every
    /// cached position (the masks must be `[B, 1, L, cache.len() + L]`).
    /// With a `window` (no cache), the result covers its positions only.
    pub fn forward_embeds(
        &self,
        inputs_embeds: &Tensor,
        position_ids: &Tensor,
        masks: &AttentionMasks,
        mut cache: Option<&mut KvCache>,
        window: Option<QueryWindow>,
    ) -> Result<Tensor, TchError> {
        let (cos, sin) = self
            .rotary_emb
            .cos_sin(position_ids, inputs_embeds.kind())?;
        let offset = cache.as_ref().map_or(0, |c| c.len);
        let mut x = inputs_embeds.shallow_clone();
        for (i, layer) in self.layers.iter().enumerate() {
            let layer_cache = cache.as_deref_mut().map(|c| (&mut c.layers[i], offset));
            x = layer.forward(
                &x,
                &cos,
                &sin,
                masks,
                layer_cache,
                self.window_at(i, window),
            )?;
        }
        if let Some(cache) = cache {
            cache.len = offset + inputs_embeds.size()[1];
        }
        self.norm.forward(&x)
    }

    /// What every layer of one cache-less pass shares: the rotary tables at
    /// `position_ids`, the masks, and the window of the last layer.
    pub fn pass(
        &self,
        position_ids: &Tensor,
        masks: AttentionMasks,
        kind: Kind,
        window: Option<QueryWindow>,
    ) -> Result<DecoderPass, TchError> {
        let (cos, sin) = self.rotary_emb.cos_sin(position_ids, kind)?;
        Ok(DecoderPass {
            cos,
            sin,
            masks,
            window,
        })
    }

    pub fn num_layers(&self) -> usize {
        self.layers.len()
    }

    /// Decoder layer `index` on `x` without a cache; layer by layer so that
    /// training can recompute one layer at a time (gradient checkpointing).
    /// The last layer's output covers the pass's window only (see
    /// [`QueryWindow`]).
    pub fn layer(&self, index: usize, x: &Tensor, pass: &DecoderPass) -> Result<Tensor, TchError> {
        let window = self.window_at(index, pass.window);
        self.layers[index].forward(x, &pass.cos, &pass.sin, &pass.masks, None, window)
    }

    /// The window layer `index` computes: the pass's in the last layer,
    /// every position elsewhere.
    fn window_at(&self, index: usize, window: Option<QueryWindow>) -> Option<QueryWindow> {
        window.filter(|_| index + 1 == self.layers.len())
    }

    /// The final `model.norm`.
    pub fn final_norm(&self, x: &Tensor) -> Result<Tensor, TchError> {
        self.norm.forward(x)
    }

    /// The tied `lm_head` and the final soft-cap on normed hidden states
    /// (any leading shape), in the compute dtype.
    pub fn logits(&self, hidden: &Tensor) -> Result<Tensor, TchError> {
        let logits = hidden.f_linear(&self.embed_tokens, None::<Tensor>)?;
        soft_cap(&logits, self.final_logit_softcapping)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allowed(mask: &Tensor) -> Vec<Vec<Vec<i64>>> {
        let m = mask.f_eq(0).unwrap().to_kind(Kind::Int64).squeeze_dim(1);
        let (b, q, k) = m.size3().unwrap();
        (0..b)
            .map(|bi| {
                (0..q)
                    .map(|qi| (0..k).map(|ki| m.int64_value(&[bi, qi, ki])).collect())
                    .collect()
            })
            .collect()
    }

    #[test]
    fn prefix_lm_mask_matches_the_v5_rule() {
        // Row 0: 3 prefix tokens, 2 suffix tokens, 1 pad.
        // Row 1: 1 left pad, 4 prefix tokens, 1 suffix token.
        let am = Tensor::from_slice(&[1i64, 1, 1, 1, 1, 0, 0, 1, 1, 1, 1, 1]).view([2, 6]);
        let tt = Tensor::from_slice(&[0i64, 0, 0, 1, 1, 0, 0, 0, 0, 0, 0, 1]).view([2, 6]);
        let full = prefix_lm_mask(&am, Some(&tt.eq(0)), 0, 6, None, Kind::Float).unwrap();
        assert_eq!(full.size(), [2, 1, 6, 6]);
        let a = allowed(&full);
        assert_eq!(a[0][0], [1, 1, 1, 0, 0, 0]); // prefix sees the prefix
        assert_eq!(a[0][3], [1, 1, 1, 1, 0, 0]); // suffix: causal
        assert_eq!(a[0][4], [1, 1, 1, 1, 1, 0]);
        assert_eq!(a[0][5], [1, 1, 1, 1, 1, 0]); // pad query: causal, pad key hidden
        assert_eq!(a[1][1], [0, 1, 1, 1, 1, 0]); // left pad key hidden
        assert_eq!(a[1][5], [0, 1, 1, 1, 1, 1]);
        // Sliding window 2: the prefix block is ORed after the window.
        let sliding = prefix_lm_mask(&am, Some(&tt.eq(0)), 0, 6, Some(2), Kind::Float).unwrap();
        let s = allowed(&sliding);
        assert_eq!(s[0][0], [1, 1, 1, 0, 0, 0]);
        assert_eq!(s[0][4], [0, 0, 0, 1, 1, 0]);
        assert_eq!(s[1][5], [0, 0, 0, 0, 1, 1]);
        // Masked value is finfo.min of the dtype.
        let bf = prefix_lm_mask(&am, Some(&tt.eq(0)), 0, 6, None, Kind::BFloat16).unwrap();
        assert_eq!(bf.kind(), Kind::BFloat16);
        let masked = bf.to_kind(Kind::Float).double_value(&[0, 0, 0, 5]);
        assert_eq!(masked.to_bits(), dtype_min(Kind::BFloat16).to_bits());
        // Decode: one query at index 6 over 7 keys, no block rule.
        let am7 = Tensor::from_slice(&[1i64, 1, 1, 1, 1, 0, 1]).view([1, 7]);
        let step = prefix_lm_mask(&am7, None, 6, 1, Some(3), Kind::Float).unwrap();
        assert_eq!(allowed(&step)[0][0], [0, 0, 0, 0, 1, 0, 1]);
    }

    #[test]
    fn a_query_window_gets_its_rows_of_the_pass_masks_alone() {
        let am = Tensor::from_slice(&[1i64, 1, 1, 1, 1, 0, 0, 1, 1, 1, 1, 1]).view([2, 6]);
        let tt = Tensor::from_slice(&[0i64, 0, 0, 1, 1, 0, 0, 0, 0, 0, 0, 1]).view([2, 6]);
        let masks = AttentionMasks::new(&am, Some(&tt), 0, 6, 2, Kind::Float).unwrap();
        let whole = |window| prefix_lm_mask(&am, Some(&tt.eq(0)), 0, 6, window, Kind::Float);
        for (sliding, window) in [(false, None), (true, Some(2))] {
            let rows = masks.dense(sliding, 3, 2).unwrap();
            assert_eq!(rows.size(), [2, 1, 2, 6]);
            assert!(rows.equal(&whole(window).unwrap().narrow(2, 3, 2)));
        }
        // The window's rows alone: the whole pass's masks are not built.
        assert!(masks.dense.get().is_none());
        for (sliding, window) in [(false, None), (true, Some(2))] {
            assert!(
                masks
                    .dense(sliding, 0, 6)
                    .unwrap()
                    .equal(&whole(window).unwrap())
            );
        }
        assert!(masks.dense.get().is_some());
    }

    #[test]
    fn rope_rotates_halves() {
        let rope = RotaryEmbedding::new(4, 10_000.0, Device::Cpu).unwrap();
        let pos = Tensor::from_slice(&[0i64, 1]).view([1, 2]);
        let (cos, sin) = rope.cos_sin(&pos, Kind::Float).unwrap();
        assert_eq!(cos.size(), [1, 1, 2, 4]);
        let x = Tensor::from_slice(&[1f32, 2., 3., 4., 1., 2., 3., 4.]).view([1, 1, 2, 4]);
        let y = apply_rope(&x, &cos, &sin).unwrap();
        // Position 0 is the identity.
        assert!(
            y.get(0)
                .get(0)
                .get(0)
                .allclose(&x.get(0).get(0).get(0), 0.0, 0.0, false)
        );
        // Position 1, pair (x0, x2) rotated by angle 1, pair (x1, x3) by 0.01.
        let (c, s) = (1f64.cos(), 1f64.sin());
        let y0 = y.double_value(&[0, 0, 1, 0]);
        let y2 = y.double_value(&[0, 0, 1, 2]);
        assert!((y0 - (c - 3.0 * s)).abs() < 1e-6 && (y2 - (3.0 * c + s)).abs() < 1e-6);
    }
}

//! `PaliGemma` 2: `SigLIP` tower → linear projector → Gemma 2 decoder with
//! the prefix-LM mask, as transformers 5.24 `PaliGemmaForConditionalGeneration`
//! computes it (docs/model-reference.md §2–§4).
//!
//! * image features enter the decoder unscaled; text embeddings are scaled by
//!   `√hidden` cast to the compute dtype (transformers ≥ PR #44432);
//! * positions are 1-based (`cumsum(attention_mask)` on real tokens, which is
//!   `arange + 1` for right-padded batches and what `generate` uses for
//!   left-padded prompts);
//! * the head is the token embedding (tied), followed by the final soft-cap;
//! * [`PaliGemma::loss`] runs the head only on positions whose next label is
//!   supervised, and the last decoder layer only on the window of positions
//!   from the first to the last of them; it returns the summed
//!   cross-entropy and the token count.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tch::{Device, Kind, Reduction, TchError, Tensor};

use crate::model::adapt::peft::{PeftAdapter, PeftError};
use crate::model::adapt::plan::{AdaptContext, AdaptPlan, Trainables};
use crate::model::checkpoint::weights::{WeightError, Weights};
use crate::model::config::{ConfigError, PaliGemmaConfig};
use crate::model::network::attention::{AttentionImpl, AttentionMode};
use crate::model::network::gemma2::{
    AttentionMasks, DecoderPass, Gemma2Model, KvCache, QueryWindow,
};
use crate::model::network::layer_path::LayerPath;
use crate::model::network::linear::Linear;
use crate::model::network::siglip::SiglipVisionModel;
use crate::model::preprocess::input::ModelInput;

/// Labels equal to this are not supervised (transformers' `ignore_index`).
pub const IGNORE_INDEX: i64 = -100;

/// Why a model could not be built or run.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// A bad `config.json`; the message names the key.
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Weights(#[from] WeightError),
    /// The batch does not fit the model (shapes, image token count, labels).
    #[error("invalid model input: {0}")]
    Input(String),
    #[error("libtorch: {0}")]
    Tch(#[from] TchError),
    /// A PEFT adapter that cannot be read or does not fit the model.
    #[error(transparent)]
    Adapter(#[from] PeftError),
}

impl ModelError {
    /// Whether the checkpoint, the adapter or the input is at fault (bad
    /// input: exit 2, never retried) rather than libtorch.
    pub fn is_bad_input(&self) -> bool {
        match self {
            ModelError::Config(_) | ModelError::Input(_) => true,
            ModelError::Weights(e) => e.is_bad_input(),
            ModelError::Adapter(e) => adapter_is_bad_input(e),
            ModelError::Tch(_) => false,
        }
    }
}

/// An adapter folder that is missing, unreadable, unsupported or does not
/// fit the model is bad input; libtorch failures are not.
pub fn adapter_is_bad_input(error: &PeftError) -> bool {
    match error {
        PeftError::Tch { .. } | PeftError::NotAnAdapter => false,
        PeftError::Weights(e) => e.is_bad_input(),
        _ => true,
    }
}

/// The summed token cross-entropy of a batch; `sum / tokens` is the
/// token-weighted mean transformers reports.
#[derive(Debug)]
pub struct LossOutput {
    /// f32 scalar: the sum over supervised tokens (0 when there are none).
    pub sum: Tensor,
    /// Number of supervised tokens (labels ≠ −100 after the shift).
    pub tokens: i64,
}

impl LossOutput {
    /// `sum / tokens` (NaN for a batch without supervised tokens, as in
    /// transformers).
    pub fn mean(&self) -> Result<Tensor, TchError> {
        self.sum.f_div_scalar(self.tokens as f64)
    }
}

/// `multi_modal_projector`: one linear layer from the vision width to the
/// text width.
#[derive(Debug)]
struct MultiModalProjector {
    linear: Linear,
}

/// The whole model. Build it with [`PaliGemma::load`] (a checkpoint folder)
/// or [`PaliGemma::new`] (a config and a weight path).
#[derive(Debug)]
pub struct PaliGemma {
    config: PaliGemmaConfig,
    vision_tower: SiglipVisionModel,
    multi_modal_projector: MultiModalProjector,
    language_model: Gemma2Model,
    device: Device,
    kind: Kind,
    freeze_vision: bool,
    /// Shared with every `LoRA` branch: dropout is on while set.
    training: Arc<AtomicBool>,
}

impl PaliGemma {
    /// Loads `dir/config.json` and the weights of `dir` (single file or
    /// sharded, either naming convention) as `dtype` on `device` — f32 on
    /// the CPU and bf16 on CUDA are the usual choices. Fails if the files
    /// hold a tensor the model does not use (a tied `lm_head` excepted).
    pub fn load(dir: &Path, device: Device, dtype: Kind) -> Result<Self, ModelError> {
        let config = PaliGemmaConfig::from_json_file(dir.join("config.json"))?;
        let weights = Weights::open(dir, device, dtype)?;
        let model = Self::new(&config, &LayerPath::plain(weights.root()))?;
        weights.finish()?;
        Ok(model)
    }

    /// Loads `dir` for fine-tuning with `plan`: the base frozen (plain
    /// tensors without grad, or NF4 for `qlora`, quantised layer by layer
    /// while loading), fresh `LoRA` branches initialised from `seed` as PEFT
    /// does, and the trainable variables returned in [`Trainables`]. The
    /// vision tower runs without autograd when nothing in it is trained.
    pub fn load_adapted(
        dir: &Path,
        device: Device,
        dtype: Kind,
        plan: &AdaptPlan,
        seed: u64,
    ) -> Result<(Self, Trainables), ModelError> {
        let config = PaliGemmaConfig::from_json_file(dir.join("config.json"))?;
        let weights = Weights::open(dir, device, dtype)?;
        tch::manual_seed(i64::from_ne_bytes(seed.to_ne_bytes()));
        let ctx = AdaptContext::new(plan.clone(), device);
        let mut model = Self::new(&config, &LayerPath::adapted(weights.root(), &ctx))?;
        weights.finish()?;
        model.freeze_vision = !ctx.vision_trainable();
        Ok((model, ctx.finish()))
    }

    /// Loads `dir` with the PEFT adapter in `adapter_dir` applied unmerged on
    /// the dense base (ours or PEFT's, either key form), for evaluation.
    pub fn load_with_adapter(
        dir: &Path,
        adapter_dir: &Path,
        device: Device,
        dtype: Kind,
    ) -> Result<Self, ModelError> {
        let adapter = PeftAdapter::read(adapter_dir)?;
        let plan = AdaptPlan::from_adapter(&adapter);
        let (model, trainables) = Self::load_adapted(dir, device, dtype, &plan, 0)?;
        trainables.load_peft(&adapter)?;
        Ok(model)
    }

    /// Builds the model from the root of a checkpoint's weight tree (an
    /// [adapted](LayerPath::adapted) path applies its plan).
    pub fn new(config: &PaliGemmaConfig, path: &LayerPath) -> Result<Self, ModelError> {
        let vision_tower = SiglipVisionModel::new(
            &config.vision_config,
            &path.pp("vision_tower").pp("vision_model"),
        )?;
        let multi_modal_projector = MultiModalProjector {
            linear: Linear::new(
                &path.pp("multi_modal_projector").pp("linear"),
                i64::from(config.vision_config.hidden_size),
                i64::from(config.projection_dim),
                true,
            )?,
        };
        let language_model = Gemma2Model::new(&config.text_config, &path.pp("language_model"))?;
        Ok(Self {
            config: config.clone(),
            vision_tower,
            multi_modal_projector,
            language_model,
            device: path.device(),
            kind: path.kind(),
            freeze_vision: false,
            training: path
                .adapt()
                .map_or_else(|| Arc::new(AtomicBool::new(false)), AdaptContext::training),
        })
    }

    /// Training mode: `LoRA` dropout on (`true`) or off. Off after loading.
    pub fn set_training(&self, training: bool) {
        self.training.store(training, Ordering::Relaxed);
    }

    pub fn is_training(&self) -> bool {
        self.training.load(Ordering::Relaxed)
    }

    pub fn config(&self) -> &PaliGemmaConfig {
        &self.config
    }

    pub fn device(&self) -> Device {
        self.device
    }

    /// The compute dtype.
    pub fn kind(&self) -> Kind {
        self.kind
    }

    /// Rows of the token embedding (the logits' last dim).
    pub fn vocab_size(&self) -> i64 {
        self.language_model.vocab_size()
    }

    /// Image tokens per image, `(image_size / patch_size)²`.
    pub fn num_image_tokens(&self) -> i64 {
        i64::from(self.config.num_image_tokens())
    }

    pub fn language_model(&self) -> &Gemma2Model {
        &self.language_model
    }

    /// Runs the vision tower without autograd when `frozen` (its weights then
    /// get no gradient and store no activations); the projector is not
    /// affected.
    pub fn set_vision_frozen(&mut self, frozen: bool) {
        self.freeze_vision = frozen;
    }

    pub fn vision_frozen(&self) -> bool {
        self.freeze_vision
    }

    /// How both towers compute attention (memory-efficient by default;
    /// see [`AttentionMode`]).
    pub fn set_attention(&mut self, mode: AttentionMode) {
        self.vision_tower.set_attention(mode.vision(self.device));
        self.language_model.set_attention(mode.decoder());
    }

    /// Chooses `SigLIP`'s attention kernel alone.
    pub fn set_vision_attention(&mut self, attention: AttentionImpl) {
        self.vision_tower.set_attention(attention);
    }

    /// Projected image features `[B, N, hidden]` (unscaled, docs/model-reference.md §2.2).
    pub fn image_features(&self, pixel_values: &Tensor) -> Result<Tensor, ModelError> {
        let tower = || self.vision_tower.forward(pixel_values);
        let hidden = if self.freeze_vision {
            tch::no_grad(tower)?
        } else {
            tower()?
        };
        Ok(self.multi_modal_projector.linear.forward(&hidden)?)
    }

    /// Checks the shapes of a batch; returns `(B, L)`.
    fn check_input(&self, input: &ModelInput) -> Result<(i64, i64), ModelError> {
        let bad = |m: String| Err(ModelError::Input(m));
        let size = input.input_ids.size();
        let [b, l] = size[..] else {
            return bad(format!("input_ids must be [B, L], got {size:?}"));
        };
        for (name, t) in [
            ("attention_mask", Some(&input.attention_mask)),
            ("token_type_ids", Some(&input.token_type_ids)),
            ("labels", input.labels.as_ref()),
        ] {
            if let Some(t) = t
                && t.size() != size
            {
                return bad(format!(
                    "{name} has shape {:?}, input_ids {size:?}",
                    t.size()
                ));
            }
        }
        let s = i64::from(self.config.vision_config.image_size);
        let c = i64::from(self.config.vision_config.num_channels);
        if input.pixel_values.size() != [b, c, s, s] {
            return bad(format!(
                "pixel_values has shape {:?}, expected [{b}, {c}, {s}, {s}]",
                input.pixel_values.size()
            ));
        }
        Ok((b, l))
    }

    /// Token embeddings with the image features scattered over the
    /// `<image>` positions, `[B, L, hidden]`.
    fn embed_inputs(&self, input: &ModelInput) -> Result<Tensor, ModelError> {
        self.check_input(input)?;
        let features = self.image_features(&input.pixel_values)?;
        self.merge_embeddings(input, &features)
    }

    /// The vision tower (training runs it layer by layer).
    pub(crate) fn vision_tower(&self) -> &SiglipVisionModel {
        &self.vision_tower
    }

    /// The projector on the tower's output: the image features.
    pub(crate) fn project(&self, tower_hidden: &Tensor) -> Result<Tensor, TchError> {
        self.multi_modal_projector.linear.forward(tower_hidden)
    }

    /// Scatters projected image `features` `[B, N, hidden]` over the
    /// `<image>` positions of the token embeddings.
    pub(crate) fn merge_embeddings(
        &self,
        input: &ModelInput,
        features: &Tensor,
    ) -> Result<Tensor, ModelError> {
        let (b, _) = self.check_input(input)?;
        let image_token = i64::from(self.config.image_token_index);
        let image_mask = input.input_ids.f_eq(image_token)?;
        let n_tokens = image_mask.f_sum(Kind::Int64)?.int64_value(&[]);
        let expected = b * self.num_image_tokens();
        if n_tokens != expected {
            return Err(ModelError::Input(format!(
                "{n_tokens} <image> tokens (id {image_token}) for {b} image(s) of {} features",
                self.num_image_tokens()
            )));
        }
        // An out-of-vocabulary `<image>` id is looked up as 0, as transformers does.
        let ids = if image_token >= self.vocab_size() {
            input.input_ids.f_masked_fill(&image_mask, 0)?
        } else {
            input.input_ids.shallow_clone()
        };
        let embeds = self.language_model.embed(&ids)?;
        Ok(embeds.f_masked_scatter(&image_mask.f_unsqueeze(-1)?, features)?)
    }

    /// The prefix-LM masks of a batch (no cache).
    fn masks(&self, input: &ModelInput) -> Result<AttentionMasks, ModelError> {
        let (_, l) = input.input_ids.size2()?;
        Ok(AttentionMasks::new(
            &input.attention_mask,
            Some(&input.token_type_ids),
            0,
            l,
            self.language_model.sliding_window(),
            self.kind,
        )?)
    }

    /// Positions, rotary tables and masks of a cache-less pass over `input`
    /// whose last layer computes `window`.
    pub(crate) fn decoder_pass(
        &self,
        input: &ModelInput,
        window: QueryWindow,
    ) -> Result<DecoderPass, ModelError> {
        let positions = position_ids(&input.attention_mask)?;
        Ok(self
            .language_model
            .pass(&positions, self.masks(input)?, self.kind, Some(window))?)
    }

    /// The decoder's normed last hidden states `[B, L, hidden]` for a batch;
    /// with a cache (generation prefill), keys/values are stored in it.
    pub fn hidden_states(
        &self,
        input: &ModelInput,
        cache: Option<&mut KvCache>,
    ) -> Result<Tensor, ModelError> {
        self.hidden_states_in(input, cache, None)
    }

    /// [`hidden_states`](Self::hidden_states) at the positions of `window`
    /// (all when `None`).
    fn hidden_states_in(
        &self,
        input: &ModelInput,
        cache: Option<&mut KvCache>,
        window: Option<QueryWindow>,
    ) -> Result<Tensor, ModelError> {
        let embeds = self.embed_inputs(input)?;
        let offset = cache.as_ref().map_or(0, |c| c.len());
        if offset != 0 {
            return Err(ModelError::Input(
                "a batch with images must be the first pass over a cache".into(),
            ));
        }
        let positions = position_ids(&input.attention_mask)?;
        let masks = self.masks(input)?;
        Ok(self
            .language_model
            .forward_embeds(&embeds, &positions, &masks, cache, window)?)
    }

    /// Soft-capped logits `[B, L, vocab]` in the compute dtype.
    pub fn forward(&self, input: &ModelInput) -> Result<Tensor, ModelError> {
        let hidden = self.hidden_states(input, None)?;
        Ok(self.language_model.logits(&hidden)?)
    }

    /// Summed next-token cross-entropy over the supervised positions (plain
    /// CE, see [`loss_smoothed`](Self::loss_smoothed)).
    pub fn loss(&self, input: &ModelInput) -> Result<LossOutput, ModelError> {
        self.loss_smoothed(input, 0.0)
    }

    /// Like [`loss`](Self::loss), with `label_smoothing` as in torch's
    /// `cross_entropy` (0 = plain CE). Position `t` predicts `labels[t+1]`;
    /// the hidden states of the positions whose next label is not −100 are
    /// gathered first, so the head and the soft-cap run on those rows only;
    /// their logits are upcast to f32 for the loss.
    pub fn loss_smoothed(
        &self,
        input: &ModelInput,
        label_smoothing: f64,
    ) -> Result<LossOutput, ModelError> {
        let supervised = self.supervised(input)?;
        let hidden = self.hidden_states_in(input, None, Some(supervised.window))?;
        let sum = self.head_loss(&hidden, &supervised, label_smoothing)?;
        Ok(LossOutput {
            sum,
            tokens: supervised.tokens,
        })
    }

    /// The supervised positions of a batch and their next-token targets,
    /// with the labels checked against the vocabulary.
    pub(crate) fn supervised(&self, input: &ModelInput) -> Result<Supervised, ModelError> {
        let labels = input
            .labels
            .as_ref()
            .ok_or_else(|| ModelError::Input("the loss needs labels".into()))?;
        let (b, l) = self.check_input(input)?;
        let next = Tensor::f_cat(
            &[
                labels.f_narrow(1, 1, l - 1)?,
                Tensor::f_full([b, 1], IGNORE_INDEX, (Kind::Int64, labels.device()))?,
            ],
            1,
        )?
        .f_reshape([-1])?;
        let rows = next.f_ne(IGNORE_INDEX)?.f_nonzero()?.f_squeeze_dim(1)?;
        let tokens = rows.size()[0];
        let targets = next.f_index_select(0, &rows)?;
        if tokens == 0 {
            // Nothing to predict: the cheapest window, no rows.
            let window = QueryWindow {
                start: l - 1,
                len: 1,
            };
            return Ok(Supervised {
                window_rows: rows,
                targets,
                tokens,
                window,
            });
        }
        let positions = rows.f_remainder(l)?;
        // One read back for the label check and the window.
        let bounds = Tensor::f_stack(
            &[
                targets.f_min()?,
                targets.f_max()?,
                positions.f_min()?,
                positions.f_max()?,
            ],
            0,
        )?
        .f_to_device(Device::Cpu)?;
        let [lo, hi, first, last] = [0, 1, 2, 3].map(|i| bounds.int64_value(&[i]));
        if lo < 0 || hi >= self.vocab_size() {
            return Err(ModelError::Input(format!(
                "labels must be -100 or in 0..{}, found {}",
                self.vocab_size(),
                if lo < 0 { lo } else { hi }
            )));
        }
        let window = QueryWindow {
            start: first,
            len: last - first + 1,
        };
        // Row `b·L + t` of the batch is row `b·len + (t − start)` of the window.
        let window_rows = rows
            .f_div_scalar_mode(l, "floor")?
            .f_mul_scalar(window.len)?
            .f_add(&positions.f_sub_scalar(window.start)?)?;
        Ok(Supervised {
            targets,
            tokens,
            window,
            window_rows,
        })
    }

    /// The head and the summed (smoothed) cross-entropy on the supervised
    /// rows of the normed hidden states of the window, `[B, window.len,
    /// hidden]`.
    pub(crate) fn head_loss(
        &self,
        hidden: &Tensor,
        supervised: &Supervised,
        label_smoothing: f64,
    ) -> Result<Tensor, ModelError> {
        let h = self.language_model.hidden_size();
        let selected = hidden
            .f_reshape([-1, h])?
            .f_index_select(0, &supervised.window_rows)?;
        let logits = self
            .language_model
            .logits(&selected)?
            .f_to_kind(Kind::Float)?;
        Ok(logits.f_cross_entropy_loss(
            &supervised.targets,
            None::<Tensor>,
            Reduction::Sum,
            IGNORE_INDEX,
            label_smoothing,
        )?)
    }
}

/// The positions of a batch whose next token is supervised.
#[derive(Debug)]
pub(crate) struct Supervised {
    targets: Tensor,
    pub tokens: i64,
    /// From the first supervised position to the last, over all rows: what
    /// the last decoder layer computes.
    pub window: QueryWindow,
    /// Flat indices into `[B·window.len]`.
    window_rows: Tensor,
}

/// 1-based positions `[B, L]`: `cumsum(attention_mask)` on real tokens (so a
/// left-padded row starts at 1 on its first real token, as transformers'
/// `generate`), `t + 1` on padding (as its plain forward).
pub fn position_ids(attention_mask: &Tensor) -> Result<Tensor, TchError> {
    let (_, l) = attention_mask.size2()?;
    let mask = attention_mask.f_ne(0)?;
    let counted = mask.f_cumsum(1, Kind::Int64)?;
    let arange =
        Tensor::f_arange_start(1, l + 1, (Kind::Int64, attention_mask.device()))?.f_unsqueeze(0)?;
    counted.f_where_self(&mask, &arange)
}

#[cfg(test)]
#[allow(clippy::cast_possible_wrap, clippy::many_single_char_names)]
pub(crate) mod test_util {
    //! A random tiny checkpoint written from Rust, for tests that must run
    //! without the golden fixtures.

    use super::*;
    use crate::variant::{Resolution, Size};
    use safetensors::tensor::{Dtype, TensorView};

    /// Writes `config.json` and a random f32 `model.safetensors` for the
    /// tiny 3B-224 preset (vision layer norms near 1, everything else
    /// scaled so attention is peaked and logits spread).
    pub fn random_checkpoint(dir: &Path, seed: i64) -> PaliGemmaConfig {
        let cfg = PaliGemmaConfig::tiny(Size::B3, Resolution::R224);
        std::fs::write(
            dir.join("config.json"),
            serde_json::to_string_pretty(&cfg).unwrap(),
        )
        .unwrap();
        tch::manual_seed(seed);
        let tensors: Vec<(String, Vec<usize>, Vec<u8>)> =
            crate::model::checkpoint::tensors::tensor_shapes(&cfg)
                .into_iter()
                .map(|(name, shape)| {
                    let scale = if shape.len() == 1 {
                        0.15
                    } else if name.contains("embed") {
                        0.5
                    } else {
                        let fan_in: i64 = shape[1..].iter().product();
                        let gain = if name.contains("q_proj") || name.contains("k_proj") {
                            2.0
                        } else {
                            1.0
                        };
                        gain / (fan_in as f64).sqrt()
                    };
                    let mut t = Tensor::randn(&shape, (Kind::Float, Device::Cpu)) * scale;
                    if name.contains("vision") && name.contains("norm") && name.ends_with("weight")
                    {
                        t += 1.0;
                    }
                    let values = Vec::<f32>::try_from(t.flatten(0, -1)).unwrap();
                    let bytes = values.iter().flat_map(|x| x.to_le_bytes()).collect();
                    (name, shape.iter().map(|&d| d as usize).collect(), bytes)
                })
                .collect();
        let views: Vec<(String, TensorView<'_>)> = tensors
            .iter()
            .map(|(name, shape, bytes)| {
                (
                    name.clone(),
                    TensorView::new(Dtype::F32, shape.clone(), bytes).unwrap(),
                )
            })
            .collect();
        safetensors::serialize_to_file(views, None, &dir.join("model.safetensors")).unwrap();
        cfg
    }

    /// A right-padded training batch for the tiny preset: per row, 16
    /// `<image>`, `<bos>`, prompt, `\n` (type 0), suffix + `<eos>` (type 1),
    /// then padding. `rows` = (prompt len, suffix len); ids drawn from `seed`.
    pub fn batch(cfg: &PaliGemmaConfig, rows: &[(usize, usize)], seed: u64) -> ModelInput {
        let n = cfg.num_image_tokens() as usize;
        let image = i64::from(cfg.image_token_index);
        let len = rows.iter().map(|(p, s)| n + 2 + p + s + 1).max().unwrap();
        let mut state = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
        let mut next_id = move || {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            5 + ((state >> 33) % 1800) as i64
        };
        let (mut ids, mut mask, mut tt, mut labels) = (vec![], vec![], vec![], vec![]);
        for &(p, s) in rows {
            let mut row: Vec<(i64, i64)> = vec![(image, 0); n];
            row.push((2, 0));
            row.extend((0..p).map(|_| (next_id(), 0)));
            row.push((108, 0));
            row.extend((0..s).map(|_| (next_id(), 1)));
            row.push((1, 1));
            let real = row.len();
            row.resize(len, (0, 0));
            for (j, &(id, ty)) in row.iter().enumerate() {
                ids.push(id);
                tt.push(ty);
                mask.push(i64::from(j < real));
                labels.push(if ty == 1 { id } else { IGNORE_INDEX });
            }
        }
        let shape = [rows.len() as i64, len as i64];
        let s = i64::from(cfg.vision_config.image_size);
        ModelInput {
            input_ids: Tensor::from_slice(&ids).view(shape),
            attention_mask: Tensor::from_slice(&mask).view(shape),
            token_type_ids: Tensor::from_slice(&tt).view(shape),
            labels: Some(Tensor::from_slice(&labels).view(shape)),
            pixel_values: Tensor::rand([rows.len() as i64, 3, s, s], (Kind::Float, Device::Cpu))
                * 2.0
                - 1.0,
        }
    }
    /// `tests/golden` (fixtures made by transformers 5.24, see its README).
    pub fn golden_dir() -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden")
    }

    /// `tests/golden/values.json`, parsed once.
    pub fn golden_values() -> &'static serde_json::Value {
        static VALUES: std::sync::OnceLock<serde_json::Value> = std::sync::OnceLock::new();
        VALUES.get_or_init(|| {
            let path = golden_dir().join("values.json");
            let text = std::fs::read_to_string(&path)
                .unwrap_or_else(|e| panic!("golden fixtures missing ({}): {e}", path.display()));
            serde_json::from_str(&text).unwrap()
        })
    }

    /// A `[rows, cols]` int64 tensor from a JSON list of lists.
    pub fn int_matrix(value: &serde_json::Value) -> Tensor {
        let rows = value.as_array().unwrap();
        let data: Vec<i64> = rows
            .iter()
            .flat_map(|r| r.as_array().unwrap().iter().map(|x| x.as_i64().unwrap()))
            .collect();
        Tensor::from_slice(&data).view([rows.len() as i64, -1])
    }

    /// `[B, 3, S, S]` pixel values from `HxWx3` uint8 lists, normalised as
    /// transformers does: `f32(u8 · (1/255))`, then `(x − 0.5) / 0.5` in f32.
    pub fn pixel_values(images: &[&serde_json::Value], side: i64) -> Tensor {
        let data: Vec<f32> = images
            .iter()
            .flat_map(|px| px.as_array().unwrap().iter())
            .map(|x| {
                let x = (x.as_f64().unwrap() * 0.003_921_568_627_450_98) as f32;
                (x - 0.5) / 0.5
            })
            .collect();
        Tensor::from_slice(&data)
            .view([images.len() as i64, side, side, 3])
            .permute([0, 3, 1, 2])
            .contiguous()
    }

    /// A batch from a golden record with `input_ids`, `attention_mask`,
    /// `token_type_ids` and optionally `labels`.
    pub fn golden_input(record: &serde_json::Value, images: &[&serde_json::Value]) -> ModelInput {
        let side = golden_values()["config"]["vision"]["image_size"]
            .as_i64()
            .unwrap();
        ModelInput {
            input_ids: int_matrix(&record["input_ids"]),
            attention_mask: int_matrix(&record["attention_mask"]),
            token_type_ids: int_matrix(&record["token_type_ids"]),
            labels: record.get("labels").map(int_matrix),
            pixel_values: pixel_values(images, side),
        }
    }

    /// The golden training batch (7 rows, right-padded, with labels).
    pub fn golden_train_batch() -> ModelInput {
        let p = &golden_values()["processor"];
        let images: Vec<&serde_json::Value> =
            p["pixels_hw3"]["data"].as_array().unwrap().iter().collect();
        golden_input(p, &images)
    }

    /// Pixels of a golden validation image by file name.
    pub fn golden_valid_pixels(name: &str) -> &'static serde_json::Value {
        let valid = &golden_values()["valid"];
        let index = valid["images"]
            .as_array()
            .unwrap()
            .iter()
            .position(|n| n == name)
            .unwrap();
        &valid["pixels_hw3"][index]
    }
}

#[cfg(test)]
mod tests {
    use super::test_util::{batch, random_checkpoint};
    use super::*;

    fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
        (a.to_kind(Kind::Double) - b.to_kind(Kind::Double))
            .abs()
            .max()
            .double_value(&[])
    }

    #[test]
    fn positions_are_one_based_and_skip_left_padding() {
        let mask = Tensor::from_slice(&[1i64, 1, 1, 0, 0, 0, 1, 1]).view([2, 4]);
        let pos = position_ids(&mask).unwrap();
        assert_eq!(
            Vec::<i64>::try_from(pos.flatten(0, -1)).unwrap(),
            [1, 2, 3, 4, 1, 2, 1, 2]
        );
    }

    #[test]
    fn loss_equals_cross_entropy_of_the_full_logits() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = random_checkpoint(dir.path(), 7);
        let model = PaliGemma::load(dir.path(), Device::Cpu, Kind::Float).unwrap();
        assert_eq!(model.vocab_size(), 2048);
        let input = batch(&cfg, &[(3, 4), (6, 2), (1, 7)], 3);
        let labels = input.labels.as_ref().unwrap();
        let logits = tch::no_grad(|| model.forward(&input)).unwrap();
        let (b, l, v) = logits.size3().unwrap();
        assert_eq!((b, v), (3, 2048));
        // transformers' definition: shift, flatten, mean over labels != -100.
        let shifted = logits.narrow(1, 0, l - 1).reshape([-1, v]);
        let targets = labels.narrow(1, 1, l - 1).reshape([-1]);
        let reference =
            shifted.cross_entropy_loss::<Tensor>(&targets, None, Reduction::Sum, IGNORE_INDEX, 0.0);
        let out = tch::no_grad(|| model.loss(&input)).unwrap();
        assert_eq!(out.tokens, 4 + 1 + 2 + 1 + 7 + 1);
        let diff = (out.sum.double_value(&[]) - reference.double_value(&[])).abs();
        assert!(diff < 1e-4, "{diff}");
        // Label smoothing matches torch's definition too.
        let reference =
            shifted.cross_entropy_loss::<Tensor>(&targets, None, Reduction::Sum, IGNORE_INDEX, 0.1);
        let smoothed = tch::no_grad(|| model.loss_smoothed(&input, 0.1)).unwrap();
        let diff = (smoothed.sum.double_value(&[]) - reference.double_value(&[])).abs();
        assert!(diff < 1e-4, "{diff}");
        // Logits are soft-capped.
        assert!(logits.abs().max().double_value(&[]) < 30.0);
    }

    #[test]
    fn the_query_window_spans_the_supervised_positions_of_every_row() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = random_checkpoint(dir.path(), 7);
        let model = PaliGemma::load(dir.path(), Device::Cpu, Kind::Float).unwrap();
        let n = i64::from(cfg.num_image_tokens());
        // Rows (prompt, suffix): image tokens, <bos>, prompt, `\n`, suffix,
        // <eos>. Position t predicts t + 1, so row r's first supervised
        // position is its `\n` (n + 1 + prompt) and its last the one before
        // <eos> (n + 1 + prompt + suffix).
        let input = batch(&cfg, &[(3, 4), (6, 2), (1, 7)], 3);
        let supervised = model.supervised(&input).unwrap();
        assert_eq!(
            supervised.window,
            QueryWindow {
                start: n + 2,
                len: 8
            }
        );
        assert_eq!(supervised.tokens, 5 + 3 + 8);
        // The windowed hidden states hold those positions of the full ones.
        let embeds = model.embed_inputs(&input).unwrap();
        let positions = position_ids(&input.attention_mask).unwrap();
        let masks = model.masks(&input).unwrap();
        let lm = model.language_model();
        let full = lm
            .forward_embeds(&embeds, &positions, &masks, None, None)
            .unwrap();
        let windowed = lm
            .forward_embeds(&embeds, &positions, &masks, None, Some(supervised.window))
            .unwrap();
        assert_eq!(windowed.size(), [3, 8, full.size()[2]]);
        assert!(max_abs_diff(&windowed, &full.narrow(1, n + 2, 8)) < 1e-5);
        // A batch without supervised tokens has a one-position window.
        let mut unsupervised = batch(&cfg, &[(3, 4)], 3);
        unsupervised.labels = Some(unsupervised.labels.unwrap().full_like(IGNORE_INDEX));
        let supervised = model.supervised(&unsupervised).unwrap();
        assert_eq!((supervised.tokens, supervised.window.len), (0, 1));
    }

    #[test]
    fn rows_do_not_leak_into_each_other() {
        // Padding and batching must not change a row's logits.
        let dir = tempfile::tempdir().unwrap();
        let cfg = random_checkpoint(dir.path(), 11);
        let model = PaliGemma::load(dir.path(), Device::Cpu, Kind::Float).unwrap();
        let both = batch(&cfg, &[(2, 3), (8, 6)], 5);
        let alone = ModelInput {
            input_ids: both.input_ids.narrow(0, 0, 1),
            attention_mask: both.attention_mask.narrow(0, 0, 1),
            token_type_ids: both.token_type_ids.narrow(0, 0, 1),
            labels: None,
            pixel_values: both.pixel_values.narrow(0, 0, 1),
        };
        let real = 16 + 2 + 2 + 3 + 1;
        let a = tch::no_grad(|| model.forward(&both))
            .unwrap()
            .get(0)
            .narrow(0, 0, real);
        let b = tch::no_grad(|| model.forward(&alone))
            .unwrap()
            .get(0)
            .narrow(0, 0, real);
        assert!(max_abs_diff(&a, &b) < 1e-4);
    }

    #[test]
    fn fused_and_eager_vision_attention_agree() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = random_checkpoint(dir.path(), 13);
        let mut model = PaliGemma::load(dir.path(), Device::Cpu, Kind::Float).unwrap();
        let input = batch(&cfg, &[(3, 3)], 1);
        model.set_vision_attention(AttentionImpl::Eager);
        let eager = tch::no_grad(|| model.image_features(&input.pixel_values)).unwrap();
        model.set_vision_attention(AttentionImpl::Sdpa);
        let fused = tch::no_grad(|| model.image_features(&input.pixel_values)).unwrap();
        let diff = max_abs_diff(&fused, &eager);
        assert!(diff < 1e-5, "{diff}");
    }

    #[test]
    fn frozen_vision_keeps_gradients_out_of_the_tower() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = random_checkpoint(dir.path(), 17);
        let mut model = PaliGemma::load(dir.path(), Device::Cpu, Kind::Float).unwrap();
        let mut input = batch(&cfg, &[(2, 2)], 2);
        input.pixel_values = input.pixel_values.set_requires_grad(true);
        let features = model.image_features(&input.pixel_values).unwrap();
        assert!(features.requires_grad());
        model.set_vision_frozen(true);
        let features = model.image_features(&input.pixel_values).unwrap();
        assert!(!features.requires_grad());
    }

    #[test]
    fn bad_inputs_are_typed_errors() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = random_checkpoint(dir.path(), 19);
        let model = PaliGemma::load(dir.path(), Device::Cpu, Kind::Float).unwrap();
        let input = batch(&cfg, &[(2, 2)], 2);
        let _ = input.input_ids.narrow(1, 0, 1).fill_(5);
        let err = model.forward(&input).unwrap_err();
        assert!(matches!(err, ModelError::Input(_)), "{err}");
        assert!(err.to_string().contains("<image>"), "{err}");
        let mut input = batch(&cfg, &[(2, 2)], 2);
        input.labels = None;
        assert!(matches!(model.loss(&input), Err(ModelError::Input(_))));
        let mut input = batch(&cfg, &[(2, 2)], 2);
        input.pixel_values = input.pixel_values.narrow(2, 0, 8);
        assert!(matches!(model.forward(&input), Err(ModelError::Input(_))));
    }

    fn golden_model(variant: &str, kind: Kind) -> PaliGemma {
        golden_model_on(variant, kind, Device::Cpu)
    }

    fn golden_model_on(variant: &str, kind: Kind, device: Device) -> PaliGemma {
        let dir = test_util::golden_dir().join("checkpoints").join(variant);
        PaliGemma::load(&dir, device, kind).unwrap()
    }

    /// Differences to the golden values of one checkpoint variant.
    struct GoldenDiff {
        /// Max |logit − golden| over the golden (b, t) rows.
        logits: f64,
        /// Max |logit − golden| in bf16 ulps at the logits' scale.
        logits_ulps: f64,
        /// |mean loss − golden|.
        loss: f64,
    }

    fn golden_diffs_on(
        variant: &str,
        kind: Kind,
        device: Device,
        attention: AttentionMode,
    ) -> GoldenDiff {
        let mut model = golden_model_on(variant, kind, device);
        model.set_attention(attention);
        let input = test_util::golden_train_batch().to(device, Kind::Float);
        let golden = &test_util::golden_values()["variants"][variant];
        let logits = tch::no_grad(|| model.forward(&input)).unwrap();
        assert_eq!(logits.kind(), kind);
        let (mut max_abs, mut scale) = (0f64, 1e-30f64);
        for row in golden["logits"].as_array().unwrap() {
            let (b, t) = (row["b"].as_i64().unwrap(), row["t"].as_i64().unwrap());
            let expected: Vec<f64> = row["values"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| f64::from(x.as_f64().unwrap() as f32))
                .collect();
            let expected = Tensor::from_slice(&expected);
            let row = logits.get(b).get(t).to_device(Device::Cpu);
            let diff = (row.to_kind(Kind::Double) - &expected).abs();
            max_abs = max_abs.max(diff.max().double_value(&[]));
            scale = scale.max(expected.abs().max().double_value(&[]));
        }
        // bf16 keeps 8 significant bits: ulp(x) = 2^(floor(log2|x|) − 7),
        // taken at the logits' scale (their largest magnitude). A logit
        // near 0 is a sum of terms of that scale, so a kernel that rounds
        // one of them differently moves it by an ulp of the scale, not of
        // the logit itself.
        let ulp = (scale.log2().floor() - 7.0).exp2();
        let max_ulps = max_abs / ulp;
        let out = tch::no_grad(|| model.loss(&input)).unwrap();
        assert_eq!(out.tokens, golden["loss_tokens"].as_i64().unwrap());
        let loss = out.mean().unwrap().double_value(&[]);
        let loss_diff = (loss - golden["loss"].as_f64().unwrap()).abs();
        eprintln!(
            "{variant}: max |logit diff| {max_abs:e} ({max_ulps} bf16 ulps), |loss diff| {loss_diff:e}"
        );
        GoldenDiff {
            logits: max_abs,
            logits_ulps: max_ulps,
            loss: loss_diff,
        }
    }

    fn assert_f32_parity(variant: &str) {
        assert_f32_parity_with(variant, AttentionMode::default());
    }

    fn assert_f32_parity_with(variant: &str, attention: AttentionMode) {
        let d = golden_diffs_on(variant, Kind::Float, Device::Cpu, attention);
        assert!(
            d.logits < 1e-4 && d.loss < 1e-4,
            "{variant}: {:e} {:e}",
            d.logits,
            d.loss
        );
    }

    /// bf16 tolerance: at most 1 bf16 ulp at the logits' scale per logit
    /// (≤ 0.0625 here, where |logit| < 16) and 2e-3 on the mean loss. The
    /// computation is the same op sequence as transformers', so on the CPU
    /// the fixtures were made on it is bit-identical (measured: 0 and 0); the
    /// slack is for CPU kernels whose bf16 matmuls accumulate in another
    /// order (oneDNN's AMX-BF16 and AVX512-BF16 paths vs AVX2), where one
    /// rounding flips the last bit of an activation: measured on an
    /// AMX-BF16 Xeon, 6.25e-2 on one logit (one ulp at |logit| < 16) and
    /// 1.3e-4 on the loss. A real bug (mask, cap, scale, `RoPE`) moves the
    /// loss by more: using the fused `SigLIP` attention alone gives 3.6e-3.
    fn assert_bf16_parity(variant: &str) {
        assert_bf16_parity_with(variant, AttentionMode::default());
    }

    fn assert_bf16_parity_with(variant: &str, attention: AttentionMode) {
        let d = golden_diffs_on(variant, Kind::BFloat16, Device::Cpu, attention);
        assert!(
            d.logits_ulps <= 1.0 && d.loss < 2e-3,
            "{variant}: {:e} ({} ulps), loss {:e}",
            d.logits,
            d.logits_ulps,
            d.loss
        );
    }

    #[test]
    fn golden_f32_logits_and_loss() {
        assert_f32_parity("f32");
    }

    /// The eager path, the reference the memory-efficient one is held to.
    #[test]
    fn golden_eager_logits_and_loss() {
        assert_f32_parity_with("f32", AttentionMode::Eager);
        assert_bf16_parity_with("bf16", AttentionMode::Eager);
    }

    /// The chunked kernel (which the golden batch's small scores would not
    /// take by default) against the fixtures.
    #[test]
    fn golden_chunked_logits_and_loss() {
        assert_f32_parity_with("f32", AttentionMode::AlwaysChunked);
        assert_bf16_parity_with("bf16", AttentionMode::AlwaysChunked);
    }

    /// Runs where CUDA is present (f32: cuBLAS keeps full f32 by default, no
    /// TF32), and passes trivially elsewhere.
    #[test]
    fn golden_f32_on_cuda_when_available() {
        if !tch::Cuda::is_available() {
            eprintln!("no CUDA device: skipped");
            return;
        }
        let d = golden_diffs_on(
            "f32",
            Kind::Float,
            Device::Cuda(0),
            AttentionMode::default(),
        );
        assert!(
            d.logits < 1e-4 && d.loss < 1e-4,
            "{:e} {:e}",
            d.logits,
            d.loss
        );
    }

    #[test]
    fn golden_sharded_logits_and_loss() {
        assert_f32_parity("sharded");
    }

    /// The legacy checkpoint holds bf16 weights under the hub's names.
    #[test]
    fn golden_legacy_logits_and_loss() {
        match test_util::golden_values()["variants"]["legacy"]["dtype"].as_str() {
            Some("bfloat16") => assert_bf16_parity("legacy"),
            _ => assert_f32_parity("legacy"),
        }
    }

    #[test]
    fn golden_bf16_logits_and_loss() {
        assert_bf16_parity("bf16");
    }

    #[test]
    fn golden_valid_loss() {
        let model = golden_model("f32", Kind::Float);
        let valid = &test_util::golden_values()["valid"];
        let images: Vec<&serde_json::Value> =
            valid["pixels_hw3"].as_array().unwrap().iter().collect();
        let input = test_util::golden_input(valid, &images);
        let out = tch::no_grad(|| model.loss(&input)).unwrap();
        assert_eq!(out.tokens, valid["tokens"].as_i64().unwrap());
        let diff = (out.mean().unwrap().double_value(&[]) - valid["loss"].as_f64().unwrap()).abs();
        eprintln!("valid loss diff {diff:e}");
        assert!(diff < 1e-4, "{diff:e}");
        // Each row alone (same padding) gives its golden summed loss.
        for (row, golden) in valid["per_row"].as_array().unwrap().iter().enumerate() {
            let one = |t: &Tensor| t.narrow(0, i64::try_from(row).unwrap(), 1);
            let single = ModelInput {
                input_ids: one(&input.input_ids),
                attention_mask: one(&input.attention_mask),
                token_type_ids: one(&input.token_type_ids),
                labels: input.labels.as_ref().map(one),
                pixel_values: one(&input.pixel_values),
            };
            let out = tch::no_grad(|| model.loss(&single)).unwrap();
            assert_eq!(out.tokens, golden["tokens"].as_i64().unwrap());
            let expected = golden["loss_sum"].as_f64().unwrap();
            let diff = (out.sum.double_value(&[]) - expected).abs();
            assert!(diff < 1e-5 * expected.abs().max(1.0), "row {row}: {diff:e}");
        }
    }

    type StoredTensor = (String, safetensors::Dtype, Vec<usize>, Vec<u8>);

    /// The golden f32 checkpoint copied to a temp dir, its tensors (and the
    /// config text) rewritten by `edit`.
    fn edited_golden(edit: impl FnOnce(&mut Vec<StoredTensor>, &mut String)) -> tempfile::TempDir {
        let src = test_util::golden_dir().join("checkpoints/f32");
        let bytes = std::fs::read(src.join("model.safetensors")).unwrap();
        let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let mut tensors: Vec<StoredTensor> = file
            .tensors()
            .into_iter()
            .map(|(name, v)| (name, v.dtype(), v.shape().to_vec(), v.data().to_vec()))
            .collect();
        tensors.sort_by(|a, b| a.0.cmp(&b.0));
        let mut config = std::fs::read_to_string(src.join("config.json")).unwrap();
        edit(&mut tensors, &mut config);
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("config.json"), config).unwrap();
        let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = tensors
            .iter()
            .map(|(name, dtype, shape, data)| {
                let view = safetensors::tensor::TensorView::new(*dtype, shape.clone(), data);
                (name.clone(), view.unwrap())
            })
            .collect();
        safetensors::serialize_to_file(views, None, &dir.path().join("model.safetensors")).unwrap();
        dir
    }

    fn load_err(dir: &Path) -> ModelError {
        PaliGemma::load(dir, Device::Cpu, Kind::Float).unwrap_err()
    }

    #[test]
    fn missing_tensor_names_the_tensor_and_the_files() {
        let name = "language_model.model.layers.1.mlp.up_proj.weight";
        let dir = edited_golden(|t, _| t.retain(|x| x.0 != name));
        let err = load_err(dir.path());
        assert!(
            matches!(err, ModelError::Weights(WeightError::Missing { .. })),
            "{err}"
        );
        let message = err.to_string();
        assert!(
            message.contains(name) && message.contains("model.safetensors"),
            "{message}"
        );
    }

    #[test]
    fn shape_mismatch_names_expected_and_found() {
        let name = "vision_tower.encoder.layers.0.self_attn.q_proj.weight";
        let dir = edited_golden(|t, _| {
            let entry = t.iter_mut().find(|x| x.0 == name).unwrap();
            entry.2 = vec![16, 64];
        });
        let err = load_err(dir.path());
        let ModelError::Weights(WeightError::Shape {
            expected,
            found,
            name: n,
            ..
        }) = &err
        else {
            panic!("{err}");
        };
        assert_eq!(
            (expected.as_slice(), found.as_slice()),
            (&[32, 32][..], &[16, 64][..])
        );
        assert!(
            n.ends_with("encoder.layers.0.self_attn.q_proj.weight"),
            "{err}"
        );
    }

    #[test]
    fn truncated_file_is_a_corrupt_weights_error() {
        let dir = edited_golden(|_, _| {});
        let path = dir.path().join("model.safetensors");
        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, &bytes[..bytes.len() - 100]).unwrap();
        let err = load_err(dir.path());
        assert!(
            matches!(err, ModelError::Weights(WeightError::Corrupt { .. })),
            "{err}"
        );
        assert!(err.to_string().contains("truncated"), "{err}");
    }

    #[test]
    fn unused_tensors_fail_but_a_tied_head_is_ignored() {
        let dir = edited_golden(|t, _| {
            let embed = t
                .iter()
                .find(|x| x.0.ends_with("embed_tokens.weight"))
                .unwrap()
                .clone();
            t.push((
                "language_model.lm_head.weight".into(),
                embed.1,
                embed.2,
                embed.3,
            ));
        });
        PaliGemma::load(dir.path(), Device::Cpu, Kind::Float).unwrap();
        let dir = edited_golden(|t, _| {
            let norm = t
                .iter()
                .find(|x| x.0 == "language_model.model.norm.weight")
                .unwrap()
                .clone();
            t.push((
                "language_model.model.layers.2.input_layernorm.weight".into(),
                norm.1,
                norm.2,
                norm.3,
            ));
        });
        let err = load_err(dir.path());
        assert!(
            matches!(err, ModelError::Weights(WeightError::Unused { .. })),
            "{err}"
        );
        assert!(
            err.to_string().contains("layers.2.input_layernorm"),
            "{err}"
        );
    }

    #[test]
    fn bad_config_names_the_key() {
        let dir = edited_golden(|_, config| {
            *config = config.replace("\"num_key_value_heads\": 2,", "");
        });
        let err = load_err(dir.path());
        assert!(matches!(err, ModelError::Config(_)), "{err}");
        assert!(err.to_string().contains("num_key_value_heads"), "{err}");
    }
}

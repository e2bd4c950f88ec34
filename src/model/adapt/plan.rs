//! What fine-tuning changes in the model: the [`AdaptPlan`] (which linears
//! get `LoRA`, which are quantised to NF4, which tensors are trained in full)
//! and the [`Trainables`] a plan produces while the model loads.
//!
//! The frozen base lives in the layers as plain tensors without gradients
//! (or NF4 blocks); everything trainable lives in one `tch` `VarStore` whose
//! variable names are transformers-5 module paths
//! (`model.language_model.layers.0.self_attn.q_proj.lora_A.weight`), so
//! `base_model.model.` + name is the PEFT key. The optimiser and the PEFT
//! save see only that store.
//!
//! Module names inside the crate are the internal (hub legacy) ones that
//! [`WeightPath`](crate::model::checkpoint::weights::WeightPath) uses:
//! `language_model.model.layers.{i}.…`, `vision_tower.vision_model.…`,
//! `multi_modal_projector.linear`.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use tch::nn::VarStore;
use tch::{Device, Kind, TchError, Tensor};

use crate::model::adapt::lora::{LoraBranch, LoraConfig, LoraRank, LoraTargets, peft_suffix_match};
use crate::model::adapt::peft::{self, PeftAdapter, PeftError};
use crate::model::checkpoint::tensors::tensor_shapes;
use crate::model::config::PaliGemmaConfig;

/// `VarStore` group of the parameters `AdamW` decays.
pub const DECAY_GROUP: usize = 0;
/// `VarStore` group of biases and norm weights (no weight decay, as
/// transformers' `Trainer` does it).
pub const NO_DECAY_GROUP: usize = 1;

/// NF4 settings of a `QLoRA` plan (bitsandbytes' `Params4bit`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QuantConfig {
    /// Weights per absmax block (64 in bitsandbytes).
    pub block_size: i64,
    /// Quantise the absmax constants too (8-bit, blocks of 256).
    pub double_quant: bool,
}

impl Default for QuantConfig {
    fn default() -> Self {
        Self {
            block_size: 64,
            double_quant: true,
        }
    }
}

/// The part of the model a tensor belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Part {
    Vision,
    Projector,
    Language,
}

impl Part {
    /// The part of an internal tensor or module name.
    pub fn of(name: &str) -> Self {
        if name.starts_with("vision_tower.") {
            Part::Vision
        } else if name == "multi_modal_projector" || name.starts_with("multi_modal_projector.") {
            Part::Projector
        } else {
            Part::Language
        }
    }
}

/// How a checkpoint is fine-tuned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AdaptMethod {
    /// `LoRA` on a frozen dense base.
    Lora,
    /// `LoRA` on a frozen NF4 base.
    Qlora,
    /// Every tensor trained.
    Full,
}

/// How to adapt a checkpoint for fine-tuning (from the spec's `train.method`,
/// `[lora]`, `[qlora]`, `model.freeze_vision` and `model.train_projector`),
/// or how to rebuild a stored adapter ([`AdaptPlan::from_adapter`]).
#[derive(Clone, Debug, PartialEq)]
pub struct AdaptPlan {
    pub method: AdaptMethod,
    /// Used by `lora` and `qlora`.
    pub lora: LoraConfig,
    /// Used by `qlora`.
    pub quant: QuantConfig,
    /// No trainable tensor (and so no `LoRA`) in the vision tower, which then
    /// runs without autograd.
    pub freeze_vision: bool,
    /// PEFT `modules_to_save`: modules (suffix-matched like PEFT, on the
    /// internal or the transformers-5 name) trained in full and saved whole;
    /// `["multi_modal_projector"]` for `train_projector`.
    pub modules_to_save: Vec<String>,
    /// Further tensors (internal names) trained in full: what a stored
    /// adapter holds besides its `LoRA` pairs (e.g. biases with
    /// `bias = "all"`).
    pub saved_tensors: BTreeSet<String>,
}

/// The module name PEFT's `modules_to_save` gets for `train_projector`.
pub const PROJECTOR_MODULE: &str = "multi_modal_projector";

/// What happens to one linear layer.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LinearPlan {
    /// Store the weight as NF4 (frozen).
    pub quantize: Option<QuantConfig>,
    /// Add a `LoRA` branch.
    pub lora: Option<LoraRank>,
}

impl AdaptPlan {
    /// `LoRA` with `lora` on a frozen dense base.
    pub fn lora(lora: LoraConfig) -> Self {
        Self {
            method: AdaptMethod::Lora,
            lora,
            quant: QuantConfig::default(),
            freeze_vision: false,
            modules_to_save: Vec::new(),
            saved_tensors: BTreeSet::new(),
        }
    }

    /// `LoRA` on an NF4 base.
    pub fn qlora(lora: LoraConfig, quant: QuantConfig) -> Self {
        Self {
            method: AdaptMethod::Qlora,
            quant,
            ..Self::lora(lora)
        }
    }

    /// Every tensor trainable.
    pub fn full() -> Self {
        Self {
            method: AdaptMethod::Full,
            ..Self::lora(LoraConfig::new(8, 16.0))
        }
    }

    /// The plan that rebuilds a stored adapter on a dense base: exactly its
    /// `LoRA` modules, with their ranks and alphas, and its saved tensors.
    pub fn from_adapter(adapter: &PeftAdapter) -> Self {
        let modules = adapter
            .lora
            .iter()
            .map(|(name, pair)| (name.clone(), pair.rank))
            .collect();
        let config = &adapter.config;
        Self {
            method: AdaptMethod::Lora,
            lora: LoraConfig {
                r: i64::from(config.r),
                alpha: config.lora_alpha,
                dropout: config.lora_dropout,
                rslora: config.use_rslora,
                targets: LoraTargets::Modules(modules),
            },
            quant: QuantConfig::default(),
            freeze_vision: false,
            modules_to_save: Vec::new(),
            saved_tensors: adapter.saved.keys().cloned().collect(),
        }
    }

    /// Whether the tensor `name` (internal) is trained.
    pub fn tensor_trainable(&self, name: &str) -> bool {
        if self.freeze_vision && Part::of(name) == Part::Vision {
            return false;
        }
        if self.method == AdaptMethod::Full || self.saved_tensors.contains(name) {
            return true;
        }
        // Any enclosing module listed in `modules_to_save`.
        name.match_indices('.').any(|(end, _)| {
            let module = &name[..end];
            let peft_name = peft::peft_name(module);
            self.modules_to_save
                .iter()
                .any(|m| peft_suffix_match(module, m) || peft_suffix_match(&peft_name, m))
        })
    }

    /// What happens to the linear layer `module` (internal name).
    pub fn linear(&self, module: &str) -> LinearPlan {
        let frozen = LinearPlan {
            quantize: None,
            lora: None,
        };
        if self.method == AdaptMethod::Full || self.tensor_trainable(&format!("{module}.weight")) {
            return frozen;
        }
        let quantize = (self.method == AdaptMethod::Qlora).then_some(self.quant);
        let lora = if self.freeze_vision && Part::of(module) == Part::Vision {
            None
        } else {
            self.lora.rank_of(module, &peft::peft_name(module))
        };
        LinearPlan { quantize, lora }
    }
}

/// Trainable parameters of `plan` on a model of `cfg`, counted from the
/// config without allocating anything: `LoRA` pairs `r·(in + out)` plus the
/// tensors trained in full (the tied head counted once).
pub fn trainable_parameters(cfg: &PaliGemmaConfig, plan: &AdaptPlan) -> u64 {
    let numel = |shape: &[i64]| shape.iter().product::<i64>().unsigned_abs();
    let full: u64 = tensor_shapes(cfg)
        .iter()
        .filter(|(name, _)| plan.tensor_trainable(name))
        .map(|(_, shape)| numel(shape))
        .sum();
    let lora: u64 = cfg
        .linear_modules()
        .iter()
        .filter(|m| !m.tied)
        .filter_map(|m| plan.linear(&m.name).lora.map(|rank| (m, rank)))
        .map(|(m, rank)| rank.r.unsigned_abs() * (m.in_features + m.out_features))
        .sum();
    full + lora
}

/// What a trainable tensor is, for the optimiser.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ParamRole {
    LoraA,
    LoraB,
    /// A base tensor trained in full (`full`, `modules_to_save`).
    Full,
}

/// One trainable variable.
#[derive(Debug)]
pub struct TrainableParam {
    /// The transformers-5 module path + `.weight`/`.bias` (PEFT key without
    /// the `base_model.model.` root), also its `VarStore` name.
    pub name: String,
    /// The variable (shares storage with the layer that uses it).
    pub tensor: Tensor,
    pub role: ParamRole,
    /// Biases and norm weights: `AdamW` applies no weight decay to them
    /// (they are in [`NO_DECAY_GROUP`]).
    pub no_decay: bool,
}

/// A `LoRA` pair of one module, as held by [`Trainables`].
#[derive(Debug)]
pub struct LoraVars {
    pub a: Tensor,
    pub b: Tensor,
    pub rank: LoraRank,
}

/// Counts of what the plan did while loading.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AdaptStats {
    /// Linear layers stored as NF4.
    pub quantized_modules: u64,
    /// Weights of those layers.
    pub quantized_params: u64,
    /// Bytes their NF4 storage takes (codes, absmax, constants).
    pub quantized_bytes: u64,
    /// Linear layers with a `LoRA` branch.
    pub lora_modules: u64,
}

/// Whether `name` (internal) is a bias or a norm weight.
fn is_no_decay(name: &str) -> bool {
    let mut segments = name.rsplit('.');
    let last = segments.next().unwrap_or_default();
    let module = segments.next().unwrap_or_default();
    last == "bias" || module.contains("norm")
}

/// The trainable side of an adapted model: the `VarStore` the optimiser
/// is built on (groups [`DECAY_GROUP`] and [`NO_DECAY_GROUP`]), every variable
/// with its name and role, and what PEFT saves.
#[derive(Debug)]
pub struct Trainables {
    store: VarStore,
    params: Vec<TrainableParam>,
    /// Internal module name → its `LoRA` pair.
    lora: BTreeMap<String, LoraVars>,
    /// Internal tensor name → the variable, for tensors trained in full.
    full: BTreeMap<String, Tensor>,
    plan: AdaptPlan,
    stats: AdaptStats,
}

impl Trainables {
    /// The store to build the optimiser on, e.g.
    /// `nn::AdamW::default().build(t.var_store(), lr)` then
    /// `opt.set_weight_decay_group(NO_DECAY_GROUP, 0.0)`.
    pub fn var_store(&self) -> &VarStore {
        &self.store
    }

    /// Every trainable variable, in load order.
    pub fn params(&self) -> &[TrainableParam] {
        &self.params
    }

    /// Elements of all trainable variables.
    pub fn num_parameters(&self) -> u64 {
        self.params.iter().map(|p| p.tensor.numel() as u64).sum()
    }

    pub fn plan(&self) -> &AdaptPlan {
        &self.plan
    }

    pub fn stats(&self) -> AdaptStats {
        self.stats
    }

    /// The `LoRA` pairs by internal module name.
    pub fn lora(&self) -> &BTreeMap<String, LoraVars> {
        &self.lora
    }

    /// The tensors trained in full by internal name.
    pub fn full_tensors(&self) -> &BTreeMap<String, Tensor> {
        &self.full
    }

    /// Copies the values of a stored adapter into the variables (resuming,
    /// or evaluating an adapter). Every `LoRA` module and saved tensor of
    /// the plan must be in `adapter` with the same shapes, and nothing else.
    pub fn load_peft(&self, adapter: &PeftAdapter) -> Result<(), PeftError> {
        let mut expected: BTreeSet<&str> = self.lora.keys().map(String::as_str).collect();
        for (module, pair) in &adapter.lora {
            let vars = self
                .lora
                .get(module)
                .ok_or_else(|| PeftError::UnknownModule {
                    name: peft::peft_name(module),
                })?;
            expected.remove(module.as_str());
            for (var, value, which) in [(&vars.a, &pair.a, "lora_A"), (&vars.b, &pair.b, "lora_B")]
            {
                copy_into(
                    var,
                    value,
                    &format!("{}.{which}.weight", peft::peft_name(module)),
                )?;
            }
        }
        let mut expected_full: BTreeSet<&str> = self.full.keys().map(String::as_str).collect();
        for (name, value) in &adapter.saved {
            let var = self
                .full
                .get(name)
                .ok_or_else(|| PeftError::UnknownModule {
                    name: peft::peft_name(name),
                })?;
            expected_full.remove(name.as_str());
            copy_into(var, value, &peft::peft_name(name))?;
        }
        let missing: Vec<String> = expected
            .iter()
            .map(|m| format!("{}.lora_A.weight", peft::peft_name(m)))
            .chain(expected_full.iter().map(|n| peft::peft_name(n)))
            .collect();
        if missing.is_empty() {
            Ok(())
        } else {
            Err(PeftError::MissingKeys { names: missing })
        }
    }

    /// The adapter as PEFT would save it (values shared, not copied); an
    /// error for `full`, which has no adapter.
    pub fn to_adapter(&self, meta: &peft::AdapterMeta) -> Result<PeftAdapter, PeftError> {
        if self.plan.method == AdaptMethod::Full {
            return Err(PeftError::NotAnAdapter);
        }
        Ok(peft::adapter_from_parts(
            &self.plan,
            meta,
            self.lora
                .iter()
                .map(|(name, vars)| (name.clone(), vars.a.detach(), vars.b.detach(), vars.rank)),
            self.full.iter().map(|(name, t)| (name.clone(), t.detach())),
        ))
    }

    /// `(name, variable, decays)` per trainable tensor, in load order: what
    /// an `AdamW` with per-parameter decay takes (biases and norm weights do
    /// not decay).
    pub fn optimizer_params(&self) -> Vec<(String, Tensor, bool)> {
        self.params
            .iter()
            .map(|p| (p.name.clone(), p.tensor.shallow_clone(), !p.no_decay))
            .collect()
    }

    /// Writes the trained model as a full checkpoint (hub layout, `kind`):
    /// the base in `base_dir` with the `LoRA` deltas merged in and the
    /// tensors trained in full replaced; the way to save `full` fine-tuning.
    /// See [`peft::write_merged_checkpoint`].
    pub fn write_checkpoint(
        &self,
        base_dir: &std::path::Path,
        out_dir: &std::path::Path,
        kind: Kind,
    ) -> Result<peft::MergeReport, PeftError> {
        let adapter = peft::adapter_from_parts(
            &self.plan,
            &peft::AdapterMeta::default(),
            self.lora
                .iter()
                .map(|(name, vars)| (name.clone(), vars.a.detach(), vars.b.detach(), vars.rank)),
            self.full.iter().map(|(name, t)| (name.clone(), t.detach())),
        );
        peft::write_merged_checkpoint(base_dir, &adapter, out_dir, kind)
    }

    /// Writes `adapter_config.json` + `adapter_model.safetensors` to `dir`.
    pub fn save_peft(
        &self,
        dir: &std::path::Path,
        meta: &peft::AdapterMeta,
    ) -> Result<(), PeftError> {
        self.to_adapter(meta)?.save(dir)
    }
}

/// `dst.copy_(src)` without autograd, after a shape check.
fn copy_into(dst: &Tensor, src: &Tensor, name: &str) -> Result<(), PeftError> {
    if dst.size() != src.size() {
        return Err(PeftError::Shape {
            name: name.to_owned(),
            expected: dst.size(),
            found: src.size(),
        });
    }
    let mut dst = dst.shallow_clone();
    tch::no_grad(|| dst.f_copy_(src)).map_err(|source| PeftError::Tch {
        name: name.to_owned(),
        source,
    })
}

/// The model-building side of a plan: carried by
/// [`WeightPath`](crate::model::checkpoint::weights::WeightPath) while the layers load, it
/// decides per tensor and per linear, and collects the trainable variables.
#[derive(Debug)]
pub struct AdaptContext {
    plan: AdaptPlan,
    store: VarStore,
    training: Arc<AtomicBool>,
    params: RefCell<Vec<TrainableParam>>,
    names: RefCell<BTreeSet<String>>,
    lora: RefCell<BTreeMap<String, LoraVars>>,
    full: RefCell<BTreeMap<String, Tensor>>,
    stats: RefCell<AdaptStats>,
}

impl AdaptContext {
    /// A context for `plan`; trainable variables live on `device`.
    pub fn new(plan: AdaptPlan, device: Device) -> Self {
        Self {
            plan,
            store: VarStore::new(device),
            training: Arc::new(AtomicBool::new(false)),
            params: RefCell::default(),
            names: RefCell::default(),
            lora: RefCell::default(),
            full: RefCell::default(),
            stats: RefCell::default(),
        }
    }

    pub fn plan(&self) -> &AdaptPlan {
        &self.plan
    }

    /// The flag every `LoRA` dropout reads.
    pub fn training(&self) -> Arc<AtomicBool> {
        self.training.clone()
    }

    /// Adds `tensor` as the trainable variable `name` (PEFT-style name).
    fn add_var(
        &self,
        name: &str,
        tensor: &Tensor,
        no_decay: bool,
        role: ParamRole,
    ) -> Result<Tensor, TchError> {
        if !self.names.borrow_mut().insert(name.to_owned()) {
            return Err(TchError::Torch(format!(
                "trainable variable `{name}` is created twice"
            )));
        }
        let group = if no_decay {
            NO_DECAY_GROUP
        } else {
            DECAY_GROUP
        };
        let mut path = self.store.root().set_group(group);
        let mut segments: Vec<&str> = name.split('.').collect();
        let last = segments.pop().unwrap_or_default();
        for segment in segments {
            path = path.sub(segment);
        }
        let var = path.add(last, tensor.f_detach()?, true);
        self.params.borrow_mut().push(TrainableParam {
            name: name.to_owned(),
            tensor: var.shallow_clone(),
            role,
            no_decay,
        });
        Ok(var)
    }

    /// Makes the loaded tensor `name` (internal) a trainable variable if the
    /// plan trains it; otherwise returns it as it is.
    pub fn tensor(&self, name: &str, tensor: Tensor) -> Result<Tensor, TchError> {
        if !self.plan.tensor_trainable(name) {
            return Ok(tensor);
        }
        let var = self.add_var(
            &peft::peft_name(name),
            &tensor,
            is_no_decay(name),
            ParamRole::Full,
        )?;
        self.full
            .borrow_mut()
            .insert(name.to_owned(), var.shallow_clone());
        Ok(var)
    }

    /// A fresh `LoRA` branch for `module` (internal), its A and B registered.
    pub fn lora_branch(
        &self,
        module: &str,
        in_features: i64,
        out_features: i64,
        rank: LoraRank,
        compute: Kind,
    ) -> Result<LoraBranch, TchError> {
        let lora = &self.plan.lora;
        let mut branch = LoraBranch::new(
            in_features,
            out_features,
            rank,
            lora.rslora,
            lora.dropout,
            self.training(),
            self.store.device(),
            compute,
        )?;
        let peft_module = peft::peft_name(module);
        let a = self.add_var(
            &format!("{peft_module}.lora_A.weight"),
            branch.a(),
            false,
            ParamRole::LoraA,
        )?;
        let b = self.add_var(
            &format!("{peft_module}.lora_B.weight"),
            branch.b(),
            false,
            ParamRole::LoraB,
        )?;
        branch.set_weights(a.shallow_clone(), b.shallow_clone());
        self.lora
            .borrow_mut()
            .insert(module.to_owned(), LoraVars { a, b, rank });
        self.stats.borrow_mut().lora_modules += 1;
        Ok(branch)
    }

    /// Records one linear stored as NF4.
    pub fn record_quantized(&self, params: u64, bytes: u64) {
        let mut stats = self.stats.borrow_mut();
        stats.quantized_modules += 1;
        stats.quantized_params += params;
        stats.quantized_bytes += bytes;
    }

    /// Whether any vision tensor is trainable (else the tower runs without
    /// autograd).
    pub fn vision_trainable(&self) -> bool {
        let vision = |name: &str| Part::of(name) == Part::Vision;
        self.full.borrow().keys().any(|n| vision(n)) || self.lora.borrow().keys().any(|n| vision(n))
    }

    /// The collected trainables.
    pub fn finish(self) -> Trainables {
        Trainables {
            store: self.store,
            params: self.params.into_inner(),
            lora: self.lora.into_inner(),
            full: self.full.into_inner(),
            plan: self.plan,
            stats: self.stats.into_inner(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::variant::{Resolution, Size};

    fn plan(method: AdaptMethod, freeze_vision: bool, train_projector: bool) -> AdaptPlan {
        AdaptPlan {
            method,
            freeze_vision,
            modules_to_save: if train_projector {
                vec![PROJECTOR_MODULE.into()]
            } else {
                vec![]
            },
            ..AdaptPlan::lora(LoraConfig::new(8, 16.0))
        }
    }

    #[test]
    fn trainable_parameters_of_the_published_models() {
        // docs/model-reference.md §9: r=8, the 7 default names, vision included.
        for (size, expected) in [
            (Size::B3, 11_876_352),
            (Size::B10, 28_502_016),
            (Size::B28, 58_583_040),
        ] {
            let cfg = PaliGemmaConfig::published(size, Resolution::R224);
            let p = plan(AdaptMethod::Lora, false, false);
            assert_eq!(trainable_parameters(&cfg, &p), expected, "{size}");
            // QLoRA trains the same adapters.
            let q = plan(AdaptMethod::Qlora, false, false);
            assert_eq!(trainable_parameters(&cfg, &q), expected, "{size}");
            // Frozen vision drops SigLIP's q/k/v adapters.
            let frozen = plan(AdaptMethod::Lora, true, false);
            assert_eq!(
                trainable_parameters(&cfg, &frozen),
                expected - 1_492_992,
                "{size}"
            );
            // The projector in full: weight + bias.
            let projector = plan(AdaptMethod::Lora, false, true);
            let h = u64::from(cfg.projection_dim);
            assert_eq!(
                trainable_parameters(&cfg, &projector),
                expected + 1152 * h + h,
                "{size}"
            );
            let full = plan(AdaptMethod::Full, false, false);
            assert_eq!(
                trainable_parameters(&cfg, &full),
                cfg.param_counts().total,
                "{size}"
            );
            let full_frozen = plan(AdaptMethod::Full, true, false);
            assert_eq!(
                trainable_parameters(&cfg, &full_frozen),
                cfg.param_counts().total - cfg.param_counts().vision,
                "{size}"
            );
        }
    }

    #[test]
    fn tensor_shapes_cover_the_parameter_count() {
        let cfg = PaliGemmaConfig::published(Size::B3, Resolution::R448);
        let total: i64 = tensor_shapes(&cfg)
            .iter()
            .map(|(_, s)| s.iter().product::<i64>())
            .sum();
        assert_eq!(total.unsigned_abs(), cfg.param_counts().total);
    }

    #[test]
    fn linear_plans() {
        let q = "language_model.model.layers.0.self_attn.q_proj";
        let vq = "vision_tower.vision_model.encoder.layers.3.self_attn.q_proj";
        let fc1 = "vision_tower.vision_model.encoder.layers.3.mlp.fc1";
        let projector = "multi_modal_projector.linear";
        let rank = Some(LoraRank { r: 8, alpha: 16.0 });

        let p = plan(AdaptMethod::Lora, false, false);
        assert_eq!(p.linear(q).lora, rank);
        assert_eq!(p.linear(vq).lora, rank);
        assert_eq!(p.linear(fc1).lora, None);
        assert_eq!(p.linear(q).quantize, None);
        assert!(!p.tensor_trainable(&format!("{projector}.weight")));

        let p = plan(AdaptMethod::Qlora, true, true);
        assert_eq!(p.linear(vq).lora, None);
        assert!(p.linear(vq).quantize.is_some());
        assert!(p.linear(fc1).quantize.is_some());
        assert!(p.linear(q).quantize.is_some() && p.linear(q).lora.is_some());
        // The trained projector is neither quantised nor adapted.
        assert_eq!(
            p.linear(projector),
            LinearPlan {
                quantize: None,
                lora: None
            }
        );
        assert!(p.tensor_trainable(&format!("{projector}.bias")));
        assert!(!p.tensor_trainable("vision_tower.vision_model.post_layernorm.weight"));

        let p = plan(AdaptMethod::Full, false, false);
        assert!(p.tensor_trainable("language_model.model.norm.weight"));
        assert_eq!(p.linear(q).lora, None);
    }

    #[test]
    fn no_decay_names() {
        assert!(is_no_decay("multi_modal_projector.linear.bias"));
        assert!(is_no_decay(
            "language_model.model.layers.0.input_layernorm.weight"
        ));
        assert!(is_no_decay("language_model.model.norm.weight"));
        assert!(is_no_decay(
            "vision_tower.vision_model.encoder.layers.0.layer_norm1.weight"
        ));
        assert!(!is_no_decay("language_model.model.embed_tokens.weight"));
        assert!(!is_no_decay("multi_modal_projector.linear.weight"));
    }

    // -----------------------------------------------------------------------
    // Adapted golden models
    // -----------------------------------------------------------------------

    use crate::model::adapt::nf4::Nf4Tensor;
    use crate::model::adapt::peft::{self, AdapterMeta, PeftAdapter};
    use crate::model::network::paligemma::PaliGemma;
    use crate::model::network::paligemma::test_util::{golden_dir, golden_train_batch};

    fn base_dir() -> std::path::PathBuf {
        golden_dir().join("checkpoints/f32")
    }

    fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
        (a.to_kind(Kind::Double) - b.to_kind(Kind::Double))
            .abs()
            .max()
            .double_value(&[])
    }

    /// Gives every B (and optionally every fully trained tensor) random values.
    fn perturb(trainables: &Trainables, b_std: f64, seed: i64) {
        tch::manual_seed(seed);
        tch::no_grad(|| {
            for vars in trainables.lora().values() {
                let noise = Tensor::randn(vars.b.size(), (Kind::Float, Device::Cpu)) * b_std;
                vars.b.shallow_clone().copy_(&noise);
            }
            for t in trainables.full_tensors().values() {
                let noise = Tensor::randn(t.size(), (Kind::Float, Device::Cpu)) * 0.05;
                let _ = t.shallow_clone().g_add_(&noise.to_kind(t.kind()));
            }
        });
    }

    fn logits(model: &PaliGemma) -> Tensor {
        tch::no_grad(|| model.forward(&golden_train_batch())).unwrap()
    }

    fn lora_plan() -> AdaptPlan {
        AdaptPlan::lora(LoraConfig {
            dropout: 0.1,
            ..LoraConfig::new(8, 16.0)
        })
    }

    #[test]
    fn fresh_lora_leaves_the_logits_bit_identical() {
        let base = PaliGemma::load(&base_dir(), Device::Cpu, Kind::Float).unwrap();
        let (model, trainables) =
            PaliGemma::load_adapted(&base_dir(), Device::Cpu, Kind::Float, &lora_plan(), 1)
                .unwrap();
        let cfg = model.config().clone();
        // 2 SigLIP layers × q/k/v + 2 Gemma layers × 7.
        assert_eq!(trainables.stats().lora_modules, 20);
        assert_eq!(trainables.num_parameters(), 20_992);
        assert_eq!(
            trainables.num_parameters(),
            trainable_parameters(&cfg, &lora_plan())
        );
        assert!(trainables.params().iter().all(|p| !p.no_decay));
        assert!(trainables.params().iter().all(|p| p.tensor.requires_grad()));
        assert_eq!(
            trainables.var_store().trainable_variables().len(),
            trainables.params().len()
        );
        assert!(trainables.params().iter().any(
            |p| p.name == "model.vision_tower.encoder.layers.0.self_attn.q_proj.lora_A.weight"
        ));
        assert!(!model.vision_frozen());
        assert!(logits(&model).equal(&logits(&base)));
        // Dropout does not act outside training.
        model.set_training(true);
        assert!(model.is_training());
        assert!(logits(&model).equal(&logits(&base)));
    }

    #[test]
    fn gradients_reach_the_adapters_only() {
        let (model, trainables) =
            PaliGemma::load_adapted(&base_dir(), Device::Cpu, Kind::Float, &lora_plan(), 2)
                .unwrap();
        perturb(&trainables, 0.02, 3);
        model.set_training(true);
        let loss = model.loss(&golden_train_batch()).unwrap();
        loss.mean().unwrap().backward();
        for p in trainables.params() {
            let grad = p.tensor.grad();
            assert!(grad.defined(), "{}", p.name);
            assert!(
                grad.abs().sum(Kind::Double).double_value(&[]) > 0.0,
                "{}",
                p.name
            );
        }
    }

    #[test]
    fn saved_adapters_load_back_to_identical_logits() {
        let meta = AdapterMeta {
            base_model_name_or_path: Some("tests/golden/checkpoints/f32".into()),
            revision: None,
        };
        for (method, projector) in [(AdaptMethod::Lora, false), (AdaptMethod::Lora, true)] {
            let plan = AdaptPlan {
                method,
                modules_to_save: if projector {
                    vec![PROJECTOR_MODULE.into()]
                } else {
                    vec![]
                },
                ..lora_plan()
            };
            let (model, trainables) =
                PaliGemma::load_adapted(&base_dir(), Device::Cpu, Kind::Float, &plan, 4).unwrap();
            perturb(&trainables, 0.02, 5);
            let dir = tempfile::tempdir().unwrap();
            trainables.save_peft(dir.path(), &meta).unwrap();
            let adapter = PeftAdapter::read(dir.path()).unwrap();
            assert_eq!(adapter.lora.len(), 20);
            let config = &adapter.config.raw;
            assert_eq!(
                config["base_model_name_or_path"],
                "tests/golden/checkpoints/f32"
            );
            assert_eq!(config["lora_dropout"], 0.1);
            if projector {
                assert_eq!(
                    config["modules_to_save"],
                    serde_json::json!(["multi_modal_projector"])
                );
                assert_eq!(
                    adapter.saved.keys().collect::<Vec<_>>(),
                    [
                        "multi_modal_projector.linear.bias",
                        "multi_modal_projector.linear.weight"
                    ]
                );
                let keys: Vec<String> = adapter.state().into_iter().map(|(k, _)| k).collect();
                assert!(keys.contains(
                    &"base_model.model.model.multi_modal_projector.linear.weight".to_owned()
                ));
                let bias = trainables
                    .params()
                    .iter()
                    .find(|p| p.name == "model.multi_modal_projector.linear.bias")
                    .unwrap();
                assert!(bias.no_decay && bias.role == ParamRole::Full);
            } else {
                assert!(config["modules_to_save"].is_null());
            }
            let loaded =
                PaliGemma::load_with_adapter(&base_dir(), dir.path(), Device::Cpu, Kind::Float)
                    .unwrap();
            let (a, b) = (logits(&model), logits(&loaded));
            assert!(
                a.equal(&b),
                "projector {projector}: {}",
                max_abs_diff(&a, &b)
            );
            // The perturbation changed the model.
            let base = PaliGemma::load(&base_dir(), Device::Cpu, Kind::Float).unwrap();
            assert!(max_abs_diff(&a, &logits(&base)) > 1e-3);

            // Merged into the base: the same logits.
            let merged_dir = tempfile::tempdir().unwrap();
            peft::write_merged_checkpoint(&base_dir(), &adapter, merged_dir.path(), Kind::Float)
                .unwrap();
            let merged = PaliGemma::load(merged_dir.path(), Device::Cpu, Kind::Float).unwrap();
            // f32: `W·x + s·B·(A·x)` and `(W + s·B·A)·x` round differently,
            // and this model amplifies rounding (PEFT's own merge moves the
            // fixture logits by 4.2e-5): 1e-5 on the loss, 1e-4 on logits.
            let diff = max_abs_diff(&a, &logits(&merged));
            let loss = |m: &PaliGemma| {
                let out = tch::no_grad(|| m.loss(&golden_train_batch())).unwrap();
                out.mean().unwrap().double_value(&[])
            };
            let loss_diff = (loss(&model) - loss(&merged)).abs();
            eprintln!(
                "projector {projector}: merged vs unmerged logits {diff:e}, loss {loss_diff:e}"
            );
            assert!(diff < 1e-4 && loss_diff < 1e-5, "{diff:e} {loss_diff:e}");
            // In f64 (weights merged and stored in f64) the two agree to f64 rounding.
            peft::write_merged_checkpoint(&base_dir(), &adapter, merged_dir.path(), Kind::Double)
                .unwrap();
            let unmerged64 =
                PaliGemma::load_with_adapter(&base_dir(), dir.path(), Device::Cpu, Kind::Double)
                    .unwrap();
            let merged64 = PaliGemma::load(merged_dir.path(), Device::Cpu, Kind::Double).unwrap();
            let input = golden_train_batch().to(Device::Cpu, Kind::Double);
            let (u, m) = tch::no_grad(|| {
                (
                    unmerged64.forward(&input).unwrap(),
                    merged64.forward(&input).unwrap(),
                )
            });
            let diff64 = max_abs_diff(&u, &m);
            assert!(diff64 < 1e-9, "{diff64:e}");
        }
    }

    #[test]
    fn frozen_vision_has_no_vision_adapters_and_no_gradient_there() {
        let plan = AdaptPlan {
            freeze_vision: true,
            ..lora_plan()
        };
        let (model, trainables) =
            PaliGemma::load_adapted(&base_dir(), Device::Cpu, Kind::Float, &plan, 6).unwrap();
        assert_eq!(trainables.stats().lora_modules, 14);
        assert!(
            trainables
                .lora()
                .keys()
                .all(|m| Part::of(m) != Part::Vision)
        );
        assert!(model.vision_frozen());
        assert_eq!(
            trainables.num_parameters(),
            trainable_parameters(model.config(), &plan)
        );
        let input = golden_train_batch();
        let pixels = input.pixel_values.set_requires_grad(true);
        let features = model.image_features(&pixels).unwrap();
        // The projector is frozen too: nothing upstream of the LM needs a gradient.
        assert!(!features.requires_grad());
        let dir = tempfile::tempdir().unwrap();
        trainables
            .save_peft(dir.path(), &AdapterMeta::default())
            .unwrap();
        let adapter = PeftAdapter::read(dir.path()).unwrap();
        assert_eq!(adapter.config.raw["exclude_modules"], peft::EXCLUDE_VISION);
        assert!(adapter.lora.keys().all(|m| !m.starts_with("vision_tower")));
    }

    #[test]
    fn qlora_stores_nf4_and_trains_its_adapters() {
        let plan = AdaptPlan {
            freeze_vision: true,
            ..AdaptPlan::qlora(LoraConfig::new(8, 16.0), QuantConfig::default())
        };
        let base = PaliGemma::load(&base_dir(), Device::Cpu, Kind::Float).unwrap();
        let (model, trainables) =
            PaliGemma::load_adapted(&base_dir(), Device::Cpu, Kind::Float, &plan, 7).unwrap();
        let stats = trainables.stats();
        let counts = model.config().param_counts();
        // Every linear but the tied head: SigLIP, the projector, the LM.
        assert_eq!(stats.quantized_params, counts.linear_params);
        assert_eq!(stats.quantized_modules, 2 * 6 + 1 + 2 * 7);
        let per_param = stats.quantized_bytes as f64 / stats.quantized_params as f64;
        eprintln!("NF4 storage: {per_param:.4} B/param");
        assert!(per_param <= 0.53, "{per_param}");
        // The QLoRA forward is the base forward with every linear weight
        // replaced by its NF4 round trip (a fresh adapter adds 0).
        let rounded: Vec<(String, Tensor)> = model
            .config()
            .linear_modules()
            .iter()
            .filter(|m| !m.tied)
            .map(|m| {
                let name = format!("{}.weight", m.name);
                let w = crate::model::checkpoint::weights::Weights::open(
                    &base_dir(),
                    Device::Cpu,
                    Kind::Float,
                )
                .unwrap()
                .root()
                .get(
                    &name,
                    &[m.out_features.cast_signed(), m.in_features.cast_signed()],
                )
                .unwrap();
                let q = Nf4Tensor::quantize(&w, 64, true).unwrap();
                (name, q.dequantize(Kind::Float).unwrap())
            })
            .collect();
        let adapter = peft::adapter_from_parts(&plan, &AdapterMeta::default(), [], rounded);
        let rounded_dir = tempfile::tempdir().unwrap();
        peft::write_merged_checkpoint(&base_dir(), &adapter, rounded_dir.path(), Kind::Float)
            .unwrap();
        let rounded = PaliGemma::load(rounded_dir.path(), Device::Cpu, Kind::Float).unwrap();
        let q_logits = logits(&model);
        let diff = max_abs_diff(&q_logits, &logits(&rounded));
        assert!(diff < 1e-5, "{diff:e}");
        let moved = max_abs_diff(&q_logits, &logits(&base));
        eprintln!("QLoRA vs NF4-rounded dense {diff:e}; vs the base {moved}");
        assert!(moved > 0.0);

        // Gradients reach the LoRA matrices through the dequantised base.
        perturb(&trainables, 0.02, 8);
        model
            .loss(&golden_train_batch())
            .unwrap()
            .mean()
            .unwrap()
            .backward();
        for p in trainables.params() {
            let g = p.tensor.grad();
            assert!(
                g.defined() && g.abs().sum(Kind::Double).double_value(&[]) > 0.0,
                "{}",
                p.name
            );
        }
    }

    #[test]
    fn qlora_without_double_quant_and_with_a_trained_projector() {
        let plan = AdaptPlan {
            modules_to_save: vec![PROJECTOR_MODULE.into()],
            ..AdaptPlan::qlora(
                LoraConfig::new(4, 8.0),
                QuantConfig {
                    block_size: 64,
                    double_quant: false,
                },
            )
        };
        let (model, trainables) =
            PaliGemma::load_adapted(&base_dir(), Device::Cpu, Kind::Float, &plan, 9).unwrap();
        let counts = model.config().param_counts();
        let projector_weight = 32 * 64;
        assert_eq!(
            trainables.stats().quantized_params,
            counts.linear_params - projector_weight
        );
        let per_param =
            trainables.stats().quantized_bytes as f64 / trainables.stats().quantized_params as f64;
        assert!((per_param - 0.5625).abs() < 0.01, "{per_param}");
        assert_eq!(
            trainables.num_parameters(),
            trainable_parameters(model.config(), &plan)
        );
    }

    #[test]
    fn full_method_trains_every_tensor() {
        let plan = AdaptPlan::full();
        let (model, trainables) =
            PaliGemma::load_adapted(&base_dir(), Device::Cpu, Kind::Float, &plan, 10).unwrap();
        let total = model.config().param_counts().total;
        assert_eq!(trainables.num_parameters(), total);
        assert_eq!(trainable_parameters(model.config(), &plan), total);
        assert_eq!(trainables.stats().lora_modules, 0);
        let names = tensor_shapes(model.config()).len();
        assert_eq!(trainables.params().len(), names);
        // Norm weights and biases are not decayed; the embedding is.
        let find = |n: &str| trainables.params().iter().find(|p| p.name == n).unwrap();
        assert!(find("model.language_model.norm.weight").no_decay);
        assert!(find("model.vision_tower.post_layernorm.bias").no_decay);
        assert!(!find("model.language_model.embed_tokens.weight").no_decay);
        // Unchanged logits before training; a gradient on every tensor.
        let base = PaliGemma::load(&base_dir(), Device::Cpu, Kind::Float).unwrap();
        assert!(logits(&model).equal(&logits(&base)));
        model
            .loss(&golden_train_batch())
            .unwrap()
            .mean()
            .unwrap()
            .backward();
        for p in trainables.params() {
            assert!(p.tensor.grad().defined(), "{}", p.name);
        }
        let err =
            trainables.save_peft(tempfile::tempdir().unwrap().path(), &AdapterMeta::default());
        assert!(matches!(err, Err(PeftError::NotAnAdapter)));
        // Saved as a full checkpoint instead, after a change.
        perturb(&trainables, 0.0, 11);
        let decays = trainables.optimizer_params();
        assert_eq!(decays.len(), names);
        assert!(decays.iter().any(|(_, _, decay)| !decay));
        let out = tempfile::tempdir().unwrap();
        let report = trainables
            .write_checkpoint(&base_dir(), out.path(), Kind::Float)
            .unwrap();
        assert_eq!(report.replaced, names);
        let saved = PaliGemma::load(out.path(), Device::Cpu, Kind::Float).unwrap();
        let trained = logits(&model);
        assert!(max_abs_diff(&trained, &logits(&base)) > 1e-3);
        assert!(trained.equal(&logits(&saved)));
    }
}

//! PEFT `LoRA` adapters on disk (docs/model-reference.md §9), as PEFT 0.21 writes and
//! reads them for transformers 5.24:
//!
//! * `adapter_config.json`: PEFT's `LoraConfig` (sorted keys, every field it
//!   writes), `inference_mode: true`;
//! * `adapter_model.safetensors` (metadata `{"format": "pt"}`):
//!   `base_model.model.<module>.lora_A.weight` `[r, in]` and `….lora_B.weight`
//!   `[out, r]` (f32), and the tensors of `modules_to_save` modules as
//!   `base_model.model.<module>.<tensor>` (the `modules_to_save.default.`
//!   level removed).
//!
//! `<module>` is the transformers-5 in-memory name
//! (`model.language_model.layers.0.self_attn.q_proj`,
//! `model.vision_tower.encoder.layers.0.self_attn.q_proj`,
//! `model.multi_modal_projector.linear`); reading also accepts the ≤ 4.51 form
//! (`language_model.model.…`, `vision_tower.vision_model.…`) and the 4.52
//! form (`model.vision_tower.vision_model.…`).
//!
//! [`write_merged_checkpoint`] folds an adapter into a full-precision base
//! and writes a checkpoint in the hub layout.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use safetensors::SafeTensors;
use safetensors::tensor::{Dtype, SafeTensorError};
use serde_json::{Value, json};
use tch::{Device, Kind, TchError, Tensor};

use crate::model::adapt::lora::{LoraRank, LoraTargets, lora_scaling, peft_suffix_match};
use crate::model::adapt::plan::AdaptPlan;
use crate::model::checkpoint::weights::{self, TensorEntry, WeightError, Weights};

/// The adapter's config file.
pub const ADAPTER_CONFIG: &str = "adapter_config.json";
/// The adapter's tensors.
pub const ADAPTER_WEIGHTS: &str = "adapter_model.safetensors";
/// The root PEFT puts in front of every module path.
pub const KEY_ROOT: &str = "base_model.model.";
/// The PEFT version whose file format this module writes.
pub const PEFT_VERSION: &str = "0.21.2";
/// `exclude_modules` of a plan with a frozen vision tower (a regex that
/// PEFT full-matches against module names, either transformers naming).
pub const EXCLUDE_VISION: &str = ".*vision_tower.*";

/// Why an adapter could not be read, written or applied.
#[derive(Debug, thiserror::Error)]
pub enum PeftError {
    #[error("{} is not a PEFT adapter folder: it has no {ADAPTER_CONFIG}", dir.display())]
    NoAdapter { dir: PathBuf },
    #[error("cannot read or write {}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid {}: {source}", path.display())]
    Json {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("corrupt adapter weights {}: {source}", path.display())]
    Safetensors {
        path: PathBuf,
        source: SafeTensorError,
    },
    #[error("unsupported adapter in {}: {what}", path.display())]
    Unsupported { path: PathBuf, what: String },
    #[error("adapter key `{key}` in {} is not a LoRA matrix or a tensor of this model", path.display())]
    UnknownKey { key: String, path: PathBuf },
    #[error("adapter module `{module}` has {present} but no {missing}")]
    Incomplete {
        module: String,
        present: &'static str,
        missing: &'static str,
    },
    #[error("`{name}` has shape {found:?}, expected {expected:?}")]
    Shape {
        name: String,
        expected: Vec<i64>,
        found: Vec<i64>,
    },
    #[error("the adapter adapts `{name}`, which is not a linear layer or tensor of this model")]
    UnknownModule { name: String },
    #[error("the adapter lacks {} tensor(s) the plan trains: {}", names.len(), names.join(", "))]
    MissingKeys { names: Vec<String> },
    #[error("full fine-tuning has no adapter: save a merged checkpoint instead")]
    NotAnAdapter,
    #[error("base checkpoint: {0}")]
    Weights(#[from] WeightError),
    #[error("libtorch on `{name}`: {source}")]
    Tch { name: String, source: TchError },
}

/// The transformers-5 in-memory name (what PEFT keys are built from) of an
/// internal module or tensor name.
pub fn peft_name(internal: &str) -> String {
    let map = |old: &str, new: &str| -> Option<String> {
        if internal == old {
            Some(new.to_owned())
        } else {
            internal
                .strip_prefix(old)
                .filter(|rest| rest.starts_with('.'))
                .map(|rest| format!("{new}{rest}"))
        }
    };
    map("language_model.model", "model.language_model")
        .or_else(|| map("language_model.lm_head", "lm_head"))
        .or_else(|| map("vision_tower.vision_model", "model.vision_tower"))
        .or_else(|| map("multi_modal_projector", "model.multi_modal_projector"))
        .unwrap_or_else(|| internal.to_owned())
}

/// The internal name of a module or tensor path of any transformers naming
/// (the `base_model.model.` root already removed); `None` for the tied head.
pub fn internal_module(path: &str) -> Option<String> {
    weights::internal_name(path)
}

/// What a PEFT adapter config says; unknown fields are kept in
/// [`raw`](Self::raw) and written back unchanged.
#[derive(Clone, Debug, PartialEq, serde::Deserialize)]
#[allow(clippy::struct_excessive_bools)] // PEFT's flags, by their JSON names
pub struct AdapterConfig {
    #[serde(default = "default_peft_type")]
    pub peft_type: String,
    #[serde(default)]
    pub task_type: Option<String>,
    #[serde(default)]
    pub base_model_name_or_path: Option<String>,
    #[serde(default)]
    pub revision: Option<String>,
    pub r: u32,
    pub lora_alpha: f64,
    #[serde(default)]
    pub lora_dropout: f64,
    #[serde(default)]
    pub use_rslora: bool,
    #[serde(default)]
    pub use_dora: bool,
    #[serde(default)]
    pub fan_in_fan_out: bool,
    #[serde(default)]
    pub lora_bias: bool,
    #[serde(default)]
    pub target_modules: Option<Value>,
    #[serde(default)]
    pub exclude_modules: Option<Value>,
    #[serde(default)]
    pub modules_to_save: Option<Vec<String>>,
    #[serde(default)]
    pub alpha_pattern: Option<BTreeMap<String, f64>>,
    #[serde(default)]
    pub rank_pattern: Option<BTreeMap<String, Value>>,
    /// The whole file as read (or as it will be written).
    #[serde(skip)]
    pub raw: serde_json::Map<String, Value>,
}

fn default_peft_type() -> String {
    "LORA".into()
}

impl AdapterConfig {
    /// The `lora_alpha` of `module` (internal): `alpha_pattern` entries
    /// (names, suffix-matched) override the global value.
    fn alpha_of(&self, module: &str) -> f64 {
        let name = peft_name(module);
        self.alpha_pattern
            .iter()
            .flatten()
            .find(|(pattern, _)| {
                peft_suffix_match(&name, pattern) || peft_suffix_match(module, pattern)
            })
            .map_or(self.lora_alpha, |(_, &alpha)| alpha)
    }
}

/// Where the adapter's base came from, recorded in its config.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AdapterMeta {
    /// A hub id or a folder, as the user named it.
    pub base_model_name_or_path: Option<String>,
    pub revision: Option<String>,
}

/// One module's `LoRA` matrices.
#[derive(Debug)]
pub struct LoraPair {
    /// `[r, in]`.
    pub a: Tensor,
    /// `[out, r]`.
    pub b: Tensor,
    pub rank: LoraRank,
}

/// An adapter in memory: its config, its `LoRA` pairs and the tensors it
/// stores whole, by internal name.
#[derive(Debug)]
pub struct PeftAdapter {
    pub config: AdapterConfig,
    /// Internal module name → matrices (CPU, in the stored dtype, or as
    /// trained).
    pub lora: BTreeMap<String, LoraPair>,
    /// Internal tensor name → value (`modules_to_save`, biases).
    pub saved: BTreeMap<String, Tensor>,
}

fn stored_kind(dtype: Dtype) -> Option<Kind> {
    match dtype {
        Dtype::BF16 => Some(Kind::BFloat16),
        Dtype::F16 => Some(Kind::Half),
        Dtype::F32 => Some(Kind::Float),
        Dtype::F64 => Some(Kind::Double),
        _ => None,
    }
}

/// Reads and checks `adapter_config.json`.
fn read_config(config_path: &Path) -> Result<AdapterConfig, PeftError> {
    let text = std::fs::read_to_string(config_path).map_err(|source| PeftError::Io {
        path: config_path.to_path_buf(),
        source,
    })?;
    let json_err = |source| PeftError::Json {
        path: config_path.to_path_buf(),
        source,
    };
    let raw: serde_json::Map<String, Value> = serde_json::from_str(&text).map_err(json_err)?;
    let mut config: AdapterConfig =
        serde_json::from_value(Value::Object(raw.clone())).map_err(json_err)?;
    config.raw = raw;
    let unsupported = |what: String| PeftError::Unsupported {
        path: config_path.to_path_buf(),
        what,
    };
    if config.peft_type != "LORA" {
        return Err(unsupported(format!(
            "peft_type {} (only LORA is supported)",
            config.peft_type
        )));
    }
    for (flag, on) in [
        ("use_dora", config.use_dora),
        ("fan_in_fan_out", config.fan_in_fan_out),
        ("lora_bias", config.lora_bias),
    ] {
        if on {
            return Err(unsupported(format!("{flag} = true")));
        }
    }
    if config.r == 0 {
        return Err(unsupported("r = 0".into()));
    }
    Ok(config)
}

/// The `lora_A`/`lora_B` halves by module, and the tensors stored whole,
/// of `adapter_model.safetensors` (internal names).
type AdapterTensors = (
    BTreeMap<String, (Option<Tensor>, Option<Tensor>)>,
    BTreeMap<String, Tensor>,
);

/// Reads `adapter_model.safetensors` and sorts its keys into `LoRA`
/// halves and whole tensors.
fn read_tensors(weights_path: &Path) -> Result<AdapterTensors, PeftError> {
    let bytes = std::fs::read(weights_path).map_err(|source| PeftError::Io {
        path: weights_path.to_path_buf(),
        source,
    })?;
    let corrupt = |source| PeftError::Safetensors {
        path: weights_path.to_path_buf(),
        source,
    };
    let file = SafeTensors::deserialize(&bytes).map_err(corrupt)?;
    let mut halves: BTreeMap<String, (Option<Tensor>, Option<Tensor>)> = BTreeMap::new();
    let mut saved = BTreeMap::new();
    let mut names = file.names();
    names.sort_unstable();
    for key in names {
        let unknown = || PeftError::UnknownKey {
            key: key.to_owned(),
            path: weights_path.to_path_buf(),
        };
        let view = file.tensor(key).map_err(corrupt)?;
        let kind = stored_kind(view.dtype()).ok_or_else(|| PeftError::Unsupported {
            path: weights_path.to_path_buf(),
            what: format!("tensor `{key}` has dtype {:?}", view.dtype()),
        })?;
        let shape: Vec<i64> = view
            .shape()
            .iter()
            .map(|&d| i64::try_from(d).unwrap_or(-1))
            .collect();
        let tensor = Tensor::f_from_data_size(view.data(), &shape, kind).map_err(|source| {
            PeftError::Tch {
                name: key.to_owned(),
                source,
            }
        })?;
        let path = key.strip_prefix(KEY_ROOT).unwrap_or(key);
        if let Some(module) = path.strip_suffix(".lora_A.weight") {
            let module = internal_module(module).ok_or_else(unknown)?;
            halves.entry(module).or_default().0 = Some(tensor);
        } else if let Some(module) = path.strip_suffix(".lora_B.weight") {
            let module = internal_module(module).ok_or_else(unknown)?;
            halves.entry(module).or_default().1 = Some(tensor);
        } else if path.contains("lora_") {
            return Err(PeftError::Unsupported {
                path: weights_path.to_path_buf(),
                what: format!("tensor `{key}` (only lora_A/lora_B of linear layers are supported)"),
            });
        } else {
            saved.insert(internal_module(path).ok_or_else(unknown)?, tensor);
        }
    }
    Ok((halves, saved))
}

/// Pairs A with B of one module, checking `A [r, in]`, `B [out, r]`.
fn pair_up(
    config: &AdapterConfig,
    module: &str,
    a: Option<Tensor>,
    b: Option<Tensor>,
) -> Result<LoraPair, PeftError> {
    let incomplete = |present, missing| PeftError::Incomplete {
        module: peft_name(module),
        present,
        missing,
    };
    let (a, b) = match (a, b) {
        (Some(a), Some(b)) => (a, b),
        (Some(_), None) => return Err(incomplete("lora_A", "lora_B")),
        (None, _) => return Err(incomplete("lora_B", "lora_A")),
    };
    let (sa, sb) = (a.size(), b.size());
    let (&[r, _], &[out, rb]) = (sa.as_slice(), sb.as_slice()) else {
        return Err(PeftError::Shape {
            name: format!("{}.lora_A/lora_B", peft_name(module)),
            expected: vec![-1, -1],
            found: if sa.len() == 2 { sb } else { sa },
        });
    };
    if r != rb || r == 0 {
        return Err(PeftError::Shape {
            name: format!("{}.lora_B.weight", peft_name(module)),
            expected: vec![out, r],
            found: sb,
        });
    }
    let rank = LoraRank {
        r,
        alpha: config.alpha_of(module),
    };
    Ok(LoraPair { a, b, rank })
}

impl PeftAdapter {
    /// Reads `dir/adapter_config.json` and `dir/adapter_model.safetensors`.
    pub fn read(dir: &Path) -> Result<Self, PeftError> {
        let config_path = dir.join(ADAPTER_CONFIG);
        if !config_path.is_file() {
            return Err(PeftError::NoAdapter {
                dir: dir.to_path_buf(),
            });
        }
        let config = read_config(&config_path)?;
        let weights_path = dir.join(ADAPTER_WEIGHTS);
        if !weights_path.is_file() {
            return Err(if dir.join("adapter_model.bin").is_file() {
                PeftError::Unsupported {
                    path: dir.to_path_buf(),
                    what: "pickled adapter_model.bin (convert it to safetensors)".into(),
                }
            } else {
                PeftError::Io {
                    path: weights_path,
                    source: std::io::ErrorKind::NotFound.into(),
                }
            });
        }
        let (halves, saved) = read_tensors(&weights_path)?;
        let lora = halves
            .into_iter()
            .map(|(module, (a, b))| {
                let pair = pair_up(&config, &module, a, b)?;
                Ok((module, pair))
            })
            .collect::<Result<_, PeftError>>()?;
        Ok(Self {
            config,
            lora,
            saved,
        })
    }

    /// `scaling` of one module (`alpha / r` or `alpha / √r`).
    pub fn scaling(&self, pair: &LoraPair) -> f64 {
        lora_scaling(pair.rank.alpha, pair.rank.r, self.config.use_rslora)
    }

    /// The stored keys and tensors, sorted by key.
    pub fn state(&self) -> Vec<(String, &Tensor)> {
        let mut out: Vec<(String, &Tensor)> = Vec::new();
        for (module, pair) in &self.lora {
            let m = peft_name(module);
            out.push((format!("{KEY_ROOT}{m}.lora_A.weight"), &pair.a));
            out.push((format!("{KEY_ROOT}{m}.lora_B.weight"), &pair.b));
        }
        for (name, tensor) in &self.saved {
            out.push((format!("{KEY_ROOT}{}", peft_name(name)), tensor));
        }
        out.sort_by(|x, y| x.0.cmp(&y.0));
        out
    }

    /// Writes `adapter_config.json` and `adapter_model.safetensors` into
    /// `dir` (created if needed), as PEFT's `save_pretrained` does.
    pub fn save(&self, dir: &Path) -> Result<(), PeftError> {
        std::fs::create_dir_all(dir).map_err(|source| PeftError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
        let state = self.state();
        let entries: Vec<TensorEntry> = state
            .iter()
            .map(|(key, t)| TensorEntry {
                name: key.clone(),
                kind: t.kind(),
                shape: t.size(),
            })
            .collect();
        weights::write_safetensors(
            &dir.join(ADAPTER_WEIGHTS),
            &entries,
            &[("format", "pt")],
            |i| Ok(state[i].1.detach()),
        )?;
        let path = dir.join(ADAPTER_CONFIG);
        let text = serde_json::to_string_pretty(&Value::Object(self.config.raw.clone())).map_err(
            |source| PeftError::Json {
                path: path.clone(),
                source,
            },
        )?;
        std::fs::write(&path, text).map_err(|source| PeftError::Io { path, source })
    }
}

/// A JSON number as Python's `json` writes an int-valued float from an int
/// argument (`16`, not `16.0`), else the float.
fn number(x: f64) -> Value {
    if x.fract() == 0.0 && x.abs() < 1e15 {
        json!(x as i64)
    } else {
        json!(x)
    }
}

/// The `adapter_config.json` PEFT 0.21.2 writes for a `LoraConfig` with these
/// values (every field, sorted keys, `inference_mode: true`).
fn config_json(
    plan: &AdaptPlan,
    meta: &AdapterMeta,
    saved_modules: &[String],
) -> serde_json::Map<String, Value> {
    let lora = &plan.lora;
    let mut rank_pattern = serde_json::Map::new();
    let mut alpha_pattern = serde_json::Map::new();
    let targets: Vec<String> = match &lora.targets {
        LoraTargets::Names(names) => {
            let set: BTreeSet<&String> = names.iter().collect();
            set.into_iter().cloned().collect()
        }
        LoraTargets::Modules(modules) => modules
            .iter()
            .map(|(module, rank)| {
                let name = peft_name(module);
                if rank.r != lora.r {
                    rank_pattern.insert(name.clone(), json!(rank.r));
                }
                if (rank.alpha - lora.alpha).abs() > 0.0 {
                    alpha_pattern.insert(name.clone(), number(rank.alpha));
                }
                name
            })
            .collect(),
    };
    let exclude = match (&lora.targets, plan.freeze_vision) {
        (LoraTargets::Names(_), true) => json!(EXCLUDE_VISION),
        _ => Value::Null,
    };
    let modules_to_save = if saved_modules.is_empty() {
        Value::Null
    } else {
        json!(saved_modules)
    };
    let fields = json!({
        "alora_invocation_tokens": null,
        "alpha_pattern": alpha_pattern,
        "arrow_config": null,
        "auto_mapping": null,
        "base_model_name_or_path": meta.base_model_name_or_path,
        "bias": "none",
        "corda_config": null,
        "ensure_weight_tying": false,
        "eva_config": null,
        "exclude_modules": exclude,
        "fan_in_fan_out": false,
        "inference_mode": true,
        "init_lora_weights": true,
        "kasa_config": null,
        "layer_replication": null,
        "layers_pattern": null,
        "layers_to_transform": null,
        "loftq_config": {},
        "lora_alpha": number(lora.alpha),
        "lora_bias": false,
        "lora_dropout": lora.dropout,
        "lora_ga_config": null,
        "megatron_config": null,
        "megatron_core": "megatron.core",
        "modules_to_save": modules_to_save,
        "monteclora_config": null,
        "peft_type": "LORA",
        "peft_version": PEFT_VERSION,
        "qalora_group_size": 16,
        "r": lora.r,
        "rank_pattern": rank_pattern,
        "revision": meta.revision,
        "target_modules": targets,
        "target_parameters": null,
        "task_type": "CAUSAL_LM",
        "trainable_token_indices": null,
        "use_bdlora": null,
        "use_dora": false,
        "use_qalora": false,
        "use_rslora": lora.rslora,
        "velora_config": null,
    });
    match fields {
        // Sorted, whatever order serde_json's map keeps.
        Value::Object(map) => {
            let sorted: BTreeMap<String, Value> = map.into_iter().collect();
            sorted.into_iter().collect()
        }
        _ => serde_json::Map::new(),
    }
}

/// An adapter from a plan and its trained values (`lora`: internal module,
/// A, B, rank; `saved`: internal tensor name, value).
pub fn adapter_from_parts(
    plan: &AdaptPlan,
    meta: &AdapterMeta,
    lora: impl IntoIterator<Item = (String, Tensor, Tensor, LoraRank)>,
    saved: impl IntoIterator<Item = (String, Tensor)>,
) -> PeftAdapter {
    let lora: BTreeMap<String, LoraPair> = lora
        .into_iter()
        .map(|(name, a, b, rank)| (name, LoraPair { a, b, rank }))
        .collect();
    let saved: BTreeMap<String, Tensor> = saved.into_iter().collect();
    let saved_modules: Vec<String> = if plan.modules_to_save.is_empty() {
        let modules: BTreeSet<String> = saved
            .keys()
            .filter_map(|name| name.rsplit_once('.').map(|(m, _)| peft_name(m)))
            .collect();
        modules.into_iter().collect()
    } else {
        plan.modules_to_save.clone()
    };
    let raw = config_json(plan, meta, &saved_modules);
    let config = AdapterConfig {
        peft_type: "LORA".into(),
        task_type: Some("CAUSAL_LM".into()),
        base_model_name_or_path: meta.base_model_name_or_path.clone(),
        revision: meta.revision.clone(),
        r: u32::try_from(plan.lora.r).unwrap_or(0),
        lora_alpha: plan.lora.alpha,
        lora_dropout: plan.lora.dropout,
        use_rslora: plan.lora.rslora,
        use_dora: false,
        fan_in_fan_out: false,
        lora_bias: false,
        target_modules: raw.get("target_modules").cloned(),
        exclude_modules: raw.get("exclude_modules").cloned(),
        modules_to_save: (!saved_modules.is_empty()).then_some(saved_modules),
        alpha_pattern: None,
        rank_pattern: None,
        raw,
    };
    PeftAdapter {
        config,
        lora,
        saved,
    }
}

/// What [`write_merged_checkpoint`] wrote.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MergeReport {
    /// Tensors in the output.
    pub tensors: usize,
    /// Linear weights with a `LoRA` delta added.
    pub merged: usize,
    /// Tensors replaced by the adapter's stored values.
    pub replaced: usize,
    pub bytes: u64,
}

/// Files of a checkpoint folder that are not copied into a merged one: the
/// weights (rewritten) and the config (rewritten with the new dtype).
fn is_weight_or_config(name: &str) -> bool {
    let extension = Path::new(name)
        .extension()
        .map(|e| e.to_string_lossy().to_ascii_lowercase());
    name == "config.json"
        || name.starts_with('.')
        || matches!(
            extension.as_deref(),
            Some("safetensors" | "bin" | "pt" | "pth")
        )
        || name.ends_with(".index.json")
}

/// The `config.json` dtype name of a kind.
fn dtype_name(kind: Kind) -> &'static str {
    match kind {
        Kind::BFloat16 => "bfloat16",
        Kind::Half => "float16",
        Kind::Double => "float64",
        _ => "float32",
    }
}

/// Checks that every adapter tensor lands on a base tensor of a fitting
/// shape (`shape_of`: internal name → shape).
fn check_fits(adapter: &PeftAdapter, shape_of: &BTreeMap<&str, &[i64]>) -> Result<(), PeftError> {
    for (module, pair) in &adapter.lora {
        let weight = format!("{module}.weight");
        let Some(&&[out, inp]) = shape_of.get(weight.as_str()) else {
            return Err(PeftError::UnknownModule {
                name: peft_name(module),
            });
        };
        for (which, t, expected) in [
            ("lora_A", &pair.a, [pair.rank.r, inp]),
            ("lora_B", &pair.b, [out, pair.rank.r]),
        ] {
            if t.size() != expected {
                return Err(PeftError::Shape {
                    name: format!("{}.{which}.weight", peft_name(module)),
                    expected: expected.to_vec(),
                    found: t.size(),
                });
            }
        }
    }
    for (name, t) in &adapter.saved {
        let Some(&shape) = shape_of.get(name.as_str()) else {
            return Err(PeftError::UnknownModule {
                name: peft_name(name),
            });
        };
        if t.size() != shape {
            return Err(PeftError::Shape {
                name: peft_name(name),
                expected: shape.to_vec(),
                found: t.size(),
            });
        }
    }
    Ok(())
}

/// Copies `config.json` with its dtype set to `kind`, and every other file
/// that is not a weight file.
fn copy_checkpoint_files(base_dir: &Path, out_dir: &Path, kind: Kind) -> Result<(), PeftError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| PeftError::Io { path, source }
    };
    let config_path = base_dir.join("config.json");
    let text = std::fs::read_to_string(&config_path).map_err(io(&config_path))?;
    let mut config: serde_json::Map<String, Value> =
        serde_json::from_str(&text).map_err(|source| PeftError::Json {
            path: config_path.clone(),
            source,
        })?;
    let dtype = json!(dtype_name(kind));
    let mut set = false;
    for key in ["dtype", "torch_dtype"] {
        if let Some(value) = config.get_mut(key) {
            *value = dtype.clone();
            set = true;
        }
    }
    if !set {
        config.insert("torch_dtype".into(), dtype);
    }
    let out_config = out_dir.join("config.json");
    let text =
        serde_json::to_string_pretty(&Value::Object(config)).map_err(|source| PeftError::Json {
            path: out_config.clone(),
            source,
        })?;
    std::fs::write(&out_config, text + "\n").map_err(io(&out_config))?;
    for entry in std::fs::read_dir(base_dir).map_err(io(base_dir))? {
        let entry = entry.map_err(io(base_dir))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let src = entry.path();
        if is_weight_or_config(&name) || !src.is_file() {
            continue;
        }
        std::fs::copy(&src, out_dir.join(&name)).map_err(io(&src))?;
    }
    Ok(())
}

/// Folds `adapter` into the full-precision base checkpoint in `base_dir`
/// and writes a checkpoint to `out_dir` in the hub layout: one
/// `model.safetensors` with the legacy names (`language_model.model.…`,
/// `vision_tower.vision_model.…`, `multi_modal_projector.linear.…`, no tied
/// head) in `kind`, the base's `config.json` with its dtype set, and every
/// other file of the base (tokenizer, preprocessor, generation config)
/// copied. Each merged weight is `W + scaling·B·A` computed in f32 (f64 for
/// an f64 output) from the stored base weight, then rounded once to `kind`.
/// Tensors are streamed one at a time; nothing is written unless the
/// adapter fits the base.
pub fn write_merged_checkpoint(
    base_dir: &Path,
    adapter: &PeftAdapter,
    out_dir: &Path,
    kind: Kind,
) -> Result<MergeReport, PeftError> {
    let math = if kind == Kind::Double {
        Kind::Double
    } else {
        Kind::Float
    };
    let weights = Weights::open(base_dir, Device::Cpu, math)?;
    let root = weights.root();
    let mut entries = Vec::new();
    let mut report = MergeReport::default();
    for name in weights.names() {
        let shape = root.shape(&name)?;
        let numel: i64 = shape.iter().product();
        report.bytes += numel.unsigned_abs() * kind.elt_size_in_bytes() as u64;
        entries.push(TensorEntry { name, kind, shape });
    }
    let shape_of: BTreeMap<&str, &[i64]> = entries
        .iter()
        .map(|e| (e.name.as_str(), e.shape.as_slice()))
        .collect();
    check_fits(adapter, &shape_of)?;

    std::fs::create_dir_all(out_dir).map_err(|source| PeftError::Io {
        path: out_dir.to_path_buf(),
        source,
    })?;
    let (mut merged, mut replaced) = (0, 0);
    weights::write_safetensors(
        &out_dir.join(weights::SINGLE_FILE),
        &entries,
        &[("format", "pt")],
        |i| {
            let name = &entries[i].name;
            let tch_err = |source| WeightError::Tch {
                name: name.clone(),
                source,
            };
            if let Some(value) = adapter.saved.get(name) {
                replaced += 1;
                return value.f_to_kind(math).map_err(tch_err);
            }
            let base = root.get(name, &entries[i].shape)?;
            let module = name.strip_suffix(".weight").unwrap_or_default();
            let Some(pair) = adapter.lora.get(module) else {
                return Ok(base);
            };
            merged += 1;
            pair.b
                .f_to_kind(math)
                .and_then(|b| b.f_matmul(&pair.a.f_to_kind(math)?))
                .and_then(|d| d.f_mul_scalar(adapter.scaling(pair)))
                .and_then(|d| base.f_add(&d))
                .map_err(tch_err)
        },
    )?;
    report.tensors = entries.len();
    report.merged = merged;
    report.replaced = replaced;
    copy_checkpoint_files(base_dir, out_dir, kind)?;
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/golden/adapters")
            .join(name)
    }

    #[test]
    fn names_map_both_ways() {
        let cases = [
            (
                "language_model.model.layers.0.self_attn.q_proj",
                "model.language_model.layers.0.self_attn.q_proj",
            ),
            (
                "vision_tower.vision_model.encoder.layers.1.self_attn.v_proj",
                "model.vision_tower.encoder.layers.1.self_attn.v_proj",
            ),
            (
                "multi_modal_projector.linear.bias",
                "model.multi_modal_projector.linear.bias",
            ),
            ("multi_modal_projector", "model.multi_modal_projector"),
        ];
        for (internal, peft) in cases {
            assert_eq!(peft_name(internal), peft);
            assert_eq!(internal_module(peft).as_deref(), Some(internal));
        }
        // The <= 4.51 and 4.52 forms read back too.
        for old in [
            "language_model.model.layers.0.self_attn.q_proj",
            "vision_tower.vision_model.encoder.layers.1.self_attn.v_proj",
            "model.vision_tower.vision_model.encoder.layers.1.self_attn.v_proj",
        ] {
            let internal = internal_module(old).unwrap();
            assert!(
                internal.starts_with("language_model.model.")
                    || internal.starts_with("vision_tower.vision_model.")
            );
        }
    }

    #[test]
    fn reads_peft_fixtures_of_both_key_forms() {
        let default = PeftAdapter::read(&fixture("peft-default")).unwrap();
        let legacy = PeftAdapter::read(&fixture("peft-legacy-keys")).unwrap();
        // 2 LM layers × 7 + 2 SigLIP layers × q/k/v.
        assert_eq!(default.lora.len(), 20);
        assert!(default.saved.is_empty());
        assert_eq!(
            default.lora.keys().collect::<Vec<_>>(),
            legacy.lora.keys().collect::<Vec<_>>()
        );
        for (module, pair) in &default.lora {
            assert_eq!(pair.rank, LoraRank { r: 8, alpha: 16.0 });
            assert!(pair.a.equal(&legacy.lora[module].a));
        }
        let q = &default.lora["vision_tower.vision_model.encoder.layers.0.self_attn.q_proj"];
        assert_eq!(q.a.size(), [8, 32]);
        assert!((default.scaling(q) - 2.0).abs() < 1e-12);

        let projector = PeftAdapter::read(&fixture("peft-rslora-projector")).unwrap();
        assert_eq!(projector.lora.len(), 14);
        assert!(
            (projector.scaling(&projector.lora["language_model.model.layers.1.mlp.up_proj"]) - 4.0)
                .abs()
                < 1e-12
        );
        assert_eq!(
            projector.saved.keys().collect::<Vec<_>>(),
            [
                "multi_modal_projector.linear.bias",
                "multi_modal_projector.linear.weight"
            ]
        );
    }

    #[test]
    fn written_config_matches_peft_s_field_for_field() {
        use crate::model::adapt::lora::LoraConfig;
        let cases = [("peft-default", false), ("peft-rslora-projector", true)];
        for (name, projector) in cases {
            let peft_text = std::fs::read_to_string(fixture(name).join(ADAPTER_CONFIG)).unwrap();
            let peft: Value = serde_json::from_str(&peft_text).unwrap();
            let mut lora = LoraConfig::new(8, 16.0);
            let mut plan = AdaptPlan::lora(lora.clone());
            if projector {
                lora = LoraConfig {
                    r: 4,
                    alpha: 8.0,
                    rslora: true,
                    ..lora
                };
                plan = AdaptPlan {
                    freeze_vision: true,
                    modules_to_save: vec!["multi_modal_projector".into()],
                    ..AdaptPlan::lora(lora)
                };
            }
            let meta = AdapterMeta {
                base_model_name_or_path: Some("tests/golden/checkpoints/f32".into()),
                revision: None,
            };
            let ours = adapter_from_parts(&plan, &meta, [], []);
            let mut ours = Value::Object(ours.config.raw);
            let mut peft = peft;
            // PEFT writes target_modules in set order; compare as sets.
            for v in [&mut ours, &mut peft] {
                if let Some(Value::Array(list)) = v.get_mut("target_modules") {
                    list.sort_by_key(ToString::to_string);
                }
            }
            assert_eq!(ours, peft, "{name}");
        }
    }

    #[test]
    fn unsupported_and_broken_adapters_are_typed_errors() {
        let dir = tempfile::tempdir().unwrap();
        let err = PeftAdapter::read(dir.path()).unwrap_err();
        assert!(matches!(err, PeftError::NoAdapter { .. }), "{err}");
        let config = std::fs::read_to_string(fixture("peft-default").join(ADAPTER_CONFIG)).unwrap();
        std::fs::write(
            dir.path().join(ADAPTER_CONFIG),
            config.replace("\"use_dora\": false", "\"use_dora\": true"),
        )
        .unwrap();
        let err = PeftAdapter::read(dir.path()).unwrap_err();
        assert!(
            matches!(err, PeftError::Unsupported { .. }) && err.to_string().contains("use_dora"),
            "{err}"
        );
        std::fs::write(dir.path().join(ADAPTER_CONFIG), &config).unwrap();
        let err = PeftAdapter::read(dir.path()).unwrap_err();
        assert!(matches!(err, PeftError::Io { .. }), "{err}");
        // A lora_A without its lora_B.
        let bytes = std::fs::read(fixture("peft-default").join(ADAPTER_WEIGHTS)).unwrap();
        let file = SafeTensors::deserialize(&bytes).unwrap();
        let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = file
            .tensors()
            .into_iter()
            .filter(|(k, _)| {
                k != "base_model.model.model.language_model.layers.1.mlp.up_proj.lora_B.weight"
            })
            .collect();
        safetensors::serialize_to_file(views, None, &dir.path().join(ADAPTER_WEIGHTS)).unwrap();
        let err = PeftAdapter::read(dir.path()).unwrap_err();
        assert!(matches!(err, PeftError::Incomplete { .. }), "{err}");
        assert!(err.to_string().contains("layers.1.mlp.up_proj"), "{err}");
    }

    // -----------------------------------------------------------------------
    // The adapters applied to the golden model
    // -----------------------------------------------------------------------

    use crate::model::network::paligemma::test_util::{golden_dir, golden_train_batch};
    use crate::model::network::paligemma::{ModelError, PaliGemma};

    fn adapter_values() -> &'static Value {
        static VALUES: std::sync::OnceLock<Value> = std::sync::OnceLock::new();
        VALUES.get_or_init(|| {
            let text = std::fs::read_to_string(golden_dir().join("adapters/values.json")).unwrap();
            serde_json::from_str(&text).unwrap()
        })
    }

    fn base_dir() -> PathBuf {
        golden_dir().join("checkpoints/f32")
    }

    /// Max |logit − golden| over the golden rows, and |mean loss − golden|.
    fn diffs(model: &PaliGemma, golden: &Value) -> (f64, f64) {
        let input = golden_train_batch();
        let logits = tch::no_grad(|| model.forward(&input)).unwrap();
        let mut max_abs = 0f64;
        for row in golden["logits"].as_array().unwrap() {
            let (b, t) = (row["b"].as_i64().unwrap(), row["t"].as_i64().unwrap());
            let expected: Vec<f64> = row["values"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().unwrap())
                .collect();
            let ours = Vec::<f64>::try_from(logits.get(b).get(t).to_kind(Kind::Double)).unwrap();
            for (x, y) in ours.iter().zip(&expected) {
                max_abs = max_abs.max((x - y).abs());
            }
        }
        let out = tch::no_grad(|| model.loss(&input)).unwrap();
        assert_eq!(out.tokens, golden["loss_tokens"].as_i64().unwrap());
        let loss = out.mean().unwrap().double_value(&[]);
        (max_abs, (loss - golden["loss"].as_f64().unwrap()).abs())
    }

    #[test]
    fn peft_fixtures_match_peft_s_logits_and_loss() {
        let adapters = &adapter_values()["adapters"];
        for (dir, values) in [
            ("peft-default", "peft-default"),
            ("peft-rslora-projector", "peft-rslora-projector"),
            ("peft-legacy-keys", "peft-default"),
        ] {
            let model =
                PaliGemma::load_with_adapter(&base_dir(), &fixture(dir), Device::Cpu, Kind::Float)
                    .unwrap();
            let (logits, loss) = diffs(&model, &adapters[values]);
            eprintln!("{dir}: max |logit diff| {logits:e}, |loss diff| {loss:e}");
            assert!(logits < 1e-4 && loss < 1e-4, "{dir}: {logits:e} {loss:e}");
        }
    }

    #[test]
    fn merged_fixture_equals_peft_s_merge() {
        let adapters = &adapter_values()["adapters"];
        for name in ["peft-default", "peft-rslora-projector"] {
            let adapter = PeftAdapter::read(&fixture(name)).unwrap();
            let out = tempfile::tempdir().unwrap();
            let report =
                write_merged_checkpoint(&base_dir(), &adapter, out.path(), Kind::Float).unwrap();
            assert_eq!(report.merged, adapter.lora.len());
            assert_eq!(report.replaced, adapter.saved.len());
            for file in [
                "tokenizer.json",
                "preprocessor_config.json",
                "generation_config.json",
            ] {
                assert!(out.path().join(file).is_file(), "{file}");
            }
            let merged = PaliGemma::load(out.path(), Device::Cpu, Kind::Float).unwrap();
            // PEFT's merged logits differ from its unmerged ones by up to
            // 4.2e-5 (f32 rounding); compare with the unmerged values.
            let golden = json!({
                "logits": adapters[name]["logits"],
                "loss": adapters[name]["merged"]["loss"],
                "loss_tokens": adapters[name]["loss_tokens"],
            });
            let (logits, loss) = diffs(&merged, &golden);
            eprintln!("{name} merged: max |logit diff| {logits:e}, |loss diff| {loss:e}");
            assert!(logits < 1e-4 && loss < 1e-4, "{name}: {logits:e} {loss:e}");
        }
    }

    #[test]
    fn adapter_for_another_model_is_rejected() {
        // Rename a module to one the model lacks.
        let dir = tempfile::tempdir().unwrap();
        let mut adapter = PeftAdapter::read(&fixture("peft-default")).unwrap();
        let pair = adapter
            .lora
            .remove("language_model.model.layers.1.mlp.up_proj")
            .unwrap();
        adapter
            .lora
            .insert("language_model.model.layers.7.mlp.up_proj".into(), pair);
        adapter.save(dir.path()).unwrap();
        let err = PaliGemma::load_with_adapter(&base_dir(), dir.path(), Device::Cpu, Kind::Float)
            .unwrap_err();
        assert!(
            matches!(err, ModelError::Adapter(PeftError::UnknownModule { .. })),
            "{err}"
        );
        assert!(err.to_string().contains("layers.7.mlp.up_proj"), "{err}");
    }
}

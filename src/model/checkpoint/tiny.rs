//! The built-in tiny checkpoints: random weights with the structure of a
//! published PaliGemma 2 checkpoint, scaled down (`PaliGemmaConfig::tiny`),
//! written in Hugging Face layout with the hub's weight names, the tiny
//! tokenizer (the real special, `<locNNNN>` and `<segNNN>` tokens) and a
//! preprocessor config. The demo and the tests train these on CPU.

use std::path::{Path, PathBuf};

use tch::{Kind, Tensor};

use crate::rng::SplitMix64;

use crate::model::checkpoint::tensors::tensor_shapes;
use crate::model::config::PaliGemmaConfig;
use crate::variant::{Resolution, Size};

const TOKENIZER_JSON: &str = include_str!("../../../assets/tiny-tokenizer/tokenizer.json");
const TOKENIZER_CONFIG: &str = include_str!("../../../assets/tiny-tokenizer/tokenizer_config.json");
const SPECIAL_TOKENS_MAP: &str =
    include_str!("../../../assets/tiny-tokenizer/special_tokens_map.json");

/// Standard deviation of biases and norm weights (transformers'
/// `initializer_range`).
const INIT_STD: f64 = 0.02;

#[derive(Debug, thiserror::Error)]
pub enum TinyError {
    #[error("cannot write the tiny checkpoint to {}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot create the tiny weights: {0}")]
    Torch(#[from] tch::TchError),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> TinyError + '_ {
    move |source| TinyError::Io {
        path: path.to_owned(),
        source,
    }
}

/// The folder of a tiny checkpoint inside a cache folder.
pub fn cache_path(cache: &Path, size: Size, resolution: Resolution, seed: u64) -> PathBuf {
    cache
        .join("tiny")
        .join(format!("paligemma2-tiny-{size}-{resolution}-seed{seed}"))
}

/// The tiny checkpoint for (size, resolution), generated on first use.
/// Generation goes through a temporary folder and a rename, so concurrent
/// workers never see half a checkpoint.
pub fn ensure(cache: &Path, size: Size, resolution: Resolution) -> Result<PathBuf, TinyError> {
    let dir = cache_path(cache, size, resolution, 0);
    if dir.join("model.safetensors").is_file() {
        return Ok(dir);
    }
    let parent = dir.parent().unwrap_or(cache);
    std::fs::create_dir_all(parent).map_err(io(parent))?;
    let staging = parent.join(format!(
        ".staging-{}-{size}-{resolution}",
        std::process::id()
    ));
    write(&staging, size, resolution, 0)?;
    match std::fs::rename(&staging, &dir) {
        Ok(()) => Ok(dir),
        // Another process finished first: use theirs.
        Err(_) if dir.join("model.safetensors").is_file() => {
            let _ = std::fs::remove_dir_all(&staging);
            Ok(dir)
        }
        Err(e) => Err(io(&dir)(e)),
    }
}

/// Writes a tiny random checkpoint into `dir` (created if needed).
pub fn write(dir: &Path, size: Size, resolution: Resolution, seed: u64) -> Result<(), TinyError> {
    write_random(dir, &PaliGemmaConfig::tiny(size, resolution), seed)
}

/// Writes a random checkpoint of any architecture that uses the tiny
/// tokenizer's vocabulary (the tiny and small presets).
pub fn write_random(dir: &Path, config: &PaliGemmaConfig, seed: u64) -> Result<(), TinyError> {
    write_metadata(dir, config)?;
    let tensors = random_weights(config, seed)?;
    let path = dir.join("model.safetensors");
    Tensor::write_safetensors(&tensors, &path)?;
    Ok(())
}

/// Writes everything of a random checkpoint but its weights: `config.json`,
/// the tiny tokenizer and the preprocessor config (`dir` is created).
pub fn write_metadata(dir: &Path, config: &PaliGemmaConfig) -> Result<(), TinyError> {
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let mut config_json = serde_json::to_value(config).map_err(|e| io(dir)(e.into()))?;
    // Lets transformers' `AutoModel` load the tiny checkpoints too.
    config_json["architectures"] = serde_json::json!(["PaliGemmaForConditionalGeneration"]);
    // PaliGemma's SigLIP has no attention-pool head; transformers would
    // otherwise build one and report its weights missing.
    config_json["vision_config"]["vision_use_head"] = serde_json::json!(false);
    let config_json = serde_json::to_string_pretty(&config_json).map_err(|e| io(dir)(e.into()))?;
    let files = [
        ("config.json", config_json),
        ("tokenizer.json", TOKENIZER_JSON.to_owned()),
        ("tokenizer_config.json", TOKENIZER_CONFIG.to_owned()),
        ("special_tokens_map.json", SPECIAL_TOKENS_MAP.to_owned()),
        ("preprocessor_config.json", preprocessor_config(config)),
    ];
    for (name, text) in files {
        let path = dir.join(name);
        std::fs::write(&path, text).map_err(io(&path))?;
    }
    Ok(())
}

fn preprocessor_config(config: &PaliGemmaConfig) -> String {
    let side = config.vision_config.image_size;
    let json = serde_json::json!({
        "image_processor_type": "SiglipImageProcessor",
        "processor_class": "PaliGemmaProcessor",
        "do_resize": true,
        "size": { "height": side, "width": side },
        "resample": 3,
        "do_rescale": true,
        "rescale_factor": 0.003_921_568_627_450_98,
        "do_normalize": true,
        "image_mean": [0.5, 0.5, 0.5],
        "image_std": [0.5, 0.5, 0.5],
        "image_seq_length": config.num_image_tokens(),
    });
    serde_json::to_string_pretty(&json).unwrap_or_default()
}

/// Mean and standard deviation of a tensor's random values. Chosen so the
/// tiny model is not degenerate: fan-in scaled linears, token embeddings
/// and a final norm scale (≈ 3) large enough that the logits can become
/// confident — with transformers' 0.02 everywhere, the tied head's logits
/// stay near zero and training stalls at a loss of ~6.5.
pub(crate) fn init_for(name: &str, shape: &[i64]) -> (f64, f64) {
    let fan_in = shape.iter().skip(1).product::<i64>().max(1) as f64;
    let mut segments = name.rsplit('.');
    let leaf = segments.next().unwrap_or_default();
    let module = segments.next().unwrap_or_default();
    if name.ends_with("embed_tokens.weight") {
        (0.0, 0.1)
    } else if name.ends_with("position_embedding.weight") {
        (0.0, 0.5)
    } else if leaf == "bias" {
        (0.0, INIT_STD)
    } else if module.starts_with("layer_norm") || module == "post_layernorm" {
        (1.0, INIT_STD)
    } else if matches!(
        module,
        "post_attention_layernorm" | "post_feedforward_layernorm" | "norm"
    ) {
        // Gemma's RMSNorm scales by (1 + w).
        (2.0, INIT_STD)
    } else if module.ends_with("layernorm") {
        (0.0, INIT_STD)
    } else {
        (0.0, 1.0 / fan_in.sqrt())
    }
}

fn random_weights(config: &PaliGemmaConfig, seed: u64) -> Result<Vec<(String, Tensor)>, TinyError> {
    // Our own generator, one stream in a fixed tensor order: the same seed
    // gives the same bytes on every machine and libtorch version, and no
    // global torch RNG state is touched.
    let mut rng = SplitMix64::new(seed);
    // Every tensor with the hub's (legacy) names, in checkpoint order.
    tensor_shapes(config)
        .into_iter()
        .map(|(name, shape)| {
            let count: i64 = shape.iter().product();
            let (mean, std) = init_for(&name, &shape);
            let values: Vec<f32> = (0..count)
                .map(|_| (mean + std * rng.next_normal()) as f32)
                .collect();
            let tensor = Tensor::f_from_slice(&values)?
                .f_reshape(shape.as_slice())?
                .f_to_kind(Kind::Float)?;
            Ok((name, tensor))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_seed_writes_the_same_bytes_and_another_seed_does_not() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        let c = tempfile::tempdir().unwrap();
        write(a.path(), Size::B3, Resolution::R224, 0).unwrap();
        write(b.path(), Size::B3, Resolution::R224, 0).unwrap();
        write(c.path(), Size::B3, Resolution::R224, 1).unwrap();
        let bytes = |d: &Path| std::fs::read(d.join("model.safetensors")).unwrap();
        assert_eq!(bytes(a.path()), bytes(b.path()));
        assert_ne!(bytes(a.path()), bytes(c.path()));
    }

    #[test]
    fn every_tensor_matches_the_parameter_count_of_the_config() {
        for size in Size::ALL {
            for resolution in Resolution::ALL {
                let config = PaliGemmaConfig::tiny(size, resolution);
                let total: i64 = tensor_shapes(&config)
                    .iter()
                    .map(|(_, shape)| shape.iter().product::<i64>())
                    .sum();
                assert_eq!(
                    total as u64,
                    config.param_counts().total,
                    "{size}@{resolution}"
                );
            }
        }
    }

    #[test]
    fn ensure_generates_once() {
        let cache = tempfile::tempdir().unwrap();
        let first = ensure(cache.path(), Size::B10, Resolution::R448).unwrap();
        let stamp = std::fs::metadata(first.join("model.safetensors"))
            .unwrap()
            .modified()
            .unwrap();
        let again = ensure(cache.path(), Size::B10, Resolution::R448).unwrap();
        assert_eq!(first, again);
        assert_eq!(
            stamp,
            std::fs::metadata(again.join("model.safetensors"))
                .unwrap()
                .modified()
                .unwrap()
        );
        let config = PaliGemmaConfig::from_json_file(first.join("config.json")).unwrap();
        assert_eq!(config, PaliGemmaConfig::tiny(Size::B10, Resolution::R448));
        // What transformers needs to build the same model from the folder.
        let raw: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(first.join("config.json")).unwrap())
                .unwrap();
        assert_eq!(raw["vision_config"]["vision_use_head"], false);
        assert_eq!(raw["architectures"][0], "PaliGemmaForConditionalGeneration");
    }
}

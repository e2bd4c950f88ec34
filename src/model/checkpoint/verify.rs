//! Checking a checkpoint folder without loading it: `config.json` parses
//! and is consistent, every safetensors header parses and its file is as
//! long as the header says, and every tensor the config implies is stored
//! with its shape and a floating dtype, and nothing else is. Reads headers
//! only, so a sweep can check its checkpoints once, in seconds, before any
//! trial starts.

use std::path::{Path, PathBuf};

use tch::{Device, Kind};

use crate::model::config::{ConfigError, PaliGemmaConfig};

use super::tensors::tensor_shapes;
use super::weights::{WeightError, Weights};

/// A checkpoint folder that would fail to load.
#[derive(Debug, thiserror::Error)]
#[error(
    "the checkpoint at {} cannot be loaded: {problem}\n  \
     help: a checkpoint folder holds config.json, tokenizer.json and model.safetensors \
     (or model.safetensors.index.json and its shards) as transformers' save_pretrained writes them; \
     copy or download it again",
    dir.display()
)]
pub struct CheckpointError {
    pub dir: PathBuf,
    pub problem: Problem,
}

/// What is wrong with it.
#[derive(Debug, thiserror::Error)]
pub enum Problem {
    #[error("it is not a folder")]
    NotAFolder,
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Weights(#[from] WeightError),
}

/// Checks `dir` as [`crate::model::network::paligemma::PaliGemma::load`]
/// would find it, without reading tensor data; returns its config.
pub fn verify(dir: &Path) -> Result<PaliGemmaConfig, CheckpointError> {
    let failed = |problem: Problem| CheckpointError {
        dir: dir.to_owned(),
        problem,
    };
    if !dir.is_dir() {
        return Err(failed(Problem::NotAFolder));
    }
    let config =
        PaliGemmaConfig::from_json_file(dir.join("config.json")).map_err(|e| failed(e.into()))?;
    check_weights(dir, &config).map_err(|e| failed(e.into()))?;
    Ok(config)
}

fn check_weights(dir: &Path, config: &PaliGemmaConfig) -> Result<(), WeightError> {
    // Opening maps the files and validates each header against its file's
    // length; nothing is read beyond the headers.
    let weights = Weights::open(dir, Device::Cpu, Kind::Float)?;
    let root = weights.root();
    for (name, mut shape) in tensor_shapes(config) {
        // The vocabulary is the embedding's row count, not the config's
        // (as the model loads it).
        if name.ends_with("embed_tokens.weight")
            && let Ok(stored) = root.shape(&name)
            && let [rows, _] = stored.as_slice()
        {
            shape[0] = *rows;
        }
        weights.check(&name, &shape)?;
    }
    weights.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn golden(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/golden/checkpoints")
            .join(name)
    }

    /// A copy of the golden f32 checkpoint to break.
    fn copy() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for entry in std::fs::read_dir(golden("f32")).unwrap() {
            let entry = entry.unwrap();
            std::fs::copy(entry.path(), dir.path().join(entry.file_name())).unwrap();
        }
        dir
    }

    #[test]
    fn every_golden_checkpoint_and_a_tiny_one_pass() {
        for name in ["f32", "bf16", "legacy", "sharded"] {
            verify(&golden(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
        }
        let cache = tempfile::tempdir().unwrap();
        let tiny = super::super::tiny::ensure(
            cache.path(),
            crate::variant::Size::B10,
            crate::variant::Resolution::R448,
        )
        .unwrap();
        verify(&tiny).unwrap();
    }

    #[test]
    fn each_broken_checkpoint_names_its_folder_and_what_is_wrong() {
        let err = |dir: &Path| verify(dir).unwrap_err().to_string();

        let missing = tempfile::tempdir().unwrap();
        let text = err(&missing.path().join("nowhere"));
        assert!(
            text.contains("nowhere") && text.contains("not a folder"),
            "{text}"
        );

        let dir = copy();
        std::fs::remove_file(dir.path().join("config.json")).unwrap();
        let text = err(dir.path());
        assert!(text.contains("config.json"), "{text}");

        let dir = copy();
        let file = dir.path().join("model.safetensors");
        let bytes = std::fs::read(&file).unwrap();
        std::fs::write(&file, &bytes[..bytes.len() - 10]).unwrap();
        let text = err(dir.path());
        assert!(
            text.contains("truncated") && text.contains("model.safetensors"),
            "{text}"
        );

        // A config whose layers are wider than the stored tensors.
        let dir = copy();
        let config = dir.path().join("config.json");
        let mut json: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&config).unwrap()).unwrap();
        let width = json["text_config"]["intermediate_size"].as_u64().unwrap();
        json["text_config"]["intermediate_size"] = (width * 2).into();
        std::fs::write(&config, json.to_string()).unwrap();
        let text = err(dir.path());
        assert!(text.contains("has shape") && text.contains("mlp"), "{text}");

        // Attention biases the files do not have.
        let dir = copy();
        let config = dir.path().join("config.json");
        let mut json: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&config).unwrap()).unwrap();
        json["text_config"]["attention_bias"] = true.into();
        std::fs::write(&config, json.to_string()).unwrap();
        let text = err(dir.path());
        assert!(text.contains("q_proj.bias` is missing"), "{text}");
    }
}

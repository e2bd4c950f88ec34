//! Random checkpoints to benchmark on, written once into a cache folder.
//!
//! `tiny` and `small` go through [`tiny::write_random`]. `published` is the
//! real-size architecture, too large for that writer's one-thread generator
//! and f32 files (a 3B model would take minutes and 12 GB): its values come
//! from torch's seeded generator on the fastest device at hand, and are
//! stored in bf16, one tensor at a time. The resolutions of one size differ
//! only in the vision position table, so the rest (the body) is written once
//! per size and hard-linked into each resolution's folder as the first shard
//! of a two-shard checkpoint.

use std::path::{Path, PathBuf};

use tch::{Device, Kind, Tensor};

use crate::model::checkpoint::tensors::tensor_shapes;
use crate::model::checkpoint::tiny::{self, TinyError, init_for};
use crate::model::checkpoint::weights::{
    INDEX_FILE, SINGLE_FILE, TensorEntry, WeightError, write_safetensors,
};
use crate::model::config::{PaliGemmaConfig, Preset};
use crate::variant::{Resolution, Size};

/// The vision position table, the one tensor whose shape follows the
/// resolution.
const POSITION_TABLE: &str = "vision_tower.vision_model.embeddings.position_embedding.weight";
const BODY_SHARD: &str = "model-00001-of-00002.safetensors";
const POSITION_SHARD: &str = "model-00002-of-00002.safetensors";

#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error(transparent)]
    Tiny(#[from] TinyError),
    #[error(transparent)]
    Weights(#[from] WeightError),
    #[error(transparent)]
    Torch(#[from] tch::TchError),
    #[error("cannot write the benchmark checkpoint {}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> CheckpointError + '_ {
    move |source| CheckpointError::Io {
        path: path.to_owned(),
        source,
    }
}

/// The folder of `preset` at (size, resolution) under `cache`, written on
/// first use (through a staging folder and a rename, so a half-written
/// checkpoint is never picked up).
pub fn ensure(
    cache: &Path,
    preset: Preset,
    size: Size,
    resolution: Resolution,
    seed: u64,
) -> Result<PathBuf, CheckpointError> {
    let root = cache.join("bench");
    let dir = root.join(format!(
        "{}-{size}-{resolution}-seed{seed}",
        preset.as_str()
    ));
    let done = |d: &Path| d.join(SINGLE_FILE).is_file() || d.join(INDEX_FILE).is_file();
    if done(&dir) {
        return Ok(dir);
    }
    std::fs::create_dir_all(&root).map_err(io(&root))?;
    let staging = root.join(format!(
        ".staging-{}-{}-{size}-{resolution}",
        std::process::id(),
        preset.as_str()
    ));
    let config = preset.config(size, resolution);
    match preset {
        Preset::Tiny | Preset::Small => tiny::write_random(&staging, &config, seed)?,
        Preset::Published => {
            let body = ensure_body(&root, size, seed)?;
            write_published(&staging, &config, &body, seed)?;
        }
    }
    match std::fs::rename(&staging, &dir) {
        Ok(()) => Ok(dir),
        Err(_) if done(&dir) => {
            let _ = std::fs::remove_dir_all(&staging);
            Ok(dir)
        }
        Err(e) => Err(io(&dir)(e)),
    }
}

/// Where torch generates the random values: the first GPU when there is one.
fn generator_device() -> Device {
    Device::cuda_if_available()
}

/// One random tensor with [`init_for`]'s mean and spread, from torch's
/// generator (seeded once per file by the caller), in bf16 on the CPU.
fn random_tensor(name: &str, shape: &[i64], device: Device) -> Result<Tensor, tch::TchError> {
    let (mean, std) = init_for(name, shape);
    // In place: the f32 embedding table alone is 2.4 GB at 3B.
    let mut values = Tensor::f_randn(shape, (Kind::Float, device))?;
    let _ = values.f_mul_scalar_(std)?.f_add_scalar_(mean)?;
    values.f_to_kind(Kind::BFloat16)?.f_to_device(Device::Cpu)
}

/// Seeds torch's generator for one file: `seed` and a salt per file.
fn seed_torch(seed: u64, salt: u64) {
    let mixed = crate::rng::SplitMix64::new(seed ^ salt).next_u64() >> 1;
    tch::manual_seed(mixed.cast_signed());
    if let Device::Cuda(_) = generator_device() {
        tch::Cuda::manual_seed_all(mixed);
    }
}

/// The body shard of `size` (every tensor but the position table), shared
/// by the three resolutions.
fn ensure_body(root: &Path, size: Size, seed: u64) -> Result<PathBuf, CheckpointError> {
    let path = root.join(format!("published-{size}-body-seed{seed}.safetensors"));
    if path.is_file() {
        return Ok(path);
    }
    let staging = root.join(format!(".staging-body-{}-{size}", std::process::id()));
    write_body(
        &staging,
        &PaliGemmaConfig::published(size, Resolution::R224),
        seed,
    )?;
    std::fs::rename(&staging, &path).map_err(io(&path))?;
    Ok(path)
}

/// Writes every tensor of `config` but the position table to `path`, in
/// bf16, generating one tensor at a time.
fn write_body(path: &Path, config: &PaliGemmaConfig, seed: u64) -> Result<(), CheckpointError> {
    let entries: Vec<(String, Vec<i64>)> = tensor_shapes(config)
        .into_iter()
        .filter(|(name, _)| name != POSITION_TABLE)
        .collect();
    let device = generator_device();
    seed_torch(seed, 0xB0D1);
    write_safetensors(
        path,
        &entries
            .iter()
            .map(|(name, shape)| TensorEntry {
                name: name.clone(),
                kind: Kind::BFloat16,
                shape: shape.clone(),
            })
            .collect::<Vec<_>>(),
        &[("format", "pt")],
        |i| {
            let (name, shape) = &entries[i];
            random_tensor(name, shape, device).map_err(|source| WeightError::Tch {
                name: name.clone(),
                source,
            })
        },
    )?;
    Ok(())
}

/// A two-shard checkpoint in `dir`: the shared body (hard-linked, or copied
/// across file systems) and this resolution's position table.
fn write_published(
    dir: &Path,
    config: &PaliGemmaConfig,
    body: &Path,
    seed: u64,
) -> Result<(), CheckpointError> {
    tiny::write_metadata(dir, config)?;
    let body_link = dir.join(BODY_SHARD);
    if std::fs::hard_link(body, &body_link).is_err() {
        std::fs::copy(body, &body_link).map_err(io(&body_link))?;
    }
    let shapes = tensor_shapes(config);
    let (_, position_shape) = shapes
        .iter()
        .find(|(name, _)| name == POSITION_TABLE)
        .expect("every config has a position table");
    seed_torch(seed, u64::from(config.vision_config.image_size));
    let table = random_tensor(POSITION_TABLE, position_shape, generator_device())?;
    Tensor::write_safetensors(&[(POSITION_TABLE, table)], dir.join(POSITION_SHARD))?;
    let weight_map: serde_json::Map<String, serde_json::Value> = shapes
        .iter()
        .map(|(name, _)| {
            let shard = if name == POSITION_TABLE {
                POSITION_SHARD
            } else {
                BODY_SHARD
            };
            (name.clone(), serde_json::Value::from(shard))
        })
        .collect();
    let index = serde_json::json!({ "metadata": {}, "weight_map": weight_map });
    let path = dir.join(INDEX_FILE);
    std::fs::write(&path, index.to_string()).map_err(io(&path))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::config::TINY_IMAGE_TOKEN_INDEX;
    use crate::model::network::paligemma::PaliGemma;

    #[test]
    fn published_config_uses_the_tiny_tokenizers_image_token() {
        let config = Preset::Published.config(Size::B3, Resolution::R448);
        assert_eq!(config.image_token_index, TINY_IMAGE_TOKEN_INDEX);
        assert_eq!(
            config.text_config.vocab_size,
            PaliGemmaConfig::published(Size::B3, Resolution::R448)
                .text_config
                .vocab_size
        );
        config.validate().unwrap();
    }

    #[test]
    fn a_preset_is_written_once_and_loads() {
        let cache = tempfile::tempdir().unwrap();
        let dir = ensure(cache.path(), Preset::Tiny, Size::B3, Resolution::R224, 0).unwrap();
        let written = |d: &std::path::Path| {
            std::fs::metadata(d.join(SINGLE_FILE))
                .and_then(|m| m.modified())
                .unwrap()
        };
        let first = written(&dir);
        let again = ensure(cache.path(), Preset::Tiny, Size::B3, Resolution::R224, 0).unwrap();
        assert_eq!(dir, again);
        assert_eq!(
            written(&again),
            first,
            "the second call rewrote the checkpoint"
        );
        PaliGemma::load(&dir, Device::Cpu, Kind::Float).unwrap();
    }

    /// The sharded writer on a tiny architecture (the real one is 6 GB):
    /// two resolutions share one body file, both load, and the same seed
    /// writes the same body.
    #[test]
    fn sharded_checkpoints_share_the_body_and_load() {
        let cache = tempfile::tempdir().unwrap();
        let root = cache.path().join("bench");
        std::fs::create_dir_all(&root).unwrap();
        let body = root.join("body.safetensors");
        write_body(&body, &PaliGemmaConfig::tiny(Size::B3, Resolution::R224), 0).unwrap();
        let again = root.join("again.safetensors");
        write_body(
            &again,
            &PaliGemmaConfig::tiny(Size::B3, Resolution::R224),
            0,
        )
        .unwrap();
        assert_eq!(
            std::fs::read(&body).unwrap(),
            std::fs::read(&again).unwrap()
        );
        for resolution in [Resolution::R224, Resolution::R448] {
            let dir = root.join(resolution.to_string());
            let config = PaliGemmaConfig::tiny(Size::B3, resolution);
            write_published(&dir, &config, &body, 0).unwrap();
            let model = PaliGemma::load(&dir, Device::Cpu, Kind::Float).unwrap();
            assert_eq!(model.config(), &config);
            // The body is the one file, linked, not a copy.
            let inode = |p: &std::path::Path| {
                std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(p).unwrap())
            };
            assert_eq!(inode(&dir.join(BODY_SHARD)), inode(&body));
        }
    }
}

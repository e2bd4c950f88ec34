//! Memory-mapped safetensors checkpoints in Hugging Face layout, and the
//! candle-`VarBuilder`-like [`WeightPath`] the model layers load through.
//!
//! A checkpoint folder holds either `model.safetensors` or
//! `model.safetensors.index.json` + the `model-*.safetensors` shards it names.
//! Files are memory-mapped; a tensor is copied out of the mapping only when a
//! layer asks for it, converted to the compute dtype and moved to the target
//! device one tensor at a time, so the process never holds two full copies
//! of the weights.
//!
//! Two name conventions are accepted and normalised to one internal naming,
//! the hub's legacy on-disk names (docs/model-reference.md §5):
//! * legacy: `language_model.model.*`, `multi_modal_projector.linear.*`,
//!   `vision_tower.vision_model.*`, optional `language_model.lm_head.weight`;
//! * transformers 5 `save_pretrained`: vision keys as `vision_tower.*` without
//!   `vision_model.`, and the in-memory `model.language_model.*`,
//!   `model.vision_tower.*`, `model.multi_modal_projector.*`, `lm_head.weight`.
//!
//! The `lm_head` is tied to the token embedding, so a stored head is ignored.
//! Every name a layer loads is recorded; [`Weights::finish`] then fails on
//! any tensor of the files that no layer used.

use std::cell::RefCell;
use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::fs::File;
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use safetensors::SafeTensors;
use safetensors::tensor::{Dtype, Metadata, SafeTensorError, TensorInfo};
use tch::{Device, Kind, TchError, Tensor};

/// Single-file checkpoint name.
pub const SINGLE_FILE: &str = "model.safetensors";
/// Index of a sharded checkpoint.
pub const INDEX_FILE: &str = "model.safetensors.index.json";

/// Why weights could not be read or did not fit the model.
#[derive(Debug, thiserror::Error)]
pub enum WeightError {
    #[error(
        "no weights in {}: expected `{SINGLE_FILE}` or `{INDEX_FILE}` with its shards",
        dir.display()
    )]
    NoCheckpoint { dir: PathBuf },
    #[error("cannot read {}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// Bad header, offsets past the end of the file, a truncated file, ...
    #[error("corrupt or truncated safetensors file {}: {source}", path.display())]
    Corrupt {
        path: PathBuf,
        source: SafeTensorError,
    },
    #[error("invalid shard index {}: {reason}", path.display())]
    Index { path: PathBuf, reason: String },
    #[error("tensor `{name}` is missing (searched {})", DisplayPaths(files))]
    Missing { name: String, files: Vec<PathBuf> },
    #[error("tensor `{name}` has shape {found:?}, expected {expected:?} (in {})", file.display())]
    Shape {
        name: String,
        expected: Vec<i64>,
        found: Vec<i64>,
        file: PathBuf,
    },
    #[error("tensor `{name}` has dtype {dtype} in {}: only floating-point weights are supported", file.display())]
    Dtype {
        name: String,
        dtype: String,
        file: PathBuf,
    },
    #[error("tensors `{first}` and `{second}` are both stored as `{name}`")]
    Duplicate {
        name: String,
        first: String,
        second: String,
    },
    #[error("{} tensor(s) in {} are not used by the model: {}", names.len(), dir.display(), names.join(", "))]
    Unused { dir: PathBuf, names: Vec<String> },
    #[error("cannot create tensor `{name}`: {source}")]
    Tch { name: String, source: TchError },
    /// Quantising a weight to NF4 while loading failed (not the file's fault).
    #[error("cannot quantise `{name}` to NF4: {source}")]
    Quantize {
        name: String,
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

impl WeightError {
    /// Checkpoint files that are missing, corrupt or do not fit are bad
    /// input; a failure to quantise them is not.
    pub fn is_bad_input(&self) -> bool {
        !matches!(self, WeightError::Quantize { .. })
    }
}

/// Formats a list of paths as `a, b, c`.
struct DisplayPaths<'a>(&'a [PathBuf]);

impl fmt::Display for DisplayPaths<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, path) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{}", path.display())?;
        }
        Ok(())
    }
}

/// What a stored key means to the model.
#[derive(Debug, PartialEq, Eq)]
enum KeyRole {
    /// A weight under its internal (legacy) name.
    Tensor(String),
    /// The tied `lm_head`, which is never loaded.
    TiedHead,
}

/// The internal name of a stored key or module path of either convention
/// (`None` for the tied head).
pub fn internal_name(key: &str) -> Option<String> {
    match normalise_key(key) {
        KeyRole::Tensor(name) => Some(name),
        KeyRole::TiedHead => None,
    }
}

/// Maps a stored key of either convention to the internal naming.
fn normalise_key(key: &str) -> KeyRole {
    const VISION: &str = "vision_tower.vision_model.";
    const LM: &str = "language_model.model.";
    if matches!(
        key,
        "lm_head.weight" | "language_model.lm_head.weight" | "model.lm_head.weight"
    ) {
        return KeyRole::TiedHead;
    }
    // transformers >= 4.52 in-memory names put everything under `model.`.
    let key = key.strip_prefix("model.").unwrap_or(key);
    if key.starts_with(VISION) || key.starts_with(LM) {
        return KeyRole::Tensor(key.to_owned());
    }
    if let Some(rest) = key.strip_prefix("vision_tower.") {
        return KeyRole::Tensor(format!("{VISION}{rest}"));
    }
    if let Some(rest) = key.strip_prefix("language_model.") {
        return KeyRole::Tensor(format!("{LM}{rest}"));
    }
    KeyRole::Tensor(key.to_owned())
}

/// One memory-mapped safetensors file.
struct Shard {
    path: PathBuf,
    mmap: Mmap,
    /// Byte offset of the data section (8 + header length).
    data_start: usize,
    metadata: Metadata,
}

impl Shard {
    fn open(path: PathBuf) -> Result<Self, WeightError> {
        let file = File::open(&path).map_err(|source| WeightError::Io {
            path: path.clone(),
            source,
        })?;
        // SAFETY: the mapping is read-only and private to this process; the
        // checkpoint files are not modified while a model is being loaded
        // (the same contract as candle's and safetensors' mmap loaders). Every
        // access goes through bounds checked slices of the validated header.
        #[allow(unsafe_code)]
        let mmap = unsafe { Mmap::map(&file) }.map_err(|source| WeightError::Io {
            path: path.clone(),
            source,
        })?;
        // Validates the header, every tensor's offsets against its shape and
        // dtype, and that the data section ends exactly at the end of the file.
        let (header_len, metadata) =
            SafeTensors::read_metadata(&mmap).map_err(|source| WeightError::Corrupt {
                path: path.clone(),
                source,
            })?;
        Ok(Self {
            path,
            mmap,
            data_start: 8 + header_len,
            metadata,
        })
    }
}

/// Where an internal name is stored.
#[derive(Clone, Debug)]
struct Entry {
    shard: usize,
    key: String,
}

/// An opened checkpoint: memory maps and the name index, plus the compute
/// dtype and device every tensor is loaded to.
pub struct Weights {
    dir: PathBuf,
    shards: Vec<Shard>,
    entries: HashMap<String, Entry>,
    device: Device,
    kind: Kind,
    used: RefCell<BTreeSet<String>>,
}

impl fmt::Debug for Weights {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Weights")
            .field("dir", &self.dir)
            .field("files", &self.files())
            .field("tensors", &self.entries.len())
            .field("device", &self.device)
            .field("kind", &self.kind)
            .finish_non_exhaustive()
    }
}

#[derive(serde::Deserialize)]
struct ShardIndex {
    weight_map: HashMap<String, String>,
}

impl Weights {
    /// Opens `dir/model.safetensors`, or the shards named by
    /// `dir/model.safetensors.index.json`, loading tensors as `kind` on
    /// `device`.
    pub fn open(dir: &Path, device: Device, kind: Kind) -> Result<Self, WeightError> {
        let single = dir.join(SINGLE_FILE);
        let index = dir.join(INDEX_FILE);
        let mut shards = Vec::new();
        // Stored key -> shard, when an index decides it.
        let mut assigned: Option<HashMap<String, usize>> = None;
        if single.is_file() {
            shards.push(Shard::open(single)?);
        } else if index.is_file() {
            let text = std::fs::read_to_string(&index).map_err(|source| WeightError::Io {
                path: index.clone(),
                source,
            })?;
            let parsed: ShardIndex =
                serde_json::from_str(&text).map_err(|e| WeightError::Index {
                    path: index.clone(),
                    reason: e.to_string(),
                })?;
            let mut files: Vec<&String> = parsed.weight_map.values().collect();
            files.sort();
            files.dedup();
            let mut shard_of_file = HashMap::new();
            for file in files {
                if file.contains('/') || file.contains('\\') || file == ".." {
                    return Err(WeightError::Index {
                        path: index.clone(),
                        reason: format!("shard name `{file}` is not a file in the folder"),
                    });
                }
                shard_of_file.insert(file.clone(), shards.len());
                shards.push(Shard::open(dir.join(file))?);
            }
            let mut map = HashMap::new();
            for (key, file) in &parsed.weight_map {
                let shard = shard_of_file[file];
                if shards[shard].metadata.info(key).is_none() {
                    return Err(WeightError::Missing {
                        name: key.clone(),
                        files: vec![shards[shard].path.clone()],
                    });
                }
                map.insert(key.clone(), shard);
            }
            assigned = Some(map);
        } else {
            return Err(WeightError::NoCheckpoint {
                dir: dir.to_path_buf(),
            });
        }

        let mut entries: HashMap<String, Entry> = HashMap::new();
        for (shard_idx, shard) in shards.iter().enumerate() {
            let mut keys = shard.metadata.offset_keys();
            keys.sort();
            for key in keys {
                // The index decides which shard holds a key it lists.
                if let Some(map) = &assigned
                    && map.get(&key).is_some_and(|&s| s != shard_idx)
                {
                    continue;
                }
                let KeyRole::Tensor(name) = normalise_key(&key) else {
                    continue;
                };
                let entry = Entry {
                    shard: shard_idx,
                    key,
                };
                if let Some(previous) = entries.get(&name) {
                    return Err(WeightError::Duplicate {
                        name,
                        first: previous.key.clone(),
                        second: entry.key,
                    });
                }
                entries.insert(name, entry);
            }
        }
        Ok(Self {
            dir: dir.to_path_buf(),
            shards,
            entries,
            device,
            kind,
            used: RefCell::new(BTreeSet::new()),
        })
    }

    /// The root path (empty prefix).
    pub fn root(&self) -> WeightPath<'_> {
        WeightPath {
            weights: self,
            prefix: String::new(),
        }
    }

    pub fn device(&self) -> Device {
        self.device
    }

    /// The compute dtype tensors are converted to.
    pub fn kind(&self) -> Kind {
        self.kind
    }

    /// The files of the checkpoint.
    pub fn files(&self) -> Vec<PathBuf> {
        self.shards.iter().map(|s| s.path.clone()).collect()
    }

    /// Internal names of every stored tensor (tied heads excluded), sorted.
    pub fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.entries.keys().cloned().collect();
        names.sort();
        names
    }

    /// Fails if any stored tensor was not loaded by the model.
    pub fn finish(&self) -> Result<(), WeightError> {
        let used = self.used.borrow();
        let unused: Vec<String> = self
            .names()
            .into_iter()
            .filter(|name| !used.contains(name))
            .map(|name| {
                let key = &self.entries[&name].key;
                if *key == name {
                    name
                } else {
                    format!("{key} (as {name})")
                }
            })
            .collect();
        if unused.is_empty() {
            Ok(())
        } else {
            Err(WeightError::Unused {
                dir: self.dir.clone(),
                names: unused,
            })
        }
    }

    fn entry(&self, name: &str) -> Result<(&Shard, &Entry), WeightError> {
        let entry = self.entries.get(name).ok_or_else(|| WeightError::Missing {
            name: name.to_owned(),
            files: self.files(),
        })?;
        Ok((&self.shards[entry.shard], entry))
    }

    fn shape(&self, name: &str) -> Result<Vec<i64>, WeightError> {
        let (shard, entry) = self.entry(name)?;
        let info = shard
            .metadata
            .info(&entry.key)
            .ok_or_else(|| WeightError::Missing {
                name: name.to_owned(),
                files: vec![shard.path.clone()],
            })?;
        Ok(dims(&info.shape))
    }

    /// Checks that `name` is stored with shape `expected` and a floating
    /// dtype, reading no tensor data, and counts it as used (for
    /// [`Weights::finish`]): a checkpoint checked name by name this way
    /// loads, as far as its files go.
    pub fn check(&self, name: &str, expected: &[i64]) -> Result<(), WeightError> {
        self.stored(name, expected)?;
        self.used.borrow_mut().insert(name.to_owned());
        Ok(())
    }

    /// Where `name` is stored and as what, after checking its shape and
    /// dtype.
    fn stored(
        &self,
        name: &str,
        expected: &[i64],
    ) -> Result<(&Shard, &Entry, &TensorInfo, Kind), WeightError> {
        let (shard, entry) = self.entry(name)?;
        let info = shard
            .metadata
            .info(&entry.key)
            .ok_or_else(|| WeightError::Missing {
                name: name.to_owned(),
                files: vec![shard.path.clone()],
            })?;
        let found = dims(&info.shape);
        if found != expected {
            return Err(WeightError::Shape {
                name: name.to_owned(),
                expected: expected.to_vec(),
                found,
                file: shard.path.clone(),
            });
        }
        let stored = match info.dtype {
            Dtype::BF16 => Kind::BFloat16,
            Dtype::F16 => Kind::Half,
            Dtype::F32 => Kind::Float,
            Dtype::F64 => Kind::Double,
            other => {
                return Err(WeightError::Dtype {
                    name: name.to_owned(),
                    dtype: format!("{other:?}"),
                    file: shard.path.clone(),
                });
            }
        };
        Ok((shard, entry, info, stored))
    }

    fn load(&self, name: &str, expected: &[i64]) -> Result<Tensor, WeightError> {
        let (shard, entry, info, stored) = self.stored(name, expected)?;
        let (start, end) = info.data_offsets;
        // `read_metadata` checked that every tensor lies inside the file.
        let bytes = shard
            .mmap
            .get(shard.data_start + start..shard.data_start + end)
            .ok_or_else(|| WeightError::Corrupt {
                path: shard.path.clone(),
                source: SafeTensorError::InvalidOffset(entry.key.clone()),
            })?;
        let tch_err = |source| WeightError::Tch {
            name: name.to_owned(),
            source,
        };
        // One copy out of the mapping, then convert where it is cheaper:
        // narrow the dtype before a transfer, widen it after.
        let tensor = Tensor::f_from_data_size(bytes, expected, stored).map_err(tch_err)?;
        let tensor = if self.kind.elt_size_in_bytes() < stored.elt_size_in_bytes() {
            tensor
                .f_to_kind(self.kind)
                .and_then(|t| t.f_to_device(self.device))
        } else {
            tensor
                .f_to_device(self.device)
                .and_then(|t| t.f_to_kind(self.kind))
        }
        .map_err(tch_err)?;
        self.used.borrow_mut().insert(name.to_owned());
        Ok(tensor)
    }
}

/// A stored shape as tch dims; a dim past `i64::MAX` (only possible next to
/// a 0 dim) becomes −1, which no expected shape matches.
fn dims(shape: &[usize]) -> Vec<i64> {
    shape
        .iter()
        .map(|&d| i64::try_from(d).unwrap_or(-1))
        .collect()
}

/// A position in the weight tree, like candle's `VarBuilder` or tch's
/// `nn::Path`: `pp` descends one dotted segment, `get` loads a tensor.
#[derive(Clone)]
pub struct WeightPath<'a> {
    weights: &'a Weights,
    prefix: String,
}

impl fmt::Debug for WeightPath<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "WeightPath({:?})", self.prefix)
    }
}

impl<'a> WeightPath<'a> {
    /// The path one segment further down (`layers` then `0`, ...).
    #[must_use]
    pub fn pp(&self, segment: impl fmt::Display) -> WeightPath<'a> {
        WeightPath {
            weights: self.weights,
            prefix: self.name(&segment.to_string()),
        }
    }

    /// The full internal name of this path (the module name).
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The full internal name of `name` under this path.
    pub fn name(&self, name: &str) -> String {
        if self.prefix.is_empty() {
            name.to_owned()
        } else {
            format!("{}.{name}", self.prefix)
        }
    }

    /// Loads `name` under this path, checking its shape, as the compute
    /// dtype on the target device.
    pub fn get(&self, name: &str, expected_shape: &[i64]) -> Result<Tensor, WeightError> {
        self.weights.load(&self.name(name), expected_shape)
    }

    /// The stored shape of `name`, for sizes the config does not fix (the
    /// vocabulary).
    pub fn shape(&self, name: &str) -> Result<Vec<i64>, WeightError> {
        self.weights.shape(&self.name(name))
    }

    pub fn contains(&self, name: &str) -> bool {
        self.weights.entries.contains_key(&self.name(name))
    }

    pub fn device(&self) -> Device {
        self.weights.device
    }

    pub fn kind(&self) -> Kind {
        self.weights.kind
    }
}

/// The safetensors dtype name of a floating-point kind.
fn safetensors_dtype(kind: Kind) -> Option<&'static str> {
    match kind {
        Kind::BFloat16 => Some("BF16"),
        Kind::Half => Some("F16"),
        Kind::Float => Some("F32"),
        Kind::Double => Some("F64"),
        _ => None,
    }
}

/// One tensor of a file written by [`write_safetensors`].
#[derive(Clone, Debug)]
pub struct TensorEntry {
    pub name: String,
    pub kind: Kind,
    pub shape: Vec<i64>,
}

/// Writes a safetensors file tensor by tensor: the header first (names,
/// dtypes, shapes and offsets, in `entries` order, padded to 8 bytes as the
/// safetensors library pads it), then the bytes of each tensor `produce`
/// returns for its index, so only one tensor is in memory at a time. A
/// produced tensor of another dtype is converted; one of another shape is an
/// error.
pub fn write_safetensors(
    path: &Path,
    entries: &[TensorEntry],
    metadata: &[(&str, &str)],
    mut produce: impl FnMut(usize) -> Result<Tensor, WeightError>,
) -> Result<(), WeightError> {
    use std::io::Write as _;
    let io_err = |source| WeightError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut header = serde_json::Map::new();
    if !metadata.is_empty() {
        let meta: serde_json::Map<String, serde_json::Value> = metadata
            .iter()
            .map(|(k, v)| ((*k).to_owned(), serde_json::Value::from(*v)))
            .collect();
        header.insert("__metadata__".into(), meta.into());
    }
    let mut offset = 0usize;
    for entry in entries {
        let dtype = safetensors_dtype(entry.kind).ok_or_else(|| WeightError::Dtype {
            name: entry.name.clone(),
            dtype: format!("{:?}", entry.kind),
            file: path.to_path_buf(),
        })?;
        let numel: i64 = entry.shape.iter().product();
        let bytes = numel.unsigned_abs() as usize * entry.kind.elt_size_in_bytes();
        header.insert(
            entry.name.clone(),
            serde_json::json!({
                "dtype": dtype,
                "shape": entry.shape,
                "data_offsets": [offset, offset + bytes],
            }),
        );
        offset += bytes;
    }
    let mut text = serde_json::Value::Object(header).to_string();
    while !text.len().is_multiple_of(8) {
        text.push(' ');
    }
    let file = File::create(path).map_err(io_err)?;
    let mut out = std::io::BufWriter::new(file);
    out.write_all(&(text.len() as u64).to_le_bytes())
        .and_then(|()| out.write_all(text.as_bytes()))
        .map_err(io_err)?;
    let mut buffer = Vec::new();
    for (index, entry) in entries.iter().enumerate() {
        let tch_err = |source| WeightError::Tch {
            name: entry.name.clone(),
            source,
        };
        let tensor = produce(index)?;
        if tensor.size() != entry.shape {
            return Err(WeightError::Shape {
                name: entry.name.clone(),
                expected: entry.shape.clone(),
                found: tensor.size(),
                file: path.to_path_buf(),
            });
        }
        let tensor = tensor
            .f_to_device(Device::Cpu)
            .and_then(|t| t.f_to_kind(entry.kind))
            .and_then(|t| t.f_contiguous())
            .map_err(tch_err)?;
        let numel = tensor.numel();
        buffer.resize(numel * entry.kind.elt_size_in_bytes(), 0);
        tensor.f_copy_data_u8(&mut buffer, numel).map_err(tch_err)?;
        out.write_all(&buffer).map_err(io_err)?;
    }
    out.flush().map_err(io_err)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Writes `tensors` (name, shape, f32 values) as a safetensors file.
    pub(crate) fn write_f32(path: &Path, tensors: &[(&str, Vec<usize>, Vec<f32>)]) {
        use safetensors::tensor::TensorView;
        let bytes: Vec<Vec<u8>> = tensors
            .iter()
            .map(|(_, _, v)| v.iter().flat_map(|x| x.to_le_bytes()).collect())
            .collect();
        let views: Vec<(String, TensorView<'_>)> = tensors
            .iter()
            .zip(&bytes)
            .map(|((name, shape, _), b)| {
                (
                    (*name).to_owned(),
                    TensorView::new(Dtype::F32, shape.clone(), b).unwrap(),
                )
            })
            .collect();
        safetensors::serialize_to_file(views, None, path).unwrap();
    }

    #[test]
    fn names_of_both_conventions_normalise_to_legacy() {
        let t = |s: &str| KeyRole::Tensor(s.to_owned());
        let cases = [
            (
                "vision_tower.vision_model.encoder.layers.0.mlp.fc1.weight",
                t("vision_tower.vision_model.encoder.layers.0.mlp.fc1.weight"),
            ),
            (
                "vision_tower.encoder.layers.0.mlp.fc1.weight",
                t("vision_tower.vision_model.encoder.layers.0.mlp.fc1.weight"),
            ),
            (
                "model.vision_tower.post_layernorm.bias",
                t("vision_tower.vision_model.post_layernorm.bias"),
            ),
            (
                "model.vision_tower.vision_model.post_layernorm.bias",
                t("vision_tower.vision_model.post_layernorm.bias"),
            ),
            (
                "model.language_model.layers.1.self_attn.q_proj.weight",
                t("language_model.model.layers.1.self_attn.q_proj.weight"),
            ),
            (
                "language_model.model.norm.weight",
                t("language_model.model.norm.weight"),
            ),
            (
                "model.multi_modal_projector.linear.bias",
                t("multi_modal_projector.linear.bias"),
            ),
            (
                "multi_modal_projector.linear.bias",
                t("multi_modal_projector.linear.bias"),
            ),
            ("language_model.lm_head.weight", KeyRole::TiedHead),
            ("lm_head.weight", KeyRole::TiedHead),
            ("something.else", t("something.else")),
        ];
        for (key, expected) in cases {
            assert_eq!(normalise_key(key), expected, "{key}");
        }
    }

    #[test]
    fn loads_converts_and_tracks_use() {
        let dir = tempfile::tempdir().unwrap();
        write_f32(
            &dir.path().join(SINGLE_FILE),
            &[
                (
                    "model.multi_modal_projector.linear.bias",
                    vec![3],
                    vec![1.0, 2.0, 3.5],
                ),
                (
                    "vision_tower.post_layernorm.weight",
                    vec![2],
                    vec![0.5, 0.25],
                ),
                ("lm_head.weight", vec![1], vec![9.0]),
            ],
        );
        let w = Weights::open(dir.path(), Device::Cpu, Kind::BFloat16).unwrap();
        assert_eq!(
            w.names(),
            [
                "multi_modal_projector.linear.bias",
                "vision_tower.vision_model.post_layernorm.weight"
            ]
        );
        let root = w.root();
        let bias = root
            .pp("multi_modal_projector")
            .pp("linear")
            .get("bias", &[3])
            .unwrap();
        assert_eq!(bias.kind(), Kind::BFloat16);
        assert_eq!(
            Vec::<f32>::try_from(bias.to_kind(Kind::Float)).unwrap(),
            [1.0, 2.0, 3.5]
        );
        let err = w.finish().unwrap_err();
        assert!(
            matches!(err, WeightError::Unused { ref names, .. } if names.len() == 1),
            "{err}"
        );
        assert!(
            err.to_string()
                .contains("vision_tower.post_layernorm.weight"),
            "{err}"
        );

        let err = root
            .pp("vision_tower.vision_model.post_layernorm")
            .get("weight", &[3])
            .unwrap_err();
        assert!(matches!(err, WeightError::Shape { .. }), "{err}");
        assert!(
            err.to_string().contains("[2]") && err.to_string().contains("[3]"),
            "{err}"
        );
        let _ = root
            .pp("vision_tower.vision_model.post_layernorm")
            .get("weight", &[2])
            .unwrap();
        w.finish().unwrap();

        let err = root.get("nope", &[1]).unwrap_err();
        assert!(matches!(err, WeightError::Missing { .. }), "{err}");
        assert!(
            err.to_string().contains("nope") && err.to_string().contains(SINGLE_FILE),
            "{err}"
        );
    }

    #[test]
    fn duplicate_after_normalisation_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        write_f32(
            &dir.path().join(SINGLE_FILE),
            &[
                ("vision_tower.post_layernorm.bias", vec![1], vec![1.0]),
                (
                    "vision_tower.vision_model.post_layernorm.bias",
                    vec![1],
                    vec![1.0],
                ),
            ],
        );
        let err = Weights::open(dir.path(), Device::Cpu, Kind::Float).unwrap_err();
        assert!(matches!(err, WeightError::Duplicate { .. }), "{err}");
    }

    #[test]
    fn truncated_empty_and_absent_files_are_typed_errors() {
        let dir = tempfile::tempdir().unwrap();
        let err = Weights::open(dir.path(), Device::Cpu, Kind::Float).unwrap_err();
        assert!(matches!(err, WeightError::NoCheckpoint { .. }), "{err}");

        let path = dir.path().join(SINGLE_FILE);
        write_f32(&path, &[("a", vec![4], vec![1.0; 4])]);
        let bytes = std::fs::read(&path).unwrap();
        for len in [0, 5, bytes.len() - 3] {
            std::fs::write(&path, &bytes[..len]).unwrap();
            let err = Weights::open(dir.path(), Device::Cpu, Kind::Float).unwrap_err();
            assert!(matches!(err, WeightError::Corrupt { .. }), "{len}: {err}");
            assert!(err.to_string().contains("truncated"), "{err}");
        }
    }

    #[test]
    fn sharded_index_resolves_each_tensor() {
        let dir = tempfile::tempdir().unwrap();
        write_f32(
            &dir.path().join("model-00001-of-00002.safetensors"),
            &[("a", vec![1], vec![1.0])],
        );
        write_f32(
            &dir.path().join("model-00002-of-00002.safetensors"),
            &[("b", vec![1], vec![2.0])],
        );
        let index = serde_json::json!({
            "metadata": {"total_size": 8},
            "weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}
        });
        std::fs::write(dir.path().join(INDEX_FILE), index.to_string()).unwrap();
        let w = Weights::open(dir.path(), Device::Cpu, Kind::Float).unwrap();
        let b = w.root().get("b", &[1]).unwrap();
        assert_eq!(Vec::<f32>::try_from(&b).unwrap(), [2.0]);
        assert_eq!(w.files().len(), 2);

        // An index pointing at the wrong shard names the tensor and the shard.
        let index = serde_json::json!({
            "weight_map": {"a": "model-00002-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}
        });
        std::fs::write(dir.path().join(INDEX_FILE), index.to_string()).unwrap();
        let err = Weights::open(dir.path(), Device::Cpu, Kind::Float).unwrap_err();
        assert!(matches!(err, WeightError::Missing { .. }), "{err}");
        assert!(err.to_string().contains("00002"), "{err}");
    }

    #[test]
    fn streamed_safetensors_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(SINGLE_FILE);
        let entries = [
            TensorEntry {
                name: "b.weight".into(),
                kind: Kind::BFloat16,
                shape: vec![2, 3],
            },
            TensorEntry {
                name: "a.bias".into(),
                kind: Kind::Float,
                shape: vec![3],
            },
        ];
        let values = [
            Tensor::from_slice(&[1f32, 2., 3., 4., 5., 6.5]).view([2, 3]),
            Tensor::from_slice(&[0.25f32, -1., 7.]),
        ];
        write_safetensors(&path, &entries, &[("format", "pt")], |i| {
            Ok(values[i].shallow_clone())
        })
        .unwrap();
        let bytes = std::fs::read(&path).unwrap();
        let file = SafeTensors::deserialize(&bytes).unwrap();
        assert_eq!(file.tensor("b.weight").unwrap().dtype(), Dtype::BF16);
        let (_, meta) = SafeTensors::read_metadata(&bytes).unwrap();
        assert_eq!(meta.metadata().as_ref().unwrap()["format"], "pt");
        let w = Weights::open(dir.path(), Device::Cpu, Kind::Float).unwrap();
        let b = w.root().get("b.weight", &[2, 3]).unwrap();
        assert!((b.double_value(&[1, 2]) - 6.5).abs() < 1e-12);
        let a = w.root().get("a.bias", &[3]).unwrap();
        assert_eq!(Vec::<f32>::try_from(&a).unwrap(), [0.25, -1., 7.]);
        // A produced tensor of the wrong shape is an error.
        let err =
            write_safetensors(&path, &entries, &[], |_| Ok(values[1].shallow_clone())).unwrap_err();
        assert!(matches!(err, WeightError::Shape { .. }), "{err}");
    }
}

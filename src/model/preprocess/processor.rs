//! The `PaliGemma` processor: tokenizer + image preprocessing, laid out
//! exactly as transformers 5.24's `PaliGemmaProcessor` lays out a batch.
//!
//! Per row the prefix is the string `"<image>"×N + "<bos>" + prompt + "\n"`
//! tokenised as the first sequence (token type 0); for training the suffix
//! `suffix + "<eos>"` is tokenised as the pair's second sequence (token type
//! 1). transformers sets `add_bos_token = add_eos_token = False`, so the
//! tokenizer adds nothing itself: both sequences are encoded without special
//! tokens and concatenated. Labels are the ids with −100 wherever the token
//! type is 0 (image tokens, `<bos>`, prompt, `"\n"`, padding).

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use image::RgbImage;
use serde_json::Value;
use tch::Tensor;
use tokenizers::{AddedToken, Tokenizer};

use crate::model::preprocess::image::pixel_values;
use crate::model::preprocess::input::ModelInput;

/// The label value the loss ignores.
const IGNORE_INDEX: i64 = -100;

/// Why a processor could not be built or could not encode a batch.
#[derive(Debug, thiserror::Error)]
pub enum ProcessorError {
    /// A checkpoint file could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// A JSON config file is malformed.
    #[error("{} is not valid JSON: {source}", path.display())]
    Json {
        /// The file.
        path: PathBuf,
        /// What the parser said.
        source: serde_json::Error,
    },
    /// `tokenizer.json` is missing or is not a tokenizer the `tokenizers`
    /// crate can load.
    #[error("cannot load tokenizer {}: {source}", path.display())]
    Tokenizer {
        /// The file.
        path: PathBuf,
        /// What the tokenizers crate said.
        source: tokenizers::Error,
    },
    /// A token the processor needs is not in the tokenizer's vocabulary.
    #[error("tokenizer {source_name} has no `{token}` token (needed as the {role} token)")]
    MissingToken {
        /// The tokenizer file, or a description of an in-memory tokenizer.
        source_name: String,
        /// The token's text.
        token: String,
        /// What it is used for: pad, bos, eos, unk or image.
        role: &'static str,
    },
    /// The checkpoint does not say how large its images are, or says
    /// something this processor does not implement.
    #[error("{}: {message}", path.display())]
    Config {
        /// The file (or folder) at fault.
        path: PathBuf,
        /// What is wrong and how to fix it.
        message: String,
    },
    /// The tokenizer failed on a row's text.
    #[error("cannot tokenize row {row}: {source}")]
    Encode {
        /// Row index in the batch.
        row: usize,
        /// What the tokenizers crate said.
        source: tokenizers::Error,
    },
    /// A prompt or suffix contains the image placeholder, which the
    /// processor inserts itself.
    #[error(
        "row {row}: the text contains `{token}`; pass the bare prompt, image tokens are added by the processor"
    )]
    ImageTokenInText {
        /// Row index in the batch.
        row: usize,
        /// The image token's text.
        token: String,
    },
    /// The image tokens, `<bos>` or the prompt did not tokenise to the
    /// expected layout (the tokenizer does not treat them as single tokens).
    #[error(
        "row {row}: the prefix does not start with {expected} `<image>` tokens and `<bos>`; is `{token}` an added token of this tokenizer?"
    )]
    Layout {
        /// Row index in the batch.
        row: usize,
        /// Expected number of image tokens.
        expected: usize,
        /// The image token's text.
        token: String,
    },
    /// A prefix (image tokens + `<bos>` + prompt + `"\n"`) is longer than the
    /// limit set with [`Processor::with_max_prefix_tokens`].
    #[error(
        "row {row}: the prefix is {tokens} tokens long (image tokens included), more than the limit of {max}; shorten the prompt"
    )]
    PrefixTooLong {
        /// Row index in the batch.
        row: usize,
        /// The prefix's length in tokens.
        tokens: usize,
        /// The limit.
        max: usize,
    },
    /// Images and texts do not pair up.
    #[error("{images} images but {texts} prompts; every row needs exactly one image")]
    LengthMismatch {
        /// Number of images.
        images: usize,
        /// Number of prompts.
        texts: usize,
    },
    /// Nothing to encode.
    #[error("the batch is empty")]
    EmptyBatch,
    /// `max_suffix_tokens` of 0 would leave nothing to learn.
    #[error("max_suffix_tokens must be at least 1")]
    ZeroSuffixLimit,
    /// libtorch refused to build a tensor.
    #[error("cannot build the batch tensors: {0}")]
    Tensor(#[from] tch::TchError),
}

/// The special-token ids, read from the tokenizer (never assumed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpecialTokens {
    /// Padding.
    pub pad: u32,
    /// Beginning of sequence, after the image tokens.
    pub bos: u32,
    /// End of sequence, appended to every suffix.
    pub eos: u32,
    /// Unknown piece.
    pub unk: u32,
    /// The image placeholder, repeated `image_seq_length` times.
    pub image: u32,
}

/// The texts of the special tokens, as the checkpoint's tokenizer config
/// names them.
#[derive(Debug, Clone)]
struct TokenNames {
    pad: String,
    bos: String,
    eos: String,
    unk: String,
    image: String,
}

impl Default for TokenNames {
    fn default() -> Self {
        Self {
            pad: "<pad>".into(),
            bos: "<bos>".into(),
            eos: "<eos>".into(),
            unk: "<unk>".into(),
            image: "<image>".into(),
        }
    }
}

/// One training example: an image, the prompt (prefix) and the target
/// (suffix).
#[derive(Debug, Clone)]
pub struct Example {
    /// The image, already converted to RGB (see
    /// [`crate::model::preprocess::image::load_image`]).
    pub image: RgbImage,
    /// The prompt, without image tokens, `<bos>` or trailing `"\n"`.
    pub prefix: String,
    /// The target text, without `<eos>`.
    pub suffix: String,
}

/// A training batch and what happened while building it.
#[derive(Debug)]
pub struct Encoded {
    /// The tensors, with labels.
    pub input: ModelInput,
    /// How many suffixes were cut at `max_suffix_tokens`.
    pub truncated: usize,
}

/// Tokenizer + image preprocessing for one checkpoint.
#[derive(Debug, Clone)]
pub struct Processor {
    tokenizer: Tokenizer,
    names: TokenNames,
    special: SpecialTokens,
    image_size: u32,
    image_seq_length: usize,
    max_prefix_tokens: Option<usize>,
    /// Ids `decode` drops: every special added token except the
    /// location/segmentation tokens.
    skip_on_decode: HashSet<u32>,
}

impl Processor {
    /// Builds a processor from an in-memory tokenizer, with the default
    /// special-token texts (`<pad>`, `<bos>`, `<eos>`, `<unk>`, `<image>`);
    /// their ids are looked up in the tokenizer.
    pub fn new(
        tokenizer: Tokenizer,
        image_size: u32,
        image_seq_length: usize,
    ) -> Result<Self, ProcessorError> {
        Self::build(
            tokenizer,
            "(in-memory tokenizer)",
            TokenNames::default(),
            image_size,
            image_seq_length,
        )
    }

    /// Loads a processor from a checkpoint folder.
    ///
    /// Reads `tokenizer.json` (required), the special-token texts from
    /// `tokenizer_config.json` / `special_tokens_map.json` when present, and
    /// the image size and image-token count from `preprocessor_config.json`,
    /// or, without it, from `config.json` (`vision_config.image_size`,
    /// `vision_config.patch_size`: (size / patch)² tokens).
    pub fn from_dir(dir: &Path) -> Result<Self, ProcessorError> {
        let tokenizer_path = dir.join("tokenizer.json");
        let tokenizer =
            Tokenizer::from_file(&tokenizer_path).map_err(|source| ProcessorError::Tokenizer {
                path: tokenizer_path.clone(),
                source,
            })?;
        let names = read_token_names(dir)?;
        let (image_size, image_seq_length) = read_image_geometry(dir)?;
        Self::build(
            tokenizer,
            &tokenizer_path.display().to_string(),
            names,
            image_size,
            image_seq_length,
        )
    }

    fn build(
        mut tokenizer: Tokenizer,
        source_name: &str,
        names: TokenNames,
        image_size: u32,
        image_seq_length: usize,
    ) -> Result<Self, ProcessorError> {
        // transformers drives truncation and padding itself; settings stored
        // in tokenizer.json would otherwise change every encoding.
        tokenizer.with_padding(None);
        // Disabling truncation cannot fail (only enabling validates).
        let _ = tokenizer.with_truncation(None);
        let id = |token: &str, role: &'static str| {
            tokenizer
                .token_to_id(token)
                .ok_or_else(|| ProcessorError::MissingToken {
                    source_name: source_name.to_owned(),
                    token: token.to_owned(),
                    role,
                })
        };
        let special = SpecialTokens {
            pad: id(&names.pad, "pad")?,
            bos: id(&names.bos, "bos")?,
            eos: id(&names.eos, "eos")?,
            unk: id(&names.unk, "unk")?,
            image: id(&names.image, "image")?,
        };
        // PaliGemmaProcessor calls `tokenizer.add_tokens(EXTRA_TOKENS)` so
        // that `<locNNNN>`/`<segNNN>` in text match as whole tokens. Only
        // those already in the vocabulary are registered here: a new id
        // would have no embedding row.
        let extra: Vec<AddedToken> = location_and_segmentation_tokens()
            .filter(|t| tokenizer.token_to_id(t).is_some())
            .map(|t| AddedToken::from(t, false))
            .collect();
        tokenizer.add_tokens(&extra);
        let mut skip_on_decode: HashSet<u32> = tokenizer
            .get_added_tokens_decoder()
            .into_iter()
            .filter(|(_, t)| t.special && !is_location_or_segmentation(&t.content))
            .map(|(id, _)| id)
            .collect();
        skip_on_decode.extend([special.pad, special.bos, special.eos, special.image]);
        Ok(Self {
            tokenizer,
            names,
            special,
            image_size,
            image_seq_length,
            max_prefix_tokens: None,
            skip_on_decode,
        })
    }

    /// Rejects prefixes longer than `max` tokens (image tokens included)
    /// with [`ProcessorError::PrefixTooLong`] instead of building a batch
    /// the model cannot take.
    #[must_use]
    pub fn with_max_prefix_tokens(mut self, max: usize) -> Self {
        self.max_prefix_tokens = Some(max);
        self
    }

    /// The side of the square the images are resized to.
    pub fn image_size(&self) -> u32 {
        self.image_size
    }

    /// How many `<image>` tokens each prefix starts with.
    pub fn image_seq_length(&self) -> usize {
        self.image_seq_length
    }

    /// The special-token ids.
    pub fn special_tokens(&self) -> SpecialTokens {
        self.special
    }

    /// The underlying tokenizer.
    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    /// Builds a training batch: exactly `PaliGemmaProcessor(images,
    /// text=prefixes, suffix=suffixes, padding="longest")` with right
    /// padding, plus optional suffix truncation.
    ///
    /// Truncation mirrors transformers' `truncation="only_second"`: the
    /// prefix is kept whole and the suffix token list (which ends with
    /// `<eos>`) is cut to its first `max_suffix_tokens` tokens, so a cut
    /// suffix loses its `<eos>` — the model is not taught to stop where the
    /// text was cut. This equals `max_length = prefix length +
    /// max_suffix_tokens` per row. Pass `usize::MAX` to disable it.
    pub fn encode_training(
        &self,
        examples: &[Example],
        max_suffix_tokens: usize,
    ) -> Result<Encoded, ProcessorError> {
        if examples.is_empty() {
            return Err(ProcessorError::EmptyBatch);
        }
        if max_suffix_tokens == 0 {
            return Err(ProcessorError::ZeroSuffixLimit);
        }
        let mut rows = Vec::with_capacity(examples.len());
        let mut truncated = 0;
        for (row, ex) in examples.iter().enumerate() {
            let prefix = self.encode_prefix(row, &ex.prefix)?;
            let mut suffix = self.encode_suffix(row, &ex.suffix)?;
            if suffix.len() > max_suffix_tokens {
                suffix.truncate(max_suffix_tokens);
                truncated += 1;
            }
            rows.push((prefix, suffix));
        }
        let len = rows
            .iter()
            .map(|(p, s)| p.len() + s.len())
            .max()
            .unwrap_or(0);
        let mut batch = Columns::with_capacity(rows.len() * len);
        for (prefix, suffix) in &rows {
            batch.push_tokens(prefix, 0);
            batch.push_tokens(suffix, 1);
            batch.push_padding(len - prefix.len() - suffix.len(), self.special.pad);
        }
        let images: Vec<RgbImage> = examples.iter().map(|e| e.image.clone()).collect();
        let input = batch.into_input(
            rows.len(),
            len,
            true,
            pixel_values(&images, self.image_size),
        )?;
        Ok(Encoded { input, truncated })
    }

    /// Builds a generation batch: the prefixes only, LEFT-padded (so that
    /// every row's next token is at the last position, as HF `generate`
    /// expects), token type 0 everywhere, no labels.
    pub fn encode_prompts(
        &self,
        images: &[RgbImage],
        prefixes: &[String],
    ) -> Result<ModelInput, ProcessorError> {
        if images.len() != prefixes.len() {
            return Err(ProcessorError::LengthMismatch {
                images: images.len(),
                texts: prefixes.len(),
            });
        }
        if images.is_empty() {
            return Err(ProcessorError::EmptyBatch);
        }
        let rows = prefixes
            .iter()
            .enumerate()
            .map(|(row, p)| self.encode_prefix(row, p))
            .collect::<Result<Vec<_>, _>>()?;
        let len = rows.iter().map(Vec::len).max().unwrap_or(0);
        let mut batch = Columns::with_capacity(rows.len() * len);
        for prefix in &rows {
            batch.push_padding(len - prefix.len(), self.special.pad);
            batch.push_tokens(prefix, 0);
        }
        batch.into_input(
            rows.len(),
            len,
            false,
            pixel_values(images, self.image_size),
        )
    }

    /// Decodes generated ids to text, dropping padding, `<bos>`, `<eos>`,
    /// `<image>`, `<unk>` and other special added tokens but keeping
    /// `<locNNNN>`/`<segNNN>` (they carry detection and segmentation
    /// output). Ids outside the vocabulary (e.g. −100) are ignored.
    pub fn decode(&self, ids: &[i64]) -> String {
        let vocab = self.tokenizer.get_vocab_size(true);
        let kept: Vec<u32> = ids
            .iter()
            .filter_map(|&id| u32::try_from(id).ok())
            .filter(|id| (*id as usize) < vocab && !self.skip_on_decode.contains(id))
            .collect();
        // The Gemma decoders (Replace, ByteFallback, Fuse) cannot fail on
        // in-vocabulary ids; an empty string is the safe answer if one does.
        self.tokenizer.decode(&kept, false).unwrap_or_default()
    }

    /// Ids of `"<image>"×N + "<bos>" + prompt + "\n"`, the string
    /// transformers tokenises (tokenising the whole string, rather than the
    /// prompt alone, keeps any start-of-text normalisation identical).
    fn encode_prefix(&self, row: usize, prompt: &str) -> Result<Vec<u32>, ProcessorError> {
        if prompt.contains(&self.names.image) {
            return Err(ProcessorError::ImageTokenInText {
                row,
                token: self.names.image.clone(),
            });
        }
        let n = self.image_seq_length;
        let mut text = String::with_capacity(self.names.image.len() * n + prompt.len() + 8);
        for _ in 0..n {
            text.push_str(&self.names.image);
        }
        text.push_str(&self.names.bos);
        text.push_str(prompt);
        text.push('\n');
        let ids = self.encode_text(row, &text)?;
        let layout_ok = ids.len() > n
            && ids[..n].iter().all(|&i| i == self.special.image)
            && ids[n] == self.special.bos;
        if !layout_ok {
            return Err(ProcessorError::Layout {
                row,
                expected: n,
                token: self.names.image.clone(),
            });
        }
        if let Some(max) = self.max_prefix_tokens
            && ids.len() > max
        {
            return Err(ProcessorError::PrefixTooLong {
                row,
                tokens: ids.len(),
                max,
            });
        }
        Ok(ids)
    }

    /// Ids of `suffix + "<eos>"`, tokenised on its own as the pair's second
    /// sequence.
    fn encode_suffix(&self, row: usize, suffix: &str) -> Result<Vec<u32>, ProcessorError> {
        if suffix.contains(&self.names.image) {
            return Err(ProcessorError::ImageTokenInText {
                row,
                token: self.names.image.clone(),
            });
        }
        self.encode_text(row, &format!("{suffix}{}", self.names.eos))
    }

    fn encode_text(&self, row: usize, text: &str) -> Result<Vec<u32>, ProcessorError> {
        self.tokenizer
            .encode(text, false)
            .map(|e| e.get_ids().to_vec())
            .map_err(|source| ProcessorError::Encode { row, source })
    }
}

/// Row-major `[B, L]` columns being filled row by row.
struct Columns {
    ids: Vec<i64>,
    mask: Vec<i64>,
    types: Vec<i64>,
}

impl Columns {
    fn with_capacity(n: usize) -> Self {
        Self {
            ids: Vec::with_capacity(n),
            mask: Vec::with_capacity(n),
            types: Vec::with_capacity(n),
        }
    }

    fn push_tokens(&mut self, ids: &[u32], token_type: i64) {
        self.ids.extend(ids.iter().map(|&i| i64::from(i)));
        self.mask.extend(std::iter::repeat_n(1, ids.len()));
        self.types
            .extend(std::iter::repeat_n(token_type, ids.len()));
    }

    /// Padding is token type 0 and attention 0, as in HF's processor.
    fn push_padding(&mut self, n: usize, pad: u32) {
        self.ids.extend(std::iter::repeat_n(i64::from(pad), n));
        self.mask.extend(std::iter::repeat_n(0, n));
        self.types.extend(std::iter::repeat_n(0, n));
    }

    fn into_input(
        self,
        rows: usize,
        len: usize,
        with_labels: bool,
        pixel_values: Tensor,
    ) -> Result<ModelInput, ProcessorError> {
        // Lengths of in-memory vectors always fit in i64.
        let shape = [rows, len].map(|n| i64::try_from(n).unwrap_or(i64::MAX));
        let labels = with_labels.then(|| {
            self.ids
                .iter()
                .zip(&self.types)
                .map(|(&id, &t)| if t == 0 { IGNORE_INDEX } else { id })
                .collect::<Vec<i64>>()
        });
        Ok(ModelInput {
            input_ids: Tensor::from_slice(&self.ids).f_view(shape)?,
            attention_mask: Tensor::from_slice(&self.mask).f_view(shape)?,
            token_type_ids: Tensor::from_slice(&self.types).f_view(shape)?,
            labels: labels
                .map(|l| Tensor::from_slice(&l).f_view(shape))
                .transpose()?,
            pixel_values,
        })
    }
}

/// `<loc0000>`…`<loc1023>`, `<seg000>`…`<seg127>` (PaliGemma's
/// `EXTRA_TOKENS`).
fn location_and_segmentation_tokens() -> impl Iterator<Item = String> {
    (0..1024)
        .map(|i| format!("<loc{i:04}>"))
        .chain((0..128).map(|i| format!("<seg{i:03}>")))
}

fn is_location_or_segmentation(token: &str) -> bool {
    let digits = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_digit());
    token
        .strip_prefix("<loc")
        .and_then(|s| s.strip_suffix('>'))
        .is_some_and(|d| digits(d, 4))
        || token
            .strip_prefix("<seg")
            .and_then(|s| s.strip_suffix('>'))
            .is_some_and(|d| digits(d, 3))
}

/// Reads a JSON file if it exists.
fn read_json(path: &Path) -> Result<Option<Value>, ProcessorError> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(ProcessorError::Read {
                path: path.to_path_buf(),
                source,
            });
        }
    };
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|source| ProcessorError::Json {
            path: path.to_path_buf(),
            source,
        })
}

/// A special token's text in a tokenizer config: a string or an
/// `AddedToken` object with a `content` field; `null` means unset.
fn token_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Object(o) => o.get("content").and_then(Value::as_str).map(str::to_owned),
        _ => None,
    }
}

/// Special-token texts from `tokenizer_config.json`, then
/// `special_tokens_map.json`, then the Gemma defaults.
fn read_token_names(dir: &Path) -> Result<TokenNames, ProcessorError> {
    let configs = [
        read_json(&dir.join("tokenizer_config.json"))?,
        read_json(&dir.join("special_tokens_map.json"))?,
    ];
    let lookup = |key: &str| {
        configs
            .iter()
            .flatten()
            .find_map(|c| c.get(key).and_then(token_text))
    };
    let mut names = TokenNames::default();
    for (key, slot) in [
        ("pad_token", &mut names.pad),
        ("bos_token", &mut names.bos),
        ("eos_token", &mut names.eos),
        ("unk_token", &mut names.unk),
        ("image_token", &mut names.image),
    ] {
        if let Some(text) = lookup(key) {
            *slot = text;
        }
    }
    Ok(names)
}

/// `(image_size, image_seq_length)` from `preprocessor_config.json`, else
/// from `config.json`.
fn read_image_geometry(dir: &Path) -> Result<(u32, usize), ProcessorError> {
    let pre_path = dir.join("preprocessor_config.json");
    if let Some(pre) = read_json(&pre_path)? {
        let bad = |message: String| ProcessorError::Config {
            path: pre_path.clone(),
            message,
        };
        check_preprocessing(&pre).map_err(bad)?;
        let size = pre.get("size").ok_or_else(|| bad("no `size`".into()))?;
        let dim = |k: &str| size.get(k).and_then(Value::as_u64);
        let image_size = match (dim("height"), dim("width")) {
            (Some(h), Some(w)) if h == w => h,
            (Some(h), Some(w)) => {
                return Err(bad(format!(
                    "`size` is {h}×{w}; PaliGemma images are square"
                )));
            }
            _ => return Err(bad("`size` needs `height` and `width`".into())),
        };
        let image_size = u32::try_from(image_size)
            .map_err(|_| bad(format!("`size` {image_size} is too large")))?;
        let seq = match pre.get("image_seq_length").and_then(Value::as_u64) {
            Some(n) => n as usize,
            None => read_config_geometry(dir)?.1,
        };
        return Ok((image_size, seq));
    }
    read_config_geometry(dir)
}

/// `vision_config.image_size` and `(image_size / patch_size)²` from
/// `config.json`.
fn read_config_geometry(dir: &Path) -> Result<(u32, usize), ProcessorError> {
    let config_path = dir.join("config.json");
    let bad = |message: &str| ProcessorError::Config {
        path: config_path.clone(),
        message: message.to_owned(),
    };
    let config = read_json(&config_path)?.ok_or_else(|| ProcessorError::Config {
        path: dir.to_path_buf(),
        message:
            "neither preprocessor_config.json nor config.json is present; the image size is unknown"
                .into(),
    })?;
    let vision = config
        .get("vision_config")
        .ok_or_else(|| bad("no `vision_config`"))?;
    let field = |k: &str| vision.get(k).and_then(Value::as_u64);
    let image_size = field("image_size").ok_or_else(|| bad("no `vision_config.image_size`"))?;
    let patch_size = field("patch_size").ok_or_else(|| bad("no `vision_config.patch_size`"))?;
    if patch_size == 0 || image_size % patch_size != 0 {
        return Err(bad(
            "`vision_config.image_size` is not a multiple of `patch_size`",
        ));
    }
    let patches_per_side = image_size / patch_size;
    let image_size =
        u32::try_from(image_size).map_err(|_| bad("`vision_config.image_size` is too large"))?;
    Ok((image_size, (patches_per_side * patches_per_side) as usize))
}

/// Rejects preprocessing this crate does not implement (it reproduces the
/// published `PaliGemma` config: bicubic resize, ×1/255, mean = std = 0.5).
fn check_preprocessing(pre: &Value) -> Result<(), String> {
    let flag = |k: &str| pre.get(k).and_then(Value::as_bool);
    for key in ["do_resize", "do_rescale", "do_normalize"] {
        if flag(key) == Some(false) {
            return Err(format!("`{key}: false` is not supported"));
        }
    }
    if let Some(r) = pre.get("resample").and_then(Value::as_u64)
        && r != 3
    {
        return Err(format!(
            "`resample: {r}` is not supported (only 3, bicubic)"
        ));
    }
    if let Some(f) = pre.get("rescale_factor").and_then(Value::as_f64)
        && (f - 1.0 / 255.0).abs() > 1e-12
    {
        return Err(format!(
            "`rescale_factor: {f}` is not supported (only 1/255)"
        ));
    }
    for key in ["image_mean", "image_std"] {
        if let Some(v) = pre.get(key).and_then(Value::as_array)
            && v.iter().any(|x| x.as_f64() != Some(0.5))
        {
            return Err(format!("`{key}` must be [0.5, 0.5, 0.5]"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::preprocess::image::load_image;

    fn root() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
    }

    fn golden() -> Value {
        let path = root().join("tests/golden/values.json");
        let text = std::fs::read_to_string(&path).expect("tests/golden/values.json");
        serde_json::from_str(&text).expect("values.json parses")
    }

    fn tiny() -> Processor {
        Processor::from_dir(&root().join("tests/golden/checkpoints/f32"))
            .expect("golden checkpoint processor")
    }

    fn as_i64s(v: &Value) -> Vec<i64> {
        v.as_array()
            .expect("array")
            .iter()
            .map(|x| x.as_i64().expect("integer"))
            .collect()
    }

    fn rows(v: &Value) -> Vec<Vec<i64>> {
        v.as_array().expect("rows").iter().map(as_i64s).collect()
    }

    fn tensor_rows(t: &Tensor) -> Vec<Vec<i64>> {
        let size = t.size();
        let flat = Vec::<i64>::try_from(t.flatten(0, -1)).expect("int64 tensor");
        flat.chunks(size[1] as usize).map(<[i64]>::to_vec).collect()
    }

    /// The split's examples in annotations order.
    fn split(name: &str) -> Vec<Example> {
        let dir = root().join("tests/golden/data").join(name);
        let text = std::fs::read_to_string(dir.join("annotations.jsonl")).expect("annotations");
        text.lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| {
                let v: Value = serde_json::from_str(l).expect("jsonl");
                let s = |k: &str| v[k].as_str().expect(k).to_owned();
                Example {
                    image: load_image(&dir.join(s("image"))).expect("image"),
                    prefix: s("prefix"),
                    suffix: s("suffix"),
                }
            })
            .collect()
    }

    #[test]
    fn reads_ids_and_geometry_from_checkpoint() {
        let p = tiny();
        let t = &golden()["tokenizer"]["ids"];
        let s = p.special_tokens();
        assert_eq!(i64::from(s.pad), t["<pad>"].as_i64().unwrap());
        assert_eq!(i64::from(s.eos), t["<eos>"].as_i64().unwrap());
        assert_eq!(i64::from(s.bos), t["<bos>"].as_i64().unwrap());
        assert_eq!(i64::from(s.unk), t["<unk>"].as_i64().unwrap());
        assert_eq!(i64::from(s.image), t["<image>"].as_i64().unwrap());
        assert_eq!((p.image_size(), p.image_seq_length()), (32, 16));
    }

    #[test]
    fn geometry_falls_back_to_config_json() {
        let src = root().join("tests/golden/checkpoints/f32");
        let dir = tempfile::tempdir().expect("tempdir");
        for f in ["tokenizer.json", "tokenizer_config.json", "config.json"] {
            std::fs::copy(src.join(f), dir.path().join(f)).expect("copy");
        }
        let p = Processor::from_dir(dir.path()).expect("processor");
        // vision_config: image_size 32, patch_size 8 → (32/8)² tokens.
        assert_eq!((p.image_size(), p.image_seq_length()), (32, 16));
    }

    #[test]
    fn tokenizer_probes_match_transformers() {
        let p = tiny();
        for probe in golden()["tokenizer"]["probes"].as_array().expect("probes") {
            let text = probe["text"].as_str().unwrap();
            let want = as_i64s(&probe["ids"]);
            let got: Vec<i64> = p
                .tokenizer()
                .encode(text, false)
                .expect("encode")
                .get_ids()
                .iter()
                .map(|&i| i64::from(i))
                .collect();
            assert_eq!(got, want, "ids of {text:?}");
            let decoded = probe["decoded_skip_special"].as_str().unwrap();
            assert_eq!(p.decode(&want), decoded, "decode of {text:?}");
        }
    }

    #[test]
    fn decode_keeps_location_tokens_and_drops_specials() {
        let p = tiny();
        let ids = [2047, 2047, 2, 895, 1918, 1919, 456, 1, 0, 0, -100];
        assert_eq!(p.decode(&ids), "<loc0000><loc1023><seg000> circle");
    }

    #[test]
    fn encode_training_matches_golden_train_split() {
        let g = golden();
        let want = &g["processor"];
        let examples = split("train");
        let prefixes: Vec<&str> = want["prefixes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        let suffixes: Vec<&str> = want["suffixes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        assert_eq!(
            examples
                .iter()
                .map(|e| e.prefix.as_str())
                .collect::<Vec<_>>(),
            prefixes
        );
        assert_eq!(
            examples
                .iter()
                .map(|e| e.suffix.as_str())
                .collect::<Vec<_>>(),
            suffixes
        );
        let enc = tiny()
            .encode_training(&examples, usize::MAX)
            .expect("encode");
        assert_eq!(enc.truncated, 0);
        let input = &enc.input;
        assert_eq!(
            tensor_rows(&input.input_ids),
            rows(&want["input_ids"]),
            "input_ids"
        );
        assert_eq!(
            tensor_rows(&input.attention_mask),
            rows(&want["attention_mask"]),
            "attention_mask"
        );
        assert_eq!(
            tensor_rows(&input.token_type_ids),
            rows(&want["token_type_ids"]),
            "token_type_ids"
        );
        let labels = input.labels.as_ref().expect("labels");
        assert_eq!(tensor_rows(labels), rows(&want["labels"]), "labels");
        assert_golden_pixels(
            &input.pixel_values,
            &want["pixels_hw3"],
            &want["image_modes"],
        );
    }

    #[test]
    fn encode_training_matches_golden_valid_split() {
        let g = golden();
        let want = &g["valid"];
        let enc = tiny()
            .encode_training(&split("valid"), usize::MAX)
            .expect("encode");
        let input = &enc.input;
        assert_eq!(
            tensor_rows(&input.input_ids),
            rows(&want["input_ids"]),
            "input_ids"
        );
        assert_eq!(
            tensor_rows(&input.attention_mask),
            rows(&want["attention_mask"]),
            "attention_mask"
        );
        assert_eq!(
            tensor_rows(&input.token_type_ids),
            rows(&want["token_type_ids"]),
            "token_type_ids"
        );
        assert_eq!(
            tensor_rows(input.labels.as_ref().expect("labels")),
            rows(&want["labels"]),
            "labels"
        );
    }

    /// `pixel_values` must equal the golden uint8 pixels (after Pillow's
    /// resize, before rescale) pushed through transformers' float
    /// arithmetic: `f32(u8 · (1/255)f64)`, then `(x − 0.5) / 0.5` in f32.
    fn assert_golden_pixels(pv: &Tensor, golden: &Value, modes: &Value) {
        let data = golden["data"].as_array().expect("pixel rows");
        let s = i64::from(tiny().image_size());
        assert_eq!(pv.size(), vec![i64::try_from(data.len()).unwrap(), 3, s, s]);
        let got = Vec::<f32>::try_from(pv.flatten(0, -1)).expect("f32 tensor");
        let plane = (s * s) as usize;
        for (b, img) in data.iter().enumerate() {
            let bytes = as_i64s(img);
            let mode = modes[b].as_str().unwrap_or("?");
            for (i, &v) in bytes.iter().enumerate() {
                let (pix, c) = (i / 3, i % 3);
                let want = ((v as f64 * 0.003_921_568_627_450_98) as f32 - 0.5) / 0.5;
                let have = got[b * 3 * plane + c * plane + pix];
                assert_eq!(
                    have.to_bits(),
                    want.to_bits(),
                    "image {b} ({mode}) pixel {pix} channel {c}"
                );
            }
        }
    }

    #[test]
    fn encode_prompts_is_the_left_padded_prefix() {
        let g = golden();
        let want = &g["processor"];
        let examples = split("train");
        let images: Vec<RgbImage> = examples.iter().map(|e| e.image.clone()).collect();
        let prefixes: Vec<String> = examples.iter().map(|e| e.prefix.clone()).collect();
        let input = tiny().encode_prompts(&images, &prefixes).expect("encode");
        assert!(input.labels.is_none());
        // Expected: each golden training row's prefix part (token type 0,
        // attention 1), left-padded with <pad> to the longest.
        let ids = rows(&want["input_ids"]);
        let mask = rows(&want["attention_mask"]);
        let types = rows(&want["token_type_ids"]);
        let prefixes: Vec<Vec<i64>> = (0..ids.len())
            .map(|r| {
                (0..ids[r].len())
                    .filter(|&t| mask[r][t] == 1 && types[r][t] == 0)
                    .map(|t| ids[r][t])
                    .collect()
            })
            .collect();
        let len = prefixes.iter().map(Vec::len).max().unwrap();
        let want_ids: Vec<Vec<i64>> = prefixes
            .iter()
            .map(|p| {
                std::iter::repeat_n(0, len - p.len())
                    .chain(p.iter().copied())
                    .collect()
            })
            .collect();
        let want_mask: Vec<Vec<i64>> = prefixes
            .iter()
            .map(|p| {
                std::iter::repeat_n(0, len - p.len())
                    .chain(std::iter::repeat_n(1, p.len()))
                    .collect()
            })
            .collect();
        assert_eq!(tensor_rows(&input.input_ids), want_ids);
        assert_eq!(tensor_rows(&input.attention_mask), want_mask);
        assert!(
            tensor_rows(&input.token_type_ids)
                .iter()
                .flatten()
                .all(|&t| t == 0)
        );
        assert_eq!(input.pixel_values.size(), vec![7, 3, 32, 32]);
    }

    /// The prompts transformers built for `generate` (`single`, and `batch`
    /// with left padding) and the decoded generations.
    #[test]
    fn encode_prompts_and_decode_match_golden_generation() {
        let g = golden();
        let p = tiny();
        let dir = root().join("tests/golden/data/valid");
        for case in ["single", "batch"] {
            let want = &g["generation"][case];
            let strings = |k: &str| -> Vec<String> {
                want[k]
                    .as_array()
                    .expect(k)
                    .iter()
                    .map(|v| v.as_str().expect(k).to_owned())
                    .collect()
            };
            let images: Vec<RgbImage> = strings("images")
                .iter()
                .map(|f| load_image(&dir.join(f)).expect("image"))
                .collect();
            let input = p
                .encode_prompts(&images, &strings("prefixes"))
                .expect("encode");
            assert_eq!(
                tensor_rows(&input.input_ids),
                rows(&want["input_ids"]),
                "{case} input_ids"
            );
            assert_eq!(
                tensor_rows(&input.attention_mask),
                rows(&want["attention_mask"]),
                "{case} attention_mask"
            );
            assert_eq!(
                tensor_rows(&input.token_type_ids),
                rows(&want["token_type_ids"]),
                "{case} token_type_ids"
            );
            for (ids, text) in rows(&want["new_ids"]).iter().zip(strings("text")) {
                assert_eq!(p.decode(ids), text, "{case} decode");
            }
        }
    }

    #[test]
    fn truncation_cuts_the_suffix_and_its_eos() {
        let p = tiny();
        let image = RgbImage::new(8, 8);
        let ex = |suffix: &str| Example {
            image: image.clone(),
            prefix: "caption en".into(),
            suffix: suffix.into(),
        };
        let examples = [ex("a big red circle on a blue background."), ex("red")];
        let enc = p.encode_training(&examples, 3).expect("encode");
        assert_eq!(enc.truncated, 1);
        let ids = tensor_rows(&enc.input.input_ids);
        let labels = tensor_rows(enc.input.labels.as_ref().unwrap());
        // Prefix: 16 image tokens, <bos>, "caption", " en", "\n" = 20.
        assert_eq!(ids[0].len(), 23);
        assert_eq!(&ids[0][20..], &[325, 492, 485]);
        assert!(!ids[0].contains(&1), "a cut suffix loses <eos>");
        // "red" (536, no leading space) + <eos> fits, then padding.
        assert_eq!(&labels[1][20..], &[536, 1, -100]);
        assert!(matches!(
            p.encode_training(&examples, 0),
            Err(ProcessorError::ZeroSuffixLimit)
        ));
    }

    #[test]
    fn bad_batches_are_typed_errors() {
        let p = tiny().with_max_prefix_tokens(20);
        let img = RgbImage::new(4, 4);
        let long = Example {
            image: img.clone(),
            prefix: "answer en what color is the circle?".into(),
            suffix: "red".into(),
        };
        let err = p.encode_training(&[long], 8).expect_err("too long");
        assert!(
            matches!(
                err,
                ProcessorError::PrefixTooLong {
                    row: 0,
                    max: 20,
                    ..
                }
            ),
            "{err}"
        );
        let err = p
            .encode_prompts(
                std::slice::from_ref(&img),
                &["<image>caption en".to_owned()],
            )
            .expect_err("image token");
        assert!(
            matches!(err, ProcessorError::ImageTokenInText { row: 0, .. }),
            "{err}"
        );
        let err = p
            .encode_prompts(&[img.clone(), img], &["a".to_owned()])
            .expect_err("mismatch");
        assert!(
            matches!(
                err,
                ProcessorError::LengthMismatch {
                    images: 2,
                    texts: 1
                }
            ),
            "{err}"
        );
        assert!(matches!(
            p.encode_training(&[], 8),
            Err(ProcessorError::EmptyBatch)
        ));
    }

    #[test]
    fn tokenizer_without_image_token_is_a_clear_error() {
        let src = root().join("assets/tiny-tokenizer");
        let dir = tempfile::tempdir().expect("tempdir");
        let json = std::fs::read_to_string(src.join("tokenizer.json")).expect("tokenizer.json");
        std::fs::write(
            dir.path().join("tokenizer.json"),
            json.replace("<image>", "<img>"),
        )
        .expect("write");
        std::fs::copy(
            root().join("tests/golden/checkpoints/f32/preprocessor_config.json"),
            dir.path().join("preprocessor_config.json"),
        )
        .expect("copy");
        let err = Processor::from_dir(dir.path()).expect_err("no <image>");
        let msg = err.to_string();
        assert!(
            matches!(err, ProcessorError::MissingToken { role: "image", .. }),
            "{msg}"
        );
        assert!(
            msg.contains("tokenizer.json") && msg.contains("<image>"),
            "{msg}"
        );
    }

    #[test]
    fn missing_or_invalid_tokenizer_names_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let err = Processor::from_dir(dir.path()).expect_err("missing");
        assert!(err.to_string().contains("tokenizer.json"), "{err}");
        std::fs::write(dir.path().join("tokenizer.json"), "{ not json").expect("write");
        let err = Processor::from_dir(dir.path()).expect_err("invalid");
        assert!(matches!(err, ProcessorError::Tokenizer { .. }));
        assert!(err.to_string().contains("tokenizer.json"), "{err}");
    }
}

//! Text lengths for the memory estimate: measured from the dataset when it
//! is present, else the spec's maxima.

use std::io::{BufRead, BufReader};
use std::path::Path;

use crate::data::annotations::{self, Split};

use crate::spec::GENERATED_PREFIX;
use crate::spec::schema::Data;

/// Bytes per token assumed before a tokenizer is at hand: Gemma's
/// SentencePiece averages ~4 bytes per token on English and fewer on JSON
/// and numbers; 3 errs on the side of more tokens (more memory).
const BYTES_PER_TOKEN: usize = 3;
/// `<bos>` and the `"\n"` separator after the prefix.
const PREFIX_SPECIAL_TOKENS: u32 = 2;
/// `<eos>` after the suffix.
const SUFFIX_SPECIAL_TOKENS: u32 = 1;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TextLengths {
    /// Longest prefix in tokens, with `<bos>` and `"\n"`.
    pub prefix_tokens: u32,
    /// Longest suffix in tokens, with `<eos>`, capped at the spec's maximum.
    pub suffix_tokens: u32,
    /// Training examples, when the dataset could be read.
    pub train_examples: Option<u64>,
    /// Whether the lengths come from the dataset (else the spec maxima).
    pub measured: bool,
}

impl TextLengths {
    pub fn from_spec(data: &Data) -> Self {
        TextLengths {
            prefix_tokens: data.max_prefix_tokens + PREFIX_SPECIAL_TOKENS,
            suffix_tokens: data.max_suffix_tokens + SUFFIX_SPECIAL_TOKENS,
            train_examples: None,
            measured: false,
        }
    }
}

/// Measures the training split; falls back to the spec maxima when the
/// dataset is absent (validating it is `run`'s job, not the plan's).
pub fn measure(data: &Data) -> TextLengths {
    let fallback = TextLengths::from_spec(data);
    if data.path.starts_with(GENERATED_PREFIX) {
        return fallback;
    }
    let Some((file, _)) = annotations::locate(Path::new(&data.path), Split::Train) else {
        return fallback;
    };
    let Ok(handle) = std::fs::File::open(&file) else {
        return fallback;
    };
    let (mut prefix, mut suffix, mut examples) = (0usize, 0usize, 0u64);
    for line in BufReader::new(handle).lines().map_while(Result::ok) {
        let Ok(row) = serde_json::from_str::<serde_json::Value>(&line) else {
            continue;
        };
        let len = |key: &str| row.get(key).and_then(|v| v.as_str()).map_or(0, str::len);
        prefix = prefix.max(len("prefix"));
        suffix = suffix.max(len("suffix"));
        examples += 1;
    }
    if examples == 0 {
        return fallback;
    }
    let tokens = |bytes: usize| bytes.div_ceil(BYTES_PER_TOKEN) as u32;
    TextLengths {
        prefix_tokens: tokens(prefix).min(data.max_prefix_tokens) + PREFIX_SPECIAL_TOKENS,
        suffix_tokens: tokens(suffix).min(data.max_suffix_tokens) + SUFFIX_SPECIAL_TOKENS,
        train_examples: Some(examples),
        measured: true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::schema::Task;

    fn data(path: &Path) -> Data {
        Data {
            path: path.display().to_string(),
            task: Task::Auto,
            max_prefix_tokens: 64,
            max_suffix_tokens: 10,
            skip_invalid: false,
        }
    }

    #[test]
    fn measures_a_roboflow_export_and_caps_at_the_maxima() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("train")).unwrap();
        std::fs::write(
            dir.path().join("train/annotations.jsonl"),
            "{\"image\":\"a.jpg\",\"prefix\":\"extract\",\"suffix\":\"short\"}\n\
             {\"image\":\"b.jpg\",\"prefix\":\"x\",\"suffix\":\"a much longer suffix than ten tokens allow\"}\n",
        )
        .unwrap();
        let lengths = measure(&data(dir.path()));
        assert!(lengths.measured);
        assert_eq!(lengths.train_examples, Some(2));
        assert_eq!(lengths.prefix_tokens, 3 + 2); // "extract" = 7 bytes → 3 tokens
        assert_eq!(lengths.suffix_tokens, 10 + 1); // capped
    }

    #[test]
    fn absent_dataset_uses_the_spec_maxima() {
        let lengths = measure(&data(Path::new("/nonexistent/dataset")));
        assert!(!lengths.measured);
        assert_eq!((lengths.prefix_tokens, lengths.suffix_tokens), (66, 11));
    }
}

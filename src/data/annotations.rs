//! Reading one split of a Roboflow PaliGemma JSONL export: `<root>/<split>/
//! annotations.jsonl` with the images beside it, or the flat layout
//! `<root>/_annotations.<split>.jsonl` with the images in `<root>`. Each line
//! is `{"image": ..., "prefix": ..., "suffix": ...}`; errors name `file:line`.

use std::fmt;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Split {
    Train,
    Valid,
    Test,
}

impl Split {
    pub const ALL: [Split; 3] = [Split::Train, Split::Valid, Split::Test];

    pub fn as_str(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Valid => "valid",
            Split::Test => "test",
        }
    }
}

impl fmt::Display for Split {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Split {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "train" => Ok(Split::Train),
            "valid" | "validation" | "val" => Ok(Split::Valid),
            "test" => Ok(Split::Test),
            other => Err(format!("unknown split `{other}`: use train, valid or test")),
        }
    }
}

/// One annotation line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    /// The image, resolved against the split's image folder.
    pub image: PathBuf,
    pub prefix: String,
    pub suffix: String,
    /// The annotations file it came from, and its 1-based line there.
    pub file: PathBuf,
    pub line: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error(
        "{}: no {split} split: expected {}/{split}/annotations.jsonl or {}/_annotations.{split}.jsonl",
        root.display(), root.display(), root.display()
    )]
    NoSplit { root: PathBuf, split: Split },
    #[error("cannot read {}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}:{line}: {message}", file.display())]
    Line {
        file: PathBuf,
        line: usize,
        message: String,
    },
    #[error(
        "{}: the {split} split has no {}examples{}: {}\n  help: add examples to it, one {{\"image\": ..., \"prefix\": ..., \"suffix\": ...}} object per line",
        file.display(),
        if *skipped > 0 { "valid " } else { "" },
        if *skipped > 0 { format!(" ({skipped} invalid lines were skipped)") } else { String::new() },
        if *split == Split::Train { "training would run no step and save an untrained adapter" } else { "there is nothing to evaluate" },
    )]
    EmptySplit {
        file: PathBuf,
        split: Split,
        /// Invalid lines skipped with `data.skip_invalid`.
        skipped: usize,
    },
    #[error(
        "{bad} of {total} dataset lines are invalid; the first:\n{first}\n  help: fix them, or set data.skip_invalid = true to skip (and count) them"
    )]
    Invalid {
        bad: usize,
        total: usize,
        first: String,
    },
}

/// The annotations file of a split and the folder its images live in. A
/// single `.jsonl` file (images beside it) is a training split alone.
pub fn locate(root: &Path, split: Split) -> Option<(PathBuf, PathBuf)> {
    if root
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("jsonl"))
    {
        return (split == Split::Train && root.is_file()).then(|| {
            (
                root.to_owned(),
                root.parent().unwrap_or(Path::new(".")).to_owned(),
            )
        });
    }
    let nested = root.join(split.as_str()).join("annotations.jsonl");
    if nested.is_file() {
        return Some((nested, root.join(split.as_str())));
    }
    let flat = root.join(format!("_annotations.{split}.jsonl"));
    flat.is_file().then(|| (flat, root.to_owned()))
}

/// Reads and checks every line of a split (JSON, the three string keys),
/// failing at the first bad line. Images are not opened here.
pub fn read_split(root: &Path, split: Split) -> Result<Vec<Record>, DataError> {
    read_split_lines(root, split)?.into_iter().collect()
}

/// Every non-empty line of a split, each parsed or its error (`file:line`).
pub fn read_split_lines(
    root: &Path,
    split: Split,
) -> Result<Vec<Result<Record, DataError>>, DataError> {
    let (file, images) = locate(root, split).ok_or_else(|| DataError::NoSplit {
        root: root.to_owned(),
        split,
    })?;
    let handle = std::fs::File::open(&file).map_err(|source| DataError::Io {
        path: file.clone(),
        source,
    })?;
    let mut lines = Vec::new();
    for (index, line) in BufReader::new(handle).lines().enumerate() {
        let text = line.map_err(|source| DataError::Io {
            path: file.clone(),
            source,
        })?;
        if text.trim().is_empty() {
            continue;
        }
        lines.push(parse_line(&text, &file, index + 1, &images));
    }
    Ok(lines)
}

fn parse_line(text: &str, file: &Path, line: usize, images: &Path) -> Result<Record, DataError> {
    let bad = |message: String| DataError::Line {
        file: file.to_owned(),
        line,
        message,
    };
    let row: serde_json::Value =
        serde_json::from_str(text).map_err(|e| bad(format!("not valid JSON: {e}")))?;
    let field = |key: &str| -> Result<String, DataError> {
        match row.get(key) {
            Some(serde_json::Value::String(s)) => Ok(s.clone()),
            Some(other) => Err(bad(format!("`{key}` must be a string, found {other}"))),
            None => Err(bad(format!(
                "missing key `{key}` (each line needs \"image\", \"prefix\" and \"suffix\")"
            ))),
        }
    };
    Ok(Record {
        image: images.join(field("image")?),
        prefix: field("prefix")?,
        suffix: field("suffix")?,
        file: file.to_owned(),
        line,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_both_layouts() {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir(root.path().join("valid")).unwrap();
        std::fs::write(
            root.path().join("valid/annotations.jsonl"),
            "{\"image\":\"a.png\",\"prefix\":\"p\",\"suffix\":\"s\"}\n\n",
        )
        .unwrap();
        std::fs::write(
            root.path().join("_annotations.train.jsonl"),
            "{\"image\":\"b.png\",\"prefix\":\"p\",\"suffix\":\"s\"}\n",
        )
        .unwrap();
        let valid = read_split(root.path(), Split::Valid).unwrap();
        assert_eq!(valid.len(), 1);
        assert_eq!(valid[0].image, root.path().join("valid/a.png"));
        let train = read_split(root.path(), Split::Train).unwrap();
        assert_eq!(train[0].image, root.path().join("b.png"));
        assert!(matches!(
            read_split(root.path(), Split::Test),
            Err(DataError::NoSplit { .. })
        ));
        // A single .jsonl file is a training split with its images beside it.
        let single = root.path().join("_annotations.train.jsonl");
        let train = read_split(&single, Split::Train).unwrap();
        assert_eq!(train[0].image, root.path().join("b.png"));
        assert!(matches!(
            read_split(&single, Split::Valid),
            Err(DataError::NoSplit { .. })
        ));
    }

    #[test]
    fn bad_lines_name_file_and_line() {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir(root.path().join("train")).unwrap();
        std::fs::write(
            root.path().join("train/annotations.jsonl"),
            "{\"image\":\"a.png\",\"prefix\":\"p\",\"suffix\":\"s\"}\n{\"image\":\"b.png\",\"prefix\":3,\"suffix\":\"s\"}\n",
        )
        .unwrap();
        let err = read_split(root.path(), Split::Train)
            .unwrap_err()
            .to_string();
        assert!(err.contains("annotations.jsonl:2"), "{err}");
        assert!(err.contains("`prefix` must be a string"), "{err}");
    }
}

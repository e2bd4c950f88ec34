//! Per-example predictions of one evaluation: gzip-compressed JSON lines in
//! the trial folder (`TrialDir::predictions`), one [`ExamplePrediction`] a
//! line, in the split's file order. The worker writes them after every
//! evaluation with generation; the store indexes the files; `show
//! --predictions`, the report's gallery and its bootstrap intervals read
//! them.
//!
//! ```text
//! write(&trial.predictions("val", 40), &examples)?;
//! let examples = read(&trial.predictions("val", 40))?;
//! ```

use std::fs::File;
use std::io::{BufRead as _, BufReader, BufWriter, Write as _};
use std::path::{Path, PathBuf};

use flate2::Compression;
use flate2::read::GzDecoder;
use flate2::write::GzEncoder;
use serde::{Deserialize, Serialize};

/// One validation or test example as the model saw and answered it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ExamplePrediction {
    /// 0-based position in the split (the annotations file's order).
    pub index: usize,
    /// The image file, as resolved when the trial ran.
    pub image: PathBuf,
    pub prefix: String,
    /// The annotated suffix.
    pub reference: String,
    /// The decoded generation.
    pub prediction: String,
    /// The per-example metric (see `metrics::per_example`), under the name
    /// in `metric`; `None` when it is undefined for this example.
    pub score: Option<f64>,
    pub metric: String,
}

#[derive(Debug, thiserror::Error)]
pub enum PredictionsError {
    #[error("cannot write {}: {source}", path.display())]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}:{line}: not a prediction line: {source}", path.display())]
    Parse {
        path: PathBuf,
        line: usize,
        source: serde_json::Error,
    },
}

/// Writes `examples` to `path` (its folder created), replacing it through
/// a temporary file so that a reader never sees half a file.
pub fn write(path: &Path, examples: &[ExamplePrediction]) -> Result<(), PredictionsError> {
    let err = |source| PredictionsError::Write {
        path: path.to_owned(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(err)?;
    }
    let partial = path.with_extension("gz.partial");
    let file = File::create(&partial).map_err(err)?;
    let mut out = GzEncoder::new(BufWriter::new(file), Compression::default());
    for example in examples {
        serde_json::to_writer(&mut out, example).map_err(|e| err(e.into()))?;
        out.write_all(b"\n").map_err(err)?;
    }
    let mut inner = out.finish().map_err(err)?;
    inner.flush().map_err(err)?;
    inner
        .into_inner()
        .map_err(|e| err(e.into_error()))?
        .sync_all()
        .map_err(err)?;
    std::fs::rename(&partial, path).map_err(err)
}

/// Reads every example of `path`.
pub fn read(path: &Path) -> Result<Vec<ExamplePrediction>, PredictionsError> {
    let read_err = |source| PredictionsError::Read {
        path: path.to_owned(),
        source,
    };
    let file = File::open(path).map_err(read_err)?;
    let mut examples = Vec::new();
    for (i, line) in BufReader::new(GzDecoder::new(file)).lines().enumerate() {
        let line = line.map_err(read_err)?;
        if line.trim().is_empty() {
            continue;
        }
        examples.push(
            serde_json::from_str(&line).map_err(|source| PredictionsError::Parse {
                path: path.to_owned(),
                line: i + 1,
                source,
            })?,
        );
    }
    Ok(examples)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn example(index: usize, score: Option<f64>) -> ExamplePrediction {
        ExamplePrediction {
            index,
            image: PathBuf::from(format!("valid/{index}.jpg")),
            prefix: "detect pallet".into(),
            reference: "<loc0001><loc0002><loc0100><loc0200> pallet".into(),
            prediction: "<loc0001><loc0002><loc0090><loc0200> pallet".into(),
            score,
            metric: "box_f1".into(),
        }
    }

    #[test]
    fn round_trips_compressed_and_leaves_no_partial_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir
            .path()
            .join("predictions")
            .join("val-step00000040.jsonl.gz");
        let examples: Vec<_> = (0..50)
            .map(|i| example(i, (i % 3 != 0).then_some(0.5)))
            .collect();
        write(&path, &examples).unwrap();
        assert_eq!(read(&path).unwrap(), examples);
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(&bytes[..2], &[0x1f, 0x8b], "gzip magic");
        let plain: usize = examples
            .iter()
            .map(|e| serde_json::to_string(e).unwrap().len() + 1)
            .sum();
        assert!(
            bytes.len() * 4 < plain,
            "{} bytes for {plain} plain",
            bytes.len()
        );
        assert_eq!(
            std::fs::read_dir(path.parent().unwrap()).unwrap().count(),
            1
        );
    }

    #[test]
    fn a_bad_line_names_its_file_and_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.jsonl.gz");
        let mut out = GzEncoder::new(File::create(&path).unwrap(), Compression::default());
        writeln!(out, "{}", serde_json::to_string(&example(0, None)).unwrap()).unwrap();
        writeln!(out, "{{\"index\": 1}}").unwrap();
        out.finish().unwrap();
        let message = read(&path).unwrap_err().to_string();
        assert!(message.contains("p.jsonl.gz:2:"), "{message}");
    }
}

//! Checking a whole dataset before training starts: every line parses,
//! every image exists and decodes, every suffix fits the task; and the
//! dataset's fingerprint (sha256 over annotations and image bytes).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::metrics::detection::parse_detections;
use crate::metrics::task::Task;
use crate::model::preprocess::image::decode_image;

use super::annotations::{DataError, Record, Split, locate, read_split_lines};

/// Invalid lines shown in the error before "and N more".
const SHOWN_ERRORS: usize = 5;

/// A dataset that passed the checks (or had its bad lines skipped).
#[derive(Clone, Debug)]
pub struct CheckedDataset {
    pub root: PathBuf,
    pub task: Task,
    /// Valid records per split present (train always; valid and test when
    /// the export has them).
    pub splits: BTreeMap<Split, Vec<Record>>,
    /// Lines skipped with `skip_invalid`.
    pub skipped: usize,
    /// sha256 (hex) over each split's annotations file and image bytes.
    pub fingerprint: String,
}

impl CheckedDataset {
    pub fn split(&self, split: Split) -> &[Record] {
        self.splits.get(&split).map_or(&[], Vec::as_slice)
    }
}

/// Checks every split; `task` `None` means guess it from the train suffixes.
/// A train split without a usable example is an error: training would run
/// zero steps and save an untrained adapter.
pub fn check(
    root: &Path,
    task: Option<Task>,
    skip_invalid: bool,
) -> Result<CheckedDataset, DataError> {
    let mut hasher = Sha256::new();
    let mut parsed: BTreeMap<Split, Vec<Record>> = BTreeMap::new();
    let mut errors: Vec<DataError> = Vec::new();
    let mut total = 0;
    for split in Split::ALL {
        let Some((file, _)) = locate(root, split) else {
            if split == Split::Train {
                return Err(DataError::NoSplit {
                    root: root.to_owned(),
                    split,
                });
            }
            continue;
        };
        let bytes = std::fs::read(&file).map_err(|source| DataError::Io {
            path: file.clone(),
            source,
        })?;
        hasher.update(split.as_str().as_bytes());
        hasher.update(&bytes);
        parsed.insert(split, read_lines(root, split, &mut total, &mut errors)?);
    }

    let task = task.unwrap_or_else(|| guess_task(parsed.get(&Split::Train)));

    let mut splits = BTreeMap::new();
    for (split, records) in parsed {
        let file = locate(root, split).map(|(f, _)| f).unwrap_or_default();
        let kept = check_records(records, task, &file, &mut hasher, &mut errors);
        splits.insert(split, kept);
    }

    let skipped = errors.len();
    if skipped > 0 && !skip_invalid {
        return Err(invalid(&errors, total));
    }
    if splits.get(&Split::Train).is_none_or(Vec::is_empty) {
        let file = locate(root, Split::Train)
            .map(|(f, _)| f)
            .unwrap_or_default();
        return Err(DataError::EmptySplit {
            file,
            split: Split::Train,
            skipped,
        });
    }
    let fingerprint = hasher
        .finalize()
        .iter()
        .fold(String::with_capacity(64), |mut s, b| {
            use std::fmt::Write as _;
            let _ = write!(s, "{b:02x}");
            s
        });
    Ok(CheckedDataset {
        root: root.to_owned(),
        task,
        splits,
        skipped,
        fingerprint,
    })
}

/// Checks one split as [`check`] checks each (what `eval` reads), except
/// that JSON references need not be JSON; `task` `None` means guess it
/// from this split's suffixes. Returns the records and the task. An empty
/// split is an error.
pub fn check_split(
    root: &Path,
    split: Split,
    task: Option<Task>,
) -> Result<(Vec<Record>, Task), DataError> {
    let mut errors = Vec::new();
    let mut total = 0;
    let records = read_lines(root, split, &mut total, &mut errors)?;
    let task = task.unwrap_or_else(|| guess_task(Some(&records)));
    let file = locate(root, split).map(|(f, _)| f).unwrap_or_default();
    // A reference that is not JSON is a case the JSON metrics score (as a
    // string); a malformed detection reference would be dropped unscored.
    let suffixes = if task == Task::Json { Task::Text } else { task };
    let kept = check_records(records, suffixes, &file, &mut Sha256::new(), &mut errors);
    if !errors.is_empty() {
        return Err(invalid(&errors, total));
    }
    if kept.is_empty() {
        return Err(DataError::EmptySplit {
            file,
            split,
            skipped: 0,
        });
    }
    Ok((kept, task))
}

/// The parsed lines of a split; bad lines go to `errors`.
fn read_lines(
    root: &Path,
    split: Split,
    total: &mut usize,
    errors: &mut Vec<DataError>,
) -> Result<Vec<Record>, DataError> {
    let mut records = Vec::new();
    for line in read_split_lines(root, split)? {
        *total += 1;
        match line {
            Ok(record) => records.push(record),
            Err(e) => errors.push(e),
        }
    }
    Ok(records)
}

fn guess_task(records: Option<&Vec<Record>>) -> Task {
    let suffixes: Vec<&str> = records
        .map(|r| r.iter().map(|r| r.suffix.as_str()).collect())
        .unwrap_or_default();
    Task::guess(&suffixes)
}

/// The records whose image and suffix pass; the others' errors go to
/// `errors`.
fn check_records(
    records: Vec<Record>,
    task: Task,
    file: &Path,
    hasher: &mut Sha256,
    errors: &mut Vec<DataError>,
) -> Vec<Record> {
    let mut kept = Vec::new();
    for record in records {
        match check_record(&record, task, file, hasher) {
            Ok(()) => kept.push(record),
            Err(e) => errors.push(e),
        }
    }
    kept
}

/// The error listing the first few bad lines of `total`.
fn invalid(errors: &[DataError], total: usize) -> DataError {
    let bad = errors.len();
    let mut first: Vec<String> = errors
        .iter()
        .take(SHOWN_ERRORS)
        .map(|e| format!("  {e}"))
        .collect();
    if bad > SHOWN_ERRORS {
        first.push(format!("  … and {} more", bad - SHOWN_ERRORS));
    }
    DataError::Invalid {
        bad,
        total,
        first: first.join("\n"),
    }
}

/// The image exists and decodes (its bytes join the fingerprint) and the
/// suffix parses for the task.
fn check_record(
    record: &Record,
    task: Task,
    file: &Path,
    hasher: &mut Sha256,
) -> Result<(), DataError> {
    let bad = |message: String| DataError::Line {
        file: file.to_owned(),
        line: record.line,
        message,
    };
    let bytes = std::fs::read(&record.image)
        .map_err(|e| bad(format!("image {}: {e}", record.image.display())))?;
    hasher.update(&bytes);
    decode_image(&bytes).map_err(|e| {
        bad(format!(
            "image {} does not decode: {e}",
            record.image.display()
        ))
    })?;
    match task {
        Task::Detect | Task::Segment => {
            let parsed = parse_detections(&record.suffix);
            if let Some(error) = parsed.errors.first() {
                return Err(bad(format!(
                    "detection suffix does not parse ({error}): expected `<locYMIN><locXMIN><locYMAX><locXMAX> label` objects joined by ` ; `"
                )));
            }
            if task == Task::Segment && parsed.objects.iter().any(|o| o.seg.is_none()) {
                return Err(bad(
                    "segmentation suffix needs 4 <locNNNN> then 16 <segNNN> tokens before each label".into(),
                ));
            }
        }
        Task::Json => {
            serde_json::from_str::<serde_json::Value>(&record.suffix)
                .map_err(|e| bad(format!("the suffix is not JSON ({e}) but the task is json")))?;
        }
        Task::Text => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::synthetic::{SyntheticOptions, SyntheticTask, write};

    fn dataset(task: SyntheticTask) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let options = SyntheticOptions {
            train: 5,
            valid: 2,
            test: 0,
            image_size: 32,
            ..SyntheticOptions::standard(task)
        };
        write(dir.path(), &options).unwrap();
        dir
    }

    fn append(dir: &Path, line: &str) {
        let file = dir.join("train/annotations.jsonl");
        let mut text = std::fs::read_to_string(&file).unwrap();
        text.push_str(line);
        text.push('\n');
        std::fs::write(file, text).unwrap();
    }

    #[test]
    fn a_good_dataset_passes_with_its_task_guessed() {
        let dir = dataset(SyntheticTask::Detect);
        let checked = check(dir.path(), None, false).unwrap();
        assert_eq!(checked.task, Task::Detect);
        assert_eq!(checked.split(Split::Train).len(), 5);
        assert_eq!(checked.fingerprint.len(), 64);
    }

    #[test]
    fn each_class_of_bad_line_names_file_and_line() {
        let cases = [
            ("not json", "not valid JSON"),
            (
                r#"{"image": "train_0000.png", "prefix": "p"}"#,
                "missing key `suffix`",
            ),
            (
                r#"{"image": "nope.png", "prefix": "p", "suffix": "{}"}"#,
                "nope.png",
            ),
            (
                r#"{"image": "annotations.jsonl", "prefix": "p", "suffix": "{}"}"#,
                "does not decode",
            ),
            (
                r#"{"image": "train_0000.png", "prefix": "p", "suffix": "{oops"}"#,
                "not JSON",
            ),
        ];
        for (line, expected) in cases {
            let dir = dataset(SyntheticTask::Json);
            append(dir.path(), line);
            let err = check(dir.path(), Some(Task::Json), false)
                .unwrap_err()
                .to_string();
            assert!(err.contains("annotations.jsonl:6"), "{err}");
            assert!(err.contains(expected), "{line}: {err}");
            assert!(err.contains("1 of 8"), "{err}");
        }
    }

    #[test]
    fn bad_detection_suffixes_are_rejected_and_skip_invalid_skips() {
        let dir = dataset(SyntheticTask::Detect);
        append(
            dir.path(),
            r#"{"image": "train_0000.png", "prefix": "detect circle", "suffix": "<loc0001><loc0002> circle"}"#,
        );
        let err = check(dir.path(), Some(Task::Detect), false)
            .unwrap_err()
            .to_string();
        assert!(err.contains("detection suffix does not parse"), "{err}");
        let checked = check(dir.path(), Some(Task::Detect), true).unwrap();
        assert_eq!(checked.skipped, 1);
        assert_eq!(checked.split(Split::Train).len(), 5);
    }

    #[test]
    fn an_empty_train_split_is_an_error_and_an_empty_valid_split_is_not() {
        let dir = dataset(SyntheticTask::Json);
        std::fs::write(dir.path().join("valid/annotations.jsonl"), "").unwrap();
        let checked = check(dir.path(), None, false).unwrap();
        assert!(checked.splits.contains_key(&Split::Valid));
        assert!(checked.split(Split::Valid).is_empty());

        std::fs::write(dir.path().join("train/annotations.jsonl"), "\n").unwrap();
        let err = check(dir.path(), None, false).unwrap_err();
        assert!(matches!(
            err,
            DataError::EmptySplit {
                split: Split::Train,
                ..
            }
        ));
        let text = err.to_string();
        assert!(text.contains("train/annotations.jsonl"), "{text}");
        assert!(text.contains("no step"), "{text}");

        // Every line skipped as invalid leaves nothing to train on either.
        std::fs::write(dir.path().join("train/annotations.jsonl"), "oops\n").unwrap();
        let err = check(dir.path(), None, true).unwrap_err().to_string();
        assert!(err.contains("1 invalid lines were skipped"), "{err}");
    }

    #[test]
    fn one_split_is_checked_like_the_whole_dataset() {
        let dir = dataset(SyntheticTask::Detect);
        let (records, task) = check_split(dir.path(), Split::Valid, None).unwrap();
        assert_eq!((records.len(), task), (2, Task::Detect));
        let file = dir.path().join("valid/annotations.jsonl");
        let mut text = std::fs::read_to_string(&file).unwrap();
        text.push_str(
            r#"{"image": "valid_0000.png", "prefix": "p", "suffix": "<loc0256><loc12><loc0784><loc0736> square"}"#,
        );
        std::fs::write(&file, text).unwrap();
        let err = check_split(dir.path(), Split::Valid, Some(Task::Detect))
            .unwrap_err()
            .to_string();
        assert!(err.contains("annotations.jsonl:3"), "{err}");
        assert!(err.contains("<loc12>"), "{err}");
        std::fs::write(&file, "").unwrap();
        assert!(matches!(
            check_split(dir.path(), Split::Valid, None),
            Err(DataError::EmptySplit {
                split: Split::Valid,
                ..
            })
        ));
    }

    #[test]
    fn the_fingerprint_changes_with_any_image_byte() {
        let dir = dataset(SyntheticTask::Json);
        let before = check(dir.path(), None, false).unwrap().fingerprint;
        assert_eq!(before, check(dir.path(), None, false).unwrap().fingerprint);
        let image = dir.path().join("valid/valid_0001.png");
        let mut img = image::open(&image).unwrap().to_rgb8();
        img.put_pixel(0, 0, image::Rgb([0, 0, 0]));
        img.save(&image).unwrap();
        assert_ne!(before, check(dir.path(), None, false).unwrap().fingerprint);
    }
}

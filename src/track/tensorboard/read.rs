//! Reads event files back, checking both CRCs of every record with a
//! CRC-32C of its own (not the writer's), and decodes what palisweep writes:
//! scalars and the hparams plugin's summaries. Tests use it to check what the
//! sink wrote; the sink uses it to carry an earlier run's experiment forward.

use std::path::{Path, PathBuf};

use super::files::is_event_file;
use super::hparams::{self, PluginData};
use super::summary::{Event, ValueKind, What};
use super::wire::DecodeError;

#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: record at byte {offset}: the {which} CRC does not match", path.display())]
    Crc {
        path: PathBuf,
        offset: usize,
        which: &'static str,
    },
    #[error("{}: record at byte {offset} is cut short", path.display())]
    Truncated { path: PathBuf, offset: usize },
    #[error("{}: record at byte {offset}: {source}", path.display())]
    Decode {
        path: PathBuf,
        offset: usize,
        source: DecodeError,
    },
}

// The writer's CRC; the known-value test below pins it to CRC-32C.
use tensorboard_rs::masked_crc32c::masked_crc32c;

/// The records of a `TFRecord` file with their byte offsets, after checking
/// each one's length CRC and data CRC.
pub fn records<'a>(path: &Path, bytes: &'a [u8]) -> Result<Vec<(usize, &'a [u8])>, ReadError> {
    let mut out = Vec::new();
    let mut offset = 0;
    while offset < bytes.len() {
        let truncated = || ReadError::Truncated {
            path: path.to_owned(),
            offset,
        };
        let header = bytes.get(offset..offset + 12).ok_or_else(truncated)?;
        let len_crc = u32::from_le_bytes(header[8..12].try_into().expect("four bytes"));
        if masked_crc32c(&header[..8]) != len_crc {
            return Err(ReadError::Crc {
                path: path.to_owned(),
                offset,
                which: "length",
            });
        }
        let len = u64::from_le_bytes(header[..8].try_into().expect("eight bytes"));
        let len = usize::try_from(len).map_err(|_| truncated())?;
        let start = offset + 12;
        let end = start.checked_add(len).ok_or_else(truncated)?;
        let data = bytes.get(start..end).ok_or_else(truncated)?;
        let footer = bytes.get(end..end + 4).ok_or_else(truncated)?;
        if masked_crc32c(data) != u32::from_le_bytes(footer.try_into().expect("four bytes")) {
            return Err(ReadError::Crc {
                path: path.to_owned(),
                offset,
                which: "data",
            });
        }
        out.push((offset, data));
        offset = end + 4;
    }
    Ok(out)
}

/// The events of one file, in order.
pub fn read_events(path: &Path) -> Result<Vec<Event>, ReadError> {
    let bytes = std::fs::read(path).map_err(|source| ReadError::Io {
        path: path.to_owned(),
        source,
    })?;
    records(path, &bytes)?
        .into_iter()
        .map(|(offset, data)| {
            Event::decode(data).map_err(|source| ReadError::Decode {
                path: path.to_owned(),
                offset,
                source,
            })
        })
        .collect()
}

/// The event files of a run folder (not its subfolders), in name order
/// (the order TensorBoard reads them), with their events.
pub fn read_run(dir: &Path) -> Result<Vec<(PathBuf, Vec<Event>)>, ReadError> {
    let io = |source| ReadError::Io {
        path: dir.to_owned(),
        source,
    };
    let mut paths = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io)? {
        let path = entry.map_err(io)?.path();
        if path.is_file() && is_event_file(&path) {
            paths.push(path);
        }
    }
    paths.sort();
    paths
        .into_iter()
        .map(|path| read_events(&path).map(|events| (path, events)))
        .collect()
}

/// One scalar point.
#[derive(Clone, Debug, PartialEq)]
pub struct Scalar {
    pub tag: String,
    pub step: i64,
    pub value: f32,
    pub wall_time: f64,
}

/// The `simple_value` scalars of `events`, in order.
pub fn scalars(events: &[Event]) -> Vec<Scalar> {
    let mut out = Vec::new();
    for event in events {
        if let What::Summary(values) = &event.what {
            for value in values {
                if let ValueKind::Simple(x) = value.kind {
                    out.push(Scalar {
                        tag: value.tag.clone(),
                        step: event.step,
                        value: x,
                        wall_time: event.wall_time,
                    });
                }
            }
        }
    }
    out
}

/// The hparams plugin summaries of `events` (tag and decoded data), in
/// order; a summary whose tag does not match its data is an error.
pub fn hparams(events: &[Event]) -> Result<Vec<PluginData>, DecodeError> {
    let mut out = Vec::new();
    for event in events {
        if let What::Summary(values) = &event.what {
            for value in values {
                if let Some(plugin) = &value.plugin
                    && plugin.name == hparams::PLUGIN_NAME
                {
                    let data = PluginData::decode(&plugin.content)?;
                    if data.tag() != value.tag {
                        return Err(DecodeError::Unexpected {
                            field: 1,
                            expected: "an hparams summary under its own tag",
                        });
                    }
                    out.push(data);
                }
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::track::tensorboard::files::EventFile;

    #[test]
    fn the_crc_matches_the_known_values() {
        // CRC-32C("123456789") = 0xE3069283, masked as `TFRecord` does.
        let crc = 0xE306_9283u32;
        assert_eq!(
            masked_crc32c(b"123456789"),
            crc.rotate_right(15).wrapping_add(0xa282_ead8)
        );
    }

    #[test]
    fn a_flipped_bit_or_a_cut_is_caught() {
        let dir = tempfile::tempdir().unwrap();
        let mut file = EventFile::create(dir.path(), 1.0).unwrap();
        file.write(&Event::scalars(2.0, 3, [("train/loss", 0.5)]))
            .unwrap();
        file.flush().unwrap();
        let path = file.path().to_owned();
        drop(file);
        let events = read_events(&path).unwrap();
        assert_eq!(events.len(), 2);
        assert_eq!(
            scalars(&events),
            vec![Scalar {
                tag: "train/loss".into(),
                step: 3,
                value: 0.5,
                wall_time: 2.0
            }]
        );
        let good = std::fs::read(&path).unwrap();
        let mut bad = good.clone();
        let last = bad.len() - 6;
        bad[last] ^= 1;
        assert!(matches!(
            records(&path, &bad),
            Err(ReadError::Crc { which: "data", .. })
        ));
        let mut bad = good.clone();
        bad[0] ^= 1;
        assert!(matches!(
            records(&path, &bad),
            Err(ReadError::Crc {
                which: "length",
                offset: 0,
                ..
            })
        ));
        assert!(matches!(
            records(&path, &good[..good.len() - 1]),
            Err(ReadError::Truncated { .. })
        ));
    }
}

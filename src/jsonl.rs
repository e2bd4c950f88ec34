//! Append-only JSON-lines files that survive a writer dying mid-line (a
//! `kill -9`, a full disk): each line goes out in one `write`, a reader
//! drops a torn last line, and an appender cuts it off before adding more,
//! so a torn line never glues itself to the next one.

use std::fs::{File, OpenOptions};
use std::io::{Read as _, Seek as _, SeekFrom, Write as _};
use std::path::Path;

/// A last line that had no newline and was not a JSON value, dropped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TornLine {
    /// Its length in bytes.
    pub bytes: usize,
}

/// The lines of a file, with the torn last line (if any) left out.
#[derive(Clone, Debug, Default)]
pub struct Lines {
    /// Non-empty lines and their 1-based line numbers.
    pub lines: Vec<(usize, String)>,
    pub torn: Option<TornLine>,
}

/// Where a torn tail starts: the byte after the last newline, when what
/// follows it is not a whole JSON value (a complete line whose newline was
/// lost is kept).
fn torn_tail(bytes: &[u8]) -> Option<usize> {
    if bytes.is_empty() || bytes.ends_with(b"\n") {
        return None;
    }
    let start = bytes.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    let tail = bytes[start..].trim_ascii();
    (serde_json::from_slice::<serde_json::Value>(tail).is_err()).then_some(start)
}

/// Reads `path` (missing: no lines).
pub fn read(path: &Path) -> std::io::Result<Lines> {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Lines::default()),
        Err(e) => return Err(e),
    };
    let (kept, torn) = match torn_tail(&bytes) {
        Some(start) => (
            &bytes[..start],
            Some(TornLine {
                bytes: bytes.len() - start,
            }),
        ),
        None => (&bytes[..], None),
    };
    let kept = String::from_utf8_lossy(kept);
    let lines = kept
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| (i + 1, l.to_owned()))
        .collect();
    Ok(Lines { lines, torn })
}

/// Opens `path` for appending (creating it), first cutting off a torn last
/// line or ending a complete one that lost its newline. Returns what was cut.
pub fn open_append(path: &Path) -> std::io::Result<(File, Option<TornLine>)> {
    let mut file = OpenOptions::new()
        .read(true)
        .append(true)
        .create(true)
        .open(path)?;
    let len = file.metadata()?.len();
    let mut torn = None;
    if len > 0 {
        // Only the tail can be torn; a line is far below this.
        let window = len.min(1 << 20);
        file.seek(SeekFrom::Start(len - window))?;
        let mut tail = Vec::new();
        file.read_to_end(&mut tail)?;
        if !tail.ends_with(b"\n") {
            match torn_tail(&tail) {
                Some(start) if start > 0 || window == len => {
                    let cut = tail.len() - start;
                    file.set_len(len - cut as u64)?;
                    torn = Some(TornLine { bytes: cut });
                }
                _ => file.write_all(b"\n")?,
            }
        }
    }
    Ok((file, torn))
}

/// Appends `line` and its newline in one write.
pub fn append_line(file: &mut File, line: &str) -> std::io::Result<()> {
    let mut buffer = String::with_capacity(line.len() + 1);
    buffer.push_str(line);
    buffer.push('\n');
    file.write_all(buffer.as_bytes())?;
    file.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_torn_last_line_is_dropped_and_cut_before_the_next_append() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.jsonl");
        std::fs::write(&path, "{\"a\":1}\n{\"b\":2}\n{\"c\":").unwrap();
        let lines = read(&path).unwrap();
        assert_eq!(lines.lines.len(), 2);
        assert_eq!(lines.lines[1], (2, "{\"b\":2}".to_owned()));
        assert_eq!(lines.torn, Some(TornLine { bytes: 5 }));

        let (mut file, torn) = open_append(&path).unwrap();
        assert_eq!(torn, Some(TornLine { bytes: 5 }));
        append_line(&mut file, "{\"d\":4}").unwrap();
        drop(file);
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "{\"a\":1}\n{\"b\":2}\n{\"d\":4}\n"
        );
        assert_eq!(read(&path).unwrap().torn, None);
    }

    #[test]
    fn a_whole_line_that_lost_its_newline_is_kept_and_ended() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("attempts.jsonl");
        std::fs::write(&path, "{\"a\":1}").unwrap();
        assert_eq!(read(&path).unwrap().lines.len(), 1);
        let (mut file, torn) = open_append(&path).unwrap();
        assert_eq!(torn, None);
        append_line(&mut file, "{\"b\":2}").unwrap();
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "{\"a\":1}\n{\"b\":2}\n"
        );
        // A file that is nothing but a torn line is emptied.
        std::fs::write(&path, "{\"a\"").unwrap();
        let (_, torn) = open_append(&path).unwrap();
        assert_eq!(torn, Some(TornLine { bytes: 4 }));
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "");
        assert!(read(&dir.path().join("missing")).unwrap().lines.is_empty());
    }
}

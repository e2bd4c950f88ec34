//! Event files: `TFRecord` framing (through `tensorboard-rs`'s record writer,
//! which computes the masked CRC-32Cs) and the names of the files in a run.
//!
//! TensorBoard reads every file whose name contains `tfevents`; without
//! `--reload_multifile` its Python loader reads a run's files in name order
//! and then follows only the last. So the names sort the way they are
//! written: the session start (`…0000000000.palisweep.session_start`) before
//! the scalar files (`…<unix seconds>.<host>.<pid>.<n>`, one per attempt),
//! and the session end (`…9999999999.palisweep.session_end`) after them.
//! The two hparams files are rewritten whole (write, then rename); scalar
//! files are only ever created new and appended to.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use tensorboard_rs::record_writer::RecordWriter;

use super::summary::Event;

const PREFIX: &str = "events.out.tfevents";

/// The file in a trial's run with its session start summary.
pub fn session_start_path(run: &Path) -> PathBuf {
    run.join(format!("{PREFIX}.0000000000.palisweep.session_start"))
}

/// The file in a trial's run with its session end summary.
pub fn session_end_path(run: &Path) -> PathBuf {
    run.join(format!("{PREFIX}.9999999999.palisweep.session_end"))
}

/// The file in the sweep's `tb/` folder with the experiment summary.
pub fn experiment_path(tb: &Path) -> PathBuf {
    tb.join(format!("{PREFIX}.0000000000.palisweep.experiment"))
}

/// Whether TensorBoard would read `path` as an event file.
pub fn is_event_file(path: &Path) -> bool {
    path.file_name()
        .is_some_and(|n| n.to_string_lossy().contains("tfevents"))
}

/// Numbers files (and temporary files) created by this process.
static SEQUENCE: AtomicU64 = AtomicU64::new(0);

/// An event file being appended to. Records reach the OS on
/// [`EventFile::flush`] (and on drop).
pub struct EventFile {
    path: PathBuf,
    records: RecordWriter<BufWriter<File>>,
}

impl EventFile {
    /// Creates a new file in `dir` (and `dir`), named like TensorFlow's
    /// (`events.out.tfevents.<unix seconds>.<host>.<pid>.<n>`, `n` counting
    /// the files of this process so two within a second differ; an existing
    /// file is never overwritten), and writes the file-version event.
    pub fn create(dir: &Path, wall_time: f64) -> io::Result<Self> {
        fs::create_dir_all(dir)?;
        let secs = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let host = host_name();
        let pid = std::process::id();
        loop {
            let n = SEQUENCE.fetch_add(1, Ordering::Relaxed);
            let path = dir.join(format!("{PREFIX}.{secs:010}.{host}.{pid}.{n:06}"));
            match OpenOptions::new().write(true).create_new(true).open(&path) {
                Ok(file) => {
                    let mut out = EventFile {
                        path,
                        records: RecordWriter::new(BufWriter::new(file)),
                    };
                    out.write(&Event::file_version(wall_time))?;
                    return Ok(out);
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(e),
            }
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn write(&mut self, event: &Event) -> io::Result<()> {
        self.records.write(&event.encode())
    }

    pub fn flush(&mut self) -> io::Result<()> {
        self.records.flush()
    }
}

/// Writes the file-version event and `events` to `path`, replacing what was
/// there in one rename (a reader sees the old file or the new one).
pub fn replace(path: &Path, wall_time: f64, events: &[Event]) -> io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(dir)?;
    // No `tfevents` in the name: TensorBoard must not read a half-written file.
    let n = SEQUENCE.fetch_add(1, Ordering::Relaxed);
    let temp = dir.join(format!(".palisweep-{}-{n}.tmp", std::process::id()));
    let written = (|| {
        let file = File::create(&temp)?;
        let mut records = RecordWriter::new(BufWriter::new(file));
        records.write(&Event::file_version(wall_time).encode())?;
        for event in events {
            records.write(&event.encode())?;
        }
        records.flush()?;
        drop(records);
        fs::rename(&temp, path)
    })();
    if written.is_err() {
        let _ = fs::remove_file(&temp);
    }
    written
}

/// Removes `path` if it exists.
pub fn remove(path: &Path) -> io::Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// This machine's name as file names may hold it.
fn host_name() -> String {
    let name = fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .or_else(|| std::env::var("COMPUTERNAME").ok())
        .unwrap_or_default();
    let name: String = name
        .trim()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if name.is_empty() {
        "localhost".to_owned()
    } else {
        name
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names_are_unique_and_sort_in_writing_order() {
        let dir = tempfile::tempdir().unwrap();
        let a = EventFile::create(dir.path(), 0.0).unwrap();
        let b = EventFile::create(dir.path(), 0.0).unwrap();
        assert_ne!(a.path(), b.path());
        let start = session_start_path(dir.path());
        let end = session_end_path(dir.path());
        for scalars in [a.path(), b.path()] {
            assert!(is_event_file(scalars));
            assert!(start.as_path() < scalars && scalars < end.as_path());
        }
    }

    #[test]
    fn replace_leaves_no_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = session_end_path(dir.path());
        replace(&path, 1.0, &[]).unwrap();
        replace(&path, 2.0, &[]).unwrap();
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![path.file_name().unwrap().to_owned()]);
        remove(&path).unwrap();
        remove(&path).unwrap();
    }
}

//! One live attempt per trial folder: the worker holds an exclusive lock on
//! `<trial>/.lock` (an `flock`, released by the kernel when the process
//! dies, however it dies) and writes its pid and attempt into it, so that a
//! new `run` neither starts a second attempt beside a live one nor reads a
//! folder that is still being written, and can say who holds it.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read as _, Seek as _, SeekFrom, Write as _};
use std::path::{Path, PathBuf};

use crate::layout::TrialDir;

/// Who holds a trial folder.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Holder {
    pub pid: Option<u32>,
    pub attempt: Option<u32>,
}

impl std::fmt::Display for Holder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.pid, self.attempt) {
            (Some(pid), Some(attempt)) => write!(f, "worker pid {pid} (attempt {attempt})"),
            (Some(pid), None) => write!(f, "worker pid {pid}"),
            _ => f.write_str("a worker whose pid is unknown"),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TrialLockError {
    #[error("{} is held by {holder}: another attempt of this trial is still running", path.display())]
    Held { path: PathBuf, holder: Holder },
    #[error("cannot lock {}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// The lock of a running attempt; released when dropped (or the process ends).
#[derive(Debug)]
pub struct TrialLock {
    _file: File,
}

fn lock_path(dir: &TrialDir) -> PathBuf {
    dir.path().join(".lock")
}

fn open(path: &Path) -> Result<File, TrialLockError> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(|source| TrialLockError::Io {
            path: path.to_owned(),
            source,
        })
}

fn read_holder(file: &mut File) -> Holder {
    let mut text = String::new();
    let _ = file.read_to_string(&mut text);
    let mut words = text.split_whitespace();
    Holder {
        pid: words.next().and_then(|w| w.parse().ok()),
        attempt: words.next().and_then(|w| w.parse().ok()),
    }
}

/// Takes the trial's lock for `attempt` of this process, or says who holds it.
pub fn acquire(dir: &TrialDir, attempt: u32) -> Result<TrialLock, TrialLockError> {
    let path = lock_path(dir);
    let mut file = open(&path)?;
    match file.try_lock() {
        Ok(()) => {}
        Err(TryLockError::WouldBlock) => {
            return Err(TrialLockError::Held {
                holder: read_holder(&mut file),
                path,
            });
        }
        // A file system without locks (some network mounts): run unguarded
        // rather than not at all.
        Err(TryLockError::Error(e)) => {
            eprintln!(
                "palisweep worker: cannot lock {} ({e}); running without the trial lock",
                path.display()
            );
            return Ok(TrialLock { _file: file });
        }
    }
    let io = |source| TrialLockError::Io {
        path: path.clone(),
        source,
    };
    file.set_len(0).map_err(io)?;
    file.seek(SeekFrom::Start(0)).map_err(io)?;
    writeln!(file, "{} {attempt}", std::process::id()).map_err(io)?;
    file.flush().map_err(io)?;
    Ok(TrialLock { _file: file })
}

/// Who holds the trial's lock now, if anyone (no lock file: no one).
pub fn holder(dir: &TrialDir) -> Option<Holder> {
    let path = lock_path(dir);
    let mut file = File::open(&path).ok()?;
    // A file system without locks cannot tell: assume no one.
    match file.try_lock_shared() {
        Err(TryLockError::WouldBlock) => Some(read_holder(&mut file)),
        Ok(()) | Err(TryLockError::Error(_)) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_names_the_first_holder_and_dropping_frees_it() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = TrialDir::from_path(tmp.path());
        assert_eq!(holder(&dir), None);
        let lock = acquire(&dir, 3).unwrap();
        let expected = Holder {
            pid: Some(std::process::id()),
            attempt: Some(3),
        };
        assert_eq!(holder(&dir), Some(expected.clone()));
        match acquire(&dir, 4) {
            Err(TrialLockError::Held { holder, .. }) => assert_eq!(holder, expected),
            other => panic!("{other:?}"),
        }
        drop(lock);
        assert_eq!(holder(&dir), None);
        let again = acquire(&dir, 4).unwrap();
        assert_eq!(holder(&dir).and_then(|h| h.attempt), Some(4));
        drop(again);
    }
}

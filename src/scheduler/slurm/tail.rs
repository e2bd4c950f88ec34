//! Follows a trial's `events.jsonl` as its worker appends to it: each read
//! returns the complete lines written since the last one (a half-written
//! last line waits for its newline).

use std::io::{Read as _, Seek as _, SeekFrom};
use std::path::{Path, PathBuf};

use crate::worker::protocol::{Envelope, WorkerEvent};

pub struct EventTail {
    path: PathBuf,
    offset: u64,
    partial: Vec<u8>,
}

impl EventTail {
    /// Follows `path` from byte `offset`.
    pub fn from_offset(path: &Path, offset: u64) -> Self {
        Self {
            path: path.to_owned(),
            offset,
            partial: Vec::new(),
        }
    }

    /// Follows from the end of the file as it is now: a job about to be
    /// submitted writes after it.
    pub fn from_end(path: &Path) -> Self {
        let offset = std::fs::metadata(path).map_or(0, |m| m.len());
        Self::from_offset(path, offset)
    }

    /// Follows attempt `attempt` of a job submitted by an earlier
    /// orchestrator: from its `started` line when it has one (lines the
    /// store already holds are stored again, idempotently), else from the end.
    pub fn from_attempt(path: &Path, attempt: u32) -> Self {
        let Ok(text) = std::fs::read_to_string(path) else {
            return Self::from_offset(path, 0);
        };
        let mut offset = 0u64;
        let mut start = None;
        for line in text.split_inclusive('\n') {
            if let Ok(envelope) = Envelope::parse(line.trim_end())
                && let WorkerEvent::Started { attempt: a, .. } = envelope.event
                && a == attempt
            {
                start = Some(offset);
            }
            offset += line.len() as u64;
        }
        Self::from_offset(path, start.unwrap_or(offset))
    }

    /// The complete lines appended since the last call.
    pub fn read(&mut self) -> Vec<Envelope> {
        let Ok(mut file) = std::fs::File::open(&self.path) else {
            return Vec::new();
        };
        if file.seek(SeekFrom::Start(self.offset)).is_err() {
            return Vec::new();
        }
        let mut bytes = Vec::new();
        let Ok(n) = file.read_to_end(&mut bytes) else {
            return Vec::new();
        };
        self.offset += n as u64;
        self.partial.extend_from_slice(&bytes);
        let Some(last_newline) = self.partial.iter().rposition(|&b| b == b'\n') else {
            return Vec::new();
        };
        let complete: Vec<u8> = self.partial.drain(..=last_newline).collect();
        String::from_utf8_lossy(&complete)
            .lines()
            .filter_map(|line| Envelope::parse(line).ok())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write as _;

    use super::*;

    fn line(step: u64) -> String {
        format!(
            "{{\"v\":1,\"time\":1.0,\"event\":\"step\",\"step\":{step},\"epoch\":0,\"metrics\":{{}}}}\n"
        )
    }

    fn started(attempt: u32) -> String {
        format!(
            "{{\"v\":1,\"time\":1.0,\"event\":\"started\",\"trial\":\"t\",\"attempt\":{attempt},\
             \"trainable_params\":1,\"total_steps\":3,\"batch_size\":1,\"grad_accum\":1,\"threads\":1,\
             \"device\":\"cpu\",\"dataset_fingerprint\":\"x\",\"resumed_from\":0}}\n"
        )
    }

    fn steps(events: &[Envelope]) -> Vec<u64> {
        events
            .iter()
            .filter_map(|e| match e.event {
                WorkerEvent::Step { step, .. } => Some(step),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn only_complete_new_lines_are_returned_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.jsonl");
        std::fs::write(&path, line(1)).unwrap();
        let mut tail = EventTail::from_end(&path);
        assert!(tail.read().is_empty(), "what was there before is skipped");
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        let two = line(2);
        file.write_all(&two.as_bytes()[..10]).unwrap();
        assert!(tail.read().is_empty(), "half a line waits");
        file.write_all(&two.as_bytes()[10..]).unwrap();
        file.write_all(line(3).as_bytes()).unwrap();
        assert_eq!(steps(&tail.read()), vec![2, 3]);
        assert!(tail.read().is_empty());
    }

    #[test]
    fn a_followed_attempt_starts_at_its_own_started_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.jsonl");
        let text = [started(1), line(1), started(2), line(5), line(6)].concat();
        std::fs::write(&path, text).unwrap();
        assert_eq!(steps(&EventTail::from_attempt(&path, 2).read()), vec![5, 6]);
        assert_eq!(
            steps(&EventTail::from_attempt(&path, 1).read()),
            vec![1, 5, 6]
        );
        assert!(
            EventTail::from_attempt(&path, 3).read().is_empty(),
            "not started yet"
        );
        let missing = dir.path().join("none.jsonl");
        assert!(EventTail::from_attempt(&missing, 1).read().is_empty());
    }
}

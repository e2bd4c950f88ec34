//! The worker's contract with whoever starts it: the command line (built
//! here only, for the local executor, Slurm's batch script and `rerun`) and
//! the exit codes, which the worker produces and both dispatchers read.
//!
//! | code | [`WorkerExit`]  | meaning                                               | the scheduler        |
//! |------|-----------------|-------------------------------------------------------|----------------------|
//! | 0    | `Finished`      | the trial trained to its end                          | finished             |
//! | 1    | `Failed`        | any other error (libtorch, I/O); see `worker.log`     | crashed: retried     |
//! | 2    | `BadInput`      | the spec, dataset or checkpoint is wrong              | invalid input: never retried |
//! | 3    | `OutOfMemory`   | the device (or host) ran out of memory                | back-off: half the batch, twice the accumulation |
//! | 4    | `Stopped`       | stopped on request (SIGTERM, or end of stdin with `--watch-stdin`); the checkpoint resumes it | stopped |
//!
//! A worker killed by a signal has no code; the dispatcher then decides from
//! what it asked for (a stop, a timeout) and the worker's `failed` event.
//!
//! A worker started with `--watch-stdin` treats the end of its stdin as its
//! scheduler's death: it stops at its next step (checkpointing), and if it
//! has not ended [`orphan_grace`] later (stuck in a kernel, say) it kills
//! itself. A worker holds its trial folder's lock (`worker/trial_lock.rs`)
//! while it lives, so no second attempt starts beside it.

use std::ffi::OsString;
use std::path::PathBuf;

/// How long a worker outlives the end of its stdin, at most.
pub const ORPHAN_GRACE: std::time::Duration = std::time::Duration::from_secs(30);

/// [`ORPHAN_GRACE`], or `PALISWEEP_ORPHAN_GRACE` seconds when set (tests
/// shorten it; a slow checkpoint to network storage may need longer).
pub fn orphan_grace() -> std::time::Duration {
    std::env::var("PALISWEEP_ORPHAN_GRACE")
        .ok()
        .and_then(|v| v.trim().parse::<f64>().ok())
        .filter(|s| s.is_finite() && *s >= 0.0 && *s <= 86_400.0)
        .map_or(ORPHAN_GRACE, std::time::Duration::from_secs_f64)
}

/// How a worker process ended, by its exit code (see the module's table).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WorkerExit {
    Finished,
    Failed,
    BadInput,
    OutOfMemory,
    Stopped,
}

impl WorkerExit {
    /// The process exit code.
    pub const fn code(self) -> u8 {
        match self {
            Self::Finished => 0,
            Self::Failed => 1,
            Self::BadInput => 2,
            Self::OutOfMemory => 3,
            Self::Stopped => 4,
        }
    }

    /// The meaning of an exit code; `None` for a signal or a code the
    /// worker never uses (a crash in libtorch's own exit, say).
    pub const fn from_code(code: Option<i32>) -> Option<Self> {
        match code {
            Some(0) => Some(Self::Finished),
            Some(1) => Some(Self::Failed),
            Some(2) => Some(Self::BadInput),
            Some(3) => Some(Self::OutOfMemory),
            Some(4) => Some(Self::Stopped),
            _ => None,
        }
    }
}

impl From<WorkerExit> for std::process::ExitCode {
    fn from(exit: WorkerExit) -> Self {
        Self::from(exit.code())
    }
}

/// `palisweep worker …`: one attempt of one trial.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkerCommand {
    /// The trial folder (holds `trial.toml`).
    pub trial_dir: PathBuf,
    pub attempt: u32,
    /// Torch's intra-op threads.
    pub threads: u32,
    /// `cpu`, `cuda:0`; `None` lets the worker choose.
    pub device: Option<String>,
    /// `--set key=value` overrides (the out-of-memory back-off's batch shape).
    pub sets: Vec<String>,
    /// Stop when stdin closes (the scheduler holds it open).
    pub watch_stdin: bool,
    /// Torch's deterministic algorithms (`rerun` on CUDA).
    pub deterministic: bool,
    /// Checkpoint and stop (exit 4) there: an ASHA rung.
    pub stop_after: Option<StopAfter>,
}

/// Where a worker checkpoints and stops by itself (exit 4): an ASHA rung,
/// in the unit its rungs are in. At the trial's last step it finishes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopAfter {
    /// After this optimiser step (`--stop-after`).
    Step(u64),
    /// After the last step of this epoch and its evaluation
    /// (`--stop-after-epoch`; epochs count from 1).
    Epoch(u64),
}

/// One argument of the command line: a flag, or a flag's value (which a
/// shell rendering may replace).
enum Word {
    Flag(&'static str),
    Value(&'static str, OsString),
}

impl WorkerCommand {
    fn words(&self) -> Vec<Word> {
        let mut words = vec![
            Word::Flag("worker"),
            Word::Flag("--trial"),
            Word::Value("--trial", self.trial_dir.clone().into_os_string()),
            Word::Flag("--attempt"),
            Word::Value("--attempt", self.attempt.to_string().into()),
            Word::Flag("--threads"),
            Word::Value("--threads", self.threads.to_string().into()),
        ];
        if let Some(device) = &self.device {
            words.push(Word::Flag("--device"));
            words.push(Word::Value("--device", device.into()));
        }
        if self.watch_stdin {
            words.push(Word::Flag("--watch-stdin"));
        }
        if self.deterministic {
            words.push(Word::Flag("--deterministic"));
        }
        match self.stop_after {
            Some(StopAfter::Step(step)) => {
                words.push(Word::Flag("--stop-after"));
                words.push(Word::Value("--stop-after", step.to_string().into()));
            }
            Some(StopAfter::Epoch(epoch)) => {
                words.push(Word::Flag("--stop-after-epoch"));
                words.push(Word::Value("--stop-after-epoch", epoch.to_string().into()));
            }
            None => {}
        }
        for set in &self.sets {
            words.push(Word::Flag("--set"));
            words.push(Word::Value("--set", set.into()));
        }
        words
    }

    /// The arguments after the executable, for a process spawn.
    pub fn args(&self) -> Vec<OsString> {
        self.words()
            .into_iter()
            .map(|w| match w {
                Word::Flag(f) => OsString::from(f),
                Word::Value(_, v) => v,
            })
            .collect()
    }

    /// The command as one shell line, `exec EXE worker …`, every value
    /// quoted; `expr(flag)` may give raw shell text for a flag's value
    /// instead (a batch script's `$SLURM_…` arithmetic).
    pub fn shell_line(
        &self,
        exe: &std::path::Path,
        expr: impl Fn(&str) -> Option<String>,
    ) -> String {
        let mut line = format!("exec {}", shell_quote(&exe.display().to_string()));
        for word in self.words() {
            line.push(' ');
            match word {
                Word::Flag(f) => line.push_str(f),
                Word::Value(flag, v) => {
                    line.push_str(&expr(flag).unwrap_or_else(|| shell_quote(&v.to_string_lossy())));
                }
            }
        }
        line
    }
}

/// `s` as one POSIX shell word: bare when it is plainly safe, else in
/// single quotes.
pub fn shell_quote(s: &str) -> String {
    let safe = !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./=:,+@%".contains(&b));
    if safe {
        s.to_owned()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn command() -> WorkerCommand {
        WorkerCommand {
            trial_dir: PathBuf::from("/r/it's"),
            attempt: 2,
            threads: 8,
            device: Some("cuda:0".into()),
            sets: vec!["train.batch_size=4".into()],
            watch_stdin: true,
            deterministic: false,
            stop_after: None,
        }
    }

    #[test]
    fn the_arguments_name_every_field() {
        let args: Vec<String> = command()
            .args()
            .into_iter()
            .map(|a| a.into_string().unwrap())
            .collect();
        assert_eq!(
            args,
            [
                "worker",
                "--trial",
                "/r/it's",
                "--attempt",
                "2",
                "--threads",
                "8",
                "--device",
                "cuda:0",
                "--watch-stdin",
                "--set",
                "train.batch_size=4"
            ]
        );
    }

    #[test]
    fn the_shell_line_quotes_values_and_takes_expressions() {
        let line = command().shell_line(std::path::Path::new("/bin/palisweep"), |flag| {
            (flag == "--attempt").then(|| "\"$((2 + 1))\"".to_owned())
        });
        assert_eq!(
            line,
            "exec /bin/palisweep worker --trial '/r/it'\\''s' --attempt \"$((2 + 1))\" \
             --threads 8 --device cuda:0 --watch-stdin --set train.batch_size=4"
        );
    }

    #[test]
    fn exit_codes_round_trip() {
        for exit in [
            WorkerExit::Finished,
            WorkerExit::Failed,
            WorkerExit::BadInput,
            WorkerExit::OutOfMemory,
            WorkerExit::Stopped,
        ] {
            assert_eq!(
                WorkerExit::from_code(Some(i32::from(exit.code()))),
                Some(exit)
            );
        }
        assert_eq!(WorkerExit::from_code(None), None);
        assert_eq!(WorkerExit::from_code(Some(134)), None);
    }
}

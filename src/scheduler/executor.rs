//! Starts and watches worker processes; nothing else. Each worker is a
//! child in its own process group (so the terminal's Ctrl-C reaches only
//! the scheduler, which decides what the workers get), with its stdin held
//! open (its end of file tells the worker the scheduler is gone), stdout
//! parsed as protocol lines, and stderr appended to the trial's
//! `worker.log` with the last lines kept for the failure report.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::process::Stdio;

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::process::Command;
use tokio::sync::mpsc::UnboundedSender;

use crate::worker::contract::WorkerCommand;
use crate::worker::protocol::Envelope;

/// Stderr lines kept for a crash report.
const STDERR_TAIL: usize = 20;

/// Identifies one worker process for the dispatcher.
pub type RunId = u64;

/// How to start one worker.
#[derive(Clone, Debug)]
pub struct Launch {
    pub run: RunId,
    pub exe: PathBuf,
    pub command: WorkerCommand,
    /// Extra environment (`CUDA_VISIBLE_DEVICES`, thread limits).
    pub env: Vec<(String, String)>,
    pub log: PathBuf,
}

/// What the executor reports.
#[derive(Debug)]
pub enum ExecutorEvent {
    Line {
        run: RunId,
        line: Envelope,
    },
    /// A line on stdout that is not a protocol event.
    Noise {
        run: RunId,
    },
    Exited {
        run: RunId,
        code: Option<i32>,
        signal: Option<i32>,
        stderr_tail: Vec<String>,
    },
}

/// Starts `launch`; returns the worker's pid (= its process group).
pub fn spawn(launch: &Launch, tx: &UnboundedSender<ExecutorEvent>) -> std::io::Result<u32> {
    let mut command = Command::new(&launch.exe);
    command.args(launch.command.args());
    command
        .envs(launch.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(false);
    let mut child = command.spawn()?;
    let pid = child.id().unwrap_or(0);
    let run = launch.run;

    let stdout = child.stdout.take();
    let stderr = child.stderr.take();
    let mut stdin = child.stdin.take();
    let log_path = launch.log.clone();

    let lines_tx = tx.clone();
    let stdout_task = tokio::spawn(async move {
        let Some(stdout) = stdout else { return };
        let mut lines = BufReader::new(stdout).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            let event = match Envelope::parse(&line) {
                Ok(line) => ExecutorEvent::Line { run, line },
                Err(_) => ExecutorEvent::Noise { run },
            };
            let _ = lines_tx.send(event);
        }
    });
    let stderr_task = tokio::spawn(async move {
        let mut tail: VecDeque<String> = VecDeque::with_capacity(STDERR_TAIL);
        let Some(stderr) = stderr else {
            return tail;
        };
        let mut log = tokio::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .await
            .ok();
        let mut lines = BufReader::new(stderr).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            if let Some(log) = log.as_mut() {
                let _ = log.write_all(format!("{line}\n").as_bytes()).await;
            }
            if tail.len() == STDERR_TAIL {
                tail.pop_front();
            }
            tail.push_back(line);
        }
        if let Some(log) = log.as_mut() {
            let _ = log.flush().await;
        }
        tail
    });
    let exit_tx = tx.clone();
    tokio::spawn(async move {
        let status = child.wait().await;
        // Every line the worker wrote is reported before its exit.
        let _ = stdout_task.await;
        let tail = stderr_task.await.unwrap_or_default();
        // Keep stdin open until the worker is gone, then let it close.
        if let Some(stdin) = stdin.as_mut() {
            let _ = stdin.flush().await;
        }
        drop(stdin);
        let (code, signal) = match status {
            Ok(status) => {
                use std::os::unix::process::ExitStatusExt as _;
                (status.code(), status.signal())
            }
            Err(_) => (None, None),
        };
        let _ = exit_tx.send(ExecutorEvent::Exited {
            run,
            code,
            signal,
            stderr_tail: tail.into_iter().collect(),
        });
    });
    Ok(pid)
}

/// Signals a worker's whole process group; an already-gone group is fine.
pub fn signal_group(pid: u32, kill: bool) {
    let Ok(pid) = i32::try_from(pid) else { return };
    if pid <= 1 {
        return;
    }
    let signal = if kill {
        Signal::SIGKILL
    } else {
        Signal::SIGTERM
    };
    let _ = killpg(Pid::from_raw(pid), signal);
}

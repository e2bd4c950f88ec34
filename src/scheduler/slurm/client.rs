//! The Slurm commands palisweep runs (`sbatch`, `squeue`, `scontrol`,
//! `sacct`, `scancel`) and the parsing of what they print. Parsing is in
//! pure functions, tested without a cluster.

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;

#[derive(Debug, thiserror::Error)]
pub enum SlurmError {
    #[error(
        "cannot run `{command}`: {source} (is Slurm installed here, and its commands on PATH?)"
    )]
    Missing {
        command: String,
        source: std::io::Error,
    },
    #[error("Slurm rejected the job: {message}\n  (the command: {command})")]
    Rejected { command: String, message: String },
    #[error("`{command}` failed: {message}")]
    Failed { command: String, message: String },
    #[error("cannot read `{command}`'s output: {output}")]
    Unreadable { command: String, output: String },
}

/// A job's state as Slurm reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JobInfo {
    /// `PENDING`, `RUNNING`, `COMPLETED`, `FAILED`, `CANCELLED`, …
    pub state: String,
    /// Slurm's reason (`Resources`, `NonZeroExitCode`, …).
    pub reason: String,
    /// The batch script's exit code and the signal that ended it, when ended.
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
}

impl JobInfo {
    /// Ended for good (a requeued job goes back to `PENDING`).
    pub fn is_terminal(&self) -> bool {
        is_terminal(&self.state)
    }
}

pub fn is_terminal(state: &str) -> bool {
    matches!(
        state,
        "COMPLETED"
            | "FAILED"
            | "CANCELLED"
            | "TIMEOUT"
            | "OUT_OF_MEMORY"
            | "NODE_FAIL"
            | "PREEMPTED"
            | "BOOT_FAIL"
            | "DEADLINE"
            | "SPECIAL_EXIT"
    )
}

fn run(program: &str, args: &[&str]) -> Result<std::process::Output, SlurmError> {
    Command::new(program)
        .args(args)
        .output()
        .map_err(|source| SlurmError::Missing {
            command: program.to_owned(),
            source,
        })
}

fn describe(program: &str, args: &[String]) -> String {
    std::iter::once(program.to_owned())
        .chain(args.iter().cloned())
        .collect::<Vec<_>>()
        .join(" ")
}

fn stderr_text(output: &std::process::Output) -> String {
    let text = String::from_utf8_lossy(&output.stderr).trim().to_owned();
    if text.is_empty() {
        String::from_utf8_lossy(&output.stdout).trim().to_owned()
    } else {
        text
    }
}

/// Submits `script` with `args` (which include `--parsable`); the job id.
pub fn submit(args: &[String], script: &Path) -> Result<String, SlurmError> {
    let mut all: Vec<String> = args.to_vec();
    all.push(script.display().to_string());
    let refs: Vec<&str> = all.iter().map(String::as_str).collect();
    let output = run("sbatch", &refs)?;
    if !output.status.success() {
        return Err(SlurmError::Rejected {
            command: describe("sbatch", &all),
            message: stderr_text(&output),
        });
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    parse_parsable(&stdout).ok_or_else(|| SlurmError::Unreadable {
        command: "sbatch --parsable".into(),
        output: stdout.trim().to_owned(),
    })
}

/// Asks Slurm whether it would take the job (`sbatch --test-only`),
/// submitting nothing: a bad partition, account or gres fails here.
pub fn test_only(args: &[String], script: &Path) -> Result<(), SlurmError> {
    let mut all: Vec<String> = vec!["--test-only".into()];
    all.extend(args.iter().filter(|a| *a != "--parsable").cloned());
    all.push(script.display().to_string());
    let refs: Vec<&str> = all.iter().map(String::as_str).collect();
    let output = run("sbatch", &refs)?;
    if output.status.success() {
        Ok(())
    } else {
        Err(SlurmError::Rejected {
            command: describe("sbatch", &all),
            message: stderr_text(&output),
        })
    }
}

/// `123` or `123;cluster` → `123`.
fn parse_parsable(stdout: &str) -> Option<String> {
    let id = stdout.lines().last()?.split(';').next()?.trim();
    (!id.is_empty() && id.chars().all(|c| c.is_ascii_digit() || c == '_')).then(|| id.to_owned())
}

/// The state of each of `jobs` that Slurm still knows. Live jobs come from
/// one `squeue`; ended ones are completed (exit code) by `scontrol`, or by
/// `sacct` when the controller has forgotten them. A job absent from the
/// map is unknown to Slurm.
pub fn query(jobs: &[String]) -> Result<HashMap<String, JobInfo>, SlurmError> {
    let mut found = HashMap::new();
    if jobs.is_empty() {
        return Ok(found);
    }
    let list = jobs.join(",");
    let output = run(
        "squeue",
        &["-h", "-t", "all", "-j", &list, "-o", "%i|%T|%r"],
    )?;
    // squeue exits 1 when none of the ids is known: that is an answer too.
    if output.status.success() {
        for (id, state, reason) in parse_squeue(&String::from_utf8_lossy(&output.stdout)) {
            found.insert(
                id,
                JobInfo {
                    state,
                    reason,
                    exit_code: None,
                    signal: None,
                },
            );
        }
    } else if !stderr_text(&output).contains("Invalid job id") {
        return Err(SlurmError::Failed {
            command: format!("squeue -j {list}"),
            message: stderr_text(&output),
        });
    }
    for id in jobs {
        let known_live = found.get(id).is_some_and(|j| !j.is_terminal());
        if known_live {
            continue;
        }
        // sacct only for jobs the controller has forgotten.
        let info = match scontrol(id)? {
            Some(info) => Some(info),
            None => sacct(id)?,
        };
        if let Some(info) = info {
            found.insert(id.clone(), info);
        }
    }
    Ok(found)
}

fn scontrol(id: &str) -> Result<Option<JobInfo>, SlurmError> {
    let output = run("scontrol", &["show", "job", "-o", id])?;
    if !output.status.success() {
        return Ok(None);
    }
    Ok(parse_scontrol(&String::from_utf8_lossy(&output.stdout)))
}

/// `sacct`, when the cluster keeps accounting; `None` when it does not.
fn sacct(id: &str) -> Result<Option<JobInfo>, SlurmError> {
    let output = run(
        "sacct",
        &["-n", "-P", "-X", "-j", id, "-o", "State,ExitCode,Reason"],
    )?;
    if !output.status.success() {
        return Ok(None);
    }
    Ok(parse_sacct(&String::from_utf8_lossy(&output.stdout)))
}

/// Cancels `jobs` (Slurm sends SIGTERM, then SIGKILL after `KillWait`).
pub fn cancel(jobs: &[String]) -> Result<(), SlurmError> {
    if jobs.is_empty() {
        return Ok(());
    }
    let refs: Vec<&str> = jobs.iter().map(String::as_str).collect();
    let output = run("scancel", &refs)?;
    if output.status.success() {
        Ok(())
    } else {
        Err(SlurmError::Failed {
            command: describe("scancel", jobs),
            message: stderr_text(&output),
        })
    }
}

/// Whether a Slurm controller answers (`sinfo`).
pub fn reachable() -> Result<(), SlurmError> {
    let output = run("sinfo", &["-h", "-o", "%P"])?;
    if output.status.success() {
        Ok(())
    } else {
        Err(SlurmError::Failed {
            command: "sinfo".into(),
            message: stderr_text(&output),
        })
    }
}

fn parse_squeue(stdout: &str) -> Vec<(String, String, String)> {
    stdout
        .lines()
        .filter_map(|line| {
            let mut parts = line.trim().splitn(3, '|');
            let id = parts.next()?.trim();
            let state = parts.next()?.trim();
            let reason = parts.next().unwrap_or("").trim();
            (!id.is_empty()).then(|| (id.to_owned(), state.to_owned(), reason.to_owned()))
        })
        .collect()
}

/// `ExitCode=3:0` → (3, 0).
fn parse_exit(text: &str) -> (Option<i32>, Option<i32>) {
    let mut parts = text.split(':');
    let code = parts.next().and_then(|c| c.trim().parse().ok());
    let signal = parts
        .next()
        .and_then(|s| s.trim().parse().ok())
        .filter(|s: &i32| *s != 0);
    (code, signal)
}

fn parse_scontrol(stdout: &str) -> Option<JobInfo> {
    let line = stdout.lines().find(|l| l.contains("JobState="))?;
    let fields: HashMap<&str, &str> = line
        .split_whitespace()
        .filter_map(|kv| kv.split_once('='))
        .collect();
    let (exit_code, signal) = fields
        .get("ExitCode")
        .map_or((None, None), |e| parse_exit(e));
    Some(JobInfo {
        state: (*fields.get("JobState")?).to_owned(),
        reason: fields.get("Reason").copied().unwrap_or("").to_owned(),
        exit_code,
        signal,
    })
}

fn parse_sacct(stdout: &str) -> Option<JobInfo> {
    let line = stdout.lines().find(|l| !l.trim().is_empty())?;
    let mut parts = line.split('|');
    // `CANCELLED by 0` → `CANCELLED`.
    let state = parts.next()?.split_whitespace().next()?.to_owned();
    let (exit_code, signal) = parts.next().map_or((None, None), parse_exit);
    Some(JobInfo {
        state,
        reason: parts.next().unwrap_or("").trim().to_owned(),
        exit_code,
        signal,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sbatch_parsable_output_gives_the_job_id() {
        assert_eq!(parse_parsable("4242\n").as_deref(), Some("4242"));
        assert_eq!(parse_parsable("4242;cluster\n").as_deref(), Some("4242"));
        assert_eq!(parse_parsable("Submitted batch job 1\n"), None);
        assert_eq!(parse_parsable(""), None);
    }

    #[test]
    fn squeue_lines_give_state_and_reason() {
        let rows = parse_squeue("12|PENDING|Resources\n13|RUNNING|None\n\n");
        assert_eq!(
            rows,
            vec![
                ("12".into(), "PENDING".into(), "Resources".into()),
                ("13".into(), "RUNNING".into(), "None".into())
            ]
        );
    }

    #[test]
    fn scontrol_gives_the_exit_code_and_signal_of_an_ended_job() {
        let line = "JobId=1 JobName=wrap UserId=root(0) JobState=FAILED Reason=NonZeroExitCode \
                    Dependency=(null) Requeue=1 Restarts=0 BatchFlag=1 ExitCode=3:0 RunTime=00:00:03\n";
        let info = parse_scontrol(line).unwrap();
        assert_eq!(info.state, "FAILED");
        assert_eq!(info.reason, "NonZeroExitCode");
        assert_eq!((info.exit_code, info.signal), (Some(3), None));
        assert!(info.is_terminal());
        let cancelled =
            parse_scontrol("JobId=2 JobState=CANCELLED Reason=None ExitCode=0:15").unwrap();
        assert_eq!((cancelled.exit_code, cancelled.signal), (Some(0), Some(15)));
    }

    #[test]
    fn sacct_states_lose_their_by_uid_suffix() {
        let info = parse_sacct("CANCELLED by 0|0:15|None\n").unwrap();
        assert_eq!(info.state, "CANCELLED");
        assert_eq!(info.signal, Some(15));
        assert!(parse_sacct("\n").is_none());
    }

    #[test]
    fn requeued_and_waiting_jobs_are_not_terminal() {
        for state in ["PENDING", "RUNNING", "REQUEUED", "COMPLETING", "SUSPENDED"] {
            assert!(!is_terminal(state), "{state}");
        }
        for state in [
            "COMPLETED",
            "TIMEOUT",
            "PREEMPTED",
            "NODE_FAIL",
            "OUT_OF_MEMORY",
        ] {
            assert!(is_terminal(state), "{state}");
        }
    }
}

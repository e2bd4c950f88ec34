//! The Slurm backend's loop: submit queued trials as jobs, poll Slurm and
//! the trials' event files every `slurm.poll_interval`, forward what the
//! workers wrote, and settle each ended job with the local backend's rules
//! (retries, out-of-memory back-off). Jobs that an earlier orchestrator
//! submitted are followed, never submitted again.

use std::io::IsTerminal as _;
use std::path::PathBuf;
use std::time::Duration;

use tokio::sync::mpsc;

use super::client::{self, JobInfo, SlurmError};
use super::sbatch::JobRequest;
use super::tail::EventTail;
use crate::events::event::{AttemptOutcome, SweepEvent, TrialStatus, now};
use crate::events::fanout::Fanout;
use crate::scheduler::adaptive::Adaptive;
use crate::scheduler::budget_gate::Running as BudgetRunning;
use crate::scheduler::fate::{
    self, AttemptEnd, BackendEnd, ExitFacts, StopCause, TrialState, settle,
};
use crate::scheduler::queue::{QueuedTrial, Summary};
use crate::spec::schema::Slurm;
use crate::worker::contract::{StopAfter, WorkerExit};
use crate::worker::protocol::{FailureKind, WorkerEvent};

/// The device label Slurm attempts are recorded with.
const DEVICE: &str = "slurm";

/// Polls in a row that may fail (a controller restarting) before the
/// orchestrator gives up following and leaves the jobs to a later attach.
const MAX_POLL_FAILURES: u32 = 12;

/// What the first Ctrl-C does to the jobs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnInterrupt {
    /// Ask on the terminal (leave them when there is none).
    Ask,
    Cancel,
    Leave,
}

pub struct SlurmDispatch {
    pub sweep: String,
    /// With the jobs earlier runs left (`QueuedTrial::open_job`).
    pub trials: Vec<QueuedTrial>,
    pub slurm: Slurm,
    pub retries: u32,
    pub exe: PathBuf,
    /// Early stopping, suggestions and the budget, as on the local backend.
    /// An attempt's device time counts from its submission (queue wait
    /// included), which is what the job's record says.
    pub adaptive: Adaptive,
    /// Submit and return (`run --detach`).
    pub detach: bool,
    pub on_interrupt: OnInterrupt,
}

struct Job {
    trial: usize,
    attempt: u32,
    id: String,
    start: f64,
    tail: EventTail,
    stop: Option<StopCause>,
    failed: Option<(FailureKind, String)>,
    /// Set by a `finished` event.
    finished: Option<Finished>,
}

#[derive(Clone, Copy, Debug)]
struct Finished {
    best_metric: Option<f64>,
}

struct Dispatcher<'a> {
    fanout: &'a Fanout,
    d: SlurmDispatch,
    states: Vec<TrialState>,
    pending: Vec<usize>,
    jobs: Vec<Job>,
    interrupting: bool,
    /// The orchestrator stops following; the jobs go on.
    leaving: bool,
    poll_failures: u32,
}

/// Checks, before anything is submitted, that Slurm would take each kind of
/// job this sweep submits (`sbatch --test-only`): a bad partition, account,
/// qos or gres fails the whole sweep here.
pub fn preflight(d: &SlurmDispatch) -> Result<(), SlurmError> {
    client::reachable()?;
    let mut checked: Vec<Vec<String>> = Vec::new();
    for q in &d.trials {
        let request = request(d, q, &[], None);
        let shape: Vec<String> = request
            .sbatch_args()
            .into_iter()
            .filter(|a| {
                !["--job-name", "--comment", "--output", "--error", "--chdir"]
                    .iter()
                    .any(|p| a.starts_with(p))
            })
            .collect();
        if checked.contains(&shape) {
            continue;
        }
        write_script(&request).map_err(|e| SlurmError::Failed {
            command: format!("write {}", request.script_path().display()),
            message: e.to_string(),
        })?;
        client::test_only(&request.sbatch_args(), &request.script_path())?;
        checked.push(shape);
    }
    Ok(())
}

fn request<'a>(
    d: &'a SlurmDispatch,
    q: &'a QueuedTrial,
    sets: &'a [String],
    stop_after: Option<StopAfter>,
) -> JobRequest<'a> {
    JobRequest {
        slurm: &d.slurm,
        sweep: &d.sweep,
        trial_id: &q.info.id,
        dir: &q.dir,
        attempt: q.next_attempt,
        memory_bytes: q.memory_now(),
        sets,
        stop_after,
        exe: &d.exe,
    }
}

fn write_script(request: &JobRequest<'_>) -> std::io::Result<()> {
    std::fs::create_dir_all(request.dir.path())?;
    std::fs::write(request.script_path(), request.script())
}

/// Runs the sweep through Slurm until every trial has ended, or the
/// orchestrator detaches (`--detach`, or Ctrl-C and "leave them running").
pub async fn dispatch(
    mut d: SlurmDispatch,
    fanout: &Fanout,
    mut interrupts: mpsc::UnboundedReceiver<()>,
) -> Summary {
    let states: Vec<TrialState> = std::mem::take(&mut d.trials)
        .into_iter()
        .map(TrialState::new)
        .collect();
    let mut x = Dispatcher {
        fanout,
        pending: Vec::new(),
        jobs: Vec::new(),
        interrupting: false,
        leaving: false,
        poll_failures: 0,
        states,
        d,
    };
    x.adopt_open_jobs();
    let poll = Duration::from_secs_f64(x.d.slurm.poll_interval);
    let mut ticker = tokio::time::interval(poll);
    loop {
        if !x.interrupting && !x.leaving {
            x.top_up();
            x.submit_ready();
        }
        if x.d.detach && x.pending.is_empty() {
            x.leaving = true;
        }
        if x.leaving || (x.jobs.is_empty() && (x.pending.is_empty() || x.interrupting)) {
            if !x.leaving && !x.interrupting {
                x.d.adaptive.stop_paused_trials(&mut x.states, x.fanout);
            }
            break;
        }
        tokio::select! {
            Some(()) = interrupts.recv() => x.on_interrupt(),
            _ = ticker.tick() => x.poll(),
        }
    }
    x.finish()
}

impl Dispatcher<'_> {
    /// Jobs of earlier runs (from the store and the trial folders) are
    /// followed; every other queued trial waits to be submitted, but those
    /// a resumed ASHA sweep left paused at a rung (they wait for promotion).
    fn adopt_open_jobs(&mut self) {
        self.d.adaptive.mark_paused(&mut self.states);
        for (i, state) in self.states.iter_mut().enumerate() {
            let q = &mut state.queued;
            let Some(open) = q.open_job.take() else {
                if state.status != TrialStatus::Paused {
                    self.pending.push(i);
                }
                continue;
            };
            q.next_attempt = q.next_attempt.max(open.attempt + 1);
            state.status = TrialStatus::Running;
            eprintln!(
                "palisweep: following Slurm job {} (trial {}, attempt {})",
                open.job, q.info.id, open.attempt
            );
            self.jobs.push(Job {
                trial: i,
                attempt: open.attempt,
                tail: EventTail::from_attempt(&q.dir.events(), open.attempt),
                id: open.job,
                start: open.start,
                stop: None,
                failed: None,
                finished: None,
            });
        }
        self.d.adaptive.sort(&self.states, &mut self.pending);
    }

    /// Asks TPE for the next trials while fewer than `slurm.max_jobs` run.
    fn top_up(&mut self) {
        if !self.d.adaptive.suggests() {
            return;
        }
        let running = self.running_costs();
        let capacity = self.d.slurm.max_jobs as usize;
        self.d.adaptive.top_up(
            &mut self.states,
            &mut self.pending,
            self.jobs.len(),
            capacity,
            &running,
            self.fanout,
        );
    }

    /// Relative cost and seconds since submission of each job.
    fn running_costs(&self) -> Vec<BudgetRunning> {
        let time = now();
        self.jobs
            .iter()
            .map(|j| {
                let info = &self.states[j.trial].queued.info;
                BudgetRunning {
                    trial: info.id.clone(),
                    rel_cost: info.rel_cost,
                    elapsed_s: (time - j.start).max(0.0),
                }
            })
            .collect()
    }

    fn submit_ready(&mut self) {
        let max = self.d.slurm.max_jobs as usize;
        while !self.pending.is_empty() && (self.d.detach || max == 0 || self.jobs.len() < max) {
            let i = self.pending.remove(0);
            if let Some(reason) = self
                .d
                .adaptive
                .refusal(&self.states[i], || self.running_costs())
            {
                fate::end_early(&mut self.states[i], reason, self.fanout);
                continue;
            }
            if let Err(reason) = self.submit(i) {
                fate::fail(&mut self.states[i], reason, self.fanout);
            }
        }
    }

    fn submit(&mut self, i: usize) -> Result<(), String> {
        let stop_after = self.d.adaptive.stop_after(&self.states[i].queued.info.id);
        let q = &self.states[i].queued;
        let sets = q.backoff_sets();
        let request = request(&self.d, q, &sets, stop_after);
        write_script(&request).map_err(|e| format!("cannot write the job script: {e}"))?;
        // Whatever the file holds now belongs to earlier attempts.
        let tail = EventTail::from_end(&q.dir.events());
        let job = client::submit(&request.sbatch_args(), &request.script_path())
            .map_err(|e| e.to_string())?;
        let start = now();
        fate::record_start(
            self.fanout,
            q,
            q.next_attempt,
            DEVICE,
            (None, Some(&job)),
            start,
        );
        self.jobs.push(Job {
            trial: i,
            attempt: q.next_attempt,
            id: job,
            start,
            tail,
            stop: None,
            failed: None,
            finished: None,
        });
        self.d.adaptive.launched(&q.info.id);
        let state = &mut self.states[i];
        state.queued.next_attempt += 1;
        state.status = TrialStatus::Running;
        Ok(())
    }

    /// Reads what the workers wrote, then what Slurm says of the jobs.
    fn poll(&mut self) {
        for j in 0..self.jobs.len() {
            self.forward_lines(j);
        }
        let ids: Vec<String> = self.jobs.iter().map(|j| j.id.clone()).collect();
        let infos = match client::query(&ids) {
            Ok(infos) => {
                self.poll_failures = 0;
                infos
            }
            Err(e) => {
                self.poll_failures += 1;
                eprintln!("palisweep: cannot poll Slurm: {e}");
                if self.poll_failures >= MAX_POLL_FAILURES {
                    eprintln!(
                        "palisweep: Slurm has not answered {MAX_POLL_FAILURES} polls in a row; \
                         leaving the jobs to run (`palisweep attach {}` follows them again)",
                        self.d.sweep
                    );
                    self.leaving = true;
                }
                return;
            }
        };
        let mut ended = Vec::new();
        for (j, job) in self.jobs.iter().enumerate() {
            match infos.get(&job.id) {
                Some(info) if info.is_terminal() => ended.push((j, Some(info.clone()))),
                Some(_) => {}
                None => ended.push((j, None)),
            }
        }
        // Highest index first, so the others stay where they are.
        for (j, info) in ended.into_iter().rev() {
            // The worker may have written its last lines just before exiting.
            self.forward_lines(j);
            let job = self.jobs.remove(j);
            self.job_ended(&job, info.as_ref());
        }
    }

    fn forward_lines(&mut self, j: usize) {
        let lines = self.jobs[j].tail.read();
        for line in lines {
            let job = &mut self.jobs[j];
            let trial = job.trial;
            match &line.event {
                WorkerEvent::Started { attempt, .. } if *attempt > job.attempt => {
                    // Slurm requeued the job (preemption, node failure): its
                    // script ran again as the next attempt.
                    let requeued = AttemptEnd {
                        attempt: job.attempt,
                        device: DEVICE.into(),
                        start: job.start,
                        outcome: AttemptOutcome::Crashed,
                        exit_code: None,
                        reason: Some(format!("requeued by Slurm (job {})", job.id)),
                        peak_memory_bytes: None,
                        best_metric: None,
                        job: Some(job.id.clone()),
                    };
                    job.attempt = *attempt;
                    job.start = line.time;
                    job.finished = None;
                    job.failed = None;
                    let (attempt, id) = (job.attempt, job.id.clone());
                    let state = &mut self.states[trial];
                    // Slurm's own retry: recorded, but not settled (it does
                    // not count against ours, and the trial runs on).
                    fate::record_end(&state.queued, &requeued, self.fanout);
                    state.status = TrialStatus::Running;
                    state.queued.next_attempt = state.queued.next_attempt.max(attempt + 1);
                    fate::record_start(
                        self.fanout,
                        &state.queued,
                        attempt,
                        DEVICE,
                        (None, Some(&id)),
                        line.time,
                    );
                }
                WorkerEvent::Started { .. } => job.finished = None,
                WorkerEvent::Failed { kind, message } => {
                    job.failed = Some((*kind, message.clone()));
                }
                WorkerEvent::Finished { best_metric, .. } => {
                    job.finished = Some(Finished {
                        best_metric: *best_metric,
                    });
                }
                WorkerEvent::Eval {
                    step,
                    epoch,
                    metrics,
                    ..
                } => {
                    let stop = self.d.adaptive.on_eval(
                        &mut self.states,
                        &mut self.pending,
                        trial,
                        (*step, *epoch),
                        metrics,
                    );
                    let job = &mut self.jobs[j];
                    match stop {
                        _ if job.stop.is_some() => {}
                        // The worker checkpoints at its rung and exits by itself.
                        Some(StopCause::Rung) => job.stop = Some(StopCause::Rung),
                        Some(cause) => {
                            job.stop = Some(cause);
                            if let Err(e) = client::cancel(std::slice::from_ref(&job.id)) {
                                eprintln!("palisweep: cannot stop pruned job {}: {e}", job.id);
                            }
                        }
                        None => {}
                    }
                }
                _ => {}
            }
            let attempt = self.jobs[j].attempt;
            self.fanout.send(&SweepEvent::Worker {
                trial: self.states[trial].queued.info.id.clone(),
                attempt,
                line,
            });
        }
    }

    fn job_ended(&mut self, job: &Job, info: Option<&JobInfo>) {
        self.d.adaptive.attempt_ended(
            &self.states[job.trial],
            (now() - job.start).max(0.0),
            job.finished.is_some() && info.is_none_or(|i| i.state == "COMPLETED"),
        );
        let (outcome, reason) = classify(job, info, &self.states[job.trial].queued.dir.log());
        let end = AttemptEnd {
            attempt: job.attempt,
            device: DEVICE.into(),
            start: job.start,
            outcome,
            exit_code: info.and_then(|i| i.exit_code),
            reason,
            peak_memory_bytes: None,
            best_metric: job.finished.and_then(|f| f.best_metric),
            job: Some(job.id.clone()),
        };
        let requeue = settle(
            &mut self.states[job.trial],
            &end,
            self.d.retries,
            self.interrupting,
            self.fanout,
        );
        let state = &mut self.states[job.trial];
        if requeue
            || self
                .d
                .adaptive
                .requeue_if_promoted(state, self.interrupting || self.leaving)
        {
            self.pending.push(job.trial);
            self.d.adaptive.sort(&self.states, &mut self.pending);
        }
    }

    /// First Ctrl-C: cancel the jobs (they checkpoint) or leave them
    /// running, as `--cancel-on-exit` says or the user answers. Second:
    /// stop following at once.
    fn on_interrupt(&mut self) {
        if self.interrupting {
            eprintln!("palisweep: no longer following the cancelled jobs");
            self.leaving = true;
            return;
        }
        let cancel = match self.d.on_interrupt {
            OnInterrupt::Cancel => true,
            OnInterrupt::Leave => false,
            OnInterrupt::Ask => ask_cancel(self.jobs.len()),
        };
        if cancel && !self.jobs.is_empty() {
            self.interrupting = true;
            let ids: Vec<String> = self.jobs.iter().map(|j| j.id.clone()).collect();
            eprintln!(
                "palisweep: cancelling {} Slurm job(s); their workers save a checkpoint (Ctrl-C again to stop waiting)",
                ids.len()
            );
            for job in &mut self.jobs {
                job.stop = Some(StopCause::Interrupt);
            }
            if let Err(e) = client::cancel(&ids) {
                eprintln!("palisweep: {e}");
            }
        } else if cancel {
            self.interrupting = true;
        } else {
            eprintln!(
                "palisweep: leaving {} Slurm job(s) running; `palisweep attach {}` follows them again",
                self.jobs.len(),
                self.d.sweep
            );
            self.leaving = true;
        }
    }

    fn finish(mut self) -> Summary {
        let pending = std::mem::take(&mut self.pending);
        fate::interrupt_pending(&mut self.states, pending, self.fanout);
        let left_running: Vec<(String, String)> = self
            .jobs
            .iter()
            .map(|j| (self.states[j.trial].queued.info.id.clone(), j.id.clone()))
            .collect();
        // Trials still running as jobs count with the interrupted.
        fate::summary(&self.states, self.interrupting, left_running)
    }
}

/// Asks on the terminal whether to cancel the jobs; without a terminal the
/// jobs are left running (cancelling is the one that loses work).
fn ask_cancel(jobs: usize) -> bool {
    if !std::io::stdin().is_terminal() {
        eprintln!(
            "palisweep: interrupted with no terminal to ask; leaving the jobs (use --cancel-on-exit to cancel them)"
        );
        return false;
    }
    eprint!(
        "\npalisweep: interrupted. Cancel the {jobs} Slurm job(s) (they checkpoint and stop), \
         or leave them running to attach later? [c]ancel / [L]eave: "
    );
    let mut answer = String::new();
    if std::io::stdin().read_line(&mut answer).is_err() {
        return false;
    }
    matches!(
        answer.trim().to_ascii_lowercase().as_str(),
        "c" | "cancel" | "y" | "yes"
    )
}

/// What the job's end means, and why in words: Slurm's accounting when
/// it has some, else the trial folder's events alone.
fn classify(
    job: &Job,
    info: Option<&JobInfo>,
    log: &std::path::Path,
) -> (AttemptOutcome, Option<String>) {
    let mut facts = ExitFacts {
        finished: job.finished.is_some(),
        failed: job.failed.as_ref(),
        stop: job.stop,
        ..ExitFacts::default()
    };
    let Some(info) = info else {
        // Slurm has forgotten the job (no accounting): its files decide.
        facts.completed = true;
        return facts.classify(String::new, || {
            format!(
                "Slurm no longer knows job {} and it left no result; see {}",
                job.id,
                log.display()
            )
        });
    };
    let slurm_says = |what: &str| {
        format!(
            "Slurm job {} {what} (state {}, reason {})",
            job.id, info.state, info.reason
        )
    };
    facts.completed = info.state == "COMPLETED";
    // A worker stopped by a signal palisweep did not send (scancel from
    // outside, preemption) exits as stopped: that is the job's loss, not a
    // stop. One at its ASHA rung stops by itself.
    facts.exit = WorkerExit::from_code(info.exit_code)
        .filter(|e| *e != WorkerExit::Stopped || job.stop == Some(StopCause::Rung));
    facts.backend = match info.state.as_str() {
        "OUT_OF_MEMORY" => Some(BackendEnd::OutOfMemory),
        "TIMEOUT" | "DEADLINE" => Some(BackendEnd::TimedOut),
        _ => None,
    };
    facts.classify(
        || slurm_says("ran past its time limit (slurm.time)"),
        || match info.state.as_str() {
            "CANCELLED" => slurm_says("was cancelled outside palisweep"),
            "PREEMPTED" => slurm_says("was preempted"),
            "NODE_FAIL" | "BOOT_FAIL" => slurm_says("lost its node"),
            "OUT_OF_MEMORY" => slurm_says("ran out of its memory allocation (slurm.mem_per_trial)"),
            _ => slurm_says(&format!(
                "failed with exit code {}{}",
                info.exit_code.map_or("?".into(), |c| c.to_string()),
                info.signal
                    .map_or(String::new(), |s| format!(", signal {s}"))
            )),
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(finished: bool, failed: Option<(FailureKind, String)>, stop: Option<StopCause>) -> Job {
        Job {
            trial: 0,
            attempt: 1,
            id: "7".into(),
            start: 0.0,
            tail: EventTail::from_offset(std::path::Path::new("/nonexistent"), 0),
            stop,
            failed,
            finished: finished.then_some(Finished {
                best_metric: Some(0.5),
            }),
        }
    }

    fn info(state: &str, code: i32, signal: Option<i32>) -> JobInfo {
        JobInfo {
            state: state.into(),
            reason: "None".into(),
            exit_code: Some(code),
            signal,
        }
    }

    fn log() -> std::path::PathBuf {
        "/r/s/trials/t/worker.log".into()
    }

    #[test]
    fn slurm_states_map_onto_the_local_outcomes() {
        let q = log();
        let cases = [
            (
                job(true, None, None),
                info("COMPLETED", 0, None),
                AttemptOutcome::Finished,
            ),
            (
                job(
                    false,
                    Some((FailureKind::Oom, "CUDA out of memory".into())),
                    None,
                ),
                info("FAILED", 3, None),
                AttemptOutcome::OutOfMemory,
            ),
            (
                job(false, None, None),
                info("OUT_OF_MEMORY", 0, None),
                AttemptOutcome::OutOfMemory,
            ),
            (
                job(false, None, None),
                info("FAILED", 2, None),
                AttemptOutcome::InvalidInput,
            ),
            (
                job(false, None, None),
                info("TIMEOUT", 0, Some(15)),
                AttemptOutcome::TimedOut,
            ),
            (
                job(false, None, None),
                info("CANCELLED", 4, Some(15)),
                AttemptOutcome::Crashed,
            ),
            (
                job(false, None, Some(StopCause::Interrupt)),
                info("CANCELLED", 4, None),
                AttemptOutcome::Stopped,
            ),
            (
                job(false, None, Some(StopCause::Prune)),
                info("CANCELLED", 4, None),
                AttemptOutcome::Pruned,
            ),
            (
                job(false, None, None),
                info("PREEMPTED", 0, None),
                AttemptOutcome::Crashed,
            ),
            // Exit 0 without a `finished` event is not a finished trial.
            (
                job(false, None, None),
                info("COMPLETED", 0, None),
                AttemptOutcome::Crashed,
            ),
        ];
        for (job, info, expected) in cases {
            let (outcome, reason) = classify(&job, Some(&info), &q);
            assert_eq!(outcome, expected, "{info:?}");
            assert_eq!(
                reason.is_none(),
                expected == AttemptOutcome::Finished,
                "{info:?}"
            );
        }
        let (_, reason) = classify(
            &job(false, None, None),
            Some(&info("CANCELLED", 0, Some(15))),
            &q,
        );
        assert!(reason.unwrap().contains("cancelled outside palisweep"));
    }

    #[test]
    fn a_job_slurm_forgot_is_judged_by_what_its_worker_wrote() {
        let q = log();
        assert_eq!(
            classify(&job(true, None, None), None, &q).0,
            AttemptOutcome::Finished
        );
        let (outcome, reason) = classify(&job(false, None, None), None, &q);
        assert_eq!(outcome, AttemptOutcome::Crashed);
        assert!(reason.unwrap().contains("no longer knows job 7"));
    }
}

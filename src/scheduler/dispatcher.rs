//! The dispatcher: one `tokio::select!` loop that owns the queue, the
//! devices, the running workers, the signals and the clock. It decides what
//! starts where, reads what the executor reports, applies the failure rules
//! (retries, out-of-memory back-off, timeouts) and tells the consumers
//! everything through [`SweepEvent`]s. It never blocks on a consumer.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use super::adaptive::Adaptive;
use super::budget_gate::Running as BudgetRunning;
use super::executor::{self, ExecutorEvent, Launch, RunId};
use super::fate::{
    self, AttemptEnd, BackendEnd, ExitFacts, StopCause, TrialState, settle, tail_text,
};
use super::memory_probe::MemoryProbe;
use super::oom_killer;
use super::queue::{QueuedTrial, Summary};
use super::slots::Slots;
use crate::devices::detect::{DeviceKind, Inventory, InventorySource};
use crate::events::event::{AttemptOutcome, SweepEvent, TrialStatus, now};
use crate::events::fanout::Fanout;
use crate::plan::placement::Limits;
use crate::worker::contract::{StopAfter, WorkerCommand, WorkerExit};
use crate::worker::protocol::{FailureKind, WorkerEvent};

/// How often timeouts are checked and memory is sampled.
const TICK: Duration = Duration::from_millis(500);

/// Everything the dispatcher needs; built by the `run` command.
pub struct Dispatch {
    pub trials: Vec<QueuedTrial>,
    pub inventory: Inventory,
    pub limits: Limits,
    pub retries: u32,
    pub trial_timeout: Option<Duration>,
    pub stall_timeout: Option<Duration>,
    /// How long a worker gets between SIGTERM and SIGKILL.
    pub kill_grace: Duration,
    /// The palisweep executable the workers run.
    pub exe: PathBuf,
    /// Early stopping, suggestions and the budget.
    pub adaptive: Adaptive,
}

struct Running {
    trial: usize,
    attempt: u32,
    device: usize,
    bytes: u64,
    pid: u32,
    started: Instant,
    start_time: f64,
    last_output: Instant,
    stop: Option<StopCause>,
    term_sent: Option<Instant>,
    killed: bool,
    /// The kernel's OOM-kill count when it started (`oom_killer`).
    oom_kills_at_start: Option<u64>,
    peak: Option<u64>,
    failed: Option<(FailureKind, String)>,
    /// Set by a `finished` event (cleared by a later `started`).
    finished: Option<Finished>,
}

#[derive(Clone, Copy, Debug)]
struct Finished {
    best_metric: Option<f64>,
}

/// How a worker process ended.
struct Exit {
    code: Option<i32>,
    signal: Option<i32>,
    stderr_tail: Vec<String>,
}

/// The loop's state: everything the user sees is decided here.
struct Dispatcher<'a> {
    fanout: &'a Fanout,
    inventory: Inventory,
    slots: Slots,
    probe: MemoryProbe,
    threads: Vec<u32>,
    retries: u32,
    trial_timeout: Option<Duration>,
    stall_timeout: Option<Duration>,
    kill_grace: Duration,
    exe: PathBuf,
    adaptive: Adaptive,
    /// Trials that may run at once: a suggestion is asked for while fewer run.
    capacity: usize,
    states: Vec<TrialState>,
    /// Queued trial indices, largest estimate first.
    pending: Vec<usize>,
    running: HashMap<RunId, Running>,
    next_run: RunId,
    interrupting: bool,
    /// Set when a device frees up or the queue changes: only then can a
    /// queued trial start, so only then is the queue walked (not on every
    /// worker line).
    placement_changed: bool,
    tx: mpsc::UnboundedSender<ExecutorEvent>,
}

/// Runs the sweep until every trial has ended or an interrupt has stopped
/// the workers. `interrupts` delivers one message per Ctrl-C (or SIGTERM).
pub async fn dispatch(
    dispatch: Dispatch,
    fanout: &Fanout,
    mut interrupts: mpsc::UnboundedReceiver<()>,
) -> Summary {
    let (tx, mut rx) = mpsc::unbounded_channel::<ExecutorEvent>();
    let uses_gpus = matches!(
        dispatch.inventory.source,
        InventorySource::Nvml | InventorySource::NvidiaSmi
    );
    let mut states: Vec<TrialState> = dispatch.trials.into_iter().map(TrialState::new).collect();
    let pending = dispatch.adaptive.first_queue(&mut states);
    let capacity =
        dispatch.inventory.devices.len() * dispatch.limits.max_trials_per_device.max(1) as usize;
    let mut d = Dispatcher {
        fanout,
        slots: Slots::new(&dispatch.inventory, dispatch.limits),
        probe: MemoryProbe::new(uses_gpus),
        threads: worker_threads(&dispatch.inventory, dispatch.limits),
        inventory: dispatch.inventory,
        retries: dispatch.retries,
        trial_timeout: dispatch.trial_timeout,
        stall_timeout: dispatch.stall_timeout,
        kill_grace: dispatch.kill_grace,
        exe: dispatch.exe,
        adaptive: dispatch.adaptive,
        capacity,
        pending,
        states,
        running: HashMap::new(),
        next_run: 0,
        interrupting: false,
        placement_changed: true,
        tx,
    };
    d.sort_pending();
    let mut ticker = tokio::time::interval(TICK);
    loop {
        if !d.interrupting {
            d.top_up();
        }
        if !d.interrupting && d.placement_changed {
            d.placement_changed = false;
            d.launch_ready();
        }
        if d.running.is_empty() && (d.pending.is_empty() || d.interrupting) {
            if !d.interrupting {
                d.adaptive.stop_paused_trials(&mut d.states, d.fanout);
            }
            break;
        }
        tokio::select! {
            Some(event) = rx.recv() => d.on_executor(event),
            Some(()) = interrupts.recv() => d.on_interrupt(),
            _ = ticker.tick() => d.on_tick(),
        }
    }
    d.finish()
}

impl Dispatcher<'_> {
    /// Asks for suggested trials while a device has room.
    fn top_up(&mut self) {
        if !self.adaptive.suggests() {
            return;
        }
        let running = self.running_costs();
        if self.adaptive.top_up(
            &mut self.states,
            &mut self.pending,
            self.running.len(),
            self.capacity,
            &running,
            self.fanout,
        ) {
            self.placement_changed = true;
        }
    }

    /// Relative cost and seconds so far of each running trial.
    fn running_costs(&self) -> Vec<BudgetRunning> {
        self.running
            .values()
            .map(|r| {
                let info = &self.states[r.trial].queued.info;
                BudgetRunning {
                    trial: info.id.clone(),
                    rel_cost: info.rel_cost,
                    elapsed_s: r.started.elapsed().as_secs_f64(),
                }
            })
            .collect()
    }

    fn sort_pending(&mut self) {
        self.adaptive.sort(&self.states, &mut self.pending);
    }

    /// Starts every queued trial that fits somewhere now.
    fn launch_ready(&mut self) {
        let pending = std::mem::take(&mut self.pending);
        for i in pending {
            if let Some(reason) = self
                .adaptive
                .refusal(&self.states[i], || self.running_costs())
            {
                fate::end_early(&mut self.states[i], reason, self.fanout);
                continue;
            }
            let bytes = self.states[i].queued.memory_now();
            let Some(device) = self.slots.choose(bytes) else {
                if self.slots.could_ever_fit(bytes) {
                    self.pending.push(i);
                } else {
                    // Only a back-off changes a trial's size; the plan
                    // rejected trials that fit nowhere to begin with.
                    self.fail(i, "fits on no device".into());
                }
                continue;
            };
            self.next_run += 1;
            let run = self.next_run;
            let stop_after = self.adaptive.stop_after(&self.states[i].queued.info.id);
            match start(
                run,
                &self.states[i],
                stop_after,
                device,
                &self.inventory,
                self.threads[device],
                &self.exe,
                &self.tx,
                self.fanout,
            ) {
                Ok((pid, start_time)) => {
                    self.slots.take(device, bytes);
                    self.adaptive.launched(&self.states[i].queued.info.id);
                    let state = &mut self.states[i];
                    self.running.insert(
                        run,
                        Running {
                            trial: i,
                            attempt: state.queued.next_attempt,
                            device,
                            bytes,
                            pid,
                            started: Instant::now(),
                            start_time,
                            last_output: Instant::now(),
                            stop: None,
                            term_sent: None,
                            killed: false,
                            oom_kills_at_start: super::oom_killer::kills_so_far(),
                            peak: None,
                            failed: None,
                            finished: None,
                        },
                    );
                    state.queued.next_attempt += 1;
                    state.status = TrialStatus::Running;
                }
                Err(error) => self.fail(i, format!("cannot start a worker: {error}")),
            }
        }
    }

    fn fail(&mut self, trial: usize, reason: String) {
        fate::fail(&mut self.states[trial], reason, self.fanout);
    }

    fn on_executor(&mut self, event: ExecutorEvent) {
        match event {
            ExecutorEvent::Line { run, line } => {
                let Some(r) = self.running.get_mut(&run) else {
                    return;
                };
                r.last_output = Instant::now();
                let (trial, attempt) = (r.trial, r.attempt);
                match &line.event {
                    WorkerEvent::Failed { kind, message } => {
                        r.failed = Some((*kind, message.clone()));
                    }
                    WorkerEvent::Finished { best_metric, .. } => {
                        r.finished = Some(Finished {
                            best_metric: *best_metric,
                        });
                    }
                    WorkerEvent::Started { .. } => r.finished = None,
                    WorkerEvent::Eval {
                        step,
                        epoch,
                        metrics,
                        ..
                    } => {
                        let stop = self.adaptive.on_eval(
                            &mut self.states,
                            &mut self.pending,
                            trial,
                            (*step, *epoch),
                            metrics,
                        );
                        self.on_stop_decided(run, stop);
                    }
                    _ => {}
                }
                self.fanout.send(&SweepEvent::Worker {
                    trial: self.states[trial].queued.info.id.clone(),
                    attempt,
                    line,
                });
            }
            ExecutorEvent::Noise { run } => {
                if let Some(r) = self.running.get_mut(&run) {
                    r.last_output = Instant::now();
                }
            }
            ExecutorEvent::Exited {
                run,
                code,
                signal,
                stderr_tail,
            } => {
                let Some(r) = self.running.remove(&run) else {
                    return;
                };
                self.slots.release(r.device, r.bytes);
                self.placement_changed = true;
                self.adaptive.attempt_ended(
                    &self.states[r.trial],
                    r.started.elapsed().as_secs_f64(),
                    r.finished.is_some() && code == Some(0),
                );
                let exit = Exit {
                    code,
                    signal,
                    stderr_tail,
                };
                let requeue = exited(
                    &mut self.states[r.trial],
                    &r,
                    &exit,
                    self.retries,
                    self.interrupting,
                    &self.inventory,
                    self.fanout,
                );
                let state = &mut self.states[r.trial];
                if requeue || self.adaptive.requeue_if_promoted(state, self.interrupting) {
                    self.pending.push(r.trial);
                    self.sort_pending();
                }
            }
        }
    }

    /// What an evaluation decided for its worker: a pruned one is stopped
    /// (SIGTERM, it checkpoints); one at its rung stops by itself, and the
    /// trials its result promoted may start now.
    fn on_stop_decided(&mut self, run: RunId, stop: Option<StopCause>) {
        let Some(r) = self.running.get_mut(&run) else {
            return;
        };
        match stop {
            Some(cause) if r.stop.is_some() => {
                self.placement_changed |= cause == StopCause::Rung;
            }
            Some(StopCause::Rung) => {
                r.stop = Some(StopCause::Rung);
                self.placement_changed = true;
            }
            Some(cause) => {
                r.stop = Some(cause);
                r.term_sent = Some(Instant::now());
                executor::signal_group(r.pid, false);
            }
            None => {}
        }
    }

    /// First: stop launching, SIGTERM every worker (they checkpoint and
    /// exit). Second: SIGKILL.
    fn on_interrupt(&mut self) {
        if self.interrupting {
            eprintln!("palisweep: killing {} worker(s)", self.running.len());
            for r in self.running.values_mut() {
                executor::signal_group(r.pid, true);
                r.killed = true;
            }
            return;
        }
        self.interrupting = true;
        eprintln!(
            "palisweep: interrupted; {} worker(s) are saving a checkpoint (Ctrl-C again to kill them)",
            self.running.len()
        );
        for r in self.running.values_mut() {
            r.stop = Some(StopCause::Interrupt);
            r.term_sent = Some(Instant::now());
            executor::signal_group(r.pid, false);
        }
    }

    /// Samples memory, enforces the timeouts, escalates SIGTERM to SIGKILL.
    fn on_tick(&mut self) {
        for r in self.running.values_mut() {
            if let Some(bytes) = self.probe.sample(r.pid, &self.inventory.devices[r.device]) {
                r.peak = Some(r.peak.map_or(bytes, |p| p.max(bytes)));
            }
            if r.stop.is_none() {
                if self.trial_timeout.is_some_and(|t| r.started.elapsed() > t) {
                    r.stop = Some(StopCause::Timeout);
                } else if self
                    .stall_timeout
                    .is_some_and(|t| r.last_output.elapsed() > t)
                {
                    r.stop = Some(StopCause::Stall);
                }
                if r.stop.is_some() {
                    r.term_sent = Some(Instant::now());
                    executor::signal_group(r.pid, false);
                }
            }
            if !r.killed && r.term_sent.is_some_and(|t| t.elapsed() > self.kill_grace) {
                executor::signal_group(r.pid, true);
                r.killed = true;
            }
        }
    }

    fn finish(mut self) -> Summary {
        let pending = std::mem::take(&mut self.pending);
        fate::interrupt_pending(&mut self.states, pending, self.fanout);
        fate::summary(&self.states, self.interrupting, Vec::new())
    }
}

/// Torch threads per worker on each device: a host slot's share, or the
/// host's cores split between the GPUs' concurrent trials.
fn worker_threads(inventory: &Inventory, limits: Limits) -> Vec<u32> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get() as u32);
    let gpu_share = (cores
        / (inventory.devices.len() as u32 * limits.max_trials_per_device.max(1)).max(1))
    .max(1);
    inventory
        .devices
        .iter()
        .map(|d| d.threads.unwrap_or(gpu_share).max(1))
        .collect()
}

/// Starts one attempt of `state` on `device`; returns the pid and start time.
#[allow(clippy::too_many_arguments)]
fn start(
    run: RunId,
    state: &TrialState,
    stop_after: Option<StopAfter>,
    device: usize,
    inventory: &Inventory,
    threads: u32,
    exe: &std::path::Path,
    tx: &mpsc::UnboundedSender<ExecutorEvent>,
    fanout: &Fanout,
) -> std::io::Result<(u32, f64)> {
    let q = &state.queued;
    let dev = &inventory.devices[device];
    let mut env = vec![
        ("OMP_NUM_THREADS".to_owned(), threads.to_string()),
        ("MKL_NUM_THREADS".to_owned(), threads.to_string()),
        ("CUDA_DEVICE_ORDER".to_owned(), "PCI_BUS_ID".to_owned()),
    ];
    let real_gpu = dev.kind == DeviceKind::Cuda
        && matches!(
            inventory.source,
            InventorySource::Nvml | InventorySource::NvidiaSmi
        );
    // Host slots and made-up GPUs run on the CPU and see no GPU.
    let (visible, worker_device) = if real_gpu {
        (visible_device(dev), "cuda:0")
    } else {
        (String::new(), "cpu")
    };
    env.push(("CUDA_VISIBLE_DEVICES".to_owned(), visible));
    let launch = Launch {
        run,
        exe: exe.to_owned(),
        command: WorkerCommand {
            trial_dir: q.dir.path().to_owned(),
            attempt: q.next_attempt,
            threads,
            device: Some(worker_device.to_owned()),
            sets: q.backoff_sets(),
            watch_stdin: true,
            deterministic: false,
            stop_after,
        },
        env,
        log: q.dir.log(),
    };
    std::fs::create_dir_all(q.dir.path())?;
    let pid = executor::spawn(&launch, tx)?;
    let time = now();
    fate::record_start(
        fanout,
        q,
        q.next_attempt,
        &dev.label,
        (Some(pid), None),
        time,
    );
    Ok((pid, time))
}

/// The worker's `CUDA_VISIBLE_DEVICES`: the GPU's UUID when known (immune
/// to renumbering), else its index among the parent's visible GPUs.
fn visible_device(dev: &crate::devices::detect::Device) -> String {
    if let Some(uuid) = &dev.uuid {
        return uuid.clone();
    }
    let parent = std::env::var("CUDA_VISIBLE_DEVICES").unwrap_or_default();
    parent
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .nth(dev.index as usize)
        .map_or_else(|| dev.index.to_string(), str::to_owned)
}

/// What the attempt's exit means, and why in words.
fn classify(r: &Running, exit: &Exit) -> (AttemptOutcome, Option<String>) {
    let worker_exit = WorkerExit::from_code(exit.code);
    let oom_killed = oom_killer::killed_it(exit.signal, r.killed, r.oom_kills_at_start);
    let facts = ExitFacts {
        completed: worker_exit == Some(WorkerExit::Finished),
        finished: r.finished.is_some(),
        exit: worker_exit,
        failed: r.failed.as_ref(),
        stop: r.stop,
        backend: oom_killed.then_some(BackendEnd::OutOfMemory),
    };
    facts.classify(
        || "ran past resources.trial_timeout".to_owned(),
        || match exit.signal {
            _ if oom_killed => oom_killer::REASON.to_owned(),
            Some(signal) => format!("killed by signal {signal}{}", tail_text(&exit.stderr_tail)),
            None => format!(
                "exit code {}{}",
                exit.code.map_or("?".into(), |c| c.to_string()),
                tail_text(&exit.stderr_tail)
            ),
        },
    )
}

/// Classifies a worker's exit and settles its trial; true when the trial
/// goes back to the queue.
fn exited(
    state: &mut TrialState,
    r: &Running,
    exit: &Exit,
    retries: u32,
    interrupting: bool,
    inventory: &Inventory,
    fanout: &Fanout,
) -> bool {
    let (outcome, reason) = classify(r, exit);
    let end = AttemptEnd {
        attempt: r.attempt,
        device: inventory.devices[r.device].label.clone(),
        start: r.start_time,
        outcome,
        exit_code: exit.code,
        reason,
        peak_memory_bytes: r.peak,
        best_metric: r.finished.and_then(|f| f.best_metric),
        job: None,
    };
    settle(state, &end, retries, interrupting, fanout)
}

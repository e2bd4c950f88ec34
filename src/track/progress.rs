//! The progress display, a consumer of the event stream: on a terminal, a
//! sweep bar (done/total, failures, ETA) and a line per running trial
//! (id, device, step, loss, samples/s); otherwise, or with `--quiet`, plain
//! log lines on stderr (starts, ends, failures, and a step line at most
//! every few seconds per trial).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::events::event::{AttemptOutcome, EventSink, SinkError, SweepEvent, TrialStatus};
use crate::worker::protocol::WorkerEvent;

/// Plain mode prints a trial's step at most this often.
const LINE_EVERY: Duration = Duration::from_secs(10);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProgressMode {
    /// indicatif bars on a terminal.
    Bars,
    /// One line per event worth reading.
    Lines,
    /// Failures only.
    Quiet,
}

impl ProgressMode {
    /// Bars on a terminal, lines otherwise; quiet when asked.
    pub fn detect(quiet: bool) -> Self {
        use std::io::IsTerminal as _;
        if quiet {
            ProgressMode::Quiet
        } else if std::io::stderr().is_terminal() {
            ProgressMode::Bars
        } else {
            ProgressMode::Lines
        }
    }
}

struct TrialLine {
    bar: Option<ProgressBar>,
    total_steps: u64,
    device: String,
    last_printed: Option<Instant>,
    loss: Option<f64>,
    samples_per_s: Option<f64>,
    val: Option<(String, f64)>,
}

pub struct ProgressSink {
    mode: ProgressMode,
    multi: MultiProgress,
    sweep: Option<ProgressBar>,
    trials: HashMap<String, TrialLine>,
    total: u64,
    done: u64,
    failed: u64,
    select_metric: String,
}

impl ProgressSink {
    pub fn new(mode: ProgressMode) -> Self {
        let multi = MultiProgress::with_draw_target(if mode == ProgressMode::Bars {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        });
        ProgressSink {
            mode,
            multi,
            sweep: None,
            trials: HashMap::new(),
            total: 0,
            done: 0,
            failed: 0,
            select_metric: String::new(),
        }
    }

    fn say(&self, line: &str) {
        match self.mode {
            ProgressMode::Bars => {
                let _ = self.multi.println(line);
            }
            ProgressMode::Lines => eprintln!("{line}"),
            ProgressMode::Quiet => {}
        }
    }

    /// Failures are shown even in quiet mode.
    fn warn(&self, line: &str) {
        if self.mode == ProgressMode::Quiet {
            eprintln!("{line}");
        } else {
            self.say(line);
        }
    }

    fn sweep_message(&self) -> String {
        let running = self.trials.len();
        let mut parts = vec![format!("{running} running")];
        if self.failed > 0 {
            parts.push(format!("{} failed", self.failed));
        }
        parts.join(", ")
    }

    fn refresh_sweep(&self) {
        if let Some(bar) = &self.sweep {
            bar.set_position(self.done);
            bar.set_message(self.sweep_message());
        }
    }

    fn trial_message(line: &TrialLine, step: u64, total: u64) -> String {
        use std::fmt::Write as _;
        let mut text = format!("{} step {step}/{total}", line.device);
        if let Some(loss) = line.loss {
            let _ = write!(text, " loss {loss:.4}");
        }
        if let Some(rate) = line.samples_per_s {
            let _ = write!(text, " {rate:.1} samples/s");
        }
        if let Some((name, value)) = &line.val {
            let _ = write!(text, " {name} {value:.4}");
        }
        text
    }

    fn handle_one(&mut self, event: &SweepEvent) {
        match event {
            SweepEvent::SweepStarted { sweep, resumed, .. } => {
                self.total = sweep.total_trials as u64;
                self.select_metric.clone_from(&sweep.select_metric);
                self.say(&format!(
                    "{} sweep `{}`: {} trial(s) on {}",
                    if *resumed { "resuming" } else { "starting" },
                    sweep.name,
                    sweep.total_trials,
                    sweep.devices.join(", ")
                ));
                if self.mode == ProgressMode::Bars {
                    let bar = self.multi.add(ProgressBar::new(self.total));
                    bar.set_style(
                        ProgressStyle::with_template(
                            "{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} trials, {msg} (ETA {eta})",
                        )
                        .unwrap_or_else(|_| ProgressStyle::default_bar()),
                    );
                    bar.enable_steady_tick(Duration::from_millis(200));
                    self.sweep = Some(bar);
                }
            }
            SweepEvent::TrialRecorded { status, .. } => {
                if matches!(status, TrialStatus::Finished | TrialStatus::Pruned) {
                    self.done += 1;
                    self.refresh_sweep();
                }
            }
            SweepEvent::AttemptStarted {
                trial,
                attempt,
                device,
                batch_size,
                grad_accum,
                ..
            } => self.attempt_started(trial, *attempt, device, *batch_size, *grad_accum),
            SweepEvent::Worker { trial, line, .. } => self.worker(trial, &line.event),
            SweepEvent::AttemptEnded {
                trial,
                attempt,
                outcome,
                reason,
                ..
            } => {
                if *outcome != AttemptOutcome::Finished {
                    let reason = reason.as_deref().unwrap_or("");
                    let first = reason.lines().next().unwrap_or("");
                    self.warn(&format!(
                        "{trial}: attempt {attempt} {}: {first}",
                        outcome_text(*outcome)
                    ));
                }
                if let Some(line) = self.trials.remove(trial)
                    && let Some(bar) = line.bar
                {
                    bar.finish_and_clear();
                    self.multi.remove(&bar);
                }
                self.refresh_sweep();
            }
            SweepEvent::TrialEnded {
                trial,
                status,
                reason,
                best_metric,
                ..
            } => self.trial_ended(trial, *status, reason.as_deref(), *best_metric),
            SweepEvent::Artifact { .. } => {}
            SweepEvent::SweepEnded { status, counts, .. } => {
                if let Some(bar) = self.sweep.take() {
                    bar.finish_and_clear();
                }
                self.say(&format!(
                    "sweep {}: {} finished, {} failed, {} pruned, {} interrupted",
                    status.as_str(),
                    counts.finished,
                    counts.failed,
                    counts.pruned,
                    counts.interrupted
                ));
            }
        }
    }

    fn attempt_started(
        &mut self,
        trial: &str,
        attempt: u32,
        device: &str,
        batch_size: u32,
        grad_accum: u32,
    ) {
        self.say(&format!(
            "start  {trial} on {device} (attempt {attempt}, batch {batch_size} × {grad_accum})"
        ));
        let bar = (self.mode == ProgressMode::Bars).then(|| {
            let bar = self.multi.add(ProgressBar::new(1));
            bar.set_style(
                ProgressStyle::with_template("  {prefix} {bar:20} {msg}")
                    .unwrap_or_else(|_| ProgressStyle::default_bar()),
            );
            bar.set_prefix(trial.to_owned());
            bar.set_message(format!("{device} starting"));
            bar
        });
        self.trials.insert(
            trial.to_owned(),
            TrialLine {
                bar,
                total_steps: 0,
                device: device.to_owned(),
                last_printed: None,
                loss: None,
                samples_per_s: None,
                val: None,
            },
        );
        self.refresh_sweep();
    }

    fn trial_ended(
        &mut self,
        trial: &str,
        status: TrialStatus,
        reason: Option<&str>,
        best_metric: Option<f64>,
    ) {
        match status {
            TrialStatus::Finished | TrialStatus::Pruned => {
                self.done += 1;
                let best = best_metric
                    .map(|v| format!(" ({} {v:.4})", self.select_metric))
                    .unwrap_or_default();
                self.say(&format!("done   {trial} {}{best}", status.as_str()));
            }
            TrialStatus::Failed => {
                self.done += 1;
                self.failed += 1;
                self.warn(&format!(
                    "FAILED {trial}: {}",
                    reason.unwrap_or("unknown reason")
                ));
            }
            _ => {}
        }
        self.refresh_sweep();
    }

    fn worker(&mut self, trial: &str, event: &WorkerEvent) {
        let Some(line) = self.trials.get_mut(trial) else {
            return;
        };
        match event {
            WorkerEvent::Started {
                total_steps,
                resumed_from,
                ..
            } => {
                line.total_steps = *total_steps;
                if let Some(bar) = &line.bar {
                    bar.set_length((*total_steps).max(1));
                    bar.set_position(*resumed_from);
                }
            }
            WorkerEvent::Step { step, metrics, .. } => {
                line.loss = metrics.get("train/loss").copied();
                line.samples_per_s = metrics.get("perf/samples_per_s").copied();
                // Formatted only when shown: bars on every step, lines at most
                // every LINE_EVERY, nothing when quiet.
                if let Some(bar) = &line.bar {
                    bar.set_position(*step);
                    bar.set_message(Self::trial_message(line, *step, line.total_steps));
                } else if self.mode != ProgressMode::Quiet
                    && line.last_printed.is_none_or(|t| t.elapsed() > LINE_EVERY)
                {
                    line.last_printed = Some(Instant::now());
                    let message = Self::trial_message(line, *step, line.total_steps);
                    let text = format!("       {trial} {message}");
                    self.say(&text);
                }
            }
            WorkerEvent::Eval { metrics, .. } => {
                let metric = metrics
                    .get_key_value(&self.select_metric)
                    .or_else(|| metrics.iter().find(|(k, _)| k.ends_with("/loss")));
                if let Some((name, value)) = metric {
                    line.val = Some((name.clone(), *value));
                }
            }
            _ => {}
        }
    }
}

fn outcome_text(outcome: AttemptOutcome) -> &'static str {
    match outcome {
        AttemptOutcome::Finished => "finished",
        AttemptOutcome::InvalidInput => "failed on bad input",
        AttemptOutcome::OutOfMemory => "ran out of memory",
        AttemptOutcome::Crashed => "crashed",
        AttemptOutcome::TimedOut => "timed out",
        AttemptOutcome::Stalled => "stalled",
        AttemptOutcome::OrchestratorLost => "orchestrator lost",
        AttemptOutcome::Stopped => "stopped",
        AttemptOutcome::Pruned => "pruned (worse than the median)",
    }
}

impl EventSink for ProgressSink {
    fn name(&self) -> &'static str {
        "progress"
    }

    fn handle(&mut self, events: &[SweepEvent]) -> Result<(), SinkError> {
        for event in events {
            self.handle_one(event);
        }
        Ok(())
    }
}

//! The progress display, a consumer of the event stream: on a terminal, a
//! sweep bar (done/total, failures, ETA) and a line per running trial
//! (id, its varying hyperparameters, device, step, loss, samples/s);
//! otherwise, or with `--quiet`, plain log lines on stderr (starts, ends,
//! failures, a step line at most every few seconds per trial, and an
//! overall line every minute). The ETA weighs trials by the plan's relative
//! cost and the rate measured so far (`track/eta.rs`). The sweep's summary
//! is `run`'s to print, once.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use super::eta::{self, Progress};
use crate::events::event::{AttemptOutcome, EventSink, SinkError, SweepEvent, TrialStatus};
use crate::worker::protocol::WorkerEvent;

/// Plain mode prints a trial's step at most this often.
const LINE_EVERY: Duration = Duration::from_secs(10);
/// Plain mode prints the sweep's overall line at most this often.
const OVERALL_EVERY: Duration = Duration::from_secs(60);
/// A trial's label shows at most this many characters of its parameters.
const LABEL_CHARS: usize = 48;

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
    progress: Progress,
    started_at: Option<Instant>,
    last_overall: Option<Instant>,
    /// Each trial's varying hyperparameters, short (`lr=1e-4 r=8`).
    labels: HashMap<String, String>,
    /// Trials that ended (this run or before): a trial recorded again
    /// after a resume's reconciliation counts once.
    ended: std::collections::HashSet<String>,
}

/// `train.lr=0.0001, lora.r=8` → `lr=0.0001 r=8`, cut to [`LABEL_CHARS`].
fn label(params: &std::collections::BTreeMap<String, serde_json::Value>) -> String {
    let text = params
        .iter()
        .map(|(k, v)| {
            let key = k.rsplit('.').next().unwrap_or(k);
            let value = v.as_str().map_or_else(|| v.to_string(), str::to_owned);
            format!("{key}={value}")
        })
        .collect::<Vec<_>>()
        .join(" ");
    if text.chars().count() > LABEL_CHARS {
        format!(
            "{}…",
            text.chars().take(LABEL_CHARS - 1).collect::<String>()
        )
    } else {
        text
    }
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
            progress: Progress::default(),
            started_at: None,
            last_overall: None,
            labels: HashMap::new(),
            ended: std::collections::HashSet::new(),
        }
    }

    /// `ETA 12:05` once a rate is known.
    fn eta_text(&self) -> String {
        self.started_at
            .and_then(|t| self.progress.eta(t.elapsed()))
            .map_or_else(|| "ETA -".to_owned(), |d| format!("ETA {}", eta::clock(d)))
    }

    /// In plain mode, the whole sweep's state when a trial ends and at
    /// least every [`OVERALL_EVERY`] while trials run.
    fn overall_line(&mut self, now: bool) {
        if self.mode != ProgressMode::Lines || self.total == 0 {
            return;
        }
        let Some(start) = self.started_at else { return };
        let since = self.last_overall.unwrap_or(start);
        if !now && since.elapsed() < OVERALL_EVERY {
            return;
        }
        self.last_overall = Some(Instant::now());
        self.say(&format!(
            "sweep  {}/{} done, {} running, {} failed; {:.0}% of the work; elapsed {}, {}",
            self.done,
            self.total,
            self.trials.len(),
            self.failed,
            100.0 * self.progress.fraction_done(),
            eta::clock(start.elapsed()),
            self.eta_text()
        ));
    }

    fn trial_name(&self, trial: &str) -> String {
        match self.labels.get(trial) {
            Some(label) if !label.is_empty() => format!("{trial} ({label})"),
            _ => trial.to_owned(),
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
        format!("{} ({})", parts.join(", "), self.eta_text())
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
                self.started_at = Some(Instant::now());
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
                            "{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} trials, {msg}",
                        )
                        .unwrap_or_else(|_| ProgressStyle::default_bar()),
                    );
                    bar.enable_steady_tick(Duration::from_millis(200));
                    self.sweep = Some(bar);
                }
            }
            SweepEvent::TrialRecorded { trial, status } => {
                let done = matches!(status, TrialStatus::Finished | TrialStatus::Pruned);
                self.labels.insert(trial.id.clone(), label(&trial.params));
                self.progress.add_trial(&trial.id, trial.rel_cost, done);
                if done && self.ended.insert(trial.id.clone()) {
                    self.done += 1;
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
            SweepEvent::SweepEnded { .. } => {
                if let Some(bar) = self.sweep.take() {
                    bar.finish_and_clear();
                }
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
            "start  {} on {device} (attempt {attempt}, batch {batch_size} × {grad_accum})",
            self.trial_name(trial)
        ));
        let bar = (self.mode == ProgressMode::Bars).then(|| {
            let bar = self.multi.add(ProgressBar::new(1));
            bar.set_style(
                ProgressStyle::with_template("  {prefix} {bar:20} {msg}")
                    .unwrap_or_else(|_| ProgressStyle::default_bar()),
            );
            bar.set_prefix(self.trial_name(trial));
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
                if !self.ended.insert(trial.to_owned()) {
                    return;
                }
                self.done += 1;
                self.progress.ended(trial);
                let best = best_metric
                    .map(|v| format!(" ({} {v:.4})", self.select_metric))
                    .unwrap_or_default();
                self.say(&format!("done   {trial} {}{best}", status.as_str()));
                self.overall_line(true);
            }
            TrialStatus::Failed => {
                if !self.ended.insert(trial.to_owned()) {
                    return;
                }
                self.done += 1;
                self.failed += 1;
                self.progress.ended(trial);
                self.warn(&format!(
                    "FAILED {trial}: {}",
                    reason.unwrap_or("unknown reason")
                ));
                self.overall_line(true);
            }
            _ => {}
        }
        self.refresh_sweep();
    }

    fn worker(&mut self, trial: &str, event: &WorkerEvent) {
        match event {
            WorkerEvent::Started {
                total_steps,
                resumed_from,
                ..
            } => self.progress.started(trial, *resumed_from, *total_steps),
            WorkerEvent::Step { step, .. } => {
                let total = self.trials.get(trial).map_or(0, |l| l.total_steps);
                self.progress.step(trial, *step, total);
            }
            _ => {}
        }
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
        AttemptOutcome::Paused => "paused at a rung",
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
        self.refresh_sweep();
        self.overall_line(false);
        Ok(())
    }
}

//! What adaptive search asks of a backend's loop, the same for the local
//! dispatcher and the Slurm one: which queued trial goes first, whether the
//! budget lets it start, the step its attempt stops after (its ASHA rung),
//! what an evaluation decides (a median prune, a rung result that promotes
//! paused trials), when to ask TPE for the next trial, and how paused
//! trials end. The backends only start, stop and watch workers.

use std::collections::BTreeMap;

use super::budget_gate::{BudgetGate, Running, refusal};
use super::fate::{self, StopCause, TrialState};
use super::promotions::Promotions;
use super::pruner::MedianPruner;
use super::suggest::Suggestions;
use crate::events::event::{SweepEvent, TrialStatus};
use crate::events::fanout::Fanout;
use crate::worker::contract::StopAfter;

/// The sweep's early stopping, suggestions and budget (each optional).
#[derive(Default)]
pub struct Adaptive {
    /// `sweep.early_stop = "median"`.
    pub pruner: Option<MedianPruner>,
    /// `sweep.early_stop = "asha"` or `"hyperband"`.
    pub promotions: Option<Promotions>,
    /// `sweep.strategy = "tpe"`: more trials, suggested while it runs.
    pub suggestions: Option<Suggestions>,
    /// `sweep.budget`.
    pub budget: Option<BudgetGate>,
}

impl Adaptive {
    /// Marks `paused` the trials a resumed ASHA sweep left waiting at a
    /// rung: they stay out of the queue until promoted.
    pub fn mark_paused(&self, states: &mut [TrialState]) {
        let Some(promotions) = &self.promotions else {
            return;
        };
        for state in states {
            if promotions.is_paused(&state.queued.info.id) {
                state.status = TrialStatus::Paused;
            }
        }
    }

    /// The trials to queue at the start: all but the paused
    /// ([`Adaptive::mark_paused`]).
    pub fn first_queue(&self, states: &mut [TrialState]) -> Vec<usize> {
        self.mark_paused(states);
        (0..states.len())
            .filter(|&i| states[i].status != TrialStatus::Paused)
            .collect()
    }

    /// Promoted trials first (higher rungs first, as Li et al.'s workers
    /// ask for a promotion before a new trial), then the largest.
    pub fn sort(&self, states: &[TrialState], pending: &mut [usize]) {
        let promotions = self.promotions.as_ref();
        // Cached: a key looks the trial up by id.
        pending.sort_by_cached_key(|&i| {
            let q = &states[i].queued;
            let rung = promotions.map_or(0, |p| p.target(&q.info.id));
            (std::cmp::Reverse(rung), std::cmp::Reverse(q.memory_now()))
        });
    }

    /// Whether new trials are suggested while the sweep runs (TPE): only
    /// then is [`Adaptive::top_up`] worth its costs of the running trials.
    pub fn suggests(&self) -> bool {
        self.suggestions.is_some()
    }

    /// Asks for suggested trials while nothing waits and fewer than
    /// `capacity` trials run (`sweep.strategy = "tpe"`); each is recorded
    /// before it is queued. True when one was queued.
    pub fn top_up(
        &mut self,
        states: &mut Vec<TrialState>,
        pending: &mut Vec<usize>,
        in_flight: usize,
        capacity: usize,
        running: &[Running],
        fanout: &Fanout,
    ) -> bool {
        let mut queued = false;
        let Some(source) = self.suggestions.as_mut() else {
            return queued;
        };
        while pending.is_empty() && in_flight < capacity {
            if self.budget.as_ref().is_some_and(|b| b.spent(running)) {
                break;
            }
            match source.next_trial() {
                Ok(Some(suggested)) => {
                    fanout.send(&SweepEvent::TrialRecorded {
                        trial: Box::new(suggested.info),
                        status: TrialStatus::Queued,
                    });
                    if let Some(q) = suggested.queued {
                        states.push(TrialState::new(q));
                        pending.push(states.len() - 1);
                        queued = true;
                    }
                }
                Ok(None) => break,
                Err(error) => {
                    eprintln!("palisweep: no more trials are suggested: {error}");
                    self.suggestions = None;
                    break;
                }
            }
        }
        queued
    }

    /// The budget's verdict on starting `state` now: the reason it may
    /// not, if it may not. `running` is asked only when a budget is set.
    pub fn refusal(
        &self,
        state: &TrialState,
        running: impl FnOnce() -> Vec<Running>,
    ) -> Option<String> {
        let gate = self.budget.as_ref()?;
        let info = &state.queued.info;
        refusal(gate.admit(&info.id, info.rel_cost, &running()))
    }

    /// Where the trial's next attempt stops (its rung), if anywhere.
    pub fn stop_after(&mut self, trial: &str) -> Option<StopAfter> {
        self.promotions.as_mut()?.stop_after(trial)
    }

    /// An attempt of `trial` started (the budget counts it as launched).
    pub fn launched(&mut self, trial: &str) {
        if let Some(gate) = self.budget.as_mut() {
            gate.launched(trial);
        }
    }

    /// An attempt of `state` ended after `seconds` on its device.
    pub fn attempt_ended(&mut self, state: &TrialState, seconds: f64, finished: bool) {
        if let Some(gate) = self.budget.as_mut() {
            let info = &state.queued.info;
            gate.attempt_ended(&info.id, info.rel_cost, seconds, finished);
        }
    }

    /// An evaluation by trial `i`'s worker. Returns what the worker should
    /// be stopped for: a median prune (the backend stops it), or its rung
    /// (it stops there by itself). Paused trials the rung result promoted
    /// go back to the queue; one still running is requeued when it exits
    /// ([`Adaptive::requeue_if_promoted`]).
    pub fn on_eval(
        &mut self,
        states: &mut [TrialState],
        pending: &mut Vec<usize>,
        i: usize,
        (step, epoch): (u64, u64),
        metrics: &BTreeMap<String, f64>,
    ) -> Option<StopCause> {
        let id = states[i].queued.info.id.clone();
        if let Some(source) = self.suggestions.as_mut() {
            source.on_eval(&id, metrics);
        }
        if let Some(promotions) = self.promotions.as_mut() {
            let Some(result) = promotions.on_eval(&id, step, Some(epoch), metrics) else {
                // Not a new rung result, but perhaps one already counted (a
                // resumed scheduler following a job reads it again).
                return promotions
                    .stops_at(&id, step, Some(epoch))
                    .then_some(StopCause::Rung);
            };
            for trial in result.promoted {
                let Some(p) = states.iter().position(|s| s.queued.info.id == trial) else {
                    continue;
                };
                if states[p].status == TrialStatus::Paused {
                    states[p].status = TrialStatus::Queued;
                    pending.push(p);
                }
            }
            self.sort(states, pending);
            return Some(StopCause::Rung);
        }
        let pruner = self.pruner.as_mut()?;
        pruner
            .report(&id, step, metrics)
            .then_some(StopCause::Prune)
    }

    /// Whether `state`, paused at its rung, was promoted while its worker
    /// was stopping: it then goes back to the queue (its status `Queued`).
    pub fn requeue_if_promoted(&self, state: &mut TrialState, interrupting: bool) -> bool {
        let promoted = self
            .promotions
            .as_ref()
            .is_some_and(|p| !p.is_paused(&state.queued.info.id));
        if state.status == TrialStatus::Paused && promoted && !interrupting {
            state.status = TrialStatus::Queued;
            return true;
        }
        false
    }

    /// Nothing trains and nothing waits to start: no paused trial can be
    /// promoted any more, so each ends where it paused.
    pub fn stop_paused_trials(&self, states: &mut [TrialState], fanout: &Fanout) {
        let Some(promotions) = self.promotions.as_ref() else {
            return;
        };
        for stopped in promotions.stopped() {
            if let Some(state) = states
                .iter_mut()
                .find(|s| s.queued.info.id == stopped.trial && s.status == TrialStatus::Paused)
            {
                fate::end_early(state, stopped.reason(), fanout);
            }
        }
    }
}

//! Asynchronous successive halving (ASHA; Li et al. 2018, "A System for
//! Massively Parallel Hyperparameter Tuning", Algorithm 2) as a pure state
//! machine: the caller starts trials, trains each to its next rung and
//! reports the selection metric there; the machine answers whether the
//! trial goes on, pauses (checkpointed, to be promoted later) or is done.
//!
//! Asynchronous means decisions depend on arrival order, and this machine
//! makes that order explicit: it is the order of `report` calls. At rung k
//! with n results, the top ⌊n/η⌋ (lower values first, ties to the earlier
//! arrival) may go on to rung k+1; each trial is promoted at most once and
//! never demoted. A report can therefore promote the reporting trial at
//! once (`Continue`), or pause it and make an earlier, paused trial
//! promotable (its n crossed a multiple of η): that trial is returned in
//! `promoted`, to resume under its own id. Li et al. promote when a worker
//! asks for work; promoting at the report that makes a trial eligible is
//! the same choice made as early as possible. When no new trials will
//! come, [`Asha::close`] ends the paused ones as "stopped at rung r".
//!
//! Values are "lower is better": negate a metric that grows.

use std::collections::{BTreeMap, BTreeSet};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AshaError {
    #[error("ASHA needs 1 <= min resource <= max resource (got {min} and {max})")]
    Resources { min: u64, max: u64 },
    #[error("ASHA's reduction factor eta must be at least 2 (got {0})")]
    Eta(u32),
    #[error("trial {trial} reported at rung {rung}, but it is {state}")]
    Unexpected {
        trial: String,
        rung: usize,
        state: String,
    },
    #[error("trial {0} was started twice")]
    Started(String),
}

/// The resource levels of successive halving, laid down from the top as
/// Hyperband lays its rounds: `max·η^-k` for k = s, …, 1, 0, where s is
/// the largest with `max·η^-s >= min` (integer division). The last rung is
/// `max` and the ratios stay η even when `max` is no power of η times
/// `min` (72 steps from 6: 8, 24, 72, not 6, 18, 54, 72).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rungs {
    resources: Vec<u64>,
    eta: u32,
}

impl Rungs {
    pub fn new(min: u64, max: u64, eta: u32) -> Result<Rungs, AshaError> {
        if min == 0 || min > max {
            return Err(AshaError::Resources { min, max });
        }
        if eta < 2 {
            return Err(AshaError::Eta(eta));
        }
        Ok(Rungs {
            resources: rung_ladder(min, max, eta),
            eta,
        })
    }

    /// Resource (steps, epochs) of each rung, lowest first.
    pub fn resources(&self) -> &[u64] {
        &self.resources
    }

    pub fn eta(&self) -> u32 {
        self.eta
    }

    pub fn top(&self) -> usize {
        self.resources.len() - 1
    }
}

/// The ladder's arithmetic belongs to the spec's `sweep.asha` keys, which
/// validation checks against the evaluation steps.
pub use crate::spec::schema::{rung_ladder, s_max};

/// What the reporting trial does next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// In the top 1/η of its rung: train on to this rung.
    Continue { rung: usize },
    /// Not (yet) in the top 1/η: checkpoint and wait for a promotion.
    Pause,
    /// Reported at the top rung: trained to the maximum resource.
    Complete,
}

/// A paused trial that may now resume, training to `rung`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Promotion<T> {
    pub trial: T,
    pub rung: usize,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome<T> {
    pub decision: Decision,
    /// Other trials, paused earlier, that this result made promotable
    /// (best first).
    pub promoted: Vec<Promotion<T>>,
}

/// A trial that ended paused: it never made the top 1/η of `rung`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stopped<T> {
    pub trial: T,
    pub rung: usize,
}

/// Where a trial stands in the halving.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    /// Training towards this rung.
    Training(usize),
    Paused(usize),
    Complete,
}

#[derive(Clone, Debug)]
pub struct Asha<T> {
    rungs: Rungs,
    /// Per rung: (trial, value) in arrival order.
    results: Vec<Vec<(T, f64)>>,
    /// Per rung: trials promoted out of it.
    promoted: Vec<BTreeSet<T>>,
    states: BTreeMap<T, State>,
}

impl<T: Ord + Clone + std::fmt::Display> Asha<T> {
    pub fn new(rungs: Rungs) -> Self {
        let n = rungs.resources.len();
        Asha {
            rungs,
            results: vec![Vec::new(); n],
            promoted: vec![BTreeSet::new(); n],
            states: BTreeMap::new(),
        }
    }

    pub fn rungs(&self) -> &Rungs {
        &self.rungs
    }

    /// A new trial enters at the bottom rung (train it to `resources()[0]`).
    pub fn start(&mut self, trial: T) -> Result<(), AshaError> {
        if self.states.contains_key(&trial) {
            return Err(AshaError::Started(trial.to_string()));
        }
        self.states.insert(trial, State::Training(0));
        Ok(())
    }

    /// Records `trial`'s value at `rung` (NaN ranks last) and decides.
    pub fn report(&mut self, trial: &T, rung: usize, value: f64) -> Result<Outcome<T>, AshaError> {
        match self.states.get(trial) {
            Some(State::Training(r)) if *r == rung => {}
            state => {
                return Err(AshaError::Unexpected {
                    trial: trial.to_string(),
                    rung,
                    state: match state {
                        None => "unknown".into(),
                        Some(State::Training(r)) => format!("training towards rung {r}"),
                        Some(State::Paused(r)) => format!("paused at rung {r}"),
                        Some(State::Complete) => "complete".into(),
                    },
                });
            }
        }
        let value = if value.is_nan() { f64::INFINITY } else { value };
        self.results[rung].push((trial.clone(), value));
        if rung == self.rungs.top() {
            self.states.insert(trial.clone(), State::Complete);
            return Ok(Outcome {
                decision: Decision::Complete,
                promoted: Vec::new(),
            });
        }
        let mut decision = Decision::Pause;
        let mut promoted = Vec::new();
        for candidate in self.promotable(rung) {
            self.promoted[rung].insert(candidate.clone());
            self.states
                .insert(candidate.clone(), State::Training(rung + 1));
            if &candidate == trial {
                decision = Decision::Continue { rung: rung + 1 };
            } else {
                promoted.push(Promotion {
                    trial: candidate,
                    rung: rung + 1,
                });
            }
        }
        if decision == Decision::Pause {
            self.states.insert(trial.clone(), State::Paused(rung));
        }
        Ok(Outcome { decision, promoted })
    }

    /// The top ⌊n/η⌋ of a rung not yet promoted, best first.
    fn promotable(&self, rung: usize) -> Vec<T> {
        let results = &self.results[rung];
        let mut order: Vec<usize> = (0..results.len()).collect();
        // A stable sort: equal values keep arrival order.
        order.sort_by(|&a, &b| results[a].1.total_cmp(&results[b].1));
        let k = results.len() / self.rungs.eta as usize;
        order
            .into_iter()
            .take(k)
            .map(|i| results[i].0.clone())
            .filter(|t| !self.promoted[rung].contains(t))
            .collect()
    }

    /// Where `trial` stands; `None` before it was started.
    pub fn state(&self, trial: &T) -> Option<State> {
        self.states.get(trial).copied()
    }

    /// Trials paused now, with their rung.
    pub fn paused(&self) -> Vec<Stopped<T>> {
        self.states
            .iter()
            .filter_map(|(trial, state)| match state {
                State::Paused(rung) => Some(Stopped {
                    trial: trial.clone(),
                    rung: *rung,
                }),
                _ => None,
            })
            .collect()
    }

    /// No new trial will come: every paused trial ends where it is.
    pub fn close(self) -> Vec<Stopped<T>> {
        self.paused()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rungs_grow_by_eta_and_end_at_the_maximum() {
        assert_eq!(Rungs::new(1, 9, 3).unwrap().resources(), &[1, 3, 9]);
        assert_eq!(Rungs::new(8, 72, 3).unwrap().resources(), &[8, 24, 72]);
        assert_eq!(Rungs::new(6, 72, 3).unwrap().resources(), &[8, 24, 72]);
        assert_eq!(
            Rungs::new(30, 900, 3).unwrap().resources(),
            &[33, 100, 300, 900]
        );
        assert_eq!(Rungs::new(5, 5, 3).unwrap().resources(), &[5]);
        assert_eq!(
            Rungs::new(0, 9, 3),
            Err(AshaError::Resources { min: 0, max: 9 })
        );
        assert_eq!(Rungs::new(1, 9, 1), Err(AshaError::Eta(1)));
    }

    #[test]
    fn s_max_is_the_floor_of_the_log() {
        assert_eq!(s_max(1, 81, 3), 4);
        assert_eq!(s_max(1, 80, 3), 3);
        assert_eq!(s_max(8, 72, 3), 2);
        assert_eq!(s_max(5, 5, 3), 0);
    }

    /// Nine trials, η = 3, rungs 1/3/9, one worker each, arriving in the
    /// order a..i with these rung-0 values (lower is better). Worked by
    /// hand from the rule "top ⌊n/3⌋ of the rung, each promoted once":
    ///
    /// | arrival | value | n | top ⌊n/3⌋        | what happens                 |
    /// |---------|-------|---|------------------|------------------------------|
    /// | a       | 5     | 1 | none             | a pauses                     |
    /// | b       | 3     | 2 | none             | b pauses                     |
    /// | c       | 8     | 3 | {b}              | c pauses, b promoted         |
    /// | d       | 1     | 4 | {d}              | d continues                  |
    /// | e       | 9     | 5 | {d}              | e pauses                     |
    /// | f       | 4     | 6 | {d, b}           | f pauses (d, b promoted)     |
    /// | g       | 2     | 7 | {d, g}           | g continues                  |
    /// | h       | 7     | 8 | {d, g}           | h pauses                     |
    /// | i       | 6     | 9 | {d, g, b}        | i pauses                     |
    ///
    /// Rung 1 then receives b (value 2), d (0.5), g (1.5) in that order:
    /// b pauses (n=1), d pauses (n=2), g arrives (n=3, top {d}): g pauses
    /// and d is promoted to rung 2, where it completes. a, c, e, f, h, i
    /// stop at rung 0; b and g at rung 1. Rung 0 ends having promoted its
    /// top ⌊9/3⌋ = 3 as synchronous halving would, but b went first, when
    /// it led three results.
    #[test]
    fn nine_trials_eta_3_promote_and_stop_as_worked_by_hand() {
        let mut asha = Asha::new(Rungs::new(1, 9, 3).unwrap());
        let rung0 = [
            ('a', 5.0),
            ('b', 3.0),
            ('c', 8.0),
            ('d', 1.0),
            ('e', 9.0),
            ('f', 4.0),
            ('g', 2.0),
            ('h', 7.0),
            ('i', 6.0),
        ];
        let pause = |promoted: Vec<Promotion<char>>| Outcome {
            decision: Decision::Pause,
            promoted,
        };
        let go_on = Outcome {
            decision: Decision::Continue { rung: 1 },
            promoted: Vec::new(),
        };
        let expected = [
            pause(vec![]),
            pause(vec![]),
            pause(vec![Promotion {
                trial: 'b',
                rung: 1,
            }]),
            go_on.clone(),
            pause(vec![]),
            pause(vec![]),
            go_on,
            pause(vec![]),
            pause(vec![]),
        ];
        for ((trial, value), want) in rung0.iter().zip(expected) {
            asha.start(*trial).unwrap();
            let got = asha.report(trial, 0, *value).unwrap();
            assert_eq!(got, want, "trial {trial}");
        }

        assert_eq!(asha.report(&'b', 1, 2.0).unwrap(), pause(vec![]));
        assert_eq!(asha.report(&'d', 1, 0.5).unwrap(), pause(vec![]));
        assert_eq!(
            asha.report(&'g', 1, 1.5).unwrap(),
            pause(vec![Promotion {
                trial: 'd',
                rung: 2
            }])
        );
        assert_eq!(
            asha.report(&'d', 2, 0.2).unwrap().decision,
            Decision::Complete
        );

        let stopped = asha.close();
        let at = |rung: usize| -> String {
            stopped
                .iter()
                .filter(|s| s.rung == rung)
                .map(|s| s.trial)
                .collect()
        };
        assert_eq!(at(0), "acefhi");
        assert_eq!(at(1), "bg");
        assert_eq!(stopped.len(), 8);
    }

    #[test]
    fn another_arrival_order_promotes_differently() {
        // The same values as above with the best trial last: the order of
        // reports, not only the values, decides who goes on at rung 0.
        let mut asha = Asha::new(Rungs::new(1, 9, 3).unwrap());
        let mut continued = Vec::new();
        for (trial, value) in [('a', 5.0), ('b', 3.0), ('c', 8.0), ('d', 1.0)] {
            asha.start(trial).unwrap();
            let out = asha.report(&trial, 0, value).unwrap();
            if out.decision != Decision::Pause {
                continued.push(trial);
            }
            continued.extend(out.promoted.iter().map(|p| p.trial));
        }
        assert_eq!(continued, ['b', 'd']);

        let mut asha = Asha::new(Rungs::new(1, 9, 3).unwrap());
        let mut continued = Vec::new();
        for (trial, value) in [('d', 1.0), ('a', 5.0), ('b', 3.0), ('c', 8.0)] {
            asha.start(trial).unwrap();
            let out = asha.report(&trial, 0, value).unwrap();
            if out.decision != Decision::Pause {
                continued.push(trial);
            }
            continued.extend(out.promoted.iter().map(|p| p.trial));
        }
        assert_eq!(continued, ['d'], "b is never in the top 1 of 4");
    }

    #[test]
    fn ties_go_to_the_earlier_arrival_and_nan_ranks_last() {
        let mut asha = Asha::new(Rungs::new(1, 3, 3).unwrap());
        for t in ['x', 'y', 'z'] {
            asha.start(t).unwrap();
        }
        assert_eq!(asha.report(&'x', 0, f64::NAN).unwrap().promoted, vec![]);
        asha.report(&'y', 0, 2.0).unwrap();
        let out = asha.report(&'z', 0, 2.0).unwrap();
        assert_eq!(out.decision, Decision::Pause);
        assert_eq!(
            out.promoted,
            vec![Promotion {
                trial: 'y',
                rung: 1
            }]
        );
    }

    #[test]
    fn reports_out_of_turn_are_errors() {
        let mut asha = Asha::new(Rungs::new(1, 9, 3).unwrap());
        assert!(matches!(
            asha.report(&'a', 0, 1.0),
            Err(AshaError::Unexpected { .. })
        ));
        asha.start('a').unwrap();
        assert_eq!(asha.start('a'), Err(AshaError::Started("a".into())));
        assert!(asha.report(&'a', 1, 1.0).is_err(), "not at rung 1 yet");
        asha.report(&'a', 0, 1.0).unwrap();
        let err = asha.report(&'a', 0, 1.0).unwrap_err();
        assert!(err.to_string().contains("paused at rung 0"), "{err}");
    }
}

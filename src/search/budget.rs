//! The budget rule (`sweep.budget = { gpu_hours, trials }`): a sweep stops
//! launching trials when the next one's estimated cost would take the
//! compute spent past the budget, or when it has launched its quota. Trials
//! already running finish; only launches are refused.

/// Device-seconds in a GPU-hour.
const SECONDS_PER_HOUR: f64 = 3600.0;

#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Budget {
    /// Device-hours of training, summed over devices; `None` = unlimited.
    pub gpu_hours: Option<f64>,
    /// Trials launched; `None` = unlimited.
    pub trials: Option<u32>,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Admission {
    Launch,
    /// The quota of trials is used up.
    TrialsSpent {
        limit: u32,
    },
    /// `spent_s + next_s` would pass `limit_s` (device-seconds).
    ComputeSpent {
        spent_s: f64,
        next_s: f64,
        limit_s: f64,
    },
}

impl Budget {
    /// May a trial estimated at `next_s` device-seconds start, after
    /// `spent_s` spent and `launched` trials started?
    pub fn admit(&self, spent_s: f64, launched: u32, next_s: f64) -> Admission {
        if let Some(limit) = self.trials
            && launched >= limit
        {
            return Admission::TrialsSpent { limit };
        }
        if let Some(hours) = self.gpu_hours {
            let limit_s = hours * SECONDS_PER_HOUR;
            if spent_s + next_s > limit_s {
                return Admission::ComputeSpent {
                    spent_s,
                    next_s,
                    limit_s,
                };
            }
        }
        Admission::Launch
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn launches_stop_when_the_next_trial_would_overrun() {
        let budget = Budget {
            gpu_hours: Some(1.0),
            trials: Some(10),
        };
        assert_eq!(budget.admit(0.0, 0, 600.0), Admission::Launch);
        // Exactly at the budget is allowed; one second over is not.
        assert_eq!(budget.admit(3000.0, 5, 600.0), Admission::Launch);
        assert_eq!(
            budget.admit(3001.0, 5, 600.0),
            Admission::ComputeSpent {
                spent_s: 3001.0,
                next_s: 600.0,
                limit_s: 3600.0
            }
        );
        assert_eq!(
            budget.admit(0.0, 10, 1.0),
            Admission::TrialsSpent { limit: 10 }
        );
        assert_eq!(
            Budget::default().admit(1e12, 1_000_000, 1e12),
            Admission::Launch
        );
    }
}

//! Hyperband's brackets (Li et al. 2017, "Hyperband: A Novel Bandit-Based
//! Approach to Hyperparameter Optimization", Algorithm 1 and Table 1), run
//! here as brackets of ASHA: bracket s starts its trials at R·η^-s, so the
//! most aggressive bracket halves from the minimum resource and the most
//! cautious one trains every trial to R. New trials are dealt to brackets in
//! the proportions of the paper's `n_s`, so each bracket spends about the same.

use super::asha::{AshaError, Rungs, s_max};

/// One bracket: its early-stopping rate `s`, the resource its trials start
/// with, and the synchronous plan of the paper (`n_i` trials at `r_i`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Bracket {
    pub s: u32,
    /// `r_s = R·η^-s`: where this bracket's trials are first compared.
    pub min_resource: u64,
    /// `n_s = ⌈(s_max + 1)/(s + 1) · η^s⌉`: its share of new trials.
    pub trials: u64,
    /// `(n_i, r_i)` for `i = 0..=s`: `n_i = ⌊n_s η^-i⌋` trials at `r_i = r_s η^i`.
    pub rounds: Vec<(u64, u64)>,
}

#[derive(Clone, Debug)]
pub struct Hyperband {
    max: u64,
    eta: u32,
    /// From `s = s_max` (most aggressive) down to 0, as in the paper.
    brackets: Vec<Bracket>,
    /// Trials dealt to each bracket so far.
    dealt: Vec<u64>,
}

impl Hyperband {
    /// Brackets for resources `min..=max` and reduction factor `eta`:
    /// `s_max = ⌊log_η(max/min)⌋`.
    pub fn new(min: u64, max: u64, eta: u32) -> Result<Hyperband, AshaError> {
        // The same checks as ASHA's rungs.
        Rungs::new(min, max, eta)?;
        let s_max = s_max(min, max, eta);
        let eta64 = u64::from(eta);
        let brackets: Vec<Bracket> = (0..=s_max)
            .rev()
            .map(|s| {
                let power = eta64.pow(s);
                let trials = (u64::from(s_max + 1) * power).div_ceil(u64::from(s + 1));
                let min_resource = (max / power).max(min);
                let rounds = (0..=s)
                    .map(|i| {
                        let up = eta64.pow(i);
                        (trials / up, (min_resource * up).min(max))
                    })
                    .collect();
                Bracket {
                    s,
                    min_resource,
                    trials,
                    rounds,
                }
            })
            .collect();
        let dealt = vec![0; brackets.len()];
        Ok(Hyperband {
            max,
            eta,
            brackets,
            dealt,
        })
    }

    pub fn brackets(&self) -> &[Bracket] {
        &self.brackets
    }

    /// The ASHA rungs of a bracket (by index into [`Self::brackets`]).
    pub fn rungs(&self, bracket: usize) -> Rungs {
        Rungs::new(self.brackets[bracket].min_resource, self.max, self.eta)
            .expect("checked when the brackets were built")
    }

    /// The bracket of the next new trial: the one furthest below its share
    /// `n_s` (smallest `dealt/n_s`; ties to the more aggressive bracket).
    /// Over `Σ n_s` trials every bracket gets exactly its `n_s`, interleaved.
    pub fn assign(&mut self) -> usize {
        let index = (0..self.brackets.len())
            .min_by(|&a, &b| {
                // dealt_a/n_a < dealt_b/n_b, cross-multiplied to stay exact.
                let left = u128::from(self.dealt[a]) * u128::from(self.brackets[b].trials);
                let right = u128::from(self.dealt[b]) * u128::from(self.brackets[a].trials);
                left.cmp(&right)
            })
            .unwrap_or(0);
        self.dealt[index] += 1;
        index
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn brackets_for_r_81_eta_3_are_the_papers_table_1() {
        let hb = Hyperband::new(1, 81, 3).unwrap();
        let table: Vec<(u32, Vec<(u64, u64)>)> = hb
            .brackets()
            .iter()
            .map(|b| (b.s, b.rounds.clone()))
            .collect();
        assert_eq!(
            table,
            vec![
                (4, vec![(81, 1), (27, 3), (9, 9), (3, 27), (1, 81)]),
                (3, vec![(34, 3), (11, 9), (3, 27), (1, 81)]),
                (2, vec![(15, 9), (5, 27), (1, 81)]),
                (1, vec![(8, 27), (2, 81)]),
                (0, vec![(5, 81)]),
            ]
        );
        assert_eq!(hb.rungs(0).resources(), &[1, 3, 9, 27, 81]);
        assert_eq!(hb.rungs(3).resources(), &[27, 81]);
        assert_eq!(hb.rungs(4).resources(), &[81]);
    }

    #[test]
    fn new_trials_are_dealt_in_the_proportions_n_s() {
        let mut hb = Hyperband::new(1, 81, 3).unwrap();
        let first: Vec<usize> = (0..6).map(|_| hb.assign()).collect();
        // Interleaved from the first trials on, the aggressive bracket first.
        assert_eq!(first, [0, 1, 2, 3, 4, 0]);
        let mut counts = [0u64; 5];
        for &b in &first {
            counts[b] += 1;
        }
        for _ in 6..143 {
            counts[hb.assign()] += 1;
        }
        assert_eq!(counts, [81, 34, 15, 8, 5]);
    }

    #[test]
    fn resources_off_the_powers_of_eta_still_reach_the_maximum() {
        let hb = Hyperband::new(8, 72, 3).unwrap();
        let starts: Vec<u64> = hb.brackets().iter().map(|b| b.min_resource).collect();
        assert_eq!(starts, [8, 24, 72]);
        assert_eq!(hb.rungs(0).resources(), &[8, 24, 72]);
        assert!(Hyperband::new(0, 9, 3).is_err());
    }
}

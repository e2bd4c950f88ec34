//! The prediction gallery: the pick and the runner-up on the same few
//! validation examples, the worst and best by the pick's per-example score
//! and some at random (seeded), so that a reader sees what the numbers
//! mean before trusting them.
//!
//! Each card holds one example: its score under both trials and a view
//! made for its task (the image with boxes for detection, fields side by
//! side for JSON, a diff for text). `html.rs` lays the cards out as a
//! grid, `markdown.rs` as a compact table.

use std::collections::BTreeMap;
use std::path::PathBuf;

use super::compare::{self, FieldTable, Piece};
use super::content::{Block, Section};
use super::decision::Decision;
use super::examples::{ExamplesError, TrialExamples};
use super::overlay::{self, Backdrop};
use super::{Report, short_id};
use crate::metrics::names::higher_is_better;
use crate::metrics::task::Task;
use crate::rng::SplitMix64;
use crate::track::predictions::ExamplePrediction;

/// Examples a gallery shows by default (`--gallery N`; 0: none).
pub const DEFAULT_SIZE: usize = 12;
/// The seed of the random picks.
pub const SEED: u64 = 0;

/// Why an example is in the gallery.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Chosen {
    Worst,
    Best,
    Random,
}

impl Chosen {
    pub fn name(self) -> &'static str {
        match self {
            Chosen::Worst => "worst",
            Chosen::Best => "best",
            Chosen::Random => "random",
        }
    }
}

/// Which examples to show: `scores` are the pick's, by position; `size`
/// examples at most, a third (rounded up) the worst, a third the best,
/// the rest at random among the others, all distinct. Positions without a
/// score are never worst or best, but may be drawn. Ties go to the
/// earlier example.
pub fn choose(
    scores: &[Option<f64>],
    size: usize,
    higher_is_better: bool,
    seed: u64,
) -> Vec<(usize, Chosen)> {
    let size = size.min(scores.len());
    let (worst, best) = (size.div_ceil(3), (size + 1) / 3);
    let mut ranked: Vec<(usize, f64)> = scores
        .iter()
        .enumerate()
        .filter_map(|(i, s)| s.filter(|s| s.is_finite()).map(|s| (i, s)))
        .collect();
    // Worst first.
    ranked.sort_by(|a, b| {
        let order = a.1.total_cmp(&b.1);
        (if higher_is_better {
            order
        } else {
            order.reverse()
        })
        .then(a.0.cmp(&b.0))
    });
    let mut out: Vec<(usize, Chosen)> = ranked
        .iter()
        .take(worst)
        .map(|&(i, _)| (i, Chosen::Worst))
        .collect();
    let taken = |out: &[(usize, Chosen)], i: usize| out.iter().any(|&(j, _)| j == i);
    let mut best_first: Vec<(usize, f64)> = ranked.clone();
    best_first.sort_by(|a, b| {
        let order = b.1.total_cmp(&a.1);
        (if higher_is_better {
            order
        } else {
            order.reverse()
        })
        .then(a.0.cmp(&b.0))
    });
    for &(i, _) in &best_first {
        if out.iter().filter(|c| c.1 == Chosen::Best).count() == best {
            break;
        }
        if !taken(&out, i) {
            out.push((i, Chosen::Best));
        }
    }
    let mut rest: Vec<usize> = (0..scores.len()).filter(|&i| !taken(&out, i)).collect();
    let mut rng = SplitMix64::new(seed);
    let wanted = size - out.len();
    // A partial Fisher–Yates shuffle: the first `wanted` are the draw.
    for k in 0..wanted.min(rest.len()) {
        let j = k + rng.below(rest.len() - k);
        rest.swap(k, j);
    }
    let mut random: Vec<usize> = rest.into_iter().take(wanted).collect();
    random.sort_unstable();
    out.extend(random.into_iter().map(|i| (i, Chosen::Random)));
    out
}

/// One trial's answer to a card's example.
#[derive(Clone, Debug, PartialEq)]
pub struct Answer {
    pub prediction: String,
    pub score: Option<f64>,
}

/// How a card shows its example.
#[derive(Clone, Debug, PartialEq)]
pub enum View {
    /// One SVG per trial (the image with its boxes), or why the image
    /// cannot be shown.
    Boxes(Result<Vec<String>, String>),
    Fields(FieldTable),
    /// Per trial, the diff from the reference to its prediction.
    Diff(Vec<Vec<Piece>>),
}

#[derive(Clone, Debug, PartialEq)]
pub struct Card {
    /// The example's index in the split.
    pub index: usize,
    pub image: PathBuf,
    pub chosen: Chosen,
    pub reference: String,
    /// Per trial of the gallery; `None`: that trial has no prediction for
    /// this example.
    pub answers: Vec<Option<Answer>>,
    pub view: View,
}

/// A trial the gallery compares.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Side {
    /// `pick`, `runner-up`.
    pub role: &'static str,
    /// The trial's short id.
    pub trial: String,
}

impl Side {
    /// `pick 0123456789ab`.
    pub fn label(&self) -> String {
        format!("{} {}", self.role, self.trial)
    }
}

/// The cards and what they compare.
#[derive(Clone, Debug, PartialEq)]
pub struct Cards {
    pub task: Task,
    /// The per-example metric (`box_f1`, `field_f1`, `cer`).
    pub metric: String,
    pub higher_is_better: bool,
    /// The pick, then the runner-up (when it has predictions), in the
    /// order of each card's answers.
    pub trials: Vec<Side>,
    pub cards: Vec<Card>,
}

/// The gallery of a report.
#[derive(Clone, Debug, PartialEq)]
pub enum Gallery {
    /// `--gallery 0`.
    Off,
    /// Why there is nothing to show.
    Unavailable(String),
    Shown {
        cards: Cards,
        /// Sentences for the reader (a runner-up without predictions).
        notes: Vec<String>,
    },
}

/// The gallery for `decision`'s pick and runner-up, `size` examples.
pub fn build(
    decision: &Decision,
    trials: &[super::analysis::TrialFacts],
    loaded: &BTreeMap<usize, Result<TrialExamples, ExamplesError>>,
    size: usize,
) -> Gallery {
    if size == 0 {
        return Gallery::Off;
    }
    let Decision::Pick {
        pick, runner_up, ..
    } = decision
    else {
        return Gallery::Unavailable("there is no pick to show".into());
    };
    let read = |t: usize| match loaded.get(&t) {
        Some(Ok(e)) => Ok(e),
        Some(Err(e)) => Err(e.to_string()),
        None => Err("its predictions were not read".into()),
    };
    let base = match read(pick.trial) {
        Ok(e) => e,
        Err(why) => return Gallery::Unavailable(format!("for the pick, {why}")),
    };
    let side_of = |role, trial: usize| Side {
        role,
        trial: short_id(&trials[trial].id).to_owned(),
    };
    let mut notes = Vec::new();
    let mut sides: Vec<(Side, &TrialExamples)> = vec![(side_of("pick", pick.trial), base)];
    if let Some(r) = runner_up {
        let runner_up = side_of("runner-up", r.trial);
        match read(r.trial) {
            Ok(e) => sides.push((runner_up, e)),
            Err(why) => notes.push(format!("The {} is not shown: {why}.", runner_up.label())),
        }
    }
    let metric = base.examples[0].metric.clone();
    let higher = higher_is_better(&metric);
    let scores: Vec<Option<f64>> = base.examples.iter().map(|e| e.score).collect();
    let by_index: Vec<BTreeMap<usize, &ExamplePrediction>> = sides
        .iter()
        .map(|(_, t)| t.examples.iter().map(|e| (e.index, e)).collect())
        .collect();
    let cards = choose(&scores, size, higher, SEED)
        .into_iter()
        .map(|(position, chosen)| {
            let example = &base.examples[position];
            let answers: Vec<Option<Answer>> = by_index
                .iter()
                .map(|m| {
                    m.get(&example.index).map(|e| Answer {
                        prediction: e.prediction.clone(),
                        score: e.score,
                    })
                })
                .collect();
            Card {
                index: example.index,
                image: example.image.clone(),
                chosen,
                view: view(base.task, example, &answers),
                reference: example.reference.clone(),
                answers,
            }
        })
        .collect();
    Gallery::Shown {
        cards: Cards {
            task: base.task,
            metric,
            higher_is_better: higher,
            trials: sides.into_iter().map(|(side, _)| side).collect(),
            cards,
        },
        notes,
    }
}

fn view(task: Task, example: &ExamplePrediction, answers: &[Option<Answer>]) -> View {
    let predictions: Vec<&str> = answers
        .iter()
        .map(|a| a.as_ref().map_or("", |a| a.prediction.as_str()))
        .collect();
    match task {
        Task::Detect | Task::Segment => View::Boxes(
            overlay::thumbnail(&example.image)
                .map(|image| {
                    let id = format!("gallery-{}", example.index);
                    predictions
                        .iter()
                        .enumerate()
                        .map(|(k, p)| {
                            // The image is embedded once; later panels reuse it.
                            let backdrop = if k == 0 {
                                Backdrop::Embed {
                                    id: &id,
                                    image: &image,
                                }
                            } else {
                                Backdrop::Reuse { id: &id }
                            };
                            overlay::panel(
                                backdrop,
                                image.width,
                                image.height,
                                &example.reference,
                                p,
                            )
                        })
                        .collect()
                })
                .map_err(|e| format!("image not shown: {e}")),
        ),
        Task::Json => View::Fields(compare::fields(&example.reference, &predictions)),
        Task::Text => View::Diff(
            predictions
                .iter()
                .map(|p| compare::diff(&example.reference, p))
                .collect(),
        ),
    }
}

/// The gallery's section.
pub fn section(report: &Report) -> Section {
    let mut sec = Section::new("Prediction gallery");
    match &report.gallery {
        Gallery::Off => sec.para("Turned off (--gallery 0)."),
        Gallery::Unavailable(why) => sec.para(format!("No gallery: {why}.")),
        Gallery::Shown { cards, notes } => {
            let n = cards.cards.len();
            let count = |c: Chosen| cards.cards.iter().filter(|k| k.chosen == c).count();
            let who: Vec<String> = cards
                .trials
                .iter()
                .map(|s| format!("the {} ({})", s.role, s.trial))
                .collect();
            sec.para(format!(
                "What {} answered on {n} validation example(s), at their selected checkpoints: the {} worst and the {} best by the pick's per-example {} ({}), and {} drawn at random (seed {SEED}) from the rest.",
                who.join(" and "),
                count(Chosen::Worst),
                count(Chosen::Best),
                cards.metric,
                if cards.higher_is_better {
                    "higher is better"
                } else {
                    "lower is better"
                },
                count(Chosen::Random),
            ));
            if matches!(cards.task, Task::Segment) {
                sec.para("Segmentation masks are not drawn, only their boxes.");
            }
            for note in notes {
                sec.para(note.clone());
            }
            sec.blocks.push(Block::Gallery(cards.clone()));
        }
    }
    sec
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chooses_the_worst_and_best_then_distinct_random_ones() {
        let scores = [
            Some(0.5),
            Some(0.1),
            None,
            Some(0.9),
            Some(0.3),
            Some(1.0),
            Some(0.1),
            Some(0.7),
            Some(0.6),
            Some(0.2),
        ];
        let chosen = choose(&scores, 6, true, 0);
        let of =
            |c: Chosen| -> Vec<usize> { chosen.iter().filter(|k| k.1 == c).map(|k| k.0).collect() };
        // Ties (0.1 at 1 and 6) go to the earlier example.
        assert_eq!(of(Chosen::Worst), [1, 6]);
        assert_eq!(of(Chosen::Best), [5, 3]);
        let random = of(Chosen::Random);
        assert_eq!(random.len(), 2);
        let mut all: Vec<usize> = chosen.iter().map(|k| k.0).collect();
        all.sort_unstable();
        all.dedup();
        assert_eq!(all.len(), 6, "distinct: {chosen:?}");
        assert_eq!(choose(&scores, 6, true, 0), chosen, "seeded");
        // Lower is better (CER): the worst are the highest.
        let lower = choose(&scores, 3, false, 0);
        assert_eq!(lower[0], (5, Chosen::Worst));
        assert_eq!(lower[1], (1, Chosen::Best));
        // More than there are: every example, once.
        assert_eq!(choose(&scores, 50, true, 0).len(), scores.len());
        assert!(choose(&scores, 0, true, 0).is_empty());
    }
}

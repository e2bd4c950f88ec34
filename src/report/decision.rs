//! The decision at the top of the report: which trial's selected
//! checkpoint to take (and the runner-up), where it is, the commands that
//! export and rerun it, and how clear the margin is; or why there is no
//! pick at all.

use std::path::Path;

use super::Report;
use super::analysis::{Group, Noise, Pick, TrialFacts};
use super::content::{Block, Section};
use super::format::number;

/// A trial the decision names: the best run of a ranked group.
#[derive(Clone, Debug, PartialEq)]
pub struct Candidate {
    /// Index into the report's groups.
    pub group: usize,
    /// Index into the report's trials (the group's best run).
    pub trial: usize,
    /// Test-split metrics (`test/...`) of its selected checkpoint, by name.
    pub test: Vec<(String, Option<f64>)>,
}

/// What the decision section says.
#[derive(Clone, Debug, PartialEq)]
pub enum Decision {
    /// No trial finished with a value of the metric.
    NoTrial,
    /// The scores carry no signal: `why` says which.
    NoSignal { why: String },
    Pick {
        pick: Candidate,
        runner_up: Option<Candidate>,
        /// The overall pick of the recommendation (its margin and noise).
        margin: Option<f64>,
        noise: Noise,
    },
}

/// Metrics bounded to `[0, 1]` (or, for error rates, bounded below by 0),
/// by their name after the last `/`.
pub fn is_bounded(metric: &str) -> bool {
    use crate::metrics::names::{
        CER, EXACT_MATCH, JSON_EXACT, JSON_F1, JSON_PRECISION, JSON_RECALL, JSON_VALID, MAP, MAP50,
    };
    let base = metric.rsplit('/').next().unwrap_or(metric);
    [
        JSON_F1,
        JSON_PRECISION,
        JSON_RECALL,
        JSON_EXACT,
        JSON_VALID,
        MAP,
        MAP50,
        EXACT_MATCH,
        CER,
        "wer",
        "accuracy",
    ]
    .contains(&base)
        || base.ends_with("_f1")
        || base.ends_with("accuracy")
}

/// Why the ranked scores cannot single out a trial, if they cannot: two or
/// more trials that all scored the same, or (for a bounded metric where
/// higher is better) nothing above its floor of 0.
pub fn no_signal(trials: &[TrialFacts], metric: &str, higher_is_better: bool) -> Option<String> {
    let scores: Vec<f64> = trials
        .iter()
        .filter(|t| t.is_ranked())
        .filter_map(|t| t.quality)
        .collect();
    let first = *scores.first()?;
    if scores.len() >= 2 && scores.iter().all(|s| s.total_cmp(&first).is_eq()) {
        return Some(format!(
            "no pick: every finished trial ({}) scored {} on {metric}",
            scores.len(),
            number(first)
        ));
    }
    let best = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    (higher_is_better && is_bounded(metric) && best <= 0.0).then(|| {
        format!(
            "no pick: no finished trial scored above 0 on {metric} (best {})",
            number(best)
        )
    })
}

/// The decision for ranked `groups` and the recommendation's overall pick;
/// `test_of(trial)` reads a trial's test-split metrics.
pub fn decide<E>(
    trials: &[TrialFacts],
    groups: &[Group],
    overall: Option<&Pick>,
    no_signal: Option<String>,
    mut test_of: impl FnMut(&TrialFacts) -> Result<Vec<(String, Option<f64>)>, E>,
) -> Result<Decision, E> {
    if let Some(why) = no_signal {
        return Ok(Decision::NoSignal { why });
    }
    let Some(overall) = overall else {
        return Ok(Decision::NoTrial);
    };
    let mut candidate = |group: usize| -> Result<Candidate, E> {
        let trial = groups[group].trials[0];
        Ok(Candidate {
            group,
            trial,
            test: test_of(&trials[trial])?,
        })
    };
    Ok(Decision::Pick {
        pick: candidate(overall.group)?,
        runner_up: overall.runner_up.map(&mut candidate).transpose()?,
        margin: overall.margin,
        noise: overall.noise,
    })
}

/// A word for a shell: quoted when it holds anything but safe characters.
fn shell_word(word: &str) -> String {
    let safe = |c: char| c.is_ascii_alphanumeric() || "_-./:=@+".contains(c);
    if !word.is_empty() && word.chars().all(safe) {
        word.to_owned()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

/// ` --results DIR` unless the report was made from the default root.
fn results_flag(results: &Path) -> String {
    if results == Path::new("results") {
        String::new()
    } else {
        format!(" --results {}", shell_word(&results.display().to_string()))
    }
}

/// `palisweep export SWEEP/ID --out DIR`: the trial's `best/` adapter.
pub fn export_command(sweep: &str, trial: &str, results: &Path) -> String {
    let out = format!("{sweep}-{}", super::short_id(trial));
    format!(
        "palisweep export {} --out {}{}",
        shell_word(&format!("{sweep}/{trial}")),
        shell_word(&out),
        results_flag(results)
    )
}

/// `palisweep rerun SWEEP/ID`: the trial again, compared with the original.
pub fn rerun_command(sweep: &str, trial: &str, results: &Path) -> String {
    format!(
        "palisweep rerun {}{}",
        shell_word(&format!("{sweep}/{trial}")),
        results_flag(results)
    )
}

/// The margin, and whether it is within the seed-to-seed spread.
pub fn margin_text(report: &Report, margin: f64, noise: Noise) -> String {
    let of = if report.seeds_vary {
        "between the two configurations' means over seeds"
    } else {
        "between the two trials"
    };
    let spread = match noise {
        Noise::Estimated { std, within: true } => format!(
            "This is within the seed-to-seed spread (pooled std {} of one configuration across seeds): the two are not clearly different; run more seeds, or take the cheaper one.",
            number(std)
        ),
        Noise::Estimated { std, within: false } => format!(
            "This is larger than the seed-to-seed spread (pooled std {} of one configuration across seeds).",
            number(std)
        ),
        Noise::NoRepeats => "The seed-to-seed spread is unknown: no configuration ran with several seeds (vary experiment.seed to measure it), so a small margin may be luck.".to_owned(),
        Noise::NoRunnerUp => String::new(),
    };
    format!(
        "Margin over the runner-up: {} on {} ({of}). {spread}",
        number(margin),
        report.metric
    )
    .trim_end()
    .to_owned()
}

/// The section: the pick, or why there is none.
pub fn section(report: &Report) -> Section {
    let mut sec = Section::new("Decision");
    let (pick, runner_up, margin, noise) = match &report.decision {
        Decision::NoTrial => {
            sec.warning(format!(
                "no pick: no trial finished with a value of {}.",
                report.metric
            ));
            return sec;
        }
        Decision::NoSignal { why } => {
            sec.warning(format!(
                "{why}. The scores carry no signal, so no checkpoint is recommended; check the data, the prompt format or the metric before choosing."
            ));
            return sec;
        }
        Decision::Pick {
            pick,
            runner_up,
            margin,
            noise,
        } => (pick, runner_up.as_ref(), *margin, *noise),
    };
    let t = &report.trials[pick.trial];
    sec.para(format!(
        "Pick: trial {} ({}), {} {} on validation at step {}.",
        t.id,
        report.groups[pick.group].label(),
        report.metric,
        t.quality.map_or("-".into(), number),
        t.best_step.map_or("-".into(), |s| s.to_string())
    ));
    let candidates: Vec<(&str, &Candidate)> = std::iter::once(("pick", pick))
        .chain(runner_up.map(|r| ("runner-up", r)))
        .collect();
    let mut tests: Vec<&str> = candidates
        .iter()
        .flat_map(|(_, c)| c.test.iter().map(|(n, _)| n.as_str()))
        .collect();
    tests.sort_unstable();
    tests.dedup();
    let validation = format!("{} (validation)", report.metric);
    let mut headers = vec!["", "trial", "configuration", validation.as_str(), "step"];
    let interval = super::bootstrap::header();
    let intervals = super::bootstrap::any(report);
    if intervals {
        headers.push(&interval);
    }
    headers.extend(tests.iter().copied());
    let rows = candidates
        .iter()
        .map(|(role, c)| {
            let t = &report.trials[c.trial];
            let mut row = vec![
                (*role).to_owned(),
                t.id.clone(),
                report.groups[c.group].label(),
                t.quality.map_or("-".into(), number),
                t.best_step.map_or("-".into(), |s| s.to_string()),
            ];
            if intervals {
                row.push(super::bootstrap::cell(report, c.trial));
            }
            row.extend(tests.iter().map(|name| {
                c.test
                    .iter()
                    .find(|(n, _)| n == name)
                    .and_then(|(_, v)| *v)
                    .map_or("-".into(), number)
            }));
            row
        })
        .collect();
    sec.table(&headers, rows);
    if tests.is_empty() {
        sec.para(
            "No test-split metric was recorded for these checkpoints (the data has no test split, or the run did not score one).",
        );
    } else {
        sec.para(
            "Test-split metrics are of each trial's selected checkpoint (the one at the step above), scored once at the end of training.",
        );
    }
    sec.para(format!(
        "Checkpoint: step {}, {}",
        t.best_step.map_or("-".into(), |s| s.to_string()),
        Path::new(&t.dir).join("best").display()
    ));
    sec.para("Export its adapter, or run it again and compare metric by metric:");
    sec.blocks.push(Block::Code(format!(
        "{}\n{}",
        export_command(&report.sweep.name, &t.id, &report.results),
        rerun_command(&report.sweep.name, &t.id, &report.results)
    )));
    margin_lines(report, &mut sec, margin, noise);
    super::bootstrap::describe(report, pick.trial, &mut sec);
    sec
}

/// The margin over the runner-up and how it compares with the noise.
fn margin_lines(report: &Report, sec: &mut Section, margin: Option<f64>, noise: Noise) {
    let Some(margin) = margin else {
        sec.para("There is no runner-up to compare with.");
        return;
    };
    // Without seeds, the bootstrap over examples is the noise.
    sec.para(match super::bootstrap::margin_verdict(report) {
        Some(verdict) => format!(
            "{} {verdict}",
            margin_text(report, margin, Noise::NoRunnerUp)
        ),
        None => margin_text(report, margin, noise),
    });
    if margin == 0.0 {
        sec.warning(
            "The pick ties with the runner-up; it ranks first for needing less memory (or, equal in memory, less time).",
        );
    }
}

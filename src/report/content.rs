//! The report's content as format-neutral sections (paragraphs, warnings,
//! tables, plots), which `markdown.rs` and `html.rs` only lay out.

use super::analysis::{Group, Memory, MethodComparison, Noise, Pick, value_text};
use super::format::{bytes, duration, hours, hyper, mean_std, number, ratio, signed};
use super::{Report, ReportError, params_text, plots, short_id};

#[derive(Clone, Debug, PartialEq)]
pub enum Block {
    Para(String),
    Warning(String),
    Table {
        headers: Vec<String>,
        rows: Vec<Vec<String>>,
    },
    /// Shell commands, one a line, to copy as they are.
    Code(String),
    /// An inline SVG (HTML); Markdown points to the HTML for it.
    Plot {
        title: String,
        svg: String,
    },
    /// Example cards (`gallery.rs`): a grid in HTML, a table in Markdown.
    Gallery(super::gallery::Cards),
}

#[derive(Clone, Debug, PartialEq)]
pub struct Section {
    pub title: String,
    pub blocks: Vec<Block>,
}

impl Section {
    pub(super) fn new(title: impl Into<String>) -> Self {
        Section {
            title: title.into(),
            blocks: Vec::new(),
        }
    }

    pub(super) fn para(&mut self, text: impl Into<String>) {
        self.blocks.push(Block::Para(text.into()));
    }

    pub(super) fn warning(&mut self, text: impl Into<String>) {
        self.blocks.push(Block::Warning(text.into()));
    }

    pub(super) fn table(&mut self, headers: &[&str], rows: Vec<Vec<String>>) {
        self.blocks.push(Block::Table {
            headers: headers.iter().map(|&h| h.to_owned()).collect(),
            rows,
        });
    }
}

/// The report's title.
pub fn title(report: &Report) -> String {
    format!("Checkpoint selection: sweep {}", report.sweep.name)
}

/// Every section, in order. `with_plots`: draw the SVGs (the HTML needs
/// them, the Markdown does not).
pub fn sections(report: &Report, with_plots: bool) -> Result<Vec<Section>, ReportError> {
    let mut out = vec![super::decision::section(report), overview(report)];
    out.push(recommendation(report));
    out.push(leaderboard(report));
    out.push(per_checkpoint(report));
    // Only what the sweep varied: no LoRA-vs-QLoRA section without both
    // methods, no learning-rate section when neither lr nor decay varied.
    if !matches!(report.methods, MethodComparison::NotApplicable { .. }) {
        out.push(methods(report));
    }
    if !report.grids.is_empty() {
        out.push(hyperparameters(report, with_plots)?);
    }
    out.push(super::importance_section::importance(report, with_plots)?);
    out.push(curves(report, with_plots)?);
    out.push(best_so_far(report, with_plots)?);
    out.push(pareto(report, with_plots)?);
    out.push(super::gallery::section(report));
    out.push(excluded(report));
    Ok(out)
}

fn direction(report: &Report) -> &'static str {
    if report.higher_is_better {
        "higher is better"
    } else {
        "lower is better"
    }
}

fn memory(m: Option<Memory>) -> String {
    match m {
        Some(Memory {
            bytes: b,
            measured: true,
        }) => bytes(b),
        Some(Memory {
            bytes: b,
            measured: false,
        }) => format!("{} (estimate)", bytes(b)),
        None => "-".into(),
    }
}

fn quality(report: &Report, g: &Group) -> String {
    mean_std(g.mean, if report.seeds_vary { g.std } else { None })
}

fn best_trial(report: &Report, g: &Group) -> String {
    short_id(&report.trials[g.trials[0]].id).to_owned()
}

fn wall(g: &Group) -> String {
    g.wall_time_s.map_or("-".into(), duration)
}

fn cost(g: &Group) -> String {
    Report::hours(g).map_or("-".into(), hours)
}

fn opt_hyper(v: Option<f64>) -> String {
    v.map_or("-".into(), hyper)
}

fn overview(report: &Report) -> Section {
    let s = &report.sweep;
    let mut sec = Section::new("Overview");
    sec.para(format!(
        "Sweep {} ({}), spec {}, status {}: {} trials, {} finished, {} failed, {} pruned, {} interrupted.",
        s.name,
        s.id(),
        s.spec_path,
        s.status,
        report.trials.len(),
        s.counts.finished,
        s.counts.failed,
        s.counts.pruned,
        s.counts.interrupted,
    ));
    sec.para(format!(
        "Selection metric: {} ({}), each trial's best value over its evaluations{}.",
        report.metric,
        direction(report),
        if report.metric == s.select_metric {
            " (the spec's eval.select)".to_owned()
        } else {
            format!("; the spec selects by {}", s.select_metric)
        }
    ));
    sec.para(format!(
        "Varying keys: {}.{}",
        if report.varying.is_empty() {
            "none".to_owned()
        } else {
            report.varying.join(", ")
        },
        if report.seeds_vary {
            " Trials that differ only in seed are grouped: quality is the mean ± sample std over seeds, ranking uses the mean, n counts the seeds."
        } else {
            " The seed does not vary, so each row is one trial and the run-to-run noise is unknown (the 95% intervals, where shown, are over validation examples)."
        }
    ));
    let gpus: Vec<&str> = report
        .gpu_names
        .iter()
        .map(String::as_str)
        .filter(|n| !n.is_empty())
        .collect();
    sec.para(format!(
        "Devices: {}{}. Cost is wall time × 1 device per run, in {}.",
        s.devices.join(", "),
        if gpus.is_empty() {
            String::new()
        } else {
            format!(" ({})", gpus.join(", "))
        },
        report.hours_label
    ));
    sec
}

fn describe(report: &Report, g: &Group) -> String {
    let mut parts = vec![
        format!("checkpoint {}", g.checkpoint),
        format!("method {}", g.method),
    ];
    if let Some(lr) = g.lr {
        parts.push(format!("lr {}", hyper(lr)));
    }
    if let Some(wd) = g.weight_decay {
        parts.push(format!("weight decay {}", hyper(wd)));
    }
    let others: Vec<String> = g
        .key
        .iter()
        .filter(|(k, _)| {
            !matches!(
                k.as_str(),
                "model.size"
                    | "model.resolution"
                    | "model.checkpoint"
                    | "train.method"
                    | "train.lr"
                    | "train.weight_decay"
            )
        })
        .map(|(k, v)| format!("{k}={}", value_text(v)))
        .collect();
    if !others.is_empty() {
        parts.push(others.join(" "));
    }
    format!(
        "{} — {} {}{}, best run {}, wall time {}, memory {}",
        parts.join(", "),
        report.metric,
        quality(report, g),
        if report.seeds_vary {
            format!(" (n={})", g.n())
        } else {
            String::new()
        },
        best_trial(report, g),
        wall(g),
        memory(g.memory),
    )
}

fn pick_lines(report: &Report, sec: &mut Section, heading: &str, pick: &Pick) {
    let g = &report.groups[pick.group];
    sec.para(format!("{heading}: {}.", describe(report, g)));
    let (Some(r), Some(margin)) = (pick.runner_up, pick.margin) else {
        sec.para("There is no runner-up to compare with.");
        return;
    };
    sec.para(format!(
        "Margin over the runner-up (#{} in the leaderboard: {}, {} {}): {}.",
        r + 1,
        report.groups[r].label(),
        report.metric,
        quality(report, &report.groups[r]),
        number(margin)
    ));
    if margin == 0.0 {
        sec.warning(
            "The pick ties with the runner-up; it ranks first for needing less memory (or, equal in memory, less time).",
        );
    }
    match pick.noise {
        Noise::Estimated { std, within: true } => sec.warning(format!(
            "The margin {} is within the seed noise (pooled seed std {}): the pick and the runner-up are not clearly different. Run more seeds, or choose the cheaper of the two.",
            number(margin),
            number(std)
        )),
        Noise::Estimated { std, within: false } => sec.para(format!(
            "The margin is larger than the seed noise (pooled seed std {}).",
            number(std)
        )),
        // Without seeds, the decision bootstraps the margin over examples.
        Noise::NoRepeats if report.bootstrap.as_ref().is_some_and(|b| b.difference.as_ref().is_some_and(Result::is_ok)) => sec.para(
            "The seed-to-seed noise cannot be estimated (no configuration ran with several seeds); the decision sets the overall pick's margin against a bootstrap over validation examples instead.",
        ),
        Noise::NoRepeats => sec.warning(
            "The noise cannot be estimated: no configuration ran with several seeds (vary experiment.seed to measure it), so a small margin may be luck.",
        ),
        Noise::NoRunnerUp => {}
    }
}

fn recommendation(report: &Report) -> Section {
    let mut sec = Section::new("Recommendation");
    let rec = &report.recommendation;
    if let super::decision::Decision::NoSignal { why } = &report.decision {
        sec.warning(format!("{why}: nothing to recommend, under any budget."));
        return sec;
    }
    let Some(overall) = &rec.overall else {
        sec.warning(format!(
            "No trial finished with a value of {}: nothing to recommend.",
            report.metric
        ));
        return sec;
    };
    pick_lines(report, &mut sec, "Overall", overall);
    match &rec.budget {
        None => sec.para(
            "No memory budget given (--budget-memory 24GiB picks the best configuration that fits).",
        ),
        Some(b) => match &b.pick {
            Some(p) if p.group == overall.group => sec.para(format!(
                "Under the memory budget of {}: the overall pick fits ({}).",
                bytes(b.budget),
                memory(report.groups[p.group].memory)
            )),
            Some(p) => {
                let heading = format!(
                    "Under the memory budget of {} ({} configuration(s) over it{})",
                    bytes(b.budget),
                    b.over,
                    if b.unknown > 0 {
                        format!(", {} with no memory figure", b.unknown)
                    } else {
                        String::new()
                    }
                );
                pick_lines(report, &mut sec, &heading, p);
            }
            None => sec.warning(format!(
                "No configuration fits the memory budget of {} ({} over it, {} with no memory figure).",
                bytes(b.budget),
                b.over,
                b.unknown
            )),
        },
    }
    sec.para(
        "Memory is the measured peak when a run measured it, else the planner's estimate (marked).",
    );
    sec
}

fn leaderboard(report: &Report) -> Section {
    let mut sec = Section::new("Leaderboard");
    if report.groups.is_empty() {
        sec.para("No ranked trials.");
        return sec;
    }
    let metric = format!(
        "{} ({})",
        report.metric,
        if report.higher_is_better {
            "↑"
        } else {
            "↓"
        }
    );
    let mut headers = vec!["#", metric.as_str()];
    if report.seeds_vary {
        headers.push("n");
    }
    let interval = super::bootstrap::header();
    let intervals = super::bootstrap::any(report);
    if intervals {
        headers.push(&interval);
    }
    headers.extend([
        "configuration",
        "best run",
        "wall time",
        report.hours_label,
        "memory",
    ]);
    let rows = report
        .groups
        .iter()
        .enumerate()
        .map(|(i, g)| {
            let mut row = vec![(i + 1).to_string(), quality(report, g)];
            if report.seeds_vary {
                row.push(g.n().to_string());
            }
            if intervals {
                row.push(super::bootstrap::cell(report, g.trials[0]));
            }
            row.extend([
                g.label(),
                best_trial(report, g),
                wall(g),
                cost(g),
                memory(g.memory),
            ]);
            row
        })
        .collect();
    sec.table(&headers, rows);
    if let Some(note) = super::bootstrap::leaderboard_note(report) {
        sec.para(note);
    }
    sec
}

fn per_checkpoint(report: &Report) -> Section {
    let mut sec = Section::new("Best per checkpoint");
    if report.best_per_checkpoint.is_empty() {
        sec.para("No ranked trials.");
        return sec;
    }
    let metric = report.metric.as_str();
    let mut headers = vec!["checkpoint", "rank", metric];
    if report.seeds_vary {
        headers.push("n");
    }
    headers.extend([
        "method",
        "lr",
        "weight decay",
        "best run",
        "wall time",
        report.hours_label,
        "peak memory",
    ]);
    let rows = report
        .best_per_checkpoint
        .iter()
        .map(|&i| {
            let g = &report.groups[i];
            let mut row = vec![
                g.checkpoint.clone(),
                (i + 1).to_string(),
                quality(report, g),
            ];
            if report.seeds_vary {
                row.push(g.n().to_string());
            }
            row.extend([
                g.method.clone(),
                opt_hyper(g.lr),
                opt_hyper(g.weight_decay),
                best_trial(report, g),
                wall(g),
                cost(g),
                memory(g.memory),
            ]);
            row
        })
        .collect();
    sec.table(&headers, rows);
    sec
}

fn methods(report: &Report) -> Section {
    let mut sec = Section::new("LoRA vs QLoRA");
    match &report.methods {
        MethodComparison::NotApplicable { methods } => sec.para(format!(
            "Not applicable: the ranked trials use {} only; the comparison needs LoRA and QLoRA runs of otherwise equal settings.",
            if methods.is_empty() {
                "no method".to_owned()
            } else {
                methods.join(", ")
            }
        )),
        MethodComparison::Pairs(pairs) if pairs.is_empty() => sec.para(
            "Both methods ran, but no LoRA configuration has a QLoRA twin equal in every other varying key.",
        ),
        MethodComparison::Pairs(pairs) => {
            sec.para(format!(
                "{} matched pair(s), equal in every varying key but train.method. Δ is QLoRA minus LoRA ({}); ratios are QLoRA over LoRA.",
                pairs.len(),
                direction(report)
            ));
            let rows = pairs
                .iter()
                .map(|p| {
                    let (l, q) = (&report.groups[p.lora], &report.groups[p.qlora]);
                    vec![
                        if p.setting.is_empty() {
                            "(all)".to_owned()
                        } else {
                            params_text(&p.setting)
                        },
                        quality(report, l),
                        quality(report, q),
                        signed(p.quality_diff),
                        p.memory_ratio.map_or("-".into(), ratio),
                        p.time_ratio.map_or("-".into(), ratio),
                    ]
                })
                .collect();
            sec.table(
                &[
                    "setting",
                    "LoRA",
                    "QLoRA",
                    "Δ quality",
                    "memory ratio",
                    "time ratio",
                ],
                rows,
            );
            let n = pairs.len() as f64;
            let mean = |f: &dyn Fn(&super::analysis::MethodPair) -> Option<f64>| {
                let v: Vec<f64> = pairs.iter().filter_map(f).collect();
                (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
            };
            sec.para(format!(
                "On average QLoRA changes {} by {}, uses {} the memory and {} the time of LoRA.",
                report.metric,
                signed(pairs.iter().map(|p| p.quality_diff).sum::<f64>() / n),
                mean(&|p| p.memory_ratio).map_or("-".into(), ratio),
                mean(&|p| p.time_ratio).map_or("-".into(), ratio),
            ));
        }
    }
    sec
}

fn hyperparameters(report: &Report, with_plots: bool) -> Result<Section, ReportError> {
    let lr_varies = report.grids.iter().any(|g| g.lrs.len() > 1);
    let wd_varies = report.grids.iter().any(|g| g.weight_decays.len() > 1);
    let mut sec = Section::new(match (lr_varies, wd_varies) {
        (true, true) => "Learning rate × weight decay",
        (true, false) => "Learning rate",
        _ => "Weight decay",
    });
    sec.para(format!(
        "Per checkpoint, the best {} (group mean) at each learning rate and weight decay, over the other keys; – marks a combination with no ranked run.",
        report.metric
    ));
    for grid in &report.grids {
        let mut headers = vec!["weight decay \\ lr".to_owned()];
        headers.extend(grid.lrs.iter().map(|&l| hyper(l)));
        let rows = grid
            .weight_decays
            .iter()
            .zip(&grid.cells)
            .map(|(&w, row)| {
                let mut cells = vec![hyper(w)];
                cells.extend(row.iter().map(|c| c.map_or("–".into(), number)));
                cells
            })
            .collect();
        sec.para(format!("Checkpoint {}:", grid.checkpoint));
        sec.blocks.push(Block::Table { headers, rows });
    }
    if with_plots {
        // One figure, a panel per checkpoint, to compare them side by side.
        sec.blocks.push(Block::Plot {
            title: format!("{} per checkpoint", sec.title.to_lowercase()),
            svg: plots::grids(&report.metric, report.higher_is_better, &report.grids)?,
        });
    }
    Ok(sec)
}

/// The best selection value against the device-hours spent to reach it.
fn best_so_far(report: &Report, with_plots: bool) -> Result<Section, ReportError> {
    let mut sec = Section::new("Best so far against compute");
    let Some(sweep) = report.best_so_far.first().filter(|l| !l.points.is_empty()) else {
        sec.para("No trial has ended with a value yet.");
        return Ok(sec);
    };
    let simulated = &report.best_so_far[1..];
    let (hours, best) = sweep.points.last().copied().unwrap_or_default();
    sec.para(format!(
        "The best {} of the trials that had ended, against the {} they had used: {} after {} h.{}",
        report.metric,
        report.hours_label,
        number(best),
        super::format::hours(hours),
        if simulated.is_empty() {
            " `palisweep simulate --from SWEEP` replays the sweep under other strategies (ASHA, Hyperband, TPE, …) and adds a line for each here.".to_owned()
        } else {
            format!(
                " The {} simulated lines replay this sweep's recorded curves and times under other strategies (`palisweep simulate`, seed 0).",
                simulated.len()
            )
        }
    ));
    if with_plots {
        sec.blocks.push(Block::Plot {
            title: format!("best {} so far", report.metric),
            svg: plots::lines_over(
                &format!(
                    "best {} so far against {}",
                    report.metric, report.hours_label
                ),
                &report.metric,
                report.hours_label,
                &report.best_so_far,
                &|v| super::format::hours(*v),
            )?,
        });
    }
    Ok(sec)
}

fn curves(report: &Report, with_plots: bool) -> Result<Section, ReportError> {
    let mut sec = Section::new("Learning curves");
    if report.metric_curves.is_empty() {
        sec.para("No ranked trials.");
        return Ok(sec);
    }
    sec.para(format!(
        "The best run of each of the top {} configurations.",
        report.metric_curves.len()
    ));
    let rows = report
        .metric_curves
        .iter()
        .zip(&report.loss_curves)
        .zip(&report.groups)
        .map(|((m, l), g)| {
            let last = |c: &super::Curve| c.points.last().map_or("-".into(), |p| number(p.1));
            vec![
                m.label.clone(),
                g.label(),
                last(m),
                last(l),
                m.points.len().to_string(),
            ]
        })
        .collect();
    let metric_last = format!("last {}", report.metric);
    let loss_last = format!("last {}", super::TRAIN_LOSS);
    sec.table(
        &[
            "run",
            "configuration",
            &metric_last,
            &loss_last,
            "evaluations",
        ],
        rows,
    );
    if with_plots {
        sec.blocks.push(Block::Plot {
            title: report.metric.clone(),
            svg: plots::curves(
                &format!("{} over steps", report.metric),
                &report.metric,
                &report.metric_curves,
            )?,
        });
        if report.loss_curves.iter().any(|c| !c.points.is_empty()) {
            sec.blocks.push(Block::Plot {
                title: super::TRAIN_LOSS.into(),
                svg: plots::curves(
                    &format!("{} over steps", super::TRAIN_LOSS),
                    super::TRAIN_LOSS,
                    &report.loss_curves,
                )?,
            });
        }
    }
    Ok(sec)
}

fn pareto(report: &Report, with_plots: bool) -> Result<Section, ReportError> {
    let mut sec = Section::new("Quality vs cost");
    let front: Vec<usize> = (0..report.groups.len())
        .filter(|&i| report.pareto[i])
        .collect();
    if front.is_empty() {
        sec.para("No ranked trial has a wall time.");
        return Ok(sec);
    }
    sec.para(format!(
        "The Pareto front of {} against {} per run: no other configuration is both cheaper and better.",
        report.metric, report.hours_label
    ));
    let mut rows_front = front.clone();
    rows_front.sort_by(|&a, &b| {
        let h = |i: usize| Report::hours(&report.groups[i]).unwrap_or(f64::INFINITY);
        h(a).total_cmp(&h(b))
    });
    let rows = rows_front
        .iter()
        .map(|&i| {
            let g = &report.groups[i];
            vec![
                (i + 1).to_string(),
                g.label(),
                quality(report, g),
                cost(g),
                wall(g),
                memory(g.memory),
            ]
        })
        .collect();
    sec.table(
        &[
            "rank",
            "configuration",
            report.metric.as_str(),
            report.hours_label,
            "wall time",
            "memory",
        ],
        rows,
    );
    if with_plots {
        sec.blocks.push(Block::Plot {
            title: "quality vs cost".into(),
            svg: plots::pareto(report)?,
        });
    }
    Ok(sec)
}

fn excluded(report: &Report) -> Section {
    let mut sec = Section::new("Failed and unfinished trials");
    let excluded = report.excluded();
    if excluded.is_empty() {
        sec.para("None: every trial finished and is ranked.");
        return sec;
    }
    sec.para("Left out of every ranking above.");
    let rows = excluded
        .iter()
        .map(|&i| {
            let t = &report.trials[i];
            vec![
                short_id(&t.id).to_owned(),
                t.status.clone(),
                params_text(&t.params),
                t.exclusion().unwrap_or_default(),
            ]
        })
        .collect();
    sec.table(&["trial", "status", "params", "reason"], rows);
    sec
}

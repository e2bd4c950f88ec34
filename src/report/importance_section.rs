//! The report's section on which hyperparameters mattered: the
//! importance table of `importance.rs` and the parallel-coordinates plot.

use super::content::{Block, Section};
use super::{Report, ReportError};

pub(super) fn importance(report: &Report, with_plots: bool) -> Result<Section, ReportError> {
    use super::importance::{Importance, MIN_TRIALS};
    let mut sec = Section::new("Which hyperparameters mattered");
    let shares = match &report.importance {
        Importance::TooFew { ranked } => {
            sec.para(format!(
                "Not estimated: {ranked} ranked trial(s); the variance decomposition needs at least {MIN_TRIALS}."
            ));
            return Ok(sec);
        }
        Importance::NothingVaries { ranked } => {
            sec.para(format!(
                "Not estimated: no key takes two values among the {ranked} ranked trials."
            ));
            return Ok(sec);
        }
        Importance::Flat { ranked } => {
            sec.para(format!(
                "Every one of the {ranked} ranked trials has the same {}: no key made a difference.",
                report.metric
            ));
            return Ok(sec);
        }
        Importance::Shares(shares) => shares,
    };
    sec.para(importance_method(report, shares));
    sec.table(
        &["factor", "effect", "share of variance"],
        importance_rows(shares),
    );
    importance_caveats(&mut sec, shares);
    let keys: Vec<String> = shares
        .main
        .iter()
        .flat_map(|(f, _)| f.keys.iter().cloned())
        .collect();
    if with_plots && keys.len() >= 2 {
        sec.blocks.push(Block::Plot {
            title: "parallel coordinates".into(),
            svg: super::parallel::plot(
                &report.metric,
                report.higher_is_better,
                &report.trials,
                &keys,
            )?,
        });
    }
    Ok(sec)
}

/// Which estimator ran, and what its shares mean.
fn importance_method(report: &Report, shares: &super::importance::Shares) -> String {
    use super::importance::{FOREST_SEED, FOREST_TREES, Method};
    let what = format!(
        "How much of the variance of {} over the {} ranked trials each varying key explains.",
        report.metric, shares.trials
    );
    match shares.method {
        Method::ExactGrid { cells, per_cell } => format!(
            "{what} Method: exact functional ANOVA of the complete grid ({cells} combinations, {per_cell} trial(s) each): a key's share is the variance of its mean {} at each of its values, over the total variance; a pair's share is what their joint means add beyond both keys alone; the residual is every higher-order interaction{}.",
            report.metric,
            if per_cell > 1 {
                " and the spread within a combination"
            } else {
                ""
            },
        ),
        Method::Forest => format!(
            "{what} Method: random-forest functional ANOVA ({FOREST_TREES} trees, fixed seed {FOREST_SEED}, the `optimizer` crate's fANOVA), because the ranked trials are not a complete grid (random draws, exclusions or failed trials). Shares are of the variance the forest explains with single keys and pairs; higher-order interactions are not estimated."
        ),
    }
}

/// Main effects, interactions of 0.1 % or more (smaller ones would only
/// lengthen the table), and the residual.
fn importance_rows(shares: &super::importance::Shares) -> Vec<Vec<String>> {
    let percent = |v: f64| format!("{:.1} %", 100.0 * v);
    let mut rows: Vec<Vec<String>> = shares
        .main
        .iter()
        .map(|(f, v)| {
            let name = if f.is_seed() {
                format!("{} (run-to-run noise)", f.label())
            } else {
                f.label()
            };
            vec![name, "main".into(), percent(*v)]
        })
        .collect();
    rows.extend(
        shares
            .pairs
            .iter()
            .filter(|p| p.2 >= 0.001)
            .map(|(a, b, v)| {
                vec![
                    format!("{} × {}", a.label(), b.label()),
                    "interaction".into(),
                    percent(*v),
                ]
            }),
    );
    if let Some(r) = shares.residual {
        rows.push(vec![
            "everything else".into(),
            "higher-order".into(),
            percent(r),
        ]);
    }
    rows
}

fn importance_caveats(sec: &mut Section, shares: &super::importance::Shares) {
    use super::importance::INDICATIVE_BELOW;
    if shares.trials < INDICATIVE_BELOW {
        sec.warning(format!(
            "Indicative only: {} ranked trials (under {INDICATIVE_BELOW}); a few more or fewer runs can reorder the keys.",
            shares.trials
        ));
    }
    if shares.seeds_vary() {
        sec.para(
            "The seed's share (alone and in pairs) is run-to-run noise: a key whose share is not clearly above it is not distinguishable from noise.",
        );
    } else {
        sec.warning(
            "Indicative only: each configuration ran once (the seed does not vary), so run-to-run noise is counted in the keys' shares.",
        );
    }
    if !shares.constant.is_empty() {
        sec.para(format!(
            "Not analysed, one value among the ranked trials: {}.",
            shares.constant.join(", ")
        ));
    }
    if shares.main.iter().any(|(f, _)| f.keys.len() > 1) {
        sec.para(
            "Keys joined by + always changed together in the ranked trials: their effects cannot be told apart.",
        );
    }
}

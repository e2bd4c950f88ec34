//! The parallel-coordinates plot: one vertical axis per varying key and a
//! last one for the selection metric, one polyline per ranked trial
//! coloured by its metric (viridis, best brightest), the best trial drawn
//! last and thicker. Drawn in pixels on plotters' SVG backend, since its
//! charts have one y axis.

use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use serde_json::Value;

use super::analysis::{TrialFacts, cmp_quality, value_text};
use super::format::{hyper, number};
use super::plots::{Area, CAPTION, DrawResult, FONT, MAX_WIDTH, TICK, span, svg};
use super::{ReportError, short_id};

const HEIGHT: i32 = 470;
const LEFT: i32 = 70;
/// Where the last axis stands; the colour bar is right of it.
const RIGHT: i32 = 650;
const TOP: i32 = 64;
const BOTTOM: i32 = 380;
const BAR_X: i32 = 730;
const BAR_WIDTH: i32 = 18;
/// Of an 11.3 px sans-serif label, in pixels.
const CHAR_WIDTH: f64 = 6.8;
/// Labels closer than this on one axis are skipped.
const LABEL_GAP: i32 = 15;
/// The longest value label, in characters.
const LABEL_CHARS: usize = 16;
/// Viridis is cut before its palest yellow, which is faint on white.
const TOP_OF_MAP: f64 = 0.9;

/// How an axis places a value: from 0 (bottom) to 1 (top).
enum Scale {
    /// Values sorted; evenly spaced.
    Categorical(Vec<Value>),
    Linear {
        lo: f64,
        hi: f64,
    },
    /// Numbers that span a decade or more.
    Log {
        lo: f64,
        hi: f64,
    },
}

impl Scale {
    fn of(values: &[Value]) -> Scale {
        let numbers: Option<Vec<f64>> = values.iter().map(Value::as_f64).collect();
        match numbers {
            Some(n) if !n.is_empty() => {
                let lo = n.iter().copied().fold(f64::INFINITY, f64::min);
                let hi = n.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                if lo > 0.0 && hi / lo >= 10.0 {
                    Scale::Log { lo, hi }
                } else {
                    Scale::Linear { lo, hi }
                }
            }
            _ => {
                let mut levels = values.to_vec();
                levels.sort_by_key(value_text);
                levels.dedup();
                Scale::Categorical(levels)
            }
        }
    }

    /// Position from 0 to 1, numbers padded 5 % from the ends.
    fn position(&self, v: &Value) -> f64 {
        let pad = |t: f64| 0.05 + 0.9 * t;
        match self {
            Scale::Categorical(levels) => {
                let i = levels.iter().position(|l| l == v).unwrap_or(0);
                (i as f64 + 0.5) / levels.len() as f64
            }
            Scale::Linear { lo, hi } => {
                let x = v.as_f64().unwrap_or(*lo);
                if hi > lo {
                    pad((x - lo) / (hi - lo))
                } else {
                    0.5
                }
            }
            Scale::Log { lo, hi } => {
                let x = v.as_f64().unwrap_or(*lo);
                pad((x.ln() - lo.ln()) / (hi.ln() - lo.ln()))
            }
        }
    }

    /// The labelled values: every category, every distinct number of a
    /// grid, else decades (log) or five even steps (linear).
    fn ticks(&self, values: &[Value]) -> Vec<(f64, String)> {
        let mut distinct: Vec<f64> = values.iter().filter_map(Value::as_f64).collect();
        distinct.sort_by(f64::total_cmp);
        distinct.dedup();
        let numbers = |xs: Vec<f64>| -> Vec<(f64, String)> {
            xs.into_iter()
                .map(|x| (self.position(&Value::from(x)), hyper(x)))
                .collect()
        };
        match self {
            Scale::Categorical(levels) => levels
                .iter()
                .map(|l| (self.position(l), value_text(l)))
                .collect(),
            _ if distinct.len() <= 8 => numbers(distinct),
            Scale::Log { lo, hi } => {
                let decades = (lo.log10().ceil() as i32..=hi.log10().floor() as i32)
                    .map(|e| 10f64.powi(e))
                    .collect();
                numbers(decades)
            }
            Scale::Linear { lo, hi } => numbers(
                (0..5)
                    .map(|i| lo + (hi - lo) * f64::from(i) / 4.0)
                    .collect(),
            ),
        }
    }
}

fn y_at(t: f64) -> i32 {
    BOTTOM - (t * f64::from(BOTTOM - TOP)).round() as i32
}

/// `…`-shortened to `chars`.
fn clip(text: &str, chars: usize) -> String {
    if text.chars().count() <= chars {
        text.to_owned()
    } else {
        let head: String = text.chars().take(chars - 1).collect();
        format!("{head}…")
    }
}

fn label_style(h: HPos, v: VPos) -> TextStyle<'static> {
    (FONT, TICK).into_font().color(&BLACK).pos(Pos::new(h, v))
}

/// A value label right of an axis, on a white backing so crossing lines
/// do not hide it.
fn value_label(area: &Area<'_>, x: i32, y: i32, text: &str) -> DrawResult {
    let width = (text.chars().count() as f64 * CHAR_WIDTH).ceil() as i32 + 6;
    area.draw(&Rectangle::new(
        [(x + 3, y - 8), (x + 3 + width, y + 8)],
        WHITE.mix(0.85).filled(),
    ))?;
    area.draw(&Text::new(
        text.to_owned(),
        (x + 6, y),
        label_style(HPos::Left, VPos::Center),
    ))?;
    Ok(())
}

/// Labels bottom to top, skipping any closer than [`LABEL_GAP`] to the
/// last one drawn.
fn axis_labels(area: &Area<'_>, x: i32, mut ticks: Vec<(f64, String)>) -> DrawResult {
    ticks.sort_by(|a, b| a.0.total_cmp(&b.0));
    let mut last: Option<i32> = None;
    for (t, text) in ticks {
        let y = y_at(t);
        if last.is_some_and(|l| l - y < LABEL_GAP) {
            continue;
        }
        value_label(area, x, y, &clip(&text, LABEL_CHARS))?;
        last = Some(y);
    }
    Ok(())
}

/// An axis's name under it: one line when it fits the spacing, else split
/// after the first `.` (`train.` / `weight_decay`).
fn axis_name(area: &Area<'_>, x: i32, name: &str, spacing: i32) -> DrawResult {
    // Centred under the axis: the first one has only 2 × LEFT of room.
    let room = (spacing - 8).min(2 * x);
    let fits = |s: &str| (s.chars().count() as f64 * CHAR_WIDTH) < f64::from(room);
    let lines: Vec<String> = match name.split_once('.') {
        Some((head, tail)) if !fits(name) => vec![format!("{head}."), tail.to_owned()],
        _ => vec![name.to_owned()],
    };
    let chars = (f64::from(room) / CHAR_WIDTH).max(4.0) as usize;
    for (i, line) in lines.iter().enumerate() {
        area.draw(&Text::new(
            clip(line, chars),
            (x, BOTTOM + 14 + 17 * i32::try_from(i).unwrap_or(0)),
            label_style(HPos::Center, VPos::Top),
        ))?;
    }
    Ok(())
}

/// Viridis at eight evenly spaced stops: the anchors of plotters 0.3.7's
/// `ViridisRGB` (`src/style/colors/colormaps.rs`), whose `colormaps`
/// feature does not build without `full_palette`.
const VIRIDIS: [(u8, u8, u8); 8] = [
    (68, 1, 84),
    (70, 50, 127),
    (54, 92, 141),
    (39, 127, 143),
    (31, 162, 136),
    (74, 194, 110),
    (160, 219, 57),
    (254, 232, 37),
];

/// Colour of `goodness` (0 worst, 1 best), interpolated between stops.
fn colour(goodness: f64) -> RGBColor {
    let at = goodness.clamp(0.0, 1.0) * TOP_OF_MAP * (VIRIDIS.len() - 1) as f64;
    let stop = (at.floor() as usize).min(VIRIDIS.len() - 2);
    let frac = at - stop as f64;
    let mix = |from: u8, to: u8| {
        (f64::from(from) + (f64::from(to) - f64::from(from)) * frac).round() as u8
    };
    let (lo, hi) = (VIRIDIS[stop], VIRIDIS[stop + 1]);
    RGBColor(mix(lo.0, hi.0), mix(lo.1, hi.1), mix(lo.2, hi.2))
}

/// One vertical axis: its name, scale and labels, and each ranked trial's
/// value on it.
struct Axis {
    name: String,
    scale: Scale,
    ticks: Vec<(f64, String)>,
    values: Vec<Value>,
}

impl Axis {
    fn key(key: &str, ranked: &[&TrialFacts]) -> Axis {
        let values: Vec<Value> = ranked
            .iter()
            .map(|t| t.params.get(key).cloned().unwrap_or(Value::Null))
            .collect();
        let scale = Scale::of(&values);
        Axis {
            name: if matches!(scale, Scale::Log { .. }) {
                format!("{key} (log)")
            } else {
                key.to_owned()
            },
            ticks: scale.ticks(&values),
            scale,
            values,
        }
    }

    /// The metric's axis: linear over its span, five even labels.
    fn metric(metric: &str, quality: &[f64]) -> Axis {
        let (lo, hi) = span(quality.iter().copied());
        let (min, max) = quality
            .iter()
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &q| {
                (a.min(q), b.max(q))
            });
        let scale = Scale::Linear { lo, hi };
        let ticks = (0..5)
            .map(|i| {
                let v = min + (max - min) * f64::from(i) / 4.0;
                (scale.position(&Value::from(v)), number(v))
            })
            .collect();
        Axis {
            name: metric.to_owned(),
            scale,
            ticks,
            values: quality.iter().map(|&q| Value::from(q)).collect(),
        }
    }
}

/// The plot of the ranked `trials` over `keys` (at least two) and the
/// metric.
pub fn plot(
    metric: &str,
    higher_is_better: bool,
    trials: &[TrialFacts],
    keys: &[String],
) -> Result<String, ReportError> {
    let mut ranked: Vec<&TrialFacts> = trials.iter().filter(|t| t.is_ranked()).collect();
    // Worst first, so the best is drawn last, on top.
    ranked.sort_by(|a, b| {
        cmp_quality(
            a.quality.unwrap_or(f64::NAN),
            b.quality.unwrap_or(f64::NAN),
            higher_is_better,
        )
        .reverse()
        .then_with(|| a.id.cmp(&b.id))
    });
    let quality: Vec<f64> = ranked.iter().filter_map(|t| t.quality).collect();
    let mut axes: Vec<Axis> = keys.iter().map(|k| Axis::key(k, &ranked)).collect();
    axes.push(Axis::metric(metric, &quality));
    let (worst, best) = match (quality.first(), quality.last()) {
        (Some(&w), Some(&b)) => (w, b),
        _ => (0.0, 1.0),
    };
    let goodness = |q: f64| {
        if (best - worst).abs() > 0.0 {
            (q - worst) / (best - worst)
        } else {
            1.0
        }
    };
    let gaps = i32::try_from(axes.len() - 1).unwrap_or(i32::MAX).max(1);
    let spacing = (RIGHT - LEFT) / gaps;
    let x_of = |i: usize| LEFT + spacing * i32::try_from(i).unwrap_or(0);
    let title = format!("{metric} of each ranked trial over the varying keys");
    svg(&title, (MAX_WIDTH, HEIGHT.unsigned_abs()), |root| {
        root.draw(&Text::new(
            title.clone(),
            (i32::try_from(MAX_WIDTH / 2).unwrap_or(430), 14),
            (FONT, CAPTION)
                .into_font()
                .color(&BLACK)
                .pos(Pos::new(HPos::Center, VPos::Top)),
        ))?;
        for i in 0..axes.len() {
            area_line(root, x_of(i))?;
        }
        for (n, &q) in quality.iter().enumerate() {
            let points: Vec<(i32, i32)> = axes
                .iter()
                .enumerate()
                .map(|(i, a)| (x_of(i), y_at(a.scale.position(&a.values[n]))))
                .collect();
            let best_line = n + 1 == quality.len();
            let width = if best_line { 5 } else { 2 };
            root.draw(&PathElement::new(
                points.clone(),
                colour(goodness(q)).stroke_width(width),
            ))?;
            if best_line {
                for p in points {
                    root.draw(&Circle::new(p, 5, BLACK.filled()))?;
                }
            }
        }
        for (i, axis) in axes.iter().enumerate() {
            axis_labels(root, x_of(i), axis.ticks.clone())?;
            axis_name(root, x_of(i), &axis.name, spacing)?;
        }
        if let Some(best_trial) = ranked.last() {
            root.draw(&Text::new(
                format!(
                    "thick line, dots: the best trial, {}",
                    short_id(&best_trial.id)
                ),
                (LEFT, HEIGHT - 22),
                label_style(HPos::Left, VPos::Center),
            ))?;
        }
        colour_bar(root, metric, worst, best)
    })
}

/// A 1 px axis (a rectangle, so that every polyline is a trial).
fn area_line(area: &Area<'_>, x: i32) -> DrawResult {
    area.draw(&Rectangle::new(
        [(x, TOP - 6), (x + 1, BOTTOM + 6)],
        BLACK.mix(0.6).filled(),
    ))?;
    Ok(())
}

/// The colour scale right of the last axis, best at the top, with the
/// worst, middle and best values.
fn colour_bar(area: &Area<'_>, metric: &str, worst: f64, best: f64) -> DrawResult {
    const STEPS: i32 = 48;
    let height = BOTTOM - TOP;
    for s in 0..STEPS {
        let y0 = BOTTOM - height * (s + 1) / STEPS;
        let y1 = BOTTOM - height * s / STEPS;
        area.draw(&Rectangle::new(
            [(BAR_X, y0), (BAR_X + BAR_WIDTH, y1)],
            colour((f64::from(s) + 0.5) / f64::from(STEPS)).filled(),
        ))?;
    }
    area.draw(&Text::new(
        clip(metric, 12),
        (BAR_X + BAR_WIDTH / 2, TOP - 24),
        label_style(HPos::Center, VPos::Center),
    ))?;
    for (y, v, what) in [
        (TOP, best, " best"),
        (i32::midpoint(TOP, BOTTOM), f64::midpoint(worst, best), ""),
        (BOTTOM, worst, " worst"),
    ] {
        area.draw(&Text::new(
            format!("{}{what}", number(v)),
            (BAR_X + BAR_WIDTH + 6, y),
            label_style(HPos::Left, VPos::Center),
        ))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use serde_json::json;

    use super::super::plots::tests::{attributes, texts};
    use super::*;

    fn trial(id: &str, lr: f64, method: &str, seed: i64, q: f64) -> TrialFacts {
        TrialFacts {
            params: BTreeMap::from([
                ("train.lr".into(), json!(lr)),
                ("train.method".into(), json!(method)),
                ("experiment.seed".into(), json!(seed)),
            ]),
            method: method.into(),
            lr: Some(lr),
            ..TrialFacts::finished(id, q)
        }
    }

    fn trials() -> Vec<TrialFacts> {
        let mut out = Vec::new();
        for (i, lr) in [1e-5, 1e-4, 1e-3].into_iter().enumerate() {
            for (j, m) in ["lora", "qlora"].into_iter().enumerate() {
                let q = 0.5 + 0.1 * i as f64 + 0.01 * j as f64;
                out.push(trial(&format!("trial{i}{j}"), lr, m, 0, q));
            }
        }
        let mut failed = trial("failed", 1e-2, "lora", 0, 0.0);
        failed.status = "failed".into();
        out.push(failed);
        out
    }

    /// `<polyline>` point lists.
    fn polylines(svg: &str) -> Vec<Vec<(f64, f64)>> {
        svg.match_indices("<polyline")
            .map(|(i, _)| {
                let tag = &svg[i..i + svg[i..].find("/>").unwrap()];
                attributes(tag)["points"]
                    .split_whitespace()
                    .map(|p| {
                        let (x, y) = p.split_once(',').unwrap();
                        (x.parse().unwrap(), y.parse().unwrap())
                    })
                    .collect()
            })
            .collect()
    }

    #[test]
    fn one_polyline_per_ranked_trial_across_every_axis() {
        let keys = vec!["train.lr".to_owned(), "train.method".to_owned()];
        let svg = plot("val/field_f1", true, &trials(), &keys).unwrap();
        let lines = polylines(&svg);
        // Six ranked trials; the failed one is not drawn.
        assert_eq!(lines.len(), 6, "{svg}");
        assert!(lines.iter().all(|l| l.len() == 3));
        // The best (lr 1e-3, qlora, 0.71) is last and at the top of the
        // metric axis.
        let best = lines.last().unwrap();
        let top = lines.iter().map(|l| l[2].1).fold(f64::MAX, f64::min);
        assert!((best[2].1 - top).abs() < 1e-9);
        assert!(svg.contains("stroke-width=\"5\""));
        let all: Vec<String> = texts(&svg).into_iter().map(|(_, t)| t).collect();
        for expected in [
            "train.lr (log)",
            "train.method",
            "val/field_f1",
            "1e-5",
            "1e-4",
            "1e-3",
            "lora",
            "qlora",
        ] {
            assert!(all.iter().any(|t| t == expected), "{expected} in {all:?}");
        }
        let w: u32 = attributes(&svg[..svg.find('>').unwrap()])["width"]
            .parse()
            .unwrap();
        assert!(w <= MAX_WIDTH);
        let sizes: Vec<f64> = texts(&svg)
            .iter()
            .map(|(a, _)| a["font-size"].parse().unwrap())
            .collect();
        assert!(sizes.iter().all(|&s| s >= 11.0), "{sizes:?}");
    }

    /// lr spans two decades: equal ratios are equal distances.
    #[test]
    fn a_key_spanning_decades_is_on_a_log_axis() {
        let keys = vec!["train.lr".to_owned(), "train.method".to_owned()];
        let svg = plot("val/field_f1", true, &trials(), &keys).unwrap();
        let mut ys: Vec<f64> = polylines(&svg).iter().map(|l| l[0].1).collect();
        ys.sort_by(f64::total_cmp);
        ys.dedup();
        assert_eq!(ys.len(), 3, "{ys:?}");
        assert!(((ys[1] - ys[0]) - (ys[2] - ys[1])).abs() <= 2.0, "{ys:?}");
        // A key within one decade stays linear: 1, 2 and 4 are not evenly
        // spaced.
        let linear: Vec<TrialFacts> = [1.0, 2.0, 4.0]
            .iter()
            .enumerate()
            .map(|(i, &r)| {
                trial(
                    &format!("r{i}"),
                    r,
                    "lora",
                    i64::try_from(i).unwrap(),
                    0.5 + 0.1 * r,
                )
            })
            .collect();
        let keys = vec!["train.lr".to_owned(), "experiment.seed".to_owned()];
        let svg = plot("val/field_f1", true, &linear, &keys).unwrap();
        let mut ys: Vec<f64> = polylines(&svg).iter().map(|l| l[0].1).collect();
        ys.sort_by(f64::total_cmp);
        assert!(
            ((ys[1] - ys[0]) - 2.0 * (ys[2] - ys[1])).abs() <= 2.0,
            "{ys:?}"
        );
        assert!(!svg.contains("(log)"));
    }

    /// Lower is better: the best is the lowest value, still drawn last.
    #[test]
    fn the_best_of_a_loss_is_its_lowest_value() {
        let keys = vec!["train.lr".to_owned(), "train.method".to_owned()];
        let svg = plot("val/loss", false, &trials(), &keys).unwrap();
        let lines = polylines(&svg);
        let bottom = lines.iter().map(|l| l[2].1).fold(f64::MIN, f64::max);
        assert!((lines.last().unwrap()[2].1 - bottom).abs() < 1e-9);
        assert!(texts(&svg).iter().any(|(_, t)| t == "0.5 best"), "{svg}");
    }
}

//! The report's plots, drawn with plotters' SVG backend into strings that
//! the HTML embeds inline (no fonts, scripts or files fetched at view time).

use plotters::coord::ranged1d::SegmentValue;
use plotters::coord::types::RangedCoordf64;
use plotters::prelude::*;

use super::analysis::{HyperGrid, cmp_quality};
use super::format::{hours, hyper, number};
use super::{Curve, Report, ReportError};

const WIDE: (u32, u32) = (760, 420);
/// The widest figure: the HTML stays readable in a 900 px window.
pub const MAX_WIDTH: u32 = 860;
pub(super) const FONT: &str = "sans-serif";
/// Font sizes as plotters takes them; its SVG writes `size / 1.24` px, so
/// 14 is an 11.3 px tick label.
pub(super) const TICK: u32 = 14;
const DESC: u32 = 15;
pub(super) const CAPTION: u32 = 18;
/// The height of one legend row below a plot.
const LEGEND_ROW: u32 = 24;
/// Legend entries per row.
const LEGEND_COLUMNS: usize = 4;

/// Distinct colours for up to ten series (Tableau 10).
const PALETTE: [RGBColor; 10] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];

pub(super) type DrawResult = Result<(), Box<dyn std::error::Error>>;
pub(super) type Area<'b> = DrawingArea<SVGBackend<'b>, plotters::coord::Shift>;

/// The chart every plot draws on: its title, margins (room on the right
/// for the last x tick label) and label areas.
fn frame<'a, 'b>(root: &'a Area<'b>, title: &str) -> ChartBuilder<'a, 'b, SVGBackend<'b>> {
    let mut builder = ChartBuilder::on(root);
    builder
        .caption(title, (FONT, CAPTION))
        .margin(12)
        .margin_right(36)
        .x_label_area_size(48)
        .y_label_area_size(78);
    builder
}

/// Major grid lines only (the minor grid is transparent, which the SVG
/// backend skips), readable labels.
macro_rules! mesh {
    ($chart:expr) => {
        $chart
            .configure_mesh()
            .light_line_style(TRANSPARENT)
            .bold_line_style(BLACK.mix(0.12))
            .label_style((FONT, TICK))
            .axis_desc_style((FONT, DESC))
    };
}

/// Draws into a fresh SVG string; `draw` gets the whole canvas.
pub(super) fn svg(
    plot: &str,
    size: (u32, u32),
    draw: impl FnOnce(&Area<'_>) -> DrawResult,
) -> Result<String, ReportError> {
    let mut out = String::new();
    {
        let root = SVGBackend::with_string(&mut out, size).into_drawing_area();
        let result = root
            .fill(&WHITE)
            .map_err(Into::into)
            .and_then(|()| draw(&root))
            .and_then(|()| root.present().map_err(Into::into));
        result.map_err(|e| ReportError::Plot {
            plot: plot.to_owned(),
            message: e.to_string(),
        })?;
    }
    Ok(out)
}

/// Whether `metric` is a loss (drawn on a log axis).
pub fn is_loss(metric: &str) -> bool {
    let base = metric.rsplit('/').next().unwrap_or(metric);
    base == "loss" || base.ends_with("_loss")
}

/// The y range of `metric`'s values: from 0 for a bounded metric (so a
/// small difference does not look large), else the values' span.
fn value_range(metric: &str, values: impl IntoIterator<Item = f64>) -> (f64, f64) {
    let (lo, hi) = span(values);
    if super::decision::is_bounded(metric) {
        (0.0, if hi > 0.0 { hi } else { 1.0 })
    } else {
        (lo, hi)
    }
}

/// A position on a categorical axis.
fn index(i: usize) -> i32 {
    i32::try_from(i).unwrap_or(i32::MAX)
}

/// Lowest and highest of `values`, padded by 5 % (or ±0.5 when flat).
pub(super) fn span(values: impl IntoIterator<Item = f64>) -> (f64, f64) {
    let (lo, hi) = values
        .into_iter()
        .filter(|v| v.is_finite())
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
            (lo.min(v), hi.max(v))
        });
    if !lo.is_finite() {
        return (0.0, 1.0);
    }
    let pad = if hi > lo {
        (hi - lo) * 0.05
    } else {
        lo.abs().max(1.0) * 0.05
    };
    (lo - pad, hi + pad)
}

/// A colour on a white-to-blue scale; `t` in 0..=1 (1: best).
fn shade(t: f64) -> RGBColor {
    let t = t.clamp(0.0, 1.0);
    let lerp = |a: u8, b: u8| (f64::from(a) + (f64::from(b) - f64::from(a)) * t).round() as u8;
    RGBColor(lerp(239, 8), lerp(243, 48), lerp(255, 107))
}

/// Quality over learning rate × weight decay: one figure, a panel per
/// checkpoint (heatmaps when both vary, else lines over the one that
/// does), on one colour scale and one y range so panels compare.
pub fn grids(
    metric: &str,
    higher_is_better: bool,
    grids: &[HyperGrid],
) -> Result<String, ReportError> {
    let n = grids.len().max(1);
    let columns = n.min(2);
    let rows = n.div_ceil(columns);
    let both = grids
        .iter()
        .any(|g| g.lrs.len() > 1 && g.weight_decays.len() > 1);
    let panel_height: u32 = if both { 300 } else { 320 };
    let size = (
        MAX_WIDTH,
        panel_height * u32::try_from(rows).unwrap_or(u32::MAX),
    );
    let values: Vec<f64> = grids
        .iter()
        .flat_map(|g| g.cells.iter().flatten().filter_map(|c| *c))
        .collect();
    let title = format!("{metric} by lr × weight decay");
    svg(&title, size, |root| {
        let panels = root.split_evenly((rows, columns));
        for (grid, panel) in grids.iter().zip(&panels) {
            let title = grid.checkpoint.as_str();
            if grid.lrs.len() > 1 && grid.weight_decays.len() > 1 {
                heatmap(higher_is_better, grid, &values, panel, title)?;
            } else if grid.lrs.len() > 1 {
                line(
                    metric,
                    panel,
                    title,
                    "learning rate",
                    &grid.lrs,
                    &grid.cells[0],
                    &values,
                )?;
            } else {
                let column: Vec<Option<f64>> = grid.cells.iter().map(|row| row[0]).collect();
                line(
                    metric,
                    panel,
                    title,
                    "weight decay",
                    &grid.weight_decays,
                    &column,
                    &values,
                )?;
            }
        }
        Ok(())
    })
}

fn heatmap(
    higher: bool,
    grid: &HyperGrid,
    all: &[f64],
    root: &Area<'_>,
    title: &str,
) -> DrawResult {
    let (lo, hi) = all
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &v| {
            (lo.min(v), hi.max(v))
        });
    // 1 for the best cell, 0 for the worst.
    let goodness = |v: f64| {
        if hi > lo {
            let t = (v - lo) / (hi - lo);
            if higher { t } else { 1.0 - t }
        } else {
            1.0
        }
    };
    let (nl, nw) = (index(grid.lrs.len()), index(grid.weight_decays.len()));
    let mut chart = frame(root, title)
        .build_cartesian_2d((0..nl - 1).into_segmented(), (0..nw - 1).into_segmented())?;
    let label = |values: &[f64], v: &SegmentValue<i32>| match v {
        SegmentValue::CenterOf(i) => values
            .get(usize::try_from(*i).unwrap_or(usize::MAX))
            .map_or_else(String::new, |x| hyper(*x)),
        _ => String::new(),
    };
    mesh!(chart)
        .disable_mesh()
        .x_desc("learning rate")
        .y_desc("weight decay")
        .x_labels(grid.lrs.len())
        .y_labels(grid.weight_decays.len())
        .x_label_formatter(&|v| label(&grid.lrs, v))
        .y_label_formatter(&|v| label(&grid.weight_decays, v))
        .draw()?;
    for (w, row) in grid.cells.iter().enumerate() {
        for (l, cell) in row.iter().enumerate() {
            let (l, w) = (index(l), index(w));
            let corners = [
                (SegmentValue::Exact(l), SegmentValue::Exact(w)),
                (SegmentValue::Exact(l + 1), SegmentValue::Exact(w + 1)),
            ];
            let (fill, text) = match cell {
                Some(v) => (shade(goodness(*v)), number(*v)),
                None => (RGBColor(230, 230, 230), "–".to_owned()),
            };
            chart.draw_series([Rectangle::new(corners.clone(), fill.filled())])?;
            chart.draw_series([Rectangle::new(corners, WHITE.stroke_width(2))])?;
            let ink = if cell.is_some_and(|v| goodness(v) > 0.55) {
                WHITE
            } else {
                BLACK
            };
            chart.draw_series([Text::new(
                text,
                (SegmentValue::CenterOf(l), SegmentValue::CenterOf(w)),
                (FONT, 16)
                    .into_font()
                    .color(&ink)
                    .pos(plotters::style::text_anchor::Pos::new(
                        plotters::style::text_anchor::HPos::Center,
                        plotters::style::text_anchor::VPos::Center,
                    )),
            )])?;
        }
    }
    Ok(())
}

fn line(
    metric: &str,
    root: &Area<'_>,
    title: &str,
    x_desc: &str,
    xs: &[f64],
    values: &[Option<f64>],
    all: &[f64],
) -> DrawResult {
    let n = index(xs.len());
    let (lo, hi) = value_range(metric, all.iter().copied());
    let mut chart = frame(root, title).build_cartesian_2d((0..n - 1).into_segmented(), lo..hi)?;
    mesh!(chart)
        .x_desc(x_desc)
        .y_desc(metric)
        .x_labels(xs.len())
        .x_label_formatter(&|v| match v {
            SegmentValue::CenterOf(i) => xs
                .get(usize::try_from(*i).unwrap_or(usize::MAX))
                .map_or_else(String::new, |x| hyper(*x)),
            _ => String::new(),
        })
        .y_label_formatter(&|v| number(*v))
        .draw()?;
    let points: Vec<(SegmentValue<i32>, f64)> = values
        .iter()
        .enumerate()
        .filter_map(|(i, v)| v.map(|v| (SegmentValue::CenterOf(index(i)), v)))
        .collect();
    chart.draw_series(LineSeries::new(points.clone(), PALETTE[0].stroke_width(2)))?;
    chart.draw_series(
        points
            .into_iter()
            .map(|p| Circle::new(p, 4, PALETTE[0].filled())),
    )?;
    Ok(())
}

/// A named series over any x.
#[derive(Clone, Debug, PartialEq)]
pub struct Line {
    pub label: String,
    pub points: Vec<(f64, f64)>,
}

/// Curves of the top runs over optimiser steps; a loss on a log axis, a
/// bounded metric from 0; the legend in a strip below the plot.
pub fn curves(title: &str, metric: &str, curves: &[Curve]) -> Result<String, ReportError> {
    let lines: Vec<Line> = curves
        .iter()
        .map(|c| Line {
            label: c.label.clone(),
            points: c.points.iter().map(|&(s, v)| (s as f64, v)).collect(),
        })
        .collect();
    lines_over(title, metric, "step", &lines, &|v| format!("{v:.0}"))
}

/// [`curves`] over another x (`x_desc`, its ticks written by `x_text`).
pub fn lines_over(
    title: &str,
    metric: &str,
    x_desc: &str,
    curves: &[Line],
    x_text: &dyn Fn(&f64) -> String,
) -> Result<String, ReportError> {
    let max_step = curves
        .iter()
        .flat_map(|c| c.points.iter().map(|p| p.0))
        .fold(0.0_f64, f64::max);
    let max_step = if max_step > 0.0 { max_step } else { 1.0 };
    let values = || curves.iter().flat_map(|c| c.points.iter().map(|p| p.1));
    let legend_rows = u32::try_from(curves.len().div_ceil(LEGEND_COLUMNS)).unwrap_or(1);
    let legend_height = LEGEND_ROW * legend_rows + 12;
    let size = (WIDE.0, WIDE.1 + legend_height);
    // A log axis needs positive values; a loss that reached 0 stays linear.
    let positive: Vec<f64> = values().filter(|v| *v > 0.0).collect();
    let log = is_loss(metric) && !positive.is_empty() && positive.len() == values().count();
    svg(title, size, |root| {
        let (plot, legend_area) = root.split_vertically(WIDE.1);
        let x = 0.0..max_step;
        if log {
            let (lo, hi) = positive
                .iter()
                .fold((f64::INFINITY, 0.0_f64), |(lo, hi), &v| {
                    (lo.min(v), hi.max(v))
                });
            let mut chart =
                frame(&plot, title).build_cartesian_2d(x, (lo / 1.2..hi * 1.2).log_scale())?;
            // Ticks at 1, 2 and 5 of each decade are labelled; the others
            // stay unlabelled marks, with no grid line each.
            mesh!(chart)
                .disable_y_mesh()
                .y_labels(30)
                .x_desc(x_desc)
                .y_desc(format!("{metric} (log scale)"))
                .x_label_formatter(x_text)
                .y_label_formatter(&|v| {
                    if is_1_2_5(*v) {
                        number(*v)
                    } else {
                        String::new()
                    }
                })
                .draw()?;
            draw_curves(&mut chart, curves)?;
        } else {
            let (lo, hi) = value_range(metric, values());
            let mut chart = frame(&plot, title).build_cartesian_2d(x, lo..hi)?;
            mesh!(chart)
                .x_desc(x_desc)
                .y_desc(metric)
                .x_label_formatter(x_text)
                .y_label_formatter(&|v| number(*v))
                .draw()?;
            draw_curves(&mut chart, curves)?;
        }
        legend(&legend_area, curves)
    })
}

/// Whether `v` is 1, 2 or 5 times a power of ten.
fn is_1_2_5(v: f64) -> bool {
    if v <= 0.0 || !v.is_finite() {
        return false;
    }
    let mantissa = v / 10f64.powf(v.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .iter()
        .any(|m| (mantissa - m).abs() < 1e-6 * m)
}

fn draw_curves<Y>(
    chart: &mut ChartContext<'_, SVGBackend<'_>, Cartesian2d<RangedCoordf64, Y>>,
    curves: &[Line],
) -> DrawResult
where
    Y: Ranged<ValueType = f64>,
{
    for (i, curve) in curves.iter().enumerate() {
        let color = PALETTE[i % PALETTE.len()];
        let points = curve.points.clone();
        chart.draw_series(LineSeries::new(points.clone(), color.stroke_width(2)))?;
        if points.len() <= 40 {
            chart.draw_series(
                points
                    .into_iter()
                    .map(|p| Circle::new(p, 3, color.filled())),
            )?;
        }
    }
    Ok(())
}

/// The series' names in rows under the plot, never over a curve.
fn legend(area: &Area<'_>, curves: &[Line]) -> DrawResult {
    let column_width =
        i32::try_from(WIDE.0 / u32::try_from(LEGEND_COLUMNS).unwrap_or(1)).unwrap_or(190);
    let row = i32::try_from(LEGEND_ROW).unwrap_or(24);
    for (i, curve) in curves.iter().enumerate() {
        let color = PALETTE[i % PALETTE.len()];
        let (c, r) = (index(i % LEGEND_COLUMNS), index(i / LEGEND_COLUMNS));
        let (x, y) = (20 + c * column_width, 8 + r * row + row / 2);
        area.draw(&PathElement::new(
            vec![(x, y), (x + 22, y)],
            color.stroke_width(3),
        ))?;
        area.draw(&Text::new(
            curve.label.clone(),
            (x + 30, y),
            (FONT, TICK)
                .into_font()
                .color(&BLACK)
                .pos(plotters::style::text_anchor::Pos::new(
                    plotters::style::text_anchor::HPos::Left,
                    plotters::style::text_anchor::VPos::Center,
                )),
        ))?;
    }
    Ok(())
}

/// Quality against cost (hours per run), the Pareto front in red and
/// joined by a line; each front point is labelled with its rank.
pub fn pareto(report: &Report) -> Result<String, ReportError> {
    let points: Vec<(usize, f64, f64, bool)> = report
        .groups
        .iter()
        .enumerate()
        .filter_map(|(i, g)| Report::hours(g).map(|h| (i, h, g.mean, report.pareto[i])))
        .collect();
    let (x_lo, x_hi) = span(points.iter().map(|p| p.1));
    let (y_lo, y_hi) = value_range(&report.metric, points.iter().map(|p| p.2));
    let title = format!(
        "{} vs {} per run (Pareto front in red)",
        report.metric, report.hours_label
    );
    svg(&title, WIDE, |root| {
        let mut chart = frame(root, &title).build_cartesian_2d(x_lo.max(0.0)..x_hi, y_lo..y_hi)?;
        mesh!(chart)
            .x_desc(report.hours_label)
            .y_desc(report.metric.as_str())
            .x_label_formatter(&|v| hours(*v))
            .y_label_formatter(&|v| number(*v))
            .draw()?;
        chart.draw_series(
            points
                .iter()
                .filter(|p| !p.3)
                .map(|p| Circle::new((p.1, p.2), 4, RGBColor(127, 127, 127).filled())),
        )?;
        let mut front: Vec<(f64, f64, usize)> = points
            .iter()
            .filter(|p| p.3)
            .map(|p| (p.1, p.2, p.0))
            .collect();
        front.sort_by(|a, b| {
            a.0.total_cmp(&b.0)
                .then(cmp_quality(a.1, b.1, report.higher_is_better).reverse())
        });
        let red = RGBColor(214, 39, 40);
        chart.draw_series(LineSeries::new(
            front.iter().map(|p| (p.0, p.1)),
            red.stroke_width(2),
        ))?;
        chart.draw_series(
            front
                .iter()
                .map(|p| Circle::new((p.0, p.1), 5, red.filled())),
        )?;
        chart.draw_series(front.iter().map(|p| {
            EmptyElement::at((p.0, p.1))
                + Text::new(
                    format!("#{}", p.2 + 1),
                    (7, -14),
                    (FONT, TICK).into_font().color(&BLACK),
                )
        }))?;
        Ok(())
    })
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// Each `<text>`'s attributes and content.
    pub(in crate::report) fn texts(svg: &str) -> Vec<(BTreeMap<String, String>, String)> {
        let mut out = Vec::new();
        let mut rest = svg;
        while let Some(open) = rest.find("<text ") {
            rest = &rest[open + 6..];
            let end = rest.find('>').unwrap();
            let attrs = attributes(&rest[..end]);
            let close = rest.find("</text>").unwrap();
            out.push((attrs, rest[end + 1..close].trim().to_owned()));
            rest = &rest[close..];
        }
        out
    }

    pub(in crate::report) fn attributes(tag: &str) -> BTreeMap<String, String> {
        let mut out = BTreeMap::new();
        let mut rest = tag;
        while let Some(eq) = rest.find("=\"") {
            let name = rest[..eq].trim().rsplit(' ').next().unwrap().to_owned();
            let value_end = rest[eq + 2..].find('"').unwrap();
            out.insert(name, rest[eq + 2..eq + 2 + value_end].to_owned());
            rest = &rest[eq + 2 + value_end + 1..];
        }
        out
    }

    fn num(attrs: &BTreeMap<String, String>, name: &str) -> f64 {
        attrs[name].parse().unwrap()
    }

    /// The y tick labels (right-aligned text left of the axis) as
    /// `(value, y)`.
    fn y_ticks(svg: &str) -> Vec<(f64, f64)> {
        texts(svg)
            .into_iter()
            .filter(|(a, _)| a.get("text-anchor").map(String::as_str) == Some("end"))
            .filter_map(|(a, t)| Some((t.parse::<f64>().ok()?, num(&a, "y"))))
            .collect()
    }

    /// The y of every point of the curves: polylines of more than two
    /// points (a legend swatch has two).
    fn polyline_ys(svg: &str) -> Vec<f64> {
        svg.match_indices("<polyline")
            .flat_map(|(i, _)| {
                let tag = &svg[i..i + svg[i..].find("/>").unwrap()];
                let ys: Vec<f64> = attributes(tag)["points"]
                    .split_whitespace()
                    .map(|p| p.split(',').nth(1).unwrap().parse::<f64>().unwrap())
                    .collect();
                if ys.len() > 2 { ys } else { Vec::new() }
            })
            .collect()
    }

    fn curve(label: &str, points: &[(u64, f64)]) -> Curve {
        Curve {
            label: label.into(),
            points: points.to_vec(),
        }
    }

    fn runs() -> Vec<Curve> {
        (0..5)
            .map(|i| {
                let k = f64::from(i);
                curve(
                    &format!("#{} trial{i}", i + 1),
                    &[(10, 2.0 + k), (20, 0.5 + k), (30, 0.05 + k / 10.0)],
                )
            })
            .collect()
    }

    use std::collections::BTreeMap;

    #[test]
    fn every_label_is_at_least_11_px_and_there_is_no_minor_grid() {
        let svg = curves("val/field_f1 over steps", "val/field_f1", &runs()).unwrap();
        let sizes: Vec<f64> = texts(&svg)
            .iter()
            .map(|(a, _)| num(a, "font-size"))
            .collect();
        assert!(sizes.len() > 10, "{svg}");
        assert!(sizes.iter().all(|&s| s >= 11.0), "{sizes:?}");
        // Grid lines are the major ones only: at most one per tick label
        // (plotters draws the minor grid as extra lines between them).
        let ticks = texts(&svg)
            .iter()
            .filter(|(a, t)| a.contains_key("text-anchor") && t.parse::<f64>().is_ok())
            .count();
        let lines = svg.matches("<line").count();
        assert!(lines <= 2 * ticks + 4, "{lines} lines for {ticks} ticks");
        assert!(!svg.contains("opacity=\"0.1\""), "a minor grid line: {svg}");
        let w: u32 = attributes(&svg[..svg.find('>').unwrap()])["width"]
            .parse()
            .unwrap();
        assert!(w <= MAX_WIDTH);
    }

    #[test]
    fn a_loss_is_drawn_on_a_log_axis() {
        let svg = curves("train/loss over steps", "train/loss", &runs()).unwrap();
        let mut ticks = y_ticks(&svg);
        // plotters labels a decade's end and the next one's start both.
        ticks.dedup();
        assert!(ticks.len() >= 3, "{ticks:?}");
        // Pixel distance is proportional to log(value): the same per decade
        // or per factor, whichever ticks are drawn.
        let per_ln: Vec<f64> = ticks
            .windows(2)
            .map(|w| (w[1].1 - w[0].1) / (w[1].0.ln() - w[0].0.ln()))
            .collect();
        for r in &per_ln {
            assert!(
                (r - per_ln[0]).abs() < 0.02 * per_ln[0].abs() + 1.0,
                "{ticks:?}"
            );
        }
        assert!(svg.contains("(log scale)"));
        // The same values as a bounded metric are linear from 0 instead.
        let linear = curves("f1", "val/field_f1", &runs()).unwrap();
        let ticks = y_ticks(&linear);
        let per_unit: Vec<f64> = ticks
            .windows(2)
            .map(|w| (w[1].1 - w[0].1) / (w[1].0 - w[0].0))
            .collect();
        assert!(
            per_unit.iter().all(|r| (r - per_unit[0]).abs() < 1.0),
            "{ticks:?}"
        );
    }

    #[test]
    fn a_bounded_metric_starts_at_zero() {
        let runs = [
            curve("#1 a", &[(1, 0.80), (2, 0.85)]),
            curve("#2 b", &[(1, 0.82), (2, 0.84)]),
        ];
        let svg = curves("f1", "val/field_f1", &runs).unwrap();
        let ticks = y_ticks(&svg);
        let lowest = ticks.iter().max_by(|a, b| a.1.total_cmp(&b.1)).unwrap();
        assert!(lowest.0.abs() < f64::EPSILON, "{ticks:?}");
        // An unbounded one keeps its span.
        let svg = curves("x", "val/score", &runs).unwrap();
        let lowest = y_ticks(&svg)
            .into_iter()
            .max_by(|a, b| a.1.total_cmp(&b.1))
            .unwrap();
        assert!(lowest.0 > 0.5, "{lowest:?}");
    }

    #[test]
    fn the_legend_is_below_every_curve_and_tick() {
        let runs = runs();
        let svg = curves("train/loss over steps", "train/loss", &runs).unwrap();
        let all = texts(&svg);
        let legend: Vec<f64> = all
            .iter()
            .filter(|(_, t)| runs.iter().any(|r| &r.label == t))
            .map(|(a, _)| num(a, "y"))
            .collect();
        assert_eq!(legend.len(), runs.len(), "{svg}");
        let curve_ys = polyline_ys(&svg);
        assert_eq!(curve_ys.len(), 3 * runs.len());
        let lowest_curve = curve_ys.into_iter().fold(f64::MIN, f64::max);
        let lowest_tick = all
            .iter()
            .filter(|(_, t)| t.parse::<f64>().is_ok())
            .map(|(a, _)| num(a, "y"))
            .fold(f64::MIN, f64::max);
        let top_of_legend = legend.iter().copied().fold(f64::MAX, f64::min);
        assert!(
            top_of_legend > lowest_curve + 10.0,
            "{top_of_legend} vs {lowest_curve}"
        );
        assert!(
            top_of_legend > lowest_tick + 10.0,
            "{top_of_legend} vs {lowest_tick}"
        );
    }

    #[test]
    fn lr_grids_are_one_figure_with_a_panel_per_checkpoint() {
        let grid = |checkpoint: &str| HyperGrid {
            checkpoint: checkpoint.into(),
            lrs: vec![1e-4, 3e-4],
            weight_decays: vec![0.0],
            cells: vec![vec![Some(0.5), Some(0.6)]],
        };
        let grids: Vec<HyperGrid> = ["3b-224", "3b-448", "10b-224"].map(grid).into();
        let svg = super::grids("val/field_f1", true, &grids).unwrap();
        assert_eq!(svg.matches("<svg").count(), 1);
        let captions: Vec<String> = texts(&svg)
            .into_iter()
            .filter(|(a, _)| num(a, "font-size") > 14.0)
            .map(|(_, t)| t)
            .collect();
        assert_eq!(captions, ["3b-224", "3b-448", "10b-224"], "{svg}");
        let width: u32 = attributes(&svg[..svg.find('>').unwrap()])["width"]
            .parse()
            .unwrap();
        assert!(width <= MAX_WIDTH);
    }
}

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
const FONT: &str = "sans-serif";
/// Font sizes as plotters takes them; its SVG writes `size / 1.24` px, so
/// 14 is an 11.3 px tick label.
const TICK: u32 = 14;
const DESC: u32 = 15;
const CAPTION: u32 = 18;
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

type DrawResult = Result<(), Box<dyn std::error::Error>>;
type Area<'b> = DrawingArea<SVGBackend<'b>, plotters::coord::Shift>;

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
fn svg(
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
fn span(values: impl IntoIterator<Item = f64>) -> (f64, f64) {
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
pub fn grids(report: &Report, grids: &[HyperGrid]) -> Result<String, ReportError> {
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
    let title = format!("{} by lr × weight decay", report.metric);
    svg(&title, size, |root| {
        let panels = root.split_evenly((rows, columns));
        for (grid, panel) in grids.iter().zip(&panels) {
            let title = grid.checkpoint.as_str();
            if grid.lrs.len() > 1 && grid.weight_decays.len() > 1 {
                heatmap(report, grid, &values, panel, title)?;
            } else if grid.lrs.len() > 1 {
                line(
                    report,
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
                    report,
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
    report: &Report,
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
    let higher = report.higher_is_better;
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
    report: &Report,
    root: &Area<'_>,
    title: &str,
    x_desc: &str,
    xs: &[f64],
    values: &[Option<f64>],
    all: &[f64],
) -> DrawResult {
    let n = index(xs.len());
    let (lo, hi) = value_range(&report.metric, all.iter().copied());
    let mut chart = frame(root, title).build_cartesian_2d((0..n - 1).into_segmented(), lo..hi)?;
    mesh!(chart)
        .x_desc(x_desc)
        .y_desc(report.metric.as_str())
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

/// Curves of the top runs over optimiser steps; a loss on a log axis, a
/// bounded metric from 0; the legend in a strip below the plot.
pub fn curves(title: &str, metric: &str, curves: &[Curve]) -> Result<String, ReportError> {
    let max_step = curves
        .iter()
        .flat_map(|c| c.points.iter().map(|p| p.0))
        .max()
        .unwrap_or(1)
        .max(1);
    let values = || curves.iter().flat_map(|c| c.points.iter().map(|p| p.1));
    let legend_rows = u32::try_from(curves.len().div_ceil(LEGEND_COLUMNS)).unwrap_or(1);
    let legend_height = LEGEND_ROW * legend_rows + 12;
    let size = (WIDE.0, WIDE.1 + legend_height);
    // A log axis needs positive values; a loss that reached 0 stays linear.
    let positive: Vec<f64> = values().filter(|v| *v > 0.0).collect();
    let log = is_loss(metric) && !positive.is_empty() && positive.len() == values().count();
    svg(title, size, |root| {
        let (plot, legend_area) = root.split_vertically(WIDE.1);
        let x = 0.0..max_step as f64;
        if log {
            let (lo, hi) = positive
                .iter()
                .fold((f64::INFINITY, 0.0_f64), |(lo, hi), &v| {
                    (lo.min(v), hi.max(v))
                });
            let mut chart =
                frame(&plot, title).build_cartesian_2d(x, (lo / 1.2..hi * 1.2).log_scale())?;
            mesh!(chart)
                .x_desc("step")
                .y_desc(format!("{metric} (log scale)"))
                .x_label_formatter(&|v| format!("{v:.0}"))
                .y_label_formatter(&|v| number(*v))
                .draw()?;
            draw_curves(&mut chart, curves)?;
        } else {
            let (lo, hi) = value_range(metric, values());
            let mut chart = frame(&plot, title).build_cartesian_2d(x, lo..hi)?;
            mesh!(chart)
                .x_desc("step")
                .y_desc(metric)
                .x_label_formatter(&|v| format!("{v:.0}"))
                .y_label_formatter(&|v| number(*v))
                .draw()?;
            draw_curves(&mut chart, curves)?;
        }
        legend(&legend_area, curves)
    })
}

fn draw_curves<Y>(
    chart: &mut ChartContext<'_, SVGBackend<'_>, Cartesian2d<RangedCoordf64, Y>>,
    curves: &[Curve],
) -> DrawResult
where
    Y: Ranged<ValueType = f64>,
{
    for (i, curve) in curves.iter().enumerate() {
        let color = PALETTE[i % PALETTE.len()];
        let points: Vec<(f64, f64)> = curve.points.iter().map(|&(s, v)| (s as f64, v)).collect();
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
fn legend(area: &Area<'_>, curves: &[Curve]) -> DrawResult {
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

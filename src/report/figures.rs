//! Figures with plotters, written as PNG (for READMEs and quick looks) and SVG (for papers).
//!
//! Text needs a TrueType font: `P2M_FONT` if set, else DejaVu Sans or Liberation Sans from the
//! system (the setup script installs `fonts-dejavu-core`).

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use anyhow::{anyhow, bail, Result};
use plotters::coord::Shift;
use plotters::prelude::*;

const FONT_CANDIDATES: [&str; 4] = [
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
];

/// Register the font once per process.
pub fn ensure_font() -> Result<()> {
    static REGISTERED: OnceLock<Result<(), String>> = OnceLock::new();
    REGISTERED
        .get_or_init(|| {
            let candidates: Vec<PathBuf> = match std::env::var_os("P2M_FONT") {
                Some(p) => vec![PathBuf::from(p)],
                None => FONT_CANDIDATES.iter().map(PathBuf::from).collect(),
            };
            let path = candidates.iter().find(|p| p.is_file()).ok_or_else(|| {
                format!(
                    "no TrueType font for figures (looked at {}); install one with `apt-get install fonts-dejavu-core` or set P2M_FONT",
                    candidates.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
                )
            })?;
            let bytes: &'static [u8] = Box::leak(std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?.into_boxed_slice());
            for style in [FontStyle::Normal, FontStyle::Bold] {
                plotters::style::register_font("sans-serif", style, bytes).map_err(|_| format!("{}: not a usable TrueType font", path.display()))?;
            }
            Ok(())
        })
        .clone()
        .map_err(|e| anyhow!(e))
}

fn plot_err<E: std::fmt::Debug>(e: E) -> anyhow::Error {
    anyhow!("drawing failed: {e:?}")
}

/// One category of a bar panel: the paper's value and ours, either may be missing.
#[derive(Debug, Clone)]
pub struct BarGroup {
    pub label: String,
    pub paper: Option<f64>,
    pub reproduced: Option<f64>,
    /// The reproduced value's confidence interval `(low, high)`, drawn as a whisker.
    pub reproduced_interval: Option<(f64, f64)>,
}

#[derive(Debug, Clone)]
pub struct BarPanel {
    pub title: String,
    pub axis: String,
    pub groups: Vec<BarGroup>,
}

const PAPER: RGBColor = RGBColor(160, 160, 160);
const OURS: RGBColor = RGBColor(31, 119, 180);

/// Horizontal paired bars (paper grey, reproduced blue), one panel per task; writes
/// `<stem>.png` and `<stem>.svg` and returns their file names.
pub fn paired_bars(
    dir: &Path,
    stem: &str,
    title: &str,
    panels: &[BarPanel],
) -> Result<Vec<String>> {
    ensure_font()?;
    let rows = panels.iter().map(|p| p.groups.len()).max().unwrap_or(1).max(1);
    // Wide enough for the title (about 11 px per character at 20 px) even with one panel.
    let size = (
        (420 * panels.len().max(1) as u32).max(11 * title.chars().count() as u32 + 40),
        140 + 46 * rows as u32,
    );
    let png = dir.join(format!("{stem}.png"));
    let svg = dir.join(format!("{stem}.svg"));
    draw_paired_bars(BitMapBackend::new(&png, size).into_drawing_area(), title, panels)?;
    draw_paired_bars(SVGBackend::new(&svg, size).into_drawing_area(), title, panels)?;
    Ok(vec![format!("{stem}.png"), format!("{stem}.svg")])
}

fn draw_paired_bars<DB: DrawingBackend>(
    root: DrawingArea<DB, Shift>,
    title: &str,
    panels: &[BarPanel],
) -> Result<()> {
    root.fill(&WHITE).map_err(plot_err)?;
    let root = root
        .titled(title, ("sans-serif", 20).into_font().style(FontStyle::Bold))
        .map_err(plot_err)?;
    let (body, legend) = root.split_vertically(root.dim_in_pixel().1 - 30);
    let areas = body.split_evenly((1, panels.len().max(1)));
    for (area, panel) in areas.iter().zip(panels) {
        let n = panel.groups.len().max(1) as f64;
        let max = panel
            .groups
            .iter()
            .flat_map(|g| [g.paper, g.reproduced, g.reproduced_interval.map(|(_, high)| high)])
            .flatten()
            .fold(0.0f64, f64::max);
        let x_max = ((max * 1.25) / 10.0).ceil().max(1.0) * 10.0;
        let mut chart = ChartBuilder::on(area)
            .caption(&panel.title, ("sans-serif", 16))
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(4)
            .build_cartesian_2d(0f64..x_max, 0f64..n)
            .map_err(plot_err)?;
        chart
            .configure_mesh()
            .disable_y_mesh()
            .y_labels(0)
            .x_desc(panel.axis.as_str())
            .label_style(("sans-serif", 12))
            .draw()
            .map_err(plot_err)?;
        for (i, g) in panel.groups.iter().enumerate() {
            // Rows top to bottom in the order given.
            let base = n - 1.0 - i as f64;
            chart
                .draw_series(std::iter::once(Text::new(
                    g.label.clone(),
                    (x_max * 0.01, base + 0.93),
                    ("sans-serif", 13).into_font(),
                )))
                .map_err(plot_err)?;
            for (value, y0, color, tag) in
                [(g.paper, base + 0.42, PAPER, "paper"), (g.reproduced, base + 0.08, OURS, "ours")]
            {
                // A missing reproduction is worth saying; a missing paper value (a recorded run
                // the paper does not print) is not.
                let (rect_end, label) = match value {
                    Some(v) => (v, format!("{v:.1}")),
                    None if tag == "ours" => (0.0, format!("{tag}: n/a")),
                    None => continue,
                };
                chart
                    .draw_series(std::iter::once(Rectangle::new(
                        [(0.0, y0), (rect_end, y0 + 0.3)],
                        color.filled(),
                    )))
                    .map_err(plot_err)?;
                let mut label_x = rect_end;
                if let (Some((low, high)), "ours") = (g.reproduced_interval, tag) {
                    let mid = y0 + 0.15;
                    chart
                        .draw_series([
                            PathElement::new(vec![(low, mid), (high, mid)], BLACK.stroke_width(2)),
                            PathElement::new(vec![(low, mid - 0.08), (low, mid + 0.08)], BLACK),
                            PathElement::new(vec![(high, mid - 0.08), (high, mid + 0.08)], BLACK),
                        ])
                        .map_err(plot_err)?;
                    label_x = label_x.max(high);
                }
                chart
                    .draw_series(std::iter::once(Text::new(
                        label,
                        (label_x + x_max * 0.01, y0 + 0.27),
                        ("sans-serif", 11).into_font(),
                    )))
                    .map_err(plot_err)?;
            }
        }
    }
    let swatch = |x: i32, color: RGBColor, text: &str| -> Result<()> {
        legend.draw(&Rectangle::new([(x, 8), (x + 14, 22)], color.filled())).map_err(plot_err)?;
        legend
            .draw(&Text::new(text.to_string(), (x + 20, 8), ("sans-serif", 13).into_font()))
            .map_err(plot_err)?;
        Ok(())
    };
    swatch(20, PAPER, "paper (as printed)")?;
    swatch(200, OURS, "reproduced here")?;
    root.present().map_err(plot_err)?;
    Ok(())
}

/// Label heights (data units) that keep labels from overlapping: greedy, highest point first, each
/// label moved down below any already-placed label whose text box it would overlap.
fn place_labels(points: &[ScatterPoint], top: f64, plot_width_px: f64) -> Vec<f64> {
    let unit_per_px = top / plot_width_px.max(1.0);
    let line = 14.0 * unit_per_px;
    let width = |p: &ScatterPoint| p.label.chars().count() as f64 * 6.5 * unit_per_px;
    let mut order: Vec<usize> = (0..points.len()).collect();
    order.sort_by(|&a, &b| points[b].y.total_cmp(&points[a].y));
    let mut placed: Vec<(f64, f64, f64)> = Vec::new(); // (x0, x1, y) of each label's top edge
    let mut out = vec![0.0; points.len()];
    for i in order {
        let p = &points[i];
        let (x0, x1) = (p.x, p.x + width(p));
        let mut y = p.y + top * 0.015;
        while placed.iter().any(|&(a0, a1, ay)| x0 < a1 && a0 < x1 && (ay - y).abs() < line) {
            y -= line;
        }
        placed.push((x0, x1, y));
        out[i] = y;
    }
    out
}

#[derive(Debug, Clone)]
pub struct ScatterPoint {
    pub label: String,
    pub x: f64,
    pub y: f64,
    /// A confidence interval on each axis, drawn as a bar.
    pub x_interval: Option<(f64, f64)>,
    pub y_interval: Option<(f64, f64)>,
}

#[derive(Debug, Clone)]
pub struct ScatterPanel {
    pub title: String,
    pub x_desc: String,
    pub y_desc: String,
    pub points: Vec<ScatterPoint>,
}

/// Labelled scatter plots, one panel each; writes `<stem>.png` and `<stem>.svg`.
pub fn scatter(
    dir: &Path,
    stem: &str,
    title: &str,
    panels: &[ScatterPanel],
) -> Result<Vec<String>> {
    ensure_font()?;
    if panels.is_empty() {
        bail!("no panels to draw");
    }
    let size = (520 * panels.len() as u32, 500);
    let png = dir.join(format!("{stem}.png"));
    let svg = dir.join(format!("{stem}.svg"));
    draw_scatter(BitMapBackend::new(&png, size).into_drawing_area(), title, panels)?;
    draw_scatter(SVGBackend::new(&svg, size).into_drawing_area(), title, panels)?;
    Ok(vec![format!("{stem}.png"), format!("{stem}.svg")])
}

fn draw_scatter<DB: DrawingBackend>(
    root: DrawingArea<DB, Shift>,
    title: &str,
    panels: &[ScatterPanel],
) -> Result<()> {
    root.fill(&WHITE).map_err(plot_err)?;
    let root = root
        .titled(title, ("sans-serif", 20).into_font().style(FontStyle::Bold))
        .map_err(plot_err)?;
    let areas = root.split_evenly((1, panels.len()));
    for (area, panel) in areas.iter().zip(panels) {
        let hi = panel
            .points
            .iter()
            .flat_map(|p| {
                [p.x, p.y, p.x_interval.map_or(p.x, |i| i.1), p.y_interval.map_or(p.y, |i| i.1)]
            })
            .filter(|v| v.is_finite())
            .fold(0.0f64, f64::max);
        let top = ((hi * 1.1) / 10.0).ceil().max(1.0) * 10.0;
        let mut chart = ChartBuilder::on(area)
            .caption(&panel.title, ("sans-serif", 15))
            .margin(14)
            .x_label_area_size(40)
            .y_label_area_size(62)
            .build_cartesian_2d(0f64..top, 0f64..top)
            .map_err(plot_err)?;
        chart
            .configure_mesh()
            .x_desc(panel.x_desc.as_str())
            .y_desc(panel.y_desc.as_str())
            .label_style(("sans-serif", 12))
            .draw()
            .map_err(plot_err)?;
        // The diagonal: a model that scores the same on both test sets.
        chart
            .draw_series(LineSeries::new(
                [(0.0, 0.0), (top, top)],
                RGBColor(200, 200, 200).stroke_width(1),
            ))
            .map_err(plot_err)?;
        // Interval bars: horizontal for the x axis, vertical for the y axis.
        let bar = OURS.mix(0.45).stroke_width(1);
        chart
            .draw_series(panel.points.iter().flat_map(|p| {
                let mut lines = Vec::new();
                if let Some((lo, hi)) = p.x_interval {
                    lines.push(PathElement::new(vec![(lo, p.y), (hi, p.y)], bar));
                }
                if let Some((lo, hi)) = p.y_interval {
                    lines.push(PathElement::new(vec![(p.x, lo), (p.x, hi)], bar));
                }
                lines
            }))
            .map_err(plot_err)?;
        chart
            .draw_series(panel.points.iter().map(|p| Circle::new((p.x, p.y), 5, OURS.filled())))
            .map_err(plot_err)?;
        let placed = place_labels(&panel.points, top, area.dim_in_pixel().0 as f64 - 90.0);
        chart
            .draw_series(panel.points.iter().zip(placed).map(|(p, y)| {
                Text::new(p.label.clone(), (p.x + top * 0.015, y), ("sans-serif", 11).into_font())
            }))
            .map_err(plot_err)?;
    }
    root.present().map_err(plot_err)?;
    Ok(())
}

/// One named line of a [`line_chart`].
#[derive(Debug, Clone)]
pub struct Curve {
    pub label: String,
    pub points: Vec<(f64, f64)>,
}

const CURVE_COLORS: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
];

/// Lines (e.g. learning curves) on one chart with a legend; writes `<stem>.png` and `<stem>.svg`.
pub fn line_chart(
    dir: &Path,
    stem: &str,
    title: &str,
    x_desc: &str,
    y_desc: &str,
    curves: &[Curve],
) -> Result<Vec<String>> {
    ensure_font()?;
    if curves.iter().all(|c| c.points.is_empty()) {
        bail!("no points to draw in {stem}");
    }
    let size = (760, 480);
    let png = dir.join(format!("{stem}.png"));
    let svg = dir.join(format!("{stem}.svg"));
    draw_lines(BitMapBackend::new(&png, size).into_drawing_area(), title, x_desc, y_desc, curves)?;
    draw_lines(SVGBackend::new(&svg, size).into_drawing_area(), title, x_desc, y_desc, curves)?;
    Ok(vec![format!("{stem}.png"), format!("{stem}.svg")])
}

fn draw_lines<DB: DrawingBackend>(
    root: DrawingArea<DB, Shift>,
    title: &str,
    x_desc: &str,
    y_desc: &str,
    curves: &[Curve],
) -> Result<()> {
    root.fill(&WHITE).map_err(plot_err)?;
    let root = root
        .titled(title, ("sans-serif", 20).into_font().style(FontStyle::Bold))
        .map_err(plot_err)?;
    let pts =
        curves.iter().flat_map(|c| c.points.iter()).filter(|(x, y)| x.is_finite() && y.is_finite());
    let (x_max, y_max) = pts.fold((1.0f64, 0.0f64), |(a, b), &(x, y)| (a.max(x), b.max(y)));
    let mut chart = ChartBuilder::on(&root)
        .margin(14)
        .x_label_area_size(40)
        .y_label_area_size(56)
        .build_cartesian_2d(0f64..x_max, 0f64..(y_max * 1.05).max(1e-6))
        .map_err(plot_err)?;
    chart
        .configure_mesh()
        .x_desc(x_desc)
        .y_desc(y_desc)
        .label_style(("sans-serif", 12))
        .draw()
        .map_err(plot_err)?;
    for (i, c) in curves.iter().enumerate() {
        let color = CURVE_COLORS[i % CURVE_COLORS.len()];
        chart
            .draw_series(LineSeries::new(
                c.points.iter().copied().filter(|(x, y)| x.is_finite() && y.is_finite()),
                color.stroke_width(2),
            ))
            .map_err(plot_err)?
            .label(c.label.clone())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2))
            });
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font(("sans-serif", 13))
        .position(SeriesLabelPosition::UpperRight)
        .draw()
        .map_err(plot_err)?;
    root.present().map_err(plot_err)?;
    Ok(())
}

/// One bar with its interval (`low`–`high`), e.g. a metric with its 95 % bootstrap interval.
#[derive(Debug, Clone)]
pub struct IntervalBar {
    pub label: String,
    pub value: f64,
    pub low: f64,
    pub high: f64,
}

/// Horizontal bars with interval whiskers, one per row, `<stem>.png/svg`.
pub fn interval_bars(
    dir: &Path,
    stem: &str,
    title: &str,
    axis: &str,
    bars: &[IntervalBar],
) -> Result<Vec<String>> {
    ensure_font()?;
    let size =
        ((11 * title.chars().count() as u32 + 40).max(640), 110 + 38 * bars.len().max(1) as u32);
    let png = dir.join(format!("{stem}.png"));
    let svg = dir.join(format!("{stem}.svg"));
    draw_interval_bars(BitMapBackend::new(&png, size).into_drawing_area(), title, axis, bars)?;
    draw_interval_bars(SVGBackend::new(&svg, size).into_drawing_area(), title, axis, bars)?;
    Ok(vec![format!("{stem}.png"), format!("{stem}.svg")])
}

fn draw_interval_bars<DB: DrawingBackend>(
    root: DrawingArea<DB, Shift>,
    title: &str,
    axis: &str,
    bars: &[IntervalBar],
) -> Result<()> {
    root.fill(&WHITE).map_err(plot_err)?;
    let root = root
        .titled(title, ("sans-serif", 20).into_font().style(FontStyle::Bold))
        .map_err(plot_err)?;
    let n = bars.len().max(1) as f64;
    let max =
        bars.iter().map(|b| b.high.max(b.value)).filter(|v| v.is_finite()).fold(0.0f64, f64::max);
    let x_max = ((max * 1.2) / 10.0).ceil().max(1.0) * 10.0;
    let mut chart = ChartBuilder::on(&root)
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(4)
        .build_cartesian_2d(0f64..x_max, 0f64..n)
        .map_err(plot_err)?;
    chart
        .configure_mesh()
        .disable_y_mesh()
        .y_labels(0)
        .x_desc(axis)
        .label_style(("sans-serif", 12))
        .draw()
        .map_err(plot_err)?;
    for (i, b) in bars.iter().enumerate() {
        let base = n - 1.0 - i as f64;
        let v = if b.value.is_finite() { b.value } else { 0.0 };
        chart
            .draw_series(std::iter::once(Rectangle::new(
                [(0.0, base + 0.15), (v, base + 0.55)],
                OURS.mix(0.8).filled(),
            )))
            .map_err(plot_err)?;
        let mid = base + 0.35;
        chart
            .draw_series(std::iter::once(PathElement::new(
                vec![(b.low, mid), (b.high, mid)],
                BLACK.stroke_width(2),
            )))
            .map_err(plot_err)?;
        for x in [b.low, b.high] {
            chart
                .draw_series(std::iter::once(PathElement::new(
                    vec![(x, mid - 0.12), (x, mid + 0.12)],
                    BLACK.stroke_width(2),
                )))
                .map_err(plot_err)?;
        }
        chart
            .draw_series(std::iter::once(Text::new(
                format!("{}: {:.1} [{:.1}, {:.1}]", b.label, b.value, b.low, b.high),
                (x_max * 0.01, base + 0.95),
                ("sans-serif", 13).into_font(),
            )))
            .map_err(plot_err)?;
    }
    root.present().map_err(plot_err)?;
    Ok(())
}

/// One row of a forest plot: our estimate with its interval (if measured), the paper's value (if
/// any), and the value the claim is judged against.
#[derive(Debug, Clone)]
pub struct ForestRow {
    pub label: String,
    pub ours: Option<(f64, f64, f64)>,
    pub paper: Option<f64>,
    /// The claim's threshold (0 for a difference), drawn as a dashed line.
    pub reference: f64,
}

/// A panel of rows that share a unit.
#[derive(Debug, Clone)]
pub struct ForestPanel {
    pub title: String,
    pub axis: String,
    pub rows: Vec<ForestRow>,
}

/// A forest plot: per panel, one line per row with our value (blue dot) and interval (black
/// whisker) beside the paper's value (grey cross) and the claim's threshold (dashed); panels stacked,
/// each with its own axis. Writes `<stem>.png` and `<stem>.svg`.
pub fn forest(dir: &Path, stem: &str, title: &str, panels: &[ForestPanel]) -> Result<Vec<String>> {
    ensure_font()?;
    let panels: Vec<&ForestPanel> = panels.iter().filter(|p| !p.rows.is_empty()).collect();
    if panels.is_empty() {
        bail!("no rows to draw");
    }
    let rows: usize = panels.iter().map(|p| p.rows.len()).sum();
    let size = (1100, 60 + 110 * panels.len() as u32 + 30 * rows as u32);
    let png = dir.join(format!("{stem}.png"));
    let svg = dir.join(format!("{stem}.svg"));
    draw_forest(BitMapBackend::new(&png, size).into_drawing_area(), title, &panels)?;
    draw_forest(SVGBackend::new(&svg, size).into_drawing_area(), title, &panels)?;
    Ok(vec![format!("{stem}.png"), format!("{stem}.svg")])
}

fn draw_forest<DB: DrawingBackend>(
    root: DrawingArea<DB, Shift>,
    title: &str,
    panels: &[&ForestPanel],
) -> Result<()> {
    root.fill(&WHITE).map_err(plot_err)?;
    let root = root
        .titled(title, ("sans-serif", 20).into_font().style(FontStyle::Bold))
        .map_err(plot_err)?;
    let heights: Vec<u32> = panels.iter().map(|p| 110 + 30 * p.rows.len() as u32).collect();
    let mut rest = root.clone();
    for (i, panel) in panels.iter().enumerate() {
        let (area, below) = if i + 1 < panels.len() {
            rest.split_vertically(heights[i])
        } else {
            let whole = rest.clone();
            (whole, rest)
        };
        rest = below;
        let values = panel.rows.iter().flat_map(|r| {
            let mut v = vec![r.reference];
            v.extend(r.paper);
            if let Some((value, low, high)) = r.ours {
                v.extend([value, low, high]);
            }
            v
        });
        let finite: Vec<f64> = values.filter(|v| v.is_finite()).collect();
        let (lo, hi) = finite
            .iter()
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &v| (a.min(v), b.max(v)));
        let pad = ((hi - lo) * 0.08).max(1.0);
        let (x0, x1) = (lo - pad, hi + pad);
        let n = panel.rows.len() as f64;
        let labels: Vec<String> = panel.rows.iter().map(|r| r.label.clone()).collect();
        let mut chart = ChartBuilder::on(&area)
            .caption(&panel.title, ("sans-serif", 15))
            .margin(10)
            .x_label_area_size(36)
            .y_label_area_size(330)
            .build_cartesian_2d(x0..x1, -0.5f64..(n - 0.5))
            .map_err(plot_err)?;
        chart
            .configure_mesh()
            .disable_y_mesh()
            .y_labels(panel.rows.len() * 2 + 1)
            .y_label_formatter(&|y| {
                let i = y.round();
                if (y - i).abs() > 1e-6 || i < 0.0 || i >= n {
                    return String::new();
                }
                labels.get((n - 1.0 - i) as usize).cloned().unwrap_or_default()
            })
            .x_desc(panel.axis.as_str())
            .label_style(("sans-serif", 12))
            .draw()
            .map_err(plot_err)?;
        for (j, r) in panel.rows.iter().enumerate() {
            let y = n - 1.0 - j as f64;
            chart
                .draw_series(DashedLineSeries::new(
                    [(r.reference, y - 0.45), (r.reference, y + 0.45)],
                    4,
                    3,
                    RGBColor(120, 120, 120).stroke_width(1),
                ))
                .map_err(plot_err)?;
            if let Some(p) = r.paper.filter(|p| p.is_finite()) {
                chart
                    .draw_series(std::iter::once(Cross::new((p, y), 6, PAPER.stroke_width(3))))
                    .map_err(plot_err)?;
            }
            if let Some((value, low, high)) = r.ours.filter(|o| o.0.is_finite()) {
                if low.is_finite() && high.is_finite() {
                    chart
                        .draw_series(std::iter::once(PathElement::new(
                            vec![(low, y), (high, y)],
                            BLACK.stroke_width(2),
                        )))
                        .map_err(plot_err)?;
                }
                chart
                    .draw_series(std::iter::once(Circle::new((value, y), 5, OURS.filled())))
                    .map_err(plot_err)?;
            }
        }
    }
    root.present().map_err(plot_err)?;
    Ok(())
}

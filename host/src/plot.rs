//! PNG figures of an evaluation and of a training run: a row-normalised confusion heatmap and
//! loss / accuracy curves per epoch.
//!
//! Drawn with plotters' bitmap backend; text needs a system font (fontconfig finds
//! "sans-serif").

use std::path::Path;

use anyhow::{Result, anyhow, bail};
use plotters::coord::Shift;
use plotters::coord::types::{RangedCoordf64, RangedCoordi64};
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use serde::{Deserialize, Serialize};

use crate::metrics::Confusion;

/// Longest label drawn in full; longer ones keep their start and end around an ellipsis.
const MAX_LABEL_CHARS: usize = 22;
/// Side of a heatmap cell in pixels: large for a few classes, never so small that "100" does
/// not fit (30 classes stay readable at the minimum).
const MIN_CELL: u32 = 36;
const MAX_CELL: u32 = 110;
/// Width the matrix aims at, before the clamp above.
const MATRIX_TARGET: u32 = 760;
/// Largest class count drawn; beyond it cells would be too small to read.
pub const MAX_PLOT_CLASSES: usize = 60;

/// One epoch of training, as the training command records it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct EpochPoint {
    pub epoch: usize,
    pub train_loss: f64,
    pub validation_loss: f64,
    /// Fractions in [0, 1].
    pub train_accuracy: f64,
    pub validation_accuracy: f64,
    pub learning_rate: f64,
}

/// plotters' errors carry the backend's error type; flatten them into anyhow.
fn drawing<T, E: std::fmt::Display>(result: Result<T, E>) -> Result<T> {
    result.map_err(|e| anyhow!("cannot draw: {e}"))
}

/// A label short enough to set beside the matrix.
fn abbreviate(label: &str) -> String {
    let chars: Vec<char> = label.chars().collect();
    if chars.len() <= MAX_LABEL_CHARS {
        return label.to_string();
    }
    // Keep both ends: class names often differ only in a suffix (FTPS / SFTP, "-audio").
    let head: String = chars[..MAX_LABEL_CHARS - 7].iter().collect();
    let tail: String = chars[chars.len() - 6..].iter().collect();
    format!("{head}…{tail}")
}

/// Sequential blues, white for 0 to dark for 1 (ColorBrewer's "Blues" anchors).
fn heat_color(fraction: f64) -> RGBColor {
    const STOPS: [(u8, u8, u8); 5] =
        [(247, 251, 255), (198, 219, 239), (107, 174, 214), (33, 113, 181), (8, 48, 107)];
    let position = fraction.clamp(0.0, 1.0) * (STOPS.len() - 1) as f64;
    let lower = (position.floor() as usize).min(STOPS.len() - 2);
    let t = position - lower as f64;
    let mix = |a: u8, b: u8| (f64::from(a) + (f64::from(b) - f64::from(a)) * t).round() as u8;
    let (a, b) = (STOPS[lower], STOPS[lower + 1]);
    RGBColor(mix(a.0, b.0), mix(a.1, b.1), mix(a.2, b.2))
}

/// Writes a heatmap of `confusion`, each row divided by its total (so a cell is the share of
/// that true class predicted as the column's class), with the percentage in every cell and
/// the count too where the cell is large enough. Row labels carry the class's support.
pub fn confusion_png(
    path: &Path,
    labels: &[String],
    confusion: &Confusion,
    title: &str,
) -> Result<()> {
    let n = confusion.classes();
    if n == 0 || labels.len() != n {
        bail!("{} labels for a confusion matrix of {n} classes", labels.len());
    }
    if n > MAX_PLOT_CLASSES {
        bail!("{n} classes are too many for a readable heatmap (at most {MAX_PLOT_CLASSES})");
    }

    // Sizes from the class count: cell side, then fonts from the cell.
    let cell = (MATRIX_TARGET / n as u32).clamp(MIN_CELL, MAX_CELL);
    let cell_font = (f64::from(cell) * 0.30).clamp(11.0, 20.0);
    let label_font = if n > 20 { 13.0 } else { 15.0 };
    let row_labels: Vec<String> = (0..n)
        .map(|t| format!("{} ({})", abbreviate(&labels[t]), confusion.row_total(t)))
        .collect();
    let column_labels: Vec<String> = labels.iter().map(|l| abbreviate(l)).collect();

    // Measure labels on a scratch area: the margins must fit the longest one.
    let label_style = TextStyle::from(("sans-serif", label_font).into_font()).color(&BLACK);
    let widest = |texts: &[String]| -> Result<u32> {
        let scratch = BitMapBackend::new(path, (10, 10)).into_drawing_area();
        let mut widest = 0;
        for text in texts {
            widest = widest.max(drawing(scratch.estimate_text_size(text, &label_style))?.0);
        }
        Ok(widest)
    };
    let (row_width, column_height) = (widest(&row_labels)?, widest(&column_labels)?);

    let matrix = n as u32 * cell;
    let (title_height, axis_title) = (50, 30);
    let left = axis_title + row_width + 12;
    let top = title_height;
    let bar_gap = 24;
    let bar_width = 22;
    let bar_ticks = 60;
    let width = (left + matrix + bar_gap + bar_width + bar_ticks + 10).max(420);
    let height = top + matrix + 12 + column_height + axis_title + 10;

    let root = BitMapBackend::new(path, (width, height)).into_drawing_area();
    drawing(root.fill(&WHITE))?;
    let title_style = TextStyle::from(("sans-serif", 20.0).into_font().style(FontStyle::Bold))
        .color(&BLACK)
        .pos(Pos::new(HPos::Center, VPos::Center));
    drawing(root.draw_text(title, &title_style, ((width / 2) as i32, 24)))?;

    // Cells, row by row.
    let (left, top, cell_i) = (left as i32, top as i32, cell as i32);
    let cell_style = ("sans-serif", cell_font).into_font();
    let count_style = ("sans-serif", (cell_font * 0.75).max(10.0)).into_font();
    let show_counts = cell >= 60;
    for t in 0..n {
        let support = confusion.row_total(t);
        for p in 0..n {
            let count = confusion.get(t, p);
            let (x, y) = (left + p as i32 * cell_i, top + t as i32 * cell_i);
            let fraction = if support > 0 { count as f64 / support as f64 } else { 0.0 };
            let fill = if support > 0 { heat_color(fraction) } else { RGBColor(225, 225, 225) };
            let rect = [(x, y), (x + cell_i, y + cell_i)];
            drawing(root.draw(&Rectangle::new(rect, fill.filled())))?;
            drawing(root.draw(&Rectangle::new(rect, RGBColor(255, 255, 255).stroke_width(1))))?;
            if support == 0 {
                continue;
            }

            // Dark cells take white text.
            let ink = if fraction > 0.55 { WHITE } else { BLACK };
            let percent = 100.0 * fraction;
            let text = if count == 0 {
                "·".to_string()
            } else if percent < 1.0 {
                "<1".to_string()
            } else {
                format!("{percent:.0}")
            };
            let center = (x + cell_i / 2, y + cell_i / 2);
            let style = TextStyle::from(cell_style.clone()).color(&ink);
            if show_counts && count > 0 {
                let above = style.pos(Pos::new(HPos::Center, VPos::Bottom));
                drawing(root.draw_text(&format!("{text}%"), &above, (center.0, center.1 + 2)))?;
                let below = TextStyle::from(count_style.clone())
                    .color(&ink)
                    .pos(Pos::new(HPos::Center, VPos::Top));
                drawing(root.draw_text(&count.to_string(), &below, (center.0, center.1 + 4)))?;
            } else {
                let centered = style.pos(Pos::new(HPos::Center, VPos::Center));
                drawing(root.draw_text(&text, &centered, center))?;
            }
        }
    }
    // Diagonal outlined, so the correct cells are found at a glance.
    for c in 0..n as i32 {
        let (x, y) = (left + c * cell_i, top + c * cell_i);
        let rect = [(x + 1, y + 1), (x + cell_i - 1, y + cell_i - 1)];
        drawing(root.draw(&Rectangle::new(rect, RGBColor(230, 85, 13).stroke_width(2))))?;
    }

    // Row labels (true class) right-aligned to the matrix; column labels rotated to read
    // upwards, ending under their column.
    let right_aligned = label_style.pos(Pos::new(HPos::Right, VPos::Center));
    for (t, text) in row_labels.iter().enumerate() {
        let y = top + t as i32 * cell_i + cell_i / 2;
        drawing(root.draw_text(text, &right_aligned, (left - 8, y)))?;
    }
    let rotated =
        TextStyle::from(("sans-serif", label_font).into_font().transform(FontTransform::Rotate270))
            .color(&BLACK)
            .pos(Pos::new(HPos::Right, VPos::Center));
    let matrix_i = matrix as i32;
    for (p, text) in column_labels.iter().enumerate() {
        let x = left + p as i32 * cell_i + cell_i / 2;
        drawing(root.draw_text(text, &rotated, (x, top + matrix_i + 8)))?;
    }

    // Axis titles.
    let axis_style = TextStyle::from(("sans-serif", 16.0).into_font().style(FontStyle::Bold))
        .color(&BLACK)
        .pos(Pos::new(HPos::Center, VPos::Center));
    let bottom_title = (left + matrix_i / 2, height as i32 - axis_title as i32 / 2 - 4);
    drawing(root.draw_text(
        "predicted class (cells: % of the true class)",
        &axis_style,
        bottom_title,
    ))?;
    let side_style = TextStyle::from(
        ("sans-serif", 16.0).into_font().style(FontStyle::Bold).transform(FontTransform::Rotate270),
    )
    .color(&BLACK)
    .pos(Pos::new(HPos::Center, VPos::Center));
    let side_title = (axis_title as i32 / 2, top + matrix_i / 2);
    drawing(root.draw_text("true class (support)", &side_style, side_title))?;

    // Colour bar: share of the row, 0 % at the bottom.
    color_bar(&root, left + matrix_i + bar_gap as i32, top, bar_width as i32, matrix_i)?;
    drawing(root.present())?;
    Ok(())
}

/// A vertical scale of [`heat_color`] with ticks every 25 %.
fn color_bar(
    root: &DrawingArea<BitMapBackend<'_>, Shift>,
    x: i32,
    top: i32,
    width: i32,
    height: i32,
) -> Result<()> {
    for step in 0..height {
        let fraction = 1.0 - f64::from(step) / f64::from(height.max(1));
        let line = [(x, top + step), (x + width, top + step + 1)];
        drawing(root.draw(&Rectangle::new(line, heat_color(fraction).filled())))?;
    }
    let frame = [(x, top), (x + width, top + height)];
    drawing(root.draw(&Rectangle::new(frame, BLACK.stroke_width(1))))?;
    let tick_style = TextStyle::from(("sans-serif", 13.0).into_font())
        .color(&BLACK)
        .pos(Pos::new(HPos::Left, VPos::Center));
    for quarter in 0..=4 {
        let y = top + height - quarter * height / 4;
        let tick = PathElement::new(vec![(x + width, y), (x + width + 5, y)], BLACK);
        drawing(root.draw(&tick))?;
        let label = format!("{} %", quarter * 25);
        drawing(root.draw_text(&label, &tick_style, (x + width + 8, y)))?;
    }
    Ok(())
}

/// Finite values' (min, max), or None.
fn finite_range(values: impl Iterator<Item = f64>) -> Option<(f64, f64)> {
    values.filter(|v| v.is_finite()).fold(None, |range, v| match range {
        None => Some((v, v)),
        Some((lo, hi)) => Some((lo.min(v), hi.max(v))),
    })
}

/// Writes two panels side by side: training and validation loss (with the learning rate on
/// a second axis), and training and validation accuracy, per epoch.
pub fn training_curves_png(path: &Path, epochs: &[EpochPoint]) -> Result<()> {
    if epochs.is_empty() {
        bail!("no epochs to plot");
    }
    let root = BitMapBackend::new(path, (1400, 520)).into_drawing_area();
    drawing(root.fill(&WHITE))?;
    let panels = root.split_evenly((1, 2));

    // A single epoch still needs a non-empty x range.
    let first = epochs.iter().map(|e| e.epoch).min().unwrap_or(0);
    let last = epochs.iter().map(|e| e.epoch).max().unwrap_or(0).max(first + 1);
    // Integer epochs on the x axis, so ticks never fall between two epochs.
    let x_range = first as i64..last as i64;
    let (train_color, validation_color) = (RGBColor(31, 119, 180), RGBColor(255, 127, 14));
    let line = |e: &EpochPoint, value: f64| (e.epoch as i64, value);

    // Loss panel, from 0 so curves of different runs compare by eye.
    let losses = epochs.iter().flat_map(|e| [e.train_loss, e.validation_loss]);
    let loss_top = finite_range(losses).map_or(1.0, |(_, hi)| hi * 1.08).max(1e-6);
    let rates = finite_range(epochs.iter().map(|e| e.learning_rate));
    let rate_top = rates.map_or(1.0, |(_, hi)| hi * 1.08).max(1e-12);
    let mut loss = drawing(
        ChartBuilder::on(&panels[0])
            .caption("loss", ("sans-serif", 22))
            .margin(16)
            .x_label_area_size(44)
            .y_label_area_size(64)
            .right_y_label_area_size(76)
            .build_cartesian_2d(x_range.clone(), 0.0..loss_top),
    )?
    .set_secondary_coord(x_range.clone(), 0.0..rate_top);
    drawing(
        loss.configure_mesh()
            .x_desc("epoch")
            .y_desc("cross-entropy loss")
            .light_line_style(RGBColor(242, 242, 242))
            .label_style(("sans-serif", 14))
            .axis_desc_style(("sans-serif", 16))
            .draw(),
    )?;
    drawing(
        loss.configure_secondary_axes()
            .y_desc("learning rate")
            .label_style(("sans-serif", 14))
            .axis_desc_style(("sans-serif", 16))
            .y_label_formatter(&|v| format!("{v:.1e}"))
            .draw(),
    )?;
    let series = [
        ("training", train_color, epochs.iter().map(|e| line(e, e.train_loss)).collect()),
        (
            "validation",
            validation_color,
            epochs.iter().map(|e| line(e, e.validation_loss)).collect(),
        ),
    ];
    draw_lines(&mut loss, series)?;
    let rate_style = RGBColor(120, 120, 120).stroke_width(2);
    let rate_points: Vec<(i64, f64)> =
        epochs.iter().map(|e| line(e, e.learning_rate)).filter(|p| p.1.is_finite()).collect();
    drawing(loss.draw_secondary_series(DashedLineSeries::new(rate_points, 8, 5, rate_style)))?
        .label("learning rate (right axis)")
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], rate_style));
    drawing(
        loss.configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .label_font(("sans-serif", 15))
            .draw(),
    )?;

    // Accuracy panel: up to 1, from a round value below the lowest point.
    let accuracies = epochs.iter().flat_map(|e| [e.train_accuracy, e.validation_accuracy]);
    let low = finite_range(accuracies).map_or(0.0, |(lo, _)| lo);
    let floor = ((low - 0.05) * 10.0).floor().clamp(0.0, 9.0) / 10.0;
    let mut accuracy = drawing(
        ChartBuilder::on(&panels[1])
            .caption("accuracy", ("sans-serif", 22))
            .margin(16)
            .x_label_area_size(44)
            .y_label_area_size(64)
            .build_cartesian_2d(x_range, floor..1.0),
    )?;
    drawing(
        accuracy
            .configure_mesh()
            .x_desc("epoch")
            .y_desc("accuracy")
            .light_line_style(RGBColor(242, 242, 242))
            .label_style(("sans-serif", 14))
            .axis_desc_style(("sans-serif", 16))
            .y_label_formatter(&|v| format!("{:.0} %", v * 100.0))
            .draw(),
    )?;
    let series = [
        ("training", train_color, epochs.iter().map(|e| line(e, e.train_accuracy)).collect()),
        (
            "validation",
            validation_color,
            epochs.iter().map(|e| line(e, e.validation_accuracy)).collect(),
        ),
    ];
    draw_lines(&mut accuracy, series)?;
    drawing(
        accuracy
            .configure_series_labels()
            .position(SeriesLabelPosition::LowerRight)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .label_font(("sans-serif", 15))
            .draw(),
    )?;
    drawing(root.present())?;
    Ok(())
}

/// A named line: legend text, colour, (epoch, value) points.
type Curve<'a> = (&'a str, RGBColor, Vec<(i64, f64)>);

/// Draws named lines with a dot per epoch, each with a legend entry; non-finite points are
/// left out (a diverged epoch would otherwise stretch nothing but break the line drawing).
fn draw_lines<'a>(
    chart: &mut ChartContext<'a, BitMapBackend<'a>, Cartesian2d<RangedCoordi64, RangedCoordf64>>,
    series: [Curve<'_>; 2],
) -> Result<()> {
    for (name, color, points) in series {
        let points: Vec<(i64, f64)> = points.into_iter().filter(|p| p.1.is_finite()).collect();
        let style = color.stroke_width(2);
        drawing(chart.draw_series(LineSeries::new(points.iter().copied(), style)))?
            .label(name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], style));
        let dots = points.iter().map(|&p| Circle::new(p, 3, color.filled()));
        drawing(chart.draw_series(dots))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const PNG_MAGIC: [u8; 8] = [0x89, b'P', b'N', b'G', 0x0d, 0x0a, 0x1a, 0x0a];

    fn is_png(path: &Path) -> bool {
        std::fs::read(path).is_ok_and(|bytes| bytes.starts_with(&PNG_MAGIC))
    }

    /// A confusion matrix that is mostly right, with some spread, for `n` classes.
    fn example_confusion(n: usize) -> Confusion {
        let mut confusion = Confusion::new(n);
        for t in 0..n {
            for p in 0..n {
                let count = if t == p { 40 + 7 * t } else { (t * 3 + p * 5) % 7 };
                for _ in 0..count {
                    confusion.add(t, p).unwrap();
                }
            }
        }
        confusion
    }

    #[test]
    fn writes_pngs() {
        let dir = std::env::temp_dir().join(format!("combo-plot-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();

        // Two, a dozen and thirty classes, one with a long name and one without support.
        for n in [2usize, 12, 30] {
            let mut labels: Vec<String> = (0..n).map(|i| format!("class-{i}")).collect();
            labels[0] = "Collaborative-document-editing-suite".into();
            let mut confusion = example_confusion(n);
            if n > 2 {
                confusion = Confusion::new(n);
                let source = example_confusion(n);
                for t in 0..n - 1 {
                    for p in 0..n {
                        for _ in 0..source.get(t, p) {
                            confusion.add(t, p).unwrap();
                        }
                    }
                }
            }
            let path = dir.join(format!("confusion-{n}.png"));
            confusion_png(&path, &labels, &confusion, &format!("{n} classes")).unwrap();
            assert!(is_png(&path), "{}", path.display());
        }

        let epochs: Vec<EpochPoint> = (1..=12)
            .map(|epoch| {
                let e = epoch as f64;
                EpochPoint {
                    epoch,
                    train_loss: 2.0 / e,
                    validation_loss: 2.2 / e + 0.05 * (e - 6.0).max(0.0),
                    train_accuracy: 1.0 - 0.6 / e,
                    validation_accuracy: 1.0 - 0.7 / e,
                    learning_rate: 1e-3 * 0.8f64.powi(epoch as i32),
                }
            })
            .collect();
        let path = dir.join("curves.png");
        training_curves_png(&path, &epochs).unwrap();
        assert!(is_png(&path));
        let single = dir.join("curves-1.png");
        training_curves_png(&single, &epochs[..1]).unwrap();
        assert!(is_png(&single));
        assert!(training_curves_png(&dir.join("none.png"), &[]).is_err());

        // Set COMBO_KEEP_TEST_PLOTS to look at the figures.
        if std::env::var_os("COMBO_KEEP_TEST_PLOTS").is_none() {
            let _ = std::fs::remove_dir_all(&dir);
        }
    }

    #[test]
    fn long_labels_are_abbreviated() {
        assert_eq!(abbreviate("Chat"), "Chat");
        let short = abbreviate("Collaborative-document-editing-suite");
        assert_eq!(short.chars().count(), MAX_LABEL_CHARS);
        assert!(short.ends_with("-suite"));
    }
}

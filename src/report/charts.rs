//! The report's charts, drawn with plotters as SVG documents.

use plotters::coord::Shift;
use plotters::prelude::*;

use crate::train::EpochRecord;

type Area<'a> = DrawingArea<SVGBackend<'a>, Shift>;

/// A named line: `(x, y)` points.
pub type Series = (String, Vec<(f64, f64)>);

const TRAIN: RGBColor = RGBColor(31, 119, 180);
const VAL: RGBColor = RGBColor(255, 127, 14);
const BOUNDARY: RGBColor = RGBColor(150, 150, 150);

/// Errors from plotters are about the drawing surface (an in-memory string here), so they are
/// reported as text.
fn fail(e: impl std::fmt::Display) -> String {
    format!("chart: {e}")
}

/// One panel: a train and a validation series per epoch, with vertical lines at
/// `boundaries` (the first epoch of each unfreezing stage).
fn panel(
    area: &Area<'_>,
    title: &str,
    epochs: usize,
    train: &[(f64, f64)],
    val: &[(f64, f64)],
    boundaries: &[usize],
) -> Result<(), String> {
    let values = train
        .iter()
        .chain(val)
        .map(|p| p.1)
        .filter(|v| v.is_finite());
    let (low, high) = values.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
        (lo.min(v), hi.max(v))
    });
    let (low, high) = if low.is_finite() {
        let pad = ((high - low) * 0.05).max(1e-3);
        (low - pad, high + pad)
    } else {
        (0.0, 1.0)
    };
    let x_max = epochs.max(2) as f64;
    let mut chart = ChartBuilder::on(area)
        .caption(title, ("sans-serif", 18))
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(50)
        .build_cartesian_2d(1.0..x_max, low..high)
        .map_err(fail)?;
    chart
        .configure_mesh()
        .x_desc("epoch")
        .light_line_style(WHITE.mix(0.0))
        .draw()
        .map_err(fail)?;
    for &epoch in boundaries {
        let x = epoch as f64;
        chart
            .draw_series(LineSeries::new(
                [(x, low), (x, high)],
                BOUNDARY.stroke_width(1),
            ))
            .map_err(fail)?;
    }
    let finite = |s: &[(f64, f64)]| -> Vec<(f64, f64)> {
        s.iter().copied().filter(|p| p.1.is_finite()).collect()
    };
    chart
        .draw_series(LineSeries::new(finite(train), TRAIN.stroke_width(2)))
        .map_err(fail)?
        .label("train")
        .legend(|(x, y)| PathElement::new([(x, y), (x + 20, y)], TRAIN.stroke_width(2)));
    chart
        .draw_series(LineSeries::new(finite(val), VAL.stroke_width(2)))
        .map_err(fail)?
        .label("validation")
        .legend(|(x, y)| PathElement::new([(x, y), (x + 20, y)], VAL.stroke_width(2)));
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(fail)
}

/// Loss and accuracy per epoch, train vs validation, side by side.
pub fn training_curves(history: &[EpochRecord], boundaries: &[usize]) -> Result<String, String> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (960, 360)).into_drawing_area();
        root.fill(&WHITE).map_err(fail)?;
        let (left, right) = root.split_horizontally(480);
        let series = |f: fn(&EpochRecord) -> f64| -> Vec<(f64, f64)> {
            history.iter().map(|r| (r.epoch as f64, f(r))).collect()
        };
        let epochs = history.last().map_or(1, |r| r.epoch);
        panel(
            &left,
            "loss",
            epochs,
            &series(|r| r.train_loss),
            &series(|r| r.val_loss),
            boundaries,
        )?;
        panel(
            &right,
            "accuracy",
            epochs,
            &series(|r| r.train_accuracy),
            &series(|r| r.val_accuracy),
            boundaries,
        )?;
        root.present().map_err(fail)?;
    }
    Ok(svg)
}

/// Confusion matrix heat map: rows are true classes, columns predicted; each cell shows its
/// count, shaded by the fraction of its row.
pub fn confusion_matrix(classes: &[String], confusion: &[Vec<usize>]) -> Result<String, String> {
    let k = classes.len().max(1);
    let cell = (480 / k).clamp(24, 90) as i32;
    let label_width = classes.iter().map(|c| c.len()).max().unwrap_or(4) as i32 * 8 + 20;
    let side = cell * k as i32;
    let (width, height) = (label_width + side + 20, label_width + side + 40);
    let mut svg = String::new();
    {
        let root =
            SVGBackend::with_string(&mut svg, (width as u32, height as u32)).into_drawing_area();
        root.fill(&WHITE).map_err(fail)?;
        let (x0, y0) = (label_width, 30);
        root.draw(&Text::new(
            "true class (rows) vs predicted class (columns)",
            (10, 8),
            ("sans-serif", 14),
        ))
        .map_err(fail)?;
        for (t, row) in confusion.iter().enumerate() {
            let total: usize = row.iter().sum();
            for (p, &count) in row.iter().enumerate() {
                let share = if total == 0 {
                    0.0
                } else {
                    count as f64 / total as f64
                };
                let shade = (255.0 * (1.0 - share * 0.85)) as u8;
                let colour = if t == p {
                    RGBColor(shade, 255 - (255 - shade) / 3, shade)
                } else {
                    RGBColor(255, shade, shade)
                };
                let (x, y) = (x0 + p as i32 * cell, y0 + t as i32 * cell);
                root.draw(&Rectangle::new(
                    [(x, y), (x + cell, y + cell)],
                    colour.filled(),
                ))
                .map_err(fail)?;
                root.draw(&Rectangle::new(
                    [(x, y), (x + cell, y + cell)],
                    RGBColor(200, 200, 200),
                ))
                .map_err(fail)?;
                root.draw(&Text::new(
                    count.to_string(),
                    (x + cell / 2 - 8, y + cell / 2 - 7),
                    ("sans-serif", 14),
                ))
                .map_err(fail)?;
            }
        }
        for (i, name) in classes.iter().enumerate() {
            let y = y0 + i as i32 * cell + cell / 2 - 7;
            root.draw(&Text::new(name.as_str(), (8, y), ("sans-serif", 13)))
                .map_err(fail)?;
            let x = x0 + i as i32 * cell + cell / 2;
            let style =
                TextStyle::from(("sans-serif", 13).into_font()).transform(FontTransform::Rotate90);
            root.draw(&Text::new(name.as_str(), (x - 6, y0 + side + 6), style))
                .map_err(fail)?;
        }
        root.present().map_err(fail)?;
    }
    Ok(svg)
}

/// Learning rate per epoch for each parameter group.
pub fn learning_rates(groups: &[Series]) -> Result<String, String> {
    let points = groups.iter().flat_map(|(_, s)| s.iter());
    let (x_max, y_max) = points.fold((1.0f64, 0.0f64), |(x, y), p| (x.max(p.0), y.max(p.1)));
    let y_max = if y_max > 0.0 { y_max * 1.1 } else { 1.0 };
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (960, 300)).into_drawing_area();
        root.fill(&WHITE).map_err(fail)?;
        let mut chart = ChartBuilder::on(&root)
            .caption("learning rate per layer group", ("sans-serif", 18))
            .margin(10)
            .x_label_area_size(30)
            .y_label_area_size(70)
            .build_cartesian_2d(1.0..x_max.max(2.0), 0.0..y_max)
            .map_err(fail)?;
        chart
            .configure_mesh()
            .x_desc("epoch")
            .y_label_formatter(&|v| format!("{v:.1e}"))
            .light_line_style(WHITE.mix(0.0))
            .draw()
            .map_err(fail)?;
        for (i, (name, series)) in groups.iter().enumerate() {
            let colour = Palette99::pick(i).to_rgba();
            chart
                .draw_series(LineSeries::new(series.clone(), colour.stroke_width(2)))
                .map_err(fail)?
                .label(name.as_str())
                .legend(move |(x, y)| {
                    PathElement::new([(x, y), (x + 20, y)], colour.stroke_width(2))
                });
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()
            .map_err(fail)?;
        root.present().map_err(fail)?;
    }
    Ok(svg)
}

/// A reliability diagram per set of bins (before and after calibration, side by side):
/// the accuracy of each confidence bin as a bar, the gap to the bin's mean confidence
/// outlined, the diagonal of perfect calibration, and each bin's image count under it.
pub fn reliability(panels: &[(String, &[crate::calibration::Bin])]) -> Result<String, String> {
    const ACCURACY: RGBColor = RGBColor(31, 119, 180);
    const GAP: RGBColor = RGBColor(214, 39, 40);
    let width = 480 * panels.len().max(1) as u32;
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (width, 400)).into_drawing_area();
        root.fill(&WHITE).map_err(fail)?;
        let areas = root.split_evenly((1, panels.len().max(1)));
        for (area, (title, bins)) in areas.iter().zip(panels) {
            let mut chart = ChartBuilder::on(area)
                .caption(title, ("sans-serif", 16))
                .margin(10)
                .x_label_area_size(35)
                .y_label_area_size(45)
                .build_cartesian_2d(0.0..1.0, -0.08..1.0)
                .map_err(fail)?;
            chart
                .configure_mesh()
                .x_desc("confidence (probability of the predicted class)")
                .y_desc("accuracy")
                .y_label_formatter(&|v| {
                    if *v < 0.0 {
                        String::new()
                    } else {
                        format!("{v:.1}")
                    }
                })
                .light_line_style(WHITE.mix(0.0))
                .draw()
                .map_err(fail)?;
            let filled = bins.iter().filter(|b| b.count > 0);
            chart
                .draw_series(filled.clone().map(|b| {
                    Rectangle::new(
                        [(b.lower, 0.0), (b.upper, b.accuracy)],
                        ACCURACY.mix(0.8).filled(),
                    )
                }))
                .map_err(fail)?
                .label("accuracy")
                .legend(|(x, y)| Rectangle::new([(x, y - 5), (x + 15, y + 5)], ACCURACY.filled()));
            chart
                .draw_series(filled.clone().map(|b| {
                    Rectangle::new(
                        [(b.lower, b.accuracy), (b.upper, b.confidence)],
                        GAP.stroke_width(2),
                    )
                }))
                .map_err(fail)?
                .label("gap to confidence")
                .legend(|(x, y)| {
                    Rectangle::new([(x, y - 5), (x + 15, y + 5)], GAP.stroke_width(2))
                });
            chart
                .draw_series(LineSeries::new(
                    [(0.0, 0.0), (1.0, 1.0)],
                    BOUNDARY.stroke_width(1),
                ))
                .map_err(fail)?
                .label("perfect calibration")
                .legend(|(x, y)| PathElement::new([(x, y), (x + 15, y)], BOUNDARY.stroke_width(1)));
            // Counts under the axis' zero, one per non-empty bin.
            chart
                .draw_series(filled.map(|b| {
                    Text::new(
                        b.count.to_string(),
                        (b.lower + 0.004, -0.025),
                        ("sans-serif", 10),
                    )
                }))
                .map_err(fail)?;
            chart
                .configure_series_labels()
                .position(SeriesLabelPosition::UpperLeft)
                .background_style(WHITE.mix(0.8))
                .border_style(BLACK)
                .draw()
                .map_err(fail)?;
        }
        root.present().map_err(fail)?;
    }
    Ok(svg)
}

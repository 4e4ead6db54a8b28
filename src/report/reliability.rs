//! The report's calibration section: the temperature, the validation ECE and log-loss before
//! and after it, and the reliability diagrams (see `crate::calibration`).

use super::{ReportError, charts, escape, svg_img};
use crate::run::RunMetrics;

/// The section's HTML; a run from before calibration gets a line saying so.
pub(super) fn section(metrics: &RunMetrics) -> Result<String, ReportError> {
    let mut html = String::from("<h2>Calibration (validation)</h2>");
    let Some(record) = &metrics.calibration else {
        html.push_str(
            "<p>This run was trained before graft calibrated its probabilities: temperature 1.</p>",
        );
        return Ok(html);
    };
    let numbers = match (
        record.ece_before,
        record.ece_after,
        record.log_loss_before,
        record.log_loss_after,
    ) {
        (Some(e0), Some(e1), Some(l0), Some(l1)) => format!(
            r#"Expected calibration error ({} bins) <b id="ece-before">{e0:.4}</b> before, <b id="ece-after">{e1:.4}</b> after; log-loss {l0:.4} before, {l1:.4} after, on {} validation images."#,
            crate::calibration::BINS,
            record.val_images
        ),
        _ => String::new(),
    };
    let what = match &record.note {
        Some(note) => format!("Temperature 1: {}.", escape(note)),
        None => format!(
            r#"Temperature <b id="temperature">{:.4}</b>: predicted probabilities are softmax(logits / T), fitted on the validation split."#,
            record.temperature
        ),
    };
    html.push_str(&format!("<p>{what} {numbers}</p>"));
    if record.reliability_before.is_empty() {
        return Ok(html);
    }
    let panels = if record.note.is_some() {
        vec![("as predicted".to_string(), &record.reliability_before[..])]
    } else {
        vec![
            ("before (T = 1)".to_string(), &record.reliability_before[..]),
            (
                format!("after (T = {:.3})", record.temperature),
                &record.reliability_after[..],
            ),
        ]
    };
    let svg = charts::reliability(&panels).map_err(ReportError::Chart)?;
    html.push_str(&svg_img(
        "reliability",
        "reliability diagram: accuracy against confidence per bin",
        &svg,
    ));
    Ok(html)
}

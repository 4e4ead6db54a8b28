//! `report.html` of a pretraining run: what was adapted, the loss curve, and the linear probe.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use super::{ReportError, charts, escape, page, percent, svg_img};
use crate::adapted::{self, PretrainCard, PretrainMetrics};
use crate::train::EpochRecord;

/// Write `RUN_DIR/report.html` of the pretraining run in `dir`.
pub fn write_report(dir: &Path) -> Result<PathBuf, ReportError> {
    let (card, metrics) = adapted::load(dir)?;
    let html = render(&card, &metrics)?;
    let path = dir.join(super::REPORT_FILE);
    crate::util::write_atomic(&path, html.as_bytes()).map_err(|source| ReportError::Io {
        path: path.clone(),
        source,
    })?;
    Ok(path)
}

fn render(card: &PretrainCard, metrics: &PretrainMetrics) -> Result<String, ReportError> {
    let mut body = String::new();
    let w = &mut body;
    let title = format!("graft pretrain: {} on {}", card.method, card.backbone);
    let _ = write!(w, "<h1>{}</h1>", escape(&title));
    let parent = card
        .parent_weights_id
        .as_deref()
        .map_or("random initialisation".to_string(), |id| {
            format!("ImageNet weights {id}")
        });
    let rows = [
        (
            "backbone",
            format!("{} (adapted weights {})", card.backbone, card.weights_id),
        ),
        ("started from", parent),
        (
            "data",
            format!(
                "{} ({} images; {} of the probe's validation images left out)",
                card.data.display(),
                card.images,
                card.excluded_probe_val
            ),
        ),
        ("time", format!("{:.0} s", metrics.seconds)),
        (
            "options",
            serde_json::to_string(&card.options).unwrap_or_default(),
        ),
    ];
    let _ = write!(w, "<table id=\"run\">");
    for (key, value) in rows {
        let _ = write!(w, "<tr><th>{key}</th><td>{}</td></tr>", escape(&value));
    }
    let _ = write!(w, "</table>");

    if let Some(probe) = &metrics.probe {
        let _ = write!(
            w,
            r#"<h2>Linear probe</h2><p>Fitted on the {} training images of {}, scored on its {} validation images.</p>
<table id="probe"><tr><th>features</th><th>logistic regression</th><th>kNN</th></tr>"#,
            probe.train_size,
            escape(&probe.data.display().to_string()),
            probe.val_size
        );
        for (name, scores) in [("before", probe.before), ("after", probe.after)] {
            let _ = write!(
                w,
                "<tr><td>{name}</td><td>{}</td><td>{}</td></tr>",
                percent(scores.logreg_accuracy),
                percent(scores.knn_accuracy)
            );
        }
        let _ = write!(w, "</table>");
    }

    // The loss curve through the training-curve chart: the contrastive task's accuracy stands
    // where a classifier's training accuracy would.
    let history: Vec<EpochRecord> = metrics
        .history
        .iter()
        .map(|r| EpochRecord {
            epoch: r.epoch,
            train_loss: r.loss,
            train_accuracy: r.positive_accuracy,
            val_loss: f64::NAN,
            val_accuracy: f64::NAN,
            learning_rate: r.learning_rate,
        })
        .collect();
    if !history.is_empty() {
        let svg = charts::training_curves(&history, &[]).map_err(ReportError::Chart)?;
        let _ = write!(
            w,
            "<h2>NT-Xent loss and positive-pair accuracy</h2>{}",
            svg_img("curves", "NT-Xent loss per epoch", &svg)
        );
        let lr = vec![(
            "backbone".to_string(),
            history
                .iter()
                .map(|r| (r.epoch as f64, r.learning_rate))
                .collect(),
        )];
        let svg = charts::learning_rates(&lr).map_err(ReportError::Chart)?;
        let _ = write!(w, "{}", svg_img("learning-rates", "learning rate", &svg));
    }
    Ok(page(&title, &body))
}

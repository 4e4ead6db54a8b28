//! `report.html`: one self-contained page per run (charts and thumbnails inlined as data URIs,
//! nothing fetched from the network) that a person opens in a browser.

mod charts;
pub mod pretrain;
mod reliability;

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use rayon::prelude::*;

use crate::data::{DecodeLimits, decode_rgb};
use crate::run::{
    self, EvaluationRecord, Hyperparameters, ModelCard, Plan, PredictionRecord, RunError,
    RunMetrics,
};
use crate::train::EpochRecord;
use crate::train::plan::lowercase_name;

pub const REPORT_FILE: &str = "report.html";
/// How many of the most confident mistakes the report shows.
const MISTAKES_SHOWN: usize = 16;
const THUMBNAIL_SIDE: u32 = 160;

#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error(transparent)]
    Run(#[from] RunError),
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    Chart(String),
}

/// Write `RUN_DIR/report.html` and return its path.
pub fn write_report(dir: &Path) -> Result<PathBuf, ReportError> {
    if crate::adapted::is_pretrain_run(dir) {
        return pretrain::write_report(dir);
    }
    let card = run::load_card(dir)?;
    let metrics = run::load_metrics(dir)?;
    let history = run::load_history(dir)?;
    // Older or foreign run directories may lack predictions: the report then has no mistakes.
    let predictions = run::load_predictions(dir).unwrap_or_default();
    let evaluations = EvaluationRecord::load_all(dir);
    // Fine-tuning runs save their plan; other recipes have none. A damaged plan only costs
    // its section.
    let plan = run::load_plan(dir).ok().flatten();
    let heatmaps = mistake_heatmaps(dir, &predictions);
    let html = render(
        &card,
        &metrics,
        &history,
        &predictions,
        &evaluations,
        plan.as_ref(),
        &heatmaps,
    )?;
    let path = dir.join(REPORT_FILE);
    crate::util::write_atomic(&path, html.as_bytes()).map_err(|source| ReportError::Io {
        path: path.clone(),
        source,
    })?;
    Ok(path)
}

/// Per-group learning rates at the end of each epoch, as recorded by fine-tuning: groups
/// that never trained are left out.
fn group_learning_rates(hyper: &Hyperparameters) -> Option<Vec<charts::Series>> {
    let record = &hyper.finetune()?.group_learning_rates;
    let (first, per_epoch) = (record.first_epoch, &record.per_epoch);
    let series = record
        .groups
        .iter()
        .enumerate()
        .map(|(g, name)| {
            let points = per_epoch
                .iter()
                .enumerate()
                .map(|(i, lrs)| ((first + i) as f64, lrs.get(g).copied().unwrap_or(0.0)))
                .collect::<Vec<_>>();
            (name.clone(), points)
        })
        .filter(|(_, points)| points.iter().any(|p| p.1 > 0.0))
        .collect();
    Some(series)
}

/// Text with `&`, `<`, `>` and `"` escaped for HTML.
pub(crate) fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn svg_img(id: &str, alt: &str, svg: &str) -> String {
    format!(
        r#"<img id="{id}" alt="{alt}" src="data:image/svg+xml;base64,{}">"#,
        BASE64.encode(svg)
    )
}

/// A small JPEG of the image as a data URI, or `None` when it cannot be read any more.
pub(crate) fn thumbnail(path: &Path) -> Option<String> {
    let rgb = decode_rgb(path, DecodeLimits::default()).ok()?;
    let small = image::imageops::thumbnail(&rgb, THUMBNAIL_SIDE, THUMBNAIL_SIDE);
    let mut jpeg = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut jpeg, 80)
        .encode_image(&small)
        .ok()?;
    Some(format!("data:image/jpeg;base64,{}", BASE64.encode(jpeg)))
}

/// The mistakes the report shows: the `MISTAKES_SHOWN` most confident.
fn shown_mistakes(predictions: &[PredictionRecord]) -> Vec<&PredictionRecord> {
    let mut mistakes: Vec<&PredictionRecord> = predictions
        .iter()
        .filter(|p| p.truth != p.predicted)
        .collect();
    mistakes.sort_by(|a, b| b.probability.total_cmp(&a.probability));
    mistakes.truncate(MISTAKES_SHOWN);
    mistakes
}

/// The shown mistakes' heatmaps (`crate::explain`) as JPEG data URIs, by path: the run's model
/// loaded and its top explained. Empty for a kNN top (not linear), and with a note on stderr
/// when the model cannot be loaded (weights not in the store).
fn mistake_heatmaps(dir: &Path, predictions: &[PredictionRecord]) -> HashMap<PathBuf, String> {
    let paths: Vec<PathBuf> = shown_mistakes(predictions)
        .iter()
        .map(|m| m.path.clone())
        .collect();
    // A kNN top has nothing to explain with, by design: no note for it.
    let linear = crate::head::Head::load(&dir.join(run::HEAD_FILE))
        .is_ok_and(|head| matches!(head, crate::head::Head::Linear { .. }));
    if paths.is_empty() || !linear {
        return HashMap::new();
    }
    let drawn = crate::run::TrainedModel::open(dir, None)
        .map_err(|e| e.to_string())
        .and_then(|model| {
            let top =
                crate::explain::LinearTop::from_head(&model.head).map_err(|e| e.to_string())?;
            crate::explain::explain_images(
                &model.backbone,
                &top,
                &paths,
                MISTAKES_SHOWN,
                DecodeLimits::default(),
            )
            .map_err(|e| e.to_string())
        });
    let drawn = match drawn {
        Ok(drawn) => drawn,
        Err(why) => {
            eprintln!("note: the report shows no heatmaps: {why}");
            return HashMap::new();
        }
    };
    paths
        .into_iter()
        .zip(drawn)
        .filter_map(|(path, result)| {
            let (_, image) = result.ok()?;
            let small = image::imageops::thumbnail(&image, THUMBNAIL_SIDE, THUMBNAIL_SIDE);
            Some((path, jpeg_data_uri(&small)?))
        })
        .collect()
}

fn jpeg_data_uri(image: &image::RgbImage) -> Option<String> {
    let mut jpeg = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut jpeg, 80)
        .encode_image(image)
        .ok()?;
    Some(format!("data:image/jpeg;base64,{}", BASE64.encode(jpeg)))
}

fn percent(v: f64) -> String {
    format!("{:.1}%", 100.0 * v)
}

fn render(
    card: &ModelCard,
    metrics: &RunMetrics,
    history: &[EpochRecord],
    predictions: &[PredictionRecord],
    evaluations: &[(String, EvaluationRecord)],
    plan: Option<&Plan>,
    heatmaps: &HashMap<PathBuf, String>,
) -> Result<String, ReportError> {
    let mut body = String::new();
    let w = &mut body;
    let title = format!("graft run: {} on {}", card.recipe.name(), card.backbone);
    let _ = write!(w, "<h1>{}</h1>", escape(&title));
    if metrics.val_size == 0 {
        let _ = write!(
            w,
            r#"<p class="summary">no validation split: no validation accuracy; trained on {} images, training accuracy {}, the last epoch kept</p>"#,
            metrics.train_size,
            percent(metrics.train_accuracy),
        );
    } else {
        let _ = write!(
            w,
            r#"<p class="summary">validation accuracy <b id="val-accuracy">{}</b> ({} images), macro F1 {:.3}, training accuracy {}{}</p>"#,
            percent(metrics.val.accuracy),
            metrics.val_size,
            metrics.val.macro_f1,
            percent(metrics.train_accuracy),
            metrics
                .best_epoch
                .map(|e| format!(", weights of epoch {e} kept (lowest validation loss)"))
                .unwrap_or_default()
        );
    }

    // The run: recipe, backbone, preprocessing, data, hyper-parameters.
    let source = &card.source;
    let rows = [
        ("recipe", card.recipe.name().to_string()),
        (
            "backbone",
            format!("{} (weights {})", card.backbone, card.weights_id),
        ),
        ("weights from", source.weights_origin.clone()),
        (
            "preprocessing",
            format!(
                "{} px, {:?} crop, {:?} resize, mean {:?}, std {:?}, {:?} padding",
                source.resolution,
                source.crop,
                source.resize_filter,
                source.normalization.mean,
                source.normalization.std,
                source.padding
            ),
        ),
        (
            "data",
            format!(
                "{} ({} split, seed {}): {} train / {} validation images",
                card.data.source.display(),
                crate::train::plan::lowercase_name(&card.data.split),
                card.data.seed,
                card.data.train_images,
                card.data.val_images
            ),
        ),
        ("classes", card.classes.join(", ")),
        ("graft", card.graft_version.clone()),
    ];
    let _ = write!(w, r#"<h2>Run</h2><table id="run">"#);
    for (key, value) in rows {
        let _ = write!(w, "<tr><th>{key}</th><td>{}</td></tr>", escape(&value));
    }
    let _ = write!(w, "</table>");
    let _ = write!(
        w,
        r#"<h3>Hyper-parameters</h3><table id="hyperparameters">"#
    );
    for (key, value) in card.hyperparameters.settings() {
        let _ = write!(
            w,
            "<tr><th>{}</th><td>{}</td></tr>",
            escape(&key),
            escape(&value)
        );
    }
    let _ = write!(w, "</table>");

    if let Some(plan) = plan {
        let _ = write!(
            w,
            r#"<h3>Plan</h3><p>{}</p><table id="plan"><tr><th>stage</th><th>epochs</th><th>trains</th><th>peak learning rates</th><th>trainable / frozen parameters</th></tr>"#,
            escape(&format!(
                "head round of {} epochs on cached features; BatchNorm {}; augmentation {}; {} schedule; batch {}",
                plan.head_round_epochs,
                lowercase_name(&plan.bn_mode),
                lowercase_name(&plan.augment),
                lowercase_name(&plan.schedule),
                plan.batch_size
            ))
        );
        for stage in &plan.stages {
            let _ = write!(
                w,
                "<tr><td>{}</td><td>{}-{}</td><td>{} + top</td><td>{}</td><td>{} / {}</td></tr>",
                escape(&stage.name),
                stage.first_epoch,
                stage.last_epoch(),
                escape(&stage.trainable_groups.join(", ")),
                escape(&stage.rates_text()),
                stage.trainable_params,
                stage.non_trainable_params
            );
        }
        let _ = write!(w, "</table>");
    }

    let _ = write!(w, "<h2>Training curves</h2>");
    // Fine-tuning runs record where each unfreezing stage began and every group's rate.
    let hyper = &card.hyperparameters;
    let stage_starts: Vec<usize> = hyper
        .finetune()
        .map(|r| r.stage_starts.clone())
        .unwrap_or_default();
    let curves = charts::training_curves(history, &stage_starts).map_err(ReportError::Chart)?;
    if !stage_starts.is_empty() {
        let _ = write!(
            w,
            "<p>Grey lines: first epoch of each unfreezing stage ({}); the epochs before are the head round on cached features.</p>",
            stage_starts
                .iter()
                .map(|e| e.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    w.push_str(&svg_img("curves", "loss and accuracy per epoch", &curves));

    let _ = write!(w, "<h2>Confusion matrix (validation)</h2>");
    let confusion = charts::confusion_matrix(&card.classes, &metrics.val.confusion)
        .map_err(ReportError::Chart)?;
    w.push_str(&svg_img("confusion", "confusion matrix", &confusion));

    let _ = write!(
        w,
        r#"<h2>Per class (validation)</h2><table id="per-class"><tr><th>class</th><th>precision</th><th>recall</th><th>F1</th><th>support</th></tr>"#
    );
    for c in &metrics.val.per_class {
        let _ = write!(
            w,
            "<tr><td>{}</td><td>{:.3}</td><td>{:.3}</td><td>{:.3}</td><td>{}</td></tr>",
            escape(&c.class),
            c.precision,
            c.recall,
            c.f1,
            c.support
        );
    }
    let _ = write!(w, "</table>");

    w.push_str(&reliability::section(metrics)?);

    let mistakes = shown_mistakes(predictions);
    let _ = write!(
        w,
        r#"<h2>Most confident mistakes</h2><p>{} of {} validation images are wrong; the {} the model was surest about{}:</p><div id="mistakes">"#,
        predictions
            .iter()
            .filter(|p| p.truth != p.predicted)
            .count(),
        predictions.len(),
        mistakes.len(),
        if heatmaps.is_empty() {
            ""
        } else {
            ", each beside a heatmap of the regions that drove the wrong class (CAM / Grad-CAM, red = most)"
        }
    );
    let thumbnails: Vec<Option<String>> = mistakes.par_iter().map(|m| thumbnail(&m.path)).collect();
    for (m, thumb) in mistakes.iter().zip(thumbnails) {
        let image = thumb.map_or_else(
            || "<div class=\"missing\">image not found</div>".to_string(),
            |src| {
                format!(
                    r#"<img class="thumb" src="{src}" alt="{}">"#,
                    escape(&m.path.display().to_string())
                )
            },
        );
        // What drove the wrong prediction, when the model could be loaded (`crate::explain`).
        let heatmap = heatmaps.get(&m.path).map_or_else(String::new, |src| {
            format!(
                r#"<img class="heatmap" src="{src}" alt="heatmap of {}">"#,
                escape(&m.predicted)
            )
        });
        let _ = write!(
            w,
            r#"<figure>{image}{heatmap}<figcaption>true <b>{}</b><br>predicted <b>{}</b> ({})<br><small>{}</small></figcaption></figure>"#,
            escape(&m.truth),
            escape(&m.predicted),
            percent(m.probability as f64),
            escape(
                &m.path
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default()
            )
        );
    }
    let _ = write!(w, "</div>");

    let _ = write!(w, "<h2>Learning-rate schedule</h2>");
    let lr_groups = group_learning_rates(hyper).unwrap_or_else(|| {
        let series = history
            .iter()
            .map(|r| (r.epoch as f64, r.learning_rate))
            .collect();
        vec![("head".to_string(), series)]
    });
    let lr = charts::learning_rates(&lr_groups).map_err(ReportError::Chart)?;
    w.push_str(&svg_img("lr-schedule", "learning rate per epoch", &lr));

    if !evaluations.is_empty() {
        let _ = write!(
            w,
            r#"<h2>Evaluations</h2><table id="evaluations"><tr><th>file</th><th>data</th><th>split</th><th>accuracy</th><th>with test-time augmentation</th></tr>"#
        );
        for (file, e) in evaluations {
            let tta = e.tta.as_ref().map_or_else(
                || "not run".to_string(),
                |t| format!("{} ({})", percent(t.metrics.accuracy), t.views.join(" + ")),
            );
            let _ = write!(
                w,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                escape(file),
                escape(&e.data.display().to_string()),
                escape(&e.split),
                percent(e.metrics.accuracy),
                escape(&tta)
            );
        }
        let _ = write!(w, "</table>");
    }

    Ok(page(&title, &body))
}

/// The HTML document around a report's `body`.
pub(crate) fn page(title: &str, body: &str) -> String {
    format!(
        r#"<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font-family: sans-serif; margin: 2em auto; max-width: 1000px; color: #222; }}
table {{ border-collapse: collapse; margin: 0.5em 0; }}
th, td {{ border: 1px solid #ddd; padding: 4px 8px; text-align: left; }}
.gallery {{ display: grid; grid-template-columns: repeat(auto-fill, minmax(170px, 1fr)); gap: 10px; }}
#mistakes {{ display: grid; grid-template-columns: repeat(auto-fill, minmax(170px, 1fr)); gap: 10px; }}
figure {{ margin: 0; }} figcaption {{ font-size: 0.85em; overflow-wrap: anywhere; }}
img {{ max-width: 100%; }}
</style></head>
<body>{body}
<script>
// Lets a headless browser (and the tests) tell that every image decoded.
window.addEventListener("load", () => {{
  const images = Array.from(document.images);
  document.body.dataset.imagesTotal = images.length;
  document.body.dataset.imagesLoaded = images.filter(i => i.complete && i.naturalWidth > 0).length;
}});
</script>
</body></html>
"#,
        title = escape(title)
    )
}

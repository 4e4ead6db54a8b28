//! Calibrated probabilities on real features of ../shared/data/flowers (EfficientNet-Lite0):
//! temperature scaling cools an over-confident top (T > 1, lower validation log-loss);
//! predict gives softmax(logits / T) of the head as saved; a run whose model.json lacks the
//! temperature (written before calibration) reads as T = 1; without validation images T = 1
//! and the run says why; evaluate records the ECE of the calibrated probabilities.

mod common;

use std::path::{Path, PathBuf};

use common::*;
use graft::calibration::tempered_softmax;
use graft::data::DecodeLimits;
use graft::head::Head;
use graft::run::{self, TrainedModel};

const CLASSES: [&str; 3] = ["daisy", "roses", "tulips"];

/// The probabilities `predict` gives for `photos`, every class, in class order.
fn predicted(model: &TrainedModel, photos: &[PathBuf]) -> Vec<f32> {
    let classes = model.card.classes.len();
    let mut out = Vec::new();
    for classified in model.predict(photos, classes) {
        let mut row = vec![0.0; classes];
        for p in classified.result.unwrap() {
            row[p.index] = p.probability;
        }
        out.extend(row);
    }
    out
}

/// The logits of the head as saved in `run` on the photos' features, decoded afresh as
/// predict decodes them.
fn saved_logits(run: &Path, model: &TrainedModel, photos: &[PathBuf]) -> Vec<f32> {
    let head = Head::load(&run.join(run::HEAD_FILE)).unwrap();
    let rows: Vec<f32> = graft::features::features_of_view(
        &model.backbone,
        photos,
        8,
        DecodeLimits::default(),
        |_| {},
    )
    .into_iter()
    .flat_map(|r| r.unwrap())
    .collect();
    head.logits(&rows, model.backbone.config.feature_dim)
        .expect("a linear head")
}

#[test]
fn an_over_confident_top_is_cooled_and_every_consumer_uses_its_temperature() {
    store_weights("efficientnet-lite0");
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("flowers");
    copy_flowers(&data, &CLASSES, 40);
    let cache = tmp.path().join("cache");
    let run_dir = tmp.path().join("logreg");
    // Logistic regression with almost no L2 penalty on 96 photos of 1,280 features: the
    // training rows are separable and the weights grow until it is sure of every answer.
    let (_, stderr) = ok(graft()
        .args([
            "train",
            "--recipe",
            "logreg",
            "--alpha",
            "1e-4",
            "--cache-dir",
        ])
        .arg(&cache)
        .arg("--out")
        .arg(&run_dir)
        .arg(&data)
        .output()
        .unwrap());
    assert!(stderr.contains("calibration: temperature"), "{stderr}");

    let metrics = run::load_metrics(&run_dir).unwrap();
    let record = metrics.calibration.clone().expect("a calibration record");
    let card = run::load_card(&run_dir).unwrap();
    eprintln!(
        "T {:.4}: log-loss {:?} -> {:?}, ECE {:?} -> {:?} on {} images",
        record.temperature,
        record.log_loss_before,
        record.log_loss_after,
        record.ece_before,
        record.ece_after,
        record.val_images
    );
    assert_eq!(record.val_images, 24);
    assert_eq!(card.temperature, record.temperature);
    assert!(record.temperature > 1.0, "T {}", record.temperature);
    let (before, after) = (
        record.log_loss_before.unwrap(),
        record.log_loss_after.unwrap(),
    );
    assert!(after < before, "log-loss {before} -> {after}");
    assert_eq!(record.reliability_before.len(), graft::calibration::BINS);
    // The recorded log-loss is that of the saved head's validation logits.
    let model = TrainedModel::open(&run_dir, None).unwrap();
    let recorded = run::load_predictions(&run_dir).unwrap();
    let val: Vec<PathBuf> = recorded.iter().map(|p| p.path.clone()).collect();
    let logits = saved_logits(&run_dir, &model, &val);
    let class_index = |name: &str| model.card.classes.iter().position(|c| c == name).unwrap();
    let labels: Vec<usize> = recorded.iter().map(|p| class_index(&p.truth)).collect();
    let k = model.card.classes.len();
    let recomputed = graft::calibration::log_loss(&logits, &labels, k, record.temperature);
    assert!(
        (recomputed - after).abs() < 1e-3,
        "{recomputed} vs {after} recorded"
    );

    // predict: softmax(logits / T) of the head as saved.
    let calibrated = predicted(&model, &val);
    let difference = max_abs_diff(
        &calibrated,
        &tempered_softmax(&logits, k, record.temperature),
    );
    assert!(difference < 1e-5, "{difference}");
    let raw = tempered_softmax(&logits, k, 1.0);
    assert!(max_abs_diff(&calibrated, &raw) > 0.05, "T changed nothing");
    // The probabilities recorded in predictions.json are the calibrated ones too.
    for (i, p) in recorded.iter().enumerate() {
        let best = class_index(&p.predicted);
        assert!((p.probability - calibrated[i * k + best]).abs() < 1e-4);
    }

    // evaluate records the ECE and log-loss of the calibrated probabilities.
    let evaluation = model
        .evaluate_with(
            &data,
            &graft::recipe::EvaluateOptions {
                split: graft::recipe::EvalSplit::Val,
                cache_dir: Some(cache.clone()),
                ..Default::default()
            },
            &mut graft::progress::Silent,
        )
        .unwrap();
    let check = evaluation.record.calibration.unwrap();
    assert_eq!(check.temperature, record.temperature);
    assert!((check.log_loss - after).abs() < 1e-3, "{check:?}");
    assert!(
        (check.ece - record.ece_after.unwrap()).abs() < 1e-3,
        "{check:?}"
    );

    // The report draws the reliability diagrams.
    let html = std::fs::read_to_string(graft::report::write_report(&run_dir).unwrap()).unwrap();
    assert!(
        html.contains(r#"id="reliability""#),
        "no reliability diagram"
    );
    assert!(html.contains(r#"id="ece-after""#));

    // The same run as graft wrote it before calibration: no temperature in model.json.
    let path = run_dir.join(run::MODEL_FILE);
    let mut old = json(&path);
    old.as_object_mut().unwrap().remove("temperature").unwrap();
    std::fs::write(&path, serde_json::to_string_pretty(&old).unwrap()).unwrap();
    let model = TrainedModel::open(&run_dir, None).unwrap();
    assert_eq!(model.card.temperature, 1.0);
    let difference = max_abs_diff(&predicted(&model, &val), &raw);
    assert!(difference < 1e-5, "{difference}");

    // A temperature that is no temperature is refused by name.
    old["temperature"] = (-2.0).into();
    std::fs::write(&path, serde_json::to_string(&old).unwrap()).unwrap();
    let error = TrainedModel::open(&run_dir, None).unwrap_err().to_string();
    assert!(
        error.contains("model.json") && error.contains("temperature"),
        "{error}"
    );

    // No validation images: temperature 1, and the run says why.
    let no_val = tmp.path().join("no-val");
    let (_, stderr) = ok(graft()
        .args(["train", "--recipe", "logreg", "--val-fraction", "0"])
        .arg("--cache-dir")
        .arg(&cache)
        .arg("--out")
        .arg(&no_val)
        .arg(&data)
        .output()
        .unwrap());
    assert!(
        stderr.contains("calibration: temperature 1 (no validation images"),
        "{stderr}"
    );
    let record = run::load_metrics(&no_val).unwrap().calibration.unwrap();
    assert_eq!(record.temperature, 1.0);
    assert!(record.note.is_some() && record.ece_after.is_none());
    assert_eq!(run::load_card(&no_val).unwrap().temperature, 1.0);
}

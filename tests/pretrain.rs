//! `graft pretrain --method simclr` end to end on 40 flower photos: the run directory, the probe
//! before / after, the probe's validation images kept out of pretraining, resuming, and the
//! adapted backbone used through `--weights RUN_DIR` by extract, train and predict.

mod common;

use std::path::Path;
use std::process::Command;

use common::*;

/// Small, fast settings: 64 px views, 3 epochs of 3 steps.
fn pretrain(data: &Path, cache: &Path) -> Command {
    let mut cmd = graft();
    cmd.args([
        "pretrain",
        "--method",
        "simclr",
        "--resolution",
        "64",
        "--epochs",
        "3",
        "--batch-size",
        "10",
        "--val-fraction",
        "0.25",
        "--probe",
    ])
    .arg(data)
    .arg("--cache-dir")
    .arg(cache)
    .arg(data);
    cmd
}

#[test]
fn pretrain_adapts_the_backbone_probes_it_and_resumes_to_the_same_weights() {
    store_weights("efficientnet-lite0");
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("flowers");
    copy_flowers(&data, &FLOWER_CLASSES, 8);
    let cache = dir.path().join("cache");

    // Uninterrupted.
    let run = dir.path().join("run");
    let (stdout, stderr) = ok(pretrain(&data, &cache)
        .arg("--out")
        .arg(&run)
        .output()
        .unwrap());
    assert!(
        stderr.contains("on 30 images (10 of the probe's validation images left out)"),
        "{stderr}"
    );
    assert!(stdout.contains("logistic regression"), "{stdout}");
    for file in [
        "backbone.safetensors",
        "pretrain.json",
        "metrics.json",
        "history.csv",
        "report.html",
    ] {
        assert!(run.join(file).is_file(), "no {file}");
    }
    let card = json(&run.join("pretrain.json"));
    assert_eq!(card["method"], "simclr");
    assert_eq!(card["images"], 30);
    assert_eq!(card["excluded_probe_val"], 10);
    assert_ne!(card["weights_id"], card["parent_weights_id"]);
    let metrics = json(&run.join("metrics.json"));
    let history = metrics["history"].as_array().unwrap();
    assert_eq!(history.len(), 3);
    for epoch in history {
        let loss = epoch["loss"].as_f64().unwrap();
        // Chance level of a 19-way contrastive task is ln 19 = 2.94; the loss is positive.
        assert!(loss > 0.0 && loss < 10.0, "{epoch}");
    }
    let probe = &metrics["probe"];
    assert_eq!(probe["train_size"], 30);
    assert_eq!(probe["val_size"], 10);
    for when in ["before", "after"] {
        for model in ["logreg_accuracy", "knn_accuracy"] {
            let a = probe[when][model].as_f64().unwrap();
            assert!((0.0..=1.0).contains(&a), "{probe}");
        }
    }
    let report = std::fs::read_to_string(run.join("report.html")).unwrap();
    assert!(report.contains("Linear probe") && report.contains("NT-Xent"));

    // Interrupted after epoch 1, then resumed: the same weights, byte for byte.
    let resumed = dir.path().join("resumed");
    let (_, stderr) = ok(pretrain(&data, &cache)
        .arg("--out")
        .arg(&resumed)
        .args(["--stop-after-epochs", "1"])
        .output()
        .unwrap());
    assert!(stderr.contains("stopped after 1 of 3 epochs"), "{stderr}");
    assert!(!resumed.join("backbone.safetensors").exists());
    ok(pretrain(&data, &cache)
        .arg("--resume")
        .arg(&resumed)
        .output()
        .unwrap());
    assert_eq!(
        std::fs::read(run.join("backbone.safetensors")).unwrap(),
        std::fs::read(resumed.join("backbone.safetensors")).unwrap(),
        "resumed pretraining ended with other weights"
    );
    assert_eq!(
        json(&resumed.join("metrics.json"))["history"],
        metrics["history"]
    );

    // The adapted backbone gives other features than its parent...
    let parent = load(
        "efficientnet-lite0",
        &store_weights("efficientnet-lite0"),
        false,
        None,
    )
    .for_inference();
    let adapted = load(
        "efficientnet-lite0",
        &run.join("backbone.safetensors"),
        false,
        None,
    )
    .for_inference();
    assert_eq!(
        parent.config, adapted.config,
        "preprocessing must be the parent's"
    );
    let photo = std::fs::read_dir(data.join("tulips"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let config = &parent.config;
    let image =
        graft::data::load_image(&photo, config, graft::data::DecodeLimits::default()).unwrap();
    let batch = graft::data::to_batch(&[&image], config.resolution, &parent.device());
    let a: Vec<f32> = parent
        .features(batch.clone())
        .into_data()
        .try_to_vec::<f32>()
        .unwrap();
    let b: Vec<f32> = adapted
        .features(batch)
        .into_data()
        .try_to_vec::<f32>()
        .unwrap();
    assert!(
        max_abs_diff(&a, &b) > 1e-3,
        "pretraining did not change the backbone"
    );

    // ...and is used wherever a backbone is, through --weights RUN_DIR.
    // The probe after pretraining already cached the adapted backbone's features: extract
    // finds them under the adapted weights' id (the parent's rows live under another).
    let (stdout, _) = ok(graft()
        .args(["extract", "--cache-dir"])
        .arg(&cache)
        .arg("--backbone-weights")
        .arg(&run)
        .arg(&data)
        .output()
        .unwrap());
    assert!(stdout.contains("extracted 0, reused 40"), "{stdout}");
    let model = dir.path().join("model");
    ok(graft()
        .args(["train", "--recipe", "logreg", "--cache-dir"])
        .arg(&cache)
        .arg("--weights")
        .arg(&run)
        .arg("--out")
        .arg(&model)
        .arg(&data)
        .output()
        .unwrap());
    assert_eq!(
        json(&model.join("model.json"))["weights_id"],
        card["weights_id"]
    );
    // predict finds the adapted backbone in the model's run directory without --weights.
    let (out, _) = ok(graft()
        .args(["predict", "--json", "--model"])
        .arg(&model)
        .arg(&photo)
        .output()
        .unwrap());
    assert!(out.contains("\"predictions\""), "{out}");

    // A run directory of another backbone is refused with a clear message.
    let output = graft()
        .args(["extract", "--backbone", "mobilenet-v2-tf", "--weights"])
        .arg(&run)
        .arg(&data)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("holds a efficientnet_lite0.tf_in1k backbone, not mobilenet_v2.tf_in1k"),
        "{stderr}"
    );
}

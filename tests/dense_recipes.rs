//! The dense families through the command line, with random weights in the layout of the real
//! checkpoints (key names and shapes from tests/fixtures/backbones/keys.json): `summary`,
//! `predict`, the head and logistic-regression recipes, `evaluate` and `report` on ResNet-18
//! and ConvNeXt-Tiny; recipes not built for these families yet are refused in one line.

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use common::*;

/// A safetensors checkpoint of `model` (a keys.json entry) with random values: weights
/// uniform in ±sqrt(3 / fan_in) (unit variance out), BatchNorm variances in [0.5, 1.5].
fn random_checkpoint(model: &str, path: &Path) {
    let text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/backbones/keys.json"),
    )
    .unwrap();
    let keys: BTreeMap<String, Vec<(String, Vec<usize>)>> = serde_json::from_str(&text).unwrap();
    let mut state = 0x9e37_79b9_7f4a_7c15_u64;
    let mut uniform = move || {
        // xorshift64*: reproducible, no dependency.
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        (state.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 40) as f32 / (1u64 << 24) as f32
    };
    let mut buffers: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
    for (key, shape) in &keys[model] {
        if key.ends_with("num_batches_tracked") {
            continue;
        }
        let n: usize = shape.iter().product();
        let fan_in: usize = shape[1..].iter().product::<usize>().max(1);
        let bound = (3.0 / fan_in as f32).sqrt();
        let values: Vec<f32> = (0..n)
            .map(|_| {
                let u = uniform();
                if key.ends_with("running_var") {
                    0.5 + u
                } else if key.ends_with("running_mean") || shape.len() == 1 {
                    // Biases and means small, scales (norm weights, layer scale) near 1.
                    if key.ends_with("weight")
                        || key.ends_with("gamma")
                        || key.ends_with("layer_scale")
                    {
                        0.5 + u
                    } else {
                        0.2 * (u - 0.5)
                    }
                } else if key.ends_with("layer_scale") {
                    0.5 + u
                } else {
                    bound * (2.0 * u - 1.0)
                }
            })
            .collect();
        let bytes = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        buffers.push((key.clone(), shape.clone(), bytes));
    }
    let views: Vec<(String, safetensors::tensor::TensorView)> = buffers
        .iter()
        .map(|(key, shape, bytes)| {
            let view =
                safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape.clone(), bytes)
                    .unwrap();
            (key.clone(), view)
        })
        .collect();
    safetensors::serialize_to_file(views, None, path).unwrap();
}

fn stdout_of(args: &[&std::ffi::OsStr]) -> String {
    ok(graft().args(args).output().unwrap()).0
}

fn os<S: AsRef<std::ffi::OsStr> + ?Sized>(s: &S) -> &std::ffi::OsStr {
    s.as_ref()
}

/// Head and logreg on a small folder, then evaluate, report, predict, and the refusals.
/// `name` is the registry entry `backbone` selects; `options` go to every command that loads
/// the backbone by name.
fn recipes_run_end_to_end(
    backbone: &str,
    name: &str,
    model: &str,
    groups: &[&str],
    options: &[&str],
) {
    let dir = tempfile::tempdir().unwrap();
    let weights = dir.path().join(format!("{model}.safetensors"));
    random_checkpoint(model, &weights);
    let data = dir.path().join("flowers");
    copy_flowers(&data, &["daisy", "sunflowers", "tulips"], 8);
    let cache = dir.path().join("cache");
    let runs = dir.path().join("runs");

    // summary: the family's groups, BatchNorm statistics counted as non-trainable.
    let mut summary_args = vec![os("summary"), os("-b"), os(backbone)];
    summary_args.extend(options.iter().map(os));
    let summary = stdout_of(&summary_args);
    for group in groups {
        assert!(
            summary.lines().any(|l| l.starts_with(group)),
            "{group} missing:\n{summary}"
        );
    }
    let non_trainable: usize = summary
        .lines()
        .find_map(|l| l.strip_prefix("Non-trainable params: "))
        .unwrap()
        .replace(',', "")
        .parse()
        .unwrap();
    assert_eq!(
        non_trainable > 0,
        backbone.starts_with("resnet"),
        "{summary}"
    );
    assert!(!summary.contains("not implemented"));

    let mut accuracy = BTreeMap::new();
    for recipe in ["head", "logreg"] {
        let out = runs.join(recipe);
        let (_, stderr) = ok(graft()
            .args(["train", "--recipe", recipe, "-b", backbone])
            .args(options)
            .arg("--weights")
            .arg(&weights)
            .arg("--cache-dir")
            .arg(&cache)
            .arg("--out")
            .arg(&out)
            .arg(&data)
            .output()
            .unwrap());
        let card: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(out.join("model.json")).unwrap())
                .unwrap();
        assert_eq!(card["backbone"], name);
        if let Some(size) = options.iter().position(|o| *o == "--input-size") {
            assert_eq!(card["source"]["resolution"].to_string(), options[size + 1]);
        }
        if options.contains(&"class-and-patch-mean") {
            // Class token and mean patch token: twice ViT-S's 384.
            assert_eq!(card["source"]["feature_dim"], 768);
            assert_eq!(card["source"]["pool"], "class_and_patch_mean");
        }
        let metrics: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(out.join("metrics.json")).unwrap())
                .unwrap();
        let val = metrics["val"]["accuracy"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&val), "{stderr}");
        accuracy.insert(recipe, val);
    }

    let eval = dir.path().join("eval.json");
    ok(graft()
        .args(["evaluate", "--split", "val"])
        .arg("--weights")
        .arg(&weights)
        .arg("--cache-dir")
        .arg(&cache)
        .arg("--model")
        .arg(runs.join("head"))
        .arg("--output")
        .arg(&eval)
        .arg(&data)
        .output()
        .unwrap());
    let eval: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&eval).unwrap()).unwrap();
    // The saved model, reloaded with the same weights, scores what training reported.
    assert_eq!(
        eval["metrics"]["accuracy"].as_f64(),
        Some(accuracy["head"]),
        "{eval}"
    );
    ok(graft()
        .arg("report")
        .arg(runs.join("head"))
        .output()
        .unwrap());
    assert!(runs.join("head/report.html").is_file());

    // predict with the ImageNet classifier: five labels, most probable first.
    let photo = std::fs::read_dir(data.join("daisy"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let predict = graft()
        .args(["predict", "--json", "-b", backbone, "--top", "5"])
        .args(options)
        .arg("--weights")
        .arg(&weights)
        .arg(&photo)
        .output()
        .unwrap();
    if name.contains("dinov2") {
        // No ImageNet classifier: refused with what to do, then the trained head predicts.
        assert!(!predict.status.success());
        let stderr = String::from_utf8_lossy(&predict.stderr);
        assert!(
            stderr.contains("no ImageNet classifier") && stderr.contains("--model RUN_DIR"),
            "{stderr}"
        );
        let (stdout, _) = ok(graft()
            .args(["predict", "--json", "--top", "2", "--model"])
            .arg(runs.join("head"))
            .arg("--weights")
            .arg(&weights)
            .arg(&photo)
            .output()
            .unwrap());
        let json: serde_json::Value = serde_json::from_str(&stdout).unwrap();
        let predictions = json["images"][0]["predictions"].as_array().unwrap();
        assert_eq!(predictions.len(), 2, "{stdout}");
        return;
    }
    let (stdout, _) = ok(predict);
    let json: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(json["model"], name);
    let predictions = json["images"][0]["predictions"].as_array().unwrap();
    assert_eq!(predictions.len(), 5, "{stdout}");
    let probabilities: Vec<f64> = predictions
        .iter()
        .map(|p| p["probability"].as_f64().unwrap())
        .collect();
    assert!(probabilities.windows(2).all(|w| w[0] >= w[1]), "{stdout}");
    assert!(probabilities.iter().sum::<f64>() <= 1.0 + 1e-6, "{stdout}");
    assert!(
        predictions
            .iter()
            .all(|p| p["index"].as_u64().unwrap() < 1000)
    );

    // Fine-tuning has no trainer for this family yet: refused at once, by name, in one line.
    let out = graft()
        .args(["train", "--recipe", "finetune", "-b", backbone])
        .arg("--weights")
        .arg(&weights)
        .arg("--out")
        .arg(runs.join("finetune"))
        .arg(&data)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("fine-tuning")
            && stderr.contains("not implemented for")
            && stderr.contains(backbone),
        "{stderr}"
    );
    assert!(!runs.join("finetune/model.json").exists());
}

#[test]
fn resnet18_recipes_run_end_to_end() {
    recipes_run_end_to_end(
        "resnet18",
        "resnet18.tv_in1k",
        "resnet18",
        &["stem", "layer1", "layer4"],
        &[],
    );
}

#[test]
fn convnext_tiny_recipes_run_end_to_end() {
    recipes_run_end_to_end(
        "convnext_tiny",
        "convnext_tiny.tv_in1k",
        "convnext_tiny.tv",
        &["stem", "stage0", "stage3"],
        &[],
    );
}

#[test]
fn vit_small_recipes_run_end_to_end() {
    recipes_run_end_to_end(
        "vit_small_patch16_224",
        "vit_small_patch16_224.augreg_in21k_ft_in1k",
        "vit_small_patch16_224.timm",
        &["embed", "blocks0", "blocks3", "norm"],
        &[],
    );
}

/// DINOv2 with registers, at 112 px instead of 518 (position embedding resampled), with its
/// linear-probe feature (class token + mean patch token): it has no classifier, so predict
/// needs a trained model.
#[test]
fn dinov2_recipes_run_end_to_end_at_a_smaller_input_size() {
    recipes_run_end_to_end(
        "vit_small_patch14_reg4_dinov2",
        "vit_small_patch14_reg4_dinov2.lvd142m",
        "vit_small_patch14_reg4_dinov2.timm",
        &["embed", "blocks0", "blocks3", "norm"],
        &["--input-size", "112", "--pool", "class-and-patch-mean"],
    );
}

/// An input size a ViT cannot run at is refused before anything loads, naming what would fit.
#[test]
fn an_input_size_off_the_patch_grid_is_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("photos");
    std::fs::create_dir_all(data.join("a")).unwrap();
    image::RgbImage::from_pixel(64, 48, image::Rgb([200, 100, 50]))
        .save(data.join("a/photo.png"))
        .unwrap();
    let data = data.to_str().unwrap();
    for args in [
        vec![
            "summary",
            "-b",
            "vit_small_patch16_224",
            "--input-size",
            "100",
        ],
        vec![
            "extract",
            "-b",
            "vit_small_patch14_dinov2",
            "--input-size",
            "100",
            data,
        ],
    ] {
        let out = graft()
            .args(&args)
            .env("GRAFT_HOME", dir.path())
            .output()
            .unwrap();
        assert!(!out.status.success(), "{args:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("input size 100 px") && stderr.contains("px patch"),
            "{args:?}: {stderr}"
        );
        assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    }
}

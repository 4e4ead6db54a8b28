//! The dense families through the command line, with random weights in the layout of the real
//! checkpoints (key names and shapes from tests/fixtures/backbones/keys.json): `summary`,
//! `predict`, the head, logistic-regression and fine-tuning recipes (gradual unfreezing over
//! the family's layer groups, per-group rates), `evaluate` and `report` on ResNet-18,
//! ConvNeXt-Tiny, ViT-S/16 and DINOv2 ViT-S/14 with registers.

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

/// `graft evaluate --split val` of the run `model` on `data` (with `extra` arguments): its
/// JSON output, written next to the run.
fn evaluate(
    model: &Path,
    data: &Path,
    cache: &Path,
    extra: &[&std::ffi::OsStr],
) -> serde_json::Value {
    let output = model.with_extension("eval.json");
    ok(graft()
        .args(["evaluate", "--split", "val"])
        .args(extra)
        .arg("--cache-dir")
        .arg(cache)
        .arg("--model")
        .arg(model)
        .arg("--output")
        .arg(&output)
        .arg(data)
        .output()
        .unwrap());
    json(&output)
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
    tuned: &[(&str, usize)],
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
        let card: serde_json::Value = json(&out.join("model.json"));
        assert_eq!(card["backbone"], name);
        if let Some(size) = options.iter().position(|o| *o == "--input-size") {
            assert_eq!(card["source"]["resolution"].to_string(), options[size + 1]);
        }
        if options.contains(&"class-and-patch-mean") {
            // Class token and mean patch token: twice ViT-S's 384.
            assert_eq!(card["source"]["feature_dim"], 768);
            assert_eq!(card["source"]["pool"], "class_and_patch_mean");
        }
        let metrics: serde_json::Value = json(&out.join("metrics.json"));
        let val = metrics["val"]["accuracy"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&val), "{stderr}");
        accuracy.insert(recipe, val);
    }

    let weights_arg = [std::ffi::OsStr::new("--weights"), weights.as_os_str()];
    let eval = evaluate(&runs.join("head"), &data, &cache, &weights_arg);
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
        finetune_runs_end_to_end(backbone, &weights, &data, &cache, &runs, options, tuned);
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

    finetune_runs_end_to_end(backbone, &weights, &data, &cache, &runs, options, tuned);
}

/// Fine-tuning with gradual unfreezing: the plan (printed and in plan.json) trains the
/// family's top-most group, then the two top-most, each at its own rate (`--lr-decay` per
/// group down); the saved backbone moved where it trained and nowhere else; evaluate scores
/// the saved run as training did. `tuned` lists checkpoint keys with the stage from which each
/// trains (0: never).
fn finetune_runs_end_to_end(
    backbone: &str,
    weights: &Path,
    data: &Path,
    cache: &Path,
    runs: &Path,
    options: &[&str],
    tuned: &[(&str, usize)],
) {
    let out = runs.join("finetune");
    let mut size: Vec<&str> = options.to_vec();
    if !options.contains(&"--input-size") {
        // Small inputs keep burn's autodiff quick; ViTs resample their position embedding.
        size.extend(["--input-size", "96"]);
    }
    let (_, stderr) = ok(graft()
        .args(["train", "--recipe", "finetune", "-b", backbone])
        .args(&size)
        .args(["--epochs", "5", "--stages", "2", "--epochs-per-stage", "1"])
        .args(["--finetune-batch-size", "8", "--backbone-lr", "1e-3"])
        .args(["--lr-decay", "0.5", "--augment", "none"])
        .arg("--weights")
        .arg(weights)
        .arg("--cache-dir")
        .arg(cache)
        .arg("--out")
        .arg(&out)
        .arg(data)
        .output()
        .unwrap());
    let plan: serde_json::Value = json(&out.join("plan.json"));
    let stages = plan["stages"].as_array().unwrap();
    assert_eq!(stages.len(), 2, "{plan}");
    let rates = stages[1]["learning_rates"].as_array().unwrap();
    // Every backbone group, then the top.
    let groups: Vec<&str> = rates[..rates.len() - 1]
        .iter()
        .map(|r| r[0].as_str().unwrap())
        .collect();
    let (top, below) = (groups[groups.len() - 1], groups[groups.len() - 2]);
    assert_eq!(
        stages[0]["trainable_groups"],
        serde_json::json!([top]),
        "{plan}"
    );
    assert_eq!(
        stages[1]["trainable_groups"],
        serde_json::json!([below, top]),
        "{plan}"
    );
    let rate = |g: &str| {
        rates
            .iter()
            .find(|r| r[0] == g)
            .map(|r| r[1].as_f64().unwrap())
            .unwrap()
    };
    assert_eq!(rate(top), 1e-3, "{plan}");
    assert!((rate(below) - 5e-4).abs() < 1e-12, "{plan}");
    assert_eq!(rate(groups[0]), 0.0, "{plan}");
    // The printed plan names each trained group's rate, and what BatchNorm does.
    assert!(
        stderr.contains(&format!("{below} 5.0e-4, {top} 1.0e-3, top 1.0e-3")),
        "{stderr}"
    );
    let has_batch_norm = backbone.starts_with("resnet");
    assert_eq!(
        stderr.contains("BatchNorm none (LayerNorm only"),
        !has_batch_norm,
        "{stderr}"
    );

    // The saved backbone, in the checkpoint's own key names: frozen groups (and BatchNorm's
    // running statistics) exactly as pretrained, the trained groups moved. The run keeps its
    // best epoch: a group unfrozen in stage 2 moved only when that epoch is in stage 2.
    let card: serde_json::Value = json(&out.join("model.json"));
    assert_eq!(card["recipe"], "finetune", "{card}");
    let metrics: serde_json::Value = json(&out.join("metrics.json"));
    let best = metrics["best_epoch"].as_u64().unwrap();
    let kept_stage = card["hyperparameters"]["stage_starts"]
        .as_array()
        .unwrap_or_else(|| panic!("{card}"))
        .iter()
        .filter(|start| start.as_u64().unwrap() <= best)
        .count();
    assert!(kept_stage >= 1, "{card}");
    let before = graft::weights::Checkpoint::open(weights).unwrap();
    let after = graft::weights::Checkpoint::open(&out.join("backbone.safetensors")).unwrap();
    for (key, trains_from) in tuned {
        let (a, b) = (&before.tensors[*key], &after.tensors[*key]);
        assert_eq!(a.shape, b.shape, "{key}");
        let moves = *trains_from > 0 && kept_stage >= *trains_from;
        assert_eq!(
            a.values != b.values,
            moves,
            "{key}: moved should be {moves} (kept epoch {best}, stage {kept_stage})"
        );
    }

    // The saved run scores on evaluation what training reported.
    let eval = evaluate(&out, data, cache, &[]);
    assert_eq!(
        eval["metrics"]["accuracy"].as_f64(),
        metrics["val"]["accuracy"].as_f64(),
        "{eval}"
    );
    ok(graft().arg("report").arg(&out).output().unwrap());
    assert!(out.join("report.html").is_file());
}

#[test]
fn resnet18_recipes_run_end_to_end() {
    recipes_run_end_to_end(
        "resnet18",
        "resnet18.tv_in1k",
        "resnet18",
        &["stem", "layer1", "layer4"],
        &[],
        &[
            ("conv1.weight", 0),
            ("layer3.1.conv2.weight", 2),
            ("layer4.1.conv2.weight", 1),
            ("layer4.1.bn2.weight", 1),
            ("layer4.1.bn2.running_mean", 0),
            ("layer4.1.bn2.running_var", 0),
        ],
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
        &[
            ("features.0.0.weight", 0),
            ("features.3.0.block.0.weight", 0),
            ("features.5.0.block.0.weight", 2),
            ("features.7.2.block.5.weight", 1),
            ("features.7.2.layer_scale", 1),
            ("classifier.0.weight", 1),
        ],
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
        &[
            ("patch_embed.proj.weight", 0),
            ("pos_embed", 0),
            ("blocks.8.attn.qkv.weight", 0),
            ("blocks.11.attn.qkv.weight", 2),
            ("norm.weight", 1),
        ],
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
        &[
            ("reg_token", 0),
            ("blocks.0.ls1.gamma", 0),
            ("blocks.11.ls2.gamma", 2),
            ("blocks.11.mlp.fc1.weight", 2),
        ],
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

/// SimCLR on the dense families: the adapted backbone is saved under the checkpoint's own key
/// names, has moved from its parent (DINOv2's position embedding too, through its resampling
/// to the smaller input; ResNet's BatchNorm statistics stay frozen), and loads wherever a
/// backbone does (`--weights RUN_DIR`).
#[test]
fn simclr_adapts_resnet_and_dinov2_backbones() {
    for (backbone, model, size, watched) in [
        (
            "resnet18",
            "resnet18",
            "64",
            [
                ("conv1.weight", true),
                ("layer4.1.conv2.weight", true),
                ("layer4.1.bn2.running_mean", false),
            ],
        ),
        (
            "vit_small_patch14_reg4_dinov2",
            "vit_small_patch14_reg4_dinov2.timm",
            "56",
            [
                ("pos_embed", true),
                ("reg_token", true),
                ("blocks.11.mlp.fc1.weight", true),
            ],
        ),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let weights = dir.path().join(format!("{model}.safetensors"));
        random_checkpoint(model, &weights);
        let data = dir.path().join("flowers");
        copy_flowers(&data, &["daisy", "tulips"], 4);
        let run = dir.path().join("pretrain");
        ok(graft()
            .args(["pretrain", "-b", backbone, "--input-size", size])
            .args([
                "--epochs",
                "1",
                "--batch-size",
                "4",
                "--backbone-lr",
                "1e-3",
            ])
            .arg("--weights")
            .arg(&weights)
            .arg("--out")
            .arg(&run)
            .arg(&data)
            .output()
            .unwrap());
        let before = graft::weights::Checkpoint::open(&weights).unwrap();
        let after = graft::weights::Checkpoint::open(&run.join("backbone.safetensors")).unwrap();
        let float_keys = |c: &graft::weights::Checkpoint| -> Vec<String> {
            c.tensors
                .iter()
                .filter(|(k, _)| !k.starts_with("fc.") && !k.starts_with("head"))
                .map(|(k, _)| k.clone())
                .collect()
        };
        assert_eq!(float_keys(&after), float_keys(&before), "{backbone}");
        for (key, moves) in watched {
            let moved = before.tensors[key].values != after.tensors[key].values;
            assert_eq!(moved, moves, "{backbone}: {key} moved should be {moves}");
        }
        let (stdout, _) = ok(graft()
            .args(["extract", "-b", backbone, "--input-size", size])
            .arg("--weights")
            .arg(&run)
            .arg("--cache-dir")
            .arg(dir.path().join("cache"))
            .arg(&data)
            .output()
            .unwrap());
        assert!(
            stdout.contains("extracted 8, reused 0, skipped 0"),
            "{stdout}"
        );
    }
}

/// `--precision bf16` (DINOv2 on AMX tiles): its features are cached apart from float32's,
/// the run records the precision, and evaluate reloads the run in it and scores what
/// training reported. Without AMX, graft says so, runs float32 and records that.
#[test]
fn bfloat16_features_are_cached_apart_and_recorded_in_the_run() {
    let dir = tempfile::tempdir().unwrap();
    let model = "vit_small_patch14_dinov2.timm";
    let weights = dir.path().join("dinov2.safetensors");
    random_checkpoint(model, &weights);
    let data = dir.path().join("flowers");
    copy_flowers(&data, &["daisy", "tulips"], 6);
    let cache = dir.path().join("cache");
    let amx = graft::kernels::amx::available();
    let variants = |cache: &Path| -> Vec<std::ffi::OsString> {
        let dir = cache.join("vit_small_patch14_dinov2.lvd142m");
        let mut names: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        names.sort();
        names
    };
    let mut cards = BTreeMap::new();
    let mut new_variant = BTreeMap::new();
    for precision in ["f32", "bf16"] {
        let out = dir.path().join(precision);
        let (_, stderr) = ok(graft()
            .args(["--precision", precision, "train", "--recipe", "logreg"])
            .args(["-b", "vit_small_patch14_dinov2", "--input-size", "56"])
            .arg("--weights")
            .arg(&weights)
            .arg("--cache-dir")
            .arg(&cache)
            .arg("--out")
            .arg(&out)
            .arg(&data)
            .output()
            .unwrap());
        assert_eq!(
            stderr.contains("runs in float32 instead of bfloat16"),
            precision == "bf16" && !amx,
            "{stderr}"
        );
        let card: serde_json::Value = json(&out.join("model.json"));
        cards.insert(precision, card);
        let seen: Vec<_> = new_variant.values().flatten().cloned().collect();
        let fresh: Vec<_> = variants(&cache)
            .into_iter()
            .filter(|v| !seen.contains(v))
            .collect();
        new_variant.insert(precision, fresh.first().cloned());
    }
    let recorded = |p: &str| cards[p]["source"]["precision"].clone();
    assert_eq!(
        recorded("f32"),
        serde_json::Value::Null,
        "float32 is left out"
    );
    if !amx {
        assert_eq!(recorded("bf16"), serde_json::Value::Null);
        assert_eq!(
            variants(&cache).len(),
            1,
            "float32 rows both times, one cache"
        );
        return;
    }
    assert_eq!(recorded("bf16"), "bf16");
    assert_eq!(
        variants(&cache).len(),
        2,
        "bfloat16 rows are kept apart from float32's"
    );
    let metrics: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("bf16/metrics.json")).unwrap(),
    )
    .unwrap();
    // evaluate without --precision: the run's own precision, so its own features.
    let weights_arg = [std::ffi::OsStr::new("--weights"), weights.as_os_str()];
    let fresh_cache = dir.path().join("fresh-cache");
    let eval = evaluate(&dir.path().join("bf16"), &data, &fresh_cache, &weights_arg);
    assert_eq!(
        eval["metrics"]["accuracy"].as_f64(),
        metrics["val"]["accuracy"].as_f64(),
        "{eval}"
    );
    assert_eq!(
        variants(&fresh_cache),
        vec![new_variant["bf16"].clone().unwrap()],
        "evaluate computed bfloat16 rows, under their key"
    );
}

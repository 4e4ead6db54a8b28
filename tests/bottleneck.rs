//! Recipe 2 end to end on ../shared/data/flowers with EfficientNet-Lite0: extraction memory
//! (300 vs 1,500 images), a rerun that recomputes nothing, the four recipes' validation
//! accuracy, reproducibility, predict / evaluate from the run directory, and the run's HTML
//! report rendered in headless Chromium (its screenshot: `target/tmp/report-screenshot.png`,
//! copied to docs/report.png for the guide, docs/evaluate-report-doctor.md).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use common::*;
use graft::data::DecodeLimits;
use graft::infer::{Top, classify};
use graft::metrics::argmax_rows;
use graft::run::{RunMetrics, TrainedModel};

/// Run to completion; the output and the child's own peak RSS in KiB (from wait4, so other
/// tests' children running in parallel do not count).
#[allow(clippy::zombie_processes)] // reaped by wait4, which std does not know about
fn run_measured(mut cmd: Command) -> (Output, i64) {
    use std::io::Read;
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id() as libc::pid_t;
    // Output is a few lines, far below a pipe buffer, so waiting before reading cannot block.
    let mut status = 0;
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let waited = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    assert_eq!(waited, pid);
    let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
    child
        .stdout
        .take()
        .unwrap()
        .read_to_end(&mut stdout)
        .unwrap();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_end(&mut stderr)
        .unwrap();
    let status = std::os::unix::process::ExitStatusExt::from_raw(status);
    (
        Output {
            status,
            stdout,
            stderr,
        },
        usage.ru_maxrss,
    )
}

fn ok(output: &Output) -> String {
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn run_ok(mut cmd: Command) -> String {
    ok(&cmd.output().unwrap())
}

/// A CSV listing of the first `per_class` photos of each flower class (absolute paths).
fn flowers_subset(dir: &Path, per_class: usize) -> PathBuf {
    let root = shared().join("data/flowers");
    let mut csv = String::from("path,label\n");
    for class in ["daisy", "dandelion", "roses", "sunflowers", "tulips"] {
        let mut names: Vec<PathBuf> = std::fs::read_dir(root.join(class))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        names.sort();
        for path in names.iter().take(per_class) {
            csv += &format!("{},{class}\n", path.canonicalize().unwrap().display());
        }
    }
    let file = dir.join("subset.csv");
    std::fs::write(&file, csv).unwrap();
    file
}

fn train(data: &Path, cache: &Path, recipe: &str, out: &Path) -> RunMetrics {
    let mut cmd = graft();
    cmd.args(["train", "--recipe", recipe, "--cache-dir"])
        .arg(cache)
        .arg("--out")
        .arg(out)
        .arg(data);
    run_ok(cmd);
    for file in [
        "model.json",
        "head.safetensors",
        "metrics.json",
        "history.csv",
    ] {
        assert!(out.join(file).is_file(), "{recipe}: no {file}");
    }
    serde_json::from_str(&std::fs::read_to_string(out.join("metrics.json")).unwrap()).unwrap()
}

/// The run's report renders in headless Chromium: charts, tables, thumbnails and the
/// mistakes' heatmaps present and decoded. Leaves a screenshot in `target/tmp/report-screenshot.png`.
fn check_report_renders(run: &Path) {
    let report = run.join("report.html");
    let html = std::fs::read_to_string(&report).unwrap();
    assert!(
        !html.contains("http://") && !html.contains("https://"),
        "the report must not fetch anything"
    );
    let url = format!("file://{}", report.display());
    let dom = rendered_dom(&report);
    for id in [
        "curves",
        "confusion",
        "per-class",
        "mistakes",
        "lr-schedule",
        "evaluations",
        "val-accuracy",
        "reliability",
    ] {
        assert!(
            dom.contains(&format!("id=\"{id}\"")),
            "no #{id} in the rendered page"
        );
    }
    let (total, loaded) = images_decoded(&dom);
    assert!(
        total >= 4 + 16 + 16,
        "{total} images: 4 charts and 16 mistakes, each with its heatmap, expected"
    );
    // Each mistake shown has its heatmap beside its thumbnail (`graft::explain`).
    let mistakes = &dom[dom.find("id=\"mistakes\"").unwrap()..];
    let mistakes = &mistakes[..mistakes.find("</div>").unwrap_or(mistakes.len())];
    let (thumbs, heatmaps) = (
        mistakes.matches("class=\"thumb\"").count(),
        mistakes.matches("class=\"heatmap\"").count(),
    );
    assert_eq!(thumbs, 16, "16 mistakes shown");
    assert_eq!(heatmaps, thumbs, "a heatmap per mistake");
    assert_eq!(
        loaded, total,
        "every image decodes with a non-zero natural size"
    );

    let screenshot = Path::new(env!("CARGO_TARGET_TMPDIR")).join("report-screenshot.png");
    let _ = std::fs::remove_file(&screenshot);
    run_ok({
        let mut cmd = chromium();
        cmd.arg(format!("--screenshot={}", screenshot.display()))
            .arg("--window-size=1100,2600")
            .arg(&url);
        cmd
    });
    let shot = image::open(&screenshot).unwrap().to_rgb8();
    assert_eq!((shot.width(), shot.height()), (1100, 2600));
    let distinct: std::collections::HashSet<[u8; 3]> = shot.pixels().map(|p| p.0).collect();
    assert!(
        distinct.len() > 1000,
        "the screenshot looks blank ({} colours)",
        distinct.len()
    );
}

#[test]
fn flowers_bottleneck_recipes_end_to_end() {
    store_weights("efficientnet-lite0");
    let dir = tempfile::tempdir().unwrap();
    let flowers = shared().join("data/flowers");

    // Peak RSS must not grow with the number of images. mimalloc returns freed pages at once
    // here: by default it keeps them a while, and how many it keeps at the peak varied by
    // +-10% from run to run (300 images: 182-199 MB, 1,500: 174-193 MB, and 1.30x once in CI),
    // which hid what the test is about; with purging at once: 129-132 MB for both.
    let small_cache = dir.path().join("cache-300");
    let mut cmd = graft();
    cmd.env("MIMALLOC_PURGE_DELAY", "0");
    cmd.args(["extract", "--cache-dir"])
        .arg(&small_cache)
        .arg(flowers_subset(dir.path(), 60));
    let (out, rss_300) = run_measured(cmd);
    assert!(ok(&out).contains("300 images: extracted 300"));
    let cache = dir.path().join("cache");
    let mut cmd = graft();
    cmd.env("MIMALLOC_PURGE_DELAY", "0");
    cmd.args(["extract", "--cache-dir"])
        .arg(&cache)
        .arg(&flowers);
    let (out, rss_1500) = run_measured(cmd);
    let summary = ok(&out);
    assert!(
        summary.contains("1500 images: extracted 1500, reused 0, skipped 0"),
        "{summary}"
    );
    eprintln!("peak RSS: 300 images {rss_300} KiB, 1500 images {rss_1500} KiB");
    assert!(
        rss_1500 as f64 <= 1.25 * rss_300 as f64,
        "peak RSS grew from {rss_300} KiB (300 images) to {rss_1500} KiB (1500)"
    );

    // A second extraction recomputes nothing.
    let mut cmd = graft();
    cmd.args(["extract", "--cache-dir"])
        .arg(&cache)
        .arg(&flowers);
    let again = run_ok(cmd);
    assert!(
        again.contains("extracted 0, reused 1500, skipped 0"),
        "{again}"
    );

    // Four tops on the same cached features (80/20 stratified, seed 0).
    let runs = dir.path().join("runs");
    let mut accuracy = std::collections::BTreeMap::new();
    for recipe in ["head", "logreg", "svm", "knn"] {
        let metrics = train(&flowers, &cache, recipe, &runs.join(recipe));
        assert_eq!((metrics.train_size, metrics.val_size), (1200, 300));
        assert_eq!(metrics.val.confusion.iter().flatten().sum::<usize>(), 300);
        accuracy.insert(recipe, metrics.val.accuracy);
    }
    eprintln!("validation accuracy: {accuracy:?}");
    assert!(accuracy["head"] >= 0.88, "head {}", accuracy["head"]);
    assert!(accuracy["logreg"] >= 0.88, "logreg {}", accuracy["logreg"]);
    // Reported, with a floor far below what they reach, to catch a broken recipe.
    assert!(
        accuracy["svm"] >= 0.8 && accuracy["knn"] >= 0.8,
        "{accuracy:?}"
    );

    // Over the memory budget, logistic regression refuses and says what to do instead, and
    // kNN writes its bank to a mapped file: the same head as in memory, bit for bit.
    let over_budget = |recipe: &str| {
        let mut cmd = graft();
        cmd.env("GRAFT_MEMORY_BUDGET", "1M")
            .args(["train", "--recipe", recipe, "--cache-dir"])
            .arg(&cache)
            .arg("--out")
            .arg(runs.join(format!("{recipe}-over-budget")))
            .arg(&flowers);
        cmd.output().unwrap()
    };
    let refused = over_budget("logreg");
    let message = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "{message}");
    for needed in [
        "1200 rows of 1280 features",
        "--recipe head",
        "GRAFT_MEMORY_BUDGET",
    ] {
        assert!(message.contains(needed), "no `{needed}` in: {message}");
    }
    assert!(!runs.join("logreg-over-budget/head.safetensors").exists());
    ok(&over_budget("knn"));
    let head_file = |run: &str| std::fs::read(runs.join(run).join("head.safetensors")).unwrap();
    assert!(
        head_file("knn") == head_file("knn-over-budget"),
        "the kNN head differs when its bank goes through a mapped file"
    );

    // Same seed, same head, bit for bit.
    train(&flowers, &cache, "head", &runs.join("head-again"));
    assert_eq!(
        std::fs::read(runs.join("head/head.safetensors")).unwrap(),
        std::fs::read(runs.join("head-again/head.safetensors")).unwrap()
    );
    let history = std::fs::read_to_string(runs.join("head/history.csv")).unwrap();
    assert!(history.lines().count() > 2, "{history}");

    // evaluate on the validation split scores what training reported.
    let mut cmd = graft();
    cmd.args(["evaluate", "--split", "val", "--cache-dir"])
        .arg(&cache)
        .arg("--model")
        .arg(runs.join("logreg"))
        .arg("--output")
        .arg(dir.path().join("eval.json"))
        .arg(&flowers);
    run_ok(cmd);
    let eval: serde_json::Value = json(&dir.path().join("eval.json"));
    assert_eq!(
        eval["metrics"]["accuracy"].as_f64(),
        Some(accuracy["logreg"])
    );
    assert!(eval["tta"].is_null());

    // Test-time augmentation, then the report with everything in it.
    let mut cmd = graft();
    cmd.args(["evaluate", "--tta", "--split", "val", "--cache-dir"])
        .arg(&cache)
        .arg("--model")
        .arg(runs.join("head"))
        .arg(&flowers);
    assert!(run_ok(cmd).contains("test-time augmentation"));
    let mut cmd = graft();
    cmd.arg("report").arg(runs.join("head"));
    run_ok(cmd);
    check_report_renders(&runs.join("head"));

    // predict --model (images decoded afresh) agrees with the head on cached features.
    let model = TrainedModel::open(&runs.join("head"), None).unwrap();
    let cached = {
        let mut c = graft::features::cache::FeatureCache::open(&cache, &model.backbone).unwrap();
        let data = graft::data::dataset::open(&flowers, Default::default()).unwrap();
        let samples: Vec<_> = data.val.iter().step_by(30).cloned().collect();
        graft::features::labelled_features(
            &model.backbone,
            &mut c,
            &samples,
            8,
            DecodeLimits::default(),
            |_| {},
        )
        .unwrap()
        .0
        .to_matrix()
        .unwrap()
    };
    assert_eq!(cached.len(), 10);
    let top = Top::Trained {
        head: &model.head,
        classes: &model.card.classes,
    };
    let fresh = classify(
        &model.backbone,
        top,
        &cached.paths,
        5,
        4,
        DecodeLimits::default(),
        |_| {},
    );
    let expected = model.head.scores(&cached.rows, cached.dim);
    for (i, c) in fresh.iter().enumerate() {
        let predictions = c.result.as_ref().unwrap();
        let best = argmax_rows(&expected[i * 5..(i + 1) * 5], 5)[0];
        assert_eq!(
            predictions[0].label,
            model.card.classes[best],
            "{}",
            c.path.display()
        );
        assert!((predictions[0].probability - expected[i * 5 + best]).abs() < 1e-4);
    }
    let mut cmd = graft();
    cmd.args(["predict", "--json", "--model"])
        .arg(runs.join("head"))
        .arg(&cached.paths[0]);
    let json: serde_json::Value = serde_json::from_str(&run_ok(cmd)).unwrap();
    let label = json["images"][0]["predictions"][0]["label"]
        .as_str()
        .unwrap();
    assert!(model.card.classes.iter().any(|c| c == label), "{json}");
}

#[test]
fn train_and_evaluate_report_bad_input_clearly() {
    let dir = tempfile::tempdir().unwrap();
    // Not a run directory.
    let out = graft()
        .args(["predict", "--model"])
        .arg(dir.path())
        .arg("x.jpg")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("model.json"), "{err}");
    // Options the recipe cannot honour.
    let out = graft()
        .args(["train", "--recipe", "logreg", "--class-weights", "balanced"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not supported"));
    let out = graft()
        .args(["train", "--val-fraction", "1.5"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("--val-fraction"));
}

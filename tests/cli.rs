//! The `graft` binary as a user runs it.

mod common;

use assert_cmd::Command;
use common::*;

fn graft() -> Command {
    Command::cargo_bin("graft").unwrap()
}

#[test]
fn predict_json_names_chickadee_first_for_the_golden_bird() {
    let out = graft()
        .args(["predict", "--json"])
        .arg(golden_lite0().join("bird.bmp"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let first = &json["images"][0]["predictions"][0];
    assert_eq!(first["index"], 19);
    assert_eq!(first["label"], "chickadee");
    assert!(first["probability"].as_f64().unwrap() > 0.8);
    assert_eq!(
        json["images"][0]["predictions"].as_array().unwrap().len(),
        5
    );
}

#[test]
fn a_corrupt_image_is_reported_and_the_good_one_still_classified() {
    let dir = tempfile::tempdir().unwrap();
    let corrupt = dir.path().join("corrupt.jpg");
    // A JPEG header followed by garbage.
    let mut bytes = std::fs::read(golden_source("hot_dog")).unwrap();
    bytes.truncate(600);
    bytes.extend(std::iter::repeat_n(0x5a, 400));
    std::fs::write(&corrupt, bytes).unwrap();
    let text = dir.path().join("notes.jpg");
    std::fs::write(&text, "this is not an image").unwrap();

    let out = graft()
        .args(["predict", "--json", "--top", "1"])
        .arg(&corrupt)
        .arg(golden_source("parrot"))
        .arg(&text)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(1),
        "bad inputs make a non-zero exit at the end"
    );
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let images = json["images"].as_array().unwrap();
    assert_eq!(images.len(), 3);
    assert!(images[0]["error"].is_string());
    assert_eq!(images[1]["predictions"][0]["index"], 88, "parrot -> macaw");
    assert!(images[2]["error"].is_string());
    let stderr = String::from_utf8_lossy(&out.stderr);
    let error_lines: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(error_lines.len(), 2, "{stderr}");
    assert!(error_lines[0].contains("corrupt.jpg"), "{stderr}");
    assert!(error_lines[1].contains("notes.jpg"), "{stderr}");
}

#[test]
fn predict_text_output_has_one_block_per_image() {
    let out = graft()
        .args([
            "predict",
            "-b",
            "mobilenet-v2-tf",
            "--top",
            "3",
            "--weights",
        ])
        .arg(mnv2_weights())
        .arg(golden_source("cat"))
        .arg(golden_source("hot_dog"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 8, "{stdout}");
    assert!(lines[0].ends_with("cat.bmp"));
    assert!(lines[1].contains("Egyptian cat (285)"), "{stdout}");
    assert!(lines[5].contains("hotdog"), "{stdout}");
}

#[test]
fn summary_counts_parameters_like_keras() {
    let out = graft()
        .args(["summary", "-b", "mobilenet-v2"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let stdout = String::from_utf8(out.stdout).unwrap();
    // torchvision's mobilenet_v2 has 3,504,872 parameters; BatchNorm running statistics
    // (34,112 values) come on top, counted as non-trainable as Keras does.
    assert!(stdout.contains("Trainable params: 3,504,872"), "{stdout}");
    assert!(stdout.contains("Non-trainable params: 34,112"), "{stdout}");
    assert!(stdout.contains("(None, 1280, 7, 7)"), "{stdout}");
    let no_top = graft().args(["summary", "--no-top"]).output().unwrap();
    let no_top = String::from_utf8(no_top.stdout).unwrap();
    assert!(!no_top.contains("classifier"), "{no_top}");
    assert!(no_top.contains("(None, 1280)"), "{no_top}");
}

#[test]
fn unknown_backbone_and_missing_weights_are_clear_errors() {
    let out = graft().args(["summary", "-b", "vgg16"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("unknown backbone `vgg16`")
            && stderr.contains("efficientnet_lite0")
            && stderr.contains("resnet50"),
        "{stderr}"
    );

    let home = tempfile::tempdir().unwrap();
    let out = graft()
        .env("GRAFT_HOME", home.path())
        .args(["predict", "-b", "efficientnet-lite2"])
        .arg(golden_source("bird"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("graft weights fetch efficientnet_lite2.tf_in1k"),
        "{stderr}"
    );
}

#[test]
fn weights_list_shows_installed_checkpoints() {
    let out = graft().args(["weights", "list"]).output().unwrap();
    assert!(out.status.success());
    let stdout = String::from_utf8(out.stdout).unwrap();
    let lite0 = stdout
        .lines()
        .find(|l| l.contains("efficientnet-lite0"))
        .unwrap();
    assert!(lite0.contains("installed ("), "{stdout}");
}

#[test]
fn a_train_step_runs_every_layer_type_forward_and_backward_on_the_fused_kernels() {
    let run = |extra: &[&str]| {
        let out = graft()
            .args([
                "--threads",
                "2",
                "bench",
                "train-step",
                "-b",
                "efficientnet-lite0",
            ])
            .args(["--batch-size", "2", "--iters", "1", "--profile", "--json"])
            .args(extra)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "{stderr}");
        let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(json["what"], "train-step");
        assert!(json["images_per_sec"].as_f64().unwrap() > 0.0);
        stderr
    };
    // Fine-tuning's path on the CPU with frozen BatchNorm: every layer's backward is timed.
    let profile = run(&[]);
    for layer in [
        "stem conv 3x3",
        "depthwise conv (+ bias + ReLU6)",
        "backward: head conv",
        "backward: project conv 1x1",
        "backward: depthwise conv",
        "backward: expand conv 1x1",
        "backward: stem conv",
    ] {
        assert!(profile.contains(layer), "no `{layer}` in:\n{profile}");
    }
    // burn's autodiff of the modules runs none of them.
    let profile = run(&["--burn-autodiff"]);
    assert!(profile.contains("not used here"), "{profile}");
    assert!(!profile.contains("backward:"), "{profile}");
}

/// `graft ARGS | head -1` in bash: (stdout, stderr, graft's exit status).
fn into_head(args: &str) -> (String, String, i32) {
    let script = format!(
        "set -o pipefail; \"$0\" --threads 2 {args} | head -1; echo \"status ${{PIPESTATUS[0]}}\" >&2"
    );
    let out = std::process::Command::new("bash")
        .arg("-c")
        .arg(script)
        .arg(env!("CARGO_BIN_EXE_graft"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let status = stderr
        .lines()
        .find_map(|l| l.strip_prefix("status "))
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(-1);
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr,
        status,
    )
}

#[test]
fn predict_into_a_closed_pipe_ends_quietly() {
    // As a user types it.
    let daisy = shared().join("data/flowers/daisy");
    let (stdout, stderr, status) = into_head(&format!("predict '{}'/*.jpg", daisy.display()));
    assert_eq!(stdout.lines().count(), 1, "{stdout}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(
        status == 0 || status == 141,
        "exit status {status}: {stderr}"
    );
    // Output far larger than the pipe's buffer (64 KiB on Linux; 30 images x 1000 lines is
    // about 1 MB), so that graft surely writes after `head` has gone: the conventional SIGPIPE
    // status, no panic and no error message. (One image's 1000 lines fit in the buffer, and
    // then graft may finish first: that version of this test failed now and then.)
    let parrot = format!("'{}' ", golden_source("parrot").display());
    let (stdout, stderr, status) = into_head(&format!("predict --top 1000 {}", parrot.repeat(30)));
    assert_eq!(stdout.lines().count(), 1, "{stdout}");
    assert_eq!(status, 141, "{stderr}");
    assert!(
        !stderr.contains("panicked") && !stderr.contains("error"),
        "{stderr}"
    );
}

#[test]
fn predict_searches_folders_and_writes_a_csv_row_per_image() {
    let dir = tempfile::tempdir().unwrap();
    let images = dir.path().join("photos");
    std::fs::create_dir_all(images.join("nested")).unwrap();
    std::fs::copy(golden_source("parrot"), images.join("parrot.jpg")).unwrap();
    std::fs::copy(
        golden_source("hot_dog"),
        images.join("nested/hot dog, \"lunch\".jpg"),
    )
    .unwrap();
    std::fs::write(images.join("nested/broken.png"), b"not a png").unwrap();
    let csv = dir.path().join("out.csv");
    let out = graft()
        .args(["predict", "--top", "2", "--csv"])
        .arg(&csv)
        .arg(&images)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "one image is broken");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("macaw"), "{stdout}");
    assert!(stdout.contains("hotdog"), "{stdout}");
    let mut reader = csv_reader(&csv);
    let header: Vec<String> = reader.headers().unwrap().iter().map(String::from).collect();
    assert_eq!(
        header,
        [
            "path",
            "label_1",
            "probability_1",
            "label_2",
            "probability_2",
            "error"
        ]
    );
    let rows: Vec<Vec<String>> = reader
        .records()
        .map(|r| r.unwrap().iter().map(String::from).collect())
        .collect();
    assert_eq!(rows.len(), 3, "{rows:?}");
    let row = |name: &str| rows.iter().find(|r| r[0].ends_with(name)).unwrap();
    assert_eq!(row("parrot.jpg")[1], "macaw");
    assert!(row("parrot.jpg")[2].parse::<f64>().unwrap() > 0.5);
    assert_eq!(row("\"lunch\".jpg")[1], "hotdog, hot dog, red hot");
    let broken = row("broken.png");
    assert!(broken[1].is_empty() && !broken[5].is_empty(), "{broken:?}");
}

fn csv_reader(path: &std::path::Path) -> csv::Reader<std::fs::File> {
    csv::Reader::from_path(path).unwrap()
}

/// Whether this test binary's graft was built with a GPU backend (then a GPU may be found).
const GPU_BUILD: bool = cfg!(any(feature = "vulkan", feature = "wgpu", feature = "cuda"));

#[test]
fn device_auto_without_a_gpu_says_so_in_one_line_and_uses_the_cpu() {
    let out = graft()
        .args(["--device", "auto", "summary", "--no-top"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("Total params"));
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "{stderr}");
    assert!(lines[0].starts_with("device: auto "), "{stderr}");
    if !GPU_BUILD {
        assert!(lines[0].contains("no usable GPU"), "{stderr}");
        assert!(lines[0].contains("built without a GPU backend"), "{stderr}");
        assert!(lines[0].ends_with("using the CPU"), "{stderr}");
    }
}

#[test]
fn device_gpu_without_a_gpu_fails_with_one_line_and_exit_code_2() {
    if GPU_BUILD {
        return; // a GPU build may find one; this is the GPU-less build's contract
    }
    let out = graft()
        .args(["--device", "gpu", "predict"])
        .arg(golden_lite0().join("bird.bmp"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(out.stdout.is_empty(), "nothing classified");
    assert_eq!(
        stderr.trim_end(),
        "error: --device gpu: this graft was built without a GPU backend \
         (rebuild with --features vulkan)"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn device_cpu_is_the_default_and_prints_nothing() {
    let out = graft().args(["summary", "--no-top"]).output().unwrap();
    assert!(out.status.success());
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

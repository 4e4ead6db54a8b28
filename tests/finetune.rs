//! `graft train --recipe finetune` end to end on 100 flower photos: the plan, the run directory
//! with the fine-tuned backbone, predict / evaluate through it, the report's stage marks, and
//! the same seed giving the same weights.

mod common;

use std::path::{Path, PathBuf};

use common::*;

fn small_flowers(root: &Path) {
    copy_flowers(root, &FLOWER_CLASSES, 20);
}

fn finetune(data: &Path, cache: &Path, out: &Path) -> (String, String) {
    ok(graft()
        .args([
            "train",
            "--recipe",
            "finetune",
            "--stages",
            "2",
            "--epochs-per-stage",
            "1",
            "--cache-dir",
        ])
        .arg(cache)
        .arg("--out")
        .arg(out)
        .arg(data)
        .output()
        .unwrap())
}

#[test]
fn finetune_saves_a_backbone_that_predict_and_evaluate_use() {
    store_weights("efficientnet-lite0");
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("flowers");
    small_flowers(&data);
    let cache = dir.path().join("cache");
    let run = dir.path().join("run");
    let (stdout, stderr) = finetune(&data, &cache, &run);
    assert!(stderr.contains("BatchNorm frozen"), "{stderr}");
    assert!(stderr.contains("stage 1 (epochs"), "{stderr}");
    assert!(stderr.contains("trains stage7, head + top"), "{stderr}");
    assert!(stdout.contains("fine-tuned:"), "{stdout}");
    for file in [
        "model.json",
        "backbone.safetensors",
        "head.safetensors",
        "plan.json",
        "metrics.json",
        "history.csv",
        "report.html",
    ] {
        assert!(run.join(file).is_file(), "no {file}");
    }
    let card: serde_json::Value = json(&run.join("model.json"));
    assert_eq!(card["recipe"], "finetune");
    assert_eq!(card["backbone_file"], "backbone.safetensors");
    assert_ne!(
        card["weights_id"],
        card["hyperparameters"]["parent_weights_id"]
    );
    let plan: serde_json::Value = json(&run.join("plan.json"));
    assert_eq!(plan["stages"].as_array().unwrap().len(), 2);
    assert_eq!(plan["bn_mode"], "frozen");

    // evaluate through the saved backbone reproduces the training metrics.
    let metrics: serde_json::Value = json(&run.join("metrics.json"));
    let eval = dir.path().join("eval.json");
    ok(graft()
        .args(["evaluate", "--split", "val", "--cache-dir"])
        .arg(&cache)
        .arg("--model")
        .arg(&run)
        .arg("--output")
        .arg(&eval)
        .arg(&data)
        .output()
        .unwrap());
    let eval: serde_json::Value = json(&eval);
    assert_eq!(eval["metrics"]["accuracy"], metrics["val"]["accuracy"]);

    let photo = std::fs::read_dir(data.join("roses"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let (json, _) = ok(graft()
        .args(["predict", "--json", "--model"])
        .arg(&run)
        .arg(&photo)
        .output()
        .unwrap());
    let json: serde_json::Value = serde_json::from_str(&json).unwrap();
    let p = json["images"][0]["predictions"][0]["probability"]
        .as_f64()
        .unwrap();
    assert!(p > 0.0 && p <= 1.0, "{json}");

    // The report marks the unfreezing stages.
    let report = std::fs::read_to_string(run.join("report.html")).unwrap();
    assert!(report.contains("first epoch of each unfreezing stage"));

    // Same seed, same fine-tuned weights.
    let again = dir.path().join("again");
    finetune(&data, &cache, &again);
    assert!(
        std::fs::read(run.join("backbone.safetensors")).unwrap()
            == std::fs::read(again.join("backbone.safetensors")).unwrap(),
        "a second run with the same seed fine-tuned different weights"
    );
}

/// A fine-tuning interrupted after its first epoch and resumed from the checkpoint ends with
/// the same weights and history as one that ran straight through.
#[test]
fn resume_from_a_checkpoint_equals_an_uninterrupted_run() {
    use graft::backbone::mbnet::MbNet;
    use graft::backbone::{Backbone, find};
    use graft::train::finetune::{Checkpoints, Examples, FinetuneOptions, finetune};

    let info = find("efficientnet-lite0").unwrap();
    let backbone = || {
        let config = info.source_config(None);
        let device = graft::backend::device();
        // A fixed random initialisation: the same for both runs.
        let mut rng = graft::rng::run_rng(7, 0);
        let net = MbNet::init(
            &info.mbconv().unwrap().0,
            config.padding,
            config.bn_eps,
            false,
            &mut rng,
            &device,
        );
        Backbone::new(config, net, "random".into())
    };
    let photos = |class: &str, skip: usize, take: usize| -> Vec<PathBuf> {
        flower_photos(class)
            .into_iter()
            .skip(skip)
            .take(take)
            .collect()
    };
    let examples = |skip: usize, take: usize| {
        let mut e = Examples::default();
        for (label, class) in ["daisy", "roses"].iter().enumerate() {
            for path in photos(class, skip, take) {
                e.paths.push(path);
                e.labels.push(label);
            }
        }
        e
    };
    let (train, val) = (examples(0, 4), examples(4, 2));
    let head = graft::head::Head::Linear {
        weight: vec![0.0; 2 * 1280],
        bias: vec![0.0; 2],
    };
    let options = FinetuneOptions {
        stages: 2,
        epochs_per_stage: 1,
        batch_size: 4,
        ..FinetuneOptions::default()
    };
    let dir = tempfile::tempdir().unwrap();
    let plan = graft::train::plan::Plan::new(&backbone().net, (info.name, 224), &options, 0, 2);
    let run = |checkpoints: Checkpoints| {
        finetune(
            backbone(),
            &head,
            (&train, &val),
            &options,
            &plan,
            &checkpoints,
            |_, _| {},
            |_| {},
        )
        .unwrap()
    };
    let straight = run(Checkpoints::default());
    let interrupted = Checkpoints {
        dir: Some(dir.path().to_path_buf()),
        resume: false,
        stop_after: Some(1),
    };
    let first = run(interrupted);
    assert_eq!(first.history.len(), 1);
    let resumed = run(Checkpoints {
        dir: Some(dir.path().to_path_buf()),
        resume: true,
        stop_after: None,
    });
    assert_eq!(resumed.history, straight.history);
    assert_eq!(resumed.best_epoch, straight.best_epoch);
    assert_eq!(resumed.head, straight.head);
    let weights = |net: &graft::backbone::Network| -> Vec<f32> {
        let net = net.as_mbconv().unwrap();
        let mut all: Vec<f32> = net.head.weight.val().into_data().try_into_vec().unwrap();
        all.extend(
            net.stem
                .weight
                .val()
                .into_data()
                .try_into_vec::<f32>()
                .unwrap(),
        );
        all
    };
    assert!(
        weights(&resumed.net) == weights(&straight.net),
        "resumed weights differ"
    );
}

/// `kill -9` at random moments of a fine-tuning run, each time followed by `--resume`: the
/// run always continues and ends with the weights of a run that was never interrupted.
#[test]
fn sigkill_at_random_points_then_resume_gives_the_uninterrupted_result() {
    use rand::{Rng, SeedableRng};
    use std::time::{Duration, Instant};

    store_weights("efficientnet-lite0");
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("flowers");
    small_flowers(&data);
    let cache = dir.path().join("cache");
    let reference = dir.path().join("reference");
    let started = Instant::now();
    finetune(&data, &cache, &reference);
    let full = started.elapsed();
    let run = dir.path().join("killed");
    let command = |resume: bool| {
        let mut cmd = graft();
        cmd.args([
            "train",
            "--recipe",
            "finetune",
            "--stages",
            "2",
            "--epochs-per-stage",
            "1",
        ])
        .arg("--cache-dir")
        .arg(&cache);
        if resume {
            cmd.arg("--resume").arg(&run);
        } else {
            cmd.arg("--out").arg(&run);
        }
        cmd.arg(&data)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        cmd
    };
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
    for attempt in 0..5 {
        let mut child = command(attempt > 0).spawn().unwrap();
        let wait = full.mul_f64(rng.random_range(0.2..0.9));
        let deadline = Instant::now() + wait;
        while Instant::now() < deadline && child.try_wait().unwrap().is_none() {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill(); // SIGKILL; harmless if it already finished
        child.wait().unwrap();
    }
    let out = command(true).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        std::fs::read(run.join("backbone.safetensors")).unwrap()
            == std::fs::read(reference.join("backbone.safetensors")).unwrap(),
        "the killed-and-resumed run fine-tuned different weights"
    );
    assert_eq!(
        std::fs::read(run.join("head.safetensors")).unwrap(),
        std::fs::read(reference.join("head.safetensors")).unwrap()
    );
}

/// Ctrl-C during the fine-tuning epochs stops after the current step with exit code 130 and a
/// message saying how to resume; `--resume RUN_DIR` then continues from the finished epoch.
#[test]
fn ctrl_c_during_finetuning_exits_130_and_resume_finishes() {
    use std::io::{BufRead, BufReader};
    use std::process::Stdio;
    use std::sync::mpsc;
    use std::time::Duration;

    store_weights("efficientnet-lite0");
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("flowers");
    small_flowers(&data);
    let cache = dir.path().join("cache");
    let run = dir.path().join("run");
    let command = |resume: bool| {
        let mut cmd = graft();
        cmd.args([
            "train",
            "--recipe",
            "finetune",
            "--stages",
            "2",
            "--epochs-per-stage",
            "1",
            "--cache-dir",
        ])
        .arg(&cache)
        .arg(if resume { "--resume" } else { "--out" })
        .arg(&run)
        .arg(&data);
        cmd
    };
    let mut child = command(false)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Read stderr as it comes; Ctrl-C once the first fine-tuning epoch (stage 1) has ended,
    // so that the second one is running.
    let (lines, received) = mpsc::channel();
    let stderr = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = lines.send(line);
        }
    });
    let mut log = String::new();
    let mut signalled = false;
    while let Ok(line) = received.recv_timeout(Duration::from_secs(300)) {
        log.push_str(&line);
        log.push('\n');
        if !signalled && line.starts_with("epoch ") && line.contains("(stage 1): ") {
            // SAFETY: plain signal to a child we own.
            unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGINT) };
            signalled = true;
        }
    }
    let status = child.wait().unwrap();
    reader.join().unwrap();
    assert!(signalled, "no fine-tuning epoch was reported:\n{log}");
    assert_ne!(status.code(), Some(101), "panicked:\n{log}");
    assert_eq!(status.code(), Some(130), "{log}");
    assert!(
        log.contains("interrupted: 1 epochs are checkpointed"),
        "{log}"
    );
    assert!(
        log.contains(&format!("--resume {}", run.display())),
        "the message says how to resume:\n{log}"
    );
    assert!(!log.contains("panicked"), "{log}");
    assert!(
        !run.join("backbone.safetensors").exists(),
        "an interrupted run saves no final model"
    );

    let out = command(true).output().unwrap();
    let resumed = String::from_utf8_lossy(&out.stderr);
    assert_ne!(out.status.code(), Some(101), "resume panicked:\n{resumed}");
    assert!(out.status.success(), "{resumed}");
    assert!(
        !resumed.contains("no finished epoch to resume from"),
        "{resumed}"
    );
    assert!(
        resumed.contains("(stage 2): ") && !resumed.contains("(stage 1): "),
        "the resumed run continues with the second epoch:\n{resumed}"
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("fine-tuned:"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    for file in ["backbone.safetensors", "head.safetensors", "model.json"] {
        assert!(run.join(file).is_file(), "no {file} after the resume");
    }
}

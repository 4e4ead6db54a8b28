//! graft as a library: a recipe run from Rust without the binary, the trained model used from
//! code, and the programs in `examples/` run as a user would run them.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use graft::progress::Progress;
use graft::recipe::bottleneck::{self, BottleneckOptions};
use graft::run::{self, TrainedModel};

use common::*;

/// Counts what the recipe reports, as a progress bar would see it.
#[derive(Default)]
struct Recorder {
    phases: Vec<(String, usize)>,
    advanced: usize,
    notes: Vec<String>,
}

impl Progress for Recorder {
    fn start(&mut self, phase: &str, total: usize, _unit: &str) {
        self.phases.push((phase.into(), total));
    }
    fn advance(&mut self, done: usize) {
        self.advanced += done;
    }
    fn note(&mut self, line: &str) {
        self.notes.push(line.into());
    }
}

#[test]
fn a_head_trains_through_the_public_api_and_predicts() {
    let root = tempfile::tempdir().unwrap();
    let data = root.path().join("flowers");
    copy_flowers(&data, &FLOWER_CLASSES, 12);
    let out = root.path().join("run");
    let options = BottleneckOptions {
        cache_dir: Some(root.path().join("cache")),
        ..BottleneckOptions::default()
    };
    let mut progress = Recorder::default();
    let trained = bottleneck::train(&data, &out, &options, &mut progress).unwrap();

    // 60 images extracted under one phase, then the epochs of the head.
    assert_eq!(progress.phases[0], ("features".into(), 60));
    assert_eq!(progress.phases[1].0, "train");
    assert!(
        progress
            .notes
            .iter()
            .any(|n| n.contains("60 images (extracted 60, reused 0, skipped 0)")),
        "{:?}",
        progress.notes
    );
    // The run directory is the one the command line writes, and opens again.
    for file in [
        run::MODEL_FILE,
        run::HEAD_FILE,
        run::METRICS_FILE,
        run::HISTORY_FILE,
    ] {
        assert!(out.join(file).is_file(), "{file} missing");
    }
    assert_eq!(trained.metrics.train_size + trained.metrics.val_size, 60);
    assert!(
        trained.metrics.val.accuracy > 0.6,
        "validation accuracy {} on 5 classes",
        trained.metrics.val.accuracy
    );
    let model = TrainedModel::open(&out, None).unwrap();
    assert_eq!(model.card, trained.card);

    // Predictions on the validation photos agree with the verdicts saved in the run.
    let saved = run::load_predictions(&out).unwrap();
    let paths: Vec<PathBuf> = saved.iter().map(|p| p.path.clone()).collect();
    let predicted = model.predict(&paths, 2);
    for (record, classified) in saved.iter().zip(&predicted) {
        let top = classified.result.as_ref().unwrap();
        assert_eq!(top.len(), 2);
        assert_eq!(top[0].label, record.predicted, "{}", record.path.display());
        assert!((top[0].probability - record.probability).abs() < 1e-4);
    }
    // A file that is not an image gets its error; the others are still classified.
    let bad = root.path().join("notes.jpg");
    std::fs::write(&bad, b"not a picture").unwrap();
    let mixed = model.predict(&[bad.clone(), paths[0].clone()], 1);
    let error = mixed[0].result.as_ref().unwrap_err();
    assert_eq!(error.path, bad);
    assert!(mixed[1].result.is_ok());

    // Evaluated on its own training data, the head scores at least its validation accuracy.
    let metrics = model.evaluate(&data, &mut graft::progress::Silent).unwrap();
    assert!(metrics.accuracy >= trained.metrics.val.accuracy - 1e-9);
}

#[test]
fn library_errors_name_the_file_or_value() {
    let root = tempfile::tempdir().unwrap();
    let empty = root.path().join("empty");
    std::fs::create_dir_all(empty.join("daisy")).unwrap();
    let options = BottleneckOptions::default();
    let error = bottleneck::train(
        &empty,
        &root.path().join("run"),
        &options,
        &mut Recorder::default(),
    )
    .unwrap_err()
    .to_string();
    assert!(
        error.contains("no class has images") && error.contains("empty"),
        "{error}"
    );

    let unknown = BottleneckOptions {
        backbone: graft::recipe::BackboneChoice::new("resnet9000"),
        ..BottleneckOptions::default()
    };
    let data = root.path().join("flowers");
    copy_flowers(&data, &["daisy", "roses"], 2);
    let error = bottleneck::train(
        &data,
        &root.path().join("run"),
        &unknown,
        &mut Recorder::default(),
    )
    .unwrap_err()
    .to_string();
    assert!(error.contains("unknown backbone `resnet9000`"), "{error}");
    assert!(
        !error.contains("--"),
        "a library error names no flag: {error}"
    );
}

/// An example program built by `cargo test` (target/<profile>/examples/NAME).
fn example(name: &str) -> Command {
    let exe = std::env::current_exe().unwrap();
    // target/<profile>/deps/library-<hash> -> target/<profile>/examples/<name>
    let profile = exe.parent().and_then(Path::parent).unwrap();
    let path = profile.join("examples").join(name);
    assert!(
        path.is_file(),
        "{} is missing: `cargo test` builds the examples",
        path.display()
    );
    Command::new(path)
}

#[test]
fn the_examples_run() {
    let images = shared().join("data/imagenet-sample/images");
    let mut samples: Vec<PathBuf> = std::fs::read_dir(&images)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    samples.sort();
    let cat = samples.first().cloned();
    let sunflower = flower_photos("sunflowers")[0].clone();
    let mut classify = example("classify");
    classify.arg(&sunflower).args(cat.iter());
    let (stdout, _) = ok(classify.output().unwrap());
    assert!(
        stdout.lines().count() == 1 + usize::from(cat.is_some()),
        "{stdout}"
    );
    assert!(stdout.contains("%)"), "{stdout}");

    let root = tempfile::tempdir().unwrap();
    let data = root.path().join("flowers");
    copy_flowers(&data, &["daisy", "sunflowers"], 10);
    let out = root.path().join("run");
    let (stdout, _) = ok(example("train_head")
        .arg(&data)
        .arg(&out)
        .arg(&sunflower)
        .env("GRAFT_HOME", graft::weights::store::graft_home())
        .output()
        .unwrap());
    assert!(stdout.contains("validation accuracy"), "{stdout}");
    assert!(stdout.contains(": sunflowers"), "{stdout}");
    assert!(out.join(run::MODEL_FILE).is_file());

    let tuned = root.path().join("tuned");
    let (stdout, _) = ok(example("finetune")
        .arg(&data)
        .arg(&tuned)
        .env("GRAFT_HOME", graft::weights::store::graft_home())
        .output()
        .unwrap());
    assert!(stdout.contains("plan: head round"), "{stdout}");
    assert!(stdout.contains("trains head + top"), "{stdout}");
    assert!(stdout.contains("fine-tuned:"), "{stdout}");
    // The run directory it wrote opens through the same typed records.
    let model = run::TrainedModel::open(&tuned, None).unwrap();
    assert_eq!(model.card.recipe, graft::train::Recipe::Finetune);
    let record = model.card.hyperparameters.finetune().unwrap();
    assert_eq!(record.stage_starts.len(), 1);
    let plan = run::load_plan(&tuned).unwrap().unwrap();
    assert_eq!(plan.stages[0].trainable_groups, ["head"]);
}

//! Datasets no recipe can learn from are named, not trained on: one class is an error for
//! every recipe (naming the folder and the class), and a split that leaves no validation image
//! says so instead of printing an accuracy of 0 examples; `doctor` reports both.

mod common;

use std::path::Path;
use std::process::Output;

use common::*;

const RECIPES: [&str; 5] = ["head", "logreg", "svm", "knn", "finetune"];

fn train(data: &Path, cache: &Path, recipe: &str, out: &Path) -> Output {
    graft()
        .args(["train", "--recipe", recipe, "--epochs", "2", "--cache-dir"])
        .arg(cache)
        .arg("--out")
        .arg(out)
        .arg(data)
        .output()
        .unwrap()
}

#[test]
fn one_class_is_refused_by_every_recipe_naming_the_folder_and_the_class() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("one-class");
    copy_flowers(&data, &["daisy"], 1);
    for recipe in RECIPES {
        let out = tmp.path().join(recipe);
        let output = train(&data, &tmp.path().join("cache"), recipe, &out);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{recipe} trained: {stderr}");
        assert!(
            stderr.contains(&data.display().to_string())
                && stderr.contains("`daisy` (1 image)")
                && stderr.contains("at least two classes"),
            "{recipe}: {stderr}"
        );
        assert!(!out.join("model.json").exists(), "{recipe} saved a run");
    }
}

#[test]
fn two_classes_of_one_photo_train_without_a_validation_split_and_say_so() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("tiny");
    copy_flowers(&data, &["daisy", "roses"], 1);
    for recipe in ["head", "logreg"] {
        let out = tmp.path().join(recipe);
        let (stdout, stderr) = ok(train(&data, &tmp.path().join("cache"), recipe, &out));
        let all = format!("{stdout}{stderr}");
        assert!(
            all.contains("no validation split") && all.contains("reports no validation accuracy"),
            "{recipe}: {all}"
        );
        assert!(
            !all.contains("examples)") && !all.contains("lowest validation loss"),
            "{recipe} printed a validation accuracy or a best epoch: {all}"
        );
        let metrics = json(&out.join("metrics.json"));
        assert_eq!(metrics["val_size"], 0, "{recipe}");
    }
}

#[test]
fn doctor_names_a_single_class_and_a_missing_validation_split() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("one-class");
    copy_flowers(&data, &["daisy"], 1);
    let output = graft()
        .args(["doctor", "--json", "--cache-dir"])
        .arg(tmp.path().join("cache"))
        .arg(&data)
        .output()
        .unwrap();
    assert_eq!(
        output.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let checks: Vec<(&str, &str)> = report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            (
                f["check"].as_str().unwrap(),
                f["severity"].as_str().unwrap(),
            )
        })
        .collect();
    assert!(checks.contains(&("too-few-classes", "error")), "{checks:?}");
    assert!(
        checks.contains(&("no-validation-split", "warning")),
        "{checks:?}"
    );
}

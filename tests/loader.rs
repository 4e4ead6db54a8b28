//! Checkpoint loading: every container format, and every kind of mismatch reported by name.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use graft::backbone::{self, Backbone, LoadOptions};
use graft::weights::{Checkpoint, CheckpointFormat, WeightsError};

type Tensors = BTreeMap<String, (Vec<usize>, Vec<f32>)>;

fn float_tensors(path: &Path) -> Tensors {
    Checkpoint::open(path)
        .unwrap()
        .tensors
        .into_iter()
        .filter_map(|(k, t)| t.values.map(|v| (k, (t.shape, v))))
        .collect()
}

fn write_safetensors(tensors: &Tensors, path: &Path) {
    let bytes: Vec<(String, Vec<usize>, Vec<u8>)> = tensors
        .iter()
        .map(|(k, (shape, v))| {
            (
                k.clone(),
                shape.clone(),
                v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            )
        })
        .collect();
    let views: Vec<(String, safetensors::tensor::TensorView)> = bytes
        .iter()
        .map(|(k, shape, b)| {
            let view =
                safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape.clone(), b);
            (k.clone(), view.unwrap())
        })
        .collect();
    safetensors::serialize_to_file(views, None, path).unwrap();
}

fn try_load(name: &str, path: &Path) -> Result<Backbone, WeightsError> {
    Backbone::load(
        backbone::find(name).unwrap(),
        path,
        LoadOptions {
            include_top: true,
            padding: None,
            ..LoadOptions::default()
        },
        &graft::backend::device(),
    )
}

fn mismatch_text(result: Result<Backbone, WeightsError>) -> String {
    match result {
        Err(e @ WeightsError::Mismatch { .. }) => e.to_string(),
        Err(other) => panic!("expected a mismatch report, got: {other}"),
        Ok(_) => panic!("a broken checkpoint loaded without error"),
    }
}

fn logits_of(backbone: &Backbone) -> Vec<f32> {
    let dir = golden_mnv2();
    let (_, input) = read_npy(&dir.join("bird_input.npy"));
    let batch = graft::data::to_batch(&[&input], 224, &graft::backend::device());
    backbone
        .logits(batch)
        .unwrap()
        .into_data()
        .try_into_vec::<f32>()
        .unwrap()
}

#[test]
fn legacy_pth_lists_every_tensor_of_the_golden_inventory() {
    let ckpt = Checkpoint::open(&store_weights("efficientnet-lite0")).unwrap();
    assert_eq!(ckpt.format, CheckpointFormat::PytorchLegacy);
    // checkpoint_tensors.txt: name, shape, dtype, strides, ... for all 296 entries. The
    // values themselves (read through their TF strides) are checked by the parity tests.
    let inventory = std::fs::read_to_string(golden_lite0().join("checkpoint_tensors.txt")).unwrap();
    let rows: Vec<&str> = inventory.lines().filter(|l| !l.starts_with('#')).collect();
    assert_eq!(rows.len(), 296);
    assert_eq!(ckpt.tensors.len(), 296);
    for row in rows {
        let fields: Vec<&str> = row.split('\t').collect();
        let shape: Vec<usize> = fields[1]
            .trim_matches(|c| c == '[' || c == ']')
            .split(',')
            .filter(|s| !s.trim().is_empty())
            .map(|s| s.trim().parse().unwrap())
            .collect();
        let stored = &ckpt.tensors[fields[0]];
        assert_eq!(stored.shape, shape, "{}", fields[0]);
        assert_eq!(
            stored.values.is_some(),
            fields[2] == "float32",
            "{}",
            fields[0]
        );
    }
}

#[test]
fn zip_pth_and_safetensors_give_identical_models() {
    let dir = tempfile::tempdir().unwrap();
    let pth = dir.path().join("mobilenet_v2.pth");
    let script =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/safetensors_to_zip_pth.py");
    let status = Command::new("python3")
        .arg(script)
        .arg(mnv2_weights())
        .arg(&pth)
        .status()
        .expect("python3 runs the zip .pth writer");
    assert!(status.success());
    assert_eq!(
        Checkpoint::open(&pth).unwrap().format,
        CheckpointFormat::PytorchZip
    );
    let from_zip = try_load("mobilenet-v2-tf", &pth).unwrap();
    let from_st = try_load("mobilenet-v2-tf", &mnv2_weights()).unwrap();
    assert_eq!(logits_of(&from_zip), logits_of(&from_st));
}

#[test]
fn wrapped_keys_are_found_under_their_prefix() {
    let dir = tempfile::tempdir().unwrap();
    let wrapped: Tensors = float_tensors(&mnv2_weights())
        .into_iter()
        .map(|(k, v)| (format!("module.{k}"), v))
        .collect();
    let path = dir.path().join("wrapped.safetensors");
    write_safetensors(&wrapped, &path);
    let model = try_load("mobilenet-v2-tf", &path).unwrap();
    let reference = try_load("mobilenet-v2-tf", &mnv2_weights()).unwrap();
    assert_eq!(logits_of(&model), logits_of(&reference));
}

fn broken(edit: impl FnOnce(&mut Tensors)) -> (tempfile::TempDir, PathBuf) {
    let mut tensors = float_tensors(&mnv2_weights());
    edit(&mut tensors);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("broken.safetensors");
    write_safetensors(&tensors, &path);
    (dir, path)
}

#[test]
fn missing_tensor_is_named() {
    let (_dir, path) = broken(|t| {
        t.remove("features.3.conv.1.0.weight");
    });
    let text = mismatch_text(try_load("mobilenet-v2-tf", &path));
    assert!(
        text.contains("missing tensor: features.3.conv.1.0.weight"),
        "{text}"
    );
    assert!(text.contains("broken.safetensors"), "{text}");
}

#[test]
fn wrong_shape_and_unexpected_tensors_are_named() {
    let (_dir, path) = broken(|t| {
        t.insert("classifier.1.bias".into(), (vec![999], vec![0.0; 999]));
        t.insert("extra.weight".into(), (vec![2], vec![0.0; 2]));
    });
    let text = mismatch_text(try_load("mobilenet-v2-tf", &path));
    assert!(
        text.contains("wrong shape: classifier.1.bias: the model needs [1000], the file has [999]"),
        "{text}"
    );
    assert!(text.contains("unexpected tensor: extra.weight"), "{text}");
}

#[test]
fn nan_weights_are_refused() {
    let (_dir, path) = broken(|t| {
        t.get_mut("features.18.1.weight").unwrap().1[7] = f32::NAN;
    });
    let text = mismatch_text(try_load("mobilenet-v2-tf", &path));
    assert!(
        text.contains("NaN or infinite values: features.18.1.weight"),
        "{text}"
    );
}

#[test]
fn wrong_architecture_is_a_mismatch() {
    let text = mismatch_text(try_load(
        "mobilenet-v2-tf",
        &store_weights("efficientnet-lite0"),
    ));
    assert!(
        text.contains("missing tensor: features.0.0.weight"),
        "{text}"
    );
    assert!(
        text.contains("unexpected tensor: _conv_stem.weight"),
        "{text}"
    );
}

#[test]
fn truncated_files_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    for source in [store_weights("efficientnet-lite0"), mnv2_weights()] {
        let bytes = std::fs::read(&source).unwrap();
        let path = dir.path().join(source.file_name().unwrap());
        std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
        let name = if source.extension().unwrap() == "pth" {
            "efficientnet-lite0"
        } else {
            "mobilenet-v2-tf"
        };
        match try_load(name, &path) {
            Err(WeightsError::Invalid { path: p, problem }) => {
                assert_eq!(p, path);
                assert!(!problem.is_empty());
            }
            Err(other) => panic!("{}: unexpected error kind: {other}", path.display()),
            Ok(_) => panic!("{}: a truncated checkpoint loaded", path.display()),
        }
    }
    let empty = dir.path().join("empty.pth");
    std::fs::write(&empty, b"").unwrap();
    let err = try_load("efficientnet-lite0", &empty)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("empty.pth") && err.contains("empty"), "{err}");
}

#[test]
fn include_top_false_drops_the_classifier_quietly() {
    let backbone = Backbone::load(
        backbone::find("efficientnet-lite0").unwrap(),
        &store_weights("efficientnet-lite0"),
        LoadOptions {
            include_top: false,
            padding: None,
            ..LoadOptions::default()
        },
        &graft::backend::device(),
    )
    .unwrap();
    assert!(!backbone.net.has_classifier());
    assert_eq!(backbone.config.feature_dim, 1280);
}

//! The backbones reproduce the PyTorch goldens in ../shared to 1e-4.

mod common;

use std::path::Path;

use burn::tensor::Tensor;
use common::*;
use graft::backbone::{Backbone, PaddingMode, SourceConfig};
use graft::data::preprocess::{crop_and_resize, normalize};
use graft::data::{DecodeLimits, decode_rgb, to_batch};

/// Preprocess the lossless `<name>_224.png` of `dir` with the backbone's normalisation, and
/// check it equals the golden network input.
fn golden_inputs(dir: &Path, config: &SourceConfig) -> Vec<Vec<f32>> {
    GOLDEN_IMAGES
        .iter()
        .map(|name| {
            let png = decode_rgb(
                &dir.join(format!("{name}_224.png")),
                DecodeLimits::default(),
            )
            .unwrap();
            let x = normalize(&png, &config.normalization);
            let (shape, expected) = read_npy(&dir.join(format!("{name}_input.npy")));
            assert_eq!(shape, [1, 3, 224, 224]);
            let err = max_abs_diff(&x, &expected);
            assert!(err <= 1e-6, "{name}: input differs by {err}");
            x
        })
        .collect()
}

fn rows(t: Tensor<2>) -> Vec<Vec<f32>> {
    let [_, d] = t.dims();
    let v = t.into_data().try_into_vec::<f32>().unwrap();
    v.chunks(d).map(|c| c.to_vec()).collect()
}

fn check_outputs(backbone: &Backbone, dir: &Path, logits_suffix: &str, check_features: bool) {
    let inputs = golden_inputs(dir, &backbone.config);
    let batch = to_batch(
        &inputs.iter().collect::<Vec<_>>(),
        224,
        &graft::backend::device(),
    );
    let features = rows(backbone.features(batch.clone()));
    let logits = rows(backbone.logits(batch).unwrap());
    for (i, name) in GOLDEN_IMAGES.iter().enumerate() {
        if check_features {
            let (_, f) = read_npy(&dir.join(format!("{name}_features.npy")));
            let err = max_abs_diff(&features[i], &f);
            assert!(err < 1e-4, "{name}: features differ by {err}");
        }
        let (_, l) = read_npy(&dir.join(format!("{name}_{logits_suffix}.npy")));
        let err = max_abs_diff(&logits[i], &l);
        assert!(
            err < 1e-4,
            "{name}: logits ({logits_suffix}) differ by {err}"
        );
    }
}

/// The stem, stage and head activations of the first golden image, from the burn network and,
/// when prepared for inference, from the fused CPU network (NHWC, transposed here).
fn check_taps(backbone: &Backbone, dir: &Path, tolerance: f32) {
    let input = golden_inputs(dir, &backbone.config).swap_remove(0);
    let batch = to_batch(&[&input], 224, &graft::backend::device());
    let taps: Vec<(String, Vec<usize>, Vec<f32>)> = backbone
        .net
        .as_mbconv()
        .unwrap()
        .forward_taps(batch)
        .into_iter()
        .map(|tap| {
            let shape = tap.value.dims().to_vec();
            (
                tap.name,
                shape,
                tap.value.into_data().try_into_vec().unwrap(),
            )
        })
        .collect();
    compare_taps(&taps, dir, tolerance);
    if let Some(fused) = backbone.fused() {
        let taps: Vec<_> = fused
            .forward_taps(&input, 224, 224)
            .into_iter()
            .map(|tap| {
                let (h, w, c) = (tap.height, tap.width, tap.channels);
                let mut nchw = vec![0.0; c * h * w];
                for (pixel, values) in tap.values.chunks_exact(c).enumerate() {
                    for (channel, v) in values.iter().enumerate() {
                        nchw[channel * h * w + pixel] = *v;
                    }
                }
                (format!("fused {}", tap.name), vec![1, c, h, w], nchw)
            })
            .collect();
        compare_taps(&taps, dir, tolerance);
    }
}

fn compare_taps(taps: &[(String, Vec<usize>, Vec<f32>)], dir: &Path, tolerance: f32) {
    assert_eq!(taps.len(), 9, "stem, 7 stages, head");
    for (name, shape, got) in taps {
        let golden_name = name.trim_start_matches("fused ");
        let (expected_shape, expected) = read_npy(&dir.join(format!("bird_act_{golden_name}.npy")));
        assert_eq!(shape, &expected_shape, "{name}");
        let err = max_abs_diff(got, &expected);
        // Unbounded stage outputs (no activation after the projection) reach tens; hold them
        // to the same relative precision as the unit-scale maps.
        let scale = expected.iter().fold(1.0f32, |m, v| m.max(v.abs()));
        assert!(
            err < tolerance * scale.max(6.0) / 6.0,
            "bird {name}: activation differs by {err} (values up to {scale})"
        );
    }
}

#[test]
fn efficientnet_lite0_matches_pytorch_features_logits_and_activations() {
    let backbone = load(
        "efficientnet-lite0",
        &store_weights("efficientnet-lite0"),
        true,
        None,
    );
    check_outputs(&backbone, &golden_lite0(), "logits", true);
    check_taps(&backbone, &golden_lite0(), 1e-4);
    // The inference form (BatchNorm folded, fused CPU kernels) to the same precision.
    let fused = backbone.for_inference();
    assert_eq!(fused.fused().is_some(), graft::backend::fused_cpu());
    check_outputs(&fused, &golden_lite0(), "logits", true);
    check_taps(&fused, &golden_lite0(), 1e-4);
}

#[test]
fn mobilenet_v2_tf_weights_match_with_tf_same_padding() {
    // These TF-trained weights default to TF SAME padding (their source config).
    let backbone = load("mobilenet-v2-tf", &mnv2_weights(), true, None);
    assert_eq!(backbone.config.padding, PaddingMode::TfSame);
    check_outputs(&backbone, &golden_mnv2(), "logits_tf_same", false);
    check_outputs(
        &backbone.for_inference(),
        &golden_mnv2(),
        "logits_tf_same",
        false,
    );
}

#[test]
fn mobilenet_v2_matches_torchvision_with_symmetric_padding() {
    // torchvision's architecture unchanged: the main goldens (features, logits, activations).
    let backbone = load(
        "mobilenet-v2-tf",
        &mnv2_weights(),
        true,
        Some(PaddingMode::Symmetric),
    );
    check_outputs(&backbone, &golden_mnv2(), "logits", true);
    check_taps(&backbone, &golden_mnv2(), 2e-4);
    let folded = backbone.for_inference();
    check_outputs(&folded, &golden_mnv2(), "logits", true);
    check_taps(&folded, &golden_mnv2(), 2e-4);
}

#[test]
fn own_crop_and_resize_give_pillows_pixels_and_keep_top1() {
    let backbone = load(
        "efficientnet-lite0",
        &store_weights("efficientnet-lite0"),
        true,
        None,
    );
    let dir = golden_lite0();
    let mut inputs = Vec::new();
    for name in GOLDEN_IMAGES {
        let source = decode_rgb(&golden_source(name), DecodeLimits::default()).unwrap();
        let ours = crop_and_resize(&source, &backbone.config);
        let pillow = decode_rgb(
            &dir.join(format!("{name}_224.png")),
            DecodeLimits::default(),
        )
        .unwrap();
        assert_eq!(ours.dimensions(), pillow.dimensions());
        let diffs: Vec<i32> = ours
            .as_raw()
            .iter()
            .zip(pillow.as_raw())
            .map(|(a, b)| (i32::from(*a) - i32::from(*b)).abs())
            .collect();
        let mean = diffs.iter().sum::<i32>() as f64 / diffs.len() as f64;
        let max = *diffs.iter().max().unwrap();
        eprintln!("{name}: mean abs diff {mean:.4}, max {max} grey levels");
        if golden_source(name).extension().is_some_and(|e| e == "bmp") {
            // Lossless source: the same pixels in, so Pillow's resize gives the same out.
            assert_eq!(max, 0, "{name}: differs from Pillow's resize");
        } else {
            // JPEG: libjpeg-turbo (under Pillow) and graft's decoder round differently (0.015
            // and 0.018 grey levels on average, 2 at most, on these two photos).
            assert!(mean < 0.05, "{name}: mean abs diff {mean} grey levels");
            assert!(max <= 3, "{name}: max abs diff {max} grey levels");
        }
        inputs.push(normalize(&ours, &backbone.config.normalization));
    }
    let batch = to_batch(
        &inputs.iter().collect::<Vec<_>>(),
        224,
        &graft::backend::device(),
    );
    let logits = rows(backbone.logits(batch).unwrap());
    for (i, name) in GOLDEN_IMAGES.iter().enumerate() {
        let (_, golden) = read_npy(&dir.join(format!("{name}_logits.npy")));
        assert_eq!(argmax(&logits[i]), argmax(&golden), "{name}: top-1 changed");
    }
}

//! ResNet (BasicBlock, Bottleneck), ConvNeXt and ViT (torchvision's and timm's layouts) and
//! DINOv2 (with and without registers; at 518 px and at 224 with the position embedding
//! resampled) reproduce torchvision / timm to 1e-4: pooled features and logits of two real
//! images, and every layer group's output for the first. The fixtures (random weights stored in F16, goldens computed
//! from those same weights) come from tests/support/make_backbone_fixtures.py; keys.json holds
//! the key names and shapes of the full-size models, checked against graft's layouts here.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use burn::tensor::{Tensor, TensorData};
use graft::backbone::convnext::{self, ConvNeXtLayout, ConvNeXtSpec};
use graft::backbone::resnet::{self, ResBlockKind, ResNetSpec};
use graft::backbone::vit::{self, VitLayout, VitPool, VitSpec};
use graft::backbone::{Arch, Backbone, Network, PaddingMode, Precision};
use graft::weights::Checkpoint;
use graft::weights::checkpoint::StoredTensor;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/backbones")
}

fn golden(name: &str, key: &str) -> (Vec<usize>, Vec<f32>) {
    let path = fixtures().join(format!("{name}.golden.safetensors"));
    let file = Checkpoint::open(&path).unwrap();
    let stored = &file.tensors[key];
    (stored.shape.clone(), stored.values.clone().unwrap())
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "length mismatch");
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

fn values<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data().try_into_vec::<f32>().unwrap()
}

/// Saving the loaded network (what fine-tuning and pretraining write) gives back the
/// checkpoint: the same float tensors under the same keys, nothing more.
fn check_saved_keys(name: &str, net: &Network, arch: &Arch, checkpoint: &Checkpoint) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("saved.safetensors");
    graft::backbone::export::save_safetensors(net, arch, &path).unwrap();
    let saved = Checkpoint::open(&path).unwrap();
    let floats: BTreeMap<&String, &StoredTensor> = checkpoint
        .tensors
        .iter()
        .filter(|(_, t)| t.values.is_some())
        .collect();
    let saved_keys: Vec<&String> = saved.tensors.keys().collect();
    let source_keys: Vec<&String> = floats.keys().copied().collect();
    assert_eq!(saved_keys, source_keys, "{name}: saved keys");
    for (key, stored) in floats {
        let again = &saved.tensors[key];
        assert_eq!(again.shape, stored.shape, "{name}: {key}");
        assert!(again.values == stored.values, "{name}: {key} values differ");
    }
}

/// Load the fixture `name` into `arch`'s network and compare with its goldens.
fn check(name: &str, arch: Arch) {
    let device = graft::backend::device();
    let path = fixtures().join(format!("{name}.weights.safetensors"));
    let checkpoint = Checkpoint::open(&path).unwrap();
    let (net, report) = Network::load(
        &arch,
        &checkpoint,
        PaddingMode::Symmetric,
        1e-5,
        true,
        &device,
    );
    assert!(report.is_clean(), "{name}: {report}");
    check_saved_keys(name, &net, &arch, &checkpoint);

    let (shape, input) = golden(name, "input");
    let x = Tensor::<4>::from_data(
        TensorData::new(input, [shape[0], shape[1], shape[2], shape[3]]),
        &device,
    );
    let features = values(net.forward_features(x.clone()));
    let err = max_abs_diff(&features, &golden(name, "features").1);
    assert!(err < 1e-4, "{name}: features differ by {err}");
    let logits = values(net.forward_logits(x.clone()).unwrap());
    let err = max_abs_diff(&logits, &golden(name, "logits").1);
    assert!(err < 1e-4, "{name}: logits differ by {err}");

    // Inference form: ResNet's BatchNorm folded into the convs gives the same features.
    if let Network::ResNet(resnet) = &net {
        let mut folded = resnet.clone();
        folded.fold_batch_norm();
        assert_close(
            name,
            "folded features",
            values(folded.forward_features(x.clone())),
            &golden(name, "features").1,
        );
    }
    check_fused(name, "", net.clone(), x.clone(), "features", Some("logits"));

    let first = x.narrow(0, 0, 1);
    let groups = match &net {
        Network::ResNet(net) => net.forward_groups(first),
        Network::ConvNeXt(net) => net.forward_groups(first),
        Network::MbConv(_) | Network::Vit(_) => unreachable!(),
    };
    assert_eq!(groups.len(), 5);
    for (k, group) in groups.into_iter().enumerate() {
        let (shape, expected) = golden(name, &format!("group.{k}"));
        assert_eq!(group.dims().to_vec(), shape, "{name}: group {k} shape");
        let err = max_abs_diff(&values(group), &expected);
        assert!(err < 1e-4, "{name}: group {k} differs by {err}");
    }
}

const SMALL_CONVNEXT: ConvNeXtSpec = ConvNeXtSpec {
    depths: [1, 1, 2, 1],
    dims: [16, 32, 64, 128],
    num_classes: 10,
};

#[test]
fn resnet_basic_block_matches_torchvision() {
    let spec = ResNetSpec {
        num_classes: 10,
        ..ResNetSpec::new(ResBlockKind::Basic, [1, 1, 1, 1])
    };
    check("resnet_basic", Arch::ResNet(spec));
}

#[test]
fn resnet_bottleneck_matches_torchvision() {
    let spec = ResNetSpec {
        num_classes: 10,
        width_per_group: 16,
        ..ResNetSpec::new(ResBlockKind::Bottleneck, [1, 1, 1, 1])
    };
    check("resnet_bottleneck", Arch::ResNet(spec));
}

#[test]
fn convnext_matches_torchvision() {
    check(
        "convnext_tv",
        Arch::ConvNeXt {
            spec: SMALL_CONVNEXT,
            layout: ConvNeXtLayout::Torchvision,
        },
    );
}

#[test]
fn convnext_matches_timm() {
    check(
        "convnext_timm",
        Arch::ConvNeXt {
            spec: SMALL_CONVNEXT,
            layout: ConvNeXtLayout::Timm,
        },
    );
}

fn tensor(name: &str, key: &str) -> Tensor<4> {
    let (shape, values) = golden(name, key);
    Tensor::from_data(
        TensorData::new(values, [shape[0], shape[1], shape[2], shape[3]]),
        &graft::backend::device(),
    )
}

fn assert_close(name: &str, what: &str, got: Vec<f32>, expected: &[f32]) {
    let err = max_abs_diff(&got, expected);
    assert!(err < 1e-4, "{name}: {what} differ by {err}");
}

/// The fused CPU form of `net` (what predict and extract run) against the goldens `features`
/// and, where given, `logits`; `what` qualifies the input in messages.
fn check_fused(
    name: &str,
    what: &str,
    net: Network,
    x: Tensor<4>,
    features: &str,
    logits: Option<&str>,
) {
    // Only the inference form is used: any entry's source config will do.
    let config = graft::backbone::find("resnet18")
        .unwrap()
        .source_config(None);
    let fused = Backbone::new(config, net, "fixture".into()).for_inference();
    assert_eq!(fused.runs_fused(), graft::backend::fused_cpu());
    assert_close(
        name,
        &format!("fused {what}features"),
        values(fused.features(x.clone())),
        &golden(name, features).1,
    );
    // On one worker thread the images go through the fused forms' grouped stages together
    // (ResNet's deep stages run a group of images per task).
    let one_thread = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .unwrap();
    assert_close(
        name,
        &format!("fused {what}features, images grouped"),
        values(one_thread.install(|| fused.features(x.clone()))),
        &golden(name, features).1,
    );
    if let Some(logits) = logits {
        assert_close(
            name,
            &format!("fused {what}logits"),
            values(fused.logits(x).unwrap()),
            &golden(name, logits).1,
        );
    }
}

/// The ViT fixture `name` (inputs from vit_inputs.safetensors) against its goldens at 224, and
/// at 518 when `native`.
fn check_vit(name: &str, spec: VitSpec, layout: VitLayout, native: bool) {
    let load = |spec: VitSpec| load_vit(name, spec, layout);
    let net = load(spec);
    let x = tensor("vit_inputs", "input_224");
    assert_close(
        name,
        "features",
        values(net.forward_features(x.clone())),
        &golden(name, "features").1,
    );
    match net.forward_logits(x.clone()) {
        Some(logits) => assert_close(name, "logits", values(logits), &golden(name, "logits").1),
        None => assert_eq!(spec.num_classes, 0, "{name}: no classifier loaded"),
    }
    let Network::Vit(vit) = &net else {
        unreachable!()
    };
    let groups = vit.forward_groups(x.clone().narrow(0, 0, 1));
    assert_eq!(groups.len(), spec.group_names().len());
    for (k, group) in groups.into_iter().enumerate() {
        let (shape, expected) = golden(name, &format!("group.{k}"));
        assert_eq!(group.dims().to_vec(), shape, "{name}: group {k} shape");
        assert_close(name, &format!("group {k}"), values(group), &expected);
    }
    // The fused CPU form (what predict and extract run) gives the same features and logits.
    let logits = (spec.num_classes > 0).then_some("logits");
    check_fused(name, "", load(spec), x.clone(), "features", logits);
    let with_mean = load(VitSpec {
        pool: VitPool::TokenAndPatchMean,
        ..spec
    });
    assert_close(
        name,
        "class token + mean patch features",
        values(with_mean.forward_features(x.clone())),
        &golden(name, "features_avg").1,
    );
    check_fused(
        name,
        "class token + mean patch ",
        with_mean,
        x,
        "features_avg",
        None,
    );
    if native {
        let x = tensor("vit_inputs", "input_518");
        assert_close(
            name,
            "features at 518 px",
            values(net.forward_features(x.clone())),
            &golden(name, "features_518").1,
        );
        check_fused(name, "518 px ", net, x, "features_518", None);
    }
}

/// The ViT fixture `name`'s network.
fn load_vit(name: &str, spec: VitSpec, layout: VitLayout) -> Network {
    let path = fixtures().join(format!("{name}.weights.safetensors"));
    let checkpoint = Checkpoint::open(&path).unwrap();
    let arch = Arch::Vit { spec, layout };
    let (net, report) = Network::load(
        &arch,
        &checkpoint,
        PaddingMode::Symmetric,
        1e-6,
        true,
        &graft::backend::device(),
    );
    assert!(report.is_clean(), "{name}: {report}");
    net
}

const SMALL_VIT: VitSpec = VitSpec {
    mlp_dim: 384,
    num_classes: 10,
    ..VitSpec::new(16, 96, 2, 3)
};

const SMALL_DINOV2: VitSpec = VitSpec {
    depth: 2,
    mlp_dim: 384,
    ..VitSpec::dinov2(96, 3, 0)
};

#[test]
fn vit_matches_torchvision() {
    check_vit("vit_tv", SMALL_VIT, VitLayout::Torchvision, false);
}

#[test]
fn vit_matches_timm() {
    check_vit("vit_timm", SMALL_VIT, VitLayout::Timm, false);
}

#[test]
fn dinov2_matches_timm_at_518_and_resampled_to_224() {
    check_vit("dinov2", SMALL_DINOV2, VitLayout::Timm, true);
}

#[test]
fn dinov2_with_registers_matches_timm_at_518_and_resampled_to_224() {
    let spec = VitSpec {
        depth: 2,
        mlp_dim: 384,
        ..VitSpec::dinov2(96, 3, 4)
    };
    check_vit("dinov2_reg4", spec, VitLayout::Timm, true);
}

/// A checkpoint with the key names and shapes of a real model (values zero).
fn shaped_checkpoint(model: &str) -> Checkpoint {
    let text = std::fs::read_to_string(fixtures().join("keys.json")).unwrap();
    let keys: BTreeMap<String, Vec<(String, Vec<usize>)>> = serde_json::from_str(&text).unwrap();
    let tensors = keys[model]
        .iter()
        .map(|(key, shape)| {
            let n = shape.iter().product();
            let values = (!key.ends_with("num_batches_tracked")).then(|| vec![0.0; n]);
            let stored = StoredTensor {
                shape: shape.clone(),
                values,
            };
            (key.clone(), stored)
        })
        .collect();
    Checkpoint {
        path: PathBuf::from(model),
        format: graft::weights::checkpoint::CheckpointFormat::Safetensors,
        tensors,
    }
}

#[test]
fn full_size_layouts_match_the_published_key_sets() {
    let device = graft::backend::device();
    let cases = [
        ("resnet18", Arch::ResNet(resnet::RESNET18)),
        ("resnet50", Arch::ResNet(resnet::RESNET50)),
        (
            "convnext_tiny.tv",
            Arch::ConvNeXt {
                spec: convnext::CONVNEXT_TINY,
                layout: ConvNeXtLayout::Torchvision,
            },
        ),
        (
            "convnext_tiny.timm",
            Arch::ConvNeXt {
                spec: convnext::CONVNEXT_TINY,
                layout: ConvNeXtLayout::Timm,
            },
        ),
        (
            "vit_b_16.tv",
            Arch::Vit {
                spec: vit::VIT_B_16,
                layout: VitLayout::Torchvision,
            },
        ),
        (
            "vit_small_patch16_224.timm",
            Arch::Vit {
                spec: vit::VIT_S_16,
                layout: VitLayout::Timm,
            },
        ),
        (
            "vit_small_patch14_dinov2.timm",
            Arch::Vit {
                spec: vit::DINOV2_S_14,
                layout: VitLayout::Timm,
            },
        ),
        (
            "vit_small_patch14_reg4_dinov2.timm",
            Arch::Vit {
                spec: vit::DINOV2_S_14_REG4,
                layout: VitLayout::Timm,
            },
        ),
    ];
    for (model, arch) in cases {
        let checkpoint = shaped_checkpoint(model);
        let (_, report) = Network::load(
            &arch,
            &checkpoint,
            PaddingMode::Symmetric,
            1e-5,
            true,
            &device,
        );
        assert!(report.is_clean(), "{model}: {report}");
    }
    // A family's layout does not load another family's keys.
    let (_, report) = Network::load(
        &Arch::ResNet(resnet::RESNET18),
        &shaped_checkpoint("resnet50"),
        PaddingMode::Symmetric,
        1e-5,
        true,
        &device,
    );
    assert!(!report.is_clean());
}

/// `--precision bf16`: the products in bfloat16 on AMX tiles stay close to timm's float32
/// features (DINOv2 with registers, resampled to 224 px; ViT-S/16 layout with its logits).
#[test]
fn vit_in_bfloat16_stays_close_to_timm() {
    let dinov2 = VitSpec {
        depth: 2,
        mlp_dim: 384,
        ..VitSpec::dinov2(96, 3, 4)
    };
    for (name, spec, outputs) in [
        ("dinov2_reg4", dinov2, &["features"][..]),
        ("vit_timm", SMALL_VIT, &["features", "logits"][..]),
    ] {
        let mut config = graft::backbone::find("vit_small_patch16_224")
            .unwrap()
            .source_config(None);
        config.precision = Precision::Bf16;
        let net = load_vit(name, spec, VitLayout::Timm);
        let backbone = Backbone::new(config, net, "fixture".into()).for_inference();
        if !(graft::kernels::amx::available() && graft::backend::fused_cpu()) {
            // Refused, and the config says what runs.
            assert_eq!(backbone.config.precision, Precision::F32);
            eprintln!("skipped: no AMX bfloat16 on this CPU (float32 kept, as recorded)");
            return;
        }
        assert_eq!(backbone.config.precision, Precision::Bf16);
        let x = tensor("vit_inputs", "input_224");
        for what in outputs {
            let got = match *what {
                "features" => values(backbone.features(x.clone())),
                _ => values(backbone.logits(x.clone()).unwrap()),
            };
            let expected = golden(name, what).1;
            let size = expected.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            let err = max_abs_diff(&got, &expected);
            let dot: f64 = got
                .iter()
                .zip(&expected)
                .map(|(a, b)| f64::from(a * b))
                .sum();
            let norm = |v: &[f32]| v.iter().map(|x| f64::from(x * x)).sum::<f64>().sqrt();
            let cosine = dot / (norm(&got) * norm(&expected));
            eprintln!("{name} {what}: bfloat16 error {err} of {size}, cosine {cosine}");
            // bfloat16 keeps 8 bits of mantissa: about 0.4% per rounded input.
            assert!(err < 0.01 * size, "{name} {what}: {err} of {size}");
            assert!(cosine > 0.9999, "{name} {what}: cosine {cosine}");
            // And it is bfloat16 that ran: float32 matches to 1e-4 (the parity tests).
            assert!(err > 1e-4, "{name} {what}: no bfloat16 rounding seen");
        }
    }
}

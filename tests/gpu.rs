//! The GPU path: burn's generic modules on a Vulkan device (in CI, Mesa's lavapipe, a software
//! Vulkan on the CPU, accepted by `--device gpu:software`; on a machine with a GPU, that GPU).
//! Every family's features and logits against the parity goldens, a fine-tuning step's loss and
//! gradients against the CPU's, and extraction, head training and SimCLR through the command
//! line, with run folders moving between the devices.
//!
//! Built only with `--features vulkan` (or `wgpu`). Without a Vulkan adapter every test says so
//! on stderr and passes, unless `GRAFT_GPU_TESTS=require` (as `.ci/run` sets), where it fails.
//!
//! Tolerance: the GPU kernels sum in another order than the CPU's (tiled matmuls, direct or
//! implicit-GEMM convolutions, tree reductions), so float32 results differ by rounding. Each
//! check prints its largest difference; on lavapipe (Mesa 22.3.6) the largest was 3.6e-5
//! (MobileNetV2's logits), so the GPU is held to the CPU parity tests' 1e-4.
#![cfg(any(feature = "vulkan", feature = "wgpu"))]

mod common;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use burn::module::{Module, ModuleVisitor, Param};
use burn::nn::loss::CrossEntropyLossConfig;
use burn::optim::GradientsParams;
use burn::tensor::{Device, Int, Tensor, TensorData};
use common::*;
use graft::backbone::convnext::{ConvNeXtLayout, ConvNeXtSpec};
use graft::backbone::resnet::{ResBlockKind, ResNetSpec};
use graft::backbone::vit::{VitLayout, VitSpec};
use graft::backbone::{Arch, Network, PaddingMode};
use graft::backend::DeviceChoice;
use graft::data::preprocess::normalize;
use graft::data::{DecodeLimits, decode_rgb};
use graft::head::Head;
use graft::train::backbone_pass::{BackbonePass, backbone_backward, training_pass};
use graft::train::finetune::{BnMode, FinetuneModel, new_model, set_trainable};
use graft::train::simclr::{SimclrModel, nt_xent};
use graft::weights::Checkpoint;

/// Largest absolute difference allowed between the GPU's float32 results and the goldens (or the
/// CPU's): the CPU parity tests' bound.
const GPU_TOLERANCE: f32 = 1e-4;

/// The GPU device, picked once for this test process, or `None` (test skipped) without one.
fn gpu() -> Option<Device> {
    static PICKED: OnceLock<Result<String, String>> = OnceLock::new();
    let picked = PICKED.get_or_init(|| {
        graft::backend::set_device_choice(DeviceChoice::GpuSoftware)
            .map(|note| note.unwrap_or_default())
            .map_err(|e| e.to_string())
    });
    match picked {
        Ok(_) => Some(graft::backend::device()),
        Err(why) if std::env::var("GRAFT_GPU_TESTS").as_deref() == Ok("require") => {
            panic!("GRAFT_GPU_TESTS=require, but there is no GPU: {why}")
        }
        Err(why) => {
            eprintln!("skipped: no Vulkan adapter ({why})");
            None
        }
    }
}

fn values<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data().try_into_vec::<f32>().unwrap()
}

fn assert_close(what: &str, got: &[f32], expected: &[f32], tolerance: f32) -> f32 {
    let err = max_abs_diff(got, expected);
    eprintln!("{what}: largest difference {err:.2e}");
    assert!(
        err < tolerance,
        "{what}: differs by {err} (tolerance {tolerance})"
    );
    err
}

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/backbones")
}

fn golden(name: &str, key: &str) -> (Vec<usize>, Vec<f32>) {
    let file = Checkpoint::open(&fixtures().join(format!("{name}.golden.safetensors"))).unwrap();
    let stored = &file.tensors[key];
    (stored.shape.clone(), stored.values.clone().unwrap())
}

fn input(name: &str, key: &str, device: &Device) -> Tensor<4> {
    let (shape, values) = golden(name, key);
    Tensor::from_data(
        TensorData::new(values, [shape[0], shape[1], shape[2], shape[3]]),
        device,
    )
}

/// The random-weight fixture `name` (tests/support/make_backbone_fixtures.py) as `arch` on the
/// GPU, against its torchvision / timm goldens.
fn check_fixture(name: &str, arch: Arch, bn_eps: f64, x: (&str, &str), logits: bool) {
    let Some(device) = gpu() else { return };
    let checkpoint =
        Checkpoint::open(&fixtures().join(format!("{name}.weights.safetensors"))).unwrap();
    let (net, report) = Network::load(
        &arch,
        &checkpoint,
        PaddingMode::Symmetric,
        bn_eps,
        true,
        &device,
    );
    assert!(report.is_clean(), "{name}: {report}");
    let x = input(x.0, x.1, &device);
    assert_close(
        &format!("{name} features"),
        &values(net.forward_features(x.clone())),
        &golden(name, "features").1,
        GPU_TOLERANCE,
    );
    if logits {
        assert_close(
            &format!("{name} logits"),
            &values(net.forward_logits(x).unwrap()),
            &golden(name, "logits").1,
            GPU_TOLERANCE,
        );
    }
}

#[test]
fn resnets_match_torchvision() {
    for (name, kind, width) in [
        ("resnet_basic", ResBlockKind::Basic, 64),
        ("resnet_bottleneck", ResBlockKind::Bottleneck, 16),
    ] {
        let spec = ResNetSpec {
            num_classes: 10,
            width_per_group: width,
            ..ResNetSpec::new(kind, [1, 1, 1, 1])
        };
        check_fixture(name, Arch::ResNet(spec), 1e-5, (name, "input"), true);
    }
}

#[test]
fn convnexts_match_torchvision_and_timm() {
    let spec = ConvNeXtSpec {
        depths: [1, 1, 2, 1],
        dims: [16, 32, 64, 128],
        num_classes: 10,
    };
    for (name, layout) in [
        ("convnext_tv", ConvNeXtLayout::Torchvision),
        ("convnext_timm", ConvNeXtLayout::Timm),
    ] {
        let arch = Arch::ConvNeXt { spec, layout };
        check_fixture(name, arch, 1e-5, (name, "input"), true);
    }
}

#[test]
fn vits_and_dinov2_match_torchvision_and_timm() {
    let vit = VitSpec {
        mlp_dim: 384,
        num_classes: 10,
        ..VitSpec::new(16, 96, 2, 3)
    };
    for (name, layout) in [
        ("vit_tv", VitLayout::Torchvision),
        ("vit_timm", VitLayout::Timm),
    ] {
        let arch = Arch::Vit { spec: vit, layout };
        check_fixture(name, arch, 1e-6, ("vit_inputs", "input_224"), true);
    }
    let dinov2 = VitSpec {
        depth: 2,
        mlp_dim: 384,
        ..VitSpec::dinov2(96, 3, 4)
    };
    let arch = Arch::Vit {
        spec: dinov2,
        layout: VitLayout::Timm,
    };
    check_fixture(
        "dinov2_reg4",
        arch,
        1e-6,
        ("vit_inputs", "input_224"),
        false,
    );
}

/// EfficientNet-Lite0 (its real weights, fetched by tests/all.sh) and MobileNetV2 on the four
/// golden photos, against the PyTorch goldens in ../shared.
#[test]
fn efficientnet_lite0_and_mobilenet_v2_match_pytorch() {
    let Some(device) = gpu() else { return };
    for (backbone, dir, padding, suffix) in [
        (
            load(
                "efficientnet-lite0",
                &store_weights("efficientnet-lite0"),
                true,
                None,
            ),
            golden_lite0(),
            "lite0",
            "logits",
        ),
        (
            load(
                "mobilenet-v2-tf",
                &mnv2_weights(),
                true,
                Some(PaddingMode::Symmetric),
            ),
            golden_mnv2(),
            "mobilenet_v2",
            "logits",
        ),
    ] {
        // What predict and extract run: the inference form, on a GPU burn's modules.
        let backbone = backbone.for_inference();
        assert!(!backbone.runs_fused(), "the GPU runs burn");
        for name in GOLDEN_IMAGES {
            let png = decode_rgb(
                &dir.join(format!("{name}_224.png")),
                DecodeLimits::default(),
            )
            .unwrap();
            let x = normalize(&png, &backbone.config.normalization);
            let batch = graft::data::to_batch(&[&x], 224, &device);
            let (_, features) = read_npy(&dir.join(format!("{name}_features.npy")));
            let (_, logits) = read_npy(&dir.join(format!("{name}_{suffix}.npy")));
            assert_close(
                &format!("{padding} {name} features"),
                &values(backbone.features(batch.clone())),
                &features,
                GPU_TOLERANCE,
            );
            assert_close(
                &format!("{padding} {name} logits"),
                &values(backbone.logits(batch).unwrap()),
                &logits,
                GPU_TOLERANCE,
            );
        }
    }
}

/// Every float parameter's gradient, in the module's order (`None`: no gradient, frozen).
struct GradientsInOrder<'a> {
    grads: &'a GradientsParams,
    out: Vec<Option<Vec<f32>>>,
}

impl ModuleVisitor for GradientsInOrder<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        self.out.push(self.grads.get::<D>(param.id).map(values));
    }
}

/// Loss and gradients of one fine-tuning step of EfficientNet-Lite0 (real weights) with its
/// two top groups and the new top training, BatchNorm as `bn_mode` says, on `device` (the
/// pass that device's training takes: the fused backward on the CPU, burn's autodiff on a GPU).
fn finetune_gradients(device: &Device, bn_mode: BnMode) -> (f32, Vec<Option<Vec<f32>>>) {
    let backbone = lite0();
    let dim = backbone.config.feature_dim;
    // A top of distinct weights, so every logit has its own gradient.
    let head = Head::Linear {
        weight: (0..3 * dim)
            .map(|i| ((i % 17) as f32 - 8.0) * 1e-3)
            .collect(),
        bias: vec![0.1, 0.0, -0.1],
    };
    let autodiff = device.clone().autodiff();
    let mut model: FinetuneModel = new_model(backbone.net, &head, 0.0, &autodiff);
    model.net = top_two_groups_trainable(model.net, bn_mode);
    let x = golden_batch(&["bird", "cat"], &backbone.config, &autodiff);
    let y = Tensor::<1, Int>::from_data(TensorData::new(vec![0i64, 2], [2]), &autodiff);
    let loss_fn = CrossEntropyLossConfig::new().init(&autodiff);
    let (loss, (), mut grads) = backbone_backward(
        &model.net,
        graft::backbone::family::Start::Image,
        x,
        pass_on(device, &model.net, bn_mode),
        |features| (loss_fn.forward(model.top.forward(features), y), ()),
    );
    (
        loss.into_scalar::<f32>(),
        gradients_in_order(&mut grads, &model),
    )
}

/// Loss and gradients of one SimCLR step on `device`, set up as [`finetune_gradients`] (two top
/// groups training, BatchNorm frozen) with a projection head from a fixed seed and NT-Xent over
/// the four golden photos as two pairs of "views" (rows i and i + 2 are positives).
fn simclr_gradients(device: &Device) -> (f32, Vec<Option<Vec<f32>>>) {
    let backbone = lite0();
    let autodiff = device.clone().autodiff();
    let net = top_two_groups_trainable(backbone.net.for_training(&autodiff), BnMode::Frozen);
    let model = SimclrModel::new(net, 16, &mut graft::rng::run_rng(0, 1), &autodiff);
    let names = ["bird", "cat", "parrot", "hot_dog"];
    let x = golden_batch(&names, &backbone.config, &autodiff);
    let (loss, _, mut grads) = backbone_backward(
        &model.net,
        graft::backbone::family::Start::Image,
        x,
        pass_on(device, &model.net, BnMode::Frozen),
        |features| nt_xent(model.project(features), 0.1),
    );
    (
        loss.into_scalar::<f32>(),
        gradients_in_order(&mut grads, &model),
    )
}

/// EfficientNet-Lite0 with its ImageNet weights, on the plain device.
fn lite0() -> graft::backbone::Backbone {
    load(
        "efficientnet-lite0",
        &store_weights("efficientnet-lite0"),
        false,
        None,
    )
}

fn top_two_groups_trainable(net: Network, bn_mode: BnMode) -> Network {
    let groups = net.group_count();
    set_trainable(net, &[groups - 2, groups - 1], bn_mode)
}

/// Golden photos at 224 px, normalised, as one batch (real images: BatchNorm's batch statistics
/// differ from its running ones, so the BatchNorm mode shows in the gradients).
fn golden_batch(
    names: &[&str],
    config: &graft::backbone::SourceConfig,
    device: &Device,
) -> Tensor<4> {
    let images: Vec<Vec<f32>> = names
        .iter()
        .map(|name| {
            let png = decode_rgb(
                &golden_lite0().join(format!("{name}_224.png")),
                DecodeLimits::default(),
            )
            .unwrap();
            normalize(&png, &config.normalization)
        })
        .collect();
    graft::data::to_batch(&images.iter().collect::<Vec<_>>(), 224, device)
}

/// The pass training takes on `device`: the fused backward on the CPU, burn's autodiff on a GPU.
fn pass_on(device: &Device, net: &Network, bn_mode: BnMode) -> BackbonePass {
    if device == &Device::flex() {
        BackbonePass::Fused
    } else {
        training_pass(net, bn_mode)
    }
}

fn gradients_in_order<M: Module>(
    grads: &mut burn::tensor::Gradients,
    model: &M,
) -> Vec<Option<Vec<f32>>> {
    let grads = GradientsParams::from_module(grads, model);
    let mut visitor = GradientsInOrder {
        grads: &grads,
        out: Vec::new(),
    };
    model.visit(&mut visitor);
    visitor.out
}

/// The largest difference between two gradient lists; they must train the same tensors.
fn gradient_difference(cpu: &[Option<Vec<f32>>], gpu: &[Option<Vec<f32>>]) -> (f32, usize) {
    assert_eq!(cpu.len(), gpu.len(), "parameter count");
    let mut worst = 0f32;
    let mut trained = 0;
    for (i, (c, g)) in cpu.iter().zip(gpu).enumerate() {
        match (c, g) {
            (Some(c), Some(g)) => {
                trained += 1;
                // Relative to the tensor's largest gradient: gradients span several magnitudes.
                let scale = c.iter().fold(1e-6f32, |m, v| m.max(v.abs()));
                worst = worst.max(max_abs_diff(c, g) / scale);
            }
            (None, None) => {}
            _ => panic!("parameter {i}: a gradient on one device only"),
        }
    }
    (worst, trained)
}

/// One fine-tuning step with BatchNorm frozen gives the CPU's loss and gradients (the CPU
/// through its fused backward, the GPU through burn's autodiff); BatchNorm left in training
/// mode on the GPU only does not, so this check can tell.
#[test]
fn a_finetuning_step_has_the_cpus_loss_and_gradients() {
    let Some(device) = gpu() else { return };
    let (cpu_loss, cpu) = finetune_gradients(&Device::flex(), BnMode::Frozen);
    let (gpu_loss, on_gpu) = finetune_gradients(&device, BnMode::Frozen);
    eprintln!("loss: CPU {cpu_loss}, GPU {gpu_loss}");
    assert!(
        (cpu_loss - gpu_loss).abs() < 1e-4,
        "loss {cpu_loss} vs {gpu_loss}"
    );
    let (worst, trained) = gradient_difference(&cpu, &on_gpu);
    eprintln!("{trained} trainable tensors, largest relative gradient difference {worst:.2e}");
    assert!(trained > 10, "only {trained} tensors trained");
    assert!(worst < 1e-3, "gradients differ by {worst} (relative)");

    let (_, wrong) = finetune_gradients(&device, BnMode::Train);
    let (worst, _) = gradient_difference(&cpu, &wrong);
    eprintln!("BatchNorm in training mode on the GPU only: {worst:.2e}");
    assert!(
        worst > 1e-2,
        "the check cannot see BatchNorm's mode ({worst})"
    );
}

/// One SimCLR step (projection head and NT-Xent on the GPU, the backbone's top two groups
/// training with BatchNorm frozen) has the CPU's loss and gradients.
#[test]
fn a_simclr_step_has_the_cpus_loss_and_gradients() {
    let Some(device) = gpu() else { return };
    let (cpu_loss, cpu) = simclr_gradients(&Device::flex());
    let (gpu_loss, on_gpu) = simclr_gradients(&device);
    eprintln!("SimCLR loss: CPU {cpu_loss}, GPU {gpu_loss}");
    assert!(
        (cpu_loss - gpu_loss).abs() < 1e-4,
        "loss {cpu_loss} vs {gpu_loss}"
    );
    let (worst, trained) = gradient_difference(&cpu, &on_gpu);
    eprintln!(
        "SimCLR: {trained} trainable tensors, largest relative gradient difference {worst:.2e}"
    );
    // The projection head's four tensors and the backbone's top groups.
    assert!(trained > 14, "only {trained} tensors trained");
    assert!(worst < 1e-3, "gradients differ by {worst} (relative)");
}

/// The graft binary under test (built with the GPU feature) on `device`.
fn graft_on(device: &str) -> std::process::Command {
    let mut cmd = graft();
    cmd.args(["--device", device]);
    cmd
}

/// 2 classes x 4 flower photos.
fn few_flowers(dir: &Path) -> PathBuf {
    let root = dir.join("flowers");
    copy_flowers(&root, &["daisy", "roses"], 4);
    root
}

/// Extraction on the GPU caches rows apart from the CPU's (the device is part of the cache
/// key), equal to them within the tolerance; a head trained on the GPU's rows predicts on the
/// CPU, and one trained on the CPU's predicts on the GPU, each as on its own device.
#[test]
fn extraction_and_runs_move_between_devices() {
    if gpu().is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let data = few_flowers(dir.path());
    let cache = dir.path().join("cache");
    let mut runs = Vec::new();
    for device in ["cpu", "gpu:software"] {
        let out = dir.path().join(format!("run-{}", &device[..3]));
        ok(graft_on(device)
            .args([
                "train",
                "--recipe",
                "head",
                "--epochs",
                "3",
                "--val-fraction",
                "0.25",
            ])
            .arg("--cache-dir")
            .arg(&cache)
            .arg("--out")
            .arg(&out)
            .arg(&data)
            .output()
            .unwrap());
        runs.push(out);
    }
    // Two cache folders (CPU and GPU), each with every photo once, rows close.
    let caches: Vec<PathBuf> = graft::features::maintenance::cache_dirs(&cache).unwrap();
    assert_eq!(caches.len(), 2, "{caches:?}");
    let (a, b) = (rows(&caches[0]), rows(&caches[1]));
    assert_eq!(a.len(), 8);
    assert_eq!(
        a.keys().collect::<std::collections::BTreeSet<_>>(),
        b.keys().collect()
    );
    let mut worst = 0f32;
    for (key, (count, row)) in &a {
        assert_eq!(*count, 1, "{key}");
        worst = worst.max(max_abs_diff(row, &b[key].1));
    }
    eprintln!("extracted rows, CPU against GPU: largest difference {worst:.2e}");
    assert!(worst < GPU_TOLERANCE, "rows differ by {worst}");

    // Each run predicts on the other device as on its own.
    let photo = data
        .join("daisy")
        .read_dir()
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    for run in &runs {
        let probabilities: Vec<Vec<f64>> = ["cpu", "gpu:software"]
            .iter()
            .map(|device| {
                let (stdout, _) = ok(graft_on(device)
                    .args(["predict", "--json", "--model"])
                    .arg(run)
                    .arg(&photo)
                    .output()
                    .unwrap());
                let json: serde_json::Value = serde_json::from_str(&stdout).unwrap();
                json.pointer("/images/0/predictions")
                    .and_then(|top| top.as_array())
                    .unwrap_or_else(|| panic!("no top-k in {stdout}"))
                    .iter()
                    .map(|entry| entry["probability"].as_f64().unwrap())
                    .collect()
            })
            .collect();
        let diff = probabilities[0]
            .iter()
            .zip(&probabilities[1])
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f64::max);
        eprintln!(
            "{}: CPU against GPU probabilities {diff:.2e}",
            run.display()
        );
        assert!(diff < 1e-4, "{}: {probabilities:?}", run.display());
    }
}

/// On a software adapter (lavapipe), `gpu` refuses it with one line saying how to allow it, and
/// `auto` falls back to the CPU; `gpu:software` (what this suite runs on) takes it.
#[test]
fn gpu_and_auto_refuse_a_software_adapter() {
    if gpu().is_none() || !graft::backend::name().contains("software") {
        return; // a real GPU: nothing to refuse
    }
    let out = graft_on("gpu").args(["weights", "list"]).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("a software renderer on the CPU")
            && stderr.contains("--device gpu:software"),
        "{stderr}"
    );
    let (_, stderr) = ok(graft_on("auto").args(["weights", "list"]).output().unwrap());
    assert!(stderr.contains("using the CPU"), "{stderr}");
}

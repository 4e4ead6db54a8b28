use burn::module::{Module, ModuleMapper, Param};
use burn::tensor::{Distribution, Tensor};

use super::*;
use crate::backbone::convnext::{self, ConvNeXt};
use crate::backbone::mbconv::MbNet;
use crate::backbone::vit::{Vit, VitPool, VitSpec};
use crate::backbone::{SourceConfig, find};
use crate::rng::{RunRng, random_tensor, run_rng};

/// Random weights for every float parameter (the families' `init` leaves some at zero or
/// one): fan-in scaled normals for matrices and kernels, around one for vectors (norm scales).
struct Randomise<'a>(&'a mut RunRng);

impl ModuleMapper for Randomise<'_> {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let rng = &mut *self.0;
        param.map(|t| {
            let dims: [usize; D] = t.dims();
            let fan_in = |n: usize| Distribution::Normal(0.0, (1.0 / n as f64).sqrt());
            let distribution = match D {
                1 => Distribution::Uniform(0.5, 1.5),
                2 => fan_in(dims[0]),
                4 => fan_in(dims[1..].iter().product()),
                _ => Distribution::Normal(0.0, 0.5),
            };
            random_tensor::<D>(dims, distribution, rng, &t.device())
        })
    }
}

fn random_top(classes: usize, dim: usize, rng: &mut RunRng) -> LinearTop {
    let normal = Distribution::Normal(0.0, 1.0);
    LinearTop {
        weight: crate::rng::sample(normal, classes * dim, rng),
        bias: crate::rng::sample(normal, classes, rng),
    }
}

fn lite0(rng: &mut RunRng) -> Backbone {
    let info = find("efficientnet-lite0").unwrap();
    let config = info.source_config(None);
    let net = MbNet::init(
        &info.mbconv().unwrap().0,
        config.padding,
        config.bn_eps,
        false,
        rng,
        &crate::backend::device(),
    );
    Backbone::new(config, net, "random".into())
}

fn batch(n: usize, side: [usize; 2], rng: &mut RunRng) -> Tensor<4> {
    let normal = Distribution::Normal(0.0, 1.0);
    random_tensor(
        [n, 3, side[0], side[1]],
        normal,
        rng,
        &crate::backend::device(),
    )
}

/// The largest difference of two maps, relative to the first's largest value.
fn relative_difference(a: &Heatmap, b: &Heatmap) -> f32 {
    assert_eq!(a.values.len(), b.values.len());
    let max = a.values.iter().copied().fold(0.0f32, f32::max);
    assert!(max > 0.0, "an all-zero map compares nothing");
    let worst = a
        .values
        .iter()
        .zip(&b.values)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0f32, f32::max);
    worst / max
}

/// A ResNet-18 with random weights (BatchNorm statistics included in what is folded).
fn resnet18(rng: &mut RunRng) -> Backbone {
    let info = find("resnet18.tv_in1k").unwrap();
    let crate::backbone::Arch::ResNet(spec) = info.arch else {
        unreachable!("resnet18 is a ResNet")
    };
    let net = crate::backbone::resnet::ResNet::init(&spec, false, &crate::backend::device())
        .map(&mut Randomise(rng));
    Backbone::new(info.source_config(None), net, "random".into())
}

/// For a CNN whose linear top sits on the global average of its last maps, CAM (the top's
/// class weights on the maps) is Grad-CAM (burn's autodiff of pooling and top): to 1e-5, on
/// the burn network and on the fused CPU form, for every image of a batch; MBConv and ResNet.
#[test]
fn grad_cam_equals_cam_for_a_linear_top_on_global_average_pooling() {
    let mut rng = run_rng(11, 0);
    let backbone = lite0(&mut rng);
    grad_cam_equals_cam(backbone, &mut rng);
    let backbone = resnet18(&mut rng);
    grad_cam_equals_cam(backbone, &mut rng);
}

fn grad_cam_equals_cam(backbone: Backbone, rng: &mut RunRng) {
    let top = random_top(5, backbone.config.feature_dim, rng);
    let x = batch(3, [96, 80], rng);
    let fused = Backbone::new(
        backbone.config.clone(),
        backbone.net.clone(),
        "random".into(),
    )
    .for_inference();
    for backbone in [&backbone, &fused] {
        let cam = heatmaps_with(backbone, &top, x.clone(), Method::Cam).unwrap();
        let grad_cam = heatmaps_with(backbone, &top, x.clone(), Method::GradCam).unwrap();
        assert_eq!(cam.len(), 3);
        for (c, g) in cam.iter().zip(&grad_cam) {
            assert_eq!((c.class, c.grid), (g.class, g.grid));
            assert_eq!(c.grid, [3, 3], "a 96 x 80 input ends on a 3 x 3 grid");
            let difference = relative_difference(c, g);
            eprintln!("CAM vs Grad-CAM: largest difference {difference:.1e} of the map's maximum");
            assert!(
                difference <= 1e-5,
                "CAM and Grad-CAM differ by {difference}"
            );
        }
    }
    // The fused form's maps are burn's, to float rounding.
    let burn = heatmaps(&backbone, &top, x.clone()).unwrap();
    let fast = heatmaps(&fused, &top, x).unwrap();
    for (a, b) in burn.iter().zip(&fast) {
        assert_eq!(a.class, b.class);
        assert!(relative_difference(a, b) < 1e-3);
    }
}

/// The class a heatmap explains is the top's prediction, and explaining another class
/// gives another map: the class weights matter.
#[test]
fn the_heatmap_follows_the_predicted_class() {
    let mut rng = run_rng(12, 0);
    let backbone = lite0(&mut rng);
    let dim = backbone.config.feature_dim;
    let top = random_top(4, dim, &mut rng);
    let x = batch(2, [64, 64], &mut rng);
    let maps = heatmaps(&backbone, &top, x.clone()).unwrap();
    let features: Vec<f32> = backbone
        .net
        .forward_features(x.clone())
        .into_data()
        .try_into_vec()
        .unwrap();
    let logits = top.logits(&features);
    for (i, map) in maps.iter().enumerate() {
        let row = &logits[i * 4..][..4];
        let best = (0..4).max_by(|&a, &b| row[a].total_cmp(&row[b])).unwrap();
        assert_eq!(map.class, best);
    }
    // The same top with the predicted class ruled out (its bias sunk) predicts another class
    // and lights up other places.
    let class = maps[0].class;
    let mut flipped = top.clone();
    flipped.bias[class] = -1e6;
    let other = heatmaps(&backbone, &flipped, x).unwrap();
    assert_ne!(other[0].class, class);
    assert_ne!(other[0].values, maps[0].values);
}

/// ConvNeXt normalises its pooled features: its default is Grad-CAM, CAM is refused.
#[test]
fn convnext_uses_grad_cam() {
    let mut rng = run_rng(13, 0);
    let spec = convnext::ConvNeXtSpec {
        num_classes: 0,
        ..convnext::ConvNeXtSpec::new([1, 1, 1, 1], [8, 16, 24, 32])
    };
    let net = ConvNeXt::init(&spec, false, &crate::backend::device()).map(&mut Randomise(&mut rng));
    let mut config: SourceConfig = find("convnext_tiny.tv_in1k").unwrap().source_config(None);
    config.feature_dim = 32;
    let backbone = Backbone::new(config, net, "random".into());
    let top = random_top(3, 32, &mut rng);
    let x = batch(2, [64, 64], &mut rng);
    assert_eq!(Method::for_backbone(&backbone), Method::GradCam);
    assert!(heatmaps_with(&backbone, &top, x.clone(), Method::Cam).is_err());
    let maps = heatmaps(&backbone, &top, x.clone()).unwrap();
    assert_eq!(maps[0].grid, [2, 2]);
    let fused =
        Backbone::new(backbone.config.clone(), backbone.net.clone(), "r".into()).for_inference();
    let fast = heatmaps(&fused, &top, x).unwrap();
    for (a, b) in maps.iter().zip(&fast) {
        assert_eq!(a.class, b.class);
        assert!(relative_difference(a, b) < 1e-3);
    }
}

fn tiny_vit(spec: VitSpec, rng: &mut RunRng) -> Backbone {
    let net = Vit::init(&spec, false, &crate::backend::device()).map(&mut Randomise(rng));
    let mut config = find("vit_small_patch16_224.augreg_in21k_ft_in1k")
        .unwrap()
        .source_config(None);
    config.feature_dim = spec.feature_dim();
    Backbone::new(config, net, "random".into())
}

const TINY: VitSpec = VitSpec {
    mlp_dim: 64,
    image_size: 32,
    num_classes: 0,
    ..VitSpec::new(8, 32, 3, 2)
};

/// A ViT's heatmap lies on its patch grid (prefix tokens dropped), is not constant, and is
/// the same from the fused form's tokens as from burn's.
#[test]
fn vit_heatmaps_lie_on_the_patch_grid() {
    let mut rng = run_rng(14, 0);
    let dinov2 = VitSpec {
        image_size: 40,
        reg_tokens: 2,
        layer_scale: true,
        pos_embed_prefix: false,
        pool: VitPool::TokenAndPatchMean,
        ..TINY
    };
    for spec in [TINY, dinov2] {
        let backbone = tiny_vit(spec, &mut rng);
        let top = random_top(3, spec.feature_dim(), &mut rng);
        // 40 x 56 pixels: 5 x 7 patches of 8.
        let x = batch(2, [40, 56], &mut rng);
        let maps = heatmaps(&backbone, &top, x.clone()).unwrap();
        for map in &maps {
            assert_eq!(map.method, Method::GradCam);
            assert_eq!(map.grid, [5, 7]);
            assert_eq!(map.values.len(), 35);
            let (low, high) = map
                .values
                .iter()
                .fold((f32::MAX, f32::MIN), |(l, h), &v| (l.min(v), h.max(v)));
            assert!(high > low, "a constant heatmap: {:?}", map.values);
        }
        let fused = Backbone::new(backbone.config.clone(), backbone.net.clone(), "r".into())
            .for_inference();
        let fast = heatmaps(&fused, &top, x).unwrap();
        for (a, b) in maps.iter().zip(&fast) {
            assert_eq!(a.class, b.class);
            assert!(relative_difference(a, b) < 1e-3);
        }
        assert!(heatmaps_with(&backbone, &top, batch(1, [32, 32], &mut rng), Method::Cam).is_err());
    }
}

#[test]
fn a_knn_top_is_refused_and_widths_are_checked() {
    let knn = Head::Knn {
        bank: crate::head::Bank::Owned(vec![1.0, 0.0]),
        labels: vec![0],
        classes: 1,
        k: 1,
    };
    assert!(matches!(
        LinearTop::from_head(&knn),
        Err(ExplainError::NotLinear)
    ));
    let mut rng = run_rng(15, 0);
    let backbone = lite0(&mut rng);
    let top = random_top(2, 10, &mut rng);
    let error = heatmaps(&backbone, &top, batch(1, [32, 32], &mut rng)).unwrap_err();
    assert!(error.to_string().contains("10 features"), "{error}");
}

#[test]
fn bilinear_upsampling_aligns_pixel_centres() {
    let up = overlay::upsample(&[0.0, 1.0], [1, 2], [1, 4]);
    assert_eq!(up, vec![0.0, 0.25, 0.75, 1.0]);
    let constant = overlay::upsample(&[0.3; 6], [2, 3], [7, 5]);
    assert!(constant.iter().all(|v| (v - 0.3).abs() < 1e-6));
}

#[test]
fn turbo_runs_from_dark_through_blue_green_to_red() {
    let [r, g, b] = overlay::turbo(0.0);
    assert!(r + g + b < 0.5, "dark at 0: {r} {g} {b}");
    let [r, g, b] = overlay::turbo(0.25);
    assert!(b > r && g > r, "blue-cyan at 0.25: {r} {g} {b}");
    let [r, g, b] = overlay::turbo(0.5);
    assert!(g > 0.9 && g > r && g > b, "green at 0.5: {r} {g} {b}");
    let [r, g, b] = overlay::turbo(1.0);
    assert!(r > 0.4 && r > g && r > b, "red at 1: {r} {g} {b}");
}

#[test]
fn spearman_ranks() {
    let a = [1.0, 2.0, 3.0, 4.0];
    assert!((spearman(&a, &[10.0, 20.0, 30.0, 400.0]) - 1.0).abs() < 1e-12);
    assert!((spearman(&a, &[4.0, 3.0, 2.0, 1.0]) + 1.0).abs() < 1e-12);
    // Ties share their mean rank: [1, 2.5, 2.5, 4] against [1, 2, 3, 4].
    let tied = spearman(&a, &[0.0, 5.0, 5.0, 9.0]);
    assert!((tied - 0.948_683_3).abs() < 1e-6, "{tied}");
}

#[test]
fn png_names_follow_the_photo_and_never_collide() {
    let mut taken = HashSet::new();
    let names: Vec<String> = ["a/rose.jpg", "b/rose.jpg", "c/tulip.JPEG", "rose.png"]
        .iter()
        .map(|p| png_name(Path::new(p), &mut taken))
        .collect();
    assert_eq!(names, ["rose.png", "rose-2.png", "tulip.png", "rose-3.png"]);
}

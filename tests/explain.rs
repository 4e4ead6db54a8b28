//! Heatmaps (`graft::explain`) on real weights and through the command line: Adebayo et al.'s
//! model-randomisation sanity check on EfficientNet-Lite0 with its ImageNet weights, and
//! `graft predict --explain` writing one decodable PNG per photo at the model's resolution.

mod common;

use std::path::Path;

use common::*;
use graft::backbone::Backbone;
use graft::backbone::mbconv::MbNet;
use graft::data::{DecodeLimits, load_image, to_batch};
use graft::explain::{Heatmap, LinearTop, heatmaps, spearman};

/// The heatmap of `class` (a one-class top cut from `imagenet`, so the class explained is
/// the same whatever the network predicts) for the photo at `path`.
fn heatmap_of(backbone: &Backbone, imagenet: &LinearTop, class: usize, path: &Path) -> Heatmap {
    let dim = imagenet.dim();
    let top = LinearTop {
        weight: imagenet.weight[class * dim..][..dim].to_vec(),
        bias: vec![imagenet.bias[class]],
    };
    let image = load_image(path, &backbone.config, DecodeLimits::default()).unwrap();
    let batch = to_batch(&[&image], backbone.config.resolution, &backbone.device());
    heatmaps(backbone, &top, batch).unwrap().remove(0)
}

/// Adebayo et al. 2018's cascading model randomisation: with the top of EfficientNet-Lite0
/// re-drawn at random (the head conv, then the last stage too, then the last two), the
/// heatmap of the same class on the same photo no longer ranks its regions as the trained
/// network's does (Spearman's rho < 0.5). A method that ignored the network (an edge
/// detector, or the class weights alone) would pass the photo's structure through unchanged.
#[test]
fn heatmaps_change_when_the_top_blocks_are_randomised() {
    let weights = store_weights("efficientnet-lite0");
    let trained = load("efficientnet-lite0", &weights, true, None);
    let imagenet = LinearTop::imagenet(&trained).unwrap();
    let photo = shared().join("data/imagenet-sample/images/n01530575_brambling.JPEG");
    let reference = {
        let backbone = load("efficientnet-lite0", &weights, true, None).for_inference();
        let image = load_image(&photo, &backbone.config, DecodeLimits::default()).unwrap();
        let batch = to_batch(&[&image], backbone.config.resolution, &backbone.device());
        heatmaps(&backbone, &imagenet, batch).unwrap().remove(0)
    };
    // The trained network sees a brambling (ImageNet class 10) and its map is not flat.
    assert_eq!(reference.class, 10, "predicted {}", reference.class);
    assert_eq!(reference.grid, [7, 7]);
    let class = reference.class;
    let lit = reference.values.iter().filter(|v| **v > 0.0).count();
    assert!((3..49).contains(&lit), "{lit} of 49 cells lit");

    let random = {
        let info = graft::backbone::find("efficientnet-lite0").unwrap();
        let config = info.source_config(None);
        let mut rng = graft::rng::run_rng(2018, 0);
        MbNet::init(
            &info.mbconv().unwrap().0,
            config.padding,
            config.bn_eps,
            true,
            &mut rng,
            &graft::backend::device(),
        )
    };
    let net = trained.net.as_mbconv().unwrap();
    let stage_start = |stage: usize| net.stage_ends[stage - 1] + 1;
    let blocks = net.blocks.len();
    for (what, first_random) in [
        ("head conv", blocks),
        (
            "head conv + last stage",
            stage_start(net.stage_ends.len() - 1),
        ),
        (
            "head conv + last two stages",
            stage_start(net.stage_ends.len() - 2),
        ),
    ] {
        let mut cut = net.clone();
        cut.head = random.head.clone();
        for i in first_random..blocks {
            cut.blocks[i] = random.blocks[i].clone();
        }
        let backbone =
            Backbone::new(trained.config.clone(), cut, "randomised".into()).for_inference();
        let randomised = heatmap_of(&backbone, &imagenet, class, &photo);
        let rho = spearman(&reference.values, &randomised.values);
        eprintln!("{what} randomised: Spearman rho with the trained heatmap {rho:.3}");
        assert!(rho < 0.5, "{what}: rho {rho}");
    }
    // The check can tell: the trained network's own map, recomputed, correlates fully.
    let again = heatmap_of(&trained, &imagenet, class, &photo);
    let rho = spearman(&reference.values, &again.values);
    assert!(rho > 0.99, "recomputed: rho {rho}");
}

/// `graft predict --model RUN --explain DIR` writes one PNG per photo, named after it, of the
/// model's input size, that decodes and is not the plain photo; a kNN run is refused with a
/// message that says why.
#[test]
fn predict_explain_writes_decodable_pngs() {
    store_weights("efficientnet-lite0");
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    copy_flowers(&data, &["daisy", "roses"], 12);
    let cache = dir.path().join("cache");
    let mut photos = flower_photos("daisy")[..2].to_vec();
    photos.extend_from_slice(&flower_photos("roses")[..1]);
    for recipe in ["logreg", "knn"] {
        let run = dir.path().join(recipe);
        ok(graft()
            .args(["train", "--recipe", recipe, "--cache-dir"])
            .arg(&cache)
            .arg("--out")
            .arg(&run)
            .arg(&data)
            .output()
            .unwrap());
        let out = dir.path().join(format!("heatmaps-{recipe}"));
        let output = graft()
            .args(["predict", "--model"])
            .arg(&run)
            .arg("--explain")
            .arg(&out)
            .args(&photos)
            .output()
            .unwrap();
        if recipe == "knn" {
            assert!(!output.status.success());
            let stderr = String::from_utf8_lossy(&output.stderr);
            assert!(
                stderr.contains("kNN") && stderr.contains("linear"),
                "{stderr}"
            );
            continue;
        }
        let (_, stderr) = ok(output);
        for photo in &photos {
            let png = out.join(photo.with_extension("png").file_name().unwrap());
            assert!(
                stderr.contains(&png.display().to_string()),
                "{} not announced: {stderr}",
                png.display()
            );
            let drawn = image::open(&png).unwrap().to_rgb8();
            assert_eq!(drawn.dimensions(), (224, 224), "{}", png.display());
            // The overlay changes the photo's colours: it is not the crop alone.
            let config = graft::backbone::find("efficientnet-lite0")
                .unwrap()
                .source_config(None);
            let rgb =
                graft::data::decode::decode_for(photo, &config, DecodeLimits::default()).unwrap();
            let crop = graft::data::preprocess::crop_and_resize(&rgb, &config);
            let changed = drawn
                .pixels()
                .zip(crop.pixels())
                .filter(|(a, b)| a != b)
                .count();
            assert!(changed > 224 * 224 / 2, "{changed} pixels differ");
        }
    }
}

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
/// network's does: Spearman's rho with the trained map, averaged over the first 12 photos of
/// ../shared/data/imagenet-sample, is below 0.5 at each step. A method that ignored the
/// network (an edge detector, or the class weights alone) would keep the trained map's ranks.
#[test]
fn heatmaps_change_when_the_top_blocks_are_randomised() {
    let weights = store_weights("efficientnet-lite0");
    let trained = load("efficientnet-lite0", &weights, true, None);
    let fused = load("efficientnet-lite0", &weights, true, None).for_inference();
    let imagenet = LinearTop::imagenet(&trained).unwrap();
    let folder = shared().join("data/imagenet-sample/images");
    let mut photos: Vec<_> = std::fs::read_dir(&folder)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    photos.sort();
    photos.truncate(12);

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
    let cascade: Vec<(&str, Backbone)> = [
        ("head conv", blocks),
        (
            "head conv + last stage",
            stage_start(net.stage_ends.len() - 1),
        ),
        (
            "head conv + last two stages",
            stage_start(net.stage_ends.len() - 2),
        ),
    ]
    .into_iter()
    .map(|(what, first_random)| {
        let mut cut = net.clone();
        cut.head = random.head.clone();
        for i in first_random..blocks {
            cut.blocks[i] = random.blocks[i].clone();
        }
        let backbone =
            Backbone::new(trained.config.clone(), cut, "randomised".into()).for_inference();
        (what, backbone)
    })
    .collect();

    let mut sums = vec![0.0; cascade.len()];
    for photo in &photos {
        let reference = {
            let image = load_image(photo, &fused.config, DecodeLimits::default()).unwrap();
            let batch = to_batch(&[&image], fused.config.resolution, &fused.device());
            heatmaps(&fused, &imagenet, batch).unwrap().remove(0)
        };
        assert_eq!(reference.grid, [7, 7]);
        let class = reference.class;
        let rhos: Vec<f64> = cascade
            .iter()
            .map(|(_, backbone)| {
                spearman(
                    &reference.values,
                    &heatmap_of(backbone, &imagenet, class, photo).values,
                )
            })
            .collect();
        eprintln!(
            "{}: class {class}, rho {rhos:.3?}",
            photo.file_name().unwrap().to_string_lossy()
        );
        for (sum, rho) in sums.iter_mut().zip(&rhos) {
            *sum += rho;
        }
        // The check can tell: the trained network's own map, recomputed through burn instead
        // of the fused form, keeps its ranks.
        let again = heatmap_of(&trained, &imagenet, class, photo);
        let rho = spearman(&reference.values, &again.values);
        assert!(rho > 0.99, "{}: recomputed, rho {rho}", photo.display());
    }
    for ((what, _), sum) in cascade.iter().zip(sums) {
        let mean = sum / photos.len() as f64;
        eprintln!("{what} randomised: mean Spearman rho with the trained heatmap {mean:.3}");
        assert!(mean < 0.5, "{what}: mean rho {mean}");
    }
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

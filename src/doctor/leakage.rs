//! Train/validation leakage: validation images that are byte-identical to a training image, or
//! near-identical in the backbone's feature space (re-encoded, resized, lightly edited copies).

use std::collections::HashMap;
use std::path::PathBuf;

use rayon::prelude::*;

use super::{Finding, Severity};
use image::DynamicImage;
use image_hasher::{HashAlg, Hasher, HasherConfig, ImageHash};

use crate::data::{DecodeLimits, decode_rgb};
use crate::features::FeatureMatrix;
use crate::head::l2_normalized;

use super::neighbours::search_across;

const WHY: &str = "a validation image that is also in training is scored on what the model memorised, so validation accuracy overstates accuracy on new photos";

/// For each validation row, the most similar training row by cosine similarity of the pooled
/// backbone features (the blocked exact search of [`super::neighbours`]).
pub fn nearest_training_rows(train: &FeatureMatrix, val: &FeatureMatrix) -> Vec<(usize, f32)> {
    let dim = train.dim;
    let train_rows = l2_normalized(&train.rows, dim);
    let val_rows = l2_normalized(&val.rows, dim);
    let nearest = search_across(&val_rows, &train_rows, dim, 1, 512);
    (0..val.len())
        .map(|i| match nearest.row(i).first() {
            Some(n) => (n.index as usize, n.similarity),
            None => (0, f32::NEG_INFINITY),
        })
        .collect()
}

/// pHash (DCT + median, 64 bits) of each image, `None` where it cannot be decoded. Robust to
/// re-encoding, resizing and small edits, which move pooled features more than one expects.
pub fn perceptual_hashes(paths: &[PathBuf], limits: DecodeLimits) -> Vec<Option<ImageHash>> {
    let hasher = phasher();
    paths
        .par_iter()
        .map(|p| {
            decode_rgb(p, limits)
                .ok()
                .map(|rgb| hasher.hash_image(&DynamicImage::ImageRgb8(rgb)))
        })
        .collect()
}

/// The perceptual hash of [`perceptual_hashes`] and [`super::quality::scan_all`].
pub fn phasher() -> Hasher {
    HasherConfig::new()
        .hash_alg(HashAlg::Median)
        .preproc_dct()
        .hash_size(8, 8)
        .to_hasher()
}

/// Exact (same content hash) and near duplicates across the split. A validation image is a
/// near duplicate when its pooled features have cosine >= `cosine` with a training image's, or
/// its perceptual hash is within `hash_bits` bits of one. `keys` maps each file to its content
/// hash, `hashes` to its perceptual hash.
pub fn leakage_findings(
    train: &FeatureMatrix,
    val: &FeatureMatrix,
    keys: &HashMap<PathBuf, String>,
    hashes: &HashMap<PathBuf, ImageHash>,
    cosine: f32,
    hash_bits: u32,
) -> Vec<Finding> {
    let train_by_key: HashMap<&String, &PathBuf> = train
        .paths
        .iter()
        .filter_map(|p| keys.get(p).map(|k| (k, p)))
        .collect();
    let mut exact = Vec::new();
    let mut exact_files = Vec::new();
    for path in &val.paths {
        if let Some(twin) = keys.get(path).and_then(|k| train_by_key.get(k)) {
            exact.push(format!("{} = {}", path.display(), twin.display()));
            exact_files.push(path.clone());
        }
    }
    let train_hashes: Vec<(&PathBuf, &ImageHash)> = train
        .paths
        .iter()
        .filter_map(|p| hashes.get(p).map(|h| (p, h)))
        .collect();
    let mut near = Vec::new();
    let mut near_files = Vec::new();
    if !train.is_empty() {
        for (i, (j, similarity)) in nearest_training_rows(train, val).into_iter().enumerate() {
            let path = &val.paths[i];
            if exact_files.contains(path) {
                continue;
            }
            let closest_hash = hashes.get(path).and_then(|h| {
                train_hashes
                    .iter()
                    .map(|(p, t)| (h.dist(t), *p))
                    .min_by_key(|(d, _)| *d)
            });
            if similarity >= cosine {
                near.push(format!(
                    "{} ~ {} (feature cosine {similarity:.3})",
                    path.display(),
                    train.paths[j].display()
                ));
                near_files.push(path.clone());
            } else if let Some((bits, twin)) = closest_hash.filter(|(d, _)| *d <= hash_bits) {
                near.push(format!(
                    "{} ~ {} (perceptual hash {bits} of 64 bits apart)",
                    path.display(),
                    twin.display()
                ));
                near_files.push(path.clone());
            }
        }
    }
    let mut findings = Vec::new();
    if !exact.is_empty() {
        findings.push(Finding {
            severity: Severity::Error,
            check: "leakage-exact",
            measured: format!(
                "{} validation images are byte-identical to training images",
                exact.len()
            ),
            why: WHY,
            action: "remove the copies from one side of the split".into(),
            files: exact_files,
            details: exact,
        });
    }
    if !near.is_empty() {
        findings.push(Finding {
            severity: Severity::Error,
            check: "leakage-near",
            measured: format!(
                "{} validation images nearly duplicate a training image (feature cosine >= {cosine} or perceptual hash within {hash_bits} bits)",
                near.len()
            ),
            why: WHY,
            action: "look at the pairs; remove re-encoded or resized copies from one side of the split".into(),
            files: near_files,
            details: near,
        });
    }
    findings
}

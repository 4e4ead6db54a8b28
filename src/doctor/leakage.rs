//! Train/validation leakage: validation images that are byte-identical to a training image, or
//! near-identical in the backbone's feature space (re-encoded, resized, lightly edited copies).

use std::collections::HashMap;
use std::path::PathBuf;

use rayon::prelude::*;

use super::{Finding, Severity};
use crate::features::FeatureMatrix;
use crate::head::l2_normalized;

const WHY: &str = "a validation image that is also in training is scored on what the model memorised, so validation accuracy overstates accuracy on new photos";

/// For each validation row, the most similar training row and its cosine similarity.
pub fn nearest_training_rows(train: &FeatureMatrix, val: &FeatureMatrix) -> Vec<(usize, f32)> {
    let dim = train.dim;
    let train_rows = l2_normalized(&train.rows, dim);
    let val_rows = l2_normalized(&val.rows, dim);
    val_rows
        .par_chunks_exact(dim)
        .map(|v| {
            train_rows
                .chunks_exact(dim)
                .map(|t| t.iter().zip(v).map(|(a, b)| a * b).sum::<f32>())
                .enumerate()
                .fold((0, f32::NEG_INFINITY), |best, (i, s)| if s > best.1 { (i, s) } else { best })
        })
        .collect()
}

/// Exact (same content hash) and near (cosine >= `threshold`) duplicates across the split.
/// `keys` maps each file to its content hash.
pub fn leakage_findings(
    train: &FeatureMatrix,
    val: &FeatureMatrix,
    keys: &HashMap<PathBuf, String>,
    threshold: f32,
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
    let mut near = Vec::new();
    let mut near_files = Vec::new();
    if !train.is_empty() {
        for (i, (j, similarity)) in nearest_training_rows(train, val).into_iter().enumerate() {
            let path = &val.paths[i];
            if similarity >= threshold && !exact_files.contains(path) {
                near.push(format!(
                    "{} ~ {} (cosine {similarity:.3})",
                    path.display(),
                    train.paths[j].display()
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
                "{} validation images have a training image with backbone-feature cosine similarity >= {threshold}",
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

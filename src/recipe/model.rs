//! A trained model used from code: its predictions on images and its metrics on a labelled
//! folder.

use std::path::{Path, PathBuf};

use crate::data::DecodeLimits;
use crate::data::dataset::{self, SplitOptions};
use crate::features::{FeatureMatrix, features_of_view};
use crate::infer::{Classified, Top, classify};
use crate::metrics::Metrics;
use crate::progress::Progress;
use crate::run::TrainedModel;

use super::RecipeError;
use super::bottleneck::score;

/// Images per forward pass of [`TrainedModel::predict`] and [`TrainedModel::evaluate`].
const BATCH: usize = 32;

impl TrainedModel {
    /// The `k` most likely of the model's classes for each image, in input order. A file that
    /// cannot be read or decoded gets its error; the others are still classified.
    pub fn predict(&self, paths: &[PathBuf], k: usize) -> Vec<Classified> {
        let top = Top::Trained {
            head: &self.head,
            classes: &self.card.classes,
        };
        classify(
            &self.backbone,
            top,
            paths,
            k,
            BATCH,
            DecodeLimits::default(),
            |_| {},
        )
    }

    /// Metrics on every labelled image under `data` (class folders, or a `path,label` CSV),
    /// whose class names must be among the model's. Unreadable images are noted and left out.
    pub fn evaluate(
        &self,
        data: &Path,
        progress: &mut dyn Progress,
    ) -> Result<Metrics, RecipeError> {
        let all = SplitOptions {
            val_fraction: 0.0,
            seed: 0,
        };
        let dataset = dataset::open(data, all)?;
        let classes = &self.card.classes;
        let mut to_model = Vec::with_capacity(dataset.classes.len());
        for class in &dataset.classes {
            let index = classes.iter().position(|c| c == class).ok_or_else(|| {
                RecipeError::Invalid(format!(
                    "{}: class `{class}` is not one of the model's classes ({})",
                    data.display(),
                    classes.join(", ")
                ))
            })?;
            to_model.push(index);
        }
        let samples: Vec<_> = dataset.train.iter().chain(&dataset.val).collect();
        let paths: Vec<PathBuf> = samples.iter().map(|s| s.path.clone()).collect();
        progress.start("evaluate", paths.len(), "images");
        let mut features = FeatureMatrix {
            dim: self.backbone.config.feature_dim,
            ..FeatureMatrix::default()
        };
        for (chunk, samples) in paths.chunks(BATCH).zip(samples.chunks(BATCH)) {
            let rows = features_of_view(
                &self.backbone,
                chunk,
                BATCH,
                DecodeLimits::default(),
                |_| {},
            );
            for (row, sample) in rows.into_iter().zip(samples) {
                match row {
                    Ok(row) => {
                        features.rows.extend_from_slice(&row);
                        features.labels.push(to_model[sample.label]);
                        features.paths.push(sample.path.clone());
                    }
                    Err(e) => progress.note(&format!("error: {e} (skipped)")),
                }
            }
            progress.advance(chunk.len());
        }
        progress.finish();
        Ok(score(&self.head, &features, classes))
    }
}

//! A trained model used from code: its predictions on images and its metrics on a labelled
//! folder (what `graft predict` and `graft evaluate` do).

use std::path::{Path, PathBuf};

use crate::calibration::CalibrationCheck;
use crate::data::DecodeLimits;
use crate::data::dataset::{self, Sample};
use crate::data::preprocess::hflip;
use crate::features::{FeatureMatrix, features_of_view};
use crate::infer::{Classified, Top, classify};
use crate::metrics::{Metrics, argmax_rows};
use crate::progress::Progress;
use crate::run::evaluation::TtaRecord;
use crate::run::{EvaluationRecord, TrainedModel};
use crate::train::plan::lowercase_name;

use super::RecipeError;
use super::bottleneck::{features, note_listing, open_cache, score};

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
    /// whose class names must be among the model's; the features go through the default
    /// cache. Unreadable images are noted and left out. [`TrainedModel::evaluate_with`] has
    /// the options.
    pub fn evaluate(
        &self,
        data: &Path,
        progress: &mut dyn Progress,
    ) -> Result<Metrics, RecipeError> {
        Ok(self
            .evaluate_with(data, &EvaluateOptions::default(), progress)?
            .record
            .metrics)
    }

    /// Score the model on the labelled images under `data` as `options` say: which part of
    /// the data (split as when the model was trained), test-time augmentation, the cache.
    /// Unreadable images are noted and counted, the others scored.
    pub fn evaluate_with(
        &self,
        data: &Path,
        options: &EvaluateOptions,
        progress: &mut dyn Progress,
    ) -> Result<Evaluation, RecipeError> {
        let card = &self.card;
        let dataset = dataset::open(data, card.data.split_options())?;
        note_listing(&dataset, progress);
        // The model's class indices, looked up by name.
        let mut to_model = Vec::with_capacity(dataset.classes.len());
        for class in &dataset.classes {
            let index = card
                .classes
                .iter()
                .position(|c| c == class)
                .ok_or_else(|| {
                    RecipeError::Invalid(format!(
                        "{}: class `{class}` is not one of the model's classes ({})",
                        data.display(),
                        card.classes.join(", ")
                    ))
                })?;
            to_model.push(index);
        }
        let chosen: Vec<&Sample> = match options.split {
            EvalSplit::All => dataset.train.iter().chain(&dataset.val).collect(),
            EvalSplit::Train => dataset.train.iter().collect(),
            EvalSplit::Val => dataset.val.iter().collect(),
        };
        let samples: Vec<Sample> = chosen
            .into_iter()
            .map(|s| Sample {
                label: to_model[s.label],
                ..s.clone()
            })
            .collect();
        if samples.is_empty() {
            return Err(RecipeError::Invalid(format!(
                "{}: no images to evaluate",
                data.display()
            )));
        }
        let mut cache = open_cache(&self.backbone, options.cache_dir.as_deref(), progress)?;
        let (mut matrices, summary) = features(
            &self.backbone,
            &mut cache,
            &[&samples],
            options.extract_batch_size,
            progress,
        )?;
        // cannot fail: one group in, one matrix out
        let scored = matrices.pop().expect("one matrix").to_matrix()?;
        let metrics = score(&self.head, &scored, &card.classes)?;
        // The head carries the run's temperature: these are the probabilities predict gives.
        let calibration = CalibrationCheck::of(
            &self.head.scores(&scored.rows, scored.dim),
            &scored.labels,
            card.classes.len(),
            card.temperature,
        );
        let tta = if options.tta {
            Some(TtaRecord {
                views: vec!["original".into(), "horizontal flip".into()],
                metrics: self.mirrored_metrics(&scored, options.extract_batch_size)?,
            })
        } else {
            None
        };
        Ok(Evaluation {
            record: EvaluationRecord {
                data: data.to_path_buf(),
                split: lowercase_name(&options.split),
                metrics,
                tta,
                calibration: Some(calibration),
            },
            skipped: summary.skipped.len(),
        })
    }

    /// Metrics of the average prediction over each image and its mirror image.
    fn mirrored_metrics(
        &self,
        scored: &FeatureMatrix,
        batch_size: usize,
    ) -> Result<Metrics, RecipeError> {
        let side = self.backbone.config.resolution;
        let flipped = features_of_view(
            &self.backbone,
            &scored.paths,
            batch_size,
            DecodeLimits::default(),
            |chw| hflip(chw, side),
        );
        let mut rows = Vec::with_capacity(scored.rows.len());
        for (result, path) in flipped.into_iter().zip(&scored.paths) {
            match result {
                Ok(row) => rows.extend(row),
                // It decoded a moment ago; if it no longer does, the views cannot be compared.
                Err(e) => return Err(RecipeError::Invalid(format!("{}: {e}", path.display()))),
            }
        }
        let classes = self.card.classes.len();
        let original = self.head.scores(&scored.rows, scored.dim);
        let mirrored = self.head.scores(&rows, scored.dim);
        let mean: Vec<f32> = original
            .iter()
            .zip(&mirrored)
            .map(|(a, b)| (a + b) / 2.0)
            .collect();
        Ok(Metrics::compute(
            &scored.labels,
            &argmax_rows(&mean, classes),
            &self.card.classes,
        ))
    }
}

/// Which images of the data an evaluation scores.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum EvalSplit {
    /// Every image (a separate test folder).
    #[default]
    All,
    /// Only the training part, split as when the model was trained.
    Train,
    /// Only the validation part, split as when the model was trained.
    Val,
}

/// How [`TrainedModel::evaluate_with`] scores.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EvaluateOptions {
    pub split: EvalSplit,
    /// Also score the average of the predictions on each image and its mirror image.
    pub tta: bool,
    /// Feature cache root (default `$GRAFT_HOME/features`).
    pub cache_dir: Option<PathBuf>,
    pub extract_batch_size: usize,
}

impl Default for EvaluateOptions {
    fn default() -> Self {
        Self {
            split: EvalSplit::All,
            tta: false,
            cache_dir: None,
            extract_batch_size: BATCH,
        }
    }
}

/// An evaluation: its record (what `graft evaluate` writes) and how many images could not be
/// read.
#[derive(Debug, Clone)]
pub struct Evaluation {
    pub record: EvaluationRecord,
    pub skipped: usize,
}

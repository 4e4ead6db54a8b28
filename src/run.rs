//! Run directories: everything a training leaves behind, and loading it back for predict and
//! evaluate.
//!
//! ```text
//! RUN_DIR/
//!   model.json      schema version, backbone, weights id, source config (preprocessing),
//!                   classes, recipe, hyper-parameters (`hyper`), data split, graft version
//!   head.safetensors  the trained top (see `head`)
//!   metrics.json    validation metrics and split sizes
//!   history.csv     one line per epoch
//!   predictions.json  every validation image: path, true and predicted class, probability
//!   plan.json       fine-tuning only: the stages and their rates (`train::plan::Plan`)
//!   backbone.safetensors  fine-tuning only: the fine-tuned backbone
//!   evaluate-*.json `graft evaluate`'s results (`evaluation`)
//!   report.html     what `graft report` makes of all this
//! ```

pub mod evaluation;
pub mod hyper;

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use crate::train::plan::{PLAN_FILE, Plan};
pub use evaluation::EvaluationRecord;
pub use hyper::{FinetuneRecord, GroupRateHistory, Hyperparameters};

use crate::backbone::{Backbone, LoadOptions, SourceConfig};
use crate::head::{Head, HeadError};
use crate::metrics::Metrics;
use crate::train::{EpochRecord, Recipe};
use crate::weights::{WeightsError, store};

pub const MODEL_FILE: &str = "model.json";
pub const HEAD_FILE: &str = "head.safetensors";
pub const METRICS_FILE: &str = "metrics.json";
pub const HISTORY_FILE: &str = "history.csv";
pub const PREDICTIONS_FILE: &str = "predictions.json";

/// The version of the run directory's records that this graft writes. Run directories written
/// before the field existed (graft 0.1.0) have the same records and read as version 1; a
/// higher version, from a newer graft, is refused with a message rather than misread.
pub const SCHEMA_VERSION: u32 = 1;

pub(crate) fn schema_1() -> u32 {
    1
}

/// An error for a record whose schema is newer than this graft reads.
pub(crate) fn check_schema(path: &Path, version: u32) -> Result<(), RunError> {
    if version > SCHEMA_VERSION {
        return Err(RunError::Invalid {
            path: path.to_path_buf(),
            problem: format!(
                "written by a newer graft (run directory schema {version}; this graft {} reads \
                 up to {SCHEMA_VERSION})",
                env!("CARGO_PKG_VERSION")
            ),
        });
    }
    Ok(())
}

/// The model's verdict on one validation image.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PredictionRecord {
    #[serde(serialize_with = "crate::util::lossy_path")]
    pub path: PathBuf,
    pub truth: String,
    pub predicted: String,
    /// Probability of the predicted class.
    pub probability: f32,
}

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: {problem}", path.display())]
    Invalid { path: PathBuf, problem: String },
    #[error(transparent)]
    Head(#[from] HeadError),
    #[error(transparent)]
    Weights(#[from] WeightsError),
}

pub(crate) fn io(path: &Path) -> impl FnOnce(std::io::Error) -> RunError + '_ {
    move |source| RunError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// How a dataset was split into training and validation images.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SplitKind {
    /// The dataset's own `train/` and `val/` folders.
    Folders,
    /// A stratified random split (`val_fraction`, `seed`).
    Stratified,
}

/// How the training data was split.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DataRecord {
    /// The data path as the user gave it (relative paths stay relative).
    #[serde(serialize_with = "crate::util::lossy_path")]
    pub source: PathBuf,
    pub split: SplitKind,
    pub val_fraction: f64,
    pub seed: u64,
    pub train_images: usize,
    pub val_images: usize,
    /// Training images left out with `graft train --exclude` (none in older runs).
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        serialize_with = "crate::util::lossy_paths"
    )]
    pub excluded: Vec<PathBuf>,
}

impl DataRecord {
    /// The record of a training on `source` split as `split`.
    pub fn new(
        source: &Path,
        split: &crate::data::dataset::SplitSource,
        seed: u64,
        train_images: usize,
        val_images: usize,
    ) -> Self {
        use crate::data::dataset::SplitSource;
        let (name, val_fraction) = match split {
            SplitSource::Folders => (SplitKind::Folders, 0.0),
            SplitSource::Stratified { val_fraction, .. } => (SplitKind::Stratified, *val_fraction),
        };
        Self {
            source: source.to_path_buf(),
            split: name,
            val_fraction,
            seed,
            train_images,
            val_images,
            excluded: Vec::new(),
        }
    }

    /// The split options that reproduce this split on the same data (a stratified split's
    /// fraction and seed; the defaults for a dataset with its own folders, which ignores them).
    pub fn split_options(&self) -> crate::data::dataset::SplitOptions {
        let defaults = crate::data::dataset::SplitOptions::default();
        crate::data::dataset::SplitOptions {
            val_fraction: match self.split {
                SplitKind::Stratified => self.val_fraction,
                SplitKind::Folders => defaults.val_fraction,
            },
            seed: self.seed,
        }
    }
}

/// `model.json`: what a trained model is and how it was made.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelCard {
    /// See [`SCHEMA_VERSION`].
    #[serde(default = "schema_1")]
    pub schema_version: u32,
    pub graft_version: String,
    pub recipe: Recipe,
    pub backbone: String,
    pub weights_id: String,
    /// The backbone's source config (resolution, crop, normalisation, padding...): predict and
    /// evaluate refuse a backbone whose config differs.
    pub source: SourceConfig,
    pub preprocessing: String,
    pub feature_dim: usize,
    pub classes: Vec<String>,
    pub hyperparameters: Hyperparameters,
    pub data: DataRecord,
    /// A fine-tuned backbone saved in the run directory (checkpoint key layout); `weights_id`
    /// is then that file's. `None`: the registry's pretrained weights.
    #[serde(default)]
    pub backbone_file: Option<String>,
    /// The `T` of the calibrated probabilities `softmax(logits / T)` (see `calibration`),
    /// fitted on the validation split after training; [`TrainedModel::open`] applies it.
    /// Runs from before calibration have none and read as 1 (the head's own softmax).
    #[serde(default = "unit_temperature")]
    pub temperature: f64,
}

fn unit_temperature() -> f64 {
    1.0
}

impl ModelCard {
    /// The card of a `recipe` run on `backbone`'s features (the store's weights; a run with
    /// its own backbone file sets `weights_id` and `backbone_file` after).
    pub fn new(
        recipe: Recipe,
        backbone: &Backbone,
        classes: &[String],
        hyperparameters: Hyperparameters,
        data: DataRecord,
    ) -> Self {
        Self {
            schema_version: SCHEMA_VERSION,
            graft_version: env!("CARGO_PKG_VERSION").into(),
            recipe,
            backbone: backbone.config.name.clone(),
            weights_id: backbone.weights_id.clone(),
            source: backbone.config.clone(),
            preprocessing: backbone.config.preprocessing_id(),
            feature_dim: backbone.config.feature_dim,
            classes: classes.to_vec(),
            hyperparameters,
            data,
            backbone_file: None,
            temperature: 1.0,
        }
    }
}

/// `metrics.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunMetrics {
    pub train_size: usize,
    pub val_size: usize,
    /// Epoch whose weights were kept (the dense head and fine-tuning; `None` for the models
    /// fitted in one go).
    pub best_epoch: Option<usize>,
    pub train_accuracy: f64,
    /// Scores on the validation split.
    pub val: Metrics,
    /// The temperature and the validation ECE and log-loss before and after it (runs from
    /// before calibration have none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub calibration: Option<crate::calibration::CalibrationRecord>,
}

impl RunMetrics {
    /// The validation scores for people, or a line saying there was no validation split
    /// (rather than an accuracy of 0 examples).
    pub fn validation_text(&self) -> String {
        if self.val_size == 0 {
            format!(
                "no validation split: no validation accuracy (trained on {} images)",
                self.train_size
            )
        } else {
            self.val.table()
        }
    }
}

pub(crate) fn write_json(path: &Path, value: &impl Serialize) -> Result<(), RunError> {
    let text = serde_json::to_string_pretty(value).map_err(|e| RunError::Invalid {
        path: path.to_path_buf(),
        problem: e.to_string(),
    })?;
    crate::util::write_atomic(path, text.as_bytes()).map_err(io(path))
}

/// Write a finished training into `dir` (created if needed).
pub fn save(
    dir: &Path,
    card: &ModelCard,
    head: &Head,
    metrics: &RunMetrics,
    history: &[EpochRecord],
    predictions: &[PredictionRecord],
) -> Result<(), RunError> {
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    head.save(&dir.join(HEAD_FILE))?;
    write_json(&dir.join(MODEL_FILE), card)?;
    write_json(&dir.join(METRICS_FILE), metrics)?;
    write_json(&dir.join(PREDICTIONS_FILE), &predictions)?;
    let mut csv = EpochRecord::CSV_HEADER.to_string();
    for record in history {
        csv.push('\n');
        csv.push_str(&record.csv_line());
    }
    csv.push('\n');
    let path = dir.join(HISTORY_FILE);
    crate::util::write_atomic(&path, csv.as_bytes()).map_err(io(&path))
}

pub(crate) fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, RunError> {
    let text = std::fs::read_to_string(path).map_err(io(path))?;
    serde_json::from_str(&text).map_err(|e| RunError::Invalid {
        path: path.to_path_buf(),
        problem: e.to_string(),
    })
}

/// The `model.json` of a run directory.
pub fn load_card(dir: &Path) -> Result<ModelCard, RunError> {
    let path = dir.join(MODEL_FILE);
    let card: ModelCard = read_json(&path)?;
    check_schema(&path, card.schema_version)?;
    if !card.hyperparameters.matches(card.recipe) {
        return Err(RunError::Invalid {
            path,
            problem: format!(
                "the hyper-parameters are not those of recipe {}",
                card.recipe.name()
            ),
        });
    }
    Ok(card)
}

/// The `plan.json` of a fine-tuning run directory; `None` for the other recipes.
pub fn load_plan(dir: &Path) -> Result<Option<Plan>, RunError> {
    let path = dir.join(PLAN_FILE);
    if !path.is_file() {
        return Ok(None);
    }
    read_json(&path).map(Some)
}

/// The `predictions.json` of a run directory.
pub fn load_predictions(dir: &Path) -> Result<Vec<PredictionRecord>, RunError> {
    read_json(&dir.join(PREDICTIONS_FILE))
}

/// The `history.csv` of a run directory.
pub fn load_history(dir: &Path) -> Result<Vec<EpochRecord>, RunError> {
    let path = dir.join(HISTORY_FILE);
    let text = std::fs::read_to_string(&path).map_err(io(&path))?;
    text.lines()
        .skip(1)
        .filter(|l| !l.trim().is_empty())
        .enumerate()
        .map(|(i, line)| {
            EpochRecord::parse_csv_line(line).ok_or_else(|| RunError::Invalid {
                path: path.clone(),
                problem: format!("line {}: expected {}", i + 2, EpochRecord::CSV_HEADER),
            })
        })
        .collect()
}

/// The `metrics.json` of a run directory.
pub fn load_metrics(dir: &Path) -> Result<RunMetrics, RunError> {
    read_json(&dir.join(METRICS_FILE))
}

/// `<base>/<name>-<kind>-<n>` (kind: the recipe or method) for the first `n` not yet taken.
pub fn fresh_dir(base: &Path, name: &str, kind: &str) -> PathBuf {
    (1..)
        .map(|n| base.join(format!("{name}-{kind}-{n}")))
        .find(|p| !p.exists())
        // cannot fail: `1..` never ends, and only finitely many folders exist
        .expect("some number is free")
}

/// A trained model loaded back from its run directory.
#[derive(Debug)]
pub struct TrainedModel {
    pub dir: PathBuf,
    pub card: ModelCard,
    /// The run's head with its temperature applied: its scores are the calibrated
    /// probabilities.
    pub head: Head,
    pub backbone: Backbone,
}

impl TrainedModel {
    /// Load `dir`'s card and head, and its backbone (from the store, or from `weights`),
    /// checking that the backbone is the one the head was trained on.
    pub fn open(dir: &Path, weights: Option<&Path>) -> Result<Self, RunError> {
        let card_path = dir.join(MODEL_FILE);
        let invalid = |path: &Path, problem: String| RunError::Invalid {
            path: path.to_path_buf(),
            problem,
        };
        let card = load_card(dir)?;
        let mut head = Head::load(&dir.join(HEAD_FILE))?;
        // The one place a run's temperature is applied: every consumer of the head gives the
        // calibrated probabilities.
        crate::calibration::check_temperature(card.temperature)
            .map_err(|problem| invalid(&card_path, problem))?;
        head.temper(card.temperature);
        if head.classes() != card.classes.len() {
            return Err(invalid(
                &dir.join(HEAD_FILE),
                format!(
                    "has {} classes, model.json lists {}",
                    head.classes(),
                    card.classes.len()
                ),
            ));
        }
        let info = crate::backbone::find(&card.backbone);
        let (mut backbone, path) = match info {
            Some(info) => {
                let path = match &card.backbone_file {
                    Some(file) => dir.join(file),
                    None => store::resolve(info, weights)?,
                };
                let options = LoadOptions {
                    include_top: false,
                    padding: Some(card.source.padding),
                    // The size the model was trained at (a ViT's position embedding is
                    // resampled to it).
                    resolution: Some(card.source.resolution),
                    pool: card.source.pool,
                };
                let backbone = Backbone::load(info, &path, options, &crate::backend::device())?;
                (backbone, path)
            }
            // A CLIP / SigLIP image tower: its repository holds weights and preprocessing.
            None if crate::clip::names_model(&card.backbone) => {
                let model = crate::clip::open(&card.backbone, &mut crate::progress::Silent)
                    .map_err(|e| invalid(&card_path, e.to_string()))?;
                (model.image, model.config.weights)
            }
            None => {
                return Err(invalid(
                    &card_path,
                    format!("unknown backbone `{}`", card.backbone),
                ));
            }
        };
        // Images are decoded as they were for training (runs from before the decode mode
        // existed decoded exactly).
        backbone.config.decode = card.source.decode;
        // And computed in the same precision where this CPU can (`for_inference` says when
        // it cannot).
        backbone.config.precision = card.source.precision;
        if backbone.weights_id != card.weights_id {
            return Err(invalid(
                &path,
                format!(
                    "weights {} differ from the {} the model in {} was trained on",
                    backbone.weights_id,
                    card.weights_id,
                    dir.display()
                ),
            ));
        }
        if head.dim() != backbone.config.feature_dim {
            return Err(invalid(
                &dir.join(HEAD_FILE),
                format!(
                    "takes rows of {} features, the {} backbone gives {}",
                    head.dim(),
                    card.backbone,
                    backbone.config.feature_dim
                ),
            ));
        }
        // Runs written before the `arch.tag` names record an alias (`efficientnet-lite0`).
        let mut recorded = card.source.clone();
        if let Some(info) = info
            && crate::backbone::find(&recorded.name).is_some_and(|i| i.name == info.name)
        {
            recorded.name = backbone.config.name.clone();
        }
        if backbone.config != recorded {
            return Err(invalid(
                &card_path,
                "the backbone's source config (preprocessing, padding) differs from the one the \
                 head was trained with"
                    .into(),
            ));
        }
        Ok(Self {
            dir: dir.to_path_buf(),
            card,
            head,
            backbone: backbone.for_inference(),
        })
    }
}

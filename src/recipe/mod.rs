//! The recipes as library calls: everything the command line does between parsing its flags
//! and printing the result, so a Rust program (or the Python package) runs the same recipe
//! without spawning `graft`.
//!
//! - [`BackboneChoice`]: a backbone name and, optionally, weights other than the store's.
//! - [`bottleneck::train`]: recipe 2 (a new head, logistic regression, linear SVM or kNN on
//!   the frozen backbone's cached features), from a labelled folder to a run directory.
//! - [`finetune::train`]: recipe 3 (a head round, then gradual unfreezing with discriminative
//!   learning rates), from a labelled folder to a run directory with its own backbone.
//! - [`simclr::pretrain`]: self-supervised adaptation of a backbone to unlabelled images, with
//!   a linear probe before and after.
//! - [`crate::run::TrainedModel`]: a run directory opened again, to predict or evaluate.
//!
//! Progress goes to a [`Progress`](crate::progress::Progress); errors name files and values,
//! never command-line flags.

pub mod bottleneck;
pub mod finetune;
mod model;
pub use model::{EvalSplit, EvaluateOptions, Evaluation};
pub mod simclr;

use std::path::{Path, PathBuf};

use crate::backbone::{self, Backbone, BackboneInfo, LoadOptions, PaddingMode, Pooling};
use crate::data::dataset::DatasetError;
use crate::features::cache::CacheError;
use crate::run::RunError;
use crate::train::checkpoint::CheckpointError;
use crate::train::classical::FitError;
use crate::weights::{WeightsError, store};

/// Why a recipe stopped.
#[derive(Debug, thiserror::Error)]
pub enum RecipeError {
    #[error("unknown backbone `{0}`; known backbones: {known}", known = backbone::known_names())]
    UnknownBackbone(String),
    #[error(transparent)]
    Dataset(#[from] DatasetError),
    #[error(transparent)]
    Weights(#[from] WeightsError),
    #[error(transparent)]
    Cache(#[from] CacheError),
    #[error(transparent)]
    Run(#[from] RunError),
    #[error(transparent)]
    Fit(#[from] FitError),
    #[error(transparent)]
    Unsupported(#[from] backbone::Unsupported),
    #[error(transparent)]
    Checkpoint(CheckpointError),
    /// Stopped on request (Ctrl-C); everything finished so far is kept and a rerun resumes.
    #[error(transparent)]
    Interrupted(#[from] crate::interrupt::Interrupted),
    /// Options or data that the recipe cannot work with; the message says which.
    #[error("{0}")]
    Invalid(String),
}

/// Which pretrained backbone, and which weights for it.
#[derive(Debug, Clone, PartialEq)]
pub struct BackboneChoice {
    /// A registry name (`efficientnet-lite0`, `mobilenet-v2`, ...).
    pub name: String,
    /// Weights instead of the store's: a checkpoint file, or the run directory of
    /// `graft pretrain` or a fine-tuning (its adapted backbone).
    pub weights: Option<PathBuf>,
    /// Override of the weights' padding convention (experiments only).
    pub padding: Option<PaddingMode>,
    /// Input side in pixels instead of the weights' own (DINOv2 at 224 instead of 518).
    pub resolution: Option<usize>,
    /// The pooled feature (a ViT's class token, or it and the mean patch token).
    pub pool: Pooling,
}

impl Default for BackboneChoice {
    fn default() -> Self {
        Self::new("efficientnet-lite0")
    }
}

impl BackboneChoice {
    /// `name` with the store's weights.
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            weights: None,
            padding: None,
            resolution: None,
            pool: Pooling::Source,
        }
    }

    /// The registry entry of the name. A CLIP / SigLIP model is no registry entry: its image
    /// tower serves [`BackboneChoice::load`] only (extraction and the bottleneck recipes).
    pub fn info(&self) -> Result<&'static BackboneInfo, RecipeError> {
        if let Some(info) = backbone::find(&self.name) {
            return Ok(info);
        }
        if crate::clip::names_model(&self.name) {
            return Err(RecipeError::Invalid(format!(
                "{} is a CLIP / SigLIP model: its image tower works for extraction, the \
                 bottleneck recipes (head, logreg, svm, knn), predict, evaluate and search; \
                 fine-tuning, pretraining, summary, export and bench train-step do not take \
                 it yet",
                self.name
            )));
        }
        Err(RecipeError::UnknownBackbone(self.name.clone()))
    }

    /// The image tower of the CLIP / SigLIP model this names, as a backbone ready for
    /// inference (its features are the image embeddings).
    fn load_image_tower(&self) -> Result<Backbone, RecipeError> {
        if self.weights.is_some() || self.resolution.is_some() || self.pool != Pooling::Source {
            return Err(RecipeError::Invalid(format!(
                "{}: --weights, --input-size and --pool do not apply to a CLIP / SigLIP model \
                 (its repository holds the weights and the preprocessing)",
                self.name
            )));
        }
        crate::clip::open(&self.name, &mut crate::progress::Silent)
            .map(|model| model.image)
            .map_err(|e| RecipeError::Invalid(e.to_string()))
    }

    /// The checkpoint file `weights` names (a run directory's backbone file), if any, checked
    /// to hold this backbone.
    pub fn weights_file(&self) -> Result<Option<PathBuf>, RecipeError> {
        let Some(path) = &self.weights else {
            return Ok(None);
        };
        if !path.is_dir() {
            return Ok(Some(path.clone()));
        }
        let (file, name) = crate::adapted::backbone_of_run(path)?;
        let info = self.info()?;
        let held =
            backbone::find(&name).ok_or_else(|| RecipeError::UnknownBackbone(name.clone()))?;
        if held.name != info.name {
            return Err(RecipeError::Invalid(format!(
                "{}: holds a {name} backbone, not {}; choose backbone {name}",
                path.display(),
                info.name
            )));
        }
        Ok(Some(file))
    }

    /// The checkpoint to load: the given weights or the store's.
    pub fn weights_path(&self) -> Result<PathBuf, RecipeError> {
        Ok(store::resolve(
            self.info()?,
            self.weights_file()?.as_deref(),
        )?)
    }

    /// Load for inference (predict, extract, evaluate): BatchNorm folded into the convs.
    /// With `include_top`, weights without a classifier (DINOv2) are refused: there are no
    /// ImageNet classes to predict.
    pub fn load(&self, include_top: bool) -> Result<Backbone, RecipeError> {
        if backbone::find(&self.name).is_none() && crate::clip::names_model(&self.name) {
            if include_top {
                return Err(RecipeError::Invalid(format!(
                    "{} is a CLIP / SigLIP model, with no ImageNet classifier: classify into \
                     your labels with --labels LABEL,... (zero-shot), or train a top on its \
                     features and predict with --model RUN_DIR",
                    self.name
                )));
            }
            return self.load_image_tower();
        }
        let info = self.info()?;
        if include_top && info.arch.num_classes() == 0 {
            return Err(RecipeError::Invalid(format!(
                "{} has no ImageNet classifier (its weights are features only); train a top on \
                 your photos first (graft train DIR --backbone {} --recipe logreg --out RUN_DIR) \
                 and predict with --model RUN_DIR",
                info.name, info.name
            )));
        }
        Ok(self.load_unfolded(include_top)?.for_inference())
    }

    /// Load for training (fine-tuning, pretraining): BatchNorm kept as its own layer.
    pub fn load_trainable(&self) -> Result<Backbone, RecipeError> {
        self.load_unfolded(false)
    }

    fn load_unfolded(&self, include_top: bool) -> Result<Backbone, RecipeError> {
        let info = self.info()?;
        if let Some(resolution) = self.resolution {
            info.check_resolution(resolution)
                .map_err(RecipeError::Invalid)?;
        }
        info.check_pooling(self.pool)
            .map_err(RecipeError::Invalid)?;
        let options = LoadOptions {
            include_top,
            padding: self.padding,
            resolution: self.resolution,
            pool: self.pool,
        };
        let path = self.weights_path()?;
        Ok(Backbone::load(
            info,
            &path,
            options,
            &crate::backend::device(),
        )?)
    }
}

/// The feature cache root: `dir`, or `$GRAFT_HOME/features`.
pub fn cache_root(dir: Option<&Path>) -> PathBuf {
    dir.map_or_else(|| store::graft_home().join("features"), Path::to_path_buf)
}

/// A training loop's result, with an interruption turned into [`RecipeError::Interrupted`]
/// that says where the checkpoints are (a rerun of the same options with `resume` continues).
pub fn checkpointed<T>(result: Result<T, CheckpointError>, dir: &Path) -> Result<T, RecipeError> {
    match result {
        Ok(value) => Ok(value),
        Err(CheckpointError::Interrupted { epochs_done }) => {
            Err(crate::interrupt::Interrupted(format!(
                "{epochs_done} epochs are checkpointed in {}",
                dir.join(crate::adapted::CHECKPOINT_DIR).display(),
            ))
            .into())
        }
        Err(other) => Err(RecipeError::Checkpoint(other)),
    }
}

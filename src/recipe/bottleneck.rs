//! Recipe 2 from a labelled folder to a run directory: the frozen backbone's pooled features
//! (extracted once into the content-addressed cache, reused after), then a new top on them.
//!
//! ```no_run
//! use graft::progress::Silent;
//! use graft::recipe::bottleneck::{self, BottleneckOptions};
//!
//! let run = bottleneck::train(
//!     "../shared/data/flowers".as_ref(),
//!     "runs/flowers-head".as_ref(),
//!     &BottleneckOptions::default(),
//!     &mut Silent,
//! )?;
//! println!("validation accuracy {:.4}", run.metrics.val.accuracy);
//! # Ok::<(), graft::recipe::RecipeError>(())
//! ```

use std::path::{Path, PathBuf};

use crate::backbone::Backbone;
use crate::calibration::CalibrationRecord;
use crate::data::DecodeLimits;
use crate::data::dataset::{self, Dataset, Sample, SplitOptions};
use crate::features::cache::{CacheError, FeatureCache};
use crate::features::rows::{LabelledRows, RowSource, SCORE_CHUNK, for_each_chunk};
use crate::features::{ExtractSummary, labelled_features};
use crate::head::Head;
use crate::metrics::{Metrics, argmax_rows};
use crate::progress::Progress;
use crate::run::{self, DataRecord, Hyperparameters, ModelCard, PredictionRecord, RunMetrics};
use crate::train::classical::{self, ClassicalOptions};
use crate::train::dense::{DenseOptions, train_dense};
use crate::train::{EpochRecord, Recipe, cross_entropy_sum};

use super::{BackboneChoice, RecipeError, cache_root};

/// Everything recipe 2 needs besides the data. The defaults are the documented ones (those of
/// `graft train`).
#[derive(Debug, Clone, PartialEq)]
pub struct BottleneckOptions {
    /// `Head` (default), `Logreg`, `Svm` or `Knn`.
    pub recipe: Recipe,
    pub backbone: BackboneChoice,
    /// The split used when the data has no `train/` and `val/` of its own.
    pub split: SplitOptions,
    /// The dense head's options (its seed is the split's).
    pub dense: DenseOptions,
    pub classical: ClassicalOptions,
    /// Feature cache root (default `$GRAFT_HOME/features`).
    pub cache_dir: Option<PathBuf>,
    /// Images per forward pass while extracting.
    pub extract_batch_size: usize,
    /// Images to leave out of training (`graft train --exclude`, see
    /// [`crate::data::exclude`]).
    pub exclude: Vec<PathBuf>,
}

impl Default for BottleneckOptions {
    fn default() -> Self {
        Self {
            recipe: Recipe::Head,
            backbone: BackboneChoice::default(),
            split: SplitOptions::default(),
            dense: DenseOptions::default(),
            classical: ClassicalOptions::default(),
            cache_dir: None,
            extract_batch_size: 32,
            exclude: Vec::new(),
        }
    }
}

/// A finished training, as saved in its run directory.
#[derive(Debug, Clone)]
pub struct TrainedRun {
    pub dir: PathBuf,
    pub card: ModelCard,
    pub head: Head,
    pub metrics: RunMetrics,
    pub history: Vec<EpochRecord>,
    /// The epoch whose loss became NaN or infinite, when one did (the best earlier epoch kept).
    pub diverged_at: Option<usize>,
}

/// A top fitted on features, before it is saved.
#[derive(Debug, Clone)]
pub struct FittedTop {
    pub head: Head,
    pub history: Vec<EpochRecord>,
    /// The epoch whose weights were kept (`None` for the models fitted in one go).
    pub best_epoch: Option<usize>,
    pub diverged_at: Option<usize>,
    /// The options as the run directory records them.
    pub hyperparameters: Hyperparameters,
}

/// Recipe 2 on the labelled images under `data` (a folder of class folders, or a CSV of
/// `path,label`), saved in `out`.
pub fn train(
    data: &Path,
    out: &Path,
    options: &BottleneckOptions,
    progress: &mut dyn Progress,
) -> Result<TrainedRun, RecipeError> {
    let mut dataset = open_dataset(data, options.split, progress)?;
    let excluded = exclude_listed(&mut dataset, &options.exclude, progress)?;
    let backbone = options.backbone.load(false)?;
    let (train, val) = train_val_features(
        &backbone,
        &dataset,
        (options.cache_dir.as_deref(), options.extract_batch_size),
        progress,
    )?;
    train_on_features(
        (data, &dataset),
        &backbone,
        (&train, &val),
        out,
        &BottleneckOptions {
            exclude: excluded,
            ..options.clone()
        },
        progress,
    )
}

/// Leave the images `exclude` lists out of `dataset`'s training split, noting how many and
/// what was listed but not trained on anyway; the training images left out, for the run's
/// record. An error when no training image is left.
pub fn exclude_listed(
    dataset: &mut Dataset,
    exclude: &[PathBuf],
    progress: &mut dyn Progress,
) -> Result<Vec<PathBuf>, RecipeError> {
    if exclude.is_empty() {
        return Ok(Vec::new());
    }
    let done = crate::data::exclude::exclude(dataset, exclude);
    progress.note(&format!(
        "excluded {} of {} listed images from training",
        done.excluded.len(),
        exclude.len()
    ));
    if !done.in_validation.is_empty() {
        progress.note(&format!(
            "{} listed images are in the validation split and stay there, so validation is the same as without --exclude",
            done.in_validation.len()
        ));
    }
    if !done.not_found.is_empty() {
        let shown: Vec<String> = done
            .not_found
            .iter()
            .take(3)
            .map(|p| p.display().to_string())
            .collect();
        progress.note(&format!(
            "warning: {} listed paths are not images of the data, e.g. {}",
            done.not_found.len(),
            shown.join(", ")
        ));
    }
    if dataset.train.is_empty() {
        return Err(RecipeError::Invalid(
            "--exclude left no training images".into(),
        ));
    }
    Ok(done.excluded)
}

/// The labelled images under `data`, with what listing left out noted; an error when there
/// is nothing to train on.
pub fn open_dataset(
    data: &Path,
    split: SplitOptions,
    progress: &mut dyn Progress,
) -> Result<Dataset, RecipeError> {
    let dataset = dataset::open(data, split)?;
    note_listing(&dataset, progress);
    dataset.check_classes(data)?;
    if dataset.train.is_empty() {
        return Err(RecipeError::Invalid(format!(
            "{}: no training images",
            data.display()
        )));
    }
    if let Some(reason) = dataset.no_validation_reason() {
        progress.note(&format!(
            "warning: no validation split ({reason}): training uses all {} images, keeps \
             the last epoch, and reports no validation accuracy",
            dataset.train.len()
        ));
    }
    Ok(dataset)
}

/// Note what listing the dataset left out: hidden and non-image files, empty classes.
pub fn note_listing(dataset: &Dataset, progress: &mut dyn Progress) {
    if dataset.skipped.hidden + dataset.skipped.not_image > 0 {
        progress.note(&format!(
            "skipped {} hidden and {} non-image files",
            dataset.skipped.hidden, dataset.skipped.not_image
        ));
    }
    for class in &dataset.empty_classes {
        progress.note(&format!("warning: class `{class}` has no images"));
    }
}

/// `backbone`'s feature cache under `dir` (default `$GRAFT_HOME/features`), noting the shards
/// that failed their checksum and were set aside.
pub fn open_cache(
    backbone: &Backbone,
    dir: Option<&Path>,
    progress: &mut dyn Progress,
) -> Result<FeatureCache, RecipeError> {
    let cache = FeatureCache::open(&cache_root(dir), backbone)?;
    for shard in &cache.quarantined {
        progress.note(&format!(
            "warning: {}: checksum failed; set aside, its rows will be recomputed",
            shard.display()
        ));
    }
    Ok(cache)
}

/// Features of each group of samples, one set of cached rows per group (read from the cache's
/// files on demand, see [`LabelledRows`]), extracting what the cache lacks (one progress
/// phase). Unreadable images are noted, one line each, and left out; the
/// summary's keys follow the samples of all groups in order. Ctrl-C stops after the batch in
/// flight with [`RecipeError::Interrupted`], every finished batch kept in the cache.
pub fn features(
    backbone: &Backbone,
    cache: &mut FeatureCache,
    groups: &[&[Sample]],
    batch_size: usize,
    progress: &mut dyn Progress,
) -> Result<(Vec<LabelledRows>, ExtractSummary), RecipeError> {
    let total: usize = groups.iter().map(|g| g.len()).sum();
    progress.start("features", total, "images");
    let mut all = ExtractSummary::default();
    let mut matrices = Vec::with_capacity(groups.len());
    for samples in groups {
        let (rows, summary) = labelled_features(
            backbone,
            cache,
            samples,
            batch_size,
            DecodeLimits::default(),
            |n| progress.advance(n),
        )?;
        if summary.interrupted {
            progress.finish();
            return Err(crate::interrupt::Interrupted(format!(
                "{} feature rows are safely in {}; run the same command again to continue",
                cache.len(),
                cache.dir().display()
            ))
            .into());
        }
        matrices.push(rows);
        all.extracted += summary.extracted;
        all.reused += summary.reused;
        all.skipped.extend(summary.skipped);
        all.keys.extend(summary.keys);
    }
    progress.finish();
    for e in &all.skipped {
        progress.note(&format!("error: {e} (skipped)"));
    }
    progress.note(&format!(
        "features: {total} images (extracted {}, reused {}, skipped {})",
        all.extracted,
        all.reused,
        all.skipped.len()
    ));
    Ok((matrices, all))
}

/// Features of `dataset`'s training and validation images through `backbone`'s cache under
/// `cache_dir` (see [`open_cache`] and [`features`]), extracted `batch_size` at a time.
pub fn train_val_features(
    backbone: &Backbone,
    dataset: &Dataset,
    (cache_dir, batch_size): (Option<&Path>, usize),
    progress: &mut dyn Progress,
) -> Result<(LabelledRows, LabelledRows), RecipeError> {
    let mut cache = open_cache(backbone, cache_dir, progress)?;
    let (mut matrices, _) = features(
        backbone,
        &mut cache,
        &[&dataset.train, &dataset.val],
        batch_size,
        progress,
    )?;
    // cannot fail: two groups in, two matrices out
    let val = matrices.pop().expect("two matrices");
    let train = matrices.pop().expect("two matrices");
    Ok((train, val))
}

/// Fit `options.recipe`'s top on `train`, early-stopping on `val` (the dense head). The dense
/// head reads its mini-batches from the cache; logistic regression and the SVM need every row
/// in memory and refuse (with what to do instead) when that is over the memory budget (see
/// [`classical::memory_budget`]).
pub fn fit_top(
    train: &LabelledRows,
    val: &LabelledRows,
    classes: &[String],
    options: &BottleneckOptions,
    progress: &mut dyn Progress,
) -> Result<FittedTop, RecipeError> {
    if options.recipe == Recipe::Head {
        return train_head(train, val, classes, &options.dense, progress);
    }
    let started = std::time::Instant::now();
    let classical_options = &options.classical;
    let in_memory = |recipe| {
        classical::check_memory(recipe, train.len(), train.dim())?;
        Ok::<_, RecipeError>(train.to_matrix()?)
    };
    let head = match options.recipe {
        Recipe::Logreg => classical::fit_logreg(
            &in_memory("logistic regression")?,
            classes,
            classical_options,
        )?,
        Recipe::Svm => {
            classical::fit_svm(&in_memory("the linear SVM")?, classes, classical_options)?
        }
        Recipe::Knn => classical::fit_knn(train, classes, classical_options)?,
        Recipe::Head | Recipe::Finetune => {
            return Err(RecipeError::Invalid(format!(
                "recipe {} is not fitted on cached features alone",
                options.recipe.name()
            )));
        }
    };
    progress.note(&format!(
        "fitted in {:.1} s",
        started.elapsed().as_secs_f64()
    ));
    let history = vec![final_record(&head, train, val)?];
    Ok(FittedTop {
        head,
        history,
        best_epoch: None,
        diverged_at: None,
        hyperparameters: Hyperparameters::Classical(classical_options.clone()),
    })
}

/// A dense head trained on `train`, early-stopping on `val`'s loss with the best epoch's
/// weights kept; an error when no epoch finished before the loss diverged.
pub fn train_head(
    train: &dyn RowSource,
    val: &dyn RowSource,
    classes: &[String],
    dense: &DenseOptions,
    progress: &mut dyn Progress,
) -> Result<FittedTop, RecipeError> {
    progress.start("train", dense.epochs, "epochs");
    let result = train_dense(train, val, classes.len(), dense, |r| {
        progress.status(&format!(
            "loss {:.4} acc {:.3} | val loss {:.4} acc {:.3}",
            r.train_loss, r.train_accuracy, r.val_loss, r.val_accuracy
        ));
        progress.advance(1);
    })?;
    progress.finish();
    if let Some(epoch) = result.diverged_at {
        progress.note(&format!(
            "warning: the loss became NaN or infinite in epoch {epoch}; training stopped \
             there and kept the best earlier epoch. Lower the learning rate (now {:e}).",
            dense.learning_rate
        ));
        if result.history.is_empty() {
            return Err(RecipeError::Invalid(format!(
                "no epoch finished before the loss diverged: lower the learning rate (now {:e})",
                dense.learning_rate
            )));
        }
    }
    let kept = if val.is_empty() {
        "the last one: no validation images to choose by"
    } else {
        "lowest validation loss"
    };
    progress.note(&format!(
        "trained {} epochs, kept epoch {} ({kept})",
        result.history.len(),
        result.best_epoch
    ));
    Ok(FittedTop {
        head: result.head,
        history: result.history,
        best_epoch: Some(result.best_epoch),
        diverged_at: result.diverged_at,
        hyperparameters: Hyperparameters::Head(dense.clone()),
    })
}

/// Recipe 2 on features already extracted: fit, score, save in `out`.
pub fn train_on_features(
    (data, dataset): (&Path, &Dataset),
    backbone: &Backbone,
    (train, val): (&LabelledRows, &LabelledRows),
    out: &Path,
    options: &BottleneckOptions,
    progress: &mut dyn Progress,
) -> Result<TrainedRun, RecipeError> {
    let classes = &dataset.classes;
    progress.note(&format!(
        "recipe {}: {} train / {} val images, {} classes, {}-d features of {}",
        options.recipe.name(),
        train.len(),
        val.len(),
        classes.len(),
        train.dim(),
        backbone.config.name
    ));
    let fitted = fit_top(train, val, classes, options, progress)?;
    let calibration = calibrate(&fitted.head, val, classes.len())?;
    progress.note(&calibration.summary());
    // A backbone from explicit weights travels with the run, so predict and evaluate find it.
    let explicit_weights = options.backbone.weights_file()?.map(|file| {
        let ext = file.extension().and_then(|e| e.to_str()).unwrap_or("bin");
        (file.clone(), format!("backbone.{ext}"))
    });
    let mut card = ModelCard::new(
        options.recipe,
        backbone,
        classes,
        fitted.hyperparameters,
        DataRecord {
            excluded: options.exclude.clone(),
            ..DataRecord::new(
                data,
                &dataset.split,
                options.split.seed,
                train.len(),
                val.len(),
            )
        },
    );
    card.backbone_file = explicit_weights.as_ref().map(|(_, name)| name.clone());
    card.temperature = calibration.temperature;
    let metrics = RunMetrics {
        train_size: train.len(),
        val_size: val.len(),
        best_epoch: fitted.best_epoch,
        train_accuracy: score(&fitted.head, train, classes)?.accuracy,
        val: score(&fitted.head, val, classes)?,
        calibration: Some(calibration),
    };
    // The recorded probabilities are the calibrated ones, as predict gives them; the head
    // is saved as fitted, its temperature beside it in model.json.
    let predictions = predictions(
        &tempered(&fitted.head, card.temperature),
        val,
        &val.paths,
        classes,
    )?;
    run::save(
        out,
        &card,
        &fitted.head,
        &metrics,
        &fitted.history,
        &predictions,
    )?;
    if let Some((file, name)) = &explicit_weights {
        std::fs::copy(file, out.join(name)).map_err(crate::run::io(file))?;
    }
    Ok(TrainedRun {
        dir: out.to_path_buf(),
        card,
        head: fitted.head,
        metrics,
        history: fitted.history,
        diverged_at: fitted.diverged_at,
    })
}

/// Metrics of `head` on `data`, scored [`SCORE_CHUNK`] rows at a time.
pub fn score(head: &Head, data: &dyn RowSource, classes: &[String]) -> Result<Metrics, CacheError> {
    let mut predicted = Vec::with_capacity(data.len());
    for_each_chunk(data, SCORE_CHUNK, |_, rows| {
        let scores = head.scores(rows, data.dim());
        predicted.extend(argmax_rows(&scores, classes.len()));
    })?;
    Ok(Metrics::compute(&data.labels(), &predicted, classes))
}

/// Fit the temperature of `head` on the validation rows `val` (see [`crate::calibration`]):
/// a linear top's (dense head, logistic regression, SVM); a kNN top keeps temperature 1, its
/// vote shares measured as they are.
pub fn calibrate(
    head: &Head,
    val: &dyn RowSource,
    classes: usize,
) -> Result<CalibrationRecord, CacheError> {
    let (mut outputs, mut linear) = (Vec::with_capacity(val.len() * classes), true);
    for_each_chunk(val, SCORE_CHUNK, |_, rows| {
        match head.logits(rows, val.dim()) {
            Some(logits) => outputs.extend(logits),
            None => {
                linear = false;
                outputs.extend(head.scores(rows, val.dim()));
            }
        }
    })?;
    let labels = val.labels();
    Ok(if linear {
        CalibrationRecord::fit(&outputs, &labels, classes)
    } else {
        CalibrationRecord::unfitted(
            "a kNN top's vote shares are not logits to scale".into(),
            &outputs,
            &labels,
            classes,
        )
    })
}

/// A copy of a linear `head` with `temperature` applied (the head itself for kNN, or at 1).
pub fn tempered(head: &Head, temperature: f64) -> std::borrow::Cow<'_, Head> {
    match head {
        Head::Linear { .. } if temperature != 1.0 => {
            let mut head = head.clone();
            head.temper(temperature);
            std::borrow::Cow::Owned(head)
        }
        _ => std::borrow::Cow::Borrowed(head),
    }
}

/// The verdict on every row of `data` (the images `paths`, in row order).
pub fn predictions(
    head: &Head,
    data: &dyn RowSource,
    paths: &[PathBuf],
    classes: &[String],
) -> Result<Vec<PredictionRecord>, CacheError> {
    let k = classes.len();
    let mut out = Vec::with_capacity(data.len());
    for_each_chunk(data, SCORE_CHUNK, |range, rows| {
        let scores = head.scores(rows, data.dim());
        for (row, (i, p)) in range.zip(argmax_rows(&scores, k)).enumerate() {
            out.push(PredictionRecord {
                path: paths[i].clone(),
                truth: classes[data.label(i)].clone(),
                predicted: classes[p].clone(),
                probability: scores[row * k + p],
            });
        }
    })?;
    Ok(out)
}

/// The one history line of a model fitted in one go.
fn final_record(
    head: &Head,
    train: &dyn RowSource,
    val: &dyn RowSource,
) -> Result<EpochRecord, CacheError> {
    let loss_and_accuracy = |data: &dyn RowSource| {
        if data.is_empty() {
            return Ok::<_, CacheError>((f64::NAN, f64::NAN));
        }
        let (mut loss, mut correct) = (0.0, 0);
        for_each_chunk(data, SCORE_CHUNK, |range, rows| {
            let scores = head.scores(rows, data.dim());
            let logs: Vec<f32> = scores.iter().map(|p| p.max(1e-12).ln()).collect();
            let labels: Vec<usize> = range.map(|i| data.label(i)).collect();
            let predicted = argmax_rows(&scores, head.classes());
            correct += predicted
                .iter()
                .zip(&labels)
                .filter(|(p, t)| p == t)
                .count();
            loss += cross_entropy_sum(&logs, &labels, head.classes());
        })?;
        let n = data.len() as f64;
        Ok((loss / n, correct as f64 / n))
    };
    let (train_loss, train_accuracy) = loss_and_accuracy(train)?;
    let (val_loss, val_accuracy) = loss_and_accuracy(val)?;
    Ok(EpochRecord {
        epoch: 1,
        train_loss,
        train_accuracy,
        val_loss,
        val_accuracy,
        learning_rate: 0.0,
    })
}

/// A short name for a data path: its folder or file stem.
pub fn data_name(data: &Path) -> String {
    data.canonicalize()
        .ok()
        .as_deref()
        .unwrap_or(data)
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or("data")
        .to_string()
}

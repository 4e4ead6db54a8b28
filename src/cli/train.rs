//! `graft train`: a new top on the frozen backbone's cached features (recipe 2); fine-tuning
//! (recipe 3) is in `finetune.rs`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::{Args, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};

use graft::data::augment::Augment;
use graft::data::dataset;
use graft::features::FeatureMatrix;
use graft::head::Head;
use graft::metrics::{Metrics, argmax_rows};
use graft::run::{self, DataRecord, ModelCard, PredictionRecord, RunMetrics};
use graft::train::classical::{self, ClassicalOptions};
use graft::train::dense::{DenseOptions, train_dense};
use graft::train::finetune::{BnMode, Unfreeze};
use graft::train::schedule::Schedule;
use graft::train::{EpochRecord, Recipe, cross_entropy};

use super::BackboneArgs;
use super::features::{CacheArgs, SplitArgs, report_listing, train_val_features};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ClassWeights {
    /// Every example counts the same.
    None,
    /// Weight classes by n / (classes * n_class), so rare classes count as much as common ones.
    Balanced,
}

#[derive(Debug, Args)]
pub struct TrainArgs {
    /// Labelled images: a folder with one sub-folder per class (optionally under train/ and
    /// val/), or a CSV file of `path,label`.
    #[arg(value_name = "DATA")]
    pub data: PathBuf,

    /// What to train. The first four fit a new top on the frozen backbone's pooled features,
    /// extracted once and cached, so trying another costs no extraction; finetune also trains
    /// the backbone.
    #[arg(long, value_enum, default_value_t = Recipe::Head)]
    pub recipe: Recipe,

    #[command(flatten)]
    pub backbone: BackboneArgs,

    #[command(flatten)]
    pub split: SplitArgs,

    /// Run directory to write (default: runs/<data name>-<recipe>-<n>).
    #[arg(long, short = 'o', value_name = "RUN_DIR")]
    pub out: Option<PathBuf>,

    /// [head] AdamW learning rate. The default 1e-3 is high on purpose: the new top starts
    /// from zero and the backbone is frozen, so large steps are safe and fast (fine-tuning a
    /// pretrained backbone wants 10-100x lower).
    #[arg(long, default_value_t = 1e-3, value_name = "LR")]
    pub lr: f64,

    /// [head] Maximum number of epochs (early stopping usually ends sooner).
    #[arg(long, default_value_t = 100)]
    pub epochs: usize,

    /// [head] Examples per optimisation step.
    #[arg(long, default_value_t = 32)]
    pub batch_size: usize,

    /// [head] Dropout rate on the pooled features.
    #[arg(long, default_value_t = 0.2)]
    pub dropout: f64,

    /// [head] AdamW decoupled weight decay.
    #[arg(long, default_value_t = 1e-4)]
    pub weight_decay: f64,

    /// [head] Label smoothing of the cross-entropy (0 = off; 0.1 is common).
    #[arg(long, default_value_t = 0.0)]
    pub label_smoothing: f64,

    /// [head, svm] Class weights in the loss.
    #[arg(long, value_enum, default_value_t = ClassWeights::None)]
    pub class_weights: ClassWeights,

    /// [head, finetune] Stop after this many epochs without a lower validation loss; the best
    /// epoch's weights are kept.
    #[arg(long, default_value_t = 10)]
    pub patience: usize,

    /// [logreg] L2 penalty strength (linfa's alpha).
    #[arg(long, default_value_t = 1.0)]
    pub alpha: f64,

    /// [svm] Soft-margin constant C.
    #[arg(long, default_value_t = 1.0)]
    pub c: f64,

    /// [knn] Number of neighbours that vote.
    #[arg(long, short = 'k', default_value_t = 5)]
    pub k: usize,

    #[command(flatten)]
    pub finetune: FinetuneArgs,

    #[command(flatten)]
    pub cache: CacheArgs,
}

/// Options of `--recipe finetune`.
#[derive(Debug, Args)]
pub struct FinetuneArgs {
    /// [finetune] Peak learning rate of the top-most backbone group. Low on purpose (10x below
    /// the head's): large steps wreck the pretrained features.
    #[arg(long, default_value_t = 1e-4, value_name = "LR")]
    pub backbone_lr: f64,

    /// [finetune] Each backbone group below gets this factor of the group above's learning
    /// rate (discriminative rates, like timm's layer decay or fastai's slice).
    #[arg(long, default_value_t = 0.7)]
    pub lr_decay: f64,

    /// [finetune] Unfreeze one group per stage from the top, or everything at once.
    #[arg(long, value_enum, default_value_t = Unfreeze::Gradual)]
    pub unfreeze: Unfreeze,

    /// [finetune] Unfreezing stages after the head round.
    #[arg(long, default_value_t = 3)]
    pub stages: usize,

    /// [finetune] Epochs of each stage.
    #[arg(long, default_value_t = 2)]
    pub epochs_per_stage: usize,

    /// [finetune] Learning-rate schedule of each stage, per step.
    #[arg(long, value_enum, default_value_t = Schedule::Cosine)]
    pub schedule: Schedule,

    /// [finetune] BatchNorm mode: frozen running statistics (default) or batch statistics.
    #[arg(long = "bn", value_enum, default_value_t = BnMode::Frozen)]
    pub bn_mode: BnMode,

    /// [finetune] Augmentation of training images (validation uses the eval preprocessing).
    #[arg(long, value_enum, default_value_t = Augment::Light)]
    pub augment: Augment,

    /// [finetune] Images per step while fine-tuning.
    #[arg(long, default_value_t = 16)]
    pub finetune_batch_size: usize,

    /// [finetune] Continue the interrupted run in RUN_DIR from its last checkpoint (give the
    /// same options as the first time). Checkpoints are written after every epoch.
    #[arg(long, value_name = "RUN_DIR")]
    pub resume: Option<PathBuf>,
}

impl TrainArgs {
    fn check(&self) -> Result<()> {
        if self.recipe == Recipe::Logreg && self.class_weights == ClassWeights::Balanced {
            bail!(
                "--class-weights balanced is not supported by --recipe logreg (linfa's logistic regression has no sample weights); use --recipe head or svm"
            );
        }
        if !(0.0..1.0).contains(&self.dropout) {
            bail!("--dropout must be in [0, 1), got {}", self.dropout);
        }
        if !(0.0..1.0).contains(&self.label_smoothing) {
            bail!(
                "--label-smoothing must be in [0, 1), got {}",
                self.label_smoothing
            );
        }
        if self.lr <= 0.0 || !self.lr.is_finite() {
            bail!("--lr must be a positive number, got {}", self.lr);
        }
        if self.batch_size == 0 || self.epochs == 0 || self.k == 0 {
            bail!("--batch-size, --epochs and -k must be at least 1");
        }
        Ok(())
    }

    pub fn dense_options(&self) -> DenseOptions {
        DenseOptions {
            learning_rate: self.lr,
            epochs: self.epochs,
            batch_size: self.batch_size,
            dropout: self.dropout,
            weight_decay: self.weight_decay,
            label_smoothing: self.label_smoothing,
            balanced_class_weights: self.class_weights == ClassWeights::Balanced,
            patience: self.patience,
            seed: self.split.seed,
        }
    }

    fn classical_options(&self) -> ClassicalOptions {
        ClassicalOptions {
            logreg_alpha: self.alpha,
            svm_c: self.c,
            balanced_class_weights: self.class_weights == ClassWeights::Balanced,
            knn_k: self.k,
            ..ClassicalOptions::default()
        }
    }
}

pub fn run(args: TrainArgs) -> Result<ExitCode> {
    args.check()?;
    let data = dataset::open(&args.data, args.split.options()?)?;
    report_listing(&data);
    if data.train.is_empty() {
        bail!("{}: no training images", args.data.display());
    }
    if args.recipe == Recipe::Finetune {
        return super::finetune::run(&args, &data);
    }
    let backbone = args.backbone.load(false)?;
    let explicit_weights = args.backbone.weights_file()?.map(|file| {
        let ext = file.extension().and_then(|e| e.to_str()).unwrap_or("bin");
        let name = format!("backbone.{ext}");
        (file, name)
    });
    let (train, val, _) = train_val_features(&backbone, &data, &args.cache)?;
    let classes = &data.classes;
    eprintln!(
        "recipe {}: {} train / {} val images, {} classes, {}-d features of {}",
        args.recipe.name(),
        train.len(),
        val.len(),
        classes.len(),
        train.dim,
        backbone.config.name
    );

    let (head, history, best_epoch, hyperparameters) = match args.recipe {
        Recipe::Head => {
            let options = args.dense_options();
            let bar = ProgressBar::new(options.epochs as u64).with_style(
                ProgressStyle::with_template("train {bar:30} epoch {pos}/{len}  {msg}")
                    // cannot fail: a fixed template that parses
                    .expect("static template"),
            );
            let result = train_dense(&train, &val, classes.len(), &options, |r| {
                bar.set_message(format!(
                    "loss {:.4} acc {:.3} | val loss {:.4} acc {:.3}",
                    r.train_loss, r.train_accuracy, r.val_loss, r.val_accuracy
                ));
                bar.inc(1);
            });
            bar.finish_and_clear();
            if let Some(epoch) = result.diverged_at {
                eprintln!(
                    "warning: the loss became NaN or infinite in epoch {epoch}; training stopped \
                     there and kept the best earlier epoch. Lower --lr (now {:e}).",
                    args.lr
                );
                if result.history.is_empty() {
                    bail!("no epoch finished before the loss diverged: lower --lr");
                }
            }
            eprintln!(
                "trained {} epochs, kept epoch {} (lowest validation loss)",
                result.history.len(),
                result.best_epoch
            );
            (
                result.head,
                result.history,
                Some(result.best_epoch),
                serde_json::to_value(&options)?,
            )
        }
        recipe => {
            let options = args.classical_options();
            let started = std::time::Instant::now();
            let head = match recipe {
                Recipe::Logreg => classical::fit_logreg(&train, classes, &options)?,
                Recipe::Svm => classical::fit_svm(&train, classes, &options)?,
                Recipe::Knn => classical::fit_knn(&train, classes, &options)?,
                Recipe::Head | Recipe::Finetune => unreachable!("handled above"),
            };
            eprintln!("fitted in {:.1} s", started.elapsed().as_secs_f64());
            let history = vec![final_record(&head, &train, &val)];
            (head, history, None, serde_json::to_value(&options)?)
        }
    };

    let val_metrics = score(&head, &val, classes);
    let train_accuracy = score(&head, &train, classes).accuracy;
    let card = ModelCard {
        graft_version: env!("CARGO_PKG_VERSION").into(),
        recipe: args.recipe,
        backbone: backbone.config.name.clone(),
        weights_id: backbone.weights_id.clone(),
        source: backbone.config.clone(),
        preprocessing: backbone.config.preprocessing_id(),
        feature_dim: backbone.config.feature_dim,
        classes: classes.clone(),
        hyperparameters,
        data: DataRecord::new(
            &args.data,
            &data.split,
            args.split.seed,
            train.len(),
            val.len(),
        ),
        // A backbone from --weights travels with the run, so predict and evaluate find it.
        backbone_file: explicit_weights.as_ref().map(|(_, name)| name.clone()),
    };
    let metrics = RunMetrics {
        train_size: train.len(),
        val_size: val.len(),
        best_epoch,
        train_accuracy,
        val: val_metrics,
    };
    let dir = args.out.clone().unwrap_or_else(|| {
        run::fresh_dir(
            Path::new("runs"),
            &data_name(&args.data),
            args.recipe.name(),
        )
    });
    let predictions = predictions(&head, &val, classes);
    run::save(&dir, &card, &head, &metrics, &history, &predictions)?;
    if let Some((file, name)) = &explicit_weights {
        std::fs::copy(file, dir.join(name))
            .with_context(|| format!("copying {} into {}", file.display(), dir.display()))?;
    }
    println!("{}", metrics.val.table());
    println!(
        "train accuracy {:.4}; run saved in {}",
        metrics.train_accuracy,
        dir.display()
    );
    // The model is saved; a report that cannot be drawn is worth a warning, not a failure.
    match graft::report::write_report(&dir) {
        Ok(path) => println!("report: {}", path.display()),
        Err(e) => eprintln!("warning: no report: {e}"),
    }
    Ok(ExitCode::SUCCESS)
}

/// Metrics of `head` on `data`.
pub fn score(head: &Head, data: &FeatureMatrix, classes: &[String]) -> Metrics {
    let scores = head.scores(&data.rows, data.dim);
    Metrics::compute(&data.labels, &argmax_rows(&scores, classes.len()), classes)
}

/// The verdict on every row of `data`.
pub fn predictions(head: &Head, data: &FeatureMatrix, classes: &[String]) -> Vec<PredictionRecord> {
    let scores = head.scores(&data.rows, data.dim);
    let k = classes.len();
    argmax_rows(&scores, k)
        .into_iter()
        .enumerate()
        .map(|(i, p)| PredictionRecord {
            path: data.paths[i].clone(),
            truth: classes[data.labels[i]].clone(),
            predicted: classes[p].clone(),
            probability: scores[i * k + p],
        })
        .collect()
}

/// The one history line of a model fitted in one go.
fn final_record(head: &Head, train: &FeatureMatrix, val: &FeatureMatrix) -> EpochRecord {
    let loss_and_accuracy = |data: &FeatureMatrix| {
        if data.is_empty() {
            return (f64::NAN, f64::NAN);
        }
        let scores = head.scores(&data.rows, data.dim);
        let logs: Vec<f32> = scores.iter().map(|p| p.max(1e-12).ln()).collect();
        let predicted = argmax_rows(&scores, head.classes());
        let correct = predicted
            .iter()
            .zip(&data.labels)
            .filter(|(p, t)| p == t)
            .count();
        (
            cross_entropy(&logs, &data.labels, head.classes()),
            correct as f64 / data.len() as f64,
        )
    };
    let (train_loss, train_accuracy) = loss_and_accuracy(train);
    let (val_loss, val_accuracy) = loss_and_accuracy(val);
    EpochRecord {
        epoch: 1,
        train_loss,
        train_accuracy,
        val_loss,
        val_accuracy,
        learning_rate: 0.0,
    }
}

/// A short name for DATA: its folder or file stem.
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

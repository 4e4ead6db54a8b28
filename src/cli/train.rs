//! `graft train`: a new top on the frozen backbone's cached features (recipe 2); fine-tuning
//! (recipe 3) is in `finetune.rs`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Result, bail};
use clap::{Args, ValueEnum};

use graft::data::augment::Augment;
use graft::recipe::bottleneck::{self, BottleneckOptions};
use graft::recipe::finetune::FinetuneRecipe;
use graft::run;
use graft::train::Recipe;
use graft::train::classical::ClassicalOptions;
use graft::train::dense::DenseOptions;
use graft::train::finetune::{BnMode, FinetuneOptions, Unfreeze};
use graft::train::schedule::Schedule;

use super::BackboneArgs;
use super::features::{CacheArgs, SplitArgs};
use super::progress::Bars;

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

    /// Leave these images out of training: a CSV with a `path` column (such as the
    /// label_issues.csv of `graft doctor --out DIR`) or one path per line; relative paths are
    /// relative to FILE's folder. The validation split stays as without it; the run records
    /// what was left out. Files are never moved, deleted or relabelled.
    #[arg(long, value_name = "FILE")]
    pub exclude: Option<PathBuf>,

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

    /// The library's options of recipe 2.
    pub fn bottleneck_options(&self) -> Result<BottleneckOptions> {
        Ok(BottleneckOptions {
            recipe: self.recipe,
            backbone: self.backbone.choice(),
            split: self.split.options()?,
            dense: self.dense_options(),
            classical: self.classical_options(),
            cache_dir: self.cache.cache_dir.clone(),
            extract_batch_size: self.cache.extract_batch_size,
            exclude: self.excluded()?,
        })
    }

    /// The paths listed by --exclude (none without it).
    fn excluded(&self) -> Result<Vec<PathBuf>> {
        Ok(match &self.exclude {
            Some(file) => graft::data::exclude::read_list(file)?,
            None => Vec::new(),
        })
    }

    /// The library's recipe 3.
    pub fn finetune_recipe(&self) -> Result<FinetuneRecipe> {
        let args = self;
        let f = &args.finetune;
        Ok(FinetuneRecipe {
            backbone: args.backbone.choice(),
            split: args.split.options()?,
            tuning: FinetuneOptions {
                head_learning_rate: args.lr,
                backbone_learning_rate: f.backbone_lr,
                lr_decay: f.lr_decay,
                unfreeze: f.unfreeze,
                stages: f.stages,
                epochs_per_stage: f.epochs_per_stage,
                schedule: f.schedule,
                batch_size: f.finetune_batch_size,
                bn_mode: f.bn_mode,
                augment: f.augment,
                dropout: args.dropout,
                weight_decay: args.weight_decay,
                label_smoothing: args.label_smoothing,
                seed: args.split.seed,
                head_epochs: args.epochs,
                patience: args.patience,
            },
            head_batch_size: args.batch_size,
            balanced_class_weights: args.dense_options().balanced_class_weights,
            cache_dir: args.cache.cache_dir.clone(),
            extract_batch_size: args.cache.extract_batch_size,
            resume: f.resume.is_some(),
            exclude: args.excluded()?,
        })
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
    if args.recipe == Recipe::Finetune {
        let recipe = args.finetune_recipe()?;
        let dir = match (&args.finetune.resume, &args.out) {
            (Some(dir), _) | (None, Some(dir)) => dir.clone(),
            (None, None) => run::fresh_dir(
                Path::new("runs"),
                &bottleneck::data_name(&args.data),
                Recipe::Finetune.name(),
            ),
        };
        return super::finetune::run(&args.data, &dir, &recipe);
    }
    let options = args.bottleneck_options()?;
    let dir = args.out.clone().unwrap_or_else(|| {
        run::fresh_dir(
            Path::new("runs"),
            &bottleneck::data_name(&args.data),
            args.recipe.name(),
        )
    });
    let trained = bottleneck::train(&args.data, &dir, &options, &mut Bars::default())
        .map_err(super::recipe_error)?;
    println!("{}", trained.metrics.validation_text());
    println!(
        "train accuracy {:.4}; run saved in {}",
        trained.metrics.train_accuracy,
        dir.display()
    );
    super::print_report(&dir);
    Ok(ExitCode::SUCCESS)
}

//! `graft pretrain DATA --method simclr`: adapt a backbone to unlabelled images, probe it
//! before and after, and save it where `--weights RUN_DIR` finds it.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Result, bail};
use clap::{Args, ValueEnum};

use graft::adapted::BACKBONE_FILE;
use graft::recipe::RecipeError;
use graft::recipe::bottleneck::data_name;
use graft::recipe::simclr::{self, SimclrRecipe};
use graft::train::finetune::BnMode;
use graft::train::simclr::SimclrOptions;

use super::BackboneArgs;
use super::features::{CacheArgs, SplitArgs};
use super::progress::Bars;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Method {
    /// SimCLR (Chen et al. 2020): two augmented views per image, NT-Xent loss.
    Simclr,
}

#[derive(Debug, Args)]
pub struct PretrainArgs {
    /// Unlabelled images: a folder in any layout (searched recursively; class folders, if
    /// any, are ignored).
    #[arg(value_name = "DATA")]
    pub data: PathBuf,

    /// Self-supervised method.
    #[arg(long, value_enum, default_value = "simclr")]
    pub method: Method,

    #[command(flatten)]
    pub backbone: BackboneArgs,

    /// Start from random weights instead of the backbone's ImageNet weights (needs far more
    /// images and epochs to be useful).
    #[arg(long)]
    pub from_scratch: bool,

    /// Passes over the images.
    #[arg(long, default_value_t = 10)]
    pub epochs: usize,

    /// Images per step; each gives two views, so the loss compares 2N embeddings with 2(N-1)
    /// negatives each. Larger is better for contrastive learning, and costs memory.
    #[arg(long, default_value_t = 32, value_name = "N")]
    pub batch_size: usize,

    /// Peak learning rate of the projection head (AdamW).
    #[arg(long, default_value_t = 1e-3)]
    pub lr: f64,

    /// Peak learning rate of the backbone [default: 1e-4 from ImageNet weights, which adapts
    /// them without overwriting them; 1e-3 with --from-scratch].
    #[arg(long)]
    pub backbone_lr: Option<f64>,

    /// AdamW weight decay.
    #[arg(long, default_value_t = 1e-4)]
    pub weight_decay: f64,

    /// NT-Xent temperature (0.1 suits ImageNet-initialised backbones; SimCLR used 0.1-0.5).
    #[arg(long, default_value_t = 0.1)]
    pub temperature: f64,

    /// Output width of the 2-layer projection head.
    #[arg(long, default_value_t = 128)]
    pub projection_dim: usize,

    /// Side of the training views in pixels [default: the backbone's resolution]; lower
    /// trains much faster (the saved backbone still runs at its own resolution).
    #[arg(long, value_name = "PX")]
    pub resolution: Option<usize>,

    /// Epochs of linear learning-rate warm-up before the cosine decay.
    #[arg(long, default_value_t = 1)]
    pub warmup_epochs: usize,

    /// BatchNorm [default: frozen from ImageNet weights (running statistics kept, gamma and beta
    /// train); train with --from-scratch (batch statistics, as in SimCLR)].
    #[arg(long = "bn", value_enum)]
    pub bn_mode: Option<BnMode>,

    /// Add SimCLR's Gaussian blur to the augmentations (p 0.5).
    #[arg(long)]
    pub blur: bool,

    /// A labelled folder for the linear probe: logistic regression and kNN on its features,
    /// before and after pretraining. Images of its validation split are left out of
    /// pretraining when DATA contains them.
    #[arg(long, value_name = "LABELLED_DATA")]
    pub probe: Option<PathBuf>,

    #[command(flatten)]
    pub split: SplitArgs,

    #[command(flatten)]
    pub cache: CacheArgs,

    /// Pretrain on at most this many images (the first after a seeded shuffle).
    #[arg(long, value_name = "N")]
    pub max_images: Option<usize>,

    /// Run directory (default: runs/<data>-simclr-<n>).
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,

    /// Continue the interrupted run in RUN_DIR from its last finished epoch (same options).
    #[arg(long, value_name = "RUN_DIR")]
    pub resume: Option<PathBuf>,

    /// Stop after this many epochs in all (stands in for an interruption in tests).
    #[arg(long, hide = true)]
    pub stop_after_epochs: Option<usize>,
}

impl PretrainArgs {
    /// The method's options (resolution 0: the backbone's own).
    fn options(&self) -> SimclrOptions {
        SimclrOptions {
            epochs: self.epochs,
            batch_size: self.batch_size,
            learning_rate: self.lr,
            backbone_learning_rate: self.backbone_lr.unwrap_or(if self.from_scratch {
                1e-3
            } else {
                1e-4
            }),
            weight_decay: self.weight_decay,
            temperature: self.temperature,
            projection_dim: self.projection_dim,
            resolution: self.resolution.unwrap_or(0),
            warmup_epochs: self.warmup_epochs,
            bn_mode: self.bn_mode.unwrap_or(if self.from_scratch {
                BnMode::Train
            } else {
                BnMode::Frozen
            }),
            blur: self.blur,
            seed: self.split.seed,
        }
    }

    fn check(&self) -> Result<()> {
        if self.batch_size < 2 {
            bail!("--batch-size must be at least 2: NT-Xent needs other images as negatives");
        }
        if self.epochs == 0 {
            bail!("--epochs must be at least 1");
        }
        if !(self.temperature > 0.0 && self.temperature.is_finite()) {
            bail!("--temperature must be a positive number");
        }
        if self.resolution.is_some_and(|r| !(32..=1024).contains(&r)) {
            bail!("--resolution must be between 32 and 1024 pixels");
        }
        Ok(())
    }
}

pub fn run(args: PretrainArgs) -> Result<ExitCode> {
    args.check()?;
    let options = SimclrRecipe {
        backbone: args.backbone.choice(),
        from_scratch: args.from_scratch,
        simclr: args.options(),
        probe: args.probe.clone(),
        probe_split: args.split.options()?,
        max_images: args.max_images,
        cache_dir: args.cache.cache_dir.clone(),
        extract_batch_size: args.cache.extract_batch_size,
        resume: args.resume.is_some(),
        stop_after_epochs: args.stop_after_epochs,
    };
    let dir = match (&args.resume, &args.out) {
        (Some(dir), _) | (None, Some(dir)) => dir.clone(),
        (None, None) => graft::run::fresh_dir(Path::new("runs"), &data_name(&args.data), "simclr"),
    };
    let resume_hint = |done: String| {
        format!(
            "{done}; continue with `--resume {}` and the same options",
            dir.display()
        )
    };
    let run = match simclr::pretrain(&args.data, &dir, &options, &mut Bars::default()) {
        Err(RecipeError::Interrupted(interrupted)) => {
            return Err(graft::interrupt::Interrupted(resume_hint(interrupted.0)).into());
        }
        other => other.map_err(super::recipe_error)?,
    };
    if !run.is_complete() {
        eprintln!(
            "{}",
            resume_hint(format!(
                "stopped after {} of {} epochs",
                run.metrics.history.len(),
                args.epochs
            ))
        );
        return Ok(ExitCode::SUCCESS);
    }
    let metrics = &run.metrics;
    if let Some(probe) = &metrics.probe {
        println!(
            "linear probe on {} ({} val images):",
            probe.data.display(),
            probe.val_size
        );
        println!("                      before   after");
        println!(
            "logistic regression   {:.4}   {:.4}",
            probe.before.logreg_accuracy, probe.after.logreg_accuracy
        );
        println!(
            "kNN                   {:.4}   {:.4}",
            probe.before.knn_accuracy, probe.after.knn_accuracy
        );
    }
    if let (Some(first), Some(last)) = (metrics.history.first(), metrics.history.last()) {
        println!(
            "NT-Xent loss {:.4} (epoch 1) -> {:.4} (epoch {}) in {:.0} s",
            first.loss, last.loss, last.epoch, metrics.seconds
        );
    }
    println!(
        "adapted backbone saved in {}; use it with `--weights {}`",
        dir.join(BACKBONE_FILE).display(),
        dir.display()
    );
    super::print_report(&dir);
    Ok(ExitCode::SUCCESS)
}

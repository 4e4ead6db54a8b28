//! `graft pretrain DATA --method simclr`: adapt a backbone to unlabelled images, probe it
//! before and after, and save it where `--weights RUN_DIR` finds it.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::{Args, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};

use graft::adapted::{
    self, BACKBONE_FILE, CHECKPOINT_DIR, PretrainCard, PretrainMetrics, Probe, ProbeScores,
};
use graft::backbone::export::save_safetensors;
use graft::backbone::mbnet::MbNet;
use graft::backbone::{Backbone, LoadOptions};
use graft::data::dataset::{self, Dataset};
use graft::train::checkpoint::Checkpoints;
use graft::train::classical::{self, ClassicalOptions};
use graft::train::finetune::BnMode;
use graft::train::simclr::{SimclrOptions, pretrain};

use super::BackboneArgs;
use super::features::{CacheArgs, SplitArgs, train_val_features};
use graft::recipe::bottleneck::{data_name, score};

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
    fn options(&self, default_resolution: usize) -> SimclrOptions {
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
            resolution: self.resolution.unwrap_or(default_resolution),
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

/// Logistic-regression and kNN accuracy on the probe's validation split.
fn probe_scores(
    backbone: &Backbone,
    data: &Dataset,
    cache: &CacheArgs,
) -> Result<(ProbeScores, usize, usize)> {
    let (train, val, _) = train_val_features(backbone, data, cache)?;
    let options = ClassicalOptions::default();
    let logreg = classical::fit_logreg(&train, &data.classes, &options)?;
    let knn = classical::fit_knn(&train, &data.classes, &options)?;
    Ok((
        ProbeScores {
            logreg_accuracy: score(&logreg, &val, &data.classes).accuracy,
            knn_accuracy: score(&knn, &val, &data.classes).accuracy,
        },
        train.len(),
        val.len(),
    ))
}

/// The real paths of `data`'s validation images.
fn validation_paths(data: &Dataset) -> HashSet<PathBuf> {
    data.val
        .iter()
        .map(|s| s.path.canonicalize().unwrap_or_else(|_| s.path.clone()))
        .collect()
}

/// The images to pretrain on: everything under DATA except the probe's validation images.
fn pretraining_images(
    args: &PretrainArgs,
    probe: Option<&Dataset>,
) -> Result<(Vec<PathBuf>, usize)> {
    let (mut paths, skipped) = dataset::list_images(&args.data)?;
    if skipped.not_image > 0 {
        eprintln!(
            "{}: {} files without an image extension ignored",
            args.data.display(),
            skipped.not_image
        );
    }
    let before = paths.len();
    if let Some(probe) = probe {
        let held_out = validation_paths(probe);
        paths.retain(|p| !held_out.contains(&p.canonicalize().unwrap_or_else(|_| p.clone())));
    }
    let excluded = before - paths.len();
    if let Some(max) = args.max_images
        && paths.len() > max
    {
        use rand::SeedableRng;
        use rand::seq::SliceRandom;
        paths.shuffle(&mut rand_chacha::ChaCha8Rng::seed_from_u64(args.split.seed));
        paths.truncate(max);
        paths.sort();
    }
    if paths.len() < 2 {
        bail!(
            "{}: {} usable images; SimCLR needs at least 2",
            args.data.display(),
            paths.len()
        );
    }
    Ok((paths, excluded))
}

pub fn run(args: PretrainArgs) -> Result<ExitCode> {
    args.check()?;
    let started = Instant::now();
    let probe_data = match &args.probe {
        Some(dir) => Some(dataset::open(dir, args.split.options()?)?),
        None => None,
    };
    let (paths, excluded) = pretraining_images(&args, probe_data.as_ref())?;
    let info = args.backbone.info()?;
    let device = graft::backend::device();
    let parent = if args.from_scratch {
        let config = info.source_config(args.backbone.padding.map(Into::into));
        let net = MbNet::init(
            &info.spec(),
            config.padding,
            config.bn_eps,
            false,
            &mut graft::rng::run_rng(args.split.seed, 0),
            &device,
        );
        Backbone::new(config, net, format!("random-init-seed-{}", args.split.seed))
    } else {
        args.backbone.load_trainable()?
    };
    let options = args.options(parent.config.resolution);
    eprintln!(
        "pretrain {} ({}) on {} images{}: {} epochs of {} steps, {} px views, batch {} (2x{} views), \
         temperature {}, backbone lr {:e}, head lr {:e}, BatchNorm {:?}",
        info.name,
        if args.from_scratch {
            "from scratch"
        } else {
            "from ImageNet weights"
        },
        paths.len(),
        if excluded > 0 {
            format!(" ({excluded} of the probe's validation images left out)")
        } else {
            String::new()
        },
        options.epochs,
        paths.len().div_ceil(options.batch_size),
        options.resolution,
        options.batch_size,
        options.batch_size,
        options.temperature,
        options.backbone_learning_rate,
        options.learning_rate,
        options.bn_mode
    );

    // 1. The probe before: features of the parent backbone (from the cache when there).
    let before = match &probe_data {
        Some(data) => {
            let frozen = Backbone::new(
                parent.config.clone(),
                parent.net.clone(),
                parent.weights_id.clone(),
            )
            .for_inference();
            let (scores, train, val) = probe_scores(&frozen, data, &args.cache)?;
            eprintln!(
                "probe before: logistic regression {:.4}, kNN {:.4} ({train} train / {val} val images)",
                scores.logreg_accuracy, scores.knn_accuracy
            );
            Some((scores, train, val))
        }
        None => None,
    };

    // 2. Pretraining, checkpointed every epoch.
    let dir = match (&args.resume, &args.out) {
        (Some(dir), _) | (None, Some(dir)) => dir.clone(),
        (None, None) => graft::run::fresh_dir(Path::new("runs"), &data_name(&args.data), "simclr"),
    };
    let checkpoints = Checkpoints {
        dir: Some(dir.join(CHECKPOINT_DIR)),
        resume: args.resume.is_some(),
        stop_after: args.stop_after_epochs,
    };
    if checkpoints.resume && !checkpoints.exists() {
        eprintln!(
            "{}: no finished epoch to resume from; starting from the beginning",
            dir.display()
        );
    }
    std::fs::create_dir_all(&dir).with_context(|| dir.display().to_string())?;
    let steps = options.epochs * paths.len().div_ceil(options.batch_size);
    let bar = ProgressBar::new(steps as u64).with_style(
        ProgressStyle::with_template(
            "simclr {bar:30} step {pos}/{len} [{elapsed_precise}<{eta_precise}]  {msg}",
        )
        // cannot fail: a fixed template that parses
        .expect("static template"),
    );
    let config = parent.config.clone();
    let result = pretrain(
        parent.net,
        &config,
        &paths,
        &options,
        &checkpoints,
        |_, loss| {
            bar.set_message(format!("loss {loss:.4}"));
            bar.inc(1);
        },
        |r| {
            bar.suspend(|| {
                eprintln!(
                    "epoch {}: NT-Xent loss {:.4}, positive pair found {:.3}, backbone lr {:.2e}{}",
                    r.epoch,
                    r.loss,
                    r.positive_accuracy,
                    r.learning_rate,
                    if r.skipped > 0 {
                        format!(", {} images did not decode", r.skipped)
                    } else {
                        String::new()
                    }
                )
            });
        },
    );
    bar.finish_and_clear();
    let result = super::checkpointed(result, &dir)?;
    if result.history.len() < options.epochs {
        eprintln!(
            "stopped after {} of {} epochs; continue with `--resume {}`",
            result.history.len(),
            options.epochs,
            dir.display()
        );
        return Ok(ExitCode::SUCCESS);
    }

    // 3. Save the adapted backbone, then load it back as every other command will.
    let file = dir.join(BACKBONE_FILE);
    save_safetensors(&result.net, info.layout, &file)
        .with_context(|| file.display().to_string())?;
    let options_for_load = LoadOptions {
        include_top: false,
        padding: Some(config.padding),
    };
    let adapted = Backbone::load(info, &file, options_for_load, &device)?.for_inference();

    // 4. The probe after.
    let probe = match (&probe_data, before) {
        (Some(data), Some((before, train_size, val_size))) => {
            let (after, _, _) = probe_scores(&adapted, data, &args.cache)?;
            Some(Probe {
                data: args.probe.clone().unwrap_or_default(),
                train_size,
                val_size,
                before,
                after,
            })
        }
        _ => None,
    };
    let card = PretrainCard {
        graft_version: env!("CARGO_PKG_VERSION").into(),
        method: "simclr".into(),
        backbone: info.name.into(),
        weights_id: adapted.weights_id.clone(),
        parent_weights_id: (!args.from_scratch).then(|| parent.weights_id.clone()),
        source: config.clone(),
        options: serde_json::to_value(&options)?,
        data: args.data.clone(),
        images: paths.len(),
        excluded_probe_val: excluded,
    };
    let metrics = PretrainMetrics {
        history: result.history,
        seconds: started.elapsed().as_secs_f64(),
        probe,
    };
    adapted::save(&dir, &card, &metrics)?;
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
        file.display(),
        dir.display()
    );
    match graft::report::write_report(&dir) {
        Ok(path) => println!("report: {}", path.display()),
        Err(e) => eprintln!("warning: no report: {e}"),
    }
    Ok(ExitCode::SUCCESS)
}

//! `graft lr-find`: LR range test for the new top on cached features.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Result, bail};
use clap::Args;

use graft::data::dataset;
use graft::train::lr_find::{lr_range_test, suggest};

use super::BackboneArgs;
use super::features::{CacheArgs, SplitArgs, features_of, open_cache, report_listing};

#[derive(Debug, Args)]
pub struct LrFindArgs {
    /// Labelled images (as for `graft train`).
    #[arg(value_name = "DATA")]
    pub data: PathBuf,

    #[command(flatten)]
    pub backbone: BackboneArgs,

    #[command(flatten)]
    pub split: SplitArgs,

    /// Smallest learning rate of the sweep.
    #[arg(long, default_value_t = 1e-6)]
    pub min_lr: f64,

    /// Largest learning rate of the sweep.
    #[arg(long, default_value_t = 1.0)]
    pub max_lr: f64,

    /// Mini-batches in the sweep (one learning rate each).
    #[arg(long, default_value_t = 100)]
    pub steps: usize,

    #[arg(long, default_value_t = 32)]
    pub batch_size: usize,

    /// Where to write the sweep as CSV (learning_rate,loss,smoothed).
    #[arg(long, default_value = "lr-find.csv", value_name = "FILE")]
    pub output: PathBuf,

    #[command(flatten)]
    pub cache: CacheArgs,
}

pub fn run(args: LrFindArgs) -> Result<ExitCode> {
    if !(args.min_lr > 0.0 && args.max_lr > args.min_lr) || args.steps < 2 || args.batch_size == 0 {
        bail!("need 0 < --min-lr < --max-lr, --steps >= 2 and --batch-size >= 1");
    }
    let data = dataset::open(&args.data, args.split.options()?)?;
    data.check_classes(&args.data)?;
    report_listing(&data);
    let backbone = args.backbone.load(false)?;
    let mut cache = open_cache(&backbone, args.cache.cache_dir.as_ref())?;
    let (mut matrices, _) = features_of(
        &backbone,
        &mut cache,
        &[&data.train],
        args.cache.extract_batch_size,
    )?;
    // cannot fail: features_of returns one matrix per group, and one group went in
    let train = matrices.pop().expect("one group");
    if train.is_empty() {
        bail!("{}: no training images", args.data.display());
    }
    let points = lr_range_test(
        &train,
        data.classes.len(),
        (args.min_lr, args.max_lr),
        args.steps,
        args.batch_size,
        args.split.seed,
    );
    let mut csv = String::from("learning_rate,loss,smoothed\n");
    for p in &points {
        csv += &format!("{:e},{:.6},{:.6}\n", p.learning_rate, p.loss, p.smoothed);
    }
    graft::util::write_atomic(&args.output, csv.as_bytes())
        .map_err(|e| anyhow::anyhow!("{}: {e}", args.output.display()))?;
    match suggest(&points) {
        Some(lr) => println!(
            "suggested head learning rate: {lr:.1e} (steepest descent of the smoothed loss; {} rates tried, sweep in {})",
            points.len(),
            args.output.display()
        ),
        None => println!(
            "no suggestion: the sweep was too short ({} points)",
            points.len()
        ),
    }
    Ok(ExitCode::SUCCESS)
}

//! `graft evaluate`: score a trained model on a labelled folder.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::Args;

use graft::recipe::{EvalSplit, EvaluateOptions};
use graft::run::{EvaluationRecord, TrainedModel};

use super::features::CacheArgs;
use super::progress::Bars;

#[derive(Debug, Args)]
pub struct EvaluateArgs {
    /// Labelled images, laid out like the training data; class names must be the model's.
    #[arg(value_name = "DATA")]
    pub data: PathBuf,

    /// Run directory written by `graft train`.
    #[arg(long, value_name = "RUN_DIR")]
    pub model: PathBuf,

    /// Which images of DATA to score.
    #[arg(long, value_enum, default_value_t = EvalSplit::All)]
    pub split: EvalSplit,

    /// Checkpoint of the backbone, when it is not in the store.
    #[arg(long, value_name = "FILE")]
    pub weights: Option<PathBuf>,

    /// Where to write the metrics (default: RUN_DIR/evaluate-<data name>-<split>.json).
    #[arg(long, value_name = "FILE")]
    pub output: Option<PathBuf>,

    /// Test-time augmentation: also score the average of the predictions on each image and on
    /// its mirror image, and report both.
    #[arg(long)]
    pub tta: bool,

    #[command(flatten)]
    pub cache: CacheArgs,
}

pub fn run(args: EvaluateArgs) -> Result<ExitCode> {
    let model = TrainedModel::open(&args.model, args.weights.as_deref())?;
    let options = EvaluateOptions {
        split: args.split,
        tta: args.tta,
        cache_dir: args.cache.cache_dir.clone(),
        extract_batch_size: args.cache.extract_batch_size,
    };
    let evaluation = model
        .evaluate_with(&args.data, &options, &mut Bars::default())
        .map_err(super::recipe_error)?;
    let record = &evaluation.record;
    let output = args
        .output
        .clone()
        .unwrap_or_else(|| EvaluationRecord::default_path(&model.dir, &args.data, &record.split));
    record.save(&output)?;
    println!("{}", record.metrics.table());
    if let Some(tta) = &record.tta {
        println!(
            "with test-time augmentation (original + horizontal flip): accuracy {:.4} ({:+.4})",
            tta.metrics.accuracy,
            tta.metrics.accuracy - record.metrics.accuracy
        );
    }
    if let Some(c) = &record.calibration {
        println!(
            "calibration (temperature {:.4}): expected calibration error {:.4}, log-loss {:.4}",
            c.temperature, c.ece, c.log_loss
        );
    }
    println!("metrics written to {}", output.display());
    Ok(if evaluation.skipped == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

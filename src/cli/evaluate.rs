//! `graft evaluate`: score a trained model on a labelled folder.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::Args;

use graft::recipe::{EvalSplit, EvaluateOptions};
use graft::run::{EvaluationRecord, TrainedModel};

use graft::data::dataset::{Sample, SplitOptions};
use graft::metrics::Metrics;

use super::features::CacheArgs;
use super::progress::Bars;

#[derive(Debug, Args)]
pub struct EvaluateArgs {
    /// Labelled images, laid out like the training data; class names must be the model's.
    #[arg(value_name = "DATA")]
    pub data: PathBuf,

    /// Run directory written by `graft train`.
    #[arg(long, value_name = "RUN_DIR", required_unless_present = "zero_shot")]
    pub model: Option<PathBuf>,

    /// Score zero-shot classification instead of a trained model: the class folders' names
    /// as labels, with the CLIP / SigLIP `--backbone`, no training. Compare with a trained
    /// head on the same folder.
    #[arg(long, conflicts_with = "model", requires = "backbone")]
    pub zero_shot: bool,

    /// The CLIP or SigLIP model for `--zero-shot`: `hf:openai/clip-vit-base-patch32`, or a
    /// folder holding a `transformers` or OpenCLIP repository.
    #[arg(long, short = 'b', value_name = "MODEL")]
    pub backbone: Option<String>,

    /// Prompt template for `--zero-shot`, `{}` for the label; repeat to average several
    /// (default: CLIP's 80 ImageNet templates).
    #[arg(long = "prompt", value_name = "TEMPLATE", requires = "zero_shot")]
    pub prompts: Vec<String>,

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
    let Some(model_dir) = &args.model else {
        return zero_shot(&args);
    };
    let model = TrainedModel::open(model_dir, args.weights.as_deref())?;
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

/// `--zero-shot`: the accuracy of zero-shot classification into DATA's class names.
fn zero_shot(args: &EvaluateArgs) -> Result<ExitCode> {
    let data = graft::data::dataset::open(&args.data, SplitOptions::default())?;
    data.check_classes(&args.data)?;
    super::features::report_listing(&data);
    let samples: Vec<Sample> = match args.split {
        EvalSplit::All => data.train.iter().chain(&data.val).cloned().collect(),
        EvalSplit::Val => data.val.clone(),
        EvalSplit::Train => data.train.clone(),
    };
    let spec = args.backbone.as_deref().unwrap_or_default();
    let model = super::zero_shot::open_model(spec)?;
    let options = super::zero_shot::ZeroShotArgs {
        labels: data.classes.clone(),
        labels_file: None,
        prompts: args.prompts.clone(),
    };
    let classifier = super::zero_shot::classifier(&model, &data.classes, &options)?;
    let (images, skipped) = super::zero_shot::cached_embeddings(&model, &samples, &args.cache)?;
    let predicted: Vec<usize> = (0..images.len())
        .map(|i| {
            let p = classifier.probabilities(images.row(i));
            (0..p.len())
                .max_by(|&a, &b| p[a].total_cmp(&p[b]))
                .unwrap_or(0)
        })
        .collect();
    let metrics = Metrics::compute(&images.labels, &predicted, &data.classes);
    println!("zero-shot with {spec}");
    println!("{}", metrics.table());
    if let Some(output) = &args.output {
        let record = serde_json::json!({
            "zero_shot": {
                "model": spec,
                "prompts": options.prompts()?.describe(),
                "labels": data.classes,
            },
            "data": args.data.to_string_lossy(),
            "metrics": metrics,
        });
        graft::util::write_atomic(output, serde_json::to_string_pretty(&record)?.as_bytes())?;
        println!("metrics written to {}", output.display());
    }
    Ok(if skipped == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

//! `graft evaluate`: score a trained model on a labelled folder.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Result, bail};
use clap::{Args, ValueEnum};

use graft::data::DecodeLimits;
use graft::data::dataset::{self, Sample};
use graft::data::preprocess::hflip;
use graft::features::{FeatureMatrix, features_of_view};
use graft::metrics::{Metrics, argmax_rows};
use graft::run::evaluation::TtaRecord;
use graft::run::{EvaluationRecord, TrainedModel};

use super::features::{CacheArgs, features_of, open_cache, report_listing};
use graft::recipe::bottleneck::score;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Split {
    /// Every image of DATA (a separate test folder).
    All,
    /// Only the training part (split as when the model was trained).
    Train,
    /// Only the validation part (split as when the model was trained).
    Val,
}

#[derive(Debug, Args)]
pub struct EvaluateArgs {
    /// Labelled images, laid out like the training data; class names must be the model's.
    #[arg(value_name = "DATA")]
    pub data: PathBuf,

    /// Run directory written by `graft train`.
    #[arg(long, value_name = "RUN_DIR")]
    pub model: PathBuf,

    /// Which images of DATA to score.
    #[arg(long, value_enum, default_value_t = Split::All)]
    pub split: Split,

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
    let card = &model.card;
    let data = dataset::open(&args.data, card.data.split_options())?;
    report_listing(&data);
    // The model's class indices, looked up by name.
    let mut to_model = Vec::with_capacity(data.classes.len());
    for class in &data.classes {
        match card.classes.iter().position(|c| c == class) {
            Some(i) => to_model.push(i),
            None => bail!(
                "{}: class `{class}` is not one of the model's classes ({})",
                args.data.display(),
                card.classes.join(", ")
            ),
        }
    }
    let samples: Vec<Sample> = match args.split {
        Split::All => data.train.iter().chain(&data.val).cloned().collect(),
        Split::Train => data.train.clone(),
        Split::Val => data.val.clone(),
    }
    .into_iter()
    .map(|s| Sample {
        label: to_model[s.label],
        ..s
    })
    .collect();
    if samples.is_empty() {
        bail!("{}: no images to evaluate", args.data.display());
    }
    let mut cache = open_cache(&model.backbone, args.cache.cache_dir.as_ref())?;
    let (mut matrices, summary) = features_of(
        &model.backbone,
        &mut cache,
        &[&samples],
        args.cache.extract_batch_size,
    )?;
    // cannot fail: features_of returns one matrix per group, and one group went in
    let features = matrices.pop().expect("one group");
    let metrics = score(&model.head, &features, &card.classes);
    let tta = if args.tta {
        Some(tta_metrics(
            &model,
            &features,
            args.cache.extract_batch_size,
        )?)
    } else {
        None
    };
    let split = format!("{:?}", args.split).to_lowercase();
    let output = args
        .output
        .clone()
        .unwrap_or_else(|| EvaluationRecord::default_path(&model.dir, &args.data, &split));
    let record = EvaluationRecord {
        data: args.data.clone(),
        split,
        metrics: metrics.clone(),
        tta: tta.clone().map(|metrics| TtaRecord {
            views: vec!["original".into(), "horizontal flip".into()],
            metrics,
        }),
    };
    record.save(&output)?;
    println!("{}", metrics.table());
    if let Some(tta) = &tta {
        println!(
            "with test-time augmentation (original + horizontal flip): accuracy {:.4} ({:+.4})",
            tta.accuracy,
            tta.accuracy - metrics.accuracy
        );
    }
    println!("metrics written to {}", output.display());
    Ok(if summary.skipped.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// Metrics of the average prediction over each image and its mirror image.
fn tta_metrics(
    model: &TrainedModel,
    features: &FeatureMatrix,
    batch_size: usize,
) -> Result<Metrics> {
    let side = model.backbone.config.resolution;
    let flipped = features_of_view(
        &model.backbone,
        &features.paths,
        batch_size,
        DecodeLimits::default(),
        |chw| hflip(chw, side),
    );
    let mut rows = Vec::with_capacity(features.rows.len());
    for (result, path) in flipped.into_iter().zip(&features.paths) {
        match result {
            Ok(row) => rows.extend(row),
            // It decoded a moment ago; if it no longer does, the run cannot be compared.
            Err(e) => anyhow::bail!("{}: {e}", path.display()),
        }
    }
    let classes = model.card.classes.len();
    let original = model.head.scores(&features.rows, features.dim);
    let mirrored = model.head.scores(&rows, features.dim);
    let mean: Vec<f32> = original
        .iter()
        .zip(&mirrored)
        .map(|(a, b)| (a + b) / 2.0)
        .collect();
    Ok(Metrics::compute(
        &features.labels,
        &argmax_rows(&mean, classes),
        &model.card.classes,
    ))
}

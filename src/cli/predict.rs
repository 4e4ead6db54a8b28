//! `graft predict`: top-k for each image, from the ImageNet classifier or a trained model.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};

use graft::data::DecodeLimits;
use graft::infer::{Classified, Top, classify};
use graft::run::TrainedModel;

use super::BackboneArgs;
use super::zero_shot::{self, ZeroShotArgs};

#[derive(Debug, Args)]
pub struct PredictArgs {
    /// Image files (JPEG, PNG, BMP, GIF, WebP), or folders searched recursively for them.
    #[arg(required = true, value_name = "IMAGE|DIR")]
    pub images: Vec<PathBuf>,

    #[command(flatten)]
    pub backbone: BackboneArgs,

    /// Classify with a model trained by `graft train` (its run directory) instead of the
    /// backbone's ImageNet classifier.
    #[arg(long, value_name = "RUN_DIR", conflicts_with = "backbone")]
    pub model: Option<PathBuf>,

    /// How many classes to show per image.
    #[arg(long, short = 'k', default_value_t = 5)]
    pub top: usize,

    /// Print one JSON document instead of text.
    #[arg(long)]
    pub json: bool,

    /// Also write one CSV row per image to FILE: path, then label and probability of each of
    /// the top classes, then the error for an image that could not be classified.
    #[arg(long, value_name = "FILE")]
    pub csv: Option<PathBuf>,

    /// Images per forward pass.
    #[arg(long, default_value_t = 32)]
    pub batch_size: usize,

    /// Refuse images with more pixels than this (decompression bombs).
    #[arg(long, default_value_t = DecodeLimits::default().max_pixels)]
    pub max_pixels: u64,

    /// Also write into DIR, for each image, a PNG of it (the crop the network saw) with a
    /// heatmap of the regions that drove the predicted class (CAM / Grad-CAM; needs a linear
    /// top: head, logreg or svm, or the ImageNet classifier).
    #[arg(long, value_name = "DIR")]
    pub explain: Option<PathBuf>,

    #[command(flatten)]
    pub zero_shot: ZeroShotArgs,
}

pub fn run(args: PredictArgs) -> Result<ExitCode> {
    let images = expand_folders(&args.images)?;
    let trained = match &args.model {
        Some(dir) => Some(TrainedModel::open(
            dir,
            args.backbone.weights_file()?.as_deref(),
        )?),
        None => None,
    };
    let labels = args.zero_shot.labels()?;
    if args.zero_shot.asked() && (args.model.is_some() || args.explain.is_some()) {
        anyhow::bail!(
            "--labels classifies with a CLIP / SigLIP --backbone: not with --model or --explain"
        );
    }
    let (contrastive, classifier);
    let imagenet;
    let (backbone, top) = match &trained {
        Some(model) => (
            &model.backbone,
            Top::Trained {
                head: &model.head,
                classes: &model.card.classes,
            },
        ),
        None if args.zero_shot.asked() => {
            contrastive = zero_shot::open_model(&args.backbone.backbone)?;
            classifier = zero_shot::classifier(&contrastive, &labels, &args.zero_shot)?;
            (&contrastive.image, Top::ZeroShot(&classifier))
        }
        None => {
            imagenet = args.backbone.load(true)?;
            (&imagenet, Top::ImageNet)
        }
    };
    let linear = match &args.explain {
        Some(_) => Some(super::explain::linear_top(backbone, top)?),
        None => None,
    };
    let limits = DecodeLimits {
        max_pixels: args.max_pixels,
        ..DecodeLimits::default()
    };
    let bar = if images.len() > args.batch_size {
        ProgressBar::new(images.len() as u64).with_style(
            ProgressStyle::with_template("{bar:30} {pos}/{len} images {per_sec} ETA {eta}")
                // cannot fail: a fixed template, shown by every run with more images than a batch
                .expect("static template"),
        )
    } else {
        ProgressBar::hidden()
    };
    let results = classify(
        backbone,
        top,
        &images,
        args.top,
        args.batch_size,
        limits,
        |n| bar.inc(n as u64),
    );
    bar.finish_and_clear();

    let failed = results.iter().filter(|c| c.result.is_err()).count();
    if let Some(file) = &args.csv {
        write_csv(file, &results, args.top)
            .with_context(|| format!("writing {}", file.display()))?;
    }
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&to_json(&model_name(&args, backbone), &results))?
        );
    } else {
        print_text(&results);
    }
    for c in &results {
        if let Err(e) = &c.result {
            eprintln!("error: {e}");
        }
    }
    // After the predictions, so that their lines come first.
    if let (Some(dir), Some(linear)) = (&args.explain, &linear) {
        super::explain::write(backbone, top, linear, &images, dir, args.batch_size, limits)?;
    }
    if failed > 0 {
        eprintln!(
            "{failed} of {} images could not be classified",
            results.len()
        );
        return Ok(ExitCode::from(1));
    }
    Ok(ExitCode::SUCCESS)
}

fn model_name(args: &PredictArgs, backbone: &graft::backbone::Backbone) -> String {
    match &args.model {
        Some(dir) => dir.display().to_string(),
        None => backbone.config.name.clone(),
    }
}

fn print_text(results: &[Classified]) {
    for c in results {
        let Ok(predictions) = &c.result else { continue };
        println!("{}", c.path.display());
        for (rank, p) in predictions.iter().enumerate() {
            println!(
                "  {:>2}. {:>6.2}%  {} ({})",
                rank + 1,
                100.0 * p.probability,
                p.label,
                p.index
            );
        }
    }
}

fn to_json(model: &str, results: &[Classified]) -> serde_json::Value {
    let images: Vec<_> = results
        .iter()
        .map(|c| match &c.result {
            Ok(predictions) => serde_json::json!({
                "path": c.path.to_string_lossy(),
                "predictions": predictions,
            }),
            Err(e) => serde_json::json!({
                "path": c.path.to_string_lossy(),
                "error": e.reason,
            }),
        })
        .collect();
    serde_json::json!({ "model": model, "images": images })
}

/// The files to classify: each argument, a folder replaced by the images under it (sorted).
fn expand_folders(arguments: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let mut images = Vec::new();
    for path in arguments {
        if path.is_dir() {
            let (found, _) = graft::data::dataset::list_images(path)?;
            if found.is_empty() {
                eprintln!("warning: {}: no images in this folder", path.display());
            }
            images.extend(found);
        } else {
            images.push(path.clone());
        }
    }
    Ok(images)
}

/// `path,label_1,probability_1,...,label_k,probability_k,error`, one row per image.
fn write_csv(file: &std::path::Path, results: &[Classified], k: usize) -> Result<()> {
    let mut writer = csv::Writer::from_path(file)?;
    let mut header = vec!["path".to_string()];
    for rank in 1..=k {
        header.push(format!("label_{rank}"));
        header.push(format!("probability_{rank}"));
    }
    header.push("error".into());
    writer.write_record(&header)?;
    for c in results {
        let mut row = vec![c.path.to_string_lossy().into_owned()];
        let predictions = c.result.as_deref().unwrap_or_default();
        for rank in 0..k {
            match predictions.get(rank) {
                Some(p) => row.extend([p.label.clone(), format!("{:.6}", p.probability)]),
                None => row.extend([String::new(), String::new()]),
            }
        }
        row.push(
            c.result
                .as_ref()
                .err()
                .map(|e| e.reason.clone())
                .unwrap_or_default(),
        );
        writer.write_record(&row)?;
    }
    writer.flush()?;
    Ok(())
}

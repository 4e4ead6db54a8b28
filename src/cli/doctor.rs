//! `graft doctor`: audit a dataset (and optionally a run) for the traps of transfer learning.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Args;

use graft::data::DecodeLimits;
use graft::data::dataset;
use graft::doctor::images::image_findings;
use graft::doctor::labels::{
    LabelIssueOptions, LabelIssues, find_label_issues, label_finding, write_csv,
};
use graft::doctor::leakage::leakage_findings;
use graft::doctor::neighbours;
use graft::doctor::page::{PageSummary, write_page};
use graft::doctor::quality::{quality_checks, scan_all};
use graft::doctor::run_checks::run_findings;
use graft::doctor::{DoctorOptions, Severity, class_findings, render_text, sorted, split_findings};
use graft::features::FeatureMatrix;
use graft::run::{TrainedModel, load_metrics};
use image_hasher::ImageHash;

use super::BackboneArgs;
use super::doctor_checks::{NeighbourArgs, QualityArgs};
use super::features::{CacheArgs, SplitArgs, train_val_features};

#[derive(Debug, Args)]
pub struct DoctorArgs {
    /// Labelled images: a folder with one sub-folder per class (optionally under train/ and
    /// val/), or a CSV file of `path,label`.
    #[arg(value_name = "DATA")]
    pub data: PathBuf,

    /// Also check this run (its preprocessing, learning rates, BatchNorm mode, accuracy gap);
    /// its backbone and split are used for the dataset checks.
    #[arg(long, value_name = "RUN_DIR")]
    pub model: Option<PathBuf>,

    #[command(flatten)]
    pub backbone: BackboneArgs,

    #[command(flatten)]
    pub split: SplitArgs,

    /// Backbone-feature cosine similarity at or above which two images count as
    /// near-duplicates (anywhere in the data, and across the split for the leakage check).
    #[arg(long, default_value_t = DoctorOptions::default().near_duplicate_cosine, value_name = "COS")]
    pub near_duplicate_threshold: f32,

    /// Perceptual-hash distance (bits of 64) at or below which two images count as
    /// near-duplicates (anywhere in the data, and across the split for the leakage check).
    #[arg(long, default_value_t = DoctorOptions::default().near_duplicate_hash_bits, value_name = "BITS")]
    pub near_duplicate_bits: u32,

    #[command(flatten)]
    pub neighbours: NeighbourArgs,

    #[command(flatten)]
    pub quality: QualityArgs,

    /// Print one JSON document instead of text.
    #[arg(long)]
    pub json: bool,

    /// Skip the search for mislabelled images (confident learning on cross-validated
    /// predictions of a logistic regression on the cached features).
    #[arg(long)]
    pub no_label_issues: bool,

    /// Folds of the cross-validation that scores every image for the label-issue search
    /// (seeded with --seed).
    #[arg(long, default_value_t = 5, value_name = "K")]
    pub folds: usize,

    /// Folder to write doctor's files to (created if missing): doctor.html (every finding with
    /// thumbnails of the files concerned), label_issues.csv (the suspected
    /// images, `path,given,suggested,score`, for `graft train --exclude`) and label_scores.csv
    /// (every labelled image's score).
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,

    #[command(flatten)]
    pub cache: CacheArgs,
}

pub fn run(args: DoctorArgs) -> Result<ExitCode> {
    let options = DoctorOptions {
        near_duplicate_cosine: args.near_duplicate_threshold,
        near_duplicate_hash_bits: args.near_duplicate_bits,
        ..DoctorOptions::default()
    };
    let neighbour_options = args.neighbours.options(
        options.near_duplicate_cosine,
        options.near_duplicate_hash_bits,
    )?;
    let thresholds = args.quality.thresholds()?;
    let model = match &args.model {
        Some(dir) => Some(TrainedModel::open(
            dir,
            args.backbone.weights_file()?.as_deref(),
        )?),
        None => None,
    };
    // With a run, check the split it was trained on.
    let split = match &model {
        Some(m) if m.card.data.split == graft::run::SplitKind::Stratified => {
            m.card.data.split_options()
        }
        _ => args.split.options()?,
    };
    let data = dataset::open(&args.data, split)?;
    let loaded;
    let backbone = match &model {
        Some(m) => &m.backbone,
        None => {
            loaded = args.backbone.load(false)?;
            &loaded
        }
    };

    let mut findings = class_findings(&data, &options);
    findings.extend(split_findings(&data, &args.data));
    let paths: Vec<PathBuf> = data
        .train
        .iter()
        .chain(&data.val)
        .map(|s| s.path.clone())
        .collect();
    // One read and decode of each file: header facts, perceptual hash, quality scores.
    let scans = scan_all(&paths, DecodeLimits::default());
    let facts: Vec<_> = paths
        .iter()
        .zip(&scans)
        .map(|(p, s)| (p.clone(), s.as_ref().map(|s| s.facts).map_err(Clone::clone)))
        .collect();
    let (train, val, summary) = train_val_features(backbone, &data, &args.cache)?;
    findings.extend(image_findings(
        &facts,
        &summary.skipped,
        backbone.config.resolution,
        &options,
    ));
    // Content hashes from the extraction just done (train then val, as `paths`).
    let keys: HashMap<PathBuf, String> = paths
        .iter()
        .cloned()
        .zip(summary.keys.iter().cloned())
        .filter_map(|(p, k)| k.map(|k| (p, k)))
        .collect();
    let hashes: HashMap<PathBuf, ImageHash> = paths
        .iter()
        .zip(&scans)
        .filter_map(|(p, s)| s.as_ref().ok().map(|s| (p.clone(), s.hash.clone())))
        .collect();
    let scored: Vec<_> = paths
        .iter()
        .zip(&scans)
        .filter_map(|(p, s)| s.as_ref().ok().map(|s| (p, &s.scores)))
        .collect();
    let (quality, quality_found) = quality_checks(&scored, &thresholds);
    findings.extend(quality_found);
    // Train and validation together: outliers, duplicates and label issues anywhere in the data.
    let all = train.joined(&val);
    let all_keys: Vec<Option<String>> = all.paths.iter().map(|p| keys.get(p).cloned()).collect();
    let all_hashes: Vec<Option<u64>> = all
        .paths
        .iter()
        .map(|p| hashes.get(p).and_then(neighbours::hash_bits))
        .collect();
    let near = neighbours::analyse(
        all.rows.clone(),
        all.dim.max(1),
        &all.paths,
        &all_keys,
        &all_hashes,
        &neighbour_options,
    );
    findings.extend(near.findings());
    findings.extend(leakage_findings(
        &train,
        &val,
        &keys,
        &hashes,
        options.near_duplicate_cosine,
        options.near_duplicate_hash_bits,
    ));
    let label_issues = if args.no_label_issues || data.classes.len() < 2 {
        None
    } else {
        labelled_issues(&args, &all, data.classes.as_slice())?
    };
    if let Some(found) = &label_issues {
        findings.extend(label_finding(found));
    }
    if let Some(m) = &model {
        let metrics = load_metrics(&m.dir)?;
        // A CLIP / SigLIP image tower is no registry entry: its run has no training traps of
        // a registry family to look for.
        if let Some(info) = graft::backbone::find(&m.card.backbone) {
            findings.extend(run_findings(&m.card, &metrics, info));
        }
    }
    let findings = sorted(findings);
    if args.json {
        let report = serde_json::json!({
            "data": args.data.to_string_lossy(),
            "model": args.model.as_ref().map(|m| m.to_string_lossy()),
            "images": paths.len(),
            "classes": data.classes,
            "findings": findings,
            "label_issues": label_issues,
            "neighbours": near.neighbours,
            "outliers": near.outliers_json(),
            "duplicates": near.duplicates,
            "quality": { "thresholds": thresholds, "checks": quality },
        });
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!(
            "checked {} images in {} classes ({} train / {} val)",
            paths.len(),
            data.classes.len(),
            data.train.len(),
            data.val.len()
        );
        println!(
            "neighbours: exact cosine kNN (k = {}) over {} images; outlier fence {:.4}",
            near.neighbours.k, near.neighbours.rows, near.outliers.fence
        );
        print!("{}", render_text(&findings));
    }
    if let Some(dir) = &args.out {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("{}: cannot create", dir.display()))?;
        let summary = PageSummary {
            data: &args.data,
            images: paths.len(),
            classes: &data.classes,
            train: data.train.len(),
            val: data.val.len(),
        };
        let page = write_page(dir, &summary, &findings)
            .with_context(|| format!("{}: cannot write the page", dir.display()))?;
        eprintln!("wrote {}", page.display());
        if let Some(found) = &label_issues {
            let issues_file = dir.join("label_issues.csv");
            write_csv(&found.issues, &issues_file)?;
            write_csv(&found.all, &dir.join("label_scores.csv"))?;
            eprintln!(
                "wrote {} ({} suspected images) and label_scores.csv",
                issues_file.display(),
                found.issues.len()
            );
        }
    }
    let errors = findings.iter().any(|f| f.severity == Severity::Error);
    Ok(if errors {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

/// Label issues among every labelled image (train and val together), or `None` when there are
/// too few images to cross-validate.
fn labelled_issues(
    args: &DoctorArgs,
    all: &FeatureMatrix,
    classes: &[String],
) -> Result<Option<LabelIssues>> {
    if args.folds < 2 {
        anyhow::bail!("--folds must be at least 2, got {}", args.folds);
    }
    if all.len() < 2 * args.folds {
        return Ok(None);
    }
    let options = LabelIssueOptions {
        folds: args.folds,
        seed: args.split.seed,
        ..LabelIssueOptions::default()
    };
    Ok(Some(find_label_issues(all, classes, &options)?))
}

//! What `predict`, `evaluate` and `search` share for CLIP / SigLIP models: finding the model
//! (a local repository folder or `hf:owner/name`) and turning labels into a classifier.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::Args;

use graft::clip::{ContrastiveModel, Prompts, ZeroShotClassifier};
use graft::data::dataset::Sample;
use graft::features::FeatureMatrix;

use super::features::{CacheArgs, features_of, open_cache};

use super::progress::Bars;

/// Zero-shot classification options.
#[derive(Debug, Args)]
pub struct ZeroShotArgs {
    /// Classify into these labels with no training (zero-shot), comma-separated: needs a CLIP
    /// or SigLIP `--backbone` (`hf:openai/clip-vit-base-patch32`, or a folder holding such a
    /// repository).
    #[arg(
        long,
        value_delimiter = ',',
        value_name = "LABEL,...",
        conflicts_with = "labels_file"
    )]
    pub labels: Vec<String>,

    /// The labels, one per line, instead of `--labels`.
    #[arg(long, value_name = "FILE")]
    pub labels_file: Option<PathBuf>,

    /// Prompt template with `{}` for the label; repeat it to average several. Default: the
    /// CLIP paper's 80 ImageNet templates, averaged per label.
    #[arg(long = "prompt", value_name = "TEMPLATE")]
    pub prompts: Vec<String>,
}

impl ZeroShotArgs {
    /// The labels asked for (none when zero-shot is not asked for).
    pub fn labels(&self) -> Result<Vec<String>> {
        let labels: Vec<String> = match &self.labels_file {
            Some(file) => std::fs::read_to_string(file)
                .with_context(|| format!("reading labels from {}", file.display()))?
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .map(String::from)
                .collect(),
            None => self.labels.iter().map(|l| l.trim().to_string()).collect(),
        };
        if labels.iter().any(String::is_empty) {
            bail!("--labels: an empty label (two commas in a row?)");
        }
        Ok(labels)
    }

    pub fn prompts(&self) -> Result<Prompts> {
        if self.prompts.is_empty() {
            return Ok(Prompts::ImageNetEnsemble);
        }
        Prompts::templates(self.prompts.clone()).map_err(|e| anyhow::anyhow!("--prompt: {e}"))
    }

    pub fn asked(&self) -> bool {
        !self.labels.is_empty() || self.labels_file.is_some()
    }
}

/// The CLIP / SigLIP model `spec` names (see [`graft::clip::open`]).
pub fn open_model(spec: &str) -> Result<ContrastiveModel> {
    Ok(graft::clip::open(spec, &mut Bars::default())?)
}

/// The classifier of `labels` with the prompts of `args`, said on stderr.
pub fn classifier(
    model: &ContrastiveModel,
    labels: &[String],
    args: &ZeroShotArgs,
) -> Result<ZeroShotClassifier> {
    let prompts = args.prompts()?;
    eprintln!(
        "zero-shot: {} labels, prompts: {}",
        labels.len(),
        prompts.describe()
    );
    Ok(model.classifier(labels, &prompts)?)
}

/// The image embeddings of `samples` through the model's feature cache (computing what it
/// lacks), unreadable images warned about and left out.
pub fn cached_embeddings(
    model: &ContrastiveModel,
    samples: &[Sample],
    cache: &CacheArgs,
) -> Result<(FeatureMatrix, usize)> {
    let mut store = open_cache(&model.image, cache.cache_dir.as_ref())?;
    let (mut matrices, summary) = features_of(
        &model.image,
        &mut store,
        &[samples],
        cache.extract_batch_size,
    )?;
    for e in &summary.skipped {
        eprintln!("warning: {e}");
    }
    Ok((matrices.remove(0), summary.skipped.len()))
}

//! Argument types and helpers shared by the commands that read the bottleneck cache.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};

use graft::backbone::Backbone;
use graft::data::DecodeLimits;
use graft::data::dataset::{Dataset, Sample, SplitOptions};
use graft::features::cache::FeatureCache;
use graft::features::{ExtractSummary, FeatureMatrix, labelled_features};
use graft::weights::store::graft_home;

/// Where cached features live and how they are computed.
#[derive(Debug, Clone, Args)]
pub struct CacheArgs {
    /// Cache root (default: $GRAFT_HOME/features).
    #[arg(long, value_name = "DIR")]
    pub cache_dir: Option<PathBuf>,

    /// Images per backbone forward pass when features must be computed (memory grows with
    /// this, not with the dataset).
    #[arg(long, default_value_t = 32, value_name = "N")]
    pub extract_batch_size: usize,
}

/// The split used when DATA has no train/ and val/ folders of its own.
#[derive(Debug, Clone, Args)]
pub struct SplitArgs {
    /// Fraction of each class held out for validation.
    #[arg(long, default_value_t = 0.2, value_name = "F")]
    pub val_fraction: f64,

    /// Seed of the split (and of training): the same seed gives the same result.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

impl SplitArgs {
    pub fn options(&self) -> Result<SplitOptions> {
        if !(0.0..1.0).contains(&self.val_fraction) {
            anyhow::bail!(
                "--val-fraction must be in [0, 1), got {}",
                self.val_fraction
            );
        }
        Ok(SplitOptions {
            val_fraction: self.val_fraction,
            seed: self.seed,
        })
    }
}

/// Open the cache of `backbone`, warning about shards that failed their checksum.
pub fn open_cache(backbone: &Backbone, dir: Option<&PathBuf>) -> Result<FeatureCache> {
    let root = dir
        .cloned()
        .unwrap_or_else(|| graft_home().join("features"));
    let cache = FeatureCache::open(&root, backbone)?;
    for shard in &cache.quarantined {
        eprintln!(
            "warning: {}: checksum failed; set aside, its rows will be recomputed",
            shard.display()
        );
    }
    Ok(cache)
}

pub fn progress_bar(len: usize, what: &str) -> ProgressBar {
    ProgressBar::new(len as u64).with_style(
        ProgressStyle::with_template(&format!(
            "{what} {{bar:30}} {{pos}}/{{len}} images  {{per_sec}}  ETA {{eta}}"
        ))
        // cannot fail: a fixed template, shown by every run with a progress bar
        .expect("static template"),
    )
}

/// Print what listing the dataset left out.
pub fn report_listing(data: &Dataset) {
    if data.skipped.hidden + data.skipped.not_image > 0 {
        eprintln!(
            "skipped {} hidden and {} non-image files",
            data.skipped.hidden, data.skipped.not_image
        );
    }
    for class in &data.empty_classes {
        eprintln!("warning: class `{class}` has no images");
    }
}

/// Features of each group of samples, extracting what the cache lacks under one progress bar.
/// Unreadable images are reported (one line each) and left out. The summary's keys follow the
/// samples of all groups in order.
pub fn features_of(
    backbone: &Backbone,
    cache: &mut FeatureCache,
    groups: &[&[Sample]],
    batch_size: usize,
) -> Result<(Vec<FeatureMatrix>, ExtractSummary)> {
    let total: usize = groups.iter().map(|g| g.len()).sum();
    let bar = progress_bar(total, "features");
    let mut matrices = Vec::new();
    let mut all = ExtractSummary::default();
    for samples in groups {
        let (matrix, summary) = labelled_features(
            backbone,
            cache,
            samples,
            batch_size,
            DecodeLimits::default(),
            |n| bar.inc(n as u64),
        )?;
        if summary.interrupted {
            bar.finish_and_clear();
            return Err(graft::interrupt::Interrupted(format!(
                "{} feature rows are safely in {}; run the same command again to continue",
                cache.len(),
                cache.dir().display()
            ))
            .into());
        }
        matrices.push(matrix);
        all.extracted += summary.extracted;
        all.reused += summary.reused;
        all.skipped.extend(summary.skipped);
        all.keys.extend(summary.keys);
    }
    bar.finish_and_clear();
    for e in &all.skipped {
        eprintln!("error: {e} (skipped)");
    }
    eprintln!(
        "features: {total} images (extracted {}, reused {}, skipped {})",
        all.extracted,
        all.reused,
        all.skipped.len()
    );
    Ok((matrices, all))
}

/// Features of `data`'s training and validation images through `backbone`'s cache.
pub fn train_val_features(
    backbone: &Backbone,
    data: &Dataset,
    cache: &CacheArgs,
) -> Result<(FeatureMatrix, FeatureMatrix, ExtractSummary)> {
    let mut store = open_cache(backbone, cache.cache_dir.as_ref())?;
    let (mut matrices, summary) = features_of(
        backbone,
        &mut store,
        &[&data.train, &data.val],
        cache.extract_batch_size,
    )?;
    // cannot fail: features_of returns one matrix per group, and two groups went in
    let val = matrices.pop().expect("two groups in, two matrices out");
    // cannot fail: as above
    let train = matrices.pop().expect("two groups in, two matrices out");
    Ok((train, val, summary))
}

//! Argument types and helpers shared by the commands that read the bottleneck cache.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;

use graft::backbone::Backbone;
use graft::data::dataset::{Dataset, Sample, SplitOptions};
use graft::features::cache::FeatureCache;
use graft::features::{ExtractSummary, FeatureMatrix};
use graft::recipe::bottleneck;

use super::progress::Bars;

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
    let dir = dir.map(PathBuf::as_path);
    Ok(bottleneck::open_cache(backbone, dir, &mut Bars::default())?)
}

/// Print what listing the dataset left out.
pub fn report_listing(data: &Dataset) {
    bottleneck::note_listing(data, &mut Bars::default());
}

/// Features of each group of samples, extracting what the cache lacks under one progress bar
/// (see [`bottleneck::features`]).
pub fn features_of(
    backbone: &Backbone,
    cache: &mut FeatureCache,
    groups: &[&[Sample]],
    batch_size: usize,
) -> Result<(Vec<FeatureMatrix>, ExtractSummary)> {
    let mut bars = Bars::default();
    let (rows, summary) = bottleneck::features(backbone, cache, groups, batch_size, &mut bars)
        .map_err(super::recipe_error)?;
    let matrices = rows
        .iter()
        .map(|r| r.to_matrix())
        .collect::<Result<_, _>>()?;
    Ok((matrices, summary))
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

//! `graft extract`: bottleneck features of a labelled folder into the on-disk cache.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};

use graft::data::DecodeLimits;
use graft::data::dataset::{self, SplitOptions};
use graft::features::cache::FeatureCache;
use graft::features::extract;
use graft::weights::store::graft_home;

use super::BackboneArgs;

#[derive(Debug, Args)]
pub struct ExtractArgs {
    /// Labelled images: a folder with one sub-folder per class (optionally under train/ and
    /// val/), or a CSV file of `path,label`.
    #[arg(value_name = "DATA")]
    pub data: PathBuf,

    #[command(flatten)]
    pub backbone: BackboneArgs,

    /// Images per forward pass (memory grows with this, not with the dataset).
    #[arg(long, default_value_t = 32)]
    pub batch_size: usize,

    /// Cache root (default: $GRAFT_HOME/features).
    #[arg(long, value_name = "DIR")]
    pub cache_dir: Option<PathBuf>,
}

pub fn run(args: ExtractArgs) -> Result<ExitCode> {
    let data = dataset::open(&args.data, SplitOptions::default())?;
    let paths: Vec<PathBuf> = data
        .train
        .iter()
        .chain(&data.val)
        .map(|s| s.path.clone())
        .collect();
    if data.skipped.hidden + data.skipped.not_image > 0 {
        eprintln!(
            "skipped {} hidden and {} non-image files",
            data.skipped.hidden, data.skipped.not_image
        );
    }
    let backbone = args.backbone.load(false)?;
    let root = args
        .cache_dir
        .unwrap_or_else(|| graft_home().join("features"));
    let mut cache = FeatureCache::open(&root, &backbone)?;
    for shard in &cache.quarantined {
        eprintln!(
            "warning: {}: checksum failed; set aside, its rows will be recomputed",
            shard.display()
        );
    }
    let bar = ProgressBar::new(paths.len() as u64).with_style(
        ProgressStyle::with_template("extract {bar:30} {pos}/{len} images  {per_sec}  ETA {eta}")
            .expect("static template"),
    );
    let summary = extract(
        &backbone,
        &mut cache,
        &paths,
        args.batch_size,
        DecodeLimits::default(),
        |n| bar.inc(n as u64),
    )?;
    bar.finish_and_clear();
    for e in &summary.skipped {
        eprintln!("error: {e}");
    }
    println!(
        "{} images: extracted {}, reused {}, skipped {} ({} rows in {})",
        paths.len(),
        summary.extracted,
        summary.reused,
        summary.skipped.len(),
        cache.len(),
        cache.dir().display()
    );
    Ok(if summary.skipped.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

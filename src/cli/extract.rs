//! `graft extract`: bottleneck features of a labelled folder into the on-disk cache.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::Args;

use graft::data::DecodeLimits;
use graft::data::dataset::{self, SplitOptions};
use graft::features::extract;

use super::BackboneArgs;
use super::features::{open_cache, report_listing};
use super::progress::progress_bar;

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
    // Every image is extracted, so the split does not matter here.
    let data = dataset::open(&args.data, SplitOptions::default())?;
    report_listing(&data);
    let paths: Vec<PathBuf> = data
        .train
        .iter()
        .chain(&data.val)
        .map(|s| s.path.clone())
        .collect();
    let backbone = args.backbone.load(false)?;
    let mut cache = open_cache(&backbone, args.cache_dir.as_ref())?;
    let bar = progress_bar(paths.len(), "extract");
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
    if summary.interrupted {
        return Err(graft::interrupt::Interrupted(format!(
            "{} rows are safely in {}; run the same command again to extract the rest",
            cache.len(),
            cache.dir().display()
        ))
        .into());
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

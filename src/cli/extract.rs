//! `graft extract`: bottleneck features of a labelled folder into the on-disk cache.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::Args;

use graft::data::DecodeLimits;
use graft::data::dataset::{self, SplitOptions};
use graft::features::extract;
use graft::features::shard::Shard;

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

    /// Cache root (default: $GRAFT_HOME/features). Many extractions may write to one cache at
    /// once, on one machine or many (a shared filesystem): see `graft cache`.
    #[arg(long, value_name = "DIR")]
    pub cache_dir: Option<PathBuf>,

    /// Extract only part I of N (0 <= I < N): the images whose path relative to DATA hashes to
    /// I, so N workers split the data without talking. `auto` takes the part from a Slurm job
    /// array (SLURM_ARRAY_TASK_ID / _COUNT / _MIN) or a Kubernetes Indexed Job
    /// (JOB_COMPLETION_INDEX, with --shards). A rerun redoes only what is missing.
    #[arg(long, value_name = "I/N|auto")]
    pub shard: Option<String>,

    /// The number of parts for `--shard auto` (a Kubernetes Indexed Job's completions).
    #[arg(long, value_name = "N", requires = "shard")]
    pub shards: Option<usize>,
}

/// The part of the data this process extracts, if any.
fn shard_of(args: &ExtractArgs) -> Result<Option<Shard>> {
    Ok(match args.shard.as_deref() {
        None => None,
        Some("auto") => Some(Shard::from_engine(
            |name| std::env::var(name).ok(),
            args.shards,
        )?),
        Some(text) => {
            let shard = Shard::parse(text)?;
            if let Some(n) = args.shards.filter(|&n| n != shard.count) {
                anyhow::bail!(
                    "--shard {text} has {} parts but --shards says {n}",
                    shard.count
                );
            }
            Some(shard)
        }
    })
}

pub fn run(args: ExtractArgs) -> Result<ExitCode> {
    // Every image is extracted, so the split does not matter here.
    let data = dataset::open(&args.data, SplitOptions::default())?;
    report_listing(&data);
    let shard = shard_of(&args)?;
    // The paths are moved, not copied: a million images' paths are a good part of the memory.
    let all: Vec<PathBuf> = data
        .train
        .into_iter()
        .chain(data.val)
        .map(|s| s.path)
        .collect();
    let total = all.len();
    // Paths relative to the data folder (a CSV's own folder), the same on every worker.
    let root = if args.data.is_dir() {
        args.data.clone()
    } else {
        args.data.parent().map(PathBuf::from).unwrap_or_default()
    };
    let paths: Vec<PathBuf> = match shard {
        None => all,
        Some(shard) => all
            .into_iter()
            .filter(|p| shard.owns(p.strip_prefix(&root).unwrap_or(p)))
            .collect(),
    };
    if let Some(shard) = shard {
        eprintln!("shard {shard}: {} of {total} images", paths.len());
    }
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

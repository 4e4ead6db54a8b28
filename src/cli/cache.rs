//! `graft cache`: look after a feature cache that many extractions share.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Result;
use clap::{Args, Subcommand};

use graft::features::maintenance::{self, cache_dirs};
use graft::recipe::cache_root;

#[derive(Debug, Subcommand)]
pub enum CacheCommand {
    /// Shards, rows, distinct images, bytes, temporary and corrupt files of each cache.
    Stats(CacheArgs),
    /// Check every shard's checksum; exit 1 when one fails.
    Verify(CacheArgs),
    /// Merge each cache's shards with one row per image (rows that several workers wrote are
    /// kept once). Safe while extractions run.
    Compact(CacheArgs),
    /// Remove temporary files no live writer owns: this machine's of processes that are gone,
    /// and any older than --older-than.
    Gc(GcArgs),
}

#[derive(Debug, Args)]
pub struct CacheArgs {
    /// Cache root (default: $GRAFT_HOME/features).
    #[arg(long, value_name = "DIR")]
    pub cache_dir: Option<PathBuf>,

    /// Print one JSON document instead of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct GcArgs {
    #[command(flatten)]
    pub cache: CacheArgs,

    /// Also remove temporary files older than this many hours, whatever machine wrote them
    /// (a writer commits each shard within seconds).
    #[arg(long, value_name = "HOURS", default_value_t = 24.0)]
    pub older_than: f64,
}

pub fn run(command: CacheCommand) -> Result<ExitCode> {
    match command {
        CacheCommand::Stats(args) => stats(&args, false),
        CacheCommand::Verify(args) => stats(&args, true),
        CacheCommand::Compact(args) => compact(&args),
        CacheCommand::Gc(args) => gc(&args),
    }
}

fn dirs(args: &CacheArgs) -> Result<Vec<PathBuf>> {
    let root = cache_root(args.cache_dir.as_deref());
    let dirs = cache_dirs(&root)?;
    if dirs.is_empty() && !args.json {
        eprintln!("{}: no feature cache here", root.display());
    }
    Ok(dirs)
}

fn stats(args: &CacheArgs, verify: bool) -> Result<ExitCode> {
    let all = dirs(args)?
        .iter()
        .map(|dir| maintenance::stats(dir, verify))
        .collect::<Result<Vec<_>, _>>()?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&all)?);
    } else {
        for s in &all {
            println!(
                "{}: {} shards, {} rows, {} distinct images, {:.1} MB, {} temporary files, {} corrupt",
                s.dir.display(),
                s.shards,
                s.rows,
                s.distinct,
                s.bytes as f64 / 1e6,
                s.temporaries,
                s.corrupt.len()
            );
            for path in &s.corrupt {
                println!("  corrupt: {}", path.display());
            }
        }
    }
    let corrupt = all.iter().any(|s| !s.corrupt.is_empty());
    Ok(if verify && corrupt {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

fn compact(args: &CacheArgs) -> Result<ExitCode> {
    let all = dirs(args)?
        .iter()
        .map(|dir| maintenance::compact(dir))
        .collect::<Result<Vec<_>, _>>()?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&all)?);
    } else {
        for c in &all {
            println!(
                "{}: {} shards -> {}, {} rows -> {} ({} copies removed){}",
                c.dir.display(),
                c.shards_before,
                c.shards_after,
                c.rows_before,
                c.rows_after,
                c.rows_before - c.rows_after,
                if c.corrupt.is_empty() {
                    String::new()
                } else {
                    format!(", {} corrupt shards left in place", c.corrupt.len())
                }
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn gc(args: &GcArgs) -> Result<ExitCode> {
    if !(args.older_than >= 0.0 && args.older_than.is_finite()) {
        anyhow::bail!(
            "--older-than {}: must be a number of hours >= 0",
            args.older_than
        );
    }
    let older_than = Duration::from_secs_f64(args.older_than * 3600.0);
    let mut removed = Vec::new();
    for dir in dirs(&args.cache)? {
        removed.extend(maintenance::gc(&dir, older_than));
    }
    if args.cache.json {
        println!("{}", serde_json::to_string_pretty(&removed)?);
    } else {
        for path in &removed {
            println!("removed {}", path.display());
        }
        println!("{} temporary files removed", removed.len());
    }
    Ok(ExitCode::SUCCESS)
}

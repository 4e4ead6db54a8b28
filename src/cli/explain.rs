//! `graft predict --explain DIR`: the heatmap PNGs, and a line per image saying where.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use graft::backbone::Backbone;
use graft::data::DecodeLimits;
use graft::explain::{LinearTop, explain_files};
use graft::infer::Top;

/// `top` as the linear map heatmaps need, or why it is not one (kNN): asked before anything
/// is classified.
pub fn linear_top(backbone: &Backbone, top: Top<'_>) -> Result<LinearTop> {
    Ok(match top {
        Top::Trained { head, .. } => LinearTop::from_head(head).context("--explain")?,
        Top::ImageNet => LinearTop::imagenet(backbone)
            .context("--explain: the backbone was loaded without its ImageNet classifier")?,
        Top::ZeroShot(_) => anyhow::bail!("--explain does not explain zero-shot predictions yet"),
    })
}

/// Explain `images` with `top` (its [`linear_top`] `linear`) into `dir`, printing (on stderr,
/// so that `--json` stays one document) where each heatmap went.
pub fn write(
    backbone: &Backbone,
    top: Top<'_>,
    linear: &LinearTop,
    images: &[PathBuf],
    dir: &Path,
    batch_size: usize,
    limits: DecodeLimits,
) -> Result<()> {
    let names = top.class_names(&backbone.config);
    let explained = explain_files(backbone, linear, images, dir, batch_size, limits)
        .with_context(|| format!("--explain {}", dir.display()))?;
    for e in &explained {
        // Undecodable images are reported once, with the predictions' errors.
        let Ok(x) = &e.result else { continue };
        let class = names
            .get(x.heatmap.class)
            .map_or_else(|| x.heatmap.class.to_string(), String::clone);
        eprintln!(
            "heatmap ({} of {class}): {} -> {}",
            x.heatmap.method.name(),
            e.path.display(),
            x.png.display()
        );
    }
    Ok(())
}

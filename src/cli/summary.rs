//! `graft summary`: a Keras-like table of the backbone's layer groups.

use std::process::ExitCode;

use anyhow::Result;
use clap::Args;

use graft::backbone::Network;
use graft::backbone::summary::summarize_network;

use super::find_backbone;

#[derive(Debug, Args)]
pub struct SummaryArgs {
    /// Backbone name (see `graft weights list`).
    #[arg(
        long,
        short = 'b',
        default_value = "efficientnet-lite0",
        value_name = "NAME"
    )]
    pub backbone: String,

    /// Cut the model at the pooled features (no ImageNet classifier), as for transfer learning.
    #[arg(long)]
    pub no_top: bool,
}

pub fn run(args: SummaryArgs) -> Result<ExitCode> {
    let info = find_backbone(&args.backbone)?;
    let config = info.source_config(None);
    // The architecture alone decides shapes and counts: no weights needed.
    let net = Network::init(
        &info.arch,
        config.padding,
        config.bn_eps,
        !args.no_top,
        &graft::backend::device(),
    );
    println!("{}", summarize_network(info.name, &net, config.resolution));
    Ok(ExitCode::SUCCESS)
}

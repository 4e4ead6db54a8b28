//! `graft summary`: a Keras-like table of the backbone's layer groups.

use std::process::ExitCode;

use anyhow::Result;
use clap::Args;

use graft::backbone::summary::summarize_network;
use graft::backbone::{Network, Pooling};

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

    /// Input side in pixels instead of the weights' own (output shapes follow it).
    #[arg(long, value_name = "PX")]
    pub input_size: Option<usize>,

    /// The pooled feature (see `graft extract --help`).
    #[arg(long, value_enum, default_value_t = Pooling::Source)]
    pub pool: Pooling,
}

pub fn run(args: SummaryArgs) -> Result<ExitCode> {
    let info = find_backbone(&args.backbone)?;
    let config = info.source_config(None);
    let resolution = match args.input_size {
        Some(size) => {
            info.check_resolution(size).map_err(anyhow::Error::msg)?;
            size
        }
        None => config.resolution,
    };
    // The architecture alone decides shapes and counts: no weights needed.
    info.check_pooling(args.pool).map_err(anyhow::Error::msg)?;
    let net = Network::init(
        &info.arch_pooled(args.pool),
        config.padding,
        config.bn_eps,
        !args.no_top,
        &graft::backend::device(),
    );
    println!("{}", summarize_network(info.name, &net, resolution));
    Ok(ExitCode::SUCCESS)
}

//! `graft summary`: a Keras-like table of the backbone's layer groups.

use std::process::ExitCode;

use anyhow::Result;
use clap::Args;

use graft::backbone::mbnet::MbNet;
use graft::backbone::summary::summarize;

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
    let net = MbNet::init(
        &info.spec(),
        config.padding,
        config.bn_eps,
        !args.no_top,
        &mut graft::rng::run_rng(0, 0),
        &graft::backend::device(),
    );
    println!("{}", summarize(info.name, &net, config.resolution));
    Ok(ExitCode::SUCCESS)
}

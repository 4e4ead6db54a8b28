//! `graft report`: the HTML report of a run directory.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::Args;

#[derive(Debug, Args)]
pub struct ReportArgs {
    /// Run directory written by `graft train`.
    #[arg(value_name = "RUN_DIR")]
    pub run: PathBuf,
}

pub fn run(args: ReportArgs) -> Result<ExitCode> {
    let path = graft::report::write_report(&args.run)?;
    println!("report written to {}", path.display());
    Ok(ExitCode::SUCCESS)
}

//! One file per subcommand; this file holds the argument types shared between them.

mod bench;
mod doctor;
mod evaluate;
mod extract;
mod features;
mod finetune;
mod lr_find;
mod predict;
mod report;
mod summary;
mod train;
mod weights;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result, anyhow};
use clap::{Args, Parser, Subcommand, ValueEnum};

use graft::backbone::{self, Backbone, BackboneInfo, LoadOptions, PaddingMode};
use graft::weights::store;

/// Transfer learning for image classification on pretrained CNN backbones.
#[derive(Debug, Parser)]
#[command(name = "graft", version, about, long_about = None)]
pub struct Cli {
    /// Worker threads for decoding and the network (default: all cores).
    #[arg(long, global = true, value_name = "N")]
    pub threads: Option<usize>,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Classify images: ImageNet top-k with a pretrained backbone, or a model from `graft train`.
    Predict(predict::PredictArgs),
    /// Run the frozen backbone over a labelled folder once and cache the pooled features.
    Extract(extract::ExtractArgs),
    /// Train on a labelled folder: a new head or classical ML on cached features, or fine-tuning.
    Train(train::TrainArgs),
    /// LR range test for a new head: loss against an exponentially growing learning rate.
    LrFind(lr_find::LrFindArgs),
    /// Score a trained model on a labelled folder (accuracy, per-class metrics, confusion).
    Evaluate(evaluate::EvaluateArgs),
    /// Write RUN_DIR/report.html: curves, confusion matrix, per-class scores, mistakes.
    Report(report::ReportArgs),
    /// Check a dataset (and a run) for leakage, imbalance, bad images and training traps.
    Doctor(doctor::DoctorArgs),
    /// Show a backbone's layer groups, output shapes and parameter counts.
    Summary(summary::SummaryArgs),
    /// Measure graft's speed (used by the peer comparison in bench/).
    Bench(bench::BenchArgs),
    /// Manage pretrained weights in the local store ($GRAFT_HOME/weights).
    #[command(subcommand)]
    Weights(weights::WeightsCommand),
}

pub fn run(command: Command) -> Result<ExitCode> {
    match command {
        Command::Predict(args) => predict::run(args),
        Command::Summary(args) => summary::run(args),
        Command::Extract(args) => extract::run(args),
        Command::Train(args) => train::run(args),
        Command::Evaluate(args) => evaluate::run(args),
        Command::LrFind(args) => lr_find::run(args),
        Command::Doctor(args) => doctor::run(args),
        Command::Report(args) => report::run(args),
        Command::Weights(command) => weights::run(command),
        Command::Bench(args) => bench::run(args),
    }
}

/// Padding convention, for overriding the weights' own.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum PaddingArg {
    /// TensorFlow SAME (odd extra pixel bottom/right).
    TfSame,
    /// PyTorch symmetric.
    Symmetric,
}

impl From<PaddingArg> for PaddingMode {
    fn from(p: PaddingArg) -> Self {
        match p {
            PaddingArg::TfSame => PaddingMode::TfSame,
            PaddingArg::Symmetric => PaddingMode::Symmetric,
        }
    }
}

/// Which pretrained backbone, and which weights for it.
#[derive(Debug, Clone, Args)]
pub struct BackboneArgs {
    /// Backbone name: efficientnet-lite0, efficientnet-lite1, efficientnet-lite2,
    /// mobilenet-v2 (torchvision weights), mobilenet-v2-tf (TF-trained weights).
    #[arg(
        long,
        short = 'b',
        default_value = "efficientnet-lite0",
        value_name = "NAME"
    )]
    pub backbone: String,

    /// Checkpoint to load instead of the store's (.pth legacy or zip, or .safetensors).
    #[arg(long, value_name = "FILE")]
    pub weights: Option<PathBuf>,

    /// Override the padding convention of the weights (only for experiments: the weights'
    /// source config already has the right one).
    #[arg(long, value_enum, hide = true)]
    pub padding: Option<PaddingArg>,
}

impl BackboneArgs {
    pub fn info(&self) -> Result<&'static BackboneInfo> {
        find_backbone(&self.backbone)
    }

    /// Load for inference (predict, extract, evaluate): BatchNorm folded into the convs.
    pub fn load(&self, include_top: bool) -> Result<Backbone> {
        let info = self.info()?;
        let path = store::resolve(info, self.weights.as_deref())?;
        let options = LoadOptions {
            include_top,
            padding: self.padding.map(Into::into),
        };
        Backbone::load(info, &path, options, &graft::backend::device())
            .map(Backbone::for_inference)
            .with_context(|| format!("loading {} weights", info.name))
    }
}

pub fn find_backbone(name: &str) -> Result<&'static BackboneInfo> {
    backbone::find(name).ok_or_else(|| {
        anyhow!(
            "unknown backbone `{name}`; known backbones: {}",
            backbone::known_names()
        )
    })
}

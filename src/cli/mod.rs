//! One file per subcommand; this file holds the argument types shared between them.

mod bench;
mod cache;
mod doctor;
mod doctor_checks;
mod evaluate;
mod explain;
mod export;
mod extract;
mod features;
mod finetune;
mod lr_find;
mod predict;
mod pretrain;
mod progress;
mod report;
mod search;
mod serve;
mod summary;
mod train;
mod weights;
mod zero_shot;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand, ValueEnum};

use graft::backbone::{Backbone, BackboneInfo, PaddingMode, Pooling, Precision};
use graft::recipe::{BackboneChoice, RecipeError};

/// Transfer learning for image classification on pretrained CNN backbones.
#[derive(Debug, Parser)]
#[command(name = "graft", version, about, long_about = None)]
pub struct Cli {
    /// Worker threads for decoding and the network (default: all cores).
    #[arg(long, global = true, value_name = "N")]
    pub threads: Option<usize>,

    /// Where the network runs: `cpu` (graft's fused CPU kernels), `gpu` (fails when there is
    /// none), `auto` (a GPU when one is usable, else the CPU; says which on stderr), or
    /// `gpu:software` (a software Vulkan renderer such as Mesa's lavapipe is accepted too: slow,
    /// for checking a GPU build). A GPU needs a build with `--features vulkan` (or `wgpu`, `cuda`).
    #[arg(long, global = true, value_enum, default_value_t = DeviceArg::Cpu, value_name = "DEVICE")]
    pub device: DeviceArg,

    /// Keep JPEG and PNG files whose image data is cut short (their missing part decodes grey)
    /// instead of reporting them as errors; the run counts them at the end. Files with no
    /// image data at all are errors either way.
    #[arg(long, global = true)]
    pub allow_truncated: bool,

    /// Decode every JPEG fully. By default a JPEG at least twice the size the backbone's
    /// resize needs is decoded scaled in the DCT domain (as Pillow's `draft`), several times
    /// faster on camera-sized photos; cached features of the two modes are kept apart.
    #[arg(long, global = true)]
    pub exact_decode: bool,

    /// Number format of the backbone's matrix products at inference (predict, extract,
    /// evaluate, serve, doctor). `bf16`: a ViT's / DINOv2's patch embedding and Linear layers
    /// in bfloat16 on Intel AMX tiles (Xeon Sapphire Rapids and later), float32 sums; 2.7x the
    /// float32 forward of a DINOv2 ViT-S/14 on 2 cores, features within about 1% of float32's. Cached features of the two are
    /// kept apart and runs record it. Elsewhere graft notes it and keeps float32. Training
    /// stays float32.
    #[arg(long, global = true, value_enum, default_value_t = Precision::F32)]
    pub precision: Precision,

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
    /// Adapt a backbone to unlabelled images with self-supervised learning (SimCLR).
    Pretrain(pretrain::PretrainArgs),
    /// LR range test for a new head: loss against an exponentially growing learning rate.
    LrFind(lr_find::LrFindArgs),
    /// Score a trained model on a labelled folder (accuracy, per-class metrics, confusion).
    Evaluate(evaluate::EvaluateArgs),
    /// Rank a folder's images by similarity to a text or a photo (CLIP / SigLIP).
    Search(search::SearchArgs),
    /// Write RUN_DIR/report.html: curves, confusion matrix, per-class scores, mistakes.
    Report(report::ReportArgs),
    /// Check a dataset (and a run) for leakage, imbalance, bad images and training traps.
    Doctor(doctor::DoctorArgs),
    /// Show a backbone's layer groups, output shapes and parameter counts.
    Summary(summary::SummaryArgs),
    /// Export a trained model (or a backbone) as ONNX for other runtimes.
    Export(export::ExportArgs),
    /// Serve predictions over HTTP (POST /v1/predict), batching concurrent requests.
    Serve(serve::ServeArgs),
    /// Measure graft's speed (used by the peer comparison in bench/).
    Bench(bench::BenchArgs),
    /// Look after a feature cache that many extractions share: stats, verify, compact, gc.
    #[command(subcommand)]
    Cache(cache::CacheCommand),
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
        Command::Search(args) => search::run(args),
        Command::LrFind(args) => lr_find::run(args),
        Command::Pretrain(args) => pretrain::run(args),
        Command::Doctor(args) => doctor::run(args),
        Command::Report(args) => report::run(args),
        Command::Weights(command) => weights::run(command),
        Command::Bench(args) => bench::run(args),
        Command::Export(args) => export::run(args),
        Command::Cache(command) => cache::run(command),
        Command::Serve(args) => serve::run(args),
    }
}

/// `--device`: see [`graft::backend::DeviceChoice`].
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum DeviceArg {
    Cpu,
    Gpu,
    Auto,
    #[value(name = "gpu:software")]
    GpuSoftware,
}

impl DeviceArg {
    /// The value as typed, for messages.
    pub fn name(self) -> &'static str {
        match self {
            DeviceArg::Cpu => "cpu",
            DeviceArg::Gpu => "gpu",
            DeviceArg::Auto => "auto",
            DeviceArg::GpuSoftware => "gpu:software",
        }
    }
}

impl From<DeviceArg> for graft::backend::DeviceChoice {
    fn from(d: DeviceArg) -> Self {
        match d {
            DeviceArg::Cpu => Self::Cpu,
            DeviceArg::Gpu => Self::Gpu,
            DeviceArg::Auto => Self::Auto,
            DeviceArg::GpuSoftware => Self::GpuSoftware,
        }
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
    /// Backbone: `arch.tag` (resnet50.tv2_in1k) or an architecture alone for its default
    /// weights (resnet50 = resnet50.tv_in1k): efficientnet_lite0/1/2, mobilenet_v2,
    /// resnet18/34/50/101, convnext_tiny/small/base, vit_b_16/b_32/l_16 (torchvision),
    /// vit_small/base_patch16_224 and vit_small/base_patch14(_reg4)_dinov2 (timm, from the
    /// Hugging Face Hub: `graft weights fetch hf:timm/NAME`). Older names (efficientnet-lite0,
    /// mobilenet-v2, mobilenet-v2-tf) still work. `graft weights list` shows them all.
    #[arg(
        long,
        short = 'b',
        default_value = "efficientnet-lite0",
        value_name = "NAME"
    )]
    pub backbone: String,

    /// Weights to load instead of the store's: a checkpoint file (.pth legacy or zip, or
    /// .safetensors), or the RUN_DIR of `graft pretrain` or `train --recipe finetune` (its
    /// adapted backbone).
    #[arg(long, visible_alias = "backbone-weights", value_name = "FILE|RUN_DIR")]
    pub weights: Option<PathBuf>,

    /// Override the padding convention of the weights (only for experiments: the weights'
    /// source config already has the right one).
    #[arg(long, value_enum, hide = true)]
    pub padding: Option<PaddingArg>,

    /// Input side in pixels instead of the weights' own (DINOv2: 224 instead of 518 runs
    /// about 13x faster; the position embedding is resampled as timm does). ViTs need a
    /// multiple of their patch size. Changes the features: caches and runs record it.
    #[arg(long, value_name = "PX")]
    pub input_size: Option<usize>,

    /// The pooled feature: `source` (what the weights define: a CNN's average pool, a ViT's
    /// class token) or, for ViTs, `class-and-patch-mean` (class token + mean patch token, twice
    /// as wide: DINOv2's linear-probe feature). Runs record it; caches key on it.
    #[arg(long, value_enum, default_value_t = Pooling::Source)]
    pub pool: Pooling,
}

impl BackboneArgs {
    /// The library's description of this choice.
    pub fn choice(&self) -> BackboneChoice {
        BackboneChoice {
            name: self.backbone.clone(),
            weights: self.weights.clone(),
            padding: self.padding.map(Into::into),
            resolution: self.input_size,
            pool: self.pool,
        }
    }

    pub fn info(&self) -> Result<&'static BackboneInfo> {
        Ok(self.choice().info()?)
    }

    /// The checkpoint file `--weights` names (a run directory's backbone file), if given,
    /// checked to belong to the `--backbone` chosen.
    pub fn weights_file(&self) -> Result<Option<PathBuf>> {
        Ok(self.choice().weights_file()?)
    }

    /// The checkpoint to load: `--weights` or the store's.
    pub fn weights_path(&self) -> Result<PathBuf> {
        Ok(self.choice().weights_path()?)
    }

    /// Load for inference (predict, extract, evaluate): BatchNorm folded into the convs.
    pub fn load(&self, include_top: bool) -> Result<Backbone> {
        let info = self.info()?;
        self.choice()
            .load(include_top)
            .with_context(|| format!("loading {} weights", info.name))
    }
}

pub fn find_backbone(name: &str) -> Result<&'static BackboneInfo> {
    Ok(BackboneChoice::new(name).info()?)
}

/// A library error as the command line reports it: an interruption becomes
/// [`graft::interrupt::Interrupted`], which `main` turns into exit code 130.
/// Write the run's HTML report and say where. The model is saved by then: a report that cannot
/// be drawn is worth a warning, not a failure.
pub fn print_report(dir: &std::path::Path) {
    match graft::report::write_report(dir) {
        Ok(path) => println!("report: {}", path.display()),
        Err(e) => eprintln!("warning: no report: {e}"),
    }
}

pub fn recipe_error(error: RecipeError) -> anyhow::Error {
    match error {
        RecipeError::Interrupted(interrupted) => interrupted.into(),
        other => other.into(),
    }
}

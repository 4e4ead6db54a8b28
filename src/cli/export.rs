//! `graft export`: a trained model (or a backbone alone) as an ONNX graph for other runtimes.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Args, ValueEnum};

use graft::export::{self, InputKind};
use graft::run::TrainedModel;

use super::BackboneArgs;

#[derive(Debug, Args)]
#[command(after_help = "Examples:
  graft export runs/flowers                       # runs/flowers/model.onnx (+ preprocessing.json, labels.txt)
  graft export runs/flowers --input uint8-nhwc    # runs/flowers/model-uint8.onnx, normalisation inside
  graft export --backbone efficientnet-lite0      # ./efficientnet-lite0.onnx: features and ImageNet logits")]
pub struct ExportArgs {
    /// A run directory of `graft train`: exports its backbone as trained, its top and the
    /// softmax as one graph.
    #[arg(value_name = "RUN_DIR", required_unless_present = "backbone")]
    pub run_dir: Option<PathBuf>,

    /// Export a pretrained backbone alone instead (outputs `features`, and `logits` unless
    /// --no-top).
    #[arg(long, short = 'b', value_name = "NAME", conflicts_with = "run_dir")]
    pub backbone: Option<String>,

    /// Weights for --backbone instead of the store's (a checkpoint file or a fine-tuning run).
    #[arg(long, value_name = "FILE|RUN_DIR")]
    pub weights: Option<PathBuf>,

    /// With --backbone: leave out the ImageNet classifier.
    #[arg(long, requires = "backbone")]
    pub no_top: bool,

    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Onnx)]
    pub format: Format,

    /// What the graph takes: float32 NCHW already normalised, or uint8 NHWC (cropped and
    /// resized; the cast and normalisation are in the graph, for mobile and web runtimes).
    #[arg(long, value_enum, default_value_t = InputArg::Float32Nchw)]
    pub input: InputArg,

    /// The model file to write [default: RUN_DIR/model.onnx, or NAME.onnx; `-uint8` added
    /// before `.onnx` for uint8 input]. preprocessing.json and labels.txt go beside it.
    #[arg(long, short = 'o', value_name = "FILE")]
    pub out: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Format {
    /// ONNX, opset 17, dynamic batch.
    Onnx,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum InputArg {
    Float32Nchw,
    Uint8Nhwc,
}

impl From<InputArg> for InputKind {
    fn from(arg: InputArg) -> Self {
        match arg {
            InputArg::Float32Nchw => InputKind::Float,
            InputArg::Uint8Nhwc => InputKind::Uint8,
        }
    }
}

pub fn run(args: ExportArgs) -> Result<ExitCode> {
    let input = InputKind::from(args.input);
    let suffix = match input {
        InputKind::Float => "",
        InputKind::Uint8 => "-uint8",
    };
    let (model, config, labels, default_out) = match (&args.run_dir, &args.backbone) {
        (Some(dir), _) => {
            let trained = TrainedModel::open(dir, args.weights.as_deref())?;
            let model = export::trained(&trained, input)?;
            let out = dir.join(format!("model{suffix}.onnx"));
            (
                model,
                trained.backbone.config.clone(),
                trained.card.classes.clone(),
                out,
            )
        }
        (None, Some(name)) => {
            let choice = BackboneArgs {
                backbone: name.clone(),
                weights: args.weights.clone(),
                padding: None,
                input_size: None,
                pool: Default::default(),
            };
            let backbone = choice.load(!args.no_top)?;
            let model = export::backbone(&backbone, input)?;
            let labels = if args.no_top {
                Vec::new()
            } else {
                graft::labels::names(backbone.config.labels)
                    .iter()
                    .map(|s| s.to_string())
                    .collect()
            };
            let out = PathBuf::from(format!("{name}{suffix}.onnx"));
            (model, backbone.config.clone(), labels, out)
        }
        // cannot fail: clap requires RUN_DIR unless --backbone is given
        (None, None) => unreachable!("clap requires RUN_DIR or --backbone"),
    };
    let out = args.out.unwrap_or(default_out);
    let written = export::write(&model, &out, &config, &labels)
        .with_context(|| format!("writing the ONNX model to {}", out.display()))?;
    let size = std::fs::metadata(&out).map(|m| m.len()).unwrap_or(0);
    println!(
        "wrote {} ({:.1} MB, ONNX opset {}, outputs: {}); {} beside it",
        out.display(),
        size as f64 / 1e6,
        export::OPSET,
        model.outputs.join(", "),
        written[1..]
            .iter()
            .filter_map(|p| p.file_name())
            .map(|n| n.to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join(", "),
    );
    if let Some(note) = &model.note {
        eprintln!("note: {note}");
    }
    Ok(ExitCode::SUCCESS)
}

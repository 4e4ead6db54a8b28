//! The record that travels with every pretrained backbone: how its weights expect images to be
//! prepared and how the network must be run (timm's `pretrained_cfg`). Users never type these.

use std::sync::atomic::{AtomicBool, Ordering};

use serde::{Deserialize, Serialize};

/// How the square (or whole) region fed to the network is cut from the decoded image.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum CropRule {
    /// Centre square of side `floor(fraction * short_side)`, resized to the input resolution
    /// (the TF EfficientNet eval crop: fraction 0.875 = 224/256).
    CenterSquare { fraction: f32 },
    /// Resize the short side to `resolution / fraction`, then centre-crop the input resolution
    /// (torchvision's `Resize(256) + CenterCrop(224)`).
    ResizeThenCenterCrop { fraction: f32 },
    /// Resize the whole image to the square input, aspect ratio not kept (SigLIP's
    /// processor, OpenCLIP's `resize_mode='squash'`).
    Squash,
}

/// Resampling filter of the resize step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ResizeFilter {
    /// Keys cubic (a = -0.5), antialiased like Pillow's `BICUBIC`.
    Bicubic,
    /// Antialiased bilinear, like Pillow's / torchvision's `BILINEAR`.
    Bilinear,
}

/// Per-channel `x' = (x - mean) / std` on pixel values in 0..=255.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Normalization {
    pub mean: [f32; 3],
    pub std: [f32; 3],
}

impl Normalization {
    /// TF EfficientNet-Lite: `(x - 127) / 128`.
    pub const TF_EDGE: Self = Self {
        mean: [127.0; 3],
        std: [128.0; 3],
    };
    /// TF-slim / Keras "tf" mode: `x / 127.5 - 1`.
    pub const TF_INCEPTION: Self = Self {
        mean: [127.5; 3],
        std: [127.5; 3],
    };
    /// timm's mean = std = 0.5 (AugReg ViTs): the same numbers as [`Self::TF_INCEPTION`].
    pub const HALF: Self = Self::TF_INCEPTION;
    /// torchvision's ImageNet mean/std, on a 0..=255 scale.
    pub const IMAGENET: Self = Self {
        mean: [0.485 * 255.0, 0.456 * 255.0, 0.406 * 255.0],
        std: [0.229 * 255.0, 0.224 * 255.0, 0.225 * 255.0],
    };
}

/// Padding convention of the framework the weights were trained in. It belongs to the
/// weights, not to the architecture: TF-trained weights lose accuracy with symmetric padding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PaddingMode {
    /// TensorFlow "SAME": `out = ceil(in / stride)`, the odd extra pixel at bottom/right.
    TfSame,
    /// PyTorch: `(kernel - 1) / 2` on every side.
    Symmetric,
}

/// How JPEG files are decoded for eval preprocessing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DecodeMode {
    /// Every pixel decoded, then resized (run directories from before the field read as this).
    #[default]
    Exact,
    /// A JPEG at least twice the size the resize needs is decoded scaled in the DCT domain
    /// (1/2, 1/4 or 1/8, as libjpeg's `scale_denom` and Pillow's `draft`), at the largest
    /// reduction that keeps it at least as large as the resize input; then the same resize.
    /// Camera-sized photos decode several times faster.
    DctScaled,
}

static EXACT_DECODE: AtomicBool = AtomicBool::new(false);

/// Make [`DecodeMode::Exact`] the default for the backbones loaded in this process (the
/// command line's `--exact-decode`); otherwise it is [`DecodeMode::DctScaled`].
pub fn set_exact_decode(exact: bool) {
    EXACT_DECODE.store(exact, Ordering::Relaxed);
}

/// The decode mode of newly loaded backbones (see [`set_exact_decode`]).
pub fn default_decode() -> DecodeMode {
    if EXACT_DECODE.load(Ordering::Relaxed) {
        DecodeMode::Exact
    } else {
        DecodeMode::DctScaled
    }
}

/// The number format of a backbone's matrix products at inference.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Precision {
    /// float32 throughout (run directories from before the field read as this).
    #[default]
    F32,
    /// The patch embedding and every Linear of a ViT / DINOv2 in bfloat16 on Intel AMX tiles
    /// (Xeon Sapphire Rapids and later), summed in float32; attention, LayerNorm and GELU stay
    /// float32. 2.7x the float32 forward of a DINOv2 ViT-S/14 on 2 cores (`graft bench
    /// forward`); features within about 1% of their largest value of float32's.
    Bf16,
}

impl Precision {
    pub fn is_f32(&self) -> bool {
        *self == Self::F32
    }
}

static BF16_REQUESTED: AtomicBool = AtomicBool::new(false);

/// Ask for [`Precision::Bf16`] inference in this process (the command line's `--precision`);
/// [`Backbone::for_inference`](crate::backbone::Backbone::for_inference) grants it where it can.
pub fn set_precision(precision: Precision) {
    BF16_REQUESTED.store(precision == Precision::Bf16, Ordering::Relaxed);
}

/// The precision asked for with [`set_precision`].
pub fn requested_precision() -> Precision {
    if BF16_REQUESTED.load(Ordering::Relaxed) {
        Precision::Bf16
    } else {
        Precision::F32
    }
}

/// Which pooled feature a backbone gives ("the bottleneck"); only ViTs offer a choice.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Pooling {
    /// As the weights' source defines it: the global average pool of a CNN, a ViT's class
    /// token after the final norm.
    #[default]
    Source,
    /// A ViT's class token and the mean of its patch tokens side by side, twice as wide
    /// (DINOv2's linear-probe feature).
    ClassAndPatchMean,
}

impl Pooling {
    pub fn is_source(&self) -> bool {
        *self == Self::Source
    }
}

/// Names of the classes the pretrained top predicts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LabelSet {
    ImageNet1k,
}

/// Everything about a pretrained model that is not its architecture or weight values.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SourceConfig {
    /// Registry name (`efficientnet-lite0`, `mobilenet-v2`, ...).
    pub name: String,
    /// Square input side in pixels.
    pub resolution: usize,
    pub crop: CropRule,
    pub resize_filter: ResizeFilter,
    pub normalization: Normalization,
    pub padding: PaddingMode,
    /// BatchNorm epsilon the weights were trained with (TF 1e-3, PyTorch 1e-5).
    pub bn_eps: f64,
    pub labels: LabelSet,
    pub num_classes: usize,
    /// Width of the pooled feature vector (the "bottleneck").
    pub feature_dim: usize,
    /// Layer groups from the input to the output, the unit of freezing and unfreezing.
    pub layer_groups: Vec<String>,
    /// Where the weights come from, for humans.
    pub weights_origin: String,
    /// How JPEGs are decoded for eval preprocessing; part of the cache key, so rows of the two
    /// modes never mix.
    #[serde(default)]
    pub decode: DecodeMode,
    /// Which pooled feature `feature_dim` counts; part of the cache key when not the source's.
    /// Left out of the JSON when it is the source's, so that records written before the field
    /// existed read and write back the same.
    #[serde(default, skip_serializing_if = "Pooling::is_source")]
    pub pool: Pooling,
    /// The number format the features were computed in; part of the cache key when not
    /// float32. Left out of the JSON when float32, as `pool`.
    #[serde(default, skip_serializing_if = "Precision::is_f32")]
    pub precision: Precision,
}

impl SourceConfig {
    /// A stable identifier of the preprocessing, used to key cached features.
    pub fn preprocessing_id(&self) -> String {
        let n = &self.normalization;
        let decode = match self.decode {
            DecodeMode::Exact => "",
            // `-2`: libjpeg's scaled IDCT since 2026-12-02 (jpeg-decoder's before): rows
            // from the two decoders differ slightly and must not mix in one cache.
            DecodeMode::DctScaled => "|dct-scaled-2",
        };
        // `pillow`: the resize is Pillow's arithmetic since 2026-12-08 (fast_image_resize's
        // before, a grey level off on some pixels): older caches' rows are not reused.
        format!(
            "{}px|{:?}|{:?}|pillow|mean{:?}|std{:?}{decode}",
            self.resolution, self.crop, self.resize_filter, n.mean, n.std
        )
    }

    /// The short side an image needs for the resize to downsample (not upsample): `resolution
    /// / fraction` for both crop rules.
    pub fn needed_short_side(&self) -> u32 {
        let fraction = match self.crop {
            CropRule::CenterSquare { fraction } | CropRule::ResizeThenCenterCrop { fraction } => {
                fraction
            }
            CropRule::Squash => 1.0,
        };
        (self.resolution as f64 / f64::from(fraction)).ceil() as u32
    }
}

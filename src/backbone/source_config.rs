//! The record that travels with every pretrained backbone: how its weights expect images to be
//! prepared and how the network must be run (timm's `pretrained_cfg`). Users never type these.

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
}

impl SourceConfig {
    /// A stable identifier of the preprocessing, used to key cached features.
    pub fn preprocessing_id(&self) -> String {
        let n = &self.normalization;
        format!(
            "{}px|{:?}|{:?}|mean{:?}|std{:?}",
            self.resolution, self.crop, self.resize_filter, n.mean, n.std
        )
    }
}

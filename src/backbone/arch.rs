//! The closed set of families: which network an entry builds, and how its checkpoints name
//! the tensors.

use super::convnext::{ConvNeXtLayout, ConvNeXtSpec};
use super::mbconv::{self, KeyLayout, MbNetSpec};
use super::resnet::ResNetSpec;
use super::vit::{VitLayout, VitSpec};

/// The network an entry builds, and how its checkpoints name the tensors.
#[derive(Debug, Clone, Copy)]
pub enum Arch {
    /// MobileNetV2 / EfficientNet-Lite (inverted residual blocks).
    MbConv {
        spec: fn() -> MbNetSpec,
        layout: KeyLayout,
    },
    /// ResNet in torchvision's layout (timm's `resnet*` share it).
    ResNet(ResNetSpec),
    /// ConvNeXt, in torchvision's or timm's layout.
    ConvNeXt {
        spec: ConvNeXtSpec,
        layout: ConvNeXtLayout,
    },
    /// Vision Transformer (and DINOv2), in torchvision's or timm's layout.
    Vit { spec: VitSpec, layout: VitLayout },
}

impl Arch {
    /// The family's name, for messages.
    pub fn family(&self) -> &'static str {
        match self {
            Self::MbConv { .. } => "MBConv",
            Self::ResNet(_) => "ResNet",
            Self::ConvNeXt { .. } => "ConvNeXt",
            Self::Vit { .. } => "ViT",
        }
    }

    /// Channels of the pooled features.
    pub fn feature_dim(&self) -> usize {
        match self {
            Self::MbConv { spec, .. } => spec().head_channels,
            Self::ResNet(spec) => spec.feature_dim(),
            Self::ConvNeXt { spec, .. } => spec.feature_dim(),
            Self::Vit { spec, .. } => spec.feature_dim(),
        }
    }

    /// Outputs of the pretrained classifier.
    pub fn num_classes(&self) -> usize {
        match self {
            Self::MbConv { spec, .. } => spec().num_classes,
            Self::ResNet(spec) => spec.num_classes,
            Self::ConvNeXt { spec, .. } => spec.num_classes,
            Self::Vit { spec, .. } => spec.num_classes,
        }
    }

    /// The layer groups (timm's `group_matcher`), in order from the input: what `summary`
    /// prints and fine-tuning unfreezes.
    pub fn group_names(&self) -> Vec<String> {
        match self {
            Self::MbConv { spec, .. } => mbconv::groups::names(spec().stages.len()),
            Self::ResNet(spec) => spec.group_names(),
            Self::ConvNeXt { spec, .. } => spec.group_names(),
            Self::Vit { spec, .. } => spec.group_names(),
        }
    }
}

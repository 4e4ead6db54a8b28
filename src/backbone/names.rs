//! Where each layer's tensors live in a family's checkpoints: the one place that knows
//! PyTorch key names.

/// Which conv of an MBConv block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlockPart {
    Expand,
    Depthwise,
    Project,
}

/// Checkpoint key layout of a model family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyLayout {
    /// `efficientnet_lite_pytorch`: `_conv_stem`, `_blocks.N._expand_conv`, `_fc`, ...
    EfficientNetLite,
    /// `torchvision.models.mobilenet_v2`: `features.N.conv.M`, `classifier.1`, ...
    TorchvisionMobileNetV2,
}

/// `(conv weight key, BatchNorm prefix)` of one layer.
pub type ConvKeys = (String, String);

impl KeyLayout {
    pub fn stem(self) -> ConvKeys {
        match self {
            Self::EfficientNetLite => ("_conv_stem.weight".into(), "_bn0".into()),
            Self::TorchvisionMobileNetV2 => ("features.0.0.weight".into(), "features.0.1".into()),
        }
    }

    pub fn block(self, index: usize, part: BlockPart, has_expand: bool) -> ConvKeys {
        match self {
            Self::EfficientNetLite => {
                let (conv, bn) = match part {
                    BlockPart::Expand => ("_expand_conv", "_bn0"),
                    BlockPart::Depthwise => ("_depthwise_conv", "_bn1"),
                    BlockPart::Project => ("_project_conv", "_bn2"),
                };
                (
                    format!("_blocks.{index}.{conv}.weight"),
                    format!("_blocks.{index}.{bn}"),
                )
            }
            Self::TorchvisionMobileNetV2 => {
                // features.0 is the stem; blocks start at features.1. Without an expand conv
                // every index below shifts down by one.
                let f = format!("features.{}.conv", index + 1);
                let shift = usize::from(!has_expand);
                match part {
                    BlockPart::Expand => (format!("{f}.0.0.weight"), format!("{f}.0.1")),
                    BlockPart::Depthwise => (
                        format!("{f}.{}.0.weight", 1 - shift),
                        format!("{f}.{}.1", 1 - shift),
                    ),
                    BlockPart::Project => (
                        format!("{f}.{}.weight", 2 - shift),
                        format!("{f}.{}", 3 - shift),
                    ),
                }
            }
        }
    }

    pub fn head(self, num_blocks: usize) -> ConvKeys {
        match self {
            Self::EfficientNetLite => ("_conv_head.weight".into(), "_bn1".into()),
            Self::TorchvisionMobileNetV2 => (
                format!("features.{}.0.weight", num_blocks + 1),
                format!("features.{}.1", num_blocks + 1),
            ),
        }
    }

    /// Prefix of the ImageNet classifier (`.weight`, `.bias`).
    pub fn classifier(self) -> &'static str {
        match self {
            Self::EfficientNetLite => "_fc",
            Self::TorchvisionMobileNetV2 => "classifier.1",
        }
    }
}

//! Where each layer's tensors live in a family's checkpoints: the one place that knows
//! PyTorch key names.

use burn::tensor::Device;

use super::blocks::ConvBnAct;
use super::model::MbNet;
use crate::weights::loader::{TensorKeys, TensorSource};
use crate::weights::{Checkpoint, LoadReport};

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

/// Every tensor of `net` under its checkpoint key in `layout`: the one walk that loads a
/// checkpoint (`fill`) and saves one (`backbone::export`).
pub fn visit_keys<K: TensorKeys>(net: &mut MbNet, layout: KeyLayout, keys: &mut K) {
    let conv = |keys: &mut K, layer: &mut ConvBnAct, (conv, bn): ConvKeys| {
        keys.param(&mut layer.weight, &conv);
        keys.batch_norm(&mut layer.bn, &bn);
    };
    conv(keys, &mut net.stem, layout.stem());
    let num_blocks = net.blocks.len();
    for (index, block) in net.blocks.iter_mut().enumerate() {
        let has_expand = block.expand.is_some();
        let parts = [
            (BlockPart::Expand, block.expand.as_mut()),
            (BlockPart::Depthwise, Some(&mut block.depthwise)),
            (BlockPart::Project, Some(&mut block.project)),
        ];
        for (part, layer) in parts {
            if let Some(layer) = layer {
                conv(keys, layer, layout.block(index, part, has_expand));
            }
        }
    }
    conv(keys, &mut net.head, layout.head(num_blocks));
    match &mut net.classifier {
        Some(classifier) => keys.linear(classifier, layout.classifier()),
        None => keys.skip_prefix(&format!("{}.", layout.classifier())),
    }
}

/// Copy every tensor of `checkpoint` into `net`, returning what did not fit.
pub(in crate::backbone) fn fill(
    net: &mut MbNet,
    checkpoint: &Checkpoint,
    layout: KeyLayout,
    device: &Device,
) -> LoadReport {
    let (stem_conv, _) = layout.stem();
    let mut source = TensorSource::new(checkpoint, &stem_conv, device);
    visit_keys(net, layout, &mut source);
    source.finish()
}

//! The network of any family, as one burn module: what runs when no fused CPU form does (the
//! GPU, training the unfrozen layers), and what checkpoints load into.

use burn::module::Module;
use burn::tensor::{Device, Tensor};

use super::arch::Arch;
use super::convnext::{ConvNeXt, ConvNeXtLayout};
use super::mbconv::{self, MbNet, MbNetSpec};
use super::resnet::ResNet;
use super::source_config::PaddingMode;
use super::vit::{Vit, VitLayout};
use crate::weights::loader::TensorSource;
use crate::weights::{Checkpoint, LoadReport};

/// The network of any family.
// One per backbone, moved rarely: boxing the variants would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Module, Debug)]
pub enum Network {
    MbConv(MbNet),
    ResNet(ResNet),
    ConvNeXt(ConvNeXt),
    Vit(Vit),
}

impl From<MbNet> for Network {
    fn from(net: MbNet) -> Self {
        Self::MbConv(net)
    }
}

impl From<ResNet> for Network {
    fn from(net: ResNet) -> Self {
        Self::ResNet(net)
    }
}

impl From<ConvNeXt> for Network {
    fn from(net: ConvNeXt) -> Self {
        Self::ConvNeXt(net)
    }
}

impl From<Vit> for Network {
    fn from(net: Vit) -> Self {
        Self::Vit(net)
    }
}

/// An MBConv network of `spec` with placeholder weights (the generator only fills tensors a
/// checkpoint overwrites).
fn mbnet_init(
    spec: &MbNetSpec,
    padding: PaddingMode,
    bn_eps: f64,
    include_top: bool,
    device: &Device,
) -> MbNet {
    let mut rng = crate::rng::run_rng(0, 0);
    MbNet::init(spec, padding, bn_eps, include_top, &mut rng, device)
}

impl Network {
    /// `arch`'s network with placeholder weights: enough for shapes and parameter counts, and
    /// what [`Network::load`] fills.
    pub fn init(
        arch: &Arch,
        padding: PaddingMode,
        bn_eps: f64,
        include_top: bool,
        device: &Device,
    ) -> Self {
        match *arch {
            Arch::MbConv { spec, .. } => {
                Self::MbConv(mbnet_init(&spec(), padding, bn_eps, include_top, device))
            }
            Arch::ResNet(spec) => Self::ResNet(ResNet::init(&spec, include_top, device)),
            Arch::ConvNeXt { spec, .. } => {
                Self::ConvNeXt(ConvNeXt::init(&spec, include_top, device))
            }
            Arch::Vit { spec, .. } => Self::Vit(Vit::init(&spec, include_top, device)),
        }
    }

    /// `arch`'s network filled from `checkpoint`, with what did not fit.
    pub fn load(
        arch: &Arch,
        checkpoint: &Checkpoint,
        padding: PaddingMode,
        bn_eps: f64,
        include_top: bool,
        device: &Device,
    ) -> (Self, LoadReport) {
        // The checkpoint's tensors under the family's key names, found from `anchor`.
        let keyed = |anchor: &str, visit: &mut dyn FnMut(&mut TensorSource)| {
            let mut source = TensorSource::new(checkpoint, anchor, device);
            visit(&mut source);
            source.finish()
        };
        match *arch {
            Arch::MbConv { spec, layout } => {
                let mut net = mbnet_init(&spec(), padding, bn_eps, include_top, device);
                let report = mbconv::keys::fill(&mut net, checkpoint, layout, device);
                (Self::MbConv(net), report)
            }
            Arch::ResNet(spec) => {
                let mut net = ResNet::init(&spec, include_top, device);
                let report = keyed("layer1.0.conv1.weight", &mut |s| net.visit_keys(s));
                (Self::ResNet(net), report)
            }
            Arch::ConvNeXt { spec, layout } => {
                let mut net = ConvNeXt::init(&spec, include_top, device);
                let anchor = match layout {
                    ConvNeXtLayout::Torchvision => "features.0.0.weight",
                    ConvNeXtLayout::Timm => "stem.0.weight",
                };
                let report = keyed(anchor, &mut |s| net.visit_keys(s, layout));
                (Self::ConvNeXt(net), report)
            }
            Arch::Vit { spec, layout } => {
                let mut net = Vit::init(&spec, include_top, device);
                let anchor = match layout {
                    VitLayout::Torchvision => "conv_proj.weight",
                    VitLayout::Timm => "patch_embed.proj.weight",
                };
                let report = keyed(anchor, &mut |s| net.visit_keys(s, layout));
                (Self::Vit(net), report)
            }
        }
    }

    /// Pooled features `[N, feature_dim]`.
    pub fn forward_features(&self, x: Tensor<4>) -> Tensor<2> {
        match self {
            Self::MbConv(net) => net.forward_features(x),
            Self::ResNet(net) => net.forward_features(x),
            Self::ConvNeXt(net) => net.forward_features(x),
            Self::Vit(net) => net.forward_features(x),
        }
    }

    /// Logits of the pretrained classifier, or `None` without it.
    pub fn forward_logits(&self, x: Tensor<4>) -> Option<Tensor<2>> {
        match self {
            Self::MbConv(net) => net.forward_logits(x),
            Self::ResNet(net) => net.forward_logits(x),
            Self::ConvNeXt(net) => net.forward_logits(x),
            Self::Vit(net) => net.forward_logits(x),
        }
    }

    /// A CNN's last-stage maps `[N, C, h, w]`, the ones pooled into the features (for class
    /// activation maps); `None` for a ViT.
    pub fn forward_last_maps(&self, x: Tensor<4>) -> Option<Tensor<4>> {
        match self {
            Self::MbConv(net) => Some(net.forward_feature_map(x)),
            Self::ResNet(net) => net.forward_groups(x).pop(),
            Self::ConvNeXt(net) => net.forward_groups(x).pop(),
            Self::Vit(_) => None,
        }
    }

    /// The pooled features of [`Network::forward_last_maps`]'s maps: their global average, and
    /// for ConvNeXt the LayerNorm after it. Differentiable in `maps`; `None` for a ViT.
    pub fn features_from_maps(&self, maps: Tensor<4>) -> Option<Tensor<2>> {
        use super::family::global_average_pool;
        match self {
            Self::MbConv(_) | Self::ResNet(_) => Some(global_average_pool(maps)),
            Self::ConvNeXt(net) => Some(net.head_norm.forward(global_average_pool(maps))),
            Self::Vit(_) => None,
        }
    }

    /// The pretrained classifier as `[classes, feature_dim]` weights (row-major) and biases.
    pub fn classifier_weights(&self) -> Option<(Vec<f32>, Vec<f32>)> {
        let linear = match self {
            Self::MbConv(net) => net.classifier.as_ref(),
            Self::ResNet(net) => net.fc.as_ref(),
            Self::ConvNeXt(net) => net.fc.as_ref(),
            Self::Vit(net) => net.head.as_ref(),
        }?;
        // burn keeps the weight `[inputs, outputs]`.
        let weight = linear.weight.val().transpose();
        let [classes, _] = weight.dims();
        let values = |t: Tensor<1>| t.into_data().try_into_vec::<f32>().ok();
        let bias = match &linear.bias {
            Some(bias) => values(bias.val())?,
            None => vec![0.0; classes],
        };
        Some((values(weight.flatten(0, 1))?, bias))
    }

    pub fn has_classifier(&self) -> bool {
        match self {
            Self::MbConv(net) => net.classifier.is_some(),
            Self::ResNet(net) => net.fc.is_some(),
            Self::ConvNeXt(net) => net.fc.is_some(),
            Self::Vit(net) => net.head.is_some(),
        }
    }

    pub fn device(&self) -> Device {
        match self {
            Self::MbConv(net) => net.stem.weight.val().device(),
            Self::ResNet(net) => net.device(),
            Self::ConvNeXt(net) => net.device(),
            Self::Vit(net) => net.device(),
        }
    }

    /// The family's name, for messages.
    pub fn family(&self) -> &'static str {
        match self {
            Self::MbConv(_) => "MBConv",
            Self::ResNet(_) => "ResNet",
            Self::ConvNeXt(_) => "ConvNeXt",
            Self::Vit(_) => "ViT",
        }
    }

    /// Width of the pooled features.
    pub fn feature_dim(&self) -> usize {
        match self {
            Self::MbConv(net) => net.head.out_channels(),
            Self::ResNet(net) => net.feature_dim(),
            Self::ConvNeXt(net) => net.head_norm.gamma.dims()[0],
            Self::Vit(net) => match &net.proj {
                Some(proj) => proj.weight.dims()[1],
                None => net.norm.gamma.dims()[0] * if net.mean_patch_feature { 2 } else { 1 },
            },
        }
    }

    /// The network on `device`, ready for autodiff (what is frozen stays frozen).
    pub fn for_training(self, device: &Device) -> Self {
        self.fork(device).train()
    }

    pub fn as_mbconv(&self) -> Option<&MbNet> {
        match self {
            Self::MbConv(net) => Some(net),
            _ => None,
        }
    }

    pub fn into_mbconv(self) -> Option<MbNet> {
        match self {
            Self::MbConv(net) => Some(net),
            _ => None,
        }
    }
}

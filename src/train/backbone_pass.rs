//! How a training step runs the backbone: burn's autodiff over its modules, or on the CPU with
//! frozen BatchNorm (or none) the fused kernels with their own backward pass
//! (each family's `fused_grad`, through [`crate::backbone::fused::train`]; faster than
//! PyTorch's step: `bench/train_step.sh`). Either way
//! what couples the batch (dropout, the top, the loss; for SimCLR the projection head and
//! NT-Xent) runs on burn, on the whole batch's features.

use burn::tensor::{Gradients, Tensor};

use super::freeze::BnMode;
use crate::backbone::Network;
use crate::backbone::family::Start;
use crate::backbone::{convnext, mbconv, resnet, vit};

/// How a training step runs the backbone's forward and backward passes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackbonePass {
    /// burn's autodiff over the network's modules: on a GPU, with BatchNorm on batch
    /// statistics, or for a family without a fused backward.
    Burn,
    /// The fused CPU kernels with their own backward pass (they fold BatchNorm's running
    /// statistics into the convs, so BatchNorm must be frozen).
    Fused,
}

/// The pass a training step of `net` uses: [`BackbonePass::Fused`] on the CPU with frozen
/// BatchNorm (every family has a fused op), else [`BackbonePass::Burn`].
pub fn training_pass(net: &Network, bn_mode: BnMode) -> BackbonePass {
    // A ViT with CLIP's or SigLIP's switches trains through burn's autodiff.
    let fused_family = match net {
        Network::MbConv(_) | Network::ResNet(_) | Network::ConvNeXt(_) => true,
        Network::Vit(vit) => vit.plain,
    };
    if crate::backend::fused_cpu() && bn_mode == BnMode::Frozen && fused_family {
        BackbonePass::Fused
    } else {
        BackbonePass::Burn
    }
}

/// Forward `x` through `net` from `start` as `pass` says, compute the loss on the pooled
/// features with `loss_of`, and backward. Returns the loss, what `loss_of` returned besides it,
/// and the gradients (take the whole model's with `GradientsParams::from_module`: `net`'s and
/// those of everything `loss_of` used). `start` other than the image is for MBConv networks
/// and ResNets (see [`crate::train::finetune::FrozenPrefix`]).
pub fn backbone_backward<T>(
    net: &Network,
    start: Start,
    x: Tensor<4>,
    pass: BackbonePass,
    loss_of: impl FnOnce(Tensor<2>) -> (Tensor<1>, T),
) -> (Tensor<1>, T, Gradients) {
    let features = match (net, pass) {
        (Network::MbConv(net), BackbonePass::Fused) => mbconv::fused_grad::features(net, start, x),
        (Network::MbConv(net), BackbonePass::Burn) => net.forward_features_from(start, x),
        (Network::ResNet(net), BackbonePass::Fused) => resnet::fused_grad::features(net, start, x),
        (Network::ResNet(net), BackbonePass::Burn) => net.forward_features_from(start, x),
        (Network::ConvNeXt(net), BackbonePass::Fused) => {
            debug_assert!(
                matches!(start, Start::Image),
                "ConvNeXt's op has its own prefix"
            );
            convnext::fused_grad::features(net, x)
        }
        (Network::Vit(net), BackbonePass::Fused) => {
            debug_assert!(
                matches!(start, Start::Image),
                "a ViT's op has its own prefix"
            );
            vit::fused_grad::features(net, x)
        }
        (net, _) => {
            debug_assert!(
                matches!(start, Start::Image),
                "a prefix is MBConv's and ResNet's only"
            );
            net.forward_features(x)
        }
    };
    let (loss, extra) = loss_of(features);
    let grads = loss.backward();
    (loss, extra, grads)
}

//! How a training step runs the backbone: burn's autodiff over its modules, or on the CPU with
//! frozen BatchNorm the fused kernels with their own backward pass
//! ([`crate::backbone::fused_grad`], several times faster: `bench/train_step.sh`). Either way
//! what couples the batch (dropout, the top, the loss; for SimCLR the projection head and
//! NT-Xent) runs on burn, on the whole batch's features.

use burn::tensor::{Gradients, Tensor};

use super::freeze::BnMode;
use crate::backbone::fused_grad;
use crate::backbone::mbnet::{MbNet, Start};

/// How a training step runs the backbone's forward and backward passes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackbonePass {
    /// burn's autodiff over the network's modules: on a GPU, or with BatchNorm on batch
    /// statistics.
    Burn,
    /// The fused CPU kernels with their own backward pass (they fold BatchNorm's running
    /// statistics into the convs, so BatchNorm must be frozen).
    Fused,
}

/// The pass a training step uses: [`BackbonePass::Fused`] on the CPU with frozen BatchNorm,
/// else [`BackbonePass::Burn`].
pub fn training_pass(bn_mode: BnMode) -> BackbonePass {
    if !crate::backend::fused_cpu() || bn_mode != BnMode::Frozen {
        BackbonePass::Burn
    } else {
        BackbonePass::Fused
    }
}

/// Forward `x` through `net` from `start` as `pass` says, compute the loss on the pooled
/// features with `loss_of`, and backward. Returns the loss, what `loss_of` returned besides it,
/// and the gradients (take the whole model's with `GradientsParams::from_module`: `net`'s and
/// those of everything `loss_of` used).
pub fn backbone_backward<T>(
    net: &MbNet,
    start: Start,
    x: Tensor<4>,
    pass: BackbonePass,
    loss_of: impl FnOnce(Tensor<2>) -> (Tensor<1>, T),
) -> (Tensor<1>, T, Gradients) {
    let features = match pass {
        BackbonePass::Burn => net.forward_features_from(start, x),
        BackbonePass::Fused => fused_grad::features(net, start, x),
    };
    let (loss, extra) = loss_of(features);
    let grads = loss.backward();
    (loss, extra, grads)
}

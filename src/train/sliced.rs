//! Data-parallel training on the CPU: a batch's backbone forward and backward run as slices on
//! the worker threads, each on its own copy of the parameters (burn's autodiff serialises
//! graphs that share parameter nodes), while what couples the batch (dropout, the top, the
//! loss; for SimCLR the projection head and NT-Xent) runs once on the whole batch's features.
//! The gradient is the whole batch's by the chain rule: dL/dtheta = sum over slices of
//! (df_s/dtheta)^T dL/df_s. burn-flex keeps about 1.3 of 2 cores busy in one training step;
//! slices keep both busy (see README, train-step benchmark).

use burn::module::Module;
use burn::optim::{GradientsAccumulator, GradientsParams};
use burn::tensor::{Gradients, Tensor};
use rayon::prelude::*;

use super::finetune::BnMode;
use crate::backbone::fused_grad;
use crate::backbone::mbnet::{MbNet, Start};

/// How a training step runs the backbone's forward and backward passes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackbonePass {
    /// burn's autodiff on the whole batch: on a GPU, or with BatchNorm on batch statistics.
    Burn,
    /// burn's autodiff in `n` slices of the batch, one per worker thread at a time (CPU, BN
    /// frozen: batch statistics would change with the slice). Kept for `graft bench
    /// train-step --slices`, to compare.
    Slices(usize),
    /// The fused CPU kernels with their own backward pass
    /// ([`crate::backbone::fused_grad`]; CPU, BN frozen: it folds BatchNorm).
    Fused,
}

/// The pass a training step uses: [`BackbonePass::Fused`] on the CPU with frozen BatchNorm,
/// else [`BackbonePass::Burn`].
pub fn training_pass(bn_mode: BnMode) -> BackbonePass {
    if cfg!(feature = "cuda") || bn_mode != BnMode::Frozen {
        BackbonePass::Burn
    } else {
        BackbonePass::Fused
    }
}

/// Forward `x` through `net` from `start` as `pass` says, compute the loss on the pooled
/// features with `loss_of`, and backward. Returns what `loss_of` returned, the gradients of
/// everything `loss_of` used besides the features (take the top's with
/// `GradientsParams::from_module`), and the gradients of `net`'s parameters.
pub fn backbone_backward<T>(
    net: &MbNet,
    start: Start,
    x: Tensor<4>,
    pass: BackbonePass,
    loss_of: impl FnOnce(Tensor<2>) -> (Tensor<1>, T),
) -> (Tensor<1>, T, Gradients, GradientsParams) {
    let slices = match pass {
        BackbonePass::Slices(n) if n > 1 => n,
        BackbonePass::Fused => {
            return whole_batch(net, fused_grad::features(net, start, x), loss_of);
        }
        _ => return whole_batch(net, net.forward_features_from(start, x), loss_of),
    };
    let device = x.device();
    let parts: Vec<(MbNet, Tensor<2>)> = x
        .chunk(slices, 0)
        .into_par_iter()
        .map(|xs| {
            let copy = net.valid().for_training(&device);
            let features = copy.forward_features_from(start, xs);
            (copy, features)
        })
        .collect();
    let features =
        Tensor::cat(parts.iter().map(|(_, f)| f.clone().detach()).collect(), 0).require_grad();
    let (loss, extra) = loss_of(features.clone());
    let grads = loss.backward();
    let Some(d_features) = features.grad(&grads) else {
        // Nothing below the loss trains.
        return (loss, extra, grads, GradientsParams::new());
    };
    let sizes: Vec<usize> = parts.iter().map(|(_, f)| f.dims()[0]).collect();
    let per_slice: Vec<GradientsParams> = parts
        .into_par_iter()
        .zip(d_features.split_with_sizes(sizes, 0))
        .map(|((copy, f), d)| {
            let mut grads = (f * Tensor::from_inner(d)).sum().backward();
            GradientsParams::from_module(&mut grads, &copy)
        })
        .collect();
    let mut sum = GradientsAccumulator::<MbNet>::new();
    for g in per_slice {
        sum.accumulate(net, g);
    }
    (loss, extra, grads, sum.grads())
}

/// The loss of the whole batch's `features` and its gradients.
fn whole_batch<T>(
    net: &MbNet,
    features: Tensor<2>,
    loss_of: impl FnOnce(Tensor<2>) -> (Tensor<1>, T),
) -> (Tensor<1>, T, Gradients, GradientsParams) {
    let (loss, extra) = loss_of(features);
    let mut grads = loss.backward();
    let net_grads = GradientsParams::from_module(&mut grads, net);
    (loss, extra, grads, net_grads)
}

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
use crate::backbone::mbnet::{MbNet, Start};

/// Images per slice when a training batch is split across the CPU's cores.
pub const CPU_SLICE: usize = 8;

/// How many slices to split a training batch of `n` into: on the CPU with frozen BatchNorm
/// only (batch statistics would change with the slice), else 1.
pub fn training_slices(n: usize, bn_mode: BnMode) -> usize {
    if cfg!(feature = "cuda") || bn_mode != BnMode::Frozen {
        1
    } else {
        n.div_ceil(CPU_SLICE).max(1)
    }
}

/// Forward `x` through `net` from `start` in `slices` slices, compute the loss on the pooled
/// features with
/// `loss_of`, and backward. Returns what `loss_of` returned, the gradients of everything
/// `loss_of` used besides the features (take the top's with `GradientsParams::from_module`), and
/// the gradients of `net`'s parameters.
pub fn backward_in_slices<T>(
    net: &MbNet,
    start: Start,
    x: Tensor<4>,
    slices: usize,
    loss_of: impl FnOnce(Tensor<2>) -> (Tensor<1>, T),
) -> (Tensor<1>, T, Gradients, GradientsParams) {
    if slices <= 1 {
        let (loss, extra) = loss_of(net.forward_features_from(start, x));
        let mut grads = loss.backward();
        let net_grads = GradientsParams::from_module(&mut grads, net);
        return (loss, extra, grads, net_grads);
    }
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

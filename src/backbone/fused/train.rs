//! The training form shared by every family's fused CPU network: the pooled features as one
//! burn autodiff op with its own backward pass, for fine-tuning (and SimCLR) with BatchNorm
//! frozen.
//!
//! burn differentiates a network op by op, NCHW, with a separate pass for every bias, clamp and
//! add; that made a training step 2x slower than PyTorch's (`bench/train_step.sh`). A family's
//! fused training form (`<family>/fused_grad.rs`) runs its inference kernels forward, keeps
//! what its backward kernels need, and implements [`FusedPlan`]; this module turns any such plan
//! into one burn op (a backend extension: the plain forward on the CPU backend, forward with
//! saved activations and the family's backward under autodiff). It knows no family: a plan
//! comes in as `Arc<dyn FusedPlan>`, one dynamic call per batch.
//!
//! The op's inputs are the image batch (a constant: no gradient flows into it) and one flat
//! vector of every trained parameter, concatenated by burn in the family's `features`; burn's
//! autodiff carries the op's gradient of that vector back through the concatenation (and any
//! folding) to the modules' parameters.

use std::sync::Arc;

use burn::backend::autodiff::Autodiff;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind, unary};
use burn::backend::flex::{Flex, FlexTensor};
use burn::backend::{Backend, Dispatch, backend_extension, tensor::FloatTensor};
use burn::tensor::Tensor;

use super::buffer_pool;
use crate::kernels::Activation;

/// A family's fused training pass over one batch, with the layout of its flat parameter
/// vector.
pub trait FusedPlan: std::fmt::Debug + Send + Sync + 'static {
    /// The pooled features `[N, dim]` of `images` under `params` and, when `save`, what the
    /// backward pass needs.
    fn forward(
        self: Arc<Self>,
        images: &FlexTensor,
        params: &FlexTensor,
        save: bool,
    ) -> (FlexTensor, Option<Arc<dyn SavedForward>>);
}

/// What a fused forward pass keeps for its backward pass: the gradient of the flat parameter
/// vector from the features' gradient.
pub trait SavedForward: std::fmt::Debug + Send + Sync + 'static {
    fn backward(&self, d_features: &FlexTensor) -> FlexTensor;
}

/// The pooled features of `images` through `plan` with the flat parameter vector `params`, as
/// one differentiable op (gradients flow into `params` only).
pub fn features(images: Tensor<4>, params: Tensor<1>, plan: Arc<dyn FusedPlan>) -> Tensor<2> {
    Tensor::from_dispatch(<Dispatch as FusedTrainOps>::fused_features(
        images.into_dispatch(),
        params.into_dispatch(),
        plan,
    ))
}

/// Free the buffers each training step keeps for the next one (see `buffer_pool`); for when
/// training ends.
pub fn release_buffers() {
    buffer_pool::clear();
}

/// The op, as a burn backend extension: forward on the CPU backend, forward with saved
/// activations and the plan's backward under autodiff.
#[backend_extension(Flex, Autodiff)]
pub trait FusedTrainOps: Backend {
    /// See [`features`]: `images` `[N, C, H, W]`, `params` the plan's flat parameter vector.
    fn fused_features(
        images: FloatTensor<Self>,
        params: FloatTensor<Self>,
        plan: Arc<dyn FusedPlan>,
    ) -> FloatTensor<Self>;
}

impl FusedTrainOps for Flex {
    fn fused_features(
        images: FlexTensor,
        params: FlexTensor,
        plan: Arc<dyn FusedPlan>,
    ) -> FlexTensor {
        plan.forward(&images, &params, false).0
    }
}

impl<C: CheckpointStrategy> FusedTrainOps for Autodiff<Flex, C> {
    fn fused_features(
        images: FloatTensor<Self>,
        params: FloatTensor<Self>,
        plan: Arc<dyn FusedPlan>,
    ) -> FloatTensor<Self> {
        tracked::<C>(images, params, |images, params, save| {
            plan.clone().forward(images, params, save)
        })
    }
}

#[derive(Debug)]
struct FeaturesBackward;

impl Backward<Flex, 1> for FeaturesBackward {
    type State = Arc<dyn SavedForward>;

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let saved = ops.state;
        unary::<Flex, _>(ops.parents, ops.node, grads, |d_features| {
            saved.backward(&d_features)
        });
    }
}

/// A fused features op under autodiff: `forward(images, params, save)` returns the features
/// and, when `save`, what its backward pass needs; the gradient flows into `params` only.
fn tracked<C: CheckpointStrategy>(
    images: FloatTensor<Autodiff<Flex, C>>,
    params: FloatTensor<Autodiff<Flex, C>>,
    forward: impl Fn(&FlexTensor, &FlexTensor, bool) -> (FlexTensor, Option<Arc<dyn SavedForward>>),
) -> FloatTensor<Autodiff<Flex, C>> {
    let params_node = params.node();
    // The images are a constant of this op (the batch, or the frozen prefix's output).
    let images = images.into_primitive();
    let params = params.into_primitive();
    match FeaturesBackward
        .prepare::<C>([params_node])
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => {
            let (features, saved) = forward(&images, &params, true);
            // cannot fail: the forward passes save when asked to
            prep.finish(saved.expect("saved activations"), features)
        }
        OpsKind::UnTracked(prep) => prep.finish(forward(&images, &params, false).0),
    }
}

/// One conv of the plan: where its folded weight (burn layout) and then its bias sit in the
/// flat parameter vector, and its shape.
#[derive(Debug, Clone, Copy)]
pub(in crate::backbone) struct ConvSlot {
    pub(in crate::backbone) at: usize,
    /// burn's `[out, in/groups, k, k]`.
    pub(in crate::backbone) dims: [usize; 4],
    pub(in crate::backbone) kernel: usize,
    pub(in crate::backbone) stride: usize,
    pub(in crate::backbone) activation: Activation,
}

impl ConvSlot {
    pub(in crate::backbone) fn weight_len(&self) -> usize {
        self.dims.iter().product()
    }

    pub(in crate::backbone) fn len(&self) -> usize {
        self.weight_len() + self.dims[0]
    }

    /// This conv's kernel-layout weight and its bias in a vector laid out like the plan's.
    pub(in crate::backbone) fn split_mut<'a>(
        &self,
        values: &'a mut [f32],
    ) -> (&'a mut [f32], &'a mut [f32]) {
        values[self.at..][..self.len()].split_at_mut(self.weight_len())
    }
}

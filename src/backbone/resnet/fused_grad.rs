//! The training form of the fused ResNet ([`super::fused`]): the pooled features as one
//! burn autodiff op with its own backward pass, for fine-tuning (and SimCLR) with BatchNorm
//! frozen, as [`crate::backbone::mbconv::fused_grad`] is for MBConv.
//!
//! burn-flex differentiated every conv NCHW through its generic conv backward, whose products
//! ran in the gemm crate's edge micro-kernels (`perf`: a third of the step), plus a pass per
//! BatchNorm, ReLU and add: a ResNet-50 step ran at 0.30x PyTorch's speed
//! (`bench/train_step.sh`). Here a worker thread takes a group of images (the batch split
//! evenly over the threads) through the inference kernels, keeping every activation map, and
//! back: a conv's weight gradient is `im2col(input)ᵀ @ d_out` (the input itself for a 1x1), its
//! input gradient `d_out @ weightᵀ` then col2im, or for a stride-1 3x3 Winograd's F(4x4, 3x3)
//! with the flipped, transposed kernel (the same transform as the forward's); ReLU's gradient
//! is a mask from its saved output, the max-pool's routes to the first maximum of each window.
//!
//! The op's parameters are one flat vector of every trained conv's weight and BatchNorm
//! ([`super::model::ConvBn::unfolded_parts`]). The op folds BatchNorm itself and unfolds the
//! gradient (weight, gamma, beta; none for the running statistics): done by burn, the fold and
//! its gradient were passes over the 25 M weights of a ResNet-50 that took 0.14 s of a 1.6 s
//! step (timers around the op, batch 16), 0.02 s here.

use std::sync::Arc;

use burn::backend::flex::FlexTensor;
use burn::tensor::{Tensor, TensorData};
use rayon::prelude::*;

use super::fused::{
    Buffers, Conv, STRIP, burn_layout, max_pool, pool_window, pooled_size, stem_conv, strip_shares,
};
use super::model::{ConvBn, ResNet};
use crate::backbone::family::Start;
use crate::backbone::fused::buffer_pool;
use crate::backbone::fused::grow as sized;
use crate::backbone::fused::params::summed_group_gradients;
use crate::backbone::fused::train::{self, ConvSlot, FusedPlan, SavedForward};
use crate::kernels::{self, Activation, Winograd3x3};

/// Pooled features `[N, features]` of `x` through `net` from `start` (the image batch, or the
/// map entering block `n` of all the stages' blocks in order), on the fused CPU kernels,
/// differentiable with respect to every parameter of the layers it runs (BatchNorm on its
/// running statistics). Equals [`ResNet::forward_features_from`] to float rounding.
pub fn features(net: &ResNet, start: Start, x: Tensor<4>) -> Tensor<2> {
    let (plan, layers) = ResNetPlan::new(net, start);
    let params = Tensor::cat(
        layers
            .iter()
            .flat_map(|layer| {
                let (weight, batch_norm, _) = layer.unfolded_parts();
                std::iter::once(weight.flatten::<1>(0, 3)).chain(batch_norm)
            })
            .collect(),
        0,
    );
    train::features(x, params, Arc::new(plan))
}

/// Output pixels per im2col strip of a weight gradient: each strip's product reads and adds
/// into the whole gradient (9 MB for layer4's 3x3 convs), so more rows per strip than the
/// forward's.
const WEIGHT_STRIP: usize = 1024;

/// One residual block of the plan: its chain of convs (1x1, 3x3, 1x1 for a Bottleneck; 3x3,
/// 3x3 for a BasicBlock), each followed by ReLU, the last one's after the residual add.
#[derive(Debug)]
struct BlockSlots {
    chain: Vec<usize>,
    downsample: Option<usize>,
}

/// Where a conv's parameters sit in the op's parameter vector: its weight (burn's layout),
/// then BatchNorm's gamma, beta, running mean and running variance.
#[derive(Debug, Clone, Copy)]
struct Unfolded {
    at: usize,
    epsilon: f64,
}

/// One conv's BatchNorm, as the fold and its gradient use it.
struct BatchNormParts<'a> {
    gamma: &'a [f32],
    beta: &'a [f32],
    mean: &'a [f32],
    /// `1 / sqrt(var + eps)`.
    inv_std: Vec<f32>,
}

/// The convs the op runs, in the order of the flat parameter vector (see [`features`]).
#[derive(Debug)]
pub struct ResNetPlan {
    /// Each conv's folded weight (kernel layout) and bias in the gradient the backward pass
    /// sums before unfolding it.
    convs: Vec<ConvSlot>,
    unfolded: Vec<Unfolded>,
    /// `None` when the op starts at a block (the stem and the blocks before are frozen).
    stem: Option<usize>,
    blocks: Vec<BlockSlots>,
    /// The parameter vector's length.
    len: usize,
    /// The folded gradient's length.
    folded_len: usize,
}

impl ResNetPlan {
    /// The plan for `net` from `start`, and its convs in parameter order.
    fn new(net: &ResNet, start: Start) -> (Self, Vec<&ConvBn>) {
        fn push<'a>(order: &mut Vec<&'a ConvBn>, layer: &'a ConvBn) -> usize {
            order.push(layer);
            order.len() - 1
        }
        let mut order = Vec::new();
        let first = match start {
            Start::Image => 0,
            Start::Block(n) => n,
        };
        let stem = (start == Start::Image).then(|| push(&mut order, &net.stem));
        let blocks = net
            .stages
            .iter()
            .flat_map(|s| &s.blocks)
            .skip(first)
            .map(|b| {
                let chain = [Some(&b.conv1), Some(&b.conv2), b.conv3.as_ref()]
                    .into_iter()
                    .flatten()
                    .map(|c| push(&mut order, c))
                    .collect();
                let downsample = b.downsample.as_ref().map(|d| push(&mut order, d));
                BlockSlots { chain, downsample }
            })
            .collect();
        let (mut len, mut folded_len) = (0, 0);
        let mut unfolded = Vec::with_capacity(order.len());
        let convs = order
            .iter()
            .map(|layer| {
                let dims = layer.conv.weight.dims();
                let slot = ConvSlot {
                    at: folded_len,
                    dims,
                    kernel: dims[2],
                    stride: layer.conv.stride[0],
                    activation: Activation::Relu,
                };
                folded_len += slot.len();
                let epsilon = if layer.folded { 0.0 } else { layer.bn.epsilon };
                unfolded.push(Unfolded { at: len, epsilon });
                len += slot.weight_len() + 4 * dims[0];
                slot
            })
            .collect();
        let plan = Self {
            convs,
            unfolded,
            stem,
            blocks,
            len,
            folded_len,
        };
        (plan, order)
    }

    /// Conv `i`'s weight (burn's layout) and BatchNorm in the parameter vector `params`.
    fn unfolded<'a>(&self, i: usize, params: &'a [f32]) -> (&'a [f32], BatchNormParts<'a>) {
        let (slot, u) = (&self.convs[i], self.unfolded[i]);
        let out = slot.dims[0];
        let (weight, rest) =
            params[u.at..][..slot.weight_len() + 4 * out].split_at(slot.weight_len());
        let [gamma, beta, mean, var] = std::array::from_fn(|j| &rest[j * out..][..out]);
        let inv_std = var
            .iter()
            .map(|v| (1.0 / (f64::from(*v) + u.epsilon).sqrt()) as f32)
            .collect();
        let parts = BatchNormParts {
            gamma,
            beta,
            mean,
            inv_std,
        };
        (weight, parts)
    }

    /// The convs, BatchNorm folded, forward and backward forms, from the parameter vector (on
    /// the worker threads: the Winograd transforms of a ResNet-50 are 90 MB).
    fn layers(&self, params: &[f32]) -> Vec<TrainConv> {
        assert_eq!(
            params.len(),
            self.len,
            "parameter vector of the plan's size"
        );
        (0..self.convs.len())
            .into_par_iter()
            .map(|i| {
                let s = &self.convs[i];
                let (weight, bn) = self.unfolded(i, params);
                // w * gamma / std, beta - mean * gamma / std.
                let scale: Vec<f32> = bn
                    .gamma
                    .iter()
                    .zip(&bn.inv_std)
                    .map(|(g, r)| g * r)
                    .collect();
                let mut folded = buffer_pool::take(weight.len());
                let per_output = weight.len() / scale.len().max(1);
                for ((f, w), s) in folded
                    .chunks_exact_mut(per_output)
                    .zip(weight.chunks_exact(per_output))
                    .zip(&scale)
                {
                    f.iter_mut().zip(w).for_each(|(f, w)| *f = w * s);
                }
                let bias = bn
                    .beta
                    .iter()
                    .zip(bn.mean)
                    .zip(&scale)
                    .map(|((b, m), s)| b - m * s)
                    .collect();
                let planar = self.stem == Some(i);
                let conv = TrainConv::new(&folded, s.dims, bias, s.stride, planar);
                buffer_pool::give(folded);
                conv
            })
            .collect()
    }

    /// The gradient of the parameter vector `params` from that of the folded weights (kernel
    /// layout) and biases, conv by conv on the worker threads: the weight's is the folded
    /// one's times the scale, gamma's that of the scale over the standard deviation, beta's the
    /// bias's; the running statistics get none.
    fn unfold_gradient(&self, folded: &[f32], params: &[f32]) -> Vec<f32> {
        let mut grads = vec![0.0; self.len];
        let mut rest = &mut grads[..];
        let mut parts = Vec::with_capacity(self.convs.len());
        for (i, s) in self.convs.iter().enumerate() {
            let (conv, tail) =
                std::mem::take(&mut rest).split_at_mut(s.weight_len() + 4 * s.dims[0]);
            parts.push((i, s, conv));
            rest = tail;
        }
        parts.into_par_iter().for_each(|(i, s, out)| {
            let (d_kernel, d_bias) = folded[s.at..][..s.len()].split_at(s.weight_len());
            let (weight, bn) = self.unfolded(i, params);
            let (d_weight, d_bn) = out.split_at_mut(s.weight_len());
            burn_layout(d_kernel, s.dims, self.stem == Some(i), d_weight);
            let per_output = weight.len() / d_bias.len().max(1);
            for (o, (dw, w)) in d_weight
                .chunks_exact_mut(per_output)
                .zip(weight.chunks_exact(per_output))
                .enumerate()
            {
                let scale = bn.gamma[o] * bn.inv_std[o];
                let d_scale = dot(dw, w) - bn.mean[o] * d_bias[o];
                dw.iter_mut().for_each(|d| *d *= scale);
                d_bn[o] = d_scale * bn.inv_std[o];
                d_bn[d_bias.len() + o] = d_bias[o];
            }
        });
        grads
    }
}

/// One conv's forward form and what its input gradient needs.
struct TrainConv {
    conv: Conv,
    /// For a Winograd conv (whose forward form holds no plain weight): the conv from its output
    /// channels to its input channels with the kernel flipped, whose output is the input
    /// gradient.
    transposed: Option<Winograd3x3>,
    /// A zero bias for `transposed`.
    zeros: Vec<f32>,
}

/// Training reuses the weight buffers from step to step (see [`buffer_pool`]).
const POOLED: Buffers = Buffers {
    take: buffer_pool::take,
    give: buffer_pool::give,
};

impl TrainConv {
    fn new(weight: &[f32], dims: [usize; 4], bias: Vec<f32>, stride: usize, planar: bool) -> Self {
        let conv = Conv::from_burn_layout(weight, dims, bias, stride, planar, &POOLED);
        let [out, inputs, k, _] = dims;
        let transposed = conv.winograd.as_ref().map(|_| {
            // Rows (ky, kx, output channel), columns input channels, taps flipped.
            let taps = k * k;
            let mut flipped = buffer_pool::take(weight.len());
            for (o, row) in weight.chunks_exact(inputs * taps).enumerate() {
                for t in 0..taps {
                    let dst = &mut flipped[((taps - 1 - t) * out + o) * inputs..][..inputs];
                    for (c, d) in dst.iter_mut().enumerate() {
                        *d = row[c * taps + t];
                    }
                }
            }
            let buffer = buffer_pool::take(36 * inputs * out);
            let winograd = Winograd3x3::new_in(&flipped, out, inputs, buffer);
            buffer_pool::give(flipped);
            winograd
        });
        Self {
            conv,
            transposed,
            zeros: vec![0.0; inputs],
        }
    }
}

impl Drop for TrainConv {
    fn drop(&mut self) {
        let winograds = [self.conv.winograd.take(), self.transposed.take()];
        for buffer in winograds
            .into_iter()
            .flatten()
            .map(Winograd3x3::into_buffer)
        {
            buffer_pool::give(buffer);
        }
        buffer_pool::give(std::mem::take(&mut self.conv.weight));
    }
}

/// An NHWC map of a group of images, back to back.
struct Map {
    values: Vec<f32>,
    size: [usize; 2],
    channels: usize,
}

/// What one group's forward pass keeps for its backward pass.
struct SavedGroup {
    count: usize,
    /// The stem's output after ReLU, before the max-pool (empty when the stem is frozen).
    stem: Vec<f32>,
    /// The input of every block and, last, the final map.
    inputs: Vec<Map>,
    /// Per block: the outputs (after ReLU) of its chain's convs but the last.
    inner: Vec<Vec<Vec<f32>>>,
}

impl Drop for SavedGroup {
    /// The maps go back to the pool for the next step's forward pass.
    fn drop(&mut self) {
        let maps = self.inputs.drain(..).map(|m| m.values);
        for map in maps
            .chain(self.inner.drain(..).flatten())
            .chain([std::mem::take(&mut self.stem)])
        {
            buffer_pool::give(map);
        }
    }
}

/// A batch's forward pass, kept by burn's autodiff graph until the backward pass.
pub struct SavedResNet {
    plan: Arc<ResNetPlan>,
    /// The op's parameter vector (shared with burn's graph, not copied).
    params: FlexTensor,
    layers: Vec<TrainConv>,
    /// The planar input images, for the stem's weight gradient (empty when the stem is frozen).
    images: Vec<f32>,
    image_shape: [usize; 3],
    groups: Vec<SavedGroup>,
}

impl std::fmt::Debug for SavedResNet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SavedResNet")
            .field("groups", &self.groups.len())
            .finish_non_exhaustive()
    }
}

impl FusedPlan for ResNetPlan {
    fn forward(
        self: Arc<Self>,
        images: &FlexTensor,
        params: &FlexTensor,
        save: bool,
    ) -> (FlexTensor, Option<Arc<dyn SavedForward>>) {
        let (features, saved) = forward_batch(self, images, params, save);
        (
            features,
            saved.map(|s| Arc::new(s) as Arc<dyn SavedForward>),
        )
    }
}

/// The features `[N, features]` of a batch, and with `save` what the backward pass needs.
fn forward_batch(
    plan: Arc<ResNetPlan>,
    images: &FlexTensor,
    params: &FlexTensor,
    save: bool,
) -> (FlexTensor, Option<SavedResNet>) {
    let images = images.to_contiguous();
    let params = params.to_contiguous();
    let shape = images.layout().shape().to_vec();
    let [n, c, h, w] = [shape[0], shape[1], shape[2], shape[3]];
    // cannot fail: graft's tensors are f32
    let images: &[f32] = images.as_slice().expect("f32 images");
    let values: &[f32] = params.as_slice().expect("f32 parameters");
    let layers = plan.layers(values);
    let image_len = c * h * w;
    // One group per worker thread: the products see the group's rows together.
    let group = n.div_ceil(rayon::current_num_threads()).max(1);
    let per_group: Vec<(Vec<f32>, SavedGroup)> = images
        .par_chunks((group * image_len).max(1))
        .map(|images| {
            let count = images.len() / image_len.max(1);
            forward_group(&plan, &layers, images, count, [c, h, w])
        })
        .collect();
    let mut features = Vec::new();
    let mut groups = Vec::with_capacity(per_group.len());
    for (f, s) in per_group {
        features.extend_from_slice(&f);
        groups.push(s);
    }
    let dim = match plan.blocks.last().and_then(|b| b.chain.last()) {
        Some(&last) => plan.convs[last].dims[0],
        None => c,
    };
    let features = FlexTensor::from_data(TensorData::new(features, [n, dim]));
    let saved = save.then(|| SavedResNet {
        images: if plan.stem.is_some() {
            images.to_vec()
        } else {
            Vec::new()
        },
        plan,
        params: params.clone(),
        layers,
        image_shape: [c, h, w],
        groups,
    });
    (features, saved)
}

/// `count` planar images (`[c, h, w]` each) through the plan: their pooled features and saved
/// maps.
fn forward_group(
    plan: &ResNetPlan,
    layers: &[TrainConv],
    images: &[f32],
    count: usize,
    [c, h, w]: [usize; 3],
) -> (Vec<f32>, SavedGroup) {
    let image_len = c * h * w;
    let mut columns = Vec::new();
    let mut stem = Vec::new();
    let mut x = match plan.stem {
        Some(s) => {
            let conv = &layers[s].conv;
            let size = conv.geometry([h, w]).out_size();
            let channels = conv.outputs();
            let (len, pooled) = (size[0] * size[1] * channels, pooled_size(size));
            let pooled_len = pooled[0] * pooled[1] * channels;
            stem = buffer_pool::take(count * len);
            let mut x = buffer_pool::take(count * pooled_len);
            for i in 0..count {
                let out = &mut stem[i * len..][..len];
                stem_conv(
                    conv,
                    &images[i * image_len..][..image_len],
                    [h, w],
                    &mut columns,
                    out,
                );
                max_pool(out, size, channels, &mut x[i * pooled_len..][..pooled_len]);
            }
            Map {
                values: x,
                size: pooled,
                channels,
            }
        }
        // The maps entering the first block, CHW -> HWC.
        None => {
            let mut x = buffer_pool::take(count * image_len);
            for (image, out) in images
                .chunks_exact(image_len)
                .zip(x.chunks_exact_mut(image_len))
            {
                for (p, row) in out.chunks_exact_mut(c).enumerate() {
                    for (ch, v) in row.iter_mut().enumerate() {
                        *v = image[ch * h * w + p];
                    }
                }
            }
            Map {
                values: x,
                size: [h, w],
                channels: c,
            }
        }
    };
    let mut inputs = Vec::with_capacity(plan.blocks.len() + 1);
    let mut inner_maps = Vec::with_capacity(plan.blocks.len());
    for block in &plan.blocks {
        let mut inner: Vec<Vec<f32>> = Vec::with_capacity(block.chain.len());
        let mut size = x.size;
        for (j, &conv) in block.chain.iter().enumerate() {
            let conv = &layers[conv].conv;
            let out_size = conv.geometry(size).out_size();
            let mut out = buffer_pool::take(count * out_size[0] * out_size[1] * conv.outputs());
            let input: &[f32] = if j == 0 { &x.values } else { &inner[j - 1] };
            if j + 1 < block.chain.len() {
                conv.forward(
                    input,
                    count,
                    size,
                    Activation::Relu,
                    None,
                    &mut columns,
                    &mut out,
                );
            } else {
                let identity = block.downsample.map(|d| {
                    let mut identity = buffer_pool::take(out.len());
                    let down = &layers[d].conv;
                    down.forward(
                        &x.values,
                        count,
                        x.size,
                        Activation::None,
                        None,
                        &mut columns,
                        &mut identity,
                    );
                    identity
                });
                let residual = identity.as_deref().unwrap_or(&x.values);
                conv.forward(
                    input,
                    count,
                    size,
                    Activation::Relu,
                    Some(residual),
                    &mut columns,
                    &mut out,
                );
                if let Some(identity) = identity {
                    buffer_pool::give(identity);
                }
            }
            inner.push(out);
            size = out_size;
        }
        // cannot fail: every block has convs
        let out = inner.pop().expect("a block's last conv");
        let channels = layers[*block.chain.last().expect("a block's convs")]
            .conv
            .outputs();
        let next = Map {
            values: out,
            size,
            channels,
        };
        inputs.push(std::mem::replace(&mut x, next));
        inner_maps.push(inner);
    }
    // Global average pool, image by image.
    let pixels = x.size[0] * x.size[1];
    let mut features = vec![0.0; count * x.channels];
    for (image, out) in x
        .values
        .chunks_exact((pixels * x.channels).max(1))
        .zip(features.chunks_exact_mut(x.channels.max(1)))
    {
        kernels::add_column_sums(image, out);
        out.iter_mut().for_each(|v| *v /= pixels.max(1) as f32);
    }
    inputs.push(x);
    let saved = SavedGroup {
        count,
        stem,
        inputs,
        inner: inner_maps,
    };
    (features, saved)
}

impl SavedForward for SavedResNet {
    /// The gradient of the flat parameter vector from the features' gradient `[N, features]`:
    /// one group per task, each summing into its own gradient vector.
    fn backward(&self, d_features: &FlexTensor) -> FlexTensor {
        let d_features = d_features.to_contiguous();
        // cannot fail: graft's tensors are f32
        let d_features: &[f32] = d_features.as_slice().expect("f32 gradient");
        let n: usize = self.groups.iter().map(|g| g.count).sum();
        let dim = d_features.len() / n.max(1);
        let grads = summed_group_gradients(
            &self.groups,
            |g| g.count,
            self.plan.folded_len,
            |group, start, grads| {
                let d = &d_features[start * dim..][..group.count * dim];
                self.backward_group(group, start, d, grads);
            },
        );
        // cannot fail: graft's tensors are f32
        let params: &[f32] = self.params.as_slice().expect("f32 parameters");
        let unfolded = self.plan.unfold_gradient(&grads, params);
        buffer_pool::give(grads);
        FlexTensor::from_data(TensorData::new(unfolded, [self.plan.len]))
    }
}

impl SavedResNet {
    /// Adds one group's parameter gradients (kernel layout) into `grads`; its images start at
    /// image `first` of the batch.
    fn backward_group(
        &self,
        saved: &SavedGroup,
        first: usize,
        d_features: &[f32],
        grads: &mut [f32],
    ) {
        let plan = &*self.plan;
        let count = saved.count;
        let mut columns = Vec::new();
        // cannot fail: the forward pass pushed the final map
        let last = saved.inputs.last().expect("the final map");
        let pixels = last.size[0] * last.size[1];
        let mut d = buffer_pool::take(last.values.len());
        for (image, dz) in d
            .chunks_exact_mut((pixels * last.channels).max(1))
            .zip(d_features.chunks_exact(last.channels.max(1)))
        {
            for row in image.chunks_exact_mut(last.channels) {
                for (r, g) in row.iter_mut().zip(dz) {
                    *r = g / pixels as f32;
                }
            }
        }
        for (b, block) in plan.blocks.iter().enumerate().rev() {
            // d: the gradient of the block's output, after its ReLU.
            kernels::relu_backward(&mut d, &saved.inputs[b + 1].values);
            let x = &saved.inputs[b];
            let input_grad = b > 0 || plan.stem.is_some();
            let mut d_x = match block.downsample {
                Some(down) => self.conv_backward(
                    down,
                    &x.values,
                    count,
                    x.size,
                    &d,
                    grads,
                    input_grad,
                    &mut columns,
                ),
                None => input_grad.then(|| {
                    let mut copy = buffer_pool::take(d.len());
                    copy.copy_from_slice(&d);
                    copy
                }),
            };
            let inner = &saved.inner[b];
            // The sizes of the chain's inputs.
            let mut sizes = vec![x.size];
            for &conv in &block.chain[..block.chain.len() - 1] {
                let size = *sizes.last().expect("the block's input size");
                sizes.push(self.layers[conv].conv.geometry(size).out_size());
            }
            for (j, &conv) in block.chain.iter().enumerate().rev() {
                let input: &[f32] = if j == 0 { &x.values } else { &inner[j - 1] };
                let wanted = j > 0 || input_grad;
                let d_input = self.conv_backward(
                    conv,
                    input,
                    count,
                    sizes[j],
                    &d,
                    grads,
                    wanted,
                    &mut columns,
                );
                let Some(mut d_input) = d_input else {
                    break;
                };
                buffer_pool::give(std::mem::take(&mut d));
                if j > 0 {
                    kernels::relu_backward(&mut d_input, &inner[j - 1]);
                    d = d_input;
                } else if let Some(d_x) = &mut d_x {
                    d_x.iter_mut().zip(&d_input).for_each(|(a, b)| *a += b);
                    buffer_pool::give(d_input);
                }
            }
            if !d.is_empty() {
                buffer_pool::give(std::mem::take(&mut d));
            }
            match d_x {
                Some(d_x) => d = d_x,
                None => return,
            }
        }
        if let Some(stem) = plan.stem {
            self.stem_backward(stem, saved, first, d, grads, &mut columns);
        }
    }

    /// Backward of conv `conv` of the plan on `count` maps `input` of `size`, from `d_out`, the
    /// gradient of its output before the activation: adds its weight and bias gradients;
    /// returns its input's gradient when `input_grad`.
    #[allow(clippy::too_many_arguments)]
    fn conv_backward(
        &self,
        conv: usize,
        input: &[f32],
        count: usize,
        size: [usize; 2],
        d_out: &[f32],
        grads: &mut [f32],
        input_grad: bool,
        columns: &mut Vec<f32>,
    ) -> Option<Vec<f32>> {
        let layer = &self.layers[conv];
        let c = &layer.conv;
        let g = c.geometry(size);
        let total = count * g.out_height * g.out_width;
        let (k, n) = (c.kernel * c.kernel * c.inputs, c.outputs());
        let image_len = size[0] * size[1] * c.inputs;
        let pixels = g.out_height * g.out_width;
        let (d_weight, d_bias) = self.plan.convs[conv].split_mut(grads);
        kernels::add_column_sums(d_out, d_bias);
        let direct = c.kernel == 1 && c.stride == 1;
        if direct {
            kernels::weight_gradient(&input[..total * k], total, d_out, d_weight);
        } else {
            let strip = sized(columns, WEIGHT_STRIP * k);
            for start in (0..total).step_by(WEIGHT_STRIP) {
                let rows = WEIGHT_STRIP.min(total - start);
                for (image, pixel, take, at) in strip_shares(start, rows, pixels) {
                    let image = &input[image * image_len..][..image_len];
                    kernels::im2col_nhwc(image, c.inputs, g, pixel, take, &mut strip[at * k..]);
                }
                let d = &d_out[start * n..][..rows * n];
                kernels::weight_gradient(&strip[..rows * k], rows, d, d_weight);
            }
        }
        if !input_grad {
            return None;
        }
        let mut d_input = buffer_pool::take(count * image_len);
        if let Some(transposed) = &layer.transposed {
            let out = g.out_size();
            let none = Activation::None;
            transposed.forward(
                d_out,
                count,
                out,
                &layer.zeros,
                none,
                None,
                columns,
                &mut d_input,
            );
        } else if direct {
            kernels::input_gradient(d_out, total, &c.weight, &mut d_input);
        } else {
            d_input.fill(0.0);
            let strip = sized(columns, STRIP * k);
            for start in (0..total).step_by(STRIP) {
                let rows = STRIP.min(total - start);
                let d = &d_out[start * n..][..rows * n];
                kernels::input_gradient(d, rows, &c.weight, &mut strip[..rows * k]);
                for (image, pixel, take, at) in strip_shares(start, rows, pixels) {
                    let d_image = &mut d_input[image * image_len..][..image_len];
                    kernels::col2im_nhwc_add(&strip[at * k..], c.inputs, g, pixel, take, d_image);
                }
            }
        }
        Some(d_input)
    }

    /// The stem's weight and bias gradients from the gradient of the max-pool's output `d`.
    fn stem_backward(
        &self,
        stem: usize,
        saved: &SavedGroup,
        first: usize,
        d: Vec<f32>,
        grads: &mut [f32],
        columns: &mut Vec<f32>,
    ) {
        let conv = &self.layers[stem].conv;
        let [_, h, w] = self.image_shape;
        let g = conv.geometry([h, w]);
        let size = g.out_size();
        let (pixels, c) = (size[0] * size[1], conv.outputs());
        let pooled = &saved.inputs[0];
        let pooled_len = pooled.size[0] * pooled.size[1] * c;
        let mut d_stem = buffer_pool::zeroed(saved.stem.len());
        for i in 0..saved.count {
            max_pool_backward(
                &saved.stem[i * pixels * c..][..pixels * c],
                size,
                &pooled.values[i * pooled_len..][..pooled_len],
                &d[i * pooled_len..][..pooled_len],
                &mut d_stem[i * pixels * c..][..pixels * c],
            );
        }
        buffer_pool::give(d);
        kernels::relu_backward(&mut d_stem, &saved.stem);
        let (d_weight, d_bias) = self.plan.convs[stem].split_mut(grads);
        kernels::add_column_sums(&d_stem, d_bias);
        let k = conv.kernel * conv.kernel * conv.inputs;
        let image_len = self.image_shape.iter().product::<usize>();
        let strip = sized(columns, STRIP * k);
        for i in 0..saved.count {
            let image = &self.images[(first + i) * image_len..][..image_len];
            for start in (0..pixels).step_by(STRIP) {
                let rows = STRIP.min(pixels - start);
                kernels::im2col_planar(image, conv.inputs, g, start, rows, strip);
                let d = &d_stem[(i * pixels + start) * c..][..rows * c];
                kernels::weight_gradient(&strip[..rows * k], rows, d, d_weight);
            }
        }
        buffer_pool::give(d_stem);
    }
}

/// `Σ a·b` in 16 independent sums, so that it vectorises.
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut sums = [0.0f32; 16];
    let (a16, b16) = (a.chunks_exact(16), b.chunks_exact(16));
    let tail: f32 = a16
        .remainder()
        .iter()
        .zip(b16.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in a16.zip(b16) {
        for ((s, x), y) in sums.iter_mut().zip(x).zip(y) {
            *s += x * y;
        }
    }
    sums.iter().sum::<f32>() + tail
}

/// The gradient of [`max_pool`]'s input (`[h, w]` NHWC, `d_input` zeroed) from its output's
/// `d_out`: each window's gradient goes to the first input, in scan order, that equals its
/// maximum, as in PyTorch.
fn max_pool_backward(
    input: &[f32],
    [h, w]: [usize; 2],
    pooled: &[f32],
    d_out: &[f32],
    d_input: &mut [f32],
) {
    let [oh, ow] = pooled_size([h, w]);
    let c = pooled.len() / (oh * ow).max(1);
    // Per channel, the gradient not yet given to an input of the window.
    let mut left = vec![0.0; c];
    for oy in 0..oh {
        for ox in 0..ow {
            let at = (oy * ow + ox) * c;
            let max = &pooled[at..][..c];
            left.copy_from_slice(&d_out[at..][..c]);
            for iy in pool_window(oy, h) {
                for ix in pool_window(ox, w) {
                    let pixel = (iy * w + ix) * c;
                    let (v, di) = (&input[pixel..][..c], &mut d_input[pixel..][..c]);
                    for ((di, l), (v, m)) in di.iter_mut().zip(&mut left).zip(v.iter().zip(max)) {
                        let hit = v == m;
                        *di += if hit { *l } else { 0.0 };
                        *l = if hit { 0.0 } else { *l };
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backbone::Network;
    use crate::backbone::fused::testing::Compare;
    use crate::backbone::resnet::{RESNET18, ResBlockKind, ResNetSpec};
    use crate::rng::{RunRng, random_tensor, run_rng};
    use crate::train::freeze::{BnMode, set_trainable};
    use burn::module::{Module, Param, RunningState};
    use burn::optim::GradientsParams;
    use burn::tensor::Distribution;

    /// Random conv weights (He-scaled, so the maps keep their size through the blocks) and
    /// random BatchNorm scale, shift and statistics, so that folding matters.
    fn randomise(layer: &mut ConvBn, rng: &mut RunRng) {
        let device = layer.conv.weight.val().device();
        let dims = layer.conv.weight.dims();
        let std = (2.0 / (dims[1] * dims[2] * dims[3]) as f64).sqrt();
        let weight = random_tensor::<4>(dims, Distribution::Normal(0.0, std), rng, &device);
        layer.conv.weight = Param::from_tensor(weight);
        let c = dims[0];
        let mut random = |d| random_tensor::<1>([c], d, rng, &device);
        let bn = &mut layer.bn;
        bn.gamma = Param::from_tensor(random(Distribution::Uniform(0.5, 1.5)));
        bn.beta = Param::from_tensor(random(Distribution::Normal(0.0, 0.3)));
        bn.running_mean = RunningState::new(random(Distribution::Normal(0.0, 0.3)));
        bn.running_var = RunningState::new(random(Distribution::Uniform(0.5, 2.0)));
    }

    /// `spec` with random weights, every layer trainable with BatchNorm frozen, on the
    /// autodiff device.
    fn random_net(spec: &ResNetSpec, rng: &mut RunRng) -> ResNet {
        let mut net = ResNet::init(spec, false, &crate::backend::device());
        randomise(&mut net.stem, rng);
        for block in net.stages.iter_mut().flat_map(|s| s.blocks.iter_mut()) {
            for conv in [
                Some(&mut block.conv1),
                Some(&mut block.conv2),
                block.conv3.as_mut(),
                block.downsample.as_mut(),
            ]
            .into_iter()
            .flatten()
            {
                randomise(conv, rng);
            }
        }
        let net = Network::from(net).for_training(&crate::backend::device().autodiff());
        let Network::ResNet(net) = set_trainable(net, &[0, 1, 2, 3, 4], BnMode::Frozen) else {
            unreachable!("a ResNet stays one")
        };
        net
    }

    /// The loss `sum(features * weights)` and every parameter's gradient, by burn's autodiff
    /// of the network's modules or by the fused op.
    fn gradients(
        net: &ResNet,
        start: Start,
        x: Tensor<4>,
        weights: &Tensor<2>,
        fused: bool,
    ) -> (f32, GradientsParams) {
        let f = if fused {
            features(net, start, x)
        } else {
            net.forward_features_from(start, x)
        };
        let loss = (f * weights.clone()).sum();
        let value = loss.clone().into_scalar::<f32>();
        let mut grads = loss.backward();
        (value, GradientsParams::from_module(&mut grads, net))
    }

    fn assert_same_gradients(net: &ResNet, start: Start, x: Tensor<4>, rng: &mut RunRng) {
        let device = x.device();
        let dim = net.feature_dim();
        let normal = Distribution::Normal(0.0, 1.0);
        let weights = random_tensor::<2>([x.dims()[0], dim], normal, rng, &device);
        let (loss, burn) = gradients(net, start, x.clone(), &weights, false);
        let (loss_fused, fused) = gradients(net, start, x, &weights, true);
        assert!(
            (loss - loss_fused).abs() <= 1e-4 * loss.abs().max(1.0),
            "loss {loss} vs {loss_fused}"
        );
        let mut compare = Compare::new(&burn, &fused, 2e-3);
        net.visit(&mut compare);
        // conv weight, gamma and beta of every conv the pass runs.
        let convs = ResNetPlan::new(net, start).1.len();
        assert_eq!(compare.compared, 3 * convs);
    }

    /// Both block kinds, from the image (stem, max-pool, strided and Winograd 3x3 convs,
    /// downsampling) and from a block (a frozen prefix's output), odd and even map sizes;
    /// three images, so that the worker threads' groups hold different counts.
    #[test]
    fn fused_resnet_gradients_equal_burns_for_every_parameter() {
        let device = crate::backend::device().autodiff();
        let mut rng = run_rng(3, 0);
        let normal = Distribution::Normal(0.0, 1.0);
        let bottleneck = ResNetSpec {
            width_per_group: 16,
            ..ResNetSpec::new(ResBlockKind::Bottleneck, [1, 2, 1, 1])
        };
        for (spec, [h, w]) in [(RESNET18, [45, 38]), (bottleneck, [64, 57])] {
            let net = random_net(&spec, &mut rng);
            let x = random_tensor::<4>([3, 3, h, w], normal, &mut rng, &device);
            assert_same_gradients(&net, Start::Image, x, &mut rng);
            // From layer3's first block: 128 (BasicBlock) or 512 channels coming in.
            let first = spec.layers[..2].iter().sum();
            let channels = net.stages[2].blocks[0].conv1.conv.weight.dims()[1];
            let x = random_tensor::<4>([3, channels, 9, 7], normal, &mut rng, &device);
            assert_same_gradients(&net, Start::Block(first), x, &mut rng);
        }
    }
}

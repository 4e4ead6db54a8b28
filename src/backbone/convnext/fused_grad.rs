//! The training form of the fused ConvNeXt ([`super::fused`]): the pooled features
//! as one burn autodiff op with its own backward pass, for fine-tuning and SimCLR, as
//! [`crate::backbone::vit::fused_grad`] is for ViT.
//!
//! burn's autodiff ran a ConvNeXt-Tiny step at 0.30x PyTorch's speed (`bench/train_step.sh`):
//! the 7x7 depthwise convs NCHW through burn-flex's generic conv backward, permutes around every
//! channels-last LayerNorm, and a pass per bias, GELU, scale and add. Here a worker thread takes
//! a group of images (the batch split evenly over the threads) NHWC through the inference
//! kernels, keeping each block's input, depthwise output and pre-GELU hidden layer, and back:
//! the MLP's Linear layers are two gemm products each on the whole group's pixels, the
//! depthwise conv's weight and input gradients one pass over its output gradient
//! ([`kernels::depthwise_backward`], MBConv's), LayerNorm and GELU recomputed from the saved
//! maps, the stem and the downsampling convs (non-overlapping windows) im2col products and
//! col2im. Layer scale is folded into fc2 and its gradient unfolded.
//!
//! The stages below the first one with a trainable tensor run as inference and are not
//! differentiated (gradual unfreezing's frozen prefix).

use std::ops::Range;
use std::sync::Arc;

use burn::backend::flex::FlexTensor;
use burn::tensor::{Tensor, TensorData};
use rayon::prelude::*;

use super::model::ConvNeXt;
use crate::backbone::fused::buffer_pool;
use crate::backbone::fused::layers::LN_EPS;
use crate::backbone::fused::params::{
    Builder, ConvSlots, Dense, LinearSlots, NormSlots, add, norm, pooled, summed_group_gradients,
    two_mut, unfold_scale,
};
use crate::backbone::fused::train::{self, FusedPlan, SavedForward};
use crate::kernels::transformer::{gelu, gelu_backward, layer_norm, layer_norm_backward};
use crate::kernels::{self, Activation, ConvGeometry, Rows};

const DEPTHWISE: usize = 7;

/// Pooled, normalised features `[N, features]` of the images `x` through `net` on the fused
/// CPU kernels, differentiable with respect to every parameter of `net` but the classifier.
/// Equals [`ConvNeXt::forward_features`] to float rounding.
pub fn features(net: &ConvNeXt, x: Tensor<4>) -> Tensor<2> {
    let (plan, tensors) = ConvNeXtPlan::new(net);
    train::features(x, Tensor::cat(tensors, 0), Arc::new(plan))
}

/// A conv the op runs as im2col + one product (the stem, the downsampling layers), with where
/// its weight's gradient sits, in kernel layout, past the parameter vector.
#[derive(Debug)]
struct PatchSlots {
    conv: ConvSlots,
    /// `[out, in, k, k]`
    dims: [usize; 4],
    /// The gradient in kernel layout: rows `(channel, ky, kx)` for the (planar) image,
    /// `(ky, kx, channel)` for an NHWC map.
    kernel: Range<usize>,
    planar: bool,
}

#[derive(Debug)]
struct BlockSlots {
    depthwise: ConvSlots,
    /// The depthwise weight's gradient, tap-major `[49, channels]`, past the parameter vector.
    depthwise_kernel: Range<usize>,
    norm: NormSlots,
    fc1: LinearSlots,
    fc2: LinearSlots,
    gamma: Range<usize>,
}

#[derive(Debug)]
struct StageSlots {
    down: Option<(NormSlots, PatchSlots)>,
    blocks: Vec<BlockSlots>,
    channels: usize,
}

/// Where each tensor sits in the op's parameter vector, and the shapes.
#[derive(Debug)]
pub struct ConvNeXtPlan {
    stem: PatchSlots,
    stem_norm: NormSlots,
    stages: Vec<StageSlots>,
    head_norm: NormSlots,
    /// The first stage that is saved and differentiated; `None`: the stem too.
    first_stage: Option<usize>,
    /// The parameter vector's length.
    len: usize,
    /// The gradient's length: the parameter vector, then the kernel-layout weights.
    gradient_len: usize,
}

impl ConvNeXtPlan {
    fn new(net: &ConvNeXt) -> (Self, Vec<burn::tensor::Tensor<1>>) {
        let mut b = Builder::new(net.device());
        // The sizes of the kernel-layout gradients, in order.
        let mut extra = Vec::new();
        fn patch(
            b: &mut Builder,
            extra: &mut Vec<usize>,
            conv: &burn::nn::conv::Conv2d,
            planar: bool,
        ) -> (ConvSlots, [usize; 4], usize, bool) {
            let dims = conv.weight.dims();
            extra.push(dims.iter().product::<usize>());
            (b.conv(conv), dims, extra.len() - 1, planar)
        }
        let stem = patch(&mut b, &mut extra, &net.stem_conv, true);
        let stem_norm = b.norm(&net.stem_norm);
        let mut stages = Vec::new();
        for stage in &net.stages {
            let down = stage
                .downsample
                .as_ref()
                .map(|d| (b.norm(&d.norm), patch(&mut b, &mut extra, &d.conv, false)));
            let blocks: Vec<_> = stage
                .blocks
                .iter()
                .map(|block| {
                    let depthwise = b.conv(&block.dwconv);
                    let dims = block.dwconv.weight.dims();
                    extra.push(dims.iter().product::<usize>());
                    let kernel = extra.len() - 1;
                    (
                        BlockSlots {
                            depthwise,
                            depthwise_kernel: 0..0,
                            norm: b.norm(&block.norm),
                            fc1: b.linear(&block.fc1),
                            fc2: b.linear(&block.fc2),
                            gamma: b.push(block.gamma.val()),
                        },
                        kernel,
                    )
                })
                .collect();
            let channels = stage.blocks.first().map_or_else(
                || down.as_ref().map_or(0, |(_, p)| p.1[0]),
                |block| block.gamma.dims()[0],
            );
            stages.push((down, blocks, channels));
        }
        let head_norm = b.norm(&net.head_norm);

        // The kernel-layout gradients after the parameter vector, in the order pushed.
        let len = b.len;
        let mut starts = Vec::with_capacity(extra.len());
        let mut at = len;
        for n in &extra {
            starts.push(at..at + n);
            at += n;
        }
        let to_patch = |(conv, dims, i, planar): (ConvSlots, [usize; 4], usize, bool)| PatchSlots {
            conv,
            dims,
            kernel: starts[i].clone(),
            planar,
        };
        let stages: Vec<StageSlots> = stages
            .into_iter()
            .map(|(down, blocks, channels)| StageSlots {
                down: down.map(|(norm, p)| (norm, to_patch(p))),
                blocks: blocks
                    .into_iter()
                    .map(|(mut block, i)| {
                        block.depthwise_kernel = starts[i].clone();
                        block
                    })
                    .collect(),
                channels,
            })
            .collect();

        let stem_trains = net.stem_conv.weight.val().is_require_grad()
            || net.stem_norm.gamma.val().is_require_grad();
        let first_stage = if stem_trains {
            None
        } else {
            let trains = |s: &super::model::ConvNeXtStage| {
                s.downsample
                    .as_ref()
                    .is_some_and(|d| d.conv.weight.val().is_require_grad())
                    || s.blocks
                        .iter()
                        .any(|b| b.fc1.weight.val().is_require_grad())
            };
            Some(
                net.stages
                    .iter()
                    .position(trains)
                    .unwrap_or(net.stages.len()),
            )
        };
        let plan = Self {
            stem: to_patch(stem),
            stem_norm,
            stages,
            head_norm,
            first_stage,
            len,
            gradient_len: at,
        };
        (plan, b.tensors)
    }

    /// Whether stage `s` is saved and differentiated.
    fn saves(&self, s: usize) -> bool {
        self.first_stage.is_none_or(|first| s >= first)
    }

    fn feature_dim(&self) -> usize {
        self.stages.last().map_or(0, |s| s.channels)
    }
}

/// A patchify conv's weight in kernel layout: `[k * k * in, out]`, rows `(channel, ky, kx)`
/// when `planar`, else `(ky, kx, channel)`.
fn kernel_layout(w: &[f32], [out, inputs, k, _]: [usize; 4], planar: bool) -> Vec<f32> {
    let mut kernel = vec![0.0; w.len()];
    for o in 0..out {
        for c in 0..inputs {
            for t in 0..k * k {
                let row = if planar {
                    c * k * k + t
                } else {
                    t * inputs + c
                };
                kernel[row * out + o] = w[(o * inputs + c) * k * k + t];
            }
        }
    }
    kernel
}

/// The inverse of [`kernel_layout`]: burn's `[out, in, k, k]`.
fn burn_layout(kernel: &[f32], [out, inputs, k, _]: [usize; 4], planar: bool) -> Vec<f32> {
    let mut w = vec![0.0; kernel.len()];
    for o in 0..out {
        for c in 0..inputs {
            for t in 0..k * k {
                let row = if planar {
                    c * k * k + t
                } else {
                    t * inputs + c
                };
                w[(o * inputs + c) * k * k + t] = kernel[row * out + o];
            }
        }
    }
    w
}

/// A depthwise weight `[c, 1, k, k]` tap-major, `[k * k, c]`; and back.
fn taps(w: &[f32], c: usize, inverse: bool) -> Vec<f32> {
    let taps = w.len() / c.max(1);
    let mut out = vec![0.0; w.len()];
    for ch in 0..c {
        for t in 0..taps {
            if inverse {
                out[ch * taps + t] = w[t * c + ch];
            } else {
                out[t * c + ch] = w[ch * taps + t];
            }
        }
    }
    out
}

struct Patch<'a> {
    weight: Vec<f32>,
    bias: &'a [f32],
    kernel: usize,
}

impl Patch<'_> {
    fn new<'a>(params: &'a [f32], slots: &PatchSlots) -> Patch<'a> {
        Patch {
            weight: kernel_layout(&params[slots.conv.weight.clone()], slots.dims, slots.planar),
            bias: &params[slots.conv.bias.clone()],
            kernel: slots.dims[2],
        }
    }

    fn geometry(&self, size: [usize; 2]) -> ConvGeometry {
        ConvGeometry::patches(size, self.kernel)
    }

    fn forward(&self, columns: &[f32], rows: usize, out: &mut [f32]) {
        let inputs = self.weight.len() / self.bias.len();
        kernels::pointwise(
            columns,
            rows,
            inputs,
            &self.weight,
            self.bias,
            Activation::None,
            None,
            out,
        );
    }
}

struct BlockWeights<'a> {
    /// Tap-major `[49, channels]`.
    depthwise: Vec<f32>,
    depthwise_bias: &'a [f32],
    norm: [&'a [f32]; 2],
    fc1: Dense<'a>,
    fc2: Dense<'a>,
}

/// A downsampling layer: its LayerNorm's gamma and beta, its conv.
type Down<'a> = ([&'a [f32]; 2], Patch<'a>);

/// The parameter vector as the kernels read it, for one step.
struct Weights<'a> {
    stem: Patch<'a>,
    stem_norm: [&'a [f32]; 2],
    downs: Vec<Option<Down<'a>>>,
    blocks: Vec<Vec<BlockWeights<'a>>>,
    head_norm: [&'a [f32]; 2],
}

impl<'a> Weights<'a> {
    fn new(plan: &ConvNeXtPlan, params: &'a [f32]) -> Self {
        Self {
            stem: Patch::new(params, &plan.stem),
            stem_norm: norm(params, &plan.stem_norm),
            downs: plan
                .stages
                .iter()
                .map(|s| {
                    s.down
                        .as_ref()
                        .map(|(n, p)| (norm(params, n), Patch::new(params, p)))
                })
                .collect(),
            blocks: plan
                .stages
                .iter()
                .map(|s| {
                    s.blocks
                        .iter()
                        .map(|b| BlockWeights {
                            depthwise: taps(&params[b.depthwise.weight.clone()], s.channels, false),
                            depthwise_bias: &params[b.depthwise.bias.clone()],
                            norm: norm(params, &b.norm),
                            fc1: Dense::new(params, &b.fc1, None),
                            fc2: Dense::new(params, &b.fc2, Some(&b.gamma)),
                        })
                        .collect()
                })
                .collect(),
            head_norm: norm(params, &plan.head_norm),
        }
    }
}

/// One block's saved maps, `[rows, ...]` for the group's pixels.
struct SavedBlock {
    /// The block's input, its depthwise output (before LayerNorm), fc1's output (before GELU).
    x: Vec<f32>,
    depthwise: Vec<f32>,
    hidden: Vec<f32>,
}

impl Drop for SavedBlock {
    fn drop(&mut self) {
        for b in [&mut self.x, &mut self.depthwise, &mut self.hidden] {
            buffer_pool::give(std::mem::take(b));
        }
    }
}

/// A downsampling layer's saved maps: its input (before LayerNorm) and its im2col rows.
struct SavedDown {
    x: Vec<f32>,
    columns: Vec<f32>,
    /// The input maps' `[height, width]`.
    size: [usize; 2],
}

impl Drop for SavedDown {
    fn drop(&mut self) {
        buffer_pool::give(std::mem::take(&mut self.x));
        buffer_pool::give(std::mem::take(&mut self.columns));
    }
}

struct SavedStage {
    down: Option<SavedDown>,
    blocks: Vec<SavedBlock>,
    /// Pixels per image and `[height, width]` of the stage's maps.
    size: [usize; 2],
}

/// What a group of images keeps for the backward pass.
struct SavedGroup {
    images: usize,
    /// The stem's im2col rows and its output before LayerNorm, when the stem trains.
    stem: Option<(Vec<f32>, Vec<f32>)>,
    stages: Vec<Option<SavedStage>>,
    /// Each image's pooled map before the head's LayerNorm, `[images, channels]`.
    pooled: Vec<f32>,
}

impl Drop for SavedGroup {
    fn drop(&mut self) {
        if let Some((columns, out)) = self.stem.take() {
            buffer_pool::give(columns);
            buffer_pool::give(out);
        }
    }
}

/// What the forward pass keeps for the backward pass.
pub struct SavedConvNeXt {
    plan: Arc<ConvNeXtPlan>,
    params: FlexTensor,
    groups: Vec<SavedGroup>,
}

impl std::fmt::Debug for SavedConvNeXt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SavedConvNeXt")
            .field("groups", &self.groups.len())
            .finish_non_exhaustive()
    }
}

impl FusedPlan for ConvNeXtPlan {
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
    plan: Arc<ConvNeXtPlan>,
    images: &FlexTensor,
    params: &FlexTensor,
    save: bool,
) -> (FlexTensor, Option<SavedConvNeXt>) {
    let images = images.to_contiguous();
    let params = params.to_contiguous();
    let shape = images.layout().shape().to_vec();
    let [n, c, h, w] = [shape[0], shape[1], shape[2], shape[3]];
    // cannot fail: graft's tensors are f32
    let images: &[f32] = images.as_slice().expect("f32 images");
    let values: &[f32] = params.as_slice().expect("f32 parameters");
    let weights = Weights::new(&plan, values);
    let image_len = c * h * w;
    let width = plan.feature_dim();
    let group = n.div_ceil(rayon::current_num_threads()).max(1);
    let per_group: Vec<(Vec<f32>, SavedGroup)> = images
        .par_chunks((group * image_len).max(1))
        .map(|images| {
            let count = images.len() / image_len.max(1);
            forward_group(&plan, &weights, images, count, [h, w], save)
        })
        .collect();
    let mut features = Vec::with_capacity(n * width);
    let mut groups = Vec::with_capacity(per_group.len());
    for (f, s) in per_group {
        features.extend_from_slice(&f);
        groups.push(s);
    }
    let features = FlexTensor::from_data(TensorData::new(features, [n, width]));
    let saved = save.then(|| SavedConvNeXt {
        plan: plan.clone(),
        params: params.clone(),
        groups,
    });
    (features, saved)
}

fn depthwise_geometry(size: [usize; 2]) -> ConvGeometry {
    ConvGeometry::same(size, DEPTHWISE)
}

/// `count` planar images through the network: their features and saved maps.
fn forward_group(
    plan: &ConvNeXtPlan,
    w: &Weights,
    images: &[f32],
    count: usize,
    size: [usize; 2],
    save: bool,
) -> (Vec<f32>, SavedGroup) {
    // Stem: 4x4 patches, one product over the group, LayerNorm per pixel.
    let g = w.stem.geometry(size);
    let pixels = g.out_height * g.out_width;
    let mut c = w.stem.bias.len();
    let k = w.stem.weight.len() / c;
    let mut columns = buffer_pool::take(count * pixels * k);
    let image_len = images.len() / count.max(1);
    for (image, columns) in images
        .chunks_exact(image_len.max(1))
        .zip(columns.chunks_exact_mut(pixels * k))
    {
        kernels::im2col_planar(image, 3, g, 0, pixels, columns);
    }
    let mut stem_out = buffer_pool::take(count * pixels * c);
    w.stem.forward(&columns, count * pixels, &mut stem_out);
    let mut x = buffer_pool::take(count * pixels * c);
    layer_norm(&stem_out, w.stem_norm[0], w.stem_norm[1], LN_EPS, &mut x);
    let stem = if save && plan.first_stage.is_none() {
        Some((columns, stem_out))
    } else {
        buffer_pool::give(columns);
        buffer_pool::give(stem_out);
        None
    };

    let mut size = [g.out_height, g.out_width];
    let mut stages = Vec::with_capacity(plan.stages.len());
    for (s, stage) in plan.stages.iter().enumerate() {
        let saving = save && plan.saves(s);
        let mut down = None;
        if let Some((norm, patch)) = &w.downs[s] {
            let pixels = size[0] * size[1];
            let mut normed = buffer_pool::take(count * pixels * c);
            layer_norm(&x, norm[0], norm[1], LN_EPS, &mut normed);
            let g = patch.geometry(size);
            let out_pixels = g.out_height * g.out_width;
            let k = patch.weight.len() / patch.bias.len();
            let mut columns = buffer_pool::take(count * out_pixels * k);
            for (map, columns) in normed
                .chunks_exact(pixels * c)
                .zip(columns.chunks_exact_mut(out_pixels * k))
            {
                kernels::im2col_nhwc(map, c, g, 0, out_pixels, columns);
            }
            buffer_pool::give(normed);
            c = patch.bias.len();
            let mut next = buffer_pool::take(count * out_pixels * c);
            patch.forward(&columns, count * out_pixels, &mut next);
            let input = std::mem::replace(&mut x, next);
            if saving {
                down = Some(SavedDown {
                    x: input,
                    columns,
                    size,
                });
            } else {
                buffer_pool::give(input);
                buffer_pool::give(columns);
            }
            size = [g.out_height, g.out_width];
        }
        let mut blocks = Vec::new();
        for block in &w.blocks[s] {
            let (next, saved) = block_forward(stage, block, x, count, size);
            x = next;
            if saving {
                blocks.push(saved);
            }
        }
        stages.push(saving.then_some(SavedStage { down, blocks, size }));
    }

    // Global average pool per image, then LayerNorm.
    let pixels = size[0] * size[1];
    let mut pooled_maps = vec![0.0; count * c];
    for (map, p) in x
        .chunks_exact(pixels * c)
        .zip(pooled_maps.chunks_exact_mut(c))
    {
        for row in map.chunks_exact(c) {
            add(row, p);
        }
        p.iter_mut().for_each(|v| *v /= pixels as f32);
    }
    buffer_pool::give(x);
    let mut features = vec![0.0; count * c];
    let [gamma, beta] = w.head_norm;
    layer_norm(&pooled_maps, gamma, beta, LN_EPS, &mut features);
    let saved = SavedGroup {
        images: count,
        stem,
        stages,
        pooled: pooled_maps,
    };
    (features, saved)
}

/// One block on the group's maps `x` (`[images * h * w, c]`, consumed):
/// `x + fc2(gelu(fc1(LN(dwconv(x)))))`, and the maps its backward pass reads.
fn block_forward(
    stage: &StageSlots,
    w: &BlockWeights,
    x: Vec<f32>,
    count: usize,
    size: [usize; 2],
) -> (Vec<f32>, SavedBlock) {
    let c = stage.channels;
    let pixels = size[0] * size[1];
    let rows = count * pixels;
    let g = depthwise_geometry(size);
    let mut depthwise = buffer_pool::take(rows * c);
    for (x, out) in x
        .chunks_exact(pixels * c)
        .zip(depthwise.chunks_exact_mut(pixels * c))
    {
        let all = Rows::all(&g);
        let (weight, bias) = (&w.depthwise, w.depthwise_bias);
        kernels::depthwise(x, g, weight, bias, Activation::None, &all, out);
    }
    let mut normed = buffer_pool::take(rows * c);
    layer_norm(&depthwise, w.norm[0], w.norm[1], LN_EPS, &mut normed);
    let hidden_width = w.fc1.bias.len();
    let mut hidden = buffer_pool::take(rows * hidden_width);
    w.fc1.forward(&normed, rows, None, &mut hidden);
    buffer_pool::give(normed);
    let mut activated = buffer_pool::take(rows * hidden_width);
    activated.copy_from_slice(&hidden);
    gelu(&mut activated);
    let mut out = buffer_pool::take(rows * c);
    w.fc2.forward(&activated, rows, Some(&x), &mut out);
    buffer_pool::give(activated);
    (
        out,
        SavedBlock {
            x,
            depthwise,
            hidden,
        },
    )
}

impl SavedForward for SavedConvNeXt {
    /// The gradient of the parameter vector from the features' gradient `[N, features]`: one
    /// group per task, each summing into its own gradient vector.
    fn backward(&self, d_features: &FlexTensor) -> FlexTensor {
        let d_features = d_features.to_contiguous();
        // cannot fail: graft's tensors are f32
        let d_features: &[f32] = d_features.as_slice().expect("f32 gradient");
        let params: &[f32] = self.params.as_slice().expect("f32 parameters");
        let plan = &self.plan;
        let weights = Weights::new(plan, params);
        let width = plan.feature_dim();
        let len = plan.gradient_len;
        let grads = summed_group_gradients(
            &self.groups,
            |g| g.images,
            len,
            |group, start, grads| {
                let d = &d_features[start * width..][..group.images * width];
                backward_group(plan, &weights, group, d, grads);
            },
        );
        let out = finish_gradient(plan, &grads, params);
        buffer_pool::give(grads);
        FlexTensor::from_data(TensorData::new(out, [plan.len]))
    }
}

/// The gradient in the parameter vector's layout: kernel-layout weights back to burn's, layer
/// scale unfolded.
fn finish_gradient(plan: &ConvNeXtPlan, grads: &[f32], params: &[f32]) -> Vec<f32> {
    let mut out = grads[..plan.len].to_vec();
    let patch_back = |out: &mut Vec<f32>, p: &PatchSlots| {
        let w = burn_layout(&grads[p.kernel.clone()], p.dims, p.planar);
        out[p.conv.weight.clone()].copy_from_slice(&w);
    };
    if plan.first_stage.is_none() {
        patch_back(&mut out, &plan.stem);
    }
    for (s, stage) in plan.stages.iter().enumerate() {
        if !plan.saves(s) {
            continue;
        }
        if let Some((_, p)) = &stage.down {
            patch_back(&mut out, p);
        }
        for block in &stage.blocks {
            let w = taps(&grads[block.depthwise_kernel.clone()], stage.channels, true);
            out[block.depthwise.weight.clone()].copy_from_slice(&w);
            unfold_scale(&mut out, params, &block.fc2, &block.gamma);
        }
    }
    out
}

/// Adds one group's parameter gradients into `grads`.
fn backward_group(
    plan: &ConvNeXtPlan,
    w: &Weights,
    saved: &SavedGroup,
    d_features: &[f32],
    grads: &mut [f32],
) {
    let count = saved.images;
    // The head's LayerNorm, then the pool: each pixel gets 1/pixels of its image's gradient.
    let c = plan.feature_dim();
    let mut d_pooled = vec![0.0; count * c];
    let norm = two_mut(grads, &plan.head_norm.gamma, &plan.head_norm.beta);
    layer_norm_backward(
        &saved.pooled,
        w.head_norm[0],
        LN_EPS,
        d_features,
        norm,
        &mut d_pooled,
    );
    let Some(last) = saved.stages.last().and_then(Option::as_ref) else {
        return;
    };
    let pixels = last.size[0] * last.size[1];
    let mut d_x = buffer_pool::take(count * pixels * c);
    for (map, d) in d_x
        .chunks_exact_mut(pixels * c)
        .zip(d_pooled.chunks_exact(c))
    {
        for row in map.chunks_exact_mut(c) {
            for (r, d) in row.iter_mut().zip(d) {
                *r = d / pixels as f32;
            }
        }
    }

    let mut scratch = Scratch::default();
    for (s, stage) in plan.stages.iter().enumerate().rev() {
        let Some(maps) = &saved.stages[s] else {
            break;
        };
        let blocks = stage.blocks.iter().zip(&w.blocks[s]).zip(&maps.blocks);
        for ((slots, weights), block) in blocks.rev() {
            let shape = (stage.channels, count, maps.size);
            block_backward(slots, weights, block, shape, &mut scratch, &mut d_x, grads);
        }
        if let (Some((norm_slots, patch)), Some((norm, weights)), Some(down)) =
            (&stage.down, &w.downs[s], &maps.down)
        {
            let d_input = down_backward(
                (norm_slots, patch),
                (norm, weights),
                down,
                count,
                &d_x,
                &mut scratch,
                grads,
            );
            buffer_pool::give(std::mem::replace(&mut d_x, d_input));
        }
    }
    if let Some((columns, stem_out)) = &saved.stem {
        let mut d_stem = buffer_pool::zeroed(stem_out.len());
        let norm = two_mut(grads, &plan.stem_norm.gamma, &plan.stem_norm.beta);
        layer_norm_backward(stem_out, w.stem_norm[0], LN_EPS, &d_x, norm, &mut d_stem);
        let rows = d_stem.len() / w.stem.bias.len();
        kernels::add_column_sums(&d_stem, &mut grads[plan.stem.conv.bias.clone()]);
        kernels::weight_gradient(columns, rows, &d_stem, &mut grads[plan.stem.kernel.clone()]);
        buffer_pool::give(d_stem);
    }
    buffer_pool::give(d_x);
}

/// Per-group scratch, from the pool and given back on drop.
#[derive(Default)]
struct Scratch {
    activated: Vec<f32>,
    d_hidden: Vec<f32>,
    normed: Vec<f32>,
    d_normed: Vec<f32>,
    d_depthwise: Vec<f32>,
    /// The downsampling layer's column gradient.
    spare: Vec<f32>,
}

impl Drop for Scratch {
    fn drop(&mut self) {
        for b in [
            &mut self.activated,
            &mut self.d_hidden,
            &mut self.normed,
            &mut self.d_normed,
            &mut self.d_depthwise,
            &mut self.spare,
        ] {
            buffer_pool::give(std::mem::take(b));
        }
    }
}

/// One block's backward pass on the group's maps: adds its parameters' gradients into
/// `grads` and turns `d_x`, the gradient of its output, into that of its input.
fn block_backward(
    slots: &BlockSlots,
    w: &BlockWeights,
    saved: &SavedBlock,
    (c, count, size): (usize, usize, [usize; 2]),
    s: &mut Scratch,
    d_x: &mut [f32],
    grads: &mut [f32],
) {
    let pixels = size[0] * size[1];
    let rows = count * pixels;
    let hidden_width = w.fc1.bias.len();

    // fc2 (its folded weight's gradient), GELU, fc1.
    let activated = pooled(&mut s.activated, rows * hidden_width);
    activated.copy_from_slice(&saved.hidden);
    gelu(activated);
    kernels::weight_gradient(activated, rows, d_x, &mut grads[slots.fc2.weight.clone()]);
    kernels::add_column_sums(d_x, &mut grads[slots.fc2.bias.clone()]);
    let d_hidden = pooled(&mut s.d_hidden, rows * hidden_width);
    kernels::input_gradient(d_x, rows, &w.fc2.weight, d_hidden);
    gelu_backward(&saved.hidden, d_hidden);
    let normed = pooled(&mut s.normed, rows * c);
    layer_norm(&saved.depthwise, w.norm[0], w.norm[1], LN_EPS, normed);
    kernels::weight_gradient(normed, rows, d_hidden, &mut grads[slots.fc1.weight.clone()]);
    kernels::add_column_sums(d_hidden, &mut grads[slots.fc1.bias.clone()]);
    let d_normed = pooled(&mut s.d_normed, rows * c);
    kernels::input_gradient(d_hidden, rows, &w.fc1.weight, d_normed);

    // LayerNorm, then the depthwise conv, whose input gradient adds to the residual's.
    let d_depthwise = pooled(&mut s.d_depthwise, rows * c);
    d_depthwise.fill(0.0);
    let norm = two_mut(grads, &slots.norm.gamma, &slots.norm.beta);
    layer_norm_backward(
        &saved.depthwise,
        w.norm[0],
        LN_EPS,
        d_normed,
        norm,
        d_depthwise,
    );
    kernels::add_column_sums(d_depthwise, &mut grads[slots.depthwise.bias.clone()]);
    let g = depthwise_geometry(size);
    let maps = saved
        .x
        .chunks_exact(pixels * c)
        .zip(d_depthwise.chunks_exact(pixels * c))
        .zip(d_x.chunks_exact_mut(pixels * c));
    for ((x, d_out), d_x) in maps {
        let d_weight = &mut grads[slots.depthwise_kernel.clone()];
        kernels::depthwise_backward(x, g, &w.depthwise, d_out, d_weight, Some(d_x));
    }
}

/// A downsampling layer's backward pass: its conv's and LayerNorm's gradients into `grads`,
/// and the gradient of its input, returned (`d_out` is that of its output).
fn down_backward(
    (norm_slots, patch_slots): (&NormSlots, &PatchSlots),
    (norm, patch): (&[&[f32]; 2], &Patch),
    saved: &SavedDown,
    count: usize,
    d_out: &[f32],
    s: &mut Scratch,
    grads: &mut [f32],
) -> Vec<f32> {
    let out_channels = patch.bias.len();
    let rows = d_out.len() / out_channels;
    let k = patch.weight.len() / out_channels;
    kernels::add_column_sums(d_out, &mut grads[patch_slots.conv.bias.clone()]);
    let kernel = &mut grads[patch_slots.kernel.clone()];
    kernels::weight_gradient(&saved.columns, rows, d_out, kernel);
    let d_columns = pooled(&mut s.spare, rows * k);
    kernels::input_gradient(d_out, rows, &patch.weight, d_columns);
    // col2im per image (non-overlapping windows: a scatter), then LayerNorm's backward.
    let c = patch_slots.dims[1];
    let pixels = saved.size[0] * saved.size[1];
    let out_pixels = rows / count.max(1);
    let mut d_normed = buffer_pool::zeroed(saved.x.len());
    let g = patch.geometry(saved.size);
    for (d_columns, d_map) in d_columns
        .chunks_exact(out_pixels * k)
        .zip(d_normed.chunks_exact_mut(pixels * c))
    {
        kernels::col2im_nhwc_add(d_columns, c, g, 0, out_pixels, d_map);
    }
    let mut d_x = buffer_pool::zeroed(saved.x.len());
    let norm_grads = two_mut(grads, &norm_slots.gamma, &norm_slots.beta);
    layer_norm_backward(&saved.x, norm[0], LN_EPS, &d_normed, norm_grads, &mut d_x);
    buffer_pool::give(d_normed);
    d_x
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backbone::Network;
    use crate::backbone::convnext::ConvNeXtSpec;
    use crate::backbone::fused::testing::{Compare, Randomise};
    use crate::rng::{RunRng, random_tensor, run_rng};
    use crate::train::freeze::{BnMode, set_trainable};
    use burn::module::Module;
    use burn::optim::GradientsParams;
    use burn::tensor::Distribution;

    /// Four stages down to a 1x1 map at 35x42 px, two blocks in the third.
    const TINY: ConvNeXtSpec = ConvNeXtSpec {
        num_classes: 0,
        ..ConvNeXtSpec::new([1, 1, 2, 1], [8, 16, 16, 32])
    };

    fn random_net(trainable: &[usize], rng: &mut RunRng) -> ConvNeXt {
        let device = crate::backend::device();
        let net = ConvNeXt::init(&TINY, false, &device).map(&mut Randomise(rng));
        let net = Network::from(net).for_training(&device.autodiff());
        let Network::ConvNeXt(net) = set_trainable(net, trainable, BnMode::Frozen) else {
            unreachable!("a ConvNeXt stays one")
        };
        net
    }

    /// The fused op's loss `sum(features * weights)` and gradients equal burn's autodiff of
    /// the modules; returns how many tensors were compared.
    fn assert_same_gradients(net: &ConvNeXt, x: Tensor<4>, rng: &mut RunRng) -> usize {
        let device = x.device();
        let normal = Distribution::Normal(0.0, 1.0);
        let weights = random_tensor::<2>([x.dims()[0], TINY.dims[3]], normal, rng, &device);
        let run = |fused: bool| {
            let f = if fused {
                features(net, x.clone())
            } else {
                net.forward_features(x.clone())
            };
            let loss = (f * weights.clone()).sum();
            let value = loss.clone().into_scalar::<f32>();
            let mut grads = loss.backward();
            (value, GradientsParams::from_module(&mut grads, net))
        };
        let ((loss, burn), (loss_fused, fused)) = (run(false), run(true));
        assert!(
            (loss - loss_fused).abs() <= 1e-4 * loss.abs().max(1.0),
            "loss {loss} vs {loss_fused}"
        );
        let mut compare = Compare::new(&burn, &fused, 2e-3);
        net.visit(&mut compare);
        compare.compared
    }

    /// Every tensor (stem, downsampling layers, depthwise convs, LayerNorms, MLPs, layer
    /// scale, the head's LayerNorm), odd map sizes, three images (the worker groups differ).
    #[test]
    fn fused_convnext_gradients_equal_burns_for_every_parameter() {
        let device = crate::backend::device().autodiff();
        let mut rng = run_rng(5, 0);
        let net = random_net(&[0, 1, 2, 3, 4], &mut rng);
        let x = random_tensor::<4>(
            [3, 3, 35, 42],
            Distribution::Normal(0.0, 1.0),
            &mut rng,
            &device,
        );
        // stem conv and norm; three downsampling layers; five blocks of 9 tensors; head norm
        assert_eq!(
            assert_same_gradients(&net, x, &mut rng),
            4 + 3 * 4 + 5 * 9 + 2
        );
    }

    /// With stage 2, stage 3 and the head's norm training, the stem and the stages below run
    /// as inference: only the trained tensors get gradients, equal to burn's.
    #[test]
    fn fused_convnext_frozen_stages_give_burns_gradients_for_the_rest() {
        let device = crate::backend::device().autodiff();
        let mut rng = run_rng(5, 1);
        let net = random_net(&[3, 4], &mut rng);
        assert_eq!(ConvNeXtPlan::new(&net).0.first_stage, Some(2));
        let x = random_tensor::<4>(
            [2, 3, 35, 42],
            Distribution::Normal(0.0, 1.0),
            &mut rng,
            &device,
        );
        assert_eq!(
            assert_same_gradients(&net, x, &mut rng),
            (4 + 18) + (4 + 9) + 2
        );
    }
}

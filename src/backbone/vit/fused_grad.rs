//! The training form of the fused ViT ([`super::fused`]): the pooled features as one burn
//! autodiff op with its own backward pass, for fine-tuning and SimCLR, as
//! [`crate::backbone::mbconv::fused_grad`] is for MBConv and
//! [`crate::backbone::resnet::fused_grad`] for ResNet.
//!
//! burn's autodiff ran a ViT-S/16 step at 0.37x PyTorch's speed (`bench/train_step.sh`) with
//! a core idle half the time: every op of the block (bias adds, reshapes, the attention's
//! reference form, each LayerNorm and GELU) is its own pass over the batch, its backward
//! another. Here a worker thread takes a group of images (the batch split evenly over the
//! threads) through the inference kernels, keeping each block's input, QKV product, softmax
//! weights, attention output, mid-block residual and pre-GELU hidden layer, and back: every
//! Linear's gradient is two gemm products (`inputᵀ @ d_out`, `d_out @ Wᵀ`), each attention
//! head's four, LayerNorm and GELU are recomputed from the saved maps in their backward pass.
//!
//! The op's parameters are one flat vector of every ViT tensor in burn's layout (see
//! [`features`]). The blocks below the first one with a trainable tensor run as inference and
//! are not differentiated: gradual unfreezing's frozen prefix, without a separate pass.
//! DINOv2's layer scale is folded into its Linear, and its gradient unfolded from the
//! folded one, as BatchNorm's is for the CNNs.

use std::borrow::Cow;
use std::ops::Range;
use std::sync::Arc;

use burn::backend::flex::FlexTensor;
use burn::tensor::{Tensor, TensorData};
use rayon::prelude::*;

use super::model::{Vit, resample_rows, resample_rows_adjoint};
use crate::backbone::fused::buffer_pool;
use crate::backbone::fused::layers::LN_EPS;
use crate::backbone::fused::params::{
    Builder, Dense, LinearSlots, NormSlots, add, norm, pooled, summed_group_gradients, two_mut,
    unfold_scale,
};
use crate::backbone::fused::train::{self, FusedPlan, SavedForward};
use crate::backbone::fused::transpose;
use crate::kernels::transformer::{
    attention_head, attention_head_backward, gelu, gelu_backward, layer_norm, layer_norm_backward,
};
use crate::kernels::{self, Activation, ConvGeometry};

/// Pooled features `[N, features]` of the images `x` through `net` on the fused CPU kernels,
/// differentiable with respect to every parameter of `net`. Equals
/// [`Vit::forward_features`] to float rounding.
pub fn features(net: &Vit, x: Tensor<4>) -> Tensor<2> {
    let (plan, tensors) = VitPlan::new(net);
    train::features(x, Tensor::cat(tensors, 0), Arc::new(plan))
}

#[derive(Debug)]
struct BlockSlots {
    norm1: NormSlots,
    qkv: LinearSlots,
    proj: LinearSlots,
    ls1: Option<Range<usize>>,
    norm2: NormSlots,
    fc1: LinearSlots,
    fc2: LinearSlots,
    ls2: Option<Range<usize>>,
}

#[derive(Debug)]
struct EmbedSlots {
    /// The patch conv's weight, `[dim, 3, patch, patch]`.
    weight: Range<usize>,
    bias: Range<usize>,
    cls: Range<usize>,
    reg: Option<Range<usize>>,
    /// `[pos_prefix + grid * grid, dim]`.
    pos: Range<usize>,
}

/// Where each tensor sits in the op's parameter vector, and the shapes.
#[derive(Debug)]
pub struct VitPlan {
    patch: usize,
    dim: usize,
    heads: usize,
    mlp: usize,
    prefix_tokens: usize,
    /// Prefix tokens the position embedding covers.
    pos_prefix: usize,
    /// Patches per side of the checkpoint's position embedding.
    grid: usize,
    mean_patch_feature: bool,
    embed: EmbedSlots,
    blocks: Vec<BlockSlots>,
    norm: NormSlots,
    /// Whether the embedding trains: the backward pass goes down to the patches.
    embed_trains: bool,
    /// The first block that is saved and differentiated (the blocks before are frozen).
    saved_from: usize,
    /// The parameter vector's length.
    len: usize,
}

/// The class token, which every network this op runs has ([`Vit::plain`]).
fn class_token(net: &Vit) -> Tensor<3> {
    net.cls_token
        .as_ref()
        .expect("the fused op runs plain ViTs only (Vit::plain)")
        .val()
}

impl VitPlan {
    /// The plan for `net` and the tensors of its parameter vector, in order.
    fn new(net: &Vit) -> (Self, Vec<Tensor<1>>) {
        let mut b = Builder::new(net.device());
        let [dim, _, patch, _] = net.patch_embed.weight.dims();
        let embed = EmbedSlots {
            weight: b.push(net.patch_embed.weight.val()),
            bias: b.push_or_zeros(net.patch_embed.bias.as_ref().map(|b| b.val()), dim),
            cls: b.push(class_token(net)),
            reg: net.reg_token.as_ref().map(|r| b.push(r.val())),
            pos: b.push(net.pos_embed.val()),
        };
        let scale = |b: &mut Builder, ls: &Option<burn::module::Param<Tensor<1>>>| {
            ls.as_ref().map(|ls| b.push(ls.val()))
        };
        let blocks = net
            .blocks
            .iter()
            .map(|block| BlockSlots {
                norm1: b.norm(&block.norm1),
                qkv: b.linear(&block.attn.qkv),
                proj: b.linear(&block.attn.proj),
                ls1: scale(&mut b, &block.ls1),
                norm2: b.norm(&block.norm2),
                fc1: b.linear(&block.fc1),
                fc2: b.linear(&block.fc2),
                ls2: scale(&mut b, &block.ls2),
            })
            .collect();
        let norm = b.norm(&net.norm);

        let embed_trains = net.patch_embed.weight.val().is_require_grad()
            || class_token(net).is_require_grad()
            || net.pos_embed.val().is_require_grad();
        let saved_from = if embed_trains {
            0
        } else {
            net.blocks
                .iter()
                .position(|block| {
                    block.norm1.gamma.val().is_require_grad()
                        || block.attn.qkv.weight.val().is_require_grad()
                        || block.fc2.weight.val().is_require_grad()
                })
                .unwrap_or(net.blocks.len())
        };
        let plan = Self {
            patch,
            dim,
            heads: net.blocks.first().map_or(1, |b| b.attn.heads),
            mlp: net.blocks.first().map_or(0, |b| b.fc1.weight.dims()[1]),
            prefix_tokens: net.prefix_tokens,
            pos_prefix: net.pos_prefix,
            grid: net.grid,
            mean_patch_feature: net.mean_patch_feature,
            embed,
            blocks,
            norm,
            embed_trains,
            saved_from,
            len: b.len,
        };
        (plan, b.tensors)
    }

    /// Whether only the class token's row of block `i`'s output is read (the last block,
    /// when the feature is the class token).
    fn class_only(&self, i: usize) -> bool {
        !self.mean_patch_feature && i + 1 == self.blocks.len()
    }

    fn feature_dim(&self) -> usize {
        if self.mean_patch_feature {
            2 * self.dim
        } else {
            self.dim
        }
    }
}

struct BlockWeights<'a> {
    norm1: [&'a [f32]; 2],
    qkv: Dense<'a>,
    proj: Dense<'a>,
    norm2: [&'a [f32]; 2],
    fc1: Dense<'a>,
    fc2: Dense<'a>,
}

/// The parameter vector as the kernels read it, for one step at one patch grid.
struct Weights<'a> {
    /// `[3 * patch * patch, dim]`, rows ordered like the im2col columns.
    patch_weight: Vec<f32>,
    patch_bias: &'a [f32],
    /// Class token and registers with their position embedding, `[prefix_tokens, dim]`.
    prefix: Vec<f32>,
    /// The patches' position embedding at the run's grid, `[patches, dim]`.
    pos: Cow<'a, [f32]>,
    blocks: Vec<BlockWeights<'a>>,
    norm: [&'a [f32]; 2],
}

impl<'a> Weights<'a> {
    fn new(plan: &VitPlan, params: &'a [f32], [gh, gw]: [usize; 2]) -> Self {
        let d = plan.dim;
        let e = &plan.embed;
        let k = 3 * plan.patch * plan.patch;
        let mut prefix = params[e.cls.clone()].to_vec();
        if let Some(reg) = &e.reg {
            prefix.extend_from_slice(&params[reg.clone()]);
        }
        let pos = &params[e.pos.clone()];
        for (p, e) in prefix.iter_mut().zip(&pos[..plan.pos_prefix * d]) {
            *p += e;
        }
        let pos = &pos[plan.pos_prefix * d..];
        Self {
            patch_weight: transpose(&params[e.weight.clone()], d, k),
            patch_bias: &params[e.bias.clone()],
            prefix,
            pos: if [gh, gw] == [plan.grid, plan.grid] {
                Cow::Borrowed(pos)
            } else {
                Cow::Owned(resample_rows(pos, plan.grid, [gh, gw], d))
            },
            blocks: plan
                .blocks
                .iter()
                .map(|b| BlockWeights {
                    norm1: norm(params, &b.norm1),
                    qkv: Dense::new(params, &b.qkv, None),
                    proj: Dense::new(params, &b.proj, b.ls1.as_ref()),
                    norm2: norm(params, &b.norm2),
                    fc1: Dense::new(params, &b.fc1, None),
                    fc2: Dense::new(params, &b.fc2, b.ls2.as_ref()),
                })
                .collect(),
            norm: norm(params, &plan.norm),
        }
    }
}

/// The maps one block's backward pass reads, for a group's rows (from the pool; given back
/// on drop).
struct BlockMaps {
    /// The block's input, `[rows, dim]`.
    x: Vec<f32>,
    /// `[rows, 3 * dim]`
    qkv: Vec<f32>,
    /// Each image's and head's softmax weights, `[images, heads, tokens, tokens]`.
    probs: Vec<f32>,
    /// The heads' outputs side by side, `[rows, dim]`.
    attended: Vec<f32>,
    /// After the attention branch's residual add, `[rows, dim]`.
    mid: Vec<f32>,
    /// fc1's output before GELU, `[rows, mlp]`.
    hidden: Vec<f32>,
}

impl BlockMaps {
    fn take(plan: &VitPlan, [images, tokens]: [usize; 2]) -> Self {
        let (d, rows) = (plan.dim, images * tokens);
        Self {
            x: Vec::new(),
            qkv: buffer_pool::take(rows * 3 * d),
            probs: buffer_pool::take(images * plan.heads * tokens * tokens),
            attended: buffer_pool::take(rows * d),
            mid: buffer_pool::take(rows * d),
            hidden: buffer_pool::take(rows * plan.mlp),
        }
    }
}

impl Drop for BlockMaps {
    fn drop(&mut self) {
        for buffer in [
            &mut self.x,
            &mut self.qkv,
            &mut self.probs,
            &mut self.attended,
            &mut self.mid,
            &mut self.hidden,
        ] {
            buffer_pool::give(std::mem::take(buffer));
        }
    }
}

/// What a group of images keeps for the backward pass.
struct SavedGroup {
    images: usize,
    /// The patches' im2col rows, `[images * patches, 3 * patch * patch]`, when the embedding
    /// trains.
    columns: Vec<f32>,
    /// The blocks from [`VitPlan::saved_from`] on.
    blocks: Vec<BlockMaps>,
    /// The final norm's input, `[rows, dim]`.
    last: Vec<f32>,
}

impl Drop for SavedGroup {
    fn drop(&mut self) {
        buffer_pool::give(std::mem::take(&mut self.columns));
        buffer_pool::give(std::mem::take(&mut self.last));
    }
}

/// A group's scratch buffers, from the pool (every step needs the same sizes; fresh ones
/// cost page faults) and given back on drop.
#[derive(Default)]
struct Scratch {
    normed: Vec<f32>,
    activated: Vec<f32>,
    d_hidden: Vec<f32>,
    d_normed: Vec<f32>,
    d_attended: Vec<f32>,
    d_qkv: Vec<f32>,
    d_scores: Vec<f32>,
    d_tokens: Vec<f32>,
    /// One row per image: the class tokens of a `class_only` block.
    class_rows: Vec<f32>,
}

impl Drop for Scratch {
    fn drop(&mut self) {
        for buffer in [
            &mut self.normed,
            &mut self.activated,
            &mut self.d_hidden,
            &mut self.d_normed,
            &mut self.d_attended,
            &mut self.d_qkv,
            &mut self.d_scores,
            &mut self.d_tokens,
            &mut self.class_rows,
        ] {
            buffer_pool::give(std::mem::take(buffer));
        }
    }
}

/// What the forward pass keeps for the backward pass.
pub struct SavedVit {
    plan: Arc<VitPlan>,
    params: FlexTensor,
    /// Patches per side at the run's image size, `[rows, columns]`.
    grid: [usize; 2],
    /// The worker groups, in batch order.
    groups: Vec<SavedGroup>,
}

impl std::fmt::Debug for SavedVit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SavedVit")
            .field("groups", &self.groups.len())
            .finish_non_exhaustive()
    }
}

impl FusedPlan for VitPlan {
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
    plan: Arc<VitPlan>,
    images: &FlexTensor,
    params: &FlexTensor,
    save: bool,
) -> (FlexTensor, Option<SavedVit>) {
    let images = images.to_contiguous();
    let params = params.to_contiguous();
    let shape = images.layout().shape().to_vec();
    let [n, c, h, w] = [shape[0], shape[1], shape[2], shape[3]];
    // cannot fail: graft's tensors are f32
    let images: &[f32] = images.as_slice().expect("f32 images");
    let values: &[f32] = params.as_slice().expect("f32 parameters");
    let grid = [h / plan.patch, w / plan.patch];
    let weights = Weights::new(&plan, values, grid);
    let image_len = c * h * w;
    let width = plan.feature_dim();
    // One group per worker thread: the products see the group's rows together.
    let group = n.div_ceil(rayon::current_num_threads()).max(1);
    let per_group: Vec<(Vec<f32>, SavedGroup)> = images
        .par_chunks((group * image_len).max(1))
        .map(|images| {
            let batch = ImageBatch {
                pixels: images,
                count: images.len() / image_len.max(1),
                size: [h, w],
                grid,
            };
            forward_group(&plan, &weights, batch, save)
        })
        .collect();
    let mut features = Vec::with_capacity(n * width);
    let mut groups = Vec::with_capacity(per_group.len());
    for (f, s) in per_group {
        features.extend_from_slice(&f);
        groups.push(s);
    }
    let features = FlexTensor::from_data(TensorData::new(features, [n, width]));
    let saved = save.then(|| SavedVit {
        plan: plan.clone(),
        params: params.clone(),
        grid,
        groups,
    });
    (features, saved)
}

/// One block on a group's rows (`[images * tokens, dim]`): `mid = x + proj(attn(LN1(x)))`,
/// `out = mid + fc2(gelu(fc1(LN2(mid))))`, filling `maps` (all but `maps.x`, which the caller
/// holds). With `class_only` (the last block, when the feature is the class token) only each
/// image's class token goes past the attention: its query row, and `proj` and the MLP on one
/// row per image, kept compact (`[images, ...]`) in `maps`; the other rows of `out` are left
/// undefined. That is 6% of a ViT-S/16's multiply-adds that nothing reads.
#[allow(clippy::too_many_arguments)]
fn block_forward(
    plan: &VitPlan,
    w: &BlockWeights,
    x: &[f32],
    [images, tokens]: [usize; 2],
    class_only: bool,
    maps: &mut BlockMaps,
    s: &mut Scratch,
    out: &mut [f32],
) {
    let (d, heads, rows) = (plan.dim, plan.heads, images * tokens);
    let normed = pooled(&mut s.normed, rows * d);
    layer_norm(x, w.norm1[0], w.norm1[1], LN_EPS, normed);
    w.qkv.forward(normed, rows, None, &mut maps.qkv);
    let queries = if class_only { 1 } else { tokens };
    let per_image = heads * tokens * tokens;
    for (i, probs) in maps.probs.chunks_exact_mut(per_image).enumerate() {
        let qkv = &maps.qkv[i * tokens * 3 * d..];
        let attended = &mut maps.attended[i * tokens * d..];
        for (head, probs) in probs.chunks_exact_mut(tokens * tokens).enumerate() {
            let shape = [queries, tokens, d, head, d / heads];
            attention_head(qkv, shape, probs, attended);
        }
    }
    let mut residual = std::mem::take(&mut s.class_rows);
    let (on, residual_rows) = if class_only {
        gather_class_rows(&mut maps.attended, tokens * d, d, images);
        let residual = pooled(&mut residual, images * d);
        for (r, x) in residual.chunks_exact_mut(d).zip(x.chunks_exact(tokens * d)) {
            r.copy_from_slice(&x[..d]);
        }
        (images, &residual[..])
    } else {
        (rows, x)
    };
    let mid = &mut maps.mid[..on * d];
    w.proj
        .forward(&maps.attended[..on * d], on, Some(residual_rows), mid);
    let normed = &mut s.normed[..on * d];
    layer_norm(mid, w.norm2[0], w.norm2[1], LN_EPS, normed);
    let hidden = &mut maps.hidden[..on * plan.mlp];
    w.fc1.forward(normed, on, None, hidden);
    let activated = pooled(&mut s.activated, rows * plan.mlp);
    let activated = &mut activated[..on * plan.mlp];
    activated.copy_from_slice(hidden);
    gelu(activated);
    if class_only {
        // The class rows' output, compact, then into place.
        let compact = &mut residual[..images * d];
        w.fc2
            .forward(activated, on, Some(&maps.mid[..on * d]), compact);
        for (out, c) in out
            .chunks_exact_mut(tokens * d)
            .zip(compact.chunks_exact(d))
        {
            out[..d].copy_from_slice(c);
        }
    } else {
        w.fc2.forward(activated, on, Some(&maps.mid[..on * d]), out);
    }
    s.class_rows = residual;
}

/// Moves each image's first row (`width` values, images `stride` apart) to the front of
/// `values`: `[images, width]`.
fn gather_class_rows(values: &mut [f32], stride: usize, width: usize, images: usize) {
    for i in 1..images {
        values.copy_within(i * stride..i * stride + width, i * width);
    }
}

/// A worker's planar images back to back, their size and their patch grid.
struct ImageBatch<'a> {
    pixels: &'a [f32],
    count: usize,
    size: [usize; 2],
    grid: [usize; 2],
}

/// A group of images through the network: their pooled features and, with `save`, what their
/// backward pass needs.
fn forward_group(
    plan: &VitPlan,
    w: &Weights,
    batch: ImageBatch,
    save: bool,
) -> (Vec<f32>, SavedGroup) {
    let (d, p, count) = (plan.dim, plan.patch, batch.count);
    let [gh, gw] = batch.grid;
    let patches = gh * gw;
    let tokens = plan.prefix_tokens + patches;
    let rows = count * tokens;
    let k = 3 * p * p;
    let mut s = Scratch::default();

    // Patch embedding, image by image: im2col and one product, bias and position embedding
    // fused, behind the prefix tokens.
    let geometry = ConvGeometry::patches(batch.size, p);
    debug_assert_eq!(geometry.out_size(), [gh, gw]);
    let mut columns = buffer_pool::take(count * patches * k);
    let mut x = buffer_pool::take(rows * d);
    let image_len = batch.pixels.len() / count.max(1);
    for (i, image) in batch.pixels.chunks_exact(image_len.max(1)).enumerate() {
        let columns = &mut columns[i * patches * k..][..patches * k];
        kernels::im2col_planar(image, 3, geometry, 0, patches, columns);
        let x = &mut x[i * tokens * d..][..tokens * d];
        x[..w.prefix.len()].copy_from_slice(&w.prefix);
        kernels::pointwise(
            columns,
            patches,
            k,
            &w.patch_weight,
            w.patch_bias,
            Activation::None,
            Some(&w.pos),
            &mut x[plan.prefix_tokens * d..],
        );
    }
    if !(save && plan.embed_trains) {
        buffer_pool::give(std::mem::take(&mut columns));
    }

    // The frozen blocks reuse one set of maps; each saved block keeps its own.
    let mut frozen: Option<BlockMaps> = None;
    let mut blocks = Vec::new();
    let shape = [count, tokens];
    for (i, block) in w.blocks.iter().enumerate() {
        let mut next = buffer_pool::take(rows * d);
        let class_only = plan.class_only(i);
        if save && i >= plan.saved_from {
            let mut maps = BlockMaps::take(plan, shape);
            block_forward(
                plan, block, &x, shape, class_only, &mut maps, &mut s, &mut next,
            );
            maps.x = std::mem::replace(&mut x, next);
            blocks.push(maps);
        } else {
            let maps = frozen.get_or_insert_with(|| BlockMaps::take(plan, shape));
            block_forward(plan, block, &x, shape, class_only, maps, &mut s, &mut next);
            buffer_pool::give(std::mem::replace(&mut x, next));
        }
    }
    drop(frozen);

    // Final norm: the class token, and every patch token for their mean.
    let width = plan.feature_dim();
    let mut features = vec![0.0; count * width];
    let [gamma, beta] = w.norm;
    for (x, out) in x
        .chunks_exact(tokens * d)
        .zip(features.chunks_exact_mut(width))
    {
        if plan.mean_patch_feature {
            let normed = pooled(&mut s.normed, tokens * d);
            layer_norm(x, gamma, beta, LN_EPS, normed);
            out[..d].copy_from_slice(&normed[..d]);
            let mean = &mut out[d..2 * d];
            for row in normed[plan.prefix_tokens * d..].chunks_exact(d) {
                add(row, mean);
            }
            mean.iter_mut().for_each(|m| *m /= patches as f32);
        } else {
            layer_norm(&x[..d], gamma, beta, LN_EPS, &mut out[..d]);
        }
    }
    if !save {
        buffer_pool::give(std::mem::take(&mut x));
    }
    let saved = SavedGroup {
        images: count,
        columns,
        blocks,
        last: x,
    };
    (features, saved)
}

impl SavedForward for SavedVit {
    /// The gradient of the parameter vector from the features' gradient `[N, features]`: one
    /// group per task, each summing into its own gradient vector (the parameter vector's
    /// layout, then the patch weight in kernel layout and the run grid's position embedding).
    fn backward(&self, d_features: &FlexTensor) -> FlexTensor {
        let d_features = d_features.to_contiguous();
        // cannot fail: graft's tensors are f32
        let d_features: &[f32] = d_features.as_slice().expect("f32 gradient");
        let params: &[f32] = self.params.as_slice().expect("f32 parameters");
        let plan = &self.plan;
        let weights = Weights::new(plan, params, self.grid);
        let width = plan.feature_dim();
        let k = 3 * plan.patch * plan.patch;
        let patches = self.grid[0] * self.grid[1];
        let len = plan.len + k * plan.dim + patches * plan.dim;
        let grads = summed_group_gradients(
            &self.groups,
            |g| g.images,
            len,
            |group, start, grads| {
                let d = &d_features[start * width..][..group.images * width];
                self.backward_group(&weights, group, d, grads);
            },
        );
        let unfolded = self.finish_gradient(&grads, params);
        buffer_pool::give(grads);
        FlexTensor::from_data(TensorData::new(unfolded, [plan.len]))
    }
}

impl SavedVit {
    /// Adds one group's parameter gradients into `grads` (see [`SavedForward::backward`]).
    fn backward_group(
        &self,
        w: &Weights,
        saved: &SavedGroup,
        d_features: &[f32],
        grads: &mut [f32],
    ) {
        let plan = &self.plan;
        let d = plan.dim;
        let patches = self.grid[0] * self.grid[1];
        let tokens = plan.prefix_tokens + patches;
        let shape = [saved.images, tokens];
        let mut s = Scratch::default();
        let mut d_x = buffer_pool::zeroed(saved.images * tokens * d);

        // The final norm, from the class token's gradient (and the patch mean's).
        let width = plan.feature_dim();
        let images = saved
            .last
            .chunks_exact(tokens * d)
            .zip(d_x.chunks_exact_mut(tokens * d))
            .zip(d_features.chunks_exact(width));
        for ((last, d_x), d_feature) in images {
            let [d_gamma, d_beta] = two_mut(grads, &plan.norm.gamma, &plan.norm.beta);
            if plan.mean_patch_feature {
                let dy = pooled(&mut s.d_tokens, tokens * d);
                dy[..d].copy_from_slice(&d_feature[..d]);
                let (prefix, body) = dy.split_at_mut(plan.prefix_tokens * d);
                prefix[d..].fill(0.0);
                for row in body.chunks_exact_mut(d) {
                    for (r, g) in row.iter_mut().zip(&d_feature[d..]) {
                        *r = g / patches as f32;
                    }
                }
                layer_norm_backward(last, w.norm[0], LN_EPS, dy, [d_gamma, d_beta], d_x);
            } else {
                let (last, dy, dx) = (&last[..d], &d_feature[..d], &mut d_x[..d]);
                layer_norm_backward(last, w.norm[0], LN_EPS, dy, [d_gamma, d_beta], dx);
            }
        }

        let blocks = plan.blocks.iter().zip(&w.blocks).enumerate();
        let blocks = blocks.skip(plan.saved_from).zip(&saved.blocks).rev();
        for ((i, (slots, weights)), maps) in blocks {
            let class_only = plan.class_only(i);
            let (s, d_x) = (&mut s, &mut d_x);
            block_backward(plan, slots, weights, maps, shape, class_only, s, d_x, grads);
        }
        if plan.embed_trains {
            self.embed_backward(saved, &d_x, &mut s, grads);
        }
        buffer_pool::give(d_x);
    }

    /// The embedding's gradients from that of the tokens entering the first block.
    fn embed_backward(&self, saved: &SavedGroup, d_x: &[f32], s: &mut Scratch, grads: &mut [f32]) {
        let plan = &self.plan;
        let (d, e) = (plan.dim, &plan.embed);
        let patches = self.grid[0] * self.grid[1];
        let tokens = plan.prefix_tokens + patches;
        let k = 3 * plan.patch * plan.patch;
        // The patch rows of every image, together.
        let body = pooled(&mut s.d_tokens, saved.images * patches * d);
        for (d_x, body) in d_x
            .chunks_exact(tokens * d)
            .zip(body.chunks_exact_mut(patches * d))
        {
            add(&d_x[..d], &mut grads[e.cls.clone()]);
            if let Some(reg) = &e.reg {
                add(&d_x[d..plan.prefix_tokens * d], &mut grads[reg.clone()]);
            }
            let pos_prefix = plan.pos_prefix * d;
            add(&d_x[..pos_prefix], &mut grads[e.pos.start..][..pos_prefix]);
            body.copy_from_slice(&d_x[plan.prefix_tokens * d..]);
        }
        let body = &s.d_tokens[..saved.images * patches * d];
        kernels::add_column_sums(body, &mut grads[e.bias.clone()]);
        let (_, extra) = grads.split_at_mut(plan.len);
        let (d_patch_weight, d_pos) = extra.split_at_mut(k * d);
        kernels::weight_gradient(&saved.columns, saved.images * patches, body, d_patch_weight);
        for body in body.chunks_exact(patches * d) {
            add(body, d_pos);
        }
    }

    /// The gradient in the parameter vector's layout from the summed `grads`: the patch
    /// weight transposed to burn's layout, the run grid's position embedding resampled back
    /// to the checkpoint's, layer scale unfolded.
    fn finish_gradient(&self, grads: &[f32], params: &[f32]) -> Vec<f32> {
        let plan = &self.plan;
        let (d, e) = (plan.dim, &plan.embed);
        let k = 3 * plan.patch * plan.patch;
        let mut out = grads[..plan.len].to_vec();
        if plan.embed_trains {
            let extra = &grads[plan.len..];
            let (d_patch_weight, d_pos) = extra.split_at(k * d);
            out[e.weight.clone()].copy_from_slice(&transpose(d_patch_weight, k, d));
            let d_grid = if self.grid == [plan.grid, plan.grid] {
                Cow::Borrowed(d_pos)
            } else {
                Cow::Owned(resample_rows_adjoint(d_pos, plan.grid, self.grid, d))
            };
            add(
                &d_grid,
                &mut out[e.pos.start + plan.pos_prefix * d..e.pos.end],
            );
        }
        for block in plan.blocks.iter().skip(plan.saved_from) {
            for (linear, scale) in [(&block.proj, &block.ls1), (&block.fc2, &block.ls2)] {
                if let Some(scale) = scale {
                    unfold_scale(&mut out, params, linear, scale);
                }
            }
        }
        out
    }
}

/// One block's backward pass on a group's rows: adds its parameters' gradients into `grads`
/// and turns `d_x`, the gradient of its output, into that of its input (see
/// [`block_forward`] for `class_only`, where only the class rows of `d_x` are non-zero).
#[allow(clippy::too_many_arguments)]
fn block_backward(
    plan: &VitPlan,
    slots: &BlockSlots,
    w: &BlockWeights,
    maps: &BlockMaps,
    [images, tokens]: [usize; 2],
    class_only: bool,
    s: &mut Scratch,
    d_x: &mut [f32],
    grads: &mut [f32],
) {
    let (d, heads, rows) = (plan.dim, plan.heads, images * tokens);
    if class_only {
        let mut d_class = std::mem::take(&mut s.class_rows);
        let compact = pooled(&mut d_class, images * d);
        for (c, d_x) in compact
            .chunks_exact_mut(d)
            .zip(d_x.chunks_exact(tokens * d))
        {
            c.copy_from_slice(&d_x[..d]);
        }
        mlp_and_proj_backward(plan, slots, w, maps, images, s, compact, grads);
        for (d_x, c) in d_x
            .chunks_exact_mut(tokens * d)
            .zip(compact.chunks_exact(d))
        {
            d_x[..d].copy_from_slice(c);
        }
        s.class_rows = d_class;
    } else {
        mlp_and_proj_backward(plan, slots, w, maps, rows, s, d_x, grads);
    }

    // attn(LN1(x)): each image's heads, then qkv.
    let queries = if class_only { 1 } else { tokens };
    let d_attended = &s.d_attended;
    let d_qkv = pooled(&mut s.d_qkv, rows * 3 * d);
    let d_scores = pooled(&mut s.d_scores, tokens * tokens);
    let per_image = heads * tokens * tokens;
    for (i, probs) in maps.probs.chunks_exact(per_image).enumerate() {
        let qkv = &maps.qkv[i * tokens * 3 * d..][..tokens * 3 * d];
        let d_out = &d_attended[i * queries * d..][..queries * d];
        let d_qkv = &mut d_qkv[i * tokens * 3 * d..][..tokens * 3 * d];
        for (head, probs) in probs.chunks_exact(tokens * tokens).enumerate() {
            let shape = [queries, tokens, d, head, d / heads];
            attention_head_backward(qkv, probs, d_out, shape, d_scores, d_qkv);
        }
    }
    let normed = pooled(&mut s.normed, rows * d);
    layer_norm(&maps.x, w.norm1[0], w.norm1[1], LN_EPS, normed);
    kernels::weight_gradient(normed, rows, d_qkv, &mut grads[slots.qkv.weight.clone()]);
    kernels::add_column_sums(d_qkv, &mut grads[slots.qkv.bias.clone()]);
    let d_normed = pooled(&mut s.d_normed, rows * d);
    kernels::input_gradient(d_qkv, rows, &w.qkv.weight, d_normed);
    let norm1 = two_mut(grads, &slots.norm1.gamma, &slots.norm1.beta);
    layer_norm_backward(&maps.x, w.norm1[0], LN_EPS, d_normed, norm1, d_x);
}

/// The block's MLP branch and attention projection backward on `on` rows (all of the group's,
/// or its class rows): `d_out`, the gradient of the block's output, becomes that of `mid`
/// (and so of the residual `x`), and `s.d_attended` that of the heads' output.
#[allow(clippy::too_many_arguments)]
fn mlp_and_proj_backward(
    plan: &VitPlan,
    slots: &BlockSlots,
    w: &BlockWeights,
    maps: &BlockMaps,
    on: usize,
    s: &mut Scratch,
    d_out: &mut [f32],
    grads: &mut [f32],
) {
    let (d, mlp) = (plan.dim, plan.mlp);
    let (mid, hidden) = (&maps.mid[..on * d], &maps.hidden[..on * mlp]);

    // out = mid + fc2(gelu(fc1(LN2(mid)))): fc2 (its folded weight's gradient), GELU, fc1.
    let activated = pooled(&mut s.activated, on * mlp);
    activated.copy_from_slice(hidden);
    gelu(activated);
    kernels::weight_gradient(activated, on, d_out, &mut grads[slots.fc2.weight.clone()]);
    kernels::add_column_sums(d_out, &mut grads[slots.fc2.bias.clone()]);
    let d_hidden = pooled(&mut s.d_hidden, on * mlp);
    kernels::input_gradient(d_out, on, &w.fc2.weight, d_hidden);
    gelu_backward(hidden, d_hidden);
    let normed = pooled(&mut s.normed, on * d);
    layer_norm(mid, w.norm2[0], w.norm2[1], LN_EPS, normed);
    kernels::weight_gradient(normed, on, d_hidden, &mut grads[slots.fc1.weight.clone()]);
    kernels::add_column_sums(d_hidden, &mut grads[slots.fc1.bias.clone()]);
    let d_normed = pooled(&mut s.d_normed, on * d);
    kernels::input_gradient(d_hidden, on, &w.fc1.weight, d_normed);
    let norm2 = two_mut(grads, &slots.norm2.gamma, &slots.norm2.beta);
    layer_norm_backward(mid, w.norm2[0], LN_EPS, d_normed, norm2, d_out);

    // mid = x + proj(attended)
    let attended = &maps.attended[..on * d];
    kernels::weight_gradient(attended, on, d_out, &mut grads[slots.proj.weight.clone()]);
    kernels::add_column_sums(d_out, &mut grads[slots.proj.bias.clone()]);
    let d_attended = pooled(&mut s.d_attended, on * d);
    kernels::input_gradient(d_out, on, &w.proj.weight, d_attended);
}

#[cfg(test)]
pub(in crate::backbone) mod tests {
    use super::*;
    use crate::backbone::Network;
    use crate::backbone::fused::testing::{Compare, Randomise};
    use crate::backbone::vit::{VitPool, VitSpec};
    use crate::rng::{RunRng, random_tensor, run_rng};
    use crate::train::freeze::{BnMode, set_trainable};
    use burn::module::Module;
    use burn::optim::GradientsParams;
    use burn::tensor::Distribution;

    /// `spec` with random weights on the autodiff device, the layer groups in `trainable`
    /// training.
    fn random_net(spec: &VitSpec, trainable: &[usize], rng: &mut RunRng) -> Vit {
        let device = crate::backend::device();
        let net = Vit::init(spec, false, &device).map(&mut Randomise(rng));
        let net = Network::from(net).for_training(&device.autodiff());
        let Network::Vit(net) = set_trainable(net, trainable, BnMode::Frozen) else {
            unreachable!("a ViT stays one")
        };
        net
    }

    /// The loss `sum(features * weights)` and every parameter's gradient, by burn's autodiff
    /// of the network's modules or by the fused op.
    fn gradients(
        net: &Vit,
        x: Tensor<4>,
        weights: &Tensor<2>,
        fused: bool,
    ) -> (f32, GradientsParams) {
        let f = if fused {
            features(net, x)
        } else {
            net.forward_features(x)
        };
        let loss = (f * weights.clone()).sum();
        let value = loss.clone().into_scalar::<f32>();
        let mut grads = loss.backward();
        (value, GradientsParams::from_module(&mut grads, net))
    }

    /// The fused op's loss and gradients equal burn's; returns how many tensors were compared.
    fn assert_same_gradients(net: &Vit, x: Tensor<4>, rng: &mut RunRng) -> usize {
        let device = x.device();
        let dim = net.forward_features(x.clone()).dims()[1];
        let normal = Distribution::Normal(0.0, 1.0);
        let weights = random_tensor::<2>([x.dims()[0], dim], normal, rng, &device);
        let (loss, burn) = gradients(net, x.clone(), &weights, false);
        let (loss_fused, fused) = gradients(net, x, &weights, true);
        assert!(
            (loss - loss_fused).abs() <= 1e-4 * loss.abs().max(1.0),
            "loss {loss} vs {loss_fused}"
        );
        let mut compare = Compare::new(&burn, &fused, 2e-3);
        net.visit(&mut compare);
        compare.compared
    }

    const TINY: VitSpec = VitSpec {
        mlp_dim: 64,
        image_size: 32,
        num_classes: 0,
        ..VitSpec::new(8, 32, 3, 2)
    };

    /// Tensors per block: two LayerNorms and four Linear, weight and bias each.
    const PER_BLOCK: usize = 12;

    /// A supervised ViT (class token in the position embedding) at its own grid and at a
    /// resampled one, and a DINOv2-style one (registers outside the position embedding, layer
    /// scale, class token + patch mean); three images, so the worker groups differ in size.
    #[test]
    fn fused_vit_gradients_equal_burns_for_every_parameter() {
        let device = crate::backend::device().autodiff();
        let mut rng = run_rng(4, 0);
        let normal = Distribution::Normal(0.0, 1.0);
        let all: Vec<usize> = (0..TINY.group_names().len()).collect();
        let net = random_net(&TINY, &all, &mut rng);
        // patch weight and bias, class token, position embedding; the blocks; the final norm
        let every = 4 + 3 * PER_BLOCK + 2;
        for [h, w] in [[32, 32], [35, 42]] {
            let x = random_tensor::<4>([3, 3, h, w], normal, &mut rng, &device);
            assert_eq!(assert_same_gradients(&net, x, &mut rng), every);
        }

        let dinov2 = VitSpec {
            image_size: 40,
            reg_tokens: 2,
            layer_scale: true,
            pos_embed_prefix: false,
            pool: VitPool::TokenAndPatchMean,
            ..TINY
        };
        let net = random_net(&dinov2, &all, &mut rng);
        let x = random_tensor::<4>([3, 3, 32, 48], normal, &mut rng, &device);
        // ... and the registers and both layer scales of each block
        let every = every + 1 + 3 * 2;
        assert_eq!(assert_same_gradients(&net, x, &mut rng), every);
    }

    /// With the last block group and the final norm training, the blocks below run as
    /// inference: only the trained tensors get gradients, equal to burn's.
    #[test]
    fn fused_vit_frozen_blocks_give_burns_gradients_for_the_rest() {
        let device = crate::backend::device().autodiff();
        let mut rng = run_rng(4, 1);
        let groups = TINY.group_names().len();
        let net = random_net(&TINY, &[groups - 2, groups - 1], &mut rng);
        assert_eq!(VitPlan::new(&net).0.saved_from, 2);
        assert!(!VitPlan::new(&net).0.embed_trains);
        let x = random_tensor::<4>(
            [2, 3, 32, 32],
            Distribution::Normal(0.0, 1.0),
            &mut rng,
            &device,
        );
        assert_eq!(assert_same_gradients(&net, x, &mut rng), PER_BLOCK + 2);
    }
}

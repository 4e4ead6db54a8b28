//! The inference-only form of a [`Vit`] on the CPU: one image per worker thread, tokens
//! row-major, every product through the project's gemm path with its bias (and the residual)
//! fused into the output tiles, LayerNorm in one pass per row, q / k / v read in place from the
//! QKV product, softmax fused with the scaling, and DINOv2's layer scale folded into the
//! weights. burn-flex ran each of these as separate passes over the whole batch (permutes,
//! bias adds, the residual adds); results equal the burn network's to float rounding (test).
//! At [`Precision::Bf16`] the patch embedding and every Linear run on AMX tiles in bfloat16
//! (float32 sums); attention, LayerNorm, GELU and the residual stream stay float32.

use std::cell::RefCell;

use burn::tensor::Tensor;

use super::model::{AttentionPool, MlpAct, Vit, resample_rows};
use crate::backbone::fused::layers::{Dense, Norm};
use crate::backbone::fused::{
    Classifier, PooledForward, grow as sized, per_group, per_image, to_vec,
};
use crate::backbone::source_config::Precision;
use crate::kernels::transformer::{attention_head, exp, gelu, gelu_tanh, quick_gelu};
use crate::kernels::{self, ConvGeometry};

#[derive(Debug, Clone)]
struct Block {
    norm1: Norm,
    qkv: Dense,
    proj: Dense,
    norm2: Norm,
    fc1: Dense,
    fc2: Dense,
}

fn activate(act: MlpAct, x: &mut [f32]) {
    match act {
        MlpAct::Gelu => gelu(x),
        MlpAct::GeluTanh => gelu_tanh(x),
        MlpAct::QuickGelu => quick_gelu(x),
    }
}

/// SigLIP's attention pooling: its query is a constant (the projected latent), so only the
/// keys and values are computed per image.
#[derive(Debug, Clone)]
struct Pool {
    /// `q(latent)`, `[dim]`.
    query: Vec<f32>,
    kv: Dense,
    proj: Dense,
    norm: Norm,
    fc1: Dense,
    fc2: Dense,
}

impl Pool {
    fn new(pool: &AttentionPool, eps: f64) -> Self {
        let q = Dense::new(&pool.q, None);
        let latent = to_vec(pool.latent.val());
        let mut query = vec![0.0; latent.len()];
        q.forward(&latent, 1, None, &mut query);
        Self {
            query,
            kv: Dense::new(&pool.kv, None),
            proj: Dense::new(&pool.proj, None),
            norm: Norm::with_eps(&pool.norm, eps),
            fc1: Dense::new(&pool.fc1, None),
            fc2: Dense::new(&pool.fc2, None),
        }
    }

    /// `tokens` `[L, dim]` (after the final norm) to `out` `[dim]`.
    fn forward(&self, tokens: &[f32], heads: usize, act: MlpAct, s: &mut Scratch, out: &mut [f32]) {
        let d = self.query.len();
        let l = tokens.len() / d;
        let kv = sized(&mut s.qkv, l * 2 * d);
        self.kv.forward(tokens, l, None, kv);
        let dh = d / heads;
        let scale = 1.0 / (dh as f32).sqrt();
        let attended = sized(&mut s.attended, d);
        let scores = sized(&mut s.scores, l);
        for h in 0..heads {
            let q = &self.query[h * dh..(h + 1) * dh];
            for (j, score) in scores.iter_mut().enumerate() {
                let k = &kv[j * 2 * d + h * dh..][..dh];
                *score = q.iter().zip(k).map(|(a, b)| a * b).sum::<f32>() * scale;
            }
            let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let mut total = 0.0;
            for score in scores.iter_mut() {
                *score = exp(*score - max);
                total += *score;
            }
            let head_out = &mut attended[h * dh..(h + 1) * dh];
            head_out.fill(0.0);
            for (j, p) in scores.iter().enumerate() {
                let v = &kv[j * 2 * d + d + h * dh..][..dh];
                head_out
                    .iter_mut()
                    .zip(v)
                    .for_each(|(o, v)| *o += p / total * v);
            }
        }
        let x = sized(&mut s.next, d);
        self.proj.forward(attended, 1, None, x);
        let normed = sized(&mut s.normed, d);
        self.norm.forward(x, normed);
        let hidden = sized(&mut s.hidden, self.fc1.bias.len());
        self.fc1.forward(normed, 1, None, hidden);
        activate(act, hidden);
        self.fc2.forward(hidden, 1, Some(x), out);
    }
}

/// Per-thread buffers, grown to the largest image seen.
#[derive(Default)]
struct Scratch {
    patches: Vec<f32>,
    x: Vec<f32>,
    next: Vec<f32>,
    normed: Vec<f32>,
    qkv: Vec<f32>,
    attended: Vec<f32>,
    hidden: Vec<f32>,
    scores: Vec<f32>,
}

/// Rows (images x tokens) a worker aims for in one product: enough for the product to reuse
/// its weights from cache, few enough that several workers share a batch.
const GROUP_ROWS: usize = 512;

thread_local! {
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch::default());
}

/// A ViT's weights laid out for [`crate::kernels`].
#[derive(Debug, Clone)]
pub struct FusedVit {
    patch: usize,
    dim: usize,
    heads: usize,
    /// `[3 * patch * patch, dim]`, rows ordered (channel, ky, kx) like the im2col columns.
    patch_embed: Dense,
    /// Class token then registers, `[prefix_tokens, dim]`, their position embedding added.
    prefix: Vec<f32>,
    prefix_tokens: usize,
    /// The patches' position embedding at the checkpoint's grid, `[grid * grid, dim]`.
    pos: Vec<f32>,
    grid: usize,
    norm_pre: Option<Norm>,
    blocks: Vec<Block>,
    act: MlpAct,
    norm: Norm,
    mean_patch_feature: bool,
    pool: Option<Pool>,
    /// CLIP's projection of the pooled token, `[dim, embed]`.
    proj: Option<Dense>,
    head: Option<Dense>,
}

impl FusedVit {
    /// The network's weights for the fused kernels; at [`Precision::Bf16`] its products run
    /// in bfloat16 on AMX tiles, which the caller has checked are
    /// [available](crate::kernels::amx::available).
    pub fn new(net: &Vit, precision: Precision) -> Self {
        let [dim, _, patch, _] = net.patch_embed.weight.dims();
        // [dim, 3, p, p] -> [3 * p * p, dim]
        let conv = to_vec(net.patch_embed.weight.val());
        let k = 3 * patch * patch;
        let mut patch_weight = vec![0.0; k * dim];
        for (o, row) in conv.chunks_exact(k).enumerate() {
            for (i, w) in row.iter().enumerate() {
                patch_weight[i * dim + o] = *w;
            }
        }
        let pos = to_vec(net.pos_embed.val());
        let mut prefix = net
            .cls_token
            .as_ref()
            .map_or_else(Vec::new, |cls| to_vec(cls.val()));
        if let Some(reg) = &net.reg_token {
            prefix.extend(to_vec(reg.val()));
        }
        for (p, e) in prefix.iter_mut().zip(&pos[..net.pos_prefix * dim]) {
            *p += e;
        }
        let scale =
            |ls: &Option<burn::module::Param<Tensor<1>>>| ls.as_ref().map(|p| to_vec(p.val()));
        let patch_bias = net
            .patch_embed
            .bias
            .as_ref()
            .map_or_else(|| vec![0.0; dim], |b| to_vec(b.val()));
        let dense = |d: Dense| match precision {
            Precision::F32 => d,
            Precision::Bf16 => d.in_bf16(),
        };
        let eps = net.ln_eps;
        Self {
            patch,
            dim,
            heads: net.blocks.first().map_or(1, |b| b.attn.heads),
            patch_embed: dense(Dense::from_parts(patch_weight, patch_bias)),
            prefix,
            prefix_tokens: net.prefix_tokens,
            pos: pos[net.pos_prefix * dim..].to_vec(),
            grid: net.grid,
            norm_pre: net.norm_pre.as_ref().map(|n| Norm::with_eps(n, eps)),
            act: net.blocks.first().map_or(MlpAct::Gelu, |b| b.act),
            blocks: net
                .blocks
                .iter()
                .map(|b| Block {
                    norm1: Norm::with_eps(&b.norm1, eps),
                    qkv: dense(Dense::new(&b.attn.qkv, None)),
                    proj: dense(Dense::new(&b.attn.proj, scale(&b.ls1))),
                    norm2: Norm::with_eps(&b.norm2, eps),
                    fc1: dense(Dense::new(&b.fc1, None)),
                    fc2: dense(Dense::new(&b.fc2, scale(&b.ls2))),
                })
                .collect(),
            norm: Norm::with_eps(&net.norm, eps),
            mean_patch_feature: net.mean_patch_feature,
            pool: net.attn_pool.as_ref().map(|p| Pool::new(p, eps)),
            proj: net.proj.as_ref().map(|p| Dense::new(p, None)),
            head: net.head.as_ref().map(|h| Dense::new(h, None)),
        }
    }

    fn feature_dim(&self) -> usize {
        if let Some(proj) = &self.proj {
            return proj.bias.len();
        }
        if self.mean_patch_feature {
            2 * self.dim
        } else {
            self.dim
        }
    }
}

impl PooledForward for FusedVit {
    fn row_width(&self) -> usize {
        self.feature_dim()
    }

    fn pooled(&self, batch: Tensor<4>) -> Vec<f32> {
        self.run(batch)
    }

    /// The classifier reads the class token (the first `dim` values of each row).
    fn classifier(&self) -> Option<Classifier<'_>> {
        let head = self.head.as_ref()?;
        Some(Classifier {
            weight: &head.weight,
            bias: &head.bias,
            inputs: self.dim,
        })
    }

    fn last_block_input(&self, batch: Tensor<4>) -> Option<Tensor<3>> {
        Some(self.tokens_before_last_block(batch))
    }
}

impl FusedVit {
    /// The position embedding of the patches at `[h, w]`, resampled as the burn network does
    /// when the grid differs (once per batch; a few hundred KB).
    fn pos_for(&self, [h, w]: [usize; 2]) -> std::borrow::Cow<'_, [f32]> {
        if [h, w] == [self.grid, self.grid] {
            return std::borrow::Cow::Borrowed(&self.pos);
        }
        std::borrow::Cow::Owned(resample_rows(&self.pos, self.grid, [h, w], self.dim))
    }

    /// Every image of `batch` through the network on the worker threads: `[N * feature_dim]`.
    /// Each worker runs a group of images at once, their tokens stacked as the rows of every
    /// product: a ViT-B/32 has 50 tokens per image, too few rows for a product to reuse its
    /// weights (each image alone streamed all 88M of them); attention stays per image.
    fn run(&self, batch: Tensor<4>) -> Vec<f32> {
        let [_, _, h, w] = batch.dims();
        let grid = [h / self.patch, w / self.patch];
        let tokens = self.prefix_tokens + grid[0] * grid[1];
        let pos = self.pos_for(grid);
        let max_group = (GROUP_ROWS / tokens).max(1);
        let width = self.feature_dim();
        per_group(batch, width, max_group, |images, count, size, out| {
            SCRATCH.with_borrow_mut(|s| {
                let blocks = self.blocks.len();
                let compact = self.class_rows_only();
                self.forward_tokens(images, count, size, grid, &pos, s, blocks, compact);
                for (i, out) in out.chunks_exact_mut(width).take(count).enumerate() {
                    self.pool_image(i, tokens, compact, s, out);
                }
            })
        })
    }

    /// Whether only the class token's row is read past the last block's attention (the
    /// class token is the feature): then the last block runs that row alone.
    fn class_rows_only(&self) -> bool {
        !self.mean_patch_feature && self.pool.is_none() && self.prefix_tokens > 0
    }

    /// The tokens `[N, tokens, dim]` entering the last block (class, registers, then the
    /// patches row by row): where Grad-CAM takes its gradient (`crate::explain`).
    fn tokens_before_last_block(&self, batch: Tensor<4>) -> Tensor<3> {
        let [n, _, h, w] = batch.dims();
        let device = batch.device();
        let grid = [h / self.patch, w / self.patch];
        let tokens = self.prefix_tokens + grid[0] * grid[1];
        let pos = self.pos_for(grid);
        let blocks = self.blocks.len().saturating_sub(1);
        let rows = per_image(batch, tokens * self.dim, |image, size, out| {
            SCRATCH.with_borrow_mut(|s| {
                self.forward_tokens(image, 1, size, grid, &pos, s, blocks, false);
                out.copy_from_slice(&s.x[..tokens * self.dim]);
            })
        });
        Tensor::from_data(
            burn::tensor::TensorData::new(rows, [n, tokens, self.dim]),
            &device,
        )
    }

    /// The patch embedding and the first `blocks` blocks of `count` planar images back to
    /// back, their tokens left in `s.x` (`[count * tokens, dim]`, image after image). With
    /// `compact`, the last block runs the class rows only and leaves them as `[count, dim]`.
    #[allow(clippy::too_many_arguments)]
    fn forward_tokens(
        &self,
        images: &[f32],
        count: usize,
        [height, width]: [usize; 2],
        [gh, gw]: [usize; 2],
        pos: &[f32],
        s: &mut Scratch,
        blocks: usize,
        compact: bool,
    ) {
        let (d, p) = (self.dim, self.patch);
        let patches = gh * gw;
        let tokens = self.prefix_tokens + patches;
        let rows_all = count * tokens;
        let k = 3 * p * p;
        let image_len = 3 * height * width;

        // Patch embedding: im2col (non-overlapping windows) of every image, one product, the
        // position embedding added as the residual; then each image's prefix and patches.
        let geometry = ConvGeometry::patches([height, width], p);
        debug_assert_eq!(geometry.out_size(), [gh, gw]);
        let columns = sized(&mut s.patches, count * patches * k);
        for (i, image) in images.chunks_exact(image_len).take(count).enumerate() {
            let out = &mut columns[i * patches * k..(i + 1) * patches * k];
            kernels::im2col_planar(image, 3, geometry, 0, patches, out);
        }
        let repeated = sized(&mut s.hidden, count * patches * d);
        for chunk in repeated.chunks_exact_mut(patches * d) {
            chunk.copy_from_slice(&pos[..patches * d]);
        }
        let embedded = sized(&mut s.next, count * patches * d);
        self.patch_embed.forward(
            &s.patches[..count * patches * k],
            count * patches,
            Some(&s.hidden[..count * patches * d]),
            embedded,
        );
        let x = sized(&mut s.x, rows_all * d);
        for i in 0..count {
            let image = &mut x[i * tokens * d..(i + 1) * tokens * d];
            image[..self.prefix.len()].copy_from_slice(&self.prefix);
            image[self.prefix_tokens * d..]
                .copy_from_slice(&s.next[i * patches * d..(i + 1) * patches * d]);
        }
        if let Some(norm) = &self.norm_pre {
            let normed = sized(&mut s.next, rows_all * d);
            norm.forward(&s.x[..rows_all * d], normed);
            std::mem::swap(&mut s.x, &mut s.next);
        }

        let heads = self.heads;
        let head_dim = d / heads;
        let last = self.blocks.len().saturating_sub(1);
        for (i, block) in self.blocks[..blocks].iter().enumerate() {
            // Past the last block's attention only the class token's row is read when it is
            // the feature: its query, projection and MLP alone (6% of a ViT-S/16's work).
            let queries = if compact && i == last { 1 } else { tokens };
            let rows = count * queries;
            let x = &s.x[..rows_all * d];
            let normed = sized(&mut s.normed, rows_all * d);
            block.norm1.forward(x, normed);
            let qkv = sized(&mut s.qkv, rows_all * 3 * d);
            block.qkv.forward(normed, rows_all, None, qkv);
            let attended = sized(&mut s.attended, rows * d);
            let scores = sized(&mut s.scores, tokens * tokens);
            for image in 0..count {
                let qkv = &s.qkv[image * tokens * 3 * d..(image + 1) * tokens * 3 * d];
                let out = &mut attended[image * queries * d..(image + 1) * queries * d];
                for head in 0..heads {
                    let shape = [queries, tokens, d, head, head_dim];
                    attention_head(qkv, shape, scores, out);
                }
            }
            // The residual: every row, or each image's class row.
            let residual = if queries == tokens {
                &s.x[..rows * d]
            } else {
                let class_rows = sized(&mut s.hidden, rows * d);
                for image in 0..count {
                    class_rows[image * d..(image + 1) * d]
                        .copy_from_slice(&s.x[image * tokens * d..image * tokens * d + d]);
                }
                &s.hidden[..rows * d]
            };
            let next = &mut sized(&mut s.next, rows_all * d)[..rows * d];
            block
                .proj
                .forward(&s.attended[..rows * d], rows, Some(residual), next);
            std::mem::swap(&mut s.x, &mut s.next);

            let x = &s.x[..rows * d];
            let normed = &mut sized(&mut s.normed, rows_all * d)[..rows * d];
            block.norm2.forward(x, normed);
            let mlp = block.fc1.bias.len();
            let hidden = &mut sized(&mut s.hidden, rows_all * mlp)[..rows * mlp];
            block.fc1.forward(normed, rows, None, hidden);
            activate(self.act, hidden);
            let next = &mut sized(&mut s.next, rows_all * d)[..rows * d];
            block.fc2.forward(hidden, rows, Some(x), next);
            std::mem::swap(&mut s.x, &mut s.next);
        }
    }

    /// The pooled feature of image `i` of the group in `s.x` (`compact`: its class row alone
    /// is there, at row `i`).
    fn pool_image(&self, i: usize, tokens: usize, compact: bool, s: &mut Scratch, out: &mut [f32]) {
        let d = self.dim;
        let patches = tokens - self.prefix_tokens;
        let x: Vec<f32> = if compact {
            s.x[i * d..(i + 1) * d].to_vec()
        } else {
            s.x[i * tokens * d..(i + 1) * tokens * d].to_vec()
        };
        // Final norm: the class token, and every patch token for their mean.
        if let Some(pool) = &self.pool {
            let mut normed = vec![0.0; tokens * d];
            self.norm.forward(&x, &mut normed);
            let mut pooled = vec![0.0; d];
            pool.forward(&normed, self.heads, self.act, s, &mut pooled);
            match &self.proj {
                Some(proj) => proj.forward(&pooled, 1, None, out),
                None => out[..d].copy_from_slice(&pooled),
            }
            return;
        }
        if let Some(proj) = &self.proj {
            let mut pooled = vec![0.0; d];
            self.norm.forward(&x[..d], &mut pooled);
            proj.forward(&pooled, 1, None, out);
            return;
        }
        if !self.mean_patch_feature {
            self.norm.forward(&x[..d], &mut out[..d]);
            return;
        }
        let mut normed = vec![0.0; tokens * d];
        self.norm.forward(&x, &mut normed);
        out[..d].copy_from_slice(&normed[..d]);
        let mean = &mut out[d..2 * d];
        mean.fill(0.0);
        for row in normed[self.prefix_tokens * d..].chunks_exact(d) {
            for (m, v) in mean.iter_mut().zip(row) {
                *m += v;
            }
        }
        for m in mean.iter_mut() {
            *m /= patches as f32;
        }
    }
}

//! The inference-only form of a [`ResNet`] on the CPU: BatchNorm folded into the convs, one
//! image per worker thread, activations NHWC (`[pixels, channels]`), every conv a product with
//! the project's gemm path (1x1 directly, KxK through im2col in strips of output pixels that
//! stay in cache) with bias, ReLU and the residual add fused into the output tiles. burn-flex
//! ran each conv NCHW with separate passes for the bias, the ReLU and the add; results equal
//! the burn network's to float rounding (parity test).

use std::cell::RefCell;

use burn::tensor::Tensor;

use super::model::{ConvBn, ResNet};
use crate::backbone::fused::{
    Classifier, PooledForward, chw, grow as sized, per_group, per_image_maps, to_vec,
};
use crate::kernels::{self, Activation, ConvGeometry};

/// Output pixels per im2col strip: the strip's columns stay in cache for the product.
pub(in crate::backbone) const STRIP: usize = 256;

/// One folded conv, its weight as `[kernel * kernel * in, out]` with rows ordered (ky, kx,
/// channel) to match [`kernels::im2col_nhwc`] (the stem's: (channel, ky, kx), planar input).
#[derive(Debug, Clone)]
pub(in crate::backbone) struct Conv {
    pub(in crate::backbone) kernel: usize,
    pub(in crate::backbone) stride: usize,
    pub(in crate::backbone) inputs: usize,
    /// Empty where `winograd` holds the weights.
    pub(in crate::backbone) weight: Vec<f32>,
    pub(in crate::backbone) bias: Vec<f32>,
    /// Stride-1 3x3 convs run by Winograd's F(4x4, 3x3).
    pub(in crate::backbone) winograd: Option<kernels::Winograd3x3>,
}

impl Conv {
    fn new(layer: &ConvBn, planar: bool) -> Self {
        let dims = layer.conv.weight.dims();
        let bias = match &layer.conv.bias {
            Some(bias) => to_vec(bias.val()),
            // cannot happen: FusedResNet::new folds the network first
            None => vec![0.0; dims[0]],
        };
        let weight = to_vec(layer.conv.weight.val());
        let stride = layer.conv.stride[0];
        Self::from_burn_layout(&weight, dims, bias, stride, planar, &Buffers::FRESH)
    }

    /// From a folded weight in burn's `[out, in, k, k]` layout and its bias, its buffers from
    /// `buffers`.
    pub(in crate::backbone) fn from_burn_layout(
        weight: &[f32],
        dims: [usize; 4],
        bias: Vec<f32>,
        stride: usize,
        planar: bool,
        buffers: &Buffers,
    ) -> Self {
        let [_, inputs, k, _] = dims;
        let mut kernel = (buffers.take)(weight.len());
        kernel_layout(weight, dims, planar, &mut kernel);
        let winograd = (k == 3 && stride == 1 && !planar).then(|| {
            let buffer = (buffers.take)(36 * inputs * bias.len());
            let winograd = kernels::Winograd3x3::new_in(&kernel, inputs, bias.len(), buffer);
            (buffers.give)(std::mem::take(&mut kernel));
            winograd
        });
        Self {
            kernel: k,
            stride,
            inputs,
            weight: kernel,
            bias,
            winograd,
        }
    }

    pub(in crate::backbone) fn outputs(&self) -> usize {
        self.bias.len()
    }

    pub(in crate::backbone) fn geometry(&self, [h, w]: [usize; 2]) -> ConvGeometry {
        let pad = (self.kernel - 1) / 2;
        ConvGeometry {
            height: h,
            width: w,
            kernel: self.kernel,
            stride: self.stride,
            pad_top: pad,
            pad_left: pad,
            out_height: (h + 2 * pad - self.kernel) / self.stride + 1,
            out_width: (w + 2 * pad - self.kernel) / self.stride + 1,
        }
    }

    /// `out = act(conv(input) + bias (+ residual))` on `count` NHWC maps of `size`, back to
    /// back; returns the output size. `columns` is scratch.
    #[allow(clippy::too_many_arguments)]
    pub(in crate::backbone) fn forward(
        &self,
        input: &[f32],
        count: usize,
        size: [usize; 2],
        activation: Activation,
        residual: Option<&[f32]>,
        columns: &mut Vec<f32>,
        out: &mut [f32],
    ) -> [usize; 2] {
        let g = self.geometry(size);
        let pixels = g.out_height * g.out_width;
        let n = self.outputs();
        if let Some(winograd) = &self.winograd {
            winograd.forward(
                input, count, size, &self.bias, activation, residual, columns, out,
            );
            return [g.out_height, g.out_width];
        }
        if self.kernel == 1 && self.stride == 1 {
            kernels::pointwise(
                input,
                count * pixels,
                self.inputs,
                &self.weight,
                &self.bias,
                activation,
                residual,
                out,
            );
            return [g.out_height, g.out_width];
        }
        let k = self.kernel * self.kernel * self.inputs;
        let image_len = size[0] * size[1] * self.inputs;
        let columns = sized(columns, STRIP * k);
        let total = count * pixels;
        for start in (0..total).step_by(STRIP) {
            let rows = STRIP.min(total - start);
            // A 1x1 conv with a stride reads every stride-th pixel: im2col with one tap.
            for (image, pixel, take, at) in strip_shares(start, rows, pixels) {
                kernels::im2col_nhwc(
                    &input[image * image_len..][..image_len],
                    self.inputs,
                    g,
                    pixel,
                    take,
                    &mut columns[at * k..],
                );
            }
            kernels::pointwise(
                &columns[..rows * k],
                rows,
                k,
                &self.weight,
                &self.bias,
                activation,
                residual.map(|r| &r[start * n..]),
                &mut out[start * n..],
            );
        }
        [g.out_height, g.out_width]
    }
}

/// The stem's 7x7/2 conv on one planar image (im2col of its planes), bias and ReLU fused,
/// into `out` (NHWC).
pub(in crate::backbone) fn stem_conv(
    stem: &Conv,
    image: &[f32],
    size: [usize; 2],
    columns: &mut Vec<f32>,
    out: &mut [f32],
) {
    let g = stem.geometry(size);
    let pixels = g.out_height * g.out_width;
    let (c, k) = (stem.outputs(), stem.kernel * stem.kernel * stem.inputs);
    let columns = sized(columns, STRIP * k);
    for start in (0..pixels).step_by(STRIP) {
        let rows = STRIP.min(pixels - start);
        kernels::im2col_planar(image, stem.inputs, g, start, rows, columns);
        kernels::pointwise(
            &columns[..rows * k],
            rows,
            k,
            &stem.weight,
            &stem.bias,
            Activation::Relu,
            None,
            &mut out[start * c..],
        );
    }
}

/// The output size of the stem's 3x3/2 max-pool (padding 1) on a map of `[h, w]`.
pub(in crate::backbone) fn pooled_size([h, w]: [usize; 2]) -> [usize; 2] {
    [(h + 2 - 3) / 2 + 1, (w + 2 - 3) / 2 + 1]
}

/// The 3x3 window rows or columns, stride 2, padding 1, of pooled index `o` in a side of `n`.
pub(in crate::backbone) fn pool_window(o: usize, n: usize) -> std::ops::Range<usize> {
    (2 * o).saturating_sub(1)..(2 * o + 2).min(n)
}

/// Max-pool 3x3/2, padding 1, of one NHWC map (padding never wins, as in PyTorch).
pub(in crate::backbone) fn max_pool(input: &[f32], [h, w]: [usize; 2], c: usize, out: &mut [f32]) {
    let [oh, ow] = pooled_size([h, w]);
    for oy in 0..oh {
        for ox in 0..ow {
            let o = &mut out[(oy * ow + ox) * c..][..c];
            o.fill(f32::NEG_INFINITY);
            for iy in pool_window(oy, h) {
                for ix in pool_window(ox, w) {
                    let v = &input[(iy * w + ix) * c..][..c];
                    for (o, v) in o.iter_mut().zip(v) {
                        *o = o.max(*v);
                    }
                }
            }
        }
    }
}

/// The rows `[start, start + rows)` of `count` images' im2col matrices back to back (`pixels`
/// rows each), image by image: `(image, first pixel, pixels, offset in the strip)`.
pub(in crate::backbone) fn strip_shares(
    start: usize,
    rows: usize,
    pixels: usize,
) -> impl Iterator<Item = (usize, usize, usize, usize)> {
    let end = start + rows;
    let mut row = start;
    std::iter::from_fn(move || {
        (row < end).then(|| {
            let (image, pixel) = (row / pixels, row % pixels);
            let take = (pixels - pixel).min(end - row);
            let share = (image, pixel, take, row - start);
            row += take;
            share
        })
    })
}

/// Where a [`Conv`]'s weight buffers come from and go: fresh ones for inference, a pool
/// reused from step to step in training.
pub(in crate::backbone) struct Buffers {
    pub(in crate::backbone) take: fn(usize) -> Vec<f32>,
    pub(in crate::backbone) give: fn(Vec<f32>),
}

impl Buffers {
    pub(in crate::backbone) const FRESH: Buffers = Buffers {
        take: |len| vec![0.0; len],
        give: drop,
    };
}

/// Output channels handled together by the layout changes: one cache line of each.
const LAYOUT_BLOCK: usize = 16;

/// The row of a conv's kernel-layout weight for input channel `c` and tap `t` (`ky * k + kx`):
/// ordered (ky, kx, channel) for NHWC im2col, (channel, ky, kx) for the planar stem's.
fn kernel_row(c: usize, t: usize, [_, inputs, k, _]: [usize; 4], planar: bool) -> usize {
    if planar {
        c * k * k + t
    } else {
        t * inputs + c
    }
}

/// burn's `[out, in, k, k]` weight as `[k * k * in, out]` (see [`kernel_row`]) into `kernel`,
/// a block of output channels at a time: every source row is read in order.
pub(in crate::backbone) fn kernel_layout(
    weight: &[f32],
    dims: [usize; 4],
    planar: bool,
    kernel: &mut [f32],
) {
    let [out, inputs, k, _] = dims;
    let row = inputs * k * k;
    assert!(weight.len() == out * row && kernel.len() == weight.len());
    for o0 in (0..out).step_by(LAYOUT_BLOCK) {
        let block = LAYOUT_BLOCK.min(out - o0);
        for c in 0..inputs {
            for t in 0..k * k {
                let dst = &mut kernel[kernel_row(c, t, dims, planar) * out + o0..][..block];
                for (o, d) in dst.iter_mut().enumerate() {
                    *d = weight[(o0 + o) * row + c * k * k + t];
                }
            }
        }
    }
}

/// The inverse of [`kernel_layout`]: a weight gradient back to burn's layout.
pub(in crate::backbone) fn burn_layout(
    kernel: &[f32],
    dims: [usize; 4],
    planar: bool,
    weight: &mut [f32],
) {
    let [out, inputs, k, _] = dims;
    let row = inputs * k * k;
    assert!(weight.len() == out * row && kernel.len() == weight.len());
    for o0 in (0..out).step_by(LAYOUT_BLOCK) {
        let block = LAYOUT_BLOCK.min(out - o0);
        for c in 0..inputs {
            for t in 0..k * k {
                let src = &kernel[kernel_row(c, t, dims, planar) * out + o0..][..block];
                for (o, s) in src.iter().enumerate() {
                    weight[(o0 + o) * row + c * k * k + t] = *s;
                }
            }
        }
    }
}

#[derive(Debug, Clone)]
struct Block {
    conv1: Conv,
    conv2: Conv,
    conv3: Option<Conv>,
    downsample: Option<Conv>,
}

/// The activations of one run through blocks: `x` in, `out` out (swapped after each block).
#[derive(Default)]
struct Maps {
    x: Vec<f32>,
    a: Vec<f32>,
    b: Vec<f32>,
    identity: Vec<f32>,
    out: Vec<f32>,
}

#[derive(Default)]
struct Scratch {
    /// One image's maps, through the stem and the early blocks.
    image: Maps,
    /// The group's maps, through the blocks from [`FusedResNet::grouped_from`].
    group: Maps,
    columns: Vec<f32>,
}

/// Images per task in the deep stages: one image's 14x14 or 7x7 map is too few rows for a
/// product to pay for packing its weights (up to 9 MB in layer4), a group of them is not.
const GROUP: usize = 8;

/// Blocks whose input map has at most this many pixels (layer3 and layer4 at 224 px) run a
/// group of images at a time. Grouping layer2 too was no faster and held more memory.
const GROUPED_PIXELS: usize = 14 * 14;

thread_local! {
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch::default());
}

/// A ResNet's folded weights laid out for [`crate::kernels`].
#[derive(Debug, Clone)]
pub struct FusedResNet {
    stem: Conv,
    blocks: Vec<Block>,
    features: usize,
    /// `[features, classes]` and bias.
    fc: Option<(Vec<f32>, Vec<f32>)>,
}

impl FusedResNet {
    /// From `net`, whose BatchNorm is folded here if it is not already.
    pub fn new(net: &ResNet) -> Self {
        let folded;
        let net = if net.stem.folded {
            net
        } else {
            let mut copy = net.clone();
            copy.fold_batch_norm();
            folded = copy;
            &folded
        };
        let blocks: Vec<Block> = net
            .stages
            .iter()
            .flat_map(|s| s.blocks.iter())
            .map(|b| Block {
                conv1: Conv::new(&b.conv1, false),
                conv2: Conv::new(&b.conv2, false),
                conv3: b.conv3.as_ref().map(|c| Conv::new(c, false)),
                downsample: b.downsample.as_ref().map(|c| Conv::new(c, false)),
            })
            .collect();
        let features = blocks
            .last()
            .map(|b| b.conv3.as_ref().unwrap_or(&b.conv2).outputs())
            .unwrap_or(0);
        Self {
            stem: Conv::new(&net.stem, true),
            blocks,
            features,
            fc: net.fc.as_ref().map(|fc| {
                let bias = match &fc.bias {
                    Some(b) => to_vec(b.val()),
                    None => vec![0.0; fc.weight.dims()[1]],
                };
                (to_vec(fc.weight.val()), bias)
            }),
        }
    }

    /// Pooled features of every image of `batch` on the worker threads: `[N * features]`.
    fn run(&self, batch: Tensor<4>) -> Vec<f32> {
        per_group(batch, self.features, GROUP, |images, count, size, out| {
            SCRATCH.with_borrow_mut(|s| self.forward_group(images, count, size, s, out))
        })
    }

    /// The `[N, C, H', W']` maps entering block `blocks` (of all the stages' blocks in order):
    /// a frozen prefix's output for burn's [`ResNet::forward_features_from`].
    pub fn forward_prefix(&self, batch: Tensor<4>, blocks: usize) -> Tensor<4> {
        let blocks = &self.blocks[..blocks.min(self.blocks.len())];
        per_image_maps(batch, |image, size| {
            SCRATCH.with_borrow_mut(|s| {
                let (map, c) = self.stem_forward(image, size, &mut s.image, &mut s.columns);
                let (map, c) =
                    Self::blocks_forward(blocks, 1, map, c, &mut s.image, &mut s.columns);
                chw(&s.image.x, [map[0], map[1], c])
            })
        })
    }

    /// `count` planar images back to back through the network: each alone through the stem
    /// and the blocks on large maps, then all together through the rest.
    fn forward_group(
        &self,
        images: &[f32],
        count: usize,
        size: [usize; 2],
        s: &mut Scratch,
        out: &mut [f32],
    ) {
        let image_len = images.len() / count;
        let split = self.grouped_from(size);
        let mut group_size = size;
        let mut channels = 0;
        for (i, image) in images.chunks_exact(image_len).enumerate() {
            let (map, c) = self.stem_forward(image, size, &mut s.image, &mut s.columns);
            let (map, c) = Self::blocks_forward(
                &self.blocks[..split],
                1,
                map,
                c,
                &mut s.image,
                &mut s.columns,
            );
            let len = map[0] * map[1] * c;
            sized(&mut s.group.x, count * len)[i * len..][..len].copy_from_slice(&s.image.x[..len]);
            (group_size, channels) = (map, c);
        }
        let (map, channels) = Self::blocks_forward(
            &self.blocks[split..],
            count,
            group_size,
            channels,
            &mut s.group,
            &mut s.columns,
        );

        // Global average pool, image by image.
        let pixels = map[0] * map[1];
        for (image, out) in s.group.x[..count * pixels * channels]
            .chunks_exact(pixels * channels)
            .zip(out.chunks_exact_mut(channels))
        {
            out.fill(0.0);
            for row in image.chunks_exact(channels) {
                for (o, v) in out.iter_mut().zip(row) {
                    *o += v;
                }
            }
            for o in out.iter_mut() {
                *o /= pixels as f32;
            }
        }
    }

    /// The index of the first block that runs on a group of images at input `size`.
    fn grouped_from(&self, size: [usize; 2]) -> usize {
        let mut map = self.stem.geometry(size).out_size();
        map = pooled_size(map);
        for (i, block) in self.blocks.iter().enumerate() {
            if map[0] * map[1] <= GROUPED_PIXELS {
                return i;
            }
            let m = block.conv1.geometry(map).out_size();
            map = block.conv2.geometry(m).out_size();
        }
        self.blocks.len()
    }

    /// Stem conv and max-pool of one planar image into `s.x`: returns its size and channels.
    fn stem_forward(
        &self,
        image: &[f32],
        size: [usize; 2],
        s: &mut Maps,
        columns: &mut Vec<f32>,
    ) -> ([usize; 2], usize) {
        let g = self.stem.geometry(size);
        let c = self.stem.outputs();
        let stem = sized(&mut s.a, g.out_height * g.out_width * c);
        stem_conv(&self.stem, image, size, columns, stem);
        let [oh, ow] = pooled_size(g.out_size());
        let x = sized(&mut s.x, oh * ow * c);
        max_pool(stem, g.out_size(), c, x);
        ([oh, ow], c)
    }

    /// `blocks` on `count` NHWC maps of `size` back to back in `s.x`, the result left in
    /// `s.x`: returns its size and channels.
    fn blocks_forward(
        blocks: &[Block],
        count: usize,
        mut size: [usize; 2],
        mut channels: usize,
        s: &mut Maps,
        columns: &mut Vec<f32>,
    ) -> ([usize; 2], usize) {
        for block in blocks {
            let x = &s.x[..count * size[0] * size[1] * channels];
            let [h1, w1] = block.conv1.geometry(size).out_size();
            let a = sized(&mut s.a, count * h1 * w1 * block.conv1.outputs());
            block
                .conv1
                .forward(x, count, size, Activation::Relu, None, columns, a);
            let last = block.conv3.as_ref().unwrap_or(&block.conv2);
            let [h2, w2] = block.conv2.geometry([h1, w1]).out_size();
            let out_len = count * h2 * w2 * last.outputs();
            let identity: &[f32] = match &block.downsample {
                Some(down) => {
                    let id = sized(&mut s.identity, out_len);
                    down.forward(x, count, size, Activation::None, None, columns, id);
                    id
                }
                None => x,
            };
            let out = sized(&mut s.out, out_len);
            match &block.conv3 {
                Some(conv3) => {
                    let b = sized(&mut s.b, count * h2 * w2 * block.conv2.outputs());
                    block
                        .conv2
                        .forward(a, count, [h1, w1], Activation::Relu, None, columns, b);
                    conv3.forward(
                        b,
                        count,
                        [h2, w2],
                        Activation::Relu,
                        Some(identity),
                        columns,
                        out,
                    );
                }
                None => {
                    block.conv2.forward(
                        a,
                        count,
                        [h1, w1],
                        Activation::Relu,
                        Some(identity),
                        columns,
                        out,
                    );
                }
            }
            std::mem::swap(&mut s.x, &mut s.out);
            size = [h2, w2];
            channels = last.outputs();
        }
        (size, channels)
    }
}

impl ConvGeometry {
    pub(in crate::backbone) fn out_size(&self) -> [usize; 2] {
        [self.out_height, self.out_width]
    }
}

impl PooledForward for FusedResNet {
    fn row_width(&self) -> usize {
        self.features
    }

    fn pooled(&self, batch: Tensor<4>) -> Vec<f32> {
        self.run(batch)
    }

    fn classifier(&self) -> Option<Classifier<'_>> {
        let (weight, bias) = self.fc.as_ref()?;
        Some(Classifier {
            weight,
            bias,
            inputs: self.features,
        })
    }

    fn last_maps(&self, batch: Tensor<4>) -> Option<Tensor<4>> {
        Some(self.forward_prefix(batch, self.blocks.len()))
    }
}

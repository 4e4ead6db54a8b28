//! The inference-only form of a [`ConvNeXt`] on the CPU: one image per worker thread,
//! activations NHWC (`[pixels, channels]`, which is ConvNeXt's own channels-last), the 7x7
//! depthwise conv vectorised over channels with its bias fused, then LayerNorm, the two
//! pointwise products (GELU between them, layer scale folded into the second, the residual
//! added in its output tiles) over strips of pixels whose hidden activations stay in cache;
//! the stem and the downsampling convs as im2col + one product. burn-flex ran the block as
//! NCHW convs, permutes and a separate pass per bias, scale and add; results equal the burn
//! network's to float rounding (parity test).

use std::cell::RefCell;

use burn::tensor::Tensor;

use super::model::{ConvNeXt, ConvNeXtBlock, Downsample};
use crate::backbone::fused::layers::{Dense, Norm};
use crate::backbone::fused::{
    Classifier, PooledForward, chw, grow as sized, per_image, per_image_maps, to_vec,
};
use crate::kernels::transformer::gelu;
use crate::kernels::{self, Activation, ConvGeometry, Rows};

/// Pixels per strip of the block's MLP: a strip's hidden activations (4x the channels) stay in
/// cache between the two products.
const STRIP: usize = 128;

const DEPTHWISE_KERNEL: usize = 7;

/// A conv with non-overlapping `kernel`-sized windows (the stem, the downsampling layers), as
/// im2col + one product: `weight` `[kernel * kernel * in, out]`.
#[derive(Debug, Clone)]
struct Patchify {
    kernel: usize,
    conv: Dense,
}

impl Patchify {
    /// `planar`: rows ordered (channel, ky, kx) for [`kernels::im2col_planar`] (the image);
    /// otherwise (ky, kx, channel) for [`kernels::im2col_nhwc`].
    fn new(conv: &burn::nn::conv::Conv2d, planar: bool) -> Self {
        let [out, inputs, k, _] = conv.weight.dims();
        let w = to_vec(conv.weight.val());
        let mut weight = vec![0.0; k * k * inputs * out];
        for o in 0..out {
            for c in 0..inputs {
                for t in 0..k * k {
                    let row = if planar {
                        c * k * k + t
                    } else {
                        t * inputs + c
                    };
                    weight[row * out + o] = w[(o * inputs + c) * k * k + t];
                }
            }
        }
        let bias = conv
            .bias
            .as_ref()
            .map_or_else(|| vec![0.0; out], |b| to_vec(b.val()));
        Self {
            kernel: k,
            conv: Dense::from_parts(weight, bias),
        }
    }

    fn geometry(&self, size: [usize; 2]) -> ConvGeometry {
        ConvGeometry::patches(size, self.kernel)
    }
}

#[derive(Debug, Clone)]
struct Block {
    /// `[49, channels]`, tap-major.
    depthwise: Vec<f32>,
    depthwise_bias: Vec<f32>,
    norm: Norm,
    fc1: Dense,
    /// Layer scale folded in.
    fc2: Dense,
}

impl Block {
    fn new(block: &ConvNeXtBlock) -> Self {
        let [c, _, k, _] = block.dwconv.weight.dims();
        let w = to_vec(block.dwconv.weight.val());
        let mut depthwise = vec![0.0; k * k * c];
        for ch in 0..c {
            for t in 0..k * k {
                depthwise[t * c + ch] = w[ch * k * k + t];
            }
        }
        Self {
            depthwise,
            depthwise_bias: block
                .dwconv
                .bias
                .as_ref()
                .map_or_else(|| vec![0.0; c], |b| to_vec(b.val())),
            norm: Norm::new(&block.norm),
            fc1: Dense::new(&block.fc1, None),
            fc2: Dense::new(&block.fc2, Some(to_vec(block.gamma.val()))),
        }
    }
}

#[derive(Debug, Clone)]
struct Down {
    norm: Norm,
    conv: Patchify,
}

impl Down {
    fn new(down: &Downsample) -> Self {
        Self {
            norm: Norm::new(&down.norm),
            conv: Patchify::new(&down.conv, false),
        }
    }
}

#[derive(Debug, Clone)]
struct Stage {
    down: Option<Down>,
    blocks: Vec<Block>,
}

/// Per-thread buffers, grown to the largest image seen.
#[derive(Default)]
struct Scratch {
    columns: Vec<f32>,
    x: Vec<f32>,
    next: Vec<f32>,
    depthwise: Vec<f32>,
    normed: Vec<f32>,
    hidden: Vec<f32>,
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch::default());
}

/// A ConvNeXt's weights laid out for [`crate::kernels`].
#[derive(Debug, Clone)]
pub struct FusedConvNeXt {
    stem: Patchify,
    stem_norm: Norm,
    stages: Vec<Stage>,
    head_norm: Norm,
    fc: Option<Dense>,
}

impl FusedConvNeXt {
    pub fn new(net: &ConvNeXt) -> Self {
        Self {
            stem: Patchify::new(&net.stem_conv, true),
            stem_norm: Norm::new(&net.stem_norm),
            stages: net
                .stages
                .iter()
                .map(|stage| Stage {
                    down: stage.downsample.as_ref().map(Down::new),
                    blocks: stage.blocks.iter().map(Block::new).collect(),
                })
                .collect(),
            head_norm: Norm::new(&net.head_norm),
            fc: net.fc.as_ref().map(|fc| Dense::new(fc, None)),
        }
    }

    fn feature_dim(&self) -> usize {
        self.head_norm.gamma.len()
    }

    /// Every image of `batch` through the network on the worker threads: `[N * feature_dim]`.
    fn run(&self, batch: Tensor<4>) -> Vec<f32> {
        per_image(batch, self.feature_dim(), |image, size, out| {
            SCRATCH.with_borrow_mut(|s| self.forward_image(image, size, s, out))
        })
    }

    fn forward_image(&self, image: &[f32], size: [usize; 2], s: &mut Scratch, out: &mut [f32]) {
        let ([h, w], c) = self.trunk(image, size, s);
        let pixels = h * w;

        // Global average pool, then LayerNorm.
        let pooled = sized(&mut s.normed, c);
        pooled.fill(0.0);
        for row in s.x[..pixels * c].chunks_exact(c) {
            for (p, v) in pooled.iter_mut().zip(row) {
                *p += v;
            }
        }
        for p in pooled.iter_mut() {
            *p /= pixels as f32;
        }
        self.head_norm.forward(&s.normed[..c], out);
    }

    /// The stem and every stage of one planar image, the last stage's NHWC map left in `s.x`:
    /// returns its size and channels.
    fn trunk(&self, image: &[f32], size: [usize; 2], s: &mut Scratch) -> ([usize; 2], usize) {
        // Stem: 4x4 patches, one product, then LayerNorm per pixel.
        let g = self.stem.geometry(size);
        let mut c = self.stem.conv.bias.len();
        let mut pixels = g.out_height * g.out_width;
        let k = self.stem.conv.inputs();
        let columns = sized(&mut s.columns, pixels * k);
        kernels::im2col_planar(image, 3, g, 0, pixels, columns);
        let stem = sized(&mut s.next, pixels * c);
        self.stem.conv.forward(columns, pixels, None, stem);
        let x = sized(&mut s.x, pixels * c);
        self.stem_norm.forward(&s.next[..pixels * c], x);
        let mut size = [g.out_height, g.out_width];

        for stage in &self.stages {
            if let Some(down) = &stage.down {
                let normed = sized(&mut s.normed, pixels * c);
                down.norm.forward(&s.x[..pixels * c], normed);
                let g = down.conv.geometry(size);
                let out_pixels = g.out_height * g.out_width;
                let k = down.conv.conv.inputs();
                let columns = sized(&mut s.columns, out_pixels * k);
                kernels::im2col_nhwc(normed, c, g, 0, out_pixels, columns);
                c = down.conv.conv.bias.len();
                let x = sized(&mut s.x, out_pixels * c);
                down.conv.conv.forward(columns, out_pixels, None, x);
                pixels = out_pixels;
                size = [g.out_height, g.out_width];
            }
            for block in &stage.blocks {
                self.block(block, size, c, s);
            }
        }

        (size, c)
    }

    /// `x + fc2(gelu(fc1(LN(dwconv(x)))))` on `s.x` (`[h * w, c]`), in place.
    fn block(&self, block: &Block, [h, w]: [usize; 2], c: usize, s: &mut Scratch) {
        let pixels = h * w;
        let g = ConvGeometry::same([h, w], DEPTHWISE_KERNEL);
        let depthwise = sized(&mut s.depthwise, pixels * c);
        kernels::depthwise(
            &s.x[..pixels * c],
            g,
            &block.depthwise,
            &block.depthwise_bias,
            Activation::None,
            &Rows::all(&g),
            depthwise,
        );
        let hidden_width = block.fc1.bias.len();
        let next = sized(&mut s.next, pixels * c);
        for start in (0..pixels).step_by(STRIP) {
            let rows = STRIP.min(pixels - start);
            let strip = start * c..(start + rows) * c;
            let normed = sized(&mut s.normed, rows * c);
            block.norm.forward(&s.depthwise[strip.clone()], normed);
            let hidden = sized(&mut s.hidden, rows * hidden_width);
            block.fc1.forward(normed, rows, None, hidden);
            gelu(hidden);
            block
                .fc2
                .forward(hidden, rows, Some(&s.x[strip.clone()]), &mut next[strip]);
        }
        std::mem::swap(&mut s.x, &mut s.next);
    }
}

impl PooledForward for FusedConvNeXt {
    fn row_width(&self) -> usize {
        self.feature_dim()
    }

    fn pooled(&self, batch: Tensor<4>) -> Vec<f32> {
        self.run(batch)
    }

    fn classifier(&self) -> Option<Classifier<'_>> {
        let fc = self.fc.as_ref()?;
        Some(Classifier {
            weight: &fc.weight,
            bias: &fc.bias,
            inputs: self.feature_dim(),
        })
    }

    fn last_maps(&self, batch: Tensor<4>) -> Option<Tensor<4>> {
        Some(per_image_maps(batch, |image, size| {
            SCRATCH.with_borrow_mut(|s| {
                let ([h, w], c) = self.trunk(image, size, s);
                chw(&s.x[..h * w * c], [h, w, c])
            })
        }))
    }
}

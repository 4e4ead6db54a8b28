//! The inference-only form of a [`ResNet`] on the CPU: BatchNorm folded into the convs, one
//! image per worker thread, activations NHWC (`[pixels, channels]`), every conv a product with
//! the project's gemm path (1x1 directly, KxK through im2col in strips of output pixels that
//! stay in cache) with bias, ReLU and the residual add fused into the output tiles. burn-flex
//! ran each conv NCHW with separate passes for the bias, the ReLU and the add; results equal
//! the burn network's to float rounding (parity test).

use std::cell::RefCell;

use burn::tensor::{Tensor, TensorData};

use super::FusedForward;
use super::fused::{classify_batch, grow as sized, per_image, to_vec};
use super::resnet::{ConvBn, ResNet};
use crate::kernels::{self, Activation, ConvGeometry};

/// Output pixels per im2col strip: the strip's columns stay in cache for the product.
const STRIP: usize = 256;

/// One folded conv, its weight as `[kernel * kernel * in, out]` with rows ordered (ky, kx,
/// channel) to match [`kernels::im2col_nhwc`] (the stem's: (channel, ky, kx), planar input).
#[derive(Debug, Clone)]
struct Conv {
    kernel: usize,
    stride: usize,
    inputs: usize,
    weight: Vec<f32>,
    bias: Vec<f32>,
}

impl Conv {
    fn new(layer: &ConvBn, planar: bool) -> Self {
        let [out, inputs, k, _] = layer.conv.weight.dims();
        let w = to_vec(layer.conv.weight.val());
        let mut weight = vec![0.0; k * k * inputs * out];
        for o in 0..out {
            for c in 0..inputs {
                for t in 0..k * k {
                    let row = if planar {
                        c * k * k + t
                    } else {
                        t * inputs + c
                    };
                    weight[row * out + o] = w[((o * inputs + c) * k * k) + t];
                }
            }
        }
        let bias = match &layer.conv.bias {
            Some(bias) => to_vec(bias.val()),
            // cannot happen: FusedResNet::new folds the network first
            None => vec![0.0; out],
        };
        Self {
            kernel: k,
            stride: layer.conv.stride[0],
            inputs,
            weight,
            bias,
        }
    }

    fn outputs(&self) -> usize {
        self.bias.len()
    }

    fn geometry(&self, [h, w]: [usize; 2]) -> ConvGeometry {
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

    /// `out = act(conv(input) + bias (+ residual))` on an NHWC map of `size`; returns the
    /// output size. `columns` is scratch.
    fn forward(
        &self,
        input: &[f32],
        size: [usize; 2],
        activation: Activation,
        residual: Option<&[f32]>,
        columns: &mut Vec<f32>,
        out: &mut [f32],
    ) -> [usize; 2] {
        let g = self.geometry(size);
        let pixels = g.out_height * g.out_width;
        let n = self.outputs();
        if self.kernel == 1 && self.stride == 1 {
            kernels::pointwise(
                input,
                pixels,
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
        if columns.len() < STRIP * k {
            columns.resize(STRIP * k, 0.0);
        }
        for start in (0..pixels).step_by(STRIP) {
            let rows = STRIP.min(pixels - start);
            // A 1x1 conv with a stride reads every stride-th pixel: im2col with one tap.
            kernels::im2col_nhwc(input, self.inputs, g, start, rows, columns);
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

#[derive(Debug, Clone)]
struct Block {
    conv1: Conv,
    conv2: Conv,
    conv3: Option<Conv>,
    downsample: Option<Conv>,
}

#[derive(Default)]
struct Scratch {
    x: Vec<f32>,
    a: Vec<f32>,
    b: Vec<f32>,
    identity: Vec<f32>,
    out: Vec<f32>,
    columns: Vec<f32>,
}

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
        per_image(batch, self.features, |image, size, out| {
            SCRATCH.with_borrow_mut(|s| self.forward_image(image, size, s, out))
        })
    }

    fn forward_image(&self, image: &[f32], size: [usize; 2], s: &mut Scratch, out: &mut [f32]) {
        // Stem: 7x7/2 conv on the planar image (im2col of its planes), bias and ReLU fused.
        let g = self.stem.geometry(size);
        let pixels = g.out_height * g.out_width;
        let c = self.stem.outputs();
        let k = self.stem.kernel * self.stem.kernel * self.stem.inputs;
        let stem = sized(&mut s.a, pixels * c);
        sized(&mut s.columns, STRIP * k);
        for start in (0..pixels).step_by(STRIP) {
            let rows = STRIP.min(pixels - start);
            kernels::im2col_planar(image, 3, g, start, rows, &mut s.columns);
            kernels::pointwise(
                &s.columns[..rows * k],
                rows,
                k,
                &self.stem.weight,
                &self.stem.bias,
                Activation::Relu,
                None,
                &mut stem[start * c..],
            );
        }
        // Max-pool 3x3/2, padding 1 (padding never wins, as in PyTorch).
        let (h, w) = (g.out_height, g.out_width);
        let (oh, ow) = ((h + 2 - 3) / 2 + 1, (w + 2 - 3) / 2 + 1);
        let x = sized(&mut s.x, oh * ow * c);
        for oy in 0..oh {
            for ox in 0..ow {
                let o = &mut x[(oy * ow + ox) * c..][..c];
                o.fill(f32::NEG_INFINITY);
                for iy in (2 * oy).saturating_sub(1)..(2 * oy + 2).min(h) {
                    for ix in (2 * ox).saturating_sub(1)..(2 * ox + 2).min(w) {
                        let v = &s.a[(iy * w + ix) * c..][..c];
                        for (o, v) in o.iter_mut().zip(v) {
                            *o = o.max(*v);
                        }
                    }
                }
            }
        }
        let mut size = [oh, ow];
        let mut channels = c;

        for block in &self.blocks {
            let x = &s.x[..size[0] * size[1] * channels];
            let [h1, w1] = block.conv1.geometry(size).out_size();
            let a = sized(&mut s.a, h1 * w1 * block.conv1.outputs());
            block
                .conv1
                .forward(x, size, Activation::Relu, None, &mut s.columns, a);
            let last = block.conv3.as_ref().unwrap_or(&block.conv2);
            let [h2, w2] = block.conv2.geometry([h1, w1]).out_size();
            let out_len = h2 * w2 * last.outputs();
            let identity: &[f32] = match &block.downsample {
                Some(down) => {
                    let id = sized(&mut s.identity, out_len);
                    down.forward(x, size, Activation::None, None, &mut s.columns, id);
                    id
                }
                None => x,
            };
            let out = sized(&mut s.out, out_len);
            match &block.conv3 {
                Some(conv3) => {
                    let b = sized(&mut s.b, h2 * w2 * block.conv2.outputs());
                    block
                        .conv2
                        .forward(a, [h1, w1], Activation::Relu, None, &mut s.columns, b);
                    conv3.forward(
                        b,
                        [h2, w2],
                        Activation::Relu,
                        Some(identity),
                        &mut s.columns,
                        out,
                    );
                }
                None => {
                    block.conv2.forward(
                        a,
                        [h1, w1],
                        Activation::Relu,
                        Some(identity),
                        &mut s.columns,
                        out,
                    );
                }
            }
            std::mem::swap(&mut s.x, &mut s.out);
            size = [h2, w2];
            channels = last.outputs();
        }

        // Global average pool.
        out.fill(0.0);
        let pixels = size[0] * size[1];
        for row in s.x[..pixels * channels].chunks_exact(channels) {
            for (o, v) in out.iter_mut().zip(row) {
                *o += v;
            }
        }
        for o in out.iter_mut() {
            *o /= pixels as f32;
        }
    }
}

impl ConvGeometry {
    fn out_size(&self) -> [usize; 2] {
        [self.out_height, self.out_width]
    }
}

impl FusedForward for FusedResNet {
    fn features(&self, batch: Tensor<4>) -> Tensor<2> {
        let [n, ..] = batch.dims();
        let device = batch.device();
        let features = self.run(batch);
        Tensor::from_data(TensorData::new(features, [n, self.features]), &device)
    }

    fn logits(&self, batch: Tensor<4>) -> Option<Tensor<2>> {
        let (weight, bias) = self.fc.as_ref()?;
        let [n, ..] = batch.dims();
        let device = batch.device();
        let features = self.run(batch);
        let logits = classify_batch(&features, self.features, self.features, weight, bias);
        Some(Tensor::from_data(
            TensorData::new(logits, [n, bias.len()]),
            &device,
        ))
    }
}

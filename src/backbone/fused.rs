//! The inference-only form of an [`MbNet`] on the CPU: BatchNorm folded into the convolutions,
//! weights laid out for [`crate::kernels`] (1x1 convs as `[in, out]` matrices, depthwise as
//! `[tap, channel]`), activations NHWC, one image per worker thread with its own scratch
//! buffers, conv + bias + ReLU6 (+ residual) fused, and the head conv summed straight into the
//! pooled features. [`crate::backbone::Backbone`] uses it behind `features` / `logits` once
//! prepared for inference; results equal the burn network's to float rounding (parity tests).

use std::cell::RefCell;

use burn::tensor::Tensor;
use rayon::prelude::*;

use super::blocks::{ConvBnAct, axis_padding, conv_output_size};
use super::mbnet::MbNet;
use super::source_config::PaddingMode;
use crate::kernels::{self, Activation, ConvGeometry};

/// Rows of the stem's im2col matrix built at a time.
const STEM_ROWS: usize = 256;

/// A convolution's folded weights in the layout its kernel reads.
struct Layer {
    /// 1x1: `[in, out]`; depthwise: `[kernel * kernel, channels]`; stem: `[in * k * k, out]`.
    weight: Vec<f32>,
    bias: Vec<f32>,
    kernel: usize,
    stride: usize,
    activation: Activation,
}

impl Layer {
    /// Fold `layer`'s BatchNorm (on a copy) and transpose its weight for the kernels.
    fn from_conv(layer: &ConvBnAct) -> Self {
        let mut folded = layer.clone();
        folded.fold_batch_norm();
        let [out, per_group, kh, kw] = folded.weight.dims();
        let taps = kh * kw;
        let w = to_vec(folded.weight.val());
        let bias = folded
            .folded_bias
            .map(|b| to_vec(b.val()))
            .unwrap_or_default();
        // `[out, in/groups, k, k]` -> `[(in/groups) * k * k, out]`: rows are what the output
        // channel is summed over, so depthwise (one input per output) becomes `[tap, channel]`.
        let rows = per_group * taps;
        let mut weight = vec![0.0; rows * out];
        for o in 0..out {
            for r in 0..rows {
                weight[r * out + o] = w[o * rows + r];
            }
        }
        Self {
            weight,
            bias,
            kernel: layer.kernel,
            stride: layer.stride,
            activation: if layer.activation {
                Activation::Relu6
            } else {
                Activation::None
            },
        }
    }

    fn out_channels(&self) -> usize {
        self.bias.len()
    }

    /// Rows of the weight matrix: input channels of a 1x1 conv, `in * k * k` for the stem.
    fn rows(&self) -> usize {
        self.weight.len() / self.out_channels()
    }

    fn geometry(&self, padding: PaddingMode, height: usize, width: usize) -> ConvGeometry {
        let (k, s) = (self.kernel, self.stride);
        ConvGeometry {
            height,
            width,
            kernel: k,
            stride: s,
            pad_top: axis_padding(padding, height, k, s).0,
            pad_left: axis_padding(padding, width, k, s).0,
            out_height: conv_output_size(padding, height, k, s),
            out_width: conv_output_size(padding, width, k, s),
        }
    }

    /// 1x1 convolution of `pixels` NHWC rows.
    fn pointwise(&self, input: &[f32], pixels: usize, residual: Option<&[f32]>, out: &mut [f32]) {
        let n = self.out_channels();
        kernels::pointwise(
            input,
            pixels,
            self.rows(),
            &self.weight,
            &self.bias,
            self.activation,
            residual,
            &mut out[..pixels * n],
        );
    }
}

struct Block {
    expand: Option<Layer>,
    depthwise: Layer,
    project: Layer,
    residual: bool,
}

/// Per-thread buffers, grown to the largest layer once and reused across images and batches.
#[derive(Default)]
struct Scratch {
    x: Vec<f32>,
    y: Vec<f32>,
    hidden: Vec<f32>,
    depthwise: Vec<f32>,
    columns: Vec<f32>,
    head: Vec<f32>,
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = RefCell::default();
}

fn grow(buffer: &mut Vec<f32>, len: usize) -> &mut [f32] {
    if buffer.len() < len {
        buffer.resize(len, 0.0);
    }
    &mut buffer[..len]
}

/// One activation map reported by [`FusedNet::forward_taps`]: NHWC values of one image.
pub struct FusedTap {
    pub name: String,
    pub height: usize,
    pub width: usize,
    pub channels: usize,
    pub values: Vec<f32>,
}

/// See the module documentation.
pub struct FusedNet {
    stem: Layer,
    blocks: Vec<Block>,
    head: Layer,
    /// `[features, classes]` weight and bias of the ImageNet top, when kept.
    classifier: Option<(Vec<f32>, Vec<f32>)>,
    stage_ends: Vec<usize>,
    padding: PaddingMode,
}

impl std::fmt::Debug for FusedNet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FusedNet")
            .field("blocks", &self.blocks.len())
            .field("classifier", &self.classifier.is_some())
            .finish_non_exhaustive()
    }
}

impl FusedNet {
    /// Copy `net`'s weights (folding BatchNorm where it is not folded yet).
    pub fn new(net: &MbNet) -> Self {
        Self {
            stem: Layer::from_conv(&net.stem),
            blocks: net
                .blocks
                .iter()
                .map(|b| Block {
                    expand: b.expand.as_ref().map(Layer::from_conv),
                    depthwise: Layer::from_conv(&b.depthwise),
                    project: Layer::from_conv(&b.project),
                    residual: b.residual,
                })
                .collect(),
            head: Layer::from_conv(&net.head),
            classifier: net.classifier.as_ref().map(|linear| {
                // burn's Linear weight is already `[in, out]`.
                let weight = to_vec(linear.weight.val());
                let bias = match &linear.bias {
                    Some(bias) => to_vec(bias.val()),
                    None => vec![0.0; linear.weight.dims()[1]],
                };
                (weight, bias)
            }),
            stage_ends: net.stage_ends.clone(),
            padding: net.stem.padding,
        }
    }

    pub fn has_classifier(&self) -> bool {
        self.classifier.is_some()
    }

    /// Pooled features `[N, head_channels]` of a batch `[N, 3, H, W]`, images in parallel.
    pub fn features(&self, batch: Tensor<4>) -> Tensor<2> {
        let [n, _, h, w] = batch.dims();
        let device = batch.device();
        let input = to_vec(batch);
        let dim = self.head.out_channels();
        let image_len = input.len() / n.max(1);
        let mut features = vec![0.0; n * dim];
        features
            .par_chunks_mut(dim)
            .zip(input.par_chunks(image_len.max(1)))
            .for_each(|(out, image)| {
                SCRATCH
                    .with_borrow_mut(|scratch| self.forward_image(image, h, w, scratch, out, None))
            });
        Tensor::from_data(burn::tensor::TensorData::new(features, [n, dim]), &device)
    }

    /// ImageNet logits `[N, classes]`, or `None` without the top.
    pub fn logits(&self, batch: Tensor<4>) -> Option<Tensor<2>> {
        let (weight, bias) = self.classifier.as_ref()?;
        let features = self.features(batch);
        let [n, dim] = features.dims();
        let device = features.device();
        let features = to_vec(features);
        let mut logits = vec![0.0; n * bias.len()];
        kernels::pointwise(
            &features,
            n,
            dim,
            weight,
            bias,
            Activation::None,
            None,
            &mut logits,
        );
        Some(Tensor::from_data(
            burn::tensor::TensorData::new(logits, [n, bias.len()]),
            &device,
        ))
    }

    /// The stem, the last block of each stage and the head conv (before pooling) of one image
    /// `[3, H, W]`, named like [`MbNet::forward_taps`]; for parity checks.
    pub fn forward_taps(&self, image: &[f32], height: usize, width: usize) -> Vec<FusedTap> {
        let mut taps = Vec::new();
        let mut features = vec![0.0; self.head.out_channels()];
        let mut scratch = Scratch::default();
        self.forward_image(
            image,
            height,
            width,
            &mut scratch,
            &mut features,
            Some(&mut taps),
        );
        taps
    }

    /// Pooled features of one planar image into `out`; with `taps`, copies of the named
    /// activations too (only parity checks ask: they cost copies).
    fn forward_image(
        &self,
        image: &[f32],
        height: usize,
        width: usize,
        scratch: &mut Scratch,
        out: &mut [f32],
        mut taps: Option<&mut Vec<FusedTap>>,
    ) {
        let Scratch {
            x,
            y,
            hidden,
            depthwise,
            columns,
            head,
        } = scratch;
        let want_taps = taps.is_some();
        let mut record = |name: String, values: &[f32], height: usize, width: usize| {
            if let Some(taps) = taps.as_mut() {
                taps.push(FusedTap {
                    name,
                    height,
                    width,
                    channels: values.len() / (height * width),
                    values: values.to_vec(),
                });
            }
        };

        // Stem: im2col a band of output pixels at a time, then one product per band.
        let g = self.stem.geometry(self.padding, height, width);
        let (mut h, mut w) = (g.out_height, g.out_width);
        let mut c = self.stem.out_channels();
        let cols = 3 * g.kernel * g.kernel;
        let stem_out = grow(x, h * w * c);
        let columns = grow(columns, STEM_ROWS * cols);
        for start in (0..h * w).step_by(STEM_ROWS) {
            let rows = STEM_ROWS.min(h * w - start);
            kernels::im2col_planar(image, 3, g, start, rows, columns);
            self.stem.pointwise(
                &columns[..rows * cols],
                rows,
                None,
                &mut stem_out[start * c..],
            );
        }
        record("stem".into(), &x[..h * w * c], h, w);

        for (index, block) in self.blocks.iter().enumerate() {
            let input = &x[..h * w * c];
            let expanded: &[f32] = match &block.expand {
                Some(expand) => {
                    let len = h * w * expand.out_channels();
                    expand.pointwise(input, h * w, None, grow(hidden, len));
                    &hidden[..len]
                }
                None => input,
            };
            let hid = block.depthwise.out_channels();
            let g = block.depthwise.geometry(self.padding, h, w);
            let (oh, ow) = (g.out_height, g.out_width);
            let dw = grow(depthwise, oh * ow * hid);
            kernels::depthwise(
                expanded,
                g,
                &block.depthwise.weight,
                &block.depthwise.bias,
                block.depthwise.activation,
                dw,
            );
            let oc = block.project.out_channels();
            let residual = block.residual.then_some(input);
            block
                .project
                .pointwise(dw, oh * ow, residual, grow(y, oh * ow * oc));
            std::mem::swap(x, y);
            (h, w, c) = (oh, ow, oc);
            if let Some(stage) = self.stage_ends.iter().position(|&end| end == index) {
                record(format!("stage{}", stage + 1), &x[..h * w * c], h, w);
            }
        }

        // Head conv + ReLU6 summed into the pooled features.
        out.fill(0.0);
        let dim = self.head.out_channels();
        kernels::pointwise_relu6_sum(
            &x[..h * w * c],
            h * w,
            c,
            &self.head.weight,
            &self.head.bias,
            head,
            out,
        );
        let scale = 1.0 / (h * w) as f32;
        out.iter_mut().for_each(|v| *v *= scale);
        if want_taps {
            let mut map = vec![0.0; h * w * dim];
            self.head.pointwise(&x[..h * w * c], h * w, None, &mut map);
            record("head".into(), &map, h, w);
        }
    }
}

fn to_vec<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    // cannot fail: every backbone tensor is f32
    t.into_data().try_into_vec::<f32>().expect("f32 weights")
}

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
use super::model::MbNet;
use crate::backbone::fused::profile::{LayerKind, timed};
use crate::backbone::fused::{chw, classify_batch, grow, per_image_maps, to_vec, transpose};
use crate::backbone::source_config::PaddingMode;
use crate::kernels::{self, Activation, ConvGeometry};

/// Rows of the stem's im2col matrix built at a time.
pub(in crate::backbone) const STEM_ROWS: usize = 256;

/// Output pixels per strip of an MBConv block (see [`Block::forward`]).
const STRIP_PIXELS: usize = 256;

/// A convolution's folded weights in the layout its kernel reads.
pub(in crate::backbone) struct Layer {
    /// 1x1: `[in, out]`; depthwise: `[kernel * kernel, channels]`; stem: `[in * k * k, out]`.
    pub(in crate::backbone) weight: Vec<f32>,
    pub(in crate::backbone) bias: Vec<f32>,
    pub(in crate::backbone) kernel: usize,
    pub(in crate::backbone) stride: usize,
    pub(in crate::backbone) activation: Activation,
}

impl Layer {
    /// `layer` with its BatchNorm folded in, its weight transposed for the kernels.
    fn from_conv(layer: &ConvBnAct) -> Self {
        let (weight, bias) = layer.folded();
        let dims = weight.dims();
        Self::from_burn_layout(
            &to_vec(weight),
            dims,
            to_vec(bias),
            (layer.kernel, layer.stride, activation_of(layer)),
        )
    }

    /// A layer from its folded `weight` in burn's `[out, in/groups, k, k]` layout (`dims`),
    /// its `bias`, and its `(kernel, stride, activation)`.
    pub(in crate::backbone) fn from_burn_layout(
        weight: &[f32],
        dims: [usize; 4],
        bias: Vec<f32>,
        (kernel, stride, activation): (usize, usize, Activation),
    ) -> Self {
        let [out, per_group, kh, kw] = dims;
        // `[out, in/groups, k, k]` -> `[(in/groups) * k * k, out]`: rows are what the output
        // channel is summed over, so depthwise (one input per output) becomes `[tap, channel]`.
        let rows = per_group * kh * kw;
        Self {
            weight: transpose(weight, out, rows),
            bias,
            kernel,
            stride,
            activation,
        }
    }

    pub(in crate::backbone) fn out_channels(&self) -> usize {
        self.bias.len()
    }

    /// Rows of the weight matrix: input channels of a 1x1 conv, `in * k * k` for the stem.
    pub(in crate::backbone) fn rows(&self) -> usize {
        self.weight.len() / self.out_channels()
    }

    pub(in crate::backbone) fn geometry(
        &self,
        padding: PaddingMode,
        height: usize,
        width: usize,
    ) -> ConvGeometry {
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
    pub(in crate::backbone) fn pointwise(
        &self,
        input: &[f32],
        pixels: usize,
        residual: Option<&[f32]>,
        out: &mut [f32],
    ) {
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

impl Layer {
    /// The stem: this dense conv on a planar RGB image (`[3, H, W]`) into NHWC `out`; the
    /// direct kernel when it takes the channel count, else im2col a band of output pixels at a
    /// time into `columns` and one product per band.
    pub(in crate::backbone) fn conv_image(
        &self,
        image: &[f32],
        g: ConvGeometry,
        columns: &mut Vec<f32>,
        out: &mut [f32],
    ) {
        if kernels::conv_planar(image, 3, g, &self.weight, &self.bias, self.activation, out) {
            return;
        }
        let (cols, c) = (self.rows(), self.out_channels());
        let columns = grow(columns, STEM_ROWS * cols);
        let pixels = g.out_height * g.out_width;
        for start in (0..pixels).step_by(STEM_ROWS) {
            let rows = STEM_ROWS.min(pixels - start);
            kernels::im2col_planar(image, 3, g, start, rows, columns);
            self.pointwise(&columns[..rows * cols], rows, None, &mut out[start * c..]);
        }
    }
}

struct Block {
    expand: Option<Layer>,
    depthwise: Layer,
    project: Layer,
    residual: bool,
}

impl Block {
    /// The block on `input` (`[height * width, in]`, `g` its depthwise geometry) into `out`, in
    /// horizontal strips of about `STRIP_PIXELS` output pixels: each strip expands only the
    /// input rows it still needs (kept in `hidden` from the strip before), then runs the
    /// depthwise conv and the projection, so the expanded map (6x the channels, megabytes at
    /// full resolution) never leaves the cache.
    fn forward(
        &self,
        input: &[f32],
        g: ConvGeometry,
        hidden: &mut Vec<f32>,
        strip: &mut Vec<f32>,
        out: &mut [f32],
    ) {
        let hid = self.depthwise.out_channels();
        let in_c = input.len() / (g.height * g.width);
        let out_c = self.project.out_channels();
        let row_len = g.width * hid;
        let strip_rows = STRIP_PIXELS.div_ceil(g.out_width).clamp(1, g.out_height);
        // Expanded rows `[lo, hi)` of the image are in `hidden`, from its start.
        let (mut lo, mut hi) = (0, 0);
        for start in (0..g.out_height).step_by(strip_rows) {
            let output = start..(start + strip_rows).min(g.out_height);
            let (first, end) = kernels::Rows::needed(&g, &output);
            let (expanded, input_first): (&[f32], usize) = match &self.expand {
                Some(expand) => {
                    // Drop the rows above this strip's window, keep the overlap, add the rest.
                    let keep = first.max(lo).min(hi);
                    let window = (end - first).max(hi - lo);
                    let hidden_rows = grow(hidden, window * row_len);
                    hidden_rows.copy_within(
                        (keep - lo) * row_len..(hi - lo) * row_len,
                        (keep - first) * row_len,
                    );
                    let new = hi.max(first);
                    timed(LayerKind::Expand, || {
                        expand.pointwise(
                            &input[new * g.width * in_c..end * g.width * in_c],
                            (end - new) * g.width,
                            None,
                            &mut hidden_rows[(new - first) * row_len..],
                        )
                    });
                    (lo, hi) = (first, end);
                    (&hidden[..(end - first) * row_len], first)
                }
                None => (input, 0),
            };
            let pixels = output.len() * g.out_width;
            let strip = grow(strip, pixels * hid);
            let rows = kernels::Rows {
                input_first,
                output: output.clone(),
            };
            timed(LayerKind::Depthwise, || {
                kernels::depthwise(
                    expanded,
                    g,
                    &self.depthwise.weight,
                    &self.depthwise.bias,
                    self.depthwise.activation,
                    &rows,
                    strip,
                )
            });
            let at = output.start * g.out_width;
            // A residual block keeps the resolution and channels: its input rows line up.
            let residual = self
                .residual
                .then(|| &input[at * out_c..(at + pixels) * out_c]);
            timed(LayerKind::Project, || {
                self.project
                    .pointwise(strip, pixels, residual, &mut out[at * out_c..])
            });
        }
    }
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

    /// Pooled features `[N, head_channels]` of a batch `[N, 3, H, W]`, images in parallel.
    pub fn features(&self, batch: Tensor<4>) -> Tensor<2> {
        self.run(batch, None)
    }

    /// ImageNet logits `[N, classes]`, or `None` without the top.
    pub fn logits(&self, batch: Tensor<4>) -> Option<Tensor<2>> {
        let classifier = self.classifier.as_ref()?;
        Some(self.run(batch, Some(classifier)))
    }

    /// The stem and the first `blocks` MBConv blocks of a batch `[N, 3, H, W]`: the feature map
    /// `[N, C, h, w]` entering block `blocks`, on the batch's device, without gradient. For
    /// fine-tuning, where the layers below the first trainable group are frozen: they need no
    /// backward, so they can run here.
    pub fn forward_prefix(&self, batch: Tensor<4>, blocks: usize) -> Tensor<4> {
        per_image_maps(batch, |image, [h, w]| {
            SCRATCH.with_borrow_mut(|scratch| {
                let (oh, ow, c) = self.forward_trunk(image, h, w, blocks, scratch, None);
                chw(&scratch.x[..oh * ow * c], [oh, ow, c])
            })
        })
    }

    /// The head conv's maps `[N, head_channels, h, w]` (after its ReLU6), the ones pooled
    /// into the features: what class activation maps weight (`crate::explain`).
    pub fn last_maps(&self, batch: Tensor<4>) -> Tensor<4> {
        per_image_maps(batch, |image, [h, w]| {
            SCRATCH.with_borrow_mut(|scratch| {
                let (oh, ow, c) = self.forward_trunk(image, h, w, self.blocks.len(), scratch, None);
                let dim = self.head.out_channels();
                let mut map = vec![0.0; oh * ow * dim];
                self.head
                    .pointwise(&scratch.x[..oh * ow * c], oh * ow, None, &mut map);
                chw(&map, [oh, ow, dim])
            })
        })
    }

    /// Every image of `batch` through the backbone on the worker threads, one image at a time
    /// each; then the whole batch through the `classifier` if given (`[features, classes]`
    /// weight and bias: one product for the batch reads its 5 MB once, not once per image).
    fn run(&self, batch: Tensor<4>, classifier: Option<&(Vec<f32>, Vec<f32>)>) -> Tensor<2> {
        let [n, _, h, w] = batch.dims();
        let device = batch.device();
        // Borrow the batch's values rather than copying them out (a batch of 32 is 19 MB).
        let data = batch.into_data();
        // cannot fail: image batches are f32
        let input: &[f32] = data.as_slice().expect("an f32 batch");
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
        let Some((weight, bias)) = classifier else {
            return Tensor::from_data(burn::tensor::TensorData::new(features, [n, dim]), &device);
        };
        let logits = classify_batch(&features, dim, dim, weight, bias);
        Tensor::from_data(
            burn::tensor::TensorData::new(logits, [n, bias.len()]),
            &device,
        )
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
        let (h, w, c) = self.forward_trunk(
            image,
            height,
            width,
            self.blocks.len(),
            scratch,
            taps.as_deref_mut(),
        );
        let x = &scratch.x[..h * w * c];
        // Head conv + ReLU6 summed into the pooled features.
        out.fill(0.0);
        let dim = self.head.out_channels();
        timed(LayerKind::Head, || {
            kernels::pointwise_relu6_sum(
                x,
                h * w,
                c,
                &self.head.weight,
                &self.head.bias,
                &mut scratch.head,
                out,
            )
        });
        let scale = 1.0 / (h * w) as f32;
        out.iter_mut().for_each(|v| *v *= scale);
        if let Some(taps) = taps {
            let mut map = vec![0.0; h * w * dim];
            self.head.pointwise(x, h * w, None, &mut map);
            taps.push(FusedTap {
                name: "head".into(),
                height: h,
                width: w,
                channels: dim,
                values: map,
            });
        }
    }

    /// The stem and the first `blocks` blocks of one planar image; the result is left NHWC in
    /// `scratch.x`, its `(height, width, channels)` returned.
    fn forward_trunk(
        &self,
        image: &[f32],
        height: usize,
        width: usize,
        blocks: usize,
        scratch: &mut Scratch,
        mut taps: Option<&mut Vec<FusedTap>>,
    ) -> (usize, usize, usize) {
        let Scratch {
            x,
            y,
            hidden,
            depthwise,
            columns,
            head: _,
        } = scratch;
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
        let g = self.stem.geometry(self.padding, height, width);
        let (mut h, mut w) = (g.out_height, g.out_width);
        let mut c = self.stem.out_channels();
        let stem_out = grow(x, h * w * c);
        timed(LayerKind::Stem, || {
            self.stem.conv_image(image, g, columns, stem_out)
        });
        record("stem".into(), &x[..h * w * c], h, w);

        for (index, block) in self.blocks[..blocks].iter().enumerate() {
            let g = block.depthwise.geometry(self.padding, h, w);
            let oc = block.project.out_channels();
            block.forward(
                &x[..h * w * c],
                g,
                hidden,
                depthwise,
                grow(y, g.out_height * g.out_width * oc),
            );
            std::mem::swap(x, y);
            (h, w, c) = (g.out_height, g.out_width, oc);
            if let Some(stage) = self.stage_ends.iter().position(|&end| end == index) {
                record(format!("stage{}", stage + 1), &x[..h * w * c], h, w);
            }
        }
        (h, w, c)
    }
}

/// What follows `layer`'s convolution, for the kernels.
pub(in crate::backbone) fn activation_of(layer: &ConvBnAct) -> Activation {
    if layer.activation {
        Activation::Relu6
    } else {
        Activation::None
    }
}

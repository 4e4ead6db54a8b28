//! What the fused CPU forms of every family share, and no family owns: the [`FusedForward`]
//! contract [`Backbone`](crate::backbone::Backbone) runs, the per-image loops over a batch on the worker
//! threads, the batched classifier, buffers and layouts. The families' fused forms
//! (`mbconv::fused`, `resnet::fused`, `convnext::fused`, `vit::fused`) use this module; it uses
//! none of them.

pub mod buffer_pool;
pub(in crate::backbone) mod layers;
pub(in crate::backbone) mod params;
pub mod profile;
#[cfg(test)]
pub(in crate::backbone) mod testing;
pub mod train;

use burn::tensor::{Tensor, TensorData};
use rayon::prelude::*;

use crate::kernels::{self, Activation};
use profile::{LayerKind, timed};

/// A family's inference-only CPU form (see [`Backbone::for_inference`](crate::backbone::Backbone::for_inference)):
/// the same outputs as the burn network, to float rounding.
pub trait FusedForward: std::fmt::Debug + Send + Sync {
    /// Pooled features `[N, feature_dim]` of a batch `[N, 3, H, W]`.
    fn features(&self, batch: Tensor<4>) -> Tensor<2>;
    /// Logits of the pretrained classifier, or `None` without it.
    fn logits(&self, batch: Tensor<4>) -> Option<Tensor<2>>;
    /// A CNN's last-stage maps `[N, C, h, w]`, the ones pooled into the features (for class
    /// activation maps, `crate::explain`); `None` for a family without one.
    fn last_maps(&self, _batch: Tensor<4>) -> Option<Tensor<4>> {
        None
    }
    /// A ViT's tokens `[N, L, dim]` entering its last block (for Grad-CAM); `None` otherwise.
    fn last_block_input(&self, _batch: Tensor<4>) -> Option<Tensor<3>> {
        None
    }
}

/// `buffer` grown to at least `len` values: its first `len`.
pub(in crate::backbone) fn grow(buffer: &mut Vec<f32>, len: usize) -> &mut [f32] {
    if buffer.len() < len {
        buffer.resize(len, 0.0);
    }
    &mut buffer[..len]
}

/// The `[columns, rows]` transpose of the row-major `[rows, columns]` matrix `values`.
pub(in crate::backbone) fn transpose(values: &[f32], rows: usize, columns: usize) -> Vec<f32> {
    assert_eq!(values.len(), rows * columns);
    let mut out = vec![0.0; values.len()];
    for (r, row) in values.chunks_exact(columns.max(1)).enumerate() {
        for (c, v) in row.iter().enumerate() {
            out[c * rows + r] = *v;
        }
    }
    out
}

/// `features @ weight + bias` for every row of `features` (`width` values each, of which the
/// first `dim` feed the classifier: `[dim, classes]`), the whole batch at once: a share of the
/// rows per worker thread, so that the classifier's weights are read once per share, not once
/// per image, and no core waits for this step.
pub(in crate::backbone) fn classify_batch(
    features: &[f32],
    width: usize,
    dim: usize,
    weight: &[f32],
    bias: &[f32],
) -> Vec<f32> {
    let n = features.len() / width.max(1);
    let classes = bias.len();
    let mut logits = vec![0.0; n * classes];
    let rows = n.div_ceil(rayon::current_num_threads()).max(1);
    logits
        .par_chunks_mut(rows * classes)
        .zip(features.par_chunks(rows * width))
        .for_each(|(logits, features)| {
            timed(LayerKind::Classifier, || {
                let share = features.len() / width;
                // The classifier's inputs, contiguous (a copy only when `width > dim`).
                let inputs: std::borrow::Cow<'_, [f32]> = if width == dim {
                    features.into()
                } else {
                    features
                        .chunks_exact(width)
                        .flat_map(|row| &row[..dim])
                        .copied()
                        .collect::<Vec<f32>>()
                        .into()
                };
                kernels::pointwise(
                    &inputs,
                    share,
                    dim,
                    weight,
                    bias,
                    Activation::None,
                    None,
                    logits,
                )
            })
        });
    logits
}

/// Every image of `batch` (`[N, 3, H, W]`) through `forward_image(image, [H, W])` on the
/// worker threads, each giving a `[C, H', W']` map: the `[N, C, H', W']` batch of them (a frozen
/// prefix's output, for burn to go on from).
pub(in crate::backbone) fn per_image_maps(
    batch: Tensor<4>,
    forward_image: impl Fn(&[f32], [usize; 2]) -> (Vec<f32>, [usize; 3]) + Sync,
) -> Tensor<4> {
    let [n, _, h, w] = batch.dims();
    let device = batch.device();
    let data = batch.into_data();
    // cannot fail: image batches are f32
    let input: &[f32] = data.as_slice().expect("an f32 batch");
    let image_len = input.len() / n.max(1);
    let maps: Vec<(Vec<f32>, [usize; 3])> = input
        .par_chunks(image_len.max(1))
        .map(|image| forward_image(image, [h, w]))
        .collect();
    let [c, oh, ow] = maps.first().map_or([0, 0, 0], |(_, shape)| *shape);
    let flat: Vec<f32> = maps.into_iter().flat_map(|(chw, _)| chw).collect();
    Tensor::from_data(TensorData::new(flat, [n, c, oh, ow]), &device)
}

/// An NHWC map of `[height, width, channels]` as CHW (burn's layout), with its shape.
pub(in crate::backbone) fn chw(
    nhwc: &[f32],
    [height, width, channels]: [usize; 3],
) -> (Vec<f32>, [usize; 3]) {
    let pixels = height * width;
    let mut out = vec![0.0; channels * pixels];
    for (pixel, values) in nhwc[..pixels * channels].chunks_exact(channels).enumerate() {
        for (channel, v) in values.iter().enumerate() {
            out[channel * pixels + pixel] = *v;
        }
    }
    (out, [channels, height, width])
}

/// A fused form that pools each image to one row (ResNet, ConvNeXt, ViT): its
/// [`FusedForward`] follows from these three.
pub(in crate::backbone) trait PooledForward:
    std::fmt::Debug + Send + Sync
{
    /// Values per row of [`PooledForward::pooled`].
    fn row_width(&self) -> usize;
    /// `[N * row_width]` rows of a batch `[N, 3, H, W]`: the pooled features.
    fn pooled(&self, batch: Tensor<4>) -> Vec<f32>;
    /// The pretrained classifier, if kept.
    fn classifier(&self) -> Option<Classifier<'_>>;
    /// See [`FusedForward::last_maps`].
    fn last_maps(&self, _batch: Tensor<4>) -> Option<Tensor<4>> {
        None
    }
    /// See [`FusedForward::last_block_input`].
    fn last_block_input(&self, _batch: Tensor<4>) -> Option<Tensor<3>> {
        None
    }
}

/// A classifier on pooled rows: `[inputs, classes]` weight and bias, reading the first
/// `inputs` values of each row.
pub(in crate::backbone) struct Classifier<'a> {
    pub weight: &'a [f32],
    pub bias: &'a [f32],
    pub inputs: usize,
}

impl<T: PooledForward> FusedForward for T {
    fn features(&self, batch: Tensor<4>) -> Tensor<2> {
        let [n, ..] = batch.dims();
        let device = batch.device();
        let rows = self.pooled(batch);
        Tensor::from_data(TensorData::new(rows, [n, self.row_width()]), &device)
    }

    fn logits(&self, batch: Tensor<4>) -> Option<Tensor<2>> {
        let classifier = self.classifier()?;
        let [n, ..] = batch.dims();
        let device = batch.device();
        let rows = self.pooled(batch);
        let logits = classify_batch(
            &rows,
            self.row_width(),
            classifier.inputs,
            classifier.weight,
            classifier.bias,
        );
        let classes = classifier.bias.len();
        Some(Tensor::from_data(
            TensorData::new(logits, [n, classes]),
            &device,
        ))
    }

    fn last_maps(&self, batch: Tensor<4>) -> Option<Tensor<4>> {
        PooledForward::last_maps(self, batch)
    }

    fn last_block_input(&self, batch: Tensor<4>) -> Option<Tensor<3>> {
        PooledForward::last_block_input(self, batch)
    }
}

/// Every image of `batch` (`[N, 3, H, W]`) through `forward_image(image, [H, W], out)` on the
/// worker threads, one image per task, each writing its `width` outputs: `[N * width]`. The
/// per-image loop of the non-MBConv fused forms (ResNet, ConvNeXt, ViT).
pub(in crate::backbone) fn per_image(
    batch: Tensor<4>,
    width: usize,
    forward_image: impl Fn(&[f32], [usize; 2], &mut [f32]) + Sync,
) -> Vec<f32> {
    per_group(batch, width, 1, |images, _, size, out| {
        forward_image(images, size, out)
    })
}

/// [`per_image`] in groups of up to `max_group` consecutive images per task:
/// `forward_group(images, count, [H, W], out)` gets `count` images back to back and writes
/// `count * width` outputs. Groups are made smaller rather than leave a worker thread idle.
pub(in crate::backbone) fn per_group(
    batch: Tensor<4>,
    width: usize,
    max_group: usize,
    forward_group: impl Fn(&[f32], usize, [usize; 2], &mut [f32]) + Sync,
) -> Vec<f32> {
    let [n, _, h, w] = batch.dims();
    let data = batch.into_data();
    // cannot fail: image batches are f32
    let input: &[f32] = data.as_slice().expect("an f32 batch");
    let image_len = input.len() / n.max(1);
    // As many tasks as a whole number of rounds over the threads needs, all of one size, so
    // that no thread waits on a last small group (32 images, 2 threads, groups of up to 10:
    // four groups of 8, not 10 + 10 + 10 + 2).
    let threads = rayon::current_num_threads().max(1);
    let rounds = n.div_ceil(threads * max_group.max(1)).max(1);
    let group = n.div_ceil(threads * rounds).max(1);
    let mut features = vec![0.0; n * width];
    features
        .par_chunks_mut((group * width).max(1))
        .zip(input.par_chunks((group * image_len).max(1)))
        .for_each(|(out, images)| {
            forward_group(images, images.len() / image_len.max(1), [h, w], out)
        });
    features
}

/// The values of a float tensor.
pub(in crate::backbone) fn to_vec<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    // cannot fail: every backbone tensor is f32
    t.into_data().try_into_vec::<f32>().expect("f32 weights")
}

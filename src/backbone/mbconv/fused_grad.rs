//! The training form of the fused MBConv network: the pooled features as one burn autodiff op
//! (through [`crate::backbone::fused::train`]) with its own backward pass, for fine-tuning (and
//! SimCLR) with BatchNorm frozen.
//!
//! burn differentiates the network op by op, NCHW, with a separate pass for every bias, clamp
//! and add, and its depthwise-conv gradients loop over the channels; that made a training step
//! 2x slower than PyTorch's (`bench/train_step.sh`). Here the forward runs the inference kernels
//! (NHWC, one image per worker thread) and keeps every activation map; the backward runs
//! [`crate::kernels`]' backward kernels on them: a 1x1 conv's gradients are two `gemm` products,
//! a depthwise conv's weight and input gradients one pass over its output gradient, ReLU6 a
//! mask from its saved output.
//!
//! The op's parameter vector holds every trained conv's BatchNorm-folded weight and bias,
//! concatenated by burn in [`features`]; burn's autodiff carries the op's gradient of that
//! vector back through the concatenation and the folding to the weights, gammas and betas.

use std::sync::Arc;

use burn::backend::flex::FlexTensor;
use burn::tensor::{Tensor, TensorData};
use rayon::prelude::*;

use super::blocks::ConvBnAct;
use super::fused::{Layer, STEM_ROWS, activation_of};
use super::model::MbNet;
use crate::backbone::family::Start;
use crate::backbone::fused::buffer_pool;
use crate::backbone::fused::profile::{LayerKind, timed};
use crate::backbone::fused::train::{self, ConvSlot, FusedPlan, SavedForward};
use crate::backbone::fused::{grow, transpose};
use crate::backbone::source_config::PaddingMode;
use crate::kernels::{self, Activation, ConvGeometry};

/// Pooled features `[N, head_channels]` of `x` through `net` from `start` (the image batch, or
/// the feature map entering block `n`), on the fused CPU kernels, differentiable with respect
/// to every parameter of the layers it runs (BatchNorm on its running statistics, as in
/// [`ConvBnAct::folded`]). Equals [`MbNet::forward_features_from`] to float rounding.
pub fn features(net: &MbNet, start: Start, x: Tensor<4>) -> Tensor<2> {
    let (plan, layers) = TrainPlan::new(net, start);
    let params = Tensor::cat(
        layers
            .iter()
            .flat_map(|layer| {
                let (weight, bias) = layer.folded();
                [weight.flatten::<1>(0, 3), bias]
            })
            .collect(),
        0,
    );
    train::features(x, params, Arc::new(plan))
}

/// Indices into [`TrainPlan::convs`] of one MBConv block's layers.
#[derive(Debug, Clone, Copy)]
struct BlockSlots {
    expand: Option<usize>,
    depthwise: usize,
    project: usize,
    residual: bool,
}

/// The layers the op runs, in the order of the flat parameter vector (see [`features`]).
#[derive(Debug)]
pub struct TrainPlan {
    convs: Vec<ConvSlot>,
    /// `None` when the op starts at a block (the stem is frozen and ran before).
    stem: Option<usize>,
    blocks: Vec<BlockSlots>,
    head: usize,
    padding: PaddingMode,
    len: usize,
}

impl TrainPlan {
    /// The plan for `net` from `start`, and its convs in parameter order.
    fn new(net: &MbNet, start: Start) -> (Self, Vec<&ConvBnAct>) {
        fn push<'a>(order: &mut Vec<&'a ConvBnAct>, layer: &'a ConvBnAct) -> usize {
            order.push(layer);
            order.len() - 1
        }
        let mut order = Vec::new();
        let first = match start {
            Start::Image => 0,
            Start::Block(n) => n.min(net.blocks.len()),
        };
        let stem = (start == Start::Image).then(|| push(&mut order, &net.stem));
        let mut blocks = Vec::new();
        for b in &net.blocks[first..] {
            let expand = b.expand.as_ref().map(|e| push(&mut order, e));
            blocks.push(BlockSlots {
                expand,
                depthwise: push(&mut order, &b.depthwise),
                project: push(&mut order, &b.project),
                residual: b.residual,
            });
        }
        let head = push(&mut order, &net.head);
        let mut len = 0;
        let convs = order
            .iter()
            .map(|layer| {
                let slot = ConvSlot {
                    at: len,
                    dims: layer.weight.dims(),
                    kernel: layer.kernel,
                    stride: layer.stride,
                    activation: activation_of(layer),
                };
                len += slot.len();
                slot
            })
            .collect();
        let plan = Self {
            convs,
            stem,
            blocks,
            head,
            padding: net.stem.padding,
            len,
        };
        (plan, order)
    }

    /// The convs' kernel-layout weights from the flat parameter vector.
    fn layers(&self, params: &[f32]) -> Vec<Layer> {
        assert_eq!(
            params.len(),
            self.len,
            "parameter vector of the plan's size"
        );
        self.convs
            .iter()
            .map(|s| {
                let weight = &params[s.at..][..s.weight_len()];
                let bias = params[s.at + s.weight_len()..][..s.dims[0]].to_vec();
                Layer::from_burn_layout(weight, s.dims, bias, (s.kernel, s.stride, s.activation))
            })
            .collect()
    }

    /// Gradients laid out like the plan with kernel-layout weights -> burn's layout.
    fn to_burn_layout(&self, mut grads: Vec<f32>) -> Vec<f32> {
        for s in &self.convs {
            let (weight, _) = s.split_mut(&mut grads);
            let [out, per_group, kh, kw] = s.dims;
            let burn = transpose(weight, per_group * kh * kw, out);
            weight.copy_from_slice(&burn);
        }
        grads
    }
}

/// One MBConv block's saved maps (NHWC) for the backward pass.
struct SavedBlock {
    geometry: ConvGeometry,
    /// The expand conv's output (after ReLU6), when the block has one.
    expanded: Option<Vec<f32>>,
    /// The depthwise conv's output (after ReLU6).
    depthwise: Vec<f32>,
}

/// What one image's forward pass keeps for its backward pass.
struct SavedImage {
    /// The input of each block and, last, of the head conv (the stem's output first when the
    /// stem runs).
    inputs: Vec<Vec<f32>>,
    blocks: Vec<SavedBlock>,
    /// The head conv's output (after ReLU6), before pooling.
    head: Vec<f32>,
}

/// A batch's forward pass, kept by burn's autodiff graph until the backward pass.
pub struct SavedBatch {
    plan: Arc<TrainPlan>,
    layers: Vec<Layer>,
    /// The planar input images, for the stem's weight gradient (empty when the stem is frozen).
    images: Vec<f32>,
    image_shape: [usize; 3],
    saved: Vec<SavedImage>,
}

impl std::fmt::Debug for SavedBatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SavedBatch")
            .field("images", &self.saved.len())
            .finish_non_exhaustive()
    }
}

impl FusedPlan for TrainPlan {
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

/// The features `[N, head_channels]` of a batch, and with `save` what the backward pass needs.
fn forward_batch(
    plan: Arc<TrainPlan>,
    images: &FlexTensor,
    params: &FlexTensor,
    save: bool,
) -> (FlexTensor, Option<SavedBatch>) {
    let images = images.to_contiguous();
    let params = params.to_contiguous();
    let shape = images.layout().shape().to_vec();
    let [n, c, h, w] = [shape[0], shape[1], shape[2], shape[3]];
    // cannot fail: graft's tensors are f32
    let images: &[f32] = images.as_slice().expect("f32 images");
    let params: &[f32] = params.as_slice().expect("f32 parameters");
    let layers = plan.layers(params);
    let dim = layers[plan.head].out_channels();
    let per_image: Vec<(Vec<f32>, SavedImage)> = images
        .par_chunks((c * h * w).max(1))
        .map(|image| forward_image(&plan, &layers, image, [c, h, w]))
        .collect();
    let mut features = Vec::with_capacity(n * dim);
    let mut saved = Vec::with_capacity(n);
    for (f, s) in per_image {
        features.extend_from_slice(&f);
        saved.push(s);
    }
    let features = FlexTensor::from_data(TensorData::new(features, [n, dim]));
    let saved = save.then(|| SavedBatch {
        images: if plan.stem.is_some() {
            images.to_vec()
        } else {
            Vec::new()
        },
        plan,
        layers,
        image_shape: [c, h, w],
        saved,
    });
    (features, saved)
}

/// One image (`[c, h, w]` planar) through the plan: its pooled features and saved maps.
fn forward_image(
    plan: &TrainPlan,
    layers: &[Layer],
    image: &[f32],
    [c, mut h, mut w]: [usize; 3],
) -> (Vec<f32>, SavedImage) {
    let mut x = match plan.stem {
        Some(stem) => {
            let stem = &layers[stem];
            let g = stem.geometry(plan.padding, h, w);
            (h, w) = (g.out_height, g.out_width);
            let mut out = buffer_pool::take(h * w * stem.out_channels());
            timed(LayerKind::Stem, || {
                stem.conv_image(image, g, &mut Vec::new(), &mut out)
            });
            out
        }
        // The feature map entering the first block, CHW -> HWC.
        None => transpose(image, c, h * w),
    };
    let mut inputs = Vec::with_capacity(plan.blocks.len() + 1);
    let mut blocks = Vec::with_capacity(plan.blocks.len());
    for b in &plan.blocks {
        let expanded = b.expand.map(|e| {
            let expand = &layers[e];
            let mut out = buffer_pool::take(h * w * expand.out_channels());
            timed(LayerKind::Expand, || {
                expand.pointwise(&x, h * w, None, &mut out)
            });
            out
        });
        let dw = &layers[b.depthwise];
        let g = dw.geometry(plan.padding, h, w);
        let pixels = g.out_height * g.out_width;
        let mut depthwise = buffer_pool::take(pixels * dw.out_channels());
        timed(LayerKind::Depthwise, || {
            kernels::depthwise(
                expanded.as_deref().unwrap_or(&x),
                g,
                &dw.weight,
                &dw.bias,
                dw.activation,
                &kernels::Rows::all(&g),
                &mut depthwise,
            )
        });
        let project = &layers[b.project];
        let mut y = buffer_pool::take(pixels * project.out_channels());
        timed(LayerKind::Project, || {
            project.pointwise(&depthwise, pixels, b.residual.then_some(&x[..]), &mut y)
        });
        inputs.push(std::mem::replace(&mut x, y));
        blocks.push(SavedBlock {
            geometry: g,
            expanded,
            depthwise,
        });
        (h, w) = (g.out_height, g.out_width);
    }
    let head = &layers[plan.head];
    let dim = head.out_channels();
    let mut head_out = buffer_pool::take(h * w * dim);
    let mut features = vec![0.0; dim];
    timed(LayerKind::Head, || {
        head.pointwise(&x, h * w, None, &mut head_out);
        kernels::add_column_sums(&head_out, &mut features);
    });
    let scale = 1.0 / (h * w).max(1) as f32;
    features.iter_mut().for_each(|v| *v *= scale);
    inputs.push(x);
    let saved = SavedImage {
        inputs,
        blocks,
        head: head_out,
    };
    (features, saved)
}

impl SavedForward for SavedBatch {
    /// The gradient of the flat parameter vector from the features' gradient `[N, dim]`:
    /// images on the worker threads, each thread summing into its own gradient vector.
    fn backward(&self, d_features: &FlexTensor) -> FlexTensor {
        let d_features = d_features.to_contiguous();
        // cannot fail: graft's tensors are f32
        let d_features: &[f32] = d_features.as_slice().expect("f32 gradient");
        let n = self.saved.len();
        let dim = d_features.len() / n.max(1);
        let len = self.plan.len;
        let image_len = self.image_shape.iter().product::<usize>();
        let per_thread = n.div_ceil(rayon::current_num_threads()).max(1);
        let grads = (0..n)
            .into_par_iter()
            .with_min_len(per_thread)
            .fold(
                || buffer_pool::zeroed(len),
                |mut grads, i| {
                    let image = self.images.get(i * image_len..(i + 1) * image_len);
                    self.backward_image(
                        &self.saved[i],
                        image.unwrap_or(&[]),
                        &d_features[i * dim..][..dim],
                        &mut grads,
                    );
                    grads
                },
            )
            .reduce_with(|mut sum, other| {
                sum.iter_mut().zip(&other).for_each(|(s, o)| *s += o);
                buffer_pool::give(other);
                sum
            })
            .unwrap_or_else(|| vec![0.0; len]);
        let grads = self.plan.to_burn_layout(grads);
        FlexTensor::from_data(TensorData::new(grads, [len]))
    }
}

impl SavedBatch {
    /// Adds one image's parameter gradients (kernel layout) into `grads`.
    fn backward_image(
        &self,
        saved: &SavedImage,
        image: &[f32],
        d_features: &[f32],
        grads: &mut [f32],
    ) {
        let plan = &*self.plan;
        let layers = &self.layers;
        // Head conv + global average pool.
        let head = &layers[plan.head];
        let dim = head.out_channels();
        let pixels = saved.head.len() / dim;
        let head_input = &saved.inputs[plan.blocks.len()];
        let needs_input_grad = !plan.blocks.is_empty() || plan.stem.is_some();
        let d_head_input = timed(LayerKind::HeadBackward, || {
            let mut dz = buffer_pool::take(saved.head.len());
            let scale = 1.0 / pixels.max(1) as f32;
            for row in dz.chunks_exact_mut(dim) {
                for (d, g) in row.iter_mut().zip(d_features) {
                    *d = g * scale;
                }
            }
            if head.activation == Activation::Relu6 {
                kernels::relu6_backward(&mut dz, &saved.head);
            }
            self.pointwise_backward(plan.head, head_input, pixels, dz, grads, needs_input_grad)
        });
        let Some(mut dx) = d_head_input else {
            return;
        };
        for (i, b) in plan.blocks.iter().enumerate().rev() {
            let s = &saved.blocks[i];
            let g = s.geometry;
            let input = &saved.inputs[i];
            let needs_input_grad = i > 0 || plan.stem.is_some();
            // dx is the gradient of the block's output: the projection's output (linear in
            // the built-in architectures), the residual added before any activation.
            let out_pixels = g.out_height * g.out_width;
            let project = &layers[b.project];
            let (dd, residual) = timed(LayerKind::ProjectBackward, || {
                if project.activation == Activation::Relu6 {
                    kernels::relu6_backward(&mut dx, &saved.inputs[i + 1]);
                }
                let residual = b.residual.then(|| {
                    let mut copy = buffer_pool::take(dx.len());
                    copy.copy_from_slice(&dx);
                    copy
                });
                let dd = self
                    .pointwise_backward(b.project, &s.depthwise, out_pixels, dx, grads, true)
                    // cannot fail: the projection's input gradient was asked for
                    .expect("projection input gradient");
                (dd, residual)
            });
            debug_assert_eq!(dd.len(), out_pixels * project.rows());
            let d_expanded = timed(LayerKind::DepthwiseBackward, || {
                self.depthwise_backward(
                    b.depthwise,
                    s.expanded.as_deref().unwrap_or(input),
                    g,
                    &s.depthwise,
                    dd,
                    grads,
                    b.expand.is_some() || needs_input_grad,
                )
            });
            let d_input = match (b.expand, d_expanded) {
                (Some(e), Some(mut de)) => timed(LayerKind::ExpandBackward, || {
                    // cannot fail: blocks with an expand conv save its output
                    let expanded = s.expanded.as_deref().expect("saved expand output");
                    kernels::relu6_backward(&mut de, expanded);
                    self.pointwise_backward(
                        e,
                        input,
                        g.height * g.width,
                        de,
                        grads,
                        needs_input_grad,
                    )
                }),
                (_, d) => d,
            };
            let Some(mut d_input) = d_input else {
                return;
            };
            if let Some(residual) = residual {
                timed(LayerKind::ProjectBackward, || {
                    d_input.iter_mut().zip(&residual).for_each(|(d, r)| *d += r)
                });
                buffer_pool::give(residual);
            }
            dx = d_input;
        }
        if let Some(stem) = plan.stem {
            timed(LayerKind::StemBackward, || {
                self.stem_backward(stem, image, &saved.inputs[0], dx, grads)
            });
        }
    }

    /// Backward of a 1x1 conv from `dz`, the gradient of its output before the activation:
    /// adds its weight and bias gradients; returns its input's gradient when `input_grad`.
    fn pointwise_backward(
        &self,
        conv: usize,
        input: &[f32],
        pixels: usize,
        dz: Vec<f32>,
        grads: &mut [f32],
        input_grad: bool,
    ) -> Option<Vec<f32>> {
        let layer = &self.layers[conv];
        let (d_weight, d_bias) = self.plan.convs[conv].split_mut(grads);
        kernels::weight_gradient(&input[..pixels * layer.rows()], pixels, &dz, d_weight);
        kernels::add_column_sums(&dz, d_bias);
        let d_input = input_grad.then(|| {
            let mut d_input = buffer_pool::take(pixels * layer.rows());
            kernels::input_gradient(&dz, pixels, &layer.weight, &mut d_input);
            d_input
        });
        buffer_pool::give(dz);
        d_input
    }

    /// Backward of a depthwise conv with ReLU6 from its output's gradient `d_out`: adds its
    /// weight and bias gradients; returns its input's gradient when `input_grad`.
    #[allow(clippy::too_many_arguments)]
    fn depthwise_backward(
        &self,
        conv: usize,
        input: &[f32],
        g: ConvGeometry,
        output: &[f32],
        mut d_out: Vec<f32>,
        grads: &mut [f32],
        input_grad: bool,
    ) -> Option<Vec<f32>> {
        let layer = &self.layers[conv];
        if layer.activation == Activation::Relu6 {
            kernels::relu6_backward(&mut d_out, output);
        }
        let (d_weight, d_bias) = self.plan.convs[conv].split_mut(grads);
        kernels::add_column_sums(&d_out, d_bias);
        let mut d_input = input_grad.then(|| buffer_pool::zeroed(input.len()));
        kernels::depthwise_backward(
            input,
            g,
            &layer.weight,
            &d_out,
            d_weight,
            d_input.as_deref_mut(),
        );
        buffer_pool::give(d_out);
        d_input
    }

    /// The stem's weight and bias gradients from its output's gradient `d_out`.
    fn stem_backward(
        &self,
        stem: usize,
        image: &[f32],
        output: &[f32],
        mut d_out: Vec<f32>,
        grads: &mut [f32],
    ) {
        let layer = &self.layers[stem];
        if layer.activation == Activation::Relu6 {
            kernels::relu6_backward(&mut d_out, output);
        }
        let [_, h, w] = self.image_shape;
        let g = layer.geometry(self.plan.padding, h, w);
        let (cols, c) = (layer.rows(), layer.out_channels());
        let (d_weight, d_bias) = self.plan.convs[stem].split_mut(grads);
        kernels::add_column_sums(&d_out, d_bias);
        let pixels = g.out_height * g.out_width;
        let mut columns = Vec::new();
        let columns = grow(&mut columns, STEM_ROWS * cols);
        for start in (0..pixels).step_by(STEM_ROWS) {
            let rows = STEM_ROWS.min(pixels - start);
            kernels::im2col_planar(image, 3, g, start, rows, columns);
            kernels::weight_gradient(
                &columns[..rows * cols],
                rows,
                &d_out[start * c..(start + rows) * c],
                d_weight,
            );
        }
        buffer_pool::give(d_out);
    }
}

impl Drop for SavedImage {
    /// The maps go back to the pool for the next step's forward pass.
    fn drop(&mut self) {
        let blocks = self.blocks.drain(..);
        let maps = blocks.flat_map(|b| b.expanded.into_iter().chain([b.depthwise]));
        for map in maps
            .chain(self.inputs.drain(..))
            .chain([std::mem::take(&mut self.head)])
        {
            buffer_pool::give(map);
        }
    }
}

#[cfg(test)]
pub(in crate::backbone) mod tests {
    use super::*;
    use crate::backbone::fused::testing::{Compare, values};
    use crate::backbone::mbconv::{MbNetSpec, StageSpec};
    use crate::backbone::source_config::PaddingMode;
    use crate::rng::{RunRng, random_tensor, run_rng, sample};
    use crate::train::freeze::{BnMode, set_trainable};
    use burn::module::{Module, Param, RunningState};
    use burn::optim::GradientsParams;
    use burn::tensor::{Device, Distribution};

    /// Random BatchNorm scale, shift and statistics, so that folding matters.
    fn randomise_batch_norm(layer: &mut ConvBnAct, rng: &mut RunRng, device: &Device) {
        let [c, ..] = layer.weight.dims();
        let mut random = |d| random_tensor::<1>([c], d, rng, device);
        let bn = &mut layer.bn;
        bn.gamma = Param::from_tensor(random(Distribution::Uniform(0.5, 1.5)));
        bn.beta = Param::from_tensor(random(Distribution::Normal(0.0, 0.3)));
        bn.running_mean = RunningState::new(random(Distribution::Normal(0.0, 0.3)));
        bn.running_var = RunningState::new(random(Distribution::Uniform(0.5, 2.0)));
    }

    /// `spec` with random weights and BatchNorm drawn from `rng`, every layer trainable with
    /// BN frozen, on the autodiff device.
    fn random_net(
        spec: &MbNetSpec,
        padding: PaddingMode,
        groups: usize,
        rng: &mut RunRng,
    ) -> MbNet {
        let device = crate::backend::device();
        let mut net = MbNet::init(spec, padding, 1e-3, false, rng, &device);
        randomise_batch_norm(&mut net.stem, rng, &device);
        for block in &mut net.blocks {
            if let Some(expand) = &mut block.expand {
                randomise_batch_norm(expand, rng, &device);
            }
            randomise_batch_norm(&mut block.depthwise, rng, &device);
            randomise_batch_norm(&mut block.project, rng, &device);
        }
        randomise_batch_norm(&mut net.head, rng, &device);
        let net = net.for_training(&device.autodiff());
        let all: Vec<usize> = (0..groups).collect();
        set_trainable(net.into(), &all, BnMode::Frozen)
            .into_mbconv()
            .unwrap()
    }

    /// The loss `sum(features * weights)` and every parameter's gradient, by burn's autodiff
    /// of the network's modules or by the fused op.
    fn gradients(
        net: &MbNet,
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

    /// The fused op's loss and gradients equal burn's autodiff of the modules, for the loss
    /// `sum(features * weights)` with random `weights`.
    fn assert_same_gradients(
        net: &MbNet,
        start: Start,
        x: Tensor<4>,
        tolerance: f32,
        rng: &mut RunRng,
    ) {
        let device = x.device();
        let dim = net.head.out_channels();
        let normal = Distribution::Normal(0.0, 1.0);
        let weights = random_tensor::<2>([x.dims()[0], dim], normal, rng, &device);
        let (loss, burn) = gradients(net, start, x.clone(), &weights, false);
        let (loss_fused, fused) = gradients(net, start, x, &weights, true);
        assert!(
            (loss - loss_fused).abs() <= 1e-4 * loss.abs().max(1.0),
            "loss {loss} vs {loss_fused}"
        );
        let mut compare = Compare::new(&burn, &fused, tolerance);
        net.visit(&mut compare);
        // conv weight, gamma and beta of every layer the pass runs.
        let convs = TrainPlan::new(net, start).1.len();
        assert_eq!(compare.compared, 3 * convs);
    }

    #[test]
    fn fused_gradients_equal_burns_for_every_parameter() {
        let info = crate::backbone::find("efficientnet-lite0").unwrap();
        let groups = info.mbconv().unwrap().0.stages.len() + 2;
        let device = crate::backend::device().autodiff();
        let mut rng = run_rng(7, 0);
        let normal = Distribution::Normal(0.0, 1.0);
        for (padding, [h, w]) in [
            (PaddingMode::Symmetric, [64, 64]),
            (PaddingMode::TfSame, [57, 70]),
        ] {
            let net = random_net(&info.mbconv().unwrap().0, padding, groups, &mut rng);
            let x = random_tensor::<4>([3, 3, h, w], normal, &mut rng, &device);
            assert_same_gradients(&net, Start::Image, x, 2e-3, &mut rng);
        }
        // From the block after stage 3 (the frozen prefix's output in fine-tuning).
        let net = random_net(
            &info.mbconv().unwrap().0,
            PaddingMode::TfSame,
            groups,
            &mut rng,
        );
        let first = net.stage_ends[2] + 1;
        let channels = net.blocks[first].expand.as_ref().unwrap().weight.dims()[1];
        let x = random_tensor::<4>([2, channels, 9, 11], normal, &mut rng, &device);
        assert_same_gradients(&net, Start::Block(first), x, 2e-3, &mut rng);
    }

    /// A network small enough for finite differences: a stem whose width takes the im2col
    /// path, a block without expand conv (residual), a strided 5x5 block and a residual one.
    fn tiny_spec() -> MbNetSpec {
        let stage = |repeats, kernel, stride, expand_ratio, out_channels| StageSpec {
            repeats,
            kernel,
            stride,
            expand_ratio,
            out_channels,
        };
        MbNetSpec {
            stem_channels: 8,
            stages: vec![stage(1, 3, 1, 1, 8), stage(2, 5, 2, 6, 8)],
            head_channels: 24,
            num_classes: 0,
        }
    }

    #[test]
    fn fused_gradients_equal_burns_on_a_tiny_network() {
        let device = crate::backend::device().autodiff();
        let mut rng = run_rng(11, 0);
        for padding in [PaddingMode::TfSame, PaddingMode::Symmetric] {
            let net = random_net(&tiny_spec(), padding, 4, &mut rng);
            let x = random_tensor::<4>(
                [2, 3, 13, 11],
                Distribution::Normal(0.0, 1.0),
                &mut rng,
                &device,
            );
            assert_same_gradients(&net, Start::Image, x, 1e-4, &mut rng);
        }
    }

    /// The slope of `loss` along parameter `i` by differences, with its uncertainty: the loss is
    /// piecewise smooth (every ReLU6 of every pixel downstream is a kink), so the one-sided
    /// slopes over steps of 1e-2, 3e-3 and 1e-3 are averages over slightly different pieces.
    /// Returns the central difference at 3e-3 and the spread (largest minus smallest) of the
    /// six one-sided slopes, or `None` when the spread exceeds 10% of the slope: a kink close
    /// to the current value, or f32 round-off large against the step.
    fn difference_quotient(
        loss: &dyn Fn(&[f32]) -> f64,
        params: &[f32],
        i: usize,
    ) -> Option<(f64, f64)> {
        let at = |delta: f32| {
            let mut p = params.to_vec();
            p[i] += delta;
            // The step actually taken in f32, not the one asked for.
            (loss(&p), (p[i] - params[i]) as f64)
        };
        let (centre, _) = at(0.0);
        let mut slopes = Vec::new();
        let mut central = 0.0;
        for h in [1e-2f32, 3e-3, 1e-3] {
            let ((up, h_up), (down, h_down)) = (at(h), at(-h));
            slopes.extend([(up - centre) / h_up, (down - centre) / h_down]);
            if h == 3e-3 {
                central = (up - down) / (h_up - h_down);
            }
        }
        let (low, high) = slopes
            .iter()
            .fold((f64::MAX, f64::MIN), |(l, h), &s| (l.min(s), h.max(s)));
        (high - low <= 0.1 * central.abs()).then_some((central, high - low))
    }

    /// A sanity check independent of burn: central differences of the fused forward pass agree
    /// with the fused gradient at every conv's largest weight and bias entry. The inputs come
    /// from the test's own generator, so the entries checked never depend on other tests.
    #[test]
    fn fused_gradients_match_finite_differences() {
        let mut rng = run_rng(2, 0);
        let net = random_net(&tiny_spec(), PaddingMode::TfSame, 4, &mut rng);
        let (plan, layers) = TrainPlan::new(&net, Start::Image);
        let params: Vec<f32> = layers
            .iter()
            .flat_map(|l| {
                let (w, b) = l.folded();
                values(w.flatten::<1>(0, 3)).into_iter().chain(values(b))
            })
            .collect();
        let plan = Arc::new(plan);
        let images = sample(Distribution::Normal(0.0, 1.0), 2 * 3 * 13 * 11, &mut rng);
        let images = FlexTensor::from_data(TensorData::new(images, [2, 3, 13, 11]));
        let weights = sample(Distribution::Normal(0.0, 1.0), 2 * 24, &mut rng);
        let loss = |params: &[f32]| -> f64 {
            let params = FlexTensor::from_data(TensorData::new(params.to_vec(), [params.len()]));
            let (f, _) = forward_batch(plan.clone(), &images, &params, false);
            let f: &[f32] = f.as_slice().unwrap();
            f.iter()
                .zip(&weights)
                .map(|(&a, &b)| a as f64 * b as f64)
                .sum()
        };
        let flat = FlexTensor::from_data(TensorData::new(params.clone(), [params.len()]));
        let (_, saved) = forward_batch(plan.clone(), &images, &flat, true);
        let d_features = FlexTensor::from_data(TensorData::new(weights.clone(), [2, 24]));
        let grad = saved.unwrap().backward(&d_features);
        let grad: &[f32] = grad.as_slice().unwrap();
        let (mut checked, mut skipped) = (0, 0);
        for slot in &plan.convs {
            for range in [
                slot.at..slot.at + slot.weight_len(),
                slot.at + slot.weight_len()..slot.at + slot.len(),
            ] {
                let i = range
                    .max_by(|&a, &b| grad[a].abs().total_cmp(&grad[b].abs()))
                    .unwrap();
                let Some((numeric, spread)) = difference_quotient(&loss, &params, i) else {
                    skipped += 1;
                    continue;
                };
                let analytic = grad[i] as f64;
                // The gradient is the slope at the current value, which the quotients bracket
                // up to their spread; a wrong gradient is off by far more (a dropped residual
                // path: 10x).
                assert!(
                    (numeric - analytic).abs() <= spread + 1e-2 * analytic.abs().max(1e-2),
                    "parameter {i}: finite difference {numeric} (spread {spread}), gradient {analytic}"
                );
                checked += 1;
            }
        }
        eprintln!("finite differences: {checked} entries checked, {skipped} skipped near a kink");
        assert!(
            2 * checked >= checked + skipped,
            "{skipped} of {} entries sit at a kink",
            checked + skipped
        );
    }
}

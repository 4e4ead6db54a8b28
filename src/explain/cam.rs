//! The heatmaps themselves: CAM from a linear top's weights, and Grad-CAM from burn's autodiff
//! of what follows the explained layer (the pooling and the top for a CNN, the last block, the
//! final norm and the pooling for a ViT).

use burn::tensor::activation::relu;
use burn::tensor::{Device, Tensor, TensorData};

use super::{ExplainError, Heatmap, LinearTop, Method};
use crate::backbone::{Backbone, Network};

/// The values of a float tensor (graft's tensors are f32).
fn values<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    // cannot fail: every tensor graft makes is f32
    t.into_data().try_into_vec::<f32>().expect("f32 tensor")
}

/// For each row of `features` (`[n, dim]`), the top's predicted class and its probability.
fn predictions(top: &LinearTop, features: &[f32]) -> Vec<(usize, f32)> {
    let logits = top.logits(features);
    logits
        .chunks_exact(top.classes().max(1))
        .map(|row| {
            let (class, best) =
                row.iter()
                    .enumerate()
                    .fold(
                        (0, f32::NEG_INFINITY),
                        |(i, b), (j, &v)| {
                            if v > b { (j, v) } else { (i, b) }
                        },
                    );
            let total: f32 = row.iter().map(|v| (v - best).exp()).sum();
            (class, 1.0 / total)
        })
        .collect()
}

/// The sum over the batch of each image's logit of `classes[n]` (the top applied to
/// `features` `[n, dim]`): what Grad-CAM differentiates. The top's weights are constants.
fn class_scores(
    top: &LinearTop,
    features: Tensor<2>,
    classes: &[usize],
    device: &Device,
) -> Tensor<1> {
    let [n, dim] = features.dims();
    let k = top.classes();
    // [dim, classes]
    let weight =
        Tensor::<2>::from_data(TensorData::new(top.weight.clone(), [k, dim]), device).transpose();
    let mut one_hot = vec![0.0f32; n * k];
    for (row, &class) in classes.iter().enumerate() {
        one_hot[row * k + class] = 1.0;
    }
    let one_hot = Tensor::<2>::from_data(TensorData::new(one_hot, [n, k]), device);
    // The bias adds a constant per class: no gradient, so it is left out.
    (features.matmul(weight) * one_hot).sum()
}

/// CAM or Grad-CAM of a CNN's batch: its last-stage maps weighted for the predicted class.
pub(super) fn cnn(
    backbone: &Backbone,
    top: &LinearTop,
    batch: Tensor<4>,
    method: Method,
) -> Result<Vec<Heatmap>, ExplainError> {
    let net = &backbone.net;
    let device = batch.device();
    let maps = backbone
        .last_maps(batch)
        .ok_or_else(|| ExplainError::unsupported(backbone, "has no last convolutional stage"))?;
    let [n, channels, h, w] = maps.dims();
    // cannot fail: `last_maps` gave maps, so this is a CNN
    let features = net.features_from_maps(maps.clone()).expect("a CNN");
    let predicted = predictions(top, &values(features));
    let classes: Vec<usize> = predicted.iter().map(|p| p.0).collect();
    let grid = [h, w];
    let map_values = match method {
        Method::Cam => {
            if !pools_linearly(net) {
                return Err(ExplainError::unsupported(
                    backbone,
                    "normalises its pooled features, so CAM is not Grad-CAM there: use Grad-CAM",
                ));
            }
            cam(&values(maps), [n, channels, h * w], top, &classes)
        }
        Method::GradCam => {
            let leaf = maps.clone().autodiff().require_grad();
            // cannot fail: as above
            let features = net.features_from_maps(leaf.clone()).expect("a CNN");
            let grads = class_scores(top, features, &classes, &device).backward();
            let gradient = leaf
                .grad(&grads)
                // cannot fail: the maps are a leaf that requires its gradient
                .expect("a gradient at the maps");
            grad_cam(
                gradient.reshape([n, channels, h * w]),
                maps.reshape([n, channels, h * w]),
            )
        }
    };
    Ok(heatmaps(map_values, &predicted, grid, method))
}

/// Whether the features are the plain global average of the last maps (MBConv, ResNet):
/// then a linear top's class weights are Grad-CAM's channel weights, and CAM is exact.
pub(super) fn pools_linearly(net: &Network) -> bool {
    matches!(net, Network::MbConv(_) | Network::ResNet(_))
}

/// Zhou et al.'s class activation map `ReLU(sum_c w_kc A_c) / (h w)` of maps `[n, c, pixels]`
/// for each image's class `k`: Grad-CAM's map when the features are the maps' global
/// average (then the gradient of the logit at `A_c` is `w_kc / (h w)` at every pixel).
fn cam(
    maps: &[f32],
    [n, channels, pixels]: [usize; 3],
    top: &LinearTop,
    classes: &[usize],
) -> Vec<f32> {
    let dim = top.dim();
    let mut out = vec![0.0f32; n * pixels];
    for (image, (out, &class)) in out.chunks_exact_mut(pixels).zip(classes).enumerate() {
        let weights = &top.weight[class * dim..][..channels];
        let image = &maps[image * channels * pixels..][..channels * pixels];
        for (plane, &w) in image.chunks_exact(pixels).zip(weights) {
            for (o, v) in out.iter_mut().zip(plane) {
                *o += w * v;
            }
        }
        let scale = 1.0 / pixels as f32;
        out.iter_mut().for_each(|v| *v = (*v * scale).max(0.0));
    }
    out
}

/// Selvaraju et al.'s Grad-CAM `ReLU(sum_c alpha_c A_c)`, `alpha_c` the mean gradient over
/// the positions, of activations and their gradients `[n, channels, positions]`.
fn grad_cam(gradient: Tensor<3>, activations: Tensor<3>) -> Vec<f32> {
    let alpha = gradient.mean_dim(2);
    values(relu((activations * alpha).sum_dim(1)))
}

/// Grad-CAM of a ViT's batch on the patch tokens entering its last block.
///
/// With class-token pooling the last block's *output* patch tokens feed nothing (the final
/// norm and the head read only the class token), so a gradient there is zero. The tokens
/// *entering* the last block reach the class token through that block's attention, and (for
/// DINOv2's class + patch-mean feature) through the patch mean as well: their gradient says
/// how each patch moved the predicted class. The class and register tokens are dropped; the
/// patch tokens are laid out on the `[H / patch, W / patch]` grid.
pub(super) fn vit(
    backbone: &Backbone,
    top: &LinearTop,
    batch: Tensor<4>,
) -> Result<Vec<Heatmap>, ExplainError> {
    let Network::Vit(net) = &backbone.net else {
        return Err(ExplainError::unsupported(backbone, "is not a ViT"));
    };
    let [_, _, height, width] = batch.dims();
    let device = batch.device();
    let grid = [height / net.patch, width / net.patch];
    let tokens = backbone
        .last_block_input(batch)
        .ok_or_else(|| ExplainError::unsupported(backbone, "is not a ViT"))?;
    let [n, length, dim] = tokens.dims();
    let leaf = tokens.clone().autodiff().require_grad();
    let features = net.features_from_last_block_input(leaf.clone());
    let predicted = predictions(top, &values(features.clone()));
    let classes: Vec<usize> = predicted.iter().map(|p| p.0).collect();
    let grads = class_scores(top, features, &classes, &device).backward();
    let gradient = leaf
        .grad(&grads)
        // cannot fail: the tokens are a leaf that requires its gradient
        .expect("a gradient at the tokens");
    let patches = length - net.prefix_tokens;
    let patch_tokens = |t: Tensor<3>| {
        t.narrow(1, net.prefix_tokens, patches)
            .swap_dims(1, 2)
            .reshape([n, dim, patches])
    };
    let map_values = grad_cam(patch_tokens(gradient), patch_tokens(tokens));
    Ok(heatmaps(map_values, &predicted, grid, Method::GradCam))
}

fn heatmaps(
    map_values: Vec<f32>,
    predicted: &[(usize, f32)],
    grid: [usize; 2],
    method: Method,
) -> Vec<Heatmap> {
    let pixels = grid[0] * grid[1];
    map_values
        .chunks_exact(pixels.max(1))
        .zip(predicted)
        .map(|(values, &(class, probability))| Heatmap {
            class,
            probability,
            method,
            grid,
            values: values.to_vec(),
        })
        .collect()
}

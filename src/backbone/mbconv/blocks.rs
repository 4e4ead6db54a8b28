//! The building blocks shared by the MobileNetV2 / EfficientNet-Lite family: conv + BatchNorm +
//! ReLU6, and the inverted-residual (MBConv) block. Hot ops sit behind small functions so that
//! specialised kernels can replace them without touching the model code.

use burn::module::{Module, Param};
use burn::nn::{BatchNorm, BatchNormConfig};
use burn::tensor::module::conv2d;
use burn::tensor::ops::ConvOptions;
use burn::tensor::{Device, Tensor};

use crate::backbone::source_config::PaddingMode;
use crate::rng::{RunRng, random_tensor};

/// `(before, after)` padding of one spatial axis.
pub fn axis_padding(
    mode: PaddingMode,
    size: usize,
    kernel: usize,
    stride: usize,
) -> (usize, usize) {
    match mode {
        PaddingMode::Symmetric => ((kernel - 1) / 2, (kernel - 1) / 2),
        PaddingMode::TfSame => {
            let out = size.div_ceil(stride);
            let total = ((out - 1) * stride + kernel).saturating_sub(size);
            (total / 2, total - total / 2)
        }
    }
}

/// Output side of a conv for an input side, given the padding convention.
pub fn conv_output_size(mode: PaddingMode, size: usize, kernel: usize, stride: usize) -> usize {
    let (before, after) = axis_padding(mode, size, kernel, stride);
    (size + before + after - kernel) / stride + 1
}

/// `min(max(x, 0), 6)`. As ReLU then a clamp from above, not `clamp(0, 6)`: burn composes a
/// two-sided clamp from two compare + mask passes forward and two mask passes backward, where
/// ReLU is one native op each way.
pub fn relu6(x: Tensor<4>) -> Tensor<4> {
    burn::tensor::activation::relu(x).clamp_max(6.0)
}

/// Static shape of one convolution, as data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConvSpec {
    pub in_channels: usize,
    pub out_channels: usize,
    pub kernel: usize,
    pub stride: usize,
    pub groups: usize,
    pub activation: bool,
}

impl ConvSpec {
    pub fn weight_shape(&self) -> [usize; 4] {
        [
            self.out_channels,
            self.in_channels / self.groups,
            self.kernel,
            self.kernel,
        ]
    }
}

/// Convolution without bias, BatchNorm, optional ReLU6.
#[derive(Module, Debug)]
pub struct ConvBnAct {
    pub weight: Param<Tensor<4>>,
    pub bn: BatchNorm,
    /// Set by [`ConvBnAct::fold_batch_norm`]: `weight` then already includes BatchNorm's
    /// scale, this is its shift, and `bn` is skipped (inference only).
    pub folded_bias: Option<Param<Tensor<1>>>,
    pub kernel: usize,
    pub stride: usize,
    pub groups: usize,
    pub activation: bool,
    #[module(skip)]
    pub padding: PaddingMode,
}

impl ConvBnAct {
    /// A layer with random conv weights and identity BatchNorm, to be overwritten by a loader.
    pub fn init(
        spec: ConvSpec,
        padding: PaddingMode,
        bn_eps: f64,
        rng: &mut RunRng,
        device: &Device,
    ) -> Self {
        let fan_in = (spec.in_channels / spec.groups * spec.kernel * spec.kernel) as f64;
        let bound = (1.0 / fan_in).sqrt();
        let weight = random_tensor(
            spec.weight_shape(),
            burn::tensor::Distribution::Uniform(-bound, bound),
            rng,
            device,
        );
        Self {
            weight: Param::from_tensor(weight),
            bn: BatchNormConfig::new(spec.out_channels)
                .with_epsilon(bn_eps)
                .init(device),
            folded_bias: None,
            kernel: spec.kernel,
            stride: spec.stride,
            groups: spec.groups,
            activation: spec.activation,
            padding,
        }
    }

    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let [_, _, h, w] = x.dims();
        let pad_h = axis_padding(self.padding, h, self.kernel, self.stride);
        let pad_w = axis_padding(self.padding, w, self.kernel, self.stride);
        let options = ConvOptions::new_with_padding(
            [self.stride, self.stride],
            [pad_h, pad_w],
            [1, 1],
            self.groups,
        );
        let batch_statistics = x.device().is_autodiff() && self.bn.training.is_enabled();
        let y = match &self.folded_bias {
            Some(bias) => conv2d(x, self.weight.val(), Some(bias.val()), options),
            None if batch_statistics => {
                self.bn.forward(conv2d(x, self.weight.val(), None, options))
            }
            None => {
                // BatchNorm on its running statistics (inference, or fine-tuning with BN
                // frozen) is an affine map per channel: fold it into the conv's weight and
                // bias here, on `[C]`-sized tensors, instead of a pass over the activation
                // forward and another backward. Gradients reach weight, gamma and beta the same.
                let (weight, bias) = self.folded();
                conv2d(x, weight, Some(bias), options)
            }
        };
        if self.activation { relu6(y) } else { y }
    }

    /// Fold inference-mode BatchNorm into the conv: `w' = w * s`, `b' = beta - mean * s`
    /// with `s = gamma / sqrt(var + eps)`. Saves the per-element BatchNorm passes, which
    /// cost as much as the convolutions themselves on the CPU backend.
    pub fn fold_batch_norm(&mut self) {
        if self.folded_bias.is_some() {
            return;
        }
        let (weight, bias) = self.folded();
        self.weight = Param::from_tensor(weight);
        self.folded_bias = Some(Param::from_tensor(bias));
    }

    /// The conv weight and bias with inference-mode BatchNorm folded in (see
    /// [`ConvBnAct::fold_batch_norm`]), as differentiable functions of weight, gamma and beta;
    /// the stored ones when the layer is folded already.
    pub fn folded(&self) -> (Tensor<4>, Tensor<1>) {
        if let Some(bias) = &self.folded_bias {
            return (self.weight.val(), bias.val());
        }
        let bn = &self.bn;
        let device = self.weight.val().device();
        let mean = bn.running_mean.value().to_device(&device);
        let var = bn.running_var.value().to_device(&device);
        let scale = bn.gamma.val() / (var + bn.epsilon).sqrt();
        let shift = bn.beta.val() - mean * scale.clone();
        let [c] = scale.dims();
        (self.weight.val() * scale.reshape([c, 1, 1, 1]), shift)
    }

    pub fn out_channels(&self) -> usize {
        self.weight.dims()[0]
    }
}

/// MBConv: optional 1x1 expand, depthwise kxk, 1x1 linear projection, residual when shapes allow.
#[derive(Module, Debug)]
pub struct InvertedResidual {
    pub expand: Option<ConvBnAct>,
    pub depthwise: ConvBnAct,
    pub project: ConvBnAct,
    pub residual: bool,
}

/// Static shape of one MBConv block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockSpec {
    pub in_channels: usize,
    pub out_channels: usize,
    pub expand_ratio: usize,
    pub kernel: usize,
    pub stride: usize,
}

impl BlockSpec {
    pub fn hidden(&self) -> usize {
        self.in_channels * self.expand_ratio
    }
    pub fn expand(&self) -> Option<ConvSpec> {
        (self.expand_ratio != 1).then_some(ConvSpec {
            in_channels: self.in_channels,
            out_channels: self.hidden(),
            kernel: 1,
            stride: 1,
            groups: 1,
            activation: true,
        })
    }
    pub fn depthwise(&self) -> ConvSpec {
        ConvSpec {
            in_channels: self.hidden(),
            out_channels: self.hidden(),
            kernel: self.kernel,
            stride: self.stride,
            groups: self.hidden(),
            activation: true,
        }
    }
    pub fn project(&self) -> ConvSpec {
        ConvSpec {
            in_channels: self.hidden(),
            out_channels: self.out_channels,
            kernel: 1,
            stride: 1,
            groups: 1,
            activation: false,
        }
    }
    pub fn has_residual(&self) -> bool {
        self.stride == 1 && self.in_channels == self.out_channels
    }
}

impl InvertedResidual {
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let hidden = match &self.expand {
            Some(expand) => expand.forward(x.clone()),
            None => x.clone(),
        };
        let y = self.project.forward(self.depthwise.forward(hidden));
        if self.residual { y + x } else { y }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tf_same_puts_the_odd_pixel_after() {
        // Stride-2 3x3 on an even side: nothing before, one after (the TF convention).
        assert_eq!(axis_padding(PaddingMode::TfSame, 224, 3, 2), (0, 1));
        // Stride-2 5x5 on 28: (1, 2).
        assert_eq!(axis_padding(PaddingMode::TfSame, 28, 5, 2), (1, 2));
        // Stride-2 5x5 on 15 -> 8 pads 2/2 (the Lite2 case from the golden README).
        assert_eq!(axis_padding(PaddingMode::TfSame, 15, 5, 2), (2, 2));
        assert_eq!(conv_output_size(PaddingMode::TfSame, 15, 5, 2), 8);
        assert_eq!(axis_padding(PaddingMode::TfSame, 14, 3, 1), (1, 1));
        assert_eq!(axis_padding(PaddingMode::Symmetric, 224, 3, 2), (1, 1));
        assert_eq!(conv_output_size(PaddingMode::Symmetric, 224, 3, 2), 112);
    }
}

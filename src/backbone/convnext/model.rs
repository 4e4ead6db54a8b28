//! ConvNeXt (Liu et al. 2022) in both published key layouts: torchvision's (`features.N…`,
//! `classifier.N`) and timm's (`stem`, `stages.N…`, `head`). 4x4 patch stem, then four stages
//! of blocks `x + gamma * fc2(gelu(fc1(LN(dwconv7x7(x)))))` with channels-last LayerNorm
//! (eps 1e-6) and exact (erf) GELU; a LayerNorm + 2x2 stride-2 conv between stages; pooled
//! features are LayerNorm(global average pool). Stochastic depth is a training-time op and
//! absent here. Layer groups: `stem`, `stage0` … `stage3`.

use burn::module::{Module, Param};
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{Initializer, LayerNorm, LayerNormConfig, Linear, LinearConfig, PaddingConfig2d};
use burn::tensor::activation::gelu;
use burn::tensor::{Device, Tensor};

use crate::backbone::family::global_average_pool;
use crate::weights::loader::TensorKeys;

const LN_EPS: f64 = 1e-6;

/// The architecture as data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConvNeXtSpec {
    pub depths: [usize; 4],
    pub dims: [usize; 4],
    pub num_classes: usize,
}

impl ConvNeXtSpec {
    pub const fn new(depths: [usize; 4], dims: [usize; 4]) -> Self {
        Self {
            depths,
            dims,
            num_classes: 1000,
        }
    }

    pub fn feature_dim(&self) -> usize {
        self.dims[3]
    }

    /// The layer group names: `stem`, `stage0` … `stage3`.
    pub fn group_names(&self) -> Vec<String> {
        std::iter::once("stem".to_string())
            .chain((0..4).map(|s| format!("stage{s}")))
            .collect()
    }
}

pub const CONVNEXT_TINY: ConvNeXtSpec = ConvNeXtSpec::new([3, 3, 9, 3], [96, 192, 384, 768]);
pub const CONVNEXT_SMALL: ConvNeXtSpec = ConvNeXtSpec::new([3, 3, 27, 3], [96, 192, 384, 768]);
pub const CONVNEXT_BASE: ConvNeXtSpec = ConvNeXtSpec::new([3, 3, 27, 3], [128, 256, 512, 1024]);

/// Which framework named the checkpoint's tensors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConvNeXtLayout {
    /// `torchvision.models.convnext_*`: `features.0.0`, `features.1.0.block.0`, `classifier.2`.
    Torchvision,
    /// `timm`'s `convnext_*`: `stem.0`, `stages.0.blocks.0.conv_dw`, `head.fc`.
    Timm,
}

fn conv(
    channels: [usize; 2],
    kernel: usize,
    stride: usize,
    groups: usize,
    device: &Device,
) -> Conv2d {
    let pad = (kernel - 1) / 2 * usize::from(stride == 1);
    Conv2dConfig::new(channels, [kernel, kernel])
        .with_stride([stride, stride])
        .with_padding(PaddingConfig2d::Explicit(pad, pad, pad, pad))
        .with_groups(groups)
        // Zeros: every tensor is overwritten by a checkpoint.
        .with_initializer(Initializer::Zeros)
        .init(device)
}

fn layer_norm(channels: usize, device: &Device) -> LayerNorm {
    LayerNormConfig::new(channels)
        .with_epsilon(LN_EPS)
        .init(device)
}

fn linear(d_in: usize, d_out: usize, device: &Device) -> Linear {
    LinearConfig::new(d_in, d_out)
        .with_initializer(Initializer::Zeros)
        .init(device)
}

/// LayerNorm over the channels of an NCHW map (timm's `LayerNorm2d`).
fn channel_norm(norm: &LayerNorm, x: Tensor<4>) -> Tensor<4> {
    norm.forward(x.permute([0, 2, 3, 1])).permute([0, 3, 1, 2])
}

#[derive(Module, Debug)]
pub struct ConvNeXtBlock {
    pub dwconv: Conv2d,
    pub norm: LayerNorm,
    pub fc1: Linear,
    pub fc2: Linear,
    /// Layer scale, one factor per channel.
    pub gamma: Param<Tensor<1>>,
}

impl ConvNeXtBlock {
    fn init(dim: usize, device: &Device) -> Self {
        Self {
            dwconv: conv([dim, dim], 7, 1, dim, device),
            norm: layer_norm(dim, device),
            fc1: linear(dim, 4 * dim, device),
            fc2: linear(4 * dim, dim, device),
            gamma: Param::from_tensor(Tensor::ones([dim], device)),
        }
    }

    fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        // Channels-last from the depthwise conv to the layer scale, as both references do.
        let y = self.dwconv.forward(x.clone()).permute([0, 2, 3, 1]);
        let y = self
            .fc2
            .forward(gelu(self.fc1.forward(self.norm.forward(y))));
        let y = y * self.gamma.val().unsqueeze::<4>();
        x + y.permute([0, 3, 1, 2])
    }

    fn visit_keys(&mut self, source: &mut impl TensorKeys, layout: ConvNeXtLayout, prefix: &str) {
        let [dim] = self.gamma.dims();
        match layout {
            ConvNeXtLayout::Torchvision => {
                source.conv2d(&mut self.dwconv, &format!("{prefix}.block.0"));
                source.layer_norm(&mut self.norm, &format!("{prefix}.block.2"));
                source.linear(&mut self.fc1, &format!("{prefix}.block.3"));
                source.linear(&mut self.fc2, &format!("{prefix}.block.5"));
                // Stored as [C, 1, 1] for broadcasting over an NCHW map.
                source.param_stored_as(
                    &mut self.gamma,
                    &format!("{prefix}.layer_scale"),
                    [dim, 1, 1],
                );
            }
            ConvNeXtLayout::Timm => {
                source.conv2d(&mut self.dwconv, &format!("{prefix}.conv_dw"));
                source.layer_norm(&mut self.norm, &format!("{prefix}.norm"));
                source.linear(&mut self.fc1, &format!("{prefix}.mlp.fc1"));
                source.linear(&mut self.fc2, &format!("{prefix}.mlp.fc2"));
                source.param(&mut self.gamma, &format!("{prefix}.gamma"));
            }
        }
    }
}

/// LayerNorm + 2x2 stride-2 conv between stages.
#[derive(Module, Debug)]
pub struct Downsample {
    pub norm: LayerNorm,
    pub conv: Conv2d,
}

/// One stage: a [`Downsample`] (absent in stage 0), then the blocks.
#[derive(Module, Debug)]
pub struct ConvNeXtStage {
    pub downsample: Option<Downsample>,
    pub blocks: Vec<ConvNeXtBlock>,
}

#[derive(Module, Debug)]
pub struct ConvNeXt {
    pub stem_conv: Conv2d,
    pub stem_norm: LayerNorm,
    pub stages: Vec<ConvNeXtStage>,
    /// LayerNorm of the pooled features (part of the head in both layouts; kept without the top).
    pub head_norm: LayerNorm,
    pub fc: Option<Linear>,
}

impl ConvNeXt {
    /// The network of `spec` (weights to be filled by [`Network::load`](crate::backbone::Network::load)); `fc` only when
    /// `include_top`.
    pub fn init(spec: &ConvNeXtSpec, include_top: bool, device: &Device) -> Self {
        let stages = (0..4)
            .map(|s| {
                let dim = spec.dims[s];
                ConvNeXtStage {
                    downsample: (s > 0).then(|| {
                        let previous = spec.dims[s - 1];
                        Downsample {
                            norm: layer_norm(previous, device),
                            conv: conv([previous, dim], 2, 2, 1, device),
                        }
                    }),
                    blocks: (0..spec.depths[s])
                        .map(|_| ConvNeXtBlock::init(dim, device))
                        .collect(),
                }
            })
            .collect();
        Self {
            stem_conv: conv([3, spec.dims[0]], 4, 4, 1, device),
            stem_norm: layer_norm(spec.dims[0], device),
            stages,
            head_norm: layer_norm(spec.feature_dim(), device),
            fc: include_top.then(|| linear(spec.feature_dim(), spec.num_classes, device)),
        }
    }

    /// Walk every tensor under the key `layout` gives it: to load a checkpoint or to save one
    /// (see [`TensorKeys`]).
    pub fn visit_keys(&mut self, source: &mut impl TensorKeys, layout: ConvNeXtLayout) {
        let (stem, head_norm, fc) = match layout {
            ConvNeXtLayout::Torchvision => ("features.0", "classifier.0", "classifier.2"),
            ConvNeXtLayout::Timm => ("stem", "head.norm", "head.fc"),
        };
        source.conv2d(&mut self.stem_conv, &format!("{stem}.0"));
        source.layer_norm(&mut self.stem_norm, &format!("{stem}.1"));
        for (s, stage) in self.stages.iter_mut().enumerate() {
            let (down, blocks) = match layout {
                ConvNeXtLayout::Torchvision => (
                    format!("features.{}", 2 * s),
                    format!("features.{}", 2 * s + 1),
                ),
                ConvNeXtLayout::Timm => (
                    format!("stages.{s}.downsample"),
                    format!("stages.{s}.blocks"),
                ),
            };
            if let Some(downsample) = &mut stage.downsample {
                source.layer_norm(&mut downsample.norm, &format!("{down}.0"));
                source.conv2d(&mut downsample.conv, &format!("{down}.1"));
            }
            for (i, block) in stage.blocks.iter_mut().enumerate() {
                block.visit_keys(source, layout, &format!("{blocks}.{i}"));
            }
        }
        source.layer_norm(&mut self.head_norm, head_norm);
        match &mut self.fc {
            Some(linear) => source.linear(linear, fc),
            None => source.skip_prefix(&format!("{fc}.")),
        }
    }

    /// Output of each layer group in order: stem, stage0 … stage3.
    pub fn forward_groups(&self, x: Tensor<4>) -> Vec<Tensor<4>> {
        let mut x = channel_norm(&self.stem_norm, self.stem_conv.forward(x));
        let mut outputs = vec![x.clone()];
        for stage in &self.stages {
            if let Some(downsample) = &stage.downsample {
                x = downsample.conv.forward(channel_norm(&downsample.norm, x));
            }
            for block in &stage.blocks {
                x = block.forward(x);
            }
            outputs.push(x.clone());
        }
        outputs
    }

    /// Pooled, normalised features `[N, dims[3]]`.
    pub fn forward_features(&self, x: Tensor<4>) -> Tensor<2> {
        let map = self.forward_groups(x).pop().expect("five group outputs");
        self.head_norm.forward(global_average_pool(map))
    }

    /// ImageNet logits, or `None` without the top.
    pub fn forward_logits(&self, x: Tensor<4>) -> Option<Tensor<2>> {
        let fc = self.fc.as_ref()?;
        Some(fc.forward(self.forward_features(x)))
    }

    pub fn device(&self) -> Device {
        self.stem_conv.weight.val().device()
    }
}

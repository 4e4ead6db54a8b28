//! ResNet in torchvision's layout and key names (`conv1`, `bn1`, `layer1.0.conv1`, ..., `fc`),
//! which timm's `resnet*` checkpoints share: 7x7 stem + max-pool, four stages of BasicBlock or
//! Bottleneck (stride on the 3x3, "ResNet v1.5"), BatchNorm eps 1e-5, global average pool.
//! Layer groups: `stem`, `layer1` … `layer4`.

use burn::module::{Module, Param};
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{BatchNorm, BatchNormConfig, Initializer, Linear, LinearConfig, PaddingConfig2d};
use burn::tensor::activation::relu;
use burn::tensor::module::max_pool2d;
use burn::tensor::ops::MaxPoolOptions;
use burn::tensor::{Device, Tensor};

use crate::backbone::family::{Start, global_average_pool};
use crate::weights::loader::TensorKeys;

/// Which residual block the stages are made of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResBlockKind {
    /// Two 3x3 convs (ResNet-18 / 34); expansion 1.
    Basic,
    /// 1x1, 3x3, 1x1 (ResNet-50 / 101 / 152); expansion 4.
    Bottleneck,
}

/// The architecture as data (torchvision's `ResNet(block, layers, width_per_group=...)`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResNetSpec {
    pub block: ResBlockKind,
    /// Blocks per stage.
    pub layers: [usize; 4],
    /// Inner width of a Bottleneck's 3x3 in the first stage (64 standard, 128 for wide ResNets).
    pub width_per_group: usize,
    pub num_classes: usize,
}

impl ResNetSpec {
    pub const fn new(block: ResBlockKind, layers: [usize; 4]) -> Self {
        Self {
            block,
            layers,
            width_per_group: 64,
            num_classes: 1000,
        }
    }

    fn expansion(&self) -> usize {
        match self.block {
            ResBlockKind::Basic => 1,
            ResBlockKind::Bottleneck => 4,
        }
    }

    /// Channels of the pooled features (512 × expansion).
    pub fn feature_dim(&self) -> usize {
        512 * self.expansion()
    }

    /// The layer group names: `stem`, `layer1` … `layer4`.
    pub fn group_names(&self) -> Vec<String> {
        std::iter::once("stem".to_string())
            .chain((1..=4).map(|s| format!("layer{s}")))
            .collect()
    }
}

pub const RESNET18: ResNetSpec = ResNetSpec::new(ResBlockKind::Basic, [2, 2, 2, 2]);
pub const RESNET34: ResNetSpec = ResNetSpec::new(ResBlockKind::Basic, [3, 4, 6, 3]);
pub const RESNET50: ResNetSpec = ResNetSpec::new(ResBlockKind::Bottleneck, [3, 4, 6, 3]);
pub const RESNET101: ResNetSpec = ResNetSpec::new(ResBlockKind::Bottleneck, [3, 4, 23, 3]);

/// Bias-free convolution followed by BatchNorm (ReLU is applied by the caller).
#[derive(Module, Debug)]
pub struct ConvBn {
    pub conv: Conv2d,
    pub bn: BatchNorm,
    /// BatchNorm folded into `conv` (inference only): `bn` is skipped.
    pub folded: bool,
}

impl ConvBn {
    fn init(
        channels: [usize; 2],
        kernel: usize,
        stride: usize,
        groups: usize,
        device: &Device,
    ) -> Self {
        let pad = (kernel - 1) / 2;
        Self {
            // Zeros: every tensor is overwritten by a checkpoint.
            conv: Conv2dConfig::new(channels, [kernel, kernel])
                .with_stride([stride, stride])
                .with_padding(PaddingConfig2d::Explicit(pad, pad, pad, pad))
                .with_groups(groups)
                .with_bias(false)
                .with_initializer(Initializer::Zeros)
                .init(device),
            bn: BatchNormConfig::new(channels[1])
                .with_epsilon(1e-5)
                .init(device),
            folded: false,
        }
    }

    fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let y = self.conv.forward(x);
        if self.folded { y } else { self.bn.forward(y) }
    }

    /// Inference-mode BatchNorm folded into the conv: `w * s`, bias `beta - mean * s` with
    /// `s = gamma / sqrt(var + eps)`. Outputs are unchanged up to rounding; one op less.
    fn fold_batch_norm(&mut self) {
        if self.folded {
            return;
        }
        let bn = &self.bn;
        let scale = bn.gamma.val() / (bn.running_var.value() + bn.epsilon).sqrt();
        let bias = bn.beta.val() - bn.running_mean.value() * scale.clone();
        let weight = self.conv.weight.val() * scale.unsqueeze_dims::<4>(&[1, 2, 3]);
        self.conv.weight = Param::from_tensor(weight);
        self.conv.bias = Some(Param::from_tensor(bias));
        self.folded = true;
    }

    /// What the fused training op folds itself ([`super::fused_grad`]): the conv's
    /// weight `[out, in, k, k]`, BatchNorm's gamma, beta, running mean and running variance,
    /// and its epsilon. A conv folded for inference gives the identity BatchNorm around its
    /// bias.
    pub fn unfolded_parts(&self) -> (Tensor<4>, [Tensor<1>; 4], f64) {
        let weight = self.conv.weight.val();
        let device = weight.device();
        if self.folded {
            let [out, ..] = weight.dims();
            let bias = match &self.conv.bias {
                Some(bias) => bias.val(),
                None => Tensor::zeros([out], &device),
            };
            let ones = Tensor::ones([out], &device);
            return (
                weight,
                [ones.clone(), bias, Tensor::zeros([out], &device), ones],
                0.0,
            );
        }
        let bn = &self.bn;
        let statistics =
            [bn.running_mean.value(), bn.running_var.value()].map(|t| t.to_device(&device));
        let [mean, var] = statistics;
        (
            weight,
            [bn.gamma.val(), bn.beta.val(), mean, var],
            bn.epsilon,
        )
    }

    fn visit_keys(&mut self, source: &mut impl TensorKeys, conv: &str, bn: &str) {
        source.param(&mut self.conv.weight, &format!("{conv}.weight"));
        source.batch_norm(&mut self.bn, bn);
    }
}

/// A BasicBlock (`conv3` absent) or a Bottleneck.
#[derive(Module, Debug)]
pub struct ResBlock {
    pub conv1: ConvBn,
    pub conv2: ConvBn,
    pub conv3: Option<ConvBn>,
    pub downsample: Option<ConvBn>,
}

impl ResBlock {
    fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let identity = match &self.downsample {
            Some(down) => down.forward(x.clone()),
            None => x.clone(),
        };
        let y = relu(self.conv1.forward(x));
        let y = self.conv2.forward(y);
        let y = match &self.conv3 {
            Some(conv3) => conv3.forward(relu(y)),
            None => y,
        };
        relu(y + identity)
    }

    fn visit_keys(&mut self, source: &mut impl TensorKeys, prefix: &str) {
        self.conv1
            .visit_keys(source, &format!("{prefix}.conv1"), &format!("{prefix}.bn1"));
        self.conv2
            .visit_keys(source, &format!("{prefix}.conv2"), &format!("{prefix}.bn2"));
        if let Some(conv3) = &mut self.conv3 {
            conv3.visit_keys(source, &format!("{prefix}.conv3"), &format!("{prefix}.bn3"));
        }
        if let Some(down) = &mut self.downsample {
            down.visit_keys(
                source,
                &format!("{prefix}.downsample.0"),
                &format!("{prefix}.downsample.1"),
            );
        }
    }
}

/// One stage (`layerN`).
#[derive(Module, Debug)]
pub struct ResStage {
    pub blocks: Vec<ResBlock>,
}

#[derive(Module, Debug)]
pub struct ResNet {
    pub stem: ConvBn,
    pub stages: Vec<ResStage>,
    pub fc: Option<Linear>,
}

impl ResNet {
    /// The network of `spec` with zero weights (to be filled by [`Network::load`](crate::backbone::Network::load)); `fc` only
    /// when `include_top`.
    pub fn init(spec: &ResNetSpec, include_top: bool, device: &Device) -> Self {
        let expansion = spec.expansion();
        let mut in_channels = 64;
        let stages = spec
            .layers
            .iter()
            .enumerate()
            .map(|(s, &count)| {
                let planes = 64 << s;
                let out = planes * expansion;
                let blocks = (0..count)
                    .map(|i| {
                        let stride = if i == 0 && s > 0 { 2 } else { 1 };
                        let (conv1, conv2, conv3) = match spec.block {
                            ResBlockKind::Basic => (
                                ConvBn::init([in_channels, planes], 3, stride, 1, device),
                                ConvBn::init([planes, planes], 3, 1, 1, device),
                                None,
                            ),
                            ResBlockKind::Bottleneck => {
                                let width = planes * spec.width_per_group / 64;
                                (
                                    ConvBn::init([in_channels, width], 1, 1, 1, device),
                                    ConvBn::init([width, width], 3, stride, 1, device),
                                    Some(ConvBn::init([width, out], 1, 1, 1, device)),
                                )
                            }
                        };
                        let downsample = (stride != 1 || in_channels != out)
                            .then(|| ConvBn::init([in_channels, out], 1, stride, 1, device));
                        in_channels = out;
                        ResBlock {
                            conv1,
                            conv2,
                            conv3,
                            downsample,
                        }
                    })
                    .collect();
                ResStage { blocks }
            })
            .collect();
        Self {
            stem: ConvBn::init([3, 64], 7, 2, 1, device),
            stages,
            fc: include_top.then(|| {
                LinearConfig::new(spec.feature_dim(), spec.num_classes)
                    .with_initializer(Initializer::Zeros)
                    .init(device)
            }),
        }
    }

    /// Walk every tensor under its torchvision key: to load a checkpoint or to save one (see
    /// [`TensorKeys`]).
    pub fn visit_keys(&mut self, source: &mut impl TensorKeys) {
        self.stem.visit_keys(source, "conv1", "bn1");
        for (s, stage) in self.stages.iter_mut().enumerate() {
            for (i, block) in stage.blocks.iter_mut().enumerate() {
                block.visit_keys(source, &format!("layer{}.{i}", s + 1));
            }
        }
        match &mut self.fc {
            Some(fc) => source.linear(fc, "fc"),
            None => source.skip_prefix("fc."),
        }
    }

    /// Width of the pooled features: the last block's output channels.
    pub fn feature_dim(&self) -> usize {
        self.stages
            .last()
            .and_then(|stage| stage.blocks.last())
            .map_or(0, |block| {
                block.conv3.as_ref().unwrap_or(&block.conv2).bn.gamma.dims()[0]
            })
    }

    /// Output of each layer group in order: stem (after the max-pool), layer1 … layer4.
    pub fn forward_groups(&self, x: Tensor<4>) -> Vec<Tensor<4>> {
        let x = relu(self.stem.forward(x));
        let mut x = max_pool2d(
            x,
            MaxPoolOptions::new([3, 3])
                .with_stride([2, 2])
                .with_padding([1, 1]),
        );
        let mut outputs = vec![x.clone()];
        for stage in &self.stages {
            for block in &stage.blocks {
                x = block.forward(x);
            }
            outputs.push(x.clone());
        }
        outputs
    }

    /// Pooled features from `start`: the image, or the map entering block `n` of all the
    /// stages' blocks in order (the output of a frozen prefix, see
    /// [`crate::train::finetune::FrozenPrefix`]).
    pub fn forward_features_from(&self, start: Start, x: Tensor<4>) -> Tensor<2> {
        let Start::Block(first) = start else {
            return self.forward_features(x);
        };
        let x = self
            .stages
            .iter()
            .flat_map(|s| &s.blocks)
            .skip(first)
            .fold(x, |x, block| block.forward(x));
        global_average_pool(x)
    }

    /// The first block of layer group `min(trainable)` (group 0 is the stem, group `s + 1` the
    /// stage `layer{s+1}`): where a frozen prefix ends. `None` when the stem trains.
    pub fn first_trainable_block(&self, trainable: &[usize]) -> Option<usize> {
        match *trainable.iter().min()? {
            0 => None,
            g => Some(self.stages.iter().take(g - 1).map(|s| s.blocks.len()).sum()),
        }
    }

    /// Pooled features `[N, 512 × expansion]`.
    pub fn forward_features(&self, x: Tensor<4>) -> Tensor<2> {
        let map = self.forward_groups(x).pop().expect("five group outputs");
        global_average_pool(map)
    }

    /// ImageNet logits, or `None` without the top.
    pub fn forward_logits(&self, x: Tensor<4>) -> Option<Tensor<2>> {
        let fc = self.fc.as_ref()?;
        Some(fc.forward(self.forward_features(x)))
    }

    /// Fold every BatchNorm into its conv, for inference.
    pub fn fold_batch_norm(&mut self) {
        self.stem.fold_batch_norm();
        for block in self.stages.iter_mut().flat_map(|s| s.blocks.iter_mut()) {
            for conv in [
                Some(&mut block.conv1),
                Some(&mut block.conv2),
                block.conv3.as_mut(),
                block.downsample.as_mut(),
            ]
            .into_iter()
            .flatten()
            {
                conv.fold_batch_norm();
            }
        }
    }

    pub fn device(&self) -> Device {
        self.stem.conv.weight.val().device()
    }
}

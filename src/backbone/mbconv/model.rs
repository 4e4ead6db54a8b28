//! One network for the MobileNetV2 / EfficientNet-Lite family: stem, stages of MBConv blocks,
//! 1x1 head conv, global average pool, optional linear classifier. The families differ only in
//! their stage table (data) and in the names their checkpoints give the tensors.

use burn::module::Module;
use burn::nn::Linear;
use burn::tensor::{Device, Tensor};

use super::blocks::{BlockSpec, ConvBnAct, ConvSpec, InvertedResidual};
use crate::backbone::family::{Start, global_average_pool};
use crate::backbone::source_config::PaddingMode;
use crate::rng::RunRng;

/// One stage: `repeats` blocks, the first with `stride` and the channel change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StageSpec {
    pub repeats: usize,
    pub kernel: usize,
    pub stride: usize,
    pub expand_ratio: usize,
    pub out_channels: usize,
}

/// The architecture as data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MbNetSpec {
    pub stem_channels: usize,
    pub stages: Vec<StageSpec>,
    pub head_channels: usize,
    pub num_classes: usize,
}

impl MbNetSpec {
    pub fn stem(&self) -> ConvSpec {
        ConvSpec {
            in_channels: 3,
            out_channels: self.stem_channels,
            kernel: 3,
            stride: 2,
            groups: 1,
            activation: true,
        }
    }

    /// Every block in order, with the index of the stage it belongs to.
    pub fn blocks(&self) -> Vec<(usize, BlockSpec)> {
        let mut in_channels = self.stem_channels;
        let mut blocks = Vec::new();
        for (stage_index, stage) in self.stages.iter().enumerate() {
            for repeat in 0..stage.repeats {
                blocks.push((
                    stage_index,
                    BlockSpec {
                        in_channels,
                        out_channels: stage.out_channels,
                        expand_ratio: stage.expand_ratio,
                        kernel: stage.kernel,
                        stride: if repeat == 0 { stage.stride } else { 1 },
                    },
                ));
                in_channels = stage.out_channels;
            }
        }
        blocks
    }

    pub fn head(&self) -> ConvSpec {
        let last = self
            .stages
            .last()
            .map_or(self.stem_channels, |s| s.out_channels);
        ConvSpec {
            in_channels: last,
            out_channels: self.head_channels,
            kernel: 1,
            stride: 1,
            groups: 1,
            activation: true,
        }
    }
}

/// A named intermediate activation, for parity checks and `summary`.
pub struct Tap {
    pub name: String,
    pub value: Tensor<4>,
}

#[derive(Module, Debug)]
pub struct MbNet {
    pub stem: ConvBnAct,
    pub blocks: Vec<InvertedResidual>,
    pub head: ConvBnAct,
    /// `None` when the model is cut at the pooled features ("include_top=False").
    pub classifier: Option<Linear>,
    /// Index of the last block of each stage.
    pub stage_ends: Vec<usize>,
}

impl MbNet {
    /// A network with weights drawn from `rng` (a weight loader then overwrites every tensor,
    /// or it trains from scratch).
    pub fn init(
        spec: &MbNetSpec,
        padding: PaddingMode,
        bn_eps: f64,
        include_top: bool,
        rng: &mut RunRng,
        device: &Device,
    ) -> Self {
        let mut layer = |conv: ConvSpec| ConvBnAct::init(conv, padding, bn_eps, rng, device);
        let stem = layer(spec.stem());
        let specs = spec.blocks();
        let blocks = specs
            .iter()
            .map(|(_, b)| InvertedResidual {
                expand: b.expand().map(&mut layer),
                depthwise: layer(b.depthwise()),
                project: layer(b.project()),
                residual: b.has_residual(),
            })
            .collect();
        let head = layer(spec.head());
        let stage_ends = (0..spec.stages.len())
            .map(|stage| {
                specs
                    .iter()
                    .rposition(|(s, _)| *s == stage)
                    // cannot fail: every stage of the built-in architectures has blocks
                    .expect("every stage has at least one block")
            })
            .collect();
        Self {
            stem,
            blocks,
            head,
            classifier: include_top
                .then(|| crate::rng::linear(spec.head_channels, spec.num_classes, rng, device)),
            stage_ends,
        }
    }

    /// The network on the autodiff `device`, ready to train. `fork` alone is not enough: a
    /// module from a plain device keeps gradients off until `train()` enables them (burn 0.22),
    /// and its backward pass would silently skip every backbone weight.
    pub fn for_training(self, device: &Device) -> Self {
        self.fork(device).train()
    }

    /// Fold every BatchNorm into its conv, for inference (see [`ConvBnAct::fold_batch_norm`]).
    pub fn fold_batch_norm(&mut self) {
        self.stem.fold_batch_norm();
        for block in &mut self.blocks {
            if let Some(expand) = &mut block.expand {
                expand.fold_batch_norm();
            }
            block.depthwise.fold_batch_norm();
            block.project.fold_batch_norm();
        }
        self.head.fold_batch_norm();
    }

    /// Feature map before pooling, `[N, head_channels, h, w]`.
    pub fn forward_feature_map(&self, x: Tensor<4>) -> Tensor<4> {
        self.forward_feature_map_from(Start::Image, x)
    }

    /// [`MbNet::forward_feature_map`] from `start`.
    pub fn forward_feature_map_from(&self, start: Start, x: Tensor<4>) -> Tensor<4> {
        let (x, first) = match start {
            Start::Image => (self.stem.forward(x), 0),
            Start::Block(first) => (x, first),
        };
        let x = self.blocks[first.min(self.blocks.len())..]
            .iter()
            .fold(x, |x, b| b.forward(x));
        self.head.forward(x)
    }

    /// Pooled features from `start` (see [`Start`]).
    pub fn forward_features_from(&self, start: Start, x: Tensor<4>) -> Tensor<2> {
        global_average_pool(self.forward_feature_map_from(start, x))
    }

    /// Pooled features ("bottlenecks"), `[N, head_channels]`.
    pub fn forward_features(&self, x: Tensor<4>) -> Tensor<2> {
        global_average_pool(self.forward_feature_map(x))
    }

    /// ImageNet logits, `[N, num_classes]`; `None` when the top was cut off.
    pub fn forward_logits(&self, x: Tensor<4>) -> Option<Tensor<2>> {
        let classifier = self.classifier.as_ref()?;
        Some(classifier.forward(self.forward_features(x)))
    }

    /// The output of the stem, of the last block of each stage and of the head conv.
    pub fn forward_taps(&self, x: Tensor<4>) -> Vec<Tap> {
        let mut taps = Vec::new();
        let mut x = self.stem.forward(x);
        taps.push(Tap {
            name: "stem".into(),
            value: x.clone(),
        });
        for (i, block) in self.blocks.iter().enumerate() {
            x = block.forward(x);
            if let Some(stage) = self.stage_ends.iter().position(|&end| end == i) {
                taps.push(Tap {
                    name: format!("stage{}", stage + 1),
                    value: x.clone(),
                });
            }
        }
        taps.push(Tap {
            name: "head".into(),
            value: self.head.forward(x),
        });
        taps
    }
}

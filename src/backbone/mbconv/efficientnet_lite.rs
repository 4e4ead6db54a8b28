//! EfficientNet-Lite0/1/2 (Google's TF models, converted to PyTorch by ML Illustrated):
//! no squeeze-excitation, ReLU6, TF SAME padding, BatchNorm eps 1e-3, (x - 127) / 128.

use super::model::{MbNetSpec, StageSpec};

/// Per stage: (kernel, stride, expand ratio) for stages 1..7 of every Lite variant.
const STAGE_SHAPES: [(usize, usize, usize); 7] = [
    (3, 1, 1),
    (3, 2, 6),
    (5, 2, 6),
    (3, 2, 6),
    (5, 1, 6),
    (5, 2, 6),
    (3, 1, 6),
];

/// Stage repeats and output channels of one variant. Depth and width multipliers are already
/// applied (with TF's rounding); the first and last stage and the stem/head are not scaled.
pub fn spec(repeats: [usize; 7], channels: [usize; 7]) -> MbNetSpec {
    MbNetSpec {
        stem_channels: 32,
        stages: STAGE_SHAPES
            .iter()
            .zip(repeats.iter().zip(channels.iter()))
            .map(
                |(&(kernel, stride, expand_ratio), (&repeats, &out_channels))| StageSpec {
                    repeats,
                    kernel,
                    stride,
                    expand_ratio,
                    out_channels,
                },
            )
            .collect(),
        head_channels: 1280,
        num_classes: 1000,
    }
}

pub fn lite0() -> MbNetSpec {
    spec([1, 2, 2, 3, 3, 4, 1], [16, 24, 40, 80, 112, 192, 320])
}

pub fn lite1() -> MbNetSpec {
    spec([1, 3, 3, 4, 4, 5, 1], [16, 24, 40, 80, 112, 192, 320])
}

pub fn lite2() -> MbNetSpec {
    spec([1, 3, 3, 4, 4, 5, 1], [16, 24, 48, 88, 120, 208, 352])
}

//! MobileNetV2 1.0 (torchvision layout): stem 32, seven stages of 3x3 MBConv, head 1280.

use super::model::{MbNetSpec, StageSpec};

pub fn spec() -> MbNetSpec {
    // (expand ratio t, channels c, repeats n, stride s) from the paper / torchvision.
    let table = [
        (1, 16, 1, 1),
        (6, 24, 2, 2),
        (6, 32, 3, 2),
        (6, 64, 4, 2),
        (6, 96, 3, 1),
        (6, 160, 3, 2),
        (6, 320, 1, 1),
    ];
    MbNetSpec {
        stem_channels: 32,
        stages: table
            .iter()
            .map(|&(expand_ratio, out_channels, repeats, stride)| StageSpec {
                repeats,
                kernel: 3,
                stride,
                expand_ratio,
                out_channels,
            })
            .collect(),
        head_channels: 1280,
        num_classes: 1000,
    }
}

//! What every family's reference model shares: where a forward pass starts, and the global
//! average pool the CNNs end with. Families import this module; it imports none of them.

use burn::tensor::Tensor;

/// Where a forward pass starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// From the preprocessed image: the stem, then every block.
    Image,
    /// From the feature map entering block `n` (the layers before it already ran; a ResNet
    /// counts the blocks of all its stages in order).
    Block(usize),
}

/// The mean of each channel of `x` `[N, C, H, W]`: `[N, C]`.
pub fn global_average_pool(x: Tensor<4>) -> Tensor<2> {
    let [n, c, _, _] = x.dims();
    x.mean_dims(&[2, 3]).reshape([n, c])
}

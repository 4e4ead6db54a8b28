//! Images in, network-ready tensors out.

pub mod augment;
pub mod complete;
pub mod dataset;
pub mod decode;
pub mod exclude;
pub mod preprocess;
pub mod resample;

use std::path::{Path, PathBuf};

use burn::tensor::{Device, Tensor, TensorData};
use rayon::prelude::*;

pub use decode::{DecodeError, DecodeLimits, decode_bytes_for, decode_rgb};
pub use preprocess::{Chw, preprocess};

use crate::backbone::SourceConfig;

/// Decode and preprocess one file.
pub fn load_image(
    path: &Path,
    config: &SourceConfig,
    limits: DecodeLimits,
) -> Result<Chw, DecodeError> {
    decode::decode_for(path, config, limits).map(|rgb| preprocess(&rgb, config))
}

/// Decode and preprocess many files in parallel; results keep the input order.
pub fn load_images(
    paths: &[PathBuf],
    config: &SourceConfig,
    limits: DecodeLimits,
) -> Vec<Result<Chw, DecodeError>> {
    paths
        .par_iter()
        .map(|p| load_image(p, config, limits))
        .collect()
}

/// Stack preprocessed images of side `resolution` into an `[N, 3, R, R]` batch.
pub fn to_batch(images: &[&Chw], resolution: usize, device: &Device) -> Tensor<4> {
    let mut flat = Vec::with_capacity(images.len() * 3 * resolution * resolution);
    for image in images {
        flat.extend_from_slice(image);
    }
    Tensor::from_data(
        TensorData::new(flat, [images.len(), 3, resolution, resolution]),
        device,
    )
}

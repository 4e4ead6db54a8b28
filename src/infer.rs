//! Inference: images -> top-k, with the ImageNet classifier (recipe 1) or a trained head.

use std::path::PathBuf;

use burn::tensor::Tensor;
use burn::tensor::activation::softmax;

use crate::backbone::Backbone;
use crate::data::{DecodeError, DecodeLimits, load_images, to_batch};
use crate::head::Head;
use crate::labels;

/// One ranked class.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Prediction {
    pub index: usize,
    pub label: String,
    pub probability: f32,
}

/// The outcome for one input file.
#[derive(Debug)]
pub struct Classified {
    pub path: PathBuf,
    pub result: Result<Vec<Prediction>, DecodeError>,
}

/// The `k` largest probabilities, best first.
pub fn top_k(probabilities: &[f32], k: usize, names: &[&str]) -> Vec<Prediction> {
    let mut order: Vec<usize> = (0..probabilities.len()).collect();
    order.sort_by(|&a, &b| probabilities[b].total_cmp(&probabilities[a]));
    order
        .into_iter()
        .take(k)
        .map(|index| Prediction {
            index,
            label: names
                .get(index)
                .map_or_else(|| index.to_string(), |s| s.to_string()),
            probability: probabilities[index],
        })
        .collect()
}

/// What turns a batch into class probabilities.
#[derive(Debug, Clone, Copy)]
pub enum Top<'a> {
    /// The backbone's own ImageNet classifier (it must be loaded with its top).
    ImageNet,
    /// A head trained by graft on the backbone's pooled features.
    Trained {
        head: &'a Head,
        classes: &'a [String],
    },
    /// A CLIP / SigLIP classifier of the user's labels on the image tower's embeddings.
    ZeroShot(&'a crate::clip::ZeroShotClassifier),
}

impl Top<'_> {
    /// The name of each class, in score order.
    pub fn class_names(&self, config: &crate::backbone::SourceConfig) -> Vec<String> {
        match self {
            Top::ImageNet => labels::names(config.labels)
                .iter()
                .map(|s| s.to_string())
                .collect(),
            Top::Trained { classes, .. } => classes.to_vec(),
            Top::ZeroShot(classifier) => classifier.labels.clone(),
        }
    }

    /// Probabilities `[N, classes]` of a preprocessed batch. `Top::ImageNet` needs a backbone
    /// loaded with its top (`include_top`).
    pub fn probabilities(&self, backbone: &Backbone, batch: Tensor<4>) -> Vec<f32> {
        match self {
            Top::ImageNet => {
                let logits = backbone
                    .logits(batch)
                    // cannot fail: Top::ImageNet only comes with a backbone loaded with its top
                    .expect("ImageNet top-k needs a backbone loaded with its top");
                softmax(logits, 1)
                    .into_data()
                    .try_into_vec::<f32>()
                    // cannot fail: graft makes only f32 tensors (the default float dtype)
                    .expect("softmax output is f32")
            }
            Top::Trained { head, .. } => {
                let features = backbone
                    .features(batch)
                    .into_data()
                    .try_into_vec::<f32>()
                    // cannot fail: graft makes only f32 tensors (the default float dtype)
                    .expect("features are f32");
                head.scores(&features, backbone.config.feature_dim)
            }
            Top::ZeroShot(classifier) => {
                let features = backbone
                    .features(batch)
                    .into_data()
                    .try_into_vec::<f32>()
                    // cannot fail: graft makes only f32 tensors (the default float dtype)
                    .expect("features are f32");
                features
                    .chunks_exact(backbone.config.feature_dim.max(1))
                    .flat_map(|e| classifier.probabilities(e))
                    .collect()
            }
        }
    }
}

/// Classify `paths` with `top`, `batch_size` images at a time. Files that cannot be decoded
/// get their error; the others are still classified. `on_batch` is called with the number of
/// files finished after each batch.
pub fn classify(
    backbone: &Backbone,
    top: Top<'_>,
    paths: &[PathBuf],
    k: usize,
    batch_size: usize,
    limits: DecodeLimits,
    mut on_batch: impl FnMut(usize),
) -> Vec<Classified> {
    let config = &backbone.config;
    let names = top.class_names(config);
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let classes = names.len();
    let device = backbone.device();
    let mut out = Vec::with_capacity(paths.len());
    for chunk in paths.chunks(batch_size.max(1)) {
        let decoded = load_images(chunk, config, limits);
        let good: Vec<_> = decoded.iter().filter_map(|r| r.as_ref().ok()).collect();
        let mut probabilities = Vec::new();
        if !good.is_empty() {
            let batch = to_batch(&good, config.resolution, &device);
            probabilities = top.probabilities(backbone, batch);
        }
        let mut row = 0;
        for (path, result) in chunk.iter().zip(decoded) {
            let result = result.map(|_| {
                let p = &probabilities[row * classes..(row + 1) * classes];
                row += 1;
                top_k(p, k, &names)
            });
            out.push(Classified {
                path: path.clone(),
                result,
            });
        }
        on_batch(chunk.len());
    }
    out
}

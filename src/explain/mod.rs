//! Why a model predicts what it predicts: a heatmap of the regions of a photo that drove the
//! predicted class, drawn over the photo.
//!
//! - CNNs (EfficientNet-Lite, MobileNetV2, ResNet, ConvNeXt): the last convolutional stage's
//!   maps, weighted per channel for the predicted class. Where the top is linear on their
//!   global average (MBConv, ResNet), the weights are the top's class weights: CAM (Zhou et
//!   al. 2016), which is exactly Grad-CAM (Selvaraju et al. 2017) there, computed from the
//!   maps the fused CPU forward returns, with no backward pass. ConvNeXt normalises the pooled
//!   features, so its weights are Grad-CAM's mean gradients, by burn's autodiff of the
//!   pooling, the LayerNorm and the top.
//! - ViT / DINOv2: Grad-CAM on the patch tokens entering the last block (the last block's
//!   output patch tokens do not reach a class-token feature; `cam::vit` says more), by burn's
//!   autodiff of that one block.
//!
//! The top must be linear: a dense head, logistic regression or a linear SVM (their feature
//! standardisation is already folded into [`Head::Linear`]'s weights), or the backbone's own
//! ImageNet classifier. A kNN top has no class weights to explain with: [`ExplainError::NotLinear`].

mod cam;
pub mod overlay;

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use burn::tensor::Tensor;
use image::RgbImage;

use crate::backbone::{Backbone, Network};
use crate::data::decode::decode_for;
use crate::data::preprocess::{crop_and_resize, normalize};
use crate::data::{DecodeError, DecodeLimits, to_batch};
use crate::head::Head;

/// How a heatmap was computed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Method {
    /// Class activation map: the top's class weights on the last maps (exact for a linear top
    /// on their global average).
    Cam,
    /// Mean gradients of the class score as channel weights, by burn's autodiff.
    GradCam,
}

impl Method {
    /// What [`heatmaps`] uses for `backbone`: CAM where it equals Grad-CAM, else Grad-CAM.
    pub fn for_backbone(backbone: &Backbone) -> Self {
        if cam::pools_linearly(&backbone.net) {
            Method::Cam
        } else {
            Method::GradCam
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            Method::Cam => "CAM",
            Method::GradCam => "Grad-CAM",
        }
    }
}

/// One image's heatmap for its predicted class.
#[derive(Debug, Clone, PartialEq)]
pub struct Heatmap {
    /// The predicted class (index into the top's classes).
    pub class: usize,
    /// Its softmax probability under the top (before any calibration).
    pub probability: f32,
    pub method: Method,
    /// `[rows, columns]` of the map: the last stage's grid, or the ViT's patch grid.
    pub grid: [usize; 2],
    /// `rows * columns` values, row-major, each >= 0 (the ReLU of the weighted sum).
    pub values: Vec<f32>,
}

impl Heatmap {
    /// The values scaled to [0, 1] by their maximum (all zeros stay zeros).
    pub fn normalised(&self) -> Vec<f32> {
        let max = self.values.iter().copied().fold(0.0f32, f32::max);
        if max > 0.0 {
            self.values.iter().map(|v| v / max).collect()
        } else {
            vec![0.0; self.values.len()]
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ExplainError {
    #[error(
        "a kNN top has no class weights to weight the feature maps with; heatmaps need a \
         linear top: train with --recipe head, logreg or svm"
    )]
    NotLinear,
    #[error("{backbone} ({family}) {problem}")]
    Unsupported {
        backbone: String,
        family: &'static str,
        problem: String,
    },
    #[error("the top takes {top} features, the backbone {backbone} gives {features}")]
    Width {
        top: usize,
        backbone: String,
        features: usize,
    },
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: {problem}", path.display())]
    Write { path: PathBuf, problem: String },
}

impl ExplainError {
    fn unsupported(backbone: &Backbone, problem: &str) -> Self {
        Self::Unsupported {
            backbone: backbone.config.name.clone(),
            family: backbone.net.family(),
            problem: problem.to_string(),
        }
    }
}

/// A linear top on pooled features: `logits = W x + b`, `W` `[classes, dim]` row-major.
#[derive(Debug, Clone, PartialEq)]
pub struct LinearTop {
    pub weight: Vec<f32>,
    pub bias: Vec<f32>,
}

impl LinearTop {
    /// A trained top's weights; a kNN top is [`ExplainError::NotLinear`].
    pub fn from_head(head: &Head) -> Result<Self, ExplainError> {
        match head {
            Head::Linear { weight, bias } => Ok(Self {
                weight: weight.clone(),
                bias: bias.clone(),
            }),
            Head::Knn { .. } => Err(ExplainError::NotLinear),
        }
    }

    /// The backbone's own ImageNet classifier, when it was loaded with it.
    pub fn imagenet(backbone: &Backbone) -> Option<Self> {
        let (weight, bias) = backbone.net.classifier_weights()?;
        Some(Self { weight, bias })
    }

    pub fn classes(&self) -> usize {
        self.bias.len()
    }

    pub fn dim(&self) -> usize {
        self.weight.len() / self.bias.len().max(1)
    }

    /// Logits `[n, classes]` of feature rows `[n, dim]`.
    pub fn logits(&self, features: &[f32]) -> Vec<f32> {
        let dim = self.dim();
        features
            .chunks_exact(dim.max(1))
            .flat_map(|row| {
                self.weight
                    .chunks_exact(dim.max(1))
                    .zip(&self.bias)
                    .map(move |(w, b)| b + w.iter().zip(row).map(|(w, x)| w * x).sum::<f32>())
            })
            .collect()
    }
}

/// The heatmap of each image of a preprocessed batch `[N, 3, H, W]` for the class `top`
/// predicts, by [`Method::for_backbone`].
pub fn heatmaps(
    backbone: &Backbone,
    top: &LinearTop,
    batch: Tensor<4>,
) -> Result<Vec<Heatmap>, ExplainError> {
    heatmaps_with(backbone, top, batch, Method::for_backbone(backbone))
}

/// [`heatmaps`] by the given method: Grad-CAM works for every family, CAM only where the
/// features are the plain global average of the last maps (MBConv, ResNet).
pub fn heatmaps_with(
    backbone: &Backbone,
    top: &LinearTop,
    batch: Tensor<4>,
    method: Method,
) -> Result<Vec<Heatmap>, ExplainError> {
    let features = backbone.config.feature_dim;
    if top.dim() != features {
        return Err(ExplainError::Width {
            top: top.dim(),
            backbone: backbone.config.name.clone(),
            features,
        });
    }
    match (&backbone.net, method) {
        (Network::Vit(_), Method::Cam) => Err(ExplainError::unsupported(
            backbone,
            "has no convolutional maps for CAM: use Grad-CAM",
        )),
        (Network::Vit(_), Method::GradCam) => cam::vit(backbone, top, batch),
        _ => cam::cnn(backbone, top, batch, method),
    }
}

/// A photo's heatmap and the photo (as the network saw it) with the heatmap drawn over it, or
/// why the photo could not be decoded.
pub type Drawn = Result<(Heatmap, RgbImage), DecodeError>;

/// One photo explained: its heatmap and the PNG written.
#[derive(Debug, Clone)]
pub struct Explanation {
    pub heatmap: Heatmap,
    pub png: PathBuf,
}

/// The outcome for one input file.
#[derive(Debug)]
pub struct Explained {
    pub path: PathBuf,
    pub result: Result<Explanation, DecodeError>,
}

/// Each of `paths` with its heatmap drawn over it ([`overlay::render`] on the photo as the
/// network saw it: the crop at the model's resolution), `batch_size` photos per forward pass.
/// Files that cannot be decoded get their error; an error of the model ends the call.
pub fn explain_images(
    backbone: &Backbone,
    top: &LinearTop,
    paths: &[PathBuf],
    batch_size: usize,
    limits: DecodeLimits,
) -> Result<Vec<Drawn>, ExplainError> {
    use rayon::prelude::*;
    let config = &backbone.config;
    let mut out = Vec::with_capacity(paths.len());
    for chunk in paths.chunks(batch_size.max(1)) {
        // One decode per photo: the crop both feeds the network and is drawn on.
        let crops: Vec<Result<RgbImage, DecodeError>> = chunk
            .par_iter()
            .map(|p| decode_for(p, config, limits).map(|rgb| crop_and_resize(&rgb, config)))
            .collect();
        let good: Vec<&RgbImage> = crops.iter().filter_map(|c| c.as_ref().ok()).collect();
        let mut drawn = explain_crops(backbone, top, &good)?.into_iter();
        for crop in crops {
            // cannot fail: one heatmap per decoded photo
            out.push(crop.map(|_| drawn.next().expect("a heatmap per photo")));
        }
    }
    Ok(out)
}

/// The heatmap of each crop (a photo cropped and resized as the network takes it,
/// [`crop_and_resize`]), one forward pass for all, and the crop with it drawn over.
pub fn explain_crops(
    backbone: &Backbone,
    top: &LinearTop,
    crops: &[&RgbImage],
) -> Result<Vec<(Heatmap, RgbImage)>, ExplainError> {
    if crops.is_empty() {
        return Ok(Vec::new());
    }
    let config = &backbone.config;
    let inputs: Vec<_> = crops
        .iter()
        .map(|crop| normalize(crop, &config.normalization))
        .collect();
    let inputs: Vec<&_> = inputs.iter().collect();
    let batch = to_batch(&inputs, config.resolution, &backbone.device());
    let maps = heatmaps(backbone, top, batch)?;
    Ok(maps
        .into_iter()
        .zip(crops)
        .map(|(heatmap, crop)| {
            let drawn = overlay::render(crop, &heatmap);
            (heatmap, drawn)
        })
        .collect())
}

/// [`explain_images`], each written into `out_dir` (created if needed) as a PNG named after
/// the photo (`rose.jpg` -> `rose.png`; `rose-2.png` for a second photo of that name).
pub fn explain_files(
    backbone: &Backbone,
    top: &LinearTop,
    paths: &[PathBuf],
    out_dir: &Path,
    batch_size: usize,
    limits: DecodeLimits,
) -> Result<Vec<Explained>, ExplainError> {
    std::fs::create_dir_all(out_dir).map_err(|source| ExplainError::Io {
        path: out_dir.to_path_buf(),
        source,
    })?;
    let mut taken = HashSet::new();
    let mut out = Vec::with_capacity(paths.len());
    // A batch at a time, so that only one batch of drawn photos is held.
    for chunk in paths.chunks(batch_size.max(1)) {
        let drawn = explain_images(backbone, top, chunk, batch_size, limits)?;
        for (path, result) in chunk.iter().zip(drawn) {
            let result = match result {
                Ok((heatmap, image)) => {
                    let png = out_dir.join(png_name(path, &mut taken));
                    overlay::write_png(&image, &png)?;
                    Ok(Explanation { heatmap, png })
                }
                Err(e) => Err(e),
            };
            out.push(Explained {
                path: path.clone(),
                result,
            });
        }
    }
    Ok(out)
}

/// `<stem>.png`, or `<stem>-<n>.png` for the first `n` from 2 not yet `taken` in this call.
pub fn png_name(path: &Path, taken: &mut HashSet<String>) -> String {
    let stem = path
        .file_stem()
        .map_or_else(|| "image".into(), |s| s.to_string_lossy().into_owned());
    let name = (1..)
        .map(|n| match n {
            1 => format!("{stem}.png"),
            n => format!("{stem}-{n}.png"),
        })
        .find(|name| !taken.contains(name))
        // cannot fail: `1..` never ends and `taken` is finite
        .expect("a free name");
    taken.insert(name.clone());
    name
}

/// Spearman's rank correlation of two equally long series (ties get their mean rank): how
/// alike two heatmaps are whatever their scale (Adebayo et al.'s sanity checks use it).
pub fn spearman(a: &[f32], b: &[f32]) -> f64 {
    fn ranks(v: &[f32]) -> Vec<f64> {
        let mut order: Vec<usize> = (0..v.len()).collect();
        order.sort_by(|&i, &j| v[i].total_cmp(&v[j]));
        let mut ranks = vec![0.0; v.len()];
        let mut start = 0;
        while start < order.len() {
            let mut end = start + 1;
            while end < order.len() && v[order[end]] == v[order[start]] {
                end += 1;
            }
            let mean = (start + end - 1) as f64 / 2.0;
            for &i in &order[start..end] {
                ranks[i] = mean;
            }
            start = end;
        }
        ranks
    }
    assert_eq!(a.len(), b.len(), "series of different lengths");
    let (ra, rb) = (ranks(a), ranks(b));
    let mean = |r: &[f64]| r.iter().sum::<f64>() / r.len().max(1) as f64;
    let (ma, mb) = (mean(&ra), mean(&rb));
    let cov: f64 = ra.iter().zip(&rb).map(|(x, y)| (x - ma) * (y - mb)).sum();
    let var = |r: &[f64], m: f64| r.iter().map(|x| (x - m).powi(2)).sum::<f64>();
    let denominator = (var(&ra, ma) * var(&rb, mb)).sqrt();
    if denominator == 0.0 {
        0.0
    } else {
        cov / denominator
    }
}

#[cfg(test)]
mod tests;

//! A contrastive image-text model ready to run: the image tower as a graft [`Backbone`] (its
//! fused CPU form, its preprocessing), the text tower, the tokenizer and the temperature.

use std::path::Path;

use burn::tensor::Tensor;

use crate::backbone::source_config::{self, LabelSet, PaddingMode, Pooling, Precision};
use crate::backbone::vit::{Vit, VitLayout};
use crate::backbone::{Backbone, SourceConfig};
use crate::weights::loader::TensorSource;
use crate::weights::{Checkpoint, LoadReport};

use super::config::{ContrastiveConfig, Kind};
use super::error::ClipError;
use super::keys;
use super::prompts::Prompts;
use super::text::TextTower;
use super::tokenizer::TextTokenizer;

/// Whether `name` names a CLIP / SigLIP model rather than a registry backbone: a folder
/// holding such a repository, or `hf:owner/name` that is not a registry entry's Hub weights.
pub fn names_model(name: &str) -> bool {
    ContrastiveConfig::is_repository(Path::new(name))
        || (name.starts_with("hf:") && crate::backbone::find(name).is_none())
}

/// The CLIP / SigLIP model `spec` names: a folder holding a `transformers` or OpenCLIP
/// repository, or `hf:owner/name`, fetched once into the store's `hub/` folder (from
/// `HF_ENDPOINT` when set) and reused. `progress` shows the downloads.
pub fn open(
    spec: &str,
    progress: &mut dyn crate::progress::Progress,
) -> Result<ContrastiveModel, ClipError> {
    let local = Path::new(spec);
    let dir = if local.is_dir() {
        local.to_path_buf()
    } else if spec.starts_with("hf:") {
        crate::weights::hub::fetch_repository(
            spec,
            &crate::weights::hub::endpoint(),
            &crate::weights::store::weights_dir().join("hub"),
            progress,
        )?
    } else {
        return Err(ClipError::Input(format!(
            "`{spec}` is not a CLIP or SigLIP model: zero-shot and search need one, as \
             hf:openai/clip-vit-base-patch32 (or hf:google/siglip-base-patch16-224, an \
             OpenCLIP repository) or a folder holding such a repository"
        )));
    };
    if !ContrastiveConfig::is_repository(&dir) {
        return Err(ClipError::config(
            &dir,
            "not a CLIP or SigLIP repository (expected config.json + \
             preprocessor_config.json, or open_clip_config.json)"
                .into(),
        ));
    }
    // A folder is named by its absolute path, so that runs recording it reopen it from
    // anywhere.
    let name = if local.is_dir() {
        std::fs::canonicalize(&dir)
            .map_err(|e| ClipError::io(&dir, e))?
            .display()
            .to_string()
    } else {
        spec.to_string()
    };
    ContrastiveModel::open(&dir, &name)
}

/// Both towers, the tokenizer and how similarities become probabilities.
#[derive(Debug)]
pub struct ContrastiveModel {
    pub config: ContrastiveConfig,
    /// The image tower: its features are the image embeddings (unnormalised).
    pub image: Backbone,
    pub text: TextTower,
    pub tokenizer: TextTokenizer,
    /// `exp(logit_scale)`: the similarity's multiplier (100 in OpenAI's CLIP).
    pub scale: f32,
    /// SigLIP's `logit_bias`; 0 for CLIP.
    pub bias: f32,
}

/// Texts per batch through the text tower.
const TEXT_BATCH: usize = 64;

/// `v` scaled to unit length (a zero vector stays zero).
pub fn l2_normalised(mut v: Vec<f32>) -> Vec<f32> {
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
    v.iter_mut().for_each(|x| *x /= norm);
    v
}

fn rows(t: Tensor<2>) -> Vec<Vec<f32>> {
    let [_, d] = t.dims();
    let values: Vec<f32> = t
        .into_data()
        .convert::<f32>()
        .try_into_vec::<f32>()
        .unwrap_or_default();
    values.chunks_exact(d.max(1)).map(<[f32]>::to_vec).collect()
}

impl ContrastiveModel {
    /// The model of the repository in `dir` (see [`ContrastiveConfig::from_dir`]), `name`
    /// naming it in caches and messages (`hf:openai/clip-vit-base-patch32`, or the path).
    pub fn open(dir: &Path, name: &str) -> Result<Self, ClipError> {
        let config = ContrastiveConfig::from_dir(dir)?;
        let device = crate::backend::device();
        let checkpoint = Checkpoint::open(&config.weights)?;
        let translated = keys::translate(checkpoint, config.layout);

        let mut vision = Vit::init(&config.vision, false, &device);
        let mut source = TensorSource::new(&translated.vision, "patch_embed.proj.weight", &device);
        vision.visit_keys(&mut source, VitLayout::Timm);
        let report = source.finish();
        let mismatch = |tower, report: LoadReport| ClipError::Mismatch {
            path: config.weights.clone(),
            tower,
            report: Box::new(report),
        };
        if !report.is_clean() {
            return Err(mismatch("image", report));
        }
        let mut text = TextTower::init(&config.text, &device);
        let mut source = TensorSource::new(&translated.text, "token_embedding", &device);
        text.visit_keys(&mut source);
        let report = source.finish();
        if !report.is_clean() {
            return Err(mismatch("text", report));
        }
        let scale = translated
            .scalars
            .get("logit_scale")
            .ok_or_else(|| ClipError::config(&config.weights, "no logit_scale".into()))?
            .exp();
        let bias = match config.kind {
            Kind::Clip => 0.0,
            Kind::Siglip => *translated
                .scalars
                .get("logit_bias")
                .ok_or_else(|| ClipError::config(&config.weights, "no logit_bias".into()))?,
        };
        let tokenizer = TextTokenizer::open(&config.tokenizer, &config.text)?;
        let weights_id = crate::util::file_sha256(&config.weights)
            .map_err(|e| ClipError::io(&config.weights, e))?[..16]
            .to_string();
        let source_config = SourceConfig {
            name: name.to_string(),
            resolution: config.resolution,
            crop: config.crop,
            resize_filter: config.resize_filter,
            normalization: config.normalization,
            padding: PaddingMode::Symmetric,
            bn_eps: config.vision.ln_eps,
            labels: LabelSet::ImageNet1k,
            num_classes: 0,
            feature_dim: config.vision.feature_dim(),
            layer_groups: config.vision.group_names(),
            weights_origin: format!("{name} ({})", config.weights.display()),
            decode: source_config::default_decode(),
            pool: Pooling::Source,
            precision: Precision::F32,
        };
        let image = Backbone::new(source_config, vision, weights_id).for_inference();
        Ok(Self {
            config,
            image,
            text,
            tokenizer,
            scale,
            bias,
        })
    }

    /// Image embeddings (unnormalised) of a preprocessed batch, one row per image.
    pub fn image_embeddings(&self, batch: Tensor<4>) -> Vec<Vec<f32>> {
        rows(self.image.features(batch))
    }

    /// Text embeddings (unnormalised), one per text.
    pub fn text_embeddings(&self, texts: &[String]) -> Result<Vec<Vec<f32>>, ClipError> {
        // Chunks in parallel: burn's modules keep only part of a second core busy on one
        // chunk of short sequences (1.3 cores of 2 measured on 1,000 prompts).
        use rayon::prelude::*;
        let chunks: Vec<Vec<Vec<f32>>> = texts
            .par_chunks(TEXT_BATCH)
            .map(|chunk| {
                let encoded = self.tokenizer.encode(chunk)?;
                Ok(rows(self.text.forward(&encoded.ids, &encoded.positions)))
            })
            .collect::<Result<_, ClipError>>()?;
        Ok(chunks.into_iter().flatten().collect())
    }

    /// The zero-shot classifier of `labels`: each label's normalised mean of its prompts'
    /// normalised embeddings (the CLIP paper's prompt ensembling).
    pub fn classifier(
        &self,
        labels: &[String],
        prompts: &Prompts,
    ) -> Result<ZeroShotClassifier, ClipError> {
        if labels.is_empty() {
            return Err(ClipError::Input("no labels given".into()));
        }
        let mut weights = Vec::with_capacity(labels.len());
        for label in labels {
            if label.trim().is_empty() {
                return Err(ClipError::Input("an empty label".into()));
            }
            let embeddings = self.text_embeddings(&prompts.sentences(label))?;
            let mut mean = vec![0.0; self.config.text.embed_dim];
            for e in embeddings.into_iter().map(l2_normalised) {
                mean.iter_mut().zip(e).for_each(|(m, x)| *m += x);
            }
            weights.push(l2_normalised(mean));
        }
        Ok(ZeroShotClassifier {
            labels: labels.to_vec(),
            weights,
            scale: self.scale,
            bias: self.bias,
            kind: self.config.kind,
        })
    }
}

/// Labels as normalised text embeddings, and how a similarity becomes a probability.
#[derive(Debug, Clone)]
pub struct ZeroShotClassifier {
    pub labels: Vec<String>,
    /// One normalised embedding per label.
    pub weights: Vec<Vec<f32>>,
    pub scale: f32,
    pub bias: f32,
    pub kind: Kind,
}

impl ZeroShotClassifier {
    /// `scale * cosine (+ bias)` of an image embedding with every label.
    pub fn logits(&self, image_embedding: &[f32]) -> Vec<f32> {
        let image = l2_normalised(image_embedding.to_vec());
        self.weights
            .iter()
            .map(|w| self.scale * w.iter().zip(&image).map(|(a, b)| a * b).sum::<f32>() + self.bias)
            .collect()
    }

    /// CLIP: a softmax over the labels (they compete); SigLIP: each label's own sigmoid
    /// (they need not sum to 1), as each was trained.
    pub fn probabilities(&self, image_embedding: &[f32]) -> Vec<f32> {
        let logits = self.logits(image_embedding);
        match self.kind {
            Kind::Clip => {
                let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let exp: Vec<f32> = logits.iter().map(|l| (l - max).exp()).collect();
                let total: f32 = exp.iter().sum();
                exp.into_iter().map(|e| e / total).collect()
            }
            Kind::Siglip => logits.iter().map(|l| 1.0 / (1.0 + (-l).exp())).collect(),
        }
    }
}

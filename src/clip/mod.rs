//! Contrastive image-text models: CLIP (Radford et al. 2021; OpenAI's and OpenCLIP's weights)
//! and SigLIP (Zhai et al. 2023). An image tower (a ViT with CLIP's or SigLIP's switches, see
//! [`crate::backbone::vit`]) and a text tower map photos and sentences into one space, so a
//! photo is classified into any list of labels with no training (zero-shot: the label whose
//! prompts' embedding is closest) and a folder is searched by a sentence or a photo.
//!
//! Loaded from the layouts users download: a Hugging Face `transformers` repository
//! (`config.json`, `model.safetensors`, `preprocessor_config.json`, `tokenizer.json`) or an
//! OpenCLIP one (`open_clip_config.json`, `open_clip_model.safetensors`, `tokenizer.json`).
//! The checkpoint's names are translated to graft's ([`keys`]), the preprocessing comes from
//! the repository's config, the text is tokenized by Hugging Face's `tokenizers` crate from the
//! repository's `tokenizer.json`.

pub mod config;
mod error;
pub mod keys;
mod model;
pub mod prompts;
pub mod text;
mod tokenizer;

pub use config::{ContrastiveConfig, Kind, Layout};
pub use error::ClipError;
pub use model::{ContrastiveModel, ZeroShotClassifier, l2_normalised, names_model, open};
pub use prompts::{IMAGENET_TEMPLATES, Prompts};
pub use tokenizer::TextTokenizer;

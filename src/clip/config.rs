//! What a repository's configs say: the two towers' shapes, how the text is pooled, and the
//! preprocessing the image tower was trained with. Missing keys take the defaults of the
//! library that wrote the config (`transformers`' `CLIPConfig` / `SiglipConfig`, OpenCLIP's
//! `CLIPVisionCfg` / `CLIPTextCfg`), as older configs leave defaults out.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::backbone::vit::{MlpAct, VitPool, VitSpec};
use crate::backbone::{CropRule, Normalization, ResizeFilter};

use super::error::ClipError;

/// Which model family: how similarity becomes a probability.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Softmax over the labels of `logit_scale * cosine`.
    Clip,
    /// A sigmoid per label of `logit_scale * cosine + logit_bias`: each label on its own.
    Siglip,
}

/// Which library named the checkpoint's tensors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// Hugging Face `transformers` (`CLIPModel`, `SiglipModel`).
    Transformers,
    /// OpenCLIP (`open_clip_config.json`).
    OpenClip,
}

/// How the text tower's tokens become one vector.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TextPool {
    /// The first end-of-text token (CLIP; the highest id, so also `argmax` of the ids).
    FirstEos,
    /// The last position of the sequence padded to the context length (SigLIP).
    Last,
}

/// The text tower's shape.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TextSpec {
    pub vocab: usize,
    pub width: usize,
    pub heads: usize,
    pub layers: usize,
    pub mlp_dim: usize,
    /// Positions of the position embedding: the longest sequence.
    pub context: usize,
    pub ln_eps: f64,
    pub act: MlpAct,
    /// Causal attention (CLIP) or bidirectional (SigLIP).
    pub causal: bool,
    pub pool: TextPool,
    /// Width of the projection into the shared space.
    pub embed_dim: usize,
    /// Whether the projection has a bias (SigLIP's `head`).
    pub proj_bias: bool,
}

/// A repository's two towers, their files and the image preprocessing.
#[derive(Debug, Clone, PartialEq)]
pub struct ContrastiveConfig {
    pub kind: Kind,
    pub layout: Layout,
    pub vision: VitSpec,
    pub text: TextSpec,
    pub resolution: usize,
    pub crop: CropRule,
    pub resize_filter: ResizeFilter,
    pub normalization: Normalization,
    pub weights: PathBuf,
    pub tokenizer: PathBuf,
}

fn act(name: &str, origin: &Path) -> Result<MlpAct, ClipError> {
    match name {
        "quick_gelu" => Ok(MlpAct::QuickGelu),
        "gelu" => Ok(MlpAct::Gelu),
        "gelu_pytorch_tanh" | "gelu_new" => Ok(MlpAct::GeluTanh),
        other => Err(ClipError::config(
            origin,
            format!("activation `{other}` is not supported (quick_gelu, gelu, gelu_pytorch_tanh)"),
        )),
    }
}

#[derive(Deserialize, Default)]
struct HfTower {
    hidden_size: Option<usize>,
    intermediate_size: Option<usize>,
    num_hidden_layers: Option<usize>,
    num_attention_heads: Option<usize>,
    hidden_act: Option<String>,
    layer_norm_eps: Option<f64>,
    // vision
    image_size: Option<usize>,
    patch_size: Option<usize>,
    num_channels: Option<usize>,
    // text
    vocab_size: Option<usize>,
    max_position_embeddings: Option<usize>,
    projection_size: Option<usize>,
}

#[derive(Deserialize)]
struct HfConfig {
    model_type: String,
    projection_dim: Option<usize>,
    #[serde(default)]
    text_config: HfTower,
    #[serde(default)]
    vision_config: HfTower,
}

#[derive(Deserialize)]
struct HfPreprocessor {
    #[serde(default)]
    size: Option<serde_json::Value>,
    #[serde(default)]
    crop_size: Option<serde_json::Value>,
    #[serde(default = "default_true")]
    do_center_crop: bool,
    #[serde(default = "bicubic")]
    resample: u32,
    image_mean: [f32; 3],
    image_std: [f32; 3],
}

fn default_true() -> bool {
    true
}

fn bicubic() -> u32 {
    3
}

/// A size in a preprocessor config: a number, `{"shortest_edge": n}` or `{"height", "width"}`
/// (square only).
fn side(value: &serde_json::Value) -> Option<usize> {
    if let Some(n) = value.as_u64() {
        return Some(n as usize);
    }
    if let Some(n) = value.get("shortest_edge").and_then(|v| v.as_u64()) {
        return Some(n as usize);
    }
    let (h, w) = (
        value.get("height")?.as_u64()?,
        value.get("width")?.as_u64()?,
    );
    (h == w).then_some(h as usize)
}

fn filter(resample: u32, origin: &Path) -> Result<ResizeFilter, ClipError> {
    // PIL's codes: 2 bilinear, 3 bicubic.
    match resample {
        2 => Ok(ResizeFilter::Bilinear),
        3 => Ok(ResizeFilter::Bicubic),
        other => Err(ClipError::config(
            origin,
            format!("resample {other} is not supported (2 bilinear, 3 bicubic)"),
        )),
    }
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, ClipError> {
    let text = std::fs::read_to_string(path).map_err(|e| ClipError::io(path, e))?;
    serde_json::from_str(&text).map_err(|e| ClipError::config(path, e.to_string()))
}

fn required(dir: &Path, name: &str, why: &str) -> Result<PathBuf, ClipError> {
    let path = dir.join(name);
    if path.is_file() {
        Ok(path)
    } else {
        Err(ClipError::config(dir, format!("no {name} ({why})")))
    }
}

impl ContrastiveConfig {
    /// Whether `dir` holds a CLIP / SigLIP repository graft can read (by its config files).
    pub fn is_repository(dir: &Path) -> bool {
        dir.join("open_clip_config.json").is_file()
            || (dir.join("config.json").is_file() && dir.join("preprocessor_config.json").is_file())
    }

    /// Read the repository in `dir` (a `transformers` or an OpenCLIP one).
    pub fn from_dir(dir: &Path) -> Result<Self, ClipError> {
        if dir.join("open_clip_config.json").is_file() {
            Self::open_clip(dir)
        } else if dir.join("config.json").is_file() {
            Self::transformers(dir)
        } else {
            Err(ClipError::config(
                dir,
                "neither config.json (transformers) nor open_clip_config.json (OpenCLIP)".into(),
            ))
        }
    }

    fn tokenizer_file(dir: &Path) -> Result<PathBuf, ClipError> {
        let path = dir.join("tokenizer.json");
        if path.is_file() {
            return Ok(path);
        }
        let why = if dir.join("spiece.model").is_file() {
            "the repository has a SentencePiece spiece.model only; convert it once with \
             transformers (`AutoTokenizer.from_pretrained(DIR).save_pretrained(DIR)` writes \
             tokenizer.json)"
        } else {
            "the text tower's tokenizer"
        };
        Err(ClipError::config(dir, format!("no tokenizer.json ({why})")))
    }

    fn transformers(dir: &Path) -> Result<Self, ClipError> {
        let config_path = dir.join("config.json");
        let raw: HfConfig = read_json(&config_path)?;
        let kind = match raw.model_type.as_str() {
            "clip" => Kind::Clip,
            "siglip" => Kind::Siglip,
            other => {
                return Err(ClipError::config(
                    &config_path,
                    format!(
                        "model_type `{other}` is not a contrastive image-text model graft implements (clip, siglip)"
                    ),
                ));
            }
        };
        let clip = kind == Kind::Clip;
        let (v, t) = (&raw.vision_config, &raw.text_config);
        // transformers' defaults for keys a config leaves out.
        let default_act = if clip {
            "quick_gelu"
        } else {
            "gelu_pytorch_tanh"
        };
        let default_eps = if clip { 1e-5 } else { 1e-6 };
        if v.num_channels.unwrap_or(3) != 3 {
            return Err(ClipError::config(
                &config_path,
                "the image tower does not take RGB images".into(),
            ));
        }
        let dim = v.hidden_size.unwrap_or(768);
        let patch = v.patch_size.unwrap_or(if clip { 32 } else { 16 });
        let image_size = v.image_size.unwrap_or(224);
        let projection = raw.projection_dim.unwrap_or(512);
        let vision = VitSpec {
            patch,
            dim,
            depth: v.num_hidden_layers.unwrap_or(12),
            heads: v.num_attention_heads.unwrap_or(12),
            mlp_dim: v.intermediate_size.unwrap_or(3072),
            image_size,
            reg_tokens: 0,
            layer_scale: false,
            pos_embed_prefix: clip,
            pool: if clip {
                VitPool::Token
            } else {
                VitPool::Attention
            },
            num_classes: 0,
            class_token: clip,
            pre_norm: clip,
            ln_eps: v.layer_norm_eps.unwrap_or(default_eps),
            act: act(v.hidden_act.as_deref().unwrap_or(default_act), &config_path)?,
            projection: if clip { projection } else { 0 },
            patch_bias: !clip,
        };
        let width = t.hidden_size.unwrap_or(if clip { 512 } else { 768 });
        let text = TextSpec {
            vocab: t.vocab_size.unwrap_or(if clip { 49408 } else { 32000 }),
            width,
            heads: t.num_attention_heads.unwrap_or(if clip { 8 } else { 12 }),
            layers: t.num_hidden_layers.unwrap_or(12),
            mlp_dim: t
                .intermediate_size
                .unwrap_or(if clip { 2048 } else { 3072 }),
            context: t
                .max_position_embeddings
                .unwrap_or(if clip { 77 } else { 64 }),
            ln_eps: t.layer_norm_eps.unwrap_or(default_eps),
            act: act(t.hidden_act.as_deref().unwrap_or(default_act), &config_path)?,
            causal: clip,
            pool: if clip {
                TextPool::FirstEos
            } else {
                TextPool::Last
            },
            embed_dim: if clip {
                projection
            } else {
                t.projection_size.unwrap_or(width)
            },
            proj_bias: !clip,
        };
        let pre_path = required(dir, "preprocessor_config.json", "the image preprocessing")?;
        let pre: HfPreprocessor = read_json(&pre_path)?;
        let size = pre.size.as_ref().and_then(side);
        let crop_size = pre.crop_size.as_ref().and_then(side);
        let squash = pre.size.as_ref().is_some_and(|s| s.get("height").is_some());
        let (resolution, crop) = match (squash, pre.do_center_crop && !squash, size, crop_size) {
            (true, _, Some(size), _) => (size, CropRule::Squash),
            (false, true, Some(short), Some(crop)) => (
                crop,
                CropRule::ResizeThenCenterCrop {
                    fraction: crop as f32 / short as f32,
                },
            ),
            (false, false, Some(size), _) => (size, CropRule::Squash),
            _ => {
                return Err(ClipError::config(
                    &pre_path,
                    "no square `size` / `crop_size` graft understands".into(),
                ));
            }
        };
        Ok(Self {
            kind,
            layout: Layout::Transformers,
            vision,
            text,
            resolution,
            crop,
            resize_filter: filter(pre.resample, &pre_path)?,
            normalization: Normalization {
                mean: pre.image_mean.map(|m| m * 255.0),
                std: pre.image_std.map(|s| s * 255.0),
            },
            weights: required(dir, "model.safetensors", "the weights")?,
            tokenizer: Self::tokenizer_file(dir)?,
        })
    }

    fn open_clip(dir: &Path) -> Result<Self, ClipError> {
        #[derive(Deserialize)]
        struct Root {
            model_cfg: ModelCfg,
            #[serde(default)]
            preprocess_cfg: Option<PreprocessCfg>,
        }
        #[derive(Deserialize)]
        struct ModelCfg {
            embed_dim: usize,
            #[serde(default)]
            quick_gelu: bool,
            vision_cfg: VisionCfg,
            text_cfg: TextCfg,
        }
        #[derive(Deserialize)]
        struct VisionCfg {
            #[serde(default = "d224")]
            image_size: usize,
            #[serde(default = "d12")]
            layers: usize,
            #[serde(default = "d768")]
            width: usize,
            #[serde(default = "d64")]
            head_width: usize,
            #[serde(default = "d4f")]
            mlp_ratio: f64,
            #[serde(default = "d16")]
            patch_size: usize,
            // Variants graft does not implement (attention pooling, no class token, ...).
            #[serde(default)]
            attentional_pool: bool,
            #[serde(default)]
            no_ln_pre: bool,
            #[serde(default)]
            timm_model_name: Option<String>,
        }
        #[derive(Deserialize)]
        struct TextCfg {
            #[serde(default = "d77")]
            context_length: usize,
            #[serde(default = "d49408")]
            vocab_size: usize,
            #[serde(default = "d512")]
            width: usize,
            #[serde(default = "d8")]
            heads: usize,
            #[serde(default = "d12")]
            layers: usize,
            #[serde(default = "d4f")]
            mlp_ratio: f64,
            #[serde(default)]
            hf_model_name: Option<String>,
        }
        #[derive(Deserialize)]
        struct PreprocessCfg {
            #[serde(default = "clip_mean")]
            mean: [f32; 3],
            #[serde(default = "clip_std")]
            std: [f32; 3],
            #[serde(default = "bicubic_name")]
            interpolation: String,
            #[serde(default = "shortest")]
            resize_mode: String,
        }
        fn d224() -> usize {
            224
        }
        fn d12() -> usize {
            12
        }
        fn d768() -> usize {
            768
        }
        fn d64() -> usize {
            64
        }
        fn d16() -> usize {
            16
        }
        fn d77() -> usize {
            77
        }
        fn d49408() -> usize {
            49408
        }
        fn d512() -> usize {
            512
        }
        fn d8() -> usize {
            8
        }
        fn d4f() -> f64 {
            4.0
        }
        fn clip_mean() -> [f32; 3] {
            [0.481_454_66, 0.457_827_5, 0.408_210_73]
        }
        fn clip_std() -> [f32; 3] {
            [0.268_629_54, 0.261_302_6, 0.275_777_1]
        }
        fn bicubic_name() -> String {
            "bicubic".into()
        }
        fn shortest() -> String {
            "shortest".into()
        }

        let config_path = dir.join("open_clip_config.json");
        let root: Root = read_json(&config_path)?;
        let (m, v, t) = (
            &root.model_cfg,
            &root.model_cfg.vision_cfg,
            &root.model_cfg.text_cfg,
        );
        if v.attentional_pool
            || v.no_ln_pre
            || v.timm_model_name.is_some()
            || t.hf_model_name.is_some()
        {
            return Err(ClipError::config(
                &config_path,
                "this OpenCLIP variant (attentional pool, no ln_pre, a timm image tower or a \
                 Hugging Face text tower) is not implemented; graft reads OpenCLIP's ViT towers"
                    .into(),
            ));
        }
        let act = if m.quick_gelu {
            MlpAct::QuickGelu
        } else {
            MlpAct::Gelu
        };
        let vision = VitSpec {
            patch: v.patch_size,
            dim: v.width,
            depth: v.layers,
            heads: v.width / v.head_width.max(1),
            mlp_dim: (v.width as f64 * v.mlp_ratio) as usize,
            image_size: v.image_size,
            reg_tokens: 0,
            layer_scale: false,
            pos_embed_prefix: true,
            pool: VitPool::Token,
            num_classes: 0,
            class_token: true,
            pre_norm: true,
            ln_eps: 1e-5,
            act,
            projection: m.embed_dim,
            patch_bias: false,
        };
        let text = TextSpec {
            vocab: t.vocab_size,
            width: t.width,
            heads: t.heads,
            layers: t.layers,
            mlp_dim: (t.width as f64 * t.mlp_ratio) as usize,
            context: t.context_length,
            ln_eps: 1e-5,
            act,
            causal: true,
            pool: TextPool::FirstEos,
            embed_dim: m.embed_dim,
            proj_bias: false,
        };
        let pre = root.preprocess_cfg.unwrap_or(PreprocessCfg {
            mean: clip_mean(),
            std: clip_std(),
            interpolation: bicubic_name(),
            resize_mode: shortest(),
        });
        let crop = match pre.resize_mode.as_str() {
            "shortest" => CropRule::ResizeThenCenterCrop { fraction: 1.0 },
            "squash" => CropRule::Squash,
            other => {
                return Err(ClipError::config(
                    &config_path,
                    format!("resize_mode `{other}` is not supported (shortest, squash)"),
                ));
            }
        };
        let resize_filter = match pre.interpolation.as_str() {
            "bicubic" => ResizeFilter::Bicubic,
            "bilinear" => ResizeFilter::Bilinear,
            other => {
                return Err(ClipError::config(
                    &config_path,
                    format!("interpolation `{other}` is not supported (bicubic, bilinear)"),
                ));
            }
        };
        let weights = ["open_clip_model.safetensors", "open_clip_pytorch_model.bin"]
            .iter()
            .map(|f| dir.join(f))
            .find(|p| p.is_file())
            .ok_or_else(|| {
                ClipError::config(dir, "no open_clip_model.safetensors (the weights)".into())
            })?;
        Ok(Self {
            kind: Kind::Clip,
            layout: Layout::OpenClip,
            vision,
            text,
            resolution: v.image_size,
            crop,
            resize_filter,
            normalization: Normalization {
                mean: pre.mean.map(|x| x * 255.0),
                std: pre.std.map(|x| x * 255.0),
            },
            weights,
            tokenizer: Self::tokenizer_file(dir)?,
        })
    }
}

//! timm models on the Hugging Face Hub (`hf:timm/<model>.<tag>`): the weights as
//! `model.safetensors` and the preprocessing they were trained with in `config.json`.
//!
//! The config comes first and is refused before the (much larger) weights are downloaded when
//! its architecture is not one graft implements. The weights are checked against the sha256 the
//! Hub publishes for them (`X-Linked-Etag`); a mirror that publishes none leaves them unchecked
//! beyond the safetensors header, which the loader validates.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::backbone::{CropRule, Normalization, ResizeFilter};
use crate::progress::Progress;

use super::WeightsError;
use super::download::{self, Checksum};

/// Where the Hub is when `HF_ENDPOINT` does not say otherwise.
pub const DEFAULT_ENDPOINT: &str = "https://huggingface.co";

/// The Hub to download from: `HF_ENDPOINT` (a mirror, a private Hub; the variable
/// huggingface_hub reads), else [`DEFAULT_ENDPOINT`]. The one place the variable is read, so that
/// [`fetch`] itself depends on its arguments only.
pub fn endpoint() -> String {
    match std::env::var("HF_ENDPOINT") {
        Ok(url) if !url.trim().is_empty() => url.trim().trim_end_matches('/').to_string(),
        _ => DEFAULT_ENDPOINT.to_string(),
    }
}

/// What a timm `config.json` says about its weights: the architecture to build and the
/// preprocessing the weights expect (timm's `pretrained_cfg`).
#[derive(Debug, Clone, PartialEq)]
pub struct TimmConfig {
    /// timm's model name (`resnet50`), without the tag.
    pub architecture: String,
    /// The weights' tag (`a1_in1k`), when the config names it.
    pub tag: Option<String>,
    /// `[channels, height, width]` at evaluation.
    pub input_size: [usize; 3],
    /// The resize filter: `bicubic`, `bilinear`, `nearest`, ...
    pub interpolation: String,
    /// The crop's share of the resized image (timm's `crop_pct`).
    pub crop_pct: f32,
    /// How the crop is taken: `center` (timm's default when absent), `squash`, `border`.
    pub crop_mode: String,
    pub mean: [f32; 3],
    pub std: [f32; 3],
    pub num_classes: usize,
    /// The classifier's class names, when the config carries them.
    pub label_names: Option<Vec<String>>,
}

impl TimmConfig {
    /// The preprocessing the config states, in graft's terms: input side, crop rule, resize
    /// filter and normalisation (on 0..=255 pixels). timm's `center` crop is torchvision's
    /// resize-then-centre-crop with `crop_pct` as the fraction. A non-square input, another
    /// crop mode or filter is an error that names it.
    pub fn preprocessing(&self) -> Result<(usize, CropRule, ResizeFilter, Normalization), String> {
        let [_, height, width] = self.input_size;
        if height != width {
            return Err(format!("input size {height}x{width} is not square"));
        }
        let crop = match self.crop_mode.as_str() {
            "center" => CropRule::ResizeThenCenterCrop {
                fraction: self.crop_pct,
            },
            other => {
                return Err(format!(
                    "crop mode `{other}` is not supported (only `center`)"
                ));
            }
        };
        let filter = match self.interpolation.as_str() {
            "bicubic" => ResizeFilter::Bicubic,
            "bilinear" => ResizeFilter::Bilinear,
            other => {
                return Err(format!(
                    "interpolation `{other}` is not supported (bicubic, bilinear)"
                ));
            }
        };
        let normalization = Normalization {
            mean: self.mean.map(|m| m * 255.0),
            std: self.std.map(|s| s * 255.0),
        };
        Ok((height, crop, filter, normalization))
    }
}

/// A Hub model on disk, fetched and checked.
#[derive(Debug, Clone, PartialEq)]
pub struct HubModel {
    /// `timm/resnet50.a1_in1k`.
    pub repo_id: String,
    pub weights: PathBuf,
    pub config_file: PathBuf,
    pub config: TimmConfig,
}

/// Fetch `spec` (`hf:<owner>/<name>`, e.g. `hf:timm/resnet50.a1_in1k`) from `endpoint` into
/// `dir/<owner>/<name>/`. `supported` lists the architectures graft implements; any other is
/// refused before its weights are downloaded. Files already there are reused (they only ever
/// land after passing their checks): delete the folder to fetch again.
pub fn fetch(
    spec: &str,
    endpoint: &str,
    dir: &Path,
    supported: &[&str],
    progress: &mut dyn Progress,
) -> Result<HubModel, WeightsError> {
    let (config, config_file) = fetch_config(spec, endpoint, dir, supported, progress)?;
    let repo_id = repo_id(spec)?;
    let weights = dir.join(repo_id).join("model.safetensors");
    if !weights.is_file() {
        download::download_with(
            &file_url(endpoint, repo_id, "model.safetensors"),
            &weights,
            &Checksum::Unchecked,
            true,
            progress,
        )?;
    }
    Ok(HubModel {
        repo_id: repo_id.to_string(),
        weights,
        config_file,
        config,
    })
}

/// Fetch a contrastive image-text repository (`hf:openai/clip-vit-base-patch32`,
/// `hf:google/siglip-base-patch16-224`, an OpenCLIP one) into `dir/<owner>/<name>/`: the
/// `transformers` files (`config.json`, `preprocessor_config.json`, `tokenizer.json`,
/// `model.safetensors`), or OpenCLIP's (`open_clip_config.json`, `tokenizer.json`,
/// `open_clip_model.safetensors`) when the repository has no `config.json`. The small files
/// come first, so that a repository graft cannot read fails before its weights are fetched.
/// Files already there are reused. Returns the folder.
pub fn fetch_repository(
    spec: &str,
    endpoint: &str,
    dir: &Path,
    progress: &mut dyn Progress,
) -> Result<PathBuf, WeightsError> {
    let repo_id = repo_id(spec)?;
    let folder = dir.join(repo_id);
    std::fs::create_dir_all(&folder).map_err(|e| WeightsError::io(&folder, e))?;
    let get = |file: &str, progress: &mut dyn Progress| -> Result<(), WeightsError> {
        let target = folder.join(file);
        if target.is_file() {
            return Ok(());
        }
        download::download(
            &file_url(endpoint, repo_id, file),
            &target,
            &Checksum::Unchecked,
            progress,
        )
    };
    let transformers = [
        "config.json",
        "preprocessor_config.json",
        "tokenizer.json",
        "model.safetensors",
    ];
    let open_clip = [
        "open_clip_config.json",
        "tokenizer.json",
        "open_clip_model.safetensors",
    ];
    // An OpenCLIP repository fetched before is known by its config: no request for the
    // config.json it lacks.
    let known_open_clip =
        folder.join("open_clip_config.json").is_file() && !folder.join("config.json").is_file();
    let files: &[&str] = if known_open_clip {
        &open_clip
    } else {
        match get("config.json", progress) {
            Ok(()) => &transformers,
            Err(WeightsError::Download { .. }) => &open_clip,
            Err(e) => return Err(e),
        }
    };
    for file in files {
        get(file, progress)?;
    }
    Ok(folder)
}

fn file_url(endpoint: &str, repo_id: &str, file: &str) -> String {
    format!(
        "{}/{repo_id}/resolve/main/{file}",
        endpoint.trim_end_matches('/')
    )
}

/// The first half of [`fetch`]: `config.json` only, read and checked, in
/// `dir/<owner>/<name>/`. Returns the config and its path.
pub fn fetch_config(
    spec: &str,
    endpoint: &str,
    dir: &Path,
    supported: &[&str],
    progress: &mut dyn Progress,
) -> Result<(TimmConfig, PathBuf), WeightsError> {
    let repo_id = repo_id(spec)?;
    let folder = dir.join(repo_id);
    std::fs::create_dir_all(&folder).map_err(|e| WeightsError::io(&folder, e))?;
    let url = |file: &str| file_url(endpoint, repo_id, file);

    let config_file = folder.join("config.json");
    let fresh_config = !config_file.is_file();
    if fresh_config {
        download::download(
            &url("config.json"),
            &config_file,
            &Checksum::Unchecked,
            progress,
        )?;
    }
    let config = std::fs::read_to_string(&config_file)
        .map_err(|e| WeightsError::io(&config_file, e))
        .and_then(|text| parse_config(&text, spec, supported));
    let config = match config {
        Ok(config) => config,
        Err(e) => {
            // A config graft cannot use is not worth keeping as a cached one.
            if fresh_config {
                let _ = std::fs::remove_file(&config_file);
            }
            return Err(e);
        }
    };
    Ok((config, config_file))
}

/// Read a timm `config.json` (as fetched, or as a user has it), refusing an architecture that
/// is not in `supported`. `origin` starts every error message (the `hf:` spec, or the path).
pub fn parse_config(
    text: &str,
    origin: &str,
    supported: &[&str],
) -> Result<TimmConfig, WeightsError> {
    let invalid =
        |problem: String| WeightsError::Store(format!("{origin}: config.json: {problem}"));
    let raw: RawConfig = serde_json::from_str(text).map_err(|e| invalid(e.to_string()))?;
    if !supported.contains(&raw.architecture.as_str()) {
        return Err(WeightsError::Store(format!(
            "{origin}: architecture `{}` is not implemented by graft (it has: {})",
            raw.architecture,
            supported.join(", ")
        )));
    }
    let cfg = raw.pretrained_cfg;
    let num_classes = cfg
        .num_classes
        .or(raw.num_classes)
        .ok_or_else(|| invalid("no `num_classes`".into()))?;
    if cfg.input_size[0] != 3 {
        return Err(invalid(format!(
            "the weights take {} channels; graft's models take RGB images (3)",
            cfg.input_size[0]
        )));
    }
    let label_names = raw.label_names.or(cfg.label_names);
    if let Some(names) = &label_names
        && names.len() != num_classes
    {
        return Err(invalid(format!(
            "{} label names for {num_classes} classes",
            names.len()
        )));
    }
    Ok(TimmConfig {
        architecture: raw.architecture,
        tag: cfg.tag,
        input_size: cfg.input_size,
        interpolation: cfg.interpolation,
        crop_pct: cfg.crop_pct,
        crop_mode: cfg.crop_mode.unwrap_or_else(|| "center".to_string()),
        mean: cfg.mean,
        std: cfg.std,
        num_classes,
        label_names,
    })
}

/// `hf:<owner>/<name>` → `<owner>/<name>`, each part a name the Hub allows (which also keeps
/// the folder it lands in inside `dir`).
fn repo_id(spec: &str) -> Result<&str, WeightsError> {
    let valid_part = |part: &str| {
        !part.is_empty()
            && !part.starts_with('.')
            && !part.contains("..")
            && part
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
    };
    spec.strip_prefix("hf:")
        .filter(|id| {
            id.split_once('/')
                .is_some_and(|(owner, name)| valid_part(owner) && valid_part(name))
        })
        .ok_or_else(|| {
            WeightsError::Store(format!(
                "`{spec}` is not a Hub model: expected hf:<owner>/<name>, e.g. hf:timm/resnet50.a1_in1k"
            ))
        })
}

/// timm's `config.json`, as `timm.models.push_to_hub` writes it.
#[derive(Deserialize)]
struct RawConfig {
    architecture: String,
    num_classes: Option<usize>,
    label_names: Option<Vec<String>>,
    pretrained_cfg: RawPretrainedCfg,
}

#[derive(Deserialize)]
struct RawPretrainedCfg {
    tag: Option<String>,
    input_size: [usize; 3],
    interpolation: String,
    crop_pct: f32,
    crop_mode: Option<String>,
    mean: [f32; 3],
    std: [f32; 3],
    num_classes: Option<usize>,
    label_names: Option<Vec<String>>,
}

#[cfg(test)]
mod tests {
    use super::*;

    const RESNET18: &str = r#"{"architecture": "resnet18", "num_classes": 1000, "num_features": 512,
        "pretrained_cfg": {"tag": "a1_in1k", "custom_load": false, "input_size": [3, 224, 224],
        "test_input_size": [3, 288, 288], "fixed_input_size": false, "interpolation": "bicubic",
        "crop_pct": 0.95, "test_crop_pct": 1.0, "crop_mode": "center",
        "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225], "num_classes": 1000,
        "pool_size": [7, 7], "first_conv": "conv1", "classifier": "fc"}}"#;

    #[test]
    fn timm_configs_parse_into_their_preprocessing() {
        let config = parse_config(RESNET18, "hf:timm/resnet18.a1_in1k", &["resnet18"]).unwrap();
        assert_eq!(config.architecture, "resnet18");
        assert_eq!(config.tag.as_deref(), Some("a1_in1k"));
        assert_eq!(config.input_size, [3, 224, 224]);
        assert_eq!(config.interpolation, "bicubic");
        assert_eq!(config.crop_pct, 0.95);
        assert_eq!(config.crop_mode, "center");
        assert_eq!(config.mean, [0.485, 0.456, 0.406]);
        assert_eq!(config.std, [0.229, 0.224, 0.225]);
        assert_eq!(config.num_classes, 1000);
        assert_eq!(config.label_names, None);
    }

    #[test]
    fn a_missing_crop_mode_is_center_and_a_missing_field_is_named() {
        let no_mode = RESNET18.replace(r#""crop_mode": "center","#, "");
        let config = parse_config(&no_mode, "x", &["resnet18"]).unwrap();
        assert_eq!(config.crop_mode, "center");
        let no_mean = RESNET18.replace(r#""mean": [0.485, 0.456, 0.406],"#, "");
        let err = parse_config(&no_mean, "hf:timm/r", &["resnet18"])
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("hf:timm/r: config.json: missing field `mean`"),
            "{err}"
        );
    }

    #[test]
    fn specs_name_a_repository() {
        assert_eq!(
            repo_id("hf:timm/resnet50.a1_in1k").unwrap(),
            "timm/resnet50.a1_in1k"
        );
        for bad in [
            "timm/resnet50",
            "hf:resnet50",
            "hf:timm/../x",
            "hf:timm/a/b",
            "hf:/x",
            "hf:timm/.x",
        ] {
            assert!(repo_id(bad).is_err(), "{bad}");
        }
    }
}

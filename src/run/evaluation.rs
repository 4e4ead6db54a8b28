//! `RUN_DIR/evaluate-<data>-<split>.json`: what `graft evaluate` measured, read back by the
//! report through the same type.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{RunError, read_json, write_json};
use crate::metrics::Metrics;

/// One evaluation of a trained model on labelled data.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvaluationRecord {
    /// The data as the user named it.
    #[serde(serialize_with = "crate::util::lossy_path")]
    pub data: PathBuf,
    /// `all`, `train` or `val`.
    pub split: String,
    pub metrics: Metrics,
    /// The scores with test-time augmentation, when it was asked for.
    pub tta: Option<TtaRecord>,
    /// ECE and log-loss of the model's (calibrated) probabilities on the data (evaluations
    /// from before calibration have none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub calibration: Option<crate::calibration::CalibrationCheck>,
}

/// Scores of the average prediction over several views of each image.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TtaRecord {
    pub views: Vec<String>,
    pub metrics: Metrics,
}

impl EvaluationRecord {
    /// Where `graft evaluate` writes it by default: `RUN_DIR/evaluate-<data name>-<split>.json`.
    pub fn default_path(run_dir: &Path, data: &Path, split: &str) -> PathBuf {
        let name = data.file_stem().and_then(|s| s.to_str()).unwrap_or("data");
        run_dir.join(format!("evaluate-{name}-{split}.json"))
    }

    pub fn save(&self, path: &Path) -> Result<(), RunError> {
        write_json(path, self)
    }

    pub fn load(path: &Path) -> Result<Self, RunError> {
        read_json(path)
    }

    /// Every evaluation saved in `run_dir`, by file name; files that do not parse are left out.
    pub fn load_all(run_dir: &Path) -> Vec<(String, Self)> {
        let mut found: Vec<(String, Self)> = std::fs::read_dir(run_dir)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .filter_map(|p| {
                let name = p.file_name()?.to_str()?.to_string();
                if !(name.starts_with("evaluate-") && name.ends_with(".json")) {
                    return None;
                }
                Some((name, Self::load(&p).ok()?))
            })
            .collect();
        found.sort_by(|a, b| a.0.cmp(&b.0));
        found
    }
}

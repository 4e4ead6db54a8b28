//! Run directories of `graft pretrain`: an adapted backbone and how it was made.
//!
//! ```text
//! RUN_DIR/
//!   backbone.safetensors  the adapted backbone in its family's checkpoint key names
//!   pretrain.json   method, backbone, parent weights, source config, options, data
//!   metrics.json    loss per epoch and the linear probe before / after
//!   history.csv     the loss per epoch, for spreadsheets
//!   checkpoint/     the last finished epoch, for --resume
//!   report.html     loss curve and probe table
//! ```
//!
//! `--weights RUN_DIR` (alias `--backbone-weights`) loads the backbone from such a directory
//! (or from a fine-tuning run's) wherever a backbone is used.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::backbone::SourceConfig;
use crate::run::{RunError, io, read_json, write_json};
use crate::train::simclr::{PretrainEpoch, SimclrOptions};

pub const PRETRAIN_FILE: &str = "pretrain.json";
pub const BACKBONE_FILE: &str = "backbone.safetensors";
pub const CHECKPOINT_DIR: &str = "checkpoint";

/// `pretrain.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PretrainCard {
    /// See [`crate::run::SCHEMA_VERSION`].
    #[serde(default = "crate::run::schema_1")]
    pub schema_version: u32,
    pub graft_version: String,
    pub method: String,
    pub backbone: String,
    /// First 16 hex digits of `backbone.safetensors`' sha256.
    pub weights_id: String,
    /// The weights pretraining started from; `None`: random initialisation.
    pub parent_weights_id: Option<String>,
    /// The parent's source config: the adapted backbone is fed exactly like it.
    pub source: SourceConfig,
    pub options: SimclrOptions,
    #[serde(serialize_with = "crate::util::lossy_path")]
    pub data: PathBuf,
    /// Images pretrained on.
    pub images: usize,
    /// Images under DATA left out because they are in the probe's validation split.
    pub excluded_probe_val: usize,
}

/// Accuracy of classical models on a backbone's features of the probe's validation split.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ProbeScores {
    pub logreg_accuracy: f64,
    pub knn_accuracy: f64,
}

/// The linear probe: fitted on the labelled set's training split, scored on its validation
/// split, with the parent backbone (`before`) and the adapted one (`after`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Probe {
    #[serde(serialize_with = "crate::util::lossy_path")]
    pub data: PathBuf,
    pub train_size: usize,
    pub val_size: usize,
    pub before: ProbeScores,
    pub after: ProbeScores,
}

/// `metrics.json` of a pretraining run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PretrainMetrics {
    pub history: Vec<PretrainEpoch>,
    pub seconds: f64,
    pub probe: Option<Probe>,
}

/// Write the card, the metrics and the history of a finished pretraining into `dir`.
pub fn save(dir: &Path, card: &PretrainCard, metrics: &PretrainMetrics) -> Result<(), RunError> {
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    write_json(&dir.join(PRETRAIN_FILE), card)?;
    write_json(&dir.join(crate::run::METRICS_FILE), metrics)?;
    let mut csv = PretrainEpoch::CSV_HEADER.to_string();
    for record in &metrics.history {
        csv.push('\n');
        csv.push_str(&record.csv_line());
    }
    csv.push('\n');
    let path = dir.join(crate::run::HISTORY_FILE);
    crate::util::write_atomic(&path, csv.as_bytes()).map_err(io(&path))
}

/// The card and metrics of the pretraining run in `dir`.
pub fn load(dir: &Path) -> Result<(PretrainCard, PretrainMetrics), RunError> {
    let path = dir.join(PRETRAIN_FILE);
    let card: PretrainCard = read_json(&path)?;
    crate::run::check_schema(&path, card.schema_version)?;
    Ok((card, read_json(&dir.join(crate::run::METRICS_FILE))?))
}

/// Whether `dir` is a pretraining run.
pub fn is_pretrain_run(dir: &Path) -> bool {
    dir.join(PRETRAIN_FILE).is_file()
}

/// The backbone file of a run directory (`graft pretrain` or `train --recipe finetune`), and
/// the backbone name its card records.
pub fn backbone_of_run(dir: &Path) -> Result<(PathBuf, String), RunError> {
    let file = dir.join(BACKBONE_FILE);
    let card_path = [PRETRAIN_FILE, crate::run::MODEL_FILE]
        .iter()
        .map(|f| dir.join(f))
        .find(|p| p.is_file())
        .ok_or_else(|| RunError::Invalid {
            path: dir.to_path_buf(),
            problem: format!(
                "not a run directory with its own backbone: no {PRETRAIN_FILE} or {}",
                crate::run::MODEL_FILE
            ),
        })?;
    let card: serde_json::Value = read_json(&card_path)?;
    let name = card
        .get("backbone")
        .and_then(|b| b.as_str())
        .ok_or_else(|| RunError::Invalid {
            path: card_path.clone(),
            problem: "no `backbone` field".into(),
        })?
        .to_string();
    if !file.is_file() {
        return Err(RunError::Invalid {
            path: dir.to_path_buf(),
            problem: format!(
                "holds no {BACKBONE_FILE} (only pretraining and fine-tuning runs \
                 have their own backbone)"
            ),
        });
    }
    Ok((file, name))
}

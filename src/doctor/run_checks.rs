//! Checks of a finished run: its preprocessing, learning rates, BatchNorm mode, training flow,
//! and the gap between training and validation accuracy.

use super::{Finding, Severity};
use crate::backbone::BackboneInfo;
use crate::run::{ModelCard, RunMetrics};
use crate::train::finetune::BnMode;

/// Learning rates below this are low for a freshly initialised head.
pub const LOW_HEAD_LR: f64 = 1e-4;
/// Learning rates above this are high for pretrained backbone weights.
pub const HIGH_BACKBONE_LR: f64 = 1e-3;
/// BatchNorm batch statistics are noisy below this batch size.
pub const SMALL_BN_BATCH: u64 = 16;

fn finding(
    severity: Severity,
    check: &'static str,
    measured: String,
    why: &'static str,
    action: &str,
) -> Finding {
    Finding {
        severity,
        check,
        measured,
        why,
        action: action.into(),
        files: Vec::new(),
        details: Vec::new(),
    }
}

/// Findings about the run described by `card` and `metrics`; `info` is the backbone's registry
/// entry (its source config is the reference preprocessing).
pub fn run_findings(card: &ModelCard, metrics: &RunMetrics, info: &BackboneInfo) -> Vec<Finding> {
    let mut findings = Vec::new();
    let reference = info.source_config(None);
    if card.source.preprocessing_id() != reference.preprocessing_id()
        || card.source.padding != reference.padding
    {
        findings.push(finding(
            Severity::Error,
            "preprocessing",
            format!(
                "the run used `{}` ({:?} padding); {}'s weights were trained with `{}` ({:?} padding)",
                card.source.preprocessing_id(),
                card.source.padding,
                info.name,
                reference.preprocessing_id(),
                reference.padding
            ),
            "a backbone only produces the features it learned when its inputs are prepared exactly as in its training",
            "retrain without overriding the backbone's preprocessing or padding",
        ));
    }
    if let Some(lr) = card
        .hyperparameters
        .head()
        .map(|h| h.learning_rate)
        .filter(|lr| *lr < LOW_HEAD_LR)
    {
        findings.push(finding(
            Severity::Warning,
            "head-lr-low",
            format!("the head was trained with learning rate {lr:e} (below {LOW_HEAD_LR:e})"),
            "a new head starts from scratch on frozen features and needs large steps; a low rate trains slowly or stops early",
            "use the default --lr 1e-3 for heads (or run an LR range test)",
        ));
    }
    if let Some(tuning) = card.hyperparameters.finetune().map(|r| &r.options) {
        let lr = tuning.backbone_learning_rate;
        if lr > HIGH_BACKBONE_LR {
            findings.push(finding(
                Severity::Warning,
                "finetune-lr-high",
                format!("the backbone was fine-tuned with learning rate {lr:e} (above {HIGH_BACKBONE_LR:e})"),
                "large steps destroy the pretrained features the run is meant to reuse",
                "fine-tune the backbone 10-100x below the head's rate (e.g. 1e-4), with discriminative rates per layer group",
            ));
        }
        let batch = tuning.batch_size;
        if tuning.bn_mode == BnMode::Train && batch < SMALL_BN_BATCH as usize {
            findings.push(finding(
                Severity::Warning,
                "batchnorm-train-small-batch",
                format!("BatchNorm ran in training mode with batches of {batch}"),
                "batch statistics of a few images are noisy and overwrite the pretrained running statistics",
                "keep BatchNorm in inference mode (graft's default), or use batches of 32 or more",
            ));
        }
        if tuning.head_epochs == 0 {
            findings.push(finding(
                Severity::Warning,
                "no-head-round",
                "the backbone was unfrozen without a round of head-only training first".into(),
                "the gradients of a random head are large and noisy, and they wreck the pretrained weights in the first steps",
                "train the head on the frozen backbone first (graft's default flow), then unfreeze",
            ));
        }
    }
    let (train, val) = (metrics.train_accuracy, metrics.val.accuracy);
    if metrics.val_size > 0 && val > train + 0.05 {
        findings.push(finding(
            Severity::Warning,
            "val-above-train",
            format!("validation accuracy {val:.3} is well above training accuracy {train:.3}"),
            "validation should not be easier than training; this often means leakage or a validation set that is not like the training data",
            "run `graft doctor DATA` to look for duplicates across the split, and check how the split was made",
        ));
    }
    if metrics.val_size > 0 && train > val + 0.15 {
        findings.push(finding(
            Severity::Warning,
            "overfitting",
            format!("training accuracy {train:.3} is far above validation accuracy {val:.3}"),
            "the model memorises the training images instead of learning what generalises",
            "use more data or augmentation, stronger dropout / weight decay, fewer epochs, or fewer unfrozen layers",
        ));
    }
    findings
}

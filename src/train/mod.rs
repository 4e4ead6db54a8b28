//! Training: a new top on cached bottleneck features (`dense`, `classical`), fine-tuning
//! (`finetune`, with its `plan` and `freeze`), SimCLR pretraining (`simclr`), and what they
//! share (`checkpoint`, `schedule`, `backbone_pass`).

pub mod backbone_pass;
pub mod checkpoint;
pub mod classical;
pub mod dense;
pub mod epochs;
pub mod finetune;
pub mod freeze;
pub mod lr_find;
pub mod plan;
pub mod schedule;
pub mod simclr;
pub mod softmax_regression;

use serde::{Deserialize, Serialize};

/// Which kind of top to fit on the features.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Recipe {
    /// Dropout + dense softmax layer trained with AdamW (Keras' "new top").
    Head,
    /// Multinomial logistic regression (linfa, L-BFGS) on standardised features.
    Logreg,
    /// One-vs-rest linear SVMs (linfa, SMO) on standardised features.
    Svm,
    /// k nearest neighbours by cosine similarity (linfa-nn).
    Knn,
    /// A head round on cached features, then the backbone unfrozen group by group from the top
    /// with discriminative learning rates, BatchNorm frozen, augmentation.
    Finetune,
}

impl Recipe {
    pub fn name(self) -> &'static str {
        match self {
            Recipe::Head => "head",
            Recipe::Logreg => "logreg",
            Recipe::Svm => "svm",
            Recipe::Knn => "knn",
            Recipe::Finetune => "finetune",
        }
    }
}

/// One line of a training history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EpochRecord {
    pub epoch: usize,
    pub train_loss: f64,
    pub train_accuracy: f64,
    pub val_loss: f64,
    pub val_accuracy: f64,
    pub learning_rate: f64,
}

impl EpochRecord {
    pub const CSV_HEADER: &'static str =
        "epoch,train_loss,train_accuracy,val_loss,val_accuracy,learning_rate";

    /// The inverse of [`csv_line`](Self::csv_line).
    pub fn parse_csv_line(line: &str) -> Option<Self> {
        let fields: Vec<&str> = line.trim().split(',').collect();
        let [
            epoch,
            train_loss,
            train_accuracy,
            val_loss,
            val_accuracy,
            learning_rate,
        ] = fields.as_slice()
        else {
            return None;
        };
        Some(Self {
            epoch: epoch.parse().ok()?,
            train_loss: train_loss.parse().ok()?,
            train_accuracy: train_accuracy.parse().ok()?,
            val_loss: val_loss.parse().ok()?,
            val_accuracy: val_accuracy.parse().ok()?,
            learning_rate: learning_rate.parse().ok()?,
        })
    }

    pub fn csv_line(&self) -> String {
        format!(
            "{},{:.6},{:.6},{:.6},{:.6},{:e}",
            self.epoch,
            self.train_loss,
            self.train_accuracy,
            self.val_loss,
            self.val_accuracy,
            self.learning_rate
        )
    }
}

/// sklearn's "balanced" weights: `n / (classes * n_c)`; classes absent from `labels` get 0.
pub fn balanced_class_weights(labels: &[usize], classes: usize) -> Vec<f32> {
    let mut counts = vec![0usize; classes];
    for &l in labels {
        counts[l] += 1;
    }
    counts
        .iter()
        .map(|&c| {
            if c == 0 {
                0.0
            } else {
                labels.len() as f32 / (classes * c) as f32
            }
        })
        .collect()
}

/// Mean cross-entropy of logits `[n, classes]` against `labels`.
pub fn cross_entropy(logits: &[f32], labels: &[usize], classes: usize) -> f64 {
    cross_entropy_sum(logits, labels, classes) / labels.len().max(1) as f64
}

/// The summed (not averaged) cross-entropy of rows of logits, for averaging over batches.
pub fn cross_entropy_sum(logits: &[f32], labels: &[usize], classes: usize) -> f64 {
    logits
        .chunks_exact(classes)
        .zip(labels)
        .map(|(row, &label)| {
            let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
            let log_sum: f64 = row
                .iter()
                .map(|&v| (v as f64 - max).exp())
                .sum::<f64>()
                .ln();
            max + log_sum - row[label] as f64
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn balanced_weights_follow_sklearn() {
        // 6 examples, 3 classes: counts 3, 2, 1.
        let w = balanced_class_weights(&[0, 0, 0, 1, 1, 2], 3);
        assert_eq!(w, vec![6.0 / 9.0, 1.0, 2.0]);
    }

    #[test]
    fn history_lines_round_trip() {
        let record = EpochRecord {
            epoch: 3,
            train_loss: 0.5,
            train_accuracy: 0.75,
            val_loss: f64::NAN,
            val_accuracy: 0.25,
            learning_rate: 1e-3,
        };
        let back = EpochRecord::parse_csv_line(&record.csv_line()).unwrap();
        assert_eq!(
            (back.epoch, back.train_loss, back.learning_rate),
            (3, 0.5, 1e-3)
        );
        assert!(back.val_loss.is_nan());
        assert!(EpochRecord::parse_csv_line("1,2,3").is_none());
    }

    #[test]
    fn cross_entropy_of_uniform_logits_is_log_k() {
        let loss = cross_entropy(&[0.0; 8], &[0, 3], 4);
        assert!((loss - 4f64.ln()).abs() < 1e-9);
    }
}

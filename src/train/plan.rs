//! The fine-tuning plan: which layer groups train in each stage of gradual unfreezing, and at
//! what peak learning rate. It is made once, by [`Plan::new`]; the training loop reads its
//! rates ([`PlannedStage::peak_rates`]), the command line prints it ([`Plan::lines`]), the run
//! directory stores it (`plan.json`) and the report draws it, all through this one type. Its
//! input, [`FinetuneOptions`], lives here too, below the training loop that follows the plan
//! (`train::finetune` re-exports it).

use serde::{Deserialize, Serialize};

use super::freeze::BnMode;
use super::schedule::Schedule;
use crate::backbone::Network;
use crate::backbone::summary::summarize_network;
use crate::data::augment::Augment;

/// `RUN_DIR/plan.json`.
pub const PLAN_FILE: &str = "plan.json";

/// The top's name in [`PlannedStage::learning_rates`] (after the backbone's layer groups).
pub const TOP: &str = "top";

/// How the backbone is unfrozen after the head round.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Unfreeze {
    /// One more layer group per stage, from the top (head conv, last stage, ...).
    Gradual,
    /// Every group at once.
    All,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FinetuneOptions {
    /// Peak learning rate of the new top.
    pub head_learning_rate: f64,
    /// Peak learning rate of the top-most backbone group; lower groups get it times
    /// `lr_decay` per group further down.
    pub backbone_learning_rate: f64,
    pub lr_decay: f64,
    pub unfreeze: Unfreeze,
    pub stages: usize,
    pub epochs_per_stage: usize,
    pub schedule: Schedule,
    pub batch_size: usize,
    pub bn_mode: BnMode,
    pub augment: Augment,
    pub dropout: f64,
    pub weight_decay: f64,
    pub label_smoothing: f64,
    pub seed: u64,
    /// Epochs of the head round on cached features before unfreezing (0 = none).
    pub head_epochs: usize,
    /// Stop after this many epochs without a lower validation loss (the best weights are kept
    /// either way).
    pub patience: usize,
}

impl Default for FinetuneOptions {
    fn default() -> Self {
        Self {
            head_learning_rate: 1e-3,
            backbone_learning_rate: 1e-4,
            lr_decay: 0.7,
            unfreeze: Unfreeze::Gradual,
            stages: 3,
            epochs_per_stage: 2,
            schedule: Schedule::Cosine,
            batch_size: 16,
            bn_mode: BnMode::Frozen,
            augment: Augment::Light,
            dropout: 0.2,
            weight_decay: 1e-4,
            label_smoothing: 0.1,
            seed: 0,
            head_epochs: 100,
            patience: 10,
        }
    }
}

/// One stage of the plan.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlannedStage {
    pub name: String,
    pub first_epoch: usize,
    pub epochs: usize,
    /// The backbone's layer groups that train in this stage (besides the top).
    pub trainable_groups: Vec<String>,
    /// Peak learning rate of every layer group (0 = frozen), the new top last.
    pub learning_rates: Vec<(String, f64)>,
    pub trainable_params: usize,
    pub non_trainable_params: usize,
}

impl PlannedStage {
    /// The indices of the trainable groups in `groups` (the backbone's group names).
    pub fn trainable(&self, groups: &[String]) -> Vec<usize> {
        groups
            .iter()
            .enumerate()
            .filter(|(_, name)| self.trainable_groups.contains(name))
            .map(|(g, _)| g)
            .collect()
    }

    /// Peak learning rates: one per backbone group (0 when frozen), then the top's.
    pub fn peak_rates(&self) -> Vec<f64> {
        self.learning_rates.iter().map(|(_, lr)| *lr).collect()
    }

    /// The rates of the groups that train, as people read them: `stage7 7.0e-5, head 1.0e-4,
    /// top 1.0e-3` (the plan's printout and the report's table).
    pub fn rates_text(&self) -> String {
        self.learning_rates
            .iter()
            .filter(|(_, lr)| *lr > 0.0)
            .map(|(g, lr)| format!("{g} {lr:.1e}"))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// The last epoch of the stage.
    pub fn last_epoch(&self) -> usize {
        self.first_epoch + self.epochs.saturating_sub(1)
    }
}

/// `plan.json`: the head round, then the stages.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    pub head_round_epochs: usize,
    pub stages: Vec<PlannedStage>,
    pub bn_mode: BnMode,
    /// The network has no BatchNorm (ConvNeXt, ViT: LayerNorm only), so `bn_mode` changes
    /// nothing. Written only when true, so plans of MBConv runs read and write back unchanged.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub without_batch_norm: bool,
    pub augment: Augment,
    pub schedule: Schedule,
    pub batch_size: usize,
    pub total_params: usize,
}

/// Which groups train in each stage: gradual unfreezing adds one group per stage from the top;
/// `all` trains every group for all the stages' epochs together.
fn stage_groups(options: &FinetuneOptions, groups: usize) -> Vec<(usize, Vec<usize>)> {
    match options.unfreeze {
        Unfreeze::All => vec![(
            options.epochs_per_stage * options.stages.max(1),
            (0..groups).collect(),
        )],
        Unfreeze::Gradual => (1..=options.stages.min(groups))
            .map(|s| (options.epochs_per_stage, (groups - s..groups).collect()))
            .collect(),
    }
}

/// Peak learning rate of backbone group `g` of `groups`: the top-most group gets the backbone
/// rate, each group below `lr_decay` times the one above (timm's layer decay).
pub fn group_learning_rate(options: &FinetuneOptions, g: usize, groups: usize) -> f64 {
    options.backbone_learning_rate * options.lr_decay.powi((groups - 1 - g) as i32)
}

impl Plan {
    /// The plan for fine-tuning `net` (named `model`, inputs of side `resolution`) with a top
    /// of `classes` outputs, after a head round of `head_round_epochs`.
    pub fn new(
        net: &Network,
        (model, resolution): (&str, usize),
        options: &FinetuneOptions,
        head_round_epochs: usize,
        classes: usize,
    ) -> Self {
        let summary = summarize_network(model, net, resolution);
        // The summary's first rows are the layer groups, in order.
        let names: Vec<String> = summary.rows[..net.group_count()]
            .iter()
            .map(|row| row.group.clone())
            .collect();
        let feature_dim = net.feature_dim();
        let top_params = feature_dim * classes + classes;
        let total = summary.total() + top_params;
        let mut first_epoch = head_round_epochs + 1;
        let stages = stage_groups(options, names.len())
            .into_iter()
            .enumerate()
            .map(|(i, (epochs, trainable))| {
                // Summary rows are the layer groups, in order.
                let trainable_params = trainable
                    .iter()
                    .map(|&g| summary.rows[g].trainable)
                    .sum::<usize>()
                    + top_params;
                let mut learning_rates: Vec<(String, f64)> = names
                    .iter()
                    .enumerate()
                    .map(|(g, name)| {
                        let lr = if trainable.contains(&g) {
                            group_learning_rate(options, g, names.len())
                        } else {
                            0.0
                        };
                        (name.clone(), lr)
                    })
                    .collect();
                learning_rates.push((TOP.into(), options.head_learning_rate));
                let stage = PlannedStage {
                    name: format!("stage {}", i + 1),
                    first_epoch,
                    epochs,
                    trainable_groups: trainable.iter().map(|&g| names[g].clone()).collect(),
                    learning_rates,
                    trainable_params,
                    non_trainable_params: total - trainable_params,
                };
                first_epoch += epochs;
                stage
            })
            .collect();
        Plan {
            head_round_epochs,
            stages,
            bn_mode: options.bn_mode,
            without_batch_norm: !net.has_batch_norm(),
            augment: options.augment,
            schedule: options.schedule,
            batch_size: options.batch_size,
            total_params: total,
        }
    }

    /// Epochs of all the stages together.
    pub fn stage_epochs(&self) -> usize {
        self.stages.iter().map(|s| s.epochs).sum()
    }

    /// The plan in words: one line for the whole, then one per stage.
    pub fn lines(&self) -> Vec<String> {
        let mut lines = vec![format!(
            "plan: head round ({} epochs on cached features, backbone frozen), then {} stages; \
             BatchNorm {}, augmentation {}, {} schedule per stage, batch {}",
            self.head_round_epochs,
            self.stages.len(),
            match self.bn_mode {
                _ if self.without_batch_norm =>
                    "none (LayerNorm only: nothing to freeze or update)",
                BnMode::Frozen =>
                    "frozen (inference mode: running statistics kept, gamma/beta train with their layer)",
                BnMode::Train => "in training mode (batch statistics)",
            },
            lowercase_name(&self.augment),
            lowercase_name(&self.schedule),
            self.batch_size
        )];
        for stage in &self.stages {
            lines.push(format!(
                "  {} (epochs {}-{}): trains {} + top; lr {}; params {} trainable / {} frozen",
                stage.name,
                stage.first_epoch,
                stage.last_epoch(),
                stage.trainable_groups.join(", "),
                stage.rates_text(),
                stage.trainable_params,
                stage.non_trainable_params
            ));
        }
        lines
    }
}

/// An enum's name as the run directory writes it (`cosine`, `one-cycle`, `light`, ...).
pub fn lowercase_name(value: &impl Serialize) -> String {
    serde_json::to_value(value)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    const GROUPS: usize = 9;

    #[test]
    fn gradual_plan_unfreezes_from_the_top() {
        let trainable: Vec<Vec<usize>> = stage_groups(&FinetuneOptions::default(), GROUPS)
            .into_iter()
            .map(|(_, t)| t)
            .collect();
        assert_eq!(trainable, vec![vec![8], vec![7, 8], vec![6, 7, 8]]);
        let all = stage_groups(
            &FinetuneOptions {
                unfreeze: Unfreeze::All,
                ..FinetuneOptions::default()
            },
            GROUPS,
        );
        assert_eq!(all.len(), 1);
        assert_eq!(all[0].1.len(), GROUPS);
        assert_eq!(all[0].0, 6);
    }

    #[test]
    fn lr_decay_multiplies_each_group_below() {
        let options = FinetuneOptions {
            backbone_learning_rate: 1e-3,
            lr_decay: 0.5,
            ..FinetuneOptions::default()
        };
        for g in 0..GROUPS - 1 {
            let ratio = group_learning_rate(&options, g, GROUPS)
                / group_learning_rate(&options, g + 1, GROUPS);
            assert!((ratio - 0.5).abs() < 1e-12);
        }
        assert_eq!(group_learning_rate(&options, GROUPS - 1, GROUPS), 1e-3);
    }
}

//! Which layers train: BatchNorm's mode, freezing by layer group, and each group's learning
//! rate, all through burn's own parameter groups (`Module::freeze`, `set_require_grad_group`,
//! `unfreeze_group`, `ModuleLrScheduler::with_group`) over the layer groups of
//! [`crate::backbone::groups`], for every family.

use burn::lr_scheduler::module_lr_scheduler::{ModuleLearningRate, ModuleLrScheduler};
use burn::module::Module;
use serde::{Deserialize, Serialize};

use crate::backbone::Network;

/// BatchNorm behaviour while training the backbone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum BnMode {
    /// Running statistics frozen (inference mode); gamma / beta train with their layer.
    Frozen,
    /// Batch statistics, running statistics updated (noisy with small batches).
    Train,
}

/// Freeze the whole network, then make the groups in `trainable` train, with BatchNorm as
/// `bn_mode` says (families without BatchNorm train the same either way).
pub fn set_trainable(net: Network, trainable: &[usize], bn_mode: BnMode) -> Network {
    // Freezing also turns every BatchNorm's training flag off: inference mode.
    let mut net = net.freeze();
    for &g in trainable {
        let group = net.group_params(g);
        net = match bn_mode {
            // Gradients for the group's tensors (gamma and beta too); the training flags stay
            // off, so the running statistics stay as pretrained.
            BnMode::Frozen => net.set_require_grad_group(group, true),
            BnMode::Train => net.unfreeze_group(group),
        };
    }
    net
}

/// The learning rate of every parameter for one optimiser step: `rest` for everything but the
/// backbone groups in `trainable`, `lrs[g]` for group `g` of those. Frozen groups have no
/// gradient, so their rate is never used.
pub fn group_rates(
    net: &Network,
    trainable: &[usize],
    lrs: &[f64],
    rest: f64,
) -> ModuleLearningRate {
    trainable
        .iter()
        .fold(ModuleLrScheduler::new(rest), |rates, &g| {
            rates.with_group(net.group_params(g), lrs[g])
        })
        .step()
}

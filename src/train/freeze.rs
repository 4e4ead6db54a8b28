//! Which layers train: BatchNorm's mode, freezing by layer group, and each group's learning
//! rate, all through burn's own parameter groups (`Module::freeze_group` / `unfreeze_group`,
//! `ModuleLrScheduler::with_group`) over the layer groups of [`crate::backbone::groups`].

use burn::lr_scheduler::module_lr_scheduler::{ModuleLearningRate, ModuleLrScheduler};
use burn::module::{Module, ParamGroup};
use serde::{Deserialize, Serialize};

use crate::backbone::mbnet::MbNet;

/// BatchNorm behaviour while training the backbone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum BnMode {
    /// Running statistics frozen (inference mode); gamma / beta train with their layer.
    Frozen,
    /// Batch statistics, running statistics updated (noisy with small batches).
    Train,
}

/// burn's parameter group of layer group `g` (every tensor and flag of its layers).
pub fn group_params(net: &MbNet, g: usize) -> ParamGroup {
    if g == 0 {
        ParamGroup::ids_from_module(net.stem.clone())
    } else if g == net.group_count() - 1 {
        ParamGroup::ids_from_module(net.head.clone())
    } else {
        ParamGroup::ids_from_module(net.blocks[net.group_blocks(g)].to_vec())
    }
}

/// Freeze the whole network, then make the groups in `trainable` train, with BatchNorm as
/// `bn_mode` says.
pub fn set_trainable(net: MbNet, trainable: &[usize], bn_mode: BnMode) -> MbNet {
    let mut net = net.freeze();
    for &g in trainable {
        let group = group_params(&net, g);
        net = net.unfreeze_group(group);
        if bn_mode == BnMode::Frozen {
            // Running statistics stay as pretrained; gamma and beta still learn.
            net = net.map_group(g, &|mut layer| {
                layer.bn.training = layer.bn.training.with_value(false);
                layer
            });
        }
    }
    net
}

/// The learning rate of every parameter for one optimiser step: `rest` for everything but the
/// backbone groups in `trainable`, `lrs[g]` for group `g` of those. Frozen groups have no
/// gradient, so their rate is never used.
pub fn group_rates(net: &MbNet, trainable: &[usize], lrs: &[f64], rest: f64) -> ModuleLearningRate {
    trainable
        .iter()
        .fold(ModuleLrScheduler::new(rest), |rates, &g| {
            rates.with_group(group_params(net, g), lrs[g])
        })
        .step()
}

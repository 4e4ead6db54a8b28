//! Layer groups: the units `summary` prints, fine-tuning unfreezes one at a time, and the
//! optimiser gives each its own learning rate (timm's `group_matcher`). Each family's spec names
//! them ([`super::Arch::group_names`]); this module says which layers each holds, for every
//! family ([`Network::group_params`]). MBConv: group 0 is the stem, groups 1..=S the S stages,
//! group S + 1 the head conv. ResNet: `stem`, `layer1` … `layer4`. ConvNeXt: `stem`, `stage0` …
//! `stage3` (the last with the pooled features' LayerNorm). ViT: `embed` (patch embedding,
//! class and register tokens, position embedding), the blocks in up to four runs, `norm`.
//! Everything else (the source config's names, the plan, the optimiser groups, the summary, the
//! report) asks here.

use burn::module::ParamGroup;

use super::network::Network;

impl Network {
    /// How many layer groups the network has.
    pub fn group_count(&self) -> usize {
        match self {
            Self::MbConv(net) => net.group_count(),
            Self::ResNet(net) => 1 + net.stages.len(),
            Self::ConvNeXt(net) => 1 + net.stages.len(),
            Self::Vit(net) => 2 + net.blocks.len().div_ceil(net.blocks_per_group),
        }
    }

    /// burn's parameter group of layer group `g`: every tensor and flag of its layers, for
    /// freezing and per-group learning rates.
    pub fn group_params(&self, g: usize) -> ParamGroup {
        let last = self.group_count() - 1;
        match self {
            Self::MbConv(net) if g == 0 => ParamGroup::ids_from_module(net.stem.clone()),
            Self::MbConv(net) if g == last => ParamGroup::ids_from_module(net.head.clone()),
            Self::MbConv(net) => {
                ParamGroup::ids_from_module(net.blocks[net.group_blocks(g)].to_vec())
            }
            Self::ResNet(net) if g == 0 => ParamGroup::ids_from_module(net.stem.clone()),
            Self::ResNet(net) => ParamGroup::ids_from_module(net.stages[g - 1].clone()),
            Self::ConvNeXt(net) if g == 0 => {
                ParamGroup::ids_from_module((net.stem_conv.clone(), net.stem_norm.clone()))
            }
            // The pooled features' norm sits on top of the last stage: it trains with it.
            Self::ConvNeXt(net) if g == last => {
                ParamGroup::ids_from_module((net.stages[g - 1].clone(), net.head_norm.clone()))
            }
            Self::ConvNeXt(net) => ParamGroup::ids_from_module(net.stages[g - 1].clone()),
            Self::Vit(net) if g == 0 => ParamGroup::ids_from_module((
                net.patch_embed.clone(),
                net.cls_token.clone(),
                net.reg_token.clone(),
                net.pos_embed.clone(),
            )),
            Self::Vit(net) if g == last => ParamGroup::ids_from_module(net.norm.clone()),
            Self::Vit(net) => ParamGroup::ids_from_module(
                net.blocks
                    .chunks(net.blocks_per_group)
                    .nth(g - 1)
                    // cannot fail: g is a block group (neither the first nor the last group)
                    .expect("a block group")
                    .to_vec(),
            ),
        }
    }

    /// Whether the network has BatchNorm layers (ConvNeXt and ViT normalise with LayerNorm,
    /// which keeps no running statistics).
    pub fn has_batch_norm(&self) -> bool {
        matches!(self, Self::MbConv(_) | Self::ResNet(_))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backbone::PaddingMode;
    use crate::backbone::mbconv::{MbNet, efficientnet_lite};

    #[test]
    fn every_block_is_in_exactly_the_group_whose_range_holds_it() {
        let spec = efficientnet_lite::lite0();
        let net = MbNet::init(
            &spec,
            PaddingMode::TfSame,
            1e-3,
            false,
            &mut crate::rng::run_rng(0, 0),
            &crate::backend::device(),
        );
        assert_eq!(net.group_count(), 9);
        assert_eq!(net.group_names()[0], "stem");
        assert_eq!(net.group_names()[8], "head");
        let mut covered = 0;
        for g in 0..net.group_count() {
            for b in net.group_blocks(g) {
                assert_eq!(net.group_of_block(b), g);
                covered += 1;
            }
        }
        assert_eq!(covered, net.blocks.len());
        assert_eq!(net.first_trainable_block(&[0, 1]), None);
        assert_eq!(net.first_trainable_block(&[1]), Some(0));
        assert_eq!(net.first_trainable_block(&[8]), Some(net.blocks.len()));
        assert_eq!(
            net.first_trainable_block(&[7, 8]),
            Some(net.stage_ends[5] + 1)
        );
    }

    /// Collects the id of every float tensor of a module.
    struct Ids(Vec<burn::module::ParamId>);

    impl burn::module::ModuleVisitor for Ids {
        fn visit_float<const D: usize>(&mut self, param: &burn::module::Param<burn::Tensor<D>>) {
            self.0.push(param.id);
        }
    }

    #[test]
    fn every_tensor_of_every_family_is_in_exactly_one_group() {
        use burn::module::Module;
        for name in [
            "efficientnet-lite0",
            "resnet18",
            "convnext_tiny",
            "vit_small_patch14_reg4_dinov2",
        ] {
            let info = crate::backbone::find(name).unwrap();
            let net = Network::init(
                &info.arch,
                PaddingMode::Symmetric,
                1e-5,
                false,
                &crate::backend::device(),
            );
            assert_eq!(net.group_count(), info.arch.group_names().len(), "{name}");
            let groups: Vec<ParamGroup> = (0..net.group_count())
                .map(|g| net.group_params(g))
                .collect();
            let mut ids = Ids(Vec::new());
            net.visit(&mut ids);
            assert!(ids.0.len() > 10, "{name}");
            for id in ids.0 {
                let holders = groups.iter().filter(|g| g.matches(&id, None)).count();
                assert_eq!(holders, 1, "{name}: a tensor in {holders} groups");
            }
        }
    }
}

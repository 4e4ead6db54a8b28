//! Layer groups: the units `summary` prints, fine-tuning unfreezes one at a time, and the
//! optimiser gives each its own learning rate (timm's `group_matcher`). Defined here, once, for
//! the MBConv family: group 0 is the stem, groups 1..=S the S stages, group S + 1 the head conv.
//! Everything else (the source config's names, the plan, the optimiser groups, the summary, the
//! report) asks this module.

use std::ops::Range;

use burn::module::{Module, ModuleVisitor};

use super::blocks::{ConvBnAct, InvertedResidual};
use super::mbnet::MbNet;

/// The group names of a network with `stages` stages: `stem`, `stage1` … `stageS`, `head`.
pub fn names(stages: usize) -> Vec<String> {
    std::iter::once("stem".to_string())
        .chain((1..=stages).map(|s| format!("stage{s}")))
        .chain(std::iter::once("head".to_string()))
        .collect()
}

impl MbNet {
    /// How many layer groups the network has (stem, stages, head conv).
    pub fn group_count(&self) -> usize {
        self.stage_ends.len() + 2
    }

    /// The group names, in order (see [`names`]).
    pub fn group_names(&self) -> Vec<String> {
        names(self.stage_ends.len())
    }

    /// The blocks of group `g` (empty for the stem and the head conv).
    pub fn group_blocks(&self, g: usize) -> Range<usize> {
        let stages = self.stage_ends.len();
        if g == 0 || g > stages {
            return 0..0;
        }
        let start = if g == 1 {
            0
        } else {
            self.stage_ends[g - 2] + 1
        };
        start..self.stage_ends[g - 1] + 1
    }

    /// The group block `block` belongs to.
    pub fn group_of_block(&self, block: usize) -> usize {
        1 + self
            .stage_ends
            .iter()
            .position(|&end| block <= end)
            // cannot fail: block indices stop at the last stage end
            .expect("every block is in a stage")
    }

    /// The first block whose group is in `trainable`: where a forward pass needs to start
    /// tracking gradients. `None` when the stem trains.
    pub fn first_trainable_block(&self, trainable: &[usize]) -> Option<usize> {
        match *trainable.iter().min()? {
            0 => None,
            g if g > self.stage_ends.len() => Some(self.blocks.len()),
            g => Some(self.group_blocks(g).start),
        }
    }

    /// Apply `f` to every conv layer of group `g`.
    pub fn map_group(mut self, g: usize, f: &dyn Fn(ConvBnAct) -> ConvBnAct) -> Self {
        if g == 0 {
            self.stem = f(self.stem);
        } else if g == self.group_count() - 1 {
            self.head = f(self.head);
        } else {
            let range = self.group_blocks(g);
            self.blocks = self
                .blocks
                .into_iter()
                .enumerate()
                .map(|(i, b)| {
                    if range.contains(&i) {
                        map_block(b, f)
                    } else {
                        b
                    }
                })
                .collect();
        }
        self
    }

    /// Visit every parameter of group `g`.
    pub fn visit_group<V: ModuleVisitor>(&self, g: usize, visitor: &mut V) {
        if g == 0 {
            self.stem.visit(visitor);
        } else if g == self.group_count() - 1 {
            self.head.visit(visitor);
        } else {
            for block in &self.blocks[self.group_blocks(g)] {
                block.visit(visitor);
            }
        }
    }
}

fn map_block(b: InvertedResidual, f: &dyn Fn(ConvBnAct) -> ConvBnAct) -> InvertedResidual {
    InvertedResidual {
        expand: b.expand.map(f),
        depthwise: f(b.depthwise),
        project: f(b.project),
        residual: b.residual,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backbone::PaddingMode;
    use crate::backbone::efficientnet_lite;

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
}

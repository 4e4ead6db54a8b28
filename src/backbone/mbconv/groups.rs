//! The MBConv family's layer groups: group 0 is the stem, groups 1..=S the S stages, group
//! S + 1 the head conv (see `backbone::groups` for what groups are for).

use std::ops::Range;

use super::model::MbNet;

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
}

//! Saving a (fine-tuned) network as safetensors under its family's checkpoint key names, so the
//! file loads like the original checkpoint (`Backbone::load`) and in PyTorch code that knows the
//! family.

use std::collections::HashMap;
use std::path::Path;

use burn::nn::BatchNorm;
use burn::tensor::Tensor;

use super::blocks::ConvBnAct;
use super::mbnet::MbNet;
use super::names::{BlockPart, KeyLayout};

struct Collector {
    tensors: Vec<(String, Vec<usize>, Vec<u8>)>,
}

impl Collector {
    fn add<const D: usize>(&mut self, name: String, tensor: Tensor<D>) {
        let shape = tensor.dims().to_vec();
        let values: Vec<f32> = tensor
            .into_data()
            .convert::<f32>()
            .try_into_vec()
            // cannot fail: converted to f32 on the line above
            .expect("converted to f32");
        let bytes = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.tensors.push((name, shape, bytes));
    }

    fn batch_norm(&mut self, bn: &BatchNorm, prefix: &str) {
        self.add(format!("{prefix}.weight"), bn.gamma.val());
        self.add(format!("{prefix}.bias"), bn.beta.val());
        self.add(format!("{prefix}.running_mean"), bn.running_mean.value());
        self.add(format!("{prefix}.running_var"), bn.running_var.value());
    }

    fn conv(&mut self, layer: &ConvBnAct, (conv, bn): (String, String)) {
        self.add(conv, layer.weight.val());
        self.batch_norm(&layer.bn, &bn);
    }
}

/// Write `net` (with unfolded BatchNorm) to `path` in `layout`'s key names. The classifier, if
/// any, is left out: a fine-tuned backbone has its own head.
pub fn save_safetensors(net: &MbNet, layout: KeyLayout, path: &Path) -> std::io::Result<()> {
    assert!(
        net.stem.folded_bias.is_none(),
        "a network with folded BatchNorm cannot be saved in checkpoint layout"
    );
    let mut out = Collector {
        tensors: Vec::new(),
    };
    out.conv(&net.stem, layout.stem());
    for (index, block) in net.blocks.iter().enumerate() {
        let has_expand = block.expand.is_some();
        if let Some(expand) = &block.expand {
            out.conv(expand, layout.block(index, BlockPart::Expand, has_expand));
        }
        out.conv(
            &block.depthwise,
            layout.block(index, BlockPart::Depthwise, has_expand),
        );
        out.conv(
            &block.project,
            layout.block(index, BlockPart::Project, has_expand),
        );
    }
    out.conv(&net.head, layout.head(net.blocks.len()));
    let views = out
        .tensors
        .iter()
        .map(|(name, shape, bytes)| {
            safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape.clone(), bytes)
                .map(|view| (name.clone(), view))
        })
        .collect::<Result<Vec<_>, _>>()
        .map_err(std::io::Error::other)?;
    let metadata = HashMap::from([("format".to_string(), "pt".to_string())]);
    let bytes = safetensors::serialize(views, Some(metadata)).map_err(std::io::Error::other)?;
    crate::util::write_atomic(path, &bytes)
}

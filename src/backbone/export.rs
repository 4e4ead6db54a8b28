//! Saving a (fine-tuned) network as safetensors under its family's checkpoint key names, so the
//! file loads like the original checkpoint (`Backbone::load`) and in PyTorch code that knows the
//! family. The key names come from the same walk that loads a checkpoint ([`TensorKeys`]).

use std::collections::HashMap;
use std::path::Path;

use burn::module::{Param, RunningState};
use burn::tensor::Tensor;

use super::arch::Arch;
use super::mbconv;
use super::network::Network;
use crate::weights::loader::TensorKeys;

/// Collects a model's tensors under their checkpoint keys, as f32, for [`TensorSink::write`].
#[derive(Default)]
pub struct TensorSink {
    tensors: Vec<(String, Vec<usize>, Vec<u8>)>,
}

impl TensorSink {
    fn add<const D: usize>(&mut self, name: &str, tensor: Tensor<D>) {
        let shape = tensor.dims().to_vec();
        let values: Vec<f32> = tensor
            .into_data()
            .convert::<f32>()
            .try_into_vec()
            // cannot fail: converted to f32 on the line above
            .expect("converted to f32");
        let bytes = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.tensors.push((name.to_string(), shape, bytes));
    }

    /// Write the collected tensors to `path` (atomically), in PyTorch's safetensors flavour.
    pub fn write(&self, path: &Path) -> std::io::Result<()> {
        let views = self
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
}

impl TensorKeys for TensorSink {
    fn param_stored_as<const D: usize, const S: usize>(
        &mut self,
        param: &mut Param<Tensor<D>>,
        key: &str,
        stored: [usize; S],
    ) {
        self.add::<S>(key, param.val().reshape(stored));
    }

    fn param_transposed(&mut self, param: &mut Param<Tensor<2>>, key: &str) {
        self.add(key, param.val().transpose());
    }

    fn running(&mut self, state: &mut RunningState<Tensor<1>>, key: &str) {
        self.add(key, state.value());
    }

    fn known(&mut self, _key: &str) {}

    fn skip_prefix(&mut self, _prefix: &str) {}
}

/// Write `net` (of `arch`, with unfolded BatchNorm) to `path` in the checkpoint key names of
/// `arch`'s layout. A pretrained classifier is saved when the network has one; a fine-tuned
/// backbone is loaded without it (it has its own head).
pub fn save_safetensors(net: &Network, arch: &Arch, path: &Path) -> std::io::Result<()> {
    let mut out = TensorSink::default();
    match (net.clone(), arch) {
        (Network::MbConv(mut net), Arch::MbConv { layout, .. }) => {
            assert!(
                net.stem.folded_bias.is_none(),
                "a network with folded BatchNorm cannot be saved in checkpoint layout"
            );
            mbconv::keys::visit_keys(&mut net, *layout, &mut out);
        }
        (Network::ResNet(mut net), Arch::ResNet(_)) => {
            assert!(
                !net.stem.folded,
                "a network with folded BatchNorm cannot be saved in checkpoint layout"
            );
            net.visit_keys(&mut out);
        }
        (Network::ConvNeXt(mut net), Arch::ConvNeXt { layout, .. }) => {
            net.visit_keys(&mut out, *layout)
        }
        (Network::Vit(mut net), Arch::Vit { layout, .. }) => net.visit_keys(&mut out, *layout),
        (net, arch) => {
            return Err(std::io::Error::other(format!(
                "a {} network cannot be saved in {} key names",
                Network::family(&net),
                arch.family()
            )));
        }
    }
    out.write(path)
}

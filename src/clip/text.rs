//! The text tower: token and position embeddings, pre-norm transformer blocks (the ViT's
//! blocks; causal for CLIP), a final LayerNorm, one token pooled (CLIP's end-of-text, SigLIP's
//! last position) and projected into the space the image tower maps to.

use burn::module::{Module, Param};
use burn::nn::{LayerNorm, Linear};
use burn::tensor::{Device, Int, Tensor, TensorData};

use crate::backbone::vit::{BlockSpec, VitBlock, VitLayout};
use crate::backbone::vit::{layer_norm, linear, linear_no_bias};
use crate::weights::loader::TensorKeys;

use super::config::TextSpec;

#[derive(Module, Debug)]
pub struct TextTower {
    /// `[vocab, width]`
    pub token_embedding: Param<Tensor<2>>,
    /// `[context, width]`
    pub pos_embed: Param<Tensor<2>>,
    pub blocks: Vec<VitBlock>,
    pub norm: LayerNorm,
    pub proj: Linear,
}

impl TextTower {
    pub fn init(spec: &TextSpec, device: &Device) -> Self {
        let block = BlockSpec {
            dim: spec.width,
            heads: spec.heads,
            mlp_dim: spec.mlp_dim,
            layer_scale: false,
            ln_eps: spec.ln_eps,
            act: spec.act,
            causal: spec.causal,
        };
        Self {
            token_embedding: Param::from_tensor(Tensor::zeros([spec.vocab, spec.width], device)),
            pos_embed: Param::from_tensor(Tensor::zeros([spec.context, spec.width], device)),
            blocks: (0..spec.layers)
                .map(|_| VitBlock::init(&block, device))
                .collect(),
            norm: layer_norm(spec.width, spec.ln_eps, device),
            proj: if spec.proj_bias {
                linear(spec.width, spec.embed_dim, device)
            } else {
                linear_no_bias(spec.width, spec.embed_dim, device)
            },
        }
    }

    /// Every tensor under graft's names ([`super::keys`]).
    pub fn visit_keys(&mut self, source: &mut impl TensorKeys) {
        source.param(&mut self.token_embedding, "token_embedding");
        source.param(&mut self.pos_embed, "pos_embed");
        for (i, block) in self.blocks.iter_mut().enumerate() {
            block.visit_keys(source, VitLayout::Timm, &format!("blocks.{i}"));
        }
        source.layer_norm(&mut self.norm, "norm");
        source.linear(&mut self.proj, "proj");
    }

    /// The embeddings `[N, embed]` of `ids` (each row the same length, at most the context)
    /// pooled at `positions` (one per row).
    pub fn forward(&self, ids: &[Vec<u32>], positions: &[usize]) -> Tensor<2> {
        let device = self.pos_embed.val().device();
        let (n, len) = (ids.len(), ids.first().map_or(0, Vec::len));
        let width = self.pos_embed.dims()[1];
        let flat: Vec<i64> = ids.iter().flatten().map(|&id| i64::from(id)).collect();
        let flat = Tensor::<1, Int>::from_data(TensorData::new(flat, [n * len]), &device);
        let tokens = self
            .token_embedding
            .val()
            .select(0, flat)
            .reshape([n, len, width]);
        let pos = self.pos_embed.val().narrow(0, 0, len).unsqueeze::<3>();
        let mut x = tokens + pos;
        for block in &self.blocks {
            x = block.forward(x);
        }
        let x = self.norm.forward(x).reshape([n * len, width]);
        let at: Vec<i64> = positions
            .iter()
            .enumerate()
            .map(|(row, &p)| (row * len + p) as i64)
            .collect();
        let at = Tensor::<1, Int>::from_data(TensorData::new(at, [n]), &device);
        self.proj.forward(x.select(0, at))
    }
}

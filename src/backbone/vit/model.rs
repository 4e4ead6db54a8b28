//! Vision Transformers (Dosovitskiy et al. 2021) in both published key layouts: torchvision's
//! (`conv_proj`, `encoder.layers.encoder_layer_N`, `heads.head`) and timm's (`patch_embed.proj`,
//! `blocks.N`, `head`), including timm's DINOv2 (patch 14, layer scale, register tokens, a
//! position embedding for 518 px). Pre-norm blocks `x + ls1(attn(LN(x)))`, `x + ls2(mlp(LN(x)))`
//! with exact (erf) GELU and LayerNorm eps 1e-6; the pooled feature is the class token after
//! the final norm, or (DINOv2's linear-probe feature) the class token and the mean of the patch
//! tokens side by side.
//!
//! At an input size other than the checkpoint's, the position embedding is resampled the way
//! timm's `resample_abs_pos_embed` does (bicubic, antialiased, prefix tokens kept), at run time:
//! the checkpoint's grid stays the parameter, so fine-tuning updates the original.
//! Layer groups: `embed`, `blocks0` … `blocks3` (the blocks in up to four equal runs), `norm`.
//!
//! The image towers of contrastive image-text models are ViTs with a few switches (timm builds
//! them the same way): CLIP adds a LayerNorm before the blocks (`norm_pre`), LayerNorm eps 1e-5,
//! QuickGELU (OpenAI's weights) and a projection of the pooled class token; SigLIP has no class
//! token and pools every token with one learned query (`attn_pool`, timm's
//! `AttentionPoolLatent`), with tanh-approximated GELU. Their checkpoints are translated to the
//! timm names by [`crate::clip`].

use burn::module::{Module, Param};
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{Initializer, LayerNorm, LayerNormConfig, Linear, LinearConfig};
use burn::tensor::activation::{gelu, gelu_approximate, sigmoid};
use burn::tensor::module::attention;
use burn::tensor::ops::AttentionModuleOptions;
use burn::tensor::{Device, Tensor, TensorData};

use crate::weights::loader::TensorKeys;

const LN_EPS: f64 = 1e-6;

/// Which tokens make the pooled feature.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum VitPool {
    /// The class token after the final norm (timm's `global_pool='token'`, torchvision).
    #[default]
    Token,
    /// The class token and the mean of the patch tokens, concatenated: `2 * dim` values
    /// (DINOv2's linear-probe feature). The pretrained classifier does not apply to it.
    TokenAndPatchMean,
    /// One learned query attending over every token after the final norm, then a residual
    /// MLP (timm's `global_pool='map'`; SigLIP's image tower).
    Attention,
}

/// The MLP's activation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MlpAct {
    /// Exact GELU (`erf`): timm, torchvision, OpenCLIP's own weights.
    #[default]
    Gelu,
    /// GELU's tanh approximation (`gelu_pytorch_tanh`: SigLIP).
    GeluTanh,
    /// `x * sigmoid(1.702 x)` (OpenAI's CLIP weights).
    QuickGelu,
}

impl MlpAct {
    pub fn forward<const D: usize>(self, x: Tensor<D>) -> Tensor<D> {
        match self {
            Self::Gelu => gelu(x),
            Self::GeluTanh => gelu_approximate(x),
            Self::QuickGelu => x.clone() * sigmoid(x * 1.702),
        }
    }
}

/// The architecture as data.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct VitSpec {
    pub patch: usize,
    pub dim: usize,
    pub depth: usize,
    pub heads: usize,
    pub mlp_dim: usize,
    /// Input side the checkpoint's position embedding was trained at.
    pub image_size: usize,
    /// Register tokens after the class token (DINOv2 `_reg4`).
    pub reg_tokens: usize,
    /// Per-channel layer scale on both residual branches (DINOv2).
    pub layer_scale: bool,
    /// Whether the position embedding covers the class (and register) tokens too; `false` is
    /// timm's `no_embed_class=True` (DINOv2 with registers).
    pub pos_embed_prefix: bool,
    pub pool: VitPool,
    /// Outputs of the checkpoint's classifier; 0 for none (DINOv2).
    pub num_classes: usize,
    /// A class token before the patches (every ViT but SigLIP's).
    pub class_token: bool,
    /// A LayerNorm on the tokens before the first block (CLIP's `ln_pre`).
    pub pre_norm: bool,
    /// Every LayerNorm's epsilon (1e-6 in timm and torchvision, 1e-5 in CLIP).
    pub ln_eps: f64,
    pub act: MlpAct,
    /// Width of a bias-free projection of the pooled token (CLIP's image embedding); 0 for
    /// none. When set, it is the feature.
    pub projection: usize,
    /// Whether the patch embedding has a bias (CLIP's has none).
    pub patch_bias: bool,
}

impl VitSpec {
    /// A supervised ViT at 224 px with a 1000-class head.
    pub const fn new(patch: usize, dim: usize, depth: usize, heads: usize) -> Self {
        Self {
            patch,
            dim,
            depth,
            heads,
            mlp_dim: 4 * dim,
            image_size: 224,
            reg_tokens: 0,
            layer_scale: false,
            pos_embed_prefix: true,
            pool: VitPool::Token,
            num_classes: 1000,
            class_token: true,
            pre_norm: false,
            ln_eps: LN_EPS,
            act: MlpAct::Gelu,
            projection: 0,
            patch_bias: true,
        }
    }

    /// timm's DINOv2 (`vit_*_patch14_dinov2`): 518 px, layer scale, no classifier; with
    /// registers the position embedding leaves out the prefix tokens.
    pub const fn dinov2(dim: usize, heads: usize, reg_tokens: usize) -> Self {
        Self {
            image_size: 518,
            reg_tokens,
            layer_scale: true,
            pos_embed_prefix: reg_tokens == 0,
            num_classes: 0,
            ..Self::new(14, dim, 12, heads)
        }
    }

    /// Patches per side of the checkpoint's position embedding.
    pub fn grid(&self) -> usize {
        self.image_size / self.patch
    }

    /// Class token and registers.
    pub fn prefix_tokens(&self) -> usize {
        usize::from(self.class_token) + self.reg_tokens
    }

    /// Tokens of the checkpoint's position embedding.
    pub fn pos_tokens(&self) -> usize {
        self.grid() * self.grid()
            + if self.pos_embed_prefix {
                self.prefix_tokens()
            } else {
                0
            }
    }

    pub fn feature_dim(&self) -> usize {
        if self.projection > 0 {
            return self.projection;
        }
        match self.pool {
            VitPool::Token | VitPool::Attention => self.dim,
            VitPool::TokenAndPatchMean => 2 * self.dim,
        }
    }

    /// Whether this is a plain ViT (no CLIP / SigLIP switch set), which the fused training op
    /// covers.
    pub fn is_plain(&self) -> bool {
        self.class_token
            && !self.pre_norm
            && self.ln_eps == LN_EPS
            && self.act == MlpAct::Gelu
            && self.projection == 0
            && self.patch_bias
            && self.pool != VitPool::Attention
    }

    /// The shape of its blocks.
    pub fn block_spec(&self) -> BlockSpec {
        BlockSpec {
            dim: self.dim,
            heads: self.heads,
            mlp_dim: self.mlp_dim,
            layer_scale: self.layer_scale,
            ln_eps: self.ln_eps,
            act: self.act,
            causal: false,
        }
    }

    /// The blocks of each of the (up to four) block groups, as ranges of block indices.
    pub fn block_groups(&self) -> Vec<std::ops::Range<usize>> {
        let groups = self.depth.clamp(1, 4);
        let per = self.depth.div_ceil(groups);
        (0..groups)
            .map(|g| (g * per).min(self.depth)..((g + 1) * per).min(self.depth))
            .filter(|r| !r.is_empty())
            .collect()
    }

    /// The layer group names: `embed`, `blocks0` … `blocksK`, `norm`.
    pub fn group_names(&self) -> Vec<String> {
        std::iter::once("embed".to_string())
            .chain((0..self.block_groups().len()).map(|g| format!("blocks{g}")))
            .chain(std::iter::once("norm".to_string()))
            .collect()
    }
}

pub const VIT_S_16: VitSpec = VitSpec::new(16, 384, 12, 6);
pub const VIT_B_16: VitSpec = VitSpec::new(16, 768, 12, 12);
pub const VIT_B_32: VitSpec = VitSpec::new(32, 768, 12, 12);
pub const VIT_L_16: VitSpec = VitSpec {
    mlp_dim: 4096,
    ..VitSpec::new(16, 1024, 24, 16)
};
pub const DINOV2_S_14: VitSpec = VitSpec::dinov2(384, 6, 0);
pub const DINOV2_S_14_REG4: VitSpec = VitSpec::dinov2(384, 6, 4);
pub const DINOV2_B_14: VitSpec = VitSpec::dinov2(768, 12, 0);
pub const DINOV2_B_14_REG4: VitSpec = VitSpec::dinov2(768, 12, 4);

/// Which framework named the checkpoint's tensors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VitLayout {
    /// `torchvision.models.vit_*`: `conv_proj`, `encoder.layers.encoder_layer_0`, `heads.head`.
    Torchvision,
    /// timm's `vit_*`: `patch_embed.proj`, `blocks.0`, `norm`, `head`.
    Timm,
}

/// The shape of one pre-norm transformer block: a ViT's, or a text tower's (causal for CLIP).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BlockSpec {
    pub dim: usize,
    pub heads: usize,
    pub mlp_dim: usize,
    pub layer_scale: bool,
    pub ln_eps: f64,
    pub act: MlpAct,
    /// Each token attends to itself and the tokens before it only (CLIP's text tower).
    pub causal: bool,
}

pub(crate) fn layer_norm(dim: usize, eps: f64, device: &Device) -> LayerNorm {
    LayerNormConfig::new(dim).with_epsilon(eps).init(device)
}

pub(crate) fn linear(d_in: usize, d_out: usize, device: &Device) -> Linear {
    // Zeros: every tensor is overwritten by a checkpoint.
    LinearConfig::new(d_in, d_out)
        .with_initializer(Initializer::Zeros)
        .init(device)
}

pub(crate) fn linear_no_bias(d_in: usize, d_out: usize, device: &Device) -> Linear {
    LinearConfig::new(d_in, d_out)
        .with_bias(false)
        .with_initializer(Initializer::Zeros)
        .init(device)
}

/// Multi-head self-attention with one fused QKV projection (q, k, v stacked in that order,
/// as both `nn.MultiheadAttention.in_proj_weight` and timm's `attn.qkv` store them).
#[derive(Module, Debug)]
pub struct Attention {
    pub qkv: Linear,
    pub proj: Linear,
    pub heads: usize,
    /// Each token attends to the ones before it only.
    pub causal: bool,
}

impl Attention {
    fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let [n, l, d] = x.dims();
        let dh = d / self.heads;
        // [3, N, heads, L, dh]
        let qkv = self
            .qkv
            .forward(x)
            .reshape([n, l, 3, self.heads, dh])
            .permute([2, 0, 3, 1, 4]);
        let part = |i: usize| qkv.clone().narrow(0, i, 1).reshape([n, self.heads, l, dh]);
        // softmax(q k^T / sqrt(dh)) v in one op: burn-flex runs it without materialising the
        // scores for long sequences (flash-style); autodiff differentiates its reference form.
        let out = attention(
            part(0),
            part(1),
            part(2),
            None,
            None,
            AttentionModuleOptions {
                is_causal: self.causal,
                ..Default::default()
            },
        );
        self.proj.forward(out.swap_dims(1, 2).reshape([n, l, d]))
    }
}

#[derive(Module, Debug)]
pub struct VitBlock {
    pub norm1: LayerNorm,
    pub attn: Attention,
    pub norm2: LayerNorm,
    pub fc1: Linear,
    pub fc2: Linear,
    /// Layer scales of the two branches (DINOv2), one factor per channel.
    pub ls1: Option<Param<Tensor<1>>>,
    pub ls2: Option<Param<Tensor<1>>>,
    #[module(skip)]
    pub act: MlpAct,
}

impl VitBlock {
    pub fn init(spec: &BlockSpec, device: &Device) -> Self {
        let d = spec.dim;
        let scale = || Param::from_tensor(Tensor::ones([d], device));
        Self {
            norm1: layer_norm(d, spec.ln_eps, device),
            attn: Attention {
                qkv: linear(d, 3 * d, device),
                proj: linear(d, d, device),
                heads: spec.heads,
                causal: spec.causal,
            },
            norm2: layer_norm(d, spec.ln_eps, device),
            fc1: linear(d, spec.mlp_dim, device),
            fc2: linear(spec.mlp_dim, d, device),
            ls1: spec.layer_scale.then(scale),
            ls2: spec.layer_scale.then(scale),
            act: spec.act,
        }
    }

    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let scaled = |y: Tensor<3>, ls: &Option<Param<Tensor<1>>>| match ls {
            Some(gamma) => y * gamma.val().unsqueeze::<3>(),
            None => y,
        };
        let y = self.attn.forward(self.norm1.forward(x.clone()));
        let x = x + scaled(y, &self.ls1);
        let y = self.fc2.forward(
            self.act
                .forward(self.fc1.forward(self.norm2.forward(x.clone()))),
        );
        x + scaled(y, &self.ls2)
    }

    pub fn visit_keys(&mut self, source: &mut impl TensorKeys, layout: VitLayout, prefix: &str) {
        match layout {
            VitLayout::Torchvision => {
                source.layer_norm(&mut self.norm1, &format!("{prefix}.ln_1"));
                let attn = format!("{prefix}.self_attention");
                source
                    .param_transposed(&mut self.attn.qkv.weight, &format!("{attn}.in_proj_weight"));
                if let Some(bias) = &mut self.attn.qkv.bias {
                    source.param(bias, &format!("{attn}.in_proj_bias"));
                }
                source.linear(&mut self.attn.proj, &format!("{attn}.out_proj"));
                source.layer_norm(&mut self.norm2, &format!("{prefix}.ln_2"));
                source.linear(&mut self.fc1, &format!("{prefix}.mlp.0"));
                source.linear(&mut self.fc2, &format!("{prefix}.mlp.3"));
            }
            VitLayout::Timm => {
                source.layer_norm(&mut self.norm1, &format!("{prefix}.norm1"));
                source.linear(&mut self.attn.qkv, &format!("{prefix}.attn.qkv"));
                source.linear(&mut self.attn.proj, &format!("{prefix}.attn.proj"));
                source.layer_norm(&mut self.norm2, &format!("{prefix}.norm2"));
                source.linear(&mut self.fc1, &format!("{prefix}.mlp.fc1"));
                source.linear(&mut self.fc2, &format!("{prefix}.mlp.fc2"));
                for (ls, name) in [(&mut self.ls1, "ls1"), (&mut self.ls2, "ls2")] {
                    if let Some(gamma) = ls {
                        source.param(gamma, &format!("{prefix}.{name}.gamma"));
                    }
                }
            }
        }
    }
}

/// SigLIP's pooling (timm's `AttentionPoolLatent`, HF's `SiglipMultiheadAttentionPoolingHead`):
/// one learned query attends over every token, then `x + mlp(norm(x))`.
#[derive(Module, Debug)]
pub struct AttentionPool {
    /// `[1, 1, dim]`
    pub latent: Param<Tensor<3>>,
    pub q: Linear,
    /// Keys and values, stacked in that order: `[dim, 2 * dim]`.
    pub kv: Linear,
    pub proj: Linear,
    pub norm: LayerNorm,
    pub fc1: Linear,
    pub fc2: Linear,
    pub heads: usize,
    #[module(skip)]
    pub act: MlpAct,
}

impl AttentionPool {
    fn init(spec: &VitSpec, device: &Device) -> Self {
        let d = spec.dim;
        Self {
            latent: Param::from_tensor(Tensor::zeros([1, 1, d], device)),
            q: linear(d, d, device),
            kv: linear(d, 2 * d, device),
            proj: linear(d, d, device),
            norm: layer_norm(d, spec.ln_eps, device),
            fc1: linear(d, spec.mlp_dim, device),
            fc2: linear(spec.mlp_dim, d, device),
            heads: spec.heads,
            act: spec.act,
        }
    }

    /// `[N, L, dim]` tokens to `[N, dim]`.
    fn forward(&self, x: Tensor<3>) -> Tensor<2> {
        let [n, l, d] = x.dims();
        let dh = d / self.heads;
        let q = self
            .q
            .forward(self.latent.val())
            .reshape([1, 1, self.heads, dh])
            .swap_dims(1, 2)
            .expand([n, self.heads, 1, dh]);
        let kv = self
            .kv
            .forward(x)
            .reshape([n, l, 2, self.heads, dh])
            .permute([2, 0, 3, 1, 4]);
        let part = |i: usize| kv.clone().narrow(0, i, 1).reshape([n, self.heads, l, dh]);
        let out = attention(
            q,
            part(0),
            part(1),
            None,
            None,
            AttentionModuleOptions::default(),
        );
        let x = self.proj.forward(out.swap_dims(1, 2).reshape([n, 1, d]));
        let y = self.fc2.forward(
            self.act
                .forward(self.fc1.forward(self.norm.forward(x.clone()))),
        );
        (x + y).reshape([n, d])
    }

    fn visit_keys(&mut self, source: &mut impl TensorKeys, prefix: &str) {
        source.param(&mut self.latent, &format!("{prefix}.latent"));
        source.linear(&mut self.q, &format!("{prefix}.q"));
        source.linear(&mut self.kv, &format!("{prefix}.kv"));
        source.linear(&mut self.proj, &format!("{prefix}.proj"));
        source.layer_norm(&mut self.norm, &format!("{prefix}.norm"));
        source.linear(&mut self.fc1, &format!("{prefix}.mlp.fc1"));
        source.linear(&mut self.fc2, &format!("{prefix}.mlp.fc2"));
    }
}

#[derive(Module, Debug)]
pub struct Vit {
    pub patch_embed: Conv2d,
    /// `[1, 1, dim]`; `None` without one (SigLIP).
    pub cls_token: Option<Param<Tensor<3>>>,
    /// `[1, reg_tokens, dim]` (DINOv2 `_reg4`).
    pub reg_token: Option<Param<Tensor<3>>>,
    /// `[1, pos_tokens, dim]` at the checkpoint's grid.
    pub pos_embed: Param<Tensor<3>>,
    /// CLIP's LayerNorm before the blocks.
    pub norm_pre: Option<LayerNorm>,
    pub blocks: Vec<VitBlock>,
    pub norm: LayerNorm,
    /// SigLIP's attention pooling.
    pub attn_pool: Option<AttentionPool>,
    /// CLIP's projection of the pooled token (no bias).
    pub proj: Option<Linear>,
    pub head: Option<Linear>,
    pub patch: usize,
    pub grid: usize,
    /// Prefix tokens covered by the position embedding (0 or 1 + registers).
    pub pos_prefix: usize,
    pub prefix_tokens: usize,
    pub mean_patch_feature: bool,
    /// Blocks per layer group (the last group may have fewer).
    pub blocks_per_group: usize,
    /// Whether the spec is a plain ViT ([`VitSpec::is_plain`]).
    pub plain: bool,
    pub ln_eps: f64,
}

impl Vit {
    /// The network of `spec` (weights to be filled by [`Network::load`](crate::backbone::Network::load)); the classifier only when
    /// `include_top` and the spec has one.
    pub fn init(spec: &VitSpec, include_top: bool, device: &Device) -> Self {
        let d = spec.dim;
        let block = spec.block_spec();
        Self {
            patch_embed: Conv2dConfig::new([3, d], [spec.patch, spec.patch])
                .with_stride([spec.patch, spec.patch])
                .with_bias(spec.patch_bias)
                .with_initializer(Initializer::Zeros)
                .init(device),
            cls_token: spec
                .class_token
                .then(|| Param::from_tensor(Tensor::zeros([1, 1, d], device))),
            reg_token: (spec.reg_tokens > 0)
                .then(|| Param::from_tensor(Tensor::zeros([1, spec.reg_tokens, d], device))),
            pos_embed: Param::from_tensor(Tensor::zeros([1, spec.pos_tokens(), d], device)),
            norm_pre: spec.pre_norm.then(|| layer_norm(d, spec.ln_eps, device)),
            blocks: (0..spec.depth)
                .map(|_| VitBlock::init(&block, device))
                .collect(),
            norm: layer_norm(d, spec.ln_eps, device),
            attn_pool: (spec.pool == VitPool::Attention).then(|| AttentionPool::init(spec, device)),
            proj: (spec.projection > 0).then(|| linear_no_bias(d, spec.projection, device)),
            head: (include_top && spec.num_classes > 0)
                .then(|| linear(d, spec.num_classes, device)),
            patch: spec.patch,
            grid: spec.grid(),
            pos_prefix: spec.pos_tokens() - spec.grid() * spec.grid(),
            prefix_tokens: spec.prefix_tokens(),
            mean_patch_feature: spec.pool == VitPool::TokenAndPatchMean,
            blocks_per_group: spec.block_groups()[0].len(),
            plain: spec.is_plain(),
            ln_eps: spec.ln_eps,
        }
    }

    /// Walk every tensor under the key `layout` gives it: to load a checkpoint or to save one
    /// (see [`TensorKeys`]).
    pub fn visit_keys(&mut self, source: &mut impl TensorKeys, layout: VitLayout) {
        let (patch, cls, pos, blocks, norm, head) = match layout {
            VitLayout::Torchvision => (
                "conv_proj",
                "class_token",
                "encoder.pos_embedding",
                "encoder.layers.encoder_layer_",
                "encoder.ln",
                "heads.head",
            ),
            VitLayout::Timm => (
                "patch_embed.proj",
                "cls_token",
                "pos_embed",
                "blocks.",
                "norm",
                "head",
            ),
        };
        source.conv2d(&mut self.patch_embed, patch);
        if let Some(cls_token) = &mut self.cls_token {
            source.param(cls_token, cls);
        }
        if let Some(reg) = &mut self.reg_token {
            source.param(reg, "reg_token");
        }
        source.param(&mut self.pos_embed, pos);
        if let Some(norm_pre) = &mut self.norm_pre {
            source.layer_norm(norm_pre, "norm_pre");
        }
        for (i, block) in self.blocks.iter_mut().enumerate() {
            block.visit_keys(source, layout, &format!("{blocks}{i}"));
        }
        source.layer_norm(&mut self.norm, norm);
        if let Some(pool) = &mut self.attn_pool {
            pool.visit_keys(source, "attn_pool");
        }
        if let Some(proj) = &mut self.proj {
            source.linear(proj, "proj");
        }
        match &mut self.head {
            Some(linear) => source.linear(linear, head),
            None => source.skip_prefix(&format!("{head}.")),
        }
    }

    /// Patch tokens with their position embedding, behind the prefix tokens: `[N, L, dim]`.
    fn embed(&self, x: Tensor<4>) -> Tensor<3> {
        let map = self.patch_embed.forward(x);
        let [n, d, h, w] = map.dims();
        let patches = map.reshape([n, d, h * w]).swap_dims(1, 2);
        let pos = self.pos_embed.val();
        let pos_patches = resample_grid(
            pos.clone()
                .narrow(1, self.pos_prefix, self.grid * self.grid),
            self.grid,
            [h, w],
        );
        let patches = patches + pos_patches;
        let prefix: Vec<Tensor<3>> = self
            .cls_token
            .iter()
            .chain(&self.reg_token)
            .map(|p| p.val())
            .collect();
        let tokens = if prefix.is_empty() {
            patches
        } else {
            let prefix = Tensor::cat(prefix, 1);
            let prefix = if self.pos_prefix > 0 {
                prefix + pos.narrow(1, 0, self.pos_prefix)
            } else {
                prefix
            };
            let [_, p, _] = prefix.dims();
            Tensor::cat(vec![prefix.expand([n, p, d]), patches], 1)
        };
        match &self.norm_pre {
            Some(norm) => norm.forward(tokens),
            None => tokens,
        }
    }

    /// Output of each layer group in order: embed, each block group, the final norm.
    pub fn forward_groups(&self, x: Tensor<4>) -> Vec<Tensor<3>> {
        let mut x = self.embed(x);
        let mut outputs = vec![x.clone()];
        for group in self.blocks.chunks(self.blocks_per_group) {
            for block in group {
                x = block.forward(x);
            }
            outputs.push(x.clone());
        }
        outputs.push(self.norm.forward(x));
        outputs
    }

    /// The tokens after the final norm, `[N, L, dim]`.
    fn tokens(&self, x: Tensor<4>) -> Tensor<3> {
        let mut x = self.embed(x);
        for block in &self.blocks {
            x = block.forward(x);
        }
        self.norm.forward(x)
    }

    fn class_token(tokens: Tensor<3>) -> Tensor<2> {
        let [n, _, d] = tokens.dims();
        tokens.narrow(1, 0, 1).reshape([n, d])
    }

    /// The tokens entering the last block, `[N, L, dim]`: where Grad-CAM takes its gradient
    /// (`crate::explain`; [`Vit::features_from_last_block_input`] goes on from them).
    pub fn last_block_input(&self, x: Tensor<4>) -> Tensor<3> {
        let last = self.blocks.len().saturating_sub(1);
        self.blocks[..last]
            .iter()
            .fold(self.embed(x), |x, block| block.forward(x))
    }

    /// The pooled features of the tokens entering the last block: the last block, the final
    /// norm and the pooling.
    pub fn features_from_last_block_input(&self, tokens: Tensor<3>) -> Tensor<2> {
        let tokens = match self.blocks.last() {
            Some(block) => block.forward(tokens),
            None => tokens,
        };
        self.pool(self.norm.forward(tokens))
    }

    /// Pooled features: the class token, or it and the mean patch token (`[N, 2 * dim]`), or
    /// SigLIP's attention pooling; CLIP's projection of it when the network has one.
    pub fn forward_features(&self, x: Tensor<4>) -> Tensor<2> {
        self.pool(self.tokens(x))
    }

    /// The pooled (and projected) feature of the final tokens.
    fn pool(&self, tokens: Tensor<3>) -> Tensor<2> {
        let pooled = self.pool_tokens(tokens);
        match &self.proj {
            Some(proj) => proj.forward(pooled),
            None => pooled,
        }
    }

    fn pool_tokens(&self, tokens: Tensor<3>) -> Tensor<2> {
        if let Some(pool) = &self.attn_pool {
            return pool.forward(tokens);
        }
        if !self.mean_patch_feature {
            return Self::class_token(tokens);
        }
        let [n, l, d] = tokens.dims();
        let mean = tokens
            .clone()
            .narrow(1, self.prefix_tokens, l - self.prefix_tokens)
            .mean_dim(1)
            .reshape([n, d]);
        Tensor::cat(vec![Self::class_token(tokens), mean], 1)
    }

    /// ImageNet logits (of the class token), or `None` without a classifier.
    pub fn forward_logits(&self, x: Tensor<4>) -> Option<Tensor<2>> {
        let head = self.head.as_ref()?;
        Some(head.forward(Self::class_token(self.tokens(x))))
    }

    pub fn device(&self) -> Device {
        self.pos_embed.val().device()
    }
}

/// The `[1, grid * grid, dim]` position embedding at `[h, w]` patches: unchanged when the
/// size is the same, otherwise resampled as `F.interpolate(mode='bicubic', antialias=True)`
/// does (timm's `resample_abs_pos_embed`). Written as two matrix products, so gradients flow.
pub(in crate::backbone) fn resample_grid(
    pos: Tensor<3>,
    grid: usize,
    [h, w]: [usize; 2],
) -> Tensor<3> {
    if [h, w] == [grid, grid] {
        return pos;
    }
    let [_, _, d] = pos.dims();
    let device = pos.device();
    let matrix = |out: usize| {
        Tensor::<2>::from_data(
            TensorData::new(antialiased_bicubic_weights(grid, out), [out, grid]),
            &device,
        )
    };
    // [d, grid, grid] -> rows: [d, h, grid] -> columns: [d, h, w]
    let map = pos.reshape([grid, grid, d]).permute([2, 0, 1]);
    let rows = matrix(h).unsqueeze::<3>().matmul(map);
    let resampled = rows.matmul(matrix(w).transpose().unsqueeze::<3>());
    resampled.permute([1, 2, 0]).reshape([1, h * w, d])
}

/// [`resample_grid`] on plain rows for the fused forms: `pos` `[grid * grid, dim]` to
/// `[h * w, dim]`, first along the rows of the grid, then along its columns.
pub(in crate::backbone) fn resample_rows(
    pos: &[f32],
    grid: usize,
    [h, w]: [usize; 2],
    dim: usize,
) -> Vec<f32> {
    let (rows, columns) = (
        antialiased_bicubic_weights(grid, h),
        antialiased_bicubic_weights(grid, w),
    );
    // [h, grid, dim], then [h, w, dim]
    let mut partial = vec![0.0f32; h * grid * dim];
    for (i, out) in partial.chunks_exact_mut(grid * dim).enumerate() {
        for (a, pos) in pos.chunks_exact(grid * dim).enumerate() {
            axpy(rows[i * grid + a], pos, out);
        }
    }
    let mut resampled = vec![0.0f32; h * w * dim];
    for (out, partial) in resampled
        .chunks_exact_mut(w * dim)
        .zip(partial.chunks_exact(grid * dim))
    {
        for (j, out) in out.chunks_exact_mut(dim).enumerate() {
            for (b, partial) in partial.chunks_exact(dim).enumerate() {
                axpy(columns[j * grid + b], partial, out);
            }
        }
    }
    resampled
}

/// The adjoint of [`resample_rows`]: the gradient of the `[grid * grid, dim]` embedding from
/// that of the resampled `[h * w, dim]` one.
pub(in crate::backbone) fn resample_rows_adjoint(
    d_resampled: &[f32],
    grid: usize,
    [h, w]: [usize; 2],
    dim: usize,
) -> Vec<f32> {
    let (rows, columns) = (
        antialiased_bicubic_weights(grid, h),
        antialiased_bicubic_weights(grid, w),
    );
    // [h, grid, dim], then [grid, grid, dim]
    let mut partial = vec![0.0f32; h * grid * dim];
    for (partial, d) in partial
        .chunks_exact_mut(grid * dim)
        .zip(d_resampled.chunks_exact(w * dim))
    {
        for (j, d) in d.chunks_exact(dim).enumerate() {
            for (b, partial) in partial.chunks_exact_mut(dim).enumerate() {
                axpy(columns[j * grid + b], d, partial);
            }
        }
    }
    let mut d_pos = vec![0.0f32; grid * grid * dim];
    for (i, partial) in partial.chunks_exact(grid * dim).enumerate() {
        for (a, out) in d_pos.chunks_exact_mut(grid * dim).enumerate() {
            axpy(rows[i * grid + a], partial, out);
        }
    }
    d_pos
}

/// `out += a * x`.
fn axpy(a: f32, x: &[f32], out: &mut [f32]) {
    if a != 0.0 {
        out.iter_mut().zip(x).for_each(|(o, x)| *o += a * x);
    }
}

/// The `[out, input]` weights of PyTorch's antialiased bicubic resampling along one axis
/// (`_compute_weights_aa`: Keys cubic with a = -0.5, support widened by the scale when
/// shrinking, half-pixel centres, each row normalised).
pub fn antialiased_bicubic_weights(input: usize, out: usize) -> Vec<f32> {
    fn cubic(x: f64) -> f64 {
        const A: f64 = -0.5;
        let x = x.abs();
        if x < 1.0 {
            ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
        } else if x < 2.0 {
            ((A * x - 5.0 * A) * x + 8.0 * A) * x - 4.0 * A
        } else {
            0.0
        }
    }
    let scale = input as f64 / out as f64;
    let (support, invscale) = if scale >= 1.0 {
        (2.0 * scale, 1.0 / scale)
    } else {
        (2.0, 1.0)
    };
    let mut weights = vec![0.0f32; out * input];
    for i in 0..out {
        let center = scale * (i as f64 + 0.5);
        // Truncation toward zero, as the C++ casts do.
        let start = ((center - support + 0.5) as i64).max(0) as usize;
        let end = ((center + support + 0.5) as i64).min(input as i64) as usize;
        let row: Vec<f64> = (start..end)
            .map(|j| cubic((j as f64 - center + 0.5) * invscale))
            .collect();
        let total: f64 = row.iter().sum();
        for (j, w) in (start..end).zip(row) {
            weights[i * input + j] = if total != 0.0 { w / total } else { w } as f32;
        }
    }
    weights
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resampling_weights_are_normalised_and_identity_at_the_same_size() {
        for (input, out) in [(37, 16), (14, 16), (7, 3)] {
            let w = antialiased_bicubic_weights(input, out);
            for row in w.chunks(input) {
                let sum: f32 = row.iter().sum();
                assert!(
                    (sum - 1.0).abs() < 1e-5,
                    "{input}->{out}: row sums to {sum}"
                );
            }
        }
        let w = antialiased_bicubic_weights(5, 5);
        for i in 0..5 {
            for j in 0..5 {
                let expected = if i == j { 1.0 } else { 0.0 };
                assert!((w[i * 5 + j] - expected).abs() < 1e-6);
            }
        }
    }

    #[test]
    fn block_groups_cover_every_block_once() {
        for depth in [1, 2, 3, 5, 12, 24] {
            let spec = VitSpec { depth, ..VIT_S_16 };
            let groups = spec.block_groups();
            assert!(groups.len() <= 4);
            let covered: Vec<usize> = groups.into_iter().flatten().collect();
            assert_eq!(covered, (0..depth).collect::<Vec<_>>());
        }
        assert_eq!(
            VIT_S_16.group_names(),
            ["embed", "blocks0", "blocks1", "blocks2", "blocks3", "norm"]
        );
    }
}

//! Layers the fused transformer-style forms share (ViT, ConvNeXt): a Linear as a product
//! with its bias (and a residual) fused into the output tiles, with an optional per-output
//! scale folded in (layer scale), and a one-pass LayerNorm over rows.

use super::to_vec;
use crate::kernels::amx::{self, PackedBf16};
use crate::kernels::transformer::layer_norm;
use crate::kernels::{self, Activation};

/// LayerNorm's epsilon in every source these forms load (timm, torchvision: ViT and ConvNeXt).
pub(in crate::backbone) const LN_EPS: f32 = 1e-6;

/// A Linear as `[in, out]` row-major weights and a bias, optionally scaled per output.
#[derive(Debug, Clone)]
pub(in crate::backbone) struct Dense {
    pub(in crate::backbone) weight: Vec<f32>,
    pub(in crate::backbone) bias: Vec<f32>,
    /// The weights as bfloat16 tiles when products run on AMX ([`Dense::in_bf16`]).
    bf16: Option<PackedBf16>,
}

impl Dense {
    pub(in crate::backbone) fn new(linear: &burn::nn::Linear, scale: Option<Vec<f32>>) -> Self {
        let [_, out] = linear.weight.dims();
        let mut weight = to_vec(linear.weight.val());
        let mut bias = match &linear.bias {
            Some(bias) => to_vec(bias.val()),
            None => vec![0.0; out],
        };
        if let Some(scale) = scale {
            fold_layer_scale(&mut weight, &mut bias, &scale);
        }
        Self::from_parts(weight, bias)
    }

    /// `[in, out]` row-major weights and their bias.
    pub(in crate::backbone) fn from_parts(weight: Vec<f32>, bias: Vec<f32>) -> Self {
        Self {
            weight,
            bias,
            bf16: None,
        }
    }

    /// The same layer with its products in bfloat16 on AMX tiles (float32 sums).
    pub(in crate::backbone) fn in_bf16(mut self) -> Self {
        self.bf16 = Some(PackedBf16::pack(
            &self.weight,
            self.inputs(),
            self.bias.len(),
        ));
        self
    }

    pub(in crate::backbone) fn inputs(&self) -> usize {
        self.weight.len() / self.bias.len()
    }

    /// `out = input @ W + b (+ residual)` for `rows` rows.
    pub(in crate::backbone) fn forward(
        &self,
        input: &[f32],
        rows: usize,
        residual: Option<&[f32]>,
        out: &mut [f32],
    ) {
        if let Some(packed) = &self.bf16 {
            amx::matmul(input, rows, packed, &self.bias, residual, out);
            return;
        }
        kernels::pointwise(
            input,
            rows,
            self.inputs(),
            &self.weight,
            &self.bias,
            Activation::None,
            residual,
            out,
        );
    }
}

/// Layer scale `ls * (x W + b)` is `x (W ls) + b ls`: folds `scale` (one per output) into
/// `[in, out]` row-major weights and their bias.
pub(in crate::backbone) fn fold_layer_scale(weight: &mut [f32], bias: &mut [f32], scale: &[f32]) {
    for row in weight.chunks_exact_mut(scale.len()) {
        row.iter_mut().zip(scale).for_each(|(w, s)| *w *= s);
    }
    bias.iter_mut().zip(scale).for_each(|(b, s)| *b *= s);
}

#[derive(Debug, Clone)]
pub(in crate::backbone) struct Norm {
    pub(in crate::backbone) gamma: Vec<f32>,
    beta: Vec<f32>,
    eps: f32,
}

impl Norm {
    pub(in crate::backbone) fn new(norm: &burn::nn::LayerNorm) -> Self {
        Self::with_eps(norm, LN_EPS as f64)
    }

    /// A LayerNorm whose epsilon is not timm's (CLIP's 1e-5).
    pub(in crate::backbone) fn with_eps(norm: &burn::nn::LayerNorm, eps: f64) -> Self {
        let dim = norm.gamma.dims()[0];
        Self {
            gamma: to_vec(norm.gamma.val()),
            beta: norm
                .beta
                .as_ref()
                .map_or_else(|| vec![0.0; dim], |b| to_vec(b.val())),
            eps: eps as f32,
        }
    }

    pub(in crate::backbone) fn forward(&self, x: &[f32], out: &mut [f32]) {
        layer_norm(x, &self.gamma, &self.beta, self.eps, out);
    }
}

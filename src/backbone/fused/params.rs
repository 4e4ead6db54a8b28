//! What the fused training ops share (`vit::fused_grad`,
//! `convnext::fused_grad`): the flat parameter vector built from the modules and where
//! each tensor sits in it, a Linear as the kernels read it (layer scale folded), and the
//! gradient helpers.

use std::borrow::Cow;
use std::ops::Range;

use burn::nn::conv::Conv2d;
use burn::nn::{LayerNorm, Linear};
use burn::tensor::{Device, Tensor};

use super::buffer_pool;
use super::layers::fold_layer_scale;
use crate::kernels::{self, Activation};

/// A Linear's weight (`[in, out]`) and bias in the parameter vector.
#[derive(Debug, Clone)]
pub(in crate::backbone) struct LinearSlots {
    pub(in crate::backbone) weight: Range<usize>,
    pub(in crate::backbone) bias: Range<usize>,
}

/// A conv's weight (`[out, in, k, k]`) and bias in the parameter vector.
#[derive(Debug, Clone)]
pub(in crate::backbone) struct ConvSlots {
    pub(in crate::backbone) weight: Range<usize>,
    pub(in crate::backbone) bias: Range<usize>,
}

/// A LayerNorm's gamma and beta, side by side.
#[derive(Debug, Clone)]
pub(in crate::backbone) struct NormSlots {
    pub(in crate::backbone) gamma: Range<usize>,
    pub(in crate::backbone) beta: Range<usize>,
}

/// The parameter vector as it is built: its tensors, flattened, in order.
pub(in crate::backbone) struct Builder {
    pub(in crate::backbone) tensors: Vec<Tensor<1>>,
    pub(in crate::backbone) len: usize,
    device: Device,
}

impl Builder {
    pub(in crate::backbone) fn new(device: Device) -> Self {
        Self {
            tensors: Vec::new(),
            len: 0,
            device,
        }
    }

    /// A conv's weight (burn's layout) and bias.
    pub(in crate::backbone) fn conv(&mut self, conv: &Conv2d) -> ConvSlots {
        let out = conv.weight.dims()[0];
        ConvSlots {
            weight: self.push(conv.weight.val()),
            bias: self.push_or_zeros(conv.bias.as_ref().map(|b| b.val()), out),
        }
    }
}

impl Builder {
    pub(in crate::backbone) fn push<const D: usize>(&mut self, t: Tensor<D>) -> Range<usize> {
        let n = t.shape().num_elements();
        self.tensors.push(t.reshape([n]));
        self.len += n;
        self.len - n..self.len
    }

    /// A missing bias or beta as zeros: a constant of the op, so it gets no gradient.
    pub(in crate::backbone) fn push_or_zeros(
        &mut self,
        t: Option<Tensor<1>>,
        n: usize,
    ) -> Range<usize> {
        self.push(t.unwrap_or_else(|| Tensor::zeros([n], &self.device)))
    }

    pub(in crate::backbone) fn linear(&mut self, linear: &Linear) -> LinearSlots {
        let [_, out] = linear.weight.dims();
        LinearSlots {
            weight: self.push(linear.weight.val()),
            bias: self.push_or_zeros(linear.bias.as_ref().map(|b| b.val()), out),
        }
    }

    pub(in crate::backbone) fn norm(&mut self, norm: &LayerNorm) -> NormSlots {
        let n = norm.gamma.dims()[0];
        NormSlots {
            gamma: self.push(norm.gamma.val()),
            beta: self.push_or_zeros(norm.beta.as_ref().map(|b| b.val()), n),
        }
    }
}

/// A Linear as the kernels read it: `[in, out]` weight and bias, layer scale folded in.
pub(in crate::backbone) struct Dense<'a> {
    pub(in crate::backbone) weight: Cow<'a, [f32]>,
    pub(in crate::backbone) bias: Cow<'a, [f32]>,
}

impl<'a> Dense<'a> {
    /// `ls * (x W + b)` is `x (W ls) + b ls`.
    pub(in crate::backbone) fn new(
        params: &'a [f32],
        slots: &LinearSlots,
        scale: Option<&Range<usize>>,
    ) -> Self {
        let (weight, bias) = (&params[slots.weight.clone()], &params[slots.bias.clone()]);
        let Some(scale) = scale else {
            return Self {
                weight: Cow::Borrowed(weight),
                bias: Cow::Borrowed(bias),
            };
        };
        let (mut weight, mut bias) = (weight.to_vec(), bias.to_vec());
        fold_layer_scale(&mut weight, &mut bias, &params[scale.clone()]);
        Self {
            weight: Cow::Owned(weight),
            bias: Cow::Owned(bias),
        }
    }

    /// `out = input @ W + b (+ residual)` for `rows` rows.
    pub(in crate::backbone) fn forward(
        &self,
        input: &[f32],
        rows: usize,
        residual: Option<&[f32]>,
        out: &mut [f32],
    ) {
        let inputs = self.weight.len() / self.bias.len();
        kernels::pointwise(
            input,
            rows,
            inputs,
            &self.weight,
            &self.bias,
            Activation::None,
            residual,
            out,
        );
    }
}

pub(in crate::backbone) fn norm<'a>(params: &'a [f32], slots: &NormSlots) -> [&'a [f32]; 2] {
    [&params[slots.gamma.clone()], &params[slots.beta.clone()]]
}

/// `buffer` as `len` values (their contents undefined), from the pool when it has another
/// length.
pub(in crate::backbone) fn pooled(buffer: &mut Vec<f32>, len: usize) -> &mut [f32] {
    if buffer.len() != len {
        buffer_pool::give(std::mem::replace(buffer, buffer_pool::take(len)));
    }
    buffer
}

/// `sum += values`.
pub(in crate::backbone) fn add(values: &[f32], sum: &mut [f32]) {
    sum.iter_mut().zip(values).for_each(|(s, v)| *s += v);
}

/// Two disjoint ranges of `values`, mutably.
pub(in crate::backbone) fn two_mut<'a>(
    values: &'a mut [f32],
    a: &Range<usize>,
    b: &Range<usize>,
) -> [&'a mut [f32]; 2] {
    assert!(a.end <= b.start, "ranges in order");
    let (low, high) = values.split_at_mut(b.start);
    [&mut low[a.clone()], &mut high[..b.len()]]
}

/// The gradients of `W`, `b` and `ls` from those of the folded `W ls`, `b ls` (held in the
/// weight and bias slots of `grads`): `dW = dW' ls`, `db = db' ls`,
/// `dls = Σ_rows dW' ⊙ W + db' ⊙ b`.
pub(in crate::backbone) fn unfold_scale(
    grads: &mut [f32],
    params: &[f32],
    linear: &LinearSlots,
    scale: &Range<usize>,
) {
    let ls = &params[scale.clone()];
    let mut d_scale = vec![0.0f32; ls.len()];
    let weight = &params[linear.weight.clone()];
    for (d_row, row) in grads[linear.weight.clone()]
        .chunks_exact_mut(ls.len())
        .zip(weight.chunks_exact(ls.len()))
    {
        for (((g, w), s), ds) in d_row.iter_mut().zip(row).zip(ls).zip(&mut d_scale) {
            *ds += *g * w;
            *g *= s;
        }
    }
    let bias = &params[linear.bias.clone()];
    for (((g, b), s), ds) in grads[linear.bias.clone()]
        .iter_mut()
        .zip(bias)
        .zip(ls)
        .zip(&mut d_scale)
    {
        *ds += *g * b;
        *g *= s;
    }
    grads[scale.clone()].copy_from_slice(&d_scale);
}

/// The parameter gradient of a batch from its worker groups: `backward(group, first, grads)`
/// adds one group's gradient into a zeroed vector of `len` values (`first`: the batch index of
/// its first image), one group per task; the vectors are then summed, a chunk per task. The
/// caller gives the result back to the pool.
pub(in crate::backbone) fn summed_group_gradients<G: Sync>(
    groups: &[G],
    images: impl Fn(&G) -> usize,
    len: usize,
    backward: impl Fn(&G, usize, &mut [f32]) + Sync,
) -> Vec<f32> {
    use rayon::prelude::*;
    let mut first = 0;
    let starts: Vec<usize> = groups
        .iter()
        .map(|g| {
            first += images(g);
            first - images(g)
        })
        .collect();
    let mut per_group: Vec<Vec<f32>> = groups
        .par_iter()
        .zip(starts)
        .map(|(group, start)| {
            let mut grads = buffer_pool::zeroed(len);
            backward(group, start, &mut grads);
            grads
        })
        .collect();
    let mut grads = per_group.pop().unwrap_or_else(|| vec![0.0; len]);
    const CHUNK: usize = 1 << 16;
    grads
        .par_chunks_mut(CHUNK)
        .enumerate()
        .for_each(|(i, sum)| {
            for other in &per_group {
                add(&other[i * CHUNK..][..sum.len()], sum);
            }
        });
    per_group.into_iter().for_each(buffer_pool::give);
    grads
}

//! Transformer-block kernels on one image's tokens (`[tokens, dim]`, row-major): LayerNorm in
//! one pass per row, exact GELU as a vectorisable rational approximation of erf, and one
//! attention head as two matrix products around a fused scale + softmax, reading q, k and v in
//! place from the QKV product. The network built on them is [`crate::backbone::vit::fused`].

use super::simd::dispatch;
use super::{Matrix, MatrixRef, product};

/// `out[row] = (x[row] - mean) / sqrt(var + eps) * gamma + beta` for each row of `dim` values.
pub fn layer_norm(x: &[f32], gamma: &[f32], beta: &[f32], eps: f32, out: &mut [f32]) {
    dispatch!(layer_norm_rows(x, gamma, beta, eps, out))
}

#[inline(always)]
fn layer_norm_rows(x: &[f32], gamma: &[f32], beta: &[f32], eps: f32, out: &mut [f32]) {
    let dim = gamma.len();
    for (row, out) in x.chunks_exact(dim).zip(out.chunks_exact_mut(dim)) {
        let mean = sum_of(row, |v| v) / dim as f32;
        let var = sum_of(row, |v| (v - mean) * (v - mean)) / dim as f32;
        let inv = 1.0 / (var + eps).sqrt();
        for (((o, v), g), b) in out.iter_mut().zip(row).zip(gamma).zip(beta) {
            *o = (v - mean) * inv * g + b;
        }
    }
}

// Reductions in 16 partial results, so that they vectorise: a plain float sum over an
// iterator is one chain of dependent additions (about 4 cycles a value), which made
// LayerNorm's and softmax's statistics cost more than the rest of them.

/// `Σ f(v)` over `values`.
#[inline(always)]
fn sum_of(values: &[f32], f: impl Fn(f32) -> f32) -> f32 {
    let mut lanes = [0.0f32; 16];
    let chunks = values.chunks_exact(16);
    let tail: f32 = chunks.remainder().iter().map(|&v| f(v)).sum();
    for chunk in chunks {
        for (l, &v) in lanes.iter_mut().zip(chunk) {
            *l += f(v);
        }
    }
    lanes.iter().sum::<f32>() + tail
}

/// `Σ a ⊙ b`.
#[inline(always)]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut lanes = [0.0f32; 16];
    let chunks = a.chunks_exact(16).zip(b.chunks_exact(16));
    let tail = a.len() / 16 * 16;
    let tail: f32 = a[tail..].iter().zip(&b[tail..]).map(|(a, b)| a * b).sum();
    for (a, b) in chunks {
        for l in 0..16 {
            lanes[l] += a[l] * b[l];
        }
    }
    lanes.iter().sum::<f32>() + tail
}

/// The largest of `values` (`-inf` for none).
#[inline(always)]
fn max_of(values: &[f32]) -> f32 {
    let mut lanes = [f32::NEG_INFINITY; 16];
    let chunks = values.chunks_exact(16);
    let tail = chunks
        .remainder()
        .iter()
        .copied()
        .fold(f32::NEG_INFINITY, f32::max);
    for chunk in chunks {
        for (l, &v) in lanes.iter_mut().zip(chunk) {
            *l = l.max(v);
        }
    }
    lanes.iter().copied().fold(tail, f32::max)
}

/// `x = x * Φ(x)` (exact GELU, PyTorch's default), in place.
pub fn gelu(x: &mut [f32]) {
    dispatch!(gelu_values(x))
}

#[inline(always)]
fn gelu_values(x: &mut [f32]) {
    for v in x {
        *v = 0.5 * *v * (1.0 + erf(*v * std::f32::consts::FRAC_1_SQRT_2));
    }
}

/// GELU's tanh approximation (`gelu_pytorch_tanh`, SigLIP), in place: `tanh(u)` as
/// `1 - 2 / (e^{2u} + 1)`, with `e^{2u}` from [`exp`] on `-|2u|` so it vectorises.
pub fn gelu_tanh(x: &mut [f32]) {
    dispatch!(gelu_tanh_values(x))
}

#[inline(always)]
fn gelu_tanh_values(x: &mut [f32]) {
    const C: f32 = 0.797_884_6; // sqrt(2 / pi)
    for v in x {
        let u = C * (*v + 0.044_715 * *v * *v * *v);
        // tanh(|u|) = (1 - e^{-2|u|}) / (1 + e^{-2|u|}), sign restored.
        let e = exp(-2.0 * u.abs());
        let t = ((1.0 - e) / (1.0 + e)).copysign(u);
        *v = 0.5 * *v * (1.0 + t);
    }
}

/// `x * sigmoid(1.702 x)` (QuickGELU, OpenAI's CLIP), in place.
pub fn quick_gelu(x: &mut [f32]) {
    dispatch!(quick_gelu_values(x))
}

#[inline(always)]
fn quick_gelu_values(x: &mut [f32]) {
    for v in x {
        let z = 1.702 * *v;
        // sigmoid(z) from e^{-|z|}, which never overflows.
        let e = exp(-z.abs());
        let s = if z >= 0.0 {
            1.0 / (1.0 + e)
        } else {
            e / (1.0 + e)
        };
        *v *= s;
    }
}

/// erf as Eigen's float rational approximation (odd degree-13 over even degree-8 polynomial
/// on [-4, 4], where erf reaches ±1 in f32): only multiply, add and divide, so it vectorises.
#[inline(always)]
pub fn erf(x: f32) -> f32 {
    let x = x.clamp(-4.0, 4.0);
    let x2 = x * x;
    let mut p = x2.mul_add(-2.726_142_3e-10, 2.770_681_4e-8);
    p = x2.mul_add(p, -2.101_024e-6);
    p = x2.mul_add(p, -5.692_506_5e-5);
    p = x2.mul_add(p, -7.349_906_3e-4);
    p = x2.mul_add(p, -2.954_6e-3);
    p = x2.mul_add(p, -1.609_603_3e-2);
    let mut q = x2.mul_add(-1.456_607_2e-5, -2.133_740_6e-4);
    q = x2.mul_add(q, -1.682_827e-3);
    q = x2.mul_add(q, -7.373_329e-3);
    q = x2.mul_add(q, -1.426_474e-2);
    x * p / q
}

/// One head of self-attention over `tokens` rows of `qkv` (`[tokens, 3 * dim]`: q, k, v side by
/// side, each `dim = heads * head_dim` wide), for the first `queries` rows as queries:
/// `out[:queries, h*hd..(h+1)*hd] = softmax(q_h k_hᵀ / sqrt(hd)) v_h`, with `out` row-major,
/// `dim` wide. `scores` (`queries * tokens` values) is left holding the softmax weights, which
/// the backward pass reads. Fewer queries than tokens: only the class token's output is used.
pub fn attention_head(
    qkv: &[f32],
    [queries, tokens, dim, head, head_dim]: [usize; 5],
    scores: &mut [f32],
    out: &mut [f32],
) {
    let stride = 3 * dim;
    assert!(queries <= tokens && qkv.len() >= tokens * stride);
    assert!(queries == 0 || out.len() >= (queries - 1) * dim + (head + 1) * head_dim);
    let offset = head * head_dim;
    let scores = &mut scores[..queries * tokens];
    let q = MatrixRef {
        values: &qkv[offset..],
        row_stride: stride,
        column_stride: 1,
    };
    // kᵀ: element (channel c, token t) at t * stride + c.
    let k_t = MatrixRef {
        values: &qkv[dim + offset..],
        row_stride: 1,
        column_stride: stride,
    };
    product(
        Matrix::row_major(scores, tokens),
        q,
        k_t,
        [queries, tokens, head_dim],
        false,
    );
    let scale = (head_dim as f32).powf(-0.5);
    softmax_rows(scores, tokens, scale);
    let v = MatrixRef {
        values: &qkv[2 * dim + offset..],
        row_stride: stride,
        column_stride: 1,
    };
    product(
        Matrix {
            values: &mut out[offset..],
            row_stride: dim,
        },
        MatrixRef::row_major(scores, tokens),
        v,
        [queries, head_dim, tokens],
        false,
    );
}

/// The gradient of [`attention_head`] for one head: from `d_out` (the `queries` rows' output
/// gradient, `dim` wide, the head's columns read) and the forward's `qkv` and softmax weights
/// `probs` (`queries * tokens`), writes the head's q, k and v columns of `d_qkv`
/// (`[tokens, 3 * dim]`; q zero past the queries). `d_scores` is scratch (`queries * tokens`).
/// With `P` the weights and `s` the scale: `dV = Pᵀ dO`, `dP = dO Vᵀ`,
/// `dS = s P ⊙ (dP - rowsum(dP ⊙ P))`, `dQ = dS K`, `dK = dSᵀ Q`.
pub fn attention_head_backward(
    qkv: &[f32],
    probs: &[f32],
    d_out: &[f32],
    [queries, tokens, dim, head, head_dim]: [usize; 5],
    d_scores: &mut [f32],
    d_qkv: &mut [f32],
) {
    let stride = 3 * dim;
    assert!(queries <= tokens && qkv.len() >= tokens * stride);
    assert!(d_qkv.len() >= tokens * stride && probs.len() >= queries * tokens);
    assert!(queries == 0 || d_out.len() >= (queries - 1) * dim + (head + 1) * head_dim);
    let offset = head * head_dim;
    let probs = &probs[..queries * tokens];
    let d_scores = &mut d_scores[..queries * tokens];
    let part = |i: usize| MatrixRef {
        values: &qkv[i * dim + offset..],
        row_stride: stride,
        column_stride: 1,
    };
    let d_o = || MatrixRef {
        values: &d_out[offset..],
        row_stride: dim,
        column_stride: 1,
    };
    // dV = Pᵀ dO
    product(
        Matrix {
            values: &mut d_qkv[2 * dim + offset..],
            row_stride: stride,
        },
        MatrixRef::transposed(probs, tokens),
        d_o(),
        [tokens, head_dim, queries],
        false,
    );
    // dP = dO Vᵀ (Vᵀ: element (channel c, token t) at t * stride + c)
    let v_t = MatrixRef {
        values: &qkv[2 * dim + offset..],
        row_stride: 1,
        column_stride: stride,
    };
    product(
        Matrix::row_major(d_scores, tokens),
        d_o(),
        v_t,
        [queries, tokens, head_dim],
        false,
    );
    let scale = (head_dim as f32).powf(-0.5);
    softmax_backward_rows(d_scores, probs, tokens, scale);
    // dQ = dS K, dK = dSᵀ Q
    product(
        Matrix {
            values: &mut d_qkv[offset..],
            row_stride: stride,
        },
        MatrixRef::row_major(d_scores, tokens),
        part(1),
        [queries, head_dim, tokens],
        false,
    );
    for row in d_qkv.chunks_exact_mut(stride).take(tokens).skip(queries) {
        row[offset..offset + head_dim].fill(0.0);
    }
    product(
        Matrix {
            values: &mut d_qkv[dim + offset..],
            row_stride: stride,
        },
        MatrixRef::transposed(d_scores, tokens),
        part(0),
        [tokens, head_dim, queries],
        false,
    );
}

/// `d = scale * p ⊙ (d - rowsum(d ⊙ p))` for each row: the gradient of the logits of
/// `softmax(scale * logits)` from that of its output `p`, in place.
fn softmax_backward_rows(d: &mut [f32], probs: &[f32], tokens: usize, scale: f32) {
    dispatch!(softmax_backward_inner(d, probs, tokens, scale))
}

#[inline(always)]
fn softmax_backward_inner(d: &mut [f32], probs: &[f32], tokens: usize, scale: f32) {
    for (row, p) in d.chunks_exact_mut(tokens).zip(probs.chunks_exact(tokens)) {
        let dot = dot(row, p);
        for (d, p) in row.iter_mut().zip(p) {
            *d = scale * p * (*d - dot);
        }
    }
}

/// The gradient of [`layer_norm`] for the rows of `x` whose output gradient is `d_out`: adds
/// the input gradient into `d_x` and the gamma / beta gradients into `d_gamma` / `d_beta`.
/// With `x̂` the normalised row and `g = d_out ⊙ gamma`:
/// `d_x = (g - mean(g) - x̂ mean(g ⊙ x̂)) / sqrt(var + eps)`.
pub fn layer_norm_backward(
    x: &[f32],
    gamma: &[f32],
    eps: f32,
    d_out: &[f32],
    [d_gamma, d_beta]: [&mut [f32]; 2],
    d_x: &mut [f32],
) {
    assert!(x.len() == d_out.len() && x.len() == d_x.len());
    dispatch!(layer_norm_backward_rows(
        x, gamma, eps, d_out, d_gamma, d_beta, d_x
    ))
}

#[inline(always)]
fn layer_norm_backward_rows(
    x: &[f32],
    gamma: &[f32],
    eps: f32,
    d_out: &[f32],
    d_gamma: &mut [f32],
    d_beta: &mut [f32],
    d_x: &mut [f32],
) {
    let dim = gamma.len();
    let rows = x
        .chunks_exact(dim)
        .zip(d_out.chunks_exact(dim))
        .zip(d_x.chunks_exact_mut(dim));
    for ((row, dy), dx) in rows {
        // The forward's statistics, computed the same way.
        let mean = sum_of(row, |v| v) / dim as f32;
        let var = sum_of(row, |v| (v - mean) * (v - mean)) / dim as f32;
        let inv = 1.0 / (var + eps).sqrt();
        let mut scaled = [0.0f32; 16];
        let (mut sum_g, mut sum_gx) = (0.0f32, 0.0f32);
        // dy ⊙ gamma, 16 values at a time, into both sums' lanes.
        let mut lanes_g = [0.0f32; 16];
        let mut lanes_gx = [0.0f32; 16];
        let chunks = row
            .chunks_exact(16)
            .zip(dy.chunks_exact(16))
            .zip(gamma.chunks_exact(16));
        for ((v, dy), g) in chunks {
            for l in 0..16 {
                scaled[l] = dy[l] * g[l];
                lanes_g[l] += scaled[l];
                lanes_gx[l] += scaled[l] * (v[l] - mean) * inv;
            }
        }
        let tail = dim / 16 * 16;
        for ((v, dy), g) in row[tail..].iter().zip(&dy[tail..]).zip(&gamma[tail..]) {
            sum_g += dy * g;
            sum_gx += dy * g * (v - mean) * inv;
        }
        sum_g += lanes_g.iter().sum::<f32>();
        sum_gx += lanes_gx.iter().sum::<f32>();
        let (a, b) = (sum_g / dim as f32, sum_gx / dim as f32);
        for ((((v, dy), g), dx), (dg, db)) in row
            .iter()
            .zip(dy)
            .zip(gamma)
            .zip(dx.iter_mut())
            .zip(d_gamma.iter_mut().zip(d_beta.iter_mut()))
        {
            let xhat = (v - mean) * inv;
            *dx += inv * (dy * g - a - xhat * b);
            *dg += dy * xhat;
            *db += dy;
        }
    }
}

/// `d *= gelu'(x)` with `gelu'(x) = Φ(x) + x φ(x)` (exact GELU), in place: the gradient of
/// [`gelu`]'s input from that of its output.
pub fn gelu_backward(x: &[f32], d: &mut [f32]) {
    assert_eq!(x.len(), d.len());
    dispatch!(gelu_backward_values(x, d))
}

#[inline(always)]
fn gelu_backward_values(x: &[f32], d: &mut [f32]) {
    const FRAC_1_SQRT_2PI: f32 = 0.398_942_3;
    for (d, &x) in d.iter_mut().zip(x) {
        let cdf = 0.5 * (1.0 + erf(x * std::f32::consts::FRAC_1_SQRT_2));
        let pdf = FRAC_1_SQRT_2PI * exp(-0.5 * x * x);
        *d *= cdf + x * pdf;
    }
}

/// Each row of `tokens` values: `softmax(scale * row)`, in place.
fn softmax_rows(scores: &mut [f32], tokens: usize, scale: f32) {
    dispatch!(softmax_rows_inner(scores, tokens, scale))
}

#[inline(always)]
fn softmax_rows_inner(scores: &mut [f32], tokens: usize, scale: f32) {
    for row in scores.chunks_exact_mut(tokens) {
        let max = max_of(row);
        for v in row.iter_mut() {
            *v = exp((*v - max) * scale);
        }
        let inv = 1.0 / sum_of(row, |v| v);
        for v in row.iter_mut() {
            *v *= inv;
        }
    }
}

/// `e^x` for `x <= 0` (softmax's shifted logits) as Cephes' `expf`: `x = n ln2 + r`, a degree-6
/// polynomial for `e^r`, `2^n` put in the exponent bits. Within 2 ulp, and it vectorises
/// (`f32::exp` is a library call per value).
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    let x = x.clamp(-87.0, 0.0);
    let n = (x * std::f32::consts::LOG2_E + 0.5).floor();
    let r = n.mul_add(-0.693_359_4, x);
    let r = n.mul_add(2.121_944_4e-4, r);
    let mut p = r.mul_add(1.987_569_1e-4, 1.398_199_9e-3);
    p = r.mul_add(p, 8.333_452e-3);
    p = r.mul_add(p, 4.166_579_6e-2);
    p = r.mul_add(p, 1.666_666_5e-1);
    p = r.mul_add(p, 0.5);
    let e = (p * r).mul_add(r, r) + 1.0;
    // SAFETY: the clamp above keeps n within [-126, 0], which i32 represents. (`as` would
    // saturate, a scalar instruction sequence per value that stops the loop vectorising.)
    let n: i32 = unsafe { n.to_int_unchecked() };
    e * f32::from_bits(((n + 127) as u32) << 23)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// erf by its Maclaurin series in f64 (cancellation costs under 1e-10 for |x| <= 3.5).
    fn erf_reference(x: f64) -> f64 {
        let (sign, x) = if x < 0.0 { (-1.0, -x) } else { (1.0, x) };
        if x > 5.0 {
            return sign;
        }
        let mut term = x;
        let mut sum = x;
        let mut n = 0.0;
        while term.abs() > 1e-17 * sum.abs() {
            n += 1.0;
            term *= -x * x / n;
            sum += term / (2.0 * n + 1.0);
        }
        sign * sum * 2.0 / std::f64::consts::PI.sqrt()
    }

    #[test]
    fn tanh_gelu_and_quick_gelu_match_their_formulas() {
        let xs: Vec<f32> = (-400..=400).map(|i| i as f32 * 0.025).collect();
        let (mut tanh, mut quick) = (xs.clone(), xs.clone());
        gelu_tanh(&mut tanh);
        quick_gelu(&mut quick);
        for ((&x, t), q) in xs.iter().zip(tanh).zip(quick) {
            let x64 = f64::from(x);
            let u = (2.0 / std::f64::consts::PI).sqrt() * (x64 + 0.044715 * x64.powi(3));
            let t_ref = 0.5 * x64 * (1.0 + u.tanh());
            let q_ref = x64 / (1.0 + (-1.702 * x64).exp());
            assert!(
                (f64::from(t) - t_ref).abs() < 2e-6,
                "gelu_tanh({x}) = {t}, not {t_ref}"
            );
            assert!(
                (f64::from(q) - q_ref).abs() < 2e-6,
                "quick_gelu({x}) = {q}, not {q_ref}"
            );
        }
    }

    #[test]
    fn erf_is_within_float_rounding_of_the_series() {
        let mut worst = 0.0f64;
        for i in -3500..=3500 {
            let x = i as f64 / 1000.0;
            worst = worst.max((f64::from(erf(x as f32)) - erf_reference(x)).abs());
        }
        // A few f32 ulps (6e-8 near 1); a wrong coefficient is off by 1e-4 or more.
        assert!(worst < 1e-6, "erf off by {worst}");
        for (x, limit) in [(4.5f32, 1.0f32), (30.0, 1.0), (-30.0, -1.0)] {
            assert!((erf(x) - limit).abs() < 1e-6, "erf({x}) = {}", erf(x));
        }
    }

    #[test]
    fn exp_is_within_a_few_ulps_for_softmax_inputs() {
        let mut worst = 0.0f64;
        for i in 0..=87_000 {
            let x = -(i as f32) / 1000.0;
            let expected = f64::from(x).exp();
            worst = worst.max((f64::from(exp(x)) - expected).abs() / expected);
        }
        assert!(worst < 1e-6, "exp off by a factor {worst}");
        assert_eq!(exp(0.0), 1.0);
        assert!(exp(-1000.0) < 1e-37);
    }

    #[test]
    fn attention_head_matches_the_definition() {
        let (tokens, heads, head_dim) = (5, 2, 3);
        let dim = heads * head_dim;
        let qkv: Vec<f32> = (0..tokens * 3 * dim)
            .map(|i| ((i * 37 % 23) as f32 - 11.0) / 7.0)
            .collect();
        let mut out = vec![0.0; tokens * dim];
        let mut scores = vec![0.0; tokens * tokens];
        for h in 0..heads {
            let shape = [tokens, tokens, dim, h, head_dim];
            attention_head(&qkv, shape, &mut scores, &mut out);
        }
        let at = |t: usize, part: usize, h: usize, c: usize| {
            f64::from(qkv[t * 3 * dim + part * dim + h * head_dim + c])
        };
        for h in 0..heads {
            for i in 0..tokens {
                let logits: Vec<f64> = (0..tokens)
                    .map(|j| {
                        (0..head_dim)
                            .map(|c| at(i, 0, h, c) * at(j, 1, h, c))
                            .sum::<f64>()
                            / (head_dim as f64).sqrt()
                    })
                    .collect();
                let max = logits.iter().copied().fold(f64::MIN, f64::max);
                let weights: Vec<f64> = logits.iter().map(|l| (l - max).exp()).collect();
                let total: f64 = weights.iter().sum();
                for c in 0..head_dim {
                    let expected: f64 = (0..tokens)
                        .map(|j| weights[j] / total * at(j, 2, h, c))
                        .sum();
                    let got = f64::from(out[i * dim + h * head_dim + c]);
                    assert!(
                        (got - expected).abs() < 1e-5,
                        "head {h} token {i}: {got} vs {expected}"
                    );
                }
            }
        }
    }
}

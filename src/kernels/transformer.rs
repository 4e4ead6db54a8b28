//! Transformer-block kernels on one image's tokens (`[tokens, dim]`, row-major): LayerNorm in
//! one pass per row, exact GELU as a vectorisable rational approximation of erf, and one
//! attention head as two matrix products around a fused scale + softmax, reading q, k and v in
//! place from the QKV product. The network built on them is [`crate::backbone::fused_vit`].

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
        let mean = row.iter().sum::<f32>() / dim as f32;
        let var = row.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / dim as f32;
        let inv = 1.0 / (var + eps).sqrt();
        for (((o, v), g), b) in out.iter_mut().zip(row).zip(gamma).zip(beta) {
            *o = (v - mean) * inv * g + b;
        }
    }
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
/// side, each `dim = heads * head_dim` wide): `out[:, h*hd..(h+1)*hd] = softmax(q_h k_hᵀ /
/// sqrt(hd)) v_h`, with `out` `[tokens, dim]` row-major. `scores` is scratch (`tokens²`).
pub fn attention_head(
    qkv: &[f32],
    tokens: usize,
    dim: usize,
    head: usize,
    head_dim: usize,
    scores: &mut Vec<f32>,
    out: &mut [f32],
) {
    let stride = 3 * dim;
    assert!(qkv.len() >= tokens * stride && out.len() >= tokens * dim);
    let offset = head * head_dim;
    scores.resize(tokens * tokens, 0.0);
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
        [tokens, tokens, head_dim],
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
        [tokens, head_dim, tokens],
        false,
    );
}

/// Each row of `tokens` values: `softmax(scale * row)`, in place.
fn softmax_rows(scores: &mut [f32], tokens: usize, scale: f32) {
    dispatch!(softmax_rows_inner(scores, tokens, scale))
}

#[inline(always)]
fn softmax_rows_inner(scores: &mut [f32], tokens: usize, scale: f32) {
    for row in scores.chunks_exact_mut(tokens) {
        let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        // Separate loops: the exponentials vectorise, the (ordered) sum does not need to.
        for v in row.iter_mut() {
            *v = exp((*v - max) * scale);
        }
        let inv = 1.0 / row.iter().sum::<f32>();
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
    e * f32::from_bits(((n as i32 + 127) as u32) << 23)
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
        let mut scores = Vec::new();
        for h in 0..heads {
            attention_head(&qkv, tokens, dim, h, head_dim, &mut scores, &mut out);
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

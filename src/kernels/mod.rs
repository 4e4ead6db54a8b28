//! CPU inference kernels for the MobileNetV2 / EfficientNet-Lite family, on one image in NHWC
//! layout (`[height * width, channels]`, channels contiguous): a 1x1 convolution as a matrix
//! product with bias, ReLU6 and residual fused into its output tiles, a depthwise convolution
//! vectorised over channels, and the stem's im2col. The network built on them is
//! [`crate::backbone::fused`]; these functions know nothing about it.
//!
//! Why: burn-flex runs these layers NCHW with a separate pass for every bias, BatchNorm, clamp
//! and add, and its depthwise convolution loops over the channels; the memory traffic, not the
//! arithmetic, was the cost (`graft bench forward`, README).

mod simd;

use simd::dispatch;

/// Rows of the output computed per matrix product call: the tile the bias, activation and
/// residual are applied to while it is still in cache.
const ROW_TILE: usize = 192;

/// What follows a convolution.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    None,
    Relu6,
}

/// `out[m, n] = act(input[m, k] @ weight[k, n] + bias[n] (+ residual[m, n]))`, row-major.
#[allow(clippy::too_many_arguments)]
pub fn pointwise(
    input: &[f32],
    m: usize,
    k: usize,
    weight: &[f32],
    bias: &[f32],
    activation: Activation,
    residual: Option<&[f32]>,
    out: &mut [f32],
) {
    let n = bias.len();
    assert!(input.len() >= m * k && weight.len() == k * n && out.len() >= m * n);
    for start in (0..m).step_by(ROW_TILE) {
        let rows = ROW_TILE.min(m - start);
        let tile = &mut out[start * n..(start + rows) * n];
        match residual {
            Some(residual) => dispatch!(add_rows(tile, &residual[start * n..][..rows * n], bias)),
            None => dispatch!(fill_rows(tile, bias)),
        }
        matmul_accumulate(&input[start * k..][..rows * k], rows, k, weight, n, tile);
        if activation == Activation::Relu6 {
            dispatch!(relu6(tile));
        }
    }
}

/// `pointwise` with ReLU6 whose output is only summed over its rows: the head conv followed by
/// global average pooling, without storing the head's whole output. Adds into `sums` (`[n]`).
#[allow(clippy::too_many_arguments)]
pub fn pointwise_relu6_sum(
    input: &[f32],
    m: usize,
    k: usize,
    weight: &[f32],
    bias: &[f32],
    scratch: &mut Vec<f32>,
    sums: &mut [f32],
) {
    let n = bias.len();
    scratch.resize(ROW_TILE * n, 0.0);
    for start in (0..m).step_by(ROW_TILE) {
        let rows = ROW_TILE.min(m - start);
        let tile = &mut scratch[..rows * n];
        dispatch!(fill_rows(tile, bias));
        matmul_accumulate(&input[start * k..][..rows * k], rows, k, weight, n, tile);
        dispatch!(relu6_sum_rows(tile, sums));
    }
}

/// `dst[m, n] += lhs[m, k] @ rhs[k, n]`, all row-major, on the calling thread.
fn matmul_accumulate(lhs: &[f32], m: usize, k: usize, rhs: &[f32], n: usize, dst: &mut [f32]) {
    assert!(lhs.len() == m * k && rhs.len() == k * n && dst.len() == m * n);
    // SAFETY: the three slices hold exactly the m x k, k x n and m x n row-major matrices
    // described by the sizes and strides, checked above; dst does not alias the inputs.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            n as isize,
            true,
            lhs.as_ptr(),
            1,
            k as isize,
            rhs.as_ptr(),
            1,
            n as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
}

/// Geometry of a depthwise or stem convolution on one image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConvGeometry {
    pub height: usize,
    pub width: usize,
    pub kernel: usize,
    pub stride: usize,
    /// Zero padding before the first row / column (the rest follows from the output size).
    pub pad_top: usize,
    pub pad_left: usize,
    pub out_height: usize,
    pub out_width: usize,
}

/// Depthwise convolution, NHWC: `input` `[height * width, c]`, `weight` `[kernel * kernel, c]`
/// (tap-major), `out` `[out_height * out_width, c]`, bias and optional ReLU6 fused.
pub fn depthwise(
    input: &[f32],
    geometry: ConvGeometry,
    weight: &[f32],
    bias: &[f32],
    activation: Activation,
    out: &mut [f32],
) {
    let c = bias.len();
    let g = geometry;
    assert!(input.len() >= g.height * g.width * c);
    assert!(weight.len() == g.kernel * g.kernel * c);
    assert!(out.len() >= g.out_height * g.out_width * c);
    dispatch!(depthwise_impl(
        input,
        g,
        weight,
        bias,
        activation == Activation::Relu6,
        out
    ));
}

/// Rows `[row_start, row_start + rows)` of the im2col matrix of a planar (`[channels, height,
/// width]`) image: one row per output pixel, columns ordered (channel, ky, kx) like a
/// `[out, in, k, k]` weight; zeros where the window leaves the image.
pub fn im2col_planar(
    image: &[f32],
    channels: usize,
    geometry: ConvGeometry,
    row_start: usize,
    rows: usize,
    out: &mut [f32],
) {
    let g = geometry;
    let taps = g.kernel * g.kernel;
    let cols = channels * taps;
    assert!(image.len() >= channels * g.height * g.width && out.len() >= rows * cols);
    for (r, row) in out[..rows * cols].chunks_exact_mut(cols).enumerate() {
        let pixel = row_start + r;
        let (oy, ox) = (pixel / g.out_width, pixel % g.out_width);
        for ci in 0..channels {
            let plane = &image[ci * g.height * g.width..][..g.height * g.width];
            for ky in 0..g.kernel {
                let iy = (oy * g.stride + ky).checked_sub(g.pad_top);
                for kx in 0..g.kernel {
                    let ix = (ox * g.stride + kx).checked_sub(g.pad_left);
                    row[ci * taps + ky * g.kernel + kx] = match (iy, ix) {
                        (Some(iy), Some(ix)) if iy < g.height && ix < g.width => {
                            plane[iy * g.width + ix]
                        }
                        _ => 0.0,
                    };
                }
            }
        }
    }
}

/// `out[row] = bias` for every row of `out`.
#[inline(always)]
fn fill_rows(out: &mut [f32], bias: &[f32]) {
    for row in out.chunks_exact_mut(bias.len()) {
        row.copy_from_slice(bias);
    }
}

/// `out[row] = residual[row] + bias`.
#[inline(always)]
fn add_rows(out: &mut [f32], residual: &[f32], bias: &[f32]) {
    let n = bias.len();
    for (row, res) in out.chunks_exact_mut(n).zip(residual.chunks_exact(n)) {
        for ((o, r), b) in row.iter_mut().zip(res).zip(bias) {
            *o = r + b;
        }
    }
}

#[inline(always)]
fn relu6(x: &mut [f32]) {
    for v in x {
        *v = v.clamp(0.0, 6.0);
    }
}

/// `sums[j] += sum over rows of relu6(tile[row, j])`.
#[inline(always)]
fn relu6_sum_rows(tile: &mut [f32], sums: &mut [f32]) {
    for row in tile.chunks_exact(sums.len()) {
        for (s, v) in sums.iter_mut().zip(row) {
            *s += v.clamp(0.0, 6.0);
        }
    }
}

#[inline(always)]
fn depthwise_impl(
    input: &[f32],
    g: ConvGeometry,
    weight: &[f32],
    bias: &[f32],
    relu: bool,
    out: &mut [f32],
) {
    let c = bias.len();
    for oy in 0..g.out_height {
        // The kernel rows that fall inside the image for this output row.
        let first_ky = g.pad_top.saturating_sub(oy * g.stride);
        let last_ky = (g.height + g.pad_top - oy * g.stride).min(g.kernel);
        for ox in 0..g.out_width {
            let first_kx = g.pad_left.saturating_sub(ox * g.stride);
            let last_kx = (g.width + g.pad_left - ox * g.stride).min(g.kernel);
            let acc = &mut out[(oy * g.out_width + ox) * c..][..c];
            acc.copy_from_slice(bias);
            for ky in first_ky..last_ky {
                let iy = oy * g.stride + ky - g.pad_top;
                for kx in first_kx..last_kx {
                    let ix = ox * g.stride + kx - g.pad_left;
                    let x = &input[(iy * g.width + ix) * c..][..c];
                    let w = &weight[(ky * g.kernel + kx) * c..][..c];
                    for ((a, x), w) in acc.iter_mut().zip(x).zip(w) {
                        *a = x.mul_add(*w, *a);
                    }
                }
            }
            if relu {
                relu6(acc);
            }
        }
    }
}

#[cfg(test)]
mod tests;

//! The backward kernels of the training form of the fused network
//! ([`crate::backbone::fused::train`]): the two products of a 1x1 conv's gradient, a depthwise
//! conv's weight and input gradients in one pass over its output gradient, ReLU6's mask and
//! column sums (a bias's gradient). NHWC, one image per call, like the forward kernels.

use super::simd::dispatch;
use super::{ConvGeometry, Matrix, MatrixRef, product};

/// `d_weight[k, n] += input[m, k]^T @ d_out[m, n]`: the gradient of a 1x1 conv's `[in, out]`
/// weight (or of the stem's, with its im2col rows as `input`), summed over the `m` pixels.
pub fn weight_gradient(input: &[f32], m: usize, d_out: &[f32], d_weight: &mut [f32]) {
    let k = input.len() / m.max(1);
    let n = d_out.len() / m.max(1);
    assert!(input.len() == m * k && d_out.len() == m * n && d_weight.len() == k * n);
    product(
        Matrix::row_major(d_weight, n),
        MatrixRef::transposed(input, k),
        MatrixRef::row_major(d_out, n),
        [k, n, m],
        true,
    );
}

/// `d_input[m, k] = d_out[m, n] @ weight[k, n]^T`: the gradient of a 1x1 conv's input.
pub fn input_gradient(d_out: &[f32], m: usize, weight: &[f32], d_input: &mut [f32]) {
    let n = d_out.len() / m.max(1);
    let k = weight.len() / n.max(1);
    assert!(d_out.len() == m * n && weight.len() == k * n && d_input.len() == m * k);
    product(
        Matrix::row_major(d_input, k),
        MatrixRef::row_major(d_out, n),
        MatrixRef::transposed(weight, n),
        [m, k, n],
        false,
    );
}

/// `d_out *= relu6'`, from ReLU6's output `out`: the gradient passes where `0 < out < 6`.
pub fn relu6_backward(d_out: &mut [f32], out: &[f32]) {
    assert_eq!(d_out.len(), out.len());
    dispatch!(relu6_mask(d_out, out))
}

/// `d_out *= relu'`, from ReLU's output `out`: the gradient passes where `out > 0`.
pub fn relu_backward(d_out: &mut [f32], out: &[f32]) {
    assert_eq!(d_out.len(), out.len());
    dispatch!(relu_mask(d_out, out))
}

/// The adjoint of [`super::im2col_nhwc`]: adds rows `[row_start, row_start + rows)` of an
/// im2col matrix's gradient (`columns`, one row per output pixel, columns ordered (ky, kx,
/// channel)) into the gradient of the NHWC image they were gathered from; taps that fell
/// outside the image are dropped. A KxK conv's input gradient is `columns = d_out @ weightᵀ`
/// then this.
pub fn col2im_nhwc_add(
    columns: &[f32],
    channels: usize,
    geometry: ConvGeometry,
    row_start: usize,
    rows: usize,
    d_image: &mut [f32],
) {
    let g = geometry;
    let cols = g.kernel * g.kernel * channels;
    assert!(d_image.len() >= channels * g.height * g.width && columns.len() >= rows * cols);
    dispatch!(col2im_impl(columns, channels, g, row_start, rows, d_image))
}

/// `sums[j] += sum over rows of rows[row, j]`: a bias's gradient from its output's, or the
/// sum a global average pool divides.
pub fn add_column_sums(rows: &[f32], sums: &mut [f32]) {
    assert!(sums.is_empty() || rows.len().is_multiple_of(sums.len()));
    dispatch!(column_sums(rows, sums))
}

/// Gradients of a depthwise conv (NHWC, whole image, weight `[kernel * kernel, c]` as in
/// [`super::depthwise`]) from the gradient of its pre-activation output `d_out`
/// (`[out_height * out_width, c]`): adds into `d_weight`, and into `d_input`
/// (`[height * width, c]`) when given.
pub fn depthwise_backward(
    input: &[f32],
    geometry: ConvGeometry,
    weight: &[f32],
    d_out: &[f32],
    d_weight: &mut [f32],
    d_input: Option<&mut [f32]>,
) {
    let g = geometry;
    let c = weight.len() / (g.kernel * g.kernel);
    assert!(input.len() == g.height * g.width * c && d_weight.len() == weight.len());
    assert!(d_out.len() == g.out_height * g.out_width * c);
    assert!(d_input.as_ref().is_none_or(|d| d.len() == input.len()));
    dispatch!(depthwise_backward_impl(
        input, g, weight, d_out, d_weight, d_input
    ))
}

// The loops below run inside `dispatch!`: plain enough for LLVM to vectorise over channels.

#[inline(always)]
fn relu6_mask(d_out: &mut [f32], out: &[f32]) {
    for (d, y) in d_out.iter_mut().zip(out) {
        if *y <= 0.0 || *y >= 6.0 {
            *d = 0.0;
        }
    }
}

#[inline(always)]
fn relu_mask(d_out: &mut [f32], out: &[f32]) {
    for (d, y) in d_out.iter_mut().zip(out) {
        if *y <= 0.0 {
            *d = 0.0;
        }
    }
}

#[inline(always)]
fn col2im_impl(
    columns: &[f32],
    channels: usize,
    g: ConvGeometry,
    row_start: usize,
    rows: usize,
    d_image: &mut [f32],
) {
    let cols = g.kernel * g.kernel * channels;
    for (r, row) in columns[..rows * cols].chunks_exact(cols).enumerate() {
        let pixel = row_start + r;
        let (oy, ox) = (pixel / g.out_width, pixel % g.out_width);
        for ky in 0..g.kernel {
            let Some(iy) = (oy * g.stride + ky)
                .checked_sub(g.pad_top)
                .filter(|&y| y < g.height)
            else {
                continue;
            };
            for kx in 0..g.kernel {
                let Some(ix) = (ox * g.stride + kx)
                    .checked_sub(g.pad_left)
                    .filter(|&x| x < g.width)
                else {
                    continue;
                };
                let src = &row[(ky * g.kernel + kx) * channels..][..channels];
                let dst = &mut d_image[(iy * g.width + ix) * channels..][..channels];
                for (d, s) in dst.iter_mut().zip(src) {
                    *d += s;
                }
            }
        }
    }
}

#[inline(always)]
fn column_sums(d_out: &[f32], sums: &mut [f32]) {
    for row in d_out.chunks_exact(sums.len()) {
        for (s, v) in sums.iter_mut().zip(row) {
            *s += v;
        }
    }
}

#[inline(always)]
fn depthwise_backward_impl(
    input: &[f32],
    g: ConvGeometry,
    weight: &[f32],
    d_out: &[f32],
    d_weight: &mut [f32],
    mut d_input: Option<&mut [f32]>,
) {
    let c = weight.len() / (g.kernel * g.kernel);
    // The input position a tap reads along one axis, if inside the image.
    let at = |out: usize, tap: usize, pad: usize, size: usize| {
        (out * g.stride + tap)
            .checked_sub(pad)
            .filter(|&i| i < size)
    };
    for oy in 0..g.out_height {
        for ky in 0..g.kernel {
            let Some(iy) = at(oy, ky, g.pad_top, g.height) else {
                continue;
            };
            for ox in 0..g.out_width {
                let dz = &d_out[(oy * g.out_width + ox) * c..][..c];
                for kx in 0..g.kernel {
                    let Some(ix) = at(ox, kx, g.pad_left, g.width) else {
                        continue;
                    };
                    let tap = (ky * g.kernel + kx) * c;
                    let pixel = (iy * g.width + ix) * c;
                    let x = &input[pixel..][..c];
                    for (dw, (dz, x)) in d_weight[tap..][..c].iter_mut().zip(dz.iter().zip(x)) {
                        *dw += dz * x;
                    }
                    if let Some(d_input) = d_input.as_deref_mut() {
                        let w = &weight[tap..][..c];
                        for (di, (dz, w)) in d_input[pixel..][..c].iter_mut().zip(dz.iter().zip(w))
                        {
                            *di += dz * w;
                        }
                    }
                }
            }
        }
    }
}

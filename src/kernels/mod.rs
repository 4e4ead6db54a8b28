//! CPU kernels on NHWC maps (`[height * width, channels]`, channels contiguous): a 1x1
//! convolution as a matrix product with bias, activation and residual fused into its output
//! tiles, a depthwise convolution vectorised over channels, im2col for the KxK convs, Winograd's
//! F(4x4, 3x3) for stride-1 3x3 convs ([`Winograd3x3`]), the transformer's row kernels
//! ([`transformer`]), bfloat16 products on AMX tiles ([`amx`]) and the MBConv backward kernels. The networks built on them are in
//! `crate::backbone::*/fused*`; these functions know nothing about them.
//!
//! Why: burn-flex runs these layers NCHW with a separate pass for every bias, BatchNorm, clamp
//! and add, and its depthwise convolution loops over the channels; the memory traffic, not the
//! arithmetic, was the cost (`graft bench forward`, docs/internals/performance-notes.md).

pub mod amx;
mod backward;
mod lanes;
mod simd;
pub mod transformer;
mod winograd;

pub use backward::{
    add_column_sums, col2im_nhwc_add, depthwise_backward, input_gradient, relu_backward,
    relu6_backward, weight_gradient,
};

pub use winograd::Winograd3x3;

use simd::dispatch;

/// Rows of the output computed per matrix product call: the tile the bias, activation and
/// residual are applied to while it is still in cache.
const ROW_TILE: usize = 256;

/// What follows a convolution.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    None,
    Relu6,
    /// `max(x, 0)` (ResNet).
    Relu,
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
    let relu = activation == Activation::Relu6;
    for start in (0..m).step_by(ROW_TILE) {
        let rows = ROW_TILE.min(m - start);
        let tile = &mut out[start * n..(start + rows) * n];
        matmul(&input[start * k..][..rows * k], rows, k, weight, n, tile);
        match residual {
            Some(residual) => {
                let residual = &residual[start * n..][..rows * n];
                dispatch!(add_bias_residual_rows(tile, bias, residual, relu))
            }
            None => dispatch!(add_bias_rows(tile, bias, relu)),
        }
        // A second pass while the tile is still in cache (keeps the ReLU6 loops as they were).
        if activation == Activation::Relu {
            dispatch!(relu_values(tile));
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
        matmul(&input[start * k..][..rows * k], rows, k, weight, n, tile);
        dispatch!(bias_relu6_sum_rows(tile, bias, sums));
    }
}

/// `dst[m, n] = lhs[m, k] @ rhs[k, n]`, all row-major, on the calling thread.
fn matmul(lhs: &[f32], m: usize, k: usize, rhs: &[f32], n: usize, dst: &mut [f32]) {
    assert!(lhs.len() == m * k && rhs.len() == k * n && dst.len() == m * n);
    product(
        Matrix::row_major(dst, n),
        MatrixRef::row_major(lhs, k),
        MatrixRef::row_major(rhs, n),
        [m, n, k],
        false,
    );
}

/// `dst[m, n] = lhs[m, k] @ rhs[n, k]^T` (both row-major, so every dot product of a row of
/// `lhs` with a row of `rhs`), on the calling thread: the similarity tiles of the doctor's
/// nearest-neighbour search.
pub fn matmul_transposed(lhs: &[f32], m: usize, k: usize, rhs: &[f32], n: usize, dst: &mut [f32]) {
    assert!(lhs.len() == m * k && rhs.len() == n * k && dst.len() == m * n);
    product(
        Matrix::row_major(dst, n),
        MatrixRef::row_major(lhs, k),
        MatrixRef::transposed(rhs, k),
        [m, n, k],
        false,
    );
}

/// `dst[m, n] += lhs[k, m]^T @ rhs[k, n]` (both row-major), on the calling thread: the gradient
/// `(P - Y)^T X` of a softmax regression over a chunk of `k` rows.
pub fn accumulate_transposed_product(
    lhs: &[f32],
    k: usize,
    m: usize,
    rhs: &[f32],
    n: usize,
    dst: &mut [f32],
) {
    assert!(lhs.len() == k * m && rhs.len() == k * n && dst.len() == m * n);
    product(
        Matrix::row_major(dst, n),
        MatrixRef::transposed(lhs, m),
        MatrixRef::row_major(rhs, n),
        [m, n, k],
        true,
    );
}

/// A matrix operand of [`product`]: values and the strides between rows and between columns.
struct MatrixRef<'a> {
    values: &'a [f32],
    row_stride: usize,
    column_stride: usize,
}

impl<'a> MatrixRef<'a> {
    fn row_major(values: &'a [f32], columns: usize) -> Self {
        Self {
            values,
            row_stride: columns,
            column_stride: 1,
        }
    }

    /// The transpose of the row-major matrix `values` with `columns` columns.
    fn transposed(values: &'a [f32], columns: usize) -> Self {
        Self {
            values,
            row_stride: 1,
            column_stride: columns,
        }
    }

    /// Whether every element of a `rows x columns` matrix lies inside `values`.
    fn holds(&self, rows: usize, columns: usize) -> bool {
        rows == 0
            || columns == 0
            || (rows - 1) * self.row_stride + (columns - 1) * self.column_stride < self.values.len()
    }
}

/// The row-major destination of [`product`].
struct Matrix<'a> {
    values: &'a mut [f32],
    row_stride: usize,
}

impl<'a> Matrix<'a> {
    fn row_major(values: &'a mut [f32], columns: usize) -> Self {
        Self {
            values,
            row_stride: columns,
        }
    }
}

/// `dst[m, n] (+)= lhs[m, k] @ rhs[k, n]` (added to `dst` when `accumulate`), on the calling
/// thread, any strides: the one call into the `gemm` crate.
fn product(dst: Matrix, lhs: MatrixRef, rhs: MatrixRef, [m, n, k]: [usize; 3], accumulate: bool) {
    assert!(lhs.holds(m, k) && rhs.holds(k, n));
    assert!(m == 0 || n == 0 || (m - 1) * dst.row_stride + n <= dst.values.len());
    // SAFETY: every element the sizes and strides address lies inside its slice (checked
    // above); dst is a unique borrow, so it does not alias the inputs.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.values.as_mut_ptr(),
            1,
            dst.row_stride as isize,
            accumulate,
            lhs.values.as_ptr(),
            lhs.column_stride as isize,
            lhs.row_stride as isize,
            rhs.values.as_ptr(),
            rhs.column_stride as isize,
            rhs.row_stride as isize,
            if accumulate { 1.0 } else { 0.0 },
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

impl ConvGeometry {
    /// Non-overlapping `kernel` x `kernel` windows, unpadded (a ViT's patch embedding, a
    /// ConvNeXt's stem and downsampling convs).
    pub fn patches([height, width]: [usize; 2], kernel: usize) -> Self {
        Self {
            height,
            width,
            kernel,
            stride: kernel,
            pad_top: 0,
            pad_left: 0,
            out_height: height.saturating_sub(kernel) / kernel + 1,
            out_width: width.saturating_sub(kernel) / kernel + 1,
        }
    }

    /// Stride 1 with `kernel / 2` zeros around (odd `kernel`): the output has the input's size.
    pub fn same([height, width]: [usize; 2], kernel: usize) -> Self {
        Self {
            height,
            width,
            kernel,
            stride: 1,
            pad_top: kernel / 2,
            pad_left: kernel / 2,
            out_height: height,
            out_width: width,
        }
    }

    /// The output columns whose whole window lies inside the image (no padding read).
    pub fn interior_columns(&self) -> std::ops::Range<usize> {
        let start = self.pad_left.div_ceil(self.stride).min(self.out_width);
        let end = if self.width + self.pad_left >= self.kernel {
            ((self.width + self.pad_left - self.kernel) / self.stride + 1)
                .clamp(start, self.out_width)
        } else {
            start
        };
        start..end
    }
}

/// Which rows a depthwise call reads and writes: `input` holds the image rows from
/// `input_first`, `out` the output rows `output` (so a block can run in horizontal strips
/// while its expanded input stays in cache).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rows {
    pub input_first: usize,
    pub output: std::ops::Range<usize>,
}

impl Rows {
    /// The whole image in, the whole output out.
    pub fn all(geometry: &ConvGeometry) -> Self {
        Self {
            input_first: 0,
            output: 0..geometry.out_height,
        }
    }

    /// The input rows `[first, end)` that output rows `output` read (clipped to the image).
    pub fn needed(geometry: &ConvGeometry, output: &std::ops::Range<usize>) -> (usize, usize) {
        let g = geometry;
        let first = (output.start * g.stride).saturating_sub(g.pad_top);
        let end = ((output.end - 1) * g.stride + g.kernel)
            .saturating_sub(g.pad_top)
            .min(g.height);
        (first, end)
    }
}

/// Depthwise convolution, NHWC: `input` `[rows, width, c]`, `weight` `[kernel * kernel, c]`
/// (tap-major), `out` `[rows, out_width, c]`, bias and optional ReLU6 fused; `rows` says which.
pub fn depthwise(
    input: &[f32],
    geometry: ConvGeometry,
    weight: &[f32],
    bias: &[f32],
    activation: Activation,
    rows: &Rows,
    out: &mut [f32],
) {
    let c = bias.len();
    let g = geometry;
    let (first, end) = Rows::needed(&g, &rows.output);
    assert!(rows.input_first <= first && input.len() >= (end - rows.input_first) * g.width * c);
    assert!(weight.len() == g.kernel * g.kernel * c);
    assert!(rows.output.end <= g.out_height);
    assert!(out.len() >= rows.output.len() * g.out_width * c);
    let relu = activation == Activation::Relu6;
    dispatch!(depthwise_impl::<Lanes>(
        input: &[f32],
        g: ConvGeometry,
        weight: &[f32],
        bias: &[f32],
        relu: bool,
        rows: &Rows,
        out: &mut [f32],
    ) -> ())
}

/// Dense convolution of a planar image (`[channels, height, width]`, the network input) into
/// NHWC `out` (`[out_height * out_width, n]`), `weight` `[channels * k * k, n]` with rows ordered
/// (channel, ky, kx), bias and activation fused: the stem, without an im2col matrix. Returns
/// `false` (and writes nothing) when `n` is not 16, 32 or 64 channels; use [`im2col_planar`] +
/// [`pointwise`] then.
pub fn conv_planar(
    image: &[f32],
    channels: usize,
    geometry: ConvGeometry,
    weight: &[f32],
    bias: &[f32],
    activation: Activation,
    out: &mut [f32],
) -> bool {
    let g = geometry;
    assert!(image.len() >= channels * g.height * g.width);
    assert!(weight.len() == channels * g.kernel * g.kernel * bias.len());
    assert!(out.len() >= g.out_height * g.out_width * bias.len());
    let relu = activation == Activation::Relu6;
    dispatch!(conv_planar_lanes::<Lanes>(
        image: &[f32],
        channels: usize,
        g: ConvGeometry,
        weight: &[f32],
        bias: &[f32],
        relu: bool,
        out: &mut [f32],
    ) -> bool)
}

/// `conv_planar` with the output channels as a whole number of `LANES` blocks, or `false`.
#[inline(always)]
fn conv_planar_lanes<L: lanes::Lanes>(
    image: &[f32],
    channels: usize,
    g: ConvGeometry,
    weight: &[f32],
    bias: &[f32],
    relu: bool,
    out: &mut [f32],
) -> bool {
    let args = (image, channels, g, weight, bias, relu);
    match bias.len() {
        16 => conv_planar_impl::<L, 1>(args, out),
        32 => conv_planar_impl::<L, 2>(args, out),
        64 => conv_planar_impl::<L, 4>(args, out),
        _ => return false,
    }
    true
}

/// `conv_planar` for `B` blocks of `LANES` output channels: one pixel at a time, every tap's
/// input value broadcast against the `B` weight vectors of that tap.
#[inline(always)]
fn conv_planar_impl<L: lanes::Lanes, const B: usize>(
    (image, channels, g, weight, bias, relu): (&[f32], usize, ConvGeometry, &[f32], &[f32], bool),
    out: &mut [f32],
) {
    let n = B * LANES;
    let bias: [L; B] = std::array::from_fn(|b| L::load(&bias[b * LANES..][..LANES]));
    let interior = g.interior_columns();
    for oy in 0..g.out_height {
        let row_inside =
            oy * g.stride >= g.pad_top && oy * g.stride + g.kernel <= g.height + g.pad_top;
        let mut ox = 0;
        if row_inside {
            for ox in 0..interior.start {
                conv_planar_pixel::<L, B>(image, channels, &g, weight, bias, relu, oy, ox, out);
            }
            // 4 pixels at a time: 4 x B independent accumulators instead of B.
            ox = interior.start;
            while ox + 4 <= interior.end {
                let x0 = ox * g.stride - g.pad_left;
                let mut acc = [bias; 4];
                for ci in 0..channels {
                    for ky in 0..g.kernel {
                        let iy = oy * g.stride + ky - g.pad_top;
                        let row = &image[(ci * g.height + iy) * g.width..][..g.width];
                        for kx in 0..g.kernel {
                            let w = &weight[((ci * g.kernel + ky) * g.kernel + kx) * n..][..n];
                            let w: [L; B] =
                                std::array::from_fn(|b| L::load(&w[b * LANES..][..LANES]));
                            for (p, pixel) in acc.iter_mut().enumerate() {
                                let x = L::splat(row[x0 + p * g.stride + kx]);
                                for (a, w) in pixel.iter_mut().zip(&w) {
                                    *a = a.mul_add(x, *w);
                                }
                            }
                        }
                    }
                }
                for (p, pixel) in acc.iter().enumerate() {
                    let o = &mut out[(oy * g.out_width + ox + p) * n..][..n];
                    for (b, a) in pixel.iter().enumerate() {
                        let a = if relu { a.relu6() } else { *a };
                        a.store(&mut o[b * LANES..][..LANES]);
                    }
                }
                ox += 4;
            }
        }
        for ox in ox..g.out_width {
            conv_planar_pixel::<L, B>(image, channels, &g, weight, bias, relu, oy, ox, out);
        }
    }
}

/// One output pixel of `conv_planar`, skipping the taps outside the image.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn conv_planar_pixel<L: lanes::Lanes, const B: usize>(
    image: &[f32],
    channels: usize,
    g: &ConvGeometry,
    weight: &[f32],
    bias: [L; B],
    relu: bool,
    oy: usize,
    ox: usize,
    out: &mut [f32],
) {
    let n = B * LANES;
    let taps = g.kernel * g.kernel;
    let plane = g.height * g.width;
    let mut acc = bias;
    for ky in 0..g.kernel {
        let Some(iy) = (oy * g.stride + ky).checked_sub(g.pad_top) else {
            continue;
        };
        if iy >= g.height {
            continue;
        }
        for kx in 0..g.kernel {
            let Some(ix) = (ox * g.stride + kx).checked_sub(g.pad_left) else {
                continue;
            };
            if ix >= g.width {
                continue;
            }
            for ci in 0..channels {
                let x = L::splat(image[ci * plane + iy * g.width + ix]);
                let w = &weight[(ci * taps + ky * g.kernel + kx) * n..][..n];
                for (b, a) in acc.iter_mut().enumerate() {
                    *a = a.mul_add(x, L::load(&w[b * LANES..][..LANES]));
                }
            }
        }
    }
    let o = &mut out[(oy * g.out_width + ox) * n..][..n];
    for (b, a) in acc.iter().enumerate() {
        let a = if relu { a.relu6() } else { *a };
        a.store(&mut o[b * LANES..][..LANES]);
    }
}

/// Rows `[row_start, row_start + rows)` of the im2col matrix of an NHWC image (`[height,
/// width, channels]`): one row per output pixel, columns ordered (ky, kx, channel); zeros where
/// the window leaves the image. Pairs with a `[kernel * kernel * channels, out]` weight.
pub fn im2col_nhwc(
    image: &[f32],
    channels: usize,
    geometry: ConvGeometry,
    row_start: usize,
    rows: usize,
    out: &mut [f32],
) {
    let g = geometry;
    let cols = g.kernel * g.kernel * channels;
    assert!(image.len() >= channels * g.height * g.width && out.len() >= rows * cols);
    for (r, row) in out[..rows * cols].chunks_exact_mut(cols).enumerate() {
        let pixel = row_start + r;
        let (oy, ox) = (pixel / g.out_width, pixel % g.out_width);
        for ky in 0..g.kernel {
            let iy = (oy * g.stride + ky).checked_sub(g.pad_top);
            for kx in 0..g.kernel {
                let ix = (ox * g.stride + kx).checked_sub(g.pad_left);
                let dst = &mut row[(ky * g.kernel + kx) * channels..][..channels];
                match (iy, ix) {
                    (Some(iy), Some(ix)) if iy < g.height && ix < g.width => {
                        dst.copy_from_slice(&image[(iy * g.width + ix) * channels..][..channels]);
                    }
                    _ => dst.fill(0.0),
                }
            }
        }
    }
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
    match geometry.kernel {
        // ResNet's stem: whole 7-tap window rows as one vector move each.
        7 => im2col_planar_k::<7>(image, channels, geometry, row_start, rows, out),
        3 => im2col_planar_k::<3>(image, channels, geometry, row_start, rows, out),
        _ => im2col_planar_any(image, channels, geometry, row_start, rows, out),
    }
}

/// [`im2col_planar`] for a `K`x`K` kernel: rows of windows inside the image are copied as
/// `[f32; K]`; the rest through [`im2col_planar_any`].
fn im2col_planar_k<const K: usize>(
    image: &[f32],
    channels: usize,
    geometry: ConvGeometry,
    row_start: usize,
    rows: usize,
    out: &mut [f32],
) {
    let g = geometry;
    let cols = channels * K * K;
    assert!(image.len() >= channels * g.height * g.width && out.len() >= rows * cols);
    let interior = g.interior_columns();
    for (r, row) in out[..rows * cols].chunks_exact_mut(cols).enumerate() {
        let pixel = row_start + r;
        let (oy, ox) = (pixel / g.out_width, pixel % g.out_width);
        if !interior.contains(&ox) {
            im2col_planar_any(image, channels, g, pixel, 1, row);
            continue;
        }
        let ix = ox * g.stride - g.pad_left;
        for ci in 0..channels {
            let plane = &image[ci * g.height * g.width..][..g.height * g.width];
            for ky in 0..K {
                let dst: &mut [f32; K] = (&mut row[(ci * K + ky) * K..][..K])
                    .try_into()
                    .expect("K taps");
                match (oy * g.stride + ky).checked_sub(g.pad_top) {
                    Some(iy) if iy < g.height => {
                        *dst = *<&[f32; K]>::try_from(&plane[iy * g.width + ix..][..K])
                            .expect("K taps");
                    }
                    _ => *dst = [0.0; K],
                }
            }
        }
    }
}

/// [`im2col_planar`] element by element, for any kernel and window.
fn im2col_planar_any(
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

// The passes over a product's output tile, while it is in cache. Each loop is simple enough
// for LLVM to vectorise in the `dispatch!`ed variants; `copy_from_slice` is avoided on
// purpose (a library call per row).

/// `tile[row] = act(tile[row] + bias)`.
#[inline(always)]
fn add_bias_rows(tile: &mut [f32], bias: &[f32], relu: bool) {
    for row in tile.chunks_exact_mut(bias.len()) {
        for (o, b) in row.iter_mut().zip(bias) {
            let v = *o + b;
            *o = if relu { v.clamp(0.0, 6.0) } else { v };
        }
    }
}

/// `tile[row] = act(tile[row] + bias + residual[row])`.
#[inline(always)]
fn add_bias_residual_rows(tile: &mut [f32], bias: &[f32], residual: &[f32], relu: bool) {
    let n = bias.len();
    for (row, res) in tile.chunks_exact_mut(n).zip(residual.chunks_exact(n)) {
        for ((o, r), b) in row.iter_mut().zip(res).zip(bias) {
            let v = *o + b + r;
            *o = if relu { v.clamp(0.0, 6.0) } else { v };
        }
    }
}

/// `sums[j] += sum over rows of relu6(tile[row, j] + bias[j])`.
#[inline(always)]
fn bias_relu6_sum_rows(tile: &[f32], bias: &[f32], sums: &mut [f32]) {
    for row in tile.chunks_exact(sums.len()) {
        for ((s, v), b) in sums.iter_mut().zip(row).zip(bias) {
            *s += (v + b).clamp(0.0, 6.0);
        }
    }
}

#[inline(always)]
fn relu_values(x: &mut [f32]) {
    for v in x {
        *v = v.max(0.0);
    }
}

#[inline(always)]
fn relu6(x: &mut [f32]) {
    for v in x {
        *v = v.clamp(0.0, 6.0);
    }
}

/// Channels per vector block of the depthwise kernel (one AVX-512 register).
const LANES: usize = 16;
/// Output pixels computed together: independent accumulators that keep the FMA units busy.
const PIXELS: usize = 8;
/// Channel blocks computed together for a single pixel (borders), for the same reason.
const CHANNEL_BLOCKS: usize = 4;

#[inline(always)]
fn depthwise_impl<L: lanes::Lanes>(
    input: &[f32],
    g: ConvGeometry,
    weight: &[f32],
    bias: &[f32],
    relu: bool,
    rows: &Rows,
    out: &mut [f32],
) {
    let c = bias.len();
    let std::ops::Range {
        start: interior_start,
        end: interior_end,
    } = g.interior_columns();
    for oy in rows.output.clone() {
        // The kernel rows that fall inside the image for this output row.
        let ky = g.pad_top.saturating_sub(oy * g.stride)
            ..(g.height + g.pad_top - oy * g.stride).min(g.kernel);
        let kx_of = |ox: usize| {
            g.pad_left.saturating_sub(ox * g.stride)
                ..(g.width + g.pad_left - ox * g.stride).min(g.kernel)
        };
        if !c.is_multiple_of(LANES) {
            for ox in 0..g.out_width {
                depthwise_pixel_any_width(
                    (input, &g, weight, bias, relu, rows, 0, oy, &ky),
                    ox,
                    kx_of(ox),
                    out,
                );
            }
            continue;
        }
        let blocks = c / LANES;
        // Interior pixels: 8 neighbours at a time, one channel block each. Pixels outside,
        // channels inside: the windows of 8 pixels over all channels stay in L1 while the
        // next 8 reuse their overlap.
        let mut ox = interior_start;
        while ox + PIXELS <= interior_end {
            for block in 0..blocks {
                let args = (input, &g, weight, bias, relu, rows, block * LANES, oy, &ky);
                depthwise_pixels::<L, PIXELS, 1>(args, ox, 0..g.kernel, out);
            }
            ox += PIXELS;
        }
        // The interior's remainder, 2 pixels x 2 channel blocks at a time.
        while ox + 2 <= interior_end {
            let mut block = 0;
            while block + 2 <= blocks {
                let args = (input, &g, weight, bias, relu, rows, block * LANES, oy, &ky);
                depthwise_pixels::<L, 2, 2>(args, ox, 0..g.kernel, out);
                block += 2;
            }
            for block in block..blocks {
                let args = (input, &g, weight, bias, relu, rows, block * LANES, oy, &ky);
                depthwise_pixels::<L, 2, 1>(args, ox, 0..g.kernel, out);
            }
            ox += 2;
        }
        // Border pixels and the last odd one: one pixel, 4 channel blocks at a time
        // (independent accumulators again; on 7x7 and 14x14 maps these are a third of all).
        for ox in (0..interior_start).chain(ox..g.out_width) {
            let kx = kx_of(ox);
            let mut block = 0;
            while block + CHANNEL_BLOCKS <= blocks {
                let args = (input, &g, weight, bias, relu, rows, block * LANES, oy, &ky);
                depthwise_pixels::<L, 1, CHANNEL_BLOCKS>(args, ox, kx.clone(), out);
                block += CHANNEL_BLOCKS;
            }
            for block in block..blocks {
                let args = (input, &g, weight, bias, relu, rows, block * LANES, oy, &ky);
                depthwise_pixels::<L, 1, 1>(args, ox, kx.clone(), out);
            }
        }
    }
}

/// input, geometry, weight, bias, relu, rows, first channel, output row, kernel rows.
type DepthwiseArgs<'a> = (
    &'a [f32],
    &'a ConvGeometry,
    &'a [f32],
    &'a [f32],
    bool,
    &'a Rows,
    usize,
    usize,
    &'a std::ops::Range<usize>,
);

/// `P` neighbouring output pixels (from `ox0`) of `B` blocks of `LANES` channels (from
/// `first`), accumulated in registers over the kernel taps `ky` x `kx` (the same for all).
#[inline(always)]
fn depthwise_pixels<L: lanes::Lanes, const P: usize, const B: usize>(
    (input, g, weight, bias, relu, rows, first, oy, ky): DepthwiseArgs,
    ox0: usize,
    kx: std::ops::Range<usize>,
    out: &mut [f32],
) {
    let c = bias.len();
    let mut acc = [[L::load(&bias[first..first + LANES]); B]; P];
    for pixel in &mut acc {
        for (b, a) in pixel.iter_mut().enumerate() {
            *a = L::load(&bias[first + b * LANES..][..LANES]);
        }
    }
    // Bounds are checked once here, not per load: the loads below stay inside the window,
    // which the asserts put inside `input` and `weight` (this loop is the whole kernel's cost).
    let (last_ky, last_kx) = (ky.end.max(1) - 1, kx.end.max(1) - 1);
    assert!(ky.start <= last_ky && kx.start <= last_kx && last_ky < g.kernel && last_kx < g.kernel);
    let last_iy = oy * g.stride + last_ky - g.pad_top - rows.input_first;
    let last_ix = (ox0 + P - 1) * g.stride + last_kx - g.pad_left;
    assert!(
        last_ix < g.width && (last_iy * g.width + last_ix) * c + first + B * LANES <= input.len()
    );
    assert!((last_ky * g.kernel + last_kx) * c + first + B * LANES <= weight.len());
    for ky in ky.clone() {
        let iy = oy * g.stride + ky - g.pad_top - rows.input_first;
        for kx in kx.clone() {
            let taps = &weight[(ky * g.kernel + kx) * c + first..];
            let w: [L; B] = std::array::from_fn(|b| L::load(&taps[b * LANES..][..LANES]));
            let ix = ox0 * g.stride + kx - g.pad_left;
            // SAFETY: in bounds by the asserts above (iy, ix and the channel blocks are at most
            // the asserted last ones).
            let mut x = unsafe { input.as_ptr().add((iy * g.width + ix) * c + first) };
            for pixel in &mut acc {
                for (b, a) in pixel.iter_mut().enumerate() {
                    // SAFETY: as above.
                    *a = a.mul_add(unsafe { L::load_ptr(x.add(b * LANES)) }, w[b]);
                }
                // SAFETY: as above; after the last pixel the pointer is not read.
                x = x.wrapping_add(g.stride * c);
            }
        }
    }
    for (p, pixel) in acc.iter().enumerate() {
        let at = ((oy - rows.output.start) * g.out_width + ox0 + p) * c + first;
        for (b, a) in pixel.iter().enumerate() {
            let a = if relu { a.relu6() } else { *a };
            a.store(&mut out[at + b * LANES..][..LANES]);
        }
    }
}

/// One output pixel, all channels, for channel counts that are not a multiple of `LANES`.
#[inline(always)]
fn depthwise_pixel_any_width(
    (input, g, weight, bias, relu, rows, _, oy, ky): DepthwiseArgs,
    ox: usize,
    kx: std::ops::Range<usize>,
    out: &mut [f32],
) {
    let c = bias.len();
    let acc = &mut out[((oy - rows.output.start) * g.out_width + ox) * c..][..c];
    for (a, b) in acc.iter_mut().zip(bias) {
        *a = *b;
    }
    for ky in ky.clone() {
        let iy = oy * g.stride + ky - g.pad_top - rows.input_first;
        for kx in kx.clone() {
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

#[cfg(test)]
mod tests;

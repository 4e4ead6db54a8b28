//! A 3x3, stride-1, pad-1 convolution by Winograd's minimal filtering F(2x2, 3x3) (Lavin &
//! Gray, "Fast Algorithms for Convolutional Neural Networks", 2016), on NHWC maps: every 4x4
//! input tile becomes 16 transformed values per channel, one matrix product per value with
//! the transformed weights, and every 4x4 product tile becomes 2x2 outputs with the bias,
//! residual and ReLU fused. 16 products per 4 outputs instead of 36: 2.25x fewer
//! multiply-adds, which are ~37% of a ResNet-50 (the stride-1 3x3 convs) and its largest cost.
//!
//! Why: the direct (im2col) products already run at the gemm crate's full speed, as fast as
//! ONNX Runtime's; fewer of them is what was left.

use super::simd::dispatch;
use super::{Activation, Matrix, MatrixRef, product};

/// A folded 3x3 conv's weights transformed for F(2x2, 3x3): `[16, inputs, outputs]`.
#[derive(Debug, Clone)]
pub struct Winograd3x3 {
    inputs: usize,
    outputs: usize,
    transformed: Vec<f32>,
    tiles_per_pass: usize,
}

impl Winograd3x3 {
    /// From a `[9 * inputs, outputs]` weight whose rows are ordered (ky, kx, channel), as for
    /// [`super::im2col_nhwc`]: `U = G g Gᵀ` for every (input, output) pair.
    pub fn new(weight: &[f32], inputs: usize, outputs: usize) -> Self {
        assert_eq!(weight.len(), 9 * inputs * outputs);
        const G: [[f32; 3]; 4] = [
            [1.0, 0.0, 0.0],
            [0.5, 0.5, 0.5],
            [0.5, -0.5, 0.5],
            [0.0, 0.0, 1.0],
        ];
        let mut transformed = vec![0.0; 16 * inputs * outputs];
        for c in 0..inputs {
            for o in 0..outputs {
                let g = |ky: usize, kx: usize| weight[((ky * 3 + kx) * inputs + c) * outputs + o];
                for i in 0..4 {
                    for j in 0..4 {
                        let mut u = 0.0;
                        for (k, gik) in G[i].iter().enumerate() {
                            for (l, gjl) in G[j].iter().enumerate() {
                                u += gik * gjl * g(k, l);
                            }
                        }
                        transformed[((i * 4 + j) * inputs + c) * outputs + o] = u;
                    }
                }
            }
        }
        Self {
            inputs,
            outputs,
            transformed,
            tiles_per_pass: TILES,
        }
    }

    /// The same conv in passes of `tiles` tiles (tests: passes that end mid-image).
    #[cfg(test)]
    pub(super) fn in_passes_of(mut self, tiles: usize) -> Self {
        self.tiles_per_pass = tiles.max(1);
        self
    }

    /// `out = act(conv(input) + bias (+ residual))` on `count` NHWC maps of `[height, width]`
    /// back to back; the output has the same size. `scratch` is reused between calls.
    #[allow(clippy::too_many_arguments)]
    pub fn forward(
        &self,
        input: &[f32],
        count: usize,
        [height, width]: [usize; 2],
        bias: &[f32],
        activation: Activation,
        residual: Option<&[f32]>,
        scratch: &mut Vec<f32>,
        out: &mut [f32],
    ) {
        let (ci, co) = (self.inputs, self.outputs);
        let pixels = height * width;
        assert!(input.len() >= count * pixels * ci && out.len() >= count * pixels * co);
        assert_eq!(bias.len(), co);
        assert!(residual.is_none_or(|r| r.len() >= count * pixels * co));
        let (tiles_y, tiles_x) = (height.div_ceil(2), width.div_ceil(2));
        let per_image = tiles_y * tiles_x;
        let total = count * per_image;
        let strip = self.tiles_per_pass.min(total);
        let needed = 16 * strip * (ci + co) + ci;
        if scratch.len() < needed {
            scratch.resize(needed, 0.0);
        }
        // Tile-major: a tile's 16 transformed values (and its 16 products) lie together, so
        // the transforms read and write one block; each product reads a strided matrix.
        let (transformed, rest) = scratch.split_at_mut(16 * strip * ci);
        let (products, zeros) = rest.split_at_mut(16 * strip * co);
        let zeros = &mut zeros[..ci];
        zeros.fill(0.0);
        let zeros = &*zeros;
        let relu = activation == Activation::Relu;
        // Relu6 never follows a 3x3 conv in the families that use this; treated as none.
        for start in (0..total).step_by(strip) {
            let rows = strip.min(total - start);
            for (t, block) in transformed[..rows * 16 * ci]
                .chunks_exact_mut(16 * ci)
                .enumerate()
            {
                let (image, tile) = ((start + t) / per_image, (start + t) % per_image);
                let (y0, x0) = (2 * (tile / tiles_x), 2 * (tile % tiles_x));
                let map = &input[image * pixels * ci..][..pixels * ci];
                // The tile's 4x4 input pixels (rows y0-1..y0+3, columns x0-1..x0+3).
                let d: [&[f32]; 16] = std::array::from_fn(|k| {
                    let (y, x) = ((y0 + k / 4).wrapping_sub(1), (x0 + k % 4).wrapping_sub(1));
                    if y < height && x < width {
                        &map[(y * width + x) * ci..][..ci]
                    } else {
                        zeros
                    }
                });
                dispatch!(input_tile(&d, block));
            }
            for xi in 0..16 {
                product(
                    Matrix {
                        values: &mut products[xi * co..],
                        row_stride: 16 * co,
                    },
                    MatrixRef {
                        values: &transformed[xi * ci..],
                        row_stride: 16 * ci,
                        column_stride: 1,
                    },
                    MatrixRef::row_major(&self.transformed[xi * ci * co..][..ci * co], co),
                    [rows, co, ci],
                    false,
                );
            }
            for (t, m) in products[..rows * 16 * co].chunks_exact(16 * co).enumerate() {
                let (image, tile) = ((start + t) / per_image, (start + t) % per_image);
                let (y0, x0) = (2 * (tile / tiles_x), 2 * (tile % tiles_x));
                let base = image * pixels;
                let at = |dy: usize, dx: usize| {
                    let (y, x) = (y0 + dy, x0 + dx);
                    (y < height && x < width).then(|| (base + y * width + x) * co)
                };
                let pixels = [at(0, 0), at(0, 1), at(1, 0), at(1, 1)];
                dispatch!(output_tile(m, bias, pixels, residual, relu, out));
            }
        }
    }
}

/// Tiles transformed and multiplied per pass: the rows of each product. Fewer made the
/// products pay more for packing their weights: a ResNet-50 forward ran at 34-36 img/s with 64
/// tiles, 38-39.5 with 256 (`graft bench forward`, batch 32, 2 threads).
const TILES: usize = 256;

/// 16 channels at a time: the unit the transforms are written in, so LLVM keeps them in
/// vector registers.
const LANES: usize = 16;

/// `V = Bᵀ d B` of one tile (Bᵀ = [1 0 -1 0; 0 1 1 0; 0 -1 1 0; 0 1 0 -1]) into `block`
/// (`[16, channels]`), from its 16 input pixels `d` (`channels` each).
#[inline(always)]
fn input_tile(d: &[&[f32]; 16], block: &mut [f32]) {
    let channels = d[0].len();
    for c in (0..channels).step_by(LANES) {
        let n = LANES.min(channels - c);
        let mut x = [[0.0f32; LANES]; 16];
        for (x, d) in x.iter_mut().zip(d) {
            load(x, &d[c..c + n]);
        }
        // Bᵀ d: rows combined, then (Bᵀ d) B: columns combined the same way.
        let mut t = [[0.0f32; LANES]; 16];
        for j in 0..4 {
            for l in 0..LANES {
                let (d0, d1, d2, d3) = (x[j][l], x[4 + j][l], x[8 + j][l], x[12 + j][l]);
                t[j][l] = d0 - d2;
                t[4 + j][l] = d1 + d2;
                t[8 + j][l] = d2 - d1;
                t[12 + j][l] = d1 - d3;
            }
        }
        for i in 0..4 {
            for l in 0..LANES {
                let (t0, t1, t2, t3) = (
                    t[i * 4][l],
                    t[i * 4 + 1][l],
                    t[i * 4 + 2][l],
                    t[i * 4 + 3][l],
                );
                x[i * 4][l] = t0 - t2;
                x[i * 4 + 1][l] = t1 + t2;
                x[i * 4 + 2][l] = t2 - t1;
                x[i * 4 + 3][l] = t1 - t3;
            }
        }
        for (xi, v) in x.iter().enumerate() {
            store(&mut block[xi * channels + c..][..n], v);
        }
    }
}

/// `Y = Aᵀ m A` of one tile (Aᵀ = [1 1 1 0; 0 1 -1 -1]) from its 16 products `m` (`[16,
/// channels]`), plus bias (and residual), ReLU'd if asked, into the output pixels at the
/// given offsets (`None`: outside the map).
#[inline(always)]
fn output_tile(
    m: &[f32],
    bias: &[f32],
    pixels: [Option<usize>; 4],
    residual: Option<&[f32]>,
    relu: bool,
    out: &mut [f32],
) {
    let channels = bias.len();
    for c in (0..channels).step_by(LANES) {
        let n = LANES.min(channels - c);
        let mut x = [[0.0f32; LANES]; 16];
        for (xi, x) in x.iter_mut().enumerate() {
            load(x, &m[xi * channels + c..][..n]);
        }
        // Aᵀ m: two rows of four.
        let mut s = [[0.0f32; LANES]; 8];
        for j in 0..4 {
            for l in 0..LANES {
                let (m0, m1, m2, m3) = (x[j][l], x[4 + j][l], x[8 + j][l], x[12 + j][l]);
                s[j][l] = m0 + m1 + m2;
                s[4 + j][l] = m1 - m2 - m3;
            }
        }
        // (Aᵀ m) A: two by two.
        let mut y = [[0.0f32; LANES]; 4];
        for i in 0..2 {
            for l in 0..LANES {
                let (s0, s1, s2, s3) = (
                    s[i * 4][l],
                    s[i * 4 + 1][l],
                    s[i * 4 + 2][l],
                    s[i * 4 + 3][l],
                );
                y[i * 2][l] = s0 + s1 + s2 + bias_at(bias, c + l);
                y[i * 2 + 1][l] = s1 - s2 - s3 + bias_at(bias, c + l);
            }
        }
        for (y, pixel) in y.iter_mut().zip(pixels) {
            let Some(at) = pixel else { continue };
            if let Some(residual) = residual {
                for (y, r) in y[..n].iter_mut().zip(&residual[at + c..][..n]) {
                    *y += r;
                }
            }
            if relu {
                for y in y.iter_mut() {
                    *y = y.max(0.0);
                }
            }
            store(&mut out[at + c..][..n], y);
        }
    }
}

/// `lanes[..values.len()] = values`: a vector move for a whole chunk (`copy_from_slice` of a
/// length LLVM cannot see is a library call).
#[inline(always)]
fn load(lanes: &mut [f32; LANES], values: &[f32]) {
    match <&[f32; LANES]>::try_from(values) {
        Ok(whole) => *lanes = *whole,
        Err(_) => lanes[..values.len()].copy_from_slice(values),
    }
}

/// `out = lanes[..out.len()]`, as [`load`].
#[inline(always)]
fn store(out: &mut [f32], lanes: &[f32; LANES]) {
    match <&mut [f32; LANES]>::try_from(&mut *out) {
        Ok(whole) => *whole = *lanes,
        Err(_) => {
            let n = out.len();
            out.copy_from_slice(&lanes[..n])
        }
    }
}

/// `bias[c]`, zero past its end (the lanes of a partial chunk).
#[inline(always)]
fn bias_at(bias: &[f32], c: usize) -> f32 {
    bias.get(c).copied().unwrap_or(0.0)
}

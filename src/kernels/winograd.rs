//! A 3x3, stride-1, pad-1 convolution by Winograd's minimal filtering F(4x4, 3x3) (Lavin &
//! Gray, "Fast Algorithms for Convolutional Neural Networks", 2016), on NHWC maps: every 6x6
//! input tile becomes 36 transformed values per channel, one matrix product per value with the
//! transformed weights, and every 6x6 product tile becomes 4x4 outputs with the bias, residual
//! and ReLU fused. 36 products per 16 outputs instead of 144: 4x fewer multiply-adds, on the
//! convs that are ~37% of a ResNet-50's and its largest cost.
//!
//! Why: the direct (im2col) products already run at the gemm crate's full speed, as fast as
//! ONNX Runtime's; fewer of them is what was left. F(2x2, 3x3) (2.25x fewer) took ResNet-50
//! from 0.84x to 0.95x ONNX Runtime's speed; F(4x4, 3x3) saves more and still matches
//! torchvision to 1e-4 (parity tests).

use super::simd::dispatch;
use super::{Activation, Matrix, MatrixRef, product};

/// A folded 3x3 conv's weights transformed for F(4x4, 3x3): `[36, inputs, outputs]`.
#[derive(Debug, Clone)]
pub struct Winograd3x3 {
    inputs: usize,
    outputs: usize,
    transformed: Vec<f32>,
    tiles_per_pass: usize,
}

impl Winograd3x3 {
    /// From a `[9 * inputs, outputs]` weight whose rows are ordered (ky, kx, channel), as for
    /// [`super::im2col_nhwc`]: `U = G g Gᵀ` for every (input, output) pair, in f64 (the sixths
    /// and twenty-fourths are not exact in f32), a whole row of outputs at a time (fine-tuning
    /// transforms every 3x3 conv's weights at every step).
    pub fn new(weight: &[f32], inputs: usize, outputs: usize) -> Self {
        Self::new_in(weight, inputs, outputs, Vec::new())
    }

    /// [`Self::new`] with the transformed weights written into `buffer` (resized; a buffer
    /// from [`Self::into_buffer`] of the same shape is reused as it is).
    pub fn new_in(weight: &[f32], inputs: usize, outputs: usize, buffer: Vec<f32>) -> Self {
        assert_eq!(weight.len(), 9 * inputs * outputs);
        const G: [[f64; 3]; 6] = [
            [1.0 / 4.0, 0.0, 0.0],
            [-1.0 / 6.0, -1.0 / 6.0, -1.0 / 6.0],
            [-1.0 / 6.0, 1.0 / 6.0, -1.0 / 6.0],
            [1.0 / 24.0, 1.0 / 12.0, 1.0 / 6.0],
            [1.0 / 24.0, -1.0 / 12.0, 1.0 / 6.0],
            [0.0, 0.0, 1.0],
        ];
        let mut transformed = buffer;
        transformed.resize(VALUES * inputs * outputs, 0.0);
        let co = outputs;
        // (G g)[i][l] for the 6x3 intermediate, then (G g Gᵀ)[i][j], each a row over outputs.
        let mut taps = vec![0.0f64; 9 * co];
        let mut half = vec![0.0f64; SIDE * 3 * co];
        let mut row = vec![0.0f64; co];
        for c in 0..inputs {
            for t in 0..9 {
                let src = &weight[(t * inputs + c) * co..][..co];
                for (d, s) in taps[t * co..][..co].iter_mut().zip(src) {
                    *d = f64::from(*s);
                }
            }
            for i in 0..SIDE {
                for l in 0..3 {
                    let dst = &mut half[(i * 3 + l) * co..][..co];
                    dst.fill(0.0);
                    for (k, gik) in G[i].iter().enumerate().filter(|(_, g)| **g != 0.0) {
                        for (d, g) in dst.iter_mut().zip(&taps[(k * 3 + l) * co..][..co]) {
                            *d += gik * g;
                        }
                    }
                }
            }
            for i in 0..SIDE {
                for j in 0..SIDE {
                    row.fill(0.0);
                    for (l, gjl) in G[j].iter().enumerate().filter(|(_, g)| **g != 0.0) {
                        for (d, h) in row.iter_mut().zip(&half[(i * 3 + l) * co..][..co]) {
                            *d += gjl * h;
                        }
                    }
                    let dst = &mut transformed[((i * SIDE + j) * inputs + c) * co..][..co];
                    for (d, v) in dst.iter_mut().zip(&row) {
                        *d = *v as f32;
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

    /// The transformed weights' buffer, for [`Self::new_in`].
    pub fn into_buffer(self) -> Vec<f32> {
        self.transformed
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
        let (tiles_y, tiles_x) = (height.div_ceil(OUT), width.div_ceil(OUT));
        let per_image = tiles_y * tiles_x;
        let total = count * per_image;
        let strip = self.tiles_per_pass.min(total);
        let needed = VALUES * strip * (ci + co) + ci;
        if scratch.len() < needed {
            scratch.resize(needed, 0.0);
        }
        // Tile-major: a tile's 36 transformed values (and its 36 products) lie together, so
        // the transforms read and write one block; each product reads a strided matrix.
        let (transformed, rest) = scratch.split_at_mut(VALUES * strip * ci);
        let (products, zeros) = rest.split_at_mut(VALUES * strip * co);
        let zeros = &mut zeros[..ci];
        zeros.fill(0.0);
        let zeros = &*zeros;
        let bounds = match activation {
            Activation::None => (f32::NEG_INFINITY, f32::INFINITY),
            Activation::Relu => (0.0, f32::INFINITY),
            Activation::Relu6 => (0.0, 6.0),
        };
        for start in (0..total).step_by(strip) {
            let rows = strip.min(total - start);
            for (t, block) in transformed[..rows * VALUES * ci]
                .chunks_exact_mut(VALUES * ci)
                .enumerate()
            {
                let (image, tile) = ((start + t) / per_image, (start + t) % per_image);
                let (y0, x0) = (OUT * (tile / tiles_x), OUT * (tile % tiles_x));
                let map = &input[image * pixels * ci..][..pixels * ci];
                // The tile's 6x6 input pixels (rows y0-1..y0+5, columns x0-1..x0+5).
                let d: [&[f32]; VALUES] = std::array::from_fn(|k| {
                    let (y, x) = (
                        (y0 + k / SIDE).wrapping_sub(1),
                        (x0 + k % SIDE).wrapping_sub(1),
                    );
                    if y < height && x < width {
                        &map[(y * width + x) * ci..][..ci]
                    } else {
                        zeros
                    }
                });
                dispatch!(input_tile(&d, block));
            }
            for xi in 0..VALUES {
                product(
                    Matrix {
                        values: &mut products[xi * co..],
                        row_stride: VALUES * co,
                    },
                    MatrixRef {
                        values: &transformed[xi * ci..],
                        row_stride: VALUES * ci,
                        column_stride: 1,
                    },
                    MatrixRef::row_major(&self.transformed[xi * ci * co..][..ci * co], co),
                    [rows, co, ci],
                    false,
                );
            }
            for (t, m) in products[..rows * VALUES * co]
                .chunks_exact(VALUES * co)
                .enumerate()
            {
                let (image, tile) = ((start + t) / per_image, (start + t) % per_image);
                let (y0, x0) = (OUT * (tile / tiles_x), OUT * (tile % tiles_x));
                let base = image * pixels;
                let pixels: [Option<usize>; OUT * OUT] = std::array::from_fn(|k| {
                    let (y, x) = (y0 + k / OUT, x0 + k % OUT);
                    (y < height && x < width).then(|| (base + y * width + x) * co)
                });
                dispatch!(output_tile(m, bias, pixels, residual, bounds, out));
            }
        }
    }
}

/// Tiles transformed and multiplied per pass: the rows of each product. Fewer made the
/// products pay more for packing their weights: a ResNet-50 forward ran at 34-36 img/s with 64
/// tiles, 38-39.5 with 256 (`graft bench forward`, batch 32, 2 threads).
const TILES: usize = 256;

/// Outputs per tile side, input pixels per tile side, transformed values per tile.
const OUT: usize = 4;
const SIDE: usize = OUT + 2;
const VALUES: usize = SIDE * SIDE;

/// 16 channels at a time: the unit the transforms are written in, so LLVM keeps them in
/// vector registers.
const LANES: usize = 16;

/// `Bᵀ x` of one column of six, lane by lane:
/// Bᵀ = [4 0 -5 0 1 0; 0 -4 -4 1 1 0; 0 4 -4 -1 1 0; 0 -2 -1 2 1 0; 0 2 -1 -2 1 0;
/// 0 4 0 -5 0 1].
#[inline(always)]
fn input_1d(x: [&[f32; LANES]; SIDE]) -> [[f32; LANES]; SIDE] {
    let mut t = [[0.0f32; LANES]; SIDE];
    for l in 0..LANES {
        let [d0, d1, d2, d3, d4, d5] = x.map(|x| x[l]);
        t[0][l] = 4.0 * d0 - 5.0 * d2 + d4;
        t[1][l] = d3 + d4 - 4.0 * (d1 + d2);
        t[2][l] = d4 - d3 + 4.0 * (d1 - d2);
        t[3][l] = d4 - d2 + 2.0 * (d3 - d1);
        t[4][l] = d4 - d2 + 2.0 * (d1 - d3);
        t[5][l] = 4.0 * d1 - 5.0 * d3 + d5;
    }
    t
}

/// `Aᵀ m` of one column of six, lane by lane: Aᵀ = [1 1 1 1 1 0; 0 1 -1 2 -2 0;
/// 0 1 1 4 4 0; 0 1 -1 8 -8 1].
#[inline(always)]
fn output_1d(m: [&[f32; LANES]; SIDE]) -> [[f32; LANES]; OUT] {
    let mut y = [[0.0f32; LANES]; OUT];
    for l in 0..LANES {
        let [m0, m1, m2, m3, m4, m5] = m.map(|m| m[l]);
        let (a, b) = (m1 + m2, m3 + m4);
        let (c, d) = (m1 - m2, m3 - m4);
        y[0][l] = m0 + a + b;
        y[1][l] = c + 2.0 * d;
        y[2][l] = a + 4.0 * b;
        y[3][l] = c + 8.0 * d + m5;
    }
    y
}

/// `V = Bᵀ d B` of one tile into `block` (`[36, channels]`), from its 36 input pixels `d`
/// (`channels` each).
#[inline(always)]
fn input_tile(d: &[&[f32]; VALUES], block: &mut [f32]) {
    let channels = d[0].len();
    for c in (0..channels).step_by(LANES) {
        let n = LANES.min(channels - c);
        let mut x = [[0.0f32; LANES]; VALUES];
        for (x, d) in x.iter_mut().zip(d) {
            load(x, &d[c..c + n]);
        }
        // Bᵀ d: each column of six combined over its rows.
        let mut t = [[0.0f32; LANES]; VALUES];
        for j in 0..SIDE {
            let column = input_1d(std::array::from_fn(|i| &x[i * SIDE + j]));
            for (i, v) in column.into_iter().enumerate() {
                t[i * SIDE + j] = v;
            }
        }
        // (Bᵀ d) B: each row of six combined over its columns.
        for i in 0..SIDE {
            let row = input_1d(std::array::from_fn(|j| &t[i * SIDE + j]));
            for (j, v) in row.iter().enumerate() {
                store(&mut block[(i * SIDE + j) * channels + c..][..n], v);
            }
        }
    }
}

/// `Y = Aᵀ m A` of one tile from its 36 products `m` (`[36, channels]`), plus bias (and
/// residual), clamped to `bounds` (the activation), into the output pixels at the given offsets
/// (`None`: outside the map).
#[inline(always)]
fn output_tile(
    m: &[f32],
    bias: &[f32],
    pixels: [Option<usize>; OUT * OUT],
    residual: Option<&[f32]>,
    (low, high): (f32, f32),
    out: &mut [f32],
) {
    let channels = bias.len();
    for c in (0..channels).step_by(LANES) {
        let n = LANES.min(channels - c);
        let mut x = [[0.0f32; LANES]; VALUES];
        for (xi, x) in x.iter_mut().enumerate() {
            load(x, &m[xi * channels + c..][..n]);
        }
        let mut b = [0.0f32; LANES];
        load(&mut b, &bias[c..c + n]);
        // Aᵀ m: each column of six to four rows.
        let mut s = [[0.0f32; LANES]; OUT * SIDE];
        for j in 0..SIDE {
            let column = output_1d(std::array::from_fn(|i| &x[i * SIDE + j]));
            for (a, v) in column.into_iter().enumerate() {
                s[a * SIDE + j] = v;
            }
        }
        // (Aᵀ m) A: each row of six to four outputs.
        for a in 0..OUT {
            let row = output_1d(std::array::from_fn(|j| &s[a * SIDE + j]));
            for (k, mut y) in row.into_iter().enumerate() {
                let Some(at) = pixels[a * OUT + k] else {
                    continue;
                };
                for (y, b) in y.iter_mut().zip(&b) {
                    *y += b;
                }
                if let Some(residual) = residual {
                    for (y, r) in y[..n].iter_mut().zip(&residual[at + c..][..n]) {
                        *y += r;
                    }
                }
                for y in y.iter_mut() {
                    *y = y.max(low).min(high);
                }
                store(&mut out[at + c..][..n], &y);
            }
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

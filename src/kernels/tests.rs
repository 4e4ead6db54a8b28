use super::*;
use rand::{Rng, SeedableRng};

fn random(len: usize, seed: u64) -> Vec<f32> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    (0..len).map(|_| rng.random_range(-2.0f32..2.0)).collect()
}

fn worst(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

#[test]
fn pointwise_equals_a_naive_product_with_bias_relu6_and_residual() {
    // More rows than one tile, odd sizes.
    let (m, k, n) = (ROW_TILE * 2 + 37, 19, 23);
    let input = random(m * k, 1);
    let weight = random(k * n, 2);
    let bias = random(n, 3);
    let residual = random(m * n, 4);
    for (activation, res) in [
        (Activation::None, None),
        (Activation::Relu6, None),
        (Activation::None, Some(&residual[..])),
    ] {
        let mut out = vec![f32::NAN; m * n];
        pointwise(&input, m, k, &weight, &bias, activation, res, &mut out);
        let mut expected = vec![0.0; m * n];
        for i in 0..m {
            for j in 0..n {
                let mut v = bias[j] + res.map_or(0.0, |r| r[i * n + j]);
                for l in 0..k {
                    v += input[i * k + l] * weight[l * n + j];
                }
                if activation == Activation::Relu6 {
                    v = v.clamp(0.0, 6.0);
                }
                expected[i * n + j] = v;
            }
        }
        let err = worst(&out, &expected);
        assert!(
            err < 1e-4,
            "{activation:?} residual {}: {err}",
            res.is_some()
        );
        let mut sums = vec![0.0; n];
        let mut scratch = Vec::new();
        if activation == Activation::Relu6 {
            pointwise_relu6_sum(&input, m, k, &weight, &bias, &mut scratch, &mut sums);
            let expected_sums: Vec<f32> = (0..n)
                .map(|j| (0..m).map(|i| expected[i * n + j]).sum())
                .collect();
            let err = worst(&sums, &expected_sums);
            assert!(err < 1e-2, "pooled head sums differ by {err}");
        }
    }
}

/// Direct NHWC convolution with explicit zero padding, one channel at a time.
fn naive_depthwise(input: &[f32], g: ConvGeometry, weight: &[f32], bias: &[f32]) -> Vec<f32> {
    let c = bias.len();
    let mut out = vec![0.0; g.out_height * g.out_width * c];
    for oy in 0..g.out_height {
        for ox in 0..g.out_width {
            for ch in 0..c {
                let mut v = bias[ch];
                for ky in 0..g.kernel {
                    for kx in 0..g.kernel {
                        let iy = (oy * g.stride + ky) as isize - g.pad_top as isize;
                        let ix = (ox * g.stride + kx) as isize - g.pad_left as isize;
                        if iy >= 0 && ix >= 0 && (iy as usize) < g.height && (ix as usize) < g.width
                        {
                            let x = input[(iy as usize * g.width + ix as usize) * c + ch];
                            v += x * weight[(ky * g.kernel + kx) * c + ch];
                        }
                    }
                }
                out[(oy * g.out_width + ox) * c + ch] = v;
            }
        }
    }
    out
}

/// Depthwise geometries on wide images: TF SAME odd/even, symmetric, 5x5 and 7x7, strides 1 and
/// 2.
fn depthwise_geometries() -> Vec<ConvGeometry> {
    // (side, kernel, stride, pad_top/left, out side)
    [
        (9, 3, 1, 1, 9),
        (10, 3, 2, 0, 5),
        (9, 3, 2, 1, 5),
        (15, 5, 2, 2, 8),
        (14, 5, 2, 1, 7),
        (7, 5, 1, 2, 7),
        (8, 7, 1, 3, 8),
    ]
    .into_iter()
    .map(|(side, kernel, stride, pad, out_side)| {
        let width = 3 * side + 1;
        ConvGeometry {
            height: side,
            width,
            kernel,
            stride,
            pad_top: pad,
            pad_left: pad,
            out_height: out_side,
            out_width: (width + 2 * pad - kernel) / stride + 1,
        }
    })
    .collect()
}

#[test]
fn depthwise_equals_a_naive_convolution_for_every_padding_and_stride() {
    // 32 channels take the register-blocked path, 20 the any-width one.
    for c in [20, 32] {
        for g in depthwise_geometries() {
            let input = random(g.height * g.width * c, 5);
            let weight = random(g.kernel * g.kernel * c, 6);
            let bias = random(c, 7);
            let expected = naive_depthwise(&input, g, &weight, &bias);
            let mut out = vec![f32::NAN; expected.len()];
            let all = Rows::all(&g);
            depthwise(&input, g, &weight, &bias, Activation::None, &all, &mut out);
            assert!(worst(&out, &expected) < 1e-4, "{g:?}");
            depthwise(&input, g, &weight, &bias, Activation::Relu6, &all, &mut out);
            let clamped: Vec<f32> = expected.iter().map(|v| v.clamp(0.0, 6.0)).collect();
            assert!(worst(&out, &clamped) < 1e-4, "{g:?} relu6");
            // In strips of 2 output rows, each given only the input rows it needs.
            let row = g.width * c;
            let mut strips = vec![f32::NAN; expected.len()];
            for start in (0..g.out_height).step_by(2) {
                let output = start..(start + 2).min(g.out_height);
                let (first, end) = Rows::needed(&g, &output);
                let at = start * g.out_width * c;
                depthwise(
                    &input[first * row..end * row],
                    g,
                    &weight,
                    &bias,
                    Activation::None,
                    &Rows {
                        input_first: first,
                        output,
                    },
                    &mut strips[at..],
                );
            }
            assert!(worst(&strips, &expected) < 1e-4, "{g:?} in strips");
        }
    }
}

#[test]
fn im2col_rows_reproduce_the_padded_windows() {
    let g = ConvGeometry {
        height: 6,
        width: 5,
        kernel: 3,
        stride: 2,
        pad_top: 0,
        pad_left: 1,
        out_height: 3,
        out_width: 3,
    };
    let image: Vec<f32> = (0..2 * 30).map(|v| v as f32 + 1.0).collect();
    let mut rows = vec![f32::NAN; 9 * 18];
    im2col_planar(&image, 2, g, 0, 9, &mut rows);
    // Output pixel (1, 0): rows 2..5, columns -1..2 of each plane.
    let row = &rows[3 * 18..4 * 18];
    for ci in 0..2 {
        for ky in 0..3 {
            for kx in 0..3 {
                let (iy, ix) = (2 + ky, kx as isize - 1);
                let expected = if ix < 0 {
                    0.0
                } else {
                    image[ci * 30 + iy * 5 + ix as usize]
                };
                assert_eq!(row[ci * 9 + ky * 3 + kx], expected, "c{ci} ky{ky} kx{kx}");
            }
        }
    }
    // A tail of rows starting mid-image equals the same rows of the whole matrix.
    let mut tail = vec![f32::NAN; 4 * 18];
    im2col_planar(&image, 2, g, 5, 4, &mut tail);
    assert_eq!(tail, rows[5 * 18..]);
}

#[test]
fn planar_conv_equals_im2col_then_pointwise() {
    // Both TF SAME (nothing before, the odd pixel after) and symmetric padding, odd sizes.
    for (pad, height, width) in [(0, 17, 12), (1, 16, 13)] {
        let g = ConvGeometry {
            height,
            width,
            kernel: 3,
            stride: 2,
            pad_top: pad,
            pad_left: pad,
            out_height: height.div_ceil(2),
            out_width: width.div_ceil(2),
        };
        let image = random(3 * height * width, 8);
        for n in [16, 32, 64] {
            let weight = random(27 * n, 9);
            let bias = random(n, 10);
            let pixels = g.out_height * g.out_width;
            let mut columns = vec![0.0; pixels * 27];
            im2col_planar(&image, 3, g, 0, pixels, &mut columns);
            let mut expected = vec![0.0; pixels * n];
            pointwise(
                &columns,
                pixels,
                27,
                &weight,
                &bias,
                Activation::Relu6,
                None,
                &mut expected,
            );
            let mut out = vec![f32::NAN; pixels * n];
            assert!(conv_planar(
                &image,
                3,
                g,
                &weight,
                &bias,
                Activation::Relu6,
                &mut out
            ));
            assert!(worst(&out, &expected) < 1e-4, "pad {pad}, {n} channels");
        }
    }
    let g = ConvGeometry {
        height: 4,
        width: 4,
        kernel: 3,
        stride: 2,
        pad_top: 0,
        pad_left: 0,
        out_height: 2,
        out_width: 2,
    };
    let mut out = vec![0.0; 4 * 24];
    assert!(!conv_planar(
        &[0.0; 48],
        3,
        g,
        &[0.0; 27 * 24],
        &[0.0; 24],
        Activation::None,
        &mut out
    ));
}

#[test]
fn pointwise_gradients_equal_naive_products() {
    let (m, k, n) = (ROW_TILE + 37, 19, 23);
    let input = random(m * k, 11);
    let d_out = random(m * n, 12);
    let weight = random(k * n, 13);
    // The weight gradient adds to what is there.
    let before = random(k * n, 14);
    let mut d_weight = before.clone();
    weight_gradient(&input, m, &d_out, &mut d_weight);
    let mut expected = before;
    for l in 0..k {
        for j in 0..n {
            expected[l * n + j] += (0..m)
                .map(|i| input[i * k + l] * d_out[i * n + j])
                .sum::<f32>();
        }
    }
    assert!(worst(&d_weight, &expected) < 1e-3);
    let mut d_input = vec![f32::NAN; m * k];
    input_gradient(&d_out, m, &weight, &mut d_input);
    let mut expected = vec![0.0; m * k];
    for i in 0..m {
        for l in 0..k {
            expected[i * k + l] = (0..n).map(|j| d_out[i * n + j] * weight[l * n + j]).sum();
        }
    }
    assert!(worst(&d_input, &expected) < 1e-4);
    let mut sums = vec![1.0; n];
    add_column_sums(&d_out, &mut sums);
    let expected: Vec<f32> = (0..n)
        .map(|j| 1.0 + (0..m).map(|i| d_out[i * n + j]).sum::<f32>())
        .collect();
    assert!(worst(&sums, &expected) < 1e-4);
}

#[test]
fn relu6_backward_passes_the_gradient_strictly_inside_0_to_6() {
    let out = [-1.0, 0.0, 0.5, 5.9, 6.0, 7.0];
    let mut d = [1.0; 6];
    relu6_backward(&mut d, &out);
    assert_eq!(d, [0.0, 0.0, 1.0, 1.0, 0.0, 0.0]);
}

#[test]
fn depthwise_gradients_equal_naive_loops_for_every_padding_and_stride() {
    // Channel widths that are and are not a multiple of the vector width.
    for c in [20, 32] {
        for g in depthwise_geometries() {
            let (kernel, stride, pad, width) = (g.kernel, g.stride, g.pad_top, g.width);
            let input = random(g.height * g.width * c, 15);
            let weight = random(kernel * kernel * c, 16);
            let d_out = random(g.out_height * g.out_width * c, 17);
            // Both gradients add to what is there.
            let before = random(weight.len(), 18);
            let before_input = random(input.len(), 19);
            let mut expected_weight = before.clone();
            let mut expected_input = before_input.clone();
            for oy in 0..g.out_height {
                for ox in 0..g.out_width {
                    for ky in 0..kernel {
                        for kx in 0..kernel {
                            let iy = (oy * stride + ky) as isize - pad as isize;
                            let ix = (ox * stride + kx) as isize - pad as isize;
                            if iy < 0 || ix < 0 || iy as usize >= g.height || ix as usize >= width {
                                continue;
                            }
                            let i = (iy as usize * width + ix as usize) * c;
                            let o = (oy * g.out_width + ox) * c;
                            let t = (ky * kernel + kx) * c;
                            for ch in 0..c {
                                expected_weight[t + ch] += d_out[o + ch] * input[i + ch];
                                expected_input[i + ch] += d_out[o + ch] * weight[t + ch];
                            }
                        }
                    }
                }
            }
            let mut d_weight = before;
            let mut d_input = before_input;
            depthwise_backward(
                &input,
                g,
                &weight,
                &d_out,
                &mut d_weight,
                Some(&mut d_input),
            );
            assert!(
                worst(&d_weight, &expected_weight) < 1e-3,
                "{g:?} weight, {c} channels"
            );
            assert!(
                worst(&d_input, &expected_input) < 1e-4,
                "{g:?} input, {c} channels"
            );
        }
    }
}

/// A naive 3x3, stride-1, pad-1 conv of `count` NHWC maps with a `[(ky, kx, c), out]` weight.
#[allow(clippy::too_many_arguments)]
fn naive_conv3x3(
    input: &[f32],
    count: usize,
    [h, w]: [usize; 2],
    ci: usize,
    weight: &[f32],
    bias: &[f32],
    residual: Option<&[f32]>,
    activation: Activation,
) -> Vec<f32> {
    let co = bias.len();
    let mut out = vec![0.0; count * h * w * co];
    for n in 0..count {
        for y in 0..h {
            for x in 0..w {
                for o in 0..co {
                    let at = ((n * h + y) * w + x) * co + o;
                    let mut v = bias[o] + residual.map_or(0.0, |r| r[at]);
                    for ky in 0..3 {
                        for kx in 0..3 {
                            let (iy, ix) = ((y + ky).wrapping_sub(1), (x + kx).wrapping_sub(1));
                            if iy >= h || ix >= w {
                                continue;
                            }
                            for c in 0..ci {
                                v += input[((n * h + iy) * w + ix) * ci + c]
                                    * weight[((ky * 3 + kx) * ci + c) * co + o];
                            }
                        }
                    }
                    out[at] = match activation {
                        Activation::None => v,
                        Activation::Relu => v.max(0.0),
                        Activation::Relu6 => v.clamp(0.0, 6.0),
                    };
                }
            }
        }
    }
    out
}

#[test]
fn winograd_equals_a_naive_3x3_convolution_on_odd_and_even_maps() {
    // Sizes not a multiple of 4 leave part of the last tiles outside the map; passes of 7 tiles
    // end mid-image (a 9x9 map is 9 tiles), 17 and 33 channels leave partial chunks of 16.
    for (count, size, ci, co, tiles) in [
        (3, [9, 9], 5, 7, 7),
        (2, [14, 15], 17, 33, 256),
        (1, [23, 24], 3, 4, 10),
        (1, [1, 1], 2, 3, 256),
    ] {
        let pixels = size[0] * size[1];
        let input = random(count * pixels * ci, 10);
        let weight = random(9 * ci * co, 11);
        let bias = random(co, 12);
        let residual = random(count * pixels * co, 13);
        let conv = Winograd3x3::new(&weight, ci, co).in_passes_of(tiles);
        let mut scratch = Vec::new();
        for (res, activation) in [
            (None, Activation::None),
            (Some(&residual[..]), Activation::Relu),
            (None, Activation::Relu6),
        ] {
            let mut out = vec![f32::NAN; count * pixels * co];
            conv.forward(
                &input,
                count,
                size,
                &bias,
                activation,
                res,
                &mut scratch,
                &mut out,
            );
            let expected = naive_conv3x3(&input, count, size, ci, &weight, &bias, res, activation);
            // F(4x4, 3x3)'s transforms scale values by up to 8 before the products sum them:
            // rounding relative to the size of the outputs before the activation clamps them.
            let raw = naive_conv3x3(
                &input,
                count,
                size,
                ci,
                &weight,
                &bias,
                res,
                Activation::None,
            );
            let scale = raw.iter().fold(1.0f32, |m, v| m.max(v.abs()));
            let err = worst(&out, &expected) / scale;
            assert!(
                err < 1e-5,
                "{count} maps of {size:?}, {ci}->{co}: relative error {err}"
            );
        }
    }
}

#[test]
fn im2col_planar_fast_paths_equal_the_element_by_element_one() {
    // ResNet's stem (7x7/2, pad 3) and a 3x3/1, on odd sizes with padding on every side.
    for (kernel, stride, pad, height, width) in
        [(7, 2, 3, 23, 18), (3, 1, 1, 9, 11), (7, 2, 3, 5, 4)]
    {
        let out_height = (height + 2 * pad - kernel) / stride + 1;
        let out_width = (width + 2 * pad - kernel) / stride + 1;
        let g = ConvGeometry {
            height,
            width,
            kernel,
            stride,
            pad_top: pad,
            pad_left: pad,
            out_height,
            out_width,
        };
        let image = random(3 * height * width, 20);
        let (rows, cols) = (out_height * out_width, 3 * kernel * kernel);
        let mut fast = vec![f32::NAN; rows * cols];
        let mut slow = vec![f32::NAN; rows * cols];
        im2col_planar(&image, 3, g, 0, rows, &mut fast);
        im2col_planar_any(&image, 3, g, 0, rows, &mut slow);
        assert_eq!(fast, slow, "{kernel}x{kernel}/{stride} on {height}x{width}");
    }
}

#[test]
fn amx_bf16_product_equals_the_product_of_the_rounded_inputs() {
    if !amx::available() {
        eprintln!("skipped: this CPU has no AMX bfloat16 (Intel Xeon Sapphire Rapids or later)");
        return;
    }
    let round = |v: &[f32]| -> Vec<f64> {
        v.iter()
            .map(|x| f64::from(f32::from_bits(u32::from(amx::bf16(*x)) << 16)))
            .collect()
    };
    // Odd sizes: a 16-row strip after the 32-row blocks, k and n past whole tiles; then one
    // row (a class token alone) and a ViT-S Linear.
    for (m, k, n) in [(53, 70, 50), (1, 33, 17), (257, 384, 1152)] {
        let a = random(m * k, 5);
        let w = random(k * n, 6);
        let bias = random(n, 7);
        let residual = random(m * n, 8);
        let packed = amx::PackedBf16::pack(&w, k, n);
        let (ra, rw) = (round(&a), round(&w));
        for res in [None, Some(&residual[..])] {
            let mut out = vec![f32::NAN; m * n];
            amx::matmul(&a, m, &packed, &bias, res, &mut out);
            let mut worst_error = 0.0f64;
            for i in 0..m {
                for j in 0..n {
                    let mut v = f64::from(bias[j]) + res.map_or(0.0, |r| f64::from(r[i * n + j]));
                    for l in 0..k {
                        v += ra[i * k + l] * rw[l * n + j];
                    }
                    worst_error = worst_error.max((v - f64::from(out[i * n + j])).abs());
                }
            }
            // Products of bfloat16 values are exact in float32; only the float32 sums round.
            assert!(
                worst_error < 1e-4 * (k as f64).sqrt() * 4.0,
                "{m}x{k}x{n}: worst error {worst_error}"
            );
        }
    }
    // Rounding: ties to even, and a value between two bfloat16s to the nearer.
    assert_eq!(amx::bf16(1.0), 0x3f80);
    assert_eq!(amx::bf16(f32::from_bits(0x3f80_8000)), 0x3f80);
    assert_eq!(amx::bf16(f32::from_bits(0x3f81_8000)), 0x3f82);
    assert_eq!(amx::bf16(f32::from_bits(0x3f80_8001)), 0x3f81);
}

//! Pillow's antialiased resize, pixel for pixel.
//!
//! torchvision and timm resize with Pillow (`Image.resize(size, BILINEAR | BICUBIC)`), so the
//! pixels a reference model saw come from Pillow's `libImaging/Resample.c`: a separable
//! convolution, horizontal pass first, the filter's support stretched by the downscale factor,
//! coefficients in 22-bit fixed point, and the intermediate image rounded to uint8. This is the
//! same arithmetic, so the same uint8 pixels (python/tests/test_preprocess.py compares with
//! Pillow on real photos). Any other resampler (fast_image_resize's, the `image` crate's)
//! differs by a grey level on some pixels, enough to move a network's features by 1e-2
//! relative.
//!
//! [`resize_window`] computes only a window of the resized image, each pixel exactly as the
//! full resize would: a resize followed by a centre crop needs no buffer of the whole resized
//! image, however wide the photo.

use std::ops::Range;

use image::RgbImage;

use crate::backbone::ResizeFilter;

/// Fraction bits of the fixed-point coefficients (Pillow's `PRECISION_BITS`: 32 - 8 - 2, room
/// for the 8-bit pixel and the filters' negative lobes in an i32 sum).
const PRECISION_BITS: u32 = 22;

/// The resampling kernel and its support (Pillow's `BILINEAR` and `BICUBIC` filters).
fn kernel(filter: ResizeFilter) -> (fn(f64) -> f64, f64) {
    match filter {
        ResizeFilter::Bilinear => (bilinear, 1.0),
        ResizeFilter::Bicubic => (bicubic, 2.0),
    }
}

fn bilinear(x: f64) -> f64 {
    let x = x.abs();
    if x < 1.0 { 1.0 - x } else { 0.0 }
}

/// Keys' cubic convolution with a = -0.5, written as Pillow writes it (the same roundings).
fn bicubic(x: f64) -> f64 {
    const A: f64 = -0.5;
    let x = x.abs();
    if x < 1.0 {
        ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
    } else if x < 2.0 {
        (((x - 5.0) * x + 8.0) * x - 4.0) * A
    } else {
        0.0
    }
}

/// One axis of a resize: for each output position in the window, the first input index and
/// the fixed-point weights of the inputs from there on.
struct Axis {
    first: Vec<usize>,
    /// How many inputs each output position reads.
    count: Vec<usize>,
    /// `taps` weights per output position (zero past that position's own count).
    weights: Vec<i32>,
    taps: usize,
}

impl Axis {
    /// Pillow's `precompute_coeffs` + `normalize_coeffs_8bpc` for the whole input range
    /// (`box` = 0..in_size) resized to `out_size`, kept for the outputs in `window`.
    fn new(in_size: u32, out_size: u32, window: Range<u32>, filter: ResizeFilter) -> Axis {
        let (kernel, support) = kernel(filter);
        // Pillow computes `in1 - in0` in f32; both are exact for any image side here.
        let scale = f64::from(in_size as f32) / f64::from(out_size);
        let filter_scale = scale.max(1.0);
        let support = support * filter_scale;
        let taps = support.ceil() as usize * 2 + 1;
        let inverse = 1.0 / filter_scale;
        let mut first = Vec::with_capacity(window.len());
        let mut counts = Vec::with_capacity(window.len());
        let mut weights = vec![0i32; window.len() * taps];
        let mut row = vec![0f64; taps];
        for (out, xx) in window.enumerate() {
            let center = (f64::from(xx) + 0.5) * scale;
            // C's (int) cast: truncation toward zero, then clamped to the image.
            let xmin = ((center - support + 0.5) as i64).max(0);
            let xmax = ((center + support + 0.5) as i64).min(i64::from(in_size));
            let count = (xmax - xmin).max(0) as usize;
            let mut sum = 0.0;
            for (x, w) in row.iter_mut().enumerate().take(count) {
                *w = kernel((x as f64 + xmin as f64 - center + 0.5) * inverse);
                sum += *w;
            }
            let fixed = &mut weights[out * taps..out * taps + count];
            for (k, w) in fixed.iter_mut().zip(&row) {
                let w = if sum != 0.0 { w / sum } else { *w };
                let scaled = w * f64::from(1u32 << PRECISION_BITS);
                // Rounded half away from zero, then truncated as C's (int) does.
                *k = if w < 0.0 {
                    (scaled - 0.5) as i32
                } else {
                    (scaled + 0.5) as i32
                };
            }
            first.push(xmin as usize);
            counts.push(count);
        }
        Axis {
            first,
            count: counts,
            weights,
            taps,
        }
    }

    fn len(&self) -> usize {
        self.first.len()
    }

    /// The input index range output `i` reads.
    fn span(&self, i: usize) -> Range<usize> {
        self.first[i]..self.first[i] + self.count[i]
    }

    /// The weights of output `i`, one per input of its span.
    fn weights(&self, i: usize) -> &[i32] {
        &self.weights[i * self.taps..i * self.taps + self.count[i]]
    }
}

/// Pillow's `clip8`: the fixed-point sum back to a pixel, clamped.
#[inline]
fn clip8(sum: i32) -> u8 {
    (sum >> PRECISION_BITS).clamp(0, 255) as u8
}

/// Half of one in fixed point: the sums start there so the shift rounds.
const HALF: i32 = 1 << (PRECISION_BITS - 1);

/// `image` resized to `width x height` as Pillow's `Image.resize((width, height), filter)` does.
pub fn resize(image: &RgbImage, width: u32, height: u32, filter: ResizeFilter) -> RgbImage {
    resize_window(image, (width, height), (0..width, 0..height), filter)
}

/// The `columns x rows` window of `image` resized to `size`, each pixel equal to the full
/// resize's (what `resize` then `crop` give, without the full resized image).
pub fn resize_window(
    image: &RgbImage,
    size: (u32, u32),
    (columns, rows): (Range<u32>, Range<u32>),
    filter: ResizeFilter,
) -> RgbImage {
    let (w, h) = image.dimensions();
    let (out_w, out_h) = (columns.len(), rows.len());
    if out_w == 0 || out_h == 0 || w == 0 || h == 0 {
        return RgbImage::new(out_w as u32, out_h as u32);
    }
    let vertical = Axis::new(h, size.1, rows.clone(), filter);
    // The source rows the vertical pass reads (Pillow's ybox_first..ybox_last).
    let first_row = vertical.first[0];
    let end_row = (0..vertical.len())
        .map(|i| vertical.span(i).end)
        .max()
        .unwrap_or(first_row)
        .max(first_row + 1);
    let src = image.as_raw();
    let stride = w as usize * 3;
    // Horizontal pass (skipped, as in Pillow, when the width does not change).
    let band: Vec<u8> = if size.0 != w {
        let horizontal = Axis::new(w, size.0, columns, filter);
        let mut band = vec![0u8; (end_row - first_row) * out_w * 3];
        for (y, out_row) in band.chunks_exact_mut(out_w * 3).enumerate() {
            let in_row = &src[(first_row + y) * stride..(first_row + y + 1) * stride];
            horizontal_row(in_row, out_row, &horizontal);
        }
        band
    } else {
        let (left, right) = (columns.start as usize * 3, columns.end as usize * 3);
        (first_row..end_row)
            .flat_map(|y| &src[y * stride + left..y * stride + right])
            .copied()
            .collect()
    };
    if size.1 == h {
        // No vertical pass: the window's rows of the band as they are.
        let row_bytes = out_w * 3;
        let start = (rows.start as usize - first_row) * row_bytes;
        let pixels = band[start..start + out_h * row_bytes].to_vec();
        return from_raw(out_w, out_h, pixels);
    }
    let mut out = vec![0u8; out_w * out_h * 3];
    let mut sums = vec![0i32; out_w * 3];
    for (i, out_row) in out.chunks_exact_mut(out_w * 3).enumerate() {
        sums.fill(HALF);
        let top = vertical.first[i] - first_row;
        for (tap, &k) in vertical.weights(i).iter().enumerate() {
            let in_row = &band[(top + tap) * out_w * 3..(top + tap + 1) * out_w * 3];
            for (s, &p) in sums.iter_mut().zip(in_row) {
                *s += i32::from(p) * k;
            }
        }
        for (o, &s) in out_row.iter_mut().zip(&sums) {
            *o = clip8(s);
        }
    }
    from_raw(out_w, out_h, out)
}

/// One row of the horizontal pass: RGB in, RGB out, one weight row per output pixel.
fn horizontal_row(input: &[u8], output: &mut [u8], axis: &Axis) {
    for (i, px) in output.chunks_exact_mut(3).enumerate() {
        let span = axis.span(i);
        let source = &input[span.start * 3..span.end * 3];
        let (mut r, mut g, mut b) = (HALF, HALF, HALF);
        for (p, &k) in source.chunks_exact(3).zip(axis.weights(i)) {
            r += i32::from(p[0]) * k;
            g += i32::from(p[1]) * k;
            b += i32::from(p[2]) * k;
        }
        px.copy_from_slice(&[clip8(r), clip8(g), clip8(b)]);
    }
}

fn from_raw(width: usize, height: usize, pixels: Vec<u8>) -> RgbImage {
    // cannot fail: every caller allocates width * height * 3 bytes
    RgbImage::from_raw(width as u32, height as u32, pixels).expect("buffer is width*height*3")
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A test image whose channels vary along x, y and both (shared with preprocess's tests).
    pub(crate) fn pattern(w: u32, h: u32) -> RgbImage {
        RgbImage::from_fn(w, h, |x, y| {
            image::Rgb([
                (x * 7 % 256) as u8,
                (y * 13 % 256) as u8,
                ((x ^ y) % 256) as u8,
            ])
        })
    }

    #[test]
    fn a_window_has_the_full_resizes_pixels() {
        let image = pattern(301, 157);
        for filter in [ResizeFilter::Bilinear, ResizeFilter::Bicubic] {
            for size in [(90, 50), (640, 333), (301, 80), (120, 157)] {
                let full = resize(&image, size.0, size.1, filter);
                let (cols, rows) = (size.0 / 4..size.0 - 3, 2..size.1 / 2);
                let window = resize_window(&image, size, (cols.clone(), rows.clone()), filter);
                let expected = image::imageops::crop_imm(
                    &full,
                    cols.start,
                    rows.start,
                    cols.len() as u32,
                    rows.len() as u32,
                )
                .to_image();
                assert_eq!(window, expected, "{filter:?} {size:?}");
            }
        }
    }

    #[test]
    fn weights_sum_to_one_in_fixed_point() {
        for (n, m) in [(1000, 224), (224, 1000), (3, 7), (7, 3), (500, 499)] {
            for filter in [ResizeFilter::Bilinear, ResizeFilter::Bicubic] {
                let axis = Axis::new(n, m, 0..m, filter);
                for i in 0..axis.len() {
                    let sum: i64 = axis.weights(i).iter().map(|&k| i64::from(k)).sum();
                    // Each weight rounds on its own: off by at most half a unit per tap.
                    let off = (sum - (1i64 << PRECISION_BITS)).unsigned_abs() as usize;
                    assert!(off <= axis.taps, "{n}->{m} {filter:?} output {i}: {sum}");
                    assert!(axis.span(i).end <= n as usize);
                }
            }
        }
    }

    #[test]
    fn flat_images_stay_flat_and_extremes_do_not_wrap() {
        for value in [0u8, 1, 128, 254, 255] {
            let image = RgbImage::from_pixel(97, 61, image::Rgb([value; 3]));
            for filter in [ResizeFilter::Bilinear, ResizeFilter::Bicubic] {
                let out = resize(&image, 224, 224, filter);
                assert!(
                    out.as_raw().iter().all(|&p| p == value),
                    "{value} {filter:?}"
                );
            }
        }
        // A black / white checkerboard drives the cubic's lobes past both ends: clamped.
        let board = RgbImage::from_fn(64, 64, |x, y| image::Rgb([255 * ((x + y) % 2) as u8; 3]));
        let out = resize(&board, 150, 150, ResizeFilter::Bicubic);
        assert!(out.as_raw().contains(&0) && out.as_raw().contains(&255));
    }
}

//! A heatmap drawn over its photo: upsampled to the crop the network saw by bilinear
//! interpolation, coloured with Google's perceptual Turbo colormap and alpha-blended.

use std::path::Path;

use image::RgbImage;

use super::{ExplainError, Heatmap};

/// Weight of the heatmap's colour in the blend (the photo keeps the rest).
const ALPHA: f32 = 0.5;

/// `crop` (the photo as the network saw it) with `heatmap` over it, the same size as `crop`.
pub fn render(crop: &RgbImage, heatmap: &Heatmap) -> RgbImage {
    let (width, height) = crop.dimensions();
    let heat = upsample(
        &heatmap.normalised(),
        heatmap.grid,
        [height as usize, width as usize],
    );
    let mut out = crop.clone();
    for (pixel, &v) in out.pixels_mut().zip(&heat) {
        let colour = turbo(v);
        for (channel, c) in pixel.0.iter_mut().zip(colour) {
            let blended = (1.0 - ALPHA) * *channel as f32 + ALPHA * 255.0 * c;
            *channel = blended.round().clamp(0.0, 255.0) as u8;
        }
    }
    out
}

/// `image` as a PNG file at `path`.
pub fn write_png(image: &RgbImage, path: &Path) -> Result<(), ExplainError> {
    image
        .save_with_format(path, image::ImageFormat::Png)
        .map_err(|e| ExplainError::Write {
            path: path.to_path_buf(),
            problem: e.to_string(),
        })
}

/// `values` on a `[rows, columns]` grid resampled to `[height, width]` by bilinear
/// interpolation with pixel centres aligned (`align_corners=False`, as OpenCV's and PyTorch's
/// resizing do), edges clamped.
pub fn upsample(
    values: &[f32],
    [rows, columns]: [usize; 2],
    [height, width]: [usize; 2],
) -> Vec<f32> {
    assert_eq!(values.len(), rows * columns, "a grid of {rows} x {columns}");
    // For each output index along an axis: the two source indices and the second's weight.
    let axis = |source: usize, out: usize| -> Vec<(usize, usize, f32)> {
        let scale = source as f32 / out as f32;
        (0..out)
            .map(|i| {
                let at = ((i as f32 + 0.5) * scale - 0.5).clamp(0.0, (source - 1) as f32);
                let low = at.floor() as usize;
                let high = (low + 1).min(source - 1);
                (low, high, at - low as f32)
            })
            .collect()
    };
    if rows == 0 || columns == 0 {
        return vec![0.0; height * width];
    }
    let (ys, xs) = (axis(rows, height), axis(columns, width));
    let mut out = Vec::with_capacity(height * width);
    for &(y0, y1, fy) in &ys {
        for &(x0, x1, fx) in &xs {
            let at = |y: usize, x: usize| values[y * columns + x];
            let top = at(y0, x0) * (1.0 - fx) + at(y0, x1) * fx;
            let bottom = at(y1, x0) * (1.0 - fx) + at(y1, x1) * fx;
            out.push(top * (1.0 - fy) + bottom * fy);
        }
    }
    out
}

/// The Turbo colormap (Mikhailov, Google AI 2019) at `x` in [0, 1], as RGB in [0, 1]: its
/// published polynomial fit. Perceptually ordered from dark blue (0) to dark red (1).
pub fn turbo(x: f32) -> [f32; 3] {
    const RED: [f32; 6] = [
        0.135_721_38,
        4.615_392_6,
        -42.660_322,
        132.131_08,
        -152.942_39,
        59.286_38,
    ];
    const GREEN: [f32; 6] = [
        0.091_402_61,
        2.194_188_4,
        4.842_966_6,
        -14.185_033,
        4.277_298_6,
        2.829_566,
    ];
    const BLUE: [f32; 6] = [
        0.106_673_3,
        12.641_946,
        -60.582_05,
        110.362_77,
        -89.903_11,
        27.348_25,
    ];
    let x = x.clamp(0.0, 1.0);
    let polynomial = |c: &[f32; 6]| {
        c.iter()
            .rev()
            .fold(0.0f32, |acc, &k| acc * x + k)
            .clamp(0.0, 1.0)
    };
    [polynomial(&RED), polynomial(&GREEN), polynomial(&BLUE)]
}

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
    const RED: [f64; 6] = [
        0.135_721_38,
        4.615_392_60,
        -42.660_322_58,
        132.131_082_34,
        -152.942_393_96,
        59.286_379_43,
    ];
    const GREEN: [f64; 6] = [
        0.091_402_61,
        2.194_188_39,
        4.842_966_58,
        -14.185_033_33,
        4.277_298_57,
        2.829_566_04,
    ];
    const BLUE: [f64; 6] = [
        0.106_673_30,
        12.641_946_08,
        -60.582_048_36,
        110.362_767_71,
        -89.903_109_12,
        27.348_249_73,
    ];
    let x = f64::from(x.clamp(0.0, 1.0));
    let polynomial = |c: &[f64; 6]| {
        c.iter()
            .rev()
            .fold(0.0, |acc, &k| acc * x + k)
            .clamp(0.0, 1.0) as f32
    };
    [polynomial(&RED), polynomial(&GREEN), polynomial(&BLUE)]
}

//! A backbone's eval preprocessing, from its source config: crop, resize, normalise, CHW.

use image::RgbImage;

use crate::backbone::{CropRule, Normalization, SourceConfig};
pub use crate::data::resample::resize;
use crate::data::resample::resize_window;

/// A preprocessed image: `3 x resolution x resolution` floats, channel-major (CHW).
pub type Chw = Vec<f32>;

/// Crop and resize to the square `resolution` the network expects, as uint8 RGB.
pub fn crop_and_resize(image: &RgbImage, config: &SourceConfig) -> RgbImage {
    let res = config.resolution as u32;
    let (w, h) = image.dimensions();
    match config.crop {
        CropRule::Squash => resize(image, res, res, config.resize_filter),
        CropRule::CenterSquare { fraction } => {
            // TF EfficientNet eval crop: side floor(fraction * short side), offset rounded up.
            let side = ((fraction as f64 * f64::from(w.min(h))) as u32).max(1);
            let top = (h - side).div_ceil(2);
            let left = (w - side).div_ceil(2);
            let square = image::imageops::crop_imm(image, left, top, side, side).to_image();
            resize(&square, res, res, config.resize_filter)
        }
        CropRule::ResizeThenCenterCrop { fraction } => {
            // torchvision: Resize(int(res / fraction)) on the short side, then CenterCrop(res).
            let short = resize_target(res, fraction);
            let (rw, rh) = if w <= h {
                (short, ((short as u64 * h as u64) / w as u64) as u32)
            } else {
                (((short as u64 * w as u64) / h as u64) as u32, short)
            };
            let (rw, rh) = (rw.max(res), rh.max(res));
            // torchvision's CenterCrop: int(round((size - res) / 2)), Python's round (half to
            // even).
            let top = (f64::from(rh - res) / 2.0).round_ties_even() as u32;
            let left = (f64::from(rw - res) / 2.0).round_ties_even() as u32;
            // Only the kept window is resampled, each pixel as the full resize gives it: a
            // 10000 x 10 photo needs no 2.9M x 292 buffer.
            resize_window(
                image,
                (rw, rh),
                (left..left + res, top..top + res),
                config.resize_filter,
            )
        }
    }
}

/// The short side `res / fraction` that a resize-then-crop rule resizes to: timm's
/// `floor(img_size / crop_pct)`, except that a quotient within 1e-3 of an integer is that
/// integer (torchvision's rules name the size, e.g. 240, and `fraction` = 224 / 240 in f32
/// puts the quotient a hair below it: 239.999999).
fn resize_target(res: u32, fraction: f32) -> u32 {
    let exact = f64::from(res) / f64::from(fraction);
    let nearest = exact.round();
    (if (exact - nearest).abs() < 1e-3 {
        nearest
    } else {
        exact.floor()
    }) as u32
}

/// `(x - mean) / std` per channel, HWC uint8 -> CHW f32.
pub fn normalize(image: &RgbImage, norm: &Normalization) -> Chw {
    let (w, h) = image.dimensions();
    let plane = (w * h) as usize;
    let mut out = vec![0f32; 3 * plane];
    for (i, px) in image.pixels().enumerate() {
        for c in 0..3 {
            out[c * plane + i] = (f32::from(px[c]) - norm.mean[c]) / norm.std[c];
        }
    }
    out
}

/// The full eval transform of `config`.
pub fn preprocess(image: &RgbImage, config: &SourceConfig) -> Chw {
    normalize(&crop_and_resize(image, config), &config.normalization)
}

/// Mirror a square `[3, side, side]` image left to right, in place.
pub fn hflip(chw: &mut [f32], side: usize) {
    for row in chw.chunks_exact_mut(side) {
        row.reverse();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::resample::tests::pattern;

    fn torchvision_config() -> SourceConfig {
        crate::backbone::find("mobilenet-v2")
            .unwrap()
            .source_config(None)
    }

    #[test]
    fn a_very_wide_image_resamples_only_the_crop_and_gives_the_same_pixels() {
        let config = torchvision_config();
        let image = pattern(2400, 60);
        // The rule done the long way: the whole image to 10240 x 256, then the centre 224.
        let full = resize(&image, 10240, 256, config.resize_filter);
        let (left, top) = ((10240 - 224) / 2, (256 - 224) / 2);
        let expected = image::imageops::crop_imm(&full, left, top, 224, 224).to_image();
        assert_eq!(crop_and_resize(&image, &config), expected);
    }

    #[test]
    fn the_resize_target_is_the_named_size_or_timms_floor() {
        for size in [230u32, 232, 235, 236, 240, 256, 288] {
            assert_eq!(resize_target(224, 224.0 / size as f32), size);
        }
        // timm: floor(224 / 0.9) and floor(224 / 0.95).
        assert_eq!(resize_target(224, 0.9), 248);
        assert_eq!(resize_target(224, 0.95), 235);
        assert_eq!(resize_target(224, 1.0), 224);
    }

    #[test]
    fn a_10000_by_1_image_is_cropped_without_a_giant_buffer() {
        let config = torchvision_config();
        for (w, h) in [(10000, 1), (1, 10000), (10000, 10)] {
            let out = crop_and_resize(&pattern(w, h), &config);
            assert_eq!(out.dimensions(), (224, 224), "{w}x{h}");
        }
    }

    #[test]
    fn hflip_mirrors_every_row_of_every_channel() {
        // 2 channels shown; side 2: [[1, 2], [3, 4]] per channel.
        let mut chw = vec![
            1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0, 11.0, 12.0,
        ];
        super::hflip(&mut chw, 2);
        assert_eq!(
            chw,
            vec![
                2.0, 1.0, 4.0, 3.0, 6.0, 5.0, 8.0, 7.0, 10.0, 9.0, 12.0, 11.0
            ]
        );
    }
}

//! A backbone's eval preprocessing, from its source config: crop, resize, normalise, CHW.

use fast_image_resize::images::{Image, ImageRef};
use fast_image_resize::{FilterType, PixelType, ResizeAlg, ResizeOptions, Resizer};
use image::RgbImage;

use crate::backbone::{CropRule, Normalization, ResizeFilter, SourceConfig};

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
            let short = (res as f64 / fraction as f64) as u32;
            let (rw, rh) = if w <= h {
                (short, ((short as u64 * h as u64) / w as u64) as u32)
            } else {
                (((short as u64 * w as u64) / h as u64) as u32, short)
            };
            let (rw, rh) = (rw.max(res), rh.max(res));
            let top = ((rh - res) as f64 / 2.0).round() as u32;
            let left = ((rw - res) as f64 / 2.0).round() as u32;
            if u64::from(rw) * u64::from(rh) <= MAX_RESIZED_AREA * u64::from(res * res) {
                let resized = resize(image, rw, rh, config.resize_filter);
                image::imageops::crop_imm(&resized, left, top, res, res).to_image()
            } else {
                // A very wide or tall image (10000 x 10 would resize to ~2.9M x 292, gigabytes):
                // resample only the source region that lands in the crop. Same sampling
                // positions and filter support, so the same pixels up to rounding.
                let (sx, sy) = (f64::from(w) / f64::from(rw), f64::from(h) / f64::from(rh));
                let region = (
                    f64::from(left) * sx,
                    f64::from(top) * sy,
                    f64::from(res) * sx,
                    f64::from(res) * sy,
                );
                resize_region(image, Some(region), res, res, config.resize_filter)
            }
        }
    }
}

/// Above this many times the output's area, the resize-then-crop rule resamples only the
/// region it keeps.
const MAX_RESIZED_AREA: u64 = 16;

/// Antialiased resize (Pillow-style convolution: support scaled by the downscale factor).
pub fn resize(image: &RgbImage, width: u32, height: u32, filter: ResizeFilter) -> RgbImage {
    if image.dimensions() == (width, height) {
        return image.clone();
    }
    resize_region(image, None, width, height, filter)
}

/// Resize the `(left, top, width, height)` region of `image` (all of it if `None`; fractional
/// coordinates allowed) to `width x height`.
fn resize_region(
    image: &RgbImage,
    region: Option<(f64, f64, f64, f64)>,
    width: u32,
    height: u32,
    filter: ResizeFilter,
) -> RgbImage {
    let (w, h) = image.dimensions();
    let filter = match filter {
        ResizeFilter::Bicubic => FilterType::CatmullRom,
        ResizeFilter::Bilinear => FilterType::Bilinear,
    };
    // Borrowed, not copied: U8x3 has no alignment requirement.
    let src = ImageRef::new(w, h, image.as_raw(), PixelType::U8x3)
        // cannot fail: an RgbImage's buffer is exactly w * h * 3 bytes
        .expect("buffer length matches an RgbImage's dimensions");
    let mut dst = Image::new(width, height, PixelType::U8x3);
    let options = ResizeOptions::new().resize_alg(ResizeAlg::Convolution(filter));
    Resizer::new()
        .resize(
            &src,
            &mut dst,
            &match region {
                Some((left, top, cw, ch)) => options.crop(left, top, cw, ch),
                None => options,
            },
        )
        // cannot fail: both images are U8x3, a supported type, and a crop box lies inside the image
        .expect("source and destination share the U8x3 pixel type");
    // cannot fail: `dst` was allocated as width x height U8x3
    RgbImage::from_raw(width, height, dst.into_vec()).expect("destination buffer is width*height*3")
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

    fn torchvision_config() -> SourceConfig {
        crate::backbone::find("mobilenet-v2")
            .unwrap()
            .source_config(None)
    }

    fn pattern(w: u32, h: u32) -> RgbImage {
        RgbImage::from_fn(w, h, |x, y| {
            image::Rgb([
                (x * 7 % 256) as u8,
                (y * 13 % 256) as u8,
                ((x ^ y) % 256) as u8,
            ])
        })
    }

    #[test]
    fn a_very_wide_image_resamples_only_the_crop_and_gives_the_same_pixels() {
        let config = torchvision_config();
        let image = pattern(2400, 60);
        // The rule done the long way: the whole image to 10240 x 256, then the centre 224.
        let full = resize(&image, 10240, 256, config.resize_filter);
        let left = ((10240 - 224) as f64 / 2.0).round() as u32;
        let top = ((256 - 224) as f64 / 2.0).round() as u32;
        let expected = image::imageops::crop_imm(&full, left, top, 224, 224).to_image();
        let got = crop_and_resize(&image, &config);
        let worst = got
            .as_raw()
            .iter()
            .zip(expected.as_raw())
            .map(|(a, b)| a.abs_diff(*b))
            .max()
            .unwrap();
        assert!(worst <= 1, "differs by {worst} grey levels");
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

//! Training-time augmentation, applied on the fly after decoding: random resized crop,
//! horizontal flip, colour jitter. Each image draws from its own RNG, seeded from
//! (run seed, epoch, image index), so a run is reproducible and resumable whatever the thread
//! schedule. Validation never goes through here: it uses the source config's eval preprocessing.

use crate::rng::{RunRng, run_rng};
use image::RgbImage;
use rand::Rng;
use serde::{Deserialize, Serialize};

use super::preprocess::{Chw, normalize, resize};
use crate::backbone::SourceConfig;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Augment {
    /// The eval preprocessing (centre crop), no randomness.
    None,
    /// Crops of 35-100% of the area, flips, +-15% brightness / contrast / saturation.
    Light,
    /// Crops of 8-100% of the area (as ImageNet training), flips, +-40% colour jitter.
    Strong,
}

struct Ranges {
    area: (f64, f64),
    jitter: f32,
}

impl Augment {
    fn ranges(self) -> Option<Ranges> {
        match self {
            Augment::None => None,
            Augment::Light => Some(Ranges {
                area: (0.35, 1.0),
                jitter: 0.15,
            }),
            Augment::Strong => Some(Ranges {
                area: (0.08, 1.0),
                jitter: 0.4,
            }),
        }
    }
}

/// The RNG of image `index` in `epoch`.
pub fn image_rng(seed: u64, epoch: usize, index: usize) -> RunRng {
    run_rng(seed, ((epoch as u64) << 32) | index as u64)
}

/// `(x, y, width, height)` of a random crop covering `area` of the image with an aspect ratio
/// in [3/4, 4/3] (torchvision's RandomResizedCrop); the centre square after 10 misses.
pub fn random_crop(
    width: u32,
    height: u32,
    area: (f64, f64),
    rng: &mut impl Rng,
) -> (u32, u32, u32, u32) {
    let total = width as f64 * height as f64;
    for _ in 0..10 {
        let target = total * rng.random_range(area.0..=area.1);
        let ratio = rng.random_range((0.75f64).ln()..=(4.0f64 / 3.0).ln()).exp();
        let w = (target * ratio).sqrt().round() as u32;
        let h = (target / ratio).sqrt().round() as u32;
        if (1..=width).contains(&w) && (1..=height).contains(&h) {
            let x = rng.random_range(0..=width - w);
            let y = rng.random_range(0..=height - h);
            return (x, y, w, h);
        }
    }
    let side = width.min(height);
    ((width - side) / 2, (height - side) / 2, side, side)
}

/// Brightness, contrast and saturation, each by a random factor in `1 +- strength`.
fn jitter(image: &mut RgbImage, strength: f32, rng: &mut impl Rng) {
    let mut factor = || rng.random_range(1.0 - strength..=1.0 + strength);
    let (brightness, contrast, saturation) = (factor(), factor(), factor());
    let gray = |p: &[u8; 3]| 0.299 * p[0] as f32 + 0.587 * p[1] as f32 + 0.114 * p[2] as f32;
    let mean = image.pixels().map(|p| gray(&p.0)).sum::<f32>() / (image.len() / 3).max(1) as f32;
    for p in image.pixels_mut() {
        let g = gray(&p.0);
        for c in p.0.iter_mut() {
            let v = *c as f32 * brightness;
            let v = mean * brightness + (v - mean * brightness) * contrast;
            let v = g * brightness + (v - g * brightness) * saturation;
            *c = v.round().clamp(0.0, 255.0) as u8;
        }
    }
}

/// The network input for one training image: augmented, resized to the source resolution,
/// normalised as the source config says.
pub fn augmented(image: &RgbImage, config: &SourceConfig, level: Augment, rng: &mut RunRng) -> Chw {
    let Some(ranges) = level.ranges() else {
        return super::preprocess(image, config);
    };
    let (x, y, w, h) = random_crop(image.width(), image.height(), ranges.area, rng);
    let crop = image::imageops::crop_imm(image, x, y, w, h).to_image();
    let side = config.resolution as u32;
    let mut out = resize(&crop, side, side, config.resize_filter);
    if rng.random_bool(0.5) {
        image::imageops::flip_horizontal_in_place(&mut out);
    }
    jitter(&mut out, ranges.jitter, rng);
    normalize(&out, &config.normalization)
}

/// Hue rotation by `turn` of a full circle, in YIQ space (cheap and close to HSV's hue shift).
fn rotate_hue(image: &mut RgbImage, turn: f32) {
    let (sin, cos) = (turn * std::f32::consts::TAU).sin_cos();
    for p in image.pixels_mut() {
        let [r, g, b] = p.0.map(|c| c as f32);
        let y = 0.299 * r + 0.587 * g + 0.114 * b;
        let i = 0.596 * r - 0.274 * g - 0.322 * b;
        let q = 0.211 * r - 0.523 * g + 0.312 * b;
        let (i, q) = (i * cos - q * sin, i * sin + q * cos);
        let rgb = [
            y + 0.956 * i + 0.621 * q,
            y - 0.272 * i - 0.647 * q,
            y - 1.106 * i + 1.703 * q,
        ];
        p.0 = rgb.map(|c| c.round().clamp(0.0, 255.0) as u8);
    }
}

fn to_grayscale(image: &mut RgbImage) {
    for p in image.pixels_mut() {
        let [r, g, b] = p.0.map(|c| c as f32);
        let y = (0.299 * r + 0.587 * g + 0.114 * b)
            .round()
            .clamp(0.0, 255.0) as u8;
        p.0 = [y; 3];
    }
}

/// One SimCLR view (Chen et al. 2020, appendix A): a random resized crop of 8-100% of the area
/// at `resolution`, a flip with p 0.5, colour jitter with p 0.8 (brightness, contrast and
/// saturation +-80%, hue +-20%), grayscale with p 0.2, and, with `blur`, a Gaussian blur of
/// sigma 0.1-2.0 (scaled to the resolution) with p 0.5. Returns the crop `(x, y, w, h)` in the
/// original image and the normalised view.
pub fn simclr_view(
    image: &RgbImage,
    config: &SourceConfig,
    resolution: usize,
    blur: bool,
    rng: &mut RunRng,
) -> ((u32, u32, u32, u32), Chw) {
    let rect = random_crop(image.width(), image.height(), (0.08, 1.0), rng);
    let crop = image::imageops::crop_imm(image, rect.0, rect.1, rect.2, rect.3).to_image();
    let side = resolution as u32;
    let mut out = resize(&crop, side, side, config.resize_filter);
    if rng.random_bool(0.5) {
        image::imageops::flip_horizontal_in_place(&mut out);
    }
    if rng.random_bool(0.8) {
        jitter(&mut out, 0.8, rng);
        rotate_hue(&mut out, rng.random_range(-0.2..=0.2));
    }
    if rng.random_bool(0.2) {
        to_grayscale(&mut out);
    }
    if blur && rng.random_bool(0.5) {
        // SimCLR blurs 224 px views with sigma 0.1-2.0 (kernel 10% of the side).
        let sigma = rng.random_range(0.1f32..=2.0) * resolution as f32 / 224.0;
        out = image::imageops::blur(&out, sigma);
    }
    (rect, normalize(&out, &config.normalization))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crops_stay_inside_and_cover_the_asked_area() {
        let mut rng = image_rng(0, 0, 0);
        for _ in 0..200 {
            let (x, y, w, h) = random_crop(640, 480, (0.35, 1.0), &mut rng);
            assert!(x + w <= 640 && y + h <= 480);
            let area = (w * h) as f64 / (640.0 * 480.0);
            assert!(area > 0.3 && area <= 1.0, "{area}");
        }
    }

    #[test]
    fn two_simclr_views_of_one_image_are_different_crops() {
        let config = crate::backbone::find("efficientnet-lite0")
            .unwrap()
            .source_config(None);
        let image = RgbImage::from_fn(320, 240, |x, y| {
            image::Rgb([(x % 256) as u8, (y % 256) as u8, ((x + y) % 256) as u8])
        });
        for index in 0..20 {
            let (rect_a, a) =
                simclr_view(&image, &config, 64, true, &mut image_rng(1, 1, 2 * index));
            let (rect_b, b) = simclr_view(
                &image,
                &config,
                64,
                true,
                &mut image_rng(1, 1, 2 * index + 1),
            );
            assert_ne!(rect_a, rect_b, "view pair {index} has the same crop");
            assert_eq!(a.len(), 3 * 64 * 64);
            assert_ne!(a, b, "view pair {index} has the same pixels");
            // The same (seed, epoch, view) gives the same view: resuming replays the run.
            let (rect_again, again) =
                simclr_view(&image, &config, 64, true, &mut image_rng(1, 1, 2 * index));
            assert_eq!((rect_a, &a), (rect_again, &again));
        }
    }

    #[test]
    fn the_same_seed_epoch_and_index_give_the_same_view_and_others_differ() {
        let a = random_crop(640, 480, (0.08, 1.0), &mut image_rng(7, 3, 11));
        let b = random_crop(640, 480, (0.08, 1.0), &mut image_rng(7, 3, 11));
        let c = random_crop(640, 480, (0.08, 1.0), &mut image_rng(7, 4, 11));
        assert_eq!(a, b);
        assert_ne!(a, c);
    }
}

//! Training-time augmentation, applied on the fly after decoding: random resized crop,
//! horizontal flip, colour jitter. Each image draws from its own RNG, seeded from
//! (run seed, epoch, image index), so a run is reproducible and resumable whatever the thread
//! schedule. Validation never goes through here: it uses the source config's eval preprocessing.

use image::RgbImage;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
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
pub fn image_rng(seed: u64, epoch: usize, index: usize) -> ChaCha8Rng {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(((epoch as u64) << 32) | index as u64);
    rng
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
pub fn augmented(
    image: &RgbImage,
    config: &SourceConfig,
    level: Augment,
    rng: &mut ChaCha8Rng,
) -> Chw {
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
    fn the_same_seed_epoch_and_index_give_the_same_view_and_others_differ() {
        let a = random_crop(640, 480, (0.08, 1.0), &mut image_rng(7, 3, 11));
        let b = random_crop(640, 480, (0.08, 1.0), &mut image_rng(7, 3, 11));
        let c = random_crop(640, 480, (0.08, 1.0), &mut image_rng(7, 4, 11));
        assert_eq!(a, b);
        assert_ne!(a, c);
    }
}

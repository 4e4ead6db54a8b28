//! Unusable photos, scored while decoding: one read and one decode of each file gives its header
//! facts ([`ImageFacts`]), its perceptual hash (for the leakage check) and the quality scores.
//!
//! The scores follow CleanVision (cleanlab/cleanvision, `issue_managers/image_property.py`):
//! each is in [0, 1], higher is better, and an image is flagged when its score is below the
//! threshold. Where graft differs, it says why:
//! - dark: the 99th percentile of pixel brightness `sqrt(0.241 R^2 + 0.691 G^2 + 0.068 B^2) / 255`
//!   (an image whose brightest 1% is still dark); threshold 0.32.
//! - bright: `1 -` the 5th percentile of brightness (even the darkest 5% is light); 0.05.
//! - blurry: on a copy downscaled to 64 px on its longer side (CleanVision's
//!   `MAX_RESOLUTION_FOR_BLURRY_DETECTION`; the only score computed on a downscaled copy), in
//!   Pillow's luma, the standard deviation of Pillow's FIND_EDGES filter (a Laplacian) over the
//!   interior pixels (Pillow copies the border unfiltered, see [`find_edges`]), `1 - exp(-std / 100)`, plus `1 - exp(-std(histogram) / 100)` when that exceeds
//!   0.18 (a flat image has a peaked histogram and is not "blurry" but low-information); 0.29.
//! - low information: `min(1, entropy / 10)`, the entropy in bits of the pixel-value histogram
//!   (Pillow's `Image.entropy`: the three channels' 768 bins, 256 for a file stored gray); 0.3.
//! - grayscale: CleanVision flags only files stored gray (Pillow mode `L`), so a gray photo saved
//!   as RGB passes. graft measures the pixels: the mean over pixels of `(max - min) / 255` of the
//!   three channels, flagged below 0.01 (a stored-gray file scores 0; JPEG rounding moves gray
//!   pixels by a level or two, far below it).
//! - odd aspect ratio: `min(w/h, h/w)`, flagged below 1/3: graft's centre crop keeps the middle
//!   third of a 3:1 image (CleanVision's default is 0.35).
//! - odd size: `sqrt(w * h)` against the data set's own sizes, CleanVision's IQR rule: the score
//!   is `1 - |size - mid| / gap` clipped to [0, 1], `gap` the width of
//!   `[Q1 - 3 IQR, Q3 + 3 IQR]` and `mid` its middle, flagged below 0.5 (outside that range).
//!   When Q1 = Q3 CleanVision flags every size but the common one; graft flags sizes below half
//!   or above 1.5 times it (a photo cropped by a few pixels is not odd).

use std::path::PathBuf;

use image::{DynamicImage, RgbImage};
use image_hasher::ImageHash;
use rayon::prelude::*;
use serde::Serialize;

use super::{Finding, Severity};
use crate::backbone::ResizeFilter;
use crate::data::decode::{ImageFacts, StoredColor, probe_and_decode};
use crate::data::preprocess::resize;
use crate::data::{DecodeError, DecodeLimits};

/// Thresholds of the quality checks (a score below its threshold is flagged).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct QualityThresholds {
    pub dark: f64,
    pub bright: f64,
    pub blurry: f64,
    pub low_information: f64,
    pub grayscale: f64,
    pub odd_aspect_ratio: f64,
    /// The IQR factor of the odd-size rule (its score threshold is 0.5).
    pub odd_size_iqr_factor: f64,
}

impl Default for QualityThresholds {
    fn default() -> Self {
        Self {
            dark: 0.32,
            bright: 0.05,
            blurry: 0.29,
            low_information: 0.3,
            grayscale: 0.01,
            odd_aspect_ratio: 1.0 / 3.0,
            odd_size_iqr_factor: 3.0,
        }
    }
}

/// The scores of one image (each in [0, 1], higher is better), except `size`, the square root
/// of its area in pixels, scored against the others' in [`quality_findings`].
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct QualityScores {
    pub dark: f64,
    pub bright: f64,
    pub blurry: f64,
    pub low_information: f64,
    pub grayscale: f64,
    pub odd_aspect_ratio: f64,
    pub size: f64,
}

/// What one read of an image file gives.
#[derive(Debug, Clone)]
pub struct Scanned {
    pub facts: ImageFacts,
    pub hash: ImageHash,
    pub scores: QualityScores,
}

/// Every file read and decoded once, in parallel: header facts, perceptual hash (pHash: DCT +
/// median, 64 bits) and quality scores; a file that cannot be decoded gets its error.
pub fn scan_all(paths: &[PathBuf], limits: DecodeLimits) -> Vec<Result<Scanned, DecodeError>> {
    let hasher = super::leakage::phasher();
    paths
        .par_iter()
        .map(|path| {
            let (facts, rgb) = probe_and_decode(path, limits)?;
            let scores = scores(&rgb, facts.color);
            let hash = hasher.hash_image(&DynamicImage::ImageRgb8(rgb));
            Ok(Scanned {
                facts,
                hash,
                scores,
            })
        })
        .collect()
}

/// The quality scores of a decoded image; `stored` is the colour model of its file.
pub fn scores(rgb: &RgbImage, stored: StoredColor) -> QualityScores {
    let (w, h) = rgb.dimensions();
    let (p5, p99) = brightness_percentiles(rgb);
    let gray_file = matches!(stored, StoredColor::Gray | StoredColor::GrayAlpha);
    QualityScores {
        dark: p99,
        bright: 1.0 - p5,
        blurry: blurriness(rgb),
        low_information: (entropy(rgb, gray_file) / 10.0).min(1.0),
        grayscale: if gray_file { 0.0 } else { colourfulness(rgb) },
        odd_aspect_ratio: f64::from(w.min(h)) / f64::from(w.max(h).max(1)),
        size: (f64::from(w) * f64::from(h)).sqrt(),
    }
}

/// The 5th and 99th percentiles of pixel brightness, interpolated as numpy's `percentile`.
fn brightness_percentiles(rgb: &RgbImage) -> (f64, f64) {
    // 1000 * brightness^2 * 255^2, an integer: sorting it sorts brightness exactly.
    let mut keys: Vec<u32> = rgb
        .pixels()
        .map(|p| {
            let [r, g, b] = p.0.map(u32::from);
            241 * r * r + 691 * g * g + 68 * b * b
        })
        .collect();
    let brightness = |key: u32| (f64::from(key) / 1000.0).sqrt() / 255.0;
    let mut percentile = |p: f64| {
        let position = p * (keys.len() - 1) as f64;
        let lo = position.floor() as usize;
        let (_, &mut low, above) = keys.select_nth_unstable(lo);
        let high = if position > lo as f64 {
            // The next order statistic is the smallest of those above.
            above.iter().copied().min().unwrap_or(low)
        } else {
            low
        };
        let (low, high) = (brightness(low), brightness(high));
        low + (high - low) * (position - lo as f64)
    };
    (percentile(0.05), percentile(0.99))
}

/// Pillow's `convert("L")`: ITU-R 601-2 luma, rounded.
fn luma(rgb: &RgbImage) -> Vec<u8> {
    rgb.pixels()
        .map(|p| {
            let [r, g, b] = p.0.map(u32::from);
            ((r * 19595 + g * 38470 + b * 7471 + 0x8000) >> 16) as u8
        })
        .collect()
}

/// CleanVision's blurriness score of `rgb` (see the module's documentation).
fn blurriness(rgb: &RgbImage) -> f64 {
    const MAX_SIDE: f64 = 64.0;
    let (w, h) = rgb.dimensions();
    let ratio = f64::from(w.max(h)) / MAX_SIDE;
    let small;
    let image = if ratio > 1.0 {
        let side = |s: u32| ((f64::from(s) / ratio).floor() as u32).max(1);
        small = resize(rgb, side(w), side(h), ResizeFilter::Bicubic);
        &small
    } else {
        rgb
    };
    let (w, h) = (image.width() as usize, image.height() as usize);
    let gray = luma(image);
    let edges = find_edges(&gray, w, h);
    let std = |values: &mut dyn Iterator<Item = f64>| {
        let (mut n, mut sum, mut sum2) = (0.0, 0.0, 0.0);
        for v in values {
            n += 1.0;
            sum += v;
            sum2 += v * v;
        }
        if n == 0.0 {
            return 0.0;
        }
        let mean = sum / n;
        (sum2 / n - mean * mean).max(0.0).sqrt()
    };
    let edge_std = std(&mut edges.iter().map(|&v| f64::from(v)));
    let mut histogram = [0u32; 256];
    gray.iter().for_each(|&v| histogram[usize::from(v)] += 1);
    let histogram_std = std(&mut histogram.iter().map(|&v| f64::from(v)));
    let blur = 1.0 - (-edge_std * 0.01).exp();
    let mut spread = 1.0 - (-histogram_std * 0.01).exp();
    if spread <= 0.18 {
        spread = 0.0;
    }
    (blur + spread).min(1.0)
}

/// Pillow's `ImageFilter.FIND_EDGES` on a `w x h` 8-bit image, the interior pixels only: the
/// 3x3 kernel `[-1 -1 -1; -1 8 -1; -1 -1 -1]`, clipped to 0..=255 and truncated as Pillow does.
/// Pillow copies the border pixels unfiltered, so their brightness, not their edges, enters
/// CleanVision's variance (a blurred photo in a light frame scores sharp): graft leaves them out.
fn find_edges(gray: &[u8], w: usize, h: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(w.saturating_sub(2) * h.saturating_sub(2));
    for y in 1..h.saturating_sub(1) {
        for x in 1..w.saturating_sub(1) {
            let mut sum = 0i32;
            for dy in 0..3 {
                for dx in 0..3 {
                    sum -= i32::from(gray[(y + dy - 1) * w + x + dx - 1]);
                }
            }
            sum += 9 * i32::from(gray[y * w + x]);
            out.push(sum.clamp(0, 255) as u8);
        }
    }
    out
}

/// Entropy in bits of the histogram of pixel values: of the three channels' 768 bins together,
/// or of one channel's 256 for a file stored gray (what Pillow's `Image.entropy` reads there).
fn entropy(rgb: &RgbImage, gray_file: bool) -> f64 {
    let mut histogram = [0u64; 768];
    for p in rgb.pixels() {
        if gray_file {
            histogram[usize::from(p.0[0])] += 1;
        } else {
            for c in 0..3 {
                histogram[c * 256 + usize::from(p.0[c])] += 1;
            }
        }
    }
    let total: u64 = histogram.iter().sum();
    histogram
        .iter()
        .filter(|&&n| n > 0)
        .map(|&n| {
            let p = n as f64 / total as f64;
            -p * p.log2()
        })
        .sum()
}

/// Mean over pixels of the spread of the three channels, as a fraction of 255.
fn colourfulness(rgb: &RgbImage) -> f64 {
    let total: u64 = rgb
        .pixels()
        .map(|p| {
            let [r, g, b] = p.0;
            u64::from(r.max(g).max(b) - r.min(g).min(b))
        })
        .sum();
    total as f64 / (rgb.pixels().len().max(1) as f64 * 255.0)
}

/// One image's score on a check, against the check's threshold.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Flagged {
    #[serde(serialize_with = "crate::util::lossy_path")]
    pub file: PathBuf,
    pub score: f64,
}

/// One quality check: its threshold and the images below it, worst first.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct QualityCheck {
    /// The finding's check name.
    pub check: &'static str,
    pub threshold: f64,
    pub images: Vec<Flagged>,
}

/// The quality checks over all readable images (`scans`: path and scores), as the JSON shows
/// them, and their findings.
pub fn quality_checks(
    scans: &[(&PathBuf, &QualityScores)],
    thresholds: &QualityThresholds,
) -> (Vec<QualityCheck>, Vec<Finding>) {
    let size_score = odd_size_scores(
        &scans.iter().map(|(_, s)| s.size).collect::<Vec<_>>(),
        thresholds.odd_size_iqr_factor,
    );
    let t = thresholds;
    let specs: [(&'static str, f64, Score); 7] = [
        ("dark", t.dark, &|i| scans[i].1.dark),
        ("bright", t.bright, &|i| scans[i].1.bright),
        ("blurry", t.blurry, &|i| scans[i].1.blurry),
        ("low-information", t.low_information, &|i| {
            scans[i].1.low_information
        }),
        ("grayscale", t.grayscale, &|i| scans[i].1.grayscale),
        ("aspect-ratio", t.odd_aspect_ratio, &|i| {
            scans[i].1.odd_aspect_ratio
        }),
        ("odd-size", 0.5, &|i| size_score[i]),
    ];
    let mut checks = Vec::new();
    let mut findings = Vec::new();
    for (check, threshold, score) in specs {
        let mut images: Vec<Flagged> = (0..scans.len())
            .filter(|&i| score(i) < threshold)
            .map(|i| Flagged {
                file: scans[i].0.clone(),
                score: score(i),
            })
            .collect();
        images.sort_by(|a, b| a.score.total_cmp(&b.score));
        if !images.is_empty() {
            findings.push(finding(check, threshold, &images, thresholds));
        }
        checks.push(QualityCheck {
            check,
            threshold,
            images,
        });
    }
    (checks, findings)
}

/// One check's score of the `i`-th image.
type Score<'a> = &'a dyn Fn(usize) -> f64;

/// CleanVision's odd-size score of each `size` among all of them (`iqr_factor` 3 there).
pub fn odd_size_scores(sizes: &[f64], iqr_factor: f64) -> Vec<f64> {
    let mut sorted = sizes.to_vec();
    sorted.sort_by(f64::total_cmp);
    let q1 = super::neighbours::quantile(&sorted, 0.25);
    let q3 = super::neighbours::quantile(&sorted, 0.75);
    let (low, high) = (q1 - iqr_factor * (q3 - q1), q3 + iqr_factor * (q3 - q1));
    let (mid, gap) = ((low + high) / 2.0, high - low);
    sizes
        .iter()
        .map(|&s| {
            // Q1 = Q3 (most images one size): CleanVision divides by that size and then flags
            // any other size; graft keeps the 0.5 threshold, so below half or above 1.5 times it.
            let norm = if gap > 0.0 { gap } else { mid.max(1e-12) };
            1.0 - ((s - mid).abs() / norm).clamp(0.0, 1.0)
        })
        .collect()
}

fn finding(
    check: &'static str,
    threshold: f64,
    images: &[Flagged],
    t: &QualityThresholds,
) -> Finding {
    let (severity, what, why, action): (Severity, String, &'static str, &str) = match check {
        "dark" => (
            Severity::Warning,
            "are too dark (99th percentile of brightness".into(),
            "the backbone sees little but noise in an almost black photo",
            "retake or brighten these photos, or drop them",
        ),
        "bright" => (
            Severity::Warning,
            "are too bright (1 - 5th percentile of brightness".into(),
            "an overexposed photo has lost the detail the features rely on",
            "retake these photos, or drop them",
        ),
        "blurry" => (
            Severity::Warning,
            "are blurry (edge strength at 64 px".into(),
            "fine texture and edges are what tells many classes apart, and a blurred photo has none",
            "drop blurred or out-of-focus photos, or keep them only if blurry photos are expected at prediction time",
        ),
        "low-information" => (
            Severity::Warning,
            "carry little information (pixel-histogram entropy / 10".into(),
            "a nearly uniform image (blank, a solid colour, a placeholder) shows no object of its class",
            "remove these images",
        ),
        "grayscale" => (
            Severity::Info,
            "are grayscale (mean channel spread".into(),
            "the backbone was trained on colour photos; graft repeats the gray channel, which works but is a domain shift",
            "fine if the whole domain is grayscale; otherwise check these are not mistakes",
        ),
        "aspect-ratio" => (
            Severity::Warning,
            "have an odd aspect ratio (shorter / longer side".into(),
            "the centre crop keeps only the middle of such images, and the object may be outside it",
            "crop these images around the object, or pad them to a square",
        ),
        _ => (
            Severity::Warning,
            format!(
                "have an odd size for this data set (sqrt(width x height) outside Q1 - {0} IQR .. Q3 + {0} IQR; score",
                t.odd_size_iqr_factor
            ),
            "an image much smaller or larger than the rest is often a thumbnail, an icon or a scan that does not belong",
            "look at these images; replace thumbnails by the full photos",
        ),
    };
    Finding {
        severity,
        check,
        measured: format!("{} images {what} below {threshold:.3})", images.len()),
        why,
        action: action.into(),
        files: images.iter().map(|f| f.file.clone()).collect(),
        details: images
            .iter()
            .map(|f| {
                format!(
                    "{} (score {:.3} < {threshold:.3})",
                    f.file.display(),
                    f.score
                )
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::Rgb;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    /// A colourful photo-like image: 8-pixel patches of random colours (edges that survive
    /// the 64-pixel downscale of the blur score) over a gradient.
    fn photo(w: u32, h: u32) -> RgbImage {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let (cols, rows) = (w.div_ceil(8), h.div_ceil(8));
        let patches: Vec<[u32; 3]> = (0..cols * rows)
            .map(|_| [0; 3].map(|_: u32| rng.random_range(0u32..120)))
            .collect();
        RgbImage::from_fn(w, h, |x, y| {
            let p = patches[((y / 8) * cols + x / 8) as usize];
            Rgb([
                (40 + x * 90 / w + p[0]) as u8,
                (30 + y * 90 / h + p[1]) as u8,
                (120 - x * 60 / w + p[2]) as u8,
            ])
        })
    }

    fn flat(w: u32, h: u32, value: [u8; 3]) -> RgbImage {
        RgbImage::from_pixel(w, h, Rgb(value))
    }

    fn flagged(scores: &QualityScores) -> Vec<&'static str> {
        let path = PathBuf::from("x.png");
        let (checks, _) = quality_checks(&[(&path, scores)], &QualityThresholds::default());
        checks
            .iter()
            .filter(|c| !c.images.is_empty())
            .map(|c| c.check)
            .collect()
    }

    #[test]
    fn a_photo_is_not_flagged() {
        let s = scores(&photo(256, 192), StoredColor::Rgb);
        assert!(flagged(&s).is_empty(), "{s:?}");
    }

    #[test]
    fn a_black_image_is_dark_and_a_white_one_bright() {
        let black = scores(&flat(100, 80, [0, 0, 0]), StoredColor::Rgb);
        assert_eq!(black.dark, 0.0);
        assert!(flagged(&black).contains(&"dark"));
        assert!(!flagged(&black).contains(&"bright"));
        let white = scores(&flat(100, 80, [255, 255, 255]), StoredColor::Rgb);
        assert!(white.bright.abs() < 1e-9, "{white:?}");
        assert!(flagged(&white).contains(&"bright"));
        assert!(!flagged(&white).contains(&"dark"));
        // A dark photo: its brightest pixel well below 0.32.
        let dim = RgbImage::from_fn(100, 80, |x, y| Rgb([(x % 40) as u8, (y % 30) as u8, 20]));
        assert!(flagged(&scores(&dim, StoredColor::Rgb)).contains(&"dark"));
    }

    #[test]
    fn brightness_percentiles_interpolate_as_numpy() {
        // Pixels of gray levels 0, 10, ..., 990 / 4 (each brightness = level / 255).
        let levels: Vec<u8> = (0..100).map(|i| (i * 255 / 99) as u8).collect();
        let image = RgbImage::from_fn(100, 1, |x, _| {
            let v = levels[x as usize];
            Rgb([v, v, v])
        });
        let (p5, p99) = brightness_percentiles(&image);
        let level = |i: usize| f64::from(levels[i]) / 255.0;
        // numpy: position 0.05 * 99 = 4.95 and 0.99 * 99 = 98.01.
        assert!((p5 - (level(4) + 0.95 * (level(5) - level(4)))).abs() < 1e-9);
        assert!((p99 - (level(98) + 0.01 * (level(99) - level(98)))).abs() < 1e-9);
    }

    #[test]
    fn a_blurred_copy_scores_blurrier_than_its_original() {
        let sharp = photo(256, 192);
        let blurred = image::imageops::blur(&sharp, 10.0);
        let (s, b) = (
            scores(&sharp, StoredColor::Rgb).blurry,
            scores(&blurred, StoredColor::Rgb).blurry,
        );
        assert!(b < s, "blurred {b} vs sharp {s}");
        assert!(
            b < QualityThresholds::default().blurry,
            "blurred {b}, sharp {s}"
        );
    }

    #[test]
    fn a_constant_image_has_low_information() {
        let s = scores(&flat(64, 64, [120, 80, 200]), StoredColor::Rgb);
        // Three equally full bins of 768: log2(3) bits.
        assert!((s.low_information - 3f64.log2() / 10.0).abs() < 1e-12);
        assert!(flagged(&s).contains(&"low-information"));
        // A flat image is low-information, not blurry (its histogram is one spike).
        assert!(!flagged(&s).contains(&"blurry"));
    }

    #[test]
    fn a_gray_rgb_image_is_grayscale() {
        let colour = photo(64, 48);
        let gray = RgbImage::from_fn(64, 48, |x, y| {
            let [r, g, b] = colour.get_pixel(x, y).0.map(u32::from);
            let v = ((r + g + b) / 3) as u8;
            Rgb([v, v, v])
        });
        let s = scores(&gray, StoredColor::Rgb);
        assert_eq!(s.grayscale, 0.0);
        assert!(flagged(&s).contains(&"grayscale"));
        assert!(!flagged(&scores(&colour, StoredColor::Rgb)).contains(&"grayscale"));
    }

    #[test]
    fn a_ten_to_one_image_has_an_odd_aspect_ratio() {
        let s = scores(&photo(500, 50), StoredColor::Rgb);
        assert!((s.odd_aspect_ratio - 0.1).abs() < 1e-12);
        assert!(flagged(&s).contains(&"aspect-ratio"));
        assert!(!flagged(&scores(&photo(300, 200), StoredColor::Rgb)).contains(&"aspect-ratio"));
    }

    #[test]
    fn a_thumbnail_among_photos_has_an_odd_size() {
        let mut sizes: Vec<f64> = (0..20).map(|i| 400.0 + f64::from(i) * 5.0).collect();
        sizes.push(32.0);
        let s = odd_size_scores(&sizes, 3.0);
        let odd: Vec<usize> = (0..sizes.len()).filter(|&i| s[i] < 0.5).collect();
        assert_eq!(odd, vec![20]);
        // Most sizes equal (IQR 0): beyond 1.5 times that size is odd, 1.2 times is not.
        let mut sizes = vec![100.0; 8];
        sizes.extend([120.0, 160.0]);
        let s = odd_size_scores(&sizes, 3.0);
        assert_eq!(s[..8], [1.0; 8]);
        assert!(s[8] > 0.5 && s[9] < 0.5, "{s:?}");
    }

    #[test]
    fn the_scan_reads_facts_hash_and_scores_from_one_decode() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a.png"), dir.path().join("b.png"));
        photo(80, 60).save(&a).unwrap();
        std::fs::write(&b, b"not an image").unwrap();
        let scanned = scan_all(&[a.clone(), b.clone()], DecodeLimits::default());
        let first = scanned[0].as_ref().unwrap();
        assert_eq!((first.facts.width, first.facts.height), (80, 60));
        assert_eq!(first.facts.color, StoredColor::Rgb);
        assert_eq!(first.scores, scores(&photo(80, 60), StoredColor::Rgb));
        let again = crate::doctor::leakage::perceptual_hashes(&[a], DecodeLimits::default());
        assert_eq!(Some(first.hash.clone()), again[0]);
        assert_eq!(scanned[1].as_ref().unwrap_err().path, b);
    }
}

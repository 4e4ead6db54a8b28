//! `graft doctor`'s flags for the neighbour checks (outliers, duplicates) and the image-quality
//! checks (unusable photos).

use anyhow::{Result, bail};
use clap::Args;

use graft::doctor::DoctorOptions;
use graft::doctor::neighbours::NeighbourOptions;
use graft::doctor::quality::QualityThresholds;

#[derive(Debug, Args)]
pub struct NeighbourArgs {
    /// Nearest neighbours per image for the outlier check (exact cosine kNN over all images).
    #[arg(long, default_value_t = NeighbourOptions::default().k, value_name = "K")]
    pub neighbours: usize,

    /// Tukey fence factor: an image is an outlier when its mean distance to its K nearest
    /// neighbours is above Q3 + FACTOR x IQR of all images'.
    #[arg(long, default_value_t = NeighbourOptions::default().iqr_factor, value_name = "FACTOR")]
    pub outlier_iqr: f64,
}

#[derive(Debug, Args)]
pub struct QualityArgs {
    /// Too dark below this 99th percentile of brightness (0-1).
    #[arg(long, default_value_t = QualityThresholds::default().dark, value_name = "SCORE")]
    pub dark_threshold: f64,

    /// Too bright below this 1 - 5th percentile of brightness (0-1).
    #[arg(long, default_value_t = QualityThresholds::default().bright, value_name = "SCORE")]
    pub bright_threshold: f64,

    /// Blurry below this edge-strength score (0-1, at 64 px).
    #[arg(long, default_value_t = QualityThresholds::default().blurry, value_name = "SCORE")]
    pub blurry_threshold: f64,

    /// Low information below this histogram entropy / 10 (0-1).
    #[arg(long, default_value_t = QualityThresholds::default().low_information, value_name = "SCORE")]
    pub low_information_threshold: f64,

    /// Grayscale below this mean spread of the three channels (0-1).
    #[arg(long, default_value_t = QualityThresholds::default().grayscale, value_name = "SCORE")]
    pub grayscale_threshold: f64,

    /// Odd aspect ratio below this shorter / longer side.
    #[arg(long, default_value_t = 1.0 / DoctorOptions::default().max_aspect_ratio, value_name = "SCORE")]
    pub aspect_ratio_threshold: f64,

    /// Odd size outside Q1 - FACTOR x IQR .. Q3 + FACTOR x IQR of sqrt(width x height).
    #[arg(long, default_value_t = QualityThresholds::default().odd_size_iqr_factor, value_name = "FACTOR")]
    pub odd_size_iqr: f64,
}

impl NeighbourArgs {
    /// The options, with the near-duplicate thresholds shared with the leakage check.
    pub fn options(
        &self,
        duplicate_cosine: f32,
        duplicate_hash_bits: u32,
    ) -> Result<NeighbourOptions> {
        if self.neighbours == 0 {
            bail!("--neighbours must be at least 1");
        }
        if self.outlier_iqr.is_nan() || self.outlier_iqr < 0.0 {
            bail!(
                "--outlier-iqr must be a number >= 0, not {}",
                self.outlier_iqr
            );
        }
        Ok(NeighbourOptions {
            k: self.neighbours,
            iqr_factor: self.outlier_iqr,
            duplicate_cosine,
            duplicate_hash_bits,
            ..NeighbourOptions::default()
        })
    }
}

impl QualityArgs {
    pub fn thresholds(&self) -> Result<QualityThresholds> {
        for (flag, value) in [
            ("--dark-threshold", self.dark_threshold),
            ("--bright-threshold", self.bright_threshold),
            ("--blurry-threshold", self.blurry_threshold),
            (
                "--low-information-threshold",
                self.low_information_threshold,
            ),
            ("--grayscale-threshold", self.grayscale_threshold),
            ("--aspect-ratio-threshold", self.aspect_ratio_threshold),
        ] {
            if !(0.0..=1.0).contains(&value) {
                bail!("{flag} is a score from 0 to 1, not {value}");
            }
        }
        if self.odd_size_iqr.is_nan() || self.odd_size_iqr < 0.0 {
            bail!(
                "--odd-size-iqr must be a number >= 0, not {}",
                self.odd_size_iqr
            );
        }
        Ok(QualityThresholds {
            dark: self.dark_threshold,
            bright: self.bright_threshold,
            blurry: self.blurry_threshold,
            low_information: self.low_information_threshold,
            grayscale: self.grayscale_threshold,
            odd_aspect_ratio: self.aspect_ratio_threshold,
            odd_size_iqr_factor: self.odd_size_iqr,
        })
    }
}

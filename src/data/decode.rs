//! Decoding image files into RGB8, with limits that make hostile files fail fast and
//! EXIF orientation applied. Grayscale, palette and alpha images become plain RGB
//! (alpha is dropped, as Pillow's `convert("RGB")` does).

use std::io::BufReader;
use std::path::{Path, PathBuf};

use image::{DynamicImage, ImageDecoder, ImageReader, RgbImage};

/// Safety limits for decoding untrusted files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecodeLimits {
    /// Largest `width * height` accepted (Pillow's decompression-bomb threshold is ~89 MP).
    pub max_pixels: u64,
    /// Largest file accepted, in bytes.
    pub max_file_bytes: u64,
}

impl Default for DecodeLimits {
    fn default() -> Self {
        Self {
            max_pixels: 100_000_000,
            max_file_bytes: 256 * 1024 * 1024,
        }
    }
}

/// Why one image could not be used; `Display` is one line naming the file.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{}: {reason}", path.display())]
pub struct DecodeError {
    pub path: PathBuf,
    pub reason: String,
}

fn fail(path: &Path, reason: impl Into<String>) -> DecodeError {
    DecodeError {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

/// Decode `path` into an upright RGB8 image.
pub fn decode_rgb(path: &Path, limits: DecodeLimits) -> Result<RgbImage, DecodeError> {
    let meta = std::fs::metadata(path).map_err(|e| fail(path, e.to_string()))?;
    if !meta.is_file() {
        return Err(fail(path, "not a regular file"));
    }
    if meta.len() == 0 {
        return Err(fail(path, "the file is empty"));
    }
    if meta.len() > limits.max_file_bytes {
        return Err(fail(
            path,
            format!(
                "the file is {} bytes, over the limit of {}",
                meta.len(),
                limits.max_file_bytes
            ),
        ));
    }
    let file = std::fs::File::open(path).map_err(|e| fail(path, e.to_string()))?;
    let mut reader = ImageReader::new(BufReader::new(file))
        .with_guessed_format()
        .map_err(|e| fail(path, e.to_string()))?;
    if reader.format().is_none() {
        return Err(fail(
            path,
            "not an image format graft can read (JPEG, PNG, BMP, GIF, WebP)",
        ));
    }
    let mut image_limits = image::Limits::default();
    // Decoded RGBA16 is the largest buffer a decoder may ask for: 8 bytes a pixel.
    image_limits.max_alloc = Some(limits.max_pixels.saturating_mul(8));
    reader.limits(image_limits);
    let mut decoder = reader
        .into_decoder()
        .map_err(|e| fail(path, format!("cannot decode: {e}")))?;
    let (w, h) = decoder.dimensions();
    let pixels = u64::from(w) * u64::from(h);
    if pixels > limits.max_pixels {
        return Err(fail(
            path,
            format!(
                "{w}x{h} is {pixels} pixels, over the limit of {} (possible decompression bomb)",
                limits.max_pixels
            ),
        ));
    }
    if w == 0 || h == 0 {
        return Err(fail(path, format!("the image is {w}x{h}")));
    }
    // A broken EXIF block is not worth losing the image: treat it as "no rotation".
    let orientation = decoder
        .orientation()
        .unwrap_or(image::metadata::Orientation::NoTransforms);
    let mut image = DynamicImage::from_decoder(decoder)
        .map_err(|e| fail(path, format!("cannot decode: {e}")))?;
    image.apply_orientation(orientation);
    Ok(image.into_rgb8())
}

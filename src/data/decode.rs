//! Decoding image files into RGB8, with limits that make hostile files fail fast and
//! EXIF orientation applied. Grayscale, palette and alpha images become plain RGB
//! (alpha is dropped, as Pillow's `convert("RGB")` does).

use std::io::{BufReader, Cursor};
use std::path::{Path, PathBuf};

use image::{DynamicImage, ImageDecoder, ImageFormat, ImageReader, RgbImage};

use super::complete;
use crate::backbone::{DecodeMode, SourceConfig};

/// Safety limits for decoding untrusted files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecodeLimits {
    /// Largest `width * height` accepted (Pillow's decompression-bomb threshold is ~89 MP).
    pub max_pixels: u64,
    /// Largest file accepted, in bytes.
    pub max_file_bytes: u64,
    /// Keep a JPEG or PNG whose image data is cut short (decoded with its missing part grey)
    /// instead of refusing it; a file with no image data at all is refused either way. Default: off, unless the process turned it on
    /// ([`super::complete::set_allow_truncated`], the command line's `--allow-truncated`).
    pub allow_truncated: bool,
}

impl Default for DecodeLimits {
    fn default() -> Self {
        Self {
            max_pixels: 100_000_000,
            max_file_bytes: 256 * 1024 * 1024,
            allow_truncated: super::complete::allow_truncated_default(),
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
    decode_at_least(path, limits, None)
}

/// Decode `path` for `config`'s eval preprocessing: as [`decode_rgb`], except that with
/// [`DecodeMode::DctScaled`] a JPEG at least twice the size the resize needs is decoded
/// scaled in the DCT domain (see [`DecodeMode`]).
pub fn decode_for(
    path: &Path,
    config: &SourceConfig,
    limits: DecodeLimits,
) -> Result<RgbImage, DecodeError> {
    let short = (config.decode == DecodeMode::DctScaled).then(|| config.needed_short_side());
    decode_at_least(path, limits, short)
}

/// Decode `bytes` (an image file's contents, from a request or memory) as [`decode_for`]
/// decodes a file; `name` is what errors call it (e.g. `request 7, part 2 (rose.jpg)`).
pub fn decode_bytes_for(
    name: &Path,
    bytes: &[u8],
    config: &SourceConfig,
    limits: DecodeLimits,
) -> Result<RgbImage, DecodeError> {
    let short = (config.decode == DecodeMode::DctScaled).then(|| config.needed_short_side());
    decode_bytes_at_least(name, bytes, limits, short)
}

/// [`decode_rgb`], decoding a JPEG scaled when its short side stays at least `short` pixels.
fn decode_at_least(
    path: &Path,
    limits: DecodeLimits,
    short: Option<u32>,
) -> Result<RgbImage, DecodeError> {
    let meta = std::fs::metadata(path).map_err(|e| fail(path, e.to_string()))?;
    if !meta.is_file() {
        return Err(fail(path, "not a regular file"));
    }
    // Checked before reading, so that a huge file is refused without loading it.
    check_size(path, meta.len(), limits)?;
    crate::util::with_file_bytes(path, |bytes| {
        decode_bytes_at_least(path, bytes, limits, short)
    })
    .map_err(|e| fail(path, e.to_string()))?
}

/// An empty file, or one over `limits.max_file_bytes`, is refused.
fn check_size(path: &Path, len: u64, limits: DecodeLimits) -> Result<(), DecodeError> {
    if len == 0 {
        return Err(fail(path, "the file is empty"));
    }
    if len > limits.max_file_bytes {
        return Err(fail(
            path,
            format!(
                "the file is {len} bytes, over the limit of {}",
                limits.max_file_bytes
            ),
        ));
    }
    Ok(())
}

/// The decoding itself, shared by files and in-memory bytes (`path` names them in errors).
fn decode_bytes_at_least(
    path: &Path,
    bytes: &[u8],
    limits: DecodeLimits,
    short: Option<u32>,
) -> Result<RgbImage, DecodeError> {
    check_size(path, bytes.len() as u64, limits)?;
    let mut reader = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| fail(path, e.to_string()))?;
    let format = reader.format();
    let missing = match format {
        None => {
            return Err(fail(
                path,
                "not an image format graft can read (JPEG, PNG, BMP, GIF, WebP)",
            ));
        }
        Some(ImageFormat::Jpeg) => complete::jpeg_missing(bytes),
        Some(ImageFormat::Png) => complete::png_missing(bytes),
        Some(_) => None,
    };
    if let Some(missing) = missing {
        if !(missing.partial && limits.allow_truncated) {
            return Err(fail(path, missing.reason));
        }
        complete::count_kept();
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
    if let (Some(short), Some(ImageFormat::Jpeg)) = (short, format)
        && let Some(rgb) = dct_scaled(bytes, (w, h), short)
    {
        let mut image = DynamicImage::ImageRgb8(rgb);
        image.apply_orientation(orientation);
        return Ok(image.into_rgb8());
    }
    let mut image = DynamicImage::from_decoder(decoder)
        .map_err(|e| fail(path, format!("cannot decode: {e}")))?;
    image.apply_orientation(orientation);
    Ok(image.into_rgb8())
}

/// The JPEG in `bytes` (`w` x `h`) decoded scaled by 1/2, 1/4 or 1/8 in the DCT domain: the
/// strongest reduction whose short side stays at least `short`. `None` when no reduction
/// applies (the image is less than twice that size) or the file is one the scaled decoder does
/// not handle (CMYK, 12-bit): the caller then decodes it fully.
fn dct_scaled(bytes: &[u8], (w, h): (u32, u32), short: u32) -> Option<RgbImage> {
    // Output sides are ceil(side * k / 8) for k in 1, 2, 4 (8 is the full decode).
    let k = [1u32, 2, 4]
        .into_iter()
        .find(|&k| (w.min(h) * k).div_ceil(8) >= short)?;
    let (sw, sh) = ((w * k).div_ceil(8), (h * k).div_ceil(8));
    // libjpeg reports a fatal error by unwinding out of the decoder (mozjpeg's `unwinding`
    // error manager, which bypasses the panic hook): here that only means "decode it the other
    // way". Its warnings (corrupt data) are silenced; truncated files were refused before.
    let decoded = std::panic::catch_unwind(|| {
        let mut decoder = mozjpeg::Decompress::new_mem(bytes).ok()?;
        // CMYK / YCCK files go the other way, where they are converted as before.
        if !matches!(
            decoder.color_space(),
            mozjpeg::ColorSpace::JCS_YCbCr
                | mozjpeg::ColorSpace::JCS_RGB
                | mozjpeg::ColorSpace::JCS_GRAYSCALE
        ) {
            return None;
        }
        decoder.scale(u8::try_from(k).ok()?);
        let mut started = decoder.rgb().ok()?;
        let size = (started.width(), started.height());
        let pixels: Vec<[u8; 3]> = started.read_scanlines().ok()?;
        started.finish().ok()?;
        Some((size, pixels))
    })
    .ok()??;
    let ((dw, dh), pixels) = decoded;
    if (u32::try_from(dw).ok()?, u32::try_from(dh).ok()?) != (sw, sh) {
        return None;
    }
    RgbImage::from_raw(sw, sh, pixels.into_flattened())
}

/// The colour model a file stores its pixels in (before graft converts them to RGB).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StoredColor {
    Gray,
    GrayAlpha,
    Rgb,
    Rgba,
    /// Four-component JPEG (CMYK or YCCK).
    Cmyk,
    Other,
}

/// What a file's header says, without decoding the pixels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImageFacts {
    pub width: u32,
    pub height: u32,
    pub color: StoredColor,
}

/// Read the header of `path`: size and stored colour model.
pub fn probe(path: &Path, limits: DecodeLimits) -> Result<ImageFacts, DecodeError> {
    let meta = std::fs::metadata(path).map_err(|e| fail(path, e.to_string()))?;
    if meta.len() == 0 {
        return Err(fail(path, "the file is empty"));
    }
    let file = std::fs::File::open(path).map_err(|e| fail(path, e.to_string()))?;
    let reader = ImageReader::new(BufReader::new(file))
        .with_guessed_format()
        .map_err(|e| fail(path, e.to_string()))?;
    header_facts(path, reader, limits, || jpeg_components(path))
}

/// The header facts and the decoded image of `path`, from one read of the file: what
/// `graft doctor` measures every image with ([`probe`] then [`decode_rgb`] read it twice).
pub fn probe_and_decode(
    path: &Path,
    limits: DecodeLimits,
) -> Result<(ImageFacts, RgbImage), DecodeError> {
    let meta = std::fs::metadata(path).map_err(|e| fail(path, e.to_string()))?;
    if !meta.is_file() {
        return Err(fail(path, "not a regular file"));
    }
    check_size(path, meta.len(), limits)?;
    crate::util::with_file_bytes(path, |bytes| {
        let reader = ImageReader::new(Cursor::new(bytes))
            .with_guessed_format()
            .map_err(|e| fail(path, e.to_string()))?;
        let facts = header_facts(path, reader, limits, || jpeg_components_in(bytes))?;
        let rgb = decode_bytes_at_least(path, bytes, limits, None)?;
        Ok((facts, rgb))
    })
    .map_err(|e| fail(path, e.to_string()))?
}

/// Size and stored colour model from `reader`'s header; `components` counts a JPEG's.
fn header_facts<R: std::io::BufRead + std::io::Seek>(
    path: &Path,
    mut reader: ImageReader<R>,
    limits: DecodeLimits,
    components: impl FnOnce() -> Option<u8>,
) -> Result<ImageFacts, DecodeError> {
    let format = reader.format();
    let mut image_limits = image::Limits::default();
    image_limits.max_alloc = Some(limits.max_pixels.saturating_mul(8));
    reader.limits(image_limits);
    let decoder = reader
        .into_decoder()
        .map_err(|e| fail(path, format!("cannot decode: {e}")))?;
    let (width, height) = decoder.dimensions();
    use image::ColorType as C;
    let mut color = match decoder.color_type() {
        C::L8 | C::L16 => StoredColor::Gray,
        C::La8 | C::La16 => StoredColor::GrayAlpha,
        C::Rgb8 | C::Rgb16 | C::Rgb32F => StoredColor::Rgb,
        C::Rgba8 | C::Rgba16 | C::Rgba32F => StoredColor::Rgba,
        _ => StoredColor::Other,
    };
    // The JPEG decoder reports CMYK files as RGB (it converts them); the frame header knows.
    if format == Some(image::ImageFormat::Jpeg) && components() == Some(4) {
        color = StoredColor::Cmyk;
    }
    Ok(ImageFacts {
        width,
        height,
        color,
    })
}

/// Number of colour components in the start-of-frame header of the JPEG file at `path`.
fn jpeg_components(path: &Path) -> Option<u8> {
    use std::io::Read;
    let mut head = Vec::new();
    std::fs::File::open(path)
        .ok()?
        .take(1 << 20)
        .read_to_end(&mut head)
        .ok()?;
    jpeg_components_in(&head)
}

/// Number of colour components in the start-of-frame header of the JPEG `head` begins.
fn jpeg_components_in(head: &[u8]) -> Option<u8> {
    let mut i = 2; // after SOI
    while i + 4 <= head.len() {
        if head[i] != 0xFF {
            return None;
        }
        let marker = head[i + 1];
        if marker == 0xFF {
            i += 1; // fill byte
            continue;
        }
        let length = usize::from(u16::from_be_bytes([head[i + 2], head[i + 3]]));
        // SOF0..SOF15, except DHT (C4), JPG (C8) and DAC (CC).
        if (0xC0..=0xCF).contains(&marker) && ![0xC4, 0xC8, 0xCC].contains(&marker) {
            return head.get(i + 9).copied();
        }
        i += 2 + length;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::{ImageFormat, Rgb, RgbImage, Rgba, RgbaImage};

    fn save(dir: &Path, name: &str, image: &DynamicImage, format: ImageFormat) -> PathBuf {
        let path = dir.join(name);
        image.save_with_format(&path, format).unwrap();
        path
    }

    /// A 4x2 image, red on the left half, blue on the right.
    fn two_tone() -> RgbImage {
        RgbImage::from_fn(4, 2, |x, _| {
            if x < 2 {
                Rgb([255, 0, 0])
            } else {
                Rgb([0, 0, 255])
            }
        })
    }

    #[test]
    fn every_supported_format_decodes_to_rgb() {
        let dir = tempfile::tempdir().unwrap();
        let rgb = DynamicImage::ImageRgb8(two_tone());
        for (name, format) in [
            ("a.png", ImageFormat::Png),
            ("a.bmp", ImageFormat::Bmp),
            ("a.gif", ImageFormat::Gif),
            ("a.webp", ImageFormat::WebP),
            ("a.jpg", ImageFormat::Jpeg),
        ] {
            let decoded = decode_rgb(
                &save(dir.path(), name, &rgb, format),
                DecodeLimits::default(),
            )
            .unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(decoded.dimensions(), (4, 2), "{name}");
        }
        let gray = DynamicImage::ImageLuma8(image::GrayImage::from_pixel(3, 3, image::Luma([77])));
        let decoded = decode_rgb(
            &save(dir.path(), "g.png", &gray, ImageFormat::Png),
            DecodeLimits::default(),
        )
        .unwrap();
        assert_eq!(decoded.get_pixel(1, 1), &Rgb([77, 77, 77]));
        let alpha = DynamicImage::ImageRgba8(RgbaImage::from_pixel(3, 3, Rgba([10, 20, 30, 0])));
        let decoded = decode_rgb(
            &save(dir.path(), "a.png", &alpha, ImageFormat::Png),
            DecodeLimits::default(),
        )
        .unwrap();
        // Alpha is dropped, not composited, like Pillow's convert("RGB").
        assert_eq!(decoded.get_pixel(0, 0), &Rgb([10, 20, 30]));
    }

    /// Insert an EXIF APP1 segment with the given orientation right after the JPEG SOI.
    fn with_exif_orientation(jpeg: &[u8], orientation: u16) -> Vec<u8> {
        let mut tiff = Vec::new();
        tiff.extend_from_slice(b"II*\0");
        tiff.extend_from_slice(&8u32.to_le_bytes()); // IFD0 offset
        tiff.extend_from_slice(&1u16.to_le_bytes()); // one entry
        tiff.extend_from_slice(&0x0112u16.to_le_bytes()); // Orientation
        tiff.extend_from_slice(&3u16.to_le_bytes()); // SHORT
        tiff.extend_from_slice(&1u32.to_le_bytes()); // count
        tiff.extend_from_slice(&orientation.to_le_bytes());
        tiff.extend_from_slice(&[0, 0]);
        tiff.extend_from_slice(&0u32.to_le_bytes()); // no next IFD
        let mut app1 = b"Exif\0\0".to_vec();
        app1.extend_from_slice(&tiff);
        let mut out = jpeg[..2].to_vec();
        out.extend_from_slice(&[0xFF, 0xE1]);
        out.extend_from_slice(&((app1.len() + 2) as u16).to_be_bytes());
        out.extend_from_slice(&app1);
        out.extend_from_slice(&jpeg[2..]);
        out
    }

    #[test]
    fn exif_orientation_is_applied() {
        let dir = tempfile::tempdir().unwrap();
        let mut jpeg = Vec::new();
        DynamicImage::ImageRgb8(RgbImage::from_fn(16, 8, |x, _| {
            if x < 8 {
                Rgb([255, 0, 0])
            } else {
                Rgb([0, 0, 255])
            }
        }))
        .write_to(&mut std::io::Cursor::new(&mut jpeg), ImageFormat::Jpeg)
        .unwrap();
        // Orientation 6: rotate 90 degrees clockwise to display. The left (red) half ends up on top.
        let path = dir.path().join("rotated.jpg");
        std::fs::write(&path, with_exif_orientation(&jpeg, 6)).unwrap();
        let decoded = decode_rgb(&path, DecodeLimits::default()).unwrap();
        assert_eq!(decoded.dimensions(), (8, 16));
        let top = decoded.get_pixel(4, 2);
        let bottom = decoded.get_pixel(4, 13);
        assert!(top[0] > 200 && top[2] < 60, "top {top:?}");
        assert!(bottom[2] > 200 && bottom[0] < 60, "bottom {bottom:?}");
    }

    #[test]
    fn bad_files_fail_with_one_line_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty.jpg");
        std::fs::write(&empty, b"").unwrap();
        let text = dir.path().join("text.jpg");
        std::fs::write(&text, b"hello, not an image").unwrap();
        for path in [&empty, &text, &dir.path().join("absent.png")] {
            let err = decode_rgb(path, DecodeLimits::default())
                .unwrap_err()
                .to_string();
            assert!(err.starts_with(&path.display().to_string()), "{err}");
            assert!(!err.contains('\n'), "{err}");
        }
        // A header claiming more pixels than allowed is refused before decoding.
        let big = save(
            dir.path(),
            "big.png",
            &DynamicImage::ImageRgb8(RgbImage::new(300, 300)),
            ImageFormat::Png,
        );
        let limits = DecodeLimits {
            max_pixels: 10_000,
            ..DecodeLimits::default()
        };
        let err = decode_rgb(&big, limits).unwrap_err().to_string();
        assert!(err.contains("decompression bomb"), "{err}");
    }

    #[test]
    fn bytes_decode_as_the_file_would_and_errors_carry_the_name() {
        let dir = tempfile::tempdir().unwrap();
        let path = save(
            dir.path(),
            "a.png",
            &DynamicImage::ImageRgb8(two_tone()),
            ImageFormat::Png,
        );
        let config = crate::backbone::find("efficientnet-lite0")
            .unwrap()
            .source_config(None);
        let bytes = std::fs::read(&path).unwrap();
        let name = Path::new("request 3, part 1 (a.png)");
        let limits = DecodeLimits::default();
        assert_eq!(
            decode_bytes_for(name, &bytes, &config, limits).unwrap(),
            decode_for(&path, &config, limits).unwrap()
        );
        for bad in [&b""[..], b"plain text", &bytes[..bytes.len() / 2]] {
            let err = decode_bytes_for(name, bad, &config, limits)
                .unwrap_err()
                .to_string();
            assert!(err.starts_with("request 3, part 1 (a.png): "), "{err}");
        }
    }

    #[test]
    fn four_component_jpeg_frames_are_cmyk() {
        let dir = tempfile::tempdir().unwrap();
        // SOI, an APP0 segment to skip, then SOF0 with 4 components.
        let mut bytes = vec![0xFF, 0xD8, 0xFF, 0xE0, 0x00, 0x04, 0x00, 0x00];
        bytes.extend([0xFF, 0xC0, 0x00, 0x14, 0x08, 0x00, 0x10, 0x00, 0x10, 0x04]);
        let path = dir.path().join("cmyk.jpg");
        std::fs::write(&path, &bytes).unwrap();
        assert_eq!(jpeg_components(&path), Some(4));
        let rgb = save(
            dir.path(),
            "rgb.jpg",
            &DynamicImage::ImageRgb8(two_tone()),
            ImageFormat::Jpeg,
        );
        assert_eq!(jpeg_components(&rgb), Some(3));
        let facts = probe(&rgb, DecodeLimits::default()).unwrap();
        assert_eq!(
            (facts.width, facts.height, facts.color),
            (4, 2, StoredColor::Rgb)
        );
    }
}

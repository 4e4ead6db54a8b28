//! Whether a JPEG or PNG file holds all of its image data. Decoders fill what is missing with
//! grey and report nothing: a JPEG holding only its headers decodes into a uniform grey
//! picture, a JPEG cut short keeps its missing part grey. graft refuses such files by name;
//! a truncated file (part of its image data there) is kept only when that is explicitly
//! allowed (`--allow-truncated`, which counts them: [`truncated_kept`]).

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

static ALLOW_TRUNCATED: AtomicBool = AtomicBool::new(false);
static TRUNCATED_KEPT: AtomicUsize = AtomicUsize::new(0);

/// Keep truncated images (their missing part grey) instead of refusing them: the default of
/// [`super::DecodeLimits::allow_truncated`] for the rest of the process.
pub fn set_allow_truncated(allow: bool) {
    ALLOW_TRUNCATED.store(allow, Ordering::Relaxed);
}

pub(crate) fn allow_truncated_default() -> bool {
    ALLOW_TRUNCATED.load(Ordering::Relaxed)
}

/// How many truncated images this process kept because they were allowed.
pub fn truncated_kept() -> usize {
    TRUNCATED_KEPT.load(Ordering::Relaxed)
}

pub(crate) fn count_kept() {
    TRUNCATED_KEPT.fetch_add(1, Ordering::Relaxed);
}

/// What an image file lacks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Missing {
    /// One line: what is missing.
    pub reason: &'static str,
    /// Part of the image data is there (a truncated file): `allow_truncated` keeps it. A file
    /// with no image data at all is refused either way.
    pub partial: bool,
}

const NO_SCAN: Missing = Missing {
    reason: "no scan data (the file holds only its headers)",
    partial: false,
};
const CUT: Missing = Missing {
    reason: "the image data ends early (the file is truncated)",
    partial: true,
};
const NO_IDAT: Missing = Missing {
    reason: "no image data (no IDAT chunk)",
    partial: false,
};

fn damaged(reason: &'static str) -> Option<Missing> {
    Some(Missing {
        reason,
        partial: false,
    })
}

/// Why a JPEG or PNG file's bytes cannot be used (told by their signature; other formats
/// pass): what is missing, unless it is a truncated file and `allow_truncated`.
pub fn refused(bytes: &[u8], allow_truncated: bool) -> Option<&'static str> {
    let missing = if bytes.starts_with(&[0xFF, 0xD8]) {
        jpeg_missing(bytes)
    } else if bytes.starts_with(b"\x89PNG") {
        png_missing(bytes)
    } else {
        None
    }?;
    (!(missing.partial && allow_truncated)).then_some(missing.reason)
}

/// What a JPEG lacks: `None` when its scans are there and end with the end-of-image marker.
pub fn jpeg_missing(bytes: &[u8]) -> Option<Missing> {
    if bytes.len() < 4 || bytes[..2] != [0xFF, 0xD8] {
        return damaged("no start-of-image marker");
    }
    let mut i = 2;
    let mut scans = 0;
    loop {
        // A marker: 0xFF (fill bytes allowed), then its code.
        while i < bytes.len() && bytes[i] == 0xFF && bytes.get(i + 1) == Some(&0xFF) {
            i += 1;
        }
        if i + 1 >= bytes.len() {
            break;
        }
        if bytes[i] != 0xFF {
            return damaged("the file is damaged (a marker was expected)");
        }
        let marker = bytes[i + 1];
        i += 2;
        match marker {
            0xD9 => {
                // End of image.
                return (scans == 0).then_some(NO_SCAN);
            }
            0x01 | 0xD0..=0xD7 => continue, // markers without a length
            _ => {}
        }
        let Some(length) = bytes.get(i..i + 2) else {
            break;
        };
        let length = usize::from(u16::from_be_bytes([length[0], length[1]]));
        i += length;
        if i > bytes.len() {
            break;
        }
        if marker == 0xDA {
            // Start of scan: entropy-coded data up to the next marker that is not a stuffed
            // 0xFF00 or a restart marker. 0xFF bytes are rare in it: searched for, not stepped to.
            let start = i;
            let ends_scan = |at: &usize| {
                bytes
                    .get(at + 1)
                    .is_some_and(|&code| code != 0 && !(0xD0..=0xD7).contains(&code))
            };
            i = memchr::memchr_iter(0xFF, &bytes[start..])
                .map(|offset| start + offset)
                .find(ends_scan)
                .unwrap_or(start.max(bytes.len() - 1));
            if i > start {
                scans += 1;
            }
            if i + 1 >= bytes.len() {
                break;
            }
        }
    }
    Some(if scans == 0 { NO_SCAN } else { CUT })
}

/// What a PNG lacks: `None` when it has image data (IDAT) and ends with IEND.
pub fn png_missing(bytes: &[u8]) -> Option<Missing> {
    const SIGNATURE: &[u8] = b"\x89PNG\r\n\x1a\n";
    if !bytes.starts_with(SIGNATURE) {
        return damaged("no PNG signature");
    }
    let mut i = SIGNATURE.len();
    let mut image_data = false;
    while let Some(header) = bytes.get(i..i + 8) {
        let length = u32::from_be_bytes([header[0], header[1], header[2], header[3]]) as usize;
        let kind = &header[4..8];
        let end = i.saturating_add(12).saturating_add(length);
        match kind {
            // An IDAT cut short is still part of the image data.
            b"IDAT" => image_data = true,
            b"IEND" if end <= bytes.len() => return (!image_data).then_some(NO_IDAT),
            _ => {}
        }
        if end > bytes.len() {
            break;
        }
        i = end;
    }
    Some(if image_data { CUT } else { NO_IDAT })
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::{ImageEncoder, RgbImage};

    fn jpeg(progressive: bool, restart_interval: u16) -> Vec<u8> {
        let image = RgbImage::from_fn(64, 48, |x, y| image::Rgb([x as u8 * 4, y as u8 * 5, 90]));
        let mut out = Vec::new();
        let mut encoder = jpeg_encoder::Encoder::new(&mut out, 90);
        encoder.set_progressive(progressive);
        encoder.set_restart_interval(restart_interval);
        encoder
            .encode(image.as_raw(), 64, 48, jpeg_encoder::ColorType::Rgb)
            .unwrap();
        out
    }

    #[test]
    fn whole_jpegs_pass_and_cut_ones_are_named() {
        for (progressive, restart_interval) in [(false, 0), (true, 0), (false, 2)] {
            let whole = jpeg(progressive, restart_interval);
            if restart_interval > 0 {
                assert!(
                    whole.windows(2).any(|w| w == [0xFF, 0xD1]),
                    "restart markers"
                );
            }
            assert_eq!(jpeg_missing(&whole), None, "progressive {progressive}");
            // Bytes after the end-of-image marker (some cameras add them) do not matter.
            let mut trailing = whole.clone();
            trailing.extend(b"trailer");
            assert_eq!(jpeg_missing(&trailing), None);
            let cut = &whole[..whole.len() / 2];
            assert_eq!(jpeg_missing(cut), Some(CUT));
            let sos = whole.windows(2).position(|w| w == [0xFF, 0xDA]).unwrap();
            let length = usize::from(u16::from_be_bytes([whole[sos + 2], whole[sos + 3]]));
            let mut headers = whole[..sos + 2 + length].to_vec();
            headers.extend([0xFF, 0xD9]);
            assert_eq!(jpeg_missing(&headers), Some(NO_SCAN));
            assert!(jpeg_missing(&whole[..sos]).is_some());
        }
    }

    #[test]
    fn pngs_need_image_data_and_an_end() {
        let image = RgbImage::from_fn(16, 16, |x, _| image::Rgb([x as u8, 0, 0]));
        let mut png = Vec::new();
        image::codecs::png::PngEncoder::new(&mut png)
            .write_image(image.as_raw(), 16, 16, image::ExtendedColorType::Rgb8)
            .unwrap();
        assert_eq!(png_missing(&png), None);
        assert_eq!(png_missing(&png[..png.len() - 20]), Some(CUT));
        // The same file without its IDAT chunk.
        let idat = png.windows(4).position(|w| w == b"IDAT").unwrap() - 4;
        let length = u32::from_be_bytes(png[idat..idat + 4].try_into().unwrap()) as usize;
        let mut without = png[..idat].to_vec();
        without.extend(&png[idat + 12 + length..]);
        assert_eq!(png_missing(&without), Some(NO_IDAT));
    }
}

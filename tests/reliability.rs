//! A corpus of awkward and broken files, generated here, run through every command: no panic
//! (exit code 101) ever, one message naming each broken file, every good file processed.

mod common;

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::*;
use image::{DynamicImage, ImageBuffer, ImageEncoder, Rgb, RgbImage, Rgba};

/// What a command must do with a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    /// Decoded and used.
    Works,
    /// Reported by name and skipped.
    Fails,
    /// Either (a truncated or damaged JPEG may still decode into a partial image).
    Either,
}

/// A gradient photo-like image, so that every generated good file has content.
fn picture(w: u32, h: u32) -> RgbImage {
    RgbImage::from_fn(w, h, |x, y| {
        Rgb([
            (x * 255 / w.max(1)) as u8,
            (y * 255 / h.max(1)) as u8,
            ((x + y) % 256) as u8,
        ])
    })
}

fn jpeg_bytes(image: &RgbImage) -> Vec<u8> {
    let mut out = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 90)
        .write_image(
            image,
            image.width(),
            image.height(),
            image::ExtendedColorType::Rgb8,
        )
        .unwrap();
    out
}

/// The same JPEG with an EXIF block (big-endian TIFF, one IFD entry: Orientation).
fn with_orientation(jpeg: &[u8], orientation: u16) -> Vec<u8> {
    let mut tiff = vec![
        b'M', b'M', 0, 42, 0, 0, 0, 8, 0, 1, 0x01, 0x12, 0, 3, 0, 0, 0, 1,
    ];
    tiff.extend(orientation.to_be_bytes());
    tiff.extend([0, 0, 0, 0, 0, 0]);
    let mut app1 = b"Exif\0\0".to_vec();
    app1.extend(tiff);
    let mut out = jpeg[..2].to_vec();
    out.extend([0xFF, 0xE1]);
    out.extend(((app1.len() + 2) as u16).to_be_bytes());
    out.extend(app1);
    out.extend(&jpeg[2..]);
    out
}

fn png_chunk(kind: &[u8; 4], data: &[u8]) -> Vec<u8> {
    let mut out = (data.len() as u32).to_be_bytes().to_vec();
    out.extend(kind);
    out.extend(data);
    let mut crc = crc32fast::Hasher::new();
    crc.update(kind);
    crc.update(data);
    out.extend(crc.finalize().to_be_bytes());
    out
}

/// A PNG whose header claims 30000 x 30000 RGB pixels (2.7 GB decoded), with a tiny body.
fn decompression_bomb() -> Vec<u8> {
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = 30000u32.to_be_bytes().to_vec();
    ihdr.extend(30000u32.to_be_bytes());
    ihdr.extend([8, 2, 0, 0, 0]);
    out.extend(png_chunk(b"IHDR", &ihdr));
    out.extend(png_chunk(
        b"IDAT",
        &[0x78, 0x9c, 0x03, 0x00, 0x00, 0x00, 0x00, 0x01],
    ));
    out.extend(png_chunk(b"IEND", &[]));
    out
}

fn palette_png(path: &Path) {
    let file = std::fs::File::create(path).unwrap();
    let mut encoder = png::Encoder::new(std::io::BufWriter::new(file), 64, 48);
    encoder.set_color(png::ColorType::Indexed);
    encoder.set_depth(png::BitDepth::Eight);
    encoder.set_palette(vec![255, 0, 0, 0, 255, 0, 0, 0, 255, 250, 250, 250]);
    let mut writer = encoder.write_header().unwrap();
    let data: Vec<u8> = (0..64 * 48).map(|i| (i % 4) as u8).collect();
    writer.write_image_data(&data).unwrap();
}

fn cmyk_jpeg(path: &Path) {
    let (w, h) = (64u16, 48u16);
    let data: Vec<u8> = (0..w as usize * h as usize)
        .flat_map(|i| [(i % 200) as u8, 40, 90, 10])
        .collect();
    jpeg_encoder::Encoder::new_file(path, 90)
        .unwrap()
        .encode(&data, w, h, jpeg_encoder::ColorType::Cmyk)
        .unwrap();
}

/// Writes the corpus as an ImageFolder tree; returns every file with what must happen to it.
fn corpus(root: &Path) -> BTreeMap<PathBuf, Expect> {
    let mut files = BTreeMap::new();
    let good = root.join("good");
    let mixed = root.join("mixed");
    let only_bad = root.join("only_bad");
    for dir in [&good, &mixed, &only_bad, &root.join("empty")] {
        std::fs::create_dir_all(dir).unwrap();
    }
    fn put(files: &mut BTreeMap<PathBuf, Expect>, path: PathBuf, bytes: &[u8], expect: Expect) {
        std::fs::write(&path, bytes).unwrap();
        files.insert(path, expect);
    }
    // Real photos, so that the two classes can be learned at all.
    for (class, dir) in [("daisy", &good), ("roses", &mixed)] {
        let mut photos: Vec<PathBuf> = std::fs::read_dir(shared().join("data/flowers").join(class))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        photos.sort();
        for photo in photos.iter().take(6) {
            put(
                &mut files,
                dir.join(photo.file_name().unwrap()),
                &std::fs::read(photo).unwrap(),
                Expect::Works,
            );
        }
    }
    let base = jpeg_bytes(&picture(120, 80));
    for orientation in 1..=8 {
        put(
            &mut files,
            good.join(format!("exif-{orientation}.jpg")),
            &with_orientation(&base, orientation),
            Expect::Works,
        );
    }
    let gray = DynamicImage::ImageLuma8(DynamicImage::ImageRgb8(picture(64, 64)).to_luma8());
    gray.save(good.join("gray.jpg")).unwrap();
    files.insert(good.join("gray.jpg"), Expect::Works);
    let deep: ImageBuffer<Rgb<u16>, Vec<u16>> = ImageBuffer::from_fn(40, 30, |x, y| {
        Rgb([x as u16 * 1000, y as u16 * 2000, 30000])
    });
    DynamicImage::ImageRgb16(deep)
        .save(good.join("sixteen-bit.png"))
        .unwrap();
    files.insert(good.join("sixteen-bit.png"), Expect::Works);
    let alpha: ImageBuffer<Rgba<u8>, Vec<u8>> =
        ImageBuffer::from_fn(40, 30, |x, _| Rgba([200, 100, 50, (x * 6) as u8]));
    DynamicImage::ImageRgba8(alpha)
        .save(good.join("alpha.png"))
        .unwrap();
    files.insert(good.join("alpha.png"), Expect::Works);
    palette_png(&good.join("palette.png"));
    files.insert(good.join("palette.png"), Expect::Works);
    cmyk_jpeg(&good.join("cmyk.jpg"));
    files.insert(good.join("cmyk.jpg"), Expect::Works);
    DynamicImage::ImageRgb8(picture(1, 1))
        .save(good.join("one-pixel.png"))
        .unwrap();
    files.insert(good.join("one-pixel.png"), Expect::Works);
    DynamicImage::ImageRgb8(picture(10000, 10))
        .save(good.join("very-wide.png"))
        .unwrap();
    files.insert(good.join("very-wide.png"), Expect::Works);
    {
        let file = std::fs::File::create(good.join("animated.gif")).unwrap();
        let mut encoder = image::codecs::gif::GifEncoder::new(file);
        let frames = (0..3).map(|i| {
            let rgba = DynamicImage::ImageRgb8(picture(32 + i, 32)).to_rgba8();
            image::Frame::new(image::imageops::resize(
                &rgba,
                32,
                32,
                image::imageops::FilterType::Nearest,
            ))
        });
        encoder.encode_frames(frames).unwrap();
        files.insert(good.join("animated.gif"), Expect::Works);
    }
    DynamicImage::ImageRgb8(picture(48, 32))
        .save(good.join("lossless.webp"))
        .unwrap();
    files.insert(good.join("lossless.webp"), Expect::Works);
    let odd_name = good.join(OsStr::from_bytes(b"caf\xe9-latin1.jpg"));
    put(&mut files, odd_name, &base, Expect::Works);

    // Broken files, next to good ones and alone in a class.
    put(&mut files, mixed.join("zero-bytes.jpg"), &[], Expect::Fails);
    put(
        &mut files,
        mixed.join("text.jpg"),
        b"this is not an image, whatever the name says\n",
        Expect::Fails,
    );
    put(
        &mut files,
        mixed.join("bomb.png"),
        &decompression_bomb(),
        Expect::Fails,
    );
    put(
        &mut files,
        mixed.join("truncated.jpg"),
        &base[..base.len() / 3],
        Expect::Either,
    );
    let mut huffman = base.clone();
    let dht = huffman.windows(2).position(|w| w == [0xFF, 0xC4]).unwrap();
    huffman[dht + 5..dht + 21].fill(0xFF);
    put(
        &mut files,
        mixed.join("bad-huffman.jpg"),
        &huffman,
        Expect::Either,
    );
    std::os::unix::fs::symlink("loop-b.jpg", mixed.join("loop-a.jpg")).unwrap();
    std::os::unix::fs::symlink("loop-a.jpg", mixed.join("loop-b.jpg")).unwrap();
    files.insert(mixed.join("loop-a.jpg"), Expect::Fails);
    files.insert(mixed.join("loop-b.jpg"), Expect::Fails);
    // A folder symlink back to its parent must not make listing recurse forever.
    std::os::unix::fs::symlink("..", mixed.join("parent-loop")).unwrap();
    put(&mut files, only_bad.join("empty.png"), &[], Expect::Fails);
    put(
        &mut files,
        only_bad.join("garbage.webp"),
        &[7u8; 300],
        Expect::Fails,
    );
    files
}

fn graft(args: &[&OsStr]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_graft"))
        .args(["--threads", "2"])
        .args(args)
        .output()
        .unwrap()
}

/// No panic; every file that must fail is named on its own line of stderr, exactly once.
fn check(command: &str, out: &Output, files: &BTreeMap<PathBuf, Expect>) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_ne!(
        out.status.code(),
        Some(101),
        "{command} panicked:\n{stderr}"
    );
    assert!(
        out.status.code().is_some(),
        "{command} was killed:\n{stderr}"
    );
    for (path, expect) in files {
        let name = path.to_string_lossy();
        // Messages name their file first: "PATH: reason".
        let subject = format!("{name}: ");
        let lines = stderr.lines().filter(|l| l.contains(&subject)).count();
        match expect {
            Expect::Fails => assert_eq!(
                lines, 1,
                "{command}: {name} should be reported once:\n{stderr}"
            ),
            Expect::Works => assert_eq!(lines, 0, "{command}: {name} should work:\n{stderr}"),
            Expect::Either => assert!(lines <= 1, "{command}: {name} reported {lines} times"),
        }
    }
    stderr
}

#[test]
fn every_command_survives_the_bad_input_corpus() {
    store_weights("efficientnet-lite0");
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let files = corpus(&data);
    let cache = dir.path().join("cache");
    let run = dir.path().join("run");
    let os = |s: &str| OsStr::new(s).to_os_string();
    let path = |p: &Path| p.as_os_str().to_os_string();

    // predict: every listed file; bad ones reported, good ones classified.
    let mut args = vec![os("predict"), os("--json")];
    args.extend(files.keys().map(|p| path(p)));
    let refs: Vec<&OsStr> = args.iter().map(|a| a.as_os_str()).collect();
    let out = graft(&refs);
    check("predict", &out, &files);
    assert_eq!(
        out.status.code(),
        Some(1),
        "some files could not be classified"
    );
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let classified = json["images"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i.get("predictions").is_some())
        .count();
    let works = files.values().filter(|e| **e == Expect::Works).count();
    let either = files.values().filter(|e| **e == Expect::Either).count();
    assert!(
        (works..=works + either).contains(&classified),
        "{classified} classified, {works} good files"
    );

    // extract, then train (the run goes on), evaluate and doctor on the same folder.
    let out = graft(&[
        &os("extract"),
        &os("--cache-dir"),
        &path(&cache),
        &path(&data),
    ]);
    let stderr = check("extract", &out, &files);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("skipped"));
    assert!(
        stderr.contains("has no images"),
        "the empty class is reported: {stderr}"
    );

    let out = graft(&[
        &os("train"),
        &os("--cache-dir"),
        &path(&cache),
        &os("--out"),
        &path(&run),
        &path(&data),
    ]);
    let stderr = check("train", &out, &files);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(run.join("head.safetensors").is_file());

    let out = graft(&[
        &os("evaluate"),
        &os("--cache-dir"),
        &path(&cache),
        &os("--model"),
        &path(&run),
        &path(&data),
    ]);
    check("evaluate", &out, &files);
    assert_eq!(
        out.status.code(),
        Some(1),
        "unreadable files make evaluate exit 1"
    );

    let out = graft(&[
        &os("doctor"),
        &os("--json"),
        &os("--cache-dir"),
        &path(&cache),
        &path(&data),
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_ne!(out.status.code(), Some(101), "doctor panicked: {stderr}");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let unreadable: Vec<String> = report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["check"] == "unreadable")
        .flat_map(|f| f["files"].as_array().unwrap().clone())
        .map(|p| p.as_str().unwrap().to_string())
        .collect();
    for (path, expect) in &files {
        if *expect == Expect::Fails {
            let name = path.to_string_lossy().into_owned();
            assert!(
                unreadable.contains(&name),
                "doctor does not list {name}: {unreadable:?}"
            );
        }
    }
    let checks: Vec<&str> = report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["check"].as_str().unwrap())
        .collect();
    for expected in [
        "cmyk",
        "grayscale",
        "alpha",
        "tiny",
        "aspect-ratio",
        "empty-class",
    ] {
        assert!(
            checks.contains(&expected),
            "doctor found no {expected}: {checks:?}"
        );
    }
}

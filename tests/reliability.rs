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
        for photo in flower_photos(class).iter().take(6) {
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
    // Cut short: no end-of-image marker after its scan data (refused unless
    // --allow-truncated).
    put(
        &mut files,
        mixed.join("truncated.jpg"),
        &base[..base.len() / 3],
        Expect::Fails,
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

/// Whether a user other than the owner (and outside its group) can read `path`: the file is
/// readable by others and every folder above it can be searched by others.
fn readable_by_others(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &Path| std::fs::metadata(p).map_or(0, |m| m.permissions().mode());
    let Ok(path) = path.canonicalize() else {
        return false;
    };
    mode(&path) & 0o004 != 0 && path.ancestors().skip(1).all(|dir| mode(dir) & 0o001 != 0)
}

/// One image nobody may read (mode 000) among good ones: `extract` and `predict` name it with
/// "Permission denied" on one line and process the others. Root reads any file whatever its
/// mode, so when the tests run as root the commands run as `nobody` (uid and gid 65534).
#[test]
fn an_unreadable_file_is_named_and_the_others_processed() {
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::process::CommandExt;

    let weights = store_weights("efficientnet-lite0");
    // SAFETY: geteuid has no preconditions.
    let as_nobody = unsafe { libc::geteuid() } == 0;
    let dir = tempfile::tempdir().unwrap();
    let chmod = |p: &Path, mode: u32| {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap()
    };
    chmod(dir.path(), 0o755);
    let data = dir.path().join("data");
    let mut files = BTreeMap::new();
    for class in ["daisy", "roses"] {
        std::fs::create_dir_all(data.join(class)).unwrap();
        chmod(&data.join(class), 0o755);
        for photo in flower_photos(class).iter().take(4) {
            let copy = data.join(class).join(photo.file_name().unwrap());
            std::fs::copy(photo, &copy).unwrap();
            chmod(&copy, 0o644);
            files.insert(copy, Expect::Works);
        }
    }
    chmod(&data, 0o755);
    let locked = data.join("daisy/locked.jpg");
    // A photo of its own (the fifth rose), not a copy of a listed one.
    std::fs::copy(&flower_photos("roses")[4], &locked).unwrap();
    chmod(&locked, 0o000);
    files.insert(locked.clone(), Expect::Fails);

    // A fresh home for the cache, writable by the user the commands run as, with the weights.
    let home = dir.path().join("home");
    std::fs::create_dir_all(home.join("weights")).unwrap();
    chmod(&home, 0o777);
    chmod(&home.join("weights"), 0o755);
    let installed = home.join("weights").join(weights.file_name().unwrap());
    if readable_by_others(&weights) {
        std::os::unix::fs::symlink(&weights, &installed).unwrap();
    } else {
        std::fs::copy(&weights, &installed).unwrap();
        chmod(&installed, 0o644);
    }

    let graft = |args: &[&OsStr]| -> Output {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_graft"));
        cmd.args(["--threads", "2"])
            .args(args)
            .env("GRAFT_HOME", &home)
            .env("HOME", &home)
            .current_dir(dir.path());
        if as_nobody {
            // SAFETY: setgroups, setgid and setuid are async-signal-safe; nothing else runs.
            unsafe {
                cmd.pre_exec(|| {
                    if libc::setgroups(0, std::ptr::null()) != 0
                        || libc::setgid(65534) != 0
                        || libc::setuid(65534) != 0
                    {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        cmd.output().unwrap()
    };
    let denied = |command: &str, stderr: &str| {
        let subject = format!("{}: ", locked.display());
        let line = stderr.lines().find(|l| l.contains(&subject)).unwrap();
        assert!(
            line.contains("Permission denied"),
            "{command}: the line naming the file says why: {line}"
        );
    };

    let out = graft(&[OsStr::new("extract"), data.as_os_str()]);
    let stderr = check("extract", &out, &files);
    denied("extract", &stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("9 images: extracted 8, reused 0, skipped 1"),
        "{stdout}"
    );
    let features = std::fs::metadata(home.join("features")).expect("the cache is in GRAFT_HOME");
    if as_nobody {
        use std::os::unix::fs::MetadataExt;
        assert_eq!(features.uid(), 65534, "the commands ran as nobody");
    }

    let mut args = vec![OsStr::new("predict"), OsStr::new("--json")];
    args.extend(files.keys().map(|p| p.as_os_str()));
    let out = graft(&args);
    let stderr = check("predict", &out, &files);
    denied("predict", &stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    for image in json["images"].as_array().unwrap() {
        let path = Path::new(image["path"].as_str().unwrap());
        if path == locked {
            let error = image["error"].as_str().unwrap();
            assert!(error.contains("Permission denied"), "{image}");
        } else {
            assert!(
                image["predictions"][0]["probability"].is_number(),
                "{image}"
            );
        }
    }
    assert_eq!(json["images"].as_array().unwrap().len(), files.len());
}

/// A run whose head file does not fit the backbone (rows of another length, as from a hand
/// edit or a mix-up of files) is refused with a message naming the file, not a panic or
/// silently wrong scores.
#[test]
fn a_head_that_does_not_fit_the_backbone_is_a_clear_error() {
    store_weights("efficientnet-lite0");
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut photos = Vec::new();
    for class in ["daisy", "roses"] {
        std::fs::create_dir_all(data.join(class)).unwrap();
        for photo in flower_photos(class).iter().take(5) {
            let copy = data.join(class).join(photo.file_name().unwrap());
            std::fs::copy(photo, &copy).unwrap();
            photos.push(copy);
        }
    }
    let cache = dir.path().join("cache");
    let run = dir.path().join("run");
    let os = |s: &str| OsStr::new(s).to_os_string();
    let path = |p: &Path| p.as_os_str().to_os_string();
    let out = graft(&[
        &os("train"),
        &os("--recipe"),
        &os("knn"),
        &os("--cache-dir"),
        &path(&cache),
        &os("--out"),
        &path(&run),
        &path(&data),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let head_file = run.join("head.safetensors");
    for head in [
        graft::head::Head::Knn {
            bank: graft::head::Bank::Owned(vec![0.1; 2 * 100]),
            labels: vec![0, 1],
            classes: 2,
            k: 1,
        },
        graft::head::Head::Linear {
            weight: vec![0.1; 2 * 100],
            bias: vec![0.0; 2],
        },
    ] {
        head.save(&head_file).unwrap();
        for command in ["predict", "evaluate"] {
            let mut args = vec![os(command), os("--model"), path(&run)];
            if command == "predict" {
                args.push(path(&photos[0]));
            } else {
                args.extend([os("--cache-dir"), path(&cache), path(&data)]);
            }
            let refs: Vec<&OsStr> = args.iter().map(|a| a.as_os_str()).collect();
            let out = graft(&refs);
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(2), "{command}: {stderr}");
            assert!(
                stderr
                    .lines()
                    .any(|l| l.contains(&format!("{}: ", head_file.display()))
                        && l.contains("100 features")
                        && l.contains("1280")),
                "{command}: {stderr}"
            );
        }
    }
}

/// A JPEG holding only its headers (up to and with its start-of-scan header, then the
/// end-of-image marker), a JPEG cut at half its size, and a PNG without its IDAT chunk decode
/// into grey pictures without an error from the decoders. graft names each of them, in
/// predict, extract and train, and writes no feature row for them; `--allow-truncated` keeps
/// the cut JPEG (part of its data is there) and says so, never the two without image data.
#[test]
fn images_with_missing_data_are_named_and_leave_no_feature_row() {
    store_weights("efficientnet-lite0");
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    copy_flowers(&data, &["daisy", "roses"], 4);
    let photo = std::fs::read(&flower_photos("daisy")[10]).unwrap();
    let sos = photo.windows(2).position(|w| w == [0xFF, 0xDA]).unwrap();
    let length = usize::from(u16::from_be_bytes([photo[sos + 2], photo[sos + 3]]));
    let mut headers = photo[..sos + 2 + length].to_vec();
    headers.extend([0xFF, 0xD9]);
    let header_only = data.join("daisy/header-only.jpg");
    std::fs::write(&header_only, headers).unwrap();
    let cut = data.join("daisy/cut-half.jpg");
    std::fs::write(&cut, &photo[..photo.len() / 2]).unwrap();
    let mut png = Vec::new();
    let image = picture(64, 48);
    image::codecs::png::PngEncoder::new(&mut png)
        .write_image(image.as_raw(), 64, 48, image::ExtendedColorType::Rgb8)
        .unwrap();
    let idat = png.windows(4).position(|w| w == b"IDAT").unwrap() - 4;
    let idat_len = u32::from_be_bytes(png[idat..idat + 4].try_into().unwrap()) as usize;
    let mut no_idat = png[..idat].to_vec();
    no_idat.extend(&png[idat + 12 + idat_len..]);
    let no_idat_path = data.join("roses/no-idat.png");
    std::fs::write(&no_idat_path, no_idat).unwrap();
    let broken = [
        (&header_only, "no scan data"),
        (&cut, "ends early"),
        (&no_idat_path, "no IDAT"),
    ];
    let named_once = |command: &str, stderr: &str| {
        for (path, reason) in &broken {
            let lines: Vec<&str> = stderr
                .lines()
                .filter(|l| l.contains(&format!("{}: ", path.display())))
                .collect();
            assert_eq!(lines.len(), 1, "{command}: {}:\n{stderr}", path.display());
            assert!(lines[0].contains(reason), "{command}: {}", lines[0]);
        }
    };
    let os = |s: &str| OsStr::new(s).to_os_string();
    let path = |p: &Path| p.as_os_str().to_os_string();
    let run = |args: &[std::ffi::OsString]| {
        let refs: Vec<&OsStr> = args.iter().map(|a| a.as_os_str()).collect();
        let out = graft(&refs);
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };

    let cache = dir.path().join("cache");
    let (status, stdout, stderr) =
        run(&[os("extract"), os("--cache-dir"), path(&cache), path(&data)]);
    assert_eq!(status, Some(1), "{stderr}");
    named_once("extract", &stderr);
    assert!(
        stdout.contains("extracted 8, reused 0, skipped 3 (8 rows in"),
        "{stdout}"
    );

    let mut args = vec![os("predict"), os("-k"), os("1")];
    args.extend(broken.iter().map(|(p, _)| path(p)));
    args.push(path(&flower_photos("roses")[0]));
    let (status, _, stderr) = run(&args);
    assert_eq!(status, Some(1), "{stderr}");
    named_once("predict", &stderr);

    let out = dir.path().join("run");
    let (status, _, stderr) = run(&[
        os("train"),
        os("--recipe"),
        os("logreg"),
        os("--cache-dir"),
        path(&cache),
        os("--out"),
        path(&out),
        path(&data),
    ]);
    assert_eq!(status, Some(0), "{stderr}");
    named_once("train", &stderr);
    let metrics: serde_json::Value = json(&out.join("metrics.json"));
    assert_eq!(
        metrics["train_size"].as_u64().unwrap() + metrics["val_size"].as_u64().unwrap(),
        8
    );

    // --allow-truncated keeps the cut JPEG, counted; the files without image data still fail.
    let (status, stdout, stderr) = run(&[
        os("--allow-truncated"),
        os("extract"),
        os("--cache-dir"),
        path(&dir.path().join("cache-2")),
        path(&data),
    ]);
    assert_eq!(status, Some(1), "{stderr}");
    assert!(
        stdout.contains("extracted 9, reused 0, skipped 2"),
        "{stdout}"
    );
    assert!(stderr.contains("kept 1 truncated image"), "{stderr}");
    assert!(
        !stderr.contains(&format!("{}: ", cut.display())),
        "{stderr}"
    );
    // Without the flag again, the row cached for the cut JPEG is not reused.
    let (status, stdout, stderr) = run(&[
        os("extract"),
        os("--cache-dir"),
        path(&dir.path().join("cache-2")),
        path(&data),
    ]);
    assert_eq!(status, Some(1), "{stderr}");
    named_once("extract on the permissive cache", &stderr);
    assert!(
        stdout.contains("extracted 0, reused 8, skipped 3"),
        "{stdout}"
    );
}

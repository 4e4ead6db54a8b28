//! `graft doctor` on folders built from ../shared/data/flowers: leakage planted across the split
//! is found (exact copies and re-encoded, resized copies), the untouched folder is clean, a
//! class of 3 images is reported as imbalance, and duplicates and a dark photo planted inside
//! the training split are reported.

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

use common::*;
use image::ImageEncoder;

/// `train/<class>/` with `train` photos and `val/<class>/` with the next `val` ones.
fn split_folder(root: &Path, train: usize, val: usize) {
    for class in FLOWER_CLASSES {
        let photos = flower_photos(class);
        for (split, range) in [("train", 0..train), ("val", train..train + val)] {
            let dir = root.join(split).join(class);
            std::fs::create_dir_all(&dir).unwrap();
            for photo in &photos[range] {
                std::fs::copy(photo, dir.join(photo.file_name().unwrap())).unwrap();
            }
        }
    }
}

/// Decode, shrink to 80 %, and save as a JPEG of quality 70.
fn reencode(src: &Path, dst: &Path) {
    let image = image::open(src).unwrap().to_rgb8();
    let (w, h) = (image.width() * 4 / 5, image.height() * 4 / 5);
    let small = image::imageops::resize(&image, w, h, image::imageops::FilterType::Triangle);
    let file = std::fs::File::create(dst).unwrap();
    image::codecs::jpeg::JpegEncoder::new_with_quality(file, 70)
        .write_image(&small, w, h, image::ExtendedColorType::Rgb8)
        .unwrap();
}

fn doctor(data: &Path, cache: &Path) -> (i32, serde_json::Value) {
    doctor_writing(data, cache, None)
}

/// `graft doctor --json`, with `--out DIR` when given.
fn doctor_writing(data: &Path, cache: &Path, page_dir: Option<&Path>) -> (i32, serde_json::Value) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_graft"));
    command
        .args(["--threads", "2", "doctor", "--json", "--cache-dir"])
        .arg(cache)
        .arg(data);
    if let Some(dir) = page_dir {
        command.arg("--out").arg(dir);
    }
    let out = command.output().unwrap();
    let code = out.status.code().unwrap();
    assert!(
        code == 0 || code == 1,
        "exit {code}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    (code, serde_json::from_slice(&out.stdout).unwrap())
}

fn findings<'a>(report: &'a serde_json::Value, check: &str) -> Vec<&'a serde_json::Value> {
    report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["check"] == check)
        .collect()
}

fn files(report: &serde_json::Value, prefix: &str) -> BTreeSet<String> {
    report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["check"].as_str().unwrap().starts_with(prefix))
        .flat_map(|f| f["files"].as_array().unwrap().clone())
        .map(|p| p.as_str().unwrap().to_string())
        .collect()
}

#[test]
fn planted_leakage_is_found_and_the_clean_folder_has_none() {
    store_weights("efficientnet-lite0");
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let clean = dir.path().join("clean");
    split_folder(&clean, 16, 4);
    let (code, report) = doctor(&clean, &cache);
    assert!(files(&report, "leakage").is_empty(), "{report:#}");
    assert_eq!(code, 0, "{report:#}");
    assert_eq!(report["images"], 100);

    let leaky = dir.path().join("leaky");
    split_folder(&leaky, 16, 4);
    let mut planted = BTreeSet::new();
    for (i, class) in FLOWER_CLASSES.iter().enumerate() {
        let photo = &flower_photos(class)[i];
        let copy = leaky.join("val").join(class).join(format!("copy-{i}.jpg"));
        std::fs::copy(photo, &copy).unwrap();
        planted.insert(copy);
    }
    for (i, class) in FLOWER_CLASSES.iter().take(3).enumerate() {
        let photo = &flower_photos(class)[10 + i];
        let copy = leaky
            .join("val")
            .join(class)
            .join(format!("reencoded-{i}.jpg"));
        reencode(photo, &copy);
        planted.insert(copy);
    }
    let (code, report) = doctor(&leaky, &cache);
    assert_eq!(code, 1, "leakage is an error: {report:#}");
    let planted: BTreeSet<String> = planted.iter().map(|p| p.display().to_string()).collect();
    assert_eq!(files(&report, "leakage"), planted, "{report:#}");
    assert_eq!(
        findings(&report, "leakage-exact")[0]["files"]
            .as_array()
            .unwrap()
            .len(),
        5
    );
    assert_eq!(
        findings(&report, "leakage-near")[0]["files"]
            .as_array()
            .unwrap()
            .len(),
        3
    );
    let exact = &findings(&report, "leakage-exact")[0];
    assert!(
        !exact["why"].as_str().unwrap().is_empty() && !exact["action"].as_str().unwrap().is_empty()
    );
}

#[test]
fn a_class_of_three_images_is_reported_as_imbalance() {
    store_weights("efficientnet-lite0");
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    for (class, count) in [
        ("daisy", 12),
        ("dandelion", 12),
        ("roses", 12),
        ("tulips", 3),
    ] {
        std::fs::create_dir_all(data.join(class)).unwrap();
        for photo in flower_photos(class).iter().take(count) {
            std::fs::copy(photo, data.join(class).join(photo.file_name().unwrap())).unwrap();
        }
    }
    let (code, report) = doctor(&data, &dir.path().join("cache"));
    let imbalance = findings(&report, "class-imbalance");
    assert_eq!(imbalance.len(), 1, "{report:#}");
    let measured = imbalance[0]["measured"].as_str().unwrap();
    assert!(measured.contains("`tulips` has 3"), "{measured}");
    assert!(measured.contains("ratio 4.0"), "{measured}");
    assert_eq!(findings(&report, "small-class").len(), 1);
    assert_eq!(code, 0, "imbalance is a warning, not an error: {report:#}");
}

#[test]
fn doctor_reads_a_run_and_flags_a_low_head_learning_rate() {
    store_weights("efficientnet-lite0");
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    split_folder(&data, 8, 2);
    let cache = dir.path().join("cache");
    let run = dir.path().join("slow");
    let out = Command::new(env!("CARGO_BIN_EXE_graft"))
        .args([
            "--threads",
            "2",
            "train",
            "--lr",
            "1e-5",
            "--epochs",
            "3",
            "--cache-dir",
        ])
        .arg(&cache)
        .arg("--out")
        .arg(&run)
        .arg(&data)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = Command::new(env!("CARGO_BIN_EXE_graft"))
        .args(["--threads", "2", "doctor", "--json", "--cache-dir"])
        .arg(&cache)
        .arg("--model")
        .arg(&run)
        .arg(&data)
        .output()
        .unwrap();
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(findings(&report, "head-lr-low").len(), 1, "{report:#}");
}

/// A folder with a byte-identical copy, a re-encoded copy and a darkened photo planted in the
/// training split: doctor reports the two duplicate sets and the dark photo (and only it), with
/// the neighbour, outlier, duplicate and quality sections in its JSON.
#[test]
fn planted_duplicates_and_a_dark_photo_are_found() {
    store_weights("efficientnet-lite0");
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    split_folder(&data, 8, 2);
    let train = data.join("train");
    let photos = flower_photos("roses");
    // Byte-identical copy, in another class folder.
    let original = train.join("roses").join(photos[0].file_name().unwrap());
    let copy = train.join("tulips").join("copy-of-a-rose.jpg");
    std::fs::copy(&original, &copy).unwrap();
    // Re-encoded, resized copy, in the same class.
    let near_original = train.join("roses").join(photos[1].file_name().unwrap());
    let near_copy = train.join("roses").join("reencoded.jpg");
    reencode(&near_original, &near_copy);
    // A photo at a tenth of its brightness.
    let mut dim = image::open(&flower_photos("daisy")[20]).unwrap().to_rgb8();
    dim.pixels_mut().for_each(|p| p.0 = p.0.map(|v| v / 10));
    let dark = train.join("daisy").join("dark.jpg");
    dim.save(&dark).unwrap();

    let page_dir = dir.path().join("doctor");
    let (code, report) = doctor_writing(&data, &dir.path().join("cache"), Some(&page_dir));
    assert_eq!(
        code, 0,
        "duplicates and dark photos are warnings: {report:#}"
    );
    check_page_renders(&page_dir.join("doctor.html"), &report);
    let name = |p: &Path| p.display().to_string();
    let exact = &report["duplicates"]["exact"];
    assert_eq!(
        exact,
        &serde_json::json!([[name(&original), name(&copy)]]),
        "{report:#}"
    );
    let near: Vec<BTreeSet<String>> = report["duplicates"]["near"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            s["files"]
                .as_array()
                .unwrap()
                .iter()
                .map(|f| f.as_str().unwrap().to_string())
                .collect()
        })
        .collect();
    assert!(
        near.contains(&BTreeSet::from([name(&near_original), name(&near_copy)])),
        "{report:#}"
    );
    assert_eq!(
        files(&report, "duplicate-exact"),
        BTreeSet::from([name(&original), name(&copy)])
    );
    assert_eq!(
        files(&report, "dark"),
        BTreeSet::from([name(&dark)]),
        "{report:#}"
    );
    let dark_check = report["quality"]["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["check"] == "dark")
        .unwrap();
    assert_eq!(dark_check["threshold"], 0.32);
    assert!(dark_check["images"][0]["score"].as_f64().unwrap() < 0.32);
    assert_eq!(report["neighbours"]["rows"], 53);
    assert_eq!(report["neighbours"]["k"], 10);
    assert!(
        report["outliers"]["fence"].as_f64().unwrap() > 0.0,
        "{report:#}"
    );
}

/// doctor.html in headless Chromium: a section per finding of the JSON, the duplicate sets and
/// the dark photo with a thumbnail per file, every image decoded, nothing fetched.
fn check_page_renders(page: &Path, report: &serde_json::Value) {
    let html = std::fs::read_to_string(page).unwrap();
    assert!(!html.contains("http://") && !html.contains("https://"));
    let dom = rendered_dom(page);
    let section = |check: &str| -> String {
        let start = dom
            .find(&format!("id=\"check-{check}\""))
            .unwrap_or_else(|| panic!("no {check} section in the rendered page"));
        let rest = &dom[start..];
        rest[..rest.find("</section>").unwrap()].to_string()
    };
    for finding in report["findings"].as_array().unwrap() {
        section(finding["check"].as_str().unwrap());
    }
    for (check, files) in [("duplicate-exact", 2), ("duplicate-near", 2), ("dark", 1)] {
        let thumbnails = section(check).matches("<img ").count();
        assert!(thumbnails >= files, "{check}: {thumbnails} thumbnails");
    }
    let (total, loaded) = images_decoded(&dom);
    assert!(total >= 5, "{total} images on the page");
    assert_eq!(loaded, total, "every thumbnail decodes");
}

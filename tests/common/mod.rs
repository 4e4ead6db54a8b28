//! Helpers shared by the integration tests: paths to ../shared, a .npy reader, weights.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use graft::backbone::{self, Backbone, LoadOptions, PaddingMode};
use safetensors::SafeTensors;

/// `../shared` next to the checkout (as laid out for developers and CI).
pub fn shared() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared");
    assert!(
        dir.is_dir(),
        "{} is missing: the tests read the shared goldens, weights and datasets",
        dir.display()
    );
    dir
}

pub fn golden_lite0() -> PathBuf {
    shared().join("golden/efficientnet_lite0")
}

pub fn golden_mnv2() -> PathBuf {
    shared().join("weights/mobilenet_v2/golden")
}

pub fn mnv2_weights() -> PathBuf {
    shared().join("weights/mobilenet_v2/mobilenet_v2_imagenet.safetensors")
}

/// The installed checkpoint of a registry backbone (fetched by `graft weights fetch`).
pub fn store_weights(name: &str) -> PathBuf {
    let info = backbone::find(name).unwrap();
    graft::weights::store::installed(info).unwrap_or_else(|| {
        panic!(
            "{name} weights are not installed in {}: run `graft weights fetch {name}` first",
            graft::weights::store::weights_dir().display()
        )
    })
}

pub fn load(name: &str, path: &Path, include_top: bool, padding: Option<PaddingMode>) -> Backbone {
    let info = backbone::find(name).unwrap();
    Backbone::load(
        info,
        path,
        LoadOptions {
            include_top,
            padding,
            resolution: None,
            ..Default::default()
        },
        &graft::backend::device(),
    )
    .unwrap()
}

/// A little-endian float32 C-order .npy file: (shape, values).
pub fn read_npy(path: &Path) -> (Vec<usize>, Vec<f32>) {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!(
        &bytes[..6],
        b"\x93NUMPY",
        "{}: not a .npy file",
        path.display()
    );
    let (header_len, start) = match bytes[6] {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        _ => (
            u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
            12,
        ),
    };
    let header = std::str::from_utf8(&bytes[start..start + header_len]).unwrap();
    assert!(
        header.contains("'<f4'"),
        "{}: expected <f4, got {header}",
        path.display()
    );
    assert!(header.contains("'fortran_order': False"));
    let shape_text = header
        .split("'shape': (")
        .nth(1)
        .unwrap()
        .split(')')
        .next()
        .unwrap();
    let shape = shape_text
        .split(',')
        .filter(|s| !s.trim().is_empty())
        .map(|s| s.trim().parse().unwrap())
        .collect();
    let values = bytes[start + header_len..]
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    (shape, values)
}

pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "length mismatch");
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

pub const GOLDEN_IMAGES: [&str; 4] = ["bird", "cat", "hot_dog", "parrot"];

/// Source file of a golden image.
pub fn golden_source(name: &str) -> PathBuf {
    let ext = if name == "bird" || name == "cat" {
        "bmp"
    } else {
        "jpg"
    };
    golden_lite0().join(format!("{name}.{ext}"))
}

pub fn argmax(v: &[f32]) -> usize {
    v.iter()
        .enumerate()
        .max_by(|a, b| a.1.total_cmp(b.1))
        .map(|(i, _)| i)
        .unwrap()
}

/// The five tf_flowers classes.
pub const FLOWER_CLASSES: [&str; 5] = ["daisy", "dandelion", "roses", "sunflowers", "tulips"];

/// The photos of one flower class in `../shared/data/flowers`, sorted by name.
pub fn flower_photos(class: &str) -> Vec<PathBuf> {
    let mut photos: Vec<PathBuf> = std::fs::read_dir(shared().join("data/flowers").join(class))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    photos.sort();
    photos
}

/// Copy the first `per_class` photos of each of `classes` into `root/<class>/`.
pub fn copy_flowers(root: &Path, classes: &[&str], per_class: usize) {
    for class in classes {
        std::fs::create_dir_all(root.join(class)).unwrap();
        for photo in flower_photos(class).iter().take(per_class) {
            std::fs::copy(photo, root.join(class).join(photo.file_name().unwrap())).unwrap();
        }
    }
}

/// A JSON file a run wrote (model.json, metrics.json, plan.json, ...).
pub fn json(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// The graft binary under test, on 2 threads.
pub fn graft() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_graft"));
    cmd.args(["--threads", "2"]);
    cmd
}

/// Assert that a run succeeded (else show its stderr); its stdout and stderr.
pub fn ok(output: Output) -> (String, String) {
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    (
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// Headless Chromium (the first of its usual names found), set up to render a local page.
pub fn chromium() -> Command {
    let binary = ["chromium", "chromium-browser", "google-chrome"]
        .into_iter()
        .find(|b| {
            Command::new(b)
                .arg("--version")
                .output()
                .is_ok_and(|o| o.status.success())
        })
        .expect("headless Chromium is needed for this test: apt-get install chromium");
    let mut cmd = Command::new(binary);
    cmd.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--hide-scrollbars",
        "--virtual-time-budget=5000",
    ]);
    cmd
}

/// The DOM of a local HTML page after headless Chromium has loaded it and run its scripts.
pub fn rendered_dom(page: &Path) -> String {
    let output = chromium()
        .arg("--dump-dom")
        .arg(format!("file://{}", page.display()))
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// `(images on the page, images decoded)` from a page rendered by `chromium --dump-dom`: graft's
/// pages count them on load into `data-images-total` / `data-images-loaded`.
pub fn images_decoded(dom: &str) -> (usize, usize) {
    let attribute = |name: &str| -> usize {
        let start = dom
            .find(&format!("{name}=\""))
            .unwrap_or_else(|| panic!("no {name} in the rendered page"))
            + name.len()
            + 2;
        dom[start..].split('"').next().unwrap().parse().unwrap()
    };
    (
        attribute("data-images-total"),
        attribute("data-images-loaded"),
    )
}

/// Every file under `root`, recursively.
pub fn walk(root: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let p = entry.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                found.push(p);
            }
        }
    }
    found
}

/// Every feature-cache shard under `cache`.
pub fn shards(cache: &Path) -> Vec<PathBuf> {
    walk(cache)
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "safetensors"))
        .collect()
}

/// Every row of the cache, read the way a user without graft would: key -> (count, features).
pub fn rows(cache: &Path) -> HashMap<String, (usize, Vec<f32>)> {
    let mut out: HashMap<String, (usize, Vec<f32>)> = HashMap::new();
    for shard in shards(cache) {
        let bytes = std::fs::read(&shard).unwrap();
        let (_, meta) = SafeTensors::read_metadata(&bytes).unwrap();
        let keys: Vec<String> =
            serde_json::from_str(&meta.metadata().as_ref().unwrap()["keys"]).unwrap();
        let file = SafeTensors::deserialize(&bytes).unwrap();
        let view = file.tensor("features").unwrap();
        let dim = view.shape()[1];
        let values: Vec<f32> = view
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect();
        for (i, key) in keys.into_iter().enumerate() {
            let entry = out
                .entry(key)
                .or_insert((0, values[i * dim..(i + 1) * dim].to_vec()));
            entry.0 += 1;
        }
    }
    out
}

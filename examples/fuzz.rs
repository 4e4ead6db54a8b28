//! A mutation fuzzer for the two parsers that read untrusted bytes: image decoding +
//! preprocessing, and checkpoint reading (.pth legacy, .pth zip, safetensors). It stands in for
//! `cargo fuzz`, which needs a nightly toolchain this project does not use.
//!
//! ```text
//! cargo run --release --example fuzz -- decode      --seconds 600 [--seed 1]
//! cargo run --release --example fuzz -- checkpoint  --seconds 600 [--seed 1]
//! ```
//!
//! Seeds: small images of every format graft reads (generated), a safetensors file and a zip
//! .pth (generated), and the EfficientNet-Lite0 legacy .pth from the weight store when it is
//! installed. Each iteration mutates a seed (bit flips, random bytes, truncation, a duplicated
//! or deleted span, a big-endian integer set to an extreme), writes it to a temporary file and
//! parses it under `catch_unwind`. A panic is a finding: the input is saved under
//! `target/fuzz-findings/<target>/` and counted. Errors are fine; that is what the parsers are
//! for. Exit code 1 when something panicked.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use graft::data::{DecodeLimits, decode_rgb, preprocess};
use image::{DynamicImage, ImageFormat, Rgb, RgbImage};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn image_seeds() -> Vec<Vec<u8>> {
    let picture = RgbImage::from_fn(37, 23, |x, y| Rgb([(x * 7) as u8, (y * 11) as u8, 128]));
    let image = DynamicImage::ImageRgb8(picture);
    [
        ImageFormat::Jpeg,
        ImageFormat::Png,
        ImageFormat::Gif,
        ImageFormat::Bmp,
        ImageFormat::WebP,
    ]
    .into_iter()
    .map(|format| {
        let mut bytes = std::io::Cursor::new(Vec::new());
        image.write_to(&mut bytes, format).expect("encodes");
        bytes.into_inner()
    })
    .collect()
}

fn safetensors_seed() -> Vec<u8> {
    let values: Vec<u8> = (0..24)
        .flat_map(|i| (i as f32 * 0.5).to_le_bytes())
        .collect();
    let view =
        safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![2, 3, 4], &values)
            .expect("shape fits");
    safetensors::serialize([("features.0.0.weight", view)], None).expect("serialises")
}

/// Checkpoint seeds: safetensors, a zip .pth made from it by the loader test's stdlib-only
/// script (when python3 is there), and the store's legacy Lite0 .pth (when installed).
fn checkpoint_seeds(dir: &Path) -> Vec<Vec<u8>> {
    let mut seeds = vec![safetensors_seed()];
    let st = dir.join("seed.safetensors");
    let pth = dir.join("seed.pth");
    std::fs::write(&st, &seeds[0]).expect("temp dir is writable");
    let script =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/safetensors_to_zip_pth.py");
    let made = std::process::Command::new("python3")
        .arg(&script)
        .arg(&st)
        .arg(&pth)
        .status()
        .is_ok_and(|s| s.success());
    if made {
        seeds.push(std::fs::read(&pth).expect("just written"));
    } else {
        eprintln!("fuzz: python3 not available, no zip .pth seed");
    }
    let lite0 = graft::backbone::find("efficientnet-lite0").expect("registered");
    match graft::weights::store::installed(lite0) {
        Some(path) => seeds.push(std::fs::read(path).expect("installed file reads")),
        None => eprintln!("fuzz: efficientnet-lite0 not installed, no legacy .pth seed"),
    }
    seeds
}

fn mutate(seed: &[u8], rng: &mut ChaCha8Rng) -> Vec<u8> {
    let mut data = seed.to_vec();
    // Headers and metadata sit at the front; aim most mutations there.
    let span = |rng: &mut ChaCha8Rng, len: usize| {
        if rng.random_bool(0.7) {
            rng.random_range(0..len.clamp(1, 4096))
        } else {
            rng.random_range(0..len.max(1))
        }
    };
    for _ in 0..rng.random_range(1..=4) {
        if data.is_empty() {
            data.push(rng.random());
            continue;
        }
        let at = span(rng, data.len());
        match rng.random_range(0..6) {
            0 => data[at] ^= 1 << rng.random_range(0..8),
            1 => data[at] = rng.random(),
            2 => data.truncate(at),
            3 => {
                let end = (at + rng.random_range(1..64)).min(data.len());
                let copy = data[at..end].to_vec();
                data.splice(at..at, copy);
            }
            4 => {
                let end = (at + rng.random_range(1..64)).min(data.len());
                data.drain(at..end);
            }
            _ => {
                let extreme: [u8; 4] = *[
                    [0xFF; 4],
                    [0x7F, 0xFF, 0xFF, 0xFF],
                    [0, 0, 0, 0],
                    [0x80, 0, 0, 0],
                ]
                .get(rng.random_range(0..4))
                .expect("in range");
                let end = (at + 4).min(data.len());
                data[at..end].copy_from_slice(&extreme[..end - at]);
            }
        }
    }
    data
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let target = args.get(1).map(String::as_str).unwrap_or("");
    let value = |flag: &str, default: u64| -> u64 {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let (seconds, seed) = (value("--seconds", 60), value("--seed", 1));
    let work = tempfile::tempdir().expect("temp dir");
    let (seeds, extension): (Vec<Vec<u8>>, &str) = match target {
        "decode" => (image_seeds(), "img"),
        "checkpoint" => (checkpoint_seeds(work.path()), "bin"),
        _ => {
            eprintln!("usage: fuzz decode|checkpoint [--seconds N] [--seed S]");
            std::process::exit(2);
        }
    };
    let findings_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("target/fuzz-findings")
        .join(target);
    // Panics are findings, reported below; keep the default hook from printing each one.
    std::panic::set_hook(Box::new(|_| {}));
    let config = graft::backbone::find("efficientnet-lite0")
        .expect("registered")
        .source_config(None);
    let limits = DecodeLimits {
        max_pixels: 4_000_000,
        max_file_bytes: 64 * 1024 * 1024,
        ..DecodeLimits::default()
    };
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let (mut iterations, mut parsed, mut panics) = (0u64, 0u64, 0u64);
    let input = work.path().join(format!("input.{extension}"));
    while Instant::now() < deadline {
        let seed_bytes = &seeds[rng.random_range(0..seeds.len())];
        let data = mutate(seed_bytes, &mut rng);
        std::fs::write(&input, &data).expect("temp file writes");
        let outcome = std::panic::catch_unwind(|| match target {
            "decode" => decode_rgb(&input, limits)
                .map(|rgb| preprocess(&rgb, &config).len())
                .is_ok(),
            _ => graft::weights::checkpoint::Checkpoint::open(&input).is_ok(),
        });
        iterations += 1;
        match outcome {
            Ok(true) => parsed += 1,
            Ok(false) => {}
            Err(_) => {
                panics += 1;
                std::fs::create_dir_all(&findings_dir).expect("target dir is writable");
                let file = findings_dir.join(format!("panic-{seed}-{iterations}.{extension}"));
                std::fs::write(&file, &data).expect("findings dir is writable");
                eprintln!("fuzz: PANIC on input saved as {}", file.display());
            }
        }
    }
    println!(
        "fuzz {target}: {iterations} inputs in {seconds} s ({parsed} parsed, {} rejected with an error), {panics} panics",
        iterations - parsed - panics
    );
    if panics > 0 {
        std::process::exit(1);
    }
}

//! `graft extract`: content-addressed, resumable after SIGKILL, corrupt shards recomputed.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use safetensors::SafeTensors;

/// 2 classes x 40 flower photos, copied into a fresh folder.
fn small_flowers(dir: &Path) -> PathBuf {
    let root = dir.join("flowers");
    for class in ["daisy", "roses"] {
        let src = shared().join("data/flowers").join(class);
        let mut names: Vec<_> = std::fs::read_dir(&src)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        names.sort();
        std::fs::create_dir_all(root.join(class)).unwrap();
        for path in names.iter().take(40) {
            std::fs::copy(path, root.join(class).join(path.file_name().unwrap())).unwrap();
        }
    }
    root
}

fn extract_cmd(data: &Path, cache: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_graft"));
    cmd.args([
        "--threads",
        "2",
        "extract",
        "--batch-size",
        "8",
        "--cache-dir",
    ])
    .arg(cache)
    .arg(data);
    cmd
}

fn run_ok(mut cmd: Command) -> String {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn shards(cache: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![cache.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let p = entry.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|e| e == "safetensors") {
                found.push(p);
            }
        }
    }
    found
}

/// Every row of the cache, read the way a user without graft would: key -> (count, features).
fn rows(cache: &Path) -> HashMap<String, (usize, Vec<f32>)> {
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

#[test]
fn second_run_reuses_everything_and_sigkill_resumes_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let data = small_flowers(dir.path());
    let reference = dir.path().join("reference-cache");
    let first = run_ok(extract_cmd(&data, &reference));
    assert!(
        first.contains("80 images: extracted 80, reused 0, skipped 0"),
        "{first}"
    );
    let second = run_ok(extract_cmd(&data, &reference));
    assert!(
        second.contains("extracted 0, reused 80, skipped 0"),
        "{second}"
    );
    let expected = rows(&reference);
    assert_eq!(expected.len(), 80);

    // Kill an extraction once a few shards are on disk, then finish it.
    let cache = dir.path().join("killed-cache");
    let mut child = extract_cmd(&data, &cache)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while shards(&cache).len() < 3 && start.elapsed() < Duration::from_secs(120) {
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let partial = rows(&cache).len();
    assert!(partial > 0 && partial < 80, "killed with {partial} rows");
    let resumed = run_ok(extract_cmd(&data, &cache));
    assert!(resumed.contains(&format!("reused {partial}")), "{resumed}");
    let got = rows(&cache);
    assert_eq!(got.len(), 80);
    for (key, (count, features)) in &got {
        assert_eq!(*count, 1, "{key} has {count} rows");
        let reference = &expected[key].1;
        assert_eq!(
            features, reference,
            "{key}: features differ from the uninterrupted run"
        );
    }
}

#[test]
fn a_corrupted_shard_is_set_aside_and_recomputed() {
    let dir = tempfile::tempdir().unwrap();
    let data = small_flowers(dir.path());
    let cache = dir.path().join("cache");
    run_ok(extract_cmd(&data, &cache));
    let victim = shards(&cache).into_iter().next().unwrap();
    let mut bytes = std::fs::read(&victim).unwrap();
    let last = bytes.len() - 3;
    bytes[last] ^= 0xff;
    std::fs::write(&victim, bytes).unwrap();
    let out = extract_cmd(&data, &cache).output().unwrap();
    assert!(out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("checksum failed"), "{stderr}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("extracted 8, reused 72"), "{stdout}");
    assert!(rows(&cache).values().all(|(count, _)| *count == 1));
}

#[test]
fn ctrl_c_stops_after_the_current_batch_and_the_rerun_completes() {
    let dir = tempfile::tempdir().unwrap();
    let data = small_flowers(dir.path());
    let cache = dir.path().join("cache");
    let child = extract_cmd(&data, &cache)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while shards(&cache).len() < 2 && start.elapsed() < Duration::from_secs(120) {
        std::thread::sleep(Duration::from_millis(20));
    }
    // SAFETY: plain signal to a child we own.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGINT) };
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(130), "{stderr}");
    assert!(stderr.contains("interrupted:"), "{stderr}");
    let partial = rows(&cache).len();
    assert!(partial > 0 && partial < 80, "stopped with {partial} rows");
    let resumed = run_ok(extract_cmd(&data, &cache));
    assert!(
        resumed.contains(&format!("extracted {}, reused {partial}", 80 - partial)),
        "{resumed}"
    );
    assert!(rows(&cache).values().all(|(count, _)| *count == 1));
}

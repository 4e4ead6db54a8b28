//! `graft extract`: content-addressed, resumable after SIGKILL, corrupt shards recomputed.

mod common;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// 2 classes x 40 flower photos, copied into a fresh folder.
fn small_flowers(dir: &Path) -> PathBuf {
    flowers(dir, 40)
}

/// 2 classes x `per_class` flower photos, copied into a fresh folder.
fn flowers(dir: &Path, per_class: usize) -> PathBuf {
    let root = dir.join("flowers");
    copy_flowers(&root, &["daisy", "roses"], per_class);
    root
}

fn extract_cmd(data: &Path, cache: &Path) -> Command {
    extract_cmd_batch(data, cache, 8)
}

fn extract_cmd_batch(data: &Path, cache: &Path, batch_size: usize) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_graft"));
    cmd.args(["--threads", "2", "extract", "--batch-size"])
        .arg(batch_size.to_string())
        .arg("--cache-dir")
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

/// The image files of an ImageFolder tree (one level of class folders).
fn image_files(root: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(root)
        .unwrap()
        .flat_map(|class| std::fs::read_dir(class.unwrap().path()).unwrap())
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    files
}

/// Every key at most once, and every row bit-identical to the uninterrupted extraction's.
fn assert_rows_match(
    got: &HashMap<String, (usize, Vec<f32>)>,
    expected: &HashMap<String, (usize, Vec<f32>)>,
    when: &str,
) {
    for (key, (count, features)) in got {
        assert_eq!(*count, 1, "{when}: {key} has {count} rows");
        let reference = &expected
            .get(key)
            .unwrap_or_else(|| panic!("{when}: {key} is not an image of the dataset"))
            .1;
        assert!(
            features == reference,
            "{when}: {key}: features differ from the uninterrupted run"
        );
    }
}

/// Start `command` 5 times and SIGKILL it at a moment drawn from a seeded RNG over what is
/// left of a run that takes `full` uninterrupted; the first time, once the run has committed
/// its first rows, within a drawn share of one image's time after that, so that at least one
/// kill lands mid-run whatever the machine's load (moments drawn over `full` alone all fell
/// after a run that went faster than the timed one, one local run in three: rows after each
/// kill [60, 60, 60, 60, 60]). After each kill every cached row must be unique and equal to
/// `expected`'s. Returns the number of rows after each kill.
fn kill_five_times(
    command: impl Fn() -> Command,
    full: Duration,
    cache: &Path,
    expected: &HashMap<String, (usize, Vec<f32>)>,
    seed: u64,
) -> Vec<usize> {
    use rand::{Rng, SeedableRng};
    let n = expected.len();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let mut partial_states = Vec::new();
    for attempt in 0..5 {
        let before = rows(cache).len();
        // A moment within what is left of the run: the share of images not yet cached.
        let left = full.mul_f64((n - before).max(1) as f64 / n as f64);
        let wait = left.mul_f64(rng.random_range(0.0..1.0));
        let mut child = command()
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = if attempt == 0 {
            while rows(cache).len() == before && child.try_wait().unwrap().is_none() {
                std::thread::sleep(Duration::from_millis(5));
            }
            Instant::now() + (full / n.max(1) as u32).mul_f64(rng.random_range(0.0..1.0))
        } else {
            Instant::now() + wait
        };
        while Instant::now() < deadline && child.try_wait().unwrap().is_none() {
            std::thread::sleep(Duration::from_millis(5));
        }
        let _ = child.kill(); // SIGKILL; harmless if it already finished
        child.wait().unwrap();
        let now = rows(cache);
        assert_rows_match(&now, expected, &format!("after kill {}", attempt + 1));
        assert!(now.len() >= before, "kill {} lost rows", attempt + 1);
        partial_states.push(now.len());
    }
    partial_states
}

/// `kill -9` at 5 moments drawn from a seeded RNG over the extraction's duration, each time
/// resuming with the same command, then one run to the end: the cache holds exactly one row
/// per image, each equal to the row of an uninterrupted extraction.
#[test]
fn sigkill_at_five_random_moments_then_resume_gives_the_uninterrupted_rows() {
    let dir = tempfile::tempdir().unwrap();
    let data = flowers(dir.path(), 30);
    let images = image_files(&data);
    let n = images.len();
    let keys: HashSet<String> = images
        .iter()
        .map(|p| graft::util::file_sha256(p).unwrap())
        .collect();
    assert_eq!(keys.len(), n, "the photos are distinct files");
    // Batches of 2: 30 commit points to land between (or on).
    let batch = 2;

    let reference = dir.path().join("reference-cache");
    let started = Instant::now();
    let first = run_ok(extract_cmd_batch(&data, &reference, batch));
    let full = started.elapsed();
    assert!(
        first.contains(&format!("{n} images: extracted {n}, reused 0, skipped 0")),
        "{first}"
    );
    let expected = rows(&reference);
    assert_eq!(expected.keys().cloned().collect::<HashSet<_>>(), keys);

    let cache = dir.path().join("killed-cache");
    let partial_states = kill_five_times(
        || extract_cmd_batch(&data, &cache, batch),
        full,
        &cache,
        &expected,
        11,
    );
    assert!(
        partial_states.iter().any(|&r| r > 0 && r < n),
        "no kill landed in the middle of the extraction (rows after each: {partial_states:?})"
    );
    let done = rows(&cache).len();
    let last = run_ok(extract_cmd_batch(&data, &cache, batch));
    assert!(
        last.contains(&format!(
            "{n} images: extracted {}, reused {done}, skipped 0",
            n - done
        )),
        "rows after each kill: {partial_states:?}\n{last}"
    );
    let got = rows(&cache);
    assert_rows_match(&got, &expected, "at the end");
    assert_eq!(
        got.keys().cloned().collect::<HashSet<_>>(),
        keys,
        "one row per image, none missing"
    );
    eprintln!("rows after each kill: {partial_states:?}");
}

fn train_head_cmd(data: &Path, cache: &Path, out: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_graft"));
    cmd.args([
        "--threads",
        "2",
        "train",
        "--recipe",
        "head",
        "--extract-batch-size",
        "2",
    ])
    .arg("--cache-dir")
    .arg(cache)
    .arg("--out")
    .arg(out)
    .arg(data);
    cmd
}

/// `graft train` (its extraction, then the head) killed at 5 random moments, rerun each time:
/// the cache never holds a duplicate or a wrong row, and the final run trains the head of an
/// uninterrupted run, bit for bit.
#[test]
fn sigkill_train_at_five_random_moments_then_the_rerun_trains_the_same_head() {
    let dir = tempfile::tempdir().unwrap();
    let data = flowers(dir.path(), 60);
    let n = image_files(&data).len();
    let reference_cache = dir.path().join("reference-cache");
    let reference_run = dir.path().join("reference-run");
    let out = train_head_cmd(&data, &reference_cache, &reference_run)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let expected = rows(&reference_cache);
    assert_eq!(expected.len(), n);
    // The kill moments are drawn over the start-up and extraction (timed alone, with the same
    // batch size) and a quarter beyond, into the head's training: extraction is a small part
    // of the whole command now, and the kills are meant to land in it.
    let started = Instant::now();
    run_ok(extract_cmd_batch(
        &data,
        &dir.path().join("timing-cache"),
        2,
    ));
    let extraction = started.elapsed().mul_f64(1.25);

    let cache = dir.path().join("killed-cache");
    let run = dir.path().join("killed-run");
    let partial_states = kill_five_times(
        || train_head_cmd(&data, &cache, &run),
        extraction,
        &cache,
        &expected,
        7,
    );
    assert!(
        partial_states.iter().any(|&r| r > 0 && r < n),
        "no kill landed in the middle of the extraction (rows after each: {partial_states:?})"
    );
    let out = train_head_cmd(&data, &cache, &run).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_rows_match(&rows(&cache), &expected, "at the end");
    assert_eq!(rows(&cache).len(), n, "one row per image");
    assert_eq!(
        std::fs::read(run.join("head.safetensors")).unwrap(),
        std::fs::read(reference_run.join("head.safetensors")).unwrap(),
        "the head differs from the uninterrupted run's"
    );
    eprintln!("rows after each kill: {partial_states:?}");
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

/// A full disk while writing the cache, simulated by a file size limit (writes past it fail
/// with EFBIG, as they would with ENOSPC): a clear error naming the shard and the OS error,
/// nothing half-written left behind, and a later run without the limit completes.
#[test]
fn a_full_disk_is_a_clear_error_and_the_rerun_completes() {
    use std::os::unix::process::CommandExt;

    let dir = tempfile::tempdir().unwrap();
    let data = flowers(dir.path(), 20);
    let cache = dir.path().join("cache");
    let mut cmd = extract_cmd(&data, &cache);
    // SAFETY: setrlimit and signal are async-signal-safe; nothing else runs in the child.
    unsafe {
        cmd.pre_exec(|| {
            // Smaller than one shard of 8 rows (8 x 1280 x 4 bytes).
            let limit = libc::rlimit {
                rlim_cur: 16 * 1024,
                rlim_max: 16 * 1024,
            };
            if libc::setrlimit(libc::RLIMIT_FSIZE, &limit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // Without this the kernel kills the writer with SIGXFSZ instead of failing the write.
            libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
            Ok(())
        });
    }
    let out = cmd.output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_ne!(out.status.code(), Some(101), "panicked:\n{stderr}");
    assert!(
        out.status.code().is_some_and(|c| c != 0),
        "a failed write must fail the run: {:?}\n{stderr}",
        out.status
    );
    let os_error = std::io::Error::from_raw_os_error(libc::EFBIG).to_string();
    let lines: Vec<&str> = stderr.lines().filter(|l| l.contains(&os_error)).collect();
    assert_eq!(lines.len(), 1, "one line with the OS error:\n{stderr}");
    let line = lines[0];
    assert!(
        line.starts_with("error: ") && line.matches(&os_error).count() == 1,
        "{line}"
    );
    assert!(
        line.contains(&cache.display().to_string())
            && line.contains("/shard-")
            && line.contains(".safetensors: "),
        "the line names the shard file: {line}"
    );
    let left: Vec<PathBuf> = walk(&cache);
    assert!(left.is_empty(), "nothing half-written is left: {left:?}");

    let rerun = run_ok(extract_cmd(&data, &cache));
    assert!(
        rerun.contains("40 images: extracted 40, reused 0, skipped 0"),
        "{rerun}"
    );
    let got = rows(&cache);
    assert_eq!(got.len(), 40);
    assert!(got.values().all(|(count, _)| *count == 1));
}

/// `graft cache <command> --cache-dir cache`, its stdout.
fn cache_cmd(command: &str, cache: &Path) -> String {
    run_ok({
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_graft"));
        cmd.args(["cache", command, "--cache-dir"]).arg(cache);
        cmd
    })
}

/// Every image of `expected` present, every row bit-identical to the single-process run's;
/// the number of rows (copies included).
fn assert_complete(
    cache: &Path,
    expected: &HashMap<String, (usize, Vec<f32>)>,
    when: &str,
) -> usize {
    let got = rows(cache);
    assert_eq!(got.len(), expected.len(), "{when}: images with a row");
    let mut total = 0;
    for (key, (count, features)) in &got {
        assert!(
            features == &expected[key].1,
            "{when}: {key} differs from the single-process run"
        );
        total += count;
    }
    total
}

#[test]
fn many_writers_share_one_cache_and_compaction_leaves_one_row_per_image() {
    use rand::{Rng, SeedableRng};
    let dir = tempfile::tempdir().unwrap();
    let data = flowers(dir.path(), 60);
    let reference = dir.path().join("reference");
    run_ok(extract_cmd(&data, &reference));
    let expected = rows(&reference);
    assert_eq!(expected.len(), 120);

    // 4 shards and 2 unsharded extractions, started at once.
    let writers = |cache: &Path| -> Vec<Command> {
        let mut commands: Vec<Command> = (0..4)
            .map(|i| {
                let mut cmd = extract_cmd(&data, cache);
                cmd.arg("--shard").arg(format!("{i}/4"));
                cmd
            })
            .collect();
        commands.push(extract_cmd(&data, cache));
        commands.push(extract_cmd(&data, cache));
        commands
    };
    let shared = dir.path().join("shared");
    // A temporary file of a live writer on this machine (this test process) must survive every
    // writer's start; one of a dead process is removed.
    let variant = shared.join(
        shards(&reference)[0]
            .parent()
            .unwrap()
            .strip_prefix(&reference)
            .unwrap(),
    );
    std::fs::create_dir_all(&variant).unwrap();
    let live = variant.join(format!(
        "{}{}-1",
        graft::features::cache::TMP_PREFIX,
        graft::features::cache::owner_tag(std::process::id())
    ));
    let dead = variant.join(format!(
        "{}{}-1",
        graft::features::cache::TMP_PREFIX,
        graft::features::cache::owner_tag(999_999_999)
    ));
    std::fs::write(&live, b"in progress").unwrap();
    std::fs::write(&dead, b"left by a killed writer").unwrap();
    let children: Vec<_> = writers(&shared)
        .into_iter()
        .map(|mut cmd| {
            cmd.stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let mut sharded = 0;
    for child in children {
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{stderr}");
        if let Some(count) = stderr
            .lines()
            .find_map(|l| l.strip_prefix("shard ").and_then(|l| l.split(": ").nth(1)))
        {
            sharded += count.split(' ').next().unwrap().parse::<usize>().unwrap();
        }
    }
    assert_eq!(sharded, 120, "the 4 shards split the 120 images");
    assert!(live.exists(), "a live writer's temporary file was deleted");
    assert!(!dead.exists(), "a dead writer's temporary file was kept");
    std::fs::remove_file(&live).unwrap();
    let total = assert_complete(&shared, &expected, "6 writers");
    assert!(total >= 120);
    assert!(cache_cmd("verify", &shared).contains(" 0 corrupt"));
    let compacted = cache_cmd("compact", &shared);
    assert!(
        compacted.contains(&format!("{total} rows -> 120")),
        "{compacted}"
    );
    assert_eq!(assert_complete(&shared, &expected, "after compact"), 120);

    // The same 6 writers, 2 of them SIGKILLed at seeded random moments, then rerun.
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(20);
    let killed_cache = dir.path().join("killed");
    let mut children: Vec<_> = writers(&killed_cache)
        .into_iter()
        .map(|mut cmd| {
            cmd.stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();
    let victims = [rng.random_range(0..4), 4 + rng.random_range(0..2)];
    for &victim in &victims {
        std::thread::sleep(Duration::from_millis(rng.random_range(300..3000)));
        let _ = children[victim].kill();
    }
    for child in &mut children {
        child.wait().unwrap();
    }
    let mut commands = writers(&killed_cache);
    for &victim in &victims {
        run_ok(std::mem::replace(
            &mut commands[victim],
            Command::new("true"),
        ));
    }
    assert!(cache_cmd("verify", &killed_cache).contains(" 0 corrupt"));
    cache_cmd("compact", &killed_cache);
    assert_eq!(
        assert_complete(&killed_cache, &expected, "killed and rerun"),
        120
    );
    let stats = cache_cmd("stats", &killed_cache);
    assert!(stats.contains("120 rows, 120 distinct images"), "{stats}");
}

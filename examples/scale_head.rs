//! The head recipe on more cached rows than fit in memory: N synthetic feature rows (default
//! 1,000,000 of 1280 floats, 5.1 GB of shards) written into a cache directory, then the steps
//! of `graft train --recipe head` after extraction (`bottleneck::fit_top`, `score`,
//! `predictions`) on the rows as the recipe gets them, read from the shards a mini-batch or a
//! chunk at a time. Prints one JSON line with the times, the accuracies and the peak RSS.
//! `bench/scale.sh` runs it.
//!
//!     cargo run --release --example scale_head -- [--rows N] [--dim D] [--classes K]
//!         [--epochs E] [--batch-size B] [--dir DIR]
//!
//! The rows are class centroids plus noise, so the accuracy says the head learned something.

use std::path::PathBuf;
use std::time::Instant;

use graft::features::cache::{ShardMeta, commit_shard, serialize_shard};
use graft::features::rows::{CachedRows, LabelledRows};
use graft::progress::Silent;
use graft::recipe::bottleneck::{self, BottleneckOptions};
use graft::train::dense::DenseOptions;

fn arg(args: &[String], name: &str, default: usize) -> usize {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map_or(default, |v| {
            v.parse()
                .unwrap_or_else(|_| panic!("{name} {v}: not a number"))
        })
}

/// A fast deterministic generator for the noise (xorshift64*), uniform in [-1, 1).
struct Noise(u64);

impl Noise {
    fn next(&mut self) -> f32 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        let bits = self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 40;
        bits as f32 / (1u64 << 23) as f32 - 1.0
    }
}

/// Peak resident memory of this process, in MB.
fn peak_rss_mb() -> f64 {
    graft::util::peak_rss_bytes() as f64 / 1e6
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let rows = arg(&args, "--rows", 1_000_000);
    let dim = arg(&args, "--dim", 1280);
    let classes = arg(&args, "--classes", 10);
    let epochs = arg(&args, "--epochs", 1);
    let batch_size = arg(&args, "--batch-size", 32);
    let tmp = tempfile::tempdir().expect("a temporary folder");
    let dir = args
        .iter()
        .position(|a| a == "--dir")
        .and_then(|i| args.get(i + 1))
        .map_or_else(|| tmp.path().to_path_buf(), PathBuf::from);
    std::fs::create_dir_all(&dir).expect("the cache folder");

    let started = Instant::now();
    let mut noise = Noise(0x9E37_79B9_7F4A_7C15);
    let centroids: Vec<f32> = (0..classes * dim).map(|_| noise.next()).collect();
    let meta = ShardMeta {
        backbone: "synthetic".into(),
        weights_id: "synthetic".into(),
        preprocessing: "synthetic".into(),
    };
    let mut keys = Vec::with_capacity(rows);
    let mut labels = Vec::with_capacity(rows);
    const SHARD: usize = 4096;
    for start in (0..rows).step_by(SHARD) {
        let n = SHARD.min(rows - start);
        let mut shard_keys = Vec::with_capacity(n);
        let mut values = Vec::with_capacity(n * dim);
        for i in start..start + n {
            let label = i % classes;
            shard_keys.push(format!("row{i:09}"));
            labels.push(label);
            let centroid = &centroids[label * dim..(label + 1) * dim];
            values.extend(centroid.iter().map(|c| c + 8.0 * noise.next()));
        }
        commit_shard(&dir, &serialize_shard(&shard_keys, &values, dim, &meta))
            .expect("a shard written");
        keys.extend(shard_keys);
    }
    let write_s = started.elapsed().as_secs_f64();

    let started = Instant::now();
    let split = rows - rows / 10;
    // What the head recipe trains on: the cached rows and their (here unnamed) images.
    let rows_of = |range: std::ops::Range<usize>| {
        let cached = CachedRows::open(&dir, &keys[range.clone()], &labels[range.clone()])
            .expect("cached rows");
        LabelledRows::new(cached, vec![PathBuf::new(); range.len()], dim, &dir).expect("rows")
    };
    let train = rows_of(0..split);
    let val = rows_of(split..rows);
    drop(keys);
    drop(labels);
    let open_s = started.elapsed().as_secs_f64();

    let started = Instant::now();
    // The head recipe's own steps (`graft train --recipe head`): fit with early stopping on
    // the validation rows, score both sets, list the validation verdicts.
    let options = BottleneckOptions {
        dense: DenseOptions {
            epochs,
            batch_size,
            ..DenseOptions::default()
        },
        ..BottleneckOptions::default()
    };
    let names: Vec<String> = (0..classes).map(|c| format!("class{c}")).collect();
    let fitted = bottleneck::fit_top(&train, &val, &names, &options, &mut Silent)
        .expect("training reads the cache");
    let train_accuracy = bottleneck::score(&fitted.head, &train, &names)
        .expect("scoring reads the cache")
        .accuracy;
    let val_metrics = bottleneck::score(&fitted.head, &val, &names).expect("scoring");
    let verdicts = bottleneck::predictions(&fitted.head, &val, &val.paths, &names)
        .expect("predictions read the cache");
    assert_eq!(verdicts.len(), val.paths.len());
    let train_s = started.elapsed().as_secs_f64();
    println!(
        "{}",
        serde_json::json!({
            "what": "head on cached rows, disk-backed",
            "rows": rows, "dim": dim, "classes": classes, "epochs": epochs,
            "batch_size": batch_size,
            "shard_bytes": rows as u64 * dim as u64 * 4,
            "write_s": write_s, "open_s": open_s, "train_s": train_s,
            "train_accuracy": train_accuracy,
            "val_accuracy": val_metrics.accuracy,
            "peak_rss_mb": peak_rss_mb(),
        })
    );
}

//! `graft doctor`'s neighbour checks at scale: N synthetic feature rows (default 100,000 of 1280
//! floats, clustered like pooled features, with planted copies and far points) through the same
//! steps as the doctor (`neighbours::analyse`: normalise, exact blocked kNN with the duplicate
//! links, the outlier fence). Prints one JSON line with the time, the time per 10k rows, the
//! peak RSS (VmHWM) and whether the planted copies and far points were found.
//! `bench/doctor_scale.sh` runs it.
//!
//!     cargo run --release --example neighbours_scale -- [--rows N] [--dim D] [--k K]
//!         [--block B] [--naive N]
//!
//! `--naive N` also times the search the leakage check used before (one dot product at a time,
//! rows in parallel) on the first N rows against the blocked one, and prints the ratio.

use std::path::PathBuf;
use std::time::Instant;

use graft::doctor::neighbours::{self, NeighbourOptions, normalize_rows, search};
use rayon::prelude::*;

fn arg(args: &[String], name: &str, default: usize) -> usize {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map_or(default, |v| {
            v.parse()
                .unwrap_or_else(|_| panic!("{name} {v}: not a number"))
        })
}

/// A fast deterministic generator (xorshift64*), uniform in [-1, 1).
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

/// Rows near 200 cluster centres (non-negative, like pooled ReLU features), then every 10,000th
/// row copied at the end (`copies`) and 10 rows replaced by far points (`far`).
fn synthetic(n: usize, dim: usize) -> (Vec<f32>, Vec<(usize, usize)>, Vec<usize>) {
    let clusters = 200;
    let mut noise = Noise(0x9E37_79B9_7F4A_7C15);
    let centres: Vec<f32> = (0..clusters * dim)
        .map(|_| (noise.next() + 1.0) * 0.5)
        .collect();
    let copies_of: Vec<usize> = (0..n).step_by(10_000).take(n / 100).collect();
    let base = n - copies_of.len();
    let mut rows = vec![0f32; n * dim];
    rows[..base * dim]
        .par_chunks_mut(dim)
        .enumerate()
        .for_each(|(i, row)| {
            let mut noise = Noise(0x2545_F491 ^ (i as u64 + 1).wrapping_mul(0x9E37_79B9));
            let centre = &centres[(i % clusters) * dim..][..dim];
            for (v, c) in row.iter_mut().zip(centre) {
                *v = (c + 0.5 * noise.next()).max(0.0);
            }
        });
    let far: Vec<usize> = (0..10).map(|f| 12_345 * (f + 1) % base).collect();
    for (f, &i) in far.iter().enumerate() {
        // A few strong coordinates of its own: unlike every cluster.
        let row = &mut rows[i * dim..][..dim];
        row.fill(0.0);
        for j in 0..8 {
            row[(f * 97 + j * 131) % dim] = 1.0;
        }
    }
    let mut copies = Vec::new();
    for (c, &i) in copies_of.iter().enumerate() {
        let (src, dst) = rows.split_at_mut((base + c) * dim);
        dst[..dim].copy_from_slice(&src[i * dim..][..dim]);
        copies.push((i, base + c));
    }
    (rows, copies, far)
}

/// The search the leakage check used before: per row, a dot product with every other row.
fn naive_nearest(rows: &[f32], dim: usize) -> Vec<(usize, f32)> {
    rows.par_chunks_exact(dim)
        .enumerate()
        .map(|(i, v)| {
            rows.chunks_exact(dim)
                .enumerate()
                .filter(|&(j, _)| j != i)
                .map(|(j, t)| (j, t.iter().zip(v).map(|(a, b)| a * b).sum::<f32>()))
                .fold(
                    (0, f32::NEG_INFINITY),
                    |best, x| if x.1 > best.1 { x } else { best },
                )
        })
        .collect()
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let n = arg(&args, "--rows", 100_000);
    let dim = arg(&args, "--dim", 1280);
    let defaults = NeighbourOptions::default();
    let options = NeighbourOptions {
        k: arg(&args, "--k", defaults.k),
        block: arg(&args, "--block", defaults.block),
        ..defaults
    };
    let naive = arg(&args, "--naive", 0).min(n);

    let (rows, copies, far) = synthetic(n, dim);
    if naive > 0 {
        let mut subset = rows[..naive * dim].to_vec();
        normalize_rows(&mut subset, dim);
        let start = Instant::now();
        let old = naive_nearest(&subset, dim);
        let old_s = start.elapsed().as_secs_f64();
        let start = Instant::now();
        let new = search(&subset, dim, 1, options.block, f32::INFINITY).knn;
        let new_s = start.elapsed().as_secs_f64();
        let same = (0..naive)
            .filter(|&i| (old[i].1 - new.row(i)[0].similarity).abs() < 1e-4)
            .count();
        println!(
            "{{\"what\": \"nearest, naive vs blocked\", \"rows\": {naive}, \"dim\": {dim}, \"naive_s\": {old_s:.3}, \"blocked_s\": {new_s:.3}, \"speedup\": {:.2}, \"same_nearest_similarity\": {same}}}",
            old_s / new_s
        );
    }

    let paths: Vec<PathBuf> = (0..n).map(|i| PathBuf::from(format!("{i}.jpg"))).collect();
    let keys = vec![None; n];
    // Random 64-bit perceptual hashes (all pairs are compared), the copies sharing their
    // original's.
    let mut noise = Noise(7);
    let mut hashes: Vec<Option<u64>> = (0..n)
        .map(|_| Some(noise.0.wrapping_add((noise.next().to_bits() as u64) << 32)))
        .collect();
    for &(a, b) in &copies {
        hashes[b] = hashes[a];
    }
    let start = Instant::now();
    let threads = rayon::current_num_threads();
    let report = neighbours::analyse(rows, dim, &paths, &keys, &hashes, &options);
    let seconds = start.elapsed().as_secs_f64();
    let found_copies = copies
        .iter()
        .filter(|(a, b)| {
            report
                .duplicates
                .near
                .iter()
                .any(|s| s.files.contains(&paths[*a]) && s.files.contains(&paths[*b]))
        })
        .count();
    let flagged: Vec<&PathBuf> = report.outlier_images.iter().map(|o| &o.file).collect();
    let found_far = far
        .iter()
        .filter(|&&i| flagged.contains(&&paths[i]))
        .count();
    println!(
        "{{\"what\": \"doctor neighbours\", \"rows\": {n}, \"dim\": {dim}, \"k\": {}, \"block\": {}, \"threads\": {threads}, \"seconds\": {seconds:.2}, \"seconds_per_10k_rows\": {:.3}, \"peak_rss_mb\": {:.0}, \"rows_mb\": {:.0}, \"outliers\": {}, \"planted_far_found\": \"{found_far}/{}\", \"near_duplicate_sets\": {}, \"planted_copies_found\": \"{found_copies}/{}\"}}",
        report.neighbours.k,
        options.block,
        seconds / (n as f64 / 10_000.0),
        peak_rss_mb(),
        (n * dim * 4) as f64 / 1e6,
        report.outlier_images.len(),
        far.len(),
        report.duplicates.near.len(),
        copies.len(),
    );
}

//! Exact k-nearest neighbours of every image among all the others (train and validation
//! together), on the pooled backbone features, and what they show: outliers (far from all their
//! neighbours) and near-duplicate sets (anywhere in the data, not only across the split).
//!
//! The metric is cosine: rows are L2-normalised, the similarity of two rows is their dot product
//! and their distance `1 - similarity`. The search is brute force in blocks: the similarities of a
//! block of rows with another block are one matrix product (`kernels::matmul_transposed`, the
//! `gemm` crate), each row keeps its `k` best in a small heap, and only block pairs `(i, j)`
//! with `j >= i` are computed (the product is symmetric; each tile updates both blocks' rows).
//! Memory is the rows, `n * k` neighbours and one `block x block` tile per thread, never
//! `n x n`; time is `n^2 * dim` multiply-adds, whatever `n` (exact at any size, and about
//! 2.6 minutes per 100k rows of width 1280 on 2 cores, see docs/data-quality.md).

use std::cmp::Ordering;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Mutex;

use rayon::prelude::*;
use serde::Serialize;

use super::{Finding, Severity};
use crate::kernels::matmul_transposed;

/// Settings of the neighbour checks.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct NeighbourOptions {
    /// Neighbours per image.
    pub k: usize,
    /// Tukey's fence factor `f`: an image is an outlier when its mean distance to its `k`
    /// neighbours is above `Q3 + f * IQR` of all images' mean distances.
    pub iqr_factor: f64,
    /// Cosine similarity at or above which two images are near-duplicates.
    pub duplicate_cosine: f32,
    /// Perceptual-hash distance (bits of 64) at or below which two images are near-duplicates
    /// too: re-encoded, resized copies can fall below the cosine threshold (docs/data-quality.md).
    pub duplicate_hash_bits: u32,
    /// Rows per block of the search (the tile is `block x block` similarities).
    pub block: usize,
}

impl Default for NeighbourOptions {
    fn default() -> Self {
        Self {
            k: 10,
            // Tukey's "outside" fence.
            iqr_factor: 1.5,
            // The train/validation leakage check's threshold (DoctorOptions).
            duplicate_cosine: 0.95,
            duplicate_hash_bits: 8,
            block: 512,
        }
    }
}

/// One neighbour of a row: its index and its cosine similarity.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Neighbour {
    pub index: u32,
    pub similarity: f32,
}

impl Neighbour {
    /// The order of the search: higher similarity first, then the lower index, so that the
    /// `k` nearest are one well-defined set even with ties. NaN similarities rank last.
    fn better(&self, other: &Neighbour) -> bool {
        let (a, b) = (self.key(), other.key());
        a > b || (a == b && self.index < other.index)
    }

    fn key(&self) -> f32 {
        if self.similarity.is_nan() {
            f32::NEG_INFINITY
        } else {
            self.similarity
        }
    }
}

/// The `k` nearest neighbours of every row, best first.
#[derive(Debug, Clone, PartialEq)]
pub struct Knn {
    /// Neighbours per row: the requested `k`, or `rows - 1` when there are fewer rows.
    pub k: usize,
    /// `[rows, k]`.
    pub neighbours: Vec<Neighbour>,
}

impl Knn {
    pub fn rows(&self) -> usize {
        self.neighbours.len().checked_div(self.k).unwrap_or(0)
    }

    pub fn row(&self, i: usize) -> &[Neighbour] {
        &self.neighbours[i * self.k..(i + 1) * self.k]
    }
}

/// The `k` best neighbours of each row of a block, each row a binary heap whose root is its
/// worst kept neighbour (so a candidate is compared with one value, and replaces it when better).
struct TopK {
    k: usize,
    /// `[rows, k]`; the first `len[r]` of row `r` are its heap.
    kept: Vec<Neighbour>,
    len: Vec<usize>,
}

impl TopK {
    fn new(rows: usize, k: usize) -> Self {
        Self {
            k,
            kept: vec![
                Neighbour {
                    index: 0,
                    similarity: f32::NEG_INFINITY
                };
                rows * k
            ],
            len: vec![0; rows],
        }
    }

    #[inline]
    fn offer(&mut self, row: usize, candidate: Neighbour) {
        let k = self.k;
        if k == 0 {
            return;
        }
        let heap = &mut self.kept[row * k..(row + 1) * k];
        let len = &mut self.len[row];
        if *len < k {
            // Sift up: a parent is never better than its children.
            let mut i = *len;
            heap[i] = candidate;
            *len += 1;
            while i > 0 {
                let parent = (i - 1) / 2;
                if heap[parent].better(&heap[i]) {
                    heap.swap(parent, i);
                    i = parent;
                } else {
                    break;
                }
            }
        } else if candidate.better(&heap[0]) {
            heap[0] = candidate;
            let mut i = 0;
            loop {
                let (l, r) = (2 * i + 1, 2 * i + 2);
                let mut worst = i;
                if l < k && heap[worst].better(&heap[l]) {
                    worst = l;
                }
                if r < k && heap[worst].better(&heap[r]) {
                    worst = r;
                }
                if worst == i {
                    break;
                }
                heap.swap(i, worst);
                i = worst;
            }
        }
    }

    /// Each row's neighbours, best first.
    fn into_sorted(mut self) -> Vec<Neighbour> {
        let k = self.k;
        if k == 0 {
            return Vec::new();
        }
        for row in self.kept.chunks_exact_mut(k) {
            row.sort_by(|a, b| {
                if a.better(b) {
                    Ordering::Less
                } else if b.better(a) {
                    Ordering::Greater
                } else {
                    Ordering::Equal
                }
            });
        }
        self.kept
    }
}

/// Disjoint sets of rows (union by size, path halving), each root remembering the lowest
/// cosine and the widest hash distance among the links that joined its set.
struct UnionFind {
    parent: Vec<u32>,
    size: Vec<u32>,
    weakest: Vec<f32>,
    /// -1: no hash link.
    widest_bits: Vec<i32>,
}

impl UnionFind {
    fn new(n: usize) -> Self {
        Self {
            parent: (0..n as u32).collect(),
            size: vec![1; n],
            weakest: vec![f32::INFINITY; n],
            widest_bits: vec![-1; n],
        }
    }

    fn find(&mut self, mut x: usize) -> usize {
        while self.parent[x] as usize != x {
            let grandparent = self.parent[self.parent[x] as usize];
            self.parent[x] = grandparent;
            x = grandparent as usize;
        }
        x
    }

    /// Joins the sets of `a` and `b` by a link of cosine `similarity` (`INFINITY`: none) and
    /// hash distance `bits` (-1: none).
    fn union(&mut self, a: usize, b: usize, similarity: f32, bits: i32) {
        let (mut a, mut b) = (self.find(a), self.find(b));
        if a == b {
            return;
        }
        if self.size[a] < self.size[b] {
            std::mem::swap(&mut a, &mut b);
        }
        self.parent[b] = a as u32;
        self.size[a] += self.size[b];
        self.weakest[a] = self.weakest[a].min(self.weakest[b]).min(similarity);
        self.widest_bits[a] = self.widest_bits[a].max(self.widest_bits[b]).max(bits);
    }

    /// Sets of two or more rows, each sorted, ordered by their first row; with each set's
    /// weakest cosine link.
    fn sets(&mut self) -> Vec<(Vec<usize>, f32)> {
        let n = self.parent.len();
        let mut by_root: HashMap<usize, Vec<usize>> = HashMap::new();
        for i in 0..n {
            let root = self.find(i);
            if self.size[root] > 1 {
                by_root.entry(root).or_default().push(i);
            }
        }
        let mut sets: Vec<(Vec<usize>, f32)> = by_root
            .into_iter()
            .map(|(root, members)| (members, self.weakest[root]))
            .collect();
        sets.sort_by_key(|(members, _)| members[0]);
        sets
    }
}

/// What the search over all rows found.
#[derive(Debug, Clone, PartialEq)]
pub struct Search {
    pub knn: Knn,
    /// Rows joined by similarities at or above the duplicate threshold (every such pair, not
    /// only pairs among the `k` nearest), with the lowest similarity of the links joining each.
    pub near_duplicate_sets: Vec<(Vec<usize>, f32)>,
}

/// Rows scaled to unit L2 norm in place (an all-zero row stays zero).
pub fn normalize_rows(rows: &mut [f32], dim: usize) {
    rows.par_chunks_exact_mut(dim).for_each(|row| {
        let norm = row.iter().map(|v| v * v).sum::<f32>().sqrt().max(1e-12);
        row.iter_mut().for_each(|v| *v /= norm);
    });
}

/// Exact `k` nearest neighbours of each row of `rows` (`[n, dim]`) among the other rows, by
/// dot product (cosine when the rows are unit length, [`normalize_rows`]), and the sets of rows
/// linked by a dot product `>= link_at`. A row is never its own neighbour; an identical row
/// is. `block` rows per tile.
pub fn search(rows: &[f32], dim: usize, k: usize, block: usize, link_at: f32) -> Search {
    assert!(
        dim > 0 && rows.len().is_multiple_of(dim),
        "rows are [n, dim]"
    );
    let n = rows.len() / dim;
    let k = k.min(n.saturating_sub(1));
    let block = block.max(1);
    let blocks = n.div_ceil(block);
    let range = |b: usize| b * block..((b + 1) * block).min(n);
    let heaps: Vec<Mutex<TopK>> = (0..blocks)
        .map(|b| Mutex::new(TopK::new(range(b).len(), k)))
        .collect();
    let links = Mutex::new(UnionFind::new(n));
    let pairs: Vec<(usize, usize)> = (0..blocks)
        .flat_map(|i| (i..blocks).map(move |j| (i, j)))
        .collect();
    pairs
        .par_iter()
        .for_each_init(Vec::new, |tile: &mut Vec<f32>, &(bi, bj)| {
            let (ri, rj) = (range(bi), range(bj));
            let (m, w) = (ri.len(), rj.len());
            tile.resize(m * w, 0.0);
            matmul_transposed(
                &rows[ri.start * dim..ri.end * dim],
                m,
                dim,
                &rows[rj.start * dim..rj.end * dim],
                w,
                tile,
            );
            let same = bi == bj;
            {
                // cannot fail: a panic while holding the lock would have ended the search
                let mut heap = heaps[bi].lock().expect("no panic while held");
                for (a, sims) in tile.chunks_exact(w).enumerate() {
                    for (b, &similarity) in sims.iter().enumerate() {
                        if !(same && a == b) {
                            let index = (rj.start + b) as u32;
                            heap.offer(a, Neighbour { index, similarity });
                        }
                    }
                }
            }
            if !same {
                // cannot fail: as above
                let mut heap = heaps[bj].lock().expect("no panic while held");
                for (a, sims) in tile.chunks_exact(w).enumerate() {
                    let index = (ri.start + a) as u32;
                    for (b, &similarity) in sims.iter().enumerate() {
                        heap.offer(b, Neighbour { index, similarity });
                    }
                }
            }
            let linked: Vec<(usize, usize, f32)> = tile
                .chunks_exact(w)
                .enumerate()
                .flat_map(|(a, sims)| {
                    sims.iter()
                        .enumerate()
                        .filter(move |&(b, &s)| s >= link_at && (!same || b > a))
                        .map(move |(b, &s)| (ri.start + a, rj.start + b, s))
                })
                .collect();
            if !linked.is_empty() {
                // cannot fail: as above
                let mut links = links.lock().expect("no panic while held");
                for (a, b, s) in linked {
                    links.union(a, b, s, -1);
                }
            }
        });
    let neighbours = heaps
        .into_iter()
        // cannot fail: as above
        .flat_map(|h| h.into_inner().expect("no panic while held").into_sorted())
        .collect();
    Search {
        knn: Knn { k, neighbours },
        // cannot fail: as above
        near_duplicate_sets: links.into_inner().expect("no panic while held").sets(),
    }
}

/// Exact `k` nearest rows of `refs` for each row of `queries` (both `[_, dim]`), by dot
/// product, in blocks of `block` rows.
pub fn search_across(queries: &[f32], refs: &[f32], dim: usize, k: usize, block: usize) -> Knn {
    assert!(dim > 0 && queries.len().is_multiple_of(dim) && refs.len().is_multiple_of(dim));
    let n_refs = refs.len() / dim;
    let k = k.min(n_refs);
    let block = block.max(1);
    let neighbours = queries
        .par_chunks(block * dim)
        .flat_map_iter(|q| {
            let m = q.len() / dim;
            let mut heap = TopK::new(m, k);
            let mut tile = Vec::new();
            for (bj, r) in refs.chunks(block * dim).enumerate() {
                let w = r.len() / dim;
                tile.resize(m * w, 0.0);
                matmul_transposed(q, m, dim, r, w, &mut tile);
                for (a, sims) in tile.chunks_exact(w).enumerate() {
                    for (b, &similarity) in sims.iter().enumerate() {
                        let index = (bj * block + b) as u32;
                        heap.offer(a, Neighbour { index, similarity });
                    }
                }
            }
            heap.into_sorted()
        })
        .collect();
    Knn { k, neighbours }
}

/// The `p`-th quantile (0..=1) of `sorted`, interpolated linearly between the two nearest
/// ranks (numpy's default).
pub fn quantile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let position = p * (sorted.len() - 1) as f64;
    let (lo, hi) = (position.floor() as usize, position.ceil() as usize);
    sorted[lo] + (sorted[hi] - sorted[lo]) * (position - lo as f64)
}

/// Images far from all their neighbours.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Outliers {
    /// Each row's mean cosine distance to its `k` nearest neighbours.
    #[serde(skip)]
    pub mean_distance: Vec<f64>,
    pub q1: f64,
    pub q3: f64,
    pub iqr_factor: f64,
    /// `q3 + iqr_factor * (q3 - q1)`.
    pub fence: f64,
    /// Rows above the fence, farthest first.
    #[serde(skip)]
    pub rows: Vec<usize>,
}

/// Outliers by Tukey's fence on the mean kNN distance.
pub fn outliers(knn: &Knn, iqr_factor: f64) -> Outliers {
    let mean_distance: Vec<f64> = (0..knn.rows())
        .map(|i| {
            let row = knn.row(i);
            row.iter()
                .map(|n| 1.0 - f64::from(n.similarity))
                .sum::<f64>()
                / row.len() as f64
        })
        .collect();
    let mut sorted = mean_distance.clone();
    sorted.sort_by(f64::total_cmp);
    let (q1, q3) = (quantile(&sorted, 0.25), quantile(&sorted, 0.75));
    let fence = q3 + iqr_factor * (q3 - q1);
    let mut rows: Vec<usize> = (0..mean_distance.len())
        .filter(|&i| mean_distance[i] > fence)
        .collect();
    rows.sort_by(|&a, &b| mean_distance[b].total_cmp(&mean_distance[a]));
    Outliers {
        mean_distance,
        q1,
        q3,
        iqr_factor,
        fence,
        rows,
    }
}

/// Sets of rows with the same content key (byte-identical files), in order of first row.
pub fn exact_duplicate_sets(keys: &[Option<String>]) -> Vec<Vec<usize>> {
    let mut by_key: HashMap<&str, Vec<usize>> = HashMap::new();
    for (i, key) in keys.iter().enumerate() {
        if let Some(key) = key {
            by_key.entry(key).or_default().push(i);
        }
    }
    let mut sets: Vec<Vec<usize>> = by_key.into_values().filter(|s| s.len() > 1).collect();
    sets.sort_by_key(|s| s[0]);
    sets
}

/// The neighbour checks on all images: `rows` are the pooled features of `paths` (`[n, dim]`,
/// normalised here in place), `keys` their content keys and `hashes` their 64-bit perceptual
/// hashes where known.
pub fn analyse(
    mut rows: Vec<f32>,
    dim: usize,
    paths: &[PathBuf],
    keys: &[Option<String>],
    hashes: &[Option<u64>],
    options: &NeighbourOptions,
) -> NeighbourReport {
    normalize_rows(&mut rows, dim);
    let found = search(
        &rows,
        dim,
        options.k,
        options.block,
        options.duplicate_cosine,
    );
    drop(rows);
    let outliers = outliers(&found.knn, options.iqr_factor);
    let exact = exact_duplicate_sets(keys);
    let mut joined = UnionFind::new(paths.len());
    for (set, weakest) in &found.near_duplicate_sets {
        for pair in set.windows(2) {
            joined.union(pair[0], pair[1], *weakest, -1);
        }
    }
    link_hashes(hashes, options.duplicate_hash_bits, &mut joined);
    let near = joined
        .sets()
        .into_iter()
        // A set of byte-identical files is reported once, as exact.
        .filter(|(set, _)| !exact.iter().any(|e| set.iter().all(|i| e.contains(i))))
        .map(|(set, weakest)| {
            let root = joined.find(set[0]);
            let bits = joined.widest_bits[root];
            NearSet {
                files: set.iter().map(|&i| paths[i].clone()).collect(),
                min_cosine: weakest.is_finite().then_some(weakest),
                max_hash_bits: u32::try_from(bits).ok(),
            }
        })
        .collect();
    NeighbourReport {
        neighbours: NeighbourSummary {
            rows: paths.len(),
            k: found.knn.k,
            metric: "cosine distance (1 - cosine similarity) of L2-normalised pooled backbone features, exact (brute force)",
        },
        outlier_images: outliers
            .rows
            .iter()
            .map(|&i| Outlier {
                file: paths[i].clone(),
                mean_distance: outliers.mean_distance[i],
            })
            .collect(),
        outliers,
        duplicates: Duplicates {
            cosine_threshold: options.duplicate_cosine,
            hash_bits: options.duplicate_hash_bits,
            exact: exact
                .iter()
                .map(|s| s.iter().map(|&i| paths[i].clone()).collect())
                .collect(),
            near,
        },
    }
}

/// Links every two rows whose perceptual hashes are at most `max_bits` apart: all pairs, one
/// XOR and popcount each (5e9 pairs at 100k images), no memory beyond the sets.
fn link_hashes(hashes: &[Option<u64>], max_bits: u32, joined: &mut UnionFind) {
    let known: Vec<(usize, u64)> = hashes
        .iter()
        .enumerate()
        .filter_map(|(i, h)| h.map(|h| (i, h)))
        .collect();
    for (a, &(i, hi)) in known.iter().enumerate() {
        for &(j, hj) in &known[a + 1..] {
            let bits = (hi ^ hj).count_ones();
            if bits <= max_bits {
                joined.union(i, j, f32::INFINITY, bits as i32);
            }
        }
    }
}

/// A 64-bit perceptual hash as one integer (`None` for hashes of another size).
pub fn hash_bits(hash: &image_hasher::ImageHash) -> Option<u64> {
    Some(u64::from_le_bytes(hash.as_bytes().try_into().ok()?))
}

/// The search's parameters, for the JSON.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NeighbourSummary {
    pub rows: usize,
    pub k: usize,
    pub metric: &'static str,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Outlier {
    #[serde(serialize_with = "crate::util::lossy_path")]
    pub file: PathBuf,
    pub mean_distance: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NearSet {
    #[serde(serialize_with = "crate::util::lossy_paths")]
    pub files: Vec<PathBuf>,
    /// The lowest cosine among the feature links that joined the set (none: hash links only).
    pub min_cosine: Option<f32>,
    /// The widest hash distance among the hash links that joined it (none: feature links only).
    pub max_hash_bits: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Duplicates {
    pub cosine_threshold: f32,
    pub hash_bits: u32,
    /// Sets of byte-identical files.
    #[serde(serialize_with = "lossy_sets")]
    pub exact: Vec<Vec<PathBuf>>,
    /// Sets linked by feature cosine `>= cosine_threshold` or perceptual hashes at most
    /// `hash_bits` apart (not all byte-identical).
    pub near: Vec<NearSet>,
}

fn lossy_sets<S: serde::Serializer>(sets: &[Vec<PathBuf>], s: S) -> Result<S::Ok, S::Error> {
    use serde::ser::SerializeSeq;
    let mut seq = s.serialize_seq(Some(sets.len()))?;
    for set in sets {
        let names: Vec<String> = set
            .iter()
            .map(|p| p.to_string_lossy().into_owned())
            .collect();
        seq.serialize_element(&names)?;
    }
    seq.end()
}

/// Everything the neighbour checks found, as the JSON shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NeighbourReport {
    pub neighbours: NeighbourSummary,
    pub outliers: Outliers,
    /// The outliers, farthest first.
    pub outlier_images: Vec<Outlier>,
    pub duplicates: Duplicates,
}

impl NeighbourReport {
    /// The JSON's `outliers` object: the fence and the images above it.
    pub fn outliers_json(&self) -> serde_json::Value {
        let mut value = serde_json::to_value(&self.outliers).unwrap_or_default();
        value["images"] = serde_json::to_value(&self.outlier_images).unwrap_or_default();
        value
    }

    pub fn findings(&self) -> Vec<Finding> {
        let mut findings = Vec::new();
        let o = &self.outliers;
        if !self.outlier_images.is_empty() {
            findings.push(Finding {
                severity: Severity::Info,
                check: "outlier",
                measured: format!(
                    "{} images are far from their {} nearest neighbours: mean cosine distance above {:.4} (Q3 {:.4} + {} x IQR {:.4})",
                    self.outlier_images.len(),
                    self.neighbours.k,
                    o.fence,
                    o.q3,
                    o.iqr_factor,
                    o.q3 - o.q1
                ),
                why: "an image unlike all the others is often in the wrong class folder, a screenshot or scan, or corrupt; if it is right, the class needs more photos like it",
                action: "look at these images, farthest first; remove the ones that do not belong, or collect more like the ones that do".into(),
                files: self.outlier_images.iter().map(|o| o.file.clone()).collect(),
                details: self
                    .outlier_images
                    .iter()
                    .map(|x| format!("{} (mean distance {:.4} > {:.4})", x.file.display(), x.mean_distance, o.fence))
                    .collect(),
            });
        }
        let d = &self.duplicates;
        if !d.exact.is_empty() {
            findings.push(Finding {
                severity: Severity::Warning,
                check: "duplicate-exact",
                measured: format!(
                    "{} sets of byte-identical files ({} files)",
                    d.exact.len(),
                    d.exact.iter().map(Vec::len).sum::<usize>()
                ),
                why: DUPLICATE_WHY,
                action: "keep one file of each set".into(),
                files: d.exact.iter().flatten().cloned().collect(),
                details: d.exact.iter().map(|s| join(s)).collect(),
            });
        }
        if !d.near.is_empty() {
            findings.push(Finding {
                severity: Severity::Warning,
                check: "duplicate-near",
                measured: format!(
                    "{} sets of near-duplicate images ({} files; feature cosine >= {} or perceptual hash within {} bits)",
                    d.near.len(),
                    d.near.iter().map(|s| s.files.len()).sum::<usize>(),
                    d.cosine_threshold,
                    d.hash_bits
                ),
                why: DUPLICATE_WHY,
                action: "look at each set; keep one of re-encoded, resized or burst copies".into(),
                files: d.near.iter().flat_map(|s| s.files.clone()).collect(),
                details: d
                    .near
                    .iter()
                    .map(|s| {
                        let mut links = Vec::new();
                        if let Some(c) = s.min_cosine {
                            links.push(format!("cosine >= {c:.3}"));
                        }
                        if let Some(b) = s.max_hash_bits {
                            links.push(format!("hash within {b} bits"));
                        }
                        format!("{} ({})", join(&s.files), links.join(", "))
                    })
                    .collect(),
            });
        }
        findings
    }
}

const DUPLICATE_WHY: &str = "copies weigh their image more than the others in training, and a copy on each side of the split is scored on what the model memorised";

fn join(paths: &[PathBuf]) -> String {
    paths
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(" = ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    /// The `k` best of each row by the search's order, computed the obvious way.
    fn brute_force(rows: &[f32], dim: usize, k: usize) -> Vec<Neighbour> {
        let n = rows.len() / dim;
        let k = k.min(n - 1);
        let mut out = Vec::new();
        for i in 0..n {
            let mut all: Vec<Neighbour> = (0..n)
                .filter(|&j| j != i)
                .map(|j| Neighbour {
                    index: j as u32,
                    similarity: (0..dim)
                        .map(|d| rows[i * dim + d] * rows[j * dim + d])
                        .sum(),
                })
                .collect();
            all.sort_by(|a, b| {
                b.similarity
                    .total_cmp(&a.similarity)
                    .then(a.index.cmp(&b.index))
            });
            out.extend_from_slice(&all[..k]);
        }
        out
    }

    /// Small integers: every dot product is exact whatever the order of the sums, and many
    /// are equal, so the tie rule decides which neighbours are kept.
    fn integer_rows(n: usize, dim: usize, seed: u64) -> Vec<f32> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        (0..n * dim)
            .map(|_| rng.random_range(-2i32..=2) as f32)
            .collect()
    }

    #[test]
    fn the_blocked_search_equals_brute_force_with_ties_for_any_block_size() {
        let (n, dim) = (203, 6);
        let rows = integer_rows(n, dim, 7);
        for k in [1, 5, 10] {
            let expected = brute_force(&rows, dim, k);
            // Rows whose k-th and (k+1)-th best are equal: the tie rule decides which is kept.
            let longer = brute_force(&rows, dim, k + 1);
            let ties = (0..n)
                .filter(|&i| {
                    longer[i * (k + 1) + k - 1].similarity == longer[i * (k + 1) + k].similarity
                })
                .count();
            assert!(ties > n / 4, "the data has ties to break ({ties} rows)");
            for block in [1, 7, 64, 203, 1000] {
                let found = search(&rows, dim, k, block, f32::INFINITY);
                assert_eq!(found.knn.k, k);
                assert_eq!(found.knn.neighbours, expected, "k {k}, block {block}");
            }
        }
    }

    #[test]
    fn the_search_on_random_floats_matches_brute_force() {
        let (n, dim, k) = (300, 48, 8);
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let mut rows: Vec<f32> = (0..n * dim).map(|_| rng.random::<f32>() - 0.5).collect();
        normalize_rows(&mut rows, dim);
        let expected = brute_force(&rows, dim, k);
        for block in [16, 100, 512] {
            let found = search(&rows, dim, k, block, f32::INFINITY).knn;
            for i in 0..n {
                let got: Vec<u32> = found.row(i).iter().map(|x| x.index).collect();
                let want: Vec<u32> = expected[i * k..(i + 1) * k]
                    .iter()
                    .map(|x| x.index)
                    .collect();
                assert_eq!(got, want, "row {i}, block {block}");
                for (g, w) in found.row(i).iter().zip(&expected[i * k..(i + 1) * k]) {
                    assert!((g.similarity - w.similarity).abs() < 1e-5);
                }
            }
        }
    }

    #[test]
    fn the_search_across_two_sets_equals_brute_force() {
        let dim = 5;
        let queries = integer_rows(37, dim, 11);
        let refs = integer_rows(90, dim, 12);
        for block in [1, 8, 100] {
            let found = search_across(&queries, &refs, dim, 3, block);
            for (i, q) in queries.chunks_exact(dim).enumerate() {
                let mut all: Vec<(f32, u32)> = refs
                    .chunks_exact(dim)
                    .enumerate()
                    .map(|(j, r)| (q.iter().zip(r).map(|(a, b)| a * b).sum(), j as u32))
                    .collect();
                all.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
                let got: Vec<(f32, u32)> = found
                    .row(i)
                    .iter()
                    .map(|n| (n.similarity, n.index))
                    .collect();
                assert_eq!(got, all[..3].to_vec(), "query {i}, block {block}");
            }
        }
    }

    #[test]
    fn fewer_rows_than_k_keep_all_the_others() {
        let rows = vec![1.0, 0.0, 0.0, 1.0, 0.6, 0.8];
        let found = search(&rows, 2, 10, 2, 2.0);
        assert_eq!(found.knn.k, 2);
        assert_eq!(found.knn.row(0)[0].index, 2);
        assert!(search(&[], 2, 10, 2, 2.0).knn.neighbours.is_empty());
    }

    /// Points near a few cluster centres, and `far` points placed away from all of them.
    fn clusters_with_far_points(far: usize) -> (Vec<f32>, usize, Vec<usize>) {
        let (dim, per_cluster, clusters) = (32, 60, 4);
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        let mut rows = Vec::new();
        for c in 0..clusters {
            for _ in 0..per_cluster {
                for d in 0..dim {
                    let centre = if d == c { 1.0 } else { 0.0 };
                    rows.push(centre + 0.05 * (rng.random::<f32>() - 0.5));
                }
            }
        }
        let mut planted = Vec::new();
        for f in 0..far {
            planted.push(rows.len() / dim);
            for d in 0..dim {
                // Each far point on its own axis, away from every cluster and each other.
                let axis = if d == clusters + f { 1.0 } else { 0.0 };
                rows.push(axis + 0.05 * (rng.random::<f32>() - 0.5));
            }
        }
        (rows, dim, planted)
    }

    #[test]
    fn planted_far_points_are_the_outliers() {
        let (mut rows, dim, planted) = clusters_with_far_points(3);
        normalize_rows(&mut rows, dim);
        let found = search(&rows, dim, 10, 64, f32::INFINITY);
        let o = outliers(&found.knn, 1.5);
        // The planted points are flagged, farthest first.
        let mut top: Vec<usize> = o.rows[..3].to_vec();
        top.sort();
        assert_eq!(top, planted);
        assert!(o.fence > o.q3 && o.q3 >= o.q1);
        // The flagged set is the fence's, recomputed from brute-force neighbours.
        let brute = brute_force(&rows, dim, 10);
        let mean: Vec<f64> = brute
            .chunks_exact(10)
            .map(|r| r.iter().map(|n| 1.0 - f64::from(n.similarity)).sum::<f64>() / 10.0)
            .collect();
        let mut sorted = mean.clone();
        sorted.sort_by(f64::total_cmp);
        let (q1, q3) = (quantile(&sorted, 0.25), quantile(&sorted, 0.75));
        let fence = q3 + 1.5 * (q3 - q1);
        assert!((fence - o.fence).abs() < 1e-6);
        let mut expected: Vec<usize> = (0..mean.len()).filter(|&i| mean[i] > fence).collect();
        let mut flagged = o.rows.clone();
        expected.sort();
        flagged.sort();
        assert_eq!(flagged, expected);
        // A fence so wide that nothing is outside it flags nothing.
        assert!(outliers(&found.knn, 1e6).rows.is_empty());
    }

    #[test]
    fn planted_copies_form_duplicate_sets() {
        let (mut rows, dim, _) = clusters_with_far_points(0);
        let n = rows.len() / dim;
        // Row 3 copied twice (one slightly changed), row 100 once: sets {3, n, n+1}, {100, n+2}.
        let copy = |rows: &mut Vec<f32>, i: usize, noise: f32| {
            let row: Vec<f32> = rows[i * dim..(i + 1) * dim].to_vec();
            rows.extend(
                row.iter()
                    .enumerate()
                    .map(|(d, v)| v + noise * (d % 3) as f32),
            );
        };
        copy(&mut rows, 3, 0.0);
        copy(&mut rows, 3, 0.0005);
        copy(&mut rows, 100, 0.0);
        normalize_rows(&mut rows, dim);
        for block in [7, 64, 1000] {
            let found = search(&rows, dim, 5, block, 0.9999);
            let sets: Vec<Vec<usize>> = found
                .near_duplicate_sets
                .iter()
                .map(|(s, _)| s.clone())
                .collect();
            assert_eq!(
                sets,
                vec![vec![3, n, n + 1], vec![100, n + 2]],
                "block {block}"
            );
            assert!(found.near_duplicate_sets.iter().all(|(_, w)| *w >= 0.9999));
        }
    }

    #[test]
    fn hashes_within_the_bits_join_sets_with_the_feature_links() {
        // Rows far apart in features; rows 0 and 2 hash 3 bits apart, row 3 12 or more from both.
        let rows = vec![1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0, -1.0, 0.0, 0.0];
        let paths: Vec<PathBuf> = (0..4).map(|i| PathBuf::from(format!("{i}"))).collect();
        let hashes = vec![Some(0u64), None, Some(0b111), Some(0xfff000)];
        let options = NeighbourOptions {
            k: 2,
            ..NeighbourOptions::default()
        };
        let report = analyse(
            rows,
            3,
            &paths,
            &[None, None, None, None],
            &hashes,
            &options,
        );
        let near = &report.duplicates.near;
        assert_eq!(near.len(), 1);
        assert_eq!(near[0].files, vec![paths[0].clone(), paths[2].clone()]);
        assert_eq!((near[0].min_cosine, near[0].max_hash_bits), (None, Some(3)));
    }

    #[test]
    fn byte_identical_files_form_exact_sets() {
        let key = |s: &str| Some(s.to_string());
        let keys = vec![
            key("a"),
            key("b"),
            None,
            key("a"),
            key("c"),
            key("b"),
            key("a"),
        ];
        assert_eq!(exact_duplicate_sets(&keys), vec![vec![0, 3, 6], vec![1, 5]]);
    }

    #[test]
    fn quantiles_interpolate_as_numpy() {
        let v = [1.0, 2.0, 3.0, 4.0];
        assert_eq!(quantile(&v, 0.25), 1.75);
        assert_eq!(quantile(&v, 0.75), 3.25);
        assert_eq!(quantile(&v, 1.0), 4.0);
    }
}

//! Bottleneck features: run the frozen backbone once per image and keep the pooled features.

pub mod cache;
pub mod maintenance;
pub mod rows;
pub mod shard;

use std::collections::HashSet;
use std::path::PathBuf;

use rayon::prelude::*;

use crate::backbone::Backbone;
use crate::data::dataset::Sample;
use crate::data::{DecodeError, DecodeLimits, load_images, to_batch};
use cache::{CacheError, FeatureCache};
use rows::{CachedRows, LabelledRows};

/// What one extraction did.
#[derive(Debug, Default)]
pub struct ExtractSummary {
    pub extracted: usize,
    pub reused: usize,
    /// Files that could not be read or decoded, one message each.
    pub skipped: Vec<DecodeError>,
    /// The cache key of each input path, in input order; `None` for skipped files.
    pub keys: Vec<Option<String>>,
    /// Stopped early on Ctrl-C: every committed batch is in the cache, the rest is not.
    pub interrupted: bool,
}

/// Pooled features of labelled images, one row per image that could be read.
#[derive(Debug, Clone, Default)]
pub struct FeatureMatrix {
    pub dim: usize,
    /// `[len, dim]`, row-major.
    pub rows: Vec<f32>,
    pub labels: Vec<usize>,
    pub paths: Vec<PathBuf>,
}

impl FeatureMatrix {
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    pub fn row(&self, i: usize) -> &[f32] {
        &self.rows[i * self.dim..(i + 1) * self.dim]
    }

    /// These rows followed by `other`'s (the training split then the validation split, say).
    pub fn joined(&self, other: &FeatureMatrix) -> FeatureMatrix {
        let mut all = self.clone();
        all.dim = self.dim.max(other.dim);
        all.rows.extend_from_slice(&other.rows);
        all.labels.extend_from_slice(&other.labels);
        all.paths.extend_from_slice(&other.paths);
        all
    }
}

/// Content key of each file (sha256 of its bytes), in parallel. Unreadable files get an error,
/// and so do JPEG and PNG files whose image data is missing (see [`crate::data::complete`]),
/// so that a row cached before that check, or by a run that allowed truncated files, is not
/// reused for them.
pub fn content_keys(paths: &[PathBuf], limits: DecodeLimits) -> Vec<Result<String, DecodeError>> {
    let allow_truncated = limits.allow_truncated;
    paths
        .par_iter()
        .map(|p| {
            let error = |reason: String| DecodeError {
                path: p.clone(),
                reason,
            };
            crate::util::with_file_bytes(p, |bytes| {
                if let Some(reason) = crate::data::complete::refused(bytes, allow_truncated) {
                    return Err(error(reason.to_string()));
                }
                Ok(crate::util::sha256_hex(bytes))
            })
            .map_err(|e| error(e.to_string()))?
        })
        .collect()
}

/// Make sure every readable image of `paths` has a row in `cache`. Images stream through in
/// batches of `batch_size`, so memory does not grow with the number of images; each batch is
/// committed as one atomic shard, so an interrupted run loses at most the batch in flight.
/// `progress` is called with the number of images done after each batch.
pub fn extract(
    backbone: &Backbone,
    cache: &mut FeatureCache,
    paths: &[PathBuf],
    batch_size: usize,
    limits: DecodeLimits,
    mut progress: impl FnMut(usize),
) -> Result<ExtractSummary, CacheError> {
    let mut summary = ExtractSummary {
        keys: Vec::with_capacity(paths.len()),
        ..ExtractSummary::default()
    };
    // Bookkeeping is per image and lives for the whole run, so it is kept small: each key is
    // stored once (in `summary.keys`) and the images to compute are indices into `paths`.
    for key in content_keys(paths, limits) {
        match key {
            Ok(key) => summary.keys.push(Some(key)),
            Err(e) => {
                summary.skipped.push(e);
                summary.keys.push(None);
            }
        }
    }
    let todo: Vec<usize> = {
        // Identical files within the dataset are computed once.
        let mut queued: HashSet<&str> = HashSet::new();
        let mut todo = Vec::new();
        for (i, key) in summary.keys.iter().enumerate() {
            if let Some(key) = key {
                if cache.contains(key) || !queued.insert(key) {
                    summary.reused += 1;
                } else {
                    todo.push(i);
                }
            }
        }
        todo
    };
    progress(summary.reused + summary.skipped.len());
    let device = backbone.device();
    let dim = backbone.config.feature_dim;
    let chunks: Vec<&[usize]> = todo.chunks(batch_size.max(1)).collect();
    let decode = |chunk: &[usize]| {
        let chunk_paths: Vec<PathBuf> = chunk.iter().map(|&i| paths[i].clone()).collect();
        load_images(&chunk_paths, &backbone.config, limits)
    };
    // The next batch decodes while the network runs on this one (both on the worker threads,
    // which take whichever work is left): at most two batches of images are in memory.
    let mut next_decoded = chunks.first().map(|chunk| decode(chunk));
    for (n, chunk) in chunks.iter().enumerate() {
        if crate::interrupt::requested() {
            summary.interrupted = true;
            break;
        }
        // cannot fail: decoded ahead for every chunk (the first before the loop)
        let decoded = next_decoded.take().expect("the batch was decoded ahead");
        let mut keys = Vec::new();
        let mut images = Vec::new();
        for (&i, result) in chunk.iter().zip(&decoded) {
            match result {
                Ok(image) => {
                    // cannot fail: only images with a key are in `todo`
                    keys.push(summary.keys[i].clone().expect("queued images have a key"));
                    images.push(image);
                }
                Err(e) => summary.skipped.push(e.clone()),
            }
        }
        let forward = || {
            (!images.is_empty()).then(|| {
                let batch = to_batch(&images, backbone.config.resolution, &device);
                backbone
                    .features(batch)
                    .into_data()
                    .try_into_vec::<f32>()
                    // cannot fail: graft makes only f32 tensors (the default float dtype)
                    .expect("features are f32")
            })
        };
        let (features, ahead) =
            rayon::join(forward, || chunks.get(n + 1).map(|chunk| decode(chunk)));
        next_decoded = ahead;
        if let Some(features) = features {
            cache.append(&keys, &features, dim)?;
            summary.extracted += keys.len();
        }
        progress(chunk.len());
    }
    // Files that failed to decode have no row. A byte-identical copy of one was counted as
    // reused when it was queued; it fails the same way and is reported under its own name.
    let failed: HashSet<&std::path::Path> =
        summary.skipped.iter().map(|e| e.path.as_path()).collect();
    let mut copies = Vec::new();
    let mut lost = Vec::new();
    for (i, (path, key)) in paths.iter().zip(&summary.keys).enumerate() {
        let missing = key.as_ref().is_some_and(|k| !cache.contains(k));
        if missing && !failed.contains(path.as_path()) && !summary.interrupted {
            let twin = todo
                .iter()
                .map(|&t| (&paths[t], &summary.keys[t]))
                .find(|(_, k)| *k == key)
                .and_then(|(p, _)| summary.skipped.iter().find(|e| &e.path == p));
            copies.push(DecodeError {
                path: path.clone(),
                reason: twin.map_or_else(
                    || "could not be decoded".to_string(),
                    |t| format!("{} (same content as {})", t.reason, t.path.display()),
                ),
            });
        }
        if missing || failed.contains(path.as_path()) {
            lost.push(i);
        }
    }
    for i in lost {
        summary.keys[i] = None;
    }
    summary.reused -= copies.len();
    summary.skipped.extend(copies);
    Ok(summary)
}

/// Features of labelled `samples`, extracting what the cache lacks; the rows stay in the
/// cache's files (see [`LabelledRows`]). Unreadable images are left out and listed in the
/// summary.
pub fn labelled_features(
    backbone: &Backbone,
    cache: &mut FeatureCache,
    samples: &[Sample],
    batch_size: usize,
    limits: DecodeLimits,
    progress: impl FnMut(usize),
) -> Result<(LabelledRows, ExtractSummary), CacheError> {
    let paths: Vec<PathBuf> = samples.iter().map(|s| s.path.clone()).collect();
    let summary = extract(backbone, cache, &paths, batch_size, limits, progress)?;
    let (mut keys, mut labels, mut kept) = (Vec::new(), Vec::new(), Vec::new());
    for (sample, key) in samples.iter().zip(&summary.keys) {
        if let Some(key) = key {
            keys.push(key.clone());
            labels.push(sample.label);
            kept.push(sample.path.clone());
        }
    }
    let rows = CachedRows::open(cache.dir(), &keys, &labels)?;
    let rows = LabelledRows::new(rows, kept, backbone.config.feature_dim, cache.dir())?;
    Ok((rows, summary))
}

/// Pooled features of `paths` computed afresh (not cached), each preprocessed image passed
/// through `view` first (e.g. a horizontal flip for test-time augmentation). Rows `[n, dim]` in
/// input order; files that cannot be decoded get their error.
pub fn features_of_view(
    backbone: &Backbone,
    paths: &[PathBuf],
    batch_size: usize,
    limits: DecodeLimits,
    view: impl Fn(&mut crate::data::Chw) + Sync,
) -> Vec<Result<Vec<f32>, DecodeError>> {
    let device = backbone.device();
    let dim = backbone.config.feature_dim;
    let mut out = Vec::with_capacity(paths.len());
    for chunk in paths.chunks(batch_size.max(1)) {
        let mut decoded = load_images(chunk, &backbone.config, limits);
        decoded.par_iter_mut().flatten().for_each(&view);
        let good: Vec<&crate::data::Chw> = decoded.iter().flatten().collect();
        let mut rows = Vec::new();
        if !good.is_empty() {
            let batch = to_batch(&good, backbone.config.resolution, &device);
            rows = backbone
                .features(batch)
                .into_data()
                .try_into_vec::<f32>()
                // cannot fail: graft makes only f32 tensors (the default float dtype)
                .expect("features are f32");
        }
        let mut next = rows.chunks_exact(dim);
        for result in decoded {
            // cannot fail: `rows` has one row per Ok in `decoded`, the batch was built from them
            out.push(result.map(|_| next.next().expect("one row per decoded image").to_vec()));
        }
    }
    out
}

//! Labelled feature rows for training, in memory or read from the cache's shard files on
//! demand, so that a head can train on more rows than fit in memory: the trainer asks for one
//! mini-batch at a time, and a disk-backed source keeps only each row's file and offset.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::FeatureMatrix;
use super::cache::{CacheError, shard_paths};

/// Labelled rows of `dim` floats, read a batch at a time.
pub trait RowSource {
    fn len(&self) -> usize;
    fn dim(&self) -> usize;
    fn label(&self, i: usize) -> usize;
    /// Append rows `indices` to `out` (`indices.len() * dim` floats).
    fn read(&self, indices: &[usize], out: &mut Vec<f32>) -> Result<(), CacheError>;

    /// Rows `indices` will be read soon: a disk-backed source asks the kernel to load them in
    /// the background (the bounded read-ahead of the trainers: a few batches before they are
    /// read). A hint only; in-memory sources ignore it.
    fn prefetch(&self, _indices: &[usize]) {}

    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn labels(&self) -> Vec<usize> {
        (0..self.len()).map(|i| self.label(i)).collect()
    }
}

impl RowSource for FeatureMatrix {
    fn len(&self) -> usize {
        self.labels.len()
    }
    fn dim(&self) -> usize {
        self.dim
    }
    fn label(&self, i: usize) -> usize {
        self.labels[i]
    }
    fn read(&self, indices: &[usize], out: &mut Vec<f32>) -> Result<(), CacheError> {
        for &i in indices {
            out.extend_from_slice(self.row(i));
        }
        Ok(())
    }
}

/// Rows that stay in the cache's shard files: 12 bytes a row in memory (file, offset, label)
/// instead of `4 * dim`.
#[derive(Debug)]
pub struct CachedRows {
    files: Vec<(PathBuf, File)>,
    /// Per row: index into `files`, byte offset of the row, label.
    rows: Vec<(u32, u64, usize)>,
    dim: usize,
}

impl CachedRows {
    /// The rows of `keys` (labelled `labels`) in the cache directory `dir`, in that order,
    /// from the shard headers alone (the shards' checksums were verified when the cache was
    /// opened). A key without a row is an error naming the cache.
    pub fn open(dir: &Path, keys: &[String], labels: &[usize]) -> Result<Self, CacheError> {
        let wanted: HashSet<&str> = keys.iter().map(String::as_str).collect();
        let mut located: HashMap<&str, (u32, u64)> = HashMap::with_capacity(keys.len());
        let mut files = Vec::new();
        let mut opened = HashSet::new();
        let mut dim = 0;
        // A shard that `graft cache compact` removes between the listing and the opening has
        // its rows in a merged shard written before: list again for what is still missing.
        for _attempt in 0..3 {
            let mut vanished = false;
            for path in shard_paths(dir)? {
                if opened.contains(&path) {
                    continue;
                }
                let file = match File::open(&path) {
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                        vanished = true;
                        continue;
                    }
                    other => other.map_err(|source| CacheError::Io {
                        path: path.clone(),
                        source,
                    })?,
                };
                opened.insert(path.clone());
                let header = read_header(&file, &path)?;
                let mut used = false;
                for (row, key) in header.keys.iter().enumerate() {
                    // The set hands back the caller's string, which outlives this loop.
                    if let Some(&key) = wanted.get(key.as_str())
                        && !located.contains_key(key)
                    {
                        let offset = header.data_start + (row * header.dim * 4) as u64;
                        located.insert(key, (files.len() as u32, offset));
                        used = true;
                    }
                }
                if used {
                    dim = header.dim;
                    files.push((path, file));
                }
            }
            if !vanished || located.len() == wanted.len() {
                break;
            }
        }
        let rows = keys
            .iter()
            .zip(labels)
            .map(|(key, &label)| {
                located
                    .get(key.as_str())
                    .map(|&(file, offset)| (file, offset, label))
                    .ok_or_else(|| CacheError::Corrupt {
                        path: dir.to_path_buf(),
                        problem: format!("no feature row for image {key}"),
                    })
            })
            .collect::<Result<_, _>>()?;
        Ok(Self { files, rows, dim })
    }
}

impl RowSource for CachedRows {
    fn len(&self) -> usize {
        self.rows.len()
    }
    fn dim(&self) -> usize {
        self.dim
    }
    fn label(&self, i: usize) -> usize {
        self.rows[i].2
    }
    fn prefetch(&self, indices: &[usize]) {
        use std::os::fd::AsRawFd;
        let len = (self.dim * 4) as libc::off_t;
        for &i in indices {
            let (file, offset, _) = self.rows[i];
            // SAFETY: a valid open descriptor and a byte range; the call only advises the
            // kernel and cannot touch memory. Its result is ignored: it is a hint.
            unsafe {
                libc::posix_fadvise(
                    self.files[file as usize].1.as_raw_fd(),
                    offset as libc::off_t,
                    len,
                    libc::POSIX_FADV_WILLNEED,
                );
            }
        }
    }

    fn read(&self, indices: &[usize], out: &mut Vec<f32>) -> Result<(), CacheError> {
        let mut bytes = vec![0u8; self.dim * 4];
        for &i in indices {
            let (file, offset, _) = self.rows[i];
            let (path, file) = &self.files[file as usize];
            file.read_exact_at(&mut bytes, offset)
                .map_err(|source| CacheError::Io {
                    path: path.clone(),
                    source,
                })?;
            out.extend(
                bytes
                    .chunks_exact(4)
                    // cannot fail: chunks_exact(4) yields 4-byte slices
                    .map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes"))),
            );
        }
        Ok(())
    }
}

/// Rows per pass when a whole source is scored: bounded memory whatever the number of rows.
pub const SCORE_CHUNK: usize = 4096;

/// Call `f` with consecutive index ranges of `source` and their rows, `chunk` rows at a time,
/// so that a pass over every row holds one chunk in memory.
pub fn for_each_chunk(
    source: &dyn RowSource,
    chunk: usize,
    mut f: impl FnMut(Range<usize>, &[f32]),
) -> Result<(), CacheError> {
    let mut rows = Vec::new();
    let mut start = 0;
    let chunk = chunk.max(1);
    while start < source.len() {
        let end = (start + chunk).min(source.len());
        let indices: Vec<usize> = (start..end).collect();
        let next: Vec<usize> = (end..(end + chunk).min(source.len())).collect();
        source.prefetch(&next);
        rows.clear();
        source.read(&indices, &mut rows)?;
        f(start..end, &rows);
        start = end;
    }
    Ok(())
}

/// The cached rows of labelled images with the image each came from: what the recipes train
/// and score on without holding the rows in memory.
#[derive(Debug)]
pub struct LabelledRows {
    pub rows: CachedRows,
    /// The image of each row, in row order.
    pub paths: Vec<PathBuf>,
    /// The row length, known even when there are no rows.
    dim: usize,
}

impl LabelledRows {
    /// `rows` of images `paths`; an error when the cached rows are not `dim` long.
    pub fn new(
        rows: CachedRows,
        paths: Vec<PathBuf>,
        dim: usize,
        cache: &Path,
    ) -> Result<Self, CacheError> {
        if !rows.is_empty() && rows.dim() != dim {
            return Err(CacheError::Corrupt {
                path: cache.to_path_buf(),
                problem: format!(
                    "rows of {} features where the backbone gives {dim}",
                    rows.dim()
                ),
            });
        }
        Ok(Self { rows, paths, dim })
    }

    /// Every row in memory, for the models that need a matrix (logistic regression, SVM,
    /// doctor's checks).
    pub fn to_matrix(&self) -> Result<FeatureMatrix, CacheError> {
        let mut rows = Vec::with_capacity(self.len() * self.dim());
        for_each_chunk(self, SCORE_CHUNK, |_, chunk| rows.extend_from_slice(chunk))?;
        Ok(FeatureMatrix {
            dim: self.dim(),
            rows,
            labels: self.labels(),
            paths: self.paths.clone(),
        })
    }
}

impl RowSource for LabelledRows {
    fn len(&self) -> usize {
        self.rows.len()
    }
    fn dim(&self) -> usize {
        self.dim
    }
    fn label(&self, i: usize) -> usize {
        self.rows.label(i)
    }
    fn read(&self, indices: &[usize], out: &mut Vec<f32>) -> Result<(), CacheError> {
        self.rows.read(indices, out)
    }
    fn prefetch(&self, indices: &[usize]) {
        self.rows.prefetch(indices)
    }
}

/// What a shard's safetensors header says about its `features` tensor.
pub(crate) struct Header {
    pub keys: Vec<String>,
    dim: usize,
    /// Byte offset of the first row in the file.
    data_start: u64,
}

pub(crate) fn read_header(file: &File, path: &Path) -> Result<Header, CacheError> {
    let corrupt = |problem: &str| CacheError::Corrupt {
        path: path.to_path_buf(),
        problem: problem.to_string(),
    };
    let io = |source| CacheError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut len = [0u8; 8];
    file.read_exact_at(&mut len, 0).map_err(io)?;
    let len = u64::from_le_bytes(len);
    if len > 100_000_000 {
        return Err(corrupt("header too large"));
    }
    let mut header = vec![0u8; len as usize];
    file.read_exact_at(&mut header, 8).map_err(io)?;
    let header: serde_json::Value =
        serde_json::from_slice(&header).map_err(|_| corrupt("header is not JSON"))?;
    let keys: Vec<String> = header["__metadata__"]["keys"]
        .as_str()
        .and_then(|k| serde_json::from_str(k).ok())
        .ok_or_else(|| corrupt("no keys in the metadata"))?;
    let features = &header["features"];
    let shape: Vec<usize> = serde_json::from_value(features["shape"].clone())
        .map_err(|_| corrupt("features has no shape"))?;
    let start = features["data_offsets"][0]
        .as_u64()
        .ok_or_else(|| corrupt("features has no data offsets"))?;
    match shape.as_slice() {
        [rows, dim] if *rows == keys.len() && features["dtype"] == "F32" => Ok(Header {
            keys,
            dim: *dim,
            data_start: 8 + len + start,
        }),
        _ => Err(corrupt(
            "features is not F32 [rows, dim] with one key a row",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::features::cache::{ShardMeta, commit_shard, serialize_shard};

    #[test]
    fn cached_rows_read_what_the_shards_hold() {
        let dir = tempfile::tempdir().unwrap();
        let meta = ShardMeta {
            backbone: "b".into(),
            weights_id: "w".into(),
            preprocessing: "p".into(),
        };
        let keys = |names: &[&str]| names.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let rows: Vec<f32> = (0..6).map(|v| v as f32).collect();
        commit_shard(
            dir.path(),
            &serialize_shard(&keys(&["a", "b", "c"]), &rows, 2, &meta),
        )
        .unwrap();
        commit_shard(
            dir.path(),
            &serialize_shard(&keys(&["d"]), &[9.0, 10.0], 2, &meta),
        )
        .unwrap();
        let source = CachedRows::open(dir.path(), &keys(&["d", "b", "a"]), &[1, 0, 2]).unwrap();
        assert_eq!((source.len(), source.dim()), (3, 2));
        let mut out = Vec::new();
        source.read(&[0, 1, 2, 1], &mut out).unwrap();
        assert_eq!(out, [9.0, 10.0, 2.0, 3.0, 0.0, 1.0, 2.0, 3.0]);
        assert_eq!(source.labels(), [1, 0, 2]);
        let missing = CachedRows::open(dir.path(), &keys(&["zz"]), &[0]).unwrap_err();
        assert!(missing.to_string().contains("no feature row for image zz"));
    }

    #[test]
    fn a_head_trained_from_disk_equals_one_trained_in_memory() {
        use crate::train::dense::{DenseOptions, train_dense};
        let dir = tempfile::tempdir().unwrap();
        let meta = ShardMeta {
            backbone: "b".into(),
            weights_id: "w".into(),
            preprocessing: "p".into(),
        };
        let (n, dim, classes) = (60, 8, 3);
        let labels: Vec<usize> = (0..n).map(|i| i % classes).collect();
        let values: Vec<f32> = (0..n * dim)
            .map(|i| ((i * 7919) % 101) as f32 / 50.0 + (labels[i / dim] * (i % dim)) as f32)
            .collect();
        let keys: Vec<String> = (0..n).map(|i| format!("k{i}")).collect();
        // Two shards, so rows come from more than one file.
        commit_shard(
            dir.path(),
            &serialize_shard(&keys[..25], &values[..25 * dim], dim, &meta),
        )
        .unwrap();
        commit_shard(
            dir.path(),
            &serialize_shard(&keys[25..], &values[25 * dim..], dim, &meta),
        )
        .unwrap();
        let matrix = |range: std::ops::Range<usize>| FeatureMatrix {
            dim,
            rows: values[range.start * dim..range.end * dim].to_vec(),
            labels: labels[range.clone()].to_vec(),
            paths: vec![PathBuf::new(); range.len()],
        };
        let options = DenseOptions {
            epochs: 4,
            batch_size: 7,
            dropout: 0.3,
            seed: 5,
            ..DenseOptions::default()
        };
        let in_memory =
            train_dense(&matrix(0..45), &matrix(45..60), classes, &options, |_| {}).unwrap();
        let train = CachedRows::open(dir.path(), &keys[..45], &labels[..45]).unwrap();
        let val = CachedRows::open(dir.path(), &keys[45..], &labels[45..]).unwrap();
        let from_disk = train_dense(&train, &val, classes, &options, |_| {}).unwrap();
        assert_eq!(from_disk.head, in_memory.head);
        assert_eq!(from_disk.history.len(), 4);
        for (a, b) in from_disk.history.iter().zip(&in_memory.history) {
            assert_eq!(a.val_loss.to_bits(), b.val_loss.to_bits());
        }
    }
}

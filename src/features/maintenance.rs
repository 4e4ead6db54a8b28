//! What an operator does to a feature cache that many workers wrote (`graft cache ...`):
//! count it, verify it, merge its shards with one row per image, and remove what dead writers
//! left. Every operation is safe while writers run: compaction writes the merged shards before
//! it removes the ones it read, and never touches a shard committed after it started.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;

use super::cache::{
    CacheError, ShardMeta, commit_shard, read_shard, remove_dead_temporaries, serialize_shard,
    shard_paths,
};
use super::rows::read_header;

/// Rows per shard written by [`compact`] (5 MB of 1280-d features).
pub const COMPACT_ROWS: usize = 1024;

/// One cache directory (one backbone, weights and preprocessing) and what it holds.
#[derive(Debug, Clone, Default, Serialize)]
pub struct CacheStats {
    pub dir: PathBuf,
    pub shards: usize,
    /// Rows in all readable shards, copies included.
    pub rows: usize,
    /// Distinct images (keys).
    pub distinct: usize,
    pub bytes: u64,
    /// Temporary files (writers at work, or dead ones' leftovers).
    pub temporaries: usize,
    /// Shards set aside as corrupt (`*.corrupt`), and shards that fail verification now.
    pub corrupt: Vec<PathBuf>,
}

/// What [`compact`] did to one cache directory.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Compacted {
    pub dir: PathBuf,
    pub shards_before: usize,
    pub shards_after: usize,
    pub rows_before: usize,
    pub rows_after: usize,
    /// Shards that failed verification: left in place, not merged.
    pub corrupt: Vec<PathBuf>,
}

/// Every cache directory under `root` (`<root>/<backbone>/<weights>-<hash>/`).
pub fn cache_dirs(root: &Path) -> Result<Vec<PathBuf>, CacheError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| CacheError::Io { path, source }
    };
    let mut dirs = Vec::new();
    if !root.exists() {
        return Ok(dirs);
    }
    for backbone in std::fs::read_dir(root).map_err(io(root))?.flatten() {
        if !backbone.path().is_dir() {
            continue;
        }
        for variant in std::fs::read_dir(backbone.path())
            .map_err(io(&backbone.path()))?
            .flatten()
        {
            if variant.path().is_dir() {
                dirs.push(variant.path());
            }
        }
    }
    dirs.sort();
    Ok(dirs)
}

/// Counts of one cache directory; with `verify`, every shard's checksum is checked too.
pub fn stats(dir: &Path, verify: bool) -> Result<CacheStats, CacheError> {
    let mut out = CacheStats {
        dir: dir.to_path_buf(),
        ..CacheStats::default()
    };
    let mut keys = HashSet::new();
    for entry in std::fs::read_dir(dir)
        .map_err(|source| CacheError::Io {
            path: dir.to_path_buf(),
            source,
        })?
        .flatten()
    {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with(".tmp") {
            out.temporaries += 1;
        } else if name.ends_with(".corrupt") {
            out.corrupt.push(entry.path());
        }
    }
    for shard in shard_paths(dir)? {
        out.shards += 1;
        out.bytes += std::fs::metadata(&shard).map_or(0, |m| m.len());
        if verify {
            match read_shard(&shard) {
                Ok((shard_keys, _, _)) => {
                    out.rows += shard_keys.len();
                    keys.extend(shard_keys);
                }
                Err(_) => out.corrupt.push(shard),
            }
        } else if let Ok(shard_keys) = read_keys(&shard) {
            out.rows += shard_keys.len();
            keys.extend(shard_keys);
        }
    }
    out.distinct = keys.len();
    out.corrupt.sort();
    Ok(out)
}

/// The keys of a shard from its header alone (no checksum: for counting).
fn read_keys(path: &Path) -> Result<Vec<String>, CacheError> {
    let file = std::fs::File::open(path).map_err(|source| CacheError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    Ok(read_header(&file, path)?.keys)
}

/// Merge the shards of one cache directory into shards of up to [`COMPACT_ROWS`] rows with one
/// row per distinct image, then remove the shards merged. Memory: one output shard and the
/// set of keys. Corrupt shards are left in place and listed. Interrupted, it leaves copies of
/// rows (harmless) that the next compaction removes.
pub fn compact(dir: &Path) -> Result<Compacted, CacheError> {
    let shards = shard_paths(dir)?;
    let mut out = Compacted {
        dir: dir.to_path_buf(),
        shards_before: shards.len(),
        ..Compacted::default()
    };
    let mut seen = HashSet::new();
    let mut pending_keys = Vec::new();
    let mut pending_rows = Vec::new();
    let mut meta: Option<(ShardMeta, usize)> = None;
    let mut merged = Vec::new();
    let mut written = Vec::new();
    let flush = |keys: &mut Vec<String>,
                 rows: &mut Vec<f32>,
                 meta: &Option<(ShardMeta, usize)>,
                 written: &mut Vec<PathBuf>|
     -> Result<(), CacheError> {
        if let (Some((meta, dim)), false) = (meta, keys.is_empty()) {
            written.push(commit_shard(dir, &serialize_shard(keys, rows, *dim, meta))?);
            keys.clear();
            rows.clear();
        }
        Ok(())
    };
    for shard in &shards {
        let (keys, features, dim) = match read_shard(shard) {
            Ok(read) => read,
            Err(CacheError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
                // Removed by another compaction since the listing.
                continue;
            }
            Err(_) => {
                out.corrupt.push(shard.clone());
                continue;
            }
        };
        if meta.is_none() {
            meta = Some((shard_meta(shard)?, dim));
        }
        out.rows_before += keys.len();
        for (i, key) in keys.into_iter().enumerate() {
            if seen.insert(key.clone()) {
                pending_keys.push(key);
                pending_rows.extend_from_slice(&features[i * dim..(i + 1) * dim]);
            }
            if pending_keys.len() == COMPACT_ROWS {
                flush(&mut pending_keys, &mut pending_rows, &meta, &mut written)?;
            }
        }
        merged.push(shard.clone());
    }
    flush(&mut pending_keys, &mut pending_rows, &meta, &mut written)?;
    for shard in &merged {
        match std::fs::remove_file(shard) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(CacheError::Io {
                    path: shard.clone(),
                    source,
                });
            }
        }
    }
    out.rows_after = seen.len();
    out.shards_after = shard_paths(dir)?.len();
    Ok(out)
}

/// The backbone / weights / preprocessing metadata of a verified shard.
fn shard_meta(shard: &Path) -> Result<ShardMeta, CacheError> {
    let bytes = std::fs::read(shard).map_err(|source| CacheError::Io {
        path: shard.to_path_buf(),
        source,
    })?;
    let (_, meta) =
        safetensors::SafeTensors::read_metadata(&bytes).map_err(|e| CacheError::Corrupt {
            path: shard.to_path_buf(),
            problem: e.to_string(),
        })?;
    let info = meta.metadata().clone().unwrap_or_default();
    let field = |name: &str| info.get(name).cloned().unwrap_or_default();
    Ok(ShardMeta {
        backbone: field("backbone"),
        weights_id: field("weights_id"),
        preprocessing: field("preprocessing"),
    })
}

/// Remove the temporary files that no live writer owns: this host's of processes that are
/// gone, and any older than `older_than`. Returns the files removed.
pub fn gc(dir: &Path, older_than: Duration) -> Vec<PathBuf> {
    remove_dead_temporaries(dir, older_than)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta() -> ShardMeta {
        ShardMeta {
            backbone: "b".into(),
            weights_id: "w".into(),
            preprocessing: "p".into(),
        }
    }

    fn write(dir: &Path, keys: &[&str], value: f32) {
        let keys: Vec<String> = keys.iter().map(|k| k.to_string()).collect();
        let rows = vec![value; keys.len() * 2];
        commit_shard(dir, &serialize_shard(&keys, &rows, 2, &meta())).unwrap();
    }

    #[test]
    fn compaction_keeps_one_row_per_image_and_the_first_value() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), &["a", "b"], 1.0);
        std::thread::sleep(Duration::from_millis(2));
        write(dir.path(), &["b", "c"], 2.0);
        std::fs::write(dir.path().join("shard-9-x.safetensors"), b"garbage").unwrap();
        let before = stats(dir.path(), true).unwrap();
        assert_eq!((before.shards, before.rows, before.distinct), (3, 4, 3));
        assert_eq!(before.corrupt.len(), 1);
        let done = compact(dir.path()).unwrap();
        assert_eq!((done.rows_before, done.rows_after), (4, 3));
        assert_eq!(done.corrupt.len(), 1);
        // The merged shard and the corrupt one, left for a human.
        assert_eq!(done.shards_after, 2);
        let after = stats(dir.path(), true).unwrap();
        assert_eq!((after.rows, after.distinct), (3, 3));
        let merged = shard_paths(dir.path())
            .unwrap()
            .into_iter()
            .find_map(|p| read_shard(&p).ok())
            .unwrap();
        assert_eq!(merged.0, ["a", "b", "c"]);
        assert_eq!(merged.1, [1.0, 1.0, 1.0, 1.0, 2.0, 2.0]);
        assert_eq!(merged.2, 2);
    }
}

//! The on-disk bottleneck cache: content-addressed rows of pooled features.
//!
//! Layout (readable without graft): `<cache dir>/<backbone>/<weights id>-<hash>/` (the hash is
//! of the preprocessing id and padding mode) holds `shard-*.safetensors` files. Each shard has one F32 tensor `features` `[rows, dim]`
//! and string metadata: `keys` (JSON array, the sha256 of each row's image file, in row order),
//! `sha256` (of the tensor's bytes), `backbone`, `weights_id`, `preprocessing`.
//! A shard is written to a temporary name, fsynced and renamed, so a crash leaves either the
//! whole shard or nothing; a shard whose checksum fails is set aside and its rows recomputed.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use safetensors::{Dtype, SafeTensors};

use crate::backbone::Backbone;

#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// A shard could not be written (disk full, file size limit, permissions, ...).
    #[error("{}: cannot write the feature cache: {source}{}", path.display(), no_space_hint(source))]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: {problem}", path.display())]
    Corrupt { path: PathBuf, problem: String },
}

/// What to do when the disk (or a size limit, or a quota) is full.
fn no_space_hint(error: &std::io::Error) -> &'static str {
    match error.raw_os_error() {
        Some(libc::ENOSPC | libc::EFBIG | libc::EDQUOT) => {
            " (free some space, or put the cache in another folder)"
        }
        _ => "",
    }
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> CacheError + '_ {
    move |source| CacheError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The cache of one (backbone, weights, preprocessing).
pub struct FeatureCache {
    dir: PathBuf,
    backbone: String,
    weights_id: String,
    preprocessing: String,
    /// Keys present in verified shards.
    keys: HashSet<String>,
    /// Shards that failed verification and were set aside.
    pub quarantined: Vec<PathBuf>,
}

impl FeatureCache {
    /// Open (creating if needed) the cache of `backbone` under `root`, verifying every shard.
    pub fn open(root: &Path, backbone: &Backbone) -> Result<Self, CacheError> {
        let preprocessing = backbone.config.preprocessing_id();
        // Padding changes the features as much as the preprocessing does.
        let variant = format!("{preprocessing}|{:?}", backbone.config.padding);
        let dir = root.join(&backbone.config.name).join(format!(
            "{}-{}",
            backbone.weights_id,
            &crate::util::sha256_hex(variant.as_bytes())[..12]
        ));
        std::fs::create_dir_all(&dir).map_err(io(&dir))?;
        remove_stale_temporaries(&dir);
        let mut cache = Self {
            dir,
            backbone: backbone.config.name.clone(),
            weights_id: backbone.weights_id.clone(),
            preprocessing,
            keys: HashSet::new(),
            quarantined: Vec::new(),
        };
        for shard in cache.shard_paths()? {
            match read_shard(&shard) {
                Ok((keys, _, _)) => cache.keys.extend(keys),
                Err(_) => {
                    let aside = shard.with_extension("corrupt");
                    std::fs::rename(&shard, &aside).map_err(io(&shard))?;
                    cache.quarantined.push(aside);
                }
            }
        }
        Ok(cache)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn contains(&self, key: &str) -> bool {
        self.keys.contains(key)
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The feature rows of `wanted` keys that are in the cache (each shard re-verified).
    pub fn rows(&self, wanted: &HashSet<String>) -> Result<HashMap<String, Vec<f32>>, CacheError> {
        let mut found = HashMap::with_capacity(wanted.len());
        for shard in self.shard_paths()? {
            let (keys, features, dim) = read_shard(&shard)?;
            for (i, key) in keys.into_iter().enumerate() {
                if wanted.contains(&key) {
                    found.insert(key, features[i * dim..(i + 1) * dim].to_vec());
                }
            }
        }
        Ok(found)
    }

    fn shard_paths(&self) -> Result<Vec<PathBuf>, CacheError> {
        let mut shards: Vec<PathBuf> = std::fs::read_dir(&self.dir)
            .map_err(io(&self.dir))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
                name.starts_with("shard-") && name.ends_with(".safetensors")
            })
            .collect();
        shards.sort();
        Ok(shards)
    }

    /// Append rows atomically as one shard. Keys already present are dropped.
    pub fn append(
        &mut self,
        keys: &[String],
        features: &[f32],
        dim: usize,
    ) -> Result<(), CacheError> {
        let mut fresh_keys = Vec::new();
        let mut rows = Vec::new();
        for (i, key) in keys.iter().enumerate() {
            if !self.keys.contains(key) && !fresh_keys.contains(key) {
                fresh_keys.push(key.clone());
                rows.extend_from_slice(&features[i * dim..(i + 1) * dim]);
            }
        }
        if fresh_keys.is_empty() {
            return Ok(());
        }
        let bytes: Vec<u8> = rows.iter().flat_map(|v| v.to_le_bytes()).collect();
        let metadata = HashMap::from([
            (
                "keys".to_string(),
                // cannot fail: a list of strings always serialises to JSON
                serde_json::to_string(&fresh_keys).expect("strings serialise"),
            ),
            ("sha256".to_string(), crate::util::sha256_hex(&bytes)),
            ("backbone".to_string(), self.backbone.clone()),
            ("weights_id".to_string(), self.weights_id.clone()),
            ("preprocessing".to_string(), self.preprocessing.clone()),
        ]);
        let view =
            safetensors::tensor::TensorView::new(Dtype::F32, vec![fresh_keys.len(), dim], &bytes)
                // cannot fail: `bytes` holds exactly fresh_keys.len() rows of `dim` f32s
                .expect("shape matches the byte length");
        let serialized = safetensors::serialize([("features", view)], Some(metadata))
            // cannot fail: one valid tensor, and a header (~70 bytes a key) far below 100 MB
            .expect("one f32 tensor always serialises");
        let name = format!(
            "shard-{:020}-{}.safetensors",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos()),
            std::process::id()
        );
        let path = self.dir.join(name);
        crate::util::write_atomic(&path, &serialized)
            .map_err(|source| CacheError::Write { path, source })?;
        self.keys.extend(fresh_keys);
        Ok(())
    }
}

/// (keys, features, dim) of one shard, after checking its checksum.
fn read_shard(path: &Path) -> Result<(Vec<String>, Vec<f32>, usize), CacheError> {
    let corrupt = |problem: String| CacheError::Corrupt {
        path: path.to_path_buf(),
        problem,
    };
    let bytes = std::fs::read(path).map_err(io(path))?;
    let (_, meta) = SafeTensors::read_metadata(&bytes).map_err(|e| corrupt(e.to_string()))?;
    let file = SafeTensors::deserialize(&bytes).map_err(|e| corrupt(e.to_string()))?;
    let info = meta.metadata().clone().unwrap_or_default();
    let keys: Vec<String> = info
        .get("keys")
        .and_then(|k| serde_json::from_str(k).ok())
        .ok_or_else(|| corrupt("no keys in the metadata".into()))?;
    let view = file
        .tensor("features")
        .map_err(|e| corrupt(e.to_string()))?;
    let [rows, dim] = view.shape() else {
        return Err(corrupt(format!("features has shape {:?}", view.shape())));
    };
    if *rows != keys.len() || view.dtype() != Dtype::F32 {
        return Err(corrupt("rows and keys disagree".into()));
    }
    if info.get("sha256").map(String::as_str) != Some(crate::util::sha256_hex(view.data()).as_str())
    {
        return Err(corrupt("checksum mismatch".into()));
    }
    let features = view
        .data()
        .chunks_exact(4)
        // cannot fail: chunks_exact(4) yields 4-byte slices
        .map(|c| f32::from_le_bytes(c.try_into().expect("chunks_exact(4)")))
        .collect();
    Ok((keys, features, *dim))
}

/// Temporary files left by a killed writer (`.tmp*`): never part of the cache. One extraction
/// at a time per cache directory is assumed.
fn remove_stale_temporaries(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for path in entries.filter_map(|e| e.ok().map(|e| e.path())) {
        if path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with(".tmp"))
        {
            let _ = std::fs::remove_file(path);
        }
    }
}

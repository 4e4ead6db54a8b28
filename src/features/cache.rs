//! The on-disk bottleneck cache: content-addressed rows of pooled features.
//!
//! Layout (readable without graft): `<cache dir>/<backbone>/<weights id>-<hash>/` (the hash is
//! of the preprocessing id and padding mode) holds `shard-*.safetensors` files. Each shard has one F32 tensor `features` `[rows, dim]`
//! and string metadata: `keys` (JSON array, the sha256 of each row's image file, in row order),
//! `sha256` (of the tensor's bytes), `backbone`, `weights_id`, `preprocessing`.
//! A shard is written to a temporary name, fsynced and renamed, so a crash leaves either the
//! whole shard or nothing; a shard whose checksum fails is set aside and its rows recomputed.
//!
//! Many writers may share a cache (several `graft extract` processes, on several machines over
//! a shared filesystem): each commits shards under names of its own (time, host, process),
//! and a writer removes only temporary files provably dead (its own host's, of a process that
//! no longer runs; any host's after a day); `graft cache gc` removes the others. Two writers
//! that extract the same image both commit a row; readers take one, `graft cache compact`
//! removes the copies.

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
    keys: HashSet<KeyDigest>,
    /// Shards that failed verification and were set aside.
    pub quarantined: Vec<PathBuf>,
}

impl FeatureCache {
    /// Open (creating if needed) the cache of `backbone` under `root`, verifying every shard.
    pub fn open(root: &Path, backbone: &Backbone) -> Result<Self, CacheError> {
        let preprocessing = backbone.config.preprocessing_id();
        // Padding changes the features as much as the preprocessing does.
        let mut variant = format!("{preprocessing}|{:?}", backbone.config.padding);
        // Another pooled feature is another set of rows (the source's keeps the old key).
        if backbone.config.pool != crate::backbone::Pooling::Source {
            variant.push_str(&format!("|{:?}", backbone.config.pool));
        }
        // So are bfloat16 products' rows (float32's keep the old key).
        if !backbone.config.precision.is_f32() {
            variant.push_str(&format!("|{:?}", backbone.config.precision));
        }
        // And a GPU's: its kernels sum in another order (rows differ from the CPU's by about
        // 1e-6 relative), so the rows a run reads never depend on which device wrote a shard.
        if !crate::backend::fused_cpu() {
            variant.push_str("|gpu");
        }
        let dir = root.join(&backbone.config.name).join(format!(
            "{}-{}",
            backbone.weights_id,
            &crate::util::sha256_hex(variant.as_bytes())[..12]
        ));
        std::fs::create_dir_all(&dir).map_err(io(&dir))?;
        remove_dead_temporaries(&dir, STALE_AFTER);
        let mut cache = Self {
            dir,
            backbone: backbone.config.name.clone(),
            weights_id: backbone.weights_id.clone(),
            preprocessing,
            keys: HashSet::new(),
            quarantined: Vec::new(),
        };
        for shard in cache.shard_paths()? {
            match shard_keys(&shard) {
                Ok(keys) => cache.keys.extend(keys.iter().map(|k| KeyDigest::of(k))),
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
        self.keys.contains(&KeyDigest::of(key))
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    fn shard_paths(&self) -> Result<Vec<PathBuf>, CacheError> {
        shard_paths(&self.dir)
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
            if !self.contains(key) && !fresh_keys.contains(key) {
                fresh_keys.push(key.clone());
                rows.extend_from_slice(&features[i * dim..(i + 1) * dim]);
            }
        }
        if fresh_keys.is_empty() {
            return Ok(());
        }
        let meta = ShardMeta {
            backbone: self.backbone.clone(),
            weights_id: self.weights_id.clone(),
            preprocessing: self.preprocessing.clone(),
        };
        let serialized = serialize_shard(&fresh_keys, &rows, dim, &meta);
        commit_shard(&self.dir, &serialized)?;
        self.keys
            .extend(fresh_keys.iter().map(|k| KeyDigest::of(k)));
        Ok(())
    }
}

/// A content key as its 32 bytes rather than 64 hex characters in a `String` (88 bytes and a
/// heap block): a large cache's key set is held for a whole extraction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct KeyDigest([u8; 32]);

impl KeyDigest {
    fn of(key: &str) -> Self {
        let mut bytes = [0u8; 32];
        if key.len() != 64
            || key.bytes().any(|b| b.is_ascii_uppercase())
            || hex::decode_to_slice(key, &mut bytes).is_err()
        {
            // graft's keys are lowercase sha256 hex; any other string (hand-made shards,
            // tests) is hashed to fit, which keeps distinct strings distinct.
            use sha2::Digest;
            bytes = sha2::Sha256::digest(key.as_bytes()).into();
        }
        Self(bytes)
    }
}

/// A shard of `rows` rows `[rows, dim]` with its `keys`, serialized with the metadata every
/// shard carries.
pub fn serialize_shard(keys: &[String], rows: &[f32], dim: usize, meta: &ShardMeta) -> Vec<u8> {
    let bytes: Vec<u8> = rows.iter().flat_map(|v| v.to_le_bytes()).collect();
    let metadata = HashMap::from([
        (
            "keys".to_string(),
            // cannot fail: a list of strings always serialises to JSON
            serde_json::to_string(keys).expect("strings serialise"),
        ),
        ("sha256".to_string(), crate::util::sha256_hex(&bytes)),
        ("backbone".to_string(), meta.backbone.clone()),
        ("weights_id".to_string(), meta.weights_id.clone()),
        ("preprocessing".to_string(), meta.preprocessing.clone()),
    ]);
    let view = safetensors::tensor::TensorView::new(Dtype::F32, vec![keys.len(), dim], &bytes)
        // cannot fail: `bytes` holds exactly keys.len() rows of `dim` f32s
        .expect("shape matches the byte length");
    safetensors::serialize([("features", view)], Some(metadata))
        // cannot fail: one valid tensor, and a header (~70 bytes a key) far below 100 MB
        .expect("one f32 tensor always serialises")
}

/// The identifying metadata of a cache's shards.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardMeta {
    pub backbone: String,
    pub weights_id: String,
    pub preprocessing: String,
}

/// Commit `bytes` as a new shard of `dir`: written under a temporary name that says which
/// host and process owns it, fsynced, then renamed to a name no other writer uses.
pub fn commit_shard(dir: &Path, bytes: &[u8]) -> Result<PathBuf, CacheError> {
    use std::io::Write;
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let owner = owner_tag(std::process::id());
    let path = dir.join(format!("shard-{nanos:020}-{owner}.safetensors"));
    let tmp = dir.join(format!("{TMP_PREFIX}{owner}-{nanos}"));
    let written = (|| {
        let mut file = std::fs::File::create_new(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&tmp, &path)?;
        std::fs::File::open(dir)?.sync_all()
    })();
    if let Err(source) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(CacheError::Write { path, source });
    }
    Ok(path)
}

/// Temporary files of shards being written start with this, then [`owner_tag`] and `-`.
pub const TMP_PREFIX: &str = ".tmp-";

/// `<host>-<pid>`: which writer owns a shard or temporary file.
pub fn owner_tag(pid: u32) -> String {
    format!("{}-{pid}", host_name())
}

/// This machine's name, reduced to letters, digits and `-` (it goes into file names).
fn host_name() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most buf.len() bytes into the buffer we own.
    let ok = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) } == 0;
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    let name: String = String::from_utf8_lossy(&buf[..end])
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    if ok && !name.is_empty() {
        name
    } else {
        "unknown-host".into()
    }
}

/// Whether process `pid` of this host is running.
fn process_alive(pid: u32) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return false;
    };
    // SAFETY: signal 0 only checks that the process exists and may be signalled.
    let result = unsafe { libc::kill(pid, 0) };
    result == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

/// (keys, features, dim) of one shard, after checking its checksum.
pub(crate) fn read_shard(path: &Path) -> Result<(Vec<String>, Vec<f32>, usize), CacheError> {
    let bytes = std::fs::read(path).map_err(io(path))?;
    let (keys, data, dim) = check_shard(path, &bytes)?;
    let features = data
        .chunks_exact(4)
        // cannot fail: chunks_exact(4) yields 4-byte slices
        .map(|c| f32::from_le_bytes(c.try_into().expect("chunks_exact(4)")))
        .collect();
    Ok((keys, features, dim))
}

/// The keys of one shard, after checking its checksum, without keeping its rows: opening a
/// cache reads every shard through one reused buffer, so that memory does not grow with the
/// number of shards.
fn shard_keys(path: &Path) -> Result<Vec<String>, CacheError> {
    crate::util::with_file_bytes(path, |bytes| {
        check_shard(path, bytes).map(|(keys, ..)| keys)
    })
    .map_err(io(path))?
}

/// (keys, the features' little-endian bytes, dim) of the serialized shard `bytes` read from
/// `path`, after checking its checksum.
fn check_shard<'a>(
    path: &Path,
    bytes: &'a [u8],
) -> Result<(Vec<String>, &'a [u8], usize), CacheError> {
    let corrupt = |problem: String| CacheError::Corrupt {
        path: path.to_path_buf(),
        problem,
    };
    let (_, meta) = SafeTensors::read_metadata(bytes).map_err(|e| corrupt(e.to_string()))?;
    let file = SafeTensors::deserialize(bytes).map_err(|e| corrupt(e.to_string()))?;
    let info = meta.metadata().as_ref();
    let keys: Vec<String> = info
        .and_then(|m| m.get("keys"))
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
    let checksum = info.and_then(|m| m.get("sha256")).map(String::as_str);
    if checksum != Some(crate::util::sha256_hex(view.data()).as_str()) {
        return Err(corrupt("checksum mismatch".into()));
    }
    Ok((keys, view.data(), *dim))
}

/// The committed shards of a cache directory, sorted (oldest first).
pub(crate) fn shard_paths(dir: &Path) -> Result<Vec<PathBuf>, CacheError> {
    let mut shards: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(io(dir))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
            name.starts_with("shard-") && name.ends_with(".safetensors")
        })
        .collect();
    shards.sort();
    Ok(shards)
}

/// How old another host's temporary file must be before any writer may remove it (a writer
/// commits a shard within seconds; a day leaves room for clock skew and stalled mounts).
pub const STALE_AFTER: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

/// Whether the temporary file `name` (modified `age` ago) belongs to no live writer: one of
/// this host whose process is gone, or any older than `older_than`. A temporary of unknown
/// form (e.g. from an older graft) counts by age alone.
pub(crate) fn temporary_is_dead(
    name: &str,
    age: std::time::Duration,
    older_than: std::time::Duration,
) -> bool {
    if age >= older_than {
        return true;
    }
    let Some(owner) = name.strip_prefix(TMP_PREFIX) else {
        return false;
    };
    let host = host_name();
    let Some(rest) = owner.strip_prefix(&host).and_then(|r| r.strip_prefix('-')) else {
        return false;
    };
    match rest
        .split('-')
        .next()
        .and_then(|pid| pid.parse::<u32>().ok())
    {
        Some(pid) => !process_alive(pid),
        None => false,
    }
}

/// Remove the temporary files of `dir` that no live writer owns (see [`temporary_is_dead`]);
/// returns them.
pub(crate) fn remove_dead_temporaries(dir: &Path, older_than: std::time::Duration) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut removed = Vec::new();
    for entry in entries.flatten() {
        let path = entry.path();
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        if !name.starts_with(".tmp") {
            continue;
        }
        let age = entry
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .unwrap_or_default();
        if temporary_is_dead(name, age, older_than) && std::fs::remove_file(&path).is_ok() {
            removed.push(path);
        }
    }
    removed
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn key_digests_keep_distinct_keys_distinct() {
        let hex = crate::util::sha256_hex(b"an image");
        let digest = KeyDigest::of(&hex);
        // A sha256 key is held as its own bytes...
        assert_eq!(hex::encode(digest.0), hex);
        // ...and no other spelling of it, nor a short or non-hex key, lands on the same digest.
        for other in [
            hex.to_uppercase(),
            hex[..63].to_string(),
            "a".into(),
            String::new(),
        ] {
            assert_ne!(KeyDigest::of(&other), digest, "{other}");
        }
        assert_ne!(KeyDigest::of("a"), KeyDigest::of("b"));
    }

    #[test]
    fn only_dead_writers_temporaries_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let host = host_name();
        let alive = format!("{TMP_PREFIX}{host}-{}-1", std::process::id());
        // A pid above Linux's pid_max (4194304) never runs.
        let dead = format!("{TMP_PREFIX}{host}-999999999-2");
        let other_host = format!("{TMP_PREFIX}elsewhere-{}-3", std::process::id());
        let unknown = ".tmpAbC123".to_string();
        for name in [&alive, &dead, &other_host, &unknown] {
            std::fs::write(dir.path().join(name), b"partial").unwrap();
        }
        let removed = remove_dead_temporaries(dir.path(), STALE_AFTER);
        let names: Vec<String> = removed
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, [dead]);
        // By age, every temporary goes.
        assert_eq!(remove_dead_temporaries(dir.path(), Duration::ZERO).len(), 3);
    }
}

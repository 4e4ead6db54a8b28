//! Weights: reading checkpoint files, matching their tensors to a model, and the local store.

pub mod checkpoint;
pub mod download;
pub mod hub;
pub mod loader;
pub mod lock;
pub mod store;

use std::path::{Path, PathBuf};

pub use checkpoint::{Checkpoint, CheckpointFormat, StoredTensor};
pub use loader::LoadReport;

#[derive(Debug, thiserror::Error)]
pub enum WeightsError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {problem}")]
    Invalid { path: PathBuf, problem: String },
    #[error("{path}: the checkpoint does not fit {model}:\n{report}")]
    Mismatch {
        path: PathBuf,
        model: String,
        report: Box<LoadReport>,
    },
    #[error("{0}")]
    Store(String),
    /// A download that failed: `problem` is one line (`HTTP 404 Not Found`, `cannot connect: ...`).
    #[error("{url}: {problem}")]
    Download { url: String, problem: String },
    /// Downloaded bytes whose sha256 is not the published one; they were deleted.
    #[error("{}: sha256 {actual} does not match the expected {expected} (downloaded from {url}); the download is corrupt or was tampered with, and was deleted", path.display())]
    Checksum {
        path: PathBuf,
        url: String,
        expected: String,
        actual: String,
    },
}

impl WeightsError {
    pub fn io(path: &Path, source: std::io::Error) -> Self {
        Self::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

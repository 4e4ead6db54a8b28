//! Weights: reading checkpoint files, matching their tensors to a model, and the local store.

pub mod checkpoint;
pub mod loader;
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
}

impl WeightsError {
    pub fn io(path: &Path, source: std::io::Error) -> Self {
        Self::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

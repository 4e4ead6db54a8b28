//! What can go wrong loading or running a contrastive model.

use std::path::{Path, PathBuf};

use crate::weights::{LoadReport, WeightsError};

/// What can go wrong loading or running a contrastive model.
#[derive(Debug, thiserror::Error)]
pub enum ClipError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: {problem}", path.display())]
    Config { path: PathBuf, problem: String },
    #[error(transparent)]
    Weights(#[from] WeightsError),
    #[error("{}: the checkpoint does not fit its config ({tower} tower):\n{report}", path.display())]
    Mismatch {
        path: PathBuf,
        tower: &'static str,
        report: Box<LoadReport>,
    },
    #[error("cannot tokenize {0}")]
    Tokenize(String),
    #[error("{0}")]
    Input(String),
}

impl ClipError {
    pub fn io(path: &Path, source: std::io::Error) -> Self {
        Self::Io {
            path: path.to_path_buf(),
            source,
        }
    }

    pub fn config(path: &Path, problem: String) -> Self {
        Self::Config {
            path: path.to_path_buf(),
            problem,
        }
    }
}

//! Epoch checkpoints of long training runs (fine-tuning, SimCLR pretraining): modules, the
//! optimizer state and a JSON state, written so that a kill at any moment leaves one whole
//! checkpoint. After every epoch the modules and the optimizer state are written under names
//! carrying the epoch, then `state.json` (the commit point) is replaced atomically, then the
//! previous epoch's files are removed.

use std::path::{Path, PathBuf};

use burn::module::Module;
use burn::optim::module_optimizer::ModuleOptimizer;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error(
        "stopped on request during epoch {}; the checkpoint of epoch {epochs_done} is kept",
        epochs_done + 1
    )]
    Interrupted { epochs_done: usize },
    #[error(
        "the loss became NaN or infinite in epoch {epoch}: the learning rate is too high for \
         these weights; lower the learning rates (the checkpoint of epoch {epochs_done} is kept)"
    )]
    Diverged { epoch: usize, epochs_done: usize },
    #[error("{}: {problem}", path.display())]
    Invalid { path: PathBuf, problem: String },
    /// The backbone's family has no trainer for this yet.
    #[error(transparent)]
    Unsupported(#[from] crate::backbone::Unsupported),
}

/// Where checkpoints go (`None`: nowhere) and whether to continue from the last one.
#[derive(Debug, Clone, Default)]
pub struct Checkpoints {
    pub dir: Option<PathBuf>,
    pub resume: bool,
    /// Stop after this many epochs in all (tests use it to stand in for an interruption).
    pub stop_after: Option<usize>,
}

/// A checkpoint read back: the caller's state, one record per module name asked for, and the
/// optimizer state.
pub struct Loaded<S> {
    pub state: S,
    pub modules: Vec<burn::store::ModuleRecord>,
    pub optimizer: burn::optim::OptimizerRecord,
}

const STATE_FILE: &str = "state.json";

#[derive(Serialize, Deserialize)]
struct StateFile<S> {
    epoch: usize,
    state: S,
}

impl CheckpointError {
    /// After each optimisation step of `epoch`: stop on a NaN / infinite `loss` or on Ctrl-C,
    /// keeping the checkpoint of the epoch before.
    pub fn check_step(loss: f64, epoch: usize) -> Result<(), Self> {
        if !loss.is_finite() {
            return Err(Self::Diverged {
                epoch,
                epochs_done: epoch - 1,
            });
        }
        if crate::interrupt::requested() {
            return Err(Self::Interrupted {
                epochs_done: epoch - 1,
            });
        }
        Ok(())
    }
}

pub fn invalid(path: &Path, problem: impl ToString) -> CheckpointError {
    CheckpointError::Invalid {
        path: path.to_path_buf(),
        problem: problem.to_string(),
    }
}

impl Checkpoints {
    /// Whether a finished epoch is on disk to resume from.
    pub fn exists(&self) -> bool {
        self.dir
            .as_ref()
            .is_some_and(|dir| dir.join(STATE_FILE).is_file())
    }

    fn module_file(dir: &Path, name: &str, epoch: usize) -> PathBuf {
        dir.join(format!("{name}-{epoch}.bpk"))
    }

    fn optimizer_file(dir: &Path, epoch: usize) -> PathBuf {
        dir.join(format!("optimizer-{epoch}.bin"))
    }

    /// Save the checkpoint of `epoch`: each `(name, module)`, the optimizer, then `state`.
    pub fn save<M: Module, S: Serialize>(
        &self,
        epoch: usize,
        modules: &[(&str, &M)],
        optimizer: &ModuleOptimizer,
        state: &S,
    ) -> Result<(), CheckpointError> {
        let Some(dir) = &self.dir else {
            return Ok(());
        };
        std::fs::create_dir_all(dir).map_err(|e| invalid(dir, e))?;
        for (name, module) in modules {
            let file = Self::module_file(dir, name, epoch);
            (*module)
                .clone()
                .save_file(&file)
                .map_err(|e| invalid(&file, e))?;
        }
        let optimizer_file = Self::optimizer_file(dir, epoch);
        let bytes = optimizer
            .into_bytes()
            .map_err(|e| invalid(&optimizer_file, e))?;
        crate::util::write_atomic(&optimizer_file, &bytes)
            .map_err(|e| invalid(&optimizer_file, e))?;
        let state_path = dir.join(STATE_FILE);
        let text = serde_json::to_string_pretty(&StateFile { epoch, state })
            .map_err(|e| invalid(&state_path, e))?;
        crate::util::write_atomic(&state_path, text.as_bytes())
            .map_err(|e| invalid(&state_path, e))?;
        if epoch > 1 {
            // Best effort: a leftover file of an older epoch is never read.
            for (name, _) in modules {
                let _ = std::fs::remove_file(Self::module_file(dir, name, epoch - 1));
            }
            let _ = std::fs::remove_file(Self::optimizer_file(dir, epoch - 1));
        }
        Ok(())
    }

    /// The last checkpoint (its modules called `names`), if there is one.
    pub fn load<S: DeserializeOwned>(
        &self,
        names: &[&str],
    ) -> Result<Option<Loaded<S>>, CheckpointError> {
        let Some(dir) = &self.dir else {
            return Ok(None);
        };
        let state_path = dir.join(STATE_FILE);
        let Ok(text) = std::fs::read_to_string(&state_path) else {
            return Ok(None);
        };
        let file: StateFile<S> =
            serde_json::from_str(&text).map_err(|e| invalid(&state_path, e))?;
        let modules = names
            .iter()
            .map(|name| {
                let path = Self::module_file(dir, name, file.epoch);
                burn::store::ModuleRecord::load(&path).map_err(|e| invalid(&path, e))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let optimizer_file = Self::optimizer_file(dir, file.epoch);
        let bytes = std::fs::read(&optimizer_file).map_err(|e| invalid(&optimizer_file, e))?;
        let optimizer =
            burn::optim::OptimizerRecord::from_bytes(burn::tensor::Bytes::from_bytes_vec(bytes))
                .map_err(|e| invalid(&optimizer_file, e))?;
        Ok(Some(Loaded {
            state: file.state,
            modules,
            optimizer,
        }))
    }
}

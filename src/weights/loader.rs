//! Matching a checkpoint's tensors to a model by name and shape. Every problem is collected and
//! reported by name; a model is never left partly at random initialisation.

use std::collections::BTreeSet;
use std::fmt;

use burn::module::{Param, RunningState};
use burn::nn::conv::Conv2d;
use burn::nn::{BatchNorm, LayerNorm, Linear};
use burn::tensor::{Device, Tensor, TensorData};

use super::checkpoint::Checkpoint;

/// Everything that kept a checkpoint from fitting a model.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LoadReport {
    pub missing: Vec<String>,
    pub unexpected: Vec<String>,
    /// `(name, expected shape, shape in the file)`
    pub wrong_shape: Vec<(String, Vec<usize>, Vec<usize>)>,
    /// Tensors that are not floating point where the model needs floats.
    pub wrong_dtype: Vec<String>,
    /// Tensors holding NaN or infinity.
    pub non_finite: Vec<String>,
}

impl LoadReport {
    pub fn is_clean(&self) -> bool {
        self.missing.is_empty()
            && self.unexpected.is_empty()
            && self.wrong_shape.is_empty()
            && self.wrong_dtype.is_empty()
            && self.non_finite.is_empty()
    }
}

impl fmt::Display for LoadReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for name in &self.missing {
            writeln!(f, "  missing tensor: {name}")?;
        }
        for (name, expected, found) in &self.wrong_shape {
            writeln!(
                f,
                "  wrong shape: {name}: the model needs {expected:?}, the file has {found:?}"
            )?;
        }
        for name in &self.wrong_dtype {
            writeln!(f, "  not a float tensor: {name}")?;
        }
        for name in &self.non_finite {
            writeln!(f, "  NaN or infinite values: {name}")?;
        }
        for name in &self.unexpected {
            writeln!(f, "  unexpected tensor: {name}")?;
        }
        Ok(())
    }
}

/// Hands out a checkpoint's tensors by name, remembering what was used and what went wrong.
pub struct TensorSource<'a> {
    checkpoint: &'a Checkpoint,
    /// Prepended to every model key (`module.`, `state_dict.`, ...), found from the file.
    prefix: String,
    used: BTreeSet<String>,
    report: LoadReport,
    device: Device,
}

impl<'a> TensorSource<'a> {
    /// `anchor` is a key every checkpoint of the family has; it finds any wrapping prefix.
    pub fn new(checkpoint: &'a Checkpoint, anchor: &str, device: &Device) -> Self {
        let prefix = checkpoint
            .tensors
            .keys()
            .filter_map(|k| k.strip_suffix(anchor))
            .filter(|p| p.is_empty() || p.ends_with('.'))
            .min_by_key(|p| p.len())
            .unwrap_or("")
            .to_string();
        Self {
            checkpoint,
            prefix,
            used: BTreeSet::new(),
            report: LoadReport::default(),
            device: device.clone(),
        }
    }

    /// The tensor `key` with shape `shape`, or `None` after recording why not.
    pub fn tensor<const D: usize>(&mut self, key: &str, shape: [usize; D]) -> Option<Tensor<D>> {
        let full = format!("{}{key}", self.prefix);
        let Some(stored) = self.checkpoint.tensors.get(&full) else {
            self.report.missing.push(full);
            return None;
        };
        self.used.insert(full.clone());
        if stored.shape != shape {
            self.report
                .wrong_shape
                .push((full, shape.to_vec(), stored.shape.clone()));
            return None;
        }
        let Some(values) = &stored.values else {
            self.report.wrong_dtype.push(full);
            return None;
        };
        if values.iter().any(|v| !v.is_finite()) {
            self.report.non_finite.push(full);
            return None;
        }
        Some(Tensor::from_data(
            TensorData::new(values.clone(), shape),
            &self.device,
        ))
    }

    /// Overwrite `param` with `key` when it is there and fits; otherwise leave it, recorded.
    pub fn param<const D: usize>(&mut self, param: &mut Param<Tensor<D>>, key: &str) {
        let shape: [usize; D] = param.dims();
        if let Some(t) = self.tensor(key, shape) {
            *param = Param::from_tensor(t);
        }
    }

    /// A PyTorch BatchNorm: `weight`, `bias`, `running_mean`, `running_var` under `prefix`.
    pub fn batch_norm(&mut self, bn: &mut BatchNorm, prefix: &str) {
        let [c] = bn.gamma.dims();
        self.param(&mut bn.gamma, &format!("{prefix}.weight"));
        self.param(&mut bn.beta, &format!("{prefix}.bias"));
        if let Some(t) = self.tensor(&format!("{prefix}.running_mean"), [c]) {
            bn.running_mean = RunningState::new(t);
        }
        if let Some(t) = self.tensor(&format!("{prefix}.running_var"), [c]) {
            bn.running_var = RunningState::new(t);
        }
        // An integer counter the model never reads; it is known, not unexpected.
        self.mark_used(&format!("{prefix}.num_batches_tracked"));
    }

    /// A PyTorch Linear (`weight` is `[out, in]`; burn keeps `[in, out]`).
    pub fn linear(&mut self, linear: &mut Linear, prefix: &str) {
        let [d_in, d_out] = linear.weight.dims();
        if let Some(w) = self.tensor(&format!("{prefix}.weight"), [d_out, d_in]) {
            linear.weight = Param::from_tensor(w.transpose());
        }
        if let Some(bias) = &mut linear.bias {
            self.param(bias, &format!("{prefix}.bias"));
        }
    }

    /// A PyTorch Conv2d: `weight`, and `bias` when the layer has one.
    pub fn conv2d(&mut self, conv: &mut Conv2d, prefix: &str) {
        self.param(&mut conv.weight, &format!("{prefix}.weight"));
        if let Some(bias) = &mut conv.bias {
            self.param(bias, &format!("{prefix}.bias"));
        }
    }

    /// A PyTorch LayerNorm: `weight` and `bias`.
    pub fn layer_norm(&mut self, norm: &mut LayerNorm, prefix: &str) {
        self.param(&mut norm.gamma, &format!("{prefix}.weight"));
        if let Some(beta) = &mut norm.beta {
            self.param(beta, &format!("{prefix}.bias"));
        }
    }

    /// Count keys under `prefix` as known (e.g. a classifier that was cut off).
    pub fn skip_prefix(&mut self, prefix: &str) {
        let full = format!("{}{prefix}", self.prefix);
        let keys: Vec<String> = self
            .checkpoint
            .tensors
            .keys()
            .filter(|k| k.starts_with(&full))
            .cloned()
            .collect();
        self.used.extend(keys);
    }

    fn mark_used(&mut self, key: &str) {
        let full = format!("{}{key}", self.prefix);
        if self.checkpoint.tensors.contains_key(&full) {
            self.used.insert(full);
        }
    }

    /// The report, with every tensor of the file that no layer asked for listed as unexpected.
    pub fn finish(mut self) -> LoadReport {
        self.report.unexpected = self
            .checkpoint
            .tensors
            .keys()
            .filter(|k| !self.used.contains(*k))
            .cloned()
            .collect();
        self.report
    }
}

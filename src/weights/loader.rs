//! Matching a checkpoint's tensors to a model by name and shape. Every problem is collected and
//! reported by name; a model is never left partly at random initialisation.

use std::collections::BTreeSet;
use std::fmt;

use burn::module::{Param, RunningState};
use burn::nn::conv::Conv2d;
use burn::nn::{BatchNorm, LayerNorm, Linear};
use burn::tensor::Shape;
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

    /// Count keys under `prefix` as known (e.g. a classifier that was cut off).
    fn mark_prefix_used(&mut self, prefix: &str) {
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

/// A model's tensors under checkpoint key names, one walk for both directions: each family
/// names its tensors once (`load`), and the same walk reads a checkpoint into the model
/// ([`TensorSource`]) or writes the model out under those names
/// ([`crate::backbone::export::TensorSink`]).
pub trait TensorKeys {
    /// `param` as stored under `key` in `stored` shape (a reshape of the model's: ConvNeXt's
    /// `[C, 1, 1]` layer scale).
    fn param_stored_as<const D: usize, const S: usize>(
        &mut self,
        param: &mut Param<Tensor<D>>,
        key: &str,
        stored: [usize; S],
    );

    /// `param` stored transposed under `key` (PyTorch's `[out, in]` for burn's `[in, out]`).
    fn param_transposed(&mut self, param: &mut Param<Tensor<2>>, key: &str);

    /// A running statistic (BatchNorm's mean or variance).
    fn running(&mut self, state: &mut RunningState<Tensor<1>>, key: &str);

    /// A key the model knows but never reads (BatchNorm's `num_batches_tracked`).
    fn known(&mut self, key: &str);

    /// Keys under `prefix` the model leaves out (a classifier that was cut off).
    fn skip_prefix(&mut self, prefix: &str);

    /// `param` under `key`, in the model's own shape.
    fn param<const D: usize>(&mut self, param: &mut Param<Tensor<D>>, key: &str) {
        let shape: [usize; D] = param.dims();
        self.param_stored_as(param, key, shape);
    }

    /// A PyTorch BatchNorm: `weight`, `bias`, `running_mean`, `running_var` under `prefix`.
    fn batch_norm(&mut self, bn: &mut BatchNorm, prefix: &str) {
        self.param(&mut bn.gamma, &format!("{prefix}.weight"));
        self.param(&mut bn.beta, &format!("{prefix}.bias"));
        self.running(&mut bn.running_mean, &format!("{prefix}.running_mean"));
        self.running(&mut bn.running_var, &format!("{prefix}.running_var"));
        // An integer counter the model never reads; it is known, not unexpected.
        self.known(&format!("{prefix}.num_batches_tracked"));
    }

    /// A PyTorch Linear (`weight` is `[out, in]`; burn keeps `[in, out]`).
    fn linear(&mut self, linear: &mut Linear, prefix: &str) {
        self.param_transposed(&mut linear.weight, &format!("{prefix}.weight"));
        if let Some(bias) = &mut linear.bias {
            self.param(bias, &format!("{prefix}.bias"));
        }
    }

    /// A PyTorch Conv2d: `weight`, and `bias` when the layer has one.
    fn conv2d(&mut self, conv: &mut Conv2d, prefix: &str) {
        self.param(&mut conv.weight, &format!("{prefix}.weight"));
        if let Some(bias) = &mut conv.bias {
            self.param(bias, &format!("{prefix}.bias"));
        }
    }

    /// A PyTorch LayerNorm: `weight` and `bias`.
    fn layer_norm(&mut self, norm: &mut LayerNorm, prefix: &str) {
        self.param(&mut norm.gamma, &format!("{prefix}.weight"));
        if let Some(beta) = &mut norm.beta {
            self.param(beta, &format!("{prefix}.bias"));
        }
    }
}

impl TensorKeys for TensorSource<'_> {
    fn param_stored_as<const D: usize, const S: usize>(
        &mut self,
        param: &mut Param<Tensor<D>>,
        key: &str,
        stored: [usize; S],
    ) {
        let shape: [usize; D] = param.dims();
        if let Some(t) = self.tensor(key, stored) {
            *param = Param::from_tensor(t.reshape(Shape::from(shape)));
        }
    }

    fn param_transposed(&mut self, param: &mut Param<Tensor<2>>, key: &str) {
        let [d_in, d_out] = param.dims();
        if let Some(w) = self.tensor(key, [d_out, d_in]) {
            *param = Param::from_tensor(w.transpose());
        }
    }

    fn running(&mut self, state: &mut RunningState<Tensor<1>>, key: &str) {
        let shape = state.value().dims();
        if let Some(t) = self.tensor(key, shape) {
            *state = RunningState::new(t);
        }
    }

    fn known(&mut self, key: &str) {
        self.mark_used(key);
    }

    fn skip_prefix(&mut self, prefix: &str) {
        self.mark_prefix_used(prefix);
    }
}

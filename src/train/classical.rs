//! Recipes "logreg", "svm" and "knn": classical models on the cached features (the SVM from
//! linfa, logistic regression by [`softmax_regression`], linfa's objective and solver).
//! Linear models are fitted on standardised features, then the standardisation is folded into
//! their weights so predicting needs only a [`Head::Linear`].

use linfa::prelude::*;
use linfa_svm::Svm;
use ndarray::{Array1, Array2};
use serde::{Deserialize, Serialize};

use crate::features::FeatureMatrix;
use crate::features::cache::CacheError;
use crate::features::rows::{RowSource, SCORE_CHUNK, for_each_chunk};
use crate::head::{Bank, Head, l2_normalized};
use crate::train::softmax_regression::{self, SolverOptions};

#[derive(Debug, thiserror::Error)]
pub enum FitError {
    #[error("logistic regression: {0}")]
    Logreg(String),
    #[error("linear SVM for class `{class}`: {problem}")]
    Svm { class: String, problem: String },
    #[error("no training examples")]
    Empty,
    #[error(
        "{recipe} holds every training row in memory: {rows} rows of {dim} features need about \
         {need_mb} MB, over graft's memory budget of {budget_mb} MB. Train a dense head instead \
         (`--recipe head` reads its mini-batches from the feature cache), or raise the budget \
         with {BUDGET_VARIABLE} (e.g. {BUDGET_VARIABLE}=32G)"
    )]
    OverBudget {
        recipe: &'static str,
        rows: usize,
        dim: usize,
        need_mb: u64,
        budget_mb: u64,
    },
    #[error(transparent)]
    Rows(#[from] CacheError),
    #[error("writing the kNN memory bank to a temporary file (in TMPDIR): {0}")]
    Spill(std::io::Error),
    #[error("{BUDGET_VARIABLE}={0:?}: expected bytes, optionally with K, M, G or T (e.g. 32G)")]
    BadBudget(String),
}

/// The environment variable that sets how much memory the in-memory fits may take.
pub const BUDGET_VARIABLE: &str = "GRAFT_MEMORY_BUDGET";

/// Bytes a model fitted in memory may use: `GRAFT_MEMORY_BUDGET` (bytes, or with a K / M / G /
/// T suffix), else half of the memory available now (`MemAvailable`), else 4 GiB.
pub fn memory_budget() -> Result<u64, FitError> {
    if let Ok(value) = std::env::var(BUDGET_VARIABLE) {
        return parse_bytes(&value).ok_or(FitError::BadBudget(value));
    }
    let available = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|info| {
            let line = info.lines().find(|l| l.starts_with("MemAvailable:"))?;
            let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
            Some(kib * 1024)
        });
    Ok(available.map_or(4 << 30, |bytes| bytes / 2))
}

fn parse_bytes(value: &str) -> Option<u64> {
    let value = value.trim();
    let (number, shift) = match value.char_indices().last()? {
        (i, 'k' | 'K') => (&value[..i], 10),
        (i, 'm' | 'M') => (&value[..i], 20),
        (i, 'g' | 'G') => (&value[..i], 30),
        (i, 't' | 'T') => (&value[..i], 40),
        _ => (value, 0),
    };
    let number: f64 = number.trim().parse().ok()?;
    (number.is_finite() && number >= 0.0).then(|| (number * (1u64 << shift) as f64) as u64)
}

/// Refuse, with what to do instead, a fit of `recipe` on `rows` rows of `dim` features whose
/// matrices would not fit the memory budget. The fits hold the f32 rows and an f64
/// standardised copy: 12 bytes a value, before the model's own working memory.
pub fn check_memory(recipe: &'static str, rows: usize, dim: usize) -> Result<(), FitError> {
    let need = rows as u64 * dim as u64 * 12;
    let budget = memory_budget()?;
    if need > budget {
        return Err(FitError::OverBudget {
            recipe,
            rows,
            dim,
            need_mb: need.div_ceil(1_000_000),
            budget_mb: budget / 1_000_000,
        });
    }
    Ok(())
}

/// Hyper-parameters of the classical recipes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClassicalOptions {
    /// L2 penalty of logistic regression (linfa's `alpha`).
    pub logreg_alpha: f64,
    pub logreg_max_iterations: u64,
    /// SVM soft-margin constant C.
    pub svm_c: f64,
    /// Weight each SVM's positive and negative examples to balance them.
    pub balanced_class_weights: bool,
    pub knn_k: usize,
}

impl Default for ClassicalOptions {
    fn default() -> Self {
        Self {
            logreg_alpha: 1.0,
            logreg_max_iterations: 200,
            svm_c: 1.0,
            balanced_class_weights: false,
            knn_k: 5,
        }
    }
}

/// Per-feature mean and 1/std of the training rows.
#[derive(Debug, Clone)]
struct Standardizer {
    mean: Vec<f64>,
    inv_std: Vec<f64>,
}

impl Standardizer {
    fn fit(data: &FeatureMatrix) -> Self {
        let (n, dim) = (data.len().max(1) as f64, data.dim);
        let mut mean = vec![0.0; dim];
        for i in 0..data.len() {
            for (m, &v) in mean.iter_mut().zip(data.row(i)) {
                *m += v as f64 / n;
            }
        }
        let mut var = vec![0.0; dim];
        for i in 0..data.len() {
            for ((s, &v), m) in var.iter_mut().zip(data.row(i)).zip(&mean) {
                *s += (v as f64 - m).powi(2) / n;
            }
        }
        // Constant features (std 0) are left centred but unscaled.
        let inv_std = var
            .iter()
            .map(|v| if *v > 1e-12 { 1.0 / v.sqrt() } else { 1.0 })
            .collect();
        Self { mean, inv_std }
    }

    /// The standardised rows in f32, row-major.
    fn apply_f32(&self, data: &FeatureMatrix) -> Vec<f32> {
        data.rows
            .chunks_exact(data.dim.max(1))
            .flat_map(|row| {
                row.iter()
                    .zip(&self.mean)
                    .zip(&self.inv_std)
                    .map(|((&v, m), s)| ((v as f64 - m) * s) as f32)
            })
            .collect()
    }

    fn apply(&self, data: &FeatureMatrix) -> Array2<f64> {
        Array2::from_shape_fn((data.len(), data.dim), |(i, j)| {
            (data.rows[i * data.dim + j] as f64 - self.mean[j]) * self.inv_std[j]
        })
    }

    /// The head that computes `w . standardise(x) + b` directly on raw features.
    /// `weights[c][j]` is the weight of feature `j` for class `c`.
    fn fold(&self, weights: &[Vec<f64>], biases: &[f64]) -> Head {
        let mut weight = Vec::with_capacity(weights.len() * self.mean.len());
        let mut bias = Vec::with_capacity(biases.len());
        for (w, b) in weights.iter().zip(biases) {
            let mut shift = 0.0;
            for ((w, inv_std), mean) in w.iter().zip(&self.inv_std).zip(&self.mean) {
                let scaled = w * inv_std;
                weight.push(scaled as f32);
                shift += scaled * mean;
            }
            bias.push((b - shift) as f32);
        }
        Head::Linear { weight, bias }
    }
}

/// Multinomial logistic regression.
pub fn fit_logreg(
    train: &FeatureMatrix,
    classes: &[String],
    options: &ClassicalOptions,
) -> Result<Head, FitError> {
    if train.is_empty() {
        return Err(FitError::Empty);
    }
    let scaler = Standardizer::fit(train);
    let rows = scaler.apply_f32(train);
    let solver = SolverOptions {
        alpha: options.logreg_alpha,
        max_iterations: options.logreg_max_iterations,
        gradient_tolerance: 1e-4,
    };
    let model = softmax_regression::fit(&rows, train.dim, &train.labels, classes.len(), &solver)
        .map_err(FitError::Logreg)?;
    // A class without training examples gets a bias that never wins.
    let mut seen = vec![false; classes.len()];
    train.labels.iter().for_each(|&l| seen[l] = true);
    let weights: Vec<Vec<f64>> = model
        .weights
        .chunks_exact(train.dim)
        .zip(&seen)
        .map(|(w, &seen)| {
            if seen {
                w.to_vec()
            } else {
                vec![0.0; train.dim]
            }
        })
        .collect();
    let biases: Vec<f64> = model
        .biases
        .iter()
        .zip(&seen)
        .map(|(&b, &seen)| if seen { b } else { -1e4 })
        .collect();
    Ok(scaler.fold(&weights, &biases))
}

/// One linear SVM per class (that class against the rest); scores are softmaxed margins.
pub fn fit_svm(
    train: &FeatureMatrix,
    classes: &[String],
    options: &ClassicalOptions,
) -> Result<Head, FitError> {
    if train.is_empty() {
        return Err(FitError::Empty);
    }
    let scaler = Standardizer::fit(train);
    let records = scaler.apply(train);
    let mut weights = Vec::with_capacity(classes.len());
    let mut biases = Vec::with_capacity(classes.len());
    for (class, name) in classes.iter().enumerate() {
        let is_class: Array1<bool> = train.labels.iter().map(|&l| l == class).collect();
        let positives = is_class.iter().filter(|&&p| p).count();
        if positives == 0 || positives == train.len() {
            weights.push(vec![0.0; train.dim]);
            biases.push(if positives == 0 { -1e4 } else { 1e4 });
            continue;
        }
        let (c_pos, c_neg) = if options.balanced_class_weights {
            let n = train.len() as f64;
            (
                options.svm_c * n / (2.0 * positives as f64),
                options.svm_c * n / (2.0 * (n - positives as f64)),
            )
        } else {
            (options.svm_c, options.svm_c)
        };
        let dataset = DatasetBase::new(records.view(), is_class.view());
        let model = Svm::<f64, bool>::params()
            .pos_neg_weights(c_pos, c_neg)
            .linear_kernel()
            .fit(&dataset)
            .map_err(|e| FitError::Svm {
                class: name.clone(),
                problem: e.to_string(),
            })?;
        // A linear SVM's decision is w.x - rho; read w back one unit vector at a time.
        let mut unit = Array1::<f64>::zeros(train.dim);
        let w: Vec<f64> = (0..train.dim)
            .map(|j| {
                unit[j] = 1.0;
                let value = model.weighted_sum(&unit);
                unit[j] = 0.0;
                value
            })
            .collect();
        weights.push(w);
        biases.push(-model.rho);
    }
    Ok(scaler.fold(&weights, &biases))
}

/// k nearest neighbours: the memory bank is the L2-normalised training rows, read from `train`
/// a chunk at a time. A bank larger than the memory budget ([`memory_budget`]) is written to an
/// unnamed temporary file and mapped, so that it takes disk, not memory.
pub fn fit_knn(
    train: &dyn RowSource,
    classes: &[String],
    options: &ClassicalOptions,
) -> Result<Head, FitError> {
    fit_knn_within(train, classes, options, memory_budget()?)
}

fn fit_knn_within(
    train: &dyn RowSource,
    classes: &[String],
    options: &ClassicalOptions,
    budget: u64,
) -> Result<Head, FitError> {
    if train.is_empty() {
        return Err(FitError::Empty);
    }
    let dim = train.dim();
    let floats = train.len() * dim;
    let bank = if floats as u64 * 4 <= budget {
        let mut bank = Vec::with_capacity(floats);
        for_each_chunk(train, SCORE_CHUNK, |_, rows| {
            bank.extend(l2_normalized(rows, dim))
        })?;
        Bank::Owned(bank)
    } else {
        use std::io::Write;
        let file = tempfile::tempfile().map_err(FitError::Spill)?;
        let mut out = std::io::BufWriter::new(&file);
        let mut written = Ok(());
        for_each_chunk(train, SCORE_CHUNK, |_, rows| {
            if written.is_ok() {
                let bytes: Vec<u8> = l2_normalized(rows, dim)
                    .iter()
                    .flat_map(|v| v.to_le_bytes())
                    .collect();
                written = out.write_all(&bytes);
            }
        })?;
        written
            .and_then(|()| out.flush())
            .map_err(FitError::Spill)?;
        drop(out);
        // SAFETY: the file is unnamed and only this process holds it, so nothing else can
        // change it while it is mapped.
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(FitError::Spill)?;
        Bank::mapped(std::sync::Arc::new(map), 0, floats)
    };
    Ok(Head::Knn {
        bank,
        labels: train.labels(),
        classes: classes.len(),
        k: options.knn_k.max(1),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::argmax_rows;

    /// Three well-separated blobs in 4-D on large feature offsets, each class apart from the rest
    /// along its own axis (so one-vs-rest separates them too).
    #[test]
    fn a_knn_bank_over_the_budget_is_mapped_and_scores_the_same() {
        let (train, classes) = blobs();
        let options = ClassicalOptions::default();
        let owned = fit_knn_within(&train, &classes, &options, u64::MAX).unwrap();
        let mapped = fit_knn_within(&train, &classes, &options, 0).unwrap();
        let Head::Knn { bank, .. } = &mapped else {
            panic!("a kNN head")
        };
        assert!(matches!(bank, Bank::Mapped { .. }), "{bank:?}");
        assert_eq!(mapped, owned);
        let scores = |head: &Head| head.scores(&train.rows, train.dim);
        assert_eq!(scores(&mapped), scores(&owned));
        // Saved from the map, loaded as a map.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("head.safetensors");
        mapped.save(&path).unwrap();
        let loaded = Head::load(&path).unwrap();
        assert_eq!(loaded, owned);
        assert_eq!(scores(&loaded), scores(&owned));
        let refused = check_memory("logistic regression", 1_000_000, 1280);
        if memory_budget().unwrap() < 15_360_000_000 {
            let message = refused.unwrap_err().to_string();
            assert!(message.contains("--recipe head"), "{message}");
            assert!(message.contains(BUDGET_VARIABLE), "{message}");
        }
    }

    #[test]
    fn memory_budgets_parse_with_suffixes() {
        assert_eq!(parse_bytes("1024"), Some(1024));
        assert_eq!(parse_bytes("2K"), Some(2048));
        assert_eq!(parse_bytes("1.5g"), Some(3 << 29));
        assert_eq!(parse_bytes(" 32G "), Some(32 << 30));
        assert_eq!(parse_bytes("lots"), None);
        assert_eq!(parse_bytes("-1G"), None);
        assert_eq!(parse_bytes(""), None);
    }

    fn blobs() -> (FeatureMatrix, Vec<String>) {
        let mut m = FeatureMatrix {
            dim: 4,
            ..Default::default()
        };
        for i in 0..60 {
            let class = i % 3;
            let jitter = ((i * 7919) % 13) as f32 / 13.0 - 0.5;
            // Class c sits 3 units out along axis c, on top of large offsets.
            let hot = |c: usize| if class == c { 3.0 } else { 0.0 };
            let centre = [100.0 + hot(0), 5.0 + hot(1), -50.0 + hot(2), jitter];
            m.rows.extend(centre.iter().map(|c| c + 0.3 * jitter));
            m.labels.push(class);
            m.paths.push(format!("{i}.jpg").into());
        }
        (m, vec!["a".into(), "b".into(), "c".into()])
    }

    fn accuracy(head: &Head, data: &FeatureMatrix) -> f64 {
        let scores = head.scores(&data.rows, data.dim);
        let predicted = argmax_rows(&scores, head.classes());
        predicted
            .iter()
            .zip(&data.labels)
            .filter(|(p, t)| p == t)
            .count() as f64
            / data.len() as f64
    }

    #[test]
    fn every_recipe_separates_separable_blobs() {
        let (data, classes) = blobs();
        let options = ClassicalOptions::default();
        for head in [
            fit_logreg(&data, &classes, &options).unwrap(),
            fit_svm(&data, &classes, &options).unwrap(),
            fit_knn(&data, &classes, &options).unwrap(),
        ] {
            assert_eq!(accuracy(&head, &data), 1.0, "{head:?}");
        }
    }

    #[test]
    fn folded_standardisation_equals_standardising_first() {
        let (data, _) = blobs();
        let scaler = Standardizer::fit(&data);
        let w = vec![vec![0.5, -1.0, 2.0, 0.25], vec![1.0, 0.0, 0.0, -3.0]];
        let b = vec![0.1, -0.2];
        let Head::Linear { weight, bias } = scaler.fold(&w, &b) else {
            unreachable!()
        };
        let standardised = scaler.apply(&data);
        for i in 0..data.len() {
            for c in 0..2 {
                let direct: f64 =
                    (0..4).map(|j| w[c][j] * standardised[[i, j]]).sum::<f64>() + b[c];
                let folded: f32 = (0..4)
                    .map(|j| weight[c * 4 + j] * data.row(i)[j])
                    .sum::<f32>()
                    + bias[c];
                assert!(
                    (direct - folded as f64).abs() < 1e-3,
                    "{direct} vs {folded}"
                );
            }
        }
    }
}

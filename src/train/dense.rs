//! Recipe "head": Dropout -> Dense softmax on cached pooled features, trained with AdamW.

use burn::nn::loss::CrossEntropyLossConfig;
use burn::nn::{Initializer, Linear, LinearConfig};
use burn::optim::{AdamWConfig, GradientsParams};
use burn::tensor::{Int, Tensor, TensorData};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use super::epochs::EarlyStopping;
use super::{EpochRecord, balanced_class_weights, cross_entropy_sum};
use crate::features::cache::CacheError;
use crate::features::rows::{RowSource, SCORE_CHUNK, for_each_chunk};
use crate::head::{Head, linear};
use crate::metrics::argmax_rows;

/// Hyper-parameters of the dense head.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DenseOptions {
    pub learning_rate: f64,
    pub epochs: usize,
    pub batch_size: usize,
    pub dropout: f64,
    pub weight_decay: f64,
    pub label_smoothing: f64,
    /// Weight each class by n / (classes * n_class) in the loss.
    pub balanced_class_weights: bool,
    /// Stop after this many epochs without a lower validation loss (best weights kept).
    pub patience: usize,
    pub seed: u64,
}

impl Default for DenseOptions {
    fn default() -> Self {
        Self {
            learning_rate: 1e-3,
            epochs: 100,
            batch_size: 32,
            dropout: 0.2,
            weight_decay: 1e-4,
            label_smoothing: 0.0,
            balanced_class_weights: false,
            patience: 10,
            seed: 0,
        }
    }
}

/// What training produced: the weights of the best epoch and the whole history.
#[derive(Debug, Clone)]
pub struct DenseResult {
    pub head: Head,
    pub history: Vec<EpochRecord>,
    /// 1-based epoch whose weights were kept.
    pub best_epoch: usize,
    /// The epoch whose loss became NaN or infinite, when one did (training stopped there and
    /// kept the best earlier weights).
    pub diverged_at: Option<usize>,
}

/// Train on `train`, early-stopping on the loss of `val` (no early stopping when `val` is
/// empty). All randomness (shuffling, dropout masks) comes from `options.seed`, and the weights
/// start at zero (a softmax regression has no symmetry to break), so a run is reproducible.
/// The rows are read one mini-batch at a time, so a disk-backed source
/// ([`crate::features::rows::CachedRows`]) trains in memory that does not grow with the rows.
pub fn train_dense(
    train: &dyn RowSource,
    val: &dyn RowSource,
    classes: usize,
    options: &DenseOptions,
    mut on_epoch: impl FnMut(&EpochRecord),
) -> Result<DenseResult, CacheError> {
    let dim = train.dim();
    let train_labels = train.labels();
    let device = crate::backend::device().autodiff();
    let mut layer: Linear = LinearConfig::new(dim, classes)
        .with_initializer(Initializer::Zeros)
        .init(&device);
    let mut optimizer = AdamWConfig::new()
        .with_weight_decay(options.weight_decay as f32)
        .init();
    let weights = options
        .balanced_class_weights
        .then(|| balanced_class_weights(&train_labels, classes));
    let loss_fn = CrossEntropyLossConfig::new()
        .with_smoothing((options.label_smoothing > 0.0).then_some(options.label_smoothing as f32))
        .with_weights(weights)
        .init(&device);
    let keep = 1.0 - options.dropout as f32;
    let mut rng = ChaCha8Rng::seed_from_u64(options.seed);
    let mut order: Vec<usize> = (0..train.len()).collect();
    let mut history = Vec::new();
    let mut stopping = EarlyStopping::new(options.patience);

    let mut diverged_at = None;
    'epochs: for epoch in 1..=options.epochs {
        if stopping.stalled(epoch) {
            break;
        }
        // One generator for the shuffles and the dropout masks: a head trains in seconds and
        // is never resumed, so it needs no per-epoch key (see `epochs::epoch_order`).
        order.shuffle(&mut rng);
        let (mut loss_sum, mut correct) = (0.0f64, 0usize);
        let mut rows = Vec::with_capacity(options.batch_size.max(1) * dim);
        let batches: Vec<&[usize]> = order.chunks(options.batch_size.max(1)).collect();
        for batch in batches.iter().take(READ_AHEAD) {
            train.prefetch(batch);
        }
        for (b, &batch) in batches.iter().enumerate() {
            if let Some(ahead) = batches.get(b + READ_AHEAD) {
                train.prefetch(ahead);
            }
            rows.clear();
            train.read(batch, &mut rows)?;
            // Inverted dropout on the pooled features, masks drawn from the run's seed.
            let x: Vec<f32> = rows
                .iter()
                .map(|&v| {
                    if options.dropout > 0.0 && rng.random::<f32>() >= keep {
                        0.0
                    } else {
                        v / keep
                    }
                })
                .collect();
            let targets: Vec<i64> = batch.iter().map(|&i| train_labels[i] as i64).collect();
            let x = Tensor::<2>::from_data(TensorData::new(x, [batch.len(), dim]), &device);
            let y = Tensor::<1, Int>::from_data(TensorData::new(targets, [batch.len()]), &device);
            let logits = layer.forward(x);
            let loss = loss_fn.forward(logits.clone(), y);
            let loss_value = loss.clone().into_scalar::<f32>() as f64;
            if !loss_value.is_finite() {
                diverged_at = Some(epoch);
                break 'epochs;
            }
            loss_sum += loss_value * batch.len() as f64;
            let logits: Vec<f32> = logits
                .into_data()
                .try_to_vec::<f32>()
                // cannot fail: graft makes only f32 tensors (the default float dtype)
                .expect("logits are f32");
            correct += argmax_rows(&logits, classes)
                .iter()
                .zip(batch)
                .filter(|(p, i)| **p == train_labels[**i])
                .count();
            let grads = GradientsParams::from_grads(loss.backward(), &layer);
            layer = optimizer.step(options.learning_rate, layer, grads);
        }
        let head = Head::from_linear(&layer);
        let (val_loss, val_accuracy) = evaluate(&head, val)?;
        let record = EpochRecord {
            epoch,
            train_loss: loss_sum / train.len().max(1) as f64,
            train_accuracy: correct as f64 / train.len().max(1) as f64,
            val_loss,
            val_accuracy,
            learning_rate: options.learning_rate,
        };
        on_epoch(&record);
        history.push(record);
        stopping.observe(epoch, val_loss, val.is_empty(), || head);
    }
    let (best_epoch, head) = stopping
        .into_best()
        .map_or_else(|| (0, Head::from_linear(&layer)), |b| (b.epoch, b.model));
    Ok(DenseResult {
        diverged_at,
        head,
        history,
        best_epoch,
    })
}

/// Mini-batches whose rows are asked for ([`RowSource::prefetch`]) before they are read.
const READ_AHEAD: usize = 4;

/// Mean cross-entropy and accuracy of `head` on `data` (NaN when empty), [`SCORE_CHUNK`] rows
/// at a time.
fn evaluate(head: &Head, data: &dyn RowSource) -> Result<(f64, f64), CacheError> {
    if data.is_empty() {
        return Ok((f64::NAN, f64::NAN));
    }
    let Head::Linear { weight, bias } = head else {
        unreachable!("dense training exports linear heads")
    };
    let (mut loss, mut correct) = (0.0f64, 0usize);
    for_each_chunk(data, SCORE_CHUNK, |range, rows| {
        let labels: Vec<usize> = range.map(|i| data.label(i)).collect();
        let logits = linear(rows, data.dim(), weight, bias);
        loss += cross_entropy_sum(&logits, &labels, bias.len());
        correct += argmax_rows(&logits, bias.len())
            .iter()
            .zip(&labels)
            .filter(|(p, t)| p == t)
            .count();
    })?;
    Ok((loss / data.len() as f64, correct as f64 / data.len() as f64))
}

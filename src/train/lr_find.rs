//! LR range test (Leslie Smith; fastai's `lr_find`): train the new top on cached features for
//! one mini-batch per learning rate, the rate growing exponentially, and suggest the rate where
//! the smoothed loss falls fastest.

use burn::nn::loss::CrossEntropyLossConfig;
use burn::nn::{Initializer, Linear, LinearConfig};
use burn::optim::{AdamWConfig, GradientsParams};
use burn::tensor::{Int, Tensor, TensorData};
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

use crate::features::FeatureMatrix;

/// One point of the sweep.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct LrPoint {
    pub learning_rate: f64,
    pub loss: f64,
    /// Exponential moving average of the loss, bias-corrected (fastai's beta 0.98).
    pub smoothed: f64,
}

/// Sweep from `min_lr` to `max_lr` over `steps` mini-batches of `batch_size`; stops early once
/// the smoothed loss exceeds 4x its best (the rate has diverged).
pub fn lr_range_test(
    train: &FeatureMatrix,
    classes: usize,
    (min_lr, max_lr): (f64, f64),
    steps: usize,
    batch_size: usize,
    seed: u64,
) -> Vec<LrPoint> {
    let device = crate::backend::device().autodiff();
    let mut layer: Linear = LinearConfig::new(train.dim, classes)
        .with_initializer(Initializer::Zeros)
        .init(&device);
    let mut optimizer = AdamWConfig::new().init();
    let loss_fn = CrossEntropyLossConfig::new().init(&device);
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut order: Vec<usize> = Vec::new();
    let mut points = Vec::with_capacity(steps);
    let (mut average, mut best) = (0.0f64, f64::INFINITY);
    let growth = (max_lr / min_lr).powf(1.0 / (steps.max(2) - 1) as f64);
    for step in 0..steps {
        if order.len() < batch_size {
            order = (0..train.len()).collect();
            order.shuffle(&mut rng);
        }
        let batch: Vec<usize> = order.split_off(order.len() - batch_size.min(order.len()));
        let lr = min_lr * growth.powi(step as i32);
        let x: Vec<f32> = batch.iter().flat_map(|&i| train.row(i).to_vec()).collect();
        let y: Vec<i64> = batch.iter().map(|&i| train.labels[i] as i64).collect();
        let x = Tensor::<2>::from_data(TensorData::new(x, [batch.len(), train.dim]), &device);
        let y = Tensor::<1, Int>::from_data(TensorData::new(y, [batch.len()]), &device);
        let loss = loss_fn.forward(layer.forward(x), y);
        let value = loss.clone().into_scalar::<f32>() as f64;
        let grads = GradientsParams::from_grads(loss.backward(), &layer);
        layer = optimizer.step(lr, layer, grads);
        average = 0.98 * average + 0.02 * value;
        let smoothed = average / (1.0 - 0.98f64.powi(step as i32 + 1));
        points.push(LrPoint {
            learning_rate: lr,
            loss: value,
            smoothed,
        });
        best = best.min(smoothed);
        if !value.is_finite() || smoothed > 4.0 * best {
            break;
        }
    }
    points
}

/// The rate at the steepest descent of the smoothed loss (per log-rate), ignoring the noisy
/// first tenth of the sweep.
pub fn suggest(points: &[LrPoint]) -> Option<f64> {
    let skip = points.len() / 10;
    points
        .windows(2)
        .skip(skip)
        .map(|w| {
            let slope = (w[1].smoothed - w[0].smoothed)
                / (w[1].learning_rate.ln() - w[0].learning_rate.ln());
            (slope, w[0].learning_rate)
        })
        .filter(|(slope, _)| slope.is_finite())
        .min_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, lr)| lr)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sweep_grows_exponentially_and_suggests_a_rate_inside_it() {
        // Two separable clusters.
        let mut data = FeatureMatrix {
            dim: 4,
            ..Default::default()
        };
        for i in 0..64 {
            let c = i % 2;
            let v = if c == 0 {
                [1.0, 0.0, 0.5, 0.2]
            } else {
                [0.0, 1.0, 0.2, 0.5]
            };
            data.rows.extend(v);
            data.labels.push(c);
            data.paths.push(format!("{i}").into());
        }
        let points = lr_range_test(&data, 2, (1e-5, 1.0), 60, 8, 0);
        assert!(points.len() > 20);
        let ratio = points[1].learning_rate / points[0].learning_rate;
        assert!((points[10].learning_rate / points[9].learning_rate - ratio).abs() < 1e-9);
        let lr = suggest(&points).unwrap();
        assert!((1e-5..=1.0).contains(&lr), "{lr}");
        // The loss at the suggestion's end of the sweep fell below where it started.
        assert!(
            points
                .iter()
                .map(|p| p.smoothed)
                .fold(f64::INFINITY, f64::min)
                < points[0].smoothed
        );
    }
}

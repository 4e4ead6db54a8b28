//! Randomness that belongs to one run, never to the process.
//!
//! burn's `Tensor::random` and its `Dropout` draw from the backend's global generator, which
//! every thread of the process shares and reseeds: two trainings in one process (tests run in
//! parallel, a library user, the Python package) would change each other's draws. Everything
//! random in graft (initial weights, dropout masks, shuffles, augmentation, test inputs)
//! comes instead from a [`RunRng`] derived from a seed, sampled on the host and uploaded.

use burn::module::Param;
use burn::nn::{Initializer, Linear, LinearConfig};
use burn::tensor::{Device, Distribution, Tensor, TensorData};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::StandardNormal;

/// The generator of a run: ChaCha8, cheap to seed and to split into streams.
pub type RunRng = ChaCha8Rng;

/// The generator for `seed`, stream `stream` (e.g. a step or an image index): streams of one
/// seed are independent of each other, so a step's draws do not depend on earlier steps.
pub fn run_rng(seed: u64, stream: u64) -> RunRng {
    let mut rng = RunRng::seed_from_u64(seed);
    rng.set_stream(stream);
    rng
}

/// `count` values drawn from `distribution`.
pub fn sample(distribution: Distribution, count: usize, rng: &mut impl Rng) -> Vec<f32> {
    (0..count)
        .map(|_| match distribution {
            Distribution::Default => rng.random::<f64>(),
            Distribution::Bernoulli(p) => f64::from(u8::from(rng.random_bool(p.clamp(0.0, 1.0)))),
            Distribution::Uniform(low, high) if low < high => rng.random_range(low..high),
            Distribution::Uniform(low, _) => low,
            Distribution::Normal(mean, std) => mean + std * rng.sample::<f64, _>(StandardNormal),
        } as f32)
        .collect()
}

/// A tensor of `shape` drawn from `distribution` with `rng` (burn's `Tensor::random` without
/// the global generator).
pub fn random_tensor<const D: usize>(
    shape: [usize; D],
    distribution: Distribution,
    rng: &mut impl Rng,
    device: &Device,
) -> Tensor<D> {
    let values = sample(distribution, shape.iter().product(), rng);
    Tensor::from_data(TensorData::new(values, shape), device)
}

/// A `d_in -> d_out` linear layer initialised as burn's `LinearConfig` does by default
/// (Kaiming uniform: weight and bias in `±1/sqrt(d_in)`), drawn from `rng`.
pub fn linear(d_in: usize, d_out: usize, rng: &mut impl Rng, device: &Device) -> Linear {
    let bound = 1.0 / (d_in.max(1) as f64).sqrt();
    let uniform = Distribution::Uniform(-bound, bound);
    let mut layer = LinearConfig::new(d_in, d_out)
        .with_initializer(Initializer::Zeros)
        .init(device);
    layer.weight = Param::from_tensor(random_tensor([d_in, d_out], uniform, rng, device));
    layer.bias = Some(Param::from_tensor(random_tensor(
        [d_out],
        uniform,
        rng,
        device,
    )));
    layer
}

/// Inverted dropout on `x` with a mask from `rng`: each entry is kept with probability
/// `1 - rate` and scaled by `1 / (1 - rate)`, as burn's `Dropout` does in training.
pub fn dropout<const D: usize>(x: Tensor<D>, rate: f64, rng: &mut impl Rng) -> Tensor<D> {
    if rate <= 0.0 {
        return x;
    }
    let keep = 1.0 - rate;
    let scale = (1.0 / keep) as f32;
    let shape: [usize; D] = x.dims();
    let mask: Vec<f32> = (0..shape.iter().product::<usize>())
        .map(|_| if rng.random_bool(keep) { scale } else { 0.0 })
        .collect();
    let device = x.device();
    x * Tensor::from_data(TensorData::new(mask, shape), &device)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_are_reproducible_and_distinct() {
        let draw = |seed, stream| sample(Distribution::Default, 8, &mut run_rng(seed, stream));
        assert_eq!(draw(3, 1), draw(3, 1));
        assert_ne!(draw(3, 1), draw(3, 2));
        assert_ne!(draw(3, 1), draw(4, 1));
    }

    #[test]
    fn samples_follow_their_distribution() {
        let mut rng = run_rng(0, 0);
        let n = 20_000;
        let normal = sample(Distribution::Normal(2.0, 3.0), n, &mut rng);
        let mean = normal.iter().map(|&v| v as f64).sum::<f64>() / n as f64;
        let var = normal
            .iter()
            .map(|&v| (v as f64 - mean).powi(2))
            .sum::<f64>()
            / n as f64;
        assert!((mean - 2.0).abs() < 0.1, "mean {mean}");
        assert!((var.sqrt() - 3.0).abs() < 0.1, "std {}", var.sqrt());
        let uniform = sample(Distribution::Uniform(-1.0, 0.5), n, &mut rng);
        assert!(uniform.iter().all(|v| (-1.0..0.5).contains(v)));
        let ones = sample(Distribution::Bernoulli(0.25), n, &mut rng);
        let rate = ones.iter().sum::<f32>() / n as f32;
        assert!((rate - 0.25).abs() < 0.02, "rate {rate}");
    }

    #[test]
    fn dropout_keeps_the_expected_share_and_scales_it() {
        let device = crate::backend::device();
        let x = Tensor::<2>::ones([100, 100], &device);
        let y: Vec<f32> = dropout(x, 0.2, &mut run_rng(1, 0))
            .into_data()
            .try_into_vec()
            .unwrap();
        let kept = y.iter().filter(|&&v| v != 0.0).count() as f64 / y.len() as f64;
        assert!((kept - 0.8).abs() < 0.02, "kept {kept}");
        assert!(y.iter().all(|&v| v == 0.0 || (v - 1.25).abs() < 1e-6));
    }
}

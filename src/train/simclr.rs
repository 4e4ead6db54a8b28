//! Self-supervised adaptation with SimCLR (Chen et al. 2020): two random views of every
//! unlabelled image go through the backbone and a 2-layer projection head; the NT-Xent loss pulls
//! the two views of an image together and pushes the 2(N-1) other views of the batch away. The
//! backbone starts from its ImageNet weights (or from scratch) and is then used like any other.

use std::path::PathBuf;

use burn::module::Module;
use burn::nn::loss::CrossEntropyLossConfig;
use burn::nn::{Linear, Relu};
use burn::optim::module_optimizer::ModuleOptimizer;
use burn::optim::{AdamWConfig, GradientsParams};
use burn::tensor::{Bool, Device, Int, Tensor, TensorData};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::backbone_pass::{BackbonePass, backbone_backward, training_pass};
use super::checkpoint::{CheckpointError, Checkpoints};
use super::epochs::{check_resumed_options, epoch_order};
use super::freeze::{BnMode, set_trainable};
use super::schedule::{Schedule, factor};
use crate::backbone::Network;
use crate::backbone::SourceConfig;
use crate::backbone::family::Start;
use crate::data::augment::{image_rng, simclr_view};
use crate::data::{Chw, DecodeLimits, decode_rgb, to_batch};
use crate::metrics::argmax_rows;
use crate::rng::{RunRng, run_rng};
use burn::lr_scheduler::module_lr_scheduler::ModuleLrScheduler;
use burn::module::ParamGroup;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SimclrOptions {
    pub epochs: usize,
    /// Images per step (each gives two views, so the loss sees 2N embeddings).
    pub batch_size: usize,
    /// Peak learning rate of the projection head.
    pub learning_rate: f64,
    /// Peak learning rate of the backbone (low for ImageNet weights: adapt, do not overwrite).
    pub backbone_learning_rate: f64,
    pub weight_decay: f64,
    /// NT-Xent temperature.
    pub temperature: f64,
    /// Width of the projection head's output (the space the loss compares in).
    pub projection_dim: usize,
    /// Side of the square views (lower than the source resolution trains faster).
    pub resolution: usize,
    /// Epochs of linear warm-up before the cosine decay.
    pub warmup_epochs: usize,
    pub bn_mode: BnMode,
    /// Gaussian blur as a fifth augmentation.
    pub blur: bool,
    pub seed: u64,
}

impl Default for SimclrOptions {
    fn default() -> Self {
        Self {
            epochs: 10,
            batch_size: 32,
            learning_rate: 1e-3,
            backbone_learning_rate: 1e-4,
            weight_decay: 1e-4,
            temperature: 0.1,
            projection_dim: 128,
            resolution: 224,
            warmup_epochs: 1,
            bn_mode: BnMode::Frozen,
            blur: false,
            seed: 0,
        }
    }
}

/// The backbone and the projection head g(h) = W2 ReLU(W1 h).
#[derive(Module, Debug)]
pub struct SimclrModel {
    pub net: Network,
    pub hidden: Linear,
    pub relu: Relu,
    pub output: Linear,
}

impl SimclrModel {
    /// `net` with a new projection head whose initial weights come from `rng`.
    pub fn new(net: Network, projection_dim: usize, rng: &mut RunRng, device: &Device) -> Self {
        let dim = net.feature_dim();
        Self {
            net,
            hidden: crate::rng::linear(dim, dim, rng, device),
            relu: Relu::new(),
            output: crate::rng::linear(dim, projection_dim, rng, device),
        }
    }

    /// Projections `z` of a batch of views.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<2> {
        self.project(self.net.forward_features(x))
    }

    /// Projections `z` of pooled features `h`.
    pub fn project(&self, h: Tensor<2>) -> Tensor<2> {
        self.output
            .forward(self.relu.forward(self.hidden.forward(h)))
    }
}

/// NT-Xent over `z` = `[2N, d]`, rows `i` and `i + N` being the two views of image `i`. Each
/// of the 2N anchors is a (2N-1)-way classification: its positive against the 2(N-1) views of
/// the other images, on cosine similarities divided by `temperature`. Returns the mean loss and
/// the similarity logits (self-similarity masked out), `[2N, 2N]`.
pub fn nt_xent(z: Tensor<2>, temperature: f64) -> (Tensor<1>, Tensor<2>) {
    let device = z.device();
    let [rows, _] = z.dims();
    let n = rows / 2;
    let norm = z
        .clone()
        .powf_scalar(2.0)
        .sum_dim(1)
        .sqrt()
        .clamp_min(1e-12);
    let z = z / norm;
    let logits = z.clone().matmul(z.transpose()) / temperature;
    let eye: Tensor<2, Bool> = Tensor::<2>::eye(rows, &device).equal_elem(1.0);
    // exp(-1e9) is 0: an anchor is never its own negative.
    let logits = logits.mask_fill(eye, -1e9);
    let targets: Vec<i64> = (0..rows).map(|i| ((i + n) % rows) as i64).collect();
    let targets = Tensor::<1, Int>::from_data(TensorData::new(targets, [rows]), &device);
    let loss = CrossEntropyLossConfig::new()
        .init(&device)
        .forward(logits.clone(), targets);
    (loss, logits)
}

/// One line of the pretraining history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PretrainEpoch {
    pub epoch: usize,
    /// Mean NT-Xent loss over the epoch's steps.
    pub loss: f64,
    /// How often an anchor's most similar view was its positive (the contrastive task's
    /// accuracy; chance is 1 / (2N-1)).
    pub positive_accuracy: f64,
    /// Backbone learning rate at the epoch's last step.
    pub learning_rate: f64,
    /// Images that failed to decode this epoch (left out of their batch).
    pub skipped: usize,
}

impl PretrainEpoch {
    pub const CSV_HEADER: &str = "epoch,loss,positive_accuracy,learning_rate,skipped";

    pub fn csv_line(&self) -> String {
        format!(
            "{},{},{},{},{}",
            self.epoch, self.loss, self.positive_accuracy, self.learning_rate, self.skipped
        )
    }
}

/// What a checkpoint holds besides tensors.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct State {
    options: SimclrOptions,
    epochs_done: usize,
    global_step: u64,
    history: Vec<PretrainEpoch>,
}

#[derive(Debug)]
pub struct PretrainResult {
    /// The adapted backbone (projection head dropped, as in the paper).
    pub net: Network,
    pub history: Vec<PretrainEpoch>,
}

/// Two views of every image of `batch` that decodes: `[2N, 3, r, r]`, first views then second
/// views, and the number that did not decode.
fn view_batch(
    paths: &[PathBuf],
    batch: &[usize],
    config: &SourceConfig,
    options: &SimclrOptions,
    epoch: usize,
    device: &Device,
) -> (Option<Tensor<4>>, usize) {
    let pairs: Vec<Option<(Chw, Chw)>> = batch
        .par_iter()
        .map(|&i| {
            let rgb = decode_rgb(&paths[i], DecodeLimits::default()).ok()?;
            let view = |v: usize| {
                let mut rng = image_rng(options.seed, epoch, 2 * i + v);
                simclr_view(&rgb, config, options.resolution, options.blur, &mut rng).1
            };
            Some((view(0), view(1)))
        })
        .collect();
    let good: Vec<&(Chw, Chw)> = pairs.iter().flatten().collect();
    let skipped = pairs.len() - good.len();
    if good.len() < 2 {
        // NT-Xent needs at least one negative.
        return (None, skipped);
    }
    let views: Vec<&Chw> = good
        .iter()
        .map(|p| &p.0)
        .chain(good.iter().map(|p| &p.1))
        .collect();
    (Some(to_batch(&views, options.resolution, device)), skipped)
}

/// One step: loss, backward (the backbone as `pass` says, see [`super::backbone_pass`]; the
/// projection head and NT-Xent on the whole batch), an AdamW update of the backbone at
/// `backbone_lr` and of the projection head at `head_lr`. Returns the model, the loss and the
/// positive accuracy.
fn train_step(
    model: SimclrModel,
    optimizer: &mut ModuleOptimizer,
    x: Tensor<4>,
    temperature: f64,
    (backbone_lr, head_lr): (f64, f64),
    pass: BackbonePass,
) -> (SimclrModel, f64, f64) {
    let (loss, logits, mut grads) = backbone_backward(&model.net, Start::Image, x, pass, |h| {
        nt_xent(model.project(h), temperature)
    });
    let loss_value = loss.clone().into_scalar::<f32>() as f64;
    let rows = logits.dims()[0];
    let logits: Vec<f32> = logits
        .into_data()
        .convert::<f32>()
        .try_into_vec()
        .unwrap_or_default();
    let hits = argmax_rows(&logits, rows)
        .iter()
        .enumerate()
        .filter(|(i, p)| **p == (i + rows / 2) % rows)
        .count();
    let grads = GradientsParams::from_module(&mut grads, &model);
    // One update: the projection head at its rate, the backbone at its own (burn's groups).
    let rates = ModuleLrScheduler::new(head_lr)
        .with_group(ParamGroup::ids_from_module(model.net.clone()), backbone_lr)
        .step();
    let model = optimizer.step(rates, model, grads);
    (model, loss_value, hits as f64 / rows.max(1) as f64)
}

const MODULES: [&str; 1] = ["model"];

/// Pretrain `net` (unfolded BatchNorm) on the images at `paths` with SimCLR.
pub fn pretrain(
    net: Network,
    config: &SourceConfig,
    paths: &[PathBuf],
    options: &SimclrOptions,
    checkpoints: &Checkpoints,
    mut on_step: impl FnMut(usize, f64),
    mut on_epoch: impl FnMut(&PretrainEpoch),
) -> Result<PretrainResult, CheckpointError> {
    let device = crate::backend::device().autodiff();
    let groups = config.layer_groups.len();
    let all: Vec<usize> = (0..groups).collect();
    let net = set_trainable(net.for_training(&device), &all, options.bn_mode);
    let pass = training_pass(&net, options.bn_mode);
    // The projection head's initial weights come from the run's seed.
    let mut model = SimclrModel::new(
        net,
        options.projection_dim,
        &mut run_rng(options.seed, u64::MAX),
        &device,
    );
    let mut optimizer = AdamWConfig::new()
        .with_weight_decay(options.weight_decay as f32)
        .init();
    let batch_size = options.batch_size.max(2);
    let steps_per_epoch = paths.len().div_ceil(batch_size);
    let total = options.epochs * steps_per_epoch;
    let warmup = options.warmup_epochs * steps_per_epoch;
    let mut history = Vec::new();
    let mut global_step = 0u64;
    if checkpoints.resume
        && let Some(saved) = checkpoints.load::<State>(&MODULES)?
    {
        check_resumed_options(&saved.state.options, options, checkpoints, "pretraining")?;
        history = saved.state.history;
        global_step = saved.state.global_step;
        let record = saved.modules.into_iter().next().ok_or_else(|| {
            super::checkpoint::invalid(&checkpoints.dir.clone().unwrap_or_default(), "no model")
        })?;
        model = model.load_record(record);
        optimizer = optimizer.load_record(saved.optimizer);
    }
    for epoch in history.len() + 1..=options.epochs {
        if checkpoints.stop_after.is_some_and(|n| epoch > n) {
            break;
        }
        let order = epoch_order(paths.len(), options.seed, epoch);
        let (mut loss_sum, mut accuracy_sum, mut steps, mut skipped) = (0.0, 0.0, 0usize, 0);
        let mut backbone_lr = 0.0;
        for batch in order.chunks(batch_size) {
            let step = (epoch - 1) * steps_per_epoch + steps;
            let f = factor(Schedule::Cosine, step, total, warmup);
            backbone_lr = options.backbone_learning_rate * f;
            let (x, bad) = view_batch(paths, batch, config, options, epoch, &device);
            skipped += bad;
            let Some(x) = x else {
                on_step(batch.len(), f64::NAN);
                continue;
            };
            let (next, loss, accuracy) = train_step(
                model,
                &mut optimizer,
                x,
                options.temperature,
                (backbone_lr, options.learning_rate * f),
                pass,
            );
            model = next;
            steps += 1;
            global_step += 1;
            loss_sum += loss;
            accuracy_sum += accuracy;
            on_step(batch.len(), loss);
            CheckpointError::check_step(loss, epoch)?;
        }
        let record = PretrainEpoch {
            epoch,
            loss: loss_sum / steps.max(1) as f64,
            positive_accuracy: accuracy_sum / steps.max(1) as f64,
            learning_rate: backbone_lr,
            skipped,
        };
        on_epoch(&record);
        history.push(record);
        checkpoints.save(
            epoch,
            &[(MODULES[0], &model)],
            &optimizer,
            &State {
                options: options.clone(),
                epochs_done: epoch,
                global_step,
                history: history.clone(),
            },
        )?;
    }
    crate::backbone::fused::train::release_buffers();
    Ok(PretrainResult {
        net: model.valid().net,
        history,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn loss_of(rows: &[[f32; 2]], temperature: f64) -> f64 {
        let device = crate::backend::device();
        let flat: Vec<f32> = rows.iter().flatten().copied().collect();
        let z = Tensor::<2>::from_data(TensorData::new(flat, [rows.len(), 2]), &device);
        nt_xent(z, temperature).0.into_scalar::<f32>() as f64
    }

    /// Unit vectors at `degrees` (not normalised on purpose: NT-Xent normalises).
    fn at(degrees: f64, length: f64) -> [f32; 2] {
        let r = degrees.to_radians();
        [(length * r.cos()) as f32, (length * r.sin()) as f32]
    }

    fn values<const D: usize>(t: Tensor<D>) -> Vec<f32> {
        t.into_data().try_into_vec().unwrap()
    }

    #[test]
    fn a_step_trains_the_backbone_and_the_projection_head() {
        // Built on the plain device, as `Backbone::load` does, then moved as `pretrain` does.
        let plain = crate::backend::device();
        let device = plain.clone().autodiff();
        let info = crate::backbone::find("efficientnet-lite0").unwrap();
        let config = info.source_config(None);
        let mut rng = run_rng(0, 0);
        let net = crate::backbone::mbconv::MbNet::init(
            &info.mbconv().unwrap().0,
            config.padding,
            config.bn_eps,
            false,
            &mut rng,
            &plain,
        );
        let net = Network::from(net).for_training(&device);
        let groups = config.layer_groups.len();
        let all: Vec<usize> = (0..groups).collect();
        let net = set_trainable(net, &all, BnMode::Frozen);
        let model = SimclrModel::new(net, 16, &mut rng, &device);
        let mb = |model: &SimclrModel| model.net.as_mbconv().unwrap().clone();
        let stem = values(mb(&model).stem.weight.val());
        let head = values(mb(&model).head.weight.val());
        let hidden = values(model.hidden.weight.val());
        let x = crate::rng::random_tensor::<4>(
            [4, 3, 64, 64],
            burn::tensor::Distribution::Normal(0.0, 1.0),
            &mut rng,
            &device,
        );
        let mut optimizer = AdamWConfig::new().init();
        // As pretraining runs on the CPU with frozen BatchNorm.
        let pass = training_pass(&model.net, BnMode::Frozen);
        let (model, loss, _) = train_step(model, &mut optimizer, x, 0.1, (1e-2, 1e-2), pass);
        assert!(loss.is_finite());
        assert!(
            values(mb(&model).stem.weight.val()) != stem,
            "stem did not train"
        );
        assert!(
            values(mb(&model).head.weight.val()) != head,
            "head conv did not train"
        );
        assert!(
            values(model.hidden.weight.val()) != hidden,
            "projection did not train"
        );
    }

    #[test]
    fn nt_xent_matches_a_hand_computed_value() {
        // Images a and b, two views each: rows [a1, b1, a2, b2] at 0, 90, 60 and 180 degrees.
        // Cosines: a1.b1 0, a1.a2 0.5, a1.b2 -1, b1.a2 cos 30, b1.b2 0, a2.b2 -0.5.
        // With t = 0.5 the loss of anchor i is -s(i, pos)/t + ln sum_{k != i} exp(s(i, k)/t):
        let s3 = 3f64.sqrt();
        let e = f64::exp;
        let a1 = -1.0 + (e(0.0) + e(1.0) + e(-2.0)).ln();
        let b1 = -0.0 + (e(0.0) + e(s3) + e(0.0)).ln();
        let a2 = -1.0 + (e(1.0) + e(s3) + e(-1.0)).ln();
        let b2 = -0.0 + (e(-2.0) + e(0.0) + e(-1.0)).ln();
        let expected = (a1 + b1 + a2 + b2) / 4.0;
        let rows = [at(0.0, 1.0), at(90.0, 2.0), at(60.0, 0.5), at(180.0, 3.0)];
        let got = loss_of(&rows, 0.5);
        assert!((got - expected).abs() < 1e-5, "{got} vs {expected}");
    }

    #[test]
    fn every_anchor_sees_its_positive_and_all_2n_minus_2_negatives() {
        // All embeddings equal: every logit is 1/t, so the loss is ln(2N - 1) exactly when the
        // softmax runs over the positive and the 2(N-1) negatives and never over the anchor.
        for n in [2usize, 3, 5] {
            let rows = vec![[1.0f32, 1.0]; 2 * n];
            let got = loss_of(&rows, 0.1);
            let expected = ((2 * n - 1) as f64).ln();
            assert!((got - expected).abs() < 1e-4, "N={n}: {got} vs {expected}");
        }
    }

    #[test]
    fn the_temperature_sharpens_the_loss() {
        // Positives aligned, negatives orthogonal: a lower temperature gives a lower loss,
        // ln(1 + 2(N-1) e^{-1/t}) for N = 2.
        let rows = [at(0.0, 1.0), at(90.0, 1.0), at(0.0, 1.0), at(90.0, 1.0)];
        for t in [0.1, 0.5, 1.0] {
            let expected = (1.0 + 2.0 * f64::exp(-1.0 / t)).ln();
            let got = loss_of(&rows, t);
            assert!((got - expected).abs() < 1e-5, "t={t}: {got} vs {expected}");
        }
    }
}

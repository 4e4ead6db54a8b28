//! Recipe "finetune": the pretrained backbone + a new top, trained end to end the way the talk
//! advises: the top first (done by the caller on cached features), then gradual unfreezing
//! from the top, discriminative learning rates, a per-step schedule, BatchNorm kept in
//! inference mode, and on-the-fly augmentation.

use burn::module::{Module, Param};
use burn::nn::loss::{CrossEntropyLoss, CrossEntropyLossConfig};
use burn::nn::{Dropout, DropoutConfig, Initializer, Linear, LinearConfig};
use burn::optim::module_optimizer::ModuleOptimizer;
use burn::optim::{AdamWConfig, GradientsParams};
use burn::tensor::{Device, Int, Tensor, TensorData};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::EpochRecord;
use super::backbone_pass::backbone_backward;
pub use super::backbone_pass::{BackbonePass, training_pass};
use super::checkpoint;
pub use super::checkpoint::{CheckpointError, Checkpoints};
use super::epochs::{Best, EarlyStopping, check_resumed_options, epoch_order};
use super::freeze::group_rates;
pub use super::freeze::{BnMode, set_trainable};
use super::plan::Plan;
pub use super::plan::{FinetuneOptions, Unfreeze};
use super::schedule::factor;
use crate::backbone::family::Start;
use crate::backbone::mbconv::fused::FusedNet;
use crate::backbone::resnet::fused::FusedResNet;
use crate::backbone::{Backbone, Network, SourceConfig};
use crate::data::augment::{augmented, image_rng};
use crate::data::{DecodeLimits, decode_rgb, load_images, to_batch};
use crate::head::Head;
use crate::metrics::argmax_rows;
use crate::rng::{RunRng, dropout, run_rng};

/// The backbone and the new top, trained together.
#[derive(Module, Debug)]
pub struct FinetuneModel {
    pub net: Network,
    pub dropout: Dropout,
    pub top: Linear,
}

impl FinetuneModel {
    /// Inference: class logits, no dropout (training applies it in [`train_step`]).
    pub fn forward(&self, x: Tensor<4>) -> Tensor<2> {
        self.top.forward(self.net.forward_features(x))
    }
}

/// Forward and backward of one batch (the backbone as `pass` says, see [`super::backbone_pass`];
/// dropout with masks from `rng`, the top and the loss on the whole batch). Returns the loss,
/// the logits and the gradients of every parameter that trains.
fn forward_backward(
    model: &FinetuneModel,
    loss_fn: &CrossEntropyLoss,
    (x, y): (Tensor<4>, Tensor<1, Int>),
    pass: BackbonePass,
    prefix: Option<&FrozenPrefix>,
    rng: &mut RunRng,
) -> (Tensor<1>, Tensor<2>, GradientsParams) {
    let (start, x) = match prefix {
        Some(prefix) => prefix.forward(x),
        None => (Start::Image, x),
    };
    let (loss, logits, mut grads) = backbone_backward(&model.net, start, x, pass, |features| {
        let logits = model
            .top
            .forward(dropout(features, model.dropout.prob, rng));
        (loss_fn.forward(logits.clone(), y), logits)
    });
    let grads = GradientsParams::from_module(&mut grads, model);
    (loss, logits, grads)
}

/// The frozen layers below the first trainable group of an MBConv network or a ResNet, run by
/// the fused CPU inference network: they take no gradient, so a training step only needs their
/// output, and the fused kernels give it several times faster than burn's generic ops (`graft
/// bench forward`). Built once per stage of gradual unfreezing, from the weights the stage
/// keeps fixed. (ConvNeXt and ViT run their frozen layers on burn, without autodiff tracking.)
pub struct FrozenPrefix {
    net: PrefixNet,
    blocks: usize,
}

/// The fused inference form a [`FrozenPrefix`] runs.
enum PrefixNet {
    MbConv(FusedNet),
    ResNet(FusedResNet),
}

impl FrozenPrefix {
    /// The prefix for a stage training `trainable`; `None` when the stem trains, on a GPU,
    /// with BatchNorm on batch statistics, or for ConvNeXt and ViT.
    pub fn for_stage(net: &Network, trainable: &[usize], bn_mode: BnMode) -> Option<Self> {
        if !crate::backend::fused_cpu() || bn_mode != BnMode::Frozen {
            return None;
        }
        let (net, blocks) = match net {
            Network::MbConv(net) => (
                PrefixNet::MbConv(FusedNet::new(&net.valid())),
                net.first_trainable_block(trainable)?,
            ),
            Network::ResNet(net) => (
                PrefixNet::ResNet(FusedResNet::new(&net.valid())),
                net.first_trainable_block(trainable)?,
            ),
            Network::ConvNeXt(_) | Network::Vit(_) => return None,
        };
        Some(Self { net, blocks })
    }

    /// The batch through the frozen layers: where the trainable part starts, and its input.
    pub fn forward(&self, x: Tensor<4>) -> (Start, Tensor<4>) {
        let maps = match &self.net {
            PrefixNet::MbConv(net) => net.forward_prefix(x, self.blocks),
            PrefixNet::ResNet(net) => net.forward_prefix(x, self.blocks),
        };
        (Start::Block(self.blocks), maps)
    }
}

/// One optimisation step: forward (from `prefix`'s output when given), loss, backward (the
/// backbone as `pass` says, see [`training_pass`]), then one AdamW update of the top (at
/// `lrs[groups]`) and of each trainable backbone group `g` (at `lrs[g]`, burn's per-group
/// rates, see [`group_rates`]). Frozen groups get no gradient and no update.
/// Dropout masks come from `rng`. Returns the model, the loss and the logits.
#[allow(clippy::too_many_arguments)]
pub fn train_step(
    model: FinetuneModel,
    optimizer: &mut ModuleOptimizer,
    loss_fn: &CrossEntropyLoss,
    x: Tensor<4>,
    y: Tensor<1, Int>,
    trainable: &[usize],
    lrs: &[f64],
    pass: BackbonePass,
    prefix: Option<&FrozenPrefix>,
    rng: &mut RunRng,
) -> (FinetuneModel, f64, Vec<f32>) {
    let (loss, logits, grads) = forward_backward(&model, loss_fn, (x, y), pass, prefix, rng);
    let loss_value = loss.into_scalar::<f32>() as f64;
    // cannot fail: every tensor graft makes is f32
    let logits: Vec<f32> = logits.into_data().try_into_vec().expect("logits are f32");
    let rates = group_rates(&model.net, trainable, lrs, lrs[lrs.len() - 1]);
    let model = optimizer.step(rates, model, grads);
    (model, loss_value, logits)
}

/// The model to fine-tune: `net` on `device` with a top that starts from `head`.
pub fn new_model(
    net: impl Into<Network>,
    head: &Head,
    dropout: f64,
    device: &Device,
) -> FinetuneModel {
    let dim = head.dim();
    FinetuneModel {
        net: net.into().for_training(device),
        dropout: DropoutConfig::new(dropout).init(),
        top: top_from_head(head, dim, device),
    }
}

/// A labelled image list.
#[derive(Debug, Clone, Default)]
pub struct Examples {
    pub paths: Vec<std::path::PathBuf>,
    pub labels: Vec<usize>,
}

/// Everything a run reports per epoch.
pub struct EpochReport<'a> {
    pub record: &'a EpochRecord,
    pub stage: usize,
    pub group_lrs: &'a [f64],
}

#[derive(Debug)]
pub struct FinetuneResult {
    pub net: Network,
    pub head: Head,
    pub history: Vec<EpochRecord>,
    /// Mean learning rate of each group (backbone groups, then the top) over each epoch.
    pub group_lrs: Vec<Vec<f64>>,
    pub best_epoch: usize,
    /// First epoch of each stage.
    pub stage_starts: Vec<usize>,
}

/// Decode and augment one batch of training images.
fn training_batch(
    examples: &Examples,
    indices: &[usize],
    config: &SourceConfig,
    options: &FinetuneOptions,
    epoch: usize,
    device: &Device,
) -> (Tensor<4>, Tensor<1, Int>) {
    let images: Vec<crate::data::Chw> = indices
        .par_iter()
        .map(|&i| {
            // The caller keeps only images that decoded during the head round.
            let rgb = decode_rgb(&examples.paths[i], DecodeLimits::default())
                .unwrap_or_else(|_| image::RgbImage::new(1, 1));
            augmented(
                &rgb,
                config,
                options.augment,
                &mut image_rng(options.seed, epoch, i),
            )
        })
        .collect();
    let refs: Vec<&crate::data::Chw> = images.iter().collect();
    let x = to_batch(&refs, config.resolution, device);
    let y: Vec<i64> = indices.iter().map(|&i| examples.labels[i] as i64).collect();
    let n = y.len();
    (x, Tensor::from_data(TensorData::new(y, [n]), device))
}

/// Mean cross-entropy and accuracy on `examples` with eval preprocessing.
fn validate(
    model: &FinetuneModel,
    examples: &Examples,
    config: &SourceConfig,
    batch: usize,
) -> (f64, f64) {
    if examples.paths.is_empty() {
        return (f64::NAN, f64::NAN);
    }
    let device = crate::backend::device();
    let classes = model.top.weight.dims()[1];
    // An MBConv backbone by the fused CPU kernels (BatchNorm on running statistics, as here).
    let fused = model
        .net
        .as_mbconv()
        .filter(|_| crate::backend::fused_cpu())
        .map(FusedNet::new);
    let (mut loss, mut correct) = (0.0f64, 0usize);
    for (chunk, labels) in examples
        .paths
        .chunks(batch)
        .zip(examples.labels.chunks(batch))
    {
        let decoded = load_images(chunk, config, DecodeLimits::default());
        let good: Vec<&crate::data::Chw> = decoded.iter().flatten().collect();
        let labels: Vec<usize> = decoded
            .iter()
            .zip(labels)
            .filter(|(d, _)| d.is_ok())
            .map(|(_, l)| *l)
            .collect();
        if good.is_empty() {
            continue;
        }
        let batch = to_batch(&good, config.resolution, &device);
        let logits = match &fused {
            Some(fused) => model.top.forward(fused.features(batch)),
            None => model.forward(batch),
        };
        let logits: Vec<f32> = logits
            .into_data()
            .try_into_vec()
            // cannot fail: every tensor graft makes is f32
            .expect("logits are f32");
        loss += super::cross_entropy(&logits, &labels, classes) * labels.len() as f64;
        correct += argmax_rows(&logits, classes)
            .iter()
            .zip(&labels)
            .filter(|(p, t)| p == t)
            .count();
    }
    let n = examples.paths.len() as f64;
    (loss / n, correct as f64 / n)
}

/// A dense top initialised from a trained linear [`Head`].
fn top_from_head(head: &Head, dim: usize, device: &Device) -> Linear {
    let Head::Linear { weight, bias } = head else {
        panic!("fine-tuning starts from a linear head")
    };
    let classes = bias.len();
    let mut top = LinearConfig::new(dim, classes)
        .with_initializer(Initializer::Zeros)
        .init(device);
    let mut w = vec![0.0f32; dim * classes];
    for c in 0..classes {
        for d in 0..dim {
            w[d * classes + c] = weight[c * dim + d];
        }
    }
    top.weight = Param::from_tensor(Tensor::from_data(
        TensorData::new(w, [dim, classes]),
        device,
    ));
    top.bias = Some(Param::from_tensor(Tensor::from_data(
        TensorData::new(bias.clone(), [classes]),
        device,
    )));
    top
}

/// Fine-tune `backbone` (loaded without folding) with a top that starts from `head`, stage by
/// stage as `plan` says (see [`Plan::new`]).
#[allow(clippy::too_many_arguments)]
pub fn finetune(
    backbone: Backbone,
    head: &Head,
    (train, val): (&Examples, &Examples),
    options: &FinetuneOptions,
    plan: &Plan,
    checkpoints: &Checkpoints,
    mut on_step: impl FnMut(usize, f64),
    mut on_epoch: impl FnMut(EpochReport<'_>),
) -> Result<FinetuneResult, CheckpointError> {
    let config = backbone.config.clone();
    let groups = config.layer_groups.len();
    let device = crate::backend::device().autodiff();
    let mut model = new_model(backbone.net, head, options.dropout, &device);
    let mut optimizer = AdamWConfig::new()
        .with_weight_decay(options.weight_decay as f32)
        .init();
    let loss_fn = CrossEntropyLossConfig::new()
        .with_smoothing((options.label_smoothing > 0.0).then_some(options.label_smoothing as f32))
        .init(&device);
    let steps_per_epoch = train.paths.len().div_ceil(options.batch_size.max(1));
    let mut history = Vec::new();
    let mut group_lrs = Vec::new();
    let mut stage_starts = Vec::new();
    let mut stopping = EarlyStopping::new(options.patience);
    let mut epoch = 0;
    let mut global_step = 0u64;
    // Resuming: weights, optimizer state and the history so far come from the last epoch that
    // finished; every random draw is keyed by (seed, epoch, step), so the rest replays exactly.
    let mut done = 0;
    if checkpoints.resume
        && let Some(saved) = load_checkpoint(checkpoints, options)?
    {
        done = saved.state.epochs_done;
        history = saved.state.history;
        group_lrs = saved.state.group_lrs;
        global_step = saved.state.global_step;
        model = model.load_record(saved.model);
        optimizer = optimizer.load_record(saved.optimizer);
        let best_model = new_model(
            model.net.clone().valid(),
            &Head::from_linear(&model.top),
            options.dropout,
            &crate::backend::device(),
        )
        .load_record(saved.best);
        stopping = EarlyStopping::resumed(
            options.patience,
            Best {
                loss: saved.state.best_loss,
                epoch: saved.state.best_epoch,
                model: best_model.valid(),
            },
        );
    }
    'stages: for (s, stage) in plan.stages.iter().enumerate() {
        let trainable = stage.trainable(&config.layer_groups);
        let peak = stage.peak_rates();
        model.net = set_trainable(model.net, &trainable, options.bn_mode);
        let prefix = FrozenPrefix::for_stage(&model.net, &trainable, options.bn_mode);
        let pass = training_pass(&model.net, options.bn_mode);
        stage_starts.push(epoch + 1);
        let total = stage.epochs * steps_per_epoch;
        let warmup = (steps_per_epoch / 4).max(1);
        let mut step = 0;
        for _ in 0..stage.epochs {
            epoch += 1;
            if epoch <= done {
                step += steps_per_epoch;
                continue;
            }
            if checkpoints.stop_after.is_some_and(|n| epoch > n) || stopping.stalled(epoch) {
                break 'stages;
            }
            let order = epoch_order(train.paths.len(), options.seed, epoch);
            let (mut loss_sum, mut correct) = (0.0f64, 0usize);
            let mut lrs = vec![0.0; groups + 1];
            let mut lr_sums = vec![0.0; groups + 1];
            let mut steps_in_epoch = 0usize;
            for batch in order.chunks(options.batch_size.max(1)) {
                // The plan's peak rates (0 for frozen groups, the top's last) times the schedule.
                let f = factor(options.schedule, step, total, warmup);
                for (lr, peak) in lrs.iter_mut().zip(&peak) {
                    *lr = peak * f;
                }
                lr_sums.iter_mut().zip(&lrs).for_each(|(s, lr)| *s += lr);
                steps_in_epoch += 1;
                let (x, y) = training_batch(train, batch, &config, options, epoch, &device);
                let (next, loss_value, logits) = train_step(
                    model,
                    &mut optimizer,
                    &loss_fn,
                    x,
                    y,
                    &trainable,
                    &lrs,
                    pass,
                    prefix.as_ref(),
                    // Dropout masks from the run's seed and the step, so a run (resumed or
                    // not) is reproducible whatever else runs in the process.
                    &mut run_rng(options.seed, global_step),
                );
                model = next;
                loss_sum += loss_value * batch.len() as f64;
                let classes = model.top.weight.dims()[1];
                correct += argmax_rows(&logits, classes)
                    .iter()
                    .zip(batch)
                    .filter(|(p, i)| **p == train.labels[**i])
                    .count();
                step += 1;
                global_step += 1;
                on_step(batch.len(), loss_value);
                CheckpointError::check_step(loss_value, epoch)?;
            }
            let eval = model.valid();
            let (val_loss, val_accuracy) = validate(&eval, val, &config, 32);
            let record = EpochRecord {
                epoch,
                train_loss: loss_sum / train.paths.len().max(1) as f64,
                train_accuracy: correct as f64 / train.paths.len().max(1) as f64,
                val_loss,
                val_accuracy,
                learning_rate: lrs[groups.saturating_sub(1)],
            };
            on_epoch(EpochReport {
                record: &record,
                stage: s + 1,
                group_lrs: &lrs,
            });
            history.push(record);
            group_lrs.push(
                lr_sums
                    .iter()
                    .map(|s| s / steps_in_epoch.max(1) as f64)
                    .collect(),
            );
            stopping.observe(epoch, val_loss, val.paths.is_empty(), || eval);
            if let Some(best) = stopping.best() {
                checkpoints.save(
                    epoch,
                    &[(MODULES[0], &model), (MODULES[1], &best.model)],
                    &optimizer,
                    &CheckpointState {
                        options: options.clone(),
                        epochs_done: epoch,
                        global_step,
                        best_epoch: best.epoch,
                        best_loss: best.loss,
                        history: history.clone(),
                        group_lrs: group_lrs.clone(),
                    },
                )?;
            }
        }
    }
    crate::backbone::fused::train::release_buffers();
    // A stage that an early stop skipped entirely never started.
    stage_starts.retain(|&start| start <= history.len());
    let (best_epoch, best_model) = stopping
        .into_best()
        .map_or_else(|| (0, model.valid()), |b| (b.epoch, b.model));
    Ok(FinetuneResult {
        head: Head::from_linear(&best_model.top),
        net: best_model.net,
        history,
        group_lrs,
        best_epoch,
        stage_starts,
    })
}

/// What a checkpoint holds besides tensors.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CheckpointState {
    /// Resuming with other options would not replay the same run.
    pub options: FinetuneOptions,
    pub epochs_done: usize,
    pub global_step: u64,
    pub best_epoch: usize,
    pub best_loss: f64,
    pub history: Vec<EpochRecord>,
    pub group_lrs: Vec<Vec<f64>>,
}

/// The module names of a fine-tuning checkpoint: the model being trained and the best so far.
const MODULES: [&str; 2] = ["model", "best"];

struct Saved {
    state: CheckpointState,
    model: burn::store::ModuleRecord,
    optimizer: burn::optim::OptimizerRecord,
    best: burn::store::ModuleRecord,
}

/// The last fine-tuning checkpoint, if there is one, checked against `options`.
fn load_checkpoint(
    checkpoints: &Checkpoints,
    options: &FinetuneOptions,
) -> Result<Option<Saved>, CheckpointError> {
    let Some(loaded) = checkpoints.load::<CheckpointState>(&MODULES)? else {
        return Ok(None);
    };
    check_resumed_options(&loaded.state.options, options, checkpoints, "fine-tuning")?;
    let [model, best]: [burn::store::ModuleRecord; 2] =
        loaded.modules.try_into().map_err(|_| {
            checkpoint::invalid(
                &checkpoints.dir.clone().unwrap_or_default(),
                "two module records expected",
            )
        })?;
    Ok(Some(Saved {
        state: loaded.state,
        model,
        optimizer: loaded.optimizer,
        best,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backbone::mbconv::MbNet;
    use crate::rng::random_tensor;
    use burn::tensor::Distribution;

    const GROUPS: usize = 9;

    /// A randomly initialised EfficientNet-Lite0 with a 3-class top, on the autodiff device.
    fn model(trainable: &[usize], bn_mode: BnMode) -> (FinetuneModel, Device) {
        // Built on the plain device, as `Backbone::load` does; `new_model` moves it.
        let device = crate::backend::device().autodiff();
        let info = crate::backbone::find("efficientnet-lite0").unwrap();
        let config = info.source_config(None);
        let net = MbNet::init(
            &info.mbconv().unwrap().0,
            config.padding,
            config.bn_eps,
            false,
            &mut run_rng(0, 0),
            &crate::backend::device(),
        );
        let head = Head::Linear {
            weight: vec![0.01; 3 * config.feature_dim],
            bias: vec![0.0; 3],
        };
        let mut model = new_model(net, &head, 0.0, &device);
        model.net = set_trainable(model.net, trainable, bn_mode);
        (model, device)
    }

    /// One training step as fine-tuning runs it with `bn_mode` (on the CPU with BatchNorm
    /// frozen: the fused op).
    fn step(
        model: FinetuneModel,
        device: &Device,
        (trainable, bn_mode): (&[usize], BnMode),
        lrs: &[f64],
    ) -> FinetuneModel {
        let mut rng = run_rng(0, 1);
        let x = random_tensor::<4>(
            [2, 3, 64, 64],
            Distribution::Normal(0.0, 1.0),
            &mut rng,
            device,
        );
        let y = Tensor::<1, Int>::from_data(TensorData::new(vec![0i64, 2], [2]), device);
        let loss_fn = CrossEntropyLossConfig::new().init(device);
        // A tiny epsilon makes AdamW's first step exactly +-lr for every weight with a gradient.
        let mut optimizer = AdamWConfig::new()
            .with_weight_decay(0.0)
            .with_epsilon(1e-20)
            .init();
        let pass = training_pass(&model.net, bn_mode);
        train_step(
            model,
            &mut optimizer,
            &loss_fn,
            x,
            y,
            trainable,
            lrs,
            pass,
            None,
            &mut rng,
        )
        .0
    }

    #[test]
    fn frozen_prefix_gives_the_same_loss_and_gradients() {
        // Stage 7 and the head train; the stem and stages 1-6 are the fused prefix.
        let trainable = [GROUPS - 2, GROUPS - 1];
        let (model, device) = model(&trainable, BnMode::Frozen);
        let prefix = FrozenPrefix::for_stage(&model.net, &trainable, BnMode::Frozen).unwrap();
        assert_eq!(prefix.blocks, mb(&model).stage_ends[5] + 1);
        let mut rng = run_rng(1, 0);
        let x = random_tensor::<4>(
            [4, 3, 64, 64],
            Distribution::Normal(0.0, 1.0),
            &mut rng,
            &device,
        );
        let y = Tensor::<1, Int>::from_data(TensorData::new(vec![0i64, 2, 1, 0], [4]), &device);
        let last = mb(&model).blocks.last().unwrap();
        let (_, grads_p) = assert_prefix_gives_burns_gradients(
            &model,
            &prefix,
            (x, y),
            &[
                (mb(&model).head.weight.id, "head conv"),
                (last.depthwise.weight.id, "stage 7 depthwise"),
            ],
        );
        // Frozen layers get no gradient either way.
        assert!(grads_p.get::<4>(mb(&model).stem.weight.id).is_none());
        // No prefix when the stem trains, or with BatchNorm on batch statistics.
        assert!(FrozenPrefix::for_stage(&model.net, &[0, 8], BnMode::Frozen).is_none());
        assert!(FrozenPrefix::for_stage(&model.net, &trainable, BnMode::Train).is_none());
    }

    /// `a` and `b` agree to 1e-3 of `a`'s largest value.
    fn close(a: Vec<f32>, b: Vec<f32>, what: &str) {
        assert_eq!(a.len(), b.len(), "{what}: lengths");
        let scale = a.iter().fold(1e-6f32, |m, v| m.max(v.abs()));
        let worst = a
            .iter()
            .zip(&b)
            .map(|(p, q)| (p - q).abs())
            .fold(0.0, f32::max);
        assert!(
            worst <= 1e-3 * scale,
            "{what}: differs by {worst} (scale {scale})"
        );
    }

    /// A step's loss and the gradients of the top and of the conv weights `params` agree
    /// (1e-3) between burn's autodiff of the whole network and the fine-tuning path on the CPU:
    /// `prefix`'s fused output, then the fused backward. Returns both gradients, in that order.
    fn assert_prefix_gives_burns_gradients(
        model: &FinetuneModel,
        prefix: &FrozenPrefix,
        (x, y): (Tensor<4>, Tensor<1, Int>),
        params: &[(burn::module::ParamId, &str)],
    ) -> (GradientsParams, GradientsParams) {
        assert_eq!(
            training_pass(&model.net, BnMode::Frozen),
            BackbonePass::Fused
        );
        let loss_fn = CrossEntropyLossConfig::new().init(&x.device());
        let run = |pass, prefix| {
            let batch = (x.clone(), y.clone());
            forward_backward(model, &loss_fn, batch, pass, prefix, &mut run_rng(2, 0))
        };
        let (loss, _, grads) = run(BackbonePass::Burn, None);
        let (loss_p, _, grads_p) = run(BackbonePass::Fused, Some(prefix));
        close(values(loss), values(loss_p), "loss");
        let id = model.top.weight.id;
        close(
            values(grads.get::<2>(id).unwrap()),
            values(grads_p.get::<2>(id).unwrap()),
            "top",
        );
        for &(id, what) in params {
            let (a, b) = (grads.get::<4>(id), grads_p.get::<4>(id));
            close(values(a.unwrap()), values(b.unwrap()), what);
        }
        (grads, grads_p)
    }

    #[test]
    fn resnet_frozen_prefix_gives_the_same_loss_and_gradients() {
        // layer3, layer4 and the top train; the stem, layer1 and layer2 are the fused prefix.
        let trainable = [3, 4];
        let (mut model, device) = family_model("resnet18", &trainable);
        let Network::ResNet(net) = &mut model.net else {
            unreachable!("resnet18 is a ResNet")
        };
        // Redraw draws BatchNorm's variances around 0: make them valid ones.
        for block in net.stages.iter_mut().flat_map(|s| s.blocks.iter_mut()) {
            for conv in [
                Some(&mut block.conv1),
                Some(&mut block.conv2),
                block.downsample.as_mut(),
            ]
            .into_iter()
            .flatten()
            {
                let var = (conv.bn.running_var.value().abs() + 0.5).detach();
                conv.bn.running_var = burn::module::RunningState::new(var);
            }
        }
        let var = (net.stem.bn.running_var.value().abs() + 0.5).detach();
        net.stem.bn.running_var = burn::module::RunningState::new(var);
        let prefix = FrozenPrefix::for_stage(&model.net, &trainable, BnMode::Frozen).unwrap();
        assert_eq!(prefix.blocks, 4, "layer1 and layer2 have two blocks each");
        let mut rng = run_rng(1, 0);
        let x = random_tensor::<4>(
            [3, 3, 64, 64],
            Distribution::Normal(0.0, 1.0),
            &mut rng,
            &device,
        );
        let y = Tensor::<1, Int>::from_data(TensorData::new(vec![0i64, 2, 1], [3]), &device);
        let Network::ResNet(net) = &model.net else {
            unreachable!("resnet18 is a ResNet")
        };
        let (grads, grads_p) = assert_prefix_gives_burns_gradients(
            &model,
            &prefix,
            (x, y),
            &[
                (
                    net.stages[2].blocks[0].conv1.conv.weight.id,
                    "layer3.0.conv1",
                ),
                (
                    net.stages[3].blocks[1].conv2.conv.weight.id,
                    "layer4.1.conv2",
                ),
            ],
        );
        let gamma = &net.stages[3].blocks[1].conv2.bn.gamma;
        close(
            values(grads.get::<1>(gamma.id).unwrap()),
            values(grads_p.get::<1>(gamma.id).unwrap()),
            "layer4.1.bn2 gamma",
        );
        // Frozen layers get no gradient either way.
        assert!(grads_p.get::<4>(net.stem.conv.weight.id).is_none());
        assert!(
            grads_p
                .get::<4>(net.stages[1].blocks[1].conv2.conv.weight.id)
                .is_none()
        );
        // No prefix when the stem trains.
        assert!(FrozenPrefix::for_stage(&model.net, &[0, 4], BnMode::Frozen).is_none());
    }

    fn mb(model: &FinetuneModel) -> &crate::backbone::mbconv::MbNet {
        model.net.as_mbconv().unwrap()
    }

    fn values<const D: usize>(t: Tensor<D>) -> Vec<f32> {
        t.into_data().try_into_vec().unwrap()
    }

    /// Mean size of the non-zero changes (weights without gradient do not move at all).
    fn mean_abs_change(a: &[f32], b: &[f32]) -> f64 {
        let moved: Vec<f64> = a
            .iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs() as f64)
            .filter(|d| *d > 0.0)
            .collect();
        moved.iter().sum::<f64>() / moved.len().max(1) as f64
    }

    #[test]
    fn frozen_batchnorm_keeps_running_statistics_and_trains_gamma() {
        let trainable = [GROUPS - 1];
        let (model, device) = model(&trainable, BnMode::Frozen);
        let bn = &mb(&model).head.bn;
        let (mean, var, gamma) = (
            values(bn.running_mean.value()),
            values(bn.running_var.value()),
            values(bn.gamma.val()),
        );
        let mut lrs = vec![0.0; GROUPS + 1];
        lrs[GROUPS - 1] = 1e-2;
        lrs[GROUPS] = 1e-2;
        let model = step(model, &device, (&trainable, BnMode::Frozen), &lrs);
        let bn = &mb(&model).head.bn;
        assert!(
            values(bn.running_mean.value_sync()) == mean,
            "running mean moved"
        );
        assert!(
            values(bn.running_var.value_sync()) == var,
            "running var moved"
        );
        assert!(values(bn.gamma.val()) != gamma, "gamma should train");
    }

    #[test]
    fn batchnorm_in_train_mode_updates_running_statistics() {
        let trainable = [GROUPS - 1];
        let (model, device) = model(&trainable, BnMode::Train);
        let mean = values(mb(&model).head.bn.running_mean.value());
        let mut lrs = vec![0.0; GROUPS + 1];
        lrs[GROUPS - 1] = 1e-2;
        let model = step(model, &device, (&trainable, BnMode::Train), &lrs);
        let after = values(mb(&model).head.bn.running_mean.value_sync());
        assert!(after != mean, "running mean did not move in train mode");
    }

    #[test]
    fn a_frozen_group_is_unchanged_and_a_trainable_one_moves() {
        let trainable = [GROUPS - 2, GROUPS - 1];
        let (model, device) = model(&trainable, BnMode::Frozen);
        let stem = values(mb(&model).stem.weight.val());
        let head = values(mb(&model).head.weight.val());
        let lrs = vec![1e-2; GROUPS + 1];
        let model = step(model, &device, (&trainable, BnMode::Frozen), &lrs);
        assert!(
            values(mb(&model).stem.weight.val()) == stem,
            "frozen stem changed"
        );
        assert!(
            values(mb(&model).head.weight.val()) != head,
            "trainable head conv did not"
        );
    }

    #[test]
    fn with_every_group_trainable_the_stem_moves_too() {
        let trainable: Vec<usize> = (0..GROUPS).collect();
        let (model, device) = model(&trainable, BnMode::Frozen);
        let stem = values(mb(&model).stem.weight.val());
        let depthwise = values(mb(&model).blocks[0].depthwise.weight.val());
        let model = step(
            model,
            &device,
            (&trainable, BnMode::Frozen),
            &[1e-2; GROUPS + 1],
        );
        assert!(
            values(mb(&model).stem.weight.val()) != stem,
            "stem did not train"
        );
        assert!(
            values(mb(&model).blocks[0].depthwise.weight.val()) != depthwise,
            "first depthwise conv did not train"
        );
    }

    /// Draws every float tensor anew (normal, std 0.1): the dense families' `init` leaves
    /// weights for a checkpoint to fill.
    struct Redraw(RunRng);

    impl burn::module::ModuleMapper for Redraw {
        fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
            let rng = &mut self.0;
            param.map(|t| {
                let shape: [usize; D] = t.dims();
                random_tensor::<D>(shape, Distribution::Normal(0.0, 0.1), rng, &t.device())
            })
        }
    }

    /// Registry entry `name` with random weights and a 3-class top, the groups in `trainable`
    /// training with BatchNorm frozen.
    fn family_model(name: &str, trainable: &[usize]) -> (FinetuneModel, Device) {
        let device = crate::backend::device().autodiff();
        let info = crate::backbone::find(name).unwrap();
        let net = Network::init(
            &info.arch,
            crate::backbone::PaddingMode::Symmetric,
            1e-5,
            false,
            &crate::backend::device(),
        )
        .map(&mut Redraw(run_rng(5, 0)));
        let head = Head::Linear {
            weight: vec![0.01; 3 * info.arch.feature_dim()],
            bias: vec![0.0; 3],
        };
        let mut model = new_model(net, &head, 0.0, &device);
        model.net = set_trainable(model.net, trainable, BnMode::Frozen);
        (model, device)
    }

    /// One step of the dense families' fine-tuning (burn's autodiff) with the two top-most
    /// groups training: those move, the stem does not, BatchNorm's statistics stay.
    #[test]
    fn dense_families_train_their_top_groups_and_nothing_below() {
        for name in ["resnet18", "convnext_tiny", "vit_small_patch16_224"] {
            let groups = crate::backbone::find(name)
                .unwrap()
                .arch
                .group_names()
                .len();
            let trainable = [groups - 2, groups - 1];
            let (model, device) = family_model(name, &trainable);
            // (tensor, whether it must move)
            let watched = |net: &Network| -> Vec<(Vec<f32>, bool)> {
                match net {
                    Network::ResNet(net) => vec![
                        (values(net.stem.conv.weight.val()), false),
                        (
                            values(net.stages[2].blocks[0].conv1.conv.weight.val()),
                            true,
                        ),
                        (values(net.stages[3].blocks[1].conv2.bn.gamma.val()), true),
                        (
                            values(net.stages[3].blocks[1].conv2.bn.running_mean.value()),
                            false,
                        ),
                    ],
                    Network::ConvNeXt(net) => vec![
                        (values(net.stem_conv.weight.val()), false),
                        (values(net.stages[1].blocks[0].fc1.weight.val()), false),
                        (values(net.stages[2].blocks[0].fc1.weight.val()), true),
                        (values(net.head_norm.gamma.val()), true),
                    ],
                    Network::Vit(net) => vec![
                        (values(net.patch_embed.weight.val()), false),
                        (values(net.pos_embed.val()), false),
                        (values(net.blocks[8].fc1.weight.val()), false),
                        (values(net.blocks[9].fc1.weight.val()), true),
                        (values(net.norm.gamma.val()), true),
                    ],
                    Network::MbConv(_) => unreachable!("dense families only"),
                }
            };
            let before = watched(&model.net);
            let lrs = vec![1e-2; groups + 1];
            let model = step(model, &device, (&trainable, BnMode::Frozen), &lrs);
            for (i, ((a, moves), (b, _))) in before.iter().zip(watched(&model.net)).enumerate() {
                assert_eq!(a != &b, *moves, "{name}: watched tensor {i}");
            }
        }
    }

    #[test]
    fn lr_decay_halves_the_step_of_each_group_below() {
        let options = FinetuneOptions {
            backbone_learning_rate: 1e-3,
            lr_decay: 0.5,
            ..FinetuneOptions::default()
        };
        // The formula: group k gets half of group k + 1.
        use crate::train::plan::group_learning_rate;
        for g in 0..GROUPS - 1 {
            let ratio = group_learning_rate(&options, g, GROUPS)
                / group_learning_rate(&options, g + 1, GROUPS);
            assert!((ratio - 0.5).abs() < 1e-12);
        }
        // On a real step: AdamW's first update moves each weight by about its learning rate,
        // so stage 7 (group 7) moves half as far as the head conv (group 8).
        let trainable = [GROUPS - 2, GROUPS - 1];
        let (model, device) = model(&trainable, BnMode::Frozen);
        let lrs: Vec<f64> = (0..GROUPS)
            .map(|g| group_learning_rate(&options, g, GROUPS))
            .chain([1e-3])
            .collect();
        let before_head = values(mb(&model).head.weight.val());
        let last = mb(&model).blocks.len() - 1;
        let before_stage7 = values(mb(&model).blocks[last].project.weight.val());
        let model = step(model, &device, (&trainable, BnMode::Frozen), &lrs);
        let moved_head = mean_abs_change(&before_head, &values(mb(&model).head.weight.val()));
        let moved_stage7 = mean_abs_change(
            &before_stage7,
            &values(mb(&model).blocks[last].project.weight.val()),
        );
        let ratio = moved_stage7 / moved_head;
        assert!(
            (ratio - 0.5).abs() < 0.05,
            "stage7 / head step ratio {ratio}"
        );
    }
}

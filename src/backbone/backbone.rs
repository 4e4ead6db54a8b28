//! A backbone ready to run: the network, the source config it needs, the id of its weights,
//! and the fused CPU form it runs on once prepared for inference.

use std::path::Path;
use std::sync::Arc;

use burn::tensor::{Device, Tensor};
use rayon::prelude::*;

use super::convnext::fused::FusedConvNeXt;
use super::fused::FusedForward;
use super::mbconv::MbNet;
use super::mbconv::fused::FusedNet;
use super::network::Network;
use super::registry::{BackboneInfo, Unsupported, find};
use super::resnet::fused::FusedResNet;
use super::source_config::{self, PaddingMode, Pooling, Precision, SourceConfig};
use super::vit::fused::FusedVit;
use crate::weights::{Checkpoint, WeightsError};

/// A backbone ready to run: network, source config, and the id of its weights.
#[derive(Debug)]
pub struct Backbone {
    pub config: SourceConfig,
    pub net: Network,
    /// First 16 hex digits of the checkpoint's sha256: names the weights in caches and runs.
    pub weights_id: String,
    /// The CPU inference form of `net`, made by [`Backbone::for_inference`].
    fused: Option<Arc<FusedNet>>,
    /// The same for the other families that have one (ResNet, ViT).
    fused_other: Option<Arc<dyn FusedForward>>,
}

/// Images per slice of an inference batch on the CPU (see `Backbone::sliced`).
const CPU_SLICE: usize = 4;

/// Options of [`Backbone::load`].
#[derive(Debug, Clone, Copy, Default)]
pub struct LoadOptions {
    /// Keep the ImageNet classifier (`false` = "include_top=False", pooled features only).
    pub include_top: bool,
    /// Override the padding convention of the weights' source.
    pub padding: Option<PaddingMode>,
    /// Input side in pixels instead of the source's (checked by
    /// [`BackboneInfo::check_resolution`]); a ViT's position embedding is resampled to it.
    pub resolution: Option<usize>,
    /// The pooled feature (checked by [`BackboneInfo::check_pooling`]).
    pub pool: Pooling,
}

impl Backbone {
    /// A backbone from a network built elsewhere (random initialisation, a training copy).
    pub fn new(config: SourceConfig, net: impl Into<Network>, weights_id: String) -> Self {
        Self {
            config,
            net: net.into(),
            weights_id,
            fused: None,
            fused_other: None,
        }
    }

    /// Build `info`'s network and fill it from the checkpoint at `path`.
    pub fn load(
        info: &BackboneInfo,
        path: &Path,
        options: LoadOptions,
        device: &Device,
    ) -> Result<Self, WeightsError> {
        let checkpoint = Checkpoint::open(path)?;
        let mut config = info.source_config(options.padding);
        if let Some(resolution) = options.resolution {
            config.resolution = resolution;
        }
        let arch = info.arch_pooled(options.pool);
        config.pool = options.pool;
        config.feature_dim = arch.feature_dim();
        let (net, report) = Network::load(
            &arch,
            &checkpoint,
            config.padding,
            config.bn_eps,
            options.include_top,
            device,
        );
        if !report.is_clean() {
            return Err(WeightsError::Mismatch {
                path: path.to_path_buf(),
                model: info.name.into(),
                report: Box::new(report),
            });
        }
        let weights_id = crate::util::file_sha256(path).map_err(|e| WeightsError::io(path, e))?
            [..16]
            .to_string();
        Ok(Self::new(config, net, weights_id))
    }

    /// The same backbone prepared for inference only: BatchNorm folded into the convs and, on
    /// the CPU, `features` / `logits` run by each family's fused form (`mbconv::fused`,
    /// `resnet::fused`, `convnext::fused`, `vit::fused`). Outputs are
    /// unchanged up to float rounding; it can no longer be fine-tuned.
    ///
    /// [`Precision::Bf16`], asked for by the run being loaded or by
    /// [`source_config::set_precision`], is granted to a ViT on a CPU with AMX; otherwise the
    /// backbone runs (and its config records) float32, with a note on stderr.
    pub fn for_inference(mut self) -> Self {
        let asked = if source_config::requested_precision() == Precision::Bf16 {
            Precision::Bf16
        } else {
            self.config.precision
        };
        self.config.precision = Precision::F32;
        if asked == Precision::Bf16 {
            match self.bf16_refusal() {
                None => self.config.precision = Precision::Bf16,
                Some(why) => note_once(&format!(
                    "note: {} runs in float32 instead of bfloat16: {why}",
                    self.config.name
                )),
            }
        }
        match &mut self.net {
            Network::MbConv(net) => {
                net.fold_batch_norm();
                if crate::backend::fused_cpu() {
                    self.fused = Some(Arc::new(FusedNet::new(net)));
                }
            }
            Network::ResNet(net) => {
                net.fold_batch_norm();
                if crate::backend::fused_cpu() {
                    self.fused_other = Some(Arc::new(FusedResNet::new(net)));
                }
            }
            Network::Vit(net) => {
                if crate::backend::fused_cpu() {
                    let precision = self.config.precision;
                    self.fused_other = Some(Arc::new(FusedVit::new(net, precision)));
                }
            }
            Network::ConvNeXt(net) => {
                if crate::backend::fused_cpu() {
                    self.fused_other = Some(Arc::new(FusedConvNeXt::new(net)));
                }
            }
        }
        self
    }

    /// Why this backbone cannot run its inference in bfloat16 here, if it cannot.
    fn bf16_refusal(&self) -> Option<&'static str> {
        if !matches!(self.net, Network::Vit(_)) {
            Some("bfloat16 inference is implemented for ViT and DINOv2 only")
        } else if !crate::backend::fused_cpu() {
            Some("bfloat16 inference runs on the CPU's AMX tiles only")
        } else if !crate::kernels::amx::available() {
            Some("this CPU has no AMX bfloat16 unit (Intel Xeon Sapphire Rapids or later)")
        } else {
            None
        }
    }

    /// The MBConv network, for the code that runs that family only; `what` names that code in
    /// the error.
    pub fn mbconv(&self, what: &str) -> Result<&MbNet, Unsupported> {
        self.net.as_mbconv().ok_or_else(|| self.unsupported(what))
    }

    /// [`Backbone::mbconv`], by value.
    pub fn into_mbconv(self, what: &str) -> Result<MbNet, Unsupported> {
        let error = self.unsupported(what);
        self.net.into_mbconv().ok_or(error)
    }

    fn unsupported(&self, what: &str) -> Unsupported {
        match find(&self.config.name) {
            Some(info) => info.unsupported(what),
            None => Unsupported {
                backbone: "this backbone",
                family: "non-MBConv",
                what: what.to_string(),
            },
        }
    }

    /// The fused CPU form, when prepared by [`Backbone::for_inference`].
    pub fn fused(&self) -> Option<&FusedNet> {
        self.fused.as_deref()
    }

    /// Whether `features` / `logits` run a fused CPU form (see [`Backbone::for_inference`]).
    pub fn runs_fused(&self) -> bool {
        self.fused.is_some() || self.fused_other.is_some()
    }

    /// The device the weights live on; inputs must be created there.
    pub fn device(&self) -> Device {
        self.net.device()
    }

    /// Pooled features `[N, feature_dim]` of a preprocessed batch `[N, 3, H, W]`.
    pub fn features(&self, batch: Tensor<4>) -> Tensor<2> {
        if let Some(fused) = &self.fused {
            return fused.features(batch);
        }
        if let Some(fused) = &self.fused_other {
            return fused.features(batch);
        }
        self.sliced(batch, |net, slice| net.forward_features(slice))
    }

    /// ImageNet logits, or `None` when loaded without the top.
    pub fn logits(&self, batch: Tensor<4>) -> Option<Tensor<2>> {
        if !self.net.has_classifier() {
            return None;
        }
        if let Some(fused) = &self.fused {
            return fused.logits(batch);
        }
        if let Some(fused) = &self.fused_other {
            return fused.logits(batch);
        }
        Some(self.sliced(batch, |net, slice| {
            // cannot fail: the classifier's presence was checked above
            net.forward_logits(slice).expect("a classifier")
        }))
    }

    /// A CNN's last-stage maps `[N, C, h, w]` of a preprocessed batch, the ones pooled into
    /// [`Backbone::features`] (for class activation maps, `crate::explain`): by the fused form
    /// when prepared, else by burn. `None` for a ViT.
    pub fn last_maps(&self, batch: Tensor<4>) -> Option<Tensor<4>> {
        if matches!(self.net, Network::Vit(_)) {
            return None;
        }
        if let Some(fused) = &self.fused {
            return Some(fused.last_maps(batch));
        }
        if let Some(fused) = &self.fused_other {
            return fused.last_maps(batch);
        }
        self.net.forward_last_maps(batch)
    }

    /// A ViT's tokens `[N, L, dim]` entering its last block, of a preprocessed batch (for
    /// Grad-CAM): by the fused form when prepared, else by burn. `None` for a CNN.
    pub fn last_block_input(&self, batch: Tensor<4>) -> Option<Tensor<3>> {
        let Network::Vit(net) = &self.net else {
            return None;
        };
        if let Some(fused) = &self.fused_other {
            return fused.last_block_input(batch);
        }
        Some(net.last_block_input(batch))
    }

    /// `forward` over slices of `CPU_SLICE` images of the batch in parallel, one per worker
    /// thread at a time, concatenated in order. On the CPU, burn-flex keeps only about 1.5 of
    /// 2 cores busy inside one forward pass; independent slices keep them all busy and stay in
    /// cache (`graft --threads 2 bench -b efficientnet-lite0`: 20.6 img/s as one batch of 32,
    /// 45.3 img/s as 8 slices of 4, peak RSS 442 -> 173 MB). A GPU gets the whole batch.
    fn sliced(
        &self,
        batch: Tensor<4>,
        forward: impl Fn(&Network, Tensor<4>) -> Tensor<2> + Sync,
    ) -> Tensor<2> {
        let n = batch.dims()[0];
        if !crate::backend::fused_cpu() || n <= CPU_SLICE {
            return forward(&self.net, batch);
        }
        let device = batch.device();
        let outputs: Vec<Tensor<2>> = batch
            .chunk(n.div_ceil(CPU_SLICE), 0)
            .into_par_iter()
            .map(|slice| {
                // Reading the result here makes the slice's work happen on this thread even on a
                // lazy backend; the copy is a few kilobytes.
                Tensor::from_data(forward(&self.net, slice).into_data(), &device)
            })
            .collect();
        Tensor::cat(outputs, 0)
    }
}

/// Prints `message` on stderr the first time it is given in this process (a backbone is
/// prepared once per worker in some commands).
fn note_once(message: &str) {
    static SEEN: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());
    let mut seen = SEEN.lock().unwrap_or_else(|e| e.into_inner());
    if !seen.iter().any(|m| m == message) {
        eprintln!("{message}");
        seen.push(message.to_string());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::{random_tensor, run_rng};
    use burn::tensor::Distribution;

    #[test]
    fn sliced_inference_equals_one_batch_in_order() {
        let device = crate::backend::device();
        let info = find("efficientnet-lite0").unwrap();
        let config = info.source_config(None);
        let mut rng = run_rng(3, 0);
        let net = MbNet::init(
            &info.mbconv().unwrap().0,
            config.padding,
            config.bn_eps,
            true,
            &mut rng,
            &device,
        );
        let backbone = Backbone::new(config, net, "random".into());
        // 10 images: slices of 4, 4 and 2.
        let x = random_tensor::<4>(
            [10, 3, 64, 64],
            Distribution::Normal(0.0, 1.0),
            &mut rng,
            &device,
        );
        let whole: Vec<f32> = backbone
            .net
            .forward_logits(x.clone())
            .unwrap()
            .into_data()
            .try_into_vec()
            .unwrap();
        let sliced: Vec<f32> = backbone
            .logits(x)
            .unwrap()
            .into_data()
            .try_into_vec()
            .unwrap();
        assert_eq!(whole.len(), sliced.len());
        let worst = whole
            .iter()
            .zip(&sliced)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        assert!(worst < 1e-5, "sliced logits differ by {worst}");
    }

    #[test]
    fn fused_inference_equals_the_burn_network_on_odd_sizes() {
        let device = crate::backend::device();
        let info = find("efficientnet-lite0").unwrap();
        for padding in [PaddingMode::TfSame, PaddingMode::Symmetric] {
            let config = info.source_config(Some(padding));
            let mut rng = run_rng(5, 0);
            let mut net = MbNet::init(
                &info.mbconv().unwrap().0,
                config.padding,
                config.bn_eps,
                true,
                &mut rng,
                &device,
            );
            // Non-trivial BatchNorm statistics, so that folding matters.
            net.stem.bn.running_mean = burn::module::RunningState::new(random_tensor(
                [32],
                Distribution::Normal(0.0, 0.5),
                &mut rng,
                &device,
            ));
            net.stem.bn.running_var = burn::module::RunningState::new(random_tensor(
                [32],
                Distribution::Uniform(0.5, 2.0),
                &mut rng,
                &device,
            ));
            let x = random_tensor::<4>(
                [3, 3, 57, 70],
                Distribution::Normal(0.0, 1.0),
                &mut rng,
                &device,
            );
            let expected = net.forward_logits(x.clone()).unwrap();
            let backbone = Backbone::new(config, net, "random".into()).for_inference();
            assert_eq!(backbone.fused().is_some(), crate::backend::fused_cpu());
            let got = backbone.logits(x.clone()).unwrap();
            let diff: f32 = (got - expected).abs().max().into_scalar();
            assert!(diff < 1e-4, "{padding:?}: fused logits differ by {diff}");
            assert_eq!(backbone.features(x).dims(), [3, 1280]);
        }
    }
}

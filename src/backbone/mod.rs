//! Pretrained backbones, found by name. A backbone is architecture + weights + the source
//! config (preprocessing, padding, labels) the weights were trained with.
//!
//! One folder per family: [`mbconv`] (MobileNetV2, EfficientNet-Lite), [`resnet`],
//! [`convnext`] and [`vit`] (ViT, DINOv2). Each holds its reference burn model, its checkpoint
//! key names, its fused CPU inference form (`fused.rs`) and its fused training op
//! (`fused_grad.rs`). [`fused`] is the machinery those fused forms share; it knows no family.
//! Above the families: [`registry`] (every weights tag), [`Arch`] (the closed set of
//! families), [`Network`] (any family's burn module) and [`Backbone`] (a network ready to run).
//! A family imports only [`fused`], [`family`], [`source_config`] and crate modules below
//! `backbone`, never another family or the modules above it.

mod arch;
#[allow(clippy::module_inception)]
mod backbone;
pub mod convnext;
pub mod export;
pub mod family;
pub mod fused;
pub mod groups;
pub mod mbconv;
mod network;
pub mod registry;
pub mod resnet;
pub mod source_config;
pub mod summary;
pub mod vit;

pub use arch::Arch;
pub use backbone::{Backbone, LoadOptions};
pub use fused::FusedForward;
/// The MBConv family's module under its earlier name.
pub use mbconv as mbnet;
pub use network::Network;
pub use registry::{BackboneInfo, REGISTRY, Unsupported, WeightsOrigin, find, known_names};
pub use source_config::{
    CropRule, DecodeMode, LabelSet, Normalization, PaddingMode, Pooling, Precision, ResizeFilter,
    SourceConfig,
};

//! The ConvNeXt family (Liu et al. 2022) in torchvision's and timm's layouts: 4x4 patch stem,
//! four stages of depthwise 7x7 + LayerNorm + MLP blocks with layer scale.
//!
//! - `model.rs`: the burn reference model and its key names;
//! - `fused.rs`: the fused CPU inference form;
//! - `fused_grad.rs`: the fused training op.

pub mod fused;
pub mod fused_grad;
mod model;

pub use model::*;

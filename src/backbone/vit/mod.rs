//! The Vision Transformer family (Dosovitskiy et al. 2021) in torchvision's and timm's layouts,
//! DINOv2 included (patch 14, layer scale, register tokens).
//!
//! - `model.rs`: the burn reference model and its key names;
//! - `fused.rs`: the fused CPU inference form (float32, or bfloat16 on AMX);
//! - `fused_grad.rs`: the fused training op.

pub mod fused;
pub mod fused_grad;
mod model;

pub use model::*;

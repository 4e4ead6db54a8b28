//! The ResNet family (He et al. 2016) in torchvision's layout, which timm's `resnet*` share:
//! 7x7 stem + max-pool, four stages of BasicBlock or Bottleneck, BatchNorm, global average pool.
//!
//! - `model.rs`: the burn reference model and its key names;
//! - `fused.rs`: the fused CPU inference form (BatchNorm folded, Winograd 3x3);
//! - `fused_grad.rs`: the fused training op.

pub mod fused;
pub mod fused_grad;
mod model;

pub use model::*;

//! The MBConv family: MobileNetV2 and EfficientNet-Lite, stages of inverted residual blocks
//! (1x1 expand, depthwise, 1x1 project; ReLU6) between a stem conv and a 1x1 head conv. The two
//! differ only in their stage tables ([`efficientnet_lite`], [`mobilenet_v2`]) and in the names
//! their checkpoints give the tensors ([`keys`]).
//!
//! - `model.rs`, `blocks.rs`: the burn reference model;
//! - `groups.rs`: its layer groups (stem, stages, head);
//! - `fused.rs`: the fused CPU inference form; `fused_grad.rs`: the fused training op.

pub mod blocks;
pub mod efficientnet_lite;
pub mod fused;
pub mod fused_grad;
pub mod groups;
pub mod keys;
pub mod mobilenet_v2;
mod model;

pub use keys::{BlockPart, KeyLayout};
pub use model::*;

//! graft: transfer learning for image classification on pretrained CNN backbones.
//!
//! The data flows one way: files -> [`data`] (decode, preprocess, batch) -> [`backbone`]
//! (pretrained network, its source config) -> predictions or features. Weights are read by
//! [`weights`], which also keeps the local model store.

pub mod backbone;
pub mod backend;
pub mod data;
pub mod features;
pub mod infer;
pub mod labels;
pub mod util;
pub mod weights;

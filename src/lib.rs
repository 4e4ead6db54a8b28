//! graft: transfer learning for image classification on pretrained CNN backbones.
//!
//! The data flows one way: files -> [`data`] (decode, preprocess, batch) -> [`backbone`]
//! (pretrained network, its source config) -> predictions or [`features`] (the bottleneck
//! cache) -> [`train`] (a new [`head`] on the features) -> a [`run`] directory with [`metrics`].
//! Weights are read by [`weights`], which also keeps the local model store.

pub mod adapted;
pub mod backbone;
pub mod backend;
pub mod data;
pub mod doctor;
pub mod features;
pub mod head;
pub mod infer;
pub mod interrupt;
pub mod kernels;
pub mod labels;
pub mod metrics;
pub mod report;
pub mod rng;
pub mod run;
pub mod train;
pub mod util;
pub mod weights;

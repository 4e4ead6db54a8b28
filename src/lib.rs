//! graft: transfer learning for image classification on pretrained CNN backbones.
//!
//! Every pretrained backbone carries the preprocessing its weights were trained with; graft
//! applies it. The three recipes, from Rust (the weights come from the store:
//! `graft weights fetch efficientnet-lite0`):
//!
//! **1. Off-the-shelf inference**: an ImageNet classifier's top-k.
//!
//! ```no_run
//! use graft::infer::{Top, classify};
//! use graft::recipe::BackboneChoice;
//!
//! let backbone = BackboneChoice::new("efficientnet-lite0").load(true)?;
//! let photos = ["bird.jpg".into()];
//! for photo in classify(&backbone, Top::ImageNet, &photos, 5, 32, Default::default(), |_| {}) {
//!     println!("{}: {:?}", photo.path.display(), photo.result);
//! }
//! # Ok::<(), graft::recipe::RecipeError>(())
//! ```
//!
//! **2. Bottlenecks**: the frozen backbone's features, cached, and a new top on them (a dense
//! head by default; logistic regression, linear SVM or kNN with `recipe`).
//!
//! ```no_run
//! use graft::progress::Silent;
//! use graft::recipe::bottleneck::{self, BottleneckOptions};
//! use graft::run::TrainedModel;
//!
//! let options = BottleneckOptions::default();
//! let run = bottleneck::train("flowers".as_ref(), "runs/flowers".as_ref(), &options, &mut Silent)?;
//! println!("validation accuracy {:.4}", run.metrics.val.accuracy);
//! let model = TrainedModel::open("runs/flowers".as_ref(), None)?;
//! let verdicts = model.predict(&["rose.jpg".into()], 3);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! **3. Fine-tuning**: [`train::finetune::finetune`] unfreezes the backbone group by group
//! from the top, with discriminative learning rates and BatchNorm frozen, starting from a head
//! fitted by [`recipe::bottleneck::fit_top`]; `examples/finetune.rs` shows the calls.
//!
//! Long calls report to a [`progress::Progress`] (or [`progress::Silent`]); errors name the
//! file or value at fault.
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
pub mod progress;
pub mod recipe;
pub mod report;
pub mod rng;
pub mod run;
pub mod train;
pub mod util;
pub mod weights;

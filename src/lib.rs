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
//! **3. Fine-tuning**: a head round on the cached features, then the backbone unfrozen layer
//! group by layer group from the top, with discriminative learning rates and BatchNorm frozen;
//! the plan ([`train::plan::Plan`]) is printed, saved and followed.
//!
//! ```no_run
//! use graft::progress::Silent;
//! use graft::recipe::finetune::{self, FinetuneRecipe};
//!
//! let tuned = finetune::train("flowers".as_ref(), "runs/tuned".as_ref(), &FinetuneRecipe::default(), &mut Silent)?;
//! for line in tuned.plan.lines() {
//!     println!("{line}");
//! }
//! println!("{:.4} -> {:.4}", tuned.head_round_accuracy, tuned.run.metrics.val.accuracy);
//! # Ok::<(), graft::recipe::RecipeError>(())
//! ```
//!
//! Self-supervised adaptation to unlabelled images is [`recipe::simclr::pretrain`]. Long calls
//! report to a [`progress::Progress`] (or [`progress::Silent`]); errors name the file or value
//! at fault. A run directory is a set of typed records with a schema version ([`run`]):
//! what a recipe writes, [`run::TrainedModel::open`], the report and `doctor` read through the
//! same types.
//!
//! The data flows one way: files -> [`data`] (decode, preprocess, batch) -> [`backbone`]
//! (pretrained network, its source config and layer groups) -> predictions or [`features`]
//! (the bottleneck cache) -> [`train`] (a new [`head`] on the features, or the backbone
//! itself) -> a [`run`] directory with [`metrics`], orchestrated by [`recipe`]. Weights are
//! read by [`weights`], which also keeps the local model store.

pub mod adapted;
pub mod backbone;
pub mod backend;
pub mod calibration;
pub mod clip;
pub mod data;
pub mod doctor;
pub mod explain;
pub mod export;
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
pub mod serve;
pub mod train;
pub mod util;
pub mod weights;

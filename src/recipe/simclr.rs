//! Self-supervised adaptation (SimCLR) from a folder of unlabelled images to a run directory
//! holding the adapted backbone, with an optional linear probe on labelled data before and
//! after. `--weights RUN_DIR` (or [`BackboneChoice::weights`]) then uses the adapted backbone
//! wherever a backbone is used.
//!
//! ```no_run
//! use graft::progress::Silent;
//! use graft::recipe::simclr::{self, SimclrRecipe};
//!
//! let options = SimclrRecipe {
//!     probe: Some("../shared/data/flowers".into()),
//!     ..SimclrRecipe::default()
//! };
//! let run = simclr::pretrain(
//!     "../shared/data/flowers".as_ref(),
//!     "runs/flowers-simclr".as_ref(),
//!     &options,
//!     &mut Silent,
//! )?;
//! if let Some(probe) = &run.metrics.probe {
//!     println!("logistic regression {:.4} -> {:.4}", probe.before.logreg_accuracy, probe.after.logreg_accuracy);
//! }
//! # Ok::<(), graft::recipe::RecipeError>(())
//! ```

use std::cell::RefCell;
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::adapted::{
    self, BACKBONE_FILE, CHECKPOINT_DIR, PretrainCard, PretrainMetrics, Probe, ProbeScores,
};
use crate::backbone::export::save_safetensors;
use crate::backbone::mbconv::MbNet;
use crate::backbone::{Backbone, LoadOptions};
use crate::data::dataset::{self, Dataset, SplitOptions};
use crate::progress::Progress;
use crate::run;
use crate::train::checkpoint::Checkpoints;
use crate::train::classical::{self, ClassicalOptions};
use crate::train::simclr::{SimclrOptions, pretrain as simclr_pretrain};

use super::bottleneck::{score, train_val_features};
use super::{BackboneChoice, RecipeError, checkpointed};
use crate::features::rows::RowSource;

/// Everything SimCLR pretraining needs besides the data. The defaults are those of
/// `graft pretrain` from ImageNet weights.
#[derive(Debug, Clone, PartialEq)]
pub struct SimclrRecipe {
    pub backbone: BackboneChoice,
    /// Start from random weights (seeded by `simclr.seed`) instead of the backbone's.
    pub from_scratch: bool,
    /// The method's options; `resolution` 0 means the backbone's own.
    pub simclr: SimclrOptions,
    /// A labelled folder: logistic regression and kNN on its features before and after. Its
    /// validation images are left out of pretraining when the data holds them.
    pub probe: Option<PathBuf>,
    /// The probe's split, when it has no `train/` and `val/` of its own.
    pub probe_split: SplitOptions,
    /// Pretrain on at most this many images (the first after a shuffle seeded by `simclr.seed`).
    pub max_images: Option<usize>,
    /// Feature cache root for the probe (default `$GRAFT_HOME/features`).
    pub cache_dir: Option<PathBuf>,
    pub extract_batch_size: usize,
    /// Continue from the run directory's checkpoint (same options).
    pub resume: bool,
    /// Stop after this many epochs in all (a planned interruption, for tests).
    pub stop_after_epochs: Option<usize>,
}

impl Default for SimclrRecipe {
    fn default() -> Self {
        Self {
            backbone: BackboneChoice::default(),
            from_scratch: false,
            simclr: SimclrOptions {
                resolution: 0,
                ..SimclrOptions::default()
            },
            probe: None,
            probe_split: SplitOptions::default(),
            max_images: None,
            cache_dir: None,
            extract_batch_size: 32,
            resume: false,
            stop_after_epochs: None,
        }
    }
}

/// A pretraining, as saved in its run directory.
#[derive(Debug, Clone)]
pub struct PretrainedRun {
    pub dir: PathBuf,
    /// `None` when the run stopped before its last epoch (`stop_after_epochs`): the
    /// checkpoint holds it, nothing else is saved yet.
    pub card: Option<PretrainCard>,
    pub metrics: PretrainMetrics,
}

impl PretrainedRun {
    /// Whether every epoch ran and the adapted backbone is saved.
    pub fn is_complete(&self) -> bool {
        self.card.is_some()
    }
}

/// Pretrain on the images under `data` (any layout, searched recursively), saved in `out`.
/// Ctrl-C stops after the step in flight with [`RecipeError::Interrupted`]; the last finished
/// epoch is checkpointed in `out` and `resume` continues from it.
/// Names the recipe in [`crate::backbone::Unsupported`] errors.
const PRETRAIN_FROM_SCRATCH: &str =
    "SimCLR pretraining from random weights (graft pretrain --from-scratch)";

pub fn pretrain(
    data: &Path,
    out: &Path,
    options: &SimclrRecipe,
    progress: &mut dyn Progress,
) -> Result<PretrainedRun, RecipeError> {
    let started = Instant::now();
    if options.simclr.batch_size < 2 {
        return Err(RecipeError::Invalid(format!(
            "batch size {}: NT-Xent needs at least 2 images per step (the others are the negatives)",
            options.simclr.batch_size
        )));
    }
    let probe_data = match &options.probe {
        Some(dir) => Some(dataset::open(dir, options.probe_split)?),
        None => None,
    };
    let (paths, excluded) = pretraining_images(data, options, probe_data.as_ref(), progress)?;
    let info = options.backbone.info()?;
    let device = crate::backend::device();
    let seed = options.simclr.seed;
    let parent = if options.from_scratch {
        // Random initialisation is written for the MBConv family only.
        let (spec, _) = info.require_mbconv(PRETRAIN_FROM_SCRATCH)?;
        let config = info.source_config(options.backbone.padding);
        let net = MbNet::init(
            &spec,
            config.padding,
            config.bn_eps,
            false,
            &mut crate::rng::run_rng(seed, 0),
            &device,
        );
        Backbone::new(config, net, format!("random-init-seed-{seed}"))
    } else {
        options.backbone.load_trainable()?
    };
    let mut simclr = options.simclr.clone();
    if simclr.resolution == 0 {
        simclr.resolution = parent.config.resolution;
    }
    progress.note(&format!(
        "pretrain {} ({}) on {} images{}: {} epochs of {} steps, {} px views, batch {} (2x{} views), \
         temperature {}, backbone lr {:e}, head lr {:e}, BatchNorm {:?}",
        info.name,
        if options.from_scratch {
            "from scratch"
        } else {
            "from ImageNet weights"
        },
        paths.len(),
        if excluded > 0 {
            format!(" ({excluded} of the probe's validation images left out)")
        } else {
            String::new()
        },
        simclr.epochs,
        paths.len().div_ceil(simclr.batch_size),
        simclr.resolution,
        simclr.batch_size,
        simclr.batch_size,
        simclr.temperature,
        simclr.backbone_learning_rate,
        simclr.learning_rate,
        simclr.bn_mode
    ));

    // 1. The probe before: features of the parent backbone (from the cache when there).
    let before = match &probe_data {
        Some(labelled) => {
            let frozen = Backbone::new(
                parent.config.clone(),
                parent.net.clone(),
                parent.weights_id.clone(),
            )
            .for_inference();
            let (scores, train, val) = probe_scores(&frozen, labelled, options, progress)?;
            progress.note(&format!(
                "probe before: logistic regression {:.4}, kNN {:.4} ({train} train / {val} val images)",
                scores.logreg_accuracy, scores.knn_accuracy
            ));
            Some((scores, train, val))
        }
        None => None,
    };

    // 2. Pretraining, checkpointed every epoch.
    let checkpoints = Checkpoints {
        dir: Some(out.join(CHECKPOINT_DIR)),
        resume: options.resume,
        stop_after: options.stop_after_epochs,
    };
    if checkpoints.resume && !checkpoints.exists() {
        progress.note(&format!(
            "{}: no finished epoch to resume from; starting from the beginning",
            out.display()
        ));
    }
    std::fs::create_dir_all(out).map_err(run::io(out))?;
    let steps = simclr.epochs * paths.len().div_ceil(simclr.batch_size);
    progress.start("simclr", steps, "steps");
    let config = parent.config.clone();
    let shared = RefCell::new(&mut *progress);
    let result = simclr_pretrain(
        parent.net,
        &config,
        &paths,
        &simclr,
        &checkpoints,
        |_, loss| {
            let mut progress = shared.borrow_mut();
            progress.status(&format!("loss {loss:.4}"));
            progress.advance(1);
        },
        |r| {
            shared.borrow_mut().note(&format!(
                "epoch {}: NT-Xent loss {:.4}, positive pair found {:.3}, backbone lr {:.2e}{}",
                r.epoch,
                r.loss,
                r.positive_accuracy,
                r.learning_rate,
                if r.skipped > 0 {
                    format!(", {} images did not decode", r.skipped)
                } else {
                    String::new()
                }
            ));
        },
    );
    progress.finish();
    let result = checkpointed(result, out)?;
    if result.history.len() < simclr.epochs {
        return Ok(PretrainedRun {
            dir: out.to_path_buf(),
            card: None,
            metrics: PretrainMetrics {
                history: result.history,
                seconds: started.elapsed().as_secs_f64(),
                probe: None,
            },
        });
    }

    // 3. Save the adapted backbone, then load it back as every other command will.
    let file = out.join(BACKBONE_FILE);
    save_safetensors(&result.net, &info.arch, &file).map_err(run::io(&file))?;
    let load = LoadOptions {
        include_top: false,
        padding: Some(config.padding),
        resolution: Some(config.resolution),
        pool: config.pool,
    };
    let adapted = Backbone::load(info, &file, load, &device)
        .map_err(run::RunError::from)?
        .for_inference();

    // 4. The probe after.
    let probe = match (&probe_data, before, &options.probe) {
        (Some(labelled), Some((before, train_size, val_size)), Some(dir)) => {
            let (after, _, _) = probe_scores(&adapted, labelled, options, progress)?;
            Some(Probe {
                data: dir.clone(),
                train_size,
                val_size,
                before,
                after,
            })
        }
        _ => None,
    };
    let card = PretrainCard {
        schema_version: run::SCHEMA_VERSION,
        graft_version: env!("CARGO_PKG_VERSION").into(),
        method: "simclr".into(),
        backbone: info.name.into(),
        weights_id: adapted.weights_id.clone(),
        parent_weights_id: (!options.from_scratch).then(|| parent.weights_id.clone()),
        source: config,
        options: simclr,
        data: data.to_path_buf(),
        images: paths.len(),
        excluded_probe_val: excluded,
    };
    let metrics = PretrainMetrics {
        history: result.history,
        seconds: started.elapsed().as_secs_f64(),
        probe,
    };
    adapted::save(out, &card, &metrics)?;
    Ok(PretrainedRun {
        dir: out.to_path_buf(),
        card: Some(card),
        metrics,
    })
}

/// Logistic-regression and kNN accuracy on the probe's validation split, and the split's sizes.
fn probe_scores(
    backbone: &Backbone,
    labelled: &Dataset,
    options: &SimclrRecipe,
    progress: &mut dyn Progress,
) -> Result<(ProbeScores, usize, usize), RecipeError> {
    let (train, val) = train_val_features(
        backbone,
        labelled,
        (options.cache_dir.as_deref(), options.extract_batch_size),
        progress,
    )?;
    let classical_options = ClassicalOptions::default();
    let logreg = classical::fit_logreg(&train.to_matrix()?, &labelled.classes, &classical_options)?;
    let knn = classical::fit_knn(&train, &labelled.classes, &classical_options)?;
    Ok((
        ProbeScores {
            logreg_accuracy: score(&logreg, &val, &labelled.classes)?.accuracy,
            knn_accuracy: score(&knn, &val, &labelled.classes)?.accuracy,
        },
        train.len(),
        val.len(),
    ))
}

/// The images to pretrain on: everything under `data` except the probe's validation images
/// (compared by their real paths), and how many of those were left out.
fn pretraining_images(
    data: &Path,
    options: &SimclrRecipe,
    probe: Option<&Dataset>,
    progress: &mut dyn Progress,
) -> Result<(Vec<PathBuf>, usize), RecipeError> {
    let (mut paths, skipped) = dataset::list_images(data)?;
    if skipped.not_image > 0 {
        progress.note(&format!(
            "{}: {} files without an image extension ignored",
            data.display(),
            skipped.not_image
        ));
    }
    let before = paths.len();
    if let Some(probe) = probe {
        let real = |p: &PathBuf| p.canonicalize().unwrap_or_else(|_| p.clone());
        let held_out: HashSet<PathBuf> = probe.val.iter().map(|s| real(&s.path)).collect();
        paths.retain(|p| !held_out.contains(&real(p)));
    }
    let excluded = before - paths.len();
    if let Some(max) = options.max_images
        && paths.len() > max
    {
        use rand::SeedableRng;
        use rand::seq::SliceRandom;
        paths.shuffle(&mut rand_chacha::ChaCha8Rng::seed_from_u64(
            options.simclr.seed,
        ));
        paths.truncate(max);
        paths.sort();
    }
    if paths.len() < 2 {
        return Err(RecipeError::Invalid(format!(
            "{}: {} usable images; SimCLR needs at least 2",
            data.display(),
            paths.len()
        )));
    }
    Ok((paths, excluded))
}

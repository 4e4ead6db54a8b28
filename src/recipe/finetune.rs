//! Recipe 3 from a labelled folder to a run directory: a head round on the frozen backbone's
//! cached features, then the plan ([`Plan`]), then gradual unfreezing from the top with low,
//! discriminative learning rates and BatchNorm in inference mode; the fine-tuned backbone and
//! top are saved in the run directory and scored through it.
//!
//! ```no_run
//! use graft::progress::Silent;
//! use graft::recipe::finetune::{self, FinetuneRecipe};
//!
//! let run = finetune::train(
//!     "../shared/data/flowers".as_ref(),
//!     "runs/flowers-finetune".as_ref(),
//!     &FinetuneRecipe::default(),
//!     &mut Silent,
//! )?;
//! println!(
//!     "head round {:.4}, fine-tuned {:.4}",
//!     run.head_round_accuracy, run.run.metrics.val.accuracy
//! );
//! # Ok::<(), graft::recipe::RecipeError>(())
//! ```

use std::cell::RefCell;
use std::path::{Path, PathBuf};

use crate::adapted::{BACKBONE_FILE, CHECKPOINT_DIR};
use crate::backbone::export::save_safetensors;
use crate::data::dataset::SplitOptions;
use crate::features::rows::{LabelledRows, RowSource};
use crate::progress::Progress;
use crate::run::{
    self, DataRecord, FinetuneRecord, GroupRateHistory, Hyperparameters, ModelCard, PLAN_FILE,
    Plan, RunMetrics, TrainedModel,
};
use crate::train::Recipe;
use crate::train::dense::DenseOptions;
use crate::train::finetune::{Checkpoints, Examples, FinetuneOptions, finetune};

use super::bottleneck::{
    TrainedRun, calibrate, exclude_listed, features, open_cache, open_dataset, predictions, score,
    tempered, train_head, train_val_features,
};
use super::{BackboneChoice, RecipeError, checkpointed};

/// Everything recipe 3 needs besides the data. The defaults are the documented ones (those of
/// `graft train --recipe finetune`).
#[derive(Debug, Clone, PartialEq)]
pub struct FinetuneRecipe {
    pub backbone: BackboneChoice,
    /// The split used when the data has no `train/` and `val/` of its own.
    pub split: SplitOptions,
    /// Fine-tuning's options. The head round shares the top's rate (`head_learning_rate`),
    /// its epochs (`head_epochs`), dropout, weight decay, label smoothing, patience and seed.
    pub tuning: FinetuneOptions,
    /// Batch size of the head round on cached features.
    pub head_batch_size: usize,
    /// Weight each class by n / (classes * n_class) in the head round's loss.
    pub balanced_class_weights: bool,
    /// Feature cache root (default `$GRAFT_HOME/features`).
    pub cache_dir: Option<PathBuf>,
    /// Images per forward pass while extracting.
    pub extract_batch_size: usize,
    /// Continue from the run directory's checkpoint (the last finished epoch) instead of
    /// starting over; the options must be those of the interrupted run.
    pub resume: bool,
    /// Images to leave out of training (`graft train --exclude`).
    pub exclude: Vec<PathBuf>,
}

impl Default for FinetuneRecipe {
    fn default() -> Self {
        Self {
            backbone: BackboneChoice::default(),
            split: SplitOptions::default(),
            tuning: FinetuneOptions::default(),
            head_batch_size: DenseOptions::default().batch_size,
            balanced_class_weights: false,
            cache_dir: None,
            extract_batch_size: 32,
            resume: false,
            exclude: Vec::new(),
        }
    }
}

impl FinetuneRecipe {
    /// The head round's options: the top's side of [`FinetuneOptions`].
    pub fn head_round(&self) -> DenseOptions {
        let t = &self.tuning;
        DenseOptions {
            learning_rate: t.head_learning_rate,
            epochs: t.head_epochs,
            batch_size: self.head_batch_size,
            dropout: t.dropout,
            weight_decay: t.weight_decay,
            label_smoothing: t.label_smoothing,
            balanced_class_weights: self.balanced_class_weights,
            patience: t.patience,
            seed: t.seed,
        }
    }
}

/// A finished fine-tuning, as saved in its run directory.
#[derive(Debug, Clone)]
pub struct FinetunedRun {
    pub run: TrainedRun,
    pub plan: Plan,
    /// Validation accuracy of the head round alone (the frozen backbone), for comparison.
    pub head_round_accuracy: f64,
}

/// Recipe 3 on the labelled images under `data` (a folder of class folders, or a CSV of
/// `path,label`), saved in `out`. Ctrl-C stops after the step in flight with
/// [`RecipeError::Interrupted`]; the last finished epoch is checkpointed in `out`, and the same
/// call with `resume` continues from it.
pub fn train(
    data: &Path,
    out: &Path,
    options: &FinetuneRecipe,
    progress: &mut dyn Progress,
) -> Result<FinetunedRun, RecipeError> {
    let info = options.backbone.info()?;
    let tuning = &options.tuning;
    let mut dataset = open_dataset(data, options.split, progress)?;
    let excluded = exclude_listed(&mut dataset, &options.exclude, progress)?;
    let classes = &dataset.classes;

    // 1. The head round: recipe 2 on cached features (extracted once, reused).
    let frozen = options.backbone.load(false)?;
    let (train, val) = train_val_features(
        &frozen,
        &dataset,
        (options.cache_dir.as_deref(), options.extract_batch_size),
        progress,
    )?;
    let head_round = train_head(&train, &val, classes, &options.head_round(), progress)?;
    let head_epochs = head_round.history.len();
    let kept = head_round.best_epoch.unwrap_or(head_epochs);
    let head_round_accuracy = head_round.history[kept.saturating_sub(1)].val_accuracy;
    progress.note(&format!(
        "head round: {head_epochs} epochs, kept epoch {kept} (validation accuracy {head_round_accuracy:.4})"
    ));

    // 2. The plan, made once: printed, saved, and followed by the training loop.
    let backbone = options.backbone.load_trainable()?;
    let plan = Plan::new(
        &backbone.net,
        (&backbone.config.name, backbone.config.resolution),
        tuning,
        head_epochs,
        classes.len(),
    );
    for line in plan.lines() {
        progress.note(&line);
    }
    let checkpoints = Checkpoints {
        dir: Some(out.join(CHECKPOINT_DIR)),
        resume: options.resume,
        stop_after: None,
    };
    if checkpoints.resume && !checkpoints.exists() {
        // Killed before its first epoch ended: nothing to lose, start over.
        progress.note(&format!(
            "{}: no finished epoch to resume from; starting the fine-tuning from the beginning",
            out.display()
        ));
    }
    std::fs::create_dir_all(out).map_err(run::io(out))?;
    run::write_json(&out.join(PLAN_FILE), &plan)?;

    // 3. Fine-tuning.
    let examples = |rows: &LabelledRows| Examples {
        paths: rows.paths.clone(),
        labels: rows.labels(),
    };
    let steps = plan.stage_epochs() * train.len().div_ceil(tuning.batch_size.max(1));
    progress.start("finetune", steps, "steps");
    let shared = RefCell::new(&mut *progress);
    let result = finetune(
        backbone,
        &head_round.head,
        (&examples(&train), &examples(&val)),
        tuning,
        &plan,
        &checkpoints,
        |_, loss| {
            let mut progress = shared.borrow_mut();
            progress.status(&format!("loss {loss:.4}"));
            progress.advance(1);
        },
        |report| {
            let r = report.record;
            shared.borrow_mut().note(&format!(
                "epoch {} (stage {}): loss {:.4} acc {:.3} | val loss {:.4} acc {:.3}",
                r.epoch + head_epochs,
                report.stage,
                r.train_loss,
                r.train_accuracy,
                r.val_loss,
                r.val_accuracy
            ));
        },
    );
    progress.finish();
    let result = checkpointed(result, out)?;

    // 4. Save: backbone in checkpoint layout, top, card; then score through the saved model.
    let backbone_path = out.join(BACKBONE_FILE);
    save_safetensors(&result.net, &info.arch, &backbone_path).map_err(run::io(&backbone_path))?;
    let mut history = head_round.history.clone();
    history.extend(result.history.iter().cloned().map(|mut r| {
        r.epoch += head_epochs;
        r
    }));
    let record = FinetuneRecord {
        options: FinetuneOptions {
            head_epochs,
            ..tuning.clone()
        },
        parent_weights_id: frozen.weights_id.clone(),
        stage_starts: result
            .stage_starts
            .iter()
            .map(|e| e + head_epochs)
            .collect(),
        group_learning_rates: GroupRateHistory {
            groups: plan.stages[0]
                .learning_rates
                .iter()
                .map(|(g, _)| g.clone())
                .collect(),
            first_epoch: head_epochs + 1,
            per_epoch: result.group_lrs.clone(),
        },
    };
    let mut card = ModelCard::new(
        Recipe::Finetune,
        &frozen,
        classes,
        Hyperparameters::Finetune(Box::new(record)),
        DataRecord {
            excluded,
            ..DataRecord::new(
                data,
                &dataset.split,
                options.split.seed,
                train.len(),
                val.len(),
            )
        },
    );
    card.weights_id = crate::util::file_sha256(&backbone_path).map_err(run::io(&backbone_path))?
        [..16]
        .to_string();
    card.backbone_file = Some(BACKBONE_FILE.into());
    result
        .head
        .save(&out.join(run::HEAD_FILE))
        .map_err(run::RunError::from)?;
    run::write_json(&out.join(run::MODEL_FILE), &card)?;
    let model = TrainedModel::open(out, None)?;
    let mut tuned_cache = open_cache(&model.backbone, options.cache_dir.as_deref(), progress)?;
    let (mut tuned, _) = features(
        &model.backbone,
        &mut tuned_cache,
        &[&dataset.val],
        options.extract_batch_size,
        progress,
    )?;
    // cannot fail: one group in, one matrix out
    let tuned_val = tuned.pop().expect("one matrix");
    // The top is linear on the fine-tuned backbone's features: calibrated like recipe 2's.
    let calibration = calibrate(&model.head, &tuned_val, classes.len())?;
    progress.note(&calibration.summary());
    card.temperature = calibration.temperature;
    let best = &history[head_epochs + result.best_epoch - 1];
    let metrics = RunMetrics {
        train_size: train.len(),
        val_size: val.len(),
        best_epoch: Some(head_epochs + result.best_epoch),
        train_accuracy: best.train_accuracy,
        val: score(&model.head, &tuned_val, classes)?,
        calibration: Some(calibration),
    };
    let predictions = predictions(
        &tempered(&model.head, card.temperature),
        &tuned_val,
        &tuned_val.paths,
        classes,
    )?;
    run::save(out, &card, &model.head, &metrics, &history, &predictions)?;
    Ok(FinetunedRun {
        run: TrainedRun {
            dir: out.to_path_buf(),
            card,
            head: model.head,
            metrics,
            history,
            diverged_at: None,
        },
        plan,
        head_round_accuracy,
    })
}

//! `graft train --recipe finetune`: head round on cached features, then the plan, then
//! gradual unfreezing; the fine-tuned backbone and top are saved in the run directory.

use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;

use graft::adapted::{BACKBONE_FILE, CHECKPOINT_DIR};
use graft::backbone::Backbone;
use graft::backbone::export::save_safetensors;
use graft::backbone::summary::summarize;
use graft::data::dataset::Dataset;
use graft::run::{self, DataRecord, ModelCard, RunMetrics, TrainedModel};
use graft::train::Recipe;
use graft::train::dense::train_dense;
use graft::train::finetune::{
    Checkpoints, Examples, FinetuneOptions, finetune, group_learning_rate, plan_stages,
};

use super::features::{features_of, open_cache, train_val_features};
use super::train::TrainArgs;
use graft::recipe::bottleneck::{data_name, predictions, score};

pub const PLAN_FILE: &str = "plan.json";

/// One stage of the printed and saved plan.
#[derive(Debug, Serialize)]
pub struct PlannedStage {
    pub name: String,
    pub first_epoch: usize,
    pub epochs: usize,
    pub trainable_groups: Vec<String>,
    /// Peak learning rate of every group (0 = frozen), the new top last.
    pub learning_rates: Vec<(String, f64)>,
    pub trainable_params: usize,
    pub non_trainable_params: usize,
}

#[derive(Debug, Serialize)]
pub struct Plan {
    pub head_round_epochs: usize,
    pub stages: Vec<PlannedStage>,
    pub bn_mode: String,
    pub augment: String,
    pub schedule: String,
    pub batch_size: usize,
    pub total_params: usize,
}

fn options(args: &TrainArgs) -> FinetuneOptions {
    let f = &args.finetune;
    FinetuneOptions {
        head_learning_rate: args.lr,
        backbone_learning_rate: f.backbone_lr,
        lr_decay: f.lr_decay,
        unfreeze: f.unfreeze,
        stages: f.stages,
        epochs_per_stage: f.epochs_per_stage,
        schedule: f.schedule,
        batch_size: f.finetune_batch_size,
        bn_mode: f.bn_mode,
        augment: f.augment,
        dropout: args.dropout,
        weight_decay: args.weight_decay,
        label_smoothing: args.label_smoothing,
        seed: args.split.seed,
        head_epochs: args.epochs,
        patience: args.patience,
    }
}

fn make_plan(
    backbone: &Backbone,
    options: &FinetuneOptions,
    head_round: usize,
    classes: usize,
) -> Plan {
    let config = &backbone.config;
    let groups = &config.layer_groups;
    let summary = summarize(&config.name, &backbone.net, config.resolution);
    let top_params = config.feature_dim * classes + classes;
    let total = summary.total() + top_params;
    let mut first_epoch = head_round + 1;
    let stages = plan_stages(options, groups.len())
        .into_iter()
        .enumerate()
        .map(|(i, stage)| {
            let trainable: usize = stage
                .trainable
                .iter()
                .map(|&g| summary.rows[g].trainable)
                .sum::<usize>()
                + top_params;
            let mut learning_rates: Vec<(String, f64)> = groups
                .iter()
                .enumerate()
                .map(|(g, name)| {
                    let lr = if stage.trainable.contains(&g) {
                        group_learning_rate(options, g, groups.len())
                    } else {
                        0.0
                    };
                    (name.clone(), lr)
                })
                .collect();
            learning_rates.push(("top".into(), options.head_learning_rate));
            let planned = PlannedStage {
                name: format!("stage {}", i + 1),
                first_epoch,
                epochs: stage.epochs,
                trainable_groups: stage.trainable.iter().map(|&g| groups[g].clone()).collect(),
                learning_rates,
                trainable_params: trainable,
                non_trainable_params: total - trainable,
            };
            first_epoch += stage.epochs;
            planned
        })
        .collect();
    Plan {
        head_round_epochs: head_round,
        stages,
        bn_mode: format!("{:?}", options.bn_mode).to_lowercase(),
        augment: format!("{:?}", options.augment).to_lowercase(),
        schedule: format!("{:?}", options.schedule).to_lowercase(),
        batch_size: options.batch_size,
        total_params: total,
    }
}

fn print_plan(plan: &Plan) {
    eprintln!(
        "plan: head round ({} epochs on cached features, backbone frozen), then {} stages; \
         BatchNorm {}, augmentation {}, {} schedule per stage, batch {}",
        plan.head_round_epochs,
        plan.stages.len(),
        if plan.bn_mode == "frozen" {
            "frozen (inference mode: running statistics kept, gamma/beta train with their layer)"
        } else {
            "in training mode (batch statistics)"
        },
        plan.augment,
        plan.schedule,
        plan.batch_size
    );
    for stage in &plan.stages {
        let lrs: Vec<String> = stage
            .learning_rates
            .iter()
            .filter(|(_, lr)| *lr > 0.0)
            .map(|(g, lr)| format!("{g} {lr:.1e}"))
            .collect();
        eprintln!(
            "  {} (epochs {}-{}): trains {} + top; lr {}; params {} trainable / {} frozen",
            stage.name,
            stage.first_epoch,
            stage.first_epoch + stage.epochs - 1,
            stage.trainable_groups.join(", "),
            lrs.join(", "),
            stage.trainable_params,
            stage.non_trainable_params
        );
    }
}

pub fn run(args: &TrainArgs, data: &Dataset) -> Result<ExitCode> {
    let options = options(args);
    // 1. The head round: recipe 2 on cached features (extracted once, reused).
    let frozen = args.backbone.load(false)?;
    let (train, val, _) = train_val_features(&frozen, data, &args.cache)?;
    let classes = &data.classes;
    let head_round = train_dense(&train, &val, classes.len(), &args.dense_options(), |_| {});
    if head_round.history.is_empty() || head_round.best_epoch == 0 {
        anyhow::bail!("the head round's loss diverged in its first epoch: lower --lr");
    }
    let head_epochs = head_round.best_epoch;
    eprintln!(
        "head round: {} epochs, kept epoch {} (validation accuracy {:.4})",
        head_round.history.len(),
        head_epochs,
        head_round.history[head_epochs.saturating_sub(1)].val_accuracy
    );

    // 2. The plan.
    let info = args.backbone.info()?;
    let backbone = args.backbone.load_trainable()?;
    let plan = make_plan(&backbone, &options, head_round.history.len(), classes.len());
    print_plan(&plan);
    let dir = match (&args.finetune.resume, &args.out) {
        (Some(dir), _) | (None, Some(dir)) => dir.clone(),
        (None, None) => run::fresh_dir(
            Path::new("runs"),
            &data_name(&args.data),
            Recipe::Finetune.name(),
        ),
    };
    let checkpoints = Checkpoints {
        dir: Some(dir.join(CHECKPOINT_DIR)),
        resume: args.finetune.resume.is_some(),
        stop_after: None,
    };
    if checkpoints.resume && !checkpoints.exists() {
        // Killed before its first epoch ended: nothing to lose, start over.
        eprintln!(
            "{}: no finished epoch to resume from; starting the fine-tuning from the beginning",
            dir.display()
        );
    }
    std::fs::create_dir_all(&dir).with_context(|| dir.display().to_string())?;
    graft::util::write_atomic(
        &dir.join(PLAN_FILE),
        serde_json::to_string_pretty(&plan)?.as_bytes(),
    )?;

    // 3. Fine-tuning.
    let examples = |m: &graft::features::FeatureMatrix| Examples {
        paths: m.paths.clone(),
        labels: m.labels.clone(),
    };
    let steps = plan.stages.iter().map(|s| s.epochs).sum::<usize>()
        * train.len().div_ceil(options.batch_size.max(1));
    let bar = ProgressBar::new(steps as u64).with_style(
        ProgressStyle::with_template(
            "finetune {bar:30} step {pos}/{len}  {per_sec}  ETA {eta}  {msg}",
        )
        // cannot fail: a fixed template that parses
        .expect("static template"),
    );
    let offset = head_round.history.len();
    let result = finetune(
        backbone,
        &head_round.head,
        (&examples(&train), &examples(&val)),
        &options,
        &checkpoints,
        |_, loss| {
            bar.set_message(format!("loss {loss:.4}"));
            bar.inc(1);
        },
        |report| {
            let r = report.record;
            bar.suspend(|| {
                eprintln!(
                    "epoch {} (stage {}): loss {:.4} acc {:.3} | val loss {:.4} acc {:.3}",
                    r.epoch + offset,
                    report.stage,
                    r.train_loss,
                    r.train_accuracy,
                    r.val_loss,
                    r.val_accuracy
                )
            });
        },
    );
    bar.finish_and_clear();
    let result = super::checkpointed(result, &dir)?;

    // 4. Save: backbone in checkpoint layout, top, card; then score through the saved model.
    save_safetensors(&result.net, info.layout, &dir.join(BACKBONE_FILE))
        .with_context(|| dir.join(BACKBONE_FILE).display().to_string())?;
    result.head.save(&dir.join(run::HEAD_FILE))?;
    let mut history = head_round.history.clone();
    history.extend(result.history.iter().cloned().map(|mut r| {
        r.epoch += offset;
        r
    }));
    let weights_id = graft::util::file_sha256(&dir.join(BACKBONE_FILE))?[..16].to_string();
    let mut hyperparameters = serde_json::to_value(&options)?;
    hyperparameters["head_epochs"] = serde_json::json!(head_round.history.len());
    hyperparameters["parent_weights_id"] = serde_json::json!(frozen.weights_id);
    hyperparameters["stage_starts"] = serde_json::json!(
        result
            .stage_starts
            .iter()
            .map(|e| e + offset)
            .collect::<Vec<_>>()
    );
    hyperparameters["group_learning_rates"] = serde_json::json!({
        "groups": plan.stages[0].learning_rates.iter().map(|(g, _)| g.clone()).collect::<Vec<_>>(),
        "first_epoch": offset + 1,
        "per_epoch": result.group_lrs,
    });
    let card = ModelCard {
        graft_version: env!("CARGO_PKG_VERSION").into(),
        recipe: Recipe::Finetune,
        backbone: frozen.config.name.clone(),
        weights_id,
        source: frozen.config.clone(),
        preprocessing: frozen.config.preprocessing_id(),
        feature_dim: frozen.config.feature_dim,
        classes: classes.clone(),
        hyperparameters,
        data: DataRecord::new(
            &args.data,
            &data.split,
            args.split.seed,
            train.len(),
            val.len(),
        ),
        backbone_file: Some(BACKBONE_FILE.into()),
    };
    graft::util::write_atomic(
        &dir.join(run::MODEL_FILE),
        serde_json::to_string_pretty(&card)?.as_bytes(),
    )?;
    let model = TrainedModel::open(&dir, None)?;
    let mut tuned_cache = open_cache(&model.backbone, args.cache.cache_dir.as_ref())?;
    let (mut tuned, _) = features_of(
        &model.backbone,
        &mut tuned_cache,
        &[&data.val],
        args.cache.extract_batch_size,
    )?;
    // cannot fail: features_of returns one matrix per group it is given
    let tuned_val = tuned.pop().expect("one group");
    let val_metrics = score(&model.head, &tuned_val, classes);
    let best = &history[offset + result.best_epoch - 1];
    let metrics = RunMetrics {
        train_size: train.len(),
        val_size: val.len(),
        best_epoch: Some(offset + result.best_epoch),
        train_accuracy: best.train_accuracy,
        val: val_metrics,
    };
    let predictions = predictions(&model.head, &tuned_val, classes);
    run::save(&dir, &card, &model.head, &metrics, &history, &predictions)?;
    println!("{}", metrics.val.table());
    println!(
        "head round alone: validation accuracy {:.4}; fine-tuned: {:.4}",
        head_round.history[head_epochs.saturating_sub(1)].val_accuracy,
        metrics.val.accuracy
    );
    println!("run saved in {}", dir.display());
    match graft::report::write_report(&dir) {
        Ok(path) => println!("report: {}", path.display()),
        Err(e) => eprintln!("warning: no report: {e}"),
    }
    Ok(ExitCode::SUCCESS)
}

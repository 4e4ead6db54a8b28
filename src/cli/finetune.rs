//! `graft train --recipe finetune`: the flags turned into the library's [`FinetuneRecipe`],
//! its progress drawn, its result printed.

use std::path::Path;
use std::process::ExitCode;

use anyhow::Result;

use graft::recipe::RecipeError;
use graft::recipe::bottleneck::data_name;
use graft::recipe::finetune::{self, FinetuneRecipe};
use graft::run;
use graft::train::Recipe;
use graft::train::finetune::FinetuneOptions;

use super::progress::Bars;
use super::train::TrainArgs;

fn options(args: &TrainArgs) -> Result<FinetuneRecipe> {
    let f = &args.finetune;
    Ok(FinetuneRecipe {
        backbone: args.backbone.choice(),
        split: args.split.options()?,
        tuning: FinetuneOptions {
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
        },
        head_batch_size: args.batch_size,
        balanced_class_weights: args.dense_options().balanced_class_weights,
        cache_dir: args.cache.cache_dir.clone(),
        extract_batch_size: args.cache.extract_batch_size,
        resume: f.resume.is_some(),
    })
}

pub fn run(args: &TrainArgs) -> Result<ExitCode> {
    let options = options(args)?;
    let dir = match (&args.finetune.resume, &args.out) {
        (Some(dir), _) | (None, Some(dir)) => dir.clone(),
        (None, None) => run::fresh_dir(
            Path::new("runs"),
            &data_name(&args.data),
            Recipe::Finetune.name(),
        ),
    };
    let tuned = match finetune::train(&args.data, &dir, &options, &mut Bars::default()) {
        Err(RecipeError::Interrupted(interrupted)) => {
            return Err(graft::interrupt::Interrupted(format!(
                "{}; continue with `--resume {}` and the same options",
                interrupted.0,
                dir.display()
            ))
            .into());
        }
        other => other.map_err(super::recipe_error)?,
    };
    println!("{}", tuned.run.metrics.val.table());
    println!(
        "head round alone: validation accuracy {:.4}; fine-tuned: {:.4}",
        tuned.head_round_accuracy, tuned.run.metrics.val.accuracy
    );
    println!("run saved in {}", dir.display());
    match graft::report::write_report(&dir) {
        Ok(path) => println!("report: {}", path.display()),
        Err(e) => eprintln!("warning: no report: {e}"),
    }
    Ok(ExitCode::SUCCESS)
}

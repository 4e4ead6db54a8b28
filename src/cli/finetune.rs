//! `graft train --recipe finetune`: the library's [`FinetuneRecipe`] (made from the flags by
//! `TrainArgs::finetune_recipe`) run with its progress drawn and its result printed.

use std::path::Path;
use std::process::ExitCode;

use anyhow::Result;

use graft::recipe::RecipeError;
use graft::recipe::finetune::{self, FinetuneRecipe};

use super::progress::Bars;

/// Fine-tune on `data` into the run directory `dir` (a new one, or the interrupted run being
/// resumed) as `recipe` says.
pub fn run(data: &Path, dir: &Path, recipe: &FinetuneRecipe) -> Result<ExitCode> {
    let tuned = match finetune::train(data, dir, recipe, &mut Bars::default()) {
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
    println!("{}", tuned.run.metrics.validation_text());
    if tuned.run.metrics.val_size > 0 {
        println!(
            "head round alone: validation accuracy {:.4}; fine-tuned: {:.4}",
            tuned.head_round_accuracy, tuned.run.metrics.val.accuracy
        );
    }
    println!("run saved in {}", dir.display());
    super::print_report(dir);
    Ok(ExitCode::SUCCESS)
}

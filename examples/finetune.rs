//! Recipe 3 through the library: a head round on the frozen backbone's cached features, then
//! gradual unfreezing from the top with low, discriminative learning rates and BatchNorm in
//! inference mode; here one stage of one epoch, to be quick.
//!
//! ```text
//! cargo run --release --example finetune -- DATA OUT
//! ```
//!
//! DATA holds one folder per class; OUT becomes the run directory (the fine-tuned backbone,
//! the top, the plan, metrics), which `graft predict --model OUT` and `graft report OUT` read.
//! Needs the EfficientNet-Lite0 weights in the store.

use std::path::PathBuf;

use graft::progress::Silent;
use graft::recipe::finetune::{self, FinetuneRecipe};
use graft::train::finetune::FinetuneOptions;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args_os().skip(1).map(PathBuf::from);
    let (Some(data), Some(out)) = (args.next(), args.next()) else {
        return Err("usage: finetune DATA OUT".into());
    };
    let options = FinetuneRecipe {
        tuning: FinetuneOptions {
            stages: 1,
            epochs_per_stage: 1,
            ..FinetuneOptions::default()
        },
        ..FinetuneRecipe::default()
    };
    let tuned = finetune::train(&data, &out, &options, &mut Silent)?;
    for line in tuned.plan.lines() {
        println!("{line}");
    }
    let r = &tuned.run;
    println!(
        "head round: validation accuracy {:.4}; fine-tuned: {:.4} (kept epoch {})",
        tuned.head_round_accuracy,
        r.metrics.val.accuracy,
        r.metrics.best_epoch.unwrap_or(0)
    );
    Ok(())
}

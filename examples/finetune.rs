//! Recipe 3 through the library's building blocks: a head round on cached features, then one
//! stage of fine-tuning the top-most backbone group at a low learning rate, BatchNorm frozen.
//!
//! ```text
//! cargo run --release --example finetune -- DATA
//! ```
//!
//! DATA holds one folder per class. Needs the EfficientNet-Lite0 weights in the store. The
//! `graft train --recipe finetune` command adds the plan, checkpoints, the run directory and
//! the report around the same calls.

use std::path::PathBuf;

use graft::data::dataset::SplitOptions;
use graft::progress::Silent;
use graft::recipe::BackboneChoice;
use graft::recipe::bottleneck::{self, BottleneckOptions};
use graft::train::finetune::{Checkpoints, Examples, FinetuneOptions, finetune};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let Some(data) = std::env::args_os().nth(1).map(PathBuf::from) else {
        return Err("usage: finetune DATA".into());
    };
    let options = BottleneckOptions::default();
    let dataset = bottleneck::open_dataset(&data, SplitOptions::default(), &mut Silent)?;

    // 1. The head round: a new top on the frozen backbone's cached features.
    let frozen = options.backbone.load(false)?;
    let mut cache = bottleneck::open_cache(&frozen, None, &mut Silent)?;
    let groups = [dataset.train.as_slice(), dataset.val.as_slice()];
    let (features, _) = bottleneck::features(&frozen, &mut cache, &groups, 32, &mut Silent)?;
    let top = bottleneck::fit_top(
        &features[0],
        &features[1],
        &dataset.classes,
        &options,
        &mut Silent,
    )?;

    // 2. Fine-tuning: the top-most group unfrozen, low learning rate, BatchNorm frozen.
    let examples = |samples: &[graft::data::dataset::Sample]| Examples {
        paths: samples.iter().map(|s| s.path.clone()).collect(),
        labels: samples.iter().map(|s| s.label).collect(),
    };
    let tuning = FinetuneOptions {
        stages: 1,
        epochs_per_stage: 1,
        ..FinetuneOptions::default()
    };
    let trainable = BackboneChoice::new("efficientnet-lite0").load_trainable()?;
    let result = finetune(
        trainable,
        &top.head,
        (&examples(&dataset.train), &examples(&dataset.val)),
        &tuning,
        &Checkpoints::default(),
        |_, _| {},
        |report| {
            let r = report.record;
            println!(
                "epoch {}: loss {:.4}, validation accuracy {:.4}",
                r.epoch, r.train_loss, r.val_accuracy
            );
        },
    )?;
    println!("kept epoch {}", result.best_epoch);
    Ok(())
}

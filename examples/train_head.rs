//! Recipe 2: a new head on the frozen backbone's cached features, then predictions with the
//! trained model, all through the library.
//!
//! ```text
//! cargo run --release --example train_head -- DATA RUN_DIR [PHOTO...]
//! ```
//!
//! DATA holds one folder per class. Needs the EfficientNet-Lite0 weights in the store.

use std::path::PathBuf;

use graft::progress::Silent;
use graft::recipe::bottleneck::{self, BottleneckOptions};
use graft::run::TrainedModel;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args_os().skip(1).map(PathBuf::from);
    let (Some(data), Some(out)) = (args.next(), args.next()) else {
        return Err("usage: train_head DATA RUN_DIR [PHOTO...]".into());
    };
    let photos: Vec<PathBuf> = args.collect();

    let run = bottleneck::train(&data, &out, &BottleneckOptions::default(), &mut Silent)?;
    println!(
        "kept epoch {:?}; validation accuracy {:.4}",
        run.metrics.best_epoch, run.metrics.val.accuracy
    );

    let model = TrainedModel::open(&out, None)?;
    for photo in model.predict(&photos, 1) {
        match photo.result {
            Ok(top) => println!("{}: {}", photo.path.display(), top[0].label),
            Err(e) => eprintln!("error: {e}"),
        }
    }
    Ok(())
}

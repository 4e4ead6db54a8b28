//! Recipe 1: classify photos with a pretrained ImageNet backbone.
//!
//! ```text
//! cargo run --release --example classify -- PHOTO...
//! ```
//!
//! Needs the EfficientNet-Lite0 weights in the store (`graft weights fetch efficientnet-lite0`).

use std::path::PathBuf;

use graft::data::DecodeLimits;
use graft::infer::{Top, classify};
use graft::recipe::BackboneChoice;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let photos: Vec<PathBuf> = std::env::args_os().skip(1).map(PathBuf::from).collect();
    // The backbone with its ImageNet classifier; its source preprocessing comes with it.
    let backbone = BackboneChoice::new("efficientnet-lite0").load(true)?;
    let results = classify(
        &backbone,
        Top::ImageNet,
        &photos,
        3,
        32,
        DecodeLimits::default(),
        |_| {},
    );
    for photo in results {
        match photo.result {
            Ok(top) => {
                let best = &top[0];
                println!(
                    "{}: {} ({:.1}%)",
                    photo.path.display(),
                    best.label,
                    100.0 * best.probability
                );
            }
            Err(e) => eprintln!("error: {e}"),
        }
    }
    Ok(())
}

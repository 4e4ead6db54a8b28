//! `graft search`: rank a folder's images by similarity to a text or a photo with a CLIP /
//! SigLIP model. The images' embeddings come from the feature cache, so a second search of the
//! same folder only embeds the query.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Result, bail};
use clap::Args;

use graft::data::DecodeLimits;
use graft::data::dataset::{Sample, list_images};

use super::features::CacheArgs;
use super::zero_shot;

#[derive(Debug, Args)]
pub struct SearchArgs {
    /// The text to search for, then the folder (searched recursively): `graft search "a red
    /// bicycle" photos/`. With `--image`, the folder alone.
    #[arg(required = true, num_args = 1..=2, value_name = "TEXT DIR")]
    pub arguments: Vec<String>,

    /// Search by similarity to this photo instead of a text.
    #[arg(long, value_name = "PHOTO")]
    pub image: Option<PathBuf>,

    /// A CLIP or SigLIP model: `hf:openai/clip-vit-base-patch32`, or a folder holding a
    /// `transformers` or OpenCLIP repository.
    #[arg(long, short = 'b', value_name = "MODEL")]
    pub backbone: String,

    /// How many images to list.
    #[arg(long, short = 'k', default_value_t = 10)]
    pub top: usize,

    /// Print one JSON document instead of text.
    #[arg(long)]
    pub json: bool,

    #[command(flatten)]
    pub cache: CacheArgs,
}

pub fn run(args: SearchArgs) -> Result<ExitCode> {
    let (query, dir) = match (&args.image, &args.arguments[..]) {
        (None, [text, dir]) => (Some(text.clone()), PathBuf::from(dir)),
        (Some(_), [dir]) => (None, PathBuf::from(dir)),
        (None, _) => bail!("give the text and the folder: graft search \"a red bicycle\" DIR"),
        (Some(_), _) => bail!("with --image, give the folder only: graft search --image PHOTO DIR"),
    };
    if !dir.is_dir() {
        bail!("{}: not a folder", dir.display());
    }
    let model = zero_shot::open_model(&args.backbone)?;
    let query_embedding = match (&query, &args.image) {
        (Some(text), _) => model.text_embeddings(std::slice::from_ref(text))?.remove(0),
        (None, Some(photo)) => {
            let decoded = graft::data::load_images(
                std::slice::from_ref(photo),
                &model.image.config,
                DecodeLimits::default(),
            );
            let image = match decoded.into_iter().next() {
                Some(Ok(image)) => image,
                Some(Err(e)) => bail!("{e}"),
                None => bail!("{}: cannot be read", photo.display()),
            };
            let batch = graft::data::to_batch(
                &[&image],
                model.image.config.resolution,
                &model.image.device(),
            );
            model.image_embeddings(batch).remove(0)
        }
        (None, None) => unreachable!("checked above"),
    };
    let query_embedding = graft::clip::l2_normalised(query_embedding);

    let (paths, _) = list_images(&dir)?;
    if paths.is_empty() {
        bail!("{}: no images in this folder", dir.display());
    }
    let samples: Vec<Sample> = paths
        .into_iter()
        .map(|path| Sample { path, label: 0 })
        .collect();
    let (images, _) = zero_shot::cached_embeddings(&model, &samples, &args.cache)?;
    let images = &images;
    let mut ranked: Vec<(f32, usize)> = (0..images.len())
        .map(|i| {
            let e = graft::clip::l2_normalised(images.row(i).to_vec());
            let cosine = e.iter().zip(&query_embedding).map(|(a, b)| a * b).sum();
            (cosine, i)
        })
        .collect();
    ranked.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
    ranked.truncate(args.top);
    if args.json {
        let results: Vec<_> = ranked
            .iter()
            .map(|&(cosine, i)| {
                serde_json::json!({ "path": images.paths[i].to_string_lossy(), "similarity": cosine })
            })
            .collect();
        let query = match (&query, &args.image) {
            (Some(text), _) => serde_json::json!({ "text": text }),
            (None, Some(photo)) => serde_json::json!({ "image": photo.to_string_lossy() }),
            (None, None) => serde_json::Value::Null,
        };
        let doc = serde_json::json!({
            "model": model.image.config.name,
            "query": query,
            "images": images.len(),
            "results": results,
        });
        println!("{}", serde_json::to_string_pretty(&doc)?);
    } else {
        for (rank, &(cosine, i)) in ranked.iter().enumerate() {
            println!(
                "{:>3}. {cosine:.4}  {}",
                rank + 1,
                images.paths[i].display()
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

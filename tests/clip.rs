//! CLIP, OpenCLIP and SigLIP against `transformers` / `open_clip`: image and text embeddings
//! and zero-shot probabilities within 1e-4, token ids equal to the reference tokenizers'. The
//! fixtures (small random-weight models in the layouts users download, goldens from the
//! reference libraries) come from tests/support/make_clip_fixtures.py.

use std::path::{Path, PathBuf};

use burn::tensor::{Tensor, TensorData};
use graft::clip::{ContrastiveModel, Kind, Prompts};
use graft::weights::Checkpoint;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/clip")
        .join(name)
}

fn golden(name: &str, key: &str) -> (Vec<usize>, Vec<f32>) {
    let file = Checkpoint::open(&fixture(name).join("golden.safetensors")).unwrap();
    let stored = &file.tensors[key];
    (stored.shape.clone(), stored.values.clone().unwrap())
}

/// An integer golden (token ids), which graft's checkpoint reader leaves out.
fn golden_ids(name: &str, key: &str) -> Vec<Vec<u32>> {
    let bytes = std::fs::read(fixture(name).join("golden.safetensors")).unwrap();
    let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let t = file.tensor(key).unwrap();
    let [_, len] = t.shape()[..] else { panic!() };
    let ids: Vec<u32> = t
        .data()
        .chunks_exact(8)
        .map(|b| i64::from_le_bytes(b.try_into().unwrap()) as u32)
        .collect();
    ids.chunks(len).map(<[u32]>::to_vec).collect()
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "length mismatch");
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

const PROMPTS: [&str; 4] = [
    "a photo of a daisy.",
    "a photo of a rose.",
    "a photo of a dandelion.",
    "a photo of a tulip.",
];

/// Everything the fixture `name` has goldens for; `text_key` / `probs_key` name the text
/// features and probabilities to match (SigLIP: without an attention mask, see below).
fn check(name: &str, kind: Kind, text_key: &str, probs_key: &str) {
    let model = ContrastiveModel::open(&fixture(name), name).unwrap();
    assert_eq!(model.config.kind, kind);
    assert!(
        model.image.runs_fused(),
        "{name}: the image tower runs its fused CPU form"
    );

    // Image tower: the fused form and the burn network, from the reference's pixels.
    let (shape, pixels) = golden(name, "pixel_values");
    let device = model.image.device();
    let batch = || {
        Tensor::<4>::from_data(
            TensorData::new(pixels.clone(), [shape[0], shape[1], shape[2], shape[3]]),
            &device,
        )
    };
    let (_, expected) = golden(name, "image_features");
    let fused: Vec<f32> = model.image_embeddings(batch()).concat();
    let d = max_abs_diff(&fused, &expected);
    assert!(d < 1e-4, "{name}: image embeddings (fused) differ by {d}");
    // On one worker thread both images go through the fused form together (their tokens
    // stacked as the rows of every product).
    let one_thread = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .unwrap();
    let grouped: Vec<f32> = one_thread
        .install(|| model.image_embeddings(batch()))
        .concat();
    let d = max_abs_diff(&grouped, &expected);
    assert!(
        d < 1e-4,
        "{name}: image embeddings (fused, grouped) differ by {d}"
    );
    let reference: Vec<f32> = model
        .image
        .net
        .forward_features(batch())
        .into_data()
        .try_into_vec::<f32>()
        .unwrap();
    let d = max_abs_diff(&reference, &expected);
    assert!(d < 1e-4, "{name}: image embeddings (burn) differ by {d}");

    // Tokens: graft's ids are the reference's, up to its padding (CLIP pads to the longest,
    // OpenCLIP with 0 to 77, SigLIP to 64 like graft).
    let prompts: Vec<String> = PROMPTS.iter().map(|p| p.to_string()).collect();
    let encoded = model.tokenizer.encode(&prompts).unwrap();
    for (ours, theirs) in encoded.ids.iter().zip(golden_ids(name, "input_ids")) {
        let n = ours.len().min(theirs.len());
        let used = match kind {
            Kind::Clip => encoded.positions[0] + 1,
            Kind::Siglip => n,
        };
        assert_eq!(ours[..used], theirs[..used], "{name}: token ids");
    }

    // Text tower.
    let (_, expected) = golden(name, text_key);
    let text: Vec<f32> = model.text_embeddings(&prompts).unwrap().concat();
    let d = max_abs_diff(&text, &expected);
    assert!(d < 1e-4, "{name}: text embeddings differ by {d}");

    // Zero-shot: the four prompts as labels (template "{}"), both images.
    let classifier = model
        .classifier(&prompts, &Prompts::templates(vec!["{}".into()]).unwrap())
        .unwrap();
    let (_, expected) = golden(name, probs_key);
    let probs: Vec<f32> = model
        .image_embeddings(batch())
        .iter()
        .flat_map(|e| classifier.probabilities(e))
        .collect();
    let d = max_abs_diff(&probs, &expected);
    assert!(d < 1e-4, "{name}: zero-shot probabilities differ by {d}");
}

#[test]
fn clip_in_transformers_layout_matches_transformers() {
    check("clip_hf", Kind::Clip, "text_features", "probs");
}

#[test]
fn clip_in_open_clip_layout_matches_open_clip() {
    check("openclip", Kind::Clip, "text_features", "probs");
}

/// SigLIP runs its text tower as it was trained (big_vision, OpenCLIP): padded to 64 with no
/// attention mask. transformers' zero-shot pipeline passes a mask, which moves the text
/// embeddings (by up to 2 on this fixture); the fixture holds both, graft matches the first.
#[test]
fn siglip_matches_transformers_without_attention_mask() {
    check(
        "siglip_hf",
        Kind::Siglip,
        "text_features_unmasked",
        "probs_unmasked",
    );
}

fn tokens_json() -> serde_json::Value {
    let text = std::fs::read_to_string(fixture("tokens.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn ids(value: &serde_json::Value) -> Vec<u32> {
    value
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as u32)
        .collect()
}

/// CLIP's tokenizer on prompts with punctuation, casing, accents, emoji, CJK, numbers, HTML
/// entities and more than 77 tokens gives transformers' ids (its tokenizer.json). The
/// fixture also records where OpenAI's Python tokenizer (ftfy) differs: HTML entities,
/// full-width forms, mojibake, a word-final sigma.
#[test]
fn clip_token_ids_equal_the_reference_tokenizer() {
    let model = ContrastiveModel::open(&fixture("clip_hf"), "clip_hf").unwrap();
    let tokens = tokens_json();
    let prompts = tokens["prompts"].as_array().unwrap();
    assert!(prompts.len() >= 20);
    for (i, prompt) in prompts.iter().enumerate() {
        let prompt = prompt.as_str().unwrap();
        let ours = model.tokenizer.ids(prompt).unwrap();
        assert_eq!(ours, ids(&tokens["clip"][i]), "prompt {i}: {prompt:?}");
        assert!(ours.len() <= 77, "cut to the context");
    }
}

/// SigLIP's tokenizer (lowercased, punctuation removed, SentencePiece Unigram, `</s>` at the
/// end) gives transformers' SiglipTokenizer's ids, padded to 64; two prompts differ by the
/// reference's own quirks, recorded in the fixture: Python's `str.lower` turns a word-final
/// Σ into ς (transformers 4 and the tokenizers crate give σ), and the reference does not
/// append `</s>` to a text that already ends with it.
#[test]
fn siglip_token_ids_equal_the_reference_tokenizer() {
    let model = ContrastiveModel::open(&fixture("siglip_hf"), "siglip_hf").unwrap();
    let tokens = tokens_json();
    for (i, prompt) in tokens["prompts"].as_array().unwrap().iter().enumerate() {
        let prompt = prompt.as_str().unwrap();
        let ours = model.tokenizer.ids(prompt).unwrap();
        assert_eq!(ours.len(), 64, "padded to the context");
        let key = if [18, 21].contains(&i) {
            "siglip_fast"
        } else {
            "siglip"
        };
        let theirs = ids(&tokens[key][i]);
        let n = theirs.len().min(64);
        assert_eq!(ours[..n], theirs[..n], "prompt {i}: {prompt:?}");
        assert!(ours[n..].iter().all(|&id| id == 1), "padded with </s>");
    }
}

mod common;

/// Zero-shot end to end through the command line on a small labelled folder (random weights:
/// every path runs, the numbers are checked against the library's): `predict --labels`,
/// `evaluate --zero-shot` (its accuracy is the library classifier's on the same photos) and
/// `search` by text and by photo (a photo of the folder finds itself first, through the cache).
#[test]
fn zero_shot_predict_evaluate_and_search_from_the_command_line() {
    let data = tempfile::tempdir().unwrap();
    common::copy_flowers(data.path(), &["daisy", "roses"], 3);
    let home = tempfile::tempdir().unwrap();
    let model_dir = fixture("clip_hf");
    let model_arg = model_dir.to_str().unwrap();
    let run = |args: &[&str]| {
        common::ok(
            common::graft()
                .env("GRAFT_HOME", home.path())
                .args(args)
                .output()
                .unwrap(),
        )
        .0
    };
    let folder = data.path().to_str().unwrap();

    // predict: every label ranked, probabilities of a softmax.
    let out = run(&[
        "predict",
        "--backbone",
        model_arg,
        "--labels",
        "daisy,rose,tulip",
        "-k",
        "3",
        "--json",
        folder,
    ]);
    let doc: serde_json::Value = serde_json::from_str(&out).unwrap();
    let images = doc["images"].as_array().unwrap();
    assert_eq!(images.len(), 6);
    for image in images {
        let p = image["predictions"].as_array().unwrap();
        let total: f64 = p.iter().map(|p| p["probability"].as_f64().unwrap()).sum();
        assert!((total - 1.0).abs() < 1e-5, "{image}");
    }

    // evaluate --zero-shot: the class folders as labels; the library agrees on each photo.
    let record = data.path().join("zero-shot.json");
    run(&[
        "evaluate",
        "--zero-shot",
        "--backbone",
        model_arg,
        "--prompt",
        "a photo of {}.",
        "--output",
        record.to_str().unwrap(),
        folder,
    ]);
    let record = common::json(&record);
    let model = ContrastiveModel::open(&model_dir, "clip").unwrap();
    let classes = vec!["daisy".to_string(), "roses".to_string()];
    let classifier = model
        .classifier(
            &classes,
            &Prompts::templates(vec!["a photo of {}.".into()]).unwrap(),
        )
        .unwrap();
    let mut correct = 0;
    for (label, class) in classes.iter().enumerate() {
        let paths = common::flower_photos(class)[..3].to_vec();
        for chw in graft::data::load_images(&paths, &model.image.config, Default::default()) {
            let batch = graft::data::to_batch(
                &[&chw.unwrap()],
                model.image.config.resolution,
                &model.image.device(),
            );
            let p = classifier.probabilities(&model.image_embeddings(batch)[0]);
            correct += usize::from(common::argmax(&p) == label);
        }
    }
    let accuracy = record["metrics"]["accuracy"].as_f64().unwrap();
    assert_eq!(record["metrics"]["count"], 6);
    assert!((accuracy - correct as f64 / 6.0).abs() < 1e-9, "{record}");

    // search by photo: the photo itself first, similarity 1 (the cached embedding of the
    // folder's copy equals the query's).
    let photo = common::flower_photos("daisy")[0].clone();
    let out = run(&[
        "search",
        "--backbone",
        model_arg,
        "--image",
        photo.to_str().unwrap(),
        "-k",
        "6",
        "--json",
        folder,
    ]);
    let doc: serde_json::Value = serde_json::from_str(&out).unwrap();
    let results = doc["results"].as_array().unwrap();
    assert_eq!(results.len(), 6);
    assert!(
        results[0]["path"]
            .as_str()
            .unwrap()
            .ends_with(photo.file_name().unwrap().to_str().unwrap())
    );
    assert!((results[0]["similarity"].as_f64().unwrap() - 1.0).abs() < 1e-4);
    let similarities: Vec<f64> = results
        .iter()
        .map(|r| r["similarity"].as_f64().unwrap())
        .collect();
    assert!(
        similarities.windows(2).all(|w| w[0] >= w[1]),
        "{similarities:?}"
    );

    // search by text: ranked, as many as asked.
    let out = run(&[
        "search",
        "--backbone",
        model_arg,
        "a photo of a daisy",
        "-k",
        "4",
        folder,
    ]);
    assert_eq!(out.lines().count(), 4, "{out}");

    // The image tower as a backbone: a logistic regression on its cached embeddings, a run
    // that predict and evaluate reopen; fine-tuning is refused by name.
    let run_dir = home.path().join("run");
    run(&[
        "train",
        folder,
        "--backbone",
        model_arg,
        "--recipe",
        "logreg",
        "--out",
        run_dir.to_str().unwrap(),
    ]);
    let card = common::json(&run_dir.join("model.json"));
    assert_eq!(
        card["backbone"].as_str().unwrap(),
        std::fs::canonicalize(&model_dir).unwrap().to_str().unwrap()
    );
    let out = run(&[
        "predict",
        "--model",
        run_dir.to_str().unwrap(),
        "-k",
        "1",
        folder,
    ]);
    assert_eq!(out.lines().count(), 12, "{out}");
    run(&["evaluate", "--model", run_dir.to_str().unwrap(), folder]);
    let out = common::graft()
        .env("GRAFT_HOME", home.path())
        .args([
            "train",
            folder,
            "--backbone",
            model_arg,
            "--recipe",
            "finetune",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("is a CLIP / SigLIP model"));

    // Not a CLIP model: one clear line.
    let out = common::graft()
        .env("GRAFT_HOME", home.path())
        .args(["predict", "--labels", "a,b", folder])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("is not a CLIP or SigLIP model"));
}

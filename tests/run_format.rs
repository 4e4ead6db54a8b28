//! Run directories are typed records with a schema version: the ones graft 0.1.0 wrote (committed
//! in `tests/fixtures/runs-0.1.0`, see its README) still open, read back field for field, and
//! write back as the same JSON; a record from a newer schema is refused with a message.

mod common;

use std::path::{Path, PathBuf};

use common::*;
use graft::run::{self, EvaluationRecord, Hyperparameters, SplitKind, TrainedModel};
use graft::train::Recipe;
use graft::train::finetune::BnMode;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/runs-0.1.0")
        .join(name)
}

/// A copy of a committed run directory (tests that write into it work on the copy).
fn copy(name: &str, to: &Path) -> PathBuf {
    let dir = to.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    for entry in std::fs::read_dir(fixture(name)).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, dir.join(path.file_name().unwrap())).unwrap();
    }
    dir
}

#[test]
fn cards_of_every_recipe_read_typed_and_write_back_the_same_json() {
    for (name, recipe) in [
        ("head", Recipe::Head),
        ("logreg", Recipe::Logreg),
        ("finetune", Recipe::Finetune),
    ] {
        let dir = fixture(name);
        let card = run::load_card(&dir).unwrap();
        assert_eq!(card.recipe, recipe, "{name}");
        assert_eq!(card.schema_version, 1, "{name}: no version reads as 1");
        assert!(card.hyperparameters.matches(recipe), "{name}");
        assert_eq!(card.data.source, Path::new("flowers-small"), "{name}");
        assert_eq!(card.data.split, SplitKind::Stratified, "{name}");
        // Written back through the same types: the old JSON plus the schema version, the
        // decode mode (exact, what graft 0.1.0 did) and the temperature (1: uncalibrated),
        // nothing renamed, nothing lost.
        assert_eq!(card.temperature, 1.0, "{name}: no temperature reads as 1");
        let mut old = json(&dir.join(run::MODEL_FILE));
        old["schema_version"] = 1.into();
        old["source"]["decode"] = "exact".into();
        old["temperature"] = 1.0.into();
        assert_eq!(serde_json::to_value(&card).unwrap(), old, "{name}");
        let metrics = run::load_metrics(&dir).unwrap();
        let history = run::load_history(&dir).unwrap();
        let predictions = run::load_predictions(&dir).unwrap();
        assert_eq!(predictions.len(), metrics.val_size, "{name}");
        assert!(!history.is_empty(), "{name}");
    }
}

#[test]
fn the_finetune_record_and_plan_read_typed() {
    let dir = fixture("finetune");
    let card = run::load_card(&dir).unwrap();
    let raw = json(&dir.join(run::MODEL_FILE));
    let Hyperparameters::Finetune(record) = &card.hyperparameters else {
        panic!("not a fine-tuning record: {:?}", card.hyperparameters)
    };
    let hyper = &raw["hyperparameters"];
    assert_eq!(
        serde_json::to_value(&record.stage_starts).unwrap(),
        hyper["stage_starts"]
    );
    assert_eq!(record.parent_weights_id, hyper["parent_weights_id"]);
    assert_eq!(record.options.head_epochs as u64, hyper["head_epochs"]);
    assert_eq!(record.options.bn_mode, BnMode::Frozen);
    let rates = &record.group_learning_rates;
    assert_eq!(rates.groups.last().map(String::as_str), Some("top"));
    assert_eq!(rates.per_epoch.len(), record.stage_starts.len());

    let plan = run::load_plan(&dir).unwrap().unwrap();
    assert_eq!(
        serde_json::to_value(&plan).unwrap(),
        json(&dir.join(run::PLAN_FILE))
    );
    assert_eq!(plan.stages.len(), 2);
    assert_eq!(plan.head_round_epochs, record.options.head_epochs);
    assert_eq!(plan.stages[0].first_epoch, record.stage_starts[0]);
    let groups = &card.source.layer_groups;
    assert_eq!(
        plan.stages[1].trainable(groups),
        vec![groups.len() - 2, groups.len() - 1]
    );
    // The rates the loop follows are the plan's: the top's last, frozen groups at 0.
    let peak = plan.stages[1].peak_rates();
    assert_eq!(peak.len(), groups.len() + 1);
    assert_eq!(*peak.last().unwrap(), record.options.head_learning_rate);
    assert_eq!(peak[0], 0.0);

    assert!(run::load_plan(&fixture("head")).unwrap().is_none());
}

#[test]
fn evaluations_and_pretraining_records_read_typed() {
    let evaluations = EvaluationRecord::load_all(&fixture("head"));
    assert_eq!(evaluations.len(), 1);
    let (file, evaluation) = &evaluations[0];
    assert_eq!(file, "evaluate-flowers-small-val.json");
    assert_eq!(evaluation.split, "val");
    assert!(evaluation.tta.is_none());
    let metrics = run::load_metrics(&fixture("head")).unwrap();
    assert_eq!(evaluation.metrics.accuracy, metrics.val.accuracy);

    let (card, metrics) = graft::adapted::load(&fixture("pretrain")).unwrap();
    assert_eq!(card.schema_version, 1);
    assert_eq!(card.method, "simclr");
    assert_eq!(card.options.epochs, 1);
    assert_eq!(metrics.history.len(), 1);
    let mut old = json(&fixture("pretrain").join(graft::adapted::PRETRAIN_FILE));
    old["schema_version"] = 1.into();
    old["source"]["decode"] = "exact".into();
    assert_eq!(serde_json::to_value(&card).unwrap(), old);
}

#[test]
fn the_old_head_run_predicts_what_it_recorded() {
    store_weights("efficientnet-lite0");
    let dir = fixture("head");
    let model = TrainedModel::open(&dir, None).unwrap();
    let recorded = run::load_predictions(&dir).unwrap();
    // The recorded paths are relative to the folder it was trained in; the photos are the
    // shared flowers of the same names.
    let photos: Vec<PathBuf> = recorded
        .iter()
        .map(|r| {
            let class = r.path.parent().unwrap().file_name().unwrap();
            shared()
                .join("data/flowers")
                .join(class)
                .join(r.path.file_name().unwrap())
        })
        .collect();
    let predicted = model.predict(&photos, 1);
    let mut worst = 0f32;
    for (record, classified) in recorded.iter().zip(&predicted) {
        let best = &classified.result.as_ref().unwrap()[0];
        assert_eq!(best.label, record.predicted, "{}", record.path.display());
        worst = worst.max((best.probability - record.probability).abs());
        // 1e-4 until 2026-12-08, when the resize became Pillow's exactly: the run was recorded
        // with the old resize, a grey level off on some pixels.
        assert!(
            (best.probability - record.probability).abs() < 1e-2,
            "{}: {} now, {} recorded",
            record.path.display(),
            best.probability,
            record.probability
        );
    }
    eprintln!("largest probability change since the run was recorded: {worst}");
}

#[test]
fn reports_of_old_runs_show_their_plan_and_evaluations() {
    let tmp = tempfile::tempdir().unwrap();
    let finetune = copy("finetune", tmp.path());
    let report = graft::report::write_report(&finetune).unwrap();
    let html = std::fs::read_to_string(report).unwrap();
    assert!(html.contains(r#"<table id="plan">"#), "no plan table");
    assert!(html.contains("stage7, head + top"), "no stage 2 row");
    assert!(html.contains("first epoch of each unfreezing stage (68, 69)"));
    let head = copy("head", tmp.path());
    let html = std::fs::read_to_string(graft::report::write_report(&head).unwrap()).unwrap();
    assert!(html.contains("evaluate-flowers-small-val.json"));
    assert!(html.contains(r#"<th>learning_rate</th><td>0.001</td>"#));
}

#[test]
fn a_record_from_a_newer_schema_is_refused_by_name() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = copy("head", tmp.path());
    let path = dir.join(run::MODEL_FILE);
    let mut card = json(&path);
    card["schema_version"] = 2.into();
    std::fs::write(&path, serde_json::to_string(&card).unwrap()).unwrap();
    let error = run::load_card(&dir).unwrap_err().to_string();
    assert!(error.contains("model.json"), "{error}");
    assert!(error.contains("newer graft"), "{error}");

    // Hyper-parameters of another recipe than the card's are an error too, not a misreading.
    card["schema_version"] = 1.into();
    card["recipe"] = "finetune".into();
    std::fs::write(&path, serde_json::to_string(&card).unwrap()).unwrap();
    let error = run::load_card(&dir).unwrap_err().to_string();
    assert!(error.contains("not those of recipe finetune"), "{error}");
}

#[test]
fn the_run_directory_and_report_keep_the_data_path_as_given() {
    store_weights("efficientnet-lite0");
    let tmp = tempfile::tempdir().unwrap();
    copy_flowers(&tmp.path().join("flowers"), &["daisy", "roses"], 6);
    ok(graft()
        .current_dir(tmp.path())
        .args(["train", "flowers", "--recipe", "logreg", "--out", "run"])
        .args(["--cache-dir", "cache"])
        .output()
        .unwrap());
    let dir = tmp.path().join("run");
    let card = run::load_card(&dir).unwrap();
    assert_eq!(card.data.source, Path::new("flowers"));
    for record in run::load_predictions(&dir).unwrap() {
        assert!(
            record.path.starts_with("flowers"),
            "{}",
            record.path.display()
        );
    }
    // Nothing of this machine's layout in what a person reads or shares.
    let machine = tmp.path().canonicalize().unwrap();
    for file in ["model.json", "predictions.json", "report.html"] {
        let text = std::fs::read_to_string(dir.join(file)).unwrap();
        assert!(
            !text.contains(machine.to_str().unwrap())
                && !text.contains(tmp.path().to_str().unwrap()),
            "{file} holds an absolute path"
        );
    }
}

//! Label issues end to end on real photos: `graft doctor --out DIR` finds labels planted wrong
//! in a CSV of ../shared/data/flowers photos and writes label_issues.csv; `graft train
//! --exclude` of that file trains without them, records them in the run, and reports a listed
//! path that is not in the data.

mod common;

use std::collections::BTreeSet;
use std::path::PathBuf;

use common::*;

/// The first 20 photos of each class; the labels of four of them moved to another class.
fn flipped_csv(dir: &std::path::Path) -> (PathBuf, BTreeSet<String>) {
    let mut lines = vec!["path,label".to_string()];
    let mut flipped = BTreeSet::new();
    for (c, class) in FLOWER_CLASSES.iter().enumerate() {
        for (i, photo) in flower_photos(class).iter().take(20).enumerate() {
            let label = if i == 3 && c < 4 {
                flipped.insert(photo.display().to_string());
                FLOWER_CLASSES[(c + 2) % 5]
            } else {
                class
            };
            lines.push(format!("{},{label}", photo.display()));
        }
    }
    let csv = dir.join("noisy.csv");
    std::fs::write(&csv, lines.join("\n") + "\n").unwrap();
    (csv, flipped)
}

#[test]
fn doctor_finds_flipped_labels_and_train_excludes_them() {
    store_weights("efficientnet-lite0");
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let (csv, flipped) = flipped_csv(dir.path());
    let out = dir.path().join("doctor");
    let (stdout, _) = ok(graft()
        .args(["doctor", "--json", "--cache-dir"])
        .arg(&cache)
        .arg("--out")
        .arg(&out)
        .arg(&csv)
        .output()
        .unwrap());
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let section = &report["label_issues"];
    assert_eq!(section["rows"], 100, "{section:#}");
    let issues: BTreeSet<String> = section["issues"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["path"].as_str().unwrap().to_string())
        .collect();
    // Every planted flip is flagged. A model of 16 photos a class also gets some clean photos
    // wrong, and those are flagged too, but fewer than a quarter of the images.
    assert!(
        flipped.is_subset(&issues),
        "{flipped:?} not all in {issues:?}"
    );
    assert!(issues.len() <= 25, "{issues:?}");
    let finding = report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["check"] == "label-issues")
        .expect("a label-issues finding");
    assert_eq!(finding["severity"], "warning");
    assert_eq!(finding["files"].as_array().unwrap().len(), issues.len());

    // The CSV: header, one row per issue, suggested label different from the given one.
    let written = std::fs::read_to_string(out.join("label_issues.csv")).unwrap();
    let mut rows = written.lines();
    assert_eq!(rows.next(), Some("path,given,suggested,score"));
    let rows: Vec<Vec<&str>> = rows.map(|r| r.split(',').collect()).collect();
    assert_eq!(rows.len(), issues.len());
    for row in &rows {
        assert_ne!(row[1], row[2], "{row:?}");
        let score: f64 = row[3].parse().unwrap();
        assert!((0.0..=1.0).contains(&score), "{row:?}");
    }
    // doctor.html: the label-issues finding with a thumbnail of each suspected photo, every
    // image decoded when headless Chromium renders it, nothing fetched from the network.
    let page = out.join("doctor.html");
    let html = std::fs::read_to_string(&page).unwrap();
    assert!(!html.contains("http://") && !html.contains("https://"));
    let dom = rendered_dom(&page);
    let section = &dom[dom
        .find("id=\"check-label-issues\"")
        .expect("a label-issues section")..];
    let section = &section[..section.find("</section>").unwrap()];
    let thumbnails = section.matches("<img ").count();
    assert_eq!(thumbnails, issues.len().min(24), "a thumbnail per suspect");
    for path in &flipped {
        assert!(section.contains(path.as_str()), "{path} not shown");
    }
    let (total, loaded) = images_decoded(&dom);
    assert!(total >= thumbnails, "{total} images on the page");
    assert_eq!(loaded, total, "every thumbnail decodes");

    // Every image's score; the flips are among the lowest (self-confidence of a wrong label).
    let scores = std::fs::read_to_string(out.join("label_scores.csv")).unwrap();
    let mut ranked: Vec<(f64, String)> = scores
        .lines()
        .skip(1)
        .map(|l| {
            let f: Vec<&str> = l.split(',').collect();
            (f[3].parse().unwrap(), f[0].to_string())
        })
        .collect();
    assert_eq!(ranked.len(), 100);
    ranked.sort_by(|a, b| a.0.total_cmp(&b.0));
    let lowest: BTreeSet<String> = ranked.iter().take(12).map(|r| r.1.clone()).collect();
    assert!(
        flipped.is_subset(&lowest),
        "{flipped:?} not all in the 12 lowest {lowest:?}"
    );

    // Train without them; a listed path that is not in the data is reported, not an error.
    let list = dir.path().join("exclude.csv");
    std::fs::write(
        &list,
        format!(
            "{written}{},daisy,roses,0.1\n",
            dir.path().join("gone.jpg").display()
        ),
    )
    .unwrap();
    let run = dir.path().join("run");
    let (_, stderr) = ok(graft()
        .args(["train", "--recipe", "logreg", "--cache-dir"])
        .arg(&cache)
        .arg("--exclude")
        .arg(&list)
        .arg("--out")
        .arg(&run)
        .arg(&csv)
        .output()
        .unwrap());
    let card = json(&run.join("model.json"));
    let excluded: BTreeSet<String> = card["data"]["excluded"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap().to_string())
        .collect();
    assert!(
        !excluded.is_empty() && excluded.is_subset(&issues),
        "{excluded:?}"
    );
    assert!(
        stderr.contains(&format!(
            "excluded {} of {} listed images",
            excluded.len(),
            rows.len() + 1
        )),
        "{stderr}"
    );
    assert!(
        stderr.contains("1 listed paths are not images of the data"),
        "{stderr}"
    );
    // The validation images are the same as without --exclude.
    let train_images = card["data"]["train_images"].as_u64().unwrap() as usize;
    assert_eq!(
        train_images + excluded.len() + card["data"]["val_images"].as_u64().unwrap() as usize,
        100
    );
    let plain = dir.path().join("plain");
    ok(graft()
        .args(["train", "--recipe", "logreg", "--cache-dir"])
        .arg(&cache)
        .arg("--out")
        .arg(&plain)
        .arg(&csv)
        .output()
        .unwrap());
    let plain_card = json(&plain.join("model.json"));
    assert_eq!(plain_card["data"]["val_images"], card["data"]["val_images"]);
    assert!(
        plain_card["data"].get("excluded").is_none(),
        "nothing excluded, nothing recorded"
    );
}

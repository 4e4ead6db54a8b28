//! The label-issue search of `graft doctor` by itself, for `bench/label_noise.sh`:
//!
//!     # graft's cached features of a labelled dataset (extracted through the cache if missing),
//!     # as numpy files: OUT/features.npy (float32 [N, D]), OUT/labels.npy (int64 [N]),
//!     # OUT/paths.txt and OUT/classes.txt (one a line), train then val as doctor reads them
//!     cargo run --release --example label_issues -- export DATA OUT [--backbone NAME]
//!         [--cache-dir DIR]
//!
//!     # time the step "from cached features to the list" (cross-validated logistic regression
//!     # + confident learning) on feature rows from an .npy file; prints one JSON line with the
//!     # seconds, the peak RSS and the flagged rows, and writes every row's score to --scores
//!     cargo run --release --example label_issues -- time FEATURES.npy LABELS.npy [--folds K]
//!         [--scores FILE] [--alpha A] [--max-iterations N]

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use graft::data::dataset::{self, SplitOptions};
use graft::doctor::labels::{LabelIssueOptions, find_label_issues, write_csv};
use graft::features::FeatureMatrix;
use graft::progress::Silent;
use graft::recipe::BackboneChoice;
use graft::recipe::bottleneck;

type Error = Box<dyn std::error::Error>;

fn option<'a>(args: &'a [String], name: &str) -> Option<&'a str> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map(String::as_str)
}

/// The header of a version 1 .npy file for a little-endian array of `descr` and `shape`.
fn npy_header(descr: &str, shape: &[usize]) -> Vec<u8> {
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    let tuple = if dims.len() == 1 {
        format!("({},)", dims[0])
    } else {
        format!("({})", dims.join(", "))
    };
    let mut dict = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {tuple}, }}");
    // Magic (6) + version (2) + length (2) + dict + newline, padded to a multiple of 64.
    while (10 + dict.len() + 1) % 64 != 0 {
        dict.push(' ');
    }
    dict.push('\n');
    let mut out = b"\x93NUMPY\x01\x00".to_vec();
    out.extend((dict.len() as u16).to_le_bytes());
    out.extend(dict.as_bytes());
    out
}

/// The element type and shape of an .npy file, and its data.
fn read_npy(path: &Path) -> Result<(String, Vec<usize>, Vec<u8>), Error> {
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .map_err(|e| format!("{}: {e}", path.display()))?
        .read_to_end(&mut bytes)?;
    if bytes.len() < 10 || &bytes[..6] != b"\x93NUMPY" {
        return Err(format!("{}: not an .npy file", path.display()).into());
    }
    let (length, start) = match bytes[6] {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        _ => (
            u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
            12,
        ),
    };
    let header = std::str::from_utf8(&bytes[start..start + length])?;
    let field = |name: &str| -> Result<&str, Error> {
        let at = header
            .find(&format!("'{name}':"))
            .ok_or_else(|| format!("{}: no {name} in the header", path.display()))?;
        Ok(header[at + name.len() + 3..].trim_start())
    };
    if field("fortran_order")?.starts_with("True") {
        return Err(format!("{}: Fortran order is not supported", path.display()).into());
    }
    let descr = field("descr")?;
    let descr = descr[1..descr[1..].find('\'').unwrap_or(0) + 1].to_string();
    let shape = field("shape")?;
    let shape: Vec<usize> = shape[1..shape.find(')').unwrap_or(1)]
        .split(',')
        .filter(|s| !s.trim().is_empty())
        .map(|s| s.trim().parse())
        .collect::<Result<_, _>>()?;
    Ok((descr, shape, bytes.split_off(start + length)))
}

fn export(args: &[String]) -> Result<(), Error> {
    let (Some(data), Some(out)) = (args.first(), args.get(1)) else {
        return Err(
            "usage: label_issues export DATA OUT [--backbone NAME] [--cache-dir DIR]".into(),
        );
    };
    let out = PathBuf::from(out);
    std::fs::create_dir_all(&out)?;
    let dataset = dataset::open(data.as_ref(), SplitOptions::default())?;
    let backbone = BackboneChoice::new(option(args, "--backbone").unwrap_or("efficientnet-lite0"))
        .load(false)?;
    let cache_dir = option(args, "--cache-dir").map(Path::new);
    let (train, val) =
        bottleneck::train_val_features(&backbone, &dataset, (cache_dir, 32), &mut Silent)?;
    let (train, val) = (train.to_matrix()?, val.to_matrix()?);
    let n = train.len() + val.len();
    let mut file = std::io::BufWriter::new(std::fs::File::create(out.join("features.npy"))?);
    file.write_all(&npy_header("<f4", &[n, train.dim]))?;
    for v in train.rows.iter().chain(&val.rows) {
        file.write_all(&v.to_le_bytes())?;
    }
    file.flush()?;
    let mut file = std::io::BufWriter::new(std::fs::File::create(out.join("labels.npy"))?);
    file.write_all(&npy_header("<i8", &[n]))?;
    for &l in train.labels.iter().chain(&val.labels) {
        file.write_all(&(l as i64).to_le_bytes())?;
    }
    file.flush()?;
    let lines = |items: Vec<String>| items.join("\n") + "\n";
    std::fs::write(
        out.join("paths.txt"),
        lines(
            train
                .paths
                .iter()
                .chain(&val.paths)
                .map(|p| p.to_string_lossy().into_owned())
                .collect(),
        ),
    )?;
    std::fs::write(out.join("classes.txt"), lines(dataset.classes.clone()))?;
    println!("{n} rows of {} features in {}", train.dim, out.display());
    Ok(())
}

fn peak_rss_mb() -> f64 {
    graft::util::peak_rss_bytes() as f64 / 1e6
}

fn time(args: &[String]) -> Result<(), Error> {
    let (Some(features), Some(labels)) = (args.first(), args.get(1)) else {
        return Err(
            "usage: label_issues time FEATURES.npy LABELS.npy [--folds K] [--scores FILE]".into(),
        );
    };
    let (descr, shape, bytes) = read_npy(features.as_ref())?;
    let [rows, dim] = shape[..] else {
        return Err(format!("{features}: expected a 2-D array, got shape {shape:?}").into());
    };
    if descr != "<f4" {
        return Err(format!("{features}: expected float32 (<f4), got {descr}").into());
    }
    let values: Vec<f32> = bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    drop(bytes);
    let (descr, _, bytes) = read_npy(labels.as_ref())?;
    let labels: Vec<usize> = match descr.as_str() {
        "<i8" => bytes
            .chunks_exact(8)
            .map(|b| i64::from_le_bytes(b.try_into().expect("8 bytes")) as usize)
            .collect(),
        "<i4" => bytes
            .chunks_exact(4)
            .map(|b| i32::from_le_bytes(b.try_into().expect("4 bytes")) as usize)
            .collect(),
        other => return Err(format!("{}: expected int64 or int32, got {other}", args[1]).into()),
    };
    if labels.len() != rows {
        return Err(format!("{} labels for {rows} rows", labels.len()).into());
    }
    let classes: Vec<String> = (0..=labels.iter().copied().max().unwrap_or(0))
        .map(|c| c.to_string())
        .collect();
    let data = FeatureMatrix {
        dim,
        rows: values,
        paths: (0..rows).map(|r| PathBuf::from(r.to_string())).collect(),
        labels,
    };
    let mut options = LabelIssueOptions {
        folds: option(args, "--folds").map_or(Ok(5), str::parse)?,
        ..LabelIssueOptions::default()
    };
    if let Some(alpha) = option(args, "--alpha") {
        options.logreg.logreg_alpha = alpha.parse()?;
    }
    if let Some(n) = option(args, "--max-iterations") {
        options.logreg.logreg_max_iterations = n.parse()?;
    }
    let started = Instant::now();
    let found = find_label_issues(&data, &classes, &options)?;
    let seconds = started.elapsed().as_secs_f64();
    if let Some(file) = option(args, "--scores") {
        write_csv(&found.all, file.as_ref())?;
    }
    let flagged: Vec<usize> = found
        .issues
        .iter()
        .map(|i| i.path.to_string_lossy().parse().unwrap_or(usize::MAX))
        .collect();
    println!(
        "{}",
        serde_json::json!({
            "rows": rows,
            "dim": dim,
            "folds": options.folds,
            "seconds": seconds,
            "seconds_per_10k_rows": seconds / rows as f64 * 1e4,
            "peak_rss_mb": peak_rss_mb(),
            "issues": flagged,
        })
    );
    Ok(())
}

fn main() -> Result<(), Error> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("export") => export(&args[1..]),
        Some("time") => time(&args[1..]),
        _ => Err("usage: label_issues export DATA OUT | time FEATURES.npy LABELS.npy".into()),
    }
}

//! `graft doctor`: checks a dataset (and optionally a run) for the traps of transfer learning and
//! says, for each finding, what was measured, why it matters and what to do.

pub mod crossval;
pub mod images;
pub mod labels;
pub mod leakage;
pub mod neighbours;
pub mod page;
pub mod quality;
pub mod run_checks;

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::data::dataset::Dataset;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Info,
    Warning,
    Error,
}

impl Severity {
    pub fn label(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Warning => "warning",
            Severity::Error => "ERROR",
        }
    }
}

/// One problem found.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Finding {
    pub severity: Severity,
    /// Short stable name of the check (`leakage-exact`, `class-imbalance`, ...).
    pub check: &'static str,
    /// What was measured, with the numbers.
    pub measured: String,
    /// Why it matters, in one sentence.
    pub why: &'static str,
    /// What to do about it.
    pub action: String,
    /// The files concerned (for leakage: the validation files).
    #[serde(serialize_with = "crate::util::lossy_paths")]
    pub files: Vec<PathBuf>,
    /// One line per file or pair, for people.
    pub details: Vec<String>,
}

/// Thresholds of the dataset checks.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DoctorOptions {
    /// Cosine similarity of pooled backbone features above which a train/val pair is a
    /// near-duplicate.
    pub near_duplicate_cosine: f32,
    /// Perceptual-hash distance (bits of 64) at or below which a train/val pair is a
    /// near-duplicate.
    pub near_duplicate_hash_bits: u32,
    /// Largest class / smallest class above which the classes are imbalanced.
    pub imbalance_ratio: f64,
    /// Classes with fewer images than this are too small to learn or to validate.
    pub min_class_images: usize,
    /// Images whose shorter side is below this fraction of the backbone's input are tiny.
    pub tiny_fraction: f64,
    /// Longer side / shorter side above which the centre crop loses most of the image.
    pub max_aspect_ratio: f64,
}

impl Default for DoctorOptions {
    fn default() -> Self {
        Self {
            near_duplicate_cosine: 0.95,
            near_duplicate_hash_bits: 8,
            imbalance_ratio: 3.0,
            min_class_images: 10,
            tiny_fraction: 0.5,
            max_aspect_ratio: 3.0,
        }
    }
}

/// Class-level findings: imbalance, classes with too few images, empty class folders.
pub fn class_findings(data: &Dataset, options: &DoctorOptions) -> Vec<Finding> {
    let counts = data.class_counts();
    let mut findings = Vec::new();
    let present: Vec<(usize, &String)> = counts
        .iter()
        .copied()
        .zip(&data.classes)
        .filter(|(n, _)| *n > 0)
        .collect();
    if let (Some(largest), Some(smallest)) = (
        present.iter().max_by_key(|(n, _)| *n),
        present.iter().min_by_key(|(n, _)| *n),
    ) {
        let ratio = largest.0 as f64 / smallest.0 as f64;
        if ratio > options.imbalance_ratio {
            findings.push(Finding {
                severity: Severity::Warning,
                check: "class-imbalance",
                measured: format!(
                    "largest class `{}` has {} images, smallest `{}` has {} (ratio {ratio:.1}, threshold {})",
                    largest.1, largest.0, smallest.1, smallest.0, options.imbalance_ratio
                ),
                why: "a model trained on imbalanced classes favours the large ones, and plain accuracy hides it",
                action: "train with --class-weights balanced, collect more images of the small classes, and read per-class recall rather than accuracy".into(),
                files: Vec::new(),
                details: present.iter().map(|(n, c)| format!("{c}: {n}")).collect(),
            });
        }
    }
    let small: Vec<String> = present
        .iter()
        .filter(|(n, _)| *n < options.min_class_images)
        .map(|(n, c)| format!("{c}: {n}"))
        .collect();
    if !small.is_empty() {
        findings.push(Finding {
            severity: Severity::Warning,
            check: "small-class",
            measured: format!(
                "{} classes have fewer than {} images",
                small.len(),
                options.min_class_images
            ),
            why: "a handful of images per class is too few to learn the class or to measure it on validation",
            action: "collect more images for these classes (dozens at least), or merge them".into(),
            files: Vec::new(),
            details: small,
        });
    }
    if !data.empty_classes.is_empty() {
        findings.push(Finding {
            severity: Severity::Warning,
            check: "empty-class",
            measured: format!("{} class folders hold no images", data.empty_classes.len()),
            why: "an empty class folder is usually a mistake in the data layout, and the class can never be predicted right",
            action: "remove the folders or put the class's images in them".into(),
            files: Vec::new(),
            details: data.empty_classes.clone(),
        });
    }
    findings
}

/// Datasets no recipe can learn from or measure on: fewer than two classes with images (an
/// error, as for every recipe) and no validation split (a warning: nothing would measure the
/// model, and training keeps the last epoch).
pub fn split_findings(data: &Dataset, root: &Path) -> Vec<Finding> {
    let mut findings = Vec::new();
    if let Err(e) = data.check_classes(root) {
        findings.push(Finding {
            severity: Severity::Error,
            check: "too-few-classes",
            measured: e.to_string(),
            why: "with fewer than two classes there is nothing to tell apart: every recipe refuses to train",
            action: "add a sub-folder of images for every class (two or more)".into(),
            files: Vec::new(),
            details: Vec::new(),
        });
    }
    if let Some(reason) = data.no_validation_reason() {
        findings.push(Finding {
            severity: Severity::Warning,
            check: "no-validation-split",
            measured: format!("no validation images: {reason}"),
            why: "without validation images nothing measures the model or picks its best epoch",
            action: "give every class at least two images (a stratified split keeps one of each for validation), or a val/ folder".into(),
            files: Vec::new(),
            details: Vec::new(),
        });
    }
    findings
}

/// Findings sorted most severe first, then by check name.
pub fn sorted(mut findings: Vec<Finding>) -> Vec<Finding> {
    findings.sort_by(|a, b| b.severity.cmp(&a.severity).then(a.check.cmp(b.check)));
    findings
}

/// Text for the terminal: one block per finding.
pub fn render_text(findings: &[Finding]) -> String {
    if findings.is_empty() {
        return "no findings: the checks found nothing to worry about\n".into();
    }
    let mut out = String::new();
    for f in findings {
        out += &format!("{} [{}] {}\n", f.severity.label(), f.check, f.measured);
        out += &format!("  why: {}\n", f.why);
        out += &format!("  do:  {}\n", f.action);
        const SHOWN: usize = 10;
        for line in f.details.iter().take(SHOWN) {
            out += &format!("    {line}\n");
        }
        if f.details.len() > SHOWN {
            out += &format!("    ... and {} more\n", f.details.len() - SHOWN);
        }
    }
    let count = |s: Severity| findings.iter().filter(|f| f.severity == s).count();
    out += &format!(
        "{} errors, {} warnings, {} notes\n",
        count(Severity::Error),
        count(Severity::Warning),
        count(Severity::Info)
    );
    out
}

//! Per-file checks: unreadable files, colour models graft converts, tiny images (the header
//! facts come from [`super::quality::scan_all`], which also scores grayscale and aspect ratio).

use std::path::PathBuf;

use super::{DoctorOptions, Finding, Severity};
use crate::data::DecodeError;
use crate::data::decode::{ImageFacts, StoredColor};

/// Findings from header facts, and from the files that failed to decode fully (`unreadable`,
/// found while extracting features).
pub fn image_findings(
    facts: &[(PathBuf, Result<ImageFacts, DecodeError>)],
    unreadable: &[DecodeError],
    resolution: usize,
    options: &DoctorOptions,
) -> Vec<Finding> {
    let mut findings = Vec::new();
    let mut bad: Vec<&DecodeError> = facts.iter().filter_map(|(_, r)| r.as_ref().err()).collect();
    for e in unreadable {
        if !bad.iter().any(|b| b.path == e.path) {
            bad.push(e);
        }
    }
    if !bad.is_empty() {
        findings.push(Finding {
            severity: Severity::Warning,
            check: "unreadable",
            measured: format!("{} files cannot be read as images", bad.len()),
            why: "graft skips them, so the classes hold fewer examples than the folder suggests",
            action: "delete or re-export these files".into(),
            files: bad.iter().map(|e| e.path.clone()).collect(),
            details: bad.iter().map(|e| e.to_string()).collect(),
        });
    }
    let readable: Vec<(&PathBuf, &ImageFacts)> = facts
        .iter()
        .filter_map(|(p, r)| r.as_ref().ok().map(|f| (p, f)))
        .collect();
    let mut group = |check: &'static str,
                     severity: Severity,
                     what: &str,
                     why: &'static str,
                     action: &str,
                     select: &dyn Fn(&ImageFacts) -> bool| {
        let hits: Vec<(&PathBuf, &ImageFacts)> = readable
            .iter()
            .copied()
            .filter(|(_, f)| select(f))
            .collect();
        if hits.is_empty() {
            return;
        }
        findings.push(Finding {
            severity,
            check,
            measured: format!("{} images {what}", hits.len()),
            why,
            action: action.into(),
            files: hits.iter().map(|(p, _)| (*p).clone()).collect(),
            details: hits
                .iter()
                .map(|(p, f)| format!("{} ({}x{}, {:?})", p.display(), f.width, f.height, f.color))
                .collect(),
        });
    };
    group(
        "cmyk",
        Severity::Warning,
        "are CMYK JPEGs",
        "CMYK is converted to RGB without a colour profile, so colours can differ from what other tools show",
        "re-export these images as RGB (sRGB)",
        &|f| f.color == StoredColor::Cmyk,
    );
    group(
        "alpha",
        Severity::Info,
        "have an alpha channel",
        "the alpha channel is dropped, so transparent areas show whatever colour is stored under them",
        "flatten these images onto the background you expect at prediction time",
        &|f| matches!(f.color, StoredColor::Rgba | StoredColor::GrayAlpha),
    );
    let min_side = (resolution as f64 * options.tiny_fraction) as u32;
    group(
        "tiny",
        Severity::Warning,
        &format!(
            "have a shorter side under {min_side} px (half the backbone's {resolution} px input)"
        ),
        "they are upscaled a lot before the backbone sees them, so fine detail the features rely on is missing",
        "use larger originals, or drop these images",
        &|f| f.width.min(f.height) < min_side,
    );
    findings
}

//! `doctor.html`: the findings of `graft doctor` as one self-contained page, each finding with
//! what was measured, why it matters, what to do, and thumbnails of the files concerned, so a
//! person can look at the suspected photos rather than read paths.

use std::fmt::Write;
use std::path::{Path, PathBuf};

use rayon::prelude::*;

use super::{Finding, Severity};
use crate::report::{escape, page, thumbnail};

/// The page's file name inside doctor's output folder.
pub const PAGE_FILE: &str = "doctor.html";
/// Thumbnails per finding: enough to see the pattern, bounded so the page stays small.
const THUMBNAILS_SHOWN: usize = 24;
/// Detail lines per finding.
const DETAILS_SHOWN: usize = 50;

/// What the page is about.
pub struct PageSummary<'a> {
    pub data: &'a Path,
    pub images: usize,
    pub classes: &'a [String],
    pub train: usize,
    pub val: usize,
}

/// Write `doctor.html` into `dir` (created if needed); its path.
pub fn write_page(
    dir: &Path,
    summary: &PageSummary,
    findings: &[Finding],
) -> std::io::Result<PathBuf> {
    std::fs::create_dir_all(dir)?;
    let path = dir.join(PAGE_FILE);
    crate::util::write_atomic(&path, render(summary, findings).as_bytes())?;
    Ok(path)
}

/// The page as HTML.
pub fn render(summary: &PageSummary, findings: &[Finding]) -> String {
    let mut body = String::new();
    let w = &mut body;
    let _ = write!(
        w,
        r#"<h1>graft doctor: {}</h1><p class="summary">{} images in {} classes ({} train / {} val)</p>"#,
        escape(&summary.data.to_string_lossy()),
        summary.images,
        summary.classes.len(),
        summary.train,
        summary.val
    );
    let count = |s: Severity| findings.iter().filter(|f| f.severity == s).count();
    let _ = write!(
        w,
        r#"<p id="totals">{} errors, {} warnings, {} notes</p>"#,
        count(Severity::Error),
        count(Severity::Warning),
        count(Severity::Info)
    );
    if findings.is_empty() {
        let _ = write!(w, "<p>The checks found nothing to worry about.</p>");
    } else {
        let _ = write!(w, "<ul id=\"contents\">");
        for f in findings {
            let _ = write!(
                w,
                r##"<li><a href="#check-{check}">{sev} [{check}]</a> {measured}</li>"##,
                check = f.check,
                sev = f.severity.label(),
                measured = escape(&f.measured)
            );
        }
        let _ = write!(w, "</ul>");
    }
    for f in findings {
        section(w, f);
    }
    page(&format!("graft doctor: {}", summary.data.display()), &body)
}

fn section(w: &mut String, f: &Finding) {
    let _ = write!(
        w,
        r#"<section class="finding {sev}" id="check-{check}"><h2>{label} [{check}]</h2><p>{measured}</p><p><b>Why:</b> {why}</p><p><b>Do:</b> {action}</p>"#,
        sev = f.severity.label().to_lowercase(),
        label = f.severity.label(),
        check = f.check,
        measured = escape(&f.measured),
        why = escape(f.why),
        action = escape(&f.action)
    );
    if !f.files.is_empty() {
        let shown = &f.files[..f.files.len().min(THUMBNAILS_SHOWN)];
        let thumbnails: Vec<Option<String>> = shown.par_iter().map(|p| thumbnail(p)).collect();
        let _ = write!(w, r#"<div class="gallery">"#);
        for (path, thumb) in shown.iter().zip(thumbnails) {
            let name = escape(&path.to_string_lossy());
            let picture = match thumb {
                Some(uri) => format!(r#"<img src="{uri}" alt="{name}">"#),
                None => "<p>(cannot be decoded)</p>".to_string(),
            };
            // The class folder and file name fit under a thumbnail; the whole path is the
            // caption's tooltip and in the details below.
            let _ = write!(
                w,
                r#"<figure title="{name}">{picture}<figcaption>{}</figcaption></figure>"#,
                escape(&short_name(path))
            );
        }
        let _ = write!(w, "</div>");
        if f.files.len() > shown.len() {
            let _ = write!(
                w,
                "<p>... and {} more files (see the JSON output).</p>",
                f.files.len() - shown.len()
            );
        }
    }
    if !f.details.is_empty() {
        let _ = write!(w, "<ul class=\"details\">");
        for line in f.details.iter().take(DETAILS_SHOWN) {
            let _ = write!(w, "<li>{}</li>", escape(line));
        }
        if f.details.len() > DETAILS_SHOWN {
            let _ = write!(
                w,
                "<li>... and {} more</li>",
                f.details.len() - DETAILS_SHOWN
            );
        }
        let _ = write!(w, "</ul>");
    }
    let _ = write!(w, "</section>");
}

/// `class/file.jpg`: the last two components of a path.
fn short_name(path: &Path) -> String {
    let mut parts: Vec<String> = path
        .components()
        .rev()
        .take(2)
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    parts.reverse();
    parts.join("/")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_finding_becomes_a_section_with_escaped_text_and_a_thumbnail_slot_per_file() {
        let finding = Finding {
            severity: Severity::Warning,
            check: "near-duplicates",
            measured: "2 <images> & more".into(),
            why: "because",
            action: "look".into(),
            files: vec![PathBuf::from("/nonexistent/a.jpg")],
            details: vec!["a.jpg ~ b.jpg".into()],
        };
        let classes = vec!["a".to_string(), "b".to_string()];
        let summary = PageSummary {
            data: Path::new("data"),
            images: 2,
            classes: &classes,
            train: 2,
            val: 0,
        };
        let html = render(&summary, &[finding]);
        assert!(html.contains(r#"id="check-near-duplicates""#));
        assert!(html.contains("2 &lt;images&gt; &amp; more"));
        assert!(html.contains("(cannot be decoded)"));
        assert!(html.contains(r#"title="/nonexistent/a.jpg""#));
        assert!(html.contains("<figcaption>nonexistent/a.jpg</figcaption>"));
        assert!(html.contains("a.jpg ~ b.jpg"));
        assert!(html.contains("0 errors, 1 warnings, 0 notes"));
    }
}

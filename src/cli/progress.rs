//! The library's progress drawn as indicatif bars on stderr, notes printed above them.

use indicatif::{ProgressBar, ProgressStyle};

use graft::progress::Progress;

/// A progress bar `len` long: `what {bar} {pos}/{len} images  {per_sec}  ETA {eta}`.
pub fn progress_bar(len: usize, what: &str) -> ProgressBar {
    ProgressBar::new(len as u64).with_style(style(&format!(
        "{what} {{bar:30}} {{pos}}/{{len}} images  {{per_sec}}  ETA {{eta}}"
    )))
}

fn style(template: &str) -> ProgressStyle {
    ProgressStyle::with_template(template)
        // cannot fail: graft's templates are fixed strings that parse
        .expect("static template")
}

/// Bars on stderr for [`Progress`].
#[derive(Default)]
pub struct Bars {
    bar: Option<ProgressBar>,
}

impl Progress for Bars {
    fn start(&mut self, phase: &str, total: usize, unit: &str) {
        self.finish();
        self.bar = Some(match unit {
            "images" => progress_bar(total, phase),
            "bytes" => ProgressBar::new(total as u64).with_style(style(&format!(
                "{phase} {{bar:30}} {{bytes}}/{{total_bytes}}  {{bytes_per_sec}}  ETA {{eta}}"
            ))),
            "epochs" => ProgressBar::new(total as u64).with_style(style(&format!(
                "{phase} {{bar:30}} epoch {{pos}}/{{len}}  {{msg}}"
            ))),
            _ => ProgressBar::new(total as u64).with_style(style(&format!(
                "{phase} {{bar:30}} {unit} {{pos}}/{{len}}  {{per_sec}}  ETA {{eta}}  {{msg}}"
            ))),
        });
    }

    fn advance(&mut self, done: usize) {
        if let Some(bar) = &self.bar {
            bar.inc(done as u64);
        }
    }

    fn status(&mut self, text: &str) {
        if let Some(bar) = &self.bar {
            bar.set_message(text.to_string());
        }
    }

    fn finish(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
    }

    fn note(&mut self, line: &str) {
        match &self.bar {
            Some(bar) => bar.suspend(|| eprintln!("{line}")),
            None => eprintln!("{line}"),
        }
    }
}

impl Drop for Bars {
    fn drop(&mut self) {
        self.finish();
    }
}

//! How long library calls report what they are doing. The command line draws progress bars
//! and prints notes on stderr, the Python package shows tqdm bars, and a library user may
//! show nothing at all ([`Silent`]). Every method has an empty default.

/// Receives the progress of a recipe or an extraction.
pub trait Progress {
    /// A new phase of `total` units (`unit`: "images", "epochs", "steps").
    fn start(&mut self, _phase: &str, _total: usize, _unit: &str) {}
    /// `done` more units of the current phase are finished.
    fn advance(&mut self, _done: usize) {}
    /// A short status of the current phase (e.g. the last loss).
    fn status(&mut self, _text: &str) {}
    /// The current phase ended.
    fn finish(&mut self) {}
    /// A line worth showing to a person (a summary, a warning), without a trailing newline.
    fn note(&mut self, _line: &str) {}
}

/// Shows nothing.
#[derive(Debug, Default, Clone, Copy)]
pub struct Silent;

impl Progress for Silent {}

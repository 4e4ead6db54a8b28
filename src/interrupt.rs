//! Ctrl-C (SIGINT) as a request to stop at the next safe point: long loops poll
//! [`requested`] after each batch and leave a state the next run resumes from. A second Ctrl-C
//! exits at once.

use std::sync::atomic::{AtomicBool, Ordering};

static REQUESTED: AtomicBool = AtomicBool::new(false);

/// Install the handler (once per process; the command line does it at start).
pub fn install() -> Result<(), ctrlc::Error> {
    ctrlc::set_handler(|| {
        if REQUESTED.swap(true, Ordering::SeqCst) {
            eprintln!("\ninterrupted again: exiting now");
            std::process::exit(130);
        }
        eprintln!("\ninterrupt: stopping after the current batch (Ctrl-C again to exit at once)");
    })
}

/// Ask the running loops to stop at their next safe point, as Ctrl-C does (for hosts that
/// catch the interrupt themselves, like the Python package).
pub fn request() {
    REQUESTED.store(true, Ordering::SeqCst);
}

/// Forget a request once the interrupted call has returned, so the next call runs.
pub fn clear() {
    REQUESTED.store(false, Ordering::SeqCst);
}

/// Whether the user asked to stop.
pub fn requested() -> bool {
    REQUESTED.load(Ordering::SeqCst)
}

/// The error of a run stopped on request; the message says how to continue. The command line
/// exits with 130 (the shell's code for SIGINT) on it.
#[derive(Debug, thiserror::Error)]
#[error("interrupted: {0}")]
pub struct Interrupted(pub String);

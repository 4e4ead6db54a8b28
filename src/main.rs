//! The `graft` command line.

mod cli;

use std::process::ExitCode;

use clap::Parser;

/// Transparent huge pages off for this process. mimalloc asks for them on its arenas, and a
/// 2 MiB page stays resident as long as one of its blocks is in use: `graft extract`'s peak
/// RSS grew with the number of images (145 MB for 1k, 160 MB for 10k; with mimalloc's own
/// MIMALLOC_ALLOW_THP=0, 141 and 142 MB). Speed was the same within noise (docs/internals/performance-notes.md).
/// Applies to the pages touched from now on, which is nearly all of them.
fn no_huge_pages() {
    // SAFETY: PR_SET_THP_DISABLE only sets a flag of this process; it cannot fail harmfully.
    unsafe {
        libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0);
    }
}

/// Freed pages go back to the OS at once instead of after mimalloc's delay (10 ms, and ten
/// times that for its arenas), unless MIMALLOC_PURGE_DELAY says otherwise. For `graft
/// extract`, whose peak RSS otherwise grew with the number of images from the pages of freed
/// decode and batch buffers kept between batches: 1k / 10k / 50k images 144 / 150 / 178 MB
/// before, 102 / 105 / 115 MB after (bench/scale.sh), for 0-10% more time in alternating runs.
/// Training keeps the delay: it frees and reuses tens of megabytes of activations every step.
fn return_freed_pages_at_once() {
    /// `mi_option_purge_delay` in mimalloc 3's `mi_option_t` (include/mimalloc.h), which
    /// libmimalloc-sys does not name.
    const PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_some() {
        return;
    }
    // SAFETY: mimalloc reads its options at every purge; setting one is thread-safe.
    unsafe { libmimalloc_sys::mi_option_set(PURGE_DELAY, 0) }
}

/// mimalloc instead of glibc's malloc. Training allocates and frees activations of tens of
/// megabytes every step, from several threads; with glibc each was a fresh mapping, a page
/// fault per page on first write and a TLB shootdown interrupting every core on release
/// (a sixth of a fine-tuning step in `perf`, `graft bench train-step`).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    restore_sigpipe();
    no_huge_pages();
    let args = cli::Cli::parse();
    if let Some(threads) = args.threads {
        // burn's flex backend and the decode pipeline both run on rayon's global pool.
        if let Err(e) = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build_global()
        {
            eprintln!("warning: cannot set --threads {threads}: {e}");
        }
    }
    // Before any work: every model and tensor lives on the device picked here.
    match graft::backend::set_device_choice(args.device.into()) {
        Ok(Some(note)) => eprintln!("{note}"),
        Ok(None) => {}
        Err(e) => {
            eprintln!("error: --device {}: {e}", args.device.name());
            return ExitCode::from(2);
        }
    }
    // `serve` stops on SIGTERM and SIGINT itself (finishing the requests in flight); this
    // handler would take SIGINT from it.
    if !matches!(args.command, cli::Command::Serve(_))
        && let Err(e) = graft::interrupt::install()
    {
        eprintln!("warning: Ctrl-C will not stop cleanly: {e}");
    }
    graft::data::complete::set_allow_truncated(args.allow_truncated);
    graft::backbone::source_config::set_exact_decode(args.exact_decode);
    graft::backbone::source_config::set_precision(args.precision);
    if matches!(args.command, cli::Command::Extract(_)) {
        return_freed_pages_at_once();
    }
    let result = cli::run(args.command);
    if let Err(e) = graft::backend::finish() {
        eprintln!("warning: {e}");
    }
    let kept = graft::data::complete::truncated_kept();
    if kept > 0 {
        eprintln!(
            "kept {kept} truncated image{} (--allow-truncated: their missing part is grey)",
            if kept == 1 { "" } else { "s" }
        );
    }
    match result {
        Ok(code) => code,
        Err(e) if interrupted(&e) => {
            eprintln!("{e}");
            ExitCode::from(130)
        }
        Err(e) => {
            eprintln!("error: {}", message(&e));
            ExitCode::from(2)
        }
    }
}

/// Output into a closed pipe (`graft predict DIR | head`) ends the process quietly, as it
/// does for other Unix tools: Rust ignores SIGPIPE, which turns every later `println!` into a
/// panic (exit 101); the default action ends the process with the conventional status 141.
fn restore_sigpipe() {
    // SAFETY: resetting a signal to its default action before any thread is started.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

/// Whether the run stopped on Ctrl-C (exit code 130).
fn interrupted(error: &anyhow::Error) -> bool {
    use graft::recipe::RecipeError;
    error
        .downcast_ref::<graft::interrupt::Interrupted>()
        .is_some()
        || matches!(
            error.downcast_ref::<RecipeError>(),
            Some(RecipeError::Interrupted(_))
        )
}

/// The error and its causes on one line, `a: b: c`, leaving out a cause whose text the line
/// already holds (the library's errors print their `source` themselves, e.g. `PATH: os error`).
fn message(error: &anyhow::Error) -> String {
    let mut line = error.to_string();
    for cause in error.chain().skip(1) {
        let text = cause.to_string();
        if !line.contains(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
    }
    line
}

//! One download per file, however many processes and threads ask for it at once.
//!
//! Whoever writes `<target>` (or its `.part`) first takes an advisory lock on `<target>.lock`
//! beside it (`flock`, through [`File::lock`]); the others wait for it and then find the target
//! in place. The kernel releases the lock of a process that dies, so a killed download never
//! blocks the next one, which resumes its `.part`. The holder removes the lock file before it
//! lets go; a waiter that then gets the lock of the removed file sees that the file at the
//! path is another one (or none) and locks again, so two holders never overlap.
//!
//! On a file system whose locks do not work (some network and FUSE mounts answer `ENOLCK` or
//! `EOPNOTSUPP`), there is no lock: each download writes a `.part` of its own, named with the
//! process id, and checks it; the rename into place is atomic, so the target is always one
//! whole, checked file, and the last rename wins.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::progress::Progress;

use super::WeightsError;

/// The right to write one target: a held lock, or none where locks do not work.
#[derive(Debug)]
pub struct TargetLock {
    /// The lock file and its path; `None` on a file system without working locks.
    held: Option<(File, PathBuf)>,
    /// Whether another process or thread had the lock first (and so may have landed the
    /// target while this one waited).
    pub waited: bool,
    part: PathBuf,
}

impl TargetLock {
    /// Lock `target` for writing, waiting for whoever holds it. The first wait is said once
    /// through `progress.note`.
    pub fn acquire(target: &Path, progress: &mut dyn Progress) -> Result<Self, WeightsError> {
        let path = with_suffix(target, ".lock");
        let mut waited = false;
        loop {
            let mut file = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(&path)
                .map_err(|e| WeightsError::io(&path, e))?;
            match file.try_lock() {
                Ok(()) => {}
                Err(TryLockError::WouldBlock) => {
                    if !waited {
                        progress.note(&format!(
                            "waiting for {} downloading {}",
                            holder(&mut file),
                            target.display()
                        ));
                        waited = true;
                    }
                    file.lock().map_err(|e| WeightsError::io(&path, e))?;
                }
                Err(TryLockError::Error(e)) if locks_unsupported(&e) => {
                    drop(file);
                    let _ = std::fs::remove_file(&path);
                    progress.note(&format!(
                        "{}: file locks do not work here ({e}); downloading without one, into a file of this process's own",
                        path.display()
                    ));
                    return Ok(Self {
                        held: None,
                        waited: false,
                        part: own_part_path(target),
                    });
                }
                Err(TryLockError::Error(e)) => return Err(WeightsError::io(&path, e)),
            }
            // The holder before us removed the file we waited on: lock the one at the path.
            if !is_at(&file, &path) {
                continue;
            }
            // Who holds it, for the message of the next one to wait.
            let _ = file
                .set_len(0)
                .and_then(|()| write!(file, "{}", std::process::id()));
            return Ok(Self {
                held: Some((file, path)),
                waited,
                part: with_suffix(target, ".part"),
            });
        }
    }

    /// Where the bytes collect before the rename: `<target>.part` under the lock (a later
    /// holder resumes it), one per process and call without one.
    pub fn part(&self) -> &Path {
        &self.part
    }

    /// Whether [`Self::part`] outlives a failed call, for the next one to resume.
    pub fn resumable(&self) -> bool {
        self.held.is_some()
    }
}

impl Drop for TargetLock {
    fn drop(&mut self) {
        // Removed while still locked, so nobody locks a file on its way out unnoticed
        // (see `is_at`); closing the file then releases the lock.
        if let Some((file, path)) = self.held.take() {
            let _ = std::fs::remove_file(&path);
            drop(file);
        }
    }
}

/// `<target><suffix>`, in the target's folder.
fn with_suffix(target: &Path, suffix: &str) -> PathBuf {
    let mut name = target.file_name().unwrap_or_default().to_os_string();
    name.push(suffix);
    target.with_file_name(name)
}

/// `<target>.<pid>-<n>.part`: no other process or call writes it.
fn own_part_path(target: &Path) -> PathBuf {
    static CALLS: AtomicU64 = AtomicU64::new(0);
    let n = CALLS.fetch_add(1, Ordering::Relaxed);
    with_suffix(target, &format!(".{}-{n}.part", std::process::id()))
}

/// Whether `file` is still the file at `path` (not removed or replaced since it was opened).
fn is_at(file: &File, path: &Path) -> bool {
    match (file.metadata(), std::fs::metadata(path)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

/// The holder of a lock, as the lock file names it.
fn holder(file: &mut File) -> String {
    let mut text = String::new();
    match file.read_to_string(&mut text).ok().map(|_| text.trim()) {
        Some(pid) if !pid.is_empty() && pid.bytes().all(|b| b.is_ascii_digit()) => {
            format!("process {pid}")
        }
        _ => "another process".to_string(),
    }
}

/// Errors that mean the file system has no working locks, rather than a failure to report.
fn locks_unsupported(e: &std::io::Error) -> bool {
    e.kind() == std::io::ErrorKind::Unsupported
        || matches!(
            e.raw_os_error(),
            Some(libc::ENOLCK | libc::EOPNOTSUPP | libc::ENOSYS)
        )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::progress::Silent;
    use std::sync::{Arc, Barrier, Mutex};

    /// Threads of one process exclude each other (each opens the lock file itself), and the
    /// lock file is gone once the last one lets go.
    #[test]
    fn holders_never_overlap_and_leave_no_lock_file() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("weights.bin");
        let inside = Arc::new(Mutex::new((0usize, 0usize))); // (now, most at once)
        let start = Arc::new(Barrier::new(8));
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let (target, inside, start) = (target.clone(), inside.clone(), start.clone());
                std::thread::spawn(move || {
                    start.wait();
                    for _ in 0..20 {
                        let lock = TargetLock::acquire(&target, &mut Silent).unwrap();
                        assert_eq!(lock.part(), with_suffix(&target, ".part"));
                        {
                            let mut seen = inside.lock().unwrap();
                            seen.0 += 1;
                            seen.1 = seen.1.max(seen.0);
                        }
                        std::thread::yield_now();
                        inside.lock().unwrap().0 -= 1;
                        drop(lock);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(*inside.lock().unwrap(), (0, 1));
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn a_waiter_is_told_who_holds_the_lock() {
        /// Passes each note on, so that the test lets go of the lock only once it was said.
        struct Notes(std::sync::mpsc::Sender<String>);
        impl Progress for Notes {
            fn note(&mut self, line: &str) {
                self.0.send(line.to_string()).unwrap();
            }
        }
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("weights.bin");
        let first = TargetLock::acquire(&target, &mut Silent).unwrap();
        assert!(!first.waited);
        let (tx, notes) = std::sync::mpsc::channel();
        let waiter = {
            let target = target.clone();
            std::thread::spawn(move || TargetLock::acquire(&target, &mut Notes(tx)).unwrap().waited)
        };
        let note = notes.recv().unwrap();
        assert_eq!(
            note,
            format!(
                "waiting for process {} downloading {}",
                std::process::id(),
                target.display()
            )
        );
        drop(first);
        assert!(waiter.join().unwrap());
        assert!(notes.try_recv().is_err(), "said once");
    }
}

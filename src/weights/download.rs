//! Downloading checkpoints over HTTP(S) without leaving a broken file behind.
//!
//! Checkpoints are large and connections get cut, so the bytes collect in `<target>.part` next
//! to the target: a cut connection is resumed with a `Range` request, a few times within one
//! call and again by the next call. Nothing reaches the target before its sha256 checked out
//! and the file was flushed to disk; the rename into place is atomic. Every error is one line
//! that names the URL (or, for a wrong checksum, the file and both hashes). Concurrent calls
//! for one target take turns through a lock beside it ([`super::lock`]): one downloads, the
//! others then use its file.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::progress::Progress;
use crate::util::file_sha256;

use super::WeightsError;
use super::lock::TargetLock;

/// Connections tried within one call before giving up (the `.part` file stays for the next).
const ATTEMPTS: u32 = 5;
/// Redirects followed per request (the Hub redirects its large files to a CDN).
const MAX_REDIRECTS: u32 = 10;

/// What the downloaded bytes must hash to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Checksum {
    /// The whole sha256 in hex, as published next to the file (PyPI, the Hub's large files).
    Sha256(String),
    /// The first hex digits of the sha256: torchvision's file names carry them
    /// (`resnet50-11ad3fa6.pth`), which is all the check such a URL comes with.
    Sha256Prefix(String),
    /// No check, for files that come with no published hash and are validated by whoever
    /// reads them (the Hub's `config.json`).
    Unchecked,
}

impl Checksum {
    /// The sha256 prefix of a torch.hub file name (`<name>-<hex>.<ext>`, torch.hub's
    /// `-([a-f0-9]*)\.`), so that a URL such as torchvision's is checked with nothing else known.
    pub fn from_file_name(name: &str) -> Option<Self> {
        name.match_indices('-').find_map(|(at, _)| {
            let rest = &name[at + 1..];
            let hex = rest
                .find(|c: char| !matches!(c, '0'..='9' | 'a'..='f'))
                .map(|end| &rest[..end])?;
            (!hex.is_empty() && rest[hex.len()..].starts_with('.'))
                .then(|| Self::Sha256Prefix(hex.to_string()))
        })
    }

    fn accepts(&self, actual: &str) -> bool {
        match self {
            Self::Sha256(full) => actual.eq_ignore_ascii_case(full),
            Self::Sha256Prefix(prefix) => actual.starts_with(&prefix.to_ascii_lowercase()),
            Self::Unchecked => true,
        }
    }

    fn expected(&self) -> String {
        match self {
            Self::Sha256(full) => full.to_ascii_lowercase(),
            Self::Sha256Prefix(prefix) => format!("{}...", prefix.to_ascii_lowercase()),
            Self::Unchecked => String::new(),
        }
    }
}

/// Download `url` to `target`, checked against `checksum`. A `<target>.part` left by an earlier
/// call is resumed rather than started over.
pub fn download(
    url: &str,
    target: &Path,
    checksum: &Checksum,
    progress: &mut dyn Progress,
) -> Result<(), WeightsError> {
    download_with(url, target, checksum, false, progress)
}

/// The torchvision flow: download `url` into `dir` under the URL's file name, checked against
/// the sha256 prefix that name carries. A file already there that passes the check is kept.
///
/// A URL whose file name carries no hash is refused: this is the only check such a download
/// gets. Call [`download`] with [`Checksum::Unchecked`] to take such a file anyway.
pub fn fetch_url(
    url: &str,
    dir: &Path,
    progress: &mut dyn Progress,
) -> Result<PathBuf, WeightsError> {
    let name = file_name_of(url)?;
    let checksum = Checksum::from_file_name(name).ok_or_else(|| {
        download_err(
            url,
            format!(
                "the file name `{name}` carries no sha256 prefix (torch.hub's `<name>-<hex>.<ext>`), so the download could not be checked"
            ),
        )
    })?;
    let target = dir.join(name);
    if target.is_file() {
        let actual = file_sha256(&target).map_err(|e| WeightsError::io(&target, e))?;
        if checksum.accepts(&actual) {
            return Ok(target);
        }
    }
    std::fs::create_dir_all(dir).map_err(|e| WeightsError::io(dir, e))?;
    download(url, &target, &checksum, progress)?;
    Ok(target)
}

/// [`download`], where `trust_published` also checks against the sha256 the server publishes
/// in `X-Linked-Etag` (the Hub does for every large file) when `checksum` is `Unchecked`.
///
/// One call at a time writes `target` ([`TargetLock`]): the others wait, and then take the
/// file the first one landed instead of downloading it again.
pub(crate) fn download_with(
    url: &str,
    target: &Path,
    checksum: &Checksum,
    trust_published: bool,
    progress: &mut dyn Progress,
) -> Result<(), WeightsError> {
    let lock = TargetLock::acquire(target, progress)?;
    if target.is_file() {
        // Only checked files land, so one that appeared while this call waited is good;
        // otherwise it is checked again if there is something to check it against.
        let landed = match checksum {
            Checksum::Unchecked => lock.waited,
            checksum => {
                checksum.accepts(&file_sha256(target).map_err(|e| WeightsError::io(target, e))?)
            }
        };
        if landed {
            return Ok(());
        }
    }
    let part = lock.part();
    let label = target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let published = match transfer(url, part, &label, progress) {
        Ok(published) => published,
        Err(e) => {
            // A `.part` of this call's own is resumed by nobody.
            if !lock.resumable() {
                let _ = std::fs::remove_file(part);
            }
            return Err(e);
        }
    };
    let checksum = match (checksum, published) {
        (Checksum::Unchecked, Some(sha256)) if trust_published => Checksum::Sha256(sha256),
        (checksum, _) => checksum.clone(),
    };
    land(url, part, target, &checksum)
}

fn file_name_of(url: &str) -> Result<&str, WeightsError> {
    let path = url.split(['?', '#']).next().unwrap_or(url);
    match path.rsplit('/').next() {
        Some(name) if !name.is_empty() && path.contains("://") && name != path => Ok(name),
        _ => Err(download_err(url, "the URL names no file")),
    }
}

fn download_err(url: &str, problem: impl Into<String>) -> WeightsError {
    WeightsError::Download {
        url: url.to_string(),
        problem: problem.into(),
    }
}

/// Check the finished `.part` file, flush it to disk and rename it to `target`.
fn land(url: &str, part: &Path, target: &Path, checksum: &Checksum) -> Result<(), WeightsError> {
    let actual = file_sha256(part).map_err(|e| WeightsError::io(part, e))?;
    if !checksum.accepts(&actual) {
        // Bytes that hash wrong are no base to resume from.
        let _ = std::fs::remove_file(part);
        return Err(WeightsError::Checksum {
            path: target.to_path_buf(),
            url: url.to_string(),
            expected: checksum.expected(),
            actual,
        });
    }
    File::open(part)
        .and_then(|f| f.sync_all())
        .map_err(|e| WeightsError::io(part, e))?;
    std::fs::rename(part, target).map_err(|e| WeightsError::io(target, e))?;
    // The rename itself is durable only once the folder is synced (not possible everywhere).
    if let Some(dir) = target.parent().filter(|d| !d.as_os_str().is_empty()) {
        let _ = File::open(dir).and_then(|d| d.sync_all());
    }
    Ok(())
}

/// Why one attempt failed.
enum Failure {
    /// Worth another connection (cut, reset, server busy): the reason.
    Retry(String),
    /// The server could not be reached at all: fatal on the first attempt (a wrong address),
    /// retried after an earlier attempt got through (the network went away mid-download).
    Unreachable(String),
    Fatal(WeightsError),
}

/// Bring `part` to the complete file behind `url`, resuming and retrying; the sha256 the
/// server published for it, if any.
fn transfer(
    url: &str,
    part: &Path,
    label: &str,
    progress: &mut dyn Progress,
) -> Result<Option<String>, WeightsError> {
    let agent = ureq::builder()
        .timeout_connect(Duration::from_secs(30))
        // A stalled connection becomes a cut one, and is resumed.
        .timeout_read(Duration::from_secs(60))
        .redirects(0)
        .user_agent(concat!("graft/", env!("CARGO_PKG_VERSION")))
        .build();
    let mut connected = false;
    let mut attempt = 1;
    loop {
        let result = attempt_once(&agent, url, part, label, &mut connected, progress);
        progress.finish();
        let why = match result {
            Ok(published) => return Ok(published),
            Err(Failure::Fatal(e)) => return Err(e),
            Err(Failure::Unreachable(why)) if !connected => return Err(download_err(url, why)),
            Err(Failure::Retry(why) | Failure::Unreachable(why)) => why,
        };
        if attempt == ATTEMPTS {
            let kept = std::fs::metadata(part).map_or(0, |m| m.len());
            return Err(download_err(
                url,
                format!(
                    "{why} (gave up after {ATTEMPTS} attempts; {kept} bytes are kept in {} and the next try resumes from there)",
                    part.display()
                ),
            ));
        }
        progress.note(&format!(
            "{url}: {why}; resuming (attempt {} of {ATTEMPTS})",
            attempt + 1
        ));
        std::thread::sleep(Duration::from_millis(250 << attempt.min(4)));
        attempt += 1;
    }
}

fn attempt_once(
    agent: &ureq::Agent,
    url: &str,
    part: &Path,
    label: &str,
    connected: &mut bool,
    progress: &mut dyn Progress,
) -> Result<Option<String>, Failure> {
    let have = std::fs::metadata(part).map_or(0, |m| m.len());
    let (response, published) = get(agent, url, have)?;
    *connected = true;
    let io_fatal = |e| Failure::Fatal(WeightsError::io(part, e));
    let (mut file, start, total) = match response.status() {
        206 => {
            let (start, total) = content_range(&response).ok_or_else(|| {
                Failure::Retry("the server resumed without a usable Content-Range".into())
            })?;
            if start != have {
                truncate(part).map_err(io_fatal)?;
                return Err(Failure::Retry(format!(
                    "the server resumed at byte {start} instead of {have}"
                )));
            }
            let file = OpenOptions::new()
                .append(true)
                .open(part)
                .map_err(io_fatal)?;
            (file, have, total)
        }
        // A server that ignores `Range` sends everything again: start over.
        200 => {
            let total = response
                .header("content-length")
                .and_then(|v| v.trim().parse().ok());
            (File::create(part).map_err(io_fatal)?, 0, total)
        }
        // `Range` beyond the end: the part file is complete already, or longer than the file.
        416 => {
            let total = response
                .header("content-range")
                .and_then(|v| v.trim().strip_prefix("bytes */"))
                .and_then(|n| n.trim().parse::<u64>().ok());
            if total == Some(have) {
                return Ok(published);
            }
            truncate(part).map_err(io_fatal)?;
            return Err(Failure::Retry(
                "the partial download is longer than the file".into(),
            ));
        }
        code => {
            return Err(Failure::Fatal(download_err(
                url,
                format!("unexpected HTTP {code} {}", response.status_text()),
            )));
        }
    };
    progress.start(
        &format!("Downloading {label}"),
        total.unwrap_or(0) as usize,
        "bytes",
    );
    progress.advance(start as usize);
    let mut body = response.into_reader();
    let mut buf = vec![0u8; 1 << 16];
    let mut received = start;
    loop {
        let n = match body.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                file.flush().map_err(io_fatal)?;
                return Err(Failure::Retry(format!(
                    "the connection broke after {received} bytes ({e})"
                )));
            }
        };
        file.write_all(&buf[..n]).map_err(io_fatal)?;
        received += n as u64;
        progress.advance(n);
    }
    file.flush().map_err(io_fatal)?;
    match total {
        Some(total) if received != total => Err(Failure::Retry(format!(
            "the connection closed after {received} of {total} bytes"
        ))),
        _ => Ok(published),
    }
}

fn truncate(part: &Path) -> std::io::Result<()> {
    File::create(part).map(drop)
}

/// GET `url` from byte `from` on, following redirects by hand so that `Range` goes to every
/// hop and the sha256 a hop publishes (`X-Linked-Etag`, on the Hub's redirect) is not lost.
fn get(
    agent: &ureq::Agent,
    url: &str,
    from: u64,
) -> Result<(ureq::Response, Option<String>), Failure> {
    let mut current = url.to_string();
    let mut published = None;
    for _ in 0..=MAX_REDIRECTS {
        let mut request = agent.get(&current);
        if from > 0 {
            request = request.set("Range", &format!("bytes={from}-"));
        }
        let response = match request.call() {
            Ok(response) => response,
            Err(ureq::Error::Status(416, response)) => return Ok((response, published)),
            Err(ureq::Error::Status(code, response)) => {
                let why = format!("HTTP {code} {}", response.status_text());
                return Err(if code == 429 || code >= 500 {
                    Failure::Retry(why)
                } else {
                    Failure::Fatal(download_err(url, why))
                });
            }
            Err(ureq::Error::Transport(t)) => return Err(transport_failure(url, &t)),
        };
        if published.is_none() {
            published = response.header("x-linked-etag").and_then(sha256_of_etag);
        }
        if !(300..400).contains(&response.status()) {
            return Ok((response, published));
        }
        let location = response.header("location").ok_or_else(|| {
            Failure::Fatal(download_err(
                url,
                format!("HTTP {} without a Location to follow", response.status()),
            ))
        })?;
        current = url::Url::parse(&current)
            .and_then(|base| base.join(location))
            .map_err(|e| {
                Failure::Fatal(download_err(
                    url,
                    format!("bad redirect to `{location}`: {e}"),
                ))
            })?
            .to_string();
    }
    Err(Failure::Fatal(download_err(
        url,
        format!("more than {MAX_REDIRECTS} redirects"),
    )))
}

fn transport_failure(url: &str, t: &ureq::Transport) -> Failure {
    let detail = std::error::Error::source(t)
        .map(|s| s.to_string())
        .or_else(|| t.message().map(str::to_string))
        .unwrap_or_else(|| t.kind().to_string());
    match t.kind() {
        ureq::ErrorKind::ConnectionFailed => {
            Failure::Unreachable(format!("cannot connect: {detail}"))
        }
        ureq::ErrorKind::Dns => Failure::Unreachable(format!("cannot resolve the host: {detail}")),
        // Reset or cut before the response's head arrived.
        ureq::ErrorKind::Io | ureq::ErrorKind::BadStatus => Failure::Retry(detail),
        ureq::ErrorKind::InvalidUrl | ureq::ErrorKind::UnknownScheme => Failure::Fatal(
            download_err(url, format!("not a URL graft can download: {detail}")),
        ),
        kind => Failure::Fatal(download_err(url, format!("{kind}: {detail}"))),
    }
}

/// `bytes START-END/TOTAL` → `(START, TOTAL)` (TOTAL `*` when the server does not know it).
fn content_range(response: &ureq::Response) -> Option<(u64, Option<u64>)> {
    let spec = response
        .header("content-range")?
        .trim()
        .strip_prefix("bytes ")?;
    let (range, total) = spec.split_once('/')?;
    let start = range.split_once('-')?.0.trim().parse().ok()?;
    Some((start, total.trim().parse().ok()))
}

/// An ETag that is a sha256 (`"<64 hex digits>"`, maybe weak), lowercased.
fn sha256_of_etag(etag: &str) -> Option<String> {
    let tag = etag.trim().trim_start_matches("W/").trim_matches('"');
    (tag.len() == 64 && tag.chars().all(|c| c.is_ascii_hexdigit()))
        .then(|| tag.to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn torch_hub_file_names_give_their_hash_prefix() {
        let prefix = |name| match Checksum::from_file_name(name) {
            Some(Checksum::Sha256Prefix(p)) => Some(p),
            _ => None,
        };
        assert_eq!(prefix("resnet50-11ad3fa6.pth").as_deref(), Some("11ad3fa6"));
        assert_eq!(
            prefix("mobilenet_v2-b0353104.pth").as_deref(),
            Some("b0353104")
        );
        assert_eq!(
            prefix("efficientnet_b0_rwightman-7f5810bc.pth").as_deref(),
            Some("7f5810bc")
        );
        assert_eq!(prefix("resnet50.pth"), None);
        assert_eq!(prefix("vit-base.pth"), None);
        assert_eq!(prefix("resnet-.pth"), None);
    }

    #[test]
    fn prefixes_and_hashes_are_compared_without_case() {
        let actual = "11ad3fa6".to_string() + &"0".repeat(56);
        assert!(Checksum::Sha256Prefix("11AD3FA6".into()).accepts(&actual));
        assert!(!Checksum::Sha256Prefix("11ad3fa7".into()).accepts(&actual));
        assert!(Checksum::Sha256(actual.to_uppercase()).accepts(&actual));
        assert_eq!(
            sha256_of_etag(&format!("\"{}\"", actual.to_uppercase())),
            Some(actual.clone())
        );
        assert_eq!(sha256_of_etag("\"abc\""), None);
    }

    #[test]
    fn url_file_names() {
        assert_eq!(
            file_name_of("https://download.pytorch.org/models/resnet50-11ad3fa6.pth?x=1").ok(),
            Some("resnet50-11ad3fa6.pth")
        );
        assert!(file_name_of("https://example.com/").is_err());
        assert!(file_name_of("resnet50.pth").is_err());
    }
}

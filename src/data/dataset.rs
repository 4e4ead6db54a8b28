//! Labelled datasets: an ImageFolder tree (one sub-folder per class, optionally under `train/` and
//! `val/` or `validation/`) or a CSV listing (`path,label`), and a stratified, seeded split.
//! Listing only looks at names; decoding problems are reported later, per file.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;

/// File extensions graft decodes (case-insensitive).
pub const IMAGE_EXTENSIONS: [&str; 6] = ["jpg", "jpeg", "png", "bmp", "gif", "webp"];

/// One labelled image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sample {
    pub path: PathBuf,
    pub label: usize,
}

/// How the validation set was chosen.
#[derive(Debug, Clone, PartialEq)]
pub enum SplitSource {
    /// The dataset's own `train/` and `val/` (or `validation/`) folders.
    Folders,
    /// A stratified random split of every class.
    Stratified { val_fraction: f64, seed: u64 },
}

/// Files left out while listing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Skipped {
    pub hidden: usize,
    pub not_image: usize,
}

#[derive(Debug, Clone)]
pub struct Dataset {
    /// Class names, sorted; a sample's label indexes this.
    pub classes: Vec<String>,
    pub train: Vec<Sample>,
    pub val: Vec<Sample>,
    pub split: SplitSource,
    pub skipped: Skipped,
    /// Classes with no image at all.
    pub empty_classes: Vec<String>,
}

impl Dataset {
    /// Images per class, train and validation together, in class order.
    pub fn class_counts(&self) -> Vec<usize> {
        let mut counts = vec![0usize; self.classes.len()];
        for sample in self.train.iter().chain(&self.val) {
            counts[sample.label] += 1;
        }
        counts
    }

    /// An error naming `root` and its classes unless at least two classes have images: with
    /// one class there is nothing to tell apart, and every recipe would "learn" a constant.
    pub fn check_classes(&self, root: &Path) -> Result<(), DatasetError> {
        let present: Vec<(String, usize)> = self
            .classes
            .iter()
            .cloned()
            .zip(self.class_counts())
            .filter(|(_, n)| *n > 0)
            .collect();
        if present.len() >= 2 {
            return Ok(());
        }
        let found = match present.first() {
            Some((class, n)) => format!(
                "only one class has images: `{class}` ({n} image{})",
                if *n == 1 { "" } else { "s" }
            ),
            None => "no class has images".to_string(),
        };
        Err(DatasetError::Invalid {
            path: root.to_path_buf(),
            problem: format!(
                "{found}; a classifier needs at least two classes: put each class's images in \
                 a sub-folder of its own (or list two or more labels in the CSV)"
            ),
        })
    }

    /// Why there is no validation split, when there is none (`None` when there is one).
    pub fn no_validation_reason(&self) -> Option<String> {
        if !self.val.is_empty() {
            return None;
        }
        Some(match &self.split {
            SplitSource::Folders => "the val/ folder holds no images".to_string(),
            SplitSource::Stratified { val_fraction, .. } if *val_fraction == 0.0 => {
                "the validation fraction is 0".to_string()
            }
            SplitSource::Stratified { .. } => {
                "no class has the two images a stratified split needs to keep one for \
                 validation"
                    .to_string()
            }
        })
    }
}

/// Options of the split used when the dataset has no split of its own.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SplitOptions {
    pub val_fraction: f64,
    pub seed: u64,
}

impl Default for SplitOptions {
    fn default() -> Self {
        Self {
            val_fraction: 0.2,
            seed: 0,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DatasetError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: {problem}", path.display())]
    Invalid { path: PathBuf, problem: String },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> DatasetError + '_ {
    move |source| DatasetError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn is_hidden(path: &Path) -> bool {
    path.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with('.'))
}

pub fn is_image_name(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| IMAGE_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
}

/// Open `root`: a CSV file, a folder with `train/` + `val/`, or a plain ImageFolder tree.
pub fn open(root: &Path, options: SplitOptions) -> Result<Dataset, DatasetError> {
    if !(0.0..1.0).contains(&options.val_fraction) {
        return Err(DatasetError::Invalid {
            path: root.to_path_buf(),
            problem: format!(
                "the validation fraction must be in [0, 1), got {}",
                options.val_fraction
            ),
        });
    }
    if root.is_file() {
        let (listing, skipped) = read_csv(root)?;
        return Ok(stratified(listing, skipped, options));
    }
    let train_dir = root.join("train");
    let val_dir = ["val", "validation"]
        .into_iter()
        .map(|v| root.join(v))
        .find(|p| p.is_dir());
    match val_dir {
        Some(val_dir) if train_dir.is_dir() => {
            let mut skipped = Skipped::default();
            let train = list_class_folders(&train_dir, &mut skipped)?;
            let val = list_class_folders(&val_dir, &mut skipped)?;
            let names: BTreeSet<String> = train.keys().chain(val.keys()).cloned().collect();
            let classes: Vec<String> = names.into_iter().collect();
            let empty_classes = classes
                .iter()
                .filter(|c| {
                    train.get(*c).is_none_or(Vec::is_empty) && val.get(*c).is_none_or(Vec::is_empty)
                })
                .cloned()
                .collect();
            let samples = |listing: &BTreeMap<String, Vec<PathBuf>>| -> Vec<Sample> {
                classes
                    .iter()
                    .enumerate()
                    .flat_map(|(label, c)| {
                        listing.get(c).into_iter().flatten().map(move |p| Sample {
                            path: p.clone(),
                            label,
                        })
                    })
                    .collect()
            };
            Ok(Dataset {
                train: samples(&train),
                val: samples(&val),
                classes,
                split: SplitSource::Folders,
                skipped,
                empty_classes,
            })
        }
        _ => {
            let mut skipped = Skipped::default();
            let listing = list_class_folders(root, &mut skipped)?;
            Ok(stratified(listing, skipped, options))
        }
    }
}

/// Every image under `root` (a folder in any layout, searched recursively; sorted), for
/// unlabelled uses such as self-supervised pretraining.
pub fn list_images(root: &Path) -> Result<(Vec<PathBuf>, Skipped), DatasetError> {
    let mut skipped = Skipped::default();
    let mut files = Vec::new();
    collect_images(root, &mut files, &mut skipped)?;
    files.sort();
    Ok((files, skipped))
}

/// Class name -> sorted image paths, from the sub-folders of `dir`.
fn list_class_folders(
    dir: &Path,
    skipped: &mut Skipped,
) -> Result<BTreeMap<String, Vec<PathBuf>>, DatasetError> {
    let mut classes = BTreeMap::new();
    for entry in std::fs::read_dir(dir).map_err(io_err(dir))? {
        let path = entry.map_err(io_err(dir))?.path();
        if is_hidden(&path) || !path.is_dir() {
            continue;
        }
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
        let Some(name) = name else { continue };
        let mut files = Vec::new();
        collect_images(&path, &mut files, skipped)?;
        files.sort();
        classes.insert(name, files);
    }
    if classes.is_empty() {
        return Err(DatasetError::Invalid {
            path: dir.to_path_buf(),
            problem: "no class folders: expected one sub-folder per class (ImageFolder layout) or a CSV file of path,label".into(),
        });
    }
    Ok(classes)
}

/// Image files under `dir`, recursively (class folders may have sub-folders).
fn collect_images(
    dir: &Path,
    out: &mut Vec<PathBuf>,
    skipped: &mut Skipped,
) -> Result<(), DatasetError> {
    let mut visited = std::collections::HashSet::new();
    collect_images_once(dir, out, skipped, &mut visited)
}

/// `visited` holds the real paths of the folders already listed: a symlink back to a parent
/// folder would otherwise recurse forever.
fn collect_images_once(
    dir: &Path,
    out: &mut Vec<PathBuf>,
    skipped: &mut Skipped,
    visited: &mut std::collections::HashSet<PathBuf>,
) -> Result<(), DatasetError> {
    let real = dir.canonicalize().map_err(io_err(dir))?;
    if visited.is_empty() {
        // The class folder's parent (the dataset root) bounds what symlinks may lead into.
        visited.insert(real.parent().unwrap_or(&real).to_path_buf());
    }
    if !visited.insert(real) {
        return Ok(());
    }
    for entry in std::fs::read_dir(dir).map_err(io_err(dir))? {
        let path = entry.map_err(io_err(dir))?.path();
        if is_hidden(&path) {
            skipped.hidden += 1;
        } else if path.is_dir() {
            // A folder symlink back into the dataset or above it would list images twice, or
            // under another class's label, or forever.
            let is_link =
                std::fs::symlink_metadata(&path).is_ok_and(|m| m.file_type().is_symlink());
            let target = path.canonicalize().ok();
            let loops = target
                .as_ref()
                .is_none_or(|t| visited.iter().any(|v| v.starts_with(t) || t.starts_with(v)));
            if is_link && loops {
                skipped.not_image += 1;
                continue;
            }
            collect_images_once(&path, out, skipped, visited)?;
        } else if is_image_name(&path) {
            out.push(path);
        } else {
            skipped.not_image += 1;
        }
    }
    Ok(())
}

/// A `path,label` CSV (header optional); relative paths are relative to the CSV's folder.
fn read_csv(file: &Path) -> Result<(BTreeMap<String, Vec<PathBuf>>, Skipped), DatasetError> {
    let text = std::fs::read_to_string(file).map_err(io_err(file))?;
    let base = file.parent().unwrap_or(Path::new("."));
    let mut classes: BTreeMap<String, Vec<PathBuf>> = BTreeMap::new();
    let mut skipped = Skipped::default();
    for (number, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || (number == 0 && line.eq_ignore_ascii_case("path,label")) {
            continue;
        }
        let Some((path, label)) = line.rsplit_once(',') else {
            return Err(DatasetError::Invalid {
                path: file.to_path_buf(),
                problem: format!("line {}: expected `path,label`, got `{line}`", number + 1),
            });
        };
        let path = base.join(path.trim());
        if is_hidden(&path) {
            skipped.hidden += 1;
        } else if !is_image_name(&path) {
            skipped.not_image += 1;
        } else {
            classes
                .entry(label.trim().to_string())
                .or_default()
                .push(path);
        }
    }
    if classes.is_empty() {
        return Err(DatasetError::Invalid {
            path: file.to_path_buf(),
            problem: "no image rows".into(),
        });
    }
    for files in classes.values_mut() {
        files.sort();
    }
    Ok((classes, skipped))
}

/// Per class: shuffle with the seed, put `round(n * fraction)` in validation (at least one when
/// the class has two or more images and the fraction is positive).
fn stratified(
    listing: BTreeMap<String, Vec<PathBuf>>,
    skipped: Skipped,
    options: SplitOptions,
) -> Dataset {
    let mut rng = ChaCha8Rng::seed_from_u64(options.seed);
    let (mut train, mut val, mut empty_classes) = (Vec::new(), Vec::new(), Vec::new());
    let classes: Vec<String> = listing.keys().cloned().collect();
    for (label, (name, mut files)) in listing.into_iter().enumerate() {
        if files.is_empty() {
            empty_classes.push(name);
            continue;
        }
        files.shuffle(&mut rng);
        let n = files.len();
        let mut n_val = (n as f64 * options.val_fraction).round() as usize;
        if options.val_fraction > 0.0 && n >= 2 {
            n_val = n_val.clamp(1, n - 1);
        }
        for (i, path) in files.into_iter().enumerate() {
            let sample = Sample { path, label };
            if i < n_val {
                val.push(sample)
            } else {
                train.push(sample)
            }
        }
    }
    Dataset {
        classes,
        train,
        val,
        split: SplitSource::Stratified {
            val_fraction: options.val_fraction,
            seed: options.seed,
        },
        skipped,
        empty_classes,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn touch(path: &Path) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, b"x").unwrap();
    }

    #[test]
    fn image_folder_split_is_stratified_seeded_and_skips_junk() {
        let dir = tempfile::tempdir().unwrap();
        for i in 0..10 {
            touch(&dir.path().join(format!("cats/{i}.jpg")));
        }
        for i in 0..5 {
            touch(&dir.path().join(format!("dogs/sub/{i}.PNG")));
        }
        touch(&dir.path().join("dogs/.DS_Store"));
        touch(&dir.path().join("dogs/notes.txt"));
        std::fs::create_dir_all(dir.path().join("empty")).unwrap();
        std::fs::create_dir_all(dir.path().join(".git")).unwrap();

        let ds = open(dir.path(), SplitOptions::default()).unwrap();
        assert_eq!(ds.classes, ["cats", "dogs", "empty"]);
        assert_eq!(ds.empty_classes, ["empty"]);
        assert_eq!(
            ds.skipped,
            Skipped {
                hidden: 1,
                not_image: 1
            }
        );
        let count = |set: &[Sample], label| set.iter().filter(|s| s.label == label).count();
        assert_eq!((count(&ds.train, 0), count(&ds.val, 0)), (8, 2));
        assert_eq!((count(&ds.train, 1), count(&ds.val, 1)), (4, 1));

        let again = open(dir.path(), SplitOptions::default()).unwrap();
        assert_eq!(again.val, ds.val, "same seed, same split");
        let other = open(
            dir.path(),
            SplitOptions {
                seed: 7,
                ..SplitOptions::default()
            },
        )
        .unwrap();
        assert_ne!(other.val, ds.val, "another seed, another split");
    }

    #[test]
    fn train_and_val_folders_are_the_split() {
        let dir = tempfile::tempdir().unwrap();
        touch(&dir.path().join("train/a/1.jpg"));
        touch(&dir.path().join("train/b/2.jpg"));
        touch(&dir.path().join("validation/b/3.jpg"));
        let ds = open(dir.path(), SplitOptions::default()).unwrap();
        assert_eq!(ds.split, SplitSource::Folders);
        assert_eq!(ds.classes, ["a", "b"]);
        assert_eq!(ds.train.len(), 2);
        assert_eq!(
            ds.val,
            [Sample {
                path: dir.path().join("validation/b/3.jpg"),
                label: 1
            }]
        );
    }

    #[test]
    fn csv_listing_with_relative_paths() {
        let dir = tempfile::tempdir().unwrap();
        let csv = dir.path().join("list.csv");
        std::fs::write(
            &csv,
            "path,label\nimg/1.jpg,rose\nimg/2.jpg,tulip\nimg/3.jpg,rose\nreadme.md,rose\n",
        )
        .unwrap();
        let ds = open(
            &csv,
            SplitOptions {
                val_fraction: 0.5,
                seed: 1,
            },
        )
        .unwrap();
        assert_eq!(ds.classes, ["rose", "tulip"]);
        assert_eq!(ds.train.len() + ds.val.len(), 3);
        assert_eq!(ds.skipped.not_image, 1);
        assert!(
            ds.train
                .iter()
                .chain(&ds.val)
                .all(|s| s.path.starts_with(dir.path().join("img")))
        );
        let bad = dir.path().join("bad.csv");
        std::fs::write(&bad, "no comma here\n").unwrap();
        let err = open(&bad, SplitOptions::default()).unwrap_err().to_string();
        assert!(err.contains("bad.csv") && err.contains("line 1"), "{err}");
    }

    #[test]
    fn flowers_splits_80_20_per_class() {
        let flowers = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data/flowers");
        let ds = open(&flowers, SplitOptions::default()).unwrap();
        assert_eq!(
            ds.classes,
            ["daisy", "dandelion", "roses", "sunflowers", "tulips"]
        );
        assert_eq!((ds.train.len(), ds.val.len()), (1200, 300));
        for label in 0..5 {
            assert_eq!(ds.val.iter().filter(|s| s.label == label).count(), 60);
        }
        // README.md and LICENSE.txt at the root are not class folders' files.
        assert_eq!(ds.skipped, Skipped::default());
    }
}

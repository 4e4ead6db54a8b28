//! `graft train --exclude FILE`: images to leave out of training, listed in a CSV with a `path`
//! column (such as `graft doctor --out DIR`'s label_issues.csv) or one path per line. graft
//! only leaves them out; it never moves, deletes or relabels a file.

use std::collections::HashSet;
use std::path::{Component, Path, PathBuf};

use super::dataset::{Dataset, DatasetError};

/// The paths listed in `file`. A first line with a `path` column (comma-separated, any case)
/// makes it a CSV whose `path` column is read; otherwise every non-empty line not starting with
/// `#` is a path. Relative paths are relative to `file`'s folder (as in a dataset CSV).
pub fn read_list(file: &Path) -> Result<Vec<PathBuf>, DatasetError> {
    let io = |source| DatasetError::Io {
        path: file.to_path_buf(),
        source,
    };
    let text = std::fs::read_to_string(file).map_err(io)?;
    let base = file.parent().unwrap_or(Path::new("."));
    let first = text.lines().find(|l| !l.trim().is_empty()).unwrap_or("");
    let column = first
        .split(',')
        .position(|c| c.trim().trim_matches('"').eq_ignore_ascii_case("path"));
    let listed: Vec<String> = match column {
        Some(column) => {
            let mut reader = csv::ReaderBuilder::new()
                .flexible(true)
                .from_reader(text.as_bytes());
            let mut out = Vec::new();
            for (number, record) in reader.records().enumerate() {
                let record = record.map_err(|e| DatasetError::Invalid {
                    path: file.to_path_buf(),
                    problem: format!("row {}: {e}", number + 2),
                })?;
                match record.get(column).map(str::trim) {
                    Some(path) if !path.is_empty() => out.push(path.to_string()),
                    _ => {}
                }
            }
            out
        }
        None => text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(String::from)
            .collect(),
    };
    Ok(listed.into_iter().map(|p| base.join(p)).collect())
}

/// A path to compare by: the file's canonical path when it exists, else the absolute path with
/// `.` and `..` resolved by name.
fn identity(path: &Path) -> PathBuf {
    if let Ok(canonical) = path.canonicalize() {
        return canonical;
    }
    let absolute = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    let mut out = PathBuf::new();
    for part in absolute.components() {
        match part {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}

/// What `--exclude` did to a dataset.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Exclusion {
    /// Training images left out.
    pub excluded: Vec<PathBuf>,
    /// Listed images in the validation split: kept, so that validation is the same images as
    /// without `--exclude` and the two runs' accuracies compare.
    pub in_validation: Vec<PathBuf>,
    /// Listed paths that are not images of the dataset.
    pub not_found: Vec<PathBuf>,
}

/// Leave the `listed` images out of `dataset`'s training split (after the split is made, so
/// the split is the same as without them).
pub fn exclude(dataset: &mut Dataset, listed: &[PathBuf]) -> Exclusion {
    let wanted: HashSet<PathBuf> = listed.iter().map(|p| identity(p)).collect();
    let mut found = HashSet::new();
    let mut out = Exclusion::default();
    dataset.train.retain(|sample| {
        let id = identity(&sample.path);
        if wanted.contains(&id) {
            out.excluded.push(sample.path.clone());
            found.insert(id);
            false
        } else {
            true
        }
    });
    for sample in &dataset.val {
        let id = identity(&sample.path);
        if wanted.contains(&id) {
            out.in_validation.push(sample.path.clone());
            found.insert(id);
        }
    }
    out.not_found = listed
        .iter()
        .filter(|p| !found.contains(&identity(p)))
        .cloned()
        .collect();
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::dataset::{SplitOptions, open};

    #[test]
    fn a_listed_training_image_is_left_out_and_the_rest_reported() {
        let dir = tempfile::tempdir().unwrap();
        for class in ["a", "b"] {
            for i in 0..5 {
                let file = dir.path().join(format!("data/{class}/{i}.jpg"));
                std::fs::create_dir_all(file.parent().unwrap()).unwrap();
                std::fs::write(&file, b"x").unwrap();
            }
        }
        let split = SplitOptions {
            val_fraction: 0.2,
            seed: 0,
        };
        let mut data = open(&dir.path().join("data"), split).unwrap();
        let before = data.clone();
        let train_one = data.train[0].path.clone();
        let val_one = data.val[0].path.clone();
        // A CSV in another folder: one path relative to it, one absolute, one missing.
        let list = dir.path().join("lists/issues.csv");
        std::fs::create_dir_all(list.parent().unwrap()).unwrap();
        let relative = Path::new("..").join(train_one.strip_prefix(dir.path()).unwrap());
        std::fs::write(
            &list,
            format!(
                "path,given,suggested,score\n{},a,b,0.1\n{},a,b,0.2\n../data/a/missing.jpg,a,b,0.3\n",
                relative.display(),
                val_one.display()
            ),
        )
        .unwrap();
        let listed = read_list(&list).unwrap();
        assert_eq!(listed.len(), 3);
        let done = exclude(&mut data, &listed);
        assert_eq!(done.excluded, vec![train_one.clone()]);
        assert_eq!(done.in_validation, vec![val_one]);
        assert_eq!(
            done.not_found,
            vec![list.parent().unwrap().join("../data/a/missing.jpg")]
        );
        assert_eq!(data.train.len(), before.train.len() - 1);
        assert!(data.train.iter().all(|s| s.path != train_one));
        assert_eq!(data.val, before.val, "validation is untouched");

        // One path per line, comments and blank lines skipped.
        let lines = dir.path().join("list.txt");
        std::fs::write(&lines, format!("# suspects\n\n{}\n", train_one.display())).unwrap();
        assert_eq!(read_list(&lines).unwrap(), vec![train_one]);
    }
}

//! Out-of-sample predicted probabilities by stratified, seeded K-fold cross-validation: every
//! labelled row is scored by graft's logistic regression ([`classical::fit_logreg`]) fitted on
//! the other folds, so no row is judged by a model that saw its own label.

use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

use crate::features::FeatureMatrix;
use crate::train::classical::{self, ClassicalOptions, FitError};

/// The fold (0..k) of each row: per class, the rows are shuffled with `seed` and dealt
/// round-robin, continuing where the previous class stopped, so every fold gets each class's
/// share (within one row) and the folds' sizes differ by at most one.
pub fn stratified_folds(labels: &[usize], k: usize, seed: u64) -> Vec<usize> {
    let k = k.max(1);
    let classes = labels.iter().max().map_or(0, |m| m + 1);
    let mut by_class: Vec<Vec<usize>> = vec![Vec::new(); classes];
    for (row, &label) in labels.iter().enumerate() {
        by_class[label].push(row);
    }
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut fold = vec![0; labels.len()];
    let mut next = 0;
    for rows in &mut by_class {
        rows.shuffle(&mut rng);
        for &row in rows.iter() {
            fold[row] = next;
            next = (next + 1) % k;
        }
    }
    fold
}

/// The rows of `data` whose `fold[row]` is (`inside`) or is not (`!inside`) `which`.
fn subset(data: &FeatureMatrix, fold: &[usize], which: usize, inside: bool) -> FeatureMatrix {
    let mut out = FeatureMatrix {
        dim: data.dim,
        ..FeatureMatrix::default()
    };
    for (row, &f) in fold.iter().enumerate() {
        if (f == which) == inside {
            out.rows.extend_from_slice(data.row(row));
            out.labels.push(data.labels[row]);
        }
    }
    out
}

/// Out-of-sample class probabilities of every row of `data` (`[rows, classes.len()]`,
/// row-major): `k`-fold stratified cross-validation with `seed`, logistic regression with
/// `options` fitted on the other folds. The folds are fitted in parallel.
pub fn out_of_fold_probabilities(
    data: &FeatureMatrix,
    classes: &[String],
    k: usize,
    seed: u64,
    options: &ClassicalOptions,
) -> Result<Vec<f32>, FitError> {
    if data.is_empty() {
        return Err(FitError::Empty);
    }
    // Each fit holds its rows and an f64 standardised copy; two run at a time on most machines.
    classical::check_memory(
        "cross-validated logistic regression",
        data.len() * 2,
        data.dim,
    )?;
    let k = k.clamp(2, data.len().max(2));
    let fold = stratified_folds(&data.labels, k, seed);
    let per_fold: Vec<Vec<f32>> = (0..k)
        .into_par_iter()
        .map(|which| -> Result<Vec<f32>, FitError> {
            let train = subset(data, &fold, which, false);
            let held_out = subset(data, &fold, which, true);
            if held_out.is_empty() {
                return Ok(Vec::new());
            }
            let head = classical::fit_logreg(&train, classes, options)?;
            Ok(head.scores(&held_out.rows, data.dim))
        })
        .collect::<Result<_, FitError>>()?;
    // Put each fold's rows back in their places.
    let n_classes = classes.len();
    let mut probabilities = vec![0.0; data.len() * n_classes];
    let mut cursor = vec![0; k];
    for (row, &f) in fold.iter().enumerate() {
        let at = cursor[f];
        probabilities[row * n_classes..(row + 1) * n_classes]
            .copy_from_slice(&per_fold[f][at * n_classes..(at + 1) * n_classes]);
        cursor[f] += 1;
    }
    Ok(probabilities)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folds_are_stratified_balanced_seeded_and_cover_each_row_once() {
        // Classes of 53, 27 and 7 rows, interleaved.
        let labels: Vec<usize> = (0..80)
            .map(|i| usize::from(i % 3 == 0))
            .chain(std::iter::repeat_n(2, 7))
            .collect();
        let k = 5;
        let fold = stratified_folds(&labels, k, 7);
        assert_eq!(fold.len(), labels.len(), "one fold per row");
        assert!(fold.iter().all(|&f| f < k));
        let sizes: Vec<usize> = (0..k)
            .map(|f| fold.iter().filter(|&&x| x == f).count())
            .collect();
        assert!(
            sizes.iter().max().unwrap() - sizes.iter().min().unwrap() <= 1,
            "{sizes:?}"
        );
        for class in 0..3 {
            let n = labels.iter().filter(|&&l| l == class).count();
            for f in 0..k {
                let in_fold = (0..labels.len())
                    .filter(|&r| labels[r] == class && fold[r] == f)
                    .count();
                // Each fold holds its share of every class, within one row.
                assert!(
                    in_fold == n / k || in_fold == n.div_ceil(k),
                    "class {class} fold {f}: {in_fold} of {n}"
                );
            }
        }
        assert_eq!(
            stratified_folds(&labels, k, 7),
            fold,
            "same seed, same folds"
        );
        assert_ne!(
            stratified_folds(&labels, k, 8),
            fold,
            "another seed, other folds"
        );
    }

    #[test]
    fn out_of_fold_probabilities_score_each_row_without_its_own_label() {
        // Two classes apart along axis 0, and one row of class 0 sitting inside class 1: scored
        // by models that never saw it, it looks like class 1.
        let mut data = FeatureMatrix {
            dim: 2,
            ..FeatureMatrix::default()
        };
        for i in 0..40 {
            let class = i % 2;
            let jitter = ((i * 37) % 11) as f32 / 11.0;
            data.rows
                .extend([if class == 0 { -2.0 } else { 2.0 } + jitter, jitter]);
            data.labels.push(class);
        }
        data.rows.extend([2.3, 0.4]);
        data.labels.push(0);
        let classes = vec!["a".to_string(), "b".to_string()];
        let p =
            out_of_fold_probabilities(&data, &classes, 5, 0, &ClassicalOptions::default()).unwrap();
        assert_eq!(p.len(), data.len() * 2);
        for row in p.chunks(2) {
            assert!((row[0] + row[1] - 1.0).abs() < 1e-4, "{row:?}");
        }
        let last = data.len() - 1;
        assert!(
            p[last * 2 + 1] > 0.5,
            "the odd row looks like class b: {:?}",
            &p[last * 2..]
        );
        let correct = (0..last)
            .filter(|&r| p[r * 2 + data.labels[r]] > 0.5)
            .count();
        assert_eq!(correct, last, "the clean rows are predicted right");
    }
}

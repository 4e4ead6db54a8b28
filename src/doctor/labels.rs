//! Label issues by confident learning (Northcutt, Jiang & Chuang, "Confident Learning:
//! Estimating Uncertainty in Dataset Labels", JAIR 2021), as cleanlab implements it:
//! per-class thresholds, the confident joint calibrated to the label counts, and cleanlab's
//! default filter `prune_by_noise_rate`, on out-of-sample probabilities ([`super::crossval`]).
//! The score of a row is its self-confidence, the out-of-sample probability of its given label.

use std::path::{Path, PathBuf};

use serde::Serialize;

use super::crossval::out_of_fold_probabilities;
use super::{Finding, Severity};
use crate::features::FeatureMatrix;
use crate::train::classical::{ClassicalOptions, FitError};

/// Options of the label-issue check.
#[derive(Debug, Clone, PartialEq)]
pub struct LabelIssueOptions {
    /// Folds of the cross-validation.
    pub folds: usize,
    /// Seed of the folds.
    pub seed: u64,
    /// The logistic regression scored out of fold.
    pub logreg: ClassicalOptions,
}

/// L2 penalty of the cross-validated logistic regression (linfa's alpha = 1 / scikit-learn's C,
/// on standardised features). Far stronger than the `logreg` recipe's 1.0: a weakly penalised
/// model on 1280 features separates its training folds and predicts 0 or 1, and confident
/// learning needs graded probabilities. On bench/label_noise.sh's flowers at 5% noise
/// (scikit-learn, standardised lite0 features) alpha 1, 10, 100 and 1000 gave AUROC 0.983,
/// 0.986, 0.990 and 0.992, and precision of the flagged set 0.40, 0.47, 0.58 and 0.67.
pub const LABEL_ISSUE_ALPHA: f64 = 1000.0;

impl Default for LabelIssueOptions {
    fn default() -> Self {
        Self {
            folds: 5,
            seed: 0,
            logreg: ClassicalOptions {
                logreg_alpha: LABEL_ISSUE_ALPHA,
                ..ClassicalOptions::default()
            },
        }
    }
}

/// What confident learning found on a set of predicted probabilities.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ConfidentLearning {
    /// Per class: the mean probability of the class over the rows labelled with it.
    pub thresholds: Vec<f64>,
    /// `[given][true]`: rows labelled `given` whose confident guess is `true`.
    pub confident_joint: Vec<Vec<usize>>,
    /// The confident joint rescaled so each row sums to its label count (rounded keeping
    /// the sums).
    pub calibrated_joint: Vec<Vec<usize>>,
    /// Rows flagged by `prune_by_noise_rate`, ascending.
    pub issues: Vec<usize>,
}

/// The largest entry of `row` (the first of equals).
fn argmax(row: &[f32]) -> usize {
    let mut best = 0;
    for (j, &v) in row.iter().enumerate() {
        if v > row[best] {
            best = j;
        }
    }
    best
}

/// `values` rounded to integers whose sum is the rounded sum of `values`; the entries with the
/// largest rounding loss change first (cleanlab's `round_preserving_sum`).
fn round_preserving_sum(values: &[f64]) -> Vec<usize> {
    let mut ints: Vec<f64> = values.iter().map(|v| v.round()).collect();
    let target = values.iter().sum::<f64>().round();
    let mut order: Vec<usize> = (0..values.len()).collect();
    order.sort_by(|&a, &b| {
        (values[b] - ints[b])
            .partial_cmp(&(values[a] - ints[a]))
            .unwrap_or(std::cmp::Ordering::Equal)
    });
    let mut diff = target - ints.iter().sum::<f64>();
    while diff.abs() > 0.5 {
        let step = diff.signum();
        for &i in order.iter().take(diff.abs() as usize) {
            ints[i] += step;
        }
        diff = target - ints.iter().sum::<f64>();
    }
    ints.iter().map(|v| v.max(0.0) as usize).collect()
}

/// Confident learning on `probabilities` (`[rows, classes]`, out-of-sample) of rows with the
/// given `labels`.
pub fn confident_learning(
    probabilities: &[f32],
    labels: &[usize],
    classes: usize,
) -> ConfidentLearning {
    let p = |row: usize| &probabilities[row * classes..(row + 1) * classes];
    let mut counts = vec![0usize; classes];
    let mut sums = vec![0.0f64; classes];
    for (row, &label) in labels.iter().enumerate() {
        counts[label] += 1;
        sums[label] += p(row)[label] as f64;
    }
    let thresholds: Vec<f64> = sums
        .iter()
        .zip(&counts)
        .map(|(s, &n)| if n > 0 { s / n as f64 } else { 0.0 })
        .collect();

    // Each row's confident guess: the one class at or above its threshold, or the most probable
    // class when several are (as cleanlab does); rows with none are not counted.
    let mut joint = vec![vec![0usize; classes]; classes];
    for (row, &label) in labels.iter().enumerate() {
        let probs = p(row);
        let confident: Vec<usize> = (0..classes)
            .filter(|&j| probs[j] as f64 >= thresholds[j] - 1e-6)
            .collect();
        let guess = match confident.as_slice() {
            [] => continue,
            [only] => *only,
            _ => argmax(probs),
        };
        joint[label][guess] += 1;
    }
    // Every class keeps at least one correctly labelled row.
    for (j, row) in joint.iter_mut().enumerate() {
        row[j] = row[j].max(1);
    }

    // Calibrate: each row of the joint to its label count, then the whole to the row count.
    let total: usize = counts.iter().sum();
    let mut scaled: Vec<Vec<f64>> = joint
        .iter()
        .zip(&counts)
        .map(|(row, &n)| {
            let sum = (row.iter().sum::<usize>() as f64).max(1e-6);
            row.iter().map(|&c| c as f64 / sum * n as f64).collect()
        })
        .collect();
    let scaled_total: f64 = scaled.iter().flatten().sum::<f64>().max(1e-6);
    for v in scaled.iter_mut().flatten() {
        *v *= total as f64 / scaled_total;
    }
    let calibrated: Vec<Vec<usize>> = scaled.iter().map(|r| round_preserving_sum(r)).collect();
    let prune = keep_at_least_one_per_class(&calibrated);

    // prune_by_noise_rate: of the rows labelled `given`, flag the `prune[given][true]` with the
    // largest margin p(true) - p(given), for each `true` other than `given`.
    let mut flagged = vec![false; labels.len()];
    for (given, to_prune) in prune.iter().enumerate() {
        let rows: Vec<usize> = (0..labels.len()).filter(|&r| labels[r] == given).collect();
        for truth in (0..classes).filter(|&t| t != given) {
            let n = to_prune[truth];
            if n == 0 {
                continue;
            }
            let mut by_margin = rows.clone();
            let margin = |r: usize| p(r)[truth] - p(r)[given];
            by_margin.sort_by(|&a, &b| margin(b).total_cmp(&margin(a)).then(a.cmp(&b)));
            for &r in by_margin.iter().take(n) {
                flagged[r] = true;
            }
        }
    }
    // A row whose own label is the model's prediction is not an issue (as cleanlab).
    let issues = (0..labels.len())
        .filter(|&r| flagged[r] && argmax(p(r)) != labels[r])
        .collect();
    ConfidentLearning {
        thresholds,
        confident_joint: joint,
        calibrated_joint: calibrated,
        issues,
    }
}

/// cleanlab's `_keep_at_least_n_per_class` with n = 1 on `[given][true]` counts: a class whose
/// diagonal is 0 gets 1, taken evenly from the noise counts of its given-label row.
fn keep_at_least_one_per_class(joint: &[Vec<usize>]) -> Vec<Vec<usize>> {
    let classes = joint.len();
    let mut out: Vec<Vec<f64>> = joint
        .iter()
        .map(|r| r.iter().map(|&c| c as f64).collect())
        .collect();
    for (given, row) in out.iter_mut().enumerate() {
        let raised = 1.0 - (joint[given][given] as f64).min(1.0);
        let noisy = (0..classes)
            .filter(|&t| joint[given][t] > 0 && t != given)
            .count()
            .max(1) as f64;
        for (truth, count) in row.iter_mut().enumerate() {
            *count = if truth == given {
                count.max(1.0)
            } else {
                (*count - raised / noisy).max(0.0)
            };
        }
    }
    out.iter().map(|r| round_preserving_sum(r)).collect()
}

/// Each row's self-confidence: its out-of-sample probability of its given label, in [0, 1]
/// (low: the label is likely wrong).
pub fn self_confidence(probabilities: &[f32], labels: &[usize], classes: usize) -> Vec<f32> {
    labels
        .iter()
        .enumerate()
        .map(|(row, &label)| probabilities[row * classes + label])
        .collect()
}

/// One image whose label looks wrong.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LabelIssue {
    #[serde(serialize_with = "crate::util::lossy_path")]
    pub path: PathBuf,
    pub given: String,
    /// The class the cross-validated model predicts.
    pub suggested: String,
    /// Self-confidence: the out-of-sample probability of the given label (low: likely wrong).
    pub score: f32,
}

/// Label issues of a labelled set, with every row's score.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LabelIssues {
    /// How the issues were found, in words.
    pub method: String,
    pub folds: usize,
    pub seed: u64,
    /// Rows examined.
    pub rows: usize,
    /// Per class name: its confident-learning threshold.
    pub thresholds: Vec<(String, f64)>,
    /// `[given][true]` counts, classes in the dataset's order.
    pub confident_joint: Vec<Vec<usize>>,
    /// The suspected images, least confident first.
    pub issues: Vec<LabelIssue>,
    /// Every row, in the order of the data (for ranking and for benchmarks).
    #[serde(skip)]
    pub all: Vec<LabelIssue>,
}

/// Label issues of the rows of `data` (features, labels and paths), by confident learning on
/// out-of-fold probabilities of graft's logistic regression.
pub fn find_label_issues(
    data: &FeatureMatrix,
    classes: &[String],
    options: &LabelIssueOptions,
) -> Result<LabelIssues, FitError> {
    let probabilities =
        out_of_fold_probabilities(data, classes, options.folds, options.seed, &options.logreg)?;
    let k = classes.len();
    let learned = confident_learning(&probabilities, &data.labels, k);
    let score = self_confidence(&probabilities, &data.labels, k);
    let all: Vec<LabelIssue> = (0..data.len())
        .map(|row| LabelIssue {
            path: data.paths.get(row).cloned().unwrap_or_default(),
            given: classes[data.labels[row]].clone(),
            suggested: classes[argmax(&probabilities[row * k..(row + 1) * k])].clone(),
            score: score[row],
        })
        .collect();
    let mut issues: Vec<LabelIssue> = learned.issues.iter().map(|&r| all[r].clone()).collect();
    issues.sort_by(|a, b| a.score.total_cmp(&b.score).then(a.path.cmp(&b.path)));
    Ok(LabelIssues {
        method: format!(
            "confident learning (prune_by_noise_rate) on {}-fold out-of-sample logistic regression; score = self-confidence",
            options.folds
        ),
        folds: options.folds,
        seed: options.seed,
        rows: data.len(),
        thresholds: classes.iter().cloned().zip(learned.thresholds).collect(),
        confident_joint: learned.confident_joint,
        issues,
        all,
    })
}

/// The `label-issues` finding: a warning listing the suspected images, or none.
pub fn label_finding(found: &LabelIssues) -> Option<Finding> {
    if found.issues.is_empty() {
        return None;
    }
    Some(Finding {
        severity: Severity::Warning,
        check: "label-issues",
        measured: format!(
            "{} of {} labelled images look mislabelled (confident learning on {}-fold out-of-sample predictions)",
            found.issues.len(),
            found.rows,
            found.folds
        ),
        why: "wrong labels teach the model wrong answers and make validation accuracy wrong too",
        action: "look at each listed image and fix its label, or train without them with `graft train ... --exclude label_issues.csv` (written by `graft doctor --out DIR`)".into(),
        files: found.issues.iter().map(|i| i.path.clone()).collect(),
        details: found
            .issues
            .iter()
            .map(|i| {
                format!(
                    "{}: labelled `{}`, looks like `{}` (self-confidence {:.3})",
                    i.path.display(),
                    i.given,
                    i.suggested,
                    i.score
                )
            })
            .collect(),
    })
}

/// Write `rows` as a CSV of `path,given,suggested,score` to `file`.
pub fn write_csv(rows: &[LabelIssue], file: &Path) -> std::io::Result<()> {
    let with_file =
        |e: std::io::Error| std::io::Error::new(e.kind(), format!("{}: {e}", file.display()));
    let mut out = csv::Writer::from_writer(std::io::BufWriter::new(
        std::fs::File::create(file).map_err(with_file)?,
    ));
    out.write_record(["path", "given", "suggested", "score"])
        .map_err(|e| with_file(e.into()))?;
    for r in rows {
        out.write_record([
            r.path.to_string_lossy().as_ref(),
            &r.given,
            &r.suggested,
            &format!("{:.6}", r.score),
        ])
        .map_err(|e| with_file(e.into()))?;
    }
    out.flush().map_err(with_file)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Three classes of 10 rows. Rows 0..10 are labelled 0, 10..20 labelled 1, 20..30
    /// labelled 2; the model is sure of the true class of every row, and rows 3 and 4 (labelled
    /// 0) and 25 (labelled 2) are really class 1 (flipped labels).
    fn flipped() -> (Vec<f32>, Vec<usize>) {
        let mut labels = Vec::new();
        let mut probs = Vec::new();
        for row in 0..30 {
            let given = row / 10;
            let truth = if [3, 4, 25].contains(&row) { 1 } else { given };
            let mut p = vec![0.05; 3];
            p[truth] = 0.9;
            labels.push(given);
            probs.extend(p);
        }
        (probs, labels)
    }

    #[test]
    fn confident_learning_finds_the_flipped_labels() {
        let (probs, labels) = flipped();
        let found = confident_learning(&probs, &labels, 3);
        // Mean p(class) over the rows labelled with it: (8 * 0.9 + 2 * 0.05) / 10 for class 0,
        // 0.9 for class 1, (9 * 0.9 + 0.05) / 10 for class 2.
        for (t, want) in found.thresholds.iter().zip([0.73, 0.9, 0.815]) {
            assert!((t - want).abs() < 1e-6, "{:?}", found.thresholds);
        }
        assert_eq!(
            found.confident_joint,
            vec![vec![8, 2, 0], vec![0, 10, 0], vec![0, 1, 9]]
        );
        // Rows sum to the label counts already, so calibration keeps the joint.
        assert_eq!(found.calibrated_joint, found.confident_joint);
        assert_eq!(found.issues, vec![3, 4, 25]);
        let score = self_confidence(&probs, &labels, 3);
        assert_eq!(score.len(), 30);
        for (r, s) in score.iter().enumerate() {
            assert_eq!(*s < 0.2, [3, 4, 25].contains(&r), "row {r}: {s}");
        }
    }

    #[test]
    fn calibration_rescales_each_row_to_its_label_count() {
        // Five rows labelled 0 are undecided (below every threshold), so class 0's row of the
        // joint counts 5 rows (3:2); calibration brings it back to 10, keeping its proportions.
        let (mut probs, labels) = flipped();
        for r in [0, 1, 5, 6, 7] {
            probs[r * 3..r * 3 + 3].copy_from_slice(&[0.34, 0.33, 0.33]);
        }
        let found = confident_learning(&probs, &labels, 3);
        assert_eq!(found.confident_joint[0], vec![3, 2, 0]);
        assert_eq!(found.calibrated_joint[0], vec![6, 4, 0]);
        assert_eq!(
            found
                .calibrated_joint
                .iter()
                .map(|r| r.iter().sum::<usize>())
                .collect::<Vec<_>>(),
            vec![10, 10, 10]
        );
        // Prune 4 from class 0's rows by margin p(1) - p(0): the two flips and two undecided
        // rows; those predict their own class 0, so they are not issues.
        assert_eq!(found.issues, vec![3, 4, 25]);
    }

    #[test]
    fn rounding_keeps_the_sum() {
        assert_eq!(round_preserving_sum(&[0.4, 0.4, 0.2]), vec![1, 0, 0]);
        assert_eq!(round_preserving_sum(&[2.5, 2.5]).iter().sum::<usize>(), 5);
        assert_eq!(round_preserving_sum(&[3.0, 4.0]), vec![3, 4]);
    }

    #[test]
    fn the_finding_lists_the_suspects_least_confident_first() {
        let issue = |path: &str, score| LabelIssue {
            path: path.into(),
            given: "a".into(),
            suggested: "b".into(),
            score,
        };
        let found = LabelIssues {
            method: String::new(),
            folds: 5,
            seed: 0,
            rows: 30,
            thresholds: Vec::new(),
            confident_joint: Vec::new(),
            issues: vec![issue("x.jpg", 0.1), issue("y.jpg", 0.2)],
            all: Vec::new(),
        };
        let f = label_finding(&found).unwrap();
        assert_eq!(f.check, "label-issues");
        assert_eq!(f.severity, Severity::Warning);
        assert_eq!(
            f.files,
            vec![PathBuf::from("x.jpg"), PathBuf::from("y.jpg")]
        );
        assert!(f.measured.starts_with("2 of 30"), "{}", f.measured);
        let none = LabelIssues {
            issues: Vec::new(),
            ..found
        };
        assert!(label_finding(&none).is_none());
    }
}

//! Classification metrics: accuracy, per-class precision / recall / F1, confusion matrix.

use serde::{Deserialize, Serialize};

/// Scores of one class.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClassMetrics {
    pub class: String,
    pub precision: f64,
    pub recall: f64,
    pub f1: f64,
    /// Number of true examples of the class.
    pub support: usize,
}

/// Scores of a set of predictions against the truth.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Metrics {
    pub accuracy: f64,
    pub macro_f1: f64,
    pub per_class: Vec<ClassMetrics>,
    /// `confusion[true][predicted]` counts.
    pub confusion: Vec<Vec<usize>>,
    pub count: usize,
}

impl Metrics {
    /// Metrics of `predicted` against `truth` (class indices into `classes`).
    pub fn compute(truth: &[usize], predicted: &[usize], classes: &[String]) -> Self {
        assert_eq!(truth.len(), predicted.len(), "one prediction per example");
        let k = classes.len();
        let mut confusion = vec![vec![0usize; k]; k];
        for (&t, &p) in truth.iter().zip(predicted) {
            confusion[t][p] += 1;
        }
        let correct: usize = (0..k).map(|c| confusion[c][c]).sum();
        let ratio = |a: usize, b: usize| if b == 0 { 0.0 } else { a as f64 / b as f64 };
        let per_class: Vec<ClassMetrics> = classes
            .iter()
            .enumerate()
            .map(|(c, name)| {
                let true_positive = confusion[c][c];
                let support: usize = confusion[c].iter().sum();
                let predicted_as: usize = confusion.iter().map(|row| row[c]).sum();
                let precision = ratio(true_positive, predicted_as);
                let recall = ratio(true_positive, support);
                let f1 = if precision + recall == 0.0 {
                    0.0
                } else {
                    2.0 * precision * recall / (precision + recall)
                };
                ClassMetrics {
                    class: name.clone(),
                    precision,
                    recall,
                    f1,
                    support,
                }
            })
            .collect();
        let macro_f1 = per_class.iter().map(|c| c.f1).sum::<f64>() / k.max(1) as f64;
        Self {
            accuracy: ratio(correct, truth.len()),
            macro_f1,
            per_class,
            confusion,
            count: truth.len(),
        }
    }

    /// A plain-text table for the terminal.
    pub fn table(&self) -> String {
        let width = self
            .per_class
            .iter()
            .map(|c| c.class.len())
            .max()
            .unwrap_or(5)
            .max(5);
        let mut out = format!("{:<width$}  precision  recall     f1  support\n", "class");
        for c in &self.per_class {
            out += &format!(
                "{:<width$}  {:>9.3}  {:>6.3}  {:>5.3}  {:>7}\n",
                c.class, c.precision, c.recall, c.f1, c.support
            );
        }
        out += &format!(
            "accuracy {:.4} ({} examples), macro F1 {:.4}",
            self.accuracy, self.count, self.macro_f1
        );
        out
    }
}

/// Index of the largest value of each row of `scores` (`[n, k]`).
pub fn argmax_rows(scores: &[f32], k: usize) -> Vec<usize> {
    scores
        .chunks_exact(k)
        .map(|row| {
            row.iter()
                .enumerate()
                .max_by(|a, b| a.1.total_cmp(b.1).then(b.0.cmp(&a.0)))
                .map_or(0, |(i, _)| i)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scores_match_hand_counts() {
        let classes = vec!["a".to_string(), "b".to_string(), "c".to_string()];
        // truth a a a b b c ; predicted a a b b c c
        let m = Metrics::compute(&[0, 0, 0, 1, 1, 2], &[0, 0, 1, 1, 2, 2], &classes);
        assert_eq!(
            m.confusion,
            vec![vec![2, 1, 0], vec![0, 1, 1], vec![0, 0, 1]]
        );
        assert!((m.accuracy - 4.0 / 6.0).abs() < 1e-12);
        assert!((m.per_class[0].precision - 1.0).abs() < 1e-12);
        assert!((m.per_class[0].recall - 2.0 / 3.0).abs() < 1e-12);
        assert!((m.per_class[1].precision - 0.5).abs() < 1e-12);
        assert!((m.per_class[2].f1 - 2.0 / 3.0).abs() < 1e-12);
        assert_eq!(m.per_class[1].support, 2);
    }

    #[test]
    fn argmax_breaks_ties_towards_the_lower_index() {
        assert_eq!(argmax_rows(&[0.1, 0.5, 0.5, 0.9, 0.0, 0.1], 3), vec![1, 0]);
    }
}

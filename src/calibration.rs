//! Calibrated probabilities: temperature scaling (Guo et al., "On Calibration of Modern Neural
//! Networks", 2017) and the expected calibration error with its reliability diagram.
//!
//! A linear top's probabilities are `softmax(logits / T)`. One temperature `T > 0` is fitted
//! after training, on the validation split, by minimising the validation log-loss; dividing
//! every logit by the same `T` keeps their order, so predictions and accuracy do not change,
//! only how sure the model says it is. The run keeps the head's own weights in
//! `head.safetensors` and `T` in `model.json` (`temperature`, 1 when absent: runs from
//! before calibration); [`crate::run::TrainedModel::open`] folds `1 / T` into the head's
//! weights once, so predict, evaluate, serve, export and the Python package all give the
//! calibrated probabilities.
//!
//! The fit: the mean log-loss is convex in `1 / T` (a log-sum-exp of functions linear in it),
//! so Newton's method on `1 / T`, kept inside a bisection bracket, finds its one minimum,
//! deterministically, in a few steps. `T` is kept within [`MIN_TEMPERATURE`, `MAX_TEMPERATURE`]:
//! when every validation image is right the loss keeps falling as `T` shrinks, and an
//! unbounded fit would make the model certain of everything.

use serde::{Deserialize, Serialize};

use crate::head::Head;
use crate::metrics::argmax_rows;

/// Bins of the reliability diagram and the expected calibration error (equal width on the
/// probability of the predicted class, as Guo et al.).
pub const BINS: usize = 15;
/// The smallest temperature a fit returns (sharpening the probabilities at most 20x in logit).
pub const MIN_TEMPERATURE: f64 = 0.05;
/// The largest temperature a fit returns.
pub const MAX_TEMPERATURE: f64 = 20.0;
/// What `metrics.json` says was done.
pub const METHOD: &str = "temperature scaling (Guo et al. 2017): one T minimising the \
    validation log-loss, by Newton's method on 1/T";

/// One bin of a reliability diagram: the images whose predicted class had a probability in
/// `(lower, upper]` (the first bin also takes 0).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Bin {
    pub lower: f64,
    pub upper: f64,
    pub count: usize,
    /// Mean probability of the predicted class (0 for an empty bin).
    pub confidence: f64,
    /// Fraction of the bin's images predicted right (0 for an empty bin).
    pub accuracy: f64,
}

/// The reliability diagram of probabilities `[n, classes]` against `labels`: [`BINS`] bins.
pub fn reliability(probabilities: &[f32], labels: &[usize], classes: usize) -> Vec<Bin> {
    let mut count = [0usize; BINS];
    let mut confidence = [0f64; BINS];
    let mut correct = [0usize; BINS];
    let predicted = argmax_rows(probabilities, classes);
    for ((row, &p), &label) in probabilities
        .chunks_exact(classes)
        .zip(&predicted)
        .zip(labels)
    {
        let c = row[p] as f64;
        // Bin b holds (b / BINS, (b + 1) / BINS].
        let b = ((c * BINS as f64).ceil() as usize).clamp(1, BINS) - 1;
        count[b] += 1;
        confidence[b] += c;
        correct[b] += usize::from(p == label);
    }
    (0..BINS)
        .map(|b| {
            let n = count[b].max(1) as f64;
            Bin {
                lower: b as f64 / BINS as f64,
                upper: (b + 1) as f64 / BINS as f64,
                count: count[b],
                confidence: confidence[b] / n,
                accuracy: correct[b] as f64 / n,
            }
        })
        .collect()
}

/// The expected calibration error of a reliability diagram: the mean over images of
/// |accuracy - confidence| of their bin (0 for no images).
pub fn expected_calibration_error(bins: &[Bin]) -> f64 {
    let total: usize = bins.iter().map(|b| b.count).sum();
    if total == 0 {
        return 0.0;
    }
    bins.iter()
        .map(|b| b.count as f64 * (b.accuracy - b.confidence).abs())
        .sum::<f64>()
        / total as f64
}

/// Mean log-loss of `softmax(logits / temperature)` against `labels` (`logits` `[n, classes]`).
pub fn log_loss(logits: &[f32], labels: &[usize], classes: usize, temperature: f64) -> f64 {
    let beta = 1.0 / temperature;
    let sum: f64 = logits
        .chunks_exact(classes)
        .zip(labels)
        .map(|(row, &label)| {
            let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64 * beta;
            let log_sum = row
                .iter()
                .map(|&z| (z as f64 * beta - max).exp())
                .sum::<f64>()
                .ln();
            max + log_sum - row[label] as f64 * beta
        })
        .sum();
    sum / labels.len().max(1) as f64
}

/// The mean log-loss's first and second derivatives in `beta = 1 / T`: the mean of
/// `E_p[z] - z_label` and of `Var_p[z]`, `p = softmax(beta z)`.
fn derivatives(logits: &[f32], labels: &[usize], classes: usize, beta: f64) -> (f64, f64) {
    let (mut first, mut second) = (0.0, 0.0);
    let mut p = vec![0f64; classes];
    for (row, &label) in logits.chunks_exact(classes).zip(labels) {
        let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
        let mut sum = 0.0;
        for (p, &z) in p.iter_mut().zip(row) {
            *p = (beta * (z as f64 - max)).exp();
            sum += *p;
        }
        let (mut mean, mut square) = (0.0, 0.0);
        for (p, &z) in p.iter().zip(row) {
            let z = z as f64;
            mean += p / sum * z;
            square += p / sum * z * z;
        }
        first += mean - row[label] as f64;
        second += (square - mean * mean).max(0.0);
    }
    let n = labels.len().max(1) as f64;
    (first / n, second / n)
}

/// The temperature that minimises the mean log-loss of `softmax(logits / T)` against `labels`,
/// within [`MIN_TEMPERATURE`, `MAX_TEMPERATURE`]; 1 for no rows.
pub fn fit_temperature(logits: &[f32], labels: &[usize], classes: usize) -> f64 {
    if labels.is_empty() || classes == 0 {
        return 1.0;
    }
    let slope = |beta: f64| derivatives(logits, labels, classes, beta);
    // The loss is convex in beta: its slope only rises. Bracket the zero of the slope.
    let (mut lo, mut hi) = (1.0 / MAX_TEMPERATURE, 1.0 / MIN_TEMPERATURE);
    if slope(lo).0 >= 0.0 {
        return MAX_TEMPERATURE;
    }
    if slope(hi).0 <= 0.0 {
        return MIN_TEMPERATURE;
    }
    let mut beta = 1.0;
    for _ in 0..100 {
        let (g, h) = slope(beta);
        if g == 0.0 {
            break;
        }
        if g > 0.0 {
            hi = beta;
        } else {
            lo = beta;
        }
        let newton = beta - g / h;
        // A Newton step that leaves the bracket (or a flat loss) is replaced by bisection.
        let next = if h > 0.0 && newton > lo && newton < hi {
            newton
        } else {
            0.5 * (lo + hi)
        };
        let step = (next - beta).abs();
        beta = next;
        if step <= 1e-12 * beta {
            break;
        }
    }
    1.0 / beta
}

/// Mean log-loss of probabilities `[n, classes]` against `labels` (each clamped at 1e-12).
pub fn probability_log_loss(probabilities: &[f32], labels: &[usize], classes: usize) -> f64 {
    probabilities
        .chunks_exact(classes)
        .zip(labels)
        .map(|(row, &l)| -(row[l].max(1e-12) as f64).ln())
        .sum::<f64>()
        / labels.len().max(1) as f64
}

/// How calibrated a model's probabilities are on labelled data (what `graft evaluate`
/// records beside its metrics).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CalibrationCheck {
    /// The run's temperature, applied to the probabilities measured.
    pub temperature: f64,
    /// Expected calibration error, [`BINS`] bins.
    pub ece: f64,
    pub log_loss: f64,
}

impl CalibrationCheck {
    /// The check of `probabilities` `[n, classes]` (at `temperature`) against `labels`.
    pub fn of(probabilities: &[f32], labels: &[usize], classes: usize, temperature: f64) -> Self {
        Self {
            temperature,
            ece: expected_calibration_error(&reliability(probabilities, labels, classes)),
            log_loss: probability_log_loss(probabilities, labels, classes),
        }
    }
}

/// `softmax(logits / temperature)`, row by row.
pub fn tempered_softmax(logits: &[f32], classes: usize, temperature: f64) -> Vec<f32> {
    let mut out: Vec<f32> = logits
        .iter()
        .map(|&z| (z as f64 / temperature) as f32)
        .collect();
    for row in out.chunks_exact_mut(classes) {
        crate::head::softmax_in_place(row);
    }
    out
}

/// `metrics.json`'s `calibration`: the temperature, and how calibrated the validation
/// probabilities were before (T = 1) and after.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CalibrationRecord {
    /// What was fitted, and how.
    pub method: String,
    /// The `T` in `softmax(logits / T)` (also in `model.json`, where predict reads it).
    pub temperature: f64,
    /// The validation images it was fitted and measured on.
    pub val_images: usize,
    /// Why the temperature is 1 without a fit, when it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    /// Expected calibration error ([`BINS`] bins) on the validation split, before and after.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ece_before: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ece_after: Option<f64>,
    /// Mean validation log-loss, before and after.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_loss_before: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_loss_after: Option<f64>,
    /// The reliability diagrams behind the two ECEs (the report draws them).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub reliability_before: Vec<Bin>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub reliability_after: Vec<Bin>,
}

impl CalibrationRecord {
    /// Fit the temperature of a linear top on its validation `logits` `[n, classes]` and
    /// measure before and after. Without rows the temperature is 1 and the note says why.
    pub fn fit(logits: &[f32], labels: &[usize], classes: usize) -> Self {
        if labels.is_empty() {
            return Self::unfitted(
                "no validation images to fit it on".into(),
                &[],
                &[],
                classes,
            );
        }
        let temperature = fit_temperature(logits, labels, classes);
        let before = reliability(&tempered_softmax(logits, classes, 1.0), labels, classes);
        let after = reliability(
            &tempered_softmax(logits, classes, temperature),
            labels,
            classes,
        );
        Self {
            method: METHOD.into(),
            temperature,
            val_images: labels.len(),
            note: None,
            ece_before: Some(expected_calibration_error(&before)),
            ece_after: Some(expected_calibration_error(&after)),
            log_loss_before: Some(log_loss(logits, labels, classes, 1.0)),
            log_loss_after: Some(log_loss(logits, labels, classes, temperature)),
            reliability_before: before,
            reliability_after: after,
        }
    }

    /// Temperature 1, for the reason `note` gives, with the calibration of the validation
    /// `probabilities` as they are (none without rows).
    pub fn unfitted(note: String, probabilities: &[f32], labels: &[usize], classes: usize) -> Self {
        let mut record = Self {
            method: "none: temperature 1".into(),
            temperature: 1.0,
            val_images: labels.len(),
            note: Some(note),
            ece_before: None,
            ece_after: None,
            log_loss_before: None,
            log_loss_after: None,
            reliability_before: Vec::new(),
            reliability_after: Vec::new(),
        };
        if !labels.is_empty() {
            let bins = reliability(probabilities, labels, classes);
            let ece = expected_calibration_error(&bins);
            let loss = probability_log_loss(probabilities, labels, classes);
            record.ece_before = Some(ece);
            record.ece_after = Some(ece);
            record.log_loss_before = Some(loss);
            record.log_loss_after = Some(loss);
            record.reliability_before = bins.clone();
            record.reliability_after = bins;
        }
        record
    }

    /// One line for the terminal.
    pub fn summary(&self) -> String {
        let numbers = match (
            self.ece_before,
            self.ece_after,
            self.log_loss_before,
            self.log_loss_after,
        ) {
            (Some(e0), Some(e1), Some(l0), Some(l1)) => format!(
                ": ECE {e0:.4} -> {e1:.4}, log-loss {l0:.4} -> {l1:.4} on {} validation images",
                self.val_images
            ),
            _ => String::new(),
        };
        match &self.note {
            Some(note) => format!("calibration: temperature 1 ({note}){numbers}"),
            None => format!("calibration: temperature {:.4}{numbers}", self.temperature),
        }
    }
}

/// A temperature read from a run: finite and positive, or why not.
pub fn check_temperature(temperature: f64) -> Result<(), String> {
    if temperature.is_finite() && temperature > 0.0 {
        Ok(())
    } else {
        Err(format!(
            "temperature must be a positive number, not {temperature}"
        ))
    }
}

impl Head {
    /// The logits `[n, classes]` of feature rows `[n, dim]`, for a linear head; `None` for
    /// kNN, whose vote shares have none.
    pub fn logits(&self, features: &[f32], dim: usize) -> Option<Vec<f32>> {
        match self {
            Head::Linear { weight, bias } => Some(crate::head::linear(features, dim, weight, bias)),
            Head::Knn { .. } => None,
        }
    }

    /// Divide a linear head's logits by `temperature` by dividing its weights and bias, so
    /// that [`Head::scores`] gives `softmax(logits / temperature)`; kNN heads are left as they
    /// are (their scores are vote shares, not a softmax).
    pub fn temper(&mut self, temperature: f64) {
        if temperature == 1.0 {
            return;
        }
        if let Head::Linear { weight, bias } = self {
            for v in weight.iter_mut().chain(bias.iter_mut()) {
                *v = (*v as f64 / temperature) as f32;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A small deterministic generator (xorshift) for constructed logits.
    fn uniform(state: &mut u64) -> f64 {
        *state ^= *state << 13;
        *state ^= *state >> 7;
        *state ^= *state << 17;
        (*state >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Rows of logits drawn from a known calibrated model (the label sampled from
    /// `softmax(z)`), then multiplied by `scale`: over-confident for a scale above 1.
    fn sampled(n: usize, classes: usize, scale: f32) -> (Vec<f32>, Vec<usize>) {
        let mut state = 0x9e37_79b9_7f4a_7c15;
        let (mut logits, mut labels) = (Vec::new(), Vec::new());
        for _ in 0..n {
            let row: Vec<f32> = (0..classes)
                .map(|_| (4.0 * uniform(&mut state) - 2.0) as f32)
                .collect();
            let p = tempered_softmax(&row, classes, 1.0);
            let (mut u, mut label) = (uniform(&mut state) as f32, classes - 1);
            for (c, &pc) in p.iter().enumerate() {
                if u < pc {
                    label = c;
                    break;
                }
                u -= pc;
            }
            logits.extend(row.iter().map(|z| z * scale));
            labels.push(label);
        }
        (logits, labels)
    }

    /// A temperature read back from model.json is the one written (serde_json's
    /// `float_roundtrip`; its default parser gave 0.955529534979116 for this one).
    #[test]
    fn a_written_temperature_reads_back_exactly() {
        for t in [
            0.9555295349791159_f64,
            1.0 / 3.0,
            123.456_789_012_345_67,
            0.1 + 0.2,
        ] {
            let text = serde_json::to_string(&t).unwrap();
            assert_eq!(serde_json::from_str::<f64>(&text).unwrap(), t, "{text}");
        }
    }

    #[test]
    fn the_fit_recovers_the_scale_of_over_and_under_confident_logits() {
        for scale in [3.0f32, 0.5] {
            let (logits, labels) = sampled(20_000, 5, scale);
            let t = fit_temperature(&logits, &labels, 5);
            // The labels follow softmax(logits / scale): the best T is the scale, up to the
            // sampling noise of 20,000 draws.
            assert!(
                (t / scale as f64 - 1.0).abs() < 0.05,
                "scale {scale}: fitted {t}"
            );
            let before = log_loss(&logits, &labels, 5, 1.0);
            let after = log_loss(&logits, &labels, 5, t);
            assert!(after < before, "scale {scale}: {before} -> {after}");
            // A minimum: a little either side is no better.
            for nudge in [0.97, 1.03] {
                assert!(log_loss(&logits, &labels, 5, t * nudge) >= after);
            }
            let record = CalibrationRecord::fit(&logits, &labels, 5);
            assert_eq!(record.temperature, t);
            assert!(record.ece_after.unwrap() < record.ece_before.unwrap());
        }
    }

    #[test]
    fn the_fit_stops_at_its_bounds_and_without_rows() {
        // Every row right by a wide margin: sharper is always better.
        let logits = [5.0, 0.0, 0.0, 5.0];
        assert_eq!(fit_temperature(&logits, &[0, 1], 2), MIN_TEMPERATURE);
        // Every row wrong: flatter is always better.
        assert_eq!(fit_temperature(&logits, &[1, 0], 2), MAX_TEMPERATURE);
        assert_eq!(fit_temperature(&[], &[], 2), 1.0);
        let record = CalibrationRecord::fit(&[], &[], 2);
        assert_eq!(record.temperature, 1.0);
        assert!(record.note.unwrap().contains("no validation images"));
        assert!(record.ece_before.is_none());
    }

    #[test]
    fn ece_of_a_constructed_case() {
        // Two classes. Confidences 0.9 (right), 0.9 (wrong), 0.56 (right), 0.57 (right),
        // 0.55 (wrong): bins (13/15, 14/15] and (8/15, 9/15] hold them.
        let probabilities = [
            0.9, 0.1, //
            0.9, 0.1, //
            0.44, 0.56, //
            0.57, 0.43, //
            0.45, 0.55,
        ];
        let labels = [0, 1, 1, 0, 0];
        let bins = reliability(&probabilities, &labels, 2);
        assert_eq!(bins.len(), BINS);
        let filled: Vec<(usize, usize)> = bins
            .iter()
            .enumerate()
            .filter(|(_, b)| b.count > 0)
            .map(|(i, b)| (i, b.count))
            .collect();
        assert_eq!(filled, vec![(8, 3), (13, 2)]);
        assert!((bins[13].accuracy - 0.5).abs() < 1e-12);
        assert!((bins[13].confidence - 0.9).abs() < 1e-6);
        assert!((bins[8].accuracy - 2.0 / 3.0).abs() < 1e-12);
        assert!((bins[8].confidence - 0.56).abs() < 1e-6);
        // (2 * |0.5 - 0.9| + 3 * |2/3 - 0.56|) / 5 = (0.8 + 0.32) / 5.
        let ece = expected_calibration_error(&bins);
        assert!((ece - 0.224).abs() < 1e-6, "{ece}");
        // A confidence of exactly 1 is in the last bin, and perfectly calibrated.
        let certain = reliability(&[1.0, 0.0], &[0], 2);
        assert_eq!(certain[BINS - 1].count, 1);
        assert_eq!(expected_calibration_error(&certain), 0.0);
    }

    #[test]
    fn a_tempered_head_scores_the_softmax_of_its_logits_over_t() {
        let mut head = Head::Linear {
            weight: vec![1.0, -2.0, 0.5, 0.25, 3.0, -1.0],
            bias: vec![0.1, -0.3, 0.2],
        };
        let x = [0.7, -1.2, 2.0, 0.4];
        let logits = head.logits(&x, 2).unwrap();
        head.temper(2.5);
        let expected = tempered_softmax(&logits, 3, 2.5);
        for (a, b) in head.scores(&x, 2).iter().zip(&expected) {
            assert!((a - b).abs() < 1e-6, "{a} vs {b}");
        }
        assert!(check_temperature(0.0).is_err() && check_temperature(f64::NAN).is_err());
        assert!(check_temperature(1.5).is_ok());
    }
}

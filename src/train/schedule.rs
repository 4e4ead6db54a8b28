//! Learning-rate schedules, evaluated per optimisation step as a factor of the peak rate.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Schedule {
    /// Linear warm-up, then cosine decay to zero.
    Cosine,
    /// Leslie Smith's one-cycle: cosine up from peak/25 over the first 30%, cosine down to
    /// peak/1e4 after.
    // `onecycle`: how plan.json spelled it before it was typed.
    #[serde(alias = "onecycle")]
    OneCycle,
    /// Linear warm-up, then the rate times 0.1 at 1/2 and again at 3/4 of the steps.
    Step,
    /// The peak rate throughout.
    Constant,
}

/// Factor of the peak learning rate at `step` (0-based) of `total`; `warmup` steps of linear
/// warm-up for the schedules that have one.
pub fn factor(schedule: Schedule, step: usize, total: usize, warmup: usize) -> f64 {
    let total = total.max(1);
    let t = step.min(total - 1) as f64;
    let warming = |f: f64| {
        if step < warmup {
            (step + 1) as f64 / warmup as f64
        } else {
            f
        }
    };
    match schedule {
        Schedule::Constant => 1.0,
        Schedule::Cosine => {
            let span = (total - warmup.min(total)).max(1) as f64;
            let progress = (t - warmup as f64).max(0.0) / span;
            warming(0.5 * (1.0 + (std::f64::consts::PI * progress).cos()))
        }
        Schedule::Step => {
            let progress = t / total as f64;
            warming(if progress >= 0.75 {
                0.01
            } else if progress >= 0.5 {
                0.1
            } else {
                1.0
            })
        }
        Schedule::OneCycle => {
            let (start, end) = (1.0 / 25.0, 1.0 / 1e4);
            let peak_at = 0.3 * total as f64;
            let cosine = |from: f64, to: f64, p: f64| {
                to + (from - to) * 0.5 * (1.0 + (std::f64::consts::PI * p).cos())
            };
            if t < peak_at {
                cosine(start, 1.0, t / peak_at)
            } else {
                cosine(1.0, end, (t - peak_at) / (total as f64 - peak_at).max(1.0))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::f64::consts::PI;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-12
    }

    #[test]
    fn cosine_warms_up_linearly_then_follows_the_formula() {
        // 10 warm-up steps of 110.
        assert!(close(factor(Schedule::Cosine, 0, 110, 10), 0.1));
        assert!(close(factor(Schedule::Cosine, 4, 110, 10), 0.5));
        assert!(close(factor(Schedule::Cosine, 10, 110, 10), 1.0));
        let expected = 0.5 * (1.0 + (PI * 50.0 / 100.0).cos());
        assert!(close(factor(Schedule::Cosine, 60, 110, 10), expected));
        assert!(factor(Schedule::Cosine, 109, 110, 10) < 0.001);
    }

    #[test]
    fn one_cycle_peaks_at_thirty_percent() {
        assert!(close(factor(Schedule::OneCycle, 0, 100, 0), 1.0 / 25.0));
        assert!(close(factor(Schedule::OneCycle, 30, 100, 0), 1.0));
        let mid = 1e-4 + (1.0 - 1e-4) * 0.5 * (1.0 + (PI * 35.0 / 70.0).cos());
        assert!(close(factor(Schedule::OneCycle, 65, 100, 0), mid));
    }

    #[test]
    fn step_and_constant() {
        assert!(close(factor(Schedule::Step, 49, 100, 0), 1.0));
        assert!(close(factor(Schedule::Step, 50, 100, 0), 0.1));
        assert!(close(factor(Schedule::Step, 80, 100, 0), 0.01));
        assert!(close(factor(Schedule::Constant, 7, 100, 5), 1.0));
    }
}

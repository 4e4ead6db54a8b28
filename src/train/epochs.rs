//! What the training loops (the dense head, fine-tuning, SimCLR) share, so each is written once:
//! the order of the examples in an epoch, early stopping on the validation loss with the best
//! weights kept, and the check that a resumed run has the options it was checkpointed with.
//! Checkpointing itself, and stopping on Ctrl-C or a NaN loss after a step, are
//! [`super::checkpoint`]'s.

use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;

use super::checkpoint::{CheckpointError, Checkpoints, invalid};

/// The order of `n` examples in `epoch` (1-based): a shuffle keyed by the seed and the epoch
/// alone, so a run resumed at any epoch replays the same orders.
pub fn epoch_order(n: usize, seed: u64, epoch: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    order.shuffle(&mut ChaCha8Rng::seed_from_u64(
        seed ^ ((epoch as u64) << 40),
    ));
    order
}

/// The best epoch so far: its validation loss and its weights.
#[derive(Debug, Clone)]
pub struct Best<M> {
    pub loss: f64,
    pub epoch: usize,
    pub model: M,
}

/// Early stopping on the validation loss: the best epoch's weights are kept, and training stops
/// once `patience` epochs in a row have not lowered the loss.
#[derive(Debug, Clone)]
pub struct EarlyStopping<M> {
    patience: usize,
    best: Option<Best<M>>,
}

impl<M> EarlyStopping<M> {
    pub fn new(patience: usize) -> Self {
        Self {
            patience,
            best: None,
        }
    }

    /// Continuing a run whose best epoch so far was `best`.
    pub fn resumed(patience: usize, best: Best<M>) -> Self {
        Self {
            patience,
            best: Some(best),
        }
    }

    /// Whether to stop before `epoch`: more than `patience` epochs have passed since the best.
    pub fn stalled(&self, epoch: usize) -> bool {
        self.best
            .as_ref()
            .is_some_and(|b| epoch.saturating_sub(b.epoch) > self.patience)
    }

    /// After `epoch`, with validation loss `loss`: keep `model()` when the loss is the lowest
    /// yet, or always when `keep_last` (no validation data: the last epoch is the one kept).
    /// Returns whether it was kept.
    pub fn observe(
        &mut self,
        epoch: usize,
        loss: f64,
        keep_last: bool,
        model: impl FnOnce() -> M,
    ) -> bool {
        let improved = self.best.as_ref().is_none_or(|b| loss < b.loss);
        if improved || keep_last {
            self.best = Some(Best {
                loss,
                epoch,
                model: model(),
            });
        }
        improved || keep_last
    }

    pub fn best(&self) -> Option<&Best<M>> {
        self.best.as_ref()
    }

    pub fn into_best(self) -> Option<Best<M>> {
        self.best
    }
}

/// A resumed run must replay the run that was checkpointed: an error naming the checkpoint
/// directory when `saved` (the checkpoint's options) differ from `current`.
pub fn check_resumed_options<O: PartialEq>(
    saved: &O,
    current: &O,
    checkpoints: &Checkpoints,
    what: &str,
) -> Result<(), CheckpointError> {
    if saved == current {
        return Ok(());
    }
    let dir = checkpoints.dir.clone().unwrap_or_default();
    Err(invalid(
        &dir,
        format!("the checkpoint was made with other {what} options; rerun with the same ones"),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn orders_are_permutations_keyed_by_seed_and_epoch() {
        let a = epoch_order(50, 7, 3);
        let mut sorted = a.clone();
        sorted.sort();
        assert_eq!(sorted, (0..50).collect::<Vec<_>>());
        assert_eq!(a, epoch_order(50, 7, 3));
        assert_ne!(a, epoch_order(50, 7, 4));
        assert_ne!(a, epoch_order(50, 8, 3));
    }

    #[test]
    fn stops_after_patience_epochs_without_a_lower_loss_keeping_the_best() {
        let mut stopping = EarlyStopping::new(2);
        let losses = [1.0, 0.5, 0.7, 0.6, 0.4];
        let mut ran = Vec::new();
        for (i, &loss) in losses.iter().enumerate() {
            let epoch = i + 1;
            if stopping.stalled(epoch) {
                break;
            }
            ran.push(epoch);
            stopping.observe(epoch, loss, false, || epoch * 10);
        }
        // Epoch 2 is the best; epochs 3 and 4 do not improve; epoch 5 never runs.
        assert_eq!(ran, [1, 2, 3, 4]);
        let best = stopping.into_best().unwrap();
        assert_eq!((best.epoch, best.model, best.loss), (2, 20, 0.5));

        let mut last = EarlyStopping::new(0);
        last.observe(1, f64::NAN, true, || 1);
        last.observe(2, f64::NAN, true, || 2);
        assert_eq!(last.best().unwrap().model, 2);
    }
}

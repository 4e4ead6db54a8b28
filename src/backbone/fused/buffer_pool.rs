//! Reused `f32` buffers for the fused training op ([`super::train`]). Every training step
//! allocates the same sizes as the one before (hundreds of megabytes of activation maps and
//! their gradients); fresh allocations of that size cost page faults and zeroing, about 15% of
//! a step in `perf` (docs/internals/performance-notes.md, train step). Buffers are matched by exact length.

use std::collections::HashMap;
use std::sync::{LazyLock, Mutex, MutexGuard, PoisonError};

/// Values the pool keeps at most (4 GB); buffers returned beyond that are freed.
const MAX_POOLED: usize = 1 << 30;

#[derive(Default)]
struct Pool {
    by_len: HashMap<usize, Vec<Vec<f32>>>,
    pooled: usize,
}

static POOL: LazyLock<Mutex<Pool>> = LazyLock::new(Mutex::default);

fn pool() -> MutexGuard<'static, Pool> {
    // A panic elsewhere while holding the lock leaves the pool consistent: use it anyway.
    POOL.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A buffer of `len` values holding whatever its last user left: for outputs the caller
/// overwrites entirely.
pub fn take(len: usize) -> Vec<f32> {
    let reused = {
        let mut pool = pool();
        let buffer = pool.by_len.get_mut(&len).and_then(Vec::pop);
        if buffer.is_some() {
            pool.pooled -= len;
        }
        buffer
    };
    reused.unwrap_or_else(|| vec![0.0; len])
}

/// A buffer of `len` zeros.
pub fn zeroed(len: usize) -> Vec<f32> {
    let mut buffer = take(len);
    buffer.fill(0.0);
    buffer
}

/// Keep `buffer` for a later [`take`] of its length.
pub fn give(buffer: Vec<f32>) {
    let len = buffer.len();
    let mut pool = pool();
    if len == 0 || pool.pooled + len > MAX_POOLED {
        return;
    }
    pool.pooled += len;
    pool.by_len.entry(len).or_default().push(buffer);
}

/// Free every kept buffer (at the end of a training run).
pub fn clear() {
    *pool() = Pool::default();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_given_buffer_comes_back_for_its_length_only() {
        // A length no other test uses (tests share the pool).
        let len = 1_234_567;
        let mut buffer = take(len);
        buffer[0] = 42.0;
        let address = buffer.as_ptr();
        give(buffer);
        let other = take(len + 1);
        assert!(other.as_ptr() != address);
        let again = take(len);
        assert_eq!((again.as_ptr(), again[0]), (address, 42.0));
        give(again);
        assert!(zeroed(len).iter().all(|v| *v == 0.0));
    }
}

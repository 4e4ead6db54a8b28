//! CPU time per layer type of the fused inference network, for `graft bench forward --profile`.
//! Off unless started: then timing costs one relaxed atomic load per layer.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Instant;

/// The layer types the time is split into.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LayerKind {
    /// 3x3 stride-2 conv on the image.
    Stem,
    /// 1x1 expansion convs (+ bias + ReLU6).
    Expand,
    /// Depthwise kxk convs (+ bias + ReLU6).
    Depthwise,
    /// 1x1 projection convs (+ bias + residual).
    Project,
    /// 1x1 head conv + ReLU6 + global average pool.
    Head,
    /// The ImageNet classifier.
    Classifier,
}

impl LayerKind {
    pub const ALL: [LayerKind; 6] = [
        LayerKind::Stem,
        LayerKind::Expand,
        LayerKind::Depthwise,
        LayerKind::Project,
        LayerKind::Head,
        LayerKind::Classifier,
    ];

    pub fn name(self) -> &'static str {
        match self {
            LayerKind::Stem => "stem conv 3x3 (+ bias + ReLU6)",
            LayerKind::Expand => "expand conv 1x1 (gemm + bias + ReLU6)",
            LayerKind::Depthwise => "depthwise conv (+ bias + ReLU6)",
            LayerKind::Project => "project conv 1x1 (gemm + bias + residual)",
            LayerKind::Head => "head conv 1x1 + ReLU6 + pool",
            LayerKind::Classifier => "classifier (gemm)",
        }
    }
}

static ENABLED: AtomicBool = AtomicBool::new(false);
static NANOS: [AtomicU64; 6] = [const { AtomicU64::new(0) }; 6];

/// Start timing, from zero.
pub fn start() {
    for n in &NANOS {
        n.store(0, Ordering::Relaxed);
    }
    ENABLED.store(true, Ordering::Relaxed);
}

/// Stop timing; seconds of CPU time per layer type since [`start`], summed over threads.
pub fn stop() -> Vec<(LayerKind, f64)> {
    ENABLED.store(false, Ordering::Relaxed);
    LayerKind::ALL
        .iter()
        .map(|&kind| {
            (
                kind,
                NANOS[kind as usize].load(Ordering::Relaxed) as f64 * 1e-9,
            )
        })
        .collect()
}

/// Run `f`, adding its time to `kind` when started.
#[inline]
pub fn timed<R>(kind: LayerKind, f: impl FnOnce() -> R) -> R {
    if !ENABLED.load(Ordering::Relaxed) {
        return f();
    }
    let start = Instant::now();
    let result = f();
    NANOS[kind as usize].fetch_add(start.elapsed().as_nanos() as u64, Ordering::Relaxed);
    result
}

//! CPU time per layer type of the fused CPU network, forward and backward, for `graft bench
//! forward --profile` and `graft bench train-step --profile`. Off unless started: then timing
//! costs one relaxed atomic load per layer.

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
    /// Backward of the head conv and the pool: ReLU6 mask, weight and input gradients.
    HeadBackward,
    /// Backward of the 1x1 projections: weight and input gradients (+ residual).
    ProjectBackward,
    /// Backward of the depthwise convs: ReLU6 mask, weight and input gradients.
    DepthwiseBackward,
    /// Backward of the 1x1 expansions: ReLU6 mask, weight and input gradients.
    ExpandBackward,
    /// Backward of the stem: ReLU6 mask, im2col, weight gradient.
    StemBackward,
}

impl LayerKind {
    pub const ALL: [LayerKind; 11] = [
        LayerKind::Stem,
        LayerKind::Expand,
        LayerKind::Depthwise,
        LayerKind::Project,
        LayerKind::Head,
        LayerKind::Classifier,
        LayerKind::HeadBackward,
        LayerKind::ProjectBackward,
        LayerKind::DepthwiseBackward,
        LayerKind::ExpandBackward,
        LayerKind::StemBackward,
    ];

    pub fn name(self) -> &'static str {
        match self {
            LayerKind::Stem => "stem conv 3x3 (+ bias + ReLU6)",
            LayerKind::Expand => "expand conv 1x1 (gemm + bias + ReLU6)",
            LayerKind::Depthwise => "depthwise conv (+ bias + ReLU6)",
            LayerKind::Project => "project conv 1x1 (gemm + bias + residual)",
            LayerKind::Head => "head conv 1x1 + ReLU6 + pool",
            LayerKind::Classifier => "classifier (gemm)",
            LayerKind::HeadBackward => "backward: head conv + pool (mask, 2 gemm)",
            LayerKind::ProjectBackward => "backward: project conv 1x1 (2 gemm)",
            LayerKind::DepthwiseBackward => "backward: depthwise conv (mask + kernel)",
            LayerKind::ExpandBackward => "backward: expand conv 1x1 (mask, 2 gemm)",
            LayerKind::StemBackward => "backward: stem conv (mask, im2col + gemm)",
        }
    }
}

static ENABLED: AtomicBool = AtomicBool::new(false);
static NANOS: [AtomicU64; LayerKind::ALL.len()] =
    [const { AtomicU64::new(0) }; LayerKind::ALL.len()];

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

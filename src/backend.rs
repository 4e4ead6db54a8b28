//! The one place that picks the compute device: burn's `flex` CPU backend by default,
//! CUDA when built with `--features cuda`.

use burn::tensor::Device;

/// The device every model and tensor of this process runs on.
pub fn device() -> Device {
    #[cfg(feature = "cuda")]
    {
        Device::cuda(0)
    }
    #[cfg(not(feature = "cuda"))]
    {
        Device::flex()
    }
}

/// Human-readable backend name, for logs and benchmarks.
pub fn name() -> &'static str {
    if cfg!(feature = "cuda") {
        "cuda"
    } else {
        "flex (CPU)"
    }
}

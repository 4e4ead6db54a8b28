//! Looking for a usable GPU, in the backends this build has, without ever panicking: a machine
//! without a GPU (or without its driver) gets a one-line reason instead.

use burn::tensor::Device;

/// Why there is no GPU to run on, as one line.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct NoGpu(pub String);

/// A GPU that came up, and how to name it to the user.
pub struct Gpu {
    pub device: Device,
    pub name: String,
}

/// The reason a build without a GPU backend gives.
const BUILT_WITHOUT: &str =
    "this graft was built without a GPU backend (rebuild with --features vulkan)";

/// One backend's probe; its argument says whether a software renderer is acceptable.
type Probe = fn(bool) -> Result<Gpu, NoGpu>;

/// The GPU backends this build has, best first: CUDA, then Vulkan / wgpu.
const PROBES: &[Probe] = &[
    #[cfg(feature = "cuda")]
    cuda,
    #[cfg(any(feature = "vulkan", feature = "wgpu"))]
    wgpu,
];

/// The first GPU that comes up, or every backend's reason for none, on one line. A software
/// renderer counts only with `allow_software`.
pub fn gpu(allow_software: bool) -> Result<Gpu, NoGpu> {
    let mut reasons = Vec::new();
    for probe in PROBES {
        match quietly(*probe, allow_software) {
            Ok(gpu) => return Ok(gpu),
            Err(NoGpu(why)) => reasons.push(why),
        }
    }
    if reasons.is_empty() {
        reasons.push(BUILT_WITHOUT.to_string());
    }
    Err(NoGpu(one_line(&reasons.join("; "))))
}

/// burn's CUDA device 0. burn opens a device lazily, on its first tensor, and cubecl-cuda
/// panics when the driver is missing; a tensor made here makes that happen now, inside
/// [`quietly`], rather than in the middle of a command.
#[cfg(feature = "cuda")]
fn cuda(_allow_software: bool) -> Result<Gpu, NoGpu> {
    let device = Device::cuda(0);
    let _ = burn::tensor::Tensor::<1>::zeros([1], &device).into_data();
    Ok(Gpu {
        device,
        name: "CUDA device 0".into(),
    })
}

/// The best adapter wgpu offers: pinned to Vulkan (SPIR-V kernels) with the `vulkan` feature,
/// else the platform's API (Metal on macOS, DX12 on Windows). burn's `init_with_setup` returns
/// acquisition errors (no loader, no adapter) instead of panicking as a lazily opened device
/// would, and hands back the adapter, so a software renderer (llvmpipe, lavapipe: slower than
/// graft's own CPU kernels) can be refused unless `allow_software` asks for it.
#[cfg(any(feature = "vulkan", feature = "wgpu"))]
fn wgpu(allow_software: bool) -> Result<Gpu, NoGpu> {
    use burn::tensor::wgpu::{WgpuBackend, wgpu::DeviceType};

    let api = if cfg!(feature = "vulkan") {
        WgpuBackend::Vulkan
    } else {
        WgpuBackend::Auto
    };
    let api_name = if cfg!(feature = "vulkan") {
        "Vulkan"
    } else {
        "wgpu"
    };
    let (device, setup) = Device::wgpu_options()
        .graphics_api(api)
        .init_with_setup()
        .map_err(|e| NoGpu(format!("no {api_name} adapter found: {e}")))?;
    let info = setup.adapter.get_info();
    let software = info.device_type == DeviceType::Cpu;
    if software && !allow_software {
        return Err(NoGpu(format!(
            "the only {api_name} adapter is `{}`, a software renderer on the CPU (slower than \
             graft's CPU kernels; --device gpu:software runs on it anyway, to check a GPU build)",
            info.name
        )));
    }
    let kind = if software { ", software" } else { "" };
    Ok(Gpu {
        device,
        name: format!("{} ({:?}{kind})", info.name, info.backend),
    })
}

/// `probe` with any panic turned into a [`NoGpu`]. A driver or loader problem can make a GPU
/// runtime panic rather than return an error, and the default hook would print a backtrace
/// hint on a machine that simply has no GPU; so the hook is muted while probing (at start-up,
/// before any other thread of graft's runs) and the panic's message becomes the reason.
fn quietly(probe: Probe, allow_software: bool) -> Result<Gpu, NoGpu> {
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let result = std::panic::catch_unwind(|| probe(allow_software));
    std::panic::set_hook(hook);
    result.unwrap_or_else(|payload| {
        let message = payload
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| payload.downcast_ref::<&str>().copied())
            .unwrap_or("unknown panic");
        Err(NoGpu(format!("GPU initialisation failed: {message}")))
    })
}

/// `text` on one line: a driver's message may span several.
fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

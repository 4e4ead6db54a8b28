//! The one place that picks the compute device: burn's `flex` CPU backend (with graft's fused
//! CPU kernels), or a GPU through burn's Vulkan, wgpu or CUDA backend when graft is built with
//! `--features vulkan|wgpu|cuda` and `--device gpu|auto` asks for one.
//!
//! The choice is made once per process, by [`set_device_choice`] before any work; every model
//! and tensor then lives on [`device`]. Without a call (library users, tests) it is the CPU.

mod probe;

use std::sync::OnceLock;

use burn::tensor::Device;

pub use probe::NoGpu;

/// What `--device` asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceChoice {
    /// burn's flex backend and graft's fused CPU kernels.
    Cpu,
    /// A GPU, or an error saying why there is none. Software renderers (Mesa's lavapipe,
    /// llvmpipe) are refused: they are slower than graft's own CPU kernels.
    Gpu,
    /// A GPU, a software renderer included: for checking a GPU build on a machine without
    /// one (graft's own GPU tests run this way on Mesa's lavapipe).
    GpuSoftware,
    /// A GPU when one is usable, else the CPU.
    Auto,
}

/// The device this process runs on, once picked.
struct Picked {
    device: Device,
    name: String,
    cpu: bool,
}

impl Picked {
    fn cpu() -> Self {
        Self {
            device: Device::flex(),
            name: CPU_NAME.into(),
            cpu: true,
        }
    }
}

const CPU_NAME: &str = "flex (CPU)";

static PICKED: OnceLock<Picked> = OnceLock::new();

/// Pick the device for the whole process. Returns a line for stderr saying what `auto` or `gpu`
/// picked (`None` for `cpu`: nothing to report), or why `gpu` cannot be honoured. Call it once,
/// before any tensor is made; a later call changes nothing (tensors may already live on the
/// first device) and returns an error.
pub fn set_device_choice(choice: DeviceChoice) -> Result<Option<String>, NoGpu> {
    let allow_software = choice == DeviceChoice::GpuSoftware;
    let (picked, note) = resolve(choice, || probe::gpu(allow_software))?;
    PICKED
        .set(picked)
        .map_err(|_| NoGpu("the device was already chosen for this process".into()))?;
    Ok(note)
}

/// `choice` resolved with `probe` (which looks for a GPU), as a device and the note to print.
fn resolve(
    choice: DeviceChoice,
    probe: impl FnOnce() -> Result<probe::Gpu, NoGpu>,
) -> Result<(Picked, Option<String>), NoGpu> {
    match choice {
        DeviceChoice::Cpu => Ok((Picked::cpu(), None)),
        DeviceChoice::Gpu | DeviceChoice::GpuSoftware => {
            let gpu = probe()?;
            let note = format!("device: {}", gpu.name);
            Ok((gpu.into(), Some(note)))
        }
        DeviceChoice::Auto => match probe() {
            Ok(gpu) => {
                let note = format!("device: auto picked the GPU {}", gpu.name);
                Ok((gpu.into(), Some(note)))
            }
            Err(NoGpu(why)) => Ok((
                Picked::cpu(),
                Some(format!(
                    "device: auto found no usable GPU: {why}; using the CPU"
                )),
            )),
        },
    }
}

impl From<probe::Gpu> for Picked {
    fn from(gpu: probe::Gpu) -> Self {
        Self {
            device: gpu.device,
            name: gpu.name,
            cpu: false,
        }
    }
}

/// The device every model and tensor of this process runs on.
pub fn device() -> Device {
    match PICKED.get() {
        Some(picked) => picked.device.clone(),
        None => Device::flex(),
    }
}

/// Whether graft's fused CPU kernels run (inference, frozen prefixes, fused backward passes):
/// only on the CPU. On a GPU every recipe goes through burn's generic ops instead, the fused
/// kernels reading flex tensors only.
pub fn fused_cpu() -> bool {
    PICKED.get().is_none_or(|picked| picked.cpu)
}

/// Wait for the work queued on a GPU to finish, before the process exits. A Vulkan driver's
/// exit handlers tear down its state while its queue thread may still be running the last
/// commands (Mesa's lavapipe crashed that way after `graft bench train-step`, SIGSEGV or SIGABRT
/// in its shader compiler with an empty shader cache); the CPU has nothing queued.
pub fn finish() -> Result<(), String> {
    match PICKED.get() {
        Some(picked) if !picked.cpu => picked
            .device
            .sync()
            .map_err(|e| format!("the GPU failed to finish its work: {e:?}")),
        _ => Ok(()),
    }
}

/// Human-readable device name, for logs and benchmarks.
pub fn name() -> &'static str {
    PICKED.get().map_or(CPU_NAME, |picked| picked.name.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_gpu() -> Result<probe::Gpu, NoGpu> {
        Err(NoGpu("no Vulkan adapter".into()))
    }

    fn a_gpu() -> Result<probe::Gpu, NoGpu> {
        // A stand-in: resolve only moves the device, never uses it.
        Ok(probe::Gpu {
            device: Device::flex(),
            name: "Test GPU (Vulkan)".into(),
        })
    }

    #[test]
    fn cpu_never_probes_and_says_nothing() {
        let (picked, note) = resolve(DeviceChoice::Cpu, || panic!("cpu must not probe")).unwrap();
        assert!(picked.cpu);
        assert_eq!(note, None);
    }

    #[test]
    fn auto_without_a_gpu_says_so_and_takes_the_cpu() {
        let (picked, note) = resolve(DeviceChoice::Auto, no_gpu).unwrap();
        assert!(picked.cpu);
        let note = note.unwrap();
        assert!(note.contains("no usable GPU: no Vulkan adapter;"), "{note}");
        assert!(note.ends_with("using the CPU"), "{note}");
    }

    #[test]
    fn auto_with_a_gpu_names_it() {
        let (picked, note) = resolve(DeviceChoice::Auto, a_gpu).unwrap();
        assert!(!picked.cpu);
        assert!(note.unwrap().contains("Test GPU (Vulkan)"));
    }

    #[test]
    fn gpu_without_one_is_an_error_with_the_reason() {
        let Err(NoGpu(why)) = resolve(DeviceChoice::Gpu, no_gpu) else {
            panic!("--device gpu without a GPU must fail");
        };
        assert_eq!(why, "no Vulkan adapter");
    }

    #[test]
    fn without_a_choice_the_process_is_on_the_fused_cpu_path() {
        // The unit tests never call set_device_choice.
        assert!(fused_cpu());
        assert_eq!(name(), CPU_NAME);
    }
}

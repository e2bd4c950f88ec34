//! Errors at the boundary of the `devices` module.

use crate::devices::detect::InventorySource;
use crate::devices::grammar::ParseDeviceError;

/// Why a device request could not become an inventory.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    /// The request text did not parse.
    #[error(transparent)]
    Parse(#[from] ParseDeviceError),

    /// `cuda` was asked for and neither NVML nor `nvidia-smi` found a GPU.
    #[error(
        "no CUDA GPU found ({tried}){}; use `cpu` or `cpu:N` to run on the host",
        visible_note(cuda_visible_devices.as_deref())
    )]
    NoGpu {
        /// What each probe said, e.g. `NVML: …; nvidia-smi: …`.
        tried: String,
        /// `CUDA_VISIBLE_DEVICES`, when it is set.
        cuda_visible_devices: Option<String>,
    },

    /// GPUs exist but `CUDA_VISIBLE_DEVICES` hides every one of them.
    #[error(
        "no CUDA GPU visible: {via} found {found} GPU(s) but CUDA_VISIBLE_DEVICES=`{cuda_visible_devices}` hides them all"
    )]
    AllHidden {
        /// GPUs on the machine.
        found: usize,
        /// Which probe found them.
        via: InventorySource,
        /// The variable's value.
        cuda_visible_devices: String,
    },

    /// `cuda:N` with `N` not below the visible count.
    #[error(
        "GPU index {index} is out of range: {visible} GPU(s) visible, so valid indices are 0..{visible}{}",
        visible_note(cuda_visible_devices.as_deref())
    )]
    IndexOutOfRange {
        /// The index asked for.
        index: u32,
        /// How many GPUs are visible.
        visible: usize,
        /// `CUDA_VISIBLE_DEVICES`, when it is set.
        cuda_visible_devices: Option<String>,
    },

    /// A request built in code that names no device (`cpu:0`, an empty list).
    #[error("device request `{0}` names no device")]
    NoDeviceNamed(String),

    /// `/proc/meminfo` could not be read or understood.
    #[error("could not read host memory from /proc/meminfo: {0}")]
    HostMemory(String),
}

fn visible_note(cuda_visible_devices: Option<&str>) -> String {
    cuda_visible_devices
        .map(|v| format!(" (CUDA_VISIBLE_DEVICES is set to `{v}`)"))
        .unwrap_or_default()
}

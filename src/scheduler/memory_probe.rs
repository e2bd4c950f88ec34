//! Measures a running worker's memory on its device: the process's peak
//! resident set on the host (`VmHWM`), its used GPU memory from NVML on
//! CUDA (tch exposes no allocator statistics; NVML sees what the caching
//! allocator holds, which is what other trials on the GPU cannot use).
//! The scheduler samples it on every tick and keeps the maximum.

use nvml_wrapper::Nvml;

use crate::devices::detect::{Device, DeviceKind};
use crate::devices::usage::{gpu_bytes, peak_rss};

pub struct MemoryProbe {
    nvml: Option<Nvml>,
}

impl MemoryProbe {
    /// NVML is opened only when GPUs are in use (and may be absent).
    pub fn new(uses_cuda: bool) -> Self {
        MemoryProbe {
            nvml: uses_cuda.then(|| Nvml::init().ok()).flatten(),
        }
    }

    /// Bytes the process `pid` holds on `device`, if measurable now.
    pub fn sample(&self, pid: u32, device: &Device) -> Option<u64> {
        match device.kind {
            DeviceKind::Cpu => peak_rss(pid),
            DeviceKind::Cuda => self.gpu_used(pid, device),
        }
    }

    fn gpu_used(&self, pid: u32, device: &Device) -> Option<u64> {
        let nvml = self.nvml.as_ref()?;
        let gpu = match &device.uuid {
            Some(uuid) => nvml.device_by_uuid(uuid.as_str()).ok()?,
            None => nvml.device_by_index(device.index).ok()?,
        };
        gpu_bytes(&gpu, pid)
    }
}

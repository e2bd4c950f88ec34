//! Measures a running worker's memory on its device: the process's peak
//! resident set on the host (`VmHWM`), its used GPU memory from NVML on
//! CUDA (tch exposes no allocator statistics; NVML sees what the caching
//! allocator holds, which is what other trials on the GPU cannot use).
//! The scheduler samples it on every tick and keeps the maximum.

use nvml_wrapper::Nvml;
use nvml_wrapper::enums::device::UsedGpuMemory;

use crate::devices::detect::{Device, DeviceKind};

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
        gpu.running_compute_processes()
            .ok()?
            .into_iter()
            .find(|p| p.pid == pid)
            .and_then(|p| match p.used_gpu_memory {
                UsedGpuMemory::Used(bytes) => Some(bytes),
                UsedGpuMemory::Unavailable => None,
            })
    }
}

/// `VmHWM` of `/proc/<pid>/status`: the process's peak resident set.
pub fn peak_rss(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_has_a_peak_resident_set() {
        let bytes = peak_rss(std::process::id()).unwrap();
        assert!(bytes > 1 << 20, "{bytes}");
        assert_eq!(peak_rss(u32::MAX), None);
    }
}

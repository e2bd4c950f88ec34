//! Peak GPU memory of this process, sampled through NVML.
//!
//! tch exposes none of c10's CUDA allocator statistics, so a background
//! thread asks NVML every [`INTERVAL`] for the memory this process holds on
//! the device and keeps the maximum. That is what the driver sees: the CUDA
//! context plus everything the caching allocator has reserved, i.e. what
//! packing trials onto a GPU has to budget for (more than `max_allocated`).
//! The allocator never returns memory by itself, so the reserved total only
//! grows and a sampled maximum misses nothing that lasted.
//!
//! Inside a PID namespace NVML may report host PIDs that never equal ours;
//! the sampler then falls back to the device's used memory minus what was
//! used when it started ([`Source::DeviceMinusBaseline`]), which counts any
//! other process that allocates meanwhile.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use nvml_wrapper::Nvml;

use crate::devices::detect::{DeviceKind, resolve};
use crate::devices::grammar::DeviceRequest;

/// Sampling period.
pub const INTERVAL: Duration = Duration::from_millis(20);

#[derive(Debug, thiserror::Error)]
pub enum GpuMemoryError {
    #[error("cannot find CUDA device {index} through NVML: {reason}")]
    Device { index: usize, reason: String },
}

/// Where the peak comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// NVML's per-process used memory for our PID.
    Process,
    /// Device used memory minus the baseline at start (our PID not listed).
    DeviceMinusBaseline,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Process => "nvml-process",
            Source::DeviceMinusBaseline => "nvml-device-minus-baseline",
        }
    }
}

/// A running sampler; stops on drop.
pub struct GpuMemorySampler {
    /// The product name, e.g. `NVIDIA H100 80GB HBM3`.
    pub name: String,
    peak_process: Arc<AtomicU64>,
    peak_device: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

/// Used memory of the device, and what NVML lists for `pid` (`None`: not
/// listed).
fn sample(device: &nvml_wrapper::Device, pid: u32) -> (u64, Option<u64>) {
    let used = device.memory_info().map_or(0, |m| m.used);
    (used, crate::devices::usage::gpu_bytes(device, pid))
}

impl GpuMemorySampler {
    /// Starts sampling the visible CUDA device `index` (CUDA ordinal, as
    /// `--device cuda:N`; `CUDA_VISIBLE_DEVICES` is honoured through the
    /// device inventory's UUIDs).
    pub fn start(index: usize) -> Result<Self, GpuMemoryError> {
        let fail = |reason: String| GpuMemoryError::Device { index, reason };
        let inventory =
            resolve(&DeviceRequest::Cuda { indices: None }).map_err(|e| fail(e.to_string()))?;
        let gpu = inventory
            .devices
            .iter()
            .filter(|d| d.kind == DeviceKind::Cuda)
            .nth(index)
            .ok_or_else(|| fail("no such visible GPU".into()))?;
        let uuid = gpu
            .uuid
            .clone()
            .ok_or_else(|| fail("the GPU has no UUID".into()))?;
        let nvml = Nvml::init().map_err(|e| fail(e.to_string()))?;
        // Fail here, not silently on the thread.
        let baseline = {
            let device = nvml
                .device_by_uuid(uuid.as_str())
                .map_err(|e| fail(e.to_string()))?;
            device.memory_info().map_err(|e| fail(e.to_string()))?.used
        };
        let peak_process = Arc::new(AtomicU64::new(0));
        let peak_device = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (peak_process, peak_device, stop) = (
                Arc::clone(&peak_process),
                Arc::clone(&peak_device),
                Arc::clone(&stop),
            );
            std::thread::spawn(move || {
                let Ok(device) = nvml.device_by_uuid(uuid.as_str()) else {
                    return;
                };
                let pid = std::process::id();
                loop {
                    let (used, mine) = sample(&device, pid);
                    peak_device.fetch_max(used.saturating_sub(baseline), Ordering::Relaxed);
                    if let Some(mine) = mine {
                        peak_process.fetch_max(mine, Ordering::Relaxed);
                    }
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    std::thread::sleep(INTERVAL);
                }
            })
        };
        Ok(Self {
            name: gpu.name.clone(),
            peak_process,
            peak_device,
            stop,
            thread: Some(thread),
        })
    }

    /// The peak so far and where it comes from.
    pub fn peak(&self) -> (u64, Source) {
        let process = self.peak_process.load(Ordering::Relaxed);
        if process > 0 {
            (process, Source::Process)
        } else {
            (
                self.peak_device.load(Ordering::Relaxed),
                Source::DeviceMinusBaseline,
            )
        }
    }

    /// Takes one more sample (after the device synchronised), so a peak
    /// reached in the last interval is not missed, and returns the peak.
    pub fn finish_sample(&self) -> (u64, Source) {
        // Two periods: the thread has sampled at least once since.
        std::thread::sleep(INTERVAL * 2);
        self.peak()
    }
}

impl Drop for GpuMemorySampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Dense bf16 tensor-core peak of known GPUs, in TFLOP/s (vendor data
/// sheets, without sparsity): the MFU denominator when `--peak-tflops` is
/// not given.
pub fn bf16_peak_tflops(name: &str) -> Option<f64> {
    let name = name.to_ascii_uppercase();
    let table: [(&[&str], f64); 6] = [
        (&["H100", "PCIE"], 756.0),
        (&["H100", "NVL"], 835.0),
        (&["H100"], 989.0),
        (&["H200"], 989.0),
        (&["A100"], 312.0),
        (&["L40S"], 362.0),
    ];
    table
        .iter()
        .find(|(parts, _)| parts.iter().all(|p| name.contains(p)))
        .map(|&(_, tflops)| tflops)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peak_tflops_by_product_name() {
        assert_eq!(bf16_peak_tflops("NVIDIA H100 80GB HBM3"), Some(989.0));
        assert_eq!(bf16_peak_tflops("NVIDIA H100 PCIe"), Some(756.0));
        assert_eq!(bf16_peak_tflops("NVIDIA H200"), Some(989.0));
        assert_eq!(bf16_peak_tflops("NVIDIA A100-SXM4-80GB"), Some(312.0));
        assert_eq!(bf16_peak_tflops("Tesla T4"), None);
    }
}

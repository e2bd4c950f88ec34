//! What one process uses: its peak resident set on the host, its memory on
//! a GPU as NVML lists it. The scheduler samples its workers with these and
//! `bench` samples itself.

use nvml_wrapper::enums::device::UsedGpuMemory;

/// `VmHWM` of `/proc/<pid>/status`: the process's peak resident set.
pub fn peak_rss(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Bytes NVML lists for `pid` on `gpu` (its contexts summed); `None` when
/// the process is not listed or NVML cannot tell.
pub fn gpu_bytes(gpu: &nvml_wrapper::Device, pid: u32) -> Option<u64> {
    gpu.running_compute_processes()
        .ok()?
        .into_iter()
        .filter(|p| p.pid == pid)
        .filter_map(|p| match p.used_gpu_memory {
            UsedGpuMemory::Used(bytes) => Some(bytes),
            UsedGpuMemory::Unavailable => None,
        })
        .reduce(|a, b| a + b)
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

//! Turns a [`DeviceRequest`] into a concrete [`Inventory`].
//!
//! GPUs come from NVML (loaded at run time, so a machine without the driver
//! still runs) or, failing that, from `nvidia-smi`. Both list every GPU on the
//! machine, so `CUDA_VISIBLE_DEVICES` is applied here the way the CUDA runtime
//! applies it, and visible GPUs are numbered in PCI bus order, which is what
//! CUDA does under `CUDA_DEVICE_ORDER=PCI_BUS_ID` (the scheduler sets that for
//! workers). Pin a worker to a device through its `uuid`, which stays right
//! whatever the worker's own `CUDA_VISIBLE_DEVICES` becomes.
//!
//! The parsing of `nvidia-smi` output, `CUDA_VISIBLE_DEVICES` and
//! `/proc/meminfo` lives in pure functions so it is tested without a GPU.

use std::fmt;
use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::devices::error::DeviceError;
use crate::devices::grammar::{DeviceRequest, format_bytes};

/// What a [`Device`] is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeviceKind {
    /// A trial slot on the host.
    Cpu,
    /// A CUDA GPU, real or hypothetical.
    Cuda,
}

impl fmt::Display for DeviceKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Cpu => "cpu",
            Self::Cuda => "cuda",
        })
    }
}

/// Where an [`Inventory`] came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InventorySource {
    /// The NVIDIA Management Library.
    Nvml,
    /// `nvidia-smi --query-gpu`, when NVML could not be used.
    NvidiaSmi,
    /// The host's CPUs and `/proc/meminfo`.
    Host,
    /// Sizes written in the request (`cuda:4x24GiB`); nothing was detected.
    Hypothetical,
    /// A Slurm cluster: it places the jobs; the one device stands for it.
    Slurm,
}

impl fmt::Display for InventorySource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Nvml => "NVML",
            Self::NvidiaSmi => "nvidia-smi",
            Self::Host => "host",
            Self::Hypothetical => "hypothetical",
            Self::Slurm => "Slurm",
        })
    }
}

/// One place a trial can run: a GPU, or one slot of the host.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Device {
    /// GPU or host slot.
    pub kind: DeviceKind,
    /// `cuda:0`, `cpu:1`: the kind and [`Device::index`].
    pub label: String,
    /// The CUDA ordinal among the visible GPUs, or the slot number.
    pub index: u32,
    /// Product name (`NVIDIA H100 80GB HBM3`), CPU model, or `hypothetical`.
    pub name: String,
    /// The GPU's UUID (`GPU-…`), usable in a worker's `CUDA_VISIBLE_DEVICES`.
    pub uuid: Option<String>,
    /// Memory in bytes; for host slots, all of the host's (the pool is shared).
    pub total_bytes: u64,
    /// Memory free when detected; equal to the total for hypothetical GPUs.
    pub free_bytes: u64,
    /// Torch threads for a host slot; `None` for GPUs.
    pub threads: Option<u32>,
}

impl fmt::Display for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: {}, {} ({} free)",
            self.label,
            self.name,
            format_bytes(self.total_bytes),
            format_bytes(self.free_bytes)
        )?;
        if let Some(threads) = self.threads {
            write!(f, ", {threads} thread(s)")?;
        }
        Ok(())
    }
}

/// The devices a sweep may use.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Inventory {
    /// In CUDA ordinal (or slot) order, or in the order a `cuda:2,0` request
    /// listed them.
    pub devices: Vec<Device>,
    /// How they were found.
    pub source: InventorySource,
    /// True for host slots: they all draw on the same RAM, so memory budgets
    /// must be summed across slots rather than checked per device.
    pub shared_memory_pool: bool,
}

impl Inventory {
    /// The Slurm backend's inventory: one unbounded device, `slurm`, that
    /// stands for the cluster (Slurm decides where jobs run and how many
    /// run at once; the plan only orders them).
    pub fn slurm() -> Self {
        Self {
            devices: vec![Device {
                kind: DeviceKind::Cuda,
                label: "slurm".into(),
                index: 0,
                name: "Slurm cluster".into(),
                uuid: None,
                total_bytes: u64::MAX / 4,
                free_bytes: u64::MAX / 4,
                threads: None,
            }],
            source: InventorySource::Slurm,
            shared_memory_pool: false,
        }
    }
}

/// How long `nvidia-smi` may take: a wedged driver can make it hang.
const NVIDIA_SMI_TIMEOUT: Duration = Duration::from_secs(15);

const NVIDIA_SMI_ARGS: [&str; 2] = [
    "--query-gpu=index,uuid,name,memory.total,memory.free",
    "--format=csv,noheader,nounits",
];

/// Detects what `request` names.
///
/// `auto` never fails for lack of a GPU: it falls back to the host with one
/// slot. `cuda` and `cuda:…` fail when no GPU is visible or an index is out of
/// range. Hypothetical requests detect nothing.
pub fn resolve(request: &DeviceRequest) -> Result<Inventory, DeviceError> {
    let visible_env =
        std::env::var_os("CUDA_VISIBLE_DEVICES").map(|v| v.to_string_lossy().into_owned());
    let visible_env = visible_env.as_deref();
    match request {
        DeviceRequest::Hypothetical(sizes) if sizes.is_empty() => {
            Err(DeviceError::NoDeviceNamed(request.to_string()))
        }
        DeviceRequest::Hypothetical(sizes) => Ok(hypothetical_inventory(sizes)),
        DeviceRequest::Cpu { slots: Some(0) } => {
            Err(DeviceError::NoDeviceNamed(request.to_string()))
        }
        DeviceRequest::Cpu { slots } => host_inventory(slots.unwrap_or(1)),
        // Any failure to find a GPU means "use the host" here, by definition.
        DeviceRequest::Auto => visible_gpus(visible_env).or_else(|_| host_inventory(1)),
        DeviceRequest::Cuda { indices: None } => visible_gpus(visible_env),
        DeviceRequest::Cuda {
            indices: Some(indices),
        } => {
            if indices.is_empty() {
                return Err(DeviceError::NoDeviceNamed(request.to_string()));
            }
            select(&visible_gpus(visible_env)?, indices, visible_env)
        }
    }
}

/// One GPU as a probe reports it, in the probe's (PCI bus) order.
#[derive(Clone, Debug, PartialEq, Eq)]
struct GpuRecord {
    uuid: String,
    name: String,
    total_bytes: u64,
    free_bytes: u64,
}

/// Every visible GPU, numbered as CUDA numbers them.
fn visible_gpus(visible_env: Option<&str>) -> Result<Inventory, DeviceError> {
    let (gpus, source) = probe_gpus().map_err(|tried| DeviceError::NoGpu {
        tried,
        cuda_visible_devices: visible_env.map(str::to_owned),
    })?;
    if gpus.is_empty() {
        return Err(DeviceError::NoGpu {
            tried: format!("{source} reported 0 GPUs"),
            cuda_visible_devices: visible_env.map(str::to_owned),
        });
    }
    let uuids: Vec<&str> = gpus.iter().map(|g| g.uuid.as_str()).collect();
    let positions = visible_positions(visible_env, &uuids);
    if positions.is_empty() {
        return Err(DeviceError::AllHidden {
            found: gpus.len(),
            via: source,
            cuda_visible_devices: visible_env.unwrap_or_default().to_owned(),
        });
    }
    Ok(gpu_inventory(&gpus, &positions, source))
}

fn gpu_inventory(gpus: &[GpuRecord], positions: &[usize], source: InventorySource) -> Inventory {
    let devices = positions
        .iter()
        .zip(0u32..)
        .map(|(&position, ordinal)| {
            let gpu = &gpus[position];
            Device {
                kind: DeviceKind::Cuda,
                label: format!("cuda:{ordinal}"),
                index: ordinal,
                name: gpu.name.clone(),
                uuid: Some(gpu.uuid.clone()),
                total_bytes: gpu.total_bytes,
                free_bytes: gpu.free_bytes,
                threads: None,
            }
        })
        .collect();
    Inventory {
        devices,
        source,
        shared_memory_pool: false,
    }
}

/// Keeps the devices `indices` names, in the order named.
fn select(
    inventory: &Inventory,
    indices: &[u32],
    visible_env: Option<&str>,
) -> Result<Inventory, DeviceError> {
    let visible = inventory.devices.len();
    let devices = indices
        .iter()
        .map(|&index| {
            inventory
                .devices
                .get(index as usize)
                .cloned()
                .ok_or_else(|| DeviceError::IndexOutOfRange {
                    index,
                    visible,
                    cuda_visible_devices: visible_env.map(str::to_owned),
                })
        })
        .collect::<Result<_, _>>()?;
    Ok(Inventory {
        devices,
        source: inventory.source,
        shared_memory_pool: inventory.shared_memory_pool,
    })
}

/// NVML first, then `nvidia-smi`; on failure, what each said.
fn probe_gpus() -> Result<(Vec<GpuRecord>, InventorySource), String> {
    let nvml = match probe_nvml() {
        Ok(gpus) => return Ok((gpus, InventorySource::Nvml)),
        Err(reason) => reason,
    };
    let smi =
        match run_nvidia_smi().and_then(|out| parse_nvidia_smi(&out).map_err(|e| e.to_string())) {
            Ok(gpus) => return Ok((gpus, InventorySource::NvidiaSmi)),
            Err(reason) => reason,
        };
    Err(format!("NVML: {nvml}; nvidia-smi: {smi}"))
}

fn probe_nvml() -> Result<Vec<GpuRecord>, String> {
    use nvml_wrapper::Nvml;
    let nvml = Nvml::init().map_err(|e| e.to_string())?;
    let count = nvml.device_count().map_err(|e| e.to_string())?;
    let mut found = Vec::with_capacity(count as usize);
    for i in 0..count {
        let device = nvml
            .device_by_index(i)
            .map_err(|e| format!("device {i}: {e}"))?;
        let memory = device
            .memory_info()
            .map_err(|e| format!("device {i} memory: {e}"))?;
        let record = GpuRecord {
            uuid: device.uuid().map_err(|e| format!("device {i} uuid: {e}"))?,
            name: device.name().map_err(|e| format!("device {i} name: {e}"))?,
            total_bytes: memory.total,
            free_bytes: memory.free,
        };
        let bus_id = device
            .pci_info()
            .ok()
            .map(|p| p.bus_id.to_ascii_lowercase());
        found.push((bus_id, record));
    }
    // NVML does not promise PCI order between reboots; CUDA_DEVICE_ORDER=PCI_BUS_ID
    // does, so sort by bus id when every device reported one.
    if found.iter().all(|(bus_id, _)| bus_id.is_some()) {
        found.sort_by(|a, b| a.0.cmp(&b.0));
    }
    Ok(found.into_iter().map(|(_, record)| record).collect())
}

/// Runs `nvidia-smi --query-gpu` and returns its standard output.
fn run_nvidia_smi() -> Result<String, String> {
    let mut child = Command::new("nvidia-smi")
        .args(NVIDIA_SMI_ARGS)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => "not found on PATH".to_owned(),
            _ => format!("could not run it: {e}"),
        })?;
    let deadline = Instant::now() + NVIDIA_SMI_TIMEOUT;
    // Polling is fine: a few hundred bytes per GPU stay far below the pipe
    // buffer, so the child never blocks on a full stdout before exiting.
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            Ok(None) => {
                // Best effort: the child may exit on its own between the two calls.
                child.kill().ok();
                child.wait().ok();
                return Err(format!(
                    "no answer within {} s",
                    NVIDIA_SMI_TIMEOUT.as_secs()
                ));
            }
            Err(e) => return Err(e.to_string()),
        }
    };
    let mut stdout = String::new();
    let mut stderr = String::new();
    if let Some(mut pipe) = child.stdout.take() {
        pipe.read_to_string(&mut stdout)
            .map_err(|e| e.to_string())?;
    }
    if let Some(mut pipe) = child.stderr.take() {
        pipe.read_to_string(&mut stderr).ok();
    }
    if !status.success() {
        let said = [stderr.trim(), stdout.trim()]
            .into_iter()
            .find(|s| !s.is_empty())
            .and_then(|s| s.lines().next())
            .unwrap_or("no output");
        return Err(format!("{status}: {said}"));
    }
    Ok(stdout)
}

/// A line of `nvidia-smi` output that did not have the expected shape.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unexpected nvidia-smi output on line {line_number} (`{line}`): {reason}")]
struct SmiParseError {
    line_number: usize,
    line: String,
    reason: String,
}

/// Parses `index, uuid, name, memory.total, memory.free` lines (MiB, no
/// header, no units) and returns the GPUs ordered by index.
fn parse_nvidia_smi(text: &str) -> Result<Vec<GpuRecord>, SmiParseError> {
    let mut gpus = Vec::new();
    for (number, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let fail = |reason: String| SmiParseError {
            line_number: number + 1,
            line: line.to_owned(),
            reason,
        };
        let fields: Vec<&str> = line.split(',').map(str::trim).collect();
        // Names are taken from the middle so a comma inside one cannot shift
        // the numeric columns.
        let [index, uuid, name @ .., total, free] = fields.as_slice() else {
            return Err(fail(format!(
                "expected 5 comma-separated fields, found {}",
                fields.len()
            )));
        };
        if name.is_empty() {
            return Err(fail(format!(
                "expected 5 comma-separated fields, found {}",
                fields.len()
            )));
        }
        let index: u32 = index
            .parse()
            .map_err(|_| fail(format!("index `{index}` is not a number")))?;
        if uuid.is_empty() {
            return Err(fail("empty uuid".to_owned()));
        }
        let mib = |field: &str, value: &str| {
            value
                .parse::<u64>()
                .ok()
                .and_then(|v| v.checked_mul(1 << 20))
                .ok_or_else(|| fail(format!("{field} `{value}` is not a number of MiB")))
        };
        gpus.push((
            index,
            GpuRecord {
                uuid: (*uuid).to_owned(),
                name: name.join(","),
                total_bytes: mib("memory.total", total)?,
                free_bytes: mib("memory.free", free)?,
            },
        ));
    }
    // nvidia-smi's index is NVML's, which follows the PCI bus.
    gpus.sort_by_key(|(index, _)| *index);
    Ok(gpus.into_iter().map(|(_, gpu)| gpu).collect())
}

/// Which probe positions CUDA makes visible, in CUDA ordinal order.
///
/// Follows the CUDA runtime: unset means all; entries are indices or `GPU-…`
/// UUID prefixes (unique among the GPUs); the list ends at the first entry
/// that is invalid, out of range, ambiguous or repeated, so `-1` (or an empty
/// value) hides every GPU. MIG identifiers are not supported and end the list.
fn visible_positions(visible_env: Option<&str>, uuids: &[&str]) -> Vec<usize> {
    let Some(spec) = visible_env else {
        return (0..uuids.len()).collect();
    };
    let mut positions = Vec::new();
    for entry in spec.split(',').map(str::trim) {
        let position = if !entry.is_empty() && entry.bytes().all(|b| b.is_ascii_digit()) {
            entry.parse::<usize>().ok().filter(|&i| i < uuids.len())
        } else if has_prefix_ignore_case(entry, "GPU-") {
            let mut matches = uuids
                .iter()
                .enumerate()
                .filter(|(_, uuid)| has_prefix_ignore_case(uuid, entry));
            match (matches.next(), matches.next()) {
                (Some((position, _)), None) => Some(position),
                _ => None,
            }
        } else {
            None
        };
        match position {
            Some(p) if !positions.contains(&p) => positions.push(p),
            _ => break,
        }
    }
    positions
}

fn has_prefix_ignore_case(text: &str, prefix: &str) -> bool {
    text.get(..prefix.len())
        .is_some_and(|head| head.eq_ignore_ascii_case(prefix))
}

fn hypothetical_inventory(sizes: &[u64]) -> Inventory {
    let devices = sizes
        .iter()
        .zip(0u32..)
        .map(|(&bytes, index)| Device {
            kind: DeviceKind::Cuda,
            label: format!("cuda:{index}"),
            index,
            name: "hypothetical".to_owned(),
            uuid: None,
            total_bytes: bytes,
            free_bytes: bytes,
            threads: None,
        })
        .collect();
    Inventory {
        devices,
        source: InventorySource::Hypothetical,
        shared_memory_pool: false,
    }
}

/// Host memory from `/proc/meminfo`, in bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct HostMemory {
    total: u64,
    available: u64,
}

fn host_inventory(slots: u32) -> Result<Inventory, DeviceError> {
    let meminfo = std::fs::read_to_string("/proc/meminfo")
        .map_err(|e| DeviceError::HostMemory(e.to_string()))?;
    let memory = parse_meminfo(&meminfo).map_err(DeviceError::HostMemory)?;
    let name = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|text| cpu_model_name(&text))
        .unwrap_or_else(|| "host CPU".to_owned());
    let parallelism = std::thread::available_parallelism()
        .map_or(1, |n| u32::try_from(n.get()).unwrap_or(u32::MAX));
    Ok(cpu_inventory(slots, parallelism, memory, &name))
}

/// `slots` host slots, each with an equal share of `parallelism` threads (at
/// least one) and the whole host's memory, since they share it.
fn cpu_inventory(slots: u32, parallelism: u32, memory: HostMemory, name: &str) -> Inventory {
    let threads = (parallelism / slots.max(1)).max(1);
    let devices = (0..slots)
        .map(|index| Device {
            kind: DeviceKind::Cpu,
            label: format!("cpu:{index}"),
            index,
            name: name.to_owned(),
            uuid: None,
            total_bytes: memory.total,
            free_bytes: memory.available,
            threads: Some(threads),
        })
        .collect();
    Inventory {
        devices,
        source: InventorySource::Host,
        shared_memory_pool: true,
    }
}

/// `MemTotal` and `MemAvailable` (or `MemFree` on kernels before 3.14).
fn parse_meminfo(text: &str) -> Result<HostMemory, String> {
    let field = |key: &str| -> Result<Option<u64>, String> {
        let Some(line) = text.lines().find(|l| l.split(':').next() == Some(key)) else {
            return Ok(None);
        };
        let value = line.split_once(':').map_or("", |(_, v)| v).trim();
        let kib = value.strip_suffix("kB").unwrap_or(value).trim();
        kib.parse::<u64>()
            .ok()
            .and_then(|v| v.checked_mul(1024))
            .map(Some)
            .ok_or_else(|| format!("{key} `{value}` is not a size in kB"))
    };
    let total = field("MemTotal")?.ok_or("no MemTotal line")?;
    let available = match field("MemAvailable")? {
        Some(v) => v,
        None => field("MemFree")?.ok_or("no MemAvailable or MemFree line")?,
    };
    Ok(HostMemory { total, available })
}

/// The first `model name` in `/proc/cpuinfo` (absent on some ARM kernels).
fn cpu_model_name(text: &str) -> Option<String> {
    text.lines()
        .filter_map(|l| l.split_once(':'))
        .find(|(key, _)| key.trim() == "model name")
        .map(|(_, value)| value.trim().to_owned())
        .filter(|name| !name.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    const GIB: u64 = 1 << 30;
    const MIB: u64 = 1 << 20;

    const UUIDS: [&str; 4] = [
        "GPU-8932f937-d72c-4106-c12f-20bd9faed9f6",
        "GPU-1a2b3c4d-0000-1111-2222-333344445555",
        "GPU-1a2b9999-0000-1111-2222-333344445555",
        "GPU-ffee0000-0000-1111-2222-333344445555",
    ];

    fn visible(env: Option<&str>) -> Vec<usize> {
        visible_positions(env, &UUIDS)
    }

    #[test]
    fn visible_devices_unset_means_all() {
        assert_eq!(visible(None), vec![0, 1, 2, 3]);
        assert_eq!(visible_positions(None, &[]), Vec::<usize>::new());
    }

    #[test]
    fn visible_devices_by_index_keeps_listed_order() {
        assert_eq!(visible(Some("2,0")), vec![2, 0]);
        assert_eq!(visible(Some(" 3 , 1 ")), vec![3, 1]);
    }

    #[test]
    fn visible_devices_empty_or_minus_one_hide_all() {
        assert!(visible(Some("")).is_empty());
        assert!(visible(Some("  ")).is_empty());
        assert!(visible(Some("-1")).is_empty());
        assert!(visible(Some("-1,0")).is_empty());
    }

    #[test]
    fn visible_devices_stop_at_first_invalid_entry() {
        // CUDA truncates at the first bad entry rather than skipping it.
        assert_eq!(visible(Some("1,7,2")), vec![1]);
        assert_eq!(visible(Some("0,-1,2")), vec![0]);
        assert_eq!(visible(Some("0,foo,2")), vec![0]);
        assert_eq!(visible(Some("1,1,2")), vec![1]);
        assert!(visible(Some("4")).is_empty());
    }

    #[test]
    fn visible_devices_by_uuid_prefix() {
        assert_eq!(visible(Some("GPU-8932f937")), vec![0]);
        assert_eq!(visible(Some("gpu-FFEE,0")), vec![3, 0]);
        assert_eq!(visible(Some(UUIDS[2])), vec![2]);
        // `GPU-1a2b` matches two GPUs: ambiguous, so it ends the list.
        assert_eq!(visible(Some("0,GPU-1a2b,3")), vec![0]);
        assert!(visible(Some("GPU-0000")).is_empty());
        assert!(visible(Some("MIG-8932f937")).is_empty());
    }

    const SMI: &str = "\
1, GPU-1a2b3c4d-0000-1111-2222-333344445555, NVIDIA A100-SXM4-40GB, 40960, 40331
0, GPU-8932f937-d72c-4106-c12f-20bd9faed9f6, NVIDIA H100 80GB HBM3, 81559, 81004

";

    #[test]
    fn nvidia_smi_lines_parse_in_index_order() {
        let gpus = parse_nvidia_smi(SMI).unwrap();
        assert_eq!(
            gpus,
            vec![
                GpuRecord {
                    uuid: UUIDS[0].to_owned(),
                    name: "NVIDIA H100 80GB HBM3".to_owned(),
                    total_bytes: 81_559 * MIB,
                    free_bytes: 81_004 * MIB,
                },
                GpuRecord {
                    uuid: UUIDS[1].to_owned(),
                    name: "NVIDIA A100-SXM4-40GB".to_owned(),
                    total_bytes: 40_960 * MIB,
                    free_bytes: 40_331 * MIB,
                },
            ]
        );
        assert!(parse_nvidia_smi("").unwrap().is_empty());
    }

    #[test]
    fn nvidia_smi_name_with_comma_keeps_columns() {
        let gpus = parse_nvidia_smi("0, GPU-x, Odd, Name, 100, 50").unwrap();
        assert_eq!(gpus[0].name, "Odd,Name");
        assert_eq!(gpus[0].total_bytes, 100 * MIB);
        assert_eq!(gpus[0].free_bytes, 50 * MIB);
    }

    #[test]
    fn nvidia_smi_malformed_lines_are_errors() {
        let cases = [
            ("0, GPU-x, H100, 81559", 1, "expected 5"),
            (
                "0, GPU-x, H100, 81559, 81004\nNo devices were found",
                2,
                "expected 5",
            ),
            ("zero, GPU-x, H100, 81559, 81004", 1, "index `zero`"),
            ("0, , H100, 81559, 81004", 1, "empty uuid"),
            ("0, GPU-x, H100, [N/A], 81004", 1, "memory.total `[N/A]`"),
            ("0, GPU-x, H100, 81559, 81004 MiB", 1, "memory.free"),
            ("0, GPU-x, H100, 99999999999999999, 1", 1, "memory.total"),
        ];
        for (text, line_number, needle) in cases {
            let err = parse_nvidia_smi(text).unwrap_err();
            assert_eq!(err.line_number, line_number, "{text}");
            assert!(err.to_string().contains(needle), "{err}");
        }
    }

    fn fake_gpus() -> Vec<GpuRecord> {
        parse_nvidia_smi(
            "0, GPU-a, H100, 81559, 81000\n1, GPU-b, H100, 81559, 1000\n2, GPU-c, A100, 40960, 40000",
        )
        .unwrap()
    }

    #[test]
    fn gpu_inventory_numbers_visible_devices_from_zero() {
        let gpus = fake_gpus();
        let uuids: Vec<&str> = gpus.iter().map(|g| g.uuid.as_str()).collect();
        let positions = visible_positions(Some("2,0"), &uuids);
        let inventory = gpu_inventory(&gpus, &positions, InventorySource::NvidiaSmi);
        let labels: Vec<_> = inventory.devices.iter().map(|d| d.label.as_str()).collect();
        assert_eq!(labels, ["cuda:0", "cuda:1"]);
        assert_eq!(inventory.devices[0].uuid.as_deref(), Some("GPU-c"));
        assert_eq!(inventory.devices[0].name, "A100");
        assert_eq!(inventory.devices[1].uuid.as_deref(), Some("GPU-a"));
        assert_eq!(inventory.devices[1].free_bytes, 81_000 * MIB);
        assert!(!inventory.shared_memory_pool);
    }

    #[test]
    fn select_picks_among_visible_and_checks_range() {
        let gpus = fake_gpus();
        let inventory = gpu_inventory(&gpus, &[0, 1, 2], InventorySource::Nvml);
        let picked = select(&inventory, &[2, 0], None).unwrap();
        let uuids: Vec<_> = picked
            .devices
            .iter()
            .filter_map(|d| d.uuid.as_deref())
            .collect();
        assert_eq!(uuids, ["GPU-c", "GPU-a"]);
        assert_eq!(picked.devices[0].label, "cuda:2");

        let err = select(&inventory, &[0, 3], Some("0,1,2")).unwrap_err();
        assert!(matches!(
            err,
            DeviceError::IndexOutOfRange {
                index: 3,
                visible: 3,
                ..
            }
        ));
        let message = err.to_string();
        assert!(message.contains("3 GPU(s) visible"), "{message}");
        assert!(
            message.contains("CUDA_VISIBLE_DEVICES is set to `0,1,2`"),
            "{message}"
        );
    }

    #[test]
    fn no_gpu_error_mentions_probes_and_visible_devices() {
        let err = DeviceError::NoGpu {
            tried: "NVML: not loaded; nvidia-smi: not found".to_owned(),
            cuda_visible_devices: Some("-1".to_owned()),
        };
        let message = err.to_string();
        assert!(
            message.starts_with("no CUDA GPU found (NVML: not loaded; nvidia-smi"),
            "{message}"
        );
        assert!(
            message.contains("CUDA_VISIBLE_DEVICES is set to `-1`"),
            "{message}"
        );
        let unset = DeviceError::NoGpu {
            tried: String::new(),
            cuda_visible_devices: None,
        };
        assert!(!unset.to_string().contains("CUDA_VISIBLE_DEVICES"));
    }

    #[test]
    fn cpu_slots_split_threads() {
        let memory = HostMemory {
            total: 64 * GIB,
            available: 48 * GIB,
        };
        let inventory = cpu_inventory(2, 16, memory, "Xeon");
        assert_eq!(inventory.source, InventorySource::Host);
        assert!(inventory.shared_memory_pool);
        assert_eq!(inventory.devices.len(), 2);
        for (i, device) in inventory.devices.iter().enumerate() {
            assert_eq!(device.kind, DeviceKind::Cpu);
            assert_eq!(device.label, format!("cpu:{i}"));
            assert_eq!(device.threads, Some(8));
            assert_eq!(device.total_bytes, 64 * GIB);
            assert_eq!(device.free_bytes, 48 * GIB);
        }
        assert_eq!(cpu_inventory(3, 8, memory, "x").devices[2].threads, Some(2));
        assert_eq!(cpu_inventory(4, 2, memory, "x").devices[0].threads, Some(1));
    }

    #[test]
    fn meminfo_parses_total_and_available() {
        let text = "MemTotal:       65536 kB\nMemFree:         1024 kB\nMemAvailable:   32768 kB\n";
        assert_eq!(
            parse_meminfo(text),
            Ok(HostMemory {
                total: 65_536 * 1024,
                available: 32_768 * 1024
            })
        );
        let old = "MemTotal: 2048 kB\nMemFree: 1024 kB\n";
        assert_eq!(parse_meminfo(old).unwrap().available, 1024 * 1024);
        assert!(parse_meminfo("MemFree: 1 kB\n").is_err());
        assert!(parse_meminfo("MemTotal: lots\nMemAvailable: 1 kB").is_err());
    }

    #[test]
    fn cpu_model_name_from_cpuinfo() {
        let text = "processor\t: 0\nmodel name\t: AMD EPYC 9654\nflags\t: fpu\n";
        assert_eq!(cpu_model_name(text).as_deref(), Some("AMD EPYC 9654"));
        assert_eq!(cpu_model_name("processor\t: 0\n"), None);
    }

    #[test]
    fn hypothetical_devices_are_labelled_and_free() {
        let request: DeviceRequest = "cuda:80GiB,2x24GiB".parse().unwrap();
        let inventory = resolve(&request).unwrap();
        assert_eq!(inventory.source, InventorySource::Hypothetical);
        let summary: Vec<_> = inventory
            .devices
            .iter()
            .map(|d| (d.label.as_str(), d.total_bytes, d.free_bytes))
            .collect();
        assert_eq!(
            summary,
            [
                ("cuda:0", 80 * GIB, 80 * GIB),
                ("cuda:1", 24 * GIB, 24 * GIB),
                ("cuda:2", 24 * GIB, 24 * GIB)
            ]
        );
        assert!(inventory.devices.iter().all(|d| d.name == "hypothetical"));
    }

    #[test]
    fn requests_that_name_nothing_are_rejected() {
        for request in [
            DeviceRequest::Cpu { slots: Some(0) },
            DeviceRequest::Cuda {
                indices: Some(vec![]),
            },
            DeviceRequest::Hypothetical(vec![]),
        ] {
            assert!(matches!(
                resolve(&request),
                Err(DeviceError::NoDeviceNamed(_))
            ));
        }
    }

    #[test]
    fn resolve_cpu_slots_on_this_host() {
        let inventory = resolve(&DeviceRequest::Cpu { slots: Some(2) }).unwrap();
        assert_eq!(inventory.devices.len(), 2);
        assert!(inventory.shared_memory_pool);
        let first = &inventory.devices[0];
        assert!(first.total_bytes > 0 && first.free_bytes <= first.total_bytes);
        assert!(first.threads.is_some_and(|t| t >= 1));
    }

    #[test]
    fn resolve_auto_always_finds_something() {
        let inventory = resolve(&DeviceRequest::Auto).unwrap();
        match inventory.source {
            InventorySource::Host => assert_eq!(inventory.devices.len(), 1),
            InventorySource::Nvml | InventorySource::NvidiaSmi => {
                assert!(!inventory.devices.is_empty());
                assert!(inventory.devices.iter().all(|d| d.kind == DeviceKind::Cuda));
            }
            InventorySource::Hypothetical | InventorySource::Slurm => {
                panic!("auto must detect, not invent")
            }
        }
    }
}

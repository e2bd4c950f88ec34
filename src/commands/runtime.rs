//! Device, precision and threads for commands that run the model, and the
//! device inventory of the commands that place trials.

use anyhow::Context as _;
use tch::{Device, Kind};

use crate::devices::detect::{self, Inventory};
use crate::devices::grammar::DeviceRequest;

/// `cpu`, `cuda`, `cuda:N`, or the default: the first GPU when libtorch
/// sees one, else the CPU.
pub fn device(flag: Option<&str>) -> anyhow::Result<Device> {
    let device = match flag.map(str::trim) {
        None => Device::cuda_if_available(),
        Some("cpu") => Device::Cpu,
        Some("cuda") => Device::Cuda(0),
        Some(other) => {
            let index = other
                .strip_prefix("cuda:")
                .and_then(|i| i.parse::<usize>().ok())
                .with_context(|| format!("invalid --device `{other}`: use cpu, cuda or cuda:N"))?;
            Device::Cuda(index)
        }
    };
    if let Device::Cuda(index) = device {
        let count = usize::try_from(tch::Cuda::device_count()).unwrap_or(0);
        anyhow::ensure!(
            index < count,
            "--device cuda:{index}: libtorch sees {count} CUDA device(s) (CUDA_VISIBLE_DEVICES={})",
            std::env::var("CUDA_VISIBLE_DEVICES").unwrap_or_else(|_| "unset".into())
        );
    } else {
        // Evaluation on the CPU uses every core.
        let cores = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
        tch::set_num_threads(i32::try_from(cores).unwrap_or(1));
    }
    Ok(device)
}

/// `auto` is bf16 on CUDA and f32 on the CPU.
pub fn kind(precision: &str, device: Device) -> anyhow::Result<Kind> {
    Ok(match (precision, device) {
        ("bf16", _) | ("auto", Device::Cuda(_)) => Kind::BFloat16,
        ("f32" | "auto", _) => Kind::Float,
        (other, _) => anyhow::bail!("invalid --precision `{other}`: use auto, bf16 or f32"),
    })
}

/// The devices a `--devices` flag names, or else `resources.devices`.
pub fn inventory(flag: Option<&str>, spec_devices: &str) -> anyhow::Result<Inventory> {
    let request: DeviceRequest = match flag {
        Some(flag) => flag
            .parse()
            .with_context(|| format!("invalid --devices `{flag}`"))?,
        None => spec_devices.parse().context("invalid resources.devices")?,
    };
    detect::resolve(&request).context("cannot use the requested devices")
}

/// Where a sweep's trials go and how they may share a device: the devices
/// (`--devices`, else `resources.devices`) for the local backend; for
/// Slurm one stand-in device without limits (Slurm places the jobs; the
/// plan only orders them).
pub fn placement(
    flag: Option<&str>,
    resources: &crate::spec::schema::Resources,
) -> anyhow::Result<(Inventory, crate::plan::placement::Limits)> {
    use crate::plan::placement::Limits;
    if resources.backend == crate::spec::schema::Backend::Slurm {
        let limits = Limits {
            memory_headroom: 0.0,
            max_trials_per_device: u32::MAX,
        };
        return Ok((Inventory::slurm(), limits));
    }
    let limits = Limits {
        memory_headroom: resources.memory_headroom,
        max_trials_per_device: resources.max_trials_per_device,
    };
    Ok((inventory(flag, &resources.devices)?, limits))
}

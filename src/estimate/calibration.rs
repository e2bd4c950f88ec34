//! The memory estimator against measured peaks: every measured training row
//! of `calibration/cpu-memory_efficient.json` and `calibration/cpu-eager.json`
//! (`scripts/bench/calibrate.sh`, peak RSS, one file per `model.attention`)
//! and `calibration/cuda.json` (the H200 run of `scripts/gpu/check.sh`,
//! NVML) must be estimated within [`TOLERANCE`].

use serde::Deserialize;

use crate::allocator::Allocator;
use crate::model::config::Preset;
use crate::spec::schema::{Attention, Method};
use crate::variant::{Resolution, Size};

use super::memory::{DeviceKind, TrialShape, estimate_memory};

/// The bound the estimator keeps on every row: `|estimate − measured| /
/// measured`.
const TOLERANCE: f64 = 0.15;

/// Memory-efficient attention on glibc's malloc, which holds the known gaps.
const GLIBC_MEMORY_EFFICIENT: &str = "calibration/cpu-memory_efficient-glibc.json";

/// The CPU files: (name, text). Rows without an `allocator` ran on glibc.
const CPU: [(&str, &str); 3] = [
    (
        GLIBC_MEMORY_EFFICIENT,
        include_str!("calibration/cpu-memory_efficient-glibc.json"),
    ),
    (
        "calibration/cpu-memory_efficient-tcmalloc.json",
        include_str!("calibration/cpu-memory_efficient-tcmalloc.json"),
    ),
    (
        "calibration/cpu-eager.json",
        include_str!("calibration/cpu-eager.json"),
    ),
];
const CUDA: &str = include_str!("calibration/cuda.json");

#[derive(Debug, Deserialize)]
struct DataFile {
    /// The resident size past which `calibrate.sh` killed a run.
    rss_cap_mib: Option<f64>,
    rows: Vec<Row>,
}

/// One configuration as `bench` ran it (r 8 on the default targets, NF4
/// blocks of 64 with double quantisation, vision tower not frozen).
#[derive(Debug, Deserialize)]
struct Row {
    /// `train` or `forward`; absent: `train` (the CPU file has train rows only).
    mode: Option<String>,
    preset: String,
    size: String,
    resolution: u32,
    method: String,
    /// `model.attention`; absent: `eager` (rows measured before it existed).
    attention: Option<String>,
    gradient_checkpointing: bool,
    batch: u32,
    /// `ok`, or why nothing was measured (`over_rss_cap`, ...).
    status: String,
    prefix_tokens: Option<u32>,
    suffix_tokens: Option<u32>,
    dtype: Option<String>,
    /// The CPU's `malloc`; absent: glibc (rows measured before palisweep
    /// preloaded tcmalloc).
    allocator: Option<Allocator>,
    measured_mib: Option<f64>,
    /// Why this measurement no longer describes the code (it needed more
    /// than the current code does): held as an upper bound, not within
    /// [`TOLERANCE`].
    superseded: Option<String>,
}

/// A measured training row and the estimator's error on it.
struct Checked {
    what: String,
    measured_mib: f64,
    estimate_mib: f64,
    /// The estimate's allocator term (the CPU heap's retention).
    allocator_mib: f64,
}

impl Checked {
    fn error(&self) -> f64 {
        (self.estimate_mib - self.measured_mib) / self.measured_mib
    }
}

fn parse_file(text: &str, name: &str) -> DataFile {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn parse(text: &str, name: &str) -> Vec<Row> {
    parse_file(text, name).rows
}

fn check(row: &Row, device: DeviceKind) -> Checked {
    let preset = Preset::parse(&row.preset).expect("tiny, small or published");
    let size: Size = row.size.parse().expect("a size");
    let resolution: Resolution = row.resolution.to_string().parse().expect("a resolution");
    let config = preset.config(size, resolution);
    let targets: Vec<String> = crate::model::adapt::lora::DEFAULT_TARGETS
        .map(String::from)
        .to_vec();
    let method = match row.method.as_str() {
        "lora" => Method::Lora,
        "qlora" => Method::Qlora,
        "full" => Method::Full,
        other => panic!("method {other}"),
    };
    let dtype_bytes = match row.dtype.as_deref() {
        Some("BFloat16") => 2,
        Some("Float") => 4,
        other => panic!("dtype {other:?}"),
    };
    let shape = TrialShape {
        config: &config,
        method,
        batch_size: row.batch,
        prefix_tokens: row.prefix_tokens.expect("prefix_tokens"),
        suffix_tokens: row.suffix_tokens.expect("suffix_tokens"),
        dtype_bytes,
        device,
        allocator: row.allocator.unwrap_or(Allocator::Glibc),
        freeze_vision: false,
        train_projector: false,
        lora_r: 8,
        lora_targets: &targets,
        gradient_checkpointing: row.gradient_checkpointing,
        double_quant: true,
        quant_block_size: 64,
        attention: match row.attention.as_deref() {
            None | Some("eager") => Attention::Eager,
            Some("memory_efficient") => Attention::MemoryEfficient,
            Some(other) => panic!("attention {other:?}"),
        },
    };
    let estimate = estimate_memory(&shape);
    let mib = |bytes: u64| bytes as f64 / f64::from(1u32 << 20);
    Checked {
        what: format!(
            "{} {}@{} {}{} batch {}",
            row.preset,
            row.size,
            row.resolution,
            row.method,
            if row.gradient_checkpointing {
                " +gc"
            } else {
                ""
            },
            row.batch
        ),
        measured_mib: row.measured_mib.unwrap_or(f64::NAN),
        estimate_mib: mib(estimate.total),
        allocator_mib: mib(estimate.allocator),
    }
}

/// Every measured training row of a data file, checked.
fn checked(text: &str, name: &str, device: DeviceKind) -> Vec<Checked> {
    parse(text, name)
        .iter()
        .filter(|r| r.status == "ok" && r.mode.as_deref().unwrap_or("train") == "train")
        .filter(|r| r.superseded.is_none())
        .map(|r| {
            // A NaN error would pass every bound: a measured row says what it measured.
            assert!(
                r.measured_mib.is_some(),
                "{name}: an ok row without measured_mib"
            );
            check(r, device)
        })
        .collect()
}

/// Fails listing the rows outside [`TOLERANCE`], then all rows worst first.
fn assert_within_tolerance(mut rows: Vec<Checked>, name: &str) {
    assert!(!rows.is_empty(), "{name}: no measured rows");
    rows.sort_by(|a, b| b.error().abs().total_cmp(&a.error().abs()));
    let table: Vec<String> = rows
        .iter()
        .map(|r| {
            format!(
                "{:<34} measured {:>9.0} MiB  estimate {:>9.0} MiB  {:>+6.1}%  (allocator {:.0} MiB)",
                r.what,
                r.measured_mib,
                r.estimate_mib,
                100.0 * r.error(),
                r.allocator_mib
            )
        })
        .collect();
    let outside = rows.iter().filter(|r| r.error().abs() > TOLERANCE).count();
    println!("{name}, worst first:\n{}", table.join("\n"));
    assert!(
        outside == 0,
        "{name}: {outside} of {} rows outside ±{:.0}%, worst first:\n{}",
        rows.len(),
        100.0 * TOLERANCE,
        table.join("\n")
    );
}

/// The rows the estimator still misses by more than [`TOLERANCE`] at
/// times: the `small` preset at 896 px on glibc's malloc, the fallback
/// where tcmalloc is not installed (`crate::allocator`). glibc keeps freed
/// blocks in its heap, and at 896 px, where the chunked attention's 4 MiB
/// chunks interleave with long-lived layer outputs, it kept about 1.2 GiB
/// above the live tensors at batch 4 (docs/benchmarks.md, "The CPU
/// allocator"): the 2026-12-05 run measured these six rows at −23.8% …
/// −13.6%, varying by a few points from run to run. They are held to
/// [`KNOWN_GAP_BOUND`]; the same configurations on tcmalloc are within
/// ±15% (`cpu-memory_efficient-tcmalloc.json`).
fn known_gap(name: &str, row: &Checked) -> bool {
    name == GLIBC_MEMORY_EFFICIENT && row.what.starts_with("small ") && row.what.contains("@896 ")
}
const KNOWN_GAP_BOUND: f64 = 0.3;

#[test]
fn cpu_estimates_are_within_tolerance_of_measured_rss() {
    for (name, text) in CPU {
        let (gaps, rows): (Vec<Checked>, Vec<Checked>) = checked(text, name, DeviceKind::Cpu)
            .into_iter()
            .partition(|c| known_gap(name, c));
        for gap in &gaps {
            assert!(
                gap.error().abs() <= KNOWN_GAP_BOUND,
                "{name}: {} is {:+.1}% off, past the known gap's ±{:.0}%",
                gap.what,
                100.0 * gap.error(),
                100.0 * KNOWN_GAP_BOUND
            );
        }
        if name == GLIBC_MEMORY_EFFICIENT {
            assert_eq!(gaps.len(), 6, "{name}: the small 896 px rows");
        }
        assert_within_tolerance(rows, name);
    }
}

#[test]
fn cuda_estimates_are_within_tolerance_of_measured_gpu_memory() {
    assert_within_tolerance(
        checked(CUDA, "calibration/cuda.json", DeviceKind::Cuda),
        "calibration/cuda.json",
    );
}

/// A superseded row (measured before a change that saves memory) is an
/// upper bound: the current code is estimated below it.
#[test]
fn superseded_measurements_bound_the_estimate_from_above() {
    let rows = parse(CUDA, "calibration/cuda.json");
    let superseded: Vec<_> = rows.iter().filter(|r| r.superseded.is_some()).collect();
    assert!(!superseded.is_empty());
    for row in superseded {
        let checked = check(row, DeviceKind::Cuda);
        assert!(
            checked.estimate_mib < checked.measured_mib,
            "{}: estimate {:.0} MiB, measured {:.0} MiB before the change",
            checked.what,
            checked.estimate_mib,
            checked.measured_mib
        );
    }
}

/// A run killed for passing the RSS cap was estimated past it too (within
/// [`TOLERANCE`]): the planner would not have packed it there either.
#[test]
fn runs_killed_at_the_cap_are_estimated_past_it() {
    for (name, text) in CPU {
        runs_killed_at_the_cap_are_estimated_past_it_in(&parse_file(text, name));
    }
}

fn runs_killed_at_the_cap_are_estimated_past_it_in(file: &DataFile) {
    let cap = file.rss_cap_mib.expect("rss_cap_mib");
    for row in file.rows.iter().filter(|r| r.status == "over_rss_cap") {
        // A killed run reported no token counts: the batch is the synthetic
        // one every other row measured.
        let measured = file
            .rows
            .iter()
            .find(|r| r.status == "ok")
            .expect("a measured row");
        let row = Row {
            mode: None,
            preset: row.preset.clone(),
            size: row.size.clone(),
            status: row.status.clone(),
            method: row.method.clone(),
            attention: row.attention.clone(),
            dtype: measured.dtype.clone(),
            prefix_tokens: measured.prefix_tokens,
            suffix_tokens: measured.suffix_tokens,
            measured_mib: None,
            superseded: None,
            ..*row
        };
        let checked = check(&row, DeviceKind::Cpu);
        assert!(
            checked.estimate_mib >= (1.0 - TOLERANCE) * cap,
            "{}: estimate {:.0} MiB, killed past {cap} MiB",
            checked.what,
            checked.estimate_mib
        );
    }
}

/// Each CPU file covers every preset × size × resolution × method, measured
/// or with the reason it was not.
#[test]
fn cpu_data_covers_the_grid() {
    for (name, text) in CPU {
        cpu_data_covers_the_grid_in(&parse(text, name), name);
    }
}

fn cpu_data_covers_the_grid_in(rows: &[Row], name: &str) {
    for preset in ["tiny", "small"] {
        for size in ["3b", "10b", "28b"] {
            for resolution in [224, 448, 896] {
                for method in ["lora", "qlora"] {
                    let tried: Vec<&Row> = rows
                        .iter()
                        .filter(|r| {
                            r.preset == preset
                                && r.size == size
                                && r.resolution == resolution
                                && r.method == method
                        })
                        .collect();
                    assert!(
                        !tried.is_empty(),
                        "{name}: {preset} {size}@{resolution} {method}: no row"
                    );
                }
            }
        }
    }
}

//! Turning expanded trials into a plan: each trial's architecture, memory
//! estimate and relative cost, then placement on the inventory. Trials that
//! fit on no device are an error that says what would fit.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use crate::devices::detect::{DeviceKind, Inventory};
use crate::devices::grammar::{format_bytes, parse_bytes};
use crate::estimate::cost::relative_cost;
use crate::estimate::memory::{MemoryEstimate, TrialShape, estimate_memory};
use crate::model::config::PaliGemmaConfig;
use crate::spec::checkpoint::{self, CheckpointRef, ResolvedCheckpoint};
use crate::spec::schema::{Attention, Method, Precision, Softcap, Spec};
use crate::sweep::expand::{Expansion, Trial, describe};
use crate::variant::{Resolution, Size};

use super::placement::{Demand, Limits, Placement, Slot, place};
use super::text_lengths::{self, TextLengths};

#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error("{0}")]
    Unplaceable(String),
}

#[derive(Clone, Debug)]
pub struct PlannedTrial {
    pub trial: Trial,
    pub checkpoint: ResolvedCheckpoint,
    pub memory: MemoryEstimate,
    pub rel_cost: f64,
    pub slot: Option<Slot>,
}

#[derive(Clone, Debug)]
pub struct SweepPlan {
    pub name: String,
    pub axes: Vec<String>,
    pub trials: Vec<PlannedTrial>,
    pub inventory: Inventory,
    pub placement: Placement,
    pub excluded: usize,
    pub repeated_draws: usize,
    /// Whether every trial's text lengths were measured from its dataset.
    pub lengths_measured: bool,
    /// Whether relative costs cover the whole run (dataset size known) or
    /// one example per epoch.
    pub costs_per_example: bool,
    /// Trials of this sweep already recorded in the results root.
    pub recorded: BTreeSet<String>,
    /// Recorded trials the spec no longer produces.
    pub dropped: Vec<String>,
}

/// The architecture to plan with: built-in configs for tiny and published
/// checkpoints, a local folder's own `config.json` when it has one.
pub fn architecture(spec: &Spec, resolved: &ResolvedCheckpoint) -> PaliGemmaConfig {
    let mut config = match &resolved.reference {
        CheckpointRef::Tiny => PaliGemmaConfig::tiny(resolved.size, resolved.resolution),
        CheckpointRef::Local(dir) => PaliGemmaConfig::from_json_file(dir.join("config.json"))
            .unwrap_or_else(|_| PaliGemmaConfig::published(resolved.size, resolved.resolution)),
        CheckpointRef::Hub(_) => PaliGemmaConfig::published(resolved.size, resolved.resolution),
    };
    let apply = |cap: Option<Softcap>, target: &mut Option<f64>| match cap {
        Some(Softcap::Enabled(false)) => *target = None,
        Some(Softcap::Cap(v)) => *target = Some(v),
        _ => {}
    };
    apply(
        spec.model.attn_logit_softcapping,
        &mut config.text_config.attn_logit_softcapping,
    );
    apply(
        spec.model.final_logit_softcapping,
        &mut config.text_config.final_logit_softcapping,
    );
    config
}

/// Bytes per element of the compute dtype on a device kind.
pub fn dtype_bytes(precision: Precision, device: DeviceKind) -> u32 {
    match (precision, device) {
        (Precision::Bf16, _) | (Precision::Auto, DeviceKind::Cuda) => 2,
        (Precision::F32, _) | (Precision::Auto, DeviceKind::Cpu) => 4,
    }
}

/// Memory estimate and relative cost of one trial spec.
pub fn estimate(
    spec: &Spec,
    lengths: &TextLengths,
    device: DeviceKind,
) -> (ResolvedCheckpoint, MemoryEstimate, f64) {
    let resolved = checkpoint::resolve(&spec.model);
    if spec.train.method == Method::Synthetic {
        return (resolved, synthetic_memory(spec), synthetic_cost(spec));
    }
    let config = architecture(spec, &resolved);
    let shape = TrialShape {
        config: &config,
        method: spec.train.method,
        batch_size: spec.train.batch_size,
        prefix_tokens: lengths.prefix_tokens,
        suffix_tokens: lengths.suffix_tokens,
        dtype_bytes: dtype_bytes(spec.train.precision, device),
        device,
        allocator: crate::allocator::active(),
        freeze_vision: spec.model.freeze_vision,
        train_projector: spec.model.train_projector,
        lora_r: spec.lora.r,
        lora_targets: &spec.lora.targets,
        gradient_checkpointing: spec.train.gradient_checkpointing,
        double_quant: spec.qlora.double_quant,
        quant_block_size: spec.qlora.block_size,
        attention: spec.model.attention,
    };
    let memory = estimate_memory(&shape);
    let cost = relative_cost(&shape, training_examples(spec, lengths));
    (resolved, memory, cost)
}

/// A synthetic trial claims what its spec says (validated to parse).
fn synthetic_memory(spec: &Spec) -> MemoryEstimate {
    let per_sample = parse_bytes(&spec.synthetic.memory_per_sample).unwrap_or(0);
    let total = per_sample.saturating_mul(u64::from(spec.train.batch_size));
    MemoryEstimate {
        activations: total,
        total,
        ..MemoryEstimate::default()
    }
}

/// Its duration, in the same unit-free scale as real trials' costs.
fn synthetic_cost(spec: &Spec) -> f64 {
    (spec.synthetic.steps * spec.synthetic.step_ms.max(1)) as f64 / 1000.0
}

/// Examples one trial trains on: epochs × dataset size, or the step budget;
/// one example per epoch when the dataset size is unknown.
fn training_examples(spec: &Spec, lengths: &TextLengths) -> u64 {
    let per_step = u64::from(spec.train.batch_size) * u64::from(spec.train.grad_accum);
    let by_epochs = u64::from(spec.train.epochs) * lengths.train_examples.unwrap_or(1);
    match (spec.train.max_steps, lengths.train_examples) {
        (Some(steps), Some(_)) => by_epochs.min(steps * per_step),
        _ => by_epochs,
    }
}

pub fn build(
    name: &str,
    expansion: Expansion,
    inventory: Inventory,
    limits: Limits,
    recorded: &[String],
) -> Result<SweepPlan, PlanError> {
    let kind = inventory
        .devices
        .first()
        .map_or(DeviceKind::Cpu, |d| d.kind);
    let mut lengths_cache: BTreeMap<String, TextLengths> = BTreeMap::new();
    let mut planned = Vec::new();
    for trial in expansion.trials {
        let lengths = *lengths_cache
            .entry(trial.spec.data.path.clone())
            .or_insert_with(|| text_lengths::measure(&trial.spec.data));
        let (checkpoint, memory, rel_cost) = estimate(&trial.spec, &lengths, kind);
        planned.push((trial, checkpoint, memory, rel_cost, lengths));
    }
    let demands: Vec<Demand> = planned
        .iter()
        .map(|(_, _, m, c, _)| Demand {
            memory_bytes: m.total,
            cost: *c,
        })
        .collect();
    let placement = place(&demands, &inventory, limits);
    let lengths_measured = planned.iter().all(|p| p.4.measured);
    let costs_per_example = planned.iter().any(|p| p.4.train_examples.is_none());

    let largest = placement.capacity_bytes.iter().copied().max().unwrap_or(0);
    let unfit: Vec<String> = planned
        .iter()
        .zip(&placement.slots)
        .filter(|(_, slot)| slot.is_none())
        .map(|((trial, _, memory, _, lengths), _)| {
            unfit_report(trial, memory, lengths, kind, largest)
        })
        .collect();
    if !unfit.is_empty() {
        return Err(PlanError::Unplaceable(format!(
            "{} of {} trials fit on no device (largest usable memory: {} after {:.0}% headroom, on {}):\n{}",
            unfit.len(),
            planned.len(),
            format_bytes(largest),
            limits.memory_headroom * 100.0,
            inventory_summary(&inventory),
            unfit.join("\n")
        )));
    }

    let trials: Vec<PlannedTrial> = planned
        .into_iter()
        .zip(&placement.slots)
        .map(
            |((trial, checkpoint, memory, rel_cost, _), slot)| PlannedTrial {
                trial,
                checkpoint,
                memory,
                rel_cost,
                slot: *slot,
            },
        )
        .collect();
    let planned_ids: BTreeSet<String> = trials.iter().map(|t| t.trial.id.to_string()).collect();
    let dropped = recorded
        .iter()
        .filter(|id| !planned_ids.contains(*id))
        .cloned()
        .collect();
    let recorded = recorded
        .iter()
        .filter(|id| planned_ids.contains(*id))
        .cloned()
        .collect();
    Ok(SweepPlan {
        recorded,
        dropped,
        name: name.to_owned(),
        axes: expansion.axes,
        trials,
        inventory,
        placement,
        excluded: expansion.excluded,
        repeated_draws: expansion.repeated_draws,
        lengths_measured,
        costs_per_example,
    })
}

pub fn inventory_summary(inventory: &Inventory) -> String {
    let labels: Vec<String> = inventory
        .devices
        .iter()
        .map(|d| format!("{} ({})", d.label, format_bytes(d.total_bytes)))
        .collect();
    format!("{} [{}]", labels.join(", "), inventory.source)
}

/// One unfit trial and the changes that would make it fit.
fn unfit_report(
    trial: &Trial,
    memory: &MemoryEstimate,
    lengths: &TextLengths,
    kind: DeviceKind,
    capacity: u64,
) -> String {
    let fits = |spec: &Spec| estimate(spec, lengths, kind).1.total;
    let mut options: Vec<String> = Vec::new();
    let base = &trial.spec;
    let mut try_option = |label: String, spec: Spec| {
        let need = fits(&spec);
        if need <= capacity {
            options.push(format!("{label} (≈ {})", format_bytes(need)));
        }
    };
    if base.model.attention == Attention::Eager {
        let mut s = base.clone();
        s.model.attention = Attention::MemoryEfficient;
        try_option("model.attention = \"memory_efficient\"".into(), s);
    }
    if base.train.method != Method::Qlora {
        let mut s = base.clone();
        s.train.method = Method::Qlora;
        try_option("train.method = \"qlora\"".into(), s);
    }
    if !base.train.gradient_checkpointing {
        let mut s = base.clone();
        s.train.gradient_checkpointing = true;
        try_option("train.gradient_checkpointing = true".into(), s);
    }
    let mut batch = base.train.batch_size / 2;
    while batch >= 1 {
        let mut s = base.clone();
        let accum = base.train.grad_accum * (base.train.batch_size / batch);
        s.train.batch_size = batch;
        s.train.grad_accum = accum;
        if fits(&s) <= capacity {
            try_option(
                format!("train.batch_size = {batch} with grad_accum = {accum}"),
                s,
            );
            break;
        }
        batch /= 2;
    }
    let smaller_resolution = Resolution::ALL
        .into_iter()
        .rfind(|r| *r < base.model.resolution);
    if let Some(r) = smaller_resolution.filter(|_| base.model.checkpoint.is_none()) {
        let mut s = base.clone();
        s.model.resolution = r;
        try_option(format!("model.resolution = {r}"), s);
    }
    let smaller_size = Size::ALL.into_iter().rfind(|z| *z < base.model.size);
    if let Some(z) = smaller_size.filter(|_| base.model.checkpoint.is_none()) {
        let mut s = base.clone();
        s.model.size = z;
        try_option(format!("model.size = \"{z}\""), s);
    }
    let would_fit = if options.is_empty() {
        "nothing tried fits; use a device with more memory".to_owned()
    } else {
        format!("would fit with: {}", options.join("; "))
    };
    format!(
        "  trial {} ({}): needs ≈ {}\n    {would_fit}",
        trial.id,
        describe(&trial.params),
        format_bytes(memory.total),
    )
}

/// A path shown relative to the working directory when it is inside it.
pub fn display_path(path: &Path) -> String {
    std::env::current_dir()
        .ok()
        .and_then(|cwd| path.strip_prefix(cwd).ok().map(Path::to_path_buf))
        .unwrap_or_else(|| path.to_path_buf())
        .display()
        .to_string()
}

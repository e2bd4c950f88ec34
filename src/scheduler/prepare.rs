//! From a loaded spec to what the dispatcher runs: the plan (estimates,
//! devices, the up-front "fits nowhere" check), the sweep folder and its
//! lock, each trial's `trial.toml`, and what earlier runs left (finished
//! trials, back-offs, attempt numbers).

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use sha2::{Digest as _, Sha256};

use super::queue::{OpenJob, QueuedTrial};
use super::trial_record::{self, write_atomically};
use crate::devices::detect::{Inventory, InventorySource};
use crate::events::event::{AttemptOutcome, Environment, SweepInfo, TrialInfo, TrialStatus};
use crate::layout::{ResultsRoot, SweepDir};
use crate::plan::build::{PlanError, PlannedTrial, SweepPlan, build};
use crate::plan::placement::Limits;
use crate::secrets::redact_text;
use crate::spec::load::LoadedSpec;
use crate::spec::schema::Method;
use crate::sweep::expand::{Expansion, Trial};

/// Why a sweep cannot start.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Plan(#[from] PlanError),
    #[error(
        "{devices} is a made-up inventory: `run` can place only synthetic trials on it \
         ({count} trial(s) use a real method); use real devices (`auto`, `cpu:N`, `cuda`), \
         or `palisweep plan` to plan for hardware you do not have"
    )]
    MadeUpDevices { devices: String, count: usize },
    #[error(
        "another `palisweep run` is running sweep `{sweep}` (it holds {}); wait for it, or stop it first",
        lock.display()
    )]
    Busy { sweep: String, lock: PathBuf },
    #[error(
        "trial {trial} is still held by {holder} ({}), left by an earlier `palisweep run`{}: \
         it did not end within its grace after its scheduler died; stop it (kill it) and run again",
        lock.display(),
        if *others > 0 { format!(" (and {others} other trial(s) are held too)") } else { String::new() }
    )]
    TrialBusy {
        trial: String,
        holder: String,
        lock: PathBuf,
        others: usize,
    },
    #[error(transparent)]
    Slurm(#[from] crate::scheduler::slurm::client::SlurmError),
    #[error(
        "{} recorded `--set {set}` with a secret redacted, so this run cannot be repeated from it\n  \
         help: keep secrets out of flags and specs: export HF_TOKEN in the shell and pass \
         `--export=HF_TOKEN` to sbatch (it copies the value from the environment), then \
         `palisweep run` the spec again",
        path.display()
    )]
    Redacted { path: PathBuf, set: String },
    #[error("cannot write {}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> RunError + '_ {
    move |source| RunError::Io {
        path: path.to_owned(),
        source,
    }
}

/// A sweep ready to dispatch.
pub struct PreparedSweep {
    pub sweep: SweepInfo,
    pub environment: Environment,
    pub dir: SweepDir,
    pub inventory: Inventory,
    /// Every trial of the expansion with its status before this run.
    pub recorded: Vec<(TrialInfo, TrialStatus)>,
    /// The trials to run now.
    pub queue: Vec<QueuedTrial>,
    /// Whether any trial had run before.
    pub resumed: bool,
    /// Held while the sweep runs: a second `run` of it fails fast.
    pub lock: File,
}

/// `devices` says where the inventory came from (the `--devices` flag or
/// the spec's line), for the error that refuses it.
pub fn prepare(
    loaded: &LoadedSpec,
    expansion: Expansion,
    inventory: Inventory,
    limits: Limits,
    devices: &str,
) -> Result<PreparedSweep, RunError> {
    let root = ResultsRoot::new(&loaded.results);
    let dir = root.sweep(&loaded.name);
    if inventory.source == InventorySource::Hypothetical {
        let real = expansion
            .trials
            .iter()
            .filter(|t| t.spec.train.method != Method::Synthetic)
            .count();
        if real > 0 {
            return Err(RunError::MadeUpDevices {
                devices: devices.to_owned(),
                count: real,
            });
        }
    }
    let recorded_before = dir.recorded_trials();
    let plan: SweepPlan = build(&loaded.name, expansion, inventory, limits, &recorded_before)?;

    root.create().map_err(io(root.path()))?;
    std::fs::create_dir_all(dir.path()).map_err(io(dir.path()))?;
    let lock_path = dir.run_lock();
    let lock = File::create(&lock_path).map_err(io(&lock_path))?;
    // `status` takes the lock shared for an instant to see whether a run is
    // alive: a few tries tell that apart from a run holding it.
    let mut tries = 0;
    while lock.try_lock().is_err() {
        tries += 1;
        if tries == 10 {
            return Err(RunError::Busy {
                sweep: loaded.name.clone(),
                lock: lock_path,
            });
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    write_atomically(&dir.spec(), &redact_text(&loaded.text)).map_err(io(&dir.spec()))?;

    let mut recorded = Vec::with_capacity(plan.trials.len());
    let mut queue = Vec::new();
    for planned in &plan.trials {
        let (info, state) = trial_state(loaded, &dir, planned)?;
        match state {
            Ok(queued) => {
                recorded.push((info, TrialStatus::Queued));
                queue.push(queued);
            }
            Err(done) => recorded.push((info, done)),
        }
    }
    let sweep = SweepInfo {
        name: loaded.name.clone(),
        spec_path: loaded.path.display().to_string(),
        spec_text: redact_text(&loaded.text),
        spec_hash: format!("{:x}", Sha256::digest(loaded.text.as_bytes())),
        results: loaded.results.display().to_string(),
        total_trials: plan.trials.len(),
        devices: plan
            .inventory
            .devices
            .iter()
            .map(|d| d.label.clone())
            .collect(),
        axes: plan.axes.clone(),
        select_metric: loaded.spec.eval.select.metric.clone(),
    };
    let environment = environment(&plan.inventory);
    Ok(PreparedSweep {
        sweep,
        environment,
        dir,
        inventory: plan.inventory,
        resumed: !recorded_before.is_empty(),
        recorded,
        queue,
        lock,
    })
}

/// A trial suggested while the sweep runs: planned alone (its memory and
/// cost), its folder and `trial.toml` written, its state read as
/// [`prepare`] reads every trial's.
pub fn prepare_suggested(
    loaded: &LoadedSpec,
    dir: &SweepDir,
    inventory: &Inventory,
    limits: Limits,
    trial: Trial,
) -> Result<(TrialInfo, Result<QueuedTrial, TrialStatus>), RunError> {
    let expansion = Expansion {
        trials: vec![trial],
        axes: loaded.spec.sweep.axes.keys().cloned().collect(),
        excluded: 0,
        repeated_draws: 0,
    };
    let plan = build(&loaded.name, expansion, inventory.clone(), limits, &[])?;
    trial_state(loaded, dir, &plan.trials[0])
}

/// What is known of the machine without touching CUDA (the scheduler
/// must not create a CUDA context: it would take memory from the trials).
fn environment(inventory: &Inventory) -> Environment {
    let gpu_names = if inventory.shared_memory_pool || inventory.source == InventorySource::Slurm {
        Vec::new()
    } else {
        inventory.devices.iter().map(|d| d.name.clone()).collect()
    };
    let (driver_version, cuda_version) =
        if gpu_names.is_empty() || inventory.source == InventorySource::Hypothetical {
            (None, None)
        } else {
            nvidia_versions()
        };
    Environment {
        palisweep_version: env!("CARGO_PKG_VERSION").to_owned(),
        git_sha: option_env!("PALISWEEP_GIT_SHA").map(str::to_owned),
        libtorch_version: option_env!("PALISWEEP_LIBTORCH_VERSION").map(str::to_owned),
        cuda_version,
        gpu_names,
        driver_version,
        host: std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_owned())
            .unwrap_or_default(),
        dataset_fingerprint: None,
        checkpoint_fingerprints: BTreeMap::new(),
    }
}

/// Writes a trial's `trial.toml` when it has none, and reads what earlier
/// runs left: how to run it next, or the final state it reached (finished,
/// or pruned by early stopping).
fn trial_state(
    loaded: &LoadedSpec,
    dir: &SweepDir,
    planned: &PlannedTrial,
) -> Result<(TrialInfo, Result<QueuedTrial, TrialStatus>), RunError> {
    let trial = &planned.trial;
    let trial_dir = dir.trial(&trial.id);
    let config_path = trial_dir.config();
    if !config_path.is_file() {
        // The resolved config, with the sweep table emptied: one trial.
        let mut spec = trial.spec.clone();
        spec.sweep = loaded.defaults.sweep.clone();
        let text = toml::to_string(&spec).map_err(|e| RunError::Io {
            path: config_path.clone(),
            source: std::io::Error::other(e),
        })?;
        let text = redact_text(&text);
        write_atomically(&config_path, &text).map_err(io(&config_path))?;
    }
    let config = std::fs::read_to_string(&config_path).map_err(io(&config_path))?;
    let info = TrialInfo {
        id: trial.id.to_string(),
        params: trial
            .params
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        config,
        dir: trial_dir.path().display().to_string(),
        est_memory_bytes: planned.memory.total,
        batch_size: trial.spec.train.batch_size,
        grad_accum: trial.spec.train.grad_accum,
        rel_cost: planned.rel_cost,
    };
    let attempts = trial_record::attempts(&trial_dir);
    // A Slurm job that ended while no orchestrator followed it is followed
    // once more, so that the store gets what it wrote and how it ended.
    let open_job = attempts.last().and_then(|a| {
        let job = a.job.clone().filter(|_| a.end.is_none())?;
        Some(OpenJob {
            attempt: a.attempt,
            job,
            start: a.start,
        })
    });
    if open_job.is_none() && trial_record::finished(&trial_dir).is_some() {
        return Ok((info, Err(TrialStatus::Finished)));
    }
    if attempts
        .last()
        .is_some_and(|a| a.outcome == Some(AttemptOutcome::Pruned))
    {
        return Ok((info, Err(TrialStatus::Pruned)));
    }
    // An earlier out-of-memory back-off keeps its smaller batch.
    let (batch_size, grad_accum) = attempts
        .last()
        .map_or((info.batch_size, info.grad_accum), |a| {
            (a.batch_size, a.grad_accum)
        });
    let next_attempt = attempts.iter().map(|a| a.attempt).max().unwrap_or(0) + 1;
    let queued = QueuedTrial {
        info: info.clone(),
        dir: trial_dir,
        memory: planned.memory,
        batch_size,
        grad_accum,
        next_attempt,
        open_job,
    };
    Ok((info, Ok(queued)))
}

/// The NVIDIA driver's version and the CUDA version it supports, from NVML.
fn nvidia_versions() -> (Option<String>, Option<String>) {
    let Ok(nvml) = nvml_wrapper::Nvml::init() else {
        return (None, None);
    };
    let cuda = nvml
        .sys_cuda_driver_version()
        .ok()
        .map(|v| format!("{}.{}", v / 1000, (v % 1000) / 10));
    (nvml.sys_driver_version().ok(), cuda)
}

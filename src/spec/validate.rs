//! Static checks of a typed spec: ranges and combinations that types alone
//! cannot express. Nothing here touches the dataset or the checkpoint.

use crate::devices::grammar::{DeviceRequest, parse_bytes};

use super::GENERATED_PREFIX;
use super::schema::{
    Backend, EarlyStop, EvalEvery, Method, SelectMode, Softcap, Spec, Strategy, Warmup, rung_ladder,
};

/// One failed check, at a key of the merged spec.
#[derive(Clone, Debug, PartialEq)]
pub struct Issue {
    pub key: Vec<String>,
    pub message: String,
    pub help: Option<String>,
}

/// Metrics a trial can report, and whether higher is better.
pub const METRICS: &[(&str, SelectMode)] = &[
    ("loss", SelectMode::Min),
    ("json_valid", SelectMode::Max),
    ("json_exact", SelectMode::Max),
    ("field_precision", SelectMode::Max),
    ("field_recall", SelectMode::Max),
    ("field_f1", SelectMode::Max),
    ("map50", SelectMode::Max),
    ("map50_95", SelectMode::Max),
    ("exact_match", SelectMode::Max),
    ("cer", SelectMode::Min),
    ("bleu", SelectMode::Max),
];

struct Checker {
    issues: Vec<Issue>,
}

impl Checker {
    fn fail(&mut self, key: &str, message: impl Into<String>, help: impl Into<Option<String>>) {
        self.issues.push(Issue {
            key: key.split('.').map(str::to_owned).collect(),
            message: message.into(),
            help: help.into(),
        });
    }

    fn require(&mut self, ok: bool, key: &str, message: &str, help: &str) {
        if !ok {
            self.fail(key, message, Some(help.to_owned()));
        }
    }
}

/// Every static problem of one (base or trial) spec.
pub fn check(spec: &Spec) -> Vec<Issue> {
    let mut c = Checker { issues: Vec::new() };
    check_experiment(&mut c, spec);
    check_data(&mut c, spec);
    check_model(&mut c, spec);
    check_train(&mut c, spec);
    check_adapters(&mut c, spec);
    check_eval(&mut c, spec);
    check_sweep(&mut c, spec);
    check_resources(&mut c, spec);
    check_slurm(&mut c, spec);
    check_synthetic(&mut c, spec);
    c.issues
}

fn check_experiment(c: &mut Checker, spec: &Spec) {
    if let Some(name) = &spec.experiment.name {
        let ok = !name.is_empty()
            && !name.starts_with('.')
            && name
                .chars()
                .all(|ch| ch.is_ascii_alphanumeric() || "-_.".contains(ch));
        c.require(
            ok,
            "experiment.name",
            "the sweep name becomes a folder name",
            "use letters, digits, '-', '_' and '.', e.g. name = \"pallet-manifest\"",
        );
    }
}

fn check_data(c: &mut Checker, spec: &Spec) {
    let data = &spec.data;
    if let Some(kind) = data.path.strip_prefix(GENERATED_PREFIX) {
        c.require(
            matches!(kind, "json" | "detect"),
            "data.path",
            &format!("unknown generated dataset `{kind}`"),
            "use generated:json or generated:detect, or a dataset folder",
        );
    } else {
        c.require(
            !data.path.trim().is_empty(),
            "data.path",
            "the dataset path is empty",
            "give the root of a Roboflow PaliGemma JSONL export, or generated:json",
        );
    }
    c.require(
        data.max_prefix_tokens >= 1,
        "data.max_prefix_tokens",
        "must be at least 1",
        "e.g. 64",
    );
    c.require(
        data.max_suffix_tokens >= 1,
        "data.max_suffix_tokens",
        "must be at least 1",
        "e.g. 128",
    );
}

fn check_model(c: &mut Checker, spec: &Spec) {
    for (key, cap) in [
        (
            "model.attn_logit_softcapping",
            spec.model.attn_logit_softcapping,
        ),
        (
            "model.final_logit_softcapping",
            spec.model.final_logit_softcapping,
        ),
    ] {
        match cap {
            Some(Softcap::Enabled(true)) => c.fail(
                key,
                "`true` does not say which cap to use",
                Some("write a number (50.0) to set the cap, false to turn it off, or leave it out to keep the checkpoint's".into()),
            ),
            Some(Softcap::Cap(v)) if !(v.is_finite() && v > 0.0) => c.fail(
                key,
                format!("the cap must be a positive number, not {v}"),
                Some("e.g. 50.0, or false to turn soft-capping off".into()),
            ),
            _ => {}
        }
    }
    if let Some(id) = spec.model.checkpoint.as_deref()
        && let Some((size, resolution)) = super::checkpoint::parse_published_id(id)
        && (size != spec.model.size || resolution != spec.model.resolution)
    {
        // Only an explicit disagreement is an error; the loader drops the
        // default size/resolution when a published id is given.
        c.fail(
            "model.checkpoint",
            format!(
                "`{id}` is {size}@{resolution} but model.size/model.resolution say {}@{}",
                spec.model.size, spec.model.resolution
            ),
            Some("set either model.checkpoint or model.size + model.resolution, not both".into()),
        );
    }
}

fn check_train(c: &mut Checker, spec: &Spec) {
    let t = &spec.train;
    c.require(
        t.epochs >= 1,
        "train.epochs",
        "must be at least 1",
        "e.g. epochs = 3",
    );
    if let Some(steps) = t.max_steps {
        c.require(
            steps >= 1,
            "train.max_steps",
            "must be at least 1",
            "leave it out to train for `epochs`",
        );
    }
    c.require(
        t.batch_size >= 1,
        "train.batch_size",
        "must be at least 1",
        "e.g. batch_size = 4",
    );
    c.require(
        t.grad_accum >= 1,
        "train.grad_accum",
        "must be at least 1",
        "1 = no accumulation",
    );
    c.require(
        t.lr.is_finite() && t.lr > 0.0 && t.lr <= 1.0,
        "train.lr",
        &format!("the learning rate must be in (0, 1], not {}", t.lr),
        "typical LoRA values are 1e-5 … 3e-4",
    );
    c.require(
        t.weight_decay.is_finite() && t.weight_decay >= 0.0,
        "train.weight_decay",
        "must be zero or positive",
        "e.g. 0.0 or 1e-4",
    );
    if let Warmup::Ratio(r) = t.warmup {
        c.require(
            (0.0..1.0).contains(&r),
            "train.warmup",
            &format!("a warm-up ratio must be in [0, 1), not {r}"),
            "a fraction of the total steps (0.05), or an integer step count (100)",
        );
    }
    c.require(
        t.max_grad_norm.is_finite() && t.max_grad_norm >= 0.0,
        "train.max_grad_norm",
        "must be zero (off) or positive",
        "e.g. 1.0",
    );
    c.require(
        (0.0..1.0).contains(&t.label_smoothing),
        "train.label_smoothing",
        "must be in [0, 1)",
        "e.g. 0.0 or 0.1",
    );
}

fn check_adapters(c: &mut Checker, spec: &Spec) {
    let l = &spec.lora;
    if spec.train.method != Method::Full {
        c.require(
            l.r >= 1,
            "lora.r",
            "the LoRA rank must be at least 1",
            "e.g. r = 8",
        );
        c.require(
            l.alpha.is_finite() && l.alpha > 0.0,
            "lora.alpha",
            "must be positive",
            "commonly 2 × r, e.g. alpha = 16",
        );
        c.require(
            (0.0..1.0).contains(&l.dropout),
            "lora.dropout",
            "must be in [0, 1)",
            "e.g. 0.05",
        );
        c.require(
            !l.targets.is_empty(),
            "lora.targets",
            "no LoRA target modules",
            "e.g. [\"q_proj\", \"k_proj\", \"v_proj\", \"o_proj\", \"gate_proj\", \"up_proj\", \"down_proj\"]",
        );
        for target in &l.targets {
            let ok = !target.is_empty()
                && target
                    .chars()
                    .all(|ch| ch.is_ascii_alphanumeric() || ch == '_' || ch == '.');
            c.require(
                ok,
                "lora.targets",
                &format!("`{target}` is not a module name"),
                "module-name suffixes such as q_proj or self_attn.q_proj",
            );
        }
    }
    let q = &spec.qlora;
    c.require(
        q.block_size.is_power_of_two() && (32..=4096).contains(&q.block_size),
        "qlora.block_size",
        &format!("block size {} is not supported", q.block_size),
        "a power of two from 32 to 4096; bitsandbytes' default is 64",
    );
}

fn check_eval(c: &mut Checker, spec: &Spec) {
    let e = &spec.eval;
    match &e.every {
        EvalEvery::Named(word) if word != "epoch" => c.fail(
            "eval.every",
            format!("`{word}` is not an evaluation interval"),
            Some("\"epoch\" or a number of optimiser steps (500)".into()),
        ),
        EvalEvery::Steps(0) => c.fail(
            "eval.every",
            "must be at least 1 step",
            Some("\"epoch\" or e.g. 500".into()),
        ),
        _ => {}
    }
    c.require(
        e.max_new_tokens >= 1,
        "eval.max_new_tokens",
        "must be at least 1",
        "e.g. 128",
    );
    c.require(
        e.batch_size >= 1,
        "eval.batch_size",
        "must be at least 1",
        "e.g. 8",
    );
    let names: Vec<String> = METRICS.iter().map(|(m, _)| format!("val/{m}")).collect();
    let metric = e.select.metric.as_str();
    let known = metric
        .split_once('/')
        .filter(|(split, _)| matches!(*split, "val" | "test"))
        .and_then(|(_, name)| METRICS.iter().find(|(m, _)| *m == name));
    match known {
        None => {
            let refs: Vec<&str> = names.iter().map(String::as_str).collect();
            let help = match super::load::nearest(metric, &refs) {
                Some(best) => format!("did you mean `{best}`? metrics: {}", names.join(", ")),
                None => format!("metrics: {}", names.join(", ")),
            };
            c.fail(
                "eval.select.metric",
                format!("unknown metric `{metric}`"),
                Some(help),
            );
        }
        Some((name, natural)) if *natural != e.select.mode => {
            let want = if *natural == SelectMode::Min {
                "min"
            } else {
                "max"
            };
            c.fail(
                "eval.select.mode",
                format!(
                    "`{name}` is better when {}",
                    if want == "min" { "lower" } else { "higher" }
                ),
                Some(format!("mode = \"{want}\"")),
            );
        }
        Some(_) => {}
    }
}

fn check_sweep(c: &mut Checker, spec: &Spec) {
    c.require(
        spec.sweep.strategy == Strategy::Grid || spec.sweep.samples >= 1,
        "sweep.samples",
        "must be at least 1: a sweep of no draws has no trials",
        "e.g. samples = 8",
    );
    if matches!(
        spec.sweep.early_stop,
        EarlyStop::Asha | EarlyStop::Hyperband
    ) {
        check_asha(c, spec);
    }
    let budget = &spec.sweep.budget;
    c.require(
        budget.gpu_hours.is_finite() && budget.gpu_hours >= 0.0,
        "sweep.budget.gpu_hours",
        "must be a number of hours, at least 0 (0 = no limit)",
        "e.g. gpu_hours = 24.0",
    );
    c.require(
        !spec.sweep.cost_aware || spec.sweep.strategy == Strategy::Tpe,
        "sweep.cost_aware",
        "weighs TPE's suggestions by cost, and this sweep does not use TPE",
        "strategy = \"tpe\", or remove cost_aware",
    );
    if spec.sweep.strategy == Strategy::Tpe {
        c.require(
            spec.sweep.zip.is_empty(),
            "sweep.zip",
            "tpe models each axis on its own and cannot walk axes together",
            "remove zip, or use strategy = \"grid\"",
        );
        // TPE learns from finished trials: with no cap, Slurm would get
        // every suggestion at once, made from no results (random search).
        c.require(
            spec.resources.backend == Backend::Local || spec.slurm.max_jobs > 0,
            "sweep.strategy",
            "tpe on Slurm needs `slurm.max_jobs`, the number of trials in flight while it learns from the finished ones",
            "[slurm] max_jobs = 4",
        );
    }
}

/// ASHA's rungs must exist and fall on evaluation steps: a trial paused
/// at a rung is ranked by its evaluation there.
fn check_asha(c: &mut Checker, spec: &Spec) {
    let a = &spec.sweep.asha;
    let name = match spec.sweep.early_stop {
        EarlyStop::Hyperband => "hyperband",
        _ => "asha",
    };
    if a.eta < 2 {
        c.fail(
            "sweep.asha.eta",
            format!("must be at least 2 (got {})", a.eta),
            Some("eta = 3".to_owned()),
        );
        return;
    }
    if a.in_epochs() {
        check_asha_epochs(c, spec);
        return;
    }
    if a.max_steps == 0 {
        let help = match spec.train.method {
            Method::Synthetic => format!("max_steps = {}", spec.synthetic.steps),
            _ => "the trials' training length in optimiser steps, e.g. max_steps = 90".to_owned(),
        };
        // Named at the key the user wrote: the unset one has no line.
        c.fail(
            "sweep.early_stop",
            format!(
                "{name} needs `sweep.asha.max_steps`, the trials' training length (its top rung)"
            ),
            format!("[sweep.asha] {help} (or rungs in epochs: max_epochs)"),
        );
        return;
    }
    if a.min_steps == 0 || a.min_steps > a.max_steps {
        c.fail(
            "sweep.asha.min_steps",
            format!("must be in 1..=max_steps ({})", a.max_steps),
            Some(format!("e.g. min_steps = {}", (a.max_steps / 9).max(1))),
        );
        return;
    }
    let rungs = rung_ladder(a.min_steps, a.max_steps, a.eta);
    let below_top = &rungs[..rungs.len() - 1];
    let (every, evaluates): (String, Box<dyn Fn(u64) -> bool>) =
        match (spec.train.method, &spec.eval.every) {
            (Method::Synthetic, _) => {
                let steps = spec.synthetic.steps;
                (
                    "5 (a synthetic trial's cadence)".to_owned(),
                    Box::new(move |s| s.is_multiple_of(5) || s == steps),
                )
            }
            (_, EvalEvery::Steps(n)) if *n > 0 => {
                let n = *n;
                (n.to_string(), Box::new(move |s| s.is_multiple_of(n)))
            }
            _ => ("\"epoch\"".to_owned(), Box::new(|_| false)),
        };
    let off: Vec<String> = below_top
        .iter()
        .filter(|&&s| !evaluates(s))
        .map(u64::to_string)
        .collect();
    if !off.is_empty() {
        let rungs_text: Vec<String> = rungs.iter().map(u64::to_string).collect();
        c.fail(
            "sweep.asha",
            format!(
                "rungs {} are not evaluation steps (eval.every = {every}); ASHA ranks a trial by its evaluation at each rung (rungs: {})",
                off.join(", "),
                rungs_text.join(", ")
            ),
            Some("set eval.every to a step count that divides every rung, or choose min_steps/max_steps whose rungs are multiples of it".to_owned()),
        );
    }
}

/// Rungs in epochs: a trial is ranked by its evaluation at the end of the
/// rung's epoch, and the top rung is the whole training.
fn check_asha_epochs(c: &mut Checker, spec: &Spec) {
    let a = &spec.sweep.asha;
    if a.max_steps > 0 {
        c.fail(
            "sweep.asha.max_epochs",
            "rungs are in steps (max_steps) or in epochs (max_epochs), not both".to_owned(),
            Some("remove max_steps, or max_epochs".to_owned()),
        );
        return;
    }
    if spec.train.method == Method::Synthetic {
        c.fail(
            "sweep.asha.max_epochs",
            "synthetic trials have no epochs".to_owned(),
            Some(format!("max_steps = {}", spec.synthetic.steps)),
        );
        return;
    }
    if a.min_epochs == 0 || a.min_epochs > a.max_epochs {
        c.fail(
            "sweep.asha.min_epochs",
            format!("must be in 1..=max_epochs ({})", a.max_epochs),
            Some("e.g. min_epochs = 1".to_owned()),
        );
        return;
    }
    let epochs = u64::from(spec.train.epochs);
    if a.max_epochs != epochs {
        c.fail(
            "sweep.asha.max_epochs",
            format!(
                "the top rung is the trials' training length, train.epochs = {epochs} (got {})",
                a.max_epochs
            ),
            Some(format!("max_epochs = {epochs}")),
        );
    }
    if spec.eval.every != EvalEvery::Named("epoch".to_owned()) {
        c.fail(
            "eval.every",
            "rungs in epochs rank a trial by its evaluation at the end of each rung's epoch, so evaluations must be per epoch".to_owned(),
            Some("every = \"epoch\"".to_owned()),
        );
    }
}

fn check_resources(c: &mut Checker, spec: &Spec) {
    let r = &spec.resources;
    if let Err(e) = r.devices.parse::<DeviceRequest>() {
        c.fail("resources.devices", e.to_string(), None);
    }
    c.require(
        r.max_trials_per_device >= 1,
        "resources.max_trials_per_device",
        "must be at least 1",
        "1 runs one trial per device",
    );
    c.require(
        (0.0..0.9).contains(&r.memory_headroom),
        "resources.memory_headroom",
        "must be in [0, 0.9)",
        "the fraction of memory kept free, e.g. 0.1",
    );
    c.require(
        r.keep_checkpoints >= 1,
        "resources.keep_checkpoints",
        "must be at least 1",
        "e.g. 2",
    );
}

fn check_slurm(c: &mut Checker, spec: &Spec) {
    let s = &spec.slurm;
    c.require(
        s.cpus_per_trial >= 1,
        "slurm.cpus_per_trial",
        "must be at least 1",
        "e.g. 4",
    );
    c.require(
        s.poll_interval > 0.0 && s.poll_interval <= 600.0,
        "slurm.poll_interval",
        "must be in (0, 600] seconds",
        "e.g. 5.0",
    );
    c.require(
        ["auto", "cuda", "cpu"].contains(&s.device.as_str()),
        "slurm.device",
        "must be `auto`, `cuda` or `cpu`",
        "`auto` uses the GPU Slurm gives the job, else the CPU",
    );
    for (i, tier) in s.memory_tiers.iter().enumerate() {
        if let Err(e) = parse_bytes(&tier.above) {
            c.fail(
                &format!("slurm.memory_tiers.{i}.above"),
                e.to_string(),
                None,
            );
        }
        c.require(
            !(tier.gres.is_empty() && tier.constraint.is_empty()),
            &format!("slurm.memory_tiers.{i}"),
            "names neither a gres nor a constraint",
            "e.g. { above = \"40GiB\", gres = \"gpu:a100_80g:1\" }",
        );
    }
    for arg in &s.extra_args {
        c.require(
            arg.starts_with('-'),
            "slurm.extra_args",
            &format!("`{arg}` is not an sbatch option"),
            "write options whole, e.g. [\"--exclusive\", \"--nodelist=gpu01\"]",
        );
    }
}

fn check_synthetic(c: &mut Checker, spec: &Spec) {
    if spec.train.method != Method::Synthetic {
        return;
    }
    let s = &spec.synthetic;
    if let Err(e) = parse_bytes(&s.memory_per_sample) {
        c.fail("synthetic.memory_per_sample", e.to_string(), None);
    }
    c.require(
        s.steps >= 1,
        "synthetic.steps",
        "must be at least 1",
        "e.g. 20",
    );
}

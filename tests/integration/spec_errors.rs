//! One test per class of bad input: exit 2, and a message naming where the
//! value came from (`file:line:column`, variable or flag), the key and a fix.

use crate::util::Test;

const BASE: &str = "[model]\ncheckpoint = \"tiny\"\n\n[train]\nepochs = 1\n";

fn plan(spec: &str) -> crate::util::Output {
    Test::new()
        .spec(spec)
        .args(&["plan", "spec.toml", "--devices", "cuda:8x1024GiB"])
        .run()
}

#[test]
fn unknown_key_names_line_and_suggests_the_nearest() {
    plan("[train]\nepochs = 1\nlrr = 1e-4\n")
        .code(2)
        .stderr_has("spec.toml:3:1")
        .stderr_has("`train.lrr`")
        .stderr_has("did you mean `lr`");
}

#[test]
fn unknown_table_is_reported_with_suggestion() {
    plan("[trian]\nepochs = 1\n")
        .code(2)
        .stderr_has("spec.toml:1:2")
        .stderr_has("`trian`")
        .stderr_has("did you mean `train`");
}

#[test]
fn wrong_type_names_the_key_and_expected_type() {
    plan(&format!("{BASE}batch_size = \"four\"\n"))
        .code(2)
        .stderr_has("spec.toml:6:1")
        .stderr_has("`train.batch_size`")
        .stderr_has("expected");
}

#[test]
fn out_of_range_values_each_name_their_line() {
    let out = plan("[train]\nlr = 0.0\nbatch_size = 0\n\n[lora]\nr = 0\n");
    out.code(2)
        .stderr_has("spec.toml:2:1: `train.lr`")
        .stderr_has("spec.toml:3:1: `train.batch_size`")
        .stderr_has("spec.toml:6:1: `lora.r`")
        .stderr_has("3 problems");
}

#[test]
fn unknown_enum_value_lists_the_valid_ones() {
    plan("[model]\nsize = \"5b\"\n")
        .code(2)
        .stderr_has("spec.toml:2:1")
        .stderr_has("`model.size`")
        .stderr_has("3b | 10b | 28b");
    plan("[model]\nresolution = 300\n")
        .code(2)
        .stderr_has("`model.resolution`")
        .stderr_has("224, 448 or 896");
}

#[test]
fn qlora_options_without_qlora_are_an_error() {
    plan("[train]\nmethod = \"lora\"\n\n[qlora]\ndouble_quant = false\n")
        .code(2)
        .stderr_has("spec.toml:5:1: `qlora.double_quant`")
        .stderr_has("no trial uses train.method = \"qlora\"");
    // The same option is fine when some trial uses QLoRA.
    plan(
        "[qlora]\ndouble_quant = false\n\n[sweep.axes]\n\"train.method\" = [\"lora\", \"qlora\"]\n",
    )
    .code(0);
}

#[test]
fn syntax_error_names_line() {
    plan("[train]\nlr = = 3\n")
        .code(2)
        .stderr_has("spec.toml:2:")
        .stderr_has("invalid TOML");
}

#[test]
fn axis_on_unknown_key_points_at_the_axis() {
    plan(&format!(
        "{BASE}\n[sweep.axes]\n\"train.lrr\" = [1e-5, 3e-5]\n"
    ))
    .code(2)
    .stderr_has("spec.toml:8:1")
    .stderr_has("`train.lrr`")
    .stderr_has("did you mean `lr`");
}

#[test]
fn axis_with_a_bad_value_names_the_axis_and_the_trial() {
    plan(&format!(
        "{BASE}\n[sweep.axes]\n\"train.lr\" = [1e-5, -1.0]\n"
    ))
    .code(2)
    .stderr_has("spec.toml:8:1: `train.lr`")
    .stderr_has("train.lr = -1.0");
}

#[test]
fn empty_and_unsweepable_axes() {
    plan("[sweep.axes]\n\"train.lr\" = []\n")
        .code(2)
        .stderr_has("spec.toml:2:1")
        .stderr_has("no values");
    plan("[sweep.axes]\n\"resources.retries\" = [1, 2]\n")
        .code(2)
        .stderr_has("cannot be swept");
}

#[test]
fn duplicate_trials_are_an_error() {
    plan("[sweep.axes]\n\"train.lr\" = [1e-5, 0.00001]\n")
        .code(2)
        .stderr_has("are the same trial");
}

#[test]
fn distribution_needs_random_strategy() {
    plan("[sweep.axes]\n\"train.lr\" = { loguniform = [1e-6, 1e-4] }\n")
        .code(2)
        .stderr_has("spec.toml:2:1")
        .stderr_has("strategy = \"random\"");
}

#[test]
fn zip_groups_need_equal_lengths() {
    plan("[sweep]\nzip = [[\"train.lr\", \"train.batch_size\"]]\n[sweep.axes]\n\"train.lr\" = [1e-5, 3e-5]\n\"train.batch_size\" = [1, 2, 4]\n")
        .code(2)
        .stderr_has("spec.toml:2:1: `sweep.zip`")
        .stderr_has("equal lengths");
}

#[test]
fn exclude_rules_must_name_axes() {
    plan("[sweep]\nexclude = [{ \"train.epochs\" = 1 }]\n[sweep.axes]\n\"train.lr\" = [1e-5, 3e-5]\n")
        .code(2)
        .stderr_has("`sweep.exclude`")
        .stderr_has("not an axis");
}

#[test]
fn large_grids_need_yes() {
    let spec = "[sweep]\nmax_trials = 4\n[sweep.axes]\n\"train.lr\" = [1e-5, 2e-5, 3e-5]\n\"train.epochs\" = [1, 2]\n";
    let test = Test::new().spec(spec);
    test.run_in(&["plan", "spec.toml", "--devices", "cuda:8x1024GiB"])
        .code(2)
        .stderr_has("6 trials, more than sweep.max_trials = 4")
        .stderr_has("--yes");
    test.run_in(&["plan", "spec.toml", "--devices", "cuda:8x1024GiB", "--yes"])
        .code(0);
}

#[test]
fn bad_environment_value_names_the_variable() {
    Test::new()
        .spec(BASE)
        .env("PALISWEEP_TRAIN__LR", "fast")
        .args(&["plan", "spec.toml", "--devices", "cuda:8x1024GiB"])
        .run()
        .code(2)
        .stderr_has("environment variable PALISWEEP_TRAIN__LR")
        .stderr_has("`train.lr`");
}

#[test]
fn bad_set_flag_names_the_flag() {
    Test::new()
        .spec(BASE)
        .args(&[
            "plan",
            "spec.toml",
            "--devices",
            "cuda:8x1024GiB",
            "--set",
            "train.batch_size=0",
        ])
        .run()
        .code(2)
        .stderr_has("flag --set train.batch_size=0")
        .stderr_has("`train.batch_size`");
    Test::new()
        .spec(BASE)
        .args(&["plan", "spec.toml", "--set", "train.lr"])
        .run()
        .code(2)
        .stderr_has("expected key=value");
}

#[test]
fn error_in_an_extended_base_names_the_base_file() {
    Test::new()
        .file("base.toml", "[train]\nepochs = 1\nwarmup = 1.5\n")
        .spec("extends = \"base.toml\"\n[train]\nlr = 1e-4\n")
        .args(&["plan", "spec.toml", "--devices", "cuda:8x1024GiB"])
        .run()
        .code(2)
        .stderr_has("base.toml:3:1: `train.warmup`");
}

#[test]
fn bad_devices_are_bad_input() {
    Test::new()
        .spec(BASE)
        .args(&["plan", "spec.toml", "--devices", "tpu:4"])
        .run()
        .code(2)
        .stderr_has("--devices");
    plan("[resources]\ndevices = \"cuda:4x\"\n")
        .code(2)
        .stderr_has("spec.toml:2:1: `resources.devices`");
}

#[test]
fn metric_and_mode_must_agree() {
    plan("[eval]\nselect = { metric = \"val/loss\", mode = \"max\" }\n")
        .code(2)
        .stderr_has("`eval.select.mode`")
        .stderr_has("mode = \"min\"");
    plan("[eval]\nselect = { metric = \"val/field_f2\", mode = \"max\" }\n")
        .code(2)
        .stderr_has("did you mean `val/field_f1`");
}

#[test]
fn missing_spec_file_is_bad_input() {
    Test::new()
        .args(&["plan", "nope.toml"])
        .run()
        .code(2)
        .stderr_has("nope.toml");
}

#[test]
fn a_value_where_a_table_belongs_is_blamed_on_its_own_line() {
    plan("experiment = 5\n")
        .code(2)
        .stderr_has("spec.toml:1:1: `experiment`: expected a table, found integer `5`")
        .stderr_has("[experiment]");
    // With --results (a flag that sets experiment.results), it used to
    // blame the built-in defaults for a missing key.
    let out = Test::new()
        .spec("experiment = 5\n")
        .args(&["run", "spec.toml", "--results", "results"])
        .run();
    out.code(2)
        .stderr_has("spec.toml:1:1: `experiment`: expected a table");
    assert!(!out.stderr.contains("built-in defaults"), "{}", out.stderr);
    Test::new()
        .spec(BASE)
        .args(&["plan", "spec.toml", "--set", "eval.select=\"val/loss\""])
        .run()
        .code(2)
        .stderr_has("flag --set eval.select=\"val/loss\": `eval.select`: expected a table")
        .stderr_has("metric, mode");
}

#[test]
fn a_random_sweep_needs_samples_and_exclude_rules_must_leave_a_trial() {
    let synthetic = "[train]\nmethod = \"synthetic\"\n[synthetic]\nsteps = 2\n";
    let out = plan(&format!(
        "{synthetic}[sweep]\nstrategy = \"random\"\nsamples = 0\n\
         [sweep.axes]\n\"train.lr\" = [1e-5, 2e-5]\n"
    ));
    out.code(2)
        .stderr_has("spec.toml:7:1: `sweep.samples`: must be at least 1");
    assert!(!out.stderr.contains("synthetic"), "{}", out.stderr);
    let out = plan(&format!(
        "{synthetic}[sweep]\nexclude = [{{ \"train.lr\" = 1e-5 }}, {{ \"train.lr\" = 2e-5 }}]\n\
         [sweep.axes]\n\"train.lr\" = [1e-5, 2e-5]\n"
    ));
    out.code(2)
        .stderr_has("`sweep.exclude`: the exclude rules drop all 2 trials");
    assert!(!out.stderr.contains("synthetic"), "{}", out.stderr);
}

#[test]
fn asha_rungs_off_the_evaluation_steps_are_refused_with_the_rungs_named() {
    plan(&format!(
        "{BASE}[eval]\nevery = 10\n[sweep]\nearly_stop = \"asha\"\n[sweep.asha]\nmin_steps = 5\nmax_steps = 45\n"
    ))
    .code(2)
    .stderr_has("`sweep.asha`")
    .stderr_has("rungs 5, 15 are not evaluation steps (eval.every = 10)")
    .stderr_has("rungs: 5, 15, 45");
    plan(&format!("{BASE}[sweep]\nearly_stop = \"asha\"\n"))
        .code(2)
        .stderr_has("spec.toml:7:1")
        .stderr_has("`sweep.early_stop`: asha needs `sweep.asha.max_steps`");
}

#[test]
fn tpe_on_slurm_without_a_job_cap_is_refused_with_the_fix() {
    plan(&format!(
        "{BASE}[sweep]\nstrategy = \"tpe\"\nsamples = 4\n\
         [sweep.axes]\n\"train.lr\" = {{ loguniform = [1e-6, 1e-3] }}\n\
         [resources]\nbackend = \"slurm\"\n"
    ))
    .code(2)
    .stderr_has("spec.toml:7:1: `sweep.strategy`: tpe on Slurm needs `slurm.max_jobs`")
    .stderr_has("[slurm] max_jobs = 4");
}

#[test]
fn asha_rungs_in_epochs_need_per_epoch_evaluations_and_the_whole_training_on_top() {
    plan(&format!(
        "{BASE}[eval]\nevery = 10\n[sweep]\nearly_stop = \"asha\"\n\
         [sweep.asha]\nmin_epochs = 1\nmax_epochs = 3\n"
    ))
    .code(2)
    .stderr_has("`eval.every`: rungs in epochs rank a trial by its evaluation at the end of each rung's epoch")
    .stderr_has("every = \"epoch\"")
    .stderr_has("`sweep.asha.max_epochs`: the top rung is the trials' training length, train.epochs = 1 (got 3)")
    .stderr_has("max_epochs = 1");
    plan(&format!(
        "{BASE}[sweep]\nearly_stop = \"asha\"\n[sweep.asha]\nmax_steps = 10\nmax_epochs = 1\n"
    ))
    .code(2)
    .stderr_has("`sweep.asha.max_epochs`: rungs are in steps (max_steps) or in epochs (max_epochs), not both");
}

#[test]
fn cost_aware_without_tpe_is_refused() {
    plan(&format!("{BASE}[sweep]\ncost_aware = true\n"))
        .code(2)
        .stderr_has(
            "`sweep.cost_aware`: weighs TPE's suggestions by cost, and this sweep does not use TPE",
        )
        .stderr_has("strategy = \"tpe\", or remove cost_aware");
}

//! `plan`: estimates, placement on hypothetical inventories, JSON keys,
//! and trials that fit nowhere.

use crate::util::Test;

const SWEEP: &str = "[experiment]\nname = \"placement\"\n\
    [sweep.axes]\n\"model.size\" = [\"3b\", \"10b\"]\n\"train.method\" = [\"lora\", \"qlora\"]\n";

#[test]
fn json_has_the_stable_keys() {
    let json = Test::new()
        .spec(SWEEP)
        .args(&["plan", "spec.toml", "--json", "--devices", "cuda:2x80GiB"])
        .run()
        .code(0)
        .json();
    let trials = json["trials"].as_array().unwrap();
    assert_eq!(trials.len(), 4);
    for t in trials {
        assert!(t["id"].is_string());
        assert!(t["params"]["model.size"].is_string());
        assert!(t["est_memory_bytes"].as_u64().unwrap() > 1 << 30);
        assert!(t["rel_cost"].as_f64().unwrap() > 0.0);
        assert!(t["device"].as_str().unwrap().starts_with("cuda:"));
    }
    assert_eq!(json["sweep"], "placement");
}

fn by_params(json: &serde_json::Value, size: &str, method: &str) -> serde_json::Value {
    json["trials"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["params"]["model.size"] == size && t["params"]["train.method"] == method)
        .cloned()
        .unwrap()
}

#[test]
fn estimates_order_as_the_architecture_says() {
    let plan = |spec: &str| {
        Test::new()
            .spec(spec)
            .args(&["plan", "spec.toml", "--json", "--devices", "cuda:2x80GiB"])
            .run()
            .code(0)
            .json()
    };
    let json = plan(SWEEP);
    let mem =
        |j: &serde_json::Value, s, m| by_params(j, s, m)["est_memory_bytes"].as_u64().unwrap();
    let cost = |s, m| by_params(&json, s, m)["rel_cost"].as_f64().unwrap();
    assert!(mem(&json, "3b", "lora") < mem(&json, "10b", "lora"));
    assert!(cost("3b", "lora") < cost("10b", "lora"));
    // The NF4 layer keeps no dequantised weight: QLoRA needs less than LoRA
    // with and without checkpointing.
    assert!(mem(&json, "3b", "qlora") < mem(&json, "3b", "lora"));
    assert!(mem(&json, "10b", "qlora") < mem(&json, "10b", "lora"));
    let checkpointed = plan(&format!("{SWEEP}[train]\ngradient_checkpointing = true\n"));
    assert!(mem(&checkpointed, "3b", "qlora") < mem(&checkpointed, "3b", "lora"));
    assert!(mem(&checkpointed, "10b", "qlora") < mem(&checkpointed, "10b", "lora"));
}

#[test]
fn two_gpus_start_the_two_largest_trials_first() {
    let json = Test::new()
        .spec(SWEEP)
        .args(&["plan", "spec.toml", "--json", "--devices", "cuda:2x80GiB"])
        .run()
        .code(0)
        .json();
    let mut trials = json["trials"].as_array().unwrap().clone();
    trials.sort_by_key(|t| std::cmp::Reverse(t["est_memory_bytes"].as_u64().unwrap()));
    let devices: Vec<&str> = trials
        .iter()
        .map(|t| t["device"].as_str().unwrap())
        .collect();
    // One trial per device (the default): the two largest start at once on
    // different GPUs, the others wait.
    assert_ne!(devices[0], devices[1]);
    assert_eq!(trials[0]["start"], 0.0);
    assert_eq!(trials[1]["start"], 0.0);
    assert!(trials[2]["start"].as_f64().unwrap() > 0.0);
    assert!(trials[3]["start"].as_f64().unwrap() > 0.0);
}

#[test]
fn trials_that_fit_nowhere_fail_up_front_with_what_would_fit() {
    // 10B LoRA needs more than 36 GiB (40 GiB less headroom) without
    // gradient checkpointing; QLoRA, below LoRA everywhere now that the NF4
    // layer keeps no dequantised weight, fits.
    Test::new()
        .spec(SWEEP)
        .args(&["plan", "spec.toml", "--devices", "cuda:4x40GiB"])
        .run()
        .code(2)
        .stderr_has("1 of 4 trials fit on no device")
        .stderr_has("model.size = \"10b\", train.method = \"lora\"")
        .stderr_has("would fit with: train.method = \"qlora\"")
        .stderr_has("train.gradient_checkpointing = true");
    // With checkpointing, 10B LoRA needs more than 18 GiB (20 GiB less
    // headroom) and QLoRA is what fits.
    Test::new()
        .spec(&format!("{SWEEP}[train]\ngradient_checkpointing = true\n"))
        .args(&["plan", "spec.toml", "--devices", "cuda:4x20GiB"])
        .run()
        .code(2)
        .stderr_has("1 of 4 trials fit on no device")
        .stderr_has("model.size = \"10b\", train.method = \"lora\"")
        .stderr_has("would fit with: train.method = \"qlora\"");
    // Eager attention keeps every layer's scores: at 448 px, 3B LoRA needs
    // more than 43 GiB, and the memory-efficient default is what fits.
    Test::new()
        .spec("[experiment]\nname = \"eager\"\n[model]\nresolution = 448\nattention = \"eager\"\n")
        .args(&["plan", "spec.toml", "--devices", "cuda:1x48GiB"])
        .run()
        .code(2)
        .stderr_has("would fit with: model.attention = \"memory_efficient\"");
}

#[test]
fn more_trials_share_a_device_when_allowed() {
    let spec = format!("{SWEEP}[resources]\nmax_trials_per_device = 4\n");
    let json = Test::new()
        .spec(&spec)
        .args(&["plan", "spec.toml", "--json", "--devices", "cuda:1x141GiB"])
        .run()
        .code(0)
        .json();
    let started_now = json["trials"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["start"] == 0.0)
        .count();
    assert!(
        started_now >= 2,
        "several trials should start together on 141 GiB"
    );
}

#[test]
fn cpu_slots_plan_the_tiny_demo() {
    Test::new()
        .spec("[model]\ncheckpoint = \"tiny\"\n[sweep.axes]\n\"train.lr\" = [1e-3, 3e-3]\n")
        .args(&["plan", "spec.toml", "--devices", "cpu:2"])
        .run()
        .code(0)
        .stdout_has("2 trials over train.lr")
        .stdout_has("cpu:0")
        .stdout_has("cpu:1")
        .stdout_has("tiny-3b-224");
}

#[test]
fn dataset_lengths_are_measured_when_present() {
    let rows = "{\"image\": \"a.png\", \"prefix\": \"extract\", \"suffix\": \"x\"}\n";
    let test = Test::new()
        .file("data/train/annotations.jsonl", rows)
        .spec("[data]\npath = \"data\"\nmax_suffix_tokens = 512\n");
    // A dataset that is present is checked whole: its image must be there.
    std::fs::copy(
        crate::util::golden("data/valid/v0_rgb.png"),
        test.path().join("data/train/a.png"),
    )
    .unwrap();
    let measured = test
        .run_in(&["plan", "spec.toml", "--json", "--devices", "cuda:1x80GiB"])
        .code(0)
        .json();
    assert_eq!(measured["text_lengths_measured"], true);
    let absent = Test::new()
        .spec("[data]\npath = \"data\"\nmax_suffix_tokens = 512\n")
        .run_in(&["plan", "spec.toml", "--json", "--devices", "cuda:1x80GiB"]);
    let absent = absent.code(0).json();
    assert_eq!(absent["text_lengths_measured"], false);
    // The one-token suffix needs less memory than the 512-token maximum.
    let mem = |j: &serde_json::Value| j["trials"][0]["est_memory_bytes"].as_u64().unwrap();
    assert!(mem(&measured) < mem(&absent));
}

#[test]
fn a_changed_spec_is_compared_with_the_recorded_sweep() {
    let test = Test::new().spec(
        "[experiment]\nname = \"grow\"\n[model]\ncheckpoint = \"tiny\"\n[sweep.axes]\n\"train.lr\" = [1e-3, 3e-3]\n",
    );
    let json = test
        .run_in(&["plan", "spec.toml", "--json", "--devices", "cpu:2"])
        .code(0)
        .json();
    let first = json["trials"][0]["id"].as_str().unwrap().to_owned();
    assert_eq!(json["trials"][0]["recorded"], false);
    // Pretend a run recorded one of the trials and one the spec no longer has.
    for id in [first.as_str(), "0123456789ab"] {
        let dir = test.path().join("results/grow/trials").join(id);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("trial.toml"), "").unwrap();
    }
    let out = test.run_in(&["plan", "spec.toml", "--devices", "cpu:2"]);
    out.code(0)
        .stdout_has("1 trial(s) already recorded")
        .stdout_has("1 new")
        .stdout_has("1 recorded trial(s) no longer in the spec");
    let json = test
        .run_in(&["plan", "spec.toml", "--json", "--devices", "cpu:2"])
        .code(0)
        .json();
    assert_eq!(json["dropped"][0], "0123456789ab");
    let recorded: Vec<&serde_json::Value> = json["trials"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["recorded"] == true)
        .collect();
    assert_eq!(recorded.len(), 1);
    assert_eq!(recorded[0]["id"], first.as_str());
}

/// The first number after `prefix` on the line that starts with it.
fn number_after(text: &str, prefix: &str) -> f64 {
    let line = text
        .lines()
        .find(|l| l.starts_with(prefix))
        .unwrap_or_else(|| panic!("no line starting {prefix:?} in:\n{text}"));
    line[prefix.len()..]
        .split_whitespace()
        .next()
        .and_then(|w| w.parse().ok())
        .unwrap_or_else(|| panic!("no number after {prefix:?}: {line}"))
}

/// Issue #20: `plan` says hours once trials have finished, from their
/// recorded wall time, and says it cannot before.
#[test]
fn plan_estimates_hours_from_the_recorded_wall_time() {
    let test = Test::new().spec(&crate::util::synthetic_spec(
        "timed",
        "[synthetic]\nsteps = 20\nstep_ms = 20\n\
         [sweep.axes]\n\"train.lr\" = [1e-4, 1e-3, 1e-2]\n",
    ));
    let devices = "fake-cuda:2x80GiB";
    let plan = |extra: &[&str]| {
        let mut args = vec!["plan", "spec.toml", "--devices", devices];
        args.extend_from_slice(extra);
        test.run_in(&args)
    };
    let before = plan(&[]);
    before
        .code(0)
        .stdout_has("cannot estimate time yet")
        .stdout_has("start: when the trial would begin");
    assert!(!before.stdout.contains("est. hours"), "{}", before.stdout);
    let json = plan(&["--json"]).code(0).json();
    assert!(json["time"].is_null());
    assert!(json["trials"][0]["est_hours"].is_null());

    crate::util::run_spec(&test, devices).code(0);

    // The recorded wall time of each trial, from `show`: its attempts.
    let json = plan(&["--json"]).code(0).json();
    let trials = json["trials"].as_array().unwrap();
    assert_eq!(trials.len(), 3);
    let (mut wall, mut cost) = (0.0, 0.0);
    for t in trials {
        let id = t["id"].as_str().unwrap();
        let shown = test
            .run_in(&["show", id, "--results", "results", "--json"])
            .code(0)
            .json();
        for a in shown["attempts"].as_array().unwrap() {
            wall += a["end"].as_f64().unwrap() - a["start"].as_f64().unwrap();
        }
        cost += t["rel_cost"].as_f64().unwrap();
    }
    assert!(wall > 0.0);
    let rate = wall / cost;
    let time = &json["time"];
    assert_eq!(time["source"], "this_sweep");
    assert_eq!(time["measured_trials"], 3);
    assert!((time["seconds_per_rel_cost"].as_f64().unwrap() - rate).abs() < 1e-6 * rate);
    for t in trials {
        let expected = t["rel_cost"].as_f64().unwrap() * rate / 3600.0;
        let got = t["est_hours"].as_f64().unwrap();
        assert!(
            (got - expected).abs() < 1e-6 * expected,
            "{got} vs {expected}"
        );
    }
    // The table prints the same total, to two significant digits.
    let table = plan(&[]);
    table
        .code(0)
        .stdout_has("est. hours")
        .stdout_has("finished trial(s) of this sweep")
        .stdout_has("all 3 trial(s) already finished");
    let total = number_after(&table.stdout, "estimated total");
    let expected = wall / 3600.0;
    assert!(
        (total - expected).abs() <= 0.05 * expected,
        "{total} vs {expected}\n{}",
        table.stdout
    );

    // Another sweep of the same checkpoint, method and data borrows the rate.
    let other = plan(&["--set", "experiment.name=\"other\"", "--json"])
        .code(0)
        .json();
    assert_eq!(other["time"]["source"]["other_sweeps"][0], "timed");
    let borrowed = other["time"]["seconds_per_rel_cost"].as_f64().unwrap();
    assert!(
        (borrowed - rate).abs() < 1e-6 * rate,
        "{borrowed} vs {rate}"
    );
    plan(&["--set", "experiment.name=\"other\""])
        .code(0)
        .stdout_has("of sweep(s) timed with the same checkpoint, method and data");
}

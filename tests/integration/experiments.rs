//! Every committed example spec is valid (statically: no dataset or
//! checkpoint needed) and plans onto a large hypothetical inventory.

use crate::util::{BIN, repo_root};

#[test]
fn every_example_spec_plans() {
    let dir = repo_root().join("experiments");
    let mut specs: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    specs.sort();
    let names: Vec<String> = specs
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    for required in ["demo.toml", "pallet-manifest.toml", "detection.toml"] {
        assert!(
            names.iter().any(|n| n == required),
            "experiments/{required} is missing"
        );
    }
    for spec in &specs {
        let out = std::process::Command::new(BIN)
            .args(["plan", "--json", "--devices", "cuda:8x80GiB"])
            .arg(spec)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{} does not plan:\n{}",
            spec.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert!(json["trial_count"].as_u64().unwrap() >= 1);
    }
}

#[test]
fn the_demo_plans_every_trial_on_cpu_with_tiny_checkpoints() {
    let out = std::process::Command::new(BIN)
        .args(["plan", "--json"])
        .arg(repo_root().join("experiments/demo.toml"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let trials = json["trials"].as_array().unwrap();
    assert!(!trials.is_empty(), "the demo plans no trial");
    for trial in trials {
        assert!(trial["checkpoint"].as_str().unwrap().starts_with("tiny-"));
        assert!(trial["device"].as_str().unwrap().starts_with("cpu:"));
    }
}

#[test]
fn the_pallet_manifest_grid_is_32_trials_and_qlora_fits_a_24_gib_card() {
    let spec = repo_root().join("experiments/pallet-manifest.toml");
    let out = std::process::Command::new(BIN)
        .args(["plan", "--json", "--devices", "cuda:8x80GiB"])
        .arg(&spec)
        .output()
        .unwrap();
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["trial_count"], 32);
    let qlora_3b_224 = json["trials"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| {
            t["params"]["model.size"] == "3b"
                && t["params"]["model.resolution"] == 224
                && t["params"]["train.method"] == "qlora"
        })
        .unwrap();
    assert!(qlora_3b_224["est_memory_bytes"].as_u64().unwrap() < 24 << 30);
}

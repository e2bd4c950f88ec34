//! The trainer worker through the real binary: it learns, it resumes
//! exactly, and bad data fails cleanly.

use crate::util::Test;

/// A one-trial spec on the tiny checkpoint and the generated JSON dataset.
fn spec(epochs: u32, lr: f64) -> String {
    format!(
        "[experiment]\nname = \"w\"\nseed = 7\n\
         [data]\npath = \"generated:json\"\ntask = \"json\"\nmax_suffix_tokens = 32\n\
         [model]\ncheckpoint = \"tiny\"\n\
         [train]\nepochs = {epochs}\nbatch_size = 8\ngrad_accum = 1\nlr = {lr}\nwarmup = 2\n\
         [lora]\ndropout = 0.1\n\
         [eval]\ngenerate = false\nselect = {{ metric = \"val/loss\", mode = \"min\" }}\n"
    )
}

fn events(test: &Test, trial: &str) -> Vec<serde_json::Value> {
    std::fs::read_to_string(test.path().join(trial).join("events.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// `worker --spec spec.toml --trial TRIAL --threads 1 EXTRA…`.
fn run_worker(test: &Test, trial: &str, extra: &[&str]) -> crate::util::Output {
    let mut args = vec![
        "worker",
        "--spec",
        "spec.toml",
        "--trial",
        trial,
        "--threads",
        "1",
    ];
    args.extend_from_slice(extra);
    test.run_in(&args)
}

fn train_losses(events: &[serde_json::Value]) -> Vec<f64> {
    events
        .iter()
        .filter(|e| e["event"] == "step")
        .map(|e| e["metrics"]["train/loss"].as_f64().unwrap())
        .collect()
}

#[test]
fn a_short_cpu_run_learns_to_reproduce_the_training_suffixes() {
    let test = Test::new().spec(&spec(25, 1e-2));
    test.run_in(&[
        "worker",
        "--spec",
        "spec.toml",
        "--trial",
        "trial",
        "--threads",
        "2",
    ])
    .code(0);
    let events = events(&test, "trial");
    let losses = train_losses(&events);
    assert!(losses.len() >= 100, "{} steps", losses.len());
    let (first, last) = (losses[0], losses[losses.len() - 1]);
    assert!(
        last < 0.3 && last < first / 10.0,
        "train loss {first} → {last}"
    );
    assert!(events.iter().any(|e| e["event"] == "finished"));
    // Greedy decoding with the best adapter reproduces most training suffixes.
    let json = test
        .run_in(&[
            "eval",
            "--checkpoint",
            "results/.cache/tiny/paligemma2-tiny-3b-224-seed0",
            "--adapter",
            "trial/best",
            "--data",
            "results/.cache/data/generated-json-seed0",
            "--split",
            "train",
            "--generate",
            "--max-new-tokens",
            "24",
            "--json",
        ])
        .code(0)
        .json();
    let exact = json["metrics"]["exact_match"].as_f64().unwrap();
    assert!(exact >= 0.6, "exact match on the training split: {exact}");
}

#[test]
fn resumed_and_checkpointed_runs_end_exactly_as_a_plain_one() {
    let test = Test::new().spec(&spec(3, 5e-3));
    let run = |trial: &str, extra: &[&str]| run_worker(&test, trial, extra);
    run("straight", &[]).code(0);
    run("resumed", &["--stop-after", "7"]).code(4);
    let interrupted = train_losses(&events(&test, "resumed"));
    assert_eq!(interrupted.len(), 7, "stopped after step 7");
    run("resumed", &[]).code(0);
    let straight = train_losses(&events(&test, "straight"));
    let resumed = train_losses(&events(&test, "resumed"));
    // The resumed events hold steps 1..7 then 8..: the same curve, bit for bit.
    assert_eq!(straight, resumed);
    let params = |trial: &str| {
        std::fs::read(test.path().join(trial).join("final/params.safetensors")).unwrap()
    };
    assert_eq!(
        params("straight"),
        params("resumed"),
        "final adapters differ"
    );
    // Gradient checkpointing recomputes each layer with the same dropout
    // draws: the same curve and adapter, bit for bit.
    run(
        "checkpointed",
        &["--set", "train.gradient_checkpointing=true"],
    )
    .code(0);
    assert_eq!(straight, train_losses(&events(&test, "checkpointed")));
    assert_eq!(
        params("straight"),
        params("checkpointed"),
        "gradient checkpointing changed the adapter"
    );
}

#[test]
fn bad_data_fails_before_training_with_exit_2_and_a_failed_event() {
    let test = Test::new()
        .file(
            "data/train/annotations.jsonl",
            "{\"image\": \"missing.png\", \"prefix\": \"p\", \"suffix\": \"{}\"}\n",
        )
        .spec("[data]\npath = \"data\"\n[model]\ncheckpoint = \"tiny\"\n");
    let out = test.run_in(&["worker", "--spec", "spec.toml", "--trial", "t"]);
    out.code(2)
        .stderr_has("annotations.jsonl:1")
        .stderr_has("missing.png");
    let events = events(&test, "t");
    let failed = events
        .iter()
        .find(|e| e["event"] == "failed")
        .expect("a failed event");
    assert_eq!(failed["kind"], "data");
}

/// `--deterministic` (what `rerun` passes on CUDA) switches libtorch's
/// deterministic algorithms on, and the worker records what libtorch
/// reports, not what it was asked.
#[test]
fn the_worker_records_whether_torchs_deterministic_algorithms_were_on() {
    let test = Test::new().spec(&spec(1, 1e-2));
    let provenance = |trial: &str, extra: &[&str]| {
        run_worker(&test, trial, extra).code(0);
        events(&test, trial)
            .into_iter()
            .find(|e| e["event"] == "provenance")
            .unwrap()
    };
    assert_eq!(
        provenance("plain", &[])["deterministic_algorithms"],
        serde_json::Value::Bool(false)
    );
    assert_eq!(
        provenance("deterministic", &["--deterministic"])["deterministic_algorithms"],
        serde_json::Value::Bool(true)
    );
}

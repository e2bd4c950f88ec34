//! `palisweep bench` (issue #9): training and forward rows with the
//! documented keys and sane values. Behaviour only: CPU timings vary too
//! much to assert on.

use crate::util::Test;

fn rows(stdout: &str) -> Vec<serde_json::Value> {
    stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

#[track_caller]
fn positive(row: &serde_json::Value, key: &str) -> f64 {
    let value = row[key]
        .as_f64()
        .unwrap_or_else(|| panic!("{key} missing: {row}"));
    assert!(value.is_finite() && value > 0.0, "{key} = {value}: {row}");
    value
}

fn bench(method: &str, extra: &[&str]) -> Vec<serde_json::Value> {
    let test = Test::new();
    let mut args = vec![
        "bench",
        "--checkpoint",
        "tiny",
        "--method",
        method,
        "--batch",
        "2",
        "--warmup",
        "1",
        "--steps",
        "2",
        "--device",
        "cpu",
        "--threads",
        "2",
        "--json",
    ];
    args.extend_from_slice(extra);
    let out = test.run_in(&args);
    out.code(0);
    rows(&out.stdout)
}

fn check(rows: &[serde_json::Value], method: &str, checkpointing: bool) {
    assert_eq!(rows.len(), 2, "{rows:?}");
    assert_eq!(rows[0]["mode"], "forward");
    assert_eq!(rows[1]["mode"], "train");
    for row in rows {
        assert_eq!(row["method"], method);
        assert_eq!(row["gradient_checkpointing"], checkpointing);
        for key in [
            "samples_per_s",
            "tokens_per_s",
            "step_ms",
            "peak_rss_mb",
            "flops_per_sample",
            "loss_first",
            "loss_last",
        ] {
            positive(row, key);
        }
        assert_eq!(row["batch"], 2);
        // No GPU and no --peak-tflops: no MFU rather than a made-up one.
        assert!(row["mfu"].is_null() && row["peak_gpu_mb"].is_null());
        assert!(positive(row, "trainable_params") < positive(row, "total_params"));
    }
    let (forward, train) = (&rows[0], &rows[1]);
    // Real tokens: some, and never more than the batch's positions.
    for row in [forward, train] {
        let positions = row["batch"].as_i64().unwrap() * row["seq_len"].as_i64().unwrap();
        let tokens = row["tokens_per_batch"].as_i64().unwrap();
        assert!(tokens > 0 && tokens <= positions, "{row}");
    }
    // Forward-only loss is the loss the first training step starts from.
    assert!(
        (forward["loss_first"].as_f64().unwrap() - train["loss_first"].as_f64().unwrap()).abs()
            < 1e-3,
        "{forward} {train}"
    );
    // Training counts forward and backward.
    assert!(positive(train, "flops_per_sample") > 2.0 * positive(forward, "flops_per_sample"));
    positive(train, "est_memory_mb");
    assert!(train["est_error_pct"].as_f64().is_some_and(f64::is_finite));
    assert!(forward["est_memory_mb"].is_null());
}

#[test]
fn lora_reports_training_and_forward_rows() {
    let rows = bench("lora", &[]);
    check(&rows, "lora", false);
    assert!(rows[1]["nf4_bytes_per_param"].is_null());
}

#[test]
fn qlora_reports_nf4_storage_and_runs_checkpointed() {
    let rows = bench("qlora", &["--gradient-checkpointing"]);
    check(&rows, "qlora", true);
    let nf4 = positive(&rows[1], "nf4_bytes_per_param");
    // 4 bits per weight plus double-quantised absmax constants.
    assert!((0.5..0.53).contains(&nf4), "{nf4}");
    // Checkpointing recomputes: more executed than model FLOPs.
    assert!(
        positive(&rows[1], "hardware_flops_per_sample") > positive(&rows[1], "flops_per_sample")
    );
}

#[test]
fn dump_batch_writes_the_encoded_batch() {
    let test = Test::new();
    test.run_in(&[
        "bench",
        "--checkpoint",
        "tiny",
        "--mode",
        "forward",
        "--batch",
        "3",
        "--steps",
        "1",
        "--warmup",
        "0",
        "--device",
        "cpu",
        "--dump-batch",
        "batch.safetensors",
    ])
    .code(0);
    let tensors = tch::Tensor::read_safetensors(test.path().join("batch.safetensors")).unwrap();
    let mut names: Vec<&str> = tensors.iter().map(|(n, _)| n.as_str()).collect();
    names.sort_unstable();
    assert_eq!(
        names,
        [
            "attention_mask",
            "input_ids",
            "labels",
            "pixel_values",
            "token_type_ids"
        ]
    );
    let ids = &tensors.iter().find(|(n, _)| n == "input_ids").unwrap().1;
    assert_eq!(ids.size()[0], 3);
}

/// `PALISWEEP_ALLOCATOR` (src/allocator.rs): `system` keeps glibc's
/// malloc; `tcmalloc` restarts the process with tcmalloc preloaded where it
/// is installed, and refuses with the package to install where it is not.
#[test]
fn the_allocator_variable_chooses_the_malloc() {
    let installed = palisweep::allocator::installed_tcmalloc().is_some();
    let run = |choice: &str| {
        Test::new().env("PALISWEEP_ALLOCATOR", choice).run_in(&[
            "bench",
            "--checkpoint",
            "tiny",
            "--method",
            "lora",
            "--mode",
            "train",
            "--batch",
            "1",
            "--warmup",
            "0",
            "--steps",
            "1",
            "--device",
            "cpu",
            "--json",
        ])
    };
    let system = run("system");
    system.code(0);
    assert_eq!(rows(&system.stdout)[0]["allocator"], "glibc");
    let tcmalloc = run("tcmalloc");
    if installed {
        tcmalloc.code(0);
        assert_eq!(rows(&tcmalloc.stdout)[0]["allocator"], "tcmalloc");
    } else {
        tcmalloc.code(2).stderr_has("libtcmalloc-minimal4");
    }
    run("jemalloc")
        .code(2)
        .stderr_has("PALISWEEP_ALLOCATOR=\"jemalloc\" is not a choice");
}

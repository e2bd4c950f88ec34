//! `palisweep rerun` through the real binary: a rerun reproduces a CPU
//! trial bit for bit, uses the batch that actually ran after a back-off,
//! and refuses a changed dataset unless forced.

use crate::util::{Test, run_spec};

fn only_trial(test: &Test, sweep: &str) -> String {
    let dir = test.path().join("results").join(sweep).join("trials");
    let mut ids: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(ids.len(), 1);
    ids.pop().unwrap()
}

#[test]
fn a_rerun_reproduces_a_cpu_trial_bit_for_bit_and_refuses_a_changed_dataset() {
    let test = Test::new().spec(
        "[experiment]\nname = \"r\"\nseed = 3\n\
         [data]\npath = \"generated:json\"\ntask = \"json\"\nmax_suffix_tokens = 32\n\
         [model]\ncheckpoint = \"tiny\"\n\
         [train]\nepochs = 2\nbatch_size = 8\ngrad_accum = 1\nlr = 1e-2\nwarmup = 1\n\
         [lora]\ndropout = 0.1\n[eval]\ngenerate = false\n",
    );
    run_spec(&test, "cpu:2").code(0);
    let id = only_trial(&test, "r");
    let show = |test: &Test| {
        test.run_in(&["show", &id, "--results", "results", "--json"])
            .code(0)
            .json()
    };
    let report = |test: &Test| {
        test.run_in(&["report", "r", "--results", "results"])
            .code(0);
        std::fs::read_to_string(test.path().join("results/r/report/report.md")).unwrap()
    };
    let (before, report_before) = (show(&test), report(&test));
    let out = test.run_in(&["rerun", &id, "--results", "results", "--json"]);
    let json = out.code(0).json();
    // Its progress, as `run` shows it: the attempt's start and its steps.
    out.stderr_has(&format!("start  {id}"))
        .stderr_has(&format!("       {id} "))
        .stderr_has(" step 1/12 ");
    assert_eq!(json["reproduced"], true, "{json}");
    assert_eq!(json["curve_identical"], true, "{json}");
    assert_eq!(json["steps"], 12);
    // The rerun is recorded as attempt 2 of the same trial, and leaves the
    // trial's own row, metrics and report (wall time, best) as they were.
    let after = show(&test);
    assert_eq!(after["attempts"].as_array().unwrap().len(), 2, "{after}");
    assert_eq!(after["attempts"][1]["attempt"], 2, "{after}");
    assert_eq!(after["trial"], before["trial"]);
    assert_eq!(after["trial"]["attempt"], 1);
    assert_eq!(after["metrics"], before["metrics"]);
    assert_eq!(report(&test), report_before);

    // A changed dataset is a fingerprint mismatch.
    let annotations = test
        .path()
        .join("results/.cache/data/generated-json-seed0/train/annotations.jsonl");
    let lines = std::fs::read_to_string(&annotations).unwrap();
    let first = lines.lines().next().unwrap();
    // Still valid JSON: one colour renamed.
    let changed = first.replacen(r#"\"color\":\""#, r#"\"color\":\"light "#, 1);
    assert_ne!(first, changed);
    std::fs::write(&annotations, lines.replacen(first, &changed, 1)).unwrap();
    test.run_in(&["rerun", &id, "--results", "results"])
        .code(2)
        .stderr_has("dataset fingerprint");
    // Forced, it runs and says it does not reproduce: attempt 3, and the
    // trial is still the original's.
    test.run_in(&["rerun", &id, "--results", "results", "--force"])
        .code(1)
        .stdout_has("NOT reproduced")
        .stderr_has("as attempt 3");
    let last = show(&test);
    assert_eq!(last["attempts"].as_array().unwrap().len(), 3, "{last}");
    assert_eq!(last["trial"], before["trial"]);
    assert_eq!(report(&test), report_before);
}

#[test]
fn a_rerun_uses_the_batch_that_actually_ran_after_a_back_off() {
    let test = Test::new().spec(
        "[experiment]\nname = \"b\"\n[data]\npath = \"generated:json\"\n\
         [model]\ncheckpoint = \"tiny\"\n\
         [train]\nmethod = \"synthetic\"\nbatch_size = 8\ngrad_accum = 1\n\
         [synthetic]\nsteps = 4\nstep_ms = 1\noom_from_batch = 5\n",
    );
    run_spec(&test, "fake-cuda:1x80GiB").code(0);
    let id = only_trial(&test, "b");
    test.run_in(&["rerun", &id, "--results", "results"])
        .code(0)
        .stdout_has("reproduced (bit for bit)")
        .stdout_has("batch 4 × 2");
}

//! Bad flags and specs that used to crash, hang or allocate without bound
//! (issue #17): each is now an error that names what to fix, exits 2 and
//! writes nothing; and a reader closing stdout early ends a command quietly.

use std::io::Read as _;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::util::{BIN, Output, Test, run_spec};

/// A synthetic sweep (no model): trials take milliseconds.
const SYNTHETIC: &str = "[experiment]\nname = \"s\"\n\
    [data]\npath = \"generated:json\"\n\
    [model]\ncheckpoint = \"tiny\"\n\
    [train]\nmethod = \"synthetic\"\nbatch_size = 8\ngrad_accum = 1\n\
    [synthetic]\nsteps = 2\nstep_ms = 1\n";

/// Runs `palisweep ARGS` in the test folder, killing it after `limit`: the
/// defects here hung or grew memory until the machine gave out.
fn run_within(test: &Test, args: &[&str], limit: Duration) -> Output {
    let mut child = Command::new(BIN)
        .args(args)
        .current_dir(test.path())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Drain both pipes on threads so that a chatty child cannot block.
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let out = std::thread::spawn(move || {
        let mut read = String::new();
        let _ = stdout.read_to_string(&mut read);
        read
    });
    let err = std::thread::spawn(move || {
        let mut read = String::new();
        let _ = stderr.read_to_string(&mut read);
        read
    });
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("palisweep {args:?} still ran after {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Output {
        code: status.code().unwrap_or(-1),
        stdout: out.join().unwrap(),
        stderr: err.join().unwrap(),
    }
}

#[test]
fn extends_cycles_of_two_and_three_files_are_errors() {
    let two = Test::new()
        .file("a.toml", "extends = \"b.toml\"\n")
        .file("b.toml", "extends = \"a.toml\"\n[train]\nepochs = 1\n");
    run_within(
        &two,
        &["plan", "a.toml", "--devices", "cuda:1x80GiB"],
        Duration::from_secs(60),
    )
    .code(2)
    .stderr_has("b.toml:1:1: `extends`")
    .stderr_has("a.toml extends b.toml extends a.toml")
    .stderr_has("help: remove `extends`");

    // Spelled differently (`./a.toml`), it is the same file.
    let three = Test::new()
        .file("a.toml", "extends = \"b.toml\"\n")
        .file("b.toml", "extends = \"c.toml\"\n")
        .file("c.toml", "extends = \"./a.toml\"\n");
    run_within(
        &three,
        &["plan", "a.toml", "--devices", "cuda:1x80GiB"],
        Duration::from_secs(60),
    )
    .code(2)
    .stderr_has("c.toml:1:1: `extends`")
    .stderr_has("a.toml extends b.toml extends c.toml extends a.toml");

    // A chain without a cycle still loads, the nearest file winning.
    let chain = Test::new()
        .file("a.toml", "[train]\nepochs = 3\n")
        .file("b.toml", "extends = \"a.toml\"\n[train]\nepochs = 2\n")
        .file("c.toml", "extends = \"b.toml\"\n");
    let json = chain
        .run_in(&["plan", "c.toml", "--json", "--devices", "cuda:1x80GiB"])
        .code(0)
        .json();
    assert_eq!(json["trials"].as_array().unwrap().len(), 1);
}

#[test]
fn cpu_slot_counts_above_the_limit_are_bad_input() {
    let test = Test::new().spec(SYNTHETIC);
    for devices in ["cpu:4294967295", "cpu:100000000", "cpu:1025"] {
        let out = run_within(
            &test,
            &["plan", "spec.toml", "--devices", devices],
            Duration::from_secs(60),
        );
        out.code(2)
            .stderr_has(&format!("invalid --devices `{devices}`"))
            .stderr_has("more than the limit of 1024");
    }
    // In the spec, the error names the key and its line.
    let spec = format!("{SYNTHETIC}[resources]\ndevices = \"cpu:100000000\"\n");
    run_within(
        &Test::new().spec(&spec),
        &["plan", "spec.toml"],
        Duration::from_secs(60),
    )
    .code(2)
    .stderr_has("spec.toml:15:1: `resources.devices`")
    .stderr_has("more than the limit of 1024");
    // The limit itself is fine.
    test.run_in(&["plan", "spec.toml", "--devices", "cpu:1024"])
        .code(0);
}

#[test]
fn kill_grace_must_be_a_finite_number_of_seconds() {
    let test = Test::new().spec(SYNTHETIC);
    for grace in ["NaN", "-5", "inf", "1e30"] {
        let mut args = crate::util::run_args("fake-cuda:1x24GiB");
        args.push(format!("--kill-grace={grace}"));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        test.run_in(&args)
            .code(2)
            .stderr_has(&format!("invalid value '{grace}' for '--kill-grace"))
            .stderr_has("from 0 to 86400");
        assert!(
            !test.path().join("results").exists(),
            "--kill-grace {grace} wrote the results folder"
        );
    }
    test.run_in(&["attach", "s", "--kill-grace", "NaN"])
        .code(2)
        .stderr_has("--kill-grace");
}

/// Seven axes of ten values: 10^7 trials.
fn huge_grid() -> String {
    let values = "[1, 2, 3, 4, 5, 6, 7, 8, 9, 10]";
    format!(
        "{SYNTHETIC}[sweep.axes]\n\"train.epochs\" = {values}\n\"train.batch_size\" = {values}\n\
         \"train.grad_accum\" = {values}\n\"lora.r\" = {values}\n\"lora.alpha\" = {values}\n\
         \"synthetic.steps\" = {values}\n\"synthetic.step_ms\" = {values}\n"
    )
}

#[test]
fn a_huge_grid_is_refused_before_it_is_built_even_with_yes() {
    let test = Test::new().spec(&huge_grid());
    let limit = Duration::from_secs(60);
    run_within(
        &test,
        &["plan", "spec.toml", "--devices", "cuda:1x80GiB", "--yes"],
        limit,
    )
    .code(2)
    .stderr_has("spec.toml:14:8: `sweep.axes`")
    .stderr_has("the sweep has 10000000 trials, more than palisweep expands in one sweep (10000), even with --yes")
    .stderr_has("split the sweep");
    let mut args = crate::util::run_args("fake-cuda:1x24GiB");
    args.push("--yes".into());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    run_within(&test, &args, limit)
        .code(2)
        .stderr_has("10000000 trials");
    assert!(!test.path().join("results").exists());

    // Random search: the draws are counted the same way.
    let random = Test::new().spec(&format!(
        "{SYNTHETIC}[sweep]\nstrategy = \"random\"\nsamples = 4000000000\n\
         [sweep.axes]\n\"train.lr\" = {{ loguniform = [1e-6, 1e-3] }}\n"
    ));
    run_within(
        &random,
        &["plan", "spec.toml", "--devices", "cuda:1x80GiB", "--yes"],
        limit,
    )
    .code(2)
    .stderr_has("spec.toml:16:1: `sweep.samples`")
    .stderr_has("4000000000 trials");
}

/// Spawns `palisweep ARGS`, closes the reading end of its stdout at once,
/// and returns its exit code and stderr.
fn with_stdout_closed(test: &Test, args: &[&str]) -> (i32, String) {
    let mut child = crate::util::spawn(test, args);
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_closed_stdout_ends_every_command_quietly() {
    let test = Test::new().spec(SYNTHETIC);
    run_spec(&test, "fake-cuda:1x24GiB").code(0);
    let trial = crate::util::trial_dirs(&test, "s")[0]
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    let show = format!("s/{trial}");
    let commands: [&[&str]; 9] = [
        &["status", "--results", "results", "--json"],
        &["status", "--results", "results"],
        &["ls", "--results", "results", "--json"],
        &["show", &show, "--results", "results", "--json"],
        &["show", &show, "--results", "results"],
        &["export-metrics", "s", "--results", "results"],
        &["plan", "spec.toml", "--devices", "cuda:1x80GiB", "--json"],
        &["plan", "spec.toml", "--devices", "cuda:1x80GiB"],
        &["defaults"],
    ];
    for args in commands {
        let (code, stderr) = with_stdout_closed(&test, args);
        assert_eq!(code, 0, "palisweep {args:?} exited {code}:\n{stderr}");
        assert!(
            stderr.is_empty(),
            "palisweep {args:?} wrote to stderr:\n{stderr}"
        );
    }
    // `run` keeps its own exit code: the sweep finished.
    let (code, stderr) = with_stdout_closed(
        &test,
        &[
            "run",
            "spec.toml",
            "--devices",
            "fake-cuda:1x24GiB",
            "--results",
            "results",
        ],
    );
    assert_eq!(code, 0, "run exited {code}:\n{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn the_prefix_limit_names_the_line_and_explains_where_82_comes_from() {
    let test = Test::new();
    test.run_in(&[
        "init-data",
        "--task",
        "json",
        "--out",
        "shapes",
        "--train",
        "4",
        "--valid",
        "2",
        "--test",
        "2",
    ])
    .code(0);
    let annotations = test.path().join("shapes/train/annotations.jsonl");
    let mut lines: Vec<serde_json::Value> = std::fs::read_to_string(&annotations)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    lines[1]["prefix"] = format!("extract JSON {}", "word ".repeat(80)).into();
    let rewritten: Vec<String> = lines.iter().map(ToString::to_string).collect();
    std::fs::write(&annotations, rewritten.join("\n") + "\n").unwrap();
    // Defaults: data.max_prefix_tokens = 64; the tiny 224 px checkpoint
    // has 16 image tokens: 16 + `<bos>` + 64 + "\n" = 82.
    let test = test.spec(
        "[experiment]\nname = \"p\"\n[data]\npath = \"shapes\"\ntask = \"json\"\n\
         [model]\ncheckpoint = \"tiny\"\n[train]\nepochs = 1\nbatch_size = 2\n",
    );
    let out = run_spec(&test, "cpu");
    out.code(1)
        .stderr_has("shapes/train/annotations.jsonl:2: `prefix`")
        .stderr_has("more than the limit of 82: 16 image tokens")
        .stderr_has("data.max_prefix_tokens = 64")
        .stderr_has("help: shorten this line's prefix");
}

#[test]
fn a_corrupt_store_is_named_by_its_path() {
    let test = Test::new().file("results/palisweep.sqlite", &"not a database ".repeat(300));
    for command in ["status", "ls"] {
        test.run_in(&[command, "--results", "results"])
            .code(2)
            .stderr_has("results/palisweep.sqlite is not a readable palisweep store")
            .stderr_has("help: move it aside");
    }
}

#[test]
fn made_up_devices_are_blamed_on_where_they_were_given() {
    let real = "[experiment]\nname = \"d\"\n[data]\npath = \"generated:json\"\n\
                [model]\ncheckpoint = \"tiny\"\n";
    let test = Test::new().spec(&format!("{real}[resources]\ndevices = \"cpu:1\"\n"));
    let out = run_spec(&test, "fake-cuda:2x24GiB");
    out.code(2)
        .stderr_has("--devices fake-cuda:2x24GiB is a made-up inventory");
    assert!(!out.stderr.contains("cpu:1"), "{}", out.stderr);

    let test = Test::new().spec(&format!("{real}[resources]\ndevices = \"cuda:2x24GiB\"\n"));
    test.run_in(&["run", "spec.toml", "--results", "results"])
        .code(2)
        .stderr_has("spec.toml:8:1: resources.devices = \"cuda:2x24GiB\" is a made-up inventory");
}

#[test]
fn report_exits_2_on_a_missing_sweep_like_its_siblings() {
    let test = Test::new().spec(SYNTHETIC);
    run_spec(&test, "fake-cuda:1x24GiB").code(0);
    for command in ["report", "status", "export-metrics"] {
        test.run_in(&[command, "nosuch", "--results", "results"])
            .code(2)
            .stderr_has("no sweep `nosuch`");
    }
    test.run_in(&[
        "report",
        "s",
        "--results",
        "results",
        "--metric",
        "val/nope",
    ])
    .code(2)
    .stderr_has("val/nope");
}

/// A PEFT adapter (a golden fixture) as a trial's `best/`.
fn give_adapter(trial: &std::path::Path) {
    let fixture = crate::util::repo_root().join("tests/golden/adapters/peft-default");
    let best = trial.join("best");
    std::fs::create_dir_all(&best).unwrap();
    for name in ["adapter_config.json", "adapter_model.safetensors"] {
        std::fs::copy(fixture.join(name), best.join(name)).unwrap();
    }
}

#[test]
fn export_takes_every_trial_form_show_takes() {
    // Two sweeps of one spec: the same trial id in both.
    let test = Test::new().spec(SYNTHETIC);
    run_spec(&test, "fake-cuda:1x24GiB").code(0);
    let mut args = crate::util::run_args("fake-cuda:1x24GiB");
    args.extend(["--set".to_owned(), "experiment.name=\"t\"".to_owned()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    test.run_in(&args).code(0);
    let trial = crate::util::trial_dirs(&test, "s")[0].clone();
    let id = trial.file_name().unwrap().to_string_lossy().into_owned();
    give_adapter(&trial);
    give_adapter(&test.path().join("results/t/trials").join(&id));

    for (target, out) in [(format!("s/{id}"), "a"), (format!("t/{}", &id[..6]), "b")] {
        test.run_in(&["show", &target, "--results", "results"])
            .code(0);
        test.run_in(&["export", &target, "--results", "results", "--out", out])
            .code(0)
            .stdout_has(&format!("/{}/trials/{id}/best", &target[..1]));
        assert!(test.path().join(out).join("adapter_config.json").is_file());
    }
    test.run_in(&["export", &id, "--results", "results", "--out", "c"])
        .code(2)
        .stderr_has(&format!("several sweeps (s/{id}, t/{id}): pass SWEEP/ID"));
    test.run_in(&[
        "export",
        "s/000000000000",
        "--results",
        "results",
        "--out",
        "c",
    ])
    .code(2)
    .stderr_has("`s/000000000000` is neither");
}

#[test]
fn resuming_keeps_the_sweep_s_start_time() {
    let test = Test::new().spec(SYNTHETIC);
    run_spec(&test, "fake-cuda:1x24GiB").code(0);
    let first = crate::util::status(&test, "s");
    let started = |text: &str| {
        let line = text.lines().next().unwrap();
        line[line.find("started ").unwrap()..].to_owned()
    };
    let first_text = test
        .run_in(&["status", "s", "--results", "results"])
        .code(0)
        .stdout
        .clone();
    assert!(!first_text.contains("resumed"), "{first_text}");
    // Timestamps are shown to the second.
    std::thread::sleep(Duration::from_millis(1100));
    run_spec(&test, "fake-cuda:1x24GiB").code(0);
    let again = crate::util::status(&test, "s");
    assert_eq!(again["sweep"]["created"], first["sweep"]["created"]);
    assert!(again["sweep"]["started"].as_f64() > first["sweep"]["started"].as_f64());
    let resumed = test
        .run_in(&["status", "s", "--results", "results"])
        .code(0)
        .stdout
        .clone();
    let before = started(&first_text);
    let before = before.split(',').next().unwrap();
    assert!(
        started(&resumed).starts_with(&format!("{}, resumed ", before.trim_end())),
        "before: {first_text}\nafter: {resumed}"
    );
}

#[test]
fn show_lists_only_the_checkpoints_keep_checkpoints_kept() {
    let test = Test::new().spec(
        "[experiment]\nname = \"k\"\n\
         [data]\npath = \"generated:json\"\ntask = \"json\"\nmax_suffix_tokens = 32\n\
         [model]\ncheckpoint = \"tiny\"\n\
         [train]\nmax_steps = 3\nbatch_size = 8\ngrad_accum = 1\n\
         [eval]\nevery = 1\ngenerate = false\n\
         [resources]\nkeep_checkpoints = 1\n",
    );
    run_spec(&test, "cpu").code(0);
    let trial = &crate::util::trial_dirs(&test, "k")[0];
    let id = trial.file_name().unwrap().to_string_lossy().into_owned();
    let show = test
        .run_in(&["show", &id, "--results", "results", "--json"])
        .code(0)
        .json();
    let listed: Vec<String> = show["artifacts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["path"].as_str().unwrap().to_owned())
        .filter(|p| p.contains("/checkpoints/"))
        .collect();
    // Steps 1, 2 and 3 were checkpointed; only step 3 is left.
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert!(listed[0].ends_with("/checkpoints/3"), "{listed:?}");
    let shown = test
        .run_in(&["show", &id, "--results", "results"])
        .code(0)
        .stdout
        .clone();
    assert!(!shown.contains("/checkpoints/1"), "{shown}");
}

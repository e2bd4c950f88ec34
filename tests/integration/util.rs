//! A small fluent builder: files in a temp dir, run the binary there,
//! assert on exit code, stdout and stderr.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_palisweep");

pub struct Test {
    dir: tempfile::TempDir,
    args: Vec<String>,
    env: Vec<(String, String)>,
}

pub struct Output {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Test {
    pub fn new() -> Self {
        Test {
            dir: tempfile::tempdir().expect("temp dir"),
            args: Vec::new(),
            env: Vec::new(),
        }
    }

    pub fn path(&self) -> &std::path::Path {
        self.dir.path()
    }

    /// Writes a file (creating folders) relative to the test folder.
    pub fn file(self, path: &str, content: &str) -> Self {
        let full = self.dir.path().join(path);
        if let Some(parent) = full.parent() {
            std::fs::create_dir_all(parent).expect("create dirs");
        }
        std::fs::write(full, content).expect("write file");
        self
    }

    /// Writes `spec.toml`.
    pub fn spec(self, content: &str) -> Self {
        self.file("spec.toml", content)
    }

    pub fn args(mut self, args: &[&str]) -> Self {
        self.args.extend(args.iter().map(|a| (*a).to_owned()));
        self
    }

    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.to_owned(), value.to_owned()));
        self
    }

    pub fn run(&self) -> Output {
        let args: Vec<&str> = self.args.iter().map(String::as_str).collect();
        self.run_in(&args)
    }

    /// Runs with these arguments instead of the builder's.
    pub fn run_in(&self, args: &[&str]) -> Output {
        let mut command = Command::new(BIN);
        command.args(args).current_dir(self.dir.path());
        // The tests' own environment must not leak spec overrides in.
        for (key, _) in std::env::vars() {
            if key.starts_with("PALISWEEP_") {
                command.env_remove(key);
            }
        }
        for (key, value) in &self.env {
            command.env(key, value);
        }
        let out = command.output().expect("run palisweep");
        Output {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }
}

impl Output {
    #[track_caller]
    pub fn code(&self, expected: i32) -> &Self {
        assert_eq!(
            self.code, expected,
            "exit code {} (expected {expected})\nstdout:\n{}\nstderr:\n{}",
            self.code, self.stdout, self.stderr
        );
        self
    }

    #[track_caller]
    pub fn stderr_has(&self, needle: &str) -> &Self {
        assert!(
            self.stderr.contains(needle),
            "stderr lacks {needle:?}:\n{}",
            self.stderr
        );
        self
    }

    #[track_caller]
    pub fn stdout_has(&self, needle: &str) -> &Self {
        assert!(
            self.stdout.contains(needle),
            "stdout lacks {needle:?}:\n{}",
            self.stdout
        );
        self
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}):\n{}", self.stdout))
    }
}

/// The repository root, for the committed example specs.
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A path under `tests/golden/` (fixtures made by `scripts/golden/make.sh`).
pub fn golden(path: &str) -> String {
    repo_root()
        .join("tests/golden")
        .join(path)
        .display()
        .to_string()
}

/// The value at a JSON pointer in a golden JSON file.
pub fn golden_json(file: &str, pointer: &str) -> serde_json::Value {
    let text = std::fs::read_to_string(golden(file)).unwrap();
    let json: serde_json::Value = serde_json::from_str(&text).unwrap();
    json.pointer(pointer)
        .unwrap_or_else(|| panic!("{file} lacks {pointer}"))
        .clone()
}

/// Every metric row the store holds for `sweep` under `results/`
/// (`export-metrics --format jsonl`): an independent view of what the
/// report, TensorBoard and `show` should agree with.
pub fn metric_rows(test: &Test, sweep: &str) -> Vec<serde_json::Value> {
    test.run_in(&[
        "export-metrics",
        sweep,
        "--format",
        "jsonl",
        "--results",
        "results",
    ])
    .code(0)
    .stdout
    .lines()
    .map(|l| serde_json::from_str(l).unwrap())
    .collect()
}

/// `plan --json` on a spec with extra arguments; returns the trial ids.
pub fn plan_ids(test: &Test, extra: &[&str]) -> Vec<String> {
    let mut args = vec!["plan", "spec.toml", "--json", "--devices", "cuda:8x1024GiB"];
    args.extend_from_slice(extra);
    let mut ids: Vec<String> = test.run_in(&args).code(0).json()["trials"]
        .as_array()
        .expect("trials")
        .iter()
        .map(|t| t["id"].as_str().expect("id").to_owned())
        .collect();
    ids.sort();
    ids
}

/// The arguments of `palisweep run spec.toml --devices DEVICES --results
/// results`.
pub fn run_args(devices: &str) -> Vec<String> {
    [
        "run",
        "spec.toml",
        "--devices",
        devices,
        "--results",
        "results",
    ]
    .map(str::to_owned)
    .to_vec()
}

/// Runs [`run_args`].
pub fn run_spec(test: &Test, devices: &str) -> Output {
    let args = run_args(devices);
    test.run_in(&args.iter().map(String::as_str).collect::<Vec<_>>())
}

/// `status SWEEP --results results --json`.
pub fn status(test: &Test, sweep: &str) -> serde_json::Value {
    test.run_in(&["status", sweep, "--results", "results", "--json"])
        .code(0)
        .json()
}

/// A sweep's count of trials in `state`, from [`status`].
pub fn count(status: &serde_json::Value, state: &str) -> u64 {
    status["sweep"]["counts"][state].as_u64().unwrap()
}

/// Starts `palisweep ARGS` in the test folder in the background, its
/// output piped.
pub fn spawn(test: &Test, args: &[&str]) -> Child {
    Command::new(BIN)
        .args(args)
        .current_dir(test.path())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Sends `signal` to a spawned process.
pub fn signal(child: &Child, signal: nix::sys::signal::Signal) {
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(child.id()).unwrap()),
        signal,
    )
    .unwrap();
}

/// The trial folders of `sweep` under `results/`, sorted.
pub fn trial_dirs(test: &Test, sweep: &str) -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> =
        std::fs::read_dir(test.path().join("results").join(sweep).join("trials"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
    dirs.sort();
    dirs
}

/// The lines of a JSON-lines file (none when it is missing).
pub fn jsonl(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// The `event` records of a trial folder's `events.jsonl`.
pub fn events(dir: &Path, event: &str) -> Vec<serde_json::Value> {
    jsonl(&dir.join("events.jsonl"))
        .into_iter()
        .filter(|e| e["event"] == event)
        .collect()
}

/// Waits (up to 90 s) until `count` trial folders of `sweep` hold at least
/// `steps` step events.
pub fn wait_for_steps(test: &Test, sweep: &str, count: usize, steps: usize) {
    let deadline = Instant::now() + Duration::from_secs(90);
    let trials = test.path().join("results").join(sweep).join("trials");
    loop {
        let ready = std::fs::read_dir(&trials).map_or(0, |entries| {
            entries
                .filter_map(Result::ok)
                .filter(|e| events(&e.path(), "step").len() >= steps)
                .count()
        });
        if ready >= count {
            return;
        }
        assert!(Instant::now() < deadline, "trials never got going");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A spec of synthetic trials (no model) named `name` on generated data:
/// `extra` adds tables or keys (axes, failures, `[synthetic]`).
pub fn synthetic_spec(name: &str, extra: &str) -> String {
    format!(
        "[experiment]\nname = \"{name}\"\n\
         [data]\npath = \"generated:json\"\n\
         [model]\ncheckpoint = \"tiny\"\n\
         [train]\nmethod = \"synthetic\"\nbatch_size = 8\ngrad_accum = 1\n\
         {extra}\n"
    )
}

/// Live processes whose command line mentions `dir` (the workers of a
/// test); zombies (dead, not yet reaped) do not count.
pub fn processes_under(dir: &Path) -> Vec<u32> {
    let needle = dir.to_string_lossy().into_owned();
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let zombie = stat
                .rsplit(')')
                .next()
                .is_some_and(|s| s.trim_start().starts_with('Z'));
            !zombie
                && std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| {
                    String::from_utf8_lossy(&c)
                        .replace('\0', " ")
                        .contains(&needle)
                })
        })
        .collect()
}

/// Starts `run` of `spec.toml` on one made-up GPU, waits until `ready`
/// says so (up to 120 s), kills the scheduler with SIGKILL and waits (up to
/// 60 s) until its workers, left without it, have stopped.
pub fn kill_9_run_when(test: &Test, ready: impl Fn() -> bool) {
    let mut args = run_args("fake-cuda:1x80GiB");
    args.extend(["--kill-grace".to_owned(), "1".to_owned()]);
    kill_9_when(
        test,
        &args.iter().map(String::as_str).collect::<Vec<_>>(),
        ready,
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    while !processes_under(test.path()).is_empty() {
        assert!(
            Instant::now() < deadline,
            "workers outlived their scheduler"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Starts palisweep with `args`, waits until `ready` says so (up to 120 s)
/// and kills it with SIGKILL.
pub fn kill_9_when(test: &Test, args: &[&str], ready: impl Fn() -> bool) {
    let first = spawn(test, args);
    let deadline = Instant::now() + Duration::from_secs(120);
    while !ready() {
        assert!(Instant::now() < deadline, "the sweep never got going");
        std::thread::sleep(Duration::from_millis(50));
    }
    signal(&first, nix::sys::signal::Signal::SIGKILL);
    let _ = first.wait_with_output();
}

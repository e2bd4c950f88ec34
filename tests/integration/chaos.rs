//! Nothing lost, nothing stuck: `palisweep run` killed (`kill -9`) at
//! random moments, a worker stuck when its scheduler dies, a full disk, and
//! the kernel's out-of-memory killer. After each, the trial folders, the
//! store and what `status` says must agree.
//!
//! The full-disk and out-of-memory tests mount a tmpfs and make a memory
//! cgroup, which needs root: without it they say so on stderr and check
//! nothing (`scripts/test.sh` runs as root in CI).

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use crate::util::{BIN, Test, jsonl, processes_under, signal, trial_dirs, wait_for_steps};

/// How long a worker outlives its scheduler here (the default is 30 s).
const GRACE: &str = "2";

fn spec(extra: &str) -> String {
    crate::util::synthetic_spec("c", extra)
}

fn run_args(results: &str) -> Vec<String> {
    [
        "run",
        "spec.toml",
        "--devices",
        "fake-cuda:2x80GiB",
        "--results",
        results,
        "--kill-grace",
        "1",
    ]
    .map(str::to_owned)
    .to_vec()
}

/// `palisweep run` in the background with `env` (and no inherited
/// `PALISWEEP_*`), stderr piped.
fn spawn_run(test: &Test, results: &str, env: &[(&str, &str)]) -> Child {
    let mut command = Command::new(BIN);
    command
        .args(run_args(results))
        .current_dir(test.path())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    for (key, _) in std::env::vars() {
        if key.starts_with("PALISWEEP_") {
            command.env_remove(key);
        }
    }
    command.envs(env.iter().copied());
    command.spawn().unwrap()
}

/// Runs to the end; (exit code, stderr).
fn run_to_end(test: &Test, results: &str, env: &[(&str, &str)]) -> (i32, String) {
    let out = spawn_run(test, results, env).wait_with_output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn wait_until_no_process_under(dir: &Path, limit: Duration, what: &str) {
    let deadline = Instant::now() + limit;
    while !processes_under(dir).is_empty() {
        assert!(
            Instant::now() < deadline,
            "{what}: processes still alive after {limit:?}: {:?}",
            processes_under(dir)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn palisweep(test: &Test, args: &[&str]) -> crate::util::Output {
    test.run_in(args)
}

fn status(test: &Test, results: &str) -> serde_json::Value {
    palisweep(test, &["status", "c", "--results", results, "--json"])
        .code(0)
        .json()
}

/// Every metric row of the sweep in the store.
fn store_metrics(test: &Test, results: &str) -> Vec<serde_json::Value> {
    let out = palisweep(
        test,
        &[
            "export-metrics",
            "c",
            "--results",
            results,
            "--format",
            "jsonl",
        ],
    );
    out.code(0);
    out.stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Every attempt of a trial in the store.
fn store_attempts(test: &Test, results: &str, trial: &str) -> Vec<serde_json::Value> {
    let query = format!("c/{trial}");
    let out = palisweep(test, &["show", &query, "--results", results, "--json"]);
    out.code(0);
    out.json()["attempts"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

fn trial_id(dir: &Path) -> String {
    dir.file_name().unwrap().to_string_lossy().into_owned()
}

/// (attempt, step) of each `step` line of a trial folder, by the attempt
/// that wrote it.
fn folder_steps(dir: &Path) -> BTreeSet<(u64, u64)> {
    let text = std::fs::read_to_string(dir.join("events.jsonl")).unwrap_or_default();
    let mut attempt = 1;
    let mut steps = BTreeSet::new();
    for line in text.lines() {
        let Ok(event) = serde_json::from_str::<serde_json::Value>(line) else {
            continue; // a torn last line
        };
        if event["event"] == "started" {
            attempt = event["attempt"].as_u64().unwrap();
        }
        let attempt = event["written_by"].as_u64().unwrap_or(attempt);
        if event["event"] == "step" {
            steps.insert((attempt, event["step"].as_u64().unwrap()));
        }
    }
    steps
}

/// The attempts a trial folder records, merged (an end line replaces its start).
fn folder_attempts(dir: &Path) -> BTreeMap<u64, serde_json::Value> {
    let mut attempts = BTreeMap::new();
    let text = std::fs::read_to_string(dir.join("attempts.jsonl")).unwrap_or_default();
    for line in text.lines() {
        if let Ok(record) = serde_json::from_str::<serde_json::Value>(line) {
            attempts.insert(record["attempt"].as_u64().unwrap(), record);
        }
    }
    attempts
}

/// What must hold once a run has reconciled the folders, for the attempts
/// that started before `before` (seconds since the epoch; all of them when
/// `None`), and for the whole curves when `complete`:
/// - each such attempt is closed in the folder and in the store, with the
///   same outcome;
/// - every step line it wrote is in the store;
/// - each curve (`in_curve` rows of `train/loss`) has each step once and
///   no gap from step 1.
fn check_agreement(test: &Test, results: &str, before: Option<f64>, steps: Option<u64>) {
    let metrics = store_metrics(test, results);
    for dir in trial_dirs_in(test, results) {
        let id = trial_id(&dir);
        let in_store: BTreeSet<(u64, u64)> = metrics
            .iter()
            .filter(|m| m["trial_id"] == id.as_str() && m["name"] == "train/loss")
            .map(|m| (m["attempt"].as_u64().unwrap(), m["step"].as_u64().unwrap()))
            .collect();
        let store_attempts: BTreeMap<u64, serde_json::Value> = store_attempts(test, results, &id)
            .into_iter()
            .map(|a| (a["attempt"].as_u64().unwrap(), a))
            .collect();
        for (attempt, record) in folder_attempts(&dir) {
            if before.is_some_and(|t| record["start"].as_f64().unwrap() >= t) {
                continue;
            }
            assert!(
                !record["end"].is_null() && !record["outcome"].is_null(),
                "{id} attempt {attempt} left open in its folder: {record}"
            );
            let stored = store_attempts
                .get(&attempt)
                .unwrap_or_else(|| panic!("{id} attempt {attempt} missing from the store"));
            assert!(
                !stored["end"].is_null(),
                "{id} attempt {attempt} open in the store"
            );
            assert_eq!(
                stored["outcome"], record["outcome"],
                "{id} attempt {attempt}: store and folder disagree"
            );
            for step in folder_steps(&dir).iter().filter(|(a, _)| *a == attempt) {
                assert!(
                    in_store.contains(step),
                    "{id}: step {step:?} (attempt, step) is in events.jsonl but not in the store"
                );
            }
        }
        let curve: Vec<u64> = metrics
            .iter()
            .filter(|m| m["trial_id"] == id.as_str() && m["name"] == "train/loss")
            .filter(|m| m["in_curve"] == true)
            .map(|m| m["step"].as_u64().unwrap())
            .collect();
        let mut sorted = curve.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(
            sorted.len(),
            curve.len(),
            "{id}: a step twice in the curve {curve:?}"
        );
        let expected: Vec<u64> = (1..=sorted.last().copied().unwrap_or(0)).collect();
        assert_eq!(sorted, expected, "{id}: a gap in the curve");
        if let Some(steps) = steps {
            assert_eq!(
                sorted.len() as u64,
                steps,
                "{id}: the curve is not complete"
            );
        }
    }
}

fn trial_dirs_in(test: &Test, results: &str) -> Vec<PathBuf> {
    let trials = test.path().join(results).join("c/trials");
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(trials)
        .map(|d| d.filter_map(Result::ok).map(|e| e.path()).collect())
        .unwrap_or_default();
    dirs.sort();
    dirs
}

fn now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// A small deterministic generator (the seed is printed, so a failing
/// sequence can be replayed).
struct Lcg(u64);

impl Lcg {
    fn next_f64(&mut self) -> f64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// The highest attempt number each trial folder records.
fn last_attempts(test: &Test, results: &str) -> BTreeMap<String, u64> {
    trial_dirs_in(test, results)
        .iter()
        .map(|d| {
            let last = folder_attempts(d).keys().max().copied().unwrap_or(0);
            (trial_id(d), last)
        })
        .collect()
}

/// Waits until the store shows the run running an attempt newer than
/// `before` had: everything the run sent before it (the reconciliation
/// comes first) is then in the store. False when the run ended first.
fn wait_for_new_attempt(
    test: &Test,
    results: &str,
    child: &mut Child,
    before: &BTreeMap<String, u64>,
) -> bool {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if child.try_wait().unwrap().is_some() {
            return false;
        }
        let out = palisweep(test, &["status", "c", "--results", results, "--json"]);
        if out.code == 0 {
            let status = out.json();
            let newer = status["running"].as_array().unwrap().iter().any(|r| {
                let id = r["id"].as_str().unwrap();
                r["attempt"].as_u64().unwrap() > before.get(id).copied().unwrap_or(0)
            });
            if newer {
                return true;
            }
        }
        assert!(
            Instant::now() < deadline,
            "the resumed run never started an attempt"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn random_kills_of_the_scheduler_lose_nothing_and_leave_no_gap_or_duplicate() {
    const STEPS: u64 = 300;
    let test = Test::new().spec(&spec(&format!(
        "[synthetic]\nsteps = {STEPS}\nstep_ms = 30\n\
         [sweep.axes]\n\"train.lr\" = [1e-5, 1e-4, 1e-3]\n"
    )));
    let seed = std::env::var("PALISWEEP_CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| u64::from(std::process::id()) ^ now().to_bits());
    eprintln!("chaos: seed {seed} (PALISWEEP_CHAOS_SEED={seed} replays it)");
    let mut rng = Lcg(seed);
    let env = [("PALISWEEP_ORPHAN_GRACE", GRACE)];
    let mut kills = 0;
    let mut checked = 0;
    while kills < 10 {
        let since = now();
        let before = last_attempts(&test, "results");
        let mut child = spawn_run(&test, "results", &env);
        // Every third kill lands during start-up (planning, reconciling);
        // the others at a random moment after the run has resumed and
        // started new attempts, whose reconciliation is then checked.
        let early = kills % 3 == 2;
        let resumed = !early && kills > 0;
        if resumed && !wait_for_new_attempt(&test, "results", &mut child, &before) {
            let out = child.wait_with_output().unwrap();
            panic!(
                "the run ended before it was killed ({:?}):\n{}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let delay = if early {
            0.05 + 0.4 * rng.next_f64()
        } else {
            0.1 + 1.0 * rng.next_f64()
        };
        std::thread::sleep(Duration::from_secs_f64(delay));
        if child.try_wait().unwrap().is_some() {
            let out = child.wait_with_output().unwrap();
            panic!(
                "the run ended before it was killed ({:?}):\n{}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        signal(&child, Signal::SIGKILL);
        child.wait().unwrap();
        kills += 1;
        // Its workers see their stdin close and stop.
        wait_until_no_process_under(test.path(), Duration::from_secs(20), "after a kill");
        if resumed {
            // What the run reconciled before its new attempts is in the store.
            check_agreement(&test, "results", Some(since), None);
            checked += 1;
        }
        let out = palisweep(&test, &["status", "c", "--results", "results", "--json"]);
        // A kill during start-up can land before the sweep is in the store
        // (or before the store exists): then nothing reads as running.
        let unrecorded = out.code == 2 && out.stderr.contains("no sweep `c` in the store")
            || !test.path().join("results/palisweep.sqlite").is_file();
        if !unrecorded {
            // Nothing is alive, so nothing reads as running.
            let status = out.code(0).json();
            assert_ne!(status["sweep"]["status"], "running", "{status}");
            assert_eq!(status["sweep"]["counts"]["running"], 0, "{status}");
            assert!(status["running"].as_array().unwrap().is_empty(), "{status}");
        }
    }
    eprintln!("chaos: {kills} kills, {checked} resumes checked");
    assert_eq!(kills, 10, "the sweep finished before the tenth kill");

    let (code, stderr) = run_to_end(&test, "results", &env);
    assert_eq!(code, 0, "{stderr}");
    assert!(stderr.contains("resuming sweep `c`"), "{stderr}");
    check_agreement(&test, "results", None, Some(STEPS));
    let status = status(&test, "results");
    assert_eq!(status["sweep"]["status"], "finished", "{status}");
    assert_eq!(status["sweep"]["counts"]["finished"], 3, "{status}");
    // The attempts the kills cut short are closed as such.
    let outcomes: BTreeSet<String> = trial_dirs(&test, "c")
        .iter()
        .flat_map(|d| folder_attempts(d).into_values())
        .map(|r| r["outcome"].as_str().unwrap().to_owned())
        .collect();
    assert!(outcomes.contains("orchestrator_lost"), "{outcomes:?}");
}

#[test]
fn a_hung_worker_ends_after_its_scheduler_dies_and_the_next_run_waits_for_it() {
    let test = Test::new().spec(&spec(
        "[synthetic]\nsteps = 6\nstep_ms = 40\nhang_at_step = 3\n",
    ));
    let env = [("PALISWEEP_ORPHAN_GRACE", "3")];
    let mut first = spawn_run(&test, "results", &env);
    wait_for_steps(&test, "c", 1, 2);
    std::thread::sleep(Duration::from_millis(300)); // now stuck in step 3
    let dir = trial_dirs(&test, "c").remove(0);
    let lock = std::fs::read_to_string(dir.join(".lock")).expect("the worker holds .lock");
    let worker = lock.split_whitespace().next().unwrap().to_owned();
    signal(&first, Signal::SIGKILL);
    first.wait().unwrap();

    // At once: the worker is still stuck, so the new run must wait for it.
    let (code, stderr) = run_to_end(&test, "results", &env);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stderr.contains(&format!("held by worker pid {worker} (attempt 1)")),
        "{stderr}"
    );
    assert!(
        processes_under(test.path()).is_empty(),
        "a worker outlived everything"
    );
    let attempts = folder_attempts(&dir);
    assert_eq!(attempts[&1]["outcome"], "orchestrator_lost", "{attempts:?}");
    assert_eq!(attempts[&2]["outcome"], "finished", "{attempts:?}");
}

#[test]
fn a_worker_that_will_not_end_is_named_and_no_second_attempt_starts() {
    let test = Test::new().spec(&spec(
        "[synthetic]\nsteps = 6\nstep_ms = 40\nhang_at_step = 2\n",
    ));
    let mut first = spawn_run(&test, "results", &[("PALISWEEP_ORPHAN_GRACE", "300")]);
    wait_for_steps(&test, "c", 1, 1);
    std::thread::sleep(Duration::from_millis(300));
    signal(&first, Signal::SIGKILL);
    first.wait().unwrap();
    let dir = trial_dirs(&test, "c").remove(0);
    let lock = std::fs::read_to_string(dir.join(".lock")).expect("the worker holds .lock");
    let worker: i32 = lock.split_whitespace().next().unwrap().parse().unwrap();

    // This run waits its patience (its own grace, 0, plus 15 s), then says who.
    let (code, stderr) = run_to_end(&test, "results", &[("PALISWEEP_ORPHAN_GRACE", "0")]);
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(worker), Signal::SIGKILL);
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains(&format!("is still held by worker pid {worker} (attempt 1)")),
        "{stderr}"
    );
    assert_eq!(folder_attempts(&dir).len(), 1, "a second attempt started");
    wait_until_no_process_under(test.path(), Duration::from_secs(10), "cleanup");
}

/// Runs `f` with a tmpfs of `size` mounted at `dir`, when root may mount.
fn with_tmpfs(dir: &Path, size: &str, f: impl FnOnce()) -> bool {
    std::fs::create_dir_all(dir).unwrap();
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
        .arg(dir)
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !mounted {
        return false;
    }
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    let _ = Command::new("umount").arg("-l").arg(dir).status();
    if let Err(panic) = result {
        std::panic::resume_unwind(panic);
    }
    true
}

/// Fills the file system of `dir` until a write fails.
fn fill(dir: &Path) -> PathBuf {
    use std::io::Write as _;
    let path = dir.join("filler");
    let mut file = std::fs::File::create(&path).unwrap();
    let block = vec![0u8; 64 << 10];
    while file.write_all(&block).is_ok() {}
    let _ = file.flush();
    path
}

#[test]
fn a_full_disk_fails_the_run_loudly_and_the_next_run_repairs_the_store() {
    const STEPS: u64 = 40;
    let test = Test::new().spec(&spec(&format!(
        "[synthetic]\nsteps = {STEPS}\nstep_ms = 40\n\
         [sweep.axes]\n\"train.lr\" = [1e-5, 1e-4]\n\
         [resources]\nretries = 5\n"
    )));
    let disk = test.path().join("disk");
    let ran = with_tmpfs(&disk, "16m", || {
        let env = [("PALISWEEP_ORPHAN_GRACE", GRACE)];
        let mut child = spawn_run(&test, "disk/results", &env);
        let mut child_lines = BufReader::new(child.stderr.take().unwrap()).lines();
        wait_for_steps_under(&test.path().join("disk/results"), 2, 5);
        let filler = fill(&disk);
        // Give the store and the workers time to hit the full disk.
        std::thread::sleep(Duration::from_millis(1500));
        std::fs::remove_file(&filler).unwrap();
        let mut stderr = String::new();
        for line in child_lines.by_ref() {
            stderr.push_str(&line.unwrap());
            stderr.push('\n');
        }
        // The run above went on (the folders are the truth) but must say
        // that its store missed results, with the store's path, and fail.
        let code = child.wait().unwrap().code();
        assert_eq!(code, Some(1), "{stderr}");
        assert!(stderr.contains("palisweep.sqlite"), "{stderr}");
        assert!(stderr.contains("were not all recorded"), "{stderr}");
        wait_until_no_process_under(test.path(), Duration::from_secs(20), "after the full disk");

        let (code, stderr) = run_to_end(&test, "disk/results", &env);
        assert_eq!(code, 0, "{stderr}");
        check_agreement(&test, "disk/results", None, Some(STEPS));
        let status = status(&test, "disk/results");
        assert_eq!(status["sweep"]["counts"]["finished"], 2, "{status}");
    });
    if !ran {
        eprintln!("a_full_disk_fails_the_run_loudly…: did not run (mounting a tmpfs needs root)");
    }
}

fn wait_for_steps_under(results: &Path, count: usize, steps: usize) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let ready = std::fs::read_dir(results.join("c/trials")).map_or(0, |entries| {
            entries
                .filter_map(Result::ok)
                .filter(|e| {
                    jsonl_lossy(&e.path().join("events.jsonl"))
                        .iter()
                        .filter(|l| l["event"] == "step")
                        .count()
                        >= steps
                })
                .count()
        });
        if ready >= count {
            return;
        }
        assert!(Instant::now() < deadline, "trials never got going");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Lines of a JSON-lines file that parse.
fn jsonl_lossy(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// A memory cgroup (v1 or v2) limited to `bytes`, under this process's
/// own, when it can be made; removed on drop.
struct MemoryCgroup(PathBuf);

impl MemoryCgroup {
    fn new(bytes: u64) -> Option<Self> {
        let own = std::fs::read_to_string("/proc/self/cgroup").ok()?;
        let (dir, limit_files): (PathBuf, &[&str]) = if let Some(path) = own
            .lines()
            .find_map(|l| l.split_once(":memory:").map(|(_, p)| p.to_owned()))
        {
            (
                Path::new("/sys/fs/cgroup/memory").join(path.trim_start_matches('/')),
                &["memory.limit_in_bytes", "memory.memsw.limit_in_bytes"],
            )
        } else {
            let path = own.lines().find_map(|l| l.strip_prefix("0::"))?;
            (
                Path::new("/sys/fs/cgroup").join(path.trim_start_matches('/')),
                &["memory.max", "memory.swap.max"],
            )
        };
        let group = dir.join(format!("palisweep-test-{}", std::process::id()));
        std::fs::create_dir(&group).ok()?;
        let cgroup = MemoryCgroup(group);
        std::fs::write(cgroup.0.join(limit_files[0]), bytes.to_string()).ok()?;
        // No swap either, where the kernel has the knob.
        let _ = std::fs::write(cgroup.0.join(limit_files[1]), bytes.to_string());
        let _ = std::fs::write(cgroup.0.join("memory.swap.max"), "0");
        Some(cgroup)
    }
}

impl Drop for MemoryCgroup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.0);
    }
}

#[test]
fn a_worker_the_oom_killer_ends_is_out_of_memory_and_retried_with_half_the_batch() {
    let Some(cgroup) = MemoryCgroup::new(1 << 30) else {
        eprintln!(
            "a_worker_the_oom_killer_ends…: did not run (making a memory cgroup needs root and cgroupfs)"
        );
        return;
    };
    let test = Test::new().spec(&spec(
        "[synthetic]\nsteps = 4\nstep_ms = 20\nleak_at_step = 2\n",
    ));
    let args = run_args("results").join(" ");
    let script = format!(
        "echo $$ > {}/cgroup.procs && exec {BIN} {args}",
        cgroup.0.display()
    );
    let out = Command::new("sh")
        .args(["-c", &script])
        .current_dir(test.path())
        .env_remove("PALISWEEP_ORPHAN_GRACE")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let dir = trial_dirs(&test, "c").remove(0);
    let attempts = jsonl(&dir.join("attempts.jsonl"));
    let first = attempts.iter().rfind(|a| a["attempt"] == 1).unwrap();
    assert_eq!(first["outcome"], "out_of_memory", "{attempts:?}");
    assert!(
        first["reason"]
            .as_str()
            .unwrap()
            .contains("out-of-memory killer"),
        "{first}"
    );
    let second = attempts.iter().rfind(|a| a["attempt"] == 2).unwrap();
    assert_eq!(second["outcome"], "finished");
    assert_eq!(second["batch_size"], 4, "the back-off halved the batch");
    drop(cgroup);
}

/// Runs SQL on a store with Python's `sqlite3` (the tests have no SQLite
/// client of their own; `python3` is a prerequisite of the setup).
fn sql(store: &Path, statement: &str) {
    let status = Command::new("python3")
        .args([
            "-c",
            "import sqlite3, sys; c = sqlite3.connect(sys.argv[1]); c.executescript(sys.argv[2]); c.commit()",
        ])
        .arg(store)
        .arg(statement)
        .status()
        .unwrap();
    assert!(status.success(), "{statement}");
}

#[test]
fn a_store_that_loses_a_table_or_its_file_is_rebuilt_from_the_trial_folders() {
    const STEPS: u64 = 60;
    let test = Test::new().spec(&spec(&format!(
        "[synthetic]\nsteps = {STEPS}\nstep_ms = 30\n\
         [sweep.axes]\n\"train.lr\" = [1e-5, 1e-4]\n"
    )));
    let env = [("PALISWEEP_ORPHAN_GRACE", GRACE)];
    let store = test.path().join("results/palisweep.sqlite");
    let child = spawn_run(&test, "results", &env);
    wait_for_steps(&test, "c", 2, 5);
    sql(&store, "DROP TABLE metrics;");
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    // The trials finished, but the run must not pass for a full record.
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains(&store.display().to_string()), "{stderr}");
    assert!(stderr.contains("were not all recorded"), "{stderr}");

    let (code, stderr) = run_to_end(&test, "results", &env);
    assert_eq!(code, 0, "{stderr}");
    assert!(stderr.contains("lacked metrics"), "{stderr}");
    check_agreement(&test, "results", None, Some(STEPS));

    // Without its store at all, the sweep's record comes back whole.
    std::fs::remove_file(&store).unwrap();
    let _ = std::fs::remove_file(store.with_extension("sqlite-wal"));
    let _ = std::fs::remove_file(store.with_extension("sqlite-shm"));
    let (code, stderr) = run_to_end(&test, "results", &env);
    assert_eq!(code, 0, "{stderr}");
    check_agreement(&test, "results", None, Some(STEPS));
    let status = status(&test, "results");
    assert_eq!(status["sweep"]["counts"]["finished"], 2, "{status}");
    for dir in trial_dirs(&test, "c") {
        let query = format!("c/{}", trial_id(&dir));
        let show = palisweep(&test, &["show", &query, "--results", "results", "--json"]).json();
        let kinds: BTreeSet<&str> = show["artifacts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a["kind"].as_str().unwrap())
            .collect();
        assert!(kinds.contains("events") && kinds.contains("log"), "{show}");
        assert!(show["trial"]["best_metric"].is_number(), "{show}");
    }
}

#[test]
fn a_torn_last_line_is_dropped_with_a_warning_and_never_glued_to_the_next() {
    const STEPS: u64 = 40;
    let test = Test::new().spec(&spec(&format!(
        "[synthetic]\nsteps = {STEPS}\nstep_ms = 30\n"
    )));
    let env = [("PALISWEEP_ORPHAN_GRACE", GRACE)];
    let child = spawn_run(&test, "results", &env);
    wait_for_steps(&test, "c", 1, 5);
    signal(&child, Signal::SIGKILL);
    drop(child.wait_with_output());
    wait_until_no_process_under(test.path(), Duration::from_secs(20), "after the kill");
    let dir = trial_dirs(&test, "c").remove(0);
    for file in ["events.jsonl", "attempts.jsonl"] {
        let mut torn = std::fs::read_to_string(dir.join(file)).unwrap();
        torn.push_str("{\"v\":1,\"time\":17");
        std::fs::write(dir.join(file), torn).unwrap();
    }
    let (code, stderr) = run_to_end(&test, "results", &env);
    assert_eq!(code, 0, "{stderr}");
    for file in ["events.jsonl", "attempts.jsonl"] {
        assert!(
            stderr.contains(&format!("{file}: dropped a torn last line (16 bytes)")),
            "{stderr}"
        );
        // Every line is whole JSON: the cut line glued onto nothing.
        let repaired = std::fs::read_to_string(dir.join(file)).unwrap();
        for line in repaired.lines() {
            serde_json::from_str::<serde_json::Value>(line)
                .unwrap_or_else(|e| panic!("{file}: {e}: {line}"));
        }
    }
    check_agreement(&test, "results", None, Some(STEPS));
}

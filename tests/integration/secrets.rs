//! Secrets given in a flag or a spec (issue #17): no file palisweep writes
//! holds them, redacted TOML still parses, no message or plan echoes them,
//! and a results root `run` creates is owner-only.

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};

use crate::util::{Test, run_args, trial_dirs};

/// Planted secrets, one per way in.
const IN_COMMENT: &str = "hf_CommentCommentCommentCommentComment01";
const IN_FLAG: &str = "hf_FlagFlagFlagFlagFlagFlagFlagFlagFlag02";
const IN_SPEC: &str = "sk-live-not-token-shaped-03";

fn spec() -> String {
    format!(
        "# the token for the cluster: {IN_COMMENT}\n\
         [experiment]\nname = \"s\"\n\
         [data]\npath = \"generated:json\"\n\
         [model]\ncheckpoint = \"tiny\"\n\
         [train]\nmethod = \"synthetic\"\nbatch_size = 8\ngrad_accum = 1\n\
         [synthetic]\nsteps = 2\nstep_ms = 1\n\
         [slurm]\nextra_args = [\"--export=WANDB_API_KEY={IN_SPEC}\"]\n"
    )
}

/// `--set slurm.extra_args=["--export=HF_TOKEN=…"]`, as the issue gave it.
fn flag() -> String {
    format!("slurm.extra_args=[\"--export=HF_TOKEN={IN_FLAG}\"]")
}

fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files.extend(files_under(&path));
        } else {
            files.push(path);
        }
    }
    files
}

fn toml_file(path: &Path) -> toml::Table {
    let text = std::fs::read_to_string(path).unwrap();
    text.parse()
        .unwrap_or_else(|e| panic!("{} does not parse ({e}):\n{text}", path.display()))
}

fn extra_args(table: &toml::Table) -> Vec<String> {
    table["slurm"]["extra_args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn no_file_of_a_sweep_holds_a_secret_and_its_toml_still_parses() {
    let test = Test::new().spec(&spec());
    let mut args = run_args("fake-cuda:1x24GiB");
    args.extend(["--set".to_owned(), flag()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    test.run_in(&args).code(0);
    let results = test.path().join("results");

    // Every byte of every file: store, WAL, configs, logs, TensorBoard.
    let files = files_under(&results);
    assert!(files.len() > 5, "{files:?}");
    for file in &files {
        let bytes = std::fs::read(file).unwrap();
        for secret in [IN_COMMENT, IN_FLAG, IN_SPEC] {
            assert!(
                !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
                "{} holds {secret}",
                file.display()
            );
        }
    }

    // The copied spec and the resolved config parse, each secret replaced.
    let spec_copy = results.join("s/spec.toml");
    assert_eq!(
        extra_args(&toml_file(&spec_copy)),
        ["--export=WANDB_API_KEY=<redacted>"]
    );
    assert!(
        std::fs::read_to_string(&spec_copy)
            .unwrap()
            .starts_with("# the token for the cluster: <redacted>\n")
    );
    let trial = &trial_dirs(&test, "s")[0];
    assert_eq!(
        extra_args(&toml_file(&trial.join("trial.toml"))),
        ["--export=HF_TOKEN=<redacted>"]
    );
    let run_json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(results.join("s/run.json")).unwrap())
            .unwrap();
    assert_eq!(
        run_json["sets"][0],
        "slurm.extra_args=[\"--export=HF_TOKEN=<redacted>\"]"
    );

    // The store's copy parses too, and the report (which parses it) runs.
    let id = trial.file_name().unwrap().to_string_lossy().into_owned();
    let show = test
        .run_in(&["show", &format!("s/{id}"), "--results", "results", "--json"])
        .code(0)
        .json();
    let stored: toml::Table = show["config"].as_str().unwrap().parse().unwrap();
    assert_eq!(extra_args(&stored), ["--export=HF_TOKEN=<redacted>"]);
    test.run_in(&["report", "s", "--results", "results"])
        .code(0);

    // A new results root is the owner's alone.
    let mode = std::fs::metadata(&results).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o700, "results/ has mode {mode:o}");

    // `attach` would submit `<redacted>` where the token was: it refuses.
    test.run_in(&["attach", "s", "--results", "results"])
        .code(2)
        .stderr_has("with a secret redacted")
        .stderr_has("--export=HF_TOKEN");
}

#[test]
fn errors_and_plans_do_not_echo_a_secret() {
    let test = Test::new().spec(&spec());
    let set = format!("data.hf_token={IN_FLAG}");
    let out = test.run_in(&["plan", "spec.toml", "--set", &set]);
    out.code(2)
        .stderr_has("flag --set data.hf_token=<redacted>: `data.hf_token`: unknown key");
    assert!(!out.stderr.contains(IN_FLAG), "{}", out.stderr);

    // A value that is no sbatch option is quoted by its error: redacted.
    let set = format!("slurm.extra_args=[\"HF_TOKEN={IN_FLAG}\"]");
    let out = test.run_in(&["plan", "spec.toml", "--set", &set]);
    out.code(2).stderr_has("`slurm.extra_args`");
    assert!(!out.stderr.contains(IN_FLAG), "{}", out.stderr);

    // `plan --backend slurm` shows the sbatch lines, secrets redacted.
    let flag = flag();
    for json in [false, true] {
        let mut args = vec!["plan", "spec.toml", "--backend", "slurm", "--set", &flag];
        if json {
            args.push("--json");
        }
        let out = test.run_in(&args);
        out.code(0).stdout_has("--export=HF_TOKEN=<redacted>");
        assert!(!out.stdout.contains(IN_FLAG), "{}", out.stdout);
    }
}

//! Bad input through the real binary: images Pillow refuses, malformed
//! references, empty splits, broken checkpoints and unreachable hubs are
//! found before anything runs, named by file (and line), and exit 2.

use crate::util::{Test, golden, run_spec};

/// The golden photo (a baseline JPEG).
fn photo() -> Vec<u8> {
    std::fs::read(golden("data/valid/v2_photo.jpg")).unwrap()
}

/// `bytes` with the JPEG frame header's size replaced: the entropy-coded
/// data stays 1.8 KB whatever the header claims.
fn declaring(mut bytes: Vec<u8>, width: u16, height: u16) -> Vec<u8> {
    let sof = bytes
        .windows(2)
        .position(|w| w == [0xFF, 0xC0])
        .expect("a baseline frame header");
    bytes[sof + 5..sof + 7].copy_from_slice(&height.to_be_bytes());
    bytes[sof + 7..sof + 9].copy_from_slice(&width.to_be_bytes());
    bytes
}

/// A one-example JSON dataset at `data/` whose train and valid images are
/// `image` (named `name`).
fn dataset(test: &Test, name: &str, image: &[u8]) {
    for split in ["train", "valid"] {
        let dir = test.path().join("data").join(split);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(name), image).unwrap();
        std::fs::write(
            dir.join("annotations.jsonl"),
            format!(
                "{{\"image\": \"ok.jpg\", \"prefix\": \"p\", \"suffix\": \"{{}}\"}}\n\
                 {{\"image\": \"{name}\", \"prefix\": \"p\", \"suffix\": \"{{}}\"}}\n"
            ),
        )
        .unwrap();
        std::fs::write(dir.join("ok.jpg"), photo()).unwrap();
    }
}

const WORKER_SPEC: &str = "[data]\npath = \"data\"\ntask = \"json\"\n\
     [model]\ncheckpoint = \"tiny\"\n[train]\nmax_steps = 1\n";

fn worker(test: &Test) -> crate::util::Output {
    test.run_in(&[
        "worker",
        "--spec",
        "spec.toml",
        "--trial",
        "t",
        "--threads",
        "1",
    ])
}

fn eval(test: &Test, extra: &[&str]) -> crate::util::Output {
    let mut args = vec![
        "eval",
        "--checkpoint",
        "tiny",
        "--cache",
        "cache",
        "--data",
        "data",
    ];
    args.extend_from_slice(extra);
    test.run_in(&args)
}

/// The bomb claimed 65500 × 65500 (13 GB to decode, 20 GB peak);
/// this one claims just over Pillow's 178,956,970 pixels, so that the code
/// before the fix decodes it in about 1 GB (and exits 0) instead of taking
/// the machine down.
#[test]
fn a_jpeg_declaring_more_pixels_than_pillow_opens_is_bad_input() {
    let test = Test::new().spec(WORKER_SPEC);
    dataset(&test, "bomb.jpg", &declaring(photo(), 13_400, 13_400));
    for out in [worker(&test), eval(&test, &["--split", "train"])] {
        out.code(2)
            .stderr_has("train/annotations.jsonl:2")
            .stderr_has("bomb.jpg")
            .stderr_has("13400 × 13400")
            .stderr_has("178956970");
    }
    assert!(!test.path().join("t/final").exists(), "it trained anyway");
}

#[test]
fn a_truncated_jpeg_is_bad_input() {
    let test = Test::new().spec(WORKER_SPEC);
    let photo = photo();
    dataset(&test, "cut.jpg", &photo[..photo.len() - 300]);
    for out in [worker(&test), eval(&test, &["--split", "valid"])] {
        out.code(2).stderr_has("cut.jpg").stderr_has("truncated");
    }
    worker(&test).stderr_has("train/annotations.jsonl:2");
    eval(&test, &["--split", "valid"]).stderr_has("valid/annotations.jsonl:2");
}

#[test]
fn a_malformed_loc_token_in_a_detection_reference_is_bad_input() {
    let test = Test::new();
    let dir = test.path().join("data/valid");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("a.jpg"), photo()).unwrap();
    std::fs::write(
        dir.join("annotations.jsonl"),
        "{\"image\": \"a.jpg\", \"prefix\": \"detect cat\", \"suffix\": \"<loc0010><loc0020><loc0500><loc0600> cat\"}\n\
         {\"image\": \"a.jpg\", \"prefix\": \"detect cat\", \"suffix\": \"<loc0010><loc12><loc0500><loc0600> cat\"}\n",
    )
    .unwrap();
    for task in ["detect", "segment"] {
        eval(
            &test,
            &["--task", task, "--generate", "--max-new-tokens", "2"],
        )
        .code(2)
        .stderr_has("valid/annotations.jsonl:2")
        .stderr_has("<loc12>");
    }
}

#[test]
fn an_empty_train_split_is_bad_input_for_the_worker() {
    let test = Test::new()
        .spec(WORKER_SPEC)
        .file("data/train/annotations.jsonl", "\n");
    worker(&test)
        .code(2)
        .stderr_has("train/annotations.jsonl")
        .stderr_has("no examples");
    assert!(!test.path().join("t/best").exists());
    assert!(!test.path().join("t/final").exists());
}

/// `spec.toml` for a two-trial sweep of the tiny checkpoint on `data`
/// (one step each).
fn sweep_spec(extra: &str) -> String {
    format!(
        "[experiment]\nname = \"bad\"\n[data]\npath = \"data\"\n[model]\ncheckpoint = \"tiny\"\n\
         [train]\nmax_steps = 1\n[sweep.axes]\n\"train.lr\" = [1e-3, 2e-3]\n{extra}"
    )
}

/// Nothing of the sweep was written: no sweep folder, no store.
#[track_caller]
fn nothing_recorded(test: &Test) {
    let results = test.path().join("results");
    assert!(
        !results.join("bad").exists() && !results.join("palisweep.sqlite").exists(),
        "the sweep was recorded"
    );
}

#[test]
fn run_and_plan_check_the_dataset_once_before_anything_starts() {
    let test = Test::new().spec(&sweep_spec(""));
    dataset(&test, "gone.jpg", &photo());
    std::fs::remove_file(test.path().join("data/train/gone.jpg")).unwrap();
    std::fs::write(test.path().join("data/valid/gone.jpg"), "not an image").unwrap();
    let train = test.path().join("data/train/annotations.jsonl");
    let mut lines = std::fs::read_to_string(&train).unwrap();
    lines.push_str("{\"image\": \"ok.jpg\", \"prefix\": \n");
    std::fs::write(&train, lines).unwrap();
    for out in [
        run_spec(&test, "cpu:2"),
        test.run_in(&["plan", "spec.toml", "--devices", "cpu:2"]),
    ] {
        out.code(2)
            .stderr_has("3 of 5 dataset lines are invalid")
            .stderr_has("train/annotations.jsonl:2: image")
            .stderr_has("train/annotations.jsonl:3: not valid JSON")
            .stderr_has("valid/annotations.jsonl:2: image");
        // Once for the sweep, not once per trial.
        assert_eq!(out.stderr.matches("dataset lines are invalid").count(), 1);
    }
    nothing_recorded(&test);
}

#[test]
fn an_empty_train_split_stops_run_and_plan_up_front() {
    let test = Test::new().spec(&sweep_spec(""));
    dataset(&test, "ok.jpg", &photo());
    std::fs::write(test.path().join("data/train/annotations.jsonl"), "").unwrap();
    for out in [
        run_spec(&test, "cpu:2"),
        test.run_in(&["plan", "spec.toml", "--devices", "cpu:2"]),
    ] {
        out.code(2)
            .stderr_has("train/annotations.jsonl: the train split has no examples")
            .stderr_has("untrained");
    }
    nothing_recorded(&test);
}

#[test]
fn a_missing_or_empty_valid_split_is_a_warning_saying_what_it_means() {
    let test = Test::new().spec(&sweep_spec(""));
    dataset(&test, "ok.jpg", &photo());
    std::fs::write(test.path().join("data/valid/annotations.jsonl"), "\n").unwrap();
    test.run_in(&["plan", "spec.toml", "--devices", "cpu:2"])
        .code(0)
        .stderr_has("warning: the valid split")
        .stderr_has("has no examples")
        .stderr_has("no best/ adapter")
        .stderr_has("cannot be ranked by val/loss");
    // A single annotations file is a train split alone, on purpose: the
    // sweep runs, with the warning first.
    let single = Test::new().spec(
        &sweep_spec("")
            .replace("path = \"data\"", "path = \"data/train/annotations.jsonl\"")
            .replace("[1e-3, 2e-3]", "[1e-3]"),
    );
    dataset(&single, "ok.jpg", &photo());
    run_spec(&single, "cpu:1")
        .code(0)
        .stderr_has("is a single annotations file, which is a train split alone")
        .stderr_has("help: point data.path at the export's folder");
}

/// `palisweep init-tiny --out NAME` in the test folder.
fn tiny_checkpoint(test: &Test, name: &str) -> std::path::PathBuf {
    test.run_in(&["init-tiny", "--out", name]).code(0);
    test.path().join(name)
}

/// Edits a checkpoint's `config.json`.
fn edit_config(dir: &std::path::Path, edit: impl FnOnce(&mut serde_json::Value)) {
    let path = dir.join("config.json");
    let mut json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    edit(&mut json);
    std::fs::write(path, json.to_string()).unwrap();
}

#[test]
fn checkpoint_errors_are_bad_input_found_once_and_never_retried() {
    let test = Test::new().spec(
        &sweep_spec("[resources]\nretries = 3\n")
            .replace("checkpoint = \"tiny\"", "checkpoint = \"./ckpt\""),
    );
    dataset(&test, "ok.jpg", &photo());
    let ckpt = tiny_checkpoint(&test, "ckpt");
    let weights = ckpt.join("model.safetensors");
    let whole = std::fs::read(&weights).unwrap();
    std::fs::write(&weights, &whole[..whole.len() - 1000]).unwrap();
    for out in [
        run_spec(&test, "cpu:2"),
        test.run_in(&["plan", "spec.toml", "--devices", "cpu:2"]),
    ] {
        out.code(2)
            .stderr_has("the checkpoint at")
            .stderr_has("ckpt cannot be loaded")
            .stderr_has("truncated safetensors file")
            .stderr_has("model.safetensors");
    }
    nothing_recorded(&test);
    // A worker started by hand (or by an older scheduler) fails as bad
    // input, which the scheduler never retries, not as a crash.
    let one = Test::new().spec(
        "[data]\npath = \"data\"\n[model]\ncheckpoint = \"./ckpt\"\n[train]\nmax_steps = 1\n",
    );
    dataset(&one, "ok.jpg", &photo());
    let ckpt = tiny_checkpoint(&one, "ckpt");
    std::fs::write(ckpt.join("model.safetensors"), &whole[..whole.len() - 1000]).unwrap();
    one.run_in(&["worker", "--spec", "spec.toml", "--trial", "t"])
        .code(2)
        .stderr_has("truncated safetensors file");
    let failed = crate::util::events(&one.path().join("t"), "failed");
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0]["kind"], "data", "{failed:?}");
}

#[test]
fn plan_names_what_is_wrong_with_a_local_checkpoint() {
    let test = Test::new().spec("[data]\npath = \"data\"\n[model]\ncheckpoint = \"./ckpt\"\n");
    dataset(&test, "ok.jpg", &photo());
    let plan = || test.run_in(&["plan", "spec.toml", "--devices", "cpu:1"]);
    // Absent: before, planned as a 3B@224.
    plan()
        .code(2)
        .stderr_has("ckpt cannot be loaded: it is not a folder");
    let ckpt = tiny_checkpoint(&test, "ckpt");
    plan().code(0);
    std::fs::rename(ckpt.join("config.json"), ckpt.join("config.bak")).unwrap();
    plan()
        .code(2)
        .stderr_has("ckpt cannot be loaded")
        .stderr_has("config.json");
    std::fs::rename(ckpt.join("config.bak"), ckpt.join("config.json")).unwrap();
    // Layers wider than the stored tensors.
    edit_config(&ckpt, |c| {
        let width = c["text_config"]["intermediate_size"].as_u64().unwrap();
        c["text_config"]["intermediate_size"] = (width * 2).into();
    });
    plan().code(2).stderr_has("mlp.gate_proj.weight` has shape");
    // Tensors the config implies and the files lack.
    edit_config(&ckpt, |c| {
        let width = c["text_config"]["intermediate_size"].as_u64().unwrap();
        c["text_config"]["intermediate_size"] = (width / 2).into();
        c["text_config"]["attention_bias"] = true.into();
    });
    plan().code(2).stderr_has("q_proj.bias` is missing");
}

/// A hub that answers every request with `status`, on a free local port.
fn fake_hub(status: &'static str) -> String {
    use std::io::{Read as _, Write as _};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            let mut request = [0u8; 4096];
            let _ = stream.read(&mut request);
            let _ = write!(
                stream,
                "HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            );
        }
    });
    format!("http://{address}")
}

/// The trials of a sweep of an uncached hub checkpoint, with `endpoint` as
/// the hub and no token.
fn hub_sweep(endpoint: &str) -> crate::util::Output {
    let test = Test::new().spec(&sweep_spec("").replace(
        "checkpoint = \"tiny\"",
        "checkpoint = \"google/paligemma2-3b-pt-224\"",
    ));
    dataset(&test, "ok.jpg", &photo());
    let home = test.path().join("hf").display().to_string();
    let test = test
        .env("HF_HUB_CACHE", &format!("{home}/hub"))
        .env("HF_HOME", &home)
        .env("HF_HUB_OFFLINE", "")
        .env("HF_TOKEN", "")
        .env("HF_ENDPOINT", endpoint);
    let out = run_spec(&test, "cpu:2");
    nothing_recorded(&test);
    out
}

#[test]
fn an_uncached_hub_checkpoint_is_checked_once_and_the_cause_named() {
    // No network: a refused connection, a name that does not resolve.
    for (endpoint, cause) in [
        ("http://127.0.0.1:9", "the connection failed"),
        ("http://hub.invalid", "the host name does not resolve (DNS)"),
    ] {
        let out = hub_sweep(endpoint);
        out.code(2)
            .stderr_has("cannot download `google/paligemma2-3b-pt-224`")
            .stderr_has(&format!("{endpoint} cannot be reached: {cause}"))
            .stderr_has("this is a network failure, not a permission one");
        assert!(!out.stderr.contains("HF_TOKEN"), "{}", out.stderr);
        assert_eq!(out.stderr.matches("cannot download").count(), 1);
    }
    // The hub answers, and refuses: that one is about the token.
    let refused = fake_hub("401 Unauthorized");
    hub_sweep(&refused)
        .code(2)
        .stderr_has(&format!("{refused} refused it (HTTP 401) without a token"))
        .stderr_has("HF_TOKEN");
    let missing = fake_hub("404 Not Found");
    hub_sweep(&missing)
        .code(2)
        .stderr_has("no such repo or revision `main` (HTTP 404)");
}

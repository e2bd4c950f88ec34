//! `palisweep simulate` through the real binary: replaying a finished
//! synthetic sweep from the store, the committed recorded grid, and a
//! synthetic surface.

use crate::util::{Test, repo_root, synthetic_spec};

/// A finished sweep of six synthetic trials (evaluated at steps 5, 10, 15).
fn finished_sweep() -> Test {
    let test = Test::new().spec(&synthetic_spec(
        "s",
        "[synthetic]\nsteps = 15\nstep_ms = 2\n\
         [sweep.axes]\n\"train.lr\" = [1e-5, 1e-4, 1e-3]\n\"train.weight_decay\" = [0.0, 0.5]\n\
         [resources]\nmax_trials_per_device = 6\n",
    ));
    test.run_in(&[
        "run",
        "spec.toml",
        "--devices",
        "fake-cuda:1x80GiB",
        "--results",
        "results",
        "--quiet",
    ])
    .code(0);
    test
}

/// The lowest `val/loss` of the sweep, from the raw metrics.
fn lowest_val_loss(test: &Test) -> f64 {
    let csv = test
        .run_in(&["export-metrics", "s", "--results", "results"])
        .code(0)
        .stdout
        .clone();
    let header: Vec<&str> = csv.lines().next().unwrap().split(',').collect();
    let name = header.iter().position(|c| *c == "name").unwrap();
    let value = header.iter().position(|c| *c == "value").unwrap();
    csv.lines()
        .skip(1)
        .map(|l| l.split(',').collect::<Vec<_>>())
        .filter(|cols| cols[name] == "val/loss")
        .map(|cols| cols[value].parse::<f64>().unwrap())
        .fold(f64::INFINITY, f64::min)
}

fn strategy<'a>(json: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    json["strategies"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["strategy"] == name)
        .unwrap_or_else(|| panic!("no {name} in {json:#}"))
}

#[test]
fn a_store_replay_of_the_grid_reaches_the_grids_best_with_all_its_compute() {
    let test = finished_sweep();
    let out = test.run_in(&[
        "simulate",
        "--from",
        "s",
        "--results",
        "results",
        "--seeds",
        "3",
        "--strategies",
        "grid,random,asha,tpe+asha",
        "--budget-fraction",
        "1",
        "--format",
        "json",
    ]);
    let json = out.code(0).json();
    assert_eq!(json["trials"], 6);
    assert_eq!(json["metric"], "val/loss");
    let best = json["grid"]["best"].as_f64().unwrap();
    assert!((best - lowest_val_loss(&test)).abs() < 1e-9, "{best}");
    let grid = strategy(&json, "grid");
    assert_eq!(grid["reached"], 3);
    assert_eq!(grid["median_regret"], 0.0);
    assert!((grid["median_compute"].as_f64().unwrap() - 1.0).abs() < 1e-9);
    // Halving never trains more than the grid did.
    let asha = strategy(&json, "asha");
    assert!(asha["median_compute"].as_f64().unwrap() < 1.0, "{asha:#}");

    // The report draws the replays beside the sweep as it ran.
    test.run_in(&["report", "s", "--results", "results"])
        .code(0);
    let md = std::fs::read_to_string(test.path().join("results/s/report/report.md")).unwrap();
    let section = md
        .split("## Best so far against compute")
        .nth(1)
        .expect("the best-so-far section");
    assert!(
        section.contains("The 4 simulated lines replay this sweep"),
        "{section}"
    );
    let html = std::fs::read_to_string(test.path().join("results/s/report/report.html")).unwrap();
    for line in [
        "this sweep, as run",
        "simulated: grid",
        "simulated: asha",
        "simulated: tpe+asha",
    ] {
        assert!(html.contains(line), "no {line} in the plot");
    }

    // Exported, then read back: the same replay.
    test.run_in(&[
        "simulate",
        "--from",
        "s",
        "--results",
        "results",
        "--export",
        "s.jsonl",
    ])
    .code(0)
    .stdout_has("6 trials of s written to s.jsonl");
    let again = test
        .run_in(&[
            "simulate",
            "--recorded",
            "s.jsonl",
            "--seeds",
            "3",
            "--strategies",
            "grid,random,asha,tpe+asha",
            "--budget-fraction",
            "1",
            "--format",
            "json",
        ])
        .code(0)
        .json();
    // The same picks and shares; the file's decimal floats may move the
    // last bit of a sum.
    for (a, b) in json["strategies"]
        .as_array()
        .unwrap()
        .iter()
        .zip(again["strategies"].as_array().unwrap())
    {
        assert_eq!(a["reached"], b["reached"]);
        for (x, y) in a["seeds"]
            .as_array()
            .unwrap()
            .iter()
            .zip(b["seeds"].as_array().unwrap())
        {
            assert_eq!(x["pick"], y["pick"]);
            assert_eq!(x["completed"], y["completed"]);
            let close = |k: &str| (x[k].as_f64().unwrap() - y[k].as_f64().unwrap()).abs() < 1e-9;
            assert!(close("to_target") && close("compute"), "{x} vs {y}");
        }
    }
}

#[test]
fn the_committed_recorded_grid_and_a_surface_print_the_table() {
    let grid = repo_root().join("tests/data/search/recorded-grid.jsonl");
    let test = Test::new();
    let out = test.run_in(&[
        "simulate",
        "--recorded",
        grid.to_str().unwrap(),
        "--seeds",
        "2",
    ]);
    out.code(0)
        .stdout_has("48 trials")
        .stdout_has("compute to target");
    for name in ["random", "median", "asha", "hyperband", "tpe", "tpe+asha"] {
        assert!(
            out.stdout
                .lines()
                .any(|l| l.starts_with(&format!("{name} "))),
            "no row for {name}:\n{}",
            out.stdout
        );
    }
    test.run_in(&["simulate", "--surface", "quadratic", "--seeds", "2"])
        .code(0)
        .stdout_has("surface:quadratic: 30 trials");
}

#[test]
fn bad_simulate_input_exits_2_and_says_why() {
    let test = Test::new().file("bad.jsonl", "{\"v\": 9}\n");
    test.run_in(&["simulate"]).code(2).stderr_has("--from");
    test.run_in(&["simulate", "--recorded", "missing.jsonl"])
        .code(2)
        .stderr_has("missing.jsonl");
    test.run_in(&["simulate", "--recorded", "bad.jsonl"])
        .code(2)
        .stderr_has("bad.jsonl");
    test.run_in(&["simulate", "--surface", "quadratic", "--strategies", "bohb"])
        .code(2)
        .stderr_has("tpe+asha");
    test.run_in(&[
        "simulate",
        "--surface",
        "quadratic",
        "--min-resource",
        "1000",
    ])
    .code(2)
    .stderr_has("--min-resource 1000");
}
